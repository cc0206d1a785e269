//! Call metadata as it enters callguard: owns `PhoneNumber` (E.164 normalisation, masking,
//! `last_digits`) and the strict, bounded `CallMetadata::from_json` of SPEC §5.1, with errors
//! that name the field and the reason. It must do no I/O, read no clock and never put a full
//! phone number in a `Debug` output or an error message.
//!
//! Both parsers are sans-I/O (STYLE H6): bytes or a string in, a value or a typed error out,
//! and the whole input is consumed or refused.

use std::fmt;

use jiff::Timestamp;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// Largest metadata document accepted, in bytes (SPEC §5.1 part `metadata`, sidecar files).
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Most characters in a `call_id`.
pub const MAX_CALL_ID_CHARS: usize = 128;

/// Most characters in `account`, `operator` and `alarm_case`.
pub const MAX_LABEL_CHARS: usize = 64;

/// Longest text `PhoneNumber::parse` looks at, in bytes. Generous for any written form of a
/// 15-digit number with separators; it bounds the work done on hostile input.
pub const MAX_NUMBER_INPUT_BYTES: usize = 64;

/// A phone number normalised to E.164 (`+` then 8 to 15 digits, country code not starting
/// with 0), for example `+33612345678`.
///
/// Two numbers are equal when their normalised forms are, whatever way they were written.
/// `Debug` shows the masked form: the full number is only available through `as_str`, so it
/// cannot reach a log by accident. There is deliberately no `Display`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    /// `+` followed by 8 to 15 ASCII digits; the first digit is not `0`. Private so that no
    /// other shape can be built.
    e164: String,
}

/// Why a text is not a phone number. Messages never repeat the number itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("country code cannot start with 0")]
    CountryCodeZero,
    #[error("empty")]
    Empty,
    #[error("French number has {digits} digits after +33, expected 9")]
    FrenchLength { digits: usize },
    #[error("French number cannot start with 0 after +33 and its trunk 0")]
    FrenchTrunkZero,
    #[error("longer than {max} bytes")]
    InputTooLong { max: usize },
    #[error(
        "character {ch:?} at position {position} is not allowed \
         (digits, a leading `+`, spaces, `.`, `-` and parentheses only)"
    )]
    InvalidCharacter { ch: char, position: usize },
    #[error("`+` at position {position}: only allowed as the first character")]
    MisplacedPlus { position: usize },
    #[error("French national number has {digits} digits, expected 10")]
    NationalLength { digits: usize },
    #[error("no digits")]
    NoDigits,
    #[error("neither international (`+` or `00`) nor French national (leading `0`)")]
    NoPrefix,
    #[error("{digits} digits after the international prefix, at most 15 allowed")]
    TooLong { digits: usize },
    #[error("{digits} digits after the international prefix, at least 8 needed")]
    TooShort { digits: usize },
}

/// Direction of a call, seen from the centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Someone called the centre (`"inbound"`).
    Inbound,
    /// The centre called someone (`"outbound"`).
    Outbound,
}

/// The metadata of one call (SPEC §5.1), validated. Times are UTC instants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallMetadata {
    /// The recorder's id for the call: 1 to 128 printable characters, no `/`.
    pub call_id: String,
    /// When the call started.
    pub started_at: Timestamp,
    /// Who called whom.
    pub direction: Direction,
    /// The calling party, when its number is known.
    pub caller: Option<PhoneNumber>,
    /// The called party, when its number is known.
    pub callee: Option<PhoneNumber>,
    /// The client account the call is about (1 to 64 printable characters).
    pub account: Option<String>,
    /// The operator who handled the call (1 to 64 printable characters).
    pub operator: Option<String>,
    /// The alarm case the call belongs to (1 to 64 printable characters).
    pub alarm_case: Option<String>,
}

/// Why a metadata document was refused. The message is meant for the client (SPEC §6
/// `422 invalid_metadata`): it names the field and the reason, and never repeats a phone
/// number or a text value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("field `{field}` appears more than once")]
    DuplicateField { field: &'static str },
    #[error("field `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: FieldProblem,
    },
    #[error("not a JSON object with the call metadata: {reason}")]
    Json { reason: String },
    #[error("field `{field}` is required")]
    Missing { field: &'static str },
    #[error("metadata is {size} bytes, at most {max} allowed")]
    TooLarge { size: usize, max: usize },
    #[error("field `{}` is not allowed", .field.escape_debug())]
    UnknownField {
        /// The name as sent, cut to 64 characters.
        field: String,
    },
}

