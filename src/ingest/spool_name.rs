//! Spool file names (SPEC §5.2): owns `classify` (sidecar, audio, temporary, other) and the
//! FreePBX/Asterisk name parser `parse_spool_name`, which turns
//! `{type}-{to}-{from}-{YYYYMMDD}-{HHMMSS}-{uniqueid}.{ext}` into `CallMetadata`. It must not
//! touch the file system, read the clock or put a phone number in an error message.
//!
//! Decisions written down here:
//! - **Extension**: the part after the *last* dot (`1700000000.123.wav` → `wav`); compared
//!   without regard to case, reported as written (Asterisk writes GSM-in-WAV as `.WAV`).
//! - **Fields**: the stem is split on the first five `-`; the sixth field, the uniqueid, keeps
//!   any further `-` (Asterisk prefixes it with `systemname-` when one is set). It becomes the
//!   call id, so it follows the call-id rule of `metadata`.
//! - **Parties** (`to` = callee, `from` = caller): empty, `s` (Asterisk's start extension,
//!   used when there is no DID) and `anonymous`, `unknown`, `private`, `restricted`,
//!   `unavailable`, `withheld` (any case) are `Party::Unknown`; 1 to 6 digits are an internal
//!   `Party::Extension`; anything else must be a phone number (`PhoneNumber::parse`), or the
//!   name is refused. Refusing fails closed: a caller number that cannot be normalised could
//!   not be matched against the objection registry, and the file goes to quarantine, not away.
//! - **Direction**: `in`, `external`, `q`, `g` → inbound; `out` → outbound; `exten` (between
//!   extensions) and `ondemand` (recording started by hand, either way) → inbound, the
//!   centre's usual case. The objection check looks at the caller whatever the direction.
//! - **Local time**: date and time are wall-clock time in the configured zone
//!   (`ingest.spool_timezone`, default `Europe/Paris`), converted with jiff's *compatible*
//!   disambiguation: a time in the spring-forward gap (02:30 on the last Sunday of March in
//!   Paris, which never happened) is read with the offset in force before the gap (+01:00, so
//!   01:30 UTC, the instant a clock that did not jump would show); a time in the autumn fold
//!   (02:30 on the last Sunday of October, which happened twice) is the *earlier* instant
//!   (+02:00, 00:30 UTC). The name carries no offset, so the second 02:30 is one hour early.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;

use crate::ingest::metadata::{self, CallMetadata, Direction, NumberError, PhoneNumber};

/// Audio extensions the spool takes (SPEC §5.3), compared without regard to case.
pub const AUDIO_EXTENSIONS: [&str; 11] = [
    "wav", "wav49", "gsm", "ulaw", "alaw", "sln", "flac", "mp3", "ogg", "opus", "oga",
];

/// Longest file name parsed, in bytes (the Linux `NAME_MAX`).
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// Values of `to`/`from` that mean "no number" (compared without regard to case); the empty
/// value means the same.
const UNKNOWN_PARTIES: [&str; 7] = [
    "s",
    "anonymous",
    "unknown",
    "private",
    "restricted",
    "unavailable",
    "withheld",
];

/// Most digits in an internal extension.
const MAX_EXTENSION_DIGITS: usize = 6;

/// What a file in the spool directory is, from its name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolFile {
    /// `STEM.EXT` with an audio extension: a recording, described either by `STEM.json` or,
    /// without one, by a FreePBX-style name.
    Audio { stem: String, ext: String },
    /// Anything else: not a recognised recording name; never dropped silently (the spool
    /// worker quarantines it after a grace period, or probes it if a sidecar names its stem).
    Other,
    /// `STEM.json`: the metadata of `STEM.<audio>`, written last, marks it complete.
    Sidecar { stem: String },
    /// A name used while a file is being written: leading `.`, trailing `~`, or a `.part` or
    /// `.tmp` suffix. Ignored until renamed.
    Temporary,
}

/// The FreePBX/Asterisk recording types of SPEC §5.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordingType {
    /// `exten`: a call between two internal extensions.
    Exten,
    /// `external`: a call with an outside party, recorded by the route.
    External,
    /// `in`: an inbound call, recorded by the inbound route.
    In,
    /// `ondemand`: recording started by hand during a call.
    OnDemand,
    /// `out`: an outbound call.
    Out,
    /// `q`: a call answered through a queue.
    Queue,
    /// `g`: a call answered through a ring group.
    RingGroup,
}