/// What is wrong with one field's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    #[error("character {ch:?} at position {position} is not allowed")]
    Character { ch: char, position: usize },
    #[error("expected `inbound` or `outbound`")]
    Direction,
    #[error("empty (use null when unknown)")]
    Empty,
    #[error("not a phone number: {0}")]
    Number(NumberError),
    #[error("not an RFC 3339 time: {reason}")]
    NotRfc3339 { reason: String },
    #[error("{chars} characters, at most {max} allowed")]
    TooLong { chars: usize, max: usize },
    #[error("leading or trailing whitespace")]
    Whitespace,
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
}

impl PhoneNumber {
    /// Normalises a written phone number to E.164.
    ///
    /// Accepted, with spaces, dots, dashes and parentheses anywhere as separators:
    /// - international `+CC…` and `00CC…`; a trunk `(0)` after the country code is dropped
    ///   (`+33 (0)6 12 34 56 78`);
    /// - French national `0X XX XX XX XX` (10 digits) → `+33XXXXXXXXX`.
    ///
    /// Checked: 8 to 15 digits after the international prefix, a country code not starting
    /// with 0, and for `+33` exactly 9 digits (a trunk `0` written without parentheses,
    /// `+33 0612345678`, is dropped too). Refused: letters and any other character, a `+`
    /// not in first place, numbers without prefix (`33612345678` is ambiguous).
    pub fn parse(input: &str) -> Result<PhoneNumber, NumberError> {
        if input.len() > MAX_NUMBER_INPUT_BYTES {
            return Err(NumberError::InputTooLong {
                max: MAX_NUMBER_INPUT_BYTES,
            });
        }
        let text = input.trim();
        if text.is_empty() {
            return Err(NumberError::Empty);
        }
        let leading_chars = input.chars().count() - input.trim_start().chars().count();

        let chars: Vec<char> = text.chars().collect();
        let mut digits = String::with_capacity(chars.len());
        let mut plus = false;
        // Indices in `digits` of zeros written as `(0)`: trunk prefixes when the number
        // turns out to be international, plain digits otherwise.
        let mut trunk_zeros: Vec<usize> = Vec::new();
        let mut char_idx = 0;
        while char_idx < chars.len() {
            let ch = chars[char_idx];
            let position = leading_chars + char_idx + 1;
            match ch {
                '0'..='9' => {
                    let is_trunk = ch == '0'
                        && char_idx > 0
                        && chars[char_idx - 1] == '('
                        && chars.get(char_idx + 1) == Some(&')');
                    if is_trunk {
                        trunk_zeros.push(digits.len());
                    }
                    digits.push(ch);
                }
                '+' => {
                    if char_idx != 0 {
                        return Err(NumberError::MisplacedPlus { position });
                    }
                    plus = true;
                }
                ' ' | '\u{a0}' | '.' | '-' | '(' | ')' => {}
                other => {
                    return Err(NumberError::InvalidCharacter {
                        ch: other,
                        position,
                    });
                }
            }
            char_idx += 1;
        }
        if digits.is_empty() {
            return Err(NumberError::NoDigits);
        }

        // Where the country code starts in `digits`, for the international forms.
        let country_start = match (plus, digits.starts_with("00")) {
            (true, _) => Some(0),
            (false, true) => Some(2),
            (false, false) => None,
        };
        match country_start {
            Some(start) => {
                let mut international = String::with_capacity(digits.len());
                for (digit_idx, digit) in digits.char_indices() {
                    // A `(0)` counts as a trunk prefix only after at least one country-code
                    // digit; before that it is an ordinary digit.
                    let is_trunk = digit_idx > start && trunk_zeros.contains(&digit_idx);
                    if digit_idx >= start && !is_trunk {
                        international.push(digit);
                    }
                }
                Self::from_international(international)
            }
            None => {
                if !digits.starts_with('0') {
                    return Err(NumberError::NoPrefix);
                }
                if digits.len() != 10 {
                    return Err(NumberError::NationalLength {
                        digits: digits.len(),
                    });
                }
                Ok(PhoneNumber {
                    e164: format!("+33{}", &digits[1..]),
                })
            }
        }
    }

    /// Checks the digits after `+` / `00` and applies the French rules to `+33`.
    fn from_international(digits: String) -> Result<PhoneNumber, NumberError> {
        if digits.starts_with('0') {
            return Err(NumberError::CountryCodeZero);
        }
        if digits.len() < 8 {
            return Err(NumberError::TooShort {
                digits: digits.len(),
            });
        }
        if digits.len() > 15 {
            return Err(NumberError::TooLong {
                digits: digits.len(),
            });
        }
        match digits.strip_prefix("33") {
            Some(national) => {
                let national = if national.len() == 10 && national.starts_with('0') {
                    &national[1..]
                } else {
                    national
                };
                if national.len() != 9 {
                    return Err(NumberError::FrenchLength {
                        digits: national.len(),
                    });
                }
                if national.starts_with('0') {
                    return Err(NumberError::FrenchTrunkZero);
                }
                Ok(PhoneNumber {
                    e164: format!("+33{national}"),
                })
            }
            None => Ok(PhoneNumber {
                e164: format!("+{digits}"),
            }),
        }
    }

    /// The full E.164 form, `+33612345678`. Personal data: never log it.
    pub fn as_str(&self) -> &str {
        &self.e164
    }

    /// The form shown to roles that may not see numbers (SPEC §6): every digit is kept
    /// except the 3rd and 4th from the end, which become `••` (two U+2022 bullets):
    /// `+33612345678` → `+3361234••78`.
    ///
    /// This hides 2 digits: it is a display convention, not anonymisation.
    pub fn masked(&self) -> String {
        let digits = &self.e164[1..];
        // At least 8 ASCII digits by construction, so both cuts fall inside the string.
        let head = &digits[..digits.len().saturating_sub(4)];
        let tail = &digits[digits.len().saturating_sub(2)..];
        format!("+{head}••{tail}")
    }

    /// The last two digits, all that objections show (SPEC §6 `GET /v1/objections`).
    pub fn last_digits(&self) -> String {
        self.e164[self.e164.len().saturating_sub(2)..].to_string()
    }
}

impl fmt::Debug for PhoneNumber {
    /// Masked: a `{:?}` of a struct holding a number must not leak it into a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PhoneNumber").field(&self.masked()).finish()
    }
}

impl Direction {
    /// The wire form, `inbound` or `outbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Field names in the order of SPEC §5.1; the index is the slot in `from_json`.
const FIELDS: [&str; 8] = [
    "call_id",
    "started_at",
    "direction",
    "caller",
    "callee",
    "account",
    "operator",
    "alarm_case",
];

impl CallMetadata {
    /// Parses and validates a metadata document (SPEC §5.1): one JSON object, at most
    /// `MAX_METADATA_BYTES`, no unknown or repeated field, no trailing data.
    ///
    /// `call_id`, `started_at` (RFC 3339, any offset) and `direction` are required; the others
    /// may be absent or `null`. An empty string is refused everywhere: send `null`.
    /// Text values (`call_id`, `account`, `operator`, `alarm_case`) must be printable (no
    /// control, zero-width or bidirectional-override character) with no leading or trailing
    /// whitespace; `call_id` must not contain `/`.
    pub fn from_json(bytes: &[u8]) -> Result<CallMetadata, MetadataError> {
        if bytes.len() > MAX_METADATA_BYTES {
            return Err(MetadataError::TooLarge {
                size: bytes.len(),
                max: MAX_METADATA_BYTES,
            });
        }
        // Checked before serde_json, whose type errors would quote a top-level string (which
        // could be a phone number) in the message.
        if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
            return Err(MetadataError::Json {
                reason: "expected a JSON object".to_string(),
            });
        }
        let entries = match serde_json::from_slice::<Entries>(bytes) {
            Ok(entries) => entries.0,
            Err(error) => {
                return Err(MetadataError::Json {
                    reason: error.to_string(),
                });
            }
        };

        let mut slots: [Option<Value>; 8] = Default::default();
        for (name, value) in entries {
            let slot_idx = match FIELDS.iter().position(|field| *field == name) {
                Some(slot_idx) => slot_idx,
                None => {
                    return Err(MetadataError::UnknownField {
                        field: name.chars().take(64).collect(),
                    });
                }
            };
            if slots[slot_idx].is_some() {
                return Err(MetadataError::DuplicateField {
                    field: FIELDS[slot_idx],
                });
            }
            slots[slot_idx] = Some(value);
        }
        let [
            call_id,
            started_at,
            direction,
            caller,
            callee,
            account,
            operator,
            alarm_case,
        ] = slots;

        let call_id = required_string("call_id", call_id)?;
        invalid("call_id", check_call_id(&call_id))?;

        let started_at = required_string("started_at", started_at)?;
        let started_at = invalid("started_at", parse_rfc3339(&started_at))?;

        let direction = match required_string("direction", direction)?.as_str() {
            "inbound" => Direction::Inbound,
            "outbound" => Direction::Outbound,
            _ => return Err(invalid_field("direction", FieldProblem::Direction)),
        };

        let caller = optional_number("caller", caller)?;
        let callee = optional_number("callee", callee)?;
        let account = optional_label("account", account)?;
        let operator = optional_label("operator", operator)?;
        let alarm_case = optional_label("alarm_case", alarm_case)?;

        Ok(CallMetadata {
            call_id,
            started_at,
            direction,
            caller,
            callee,
            account,
            operator,
            alarm_case,
        })
    }
}