/// One side of the call as the name gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Party {
    /// An internal extension (1 to 6 digits), such as `201`: not a phone number.
    Extension(String),
    /// A phone number, normalised.
    Number(PhoneNumber),
    /// No number: empty, withheld or unknown.
    Unknown,
}

/// A parsed FreePBX/Asterisk spool name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolName {
    /// The `type` field.
    pub recording_type: RecordingType,
    /// `to`: the called party.
    pub callee: Party,
    /// `from`: the calling party.
    pub caller: Party,
    /// The date and time fields, in the configured zone, as an instant.
    pub started_at: Timestamp,
    /// `uniqueid`, which is the call id.
    pub call_id: String,
    /// The extension as written (`wav`, `WAV`, `gsm`…).
    pub ext: String,
}

/// Why a file name is not a FreePBX/Asterisk recording name. Fields are numbered from 1 in
/// the order `type`, `to`, `from`, date, time, `uniqueid`; `to` and `from` are never echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolNameError {
    #[error("field {index} `{}`: {problem}", .value.escape_debug())]
    Field {
        index: usize,
        value: String,
        problem: FieldProblem,
    },
    #[error(
        "expected 6 fields `type-to-from-YYYYMMDD-HHMMSS-uniqueid` before the extension, \
         found {found}"
    )]
    FieldCount { found: usize },
    #[error("local time {local} cannot be placed in time zone {zone}: {reason}")]
    LocalTime {
        local: DateTime,
        zone: String,
        reason: String,
    },
    #[error("no extension")]
    NoExtension,
    #[error("extension `{}` is not an audio extension", .ext.escape_debug())]
    NotAudio { ext: String },
    #[error(
        "field {index} (`{name}`): not empty, a withheld marker, an extension (1 to 6 digits) \
         or a phone number: {reason}"
    )]
    Party {
        index: usize,
        name: &'static str,
        reason: NumberError,
    },
    #[error("file name is {len} bytes, at most {max} allowed")]
    TooLong { len: usize, max: usize },
}

/// What is wrong with one field of a spool name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    #[error("not a call id: {0}")]
    CallId(metadata::FieldProblem),
    #[error("expected 8 digits YYYYMMDD")]
    DateShape,
    #[error("day {day} out of range (1..={days_in_month})")]
    DayRange { day: i8, days_in_month: i8 },
    #[error("hour {0} out of range")]
    HourRange(i8),
    #[error("minute {0} out of range")]
    MinuteRange(i8),
    #[error("month {0} out of range")]
    MonthRange(i8),
    #[error("second {0} out of range")]
    SecondRange(i8),
    #[error("expected 6 digits HHMMSS")]
    TimeShape,
    #[error("unknown recording type (expected in, out, external, q, g, exten or ondemand)")]
    UnknownType,
}

/// Says what a spool file is from its name. Names are bare file names, not paths.
pub fn classify(file_name: &str) -> SpoolFile {
    let lower = file_name.to_ascii_lowercase();
    let is_temporary = file_name.starts_with('.')
        || file_name.ends_with('~')
        || lower.ends_with(".part")
        || lower.ends_with(".tmp");
    if is_temporary {
        return SpoolFile::Temporary;
    }
    if file_name.is_empty() || file_name.contains(['/', '\0']) {
        return SpoolFile::Other;
    }
    let (stem, ext) = match file_name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => (stem, ext),
        Some(_) | None => return SpoolFile::Other,
    };
    if is_audio_extension(ext) {
        SpoolFile::Audio {
            stem: stem.to_string(),
            ext: ext.to_string(),
        }
    } else if ext.eq_ignore_ascii_case("json") {
        SpoolFile::Sidecar {
            stem: stem.to_string(),
        }
    } else {
        SpoolFile::Other
    }
}