/// Checks a call id (SPEC §5.1): 1 to `MAX_CALL_ID_CHARS` printable characters, no `/`, no
/// surrounding whitespace. Shared with `spool_name`, whose `uniqueid` becomes the call id.
pub(crate) fn check_call_id(value: &str) -> Result<(), FieldProblem> {
    check_text(value, MAX_CALL_ID_CHARS)?;
    match value.chars().position(|ch| ch == '/') {
        Some(char_idx) => Err(FieldProblem::Character {
            ch: '/',
            position: char_idx + 1,
        }),
        None => Ok(()),
    }
}

/// Non-empty, at most `max` characters, printable, no surrounding whitespace.
fn check_text(value: &str, max: usize) -> Result<(), FieldProblem> {
    if value.is_empty() {
        return Err(FieldProblem::Empty);
    }
    let chars = value.chars().count();
    if chars > max {
        return Err(FieldProblem::TooLong { chars, max });
    }
    for (char_idx, ch) in value.chars().enumerate() {
        if !is_printable(ch) {
            return Err(FieldProblem::Character {
                ch,
                position: char_idx + 1,
            });
        }
    }
    if value.trim() != value {
        return Err(FieldProblem::Whitespace);
    }
    Ok(())
}

/// False for control characters and for the invisible formatting characters that make a
/// text display differently from what it holds (zero-width, bidirectional controls, line
/// and paragraph separators, byte-order mark, soft hyphen).
fn is_printable(ch: char) -> bool {
    let invisible = matches!(
        ch,
        '\u{ad}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    );
    !ch.is_control() && !invisible
}

/// Parses RFC 3339 strictly: `YYYY-MM-DD`, `T` (or `t` or a space), `HH:MM:SS`, an optional
/// fraction (at most nanoseconds), then `Z` (or `z`) or `±HH:MM`. jiff's own parser accepts
/// more (ISO 8601 basic format, bracketed annotations, missing seconds), so the shape is
/// checked here first and jiff then checks the values (month 13, February 30…).
fn parse_rfc3339(text: &str) -> Result<Timestamp, FieldProblem> {
    let shape_error = || FieldProblem::NotRfc3339 {
        reason: "expected `YYYY-MM-DDTHH:MM:SS[.fraction]` then `Z` or `±HH:MM`".to_string(),
    };
    let bytes = text.as_bytes();
    let digits_at = |range: std::ops::Range<usize>| match bytes.get(range) {
        Some(part) => part.iter().all(u8::is_ascii_digit),
        None => false,
    };
    let head_ok = digits_at(0..4)
        && bytes.get(4) == Some(&b'-')
        && digits_at(5..7)
        && bytes.get(7) == Some(&b'-')
        && digits_at(8..10)
        && matches!(bytes.get(10), Some(b'T' | b't' | b' '))
        && digits_at(11..13)
        && bytes.get(13) == Some(&b':')
        && digits_at(14..16)
        && bytes.get(16) == Some(&b':')
        && digits_at(17..19);
    if !head_ok {
        return Err(shape_error());
    }
    let mut rest = &bytes[19..];
    if let Some(after_dot) = rest.strip_prefix(b".") {
        let n_fraction_digits = after_dot.iter().take_while(|b| b.is_ascii_digit()).count();
        if n_fraction_digits == 0 {
            return Err(shape_error());
        }
        rest = &after_dot[n_fraction_digits..];
    }
    let offset_ok = match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit())
                && (h1 - b'0') * 10 + (h2 - b'0') <= 23
                && (m1 - b'0') * 10 + (m2 - b'0') <= 59
        }
        _ => false,
    };
    if !offset_ok {
        return Err(shape_error());
    }
    match text.parse::<Timestamp>() {
        Ok(timestamp) => Ok(timestamp),
        Err(error) => Err(FieldProblem::NotRfc3339 {
            reason: error.to_string(),
        }),
    }
}

fn invalid_field(field: &'static str, problem: FieldProblem) -> MetadataError {
    MetadataError::Invalid { field, problem }
}

/// Attaches the field name to a value check.
fn invalid<T>(field: &'static str, checked: Result<T, FieldProblem>) -> Result<T, MetadataError> {
    match checked {
        Ok(value) => Ok(value),
        Err(problem) => Err(invalid_field(field, problem)),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn required_string(field: &'static str, value: Option<Value>) -> Result<String, MetadataError> {
    match value {
        None => Err(MetadataError::Missing { field }),
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(invalid_field(
            field,
            FieldProblem::WrongType {
                expected: "a string",
                found: json_type(&other),
            },
        )),
    }
}

/// Absent and `null` are `None`; anything else must be a string.
fn optional_string(
    field: &'static str,
    value: Option<Value>,
) -> Result<Option<String>, MetadataError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(invalid_field(
            field,
            FieldProblem::WrongType {
                expected: "a string or null",
                found: json_type(&other),
            },
        )),
    }
}