/// Parses a FreePBX/Asterisk recording name, reading its date and time in `tz`.
pub fn parse_spool_name(file_name: &str, tz: &TimeZone) -> Result<SpoolName, SpoolNameError> {
    if file_name.len() > MAX_FILE_NAME_BYTES {
        return Err(SpoolNameError::TooLong {
            len: file_name.len(),
            max: MAX_FILE_NAME_BYTES,
        });
    }
    let (stem, ext) = match file_name.rsplit_once('.') {
        Some((stem, ext)) if !ext.is_empty() => (stem, ext),
        Some(_) | None => return Err(SpoolNameError::NoExtension),
    };
    if !is_audio_extension(ext) {
        return Err(SpoolNameError::NotAudio {
            ext: ext.to_string(),
        });
    }
    let fields: Vec<&str> = stem.splitn(6, '-').collect();
    let (type_field, to_field, from_field, date_field, time_field, uniqueid) = match fields[..] {
        [
            type_field,
            to_field,
            from_field,
            date_field,
            time_field,
            uniqueid,
        ] => (
            type_field, to_field, from_field, date_field, time_field, uniqueid,
        ),
        _ => {
            return Err(SpoolNameError::FieldCount {
                found: fields.len(),
            });
        }
    };
    let field_error = |index: usize, value: &str, problem: FieldProblem| SpoolNameError::Field {
        index,
        value: value.to_string(),
        problem,
    };

    let recording_type = match RecordingType::parse(type_field) {
        Some(recording_type) => recording_type,
        None => return Err(field_error(1, type_field, FieldProblem::UnknownType)),
    };
    let callee = match parse_party(to_field) {
        Ok(party) => party,
        Err(reason) => {
            return Err(SpoolNameError::Party {
                index: 2,
                name: "to",
                reason,
            });
        }
    };
    let caller = match parse_party(from_field) {
        Ok(party) => party,
        Err(reason) => {
            return Err(SpoolNameError::Party {
                index: 3,
                name: "from",
                reason,
            });
        }
    };
    let date = match parse_date(date_field) {
        Ok(date) => date,
        Err(problem) => return Err(field_error(4, date_field, problem)),
    };
    let time = match parse_time(time_field) {
        Ok(time) => time,
        Err(problem) => return Err(field_error(5, time_field, problem)),
    };
    match metadata::check_call_id(uniqueid) {
        Ok(()) => {}
        Err(problem) => return Err(field_error(6, uniqueid, FieldProblem::CallId(problem))),
    }

    let local = date.to_datetime(time);
    let started_at = match tz.to_ambiguous_timestamp(local).compatible() {
        Ok(started_at) => started_at,
        Err(error) => {
            return Err(SpoolNameError::LocalTime {
                local,
                zone: tz.iana_name().unwrap_or("(unnamed)").to_string(),
                reason: error.to_string(),
            });
        }
    };

    Ok(SpoolName {
        recording_type,
        callee,
        caller,
        started_at,
        call_id: uniqueid.to_string(),
        ext: ext.to_string(),
    })
}

impl SpoolName {
    /// The metadata this name gives. Account, operator and alarm case are not in the name.
    pub fn into_metadata(self) -> CallMetadata {
        CallMetadata {
            call_id: self.call_id,
            started_at: self.started_at,
            direction: self.recording_type.direction(),
            caller: self.caller.into_number(),
            callee: self.callee.into_number(),
            account: None,
            operator: None,
            alarm_case: None,
        }
    }
}

impl RecordingType {
    /// Reads the `type` field; exact lowercase tokens only, as FreePBX writes them.
    pub fn parse(token: &str) -> Option<RecordingType> {
        match token {
            "exten" => Some(RecordingType::Exten),
            "external" => Some(RecordingType::External),
            "in" => Some(RecordingType::In),
            "ondemand" => Some(RecordingType::OnDemand),
            "out" => Some(RecordingType::Out),
            "q" => Some(RecordingType::Queue),
            "g" => Some(RecordingType::RingGroup),
            _ => None,
        }
    }