fn optional_number(
    field: &'static str,
    value: Option<Value>,
) -> Result<Option<PhoneNumber>, MetadataError> {
    match optional_string(field, value)? {
        None => Ok(None),
        Some(text) if text.is_empty() => Err(invalid_field(field, FieldProblem::Empty)),
        Some(text) => match PhoneNumber::parse(&text) {
            Ok(number) => Ok(Some(number)),
            Err(error) => Err(invalid_field(field, FieldProblem::Number(error))),
        },
    }
}

fn optional_label(
    field: &'static str,
    value: Option<Value>,
) -> Result<Option<String>, MetadataError> {
    match optional_string(field, value)? {
        None => Ok(None),
        Some(text) => {
            invalid(field, check_text(&text, MAX_LABEL_CHARS))?;
            Ok(Some(text))
        }
    }
}

/// The members of a JSON object in document order, duplicates kept, so that `from_json` can
/// refuse repeated and unknown fields with its own messages.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
        deserializer.deserialize_map(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Value>()? {
            entries.push(entry);
        }
        Ok(Entries(entries))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// One helper for the module. An input starting with `{` or `[` is a metadata document for
    /// `CallMetadata::from_json`; any other input is a phone number for `PhoneNumber::parse`.
    /// The outcome is rendered as one line and compared with `expected`.
    fn check(input: &str, expected: &str) {
        let actual = if input.starts_with(['{', '[']) {
            match CallMetadata::from_json(input.as_bytes()) {
                Ok(metadata) => render_metadata(&metadata),
                Err(error) => format!("error: {error}"),
            }
        } else {
            match PhoneNumber::parse(input) {
                Ok(number) => format!(
                    "{} masked={} last={}",
                    number.as_str(),
                    number.masked(),
                    number.last_digits()
                ),
                Err(error) => format!("error: {error}"),
            }
        };
        assert_eq!(actual, expected, "input: {input:?}");
    }

    fn render_metadata(metadata: &CallMetadata) -> String {
        let number = |number: &Option<PhoneNumber>| match number {
            Some(number) => number.as_str().to_string(),
            None => "-".to_string(),
        };
        let label = |label: &Option<String>| match label {
            Some(label) => label.clone(),
            None => "-".to_string(),
        };
        format!(
            "call_id={} started_at={} direction={} caller={} callee={} account={} operator={} \
             alarm_case={}",
            metadata.call_id,
            metadata.started_at,
            metadata.direction.as_str(),
            number(&metadata.caller),
            number(&metadata.callee),
            label(&metadata.account),
            label(&metadata.operator),
            label(&metadata.alarm_case),
        )
    }

    const SPEC_NUMBER: &str = "+33612345678 masked=+3361234••78 last=78";

    #[test]
    fn spec_example_number_and_mask() {
        check("+33612345678", SPEC_NUMBER);
        check("+33145678900", "+33145678900 masked=+3314567••00 last=00");
    }

    #[test]
    fn french_forms() {
        for input in [
            "+33612345678",
            "+33 6 12 34 56 78",
            "+33 (0)6 12 34 56 78",
            "+33(0)612345678",
            "+33 0612345678",
            "0033612345678",
            "0033 6 12 34 56 78",
            "00 33 (0)6 12 34 56 78",
            "06 12 34 56 78",
            "0612345678",
            "06.12.34.56.78",
            "06-12-34-56-78",
            "(06) 12 34 56 78",
            "  06 12 34 56 78\t",
            "06\u{a0}12\u{a0}34\u{a0}56\u{a0}78",
        ] {
            check(input, SPEC_NUMBER);
        }
        check("01 45 67 89 00", "+33145678900 masked=+3314567••00 last=00");
        check("0800 123 456", "+33800123456 masked=+3380012••56 last=56");
        check(
            "0800 12 34 5",
            "error: French national number has 9 digits, expected 10",
        );
    }

    #[test]
    fn other_countries() {
        check(
            "+44 20 7946 0958",
            "+442079460958 masked=+44207946••58 last=58",
        );
        check(
            "+44 (0)20 7946 0958",
            "+442079460958 masked=+44207946••58 last=58",
        );
        check("0049 30 901820", "+4930901820 masked=+493090••20 last=20");
        check(
            "+1 (202) 555-0143",
            "+12025550143 masked=+1202555••43 last=43",
        );
        check("+12345678", "+12345678 masked=+1234••78 last=78");
        check(
            "+123456789012345",
            "+123456789012345 masked=+12345678901••45 last=45",
        );
    }

    #[test]
    fn bad_numbers() {
        check("", "error: empty");
        check("   ", "error: empty");
        check("+", "error: no digits");
        check("--", "error: no digits");
        check(
            "06 12 34 56 7a",
            "error: character 'a' at position 14 is not allowed \
             (digits, a leading `+`, spaces, `.`, `-` and parentheses only)",
        );
        check(
            "tel:+33612345678",
            "error: character 't' at position 1 is not allowed \
             (digits, a leading `+`, spaces, `.`, `-` and parentheses only)",
        );
        check(
            "06\n12345678",
            "error: character '\\n' at position 3 is not allowed \
             (digits, a leading `+`, spaces, `.`, `-` and parentheses only)",
        );
        check(
            "33+612345678",
            "error: `+` at position 3: only allowed as the first character",
        );
        check(
            "++33612345678",
            "error: `+` at position 2: only allowed as the first character",
        );
        check(
            "33612345678",
            "error: neither international (`+` or `00`) nor French national (leading `0`)",
        );
        check(
            "201",
            "error: neither international (`+` or `00`) nor French national (leading `0`)",
        );
        check(
            "061234567",
            "error: French national number has 9 digits, expected 10",
        );
        check(
            "061234567890",
            "error: French national number has 12 digits, expected 10",
        );
        check(
            "+3361234567",
            "error: French number has 8 digits after +33, expected 9",
        );
        check(
            "+336123456789",
            "error: French number has 10 digits after +33, expected 9",
        );
        check(
            "+33 00612345678",
            "error: French number has 11 digits after +33, expected 9",
        );
        check(
            "+33 0012345678",
            "error: French number cannot start with 0 after +33 and its trunk 0",
        );
        check("+0612345678", "error: country code cannot start with 0");
        check("000612345678", "error: country code cannot start with 0");
        check(
            "+1234567",
            "error: 7 digits after the international prefix, at least 8 needed",
        );
        check(
            "+1234567890123456",
            "error: 16 digits after the international prefix, at most 15 allowed",
        );
        check(&"0".repeat(65), "error: longer than 64 bytes");
    }

    #[test]
    fn equality_is_on_the_normalised_form_and_debug_is_masked() {
        let written = PhoneNumber::parse("06 12 34 56 78").unwrap();
        let e164 = PhoneNumber::parse("+33 (0)6.12.34.56.78").unwrap();
        assert_eq!(written, e164);
        assert_eq!(format!("{written:?}"), "PhoneNumber(\"+3361234••78\")");
        let metadata = CallMetadata::from_json(
            br#"{"call_id":"c","started_at":"2026-11-22T10:15:00+01:00","direction":"inbound",
                 "caller":"0612345678"}"#,
        )
        .unwrap();
        assert!(!format!("{metadata:?}").contains("612345678"));
    }

    /// The SPEC §5.1 object, filled in.
    const SPEC_DOCUMENT: &str = r#"{
        "call_id": "1700000000.123", "started_at": "2026-11-22T10:15:00+01:00",
        "direction": "inbound", "caller": "+33612345678", "callee": "+33145678900",
        "account": "ACC-0042", "operator": "op-17", "alarm_case": null}"#;

    #[test]
    fn spec_example_document() {
        check(
            SPEC_DOCUMENT,
            "call_id=1700000000.123 started_at=2026-11-22T09:15:00Z direction=inbound \
             caller=+33612345678 callee=+33145678900 account=ACC-0042 operator=op-17 \
             alarm_case=-",
        );
    }

    #[test]
    fn minimal_document_and_french_numbers() {
        check(
            r#"{"call_id":"x","started_at":"2026-07-01T08:00:00Z","direction":"outbound"}"#,
            "call_id=x started_at=2026-07-01T08:00:00Z direction=outbound caller=- callee=- \
             account=- operator=- alarm_case=-",
        );
        check(
            r#"{"call_id":"x","started_at":"2026-07-01t10:00:00.5+02:00","direction":"inbound",
                "caller":"06 12 34 56 78","callee":null,"account":null,"operator":null}"#,
            "call_id=x started_at=2026-07-01T08:00:00.5Z direction=inbound caller=+33612345678 \
             callee=- account=- operator=- alarm_case=-",
        );
        check(
            r#"{"call_id":"x","started_at":"2026-07-01 10:00:00-03:30","direction":"inbound"}"#,
            "call_id=x started_at=2026-07-01T13:30:00Z direction=inbound caller=- callee=- \
             account=- operator=- alarm_case=-",
        );
    }

    #[test]
    fn bad_documents() {
        let base = r#""call_id":"x","started_at":"2026-07-01T08:00:00Z","direction":"inbound""#;
        let with = |extra: &str| format!("{{{base},{extra}}}");
        check(
            r#"{"call_id":"x"}"#,
            "error: field `started_at` is required",
        );
        check(
            r#"{"started_at":"2026-07-01T08:00:00Z","direction":"inbound"}"#,
            "error: field `call_id` is required",
        );
        check(
            &with(r#""colour":"red""#),
            "error: field `colour` is not allowed",
        );
        check(
            &with(r#""call_id":"y""#),
            "error: field `call_id` appears more than once",
        );
        check(
            &with(r#""caller":"0612"#).replace("0612", "06123"),
            "error: not a JSON object with the call metadata: EOF while parsing a string at \
             line 1 column 89",
        );
        check(
            &format!("{{{base}}} {{}}"),
            "error: not a JSON object with the call metadata: trailing characters at line 1 \
             column 75",
        );
        check(
            &with(r#""caller":"+33 6 12 34 56 7x""#),
            "error: field `caller`: not a phone number: character 'x' at position 17 is not \
             allowed (digits, a leading `+`, spaces, `.`, `-` and parentheses only)",
        );
        check(
            &with(r#""callee":33612345678"#),
            "error: field `callee`: expected a string or null, found a number",
        );
        check(
            &with(r#""caller":"""#),
            "error: field `caller`: empty (use null when unknown)",
        );
        check(
            &with(r#""account":"""#),
            "error: field `account`: empty (use null when unknown)",
        );
        check(
            &with(&format!(r#""operator":"{}""#, "o".repeat(65))),
            "error: field `operator`: 65 characters, at most 64 allowed",
        );
        check(
            &with(r#""alarm_case":"case\u0007""#),
            "error: field `alarm_case`: character '\\u{7}' at position 5 is not allowed",
        );
        check(
            &with(r#""account":"abc\u202edef""#),
            "error: field `account`: character '\\u{202e}' at position 4 is not allowed",
        );
        check(
            &with(r#""account":" ACC""#),
            "error: field `account`: leading or trailing whitespace",
        );
        check(
            "[]",
            "error: not a JSON object with the call metadata: expected a JSON object",
        );
        check(
            r#"["+33612345678"]"#,
            "error: not a JSON object with the call metadata: expected a JSON object",
        );
        check(
            "{",
            "error: not a JSON object with the call metadata: EOF while parsing an object at \
             line 1 column 1",
        );
    }

    #[test]
    fn bad_call_ids_and_directions() {
        let doc = |call_id: &str, direction: &str| {
            format!(
                r#"{{"call_id":{call_id},"started_at":"{at}","direction":{direction}}}"#,
                at = "2026-07-01T08:00:00Z",
            )
        };
        check(
            &doc(r#""""#, r#""inbound""#),
            "error: field `call_id`: empty (use null when unknown)",
        );
        check(
            &doc(r#""a/b""#, r#""inbound""#),
            "error: field `call_id`: character '/' at position 2 is not allowed",
        );
        check(
            &doc(r#""a\nb""#, r#""inbound""#),
            "error: field `call_id`: character '\\n' at position 2 is not allowed",
        );
        check(
            &doc(&format!(r#""{}""#, "é".repeat(129)), r#""inbound""#),
            "error: field `call_id`: 129 characters, at most 128 allowed",
        );
        check(
            &doc(&format!(r#""{}""#, "é".repeat(128)), r#""inbound""#),
            &format!(
                "call_id={} started_at=2026-07-01T08:00:00Z direction=inbound caller=- \
                 callee=- account=- operator=- alarm_case=-",
                "é".repeat(128)
            ),
        );
        check(
            &doc("null", r#""inbound""#),
            "error: field `call_id`: expected a string, found null",
        );
        check(
            &doc(r#""x""#, r#""Inbound""#),
            "error: field `direction`: expected `inbound` or `outbound`",
        );
        check(
            &doc(r#""x""#, "1"),
            "error: field `direction`: expected a string, found a number",
        );
    }

    #[test]
    fn bad_times() {
        let doc = |started_at: &str| {
            format!(r#"{{"call_id":"x","started_at":"{started_at}","direction":"inbound"}}"#)
        };
        let shape = "error: field `started_at`: not an RFC 3339 time: expected \
                     `YYYY-MM-DDTHH:MM:SS[.fraction]` then `Z` or `±HH:MM`";
        for started_at in [
            "",
            "2026-07-01",
            "2026-07-01T08:00Z",
            "2026-07-01T08:00:00",
            "20260701T080000Z",
            "2026-07-01T08:00:00Z[Europe/Paris]",
            "2026-07-01T08:00:00.Z",
            "2026-07-01T08:00:00+0200",
            "2026-07-01T08:00:00+24:00",
            "+002026-07-01T08:00:00Z",
            "2026-07-01T08:00:00Z ",
        ] {
            check(&doc(started_at), shape);
        }
        check(
            &doc("2026-13-01T08:00:00Z"),
            "error: field `started_at`: not an RFC 3339 time: failed to parse two digit integer \
             as month: parameter 'month' is not in the required range of 1..=12",
        );
        check(
            &doc("2026-02-30T08:00:00Z"),
            "error: field `started_at`: not an RFC 3339 time: parsed date is not valid: \
             parameter 'day' for `2026-02` is invalid, must be in range `1..=28`",
        );
    }

    #[test]
    fn size_cap() {
        let document = format!(
            r#"{{"call_id":"x","started_at":"2026-07-01T08:00:00Z","direction":"inbound"}}{}"#,
            " ".repeat(MAX_METADATA_BYTES),
        );
        check(
            &document,
            &format!(
                "error: metadata is {} bytes, at most 65536 allowed",
                document.len()
            ),
        );
    }

    /// A French national number and the same digits written with random separators.
    fn written_french_number() -> impl Strategy<Value = (String, String)> {
        (
            "0[1-9][0-9]{8}",
            prop::collection::vec(prop::sample::select(vec!["", " ", ".", "-"]), 10),
            prop::sample::select(vec!["national", "+33", "0033", "+33 (0)"]),
        )
            .prop_map(|(digits, separators, prefix)| {
                let expected = format!("+33{}", &digits[1..]);
                let body_digits = match prefix {
                    "national" => &digits[..],
                    _ => &digits[1..],
                };
                let mut written = match prefix {
                    "national" => String::new(),
                    other => other.to_string(),
                };
                for (digit, separator) in body_digits.chars().zip(separators) {
                    written.push(digit);
                    written.push_str(separator);
                }
                (written, expected)
            })
    }

    proptest! {
        #[test]
        fn number_parser_never_panics(input in any::<String>()) {
            let _ = PhoneNumber::parse(&input);
        }

        #[test]
        fn number_parser_never_panics_on_number_like_text(input in "[0-9+ ().\\-]{0,40}") {
            if let Ok(number) = PhoneNumber::parse(&input) {
                prop_assert!(number.as_str().starts_with('+'));
                prop_assert!((9..=16).contains(&number.as_str().len()));
                prop_assert_eq!(number.masked().chars().count(), number.as_str().len());
            }
        }

        #[test]
        fn written_french_number_round_trips((written, expected) in written_french_number()) {
            let number = PhoneNumber::parse(&written).unwrap();
            prop_assert_eq!(number.as_str(), expected.as_str());
            let again = PhoneNumber::parse(number.as_str()).unwrap();
            prop_assert_eq!(again, number);
        }

        #[test]
        fn metadata_parser_never_panics(input in any::<Vec<u8>>()) {
            let _ = CallMetadata::from_json(&input);
        }

        #[test]
        fn metadata_parser_never_panics_on_objects(
            members in prop::collection::vec(
                (
                    prop::sample::select(FIELDS.to_vec()),
                    prop_oneof![
                        Just("null".to_string()),
                        Just("1".to_string()),
                        ".{0,20}".prop_map(|text| serde_json::Value::String(text).to_string()),
                    ],
                ),
                0..10,
            )
        ) {
            let members: Vec<String> =
                members.iter().map(|(name, value)| format!("\"{name}\":{value}")).collect();
            let _ = CallMetadata::from_json(format!("{{{}}}", members.join(",")).as_bytes());
        }

        #[test]
        fn valid_metadata_round_trips(
            call_id in "[A-Za-z0-9._:-]{1,128}",
            seconds in 0i64..4_102_444_800,
            offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59i32),
            inbound in any::<bool>(),
            caller in proptest::option::of(written_french_number()),
            account in proptest::option::of("[A-Za-z0-9][A-Za-z0-9 _-]{0,62}[A-Za-z0-9]"),
        ) {
            let started_at = Timestamp::from_second(seconds).unwrap();
            let offset = jiff::tz::Offset::from_seconds(offset_minutes * 60).unwrap();
            let written_time = started_at.display_with_offset(offset).to_string();
            let document = serde_json::json!({
                "call_id": call_id,
                "started_at": written_time,
                "direction": if inbound { "inbound" } else { "outbound" },
                "caller": caller.as_ref().map(|(written, _)| written.clone()),
                "account": account,
            });
            let metadata = CallMetadata::from_json(document.to_string().as_bytes()).unwrap();
            prop_assert_eq!(&metadata.call_id, &call_id);
            prop_assert_eq!(metadata.started_at, started_at);
            prop_assert_eq!(metadata.direction == Direction::Inbound, inbound);
            prop_assert_eq!(
                metadata.caller.as_ref().map(|number| number.as_str().to_string()),
                caller.map(|(_, expected)| expected)
            );
            prop_assert_eq!(metadata.account, account);
        }
    }
}