    /// The token in file names.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingType::Exten => "exten",
            RecordingType::External => "external",
            RecordingType::In => "in",
            RecordingType::OnDemand => "ondemand",
            RecordingType::Out => "out",
            RecordingType::Queue => "q",
            RecordingType::RingGroup => "g",
        }
    }

    /// The call's direction (see the module documentation for `exten` and `ondemand`).
    pub fn direction(self) -> Direction {
        match self {
            RecordingType::External
            | RecordingType::In
            | RecordingType::Queue
            | RecordingType::RingGroup => Direction::Inbound,
            RecordingType::Out => Direction::Outbound,
            RecordingType::Exten | RecordingType::OnDemand => Direction::Inbound,
        }
    }
}

impl Party {
    /// The phone number, if this party has one.
    pub fn into_number(self) -> Option<PhoneNumber> {
        match self {
            Party::Number(number) => Some(number),
            Party::Extension(_) | Party::Unknown => None,
        }
    }
}

fn is_audio_extension(ext: &str) -> bool {
    AUDIO_EXTENSIONS
        .iter()
        .any(|audio| audio.eq_ignore_ascii_case(ext))
}

fn parse_party(value: &str) -> Result<Party, NumberError> {
    let is_unknown = value.is_empty()
        || UNKNOWN_PARTIES
            .iter()
            .any(|marker| marker.eq_ignore_ascii_case(value));
    if is_unknown {
        return Ok(Party::Unknown);
    }
    if value.len() <= MAX_EXTENSION_DIGITS && value.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Party::Extension(value.to_string()));
    }
    PhoneNumber::parse(value).map(Party::Number)
}

/// `n` ASCII digits as a number, or `None` for any other shape.
fn fixed_digits(text: &str, n: usize) -> Option<i16> {
    if text.len() == n && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

fn parse_date(field: &str) -> Result<Date, FieldProblem> {
    let (year, month, day) = match (
        field.get(0..4).and_then(|part| fixed_digits(part, 4)),
        field.get(4..6).and_then(|part| fixed_digits(part, 2)),
        field.get(6..8).and_then(|part| fixed_digits(part, 2)),
    ) {
        (Some(year), Some(month), Some(day)) if field.len() == 8 => (year, month as i8, day as i8),
        _ => return Err(FieldProblem::DateShape),
    };
    if !(1..=12).contains(&month) {
        return Err(FieldProblem::MonthRange(month));
    }
    let days_in_month = match Date::new(year, month, 1) {
        Ok(first) => first.days_in_month(),
        Err(_) => return Err(FieldProblem::DateShape),
    };
    if !(1..=days_in_month).contains(&day) {
        return Err(FieldProblem::DayRange { day, days_in_month });
    }
    match Date::new(year, month, day) {
        Ok(date) => Ok(date),
        Err(_) => Err(FieldProblem::DayRange { day, days_in_month }),
    }
}

fn parse_time(field: &str) -> Result<Time, FieldProblem> {
    let (hour, minute, second) = match (
        field.get(0..2).and_then(|part| fixed_digits(part, 2)),
        field.get(2..4).and_then(|part| fixed_digits(part, 2)),
        field.get(4..6).and_then(|part| fixed_digits(part, 2)),
    ) {
        (Some(hour), Some(minute), Some(second)) if field.len() == 6 => {
            (hour as i8, minute as i8, second as i8)
        }
        _ => return Err(FieldProblem::TimeShape),
    };
    if hour > 23 {
        return Err(FieldProblem::HourRange(hour));
    }
    if minute > 59 {
        return Err(FieldProblem::MinuteRange(minute));
    }
    if second > 59 {
        return Err(FieldProblem::SecondRange(second));
    }
    match Time::new(hour, minute, second, 0) {
        Ok(time) => Ok(time),
        Err(_) => Err(FieldProblem::TimeShape),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn paris() -> TimeZone {
        TimeZone::get("Europe/Paris").unwrap()
    }

    /// One helper for the module: classifies `input` and, for an audio file, parses it as a
    /// FreePBX name in Europe/Paris (the default `ingest.spool_timezone`), then compares the
    /// one-line rendering with `expected`.
    fn check(input: &str, expected: &str) {
        let actual = match classify(input) {
            SpoolFile::Audio { stem, ext } => {
                let parsed = match parse_spool_name(input, &paris()) {
                    Ok(name) => render(name),
                    Err(error) => format!("error: {error}"),
                };
                format!("audio {stem} {ext}: {parsed}")
            }
            SpoolFile::Other => "other".to_string(),
            SpoolFile::Sidecar { stem } => format!("sidecar {stem}"),
            SpoolFile::Temporary => "temporary".to_string(),
        };
        assert_eq!(actual, expected, "input: {input:?}");
    }

    fn render(name: SpoolName) -> String {
        let party = |party: &Party| match party {
            Party::Extension(extension) => format!("ext:{extension}"),
            Party::Number(number) => number.as_str().to_string(),
            Party::Unknown => "unknown".to_string(),
        };
        let head = format!(
            "{} to={} from={}",
            name.recording_type.as_str(),
            party(&name.callee),
            party(&name.caller)
        );
        let metadata = name.into_metadata();
        let number = |number: &Option<PhoneNumber>| match number {
            Some(number) => number.as_str().to_string(),
            None => "-".to_string(),
        };
        format!(
            "{head} => call_id={} started_at={} direction={} caller={} callee={}",
            metadata.call_id,
            metadata.started_at,
            metadata.direction.as_str(),
            number(&metadata.caller),
            number(&metadata.callee),
        )
    }

    const SPEC_NAME: &str = "in-0145678900-0612345678-20261122-101500-1700000000.123.wav";

    #[test]
    fn spec_example() {
        check(
            SPEC_NAME,
            "audio in-0145678900-0612345678-20261122-101500-1700000000.123 wav: in \
             to=+33145678900 from=+33612345678 => call_id=1700000000.123 \
             started_at=2026-11-22T09:15:00Z direction=inbound caller=+33612345678 \
             callee=+33145678900",
        );
    }

    #[test]
    fn types_and_directions() {
        let expect = |recording_type: &str, direction: &str| {
            format!(
                "audio {recording_type}-201-0612345678-20260715-083000-1.2 wav: \
                 {recording_type} to=ext:201 from=+33612345678 => call_id=1.2 \
                 started_at=2026-07-15T06:30:00Z direction={direction} caller=+33612345678 \
                 callee=-"
            )
        };
        for (recording_type, direction) in [
            ("in", "inbound"),
            ("external", "inbound"),
            ("q", "inbound"),
            ("g", "inbound"),
            ("out", "outbound"),
            ("exten", "inbound"),
            ("ondemand", "inbound"),
        ] {
            check(
                &format!("{recording_type}-201-0612345678-20260715-083000-1.2.wav"),
                &expect(recording_type, direction),
            );
        }
    }

    #[test]
    fn parties() {
        check(
            "out-+33612345678-201-20260715-083000-1.2.wav",
            "audio out-+33612345678-201-20260715-083000-1.2 wav: out to=+33612345678 \
             from=ext:201 => call_id=1.2 started_at=2026-07-15T06:30:00Z direction=outbound \
             caller=- callee=+33612345678",
        );
        check(
            "out-0033612345678--20260715-083000-1.2.wav",
            "audio out-0033612345678--20260715-083000-1.2 wav: out to=+33612345678 \
             from=unknown => call_id=1.2 started_at=2026-07-15T06:30:00Z direction=outbound \
             caller=- callee=+33612345678",
        );
        for marker in [
            "anonymous",
            "Anonymous",
            "unknown",
            "UNKNOWN",
            "s",
            "Restricted",
        ] {
            check(
                &format!("in-s-{marker}-20260715-083000-1.2.wav"),
                &format!(
                    "audio in-s-{marker}-20260715-083000-1.2 wav: in to=unknown from=unknown => \
                     call_id=1.2 started_at=2026-07-15T06:30:00Z direction=inbound caller=- \
                     callee=-"
                ),
            );
        }
        check(
            "exten-201-202-20260715-083000-1.2.wav",
            "audio exten-201-202-20260715-083000-1.2 wav: exten to=ext:201 from=ext:202 => \
             call_id=1.2 started_at=2026-07-15T06:30:00Z direction=inbound caller=- callee=-",
        );
        check(
            "in-0145678900-+442079460958-20260715-083000-1.2.wav",
            "audio in-0145678900-+442079460958-20260715-083000-1.2 wav: in to=+33145678900 \
             from=+442079460958 => call_id=1.2 started_at=2026-07-15T06:30:00Z \
             direction=inbound caller=+442079460958 callee=+33145678900",
        );
    }

    #[test]
    fn uniqueid_and_extension() {
        check(
            "in-0145678900-0612345678-20261122-101500-pbx1-1700000000.123.WAV",
            "audio in-0145678900-0612345678-20261122-101500-pbx1-1700000000.123 WAV: in \
             to=+33145678900 from=+33612345678 => call_id=pbx1-1700000000.123 \
             started_at=2026-11-22T09:15:00Z direction=inbound caller=+33612345678 \
             callee=+33145678900",
        );
        for ext in AUDIO_EXTENSIONS {
            check(
                &format!("in-201-202-20261122-101500-1.{ext}"),
                &format!(
                    "audio in-201-202-20261122-101500-1 {ext}: in to=ext:201 from=ext:202 => \
                     call_id=1 started_at=2026-11-22T09:15:00Z direction=inbound caller=- \
                     callee=-"
                ),
            );
        }
    }

    #[test]
    fn classification() {
        check("call-42.json", "sidecar call-42");
        check(&format!("{SPEC_NAME}.part"), "temporary");
        check(&format!("{SPEC_NAME}.tmp"), "temporary");
        check("call-42.json.TMP", "temporary");
        check(&format!(".{SPEC_NAME}"), "temporary");
        check(&format!("{SPEC_NAME}~"), "temporary");
        check(".wav", "temporary");
        check("", "other");
        check("wav", "other");
        check("call-42.txt", "other");
        check("call-42.", "other");
        check("dir/call-42.wav", "other");
        check(
            "call-42.wav",
            "audio call-42 wav: error: expected 6 fields `type-to-from-YYYYMMDD-HHMMSS-uniqueid` \
             before the extension, found 2",
        );
    }

    #[test]
    fn bad_names() {
        let name = |fields: &str| format!("{fields}.wav");
        let error = |fields: &str, message: &str| format!("audio {fields} wav: error: {message}");
        for (fields, message) in [
            (
                "inbound-201-202-20261122-101500-1",
                "field 1 `inbound`: unknown recording type (expected in, out, external, q, g, \
                 exten or ondemand)",
            ),
            (
                "in-201-202-20261340-101500-1",
                "field 4 `20261340`: month 13 out of range",
            ),
            (
                "in-201-202-20261300-101500-1",
                "field 4 `20261300`: month 13 out of range",
            ),
            (
                "in-201-202-20260001-101500-1",
                "field 4 `20260001`: month 0 out of range",
            ),
            (
                "in-201-202-20260230-101500-1",
                "field 4 `20260230`: day 30 out of range (1..=28)",
            ),
            (
                "in-201-202-20261100-101500-1",
                "field 4 `20261100`: day 0 out of range (1..=30)",
            ),
            (
                "in-201-202-2026112-101500-1",
                "field 4 `2026112`: expected 8 digits YYYYMMDD",
            ),
            (
                "in-201-202-2026-11-22-1",
                "field 4 `2026`: expected 8 digits YYYYMMDD",
            ),
            (
                "in-201-202-2026112x-101500-1",
                "field 4 `2026112x`: expected 8 digits YYYYMMDD",
            ),
            (
                "in-201-202-20261122-241500-1",
                "field 5 `241500`: hour 24 out of range",
            ),
            (
                "in-201-202-20261122-106000-1",
                "field 5 `106000`: minute 60 out of range",
            ),
            (
                "in-201-202-20261122-101560-1",
                "field 5 `101560`: second 60 out of range",
            ),
            (
                "in-201-202-20261122-1015-1",
                "field 5 `1015`: expected 6 digits HHMMSS",
            ),
            (
                "in-201-202-20261122-101500-",
                "field 6 ``: not a call id: empty (use null when unknown)",
            ),
            (
                "in-201-202-20261122-101500-a\nb",
                "field 6 `a\\nb`: not a call id: character '\\n' at position 2 is not allowed",
            ),
            (
                "in-201-202-20261122-101500",
                "expected 6 fields `type-to-from-YYYYMMDD-HHMMSS-uniqueid` before the \
                 extension, found 5",
            ),
            (
                "in-33612345678-202-20261122-101500-1",
                "field 2 (`to`): not empty, a withheld marker, an extension (1 to 6 digits) or \
                 a phone number: neither international (`+` or `00`) nor French national \
                 (leading `0`)",
            ),
            (
                "in-201-alice-20261122-101500-1",
                "field 3 (`from`): not empty, a withheld marker, an extension (1 to 6 digits) \
                 or a phone number: character 'a' at position 1 is not allowed (digits, a \
                 leading `+`, spaces, `.`, `-` and parentheses only)",
            ),
            (
                "in-201-0612345-20261122-101500-1",
                "field 3 (`from`): not empty, a withheld marker, an extension (1 to 6 digits) \
                 or a phone number: French national number has 7 digits, expected 10",
            ),
        ] {
            check(&name(fields), &error(fields, message));
        }
        assert_eq!(
            parse_spool_name("in-201-202-20261122-101500-1.txt", &paris())
                .unwrap_err()
                .to_string(),
            "extension `txt` is not an audio extension"
        );
        assert_eq!(
            parse_spool_name("in-201-202-20261122-101500-1.2", &paris())
                .unwrap_err()
                .to_string(),
            "extension `2` is not an audio extension"
        );
        assert_eq!(
            parse_spool_name("in-201-202-20261122-101500-1.", &paris())
                .unwrap_err()
                .to_string(),
            "no extension"
        );
        let long = format!("in-201-202-20261122-101500-{}.wav", "1".repeat(230));
        assert_eq!(
            parse_spool_name(&long, &paris()).unwrap_err().to_string(),
            "file name is 261 bytes, at most 255 allowed"
        );
    }

    #[test]
    fn dst_edges_in_paris() {
        // 2026-03-29: clocks go from 02:00 (+01:00) to 03:00 (+02:00); 02:30 never happened
        // and is read with the offset before the gap.
        check(
            "in-201-202-20260329-023000-1.wav",
            "audio in-201-202-20260329-023000-1 wav: in to=ext:201 from=ext:202 => call_id=1 \
             started_at=2026-03-29T01:30:00Z direction=inbound caller=- callee=-",
        );
        check(
            "in-201-202-20260329-015959-1.wav",
            "audio in-201-202-20260329-015959-1 wav: in to=ext:201 from=ext:202 => call_id=1 \
             started_at=2026-03-29T00:59:59Z direction=inbound caller=- callee=-",
        );
        check(
            "in-201-202-20260329-030000-1.wav",
            "audio in-201-202-20260329-030000-1 wav: in to=ext:201 from=ext:202 => call_id=1 \
             started_at=2026-03-29T01:00:00Z direction=inbound caller=- callee=-",
        );
        // 2026-10-25: clocks go from 03:00 (+02:00) back to 02:00 (+01:00); 02:30 happened
        // twice and the earlier instant is taken.
        check(
            "in-201-202-20261025-023000-1.wav",
            "audio in-201-202-20261025-023000-1 wav: in to=ext:201 from=ext:202 => call_id=1 \
             started_at=2026-10-25T00:30:00Z direction=inbound caller=- callee=-",
        );
        check(
            "in-201-202-20261025-030000-1.wav",
            "audio in-201-202-20261025-030000-1 wav: in to=ext:201 from=ext:202 => call_id=1 \
             started_at=2026-10-25T02:00:00Z direction=inbound caller=- callee=-",
        );
    }

    #[test]
    fn other_time_zone_and_range() {
        let utc = parse_spool_name("in-201-202-20261122-101500-1.wav", &TimeZone::UTC).unwrap();
        assert_eq!(utc.started_at.to_string(), "2026-11-22T10:15:00Z");
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        assert_eq!(
            parse_spool_name("in-201-202-00010101-000000-1.wav", &tokyo)
                .unwrap()
                .started_at
                .to_string(),
            "0000-12-31T14:41:01Z"
        );
        match parse_spool_name(
            "in-201-202-99991231-235959-1.wav",
            &TimeZone::fixed(jiff::tz::offset(-12)),
        ) {
            Ok(name) => panic!("accepted {name:?}"),
            Err(error) => assert!(
                error
                    .to_string()
                    .starts_with("local time 9999-12-31T23:59:59 cannot be placed"),
                "{error}"
            ),
        }
    }

    const TYPES: [&str; 7] = ["in", "out", "external", "q", "g", "exten", "ondemand"];

    /// A `to`/`from` value as written and what it should parse to.
    fn party() -> impl Strategy<Value = (String, String)> {
        prop_oneof![
            "0[1-9][0-9]{8}".prop_map(|digits| {
                let expected = format!("+33{}", &digits[1..]);
                (digits, expected)
            }),
            "\\+[1-9][0-9]{7,14}"
                .prop_filter("French numbers have their own length", |text| {
                    !text.starts_with("+33")
                })
                .prop_map(|text| (text.clone(), text)),
            "[0-9]{1,6}".prop_map(|digits| (digits.clone(), format!("ext:{digits}"))),
            prop::sample::select(vec!["", "anonymous", "unknown"])
                .prop_map(|marker| (marker.to_string(), "unknown".to_string())),
        ]
    }

    proptest! {
        #[test]
        fn parsers_never_panic(input in any::<String>()) {
            let _ = classify(&input);
            let _ = parse_spool_name(&input, &paris());
        }

        #[test]
        fn parsers_never_panic_on_name_like_text(
            input in "[a-z]{0,9}(-[0-9a-z+.]{0,12}){0,7}(\\.[a-zA-Z0-9]{0,5}){0,2}"
        ) {
            let _ = classify(&input);
            let _ = parse_spool_name(&input, &paris());
        }

        #[test]
        fn formatted_name_round_trips(
            recording_type in prop::sample::select(TYPES.to_vec()),
            (to, to_expected) in party(),
            (from, from_expected) in party(),
            year in 1970i16..=2100,
            month in 1i8..=12,
            day in 1i8..=31,
            hour in 0i8..=23,
            minute in 0i8..=59,
            second in 0i8..=59,
            uniqueid in "([a-z0-9]{1,8}-)?[0-9]{10}\\.[0-9]{1,5}",
            ext in prop::sample::select(AUDIO_EXTENSIONS.to_vec()),
        ) {
            let day = day.min(Date::new(year, month, 1).unwrap().days_in_month());
            let file_name = format!(
                "{recording_type}-{to}-{from}-{year:04}{month:02}{day:02}-\
                 {hour:02}{minute:02}{second:02}-{uniqueid}.{ext}"
            );
            prop_assert_eq!(
                classify(&file_name),
                SpoolFile::Audio {
                    stem: file_name[..file_name.len() - ext.len() - 1].to_string(),
                    ext: ext.to_string(),
                }
            );
            let name = parse_spool_name(&file_name, &paris()).unwrap();
            let party_text = |party: &Party| match party {
                Party::Extension(extension) => format!("ext:{extension}"),
                Party::Number(number) => number.as_str().to_string(),
                Party::Unknown => "unknown".to_string(),
            };
            prop_assert_eq!(name.recording_type.as_str(), recording_type);
            prop_assert_eq!(party_text(&name.callee), to_expected);
            prop_assert_eq!(party_text(&name.caller), from_expected);
            prop_assert_eq!(&name.call_id, &uniqueid);
            prop_assert_eq!(name.ext.as_str(), ext);

            let local = jiff::civil::datetime(year, month, day, hour, minute, second, 0);
            let ambiguous = paris().to_ambiguous_timestamp(local);
            prop_assert_eq!(name.started_at, ambiguous.compatible().unwrap());
            // Outside the spring gap, the instant shows the written wall-clock time again.
            match ambiguous.offset() {
                jiff::tz::AmbiguousOffset::Gap { .. } => {}
                jiff::tz::AmbiguousOffset::Unambiguous { .. }
                | jiff::tz::AmbiguousOffset::Fold { .. } => {
                    prop_assert_eq!(name.started_at.to_zoned(paris()).datetime(), local);
                }
            }
            let metadata = name.into_metadata();
            prop_assert_eq!(metadata.call_id, uniqueid);
            prop_assert_eq!(
                metadata.direction,
                match recording_type {
                    "out" => Direction::Outbound,
                    _ => Direction::Inbound,
                }
            );
        }
    }
}
