//! Alarm receiver frames, sans-I/O: owns the DC4 [`Deframer`] and [`parse`], which turns one
//! Sur-Gard automation message (heartbeat, Contact ID, SIA, receiver status) into a typed
//! [`Frame`]. It must not do I/O, read a clock, log, allocate without bound, or panic on any input.
//!
//! The wire format is in `alarm-protocols.md` beside SPEC.md. In short: printable ASCII ended by
//! DC4 (0x14); protocol id (1 byte), receiver number `RR` (2 hex digits), line number (1–7
//! characters), then the data. The computer answers one byte per frame: [`ACK`] for every
//! well-formed frame (including the ones callguard ignores), [`NAK`] for a corrupt one, nothing
//! for an overflow.
//!
//! Pipeline: bytes → [`Deframer::push`] → [`Deframed::Frame`] (DC4 removed) → [`parse`] →
//! `Ok(Frame)` (answer ACK) or `Err(FrameError)` (answer NAK).

use std::collections::VecDeque;
use std::fmt;

/// Ends every frame on the wire.
pub const DC4: u8 = 0x14;
/// The answer to a well-formed frame.
pub const ACK: u8 = 0x06;
/// The answer to a corrupt frame; the receiver resends it.
pub const NAK: u8 = 0x15;
/// Longest frame kept, DC4 excluded. A longer run without DC4 is an overflow (our limit; no
/// source gives a frame longer than about 80 bytes).
pub const MAX_FRAME_LEN: usize = 256;
/// Longest SIA data block, between `[` and `]` (from the Sur-Gard manuals).
pub const MAX_SIA_BLOCK_LEN: usize = 66;
/// Widest line-number field a receiver can be programmed to send.
pub const MAX_LINE_DIGITS: usize = 7;

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A Contact ID or SIA event from a panel.
    Event(AlarmEvent),
    /// A SIA block with several events (`[#1234|Nri1/BA01/BA02]`), in order.
    Events(Vec<AlarmEvent>),
    /// The receiver's link supervision, sent when the link is idle.
    Heartbeat {
        /// Receiver number `RR`.
        receiver: u8,
        /// Line-number field as sent (`"1"` on an MLR2, `"000"` on an MLR2000).
        line: String,
    },
    /// A well-formed frame in a format callguard does not act on (Ademco high-speed, BFSK,
    /// Radionics, Telenot, …): acknowledged and counted.
    Ignored {
        /// The protocol id, `'0'..='9'` or `'A'..='Z'`.
        protocol: char,
        /// Receiver number `RR`.
        receiver: u8,
    },
    /// The receiver's own status (`0RRLLL[#0000|NRU0000]`): acknowledged, never a case.
    ReceiverStatus {
        /// Receiver number `RR`.
        receiver: u8,
        /// Line-number field as sent.
        line: String,
        /// The SIA status code (`RU`, …).
        code: SiaCode,
        /// The SIA address field, if any (`"0000"`).
        zone: Option<String>,
    },
}

/// What a panel reported, as the receiver passed it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmEvent {
    /// Receiver number `RR`.
    pub receiver: u8,
    /// Line-number field as sent (`"1"`, `"100"`).
    pub line: String,
    /// The panel's account: 4 or 10 hex digits for Contact ID, 1–16 for SIA; padding removed.
    pub account: String,
    /// What happened.
    pub code: EventCode,
    /// Contact ID group/partition `GG`, or SIA area (`ri1` → `"1"`).
    pub group: Option<String>,
    /// Contact ID zone or user number `CCC`, or the SIA address (`"01"`).
    pub zone: Option<String>,
}

/// The event code, in the form both the serial wire and the HTTP API use: Contact ID qualifier
/// letter and three digits (`E130`), or a two-letter SIA code (`BA`). `Display` writes that form
/// and [`EventCode::parse_api`] reads it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventCode {
    /// Contact ID (SIA DC-05).
    ContactId {
        /// `E`, `R` or `P`.
        qualifier: Qualifier,
        /// `XYZ`, three hex digits (classes: 1xx alarms, 3xx troubles, 4xx open/close, 6xx tests).
        code: ContactIdCode,
    },
    /// SIA (DC-04) two-letter code.
    Sia(SiaCode),
}

/// Contact ID qualifier as the serial wire writes it (the phone line sends 1 / 3 / 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qualifier {
    /// `E`: new event, or an opening.
    New,
    /// `P`: a previous event still present.
    Previous,
    /// `R`: restore, or a closing.
    Restore,
}

/// Three upper-case hex digits of a Contact ID event code. Only this module builds one, so it
/// always holds ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContactIdCode([u8; 3]);

/// Two upper-case letters of a SIA event code. Only this module builds one, so it always holds
/// ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SiaCode([u8; 2]);

/// Why a frame is corrupt (answered with NAK). Offsets count bytes from the frame's first byte;
/// messages name the field and at most one offending character, never an account number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// `EventCode::parse_api` got something that is neither form.
    #[error(
        "event code {code:?}: expected a contact id qualifier and code (\"E130\", or \"1130\" as in DC-09) or a sia code (\"BA\")"
    )]
    ApiEventCode { code: String },
    /// A DC4 with nothing before it.
    #[error("empty frame")]
    Empty,
    /// A byte outside 0x20–0x7E inside the frame.
    #[error("byte 0x{byte:02x} at offset {offset} is not printable ascii")]
    NotPrintable { offset: usize, byte: u8 },
    /// A field, or the frame, is longer than the format allows.
    #[error("{format}: {field} of {len} bytes is longer than {max}")]
    TooLong {
        format: &'static str,
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// Bytes after the last field of the format.
    #[error("{format}: {extra} unexpected bytes from offset {offset}")]
    Trailing {
        format: &'static str,
        offset: usize,
        extra: usize,
    },
    /// The frame ends before a field it needs.
    #[error("{format}: frame ends at offset {offset}, in or before its {field}")]
    Truncated {
        format: &'static str,
        field: &'static str,
        offset: usize,
    },
    /// A field holds a character it may not hold.
    #[error("{format}: {field} at offset {offset}: expected {expected}, found {found:?}")]
    Unexpected {
        format: &'static str,
        field: &'static str,
        offset: usize,
        expected: &'static str,
        found: char,
    },
}

/// One item out of the [`Deframer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deframed {
    /// The bytes of one frame, DC4 excluded. Possibly empty or corrupt: [`parse`] decides.
    Frame(Vec<u8>),
    /// A run of more than [`MAX_FRAME_LEN`] bytes without DC4 began: it is discarded, and
    /// nothing is answered for it. Reported once per run, when the run passes the limit.
    Overflow,
}

/// Splits a byte stream into DC4-terminated frames. Push bytes as they arrive, in any split
/// (the items do not depend on it); memory stays at most [`MAX_FRAME_LEN`] bytes whatever
/// comes in.
///
/// - While no frame is open, bytes that cannot start a frame (anything but 0x21–0x7E and DC4)
///   are line noise and skipped. A lone DC4 yields an empty frame, which [`parse`] rejects.
/// - Once a frame is open, every byte up to DC4 belongs to it (a control byte inside a frame
///   makes it corrupt, so it is answered with NAK and resent).
/// - Printable noise just before a frame merges with it. When the merged bytes are corrupt,
///   they are given unchanged: answered NAK, the receiver resends the frame. But when they
///   parse as an ignored protocol, an ACK would make the receiver drop the event for good. So
///   for a frame that parses as [`Frame::Ignored`], the deframer looks for the earliest later
///   position from which a recognised frame ([`Frame::is_recognised`]: an event, heartbeat or
///   receiver status) parses to the end, and gives only that part if there is one.
/// - When a run passes [`MAX_FRAME_LEN`] bytes without DC4, [`Deframed::Overflow`] is reported
///   and only the last [`MAX_FRAME_LEN`] bytes are kept. At the next DC4 a recognised frame at
///   the end of the kept bytes is given as above, so a real frame that follows the garbage
///   without a gap is not lost; the rest of the run gives nothing (and is never answered).
#[derive(Debug, Clone)]
pub struct Deframer {
    /// Bytes of the open frame, DC4 excluded; after an overflow, the last `MAX_FRAME_LEN` bytes
    /// of the run. Never longer than `MAX_FRAME_LEN`.
    buf: VecDeque<u8>,
    /// The open run has passed `MAX_FRAME_LEN` bytes and was reported as an overflow.
    overflowed: bool,
    /// Header width passed to `parse` when looking for a recognised frame behind noise.
    line_digits: u8,
}

/// Parses one frame, **without** its DC4 terminator (as [`Deframed::Frame`] gives it; a DC4
/// inside `frame` is a non-printable byte, hence an error).
///
/// `line_digits` is the receiver's configured line-number width (1–7). A frame whose format has
/// a delimiter after the header (Contact ID's space before `18`/`98`/`58`, SIA's `[`, the
/// spaces of the heartbeat and of fixed-width SIA) is accepted with any width from 1 to 7 found
/// by that delimiter, so an MLR2 heartbeat (`1011…`) and an MLR2000 one (`101000…`) both parse
/// whatever the setting. Frames of other protocols must hold at least the header of
/// `line_digits` characters plus one byte of data.
///
/// The whole input is consumed or the frame is rejected: trailing bytes are an error.
pub fn parse(frame: &[u8], line_digits: u8) -> Result<Frame, FrameError> {
    if frame.is_empty() {
        return Err(FrameError::Empty);
    }
    if frame.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLong {
            format: "frame",
            field: "frame",
            len: frame.len(),
            max: MAX_FRAME_LEN,
        });
    }
    if let Some(offset) = frame.iter().position(|&byte| !is_printable(byte)) {
        return Err(FrameError::NotPrintable {
            offset,
            byte: frame[offset],
        });
    }
    match frame[0] {
        b'0' => parse_sia_block(frame, SiaBlockKind::ReceiverStatus),
        b'1' => parse_heartbeat_or_other(frame, line_digits),
        b'3' => parse_sia_fixed(frame),
        b'5' => parse_contact_id(frame, ContactIdForm::Short),
        b'Q' => parse_contact_id(frame, ContactIdForm::Long),
        b'S' => parse_sia_block(frame, SiaBlockKind::Event),
        b'2' | b'4' | b'6'..=b'9' | b'A'..=b'P' | b'R' | b'T'..=b'Z' => {
            parse_other(frame, line_digits)
        }
        other => Err(FrameError::Unexpected {
            format: "header",
            field: "protocol id",
            offset: 0,
            expected: "a digit or capital letter",
            found: char::from(other),
        }),
    }
}

impl Frame {
    /// True for the frames callguard acts on or tracks (events, heartbeats, receiver status),
    /// false for [`Frame::Ignored`].
    pub fn is_recognised(&self) -> bool {
        match self {
            Frame::Event(_)
            | Frame::Events(_)
            | Frame::Heartbeat { .. }
            | Frame::ReceiverStatus { .. } => true,
            Frame::Ignored { .. } => false,
        }
    }
}

impl AlarmEvent {
    /// See [`EventCode::opens_case`].
    pub fn opens_case(&self) -> bool {
        self.code.opens_case()
    }

    /// See [`EventCode::is_restore`].
    pub fn is_restore(&self) -> bool {
        self.code.is_restore()
    }

    /// See [`EventCode::joins_case`].
    pub fn joins_case(&self) -> bool {
        self.code.joins_case()
    }
}

impl EventCode {
    /// Reads the HTTP API form: a Contact ID qualifier and code as on the serial wire
    /// (`"E130"`, `"R130"`, `"P130"`) or as in DC-05/DC-09 (`"1130"`, `"3130"`, `"6130"`: new
    /// event, restore, previous), or a SIA code (`"BA"`). Upper case only. It displays back in
    /// the serial form.
    pub fn parse_api(code: &str) -> Result<EventCode, FrameError> {
        match *code.as_bytes() {
            [qualifier, x, y, z] => {
                let numeric = match qualifier {
                    b'1' => Some(Qualifier::New),
                    b'3' => Some(Qualifier::Restore),
                    b'6' => Some(Qualifier::Previous),
                    _ => None,
                };
                let qualifier = match numeric.or_else(|| qualifier_from_byte(qualifier)) {
                    Some(qualifier) => qualifier,
                    None => return Err(api_code_error(code)),
                };
                match [x, y, z].iter().all(|&byte| is_upper_hex(byte)) {
                    true => Ok(EventCode::ContactId {
                        qualifier,
                        code: ContactIdCode([x, y, z]),
                    }),
                    false => Err(api_code_error(code)),
                }
            }
            [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => {
                Ok(EventCode::Sia(SiaCode([a, b])))
            }
            _ => Err(api_code_error(code)),
        }
    }

    /// An alarm case opens on a Contact ID new event (`E`) in the alarm classes 1xx, or on a SIA
    /// code ending in `A` (`BA`, `FA`, `PA`, `HA`, `MA`, `TA`, `GA`, `WA`, …).
    pub fn opens_case(&self) -> bool {
        match self {
            EventCode::ContactId {
                qualifier: Qualifier::New,
                code,
            } => code.0[0] == b'1',
            EventCode::ContactId {
                qualifier: Qualifier::Previous | Qualifier::Restore,
                ..
            } => false,
            EventCode::Sia(code) => code.0[1] == b'A',
        }
    }

    /// A restore: Contact ID qualifier `R`, or a SIA code ending in `R` (`BR`, `FR`, …). It is
    /// recorded on the open case and does not close it.
    pub fn is_restore(&self) -> bool {
        match self {
            EventCode::ContactId { qualifier, .. } => match qualifier {
                Qualifier::Restore => true,
                Qualifier::New | Qualifier::Previous => false,
            },
            EventCode::Sia(code) => code.0[1] == b'R',
        }
    }

    /// Whether the event is recorded on its account's open case, if there is one. Every event
    /// is (SPEC §8: "later events for that account join the open case"): a restore (`R`,
    /// `xR`) is recorded and does not close it, `P` joins and opens none, an opening or a test
    /// is recorded too. Whether it *opens* a case is [`EventCode::opens_case`].
    pub fn joins_case(&self) -> bool {
        match self {
            EventCode::ContactId { qualifier, .. } => match qualifier {
                Qualifier::New | Qualifier::Previous | Qualifier::Restore => true,
            },
            EventCode::Sia(_) => true,
        }
    }
}

impl Qualifier {
    /// The letter the serial wire uses.
    pub fn as_char(self) -> char {
        match self {
            Qualifier::New => 'E',
            Qualifier::Previous => 'P',
            Qualifier::Restore => 'R',
        }
    }
}

impl ContactIdCode {
    /// The event class: the first digit (`1` alarms, `3` troubles, `4` open/close, `6` tests).
    pub fn class(self) -> char {
        char::from(self.0[0])
    }
}

impl SiaCode {
    /// Builds a SIA code from two upper-case letters.
    pub fn new(code: [u8; 2]) -> Option<SiaCode> {
        match code.iter().all(u8::is_ascii_uppercase) {
            true => Some(SiaCode(code)),
            false => None,
        }
    }
}

impl fmt::Display for EventCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventCode::ContactId { qualifier, code } => write!(f, "{}{code}", qualifier.as_char()),
            EventCode::Sia(code) => write!(f, "{code}"),
        }
    }
}

impl fmt::Display for ContactIdCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .iter()
            .try_for_each(|&byte| write!(f, "{}", char::from(byte)))
    }
}

impl fmt::Display for SiaCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .iter()
            .try_for_each(|&byte| write!(f, "{}", char::from(byte)))
    }
}

impl Deframer {
    /// A deframer for a receiver whose line-number field is `line_digits` wide (see [`parse`]).
    pub fn new(line_digits: u8) -> Deframer {
        Deframer {
            buf: VecDeque::with_capacity(MAX_FRAME_LEN),
            overflowed: false,
            line_digits,
        }
    }

    /// Takes the next bytes of the stream and returns the items they complete, in order. At
    /// most one item per input byte.
    pub fn push(&mut self, input: &[u8]) -> Vec<Deframed> {
        let mut items = Vec::new();
        for &byte in input {
            if let Some(item) = self.step(byte) {
                items.push(item);
            }
        }
        items
    }

    /// Bytes held for the frame still open (for tests and status).
    pub fn pending_len(&self) -> usize {
        self.buf.len()
    }

    fn step(&mut self, byte: u8) -> Option<Deframed> {
        match (byte, self.overflowed) {
            (DC4, false) => {
                let frame: Vec<u8> = self.buf.drain(..).collect();
                let behind_noise = match parse(&frame, self.line_digits) {
                    Ok(Frame::Ignored { .. }) => {
                        find_recognised_start(&frame[1..], self.line_digits)
                    }
                    Ok(_) | Err(_) => None,
                };
                match behind_noise {
                    Some(start) => Some(Deframed::Frame(frame[1 + start..].to_vec())),
                    None => Some(Deframed::Frame(frame)),
                }
            }
            (DC4, true) => {
                self.overflowed = false;
                let window: Vec<u8> = self.buf.drain(..).collect();
                find_recognised_start(&window, self.line_digits)
                    .map(|start| Deframed::Frame(window[start..].to_vec()))
            }
            (_, false) if self.buf.is_empty() && !can_start_frame(byte) => None,
            (_, false) if self.buf.len() == MAX_FRAME_LEN => {
                self.overflowed = true;
                self.buf.pop_front();
                self.buf.push_back(byte);
                Some(Deframed::Overflow)
            }
            (_, false) => {
                self.buf.push_back(byte);
                None
            }
            (_, true) => {
                if self.buf.len() == MAX_FRAME_LEN {
                    self.buf.pop_front();
                }
                self.buf.push_back(byte);
                None
            }
        }
    }
}

/// The earliest start in `bytes` from which a recognised frame parses to the end. Only
/// positions holding a recognised protocol id are tried.
fn find_recognised_start(bytes: &[u8], line_digits: u8) -> Option<usize> {
    (0..bytes.len()).find(|&start| match bytes[start] {
        b'0' | b'1' | b'3' | b'5' | b'Q' | b'S' => match parse(&bytes[start..], line_digits) {
            Ok(frame) => frame.is_recognised(),
            Err(_) => false,
        },
        _ => false,
    })
}

fn is_printable(byte: u8) -> bool {
    (0x20..=0x7e).contains(&byte)
}

/// A frame starts with a protocol id: printable, not a space.
fn can_start_frame(byte: u8) -> bool {
    byte == DC4 || (0x21..=0x7e).contains(&byte)
}

fn is_upper_hex(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'A'..=b'F').contains(&byte)
}

/// Contact ID account digits: hex without `A` (on the phone line `A` stands for 0).
fn is_contact_id_account_digit(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'B'..=b'F').contains(&byte)
}

fn qualifier_from_byte(byte: u8) -> Option<Qualifier> {
    match byte {
        b'E' => Some(Qualifier::New),
        b'P' => Some(Qualifier::Previous),
        b'R' => Some(Qualifier::Restore),
        _ => None,
    }
}

fn api_code_error(code: &str) -> FrameError {
    FrameError::ApiEventCode {
        code: code.chars().take(8).collect(),
    }
}

/// Validated ASCII to `String`.
fn text(bytes: &[u8]) -> String {
    bytes.iter().map(|&byte| char::from(byte)).collect()
}

const HEARTBEAT_TRAILER: &[u8; 16] = b"           @    ";

#[derive(Debug, Clone, Copy)]
enum ContactIdForm {
    /// `5`: 4-digit account, identifier `18` or `98`.
    Short,
    /// `Q`: 10-digit account, identifier `58`.
    Long,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SiaBlockKind {
    /// `S`: a panel's event.
    Event,
    /// `0`: the receiver's own status.
    ReceiverStatus,
}

/// Receiver number and line-number field of a frame.
struct Header<'a> {
    receiver: u8,
    line: &'a [u8],
}

/// A cursor over one printable frame, naming the format in its errors (rustls `Reader` style).
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    format: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], format: &'static str) -> Reader<'a> {
        Reader {
            bytes,
            pos: 0,
            format,
        }
    }

    fn truncated(&self, field: &'static str) -> FrameError {
        FrameError::Truncated {
            format: self.format,
            field,
            offset: self.bytes.len(),
        }
    }

    fn unexpected(&self, field: &'static str, offset: usize, expected: &'static str) -> FrameError {
        match self.bytes.get(offset) {
            Some(&byte) => FrameError::Unexpected {
                format: self.format,
                field,
                offset,
                expected,
                found: char::from(byte),
            },
            None => self.truncated(field),
        }
    }

    /// The next `n` bytes, each satisfying `valid`.
    fn take(
        &mut self,
        n: usize,
        field: &'static str,
        expected: &'static str,
        valid: fn(u8) -> bool,
    ) -> Result<&'a [u8], FrameError> {
        let start = self.pos;
        let end = (start + n).min(self.bytes.len());
        let taken = &self.bytes[start..end];
        match taken.iter().position(|&byte| !valid(byte)) {
            Some(bad) => Err(self.unexpected(field, start + bad, expected)),
            None if taken.len() < n => Err(self.truncated(field)),
            None => {
                self.pos = end;
                Ok(taken)
            }
        }
    }

    /// The longest run (up to `max` bytes) satisfying `valid`; at least `min` bytes.
    fn take_run(
        &mut self,
        min: usize,
        max: usize,
        field: &'static str,
        expected: &'static str,
        valid: fn(u8) -> bool,
    ) -> Result<&'a [u8], FrameError> {
        let start = self.pos;
        let rest = &self.bytes[start..];
        let len = rest
            .iter()
            .position(|&byte| !valid(byte))
            .unwrap_or(rest.len());
        match len {
            len if len < min => Err(self.unexpected(field, start + len, expected)),
            len if len > max => Err(FrameError::TooLong {
                format: self.format,
                field,
                len,
                max,
            }),
            len => {
                self.pos += len;
                Ok(&rest[..len])
            }
        }
    }

    fn expect(
        &mut self,
        byte: u8,
        field: &'static str,
        expected: &'static str,
    ) -> Result<(), FrameError> {
        match self.bytes.get(self.pos) {
            Some(&found) if found == byte => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(self.unexpected(field, self.pos, expected)),
            None => Err(self.truncated(field)),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    /// Fails unless every byte was consumed.
    fn finish(&self) -> Result<(), FrameError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            extra => Err(FrameError::Trailing {
                format: self.format,
                offset: self.pos,
                extra,
            }),
        }
    }

    /// Protocol id (already matched by the caller) and receiver number `RR`.
    fn receiver_number(&mut self) -> Result<u8, FrameError> {
        self.pos = 1;
        let digits = self.take(2, "receiver number", "a hex digit 0-9 A-F", is_upper_hex)?;
        Ok(hex_value(digits[0]) << 4 | hex_value(digits[1]))
    }

    /// Protocol id, receiver number and a line-number field of 1–7 hex digits that ends where
    /// the format's delimiter begins.
    fn header(&mut self) -> Result<Header<'a>, FrameError> {
        let receiver = self.receiver_number()?;
        let line = self.take_run(
            1,
            MAX_LINE_DIGITS,
            "line number",
            "a hex digit 0-9 A-F",
            is_upper_hex,
        )?;
        Ok(Header { receiver, line })
    }
}

fn hex_value(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'A'..=b'F' => byte - b'A' + 10,
        b'a'..=b'f' => byte - b'a' + 10,
        _ => 0,
    }
}

/// `1RR` + line + 11 spaces + `@` + 4 spaces is a heartbeat; any other well-formed `1…` frame
/// (BFSK/Radionics `1RRL␠␠␠␠␠␠AAAAXXYYYY`) is ignored.
fn parse_heartbeat_or_other(frame: &[u8], line_digits: u8) -> Result<Frame, FrameError> {
    let mut reader = Reader::new(frame, "heartbeat");
    let receiver = reader.receiver_number()?;
    let line_len = reader
        .rest()
        .iter()
        .position(|&byte| !is_upper_hex(byte))
        .unwrap_or(reader.rest().len());
    let (line, data) = reader.rest().split_at(line_len);
    match (line.len(), data == HEARTBEAT_TRAILER) {
        (1..=MAX_LINE_DIGITS, true) => Ok(Frame::Heartbeat {
            receiver,
            line: text(line),
        }),
        _ => parse_other(frame, line_digits),
    }
}

/// `5RRL␠18AAAAQXYZGGCCC`, `5RRLLL␠98AAAAQXYZGGCCC`, `QRRLLL␠58AAAAAAAAAAQXYZGGCCC`.
fn parse_contact_id(frame: &[u8], form: ContactIdForm) -> Result<Frame, FrameError> {
    let mut reader = Reader::new(frame, "contact id");
    let header = reader.header()?;
    reader.expect(b' ', "header", "a space after 1 to 7 line digits")?;
    let identifier_at = reader.pos;
    let identifier = reader.take(2, "identifier", "a digit", |byte| byte.is_ascii_digit())?;
    let (expected_identifier, account_len) = match form {
        ContactIdForm::Short => ("18 or 98", 4),
        ContactIdForm::Long => ("58", 10),
    };
    let identifier_ok = match (form, identifier) {
        (ContactIdForm::Short, b"18" | b"98") | (ContactIdForm::Long, b"58") => true,
        (ContactIdForm::Short | ContactIdForm::Long, _) => false,
    };
    if !identifier_ok {
        // Point at the first wrong digit: the second one when the first could still be right.
        let first_ok = match form {
            ContactIdForm::Short => matches!(identifier[0], b'1' | b'9'),
            ContactIdForm::Long => identifier[0] == b'5',
        };
        let offset = identifier_at + usize::from(first_ok);
        return Err(reader.unexpected("identifier", offset, expected_identifier));
    }
    let account = reader.take(
        account_len,
        "account",
        "a hex digit 0-9 B-F",
        is_contact_id_account_digit,
    )?;
    let qualifier_at = reader.pos;
    let qualifier = match reader.peek().map(qualifier_from_byte) {
        Some(Some(qualifier)) => qualifier,
        Some(None) => return Err(reader.unexpected("qualifier", qualifier_at, "E, R or P")),
        None => return Err(reader.truncated("qualifier")),
    };
    reader.pos += 1;
    let code = reader.take(3, "event code", "a hex digit 0-9 A-F", is_upper_hex)?;
    let group = reader.take(2, "group", "a hex digit 0-9 A-F", is_upper_hex)?;
    let zone = reader.take(3, "zone", "a hex digit 0-9 A-F", is_upper_hex)?;
    reader.finish()?;
    Ok(Frame::Event(AlarmEvent {
        receiver: header.receiver,
        line: text(header.line),
        account: text(account),
        code: EventCode::ContactId {
            qualifier,
            code: ContactIdCode([code[0], code[1], code[2]]),
        },
        group: Some(text(group)),
        zone: Some(text(zone)),
    }))
}

/// `SRRL[#AAAAAA|Nri1BA01]` and `0RRLLL[#0000|NRU0000]`. The block holds `#` account `|`
/// `N`, then events separated by `/`: each is modifiers (two lower-case letters and their
/// digits, such as `ri1` area or `ti10:30` time, each optionally followed by `/`), a two-letter
/// event code and its address digits, and optionally `^text^` (skipped). A receiver status
/// block holds one event.
fn parse_sia_block(frame: &[u8], kind: SiaBlockKind) -> Result<Frame, FrameError> {
    let format = match kind {
        SiaBlockKind::Event => "sia block",
        SiaBlockKind::ReceiverStatus => "receiver status",
    };
    let mut reader = Reader::new(frame, format);
    let header = reader.header()?;
    reader.expect(b'[', "header", "'[' after 1 to 7 line digits")?;
    let block_start = reader.pos;
    reader.expect(b'#', "account", "'#'")?;
    let account = reader.take_run(1, 16, "account", "a hex digit 0-9 A-F", is_upper_hex)?;
    reader.expect(b'|', "account", "'|' after the account")?;
    reader.expect(b'N', "function", "'N' (new event)")?;
    // Events, each after optional modifiers (`ri1` area, `id3` user, `ti12:30` time), separated
    // by `/`; an `^…^` text field may follow an event. The area carries over to later events.
    let mut area = None;
    let mut found: Vec<(SiaCode, Option<String>, Option<String>)> = Vec::new();
    loop {
        while let Some(b'a'..=b'z') = reader.peek() {
            let tag = reader.take(2, "modifier", "a lower-case letter", |byte| {
                byte.is_ascii_lowercase()
            })?;
            let value = reader.take_run(0, 16, "modifier value", "a digit or ':'", |byte| {
                byte.is_ascii_digit() || byte == b':'
            })?;
            if tag == b"ri" {
                area = Some(text(value));
            }
            if reader.peek() == Some(b'/') {
                reader.pos += 1;
            }
        }
        let code = reader.take(2, "event code", "a capital letter", |byte| {
            byte.is_ascii_uppercase()
        })?;
        let zone = reader.take_run(0, 6, "zone", "a digit", |byte| byte.is_ascii_digit())?;
        let zone = match zone.is_empty() {
            true => None,
            false => Some(text(zone)),
        };
        found.push((SiaCode([code[0], code[1]]), zone, area.clone()));
        if reader.peek() == Some(b'^') {
            reader.pos += 1;
            reader.take_run(0, 64, "text", "printable text then '^'", |byte| {
                byte != b'^' && (b' '..=b'~').contains(&byte)
            })?;
            reader.expect(b'^', "text", "'^' closing the text")?;
        }
        match reader.peek() {
            Some(b'/') if kind == SiaBlockKind::Event => reader.pos += 1,
            _ => break,
        }
    }
    let block_len = reader.pos - block_start;
    reader.expect(b']', "block end", "']' after the zone")?;
    reader.finish()?;
    if block_len > MAX_SIA_BLOCK_LEN {
        return Err(FrameError::TooLong {
            format,
            field: "data block",
            len: block_len,
            max: MAX_SIA_BLOCK_LEN,
        });
    }
    let mut events: Vec<AlarmEvent> = found
        .iter()
        .map(|(code, zone, area)| AlarmEvent {
            receiver: header.receiver,
            line: text(header.line),
            account: text(account),
            code: EventCode::Sia(*code),
            group: area.clone(),
            zone: zone.clone(),
        })
        .collect();
    let (code, zone, _) = found.swap_remove(0);
    match kind {
        SiaBlockKind::Event if events.len() > 1 => Ok(Frame::Events(events)),
        SiaBlockKind::Event => Ok(Frame::Event(events.swap_remove(0))),
        SiaBlockKind::ReceiverStatus => Ok(Frame::ReceiverStatus {
            receiver: header.receiver,
            line: text(header.line),
            code,
            zone,
        }),
    }
}

/// `3RRL␠␠␠␠AAAAAAXXYYYY`: four spaces, a six-character account left-padded with spaces, a SIA
/// code, a four-character zone.
fn parse_sia_fixed(frame: &[u8]) -> Result<Frame, FrameError> {
    let mut reader = Reader::new(frame, "sia fixed");
    let header = reader.header()?;
    reader.take(4, "separator", "a space", |byte| byte == b' ')?;
    let account_at = reader.pos;
    let account_field = reader.take(6, "account", "a space or hex digit", |byte| {
        byte == b' ' || is_upper_hex(byte)
    })?;
    let padding = account_field
        .iter()
        .take_while(|&&byte| byte == b' ')
        .count();
    let account = &account_field[padding..];
    if account.is_empty() {
        return Err(reader.unexpected("account", account_at + 5, "a hex digit"));
    }
    if let Some(bad) = account.iter().position(|&byte| byte == b' ') {
        return Err(reader.unexpected("account", account_at + padding + bad, "a hex digit"));
    }
    let code = reader.take(2, "event code", "a capital letter", |byte| {
        byte.is_ascii_uppercase()
    })?;
    let zone = reader.take(4, "zone", "a hex digit 0-9 A-F", is_upper_hex)?;
    reader.finish()?;
    Ok(Frame::Event(AlarmEvent {
        receiver: header.receiver,
        line: text(header.line),
        account: text(account),
        code: EventCode::Sia(SiaCode([code[0], code[1]])),
        group: None,
        zone: Some(text(zone)),
    }))
}

/// Any other protocol id: well-formed means printable (checked by `parse`), a hex receiver
/// number, and a header of `line_digits` characters plus at least one byte of data.
fn parse_other(frame: &[u8], line_digits: u8) -> Result<Frame, FrameError> {
    let mut reader = Reader::new(frame, "frame");
    let receiver = reader.receiver_number()?;
    let needed = 3 + usize::from(line_digits.max(1)) + 1;
    if frame.len() < needed {
        return Err(reader.truncated("data"));
    }
    Ok(Frame::Ignored {
        protocol: char::from(frame[0]),
        receiver,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` (a whole frame with its DC4) through a `Deframer` and `parse`, for line
    /// widths 1 and 3, and compares a one-line rendering of the outcome with `expected`.
    #[track_caller]
    fn check(input: &[u8], expected: &str) {
        for line_digits in [1, 3] {
            let mut deframer = Deframer::new(line_digits);
            let items = deframer.push(input);
            let [Deframed::Frame(frame)] = items.as_slice() else {
                panic!("expected one frame from {input:?}, got {items:?}");
            };
            assert_eq!(deframer.pending_len(), 0);
            let actual = render(&parse(frame, line_digits));
            assert_eq!(
                actual, expected,
                "line_digits = {line_digits}, input {input:?}"
            );
        }
    }

    fn render(parsed: &Result<Frame, FrameError>) -> String {
        match parsed {
            Ok(Frame::Events(events)) => events
                .iter()
                .map(|event| render(&Ok(Frame::Event(event.clone()))))
                .collect::<Vec<_>>()
                .join(" + "),
            Ok(Frame::Event(event)) => {
                let mut out = format!(
                    "event rr={:02X} line={} acct={} code={}",
                    event.receiver, event.line, event.account, event.code
                );
                if let Some(group) = &event.group {
                    out += &format!(" group={group}");
                }
                if let Some(zone) = &event.zone {
                    out += &format!(" zone={zone}");
                }
                if event.opens_case() {
                    out += " opens";
                }
                if event.is_restore() {
                    out += " restore";
                }
                out
            }
            Ok(Frame::Heartbeat { receiver, line }) => {
                format!("heartbeat rr={receiver:02X} line={line}")
            }
            Ok(Frame::Ignored { protocol, receiver }) => {
                format!("ignored id={protocol} rr={receiver:02X}")
            }
            Ok(Frame::ReceiverStatus {
                receiver,
                line,
                code,
                zone,
            }) => format!("status rr={receiver:02X} line={line} code={code} zone={zone:?}"),
            Err(error) => format!("nak: {error}"),
        }
    }

    // Test frames 1–23 of alarm-protocols.md, in order.

    #[test]
    fn frame_01_mlr2_heartbeat() {
        check(b"1011           @    \x14", "heartbeat rr=01 line=1");
    }

    #[test]
    fn frame_02_system3_heartbeat() {
        check(b"101000           @    \x14", "heartbeat rr=01 line=000");
    }

    #[test]
    fn frame_03_contact_id_manual_example() {
        check(
            b"5011 181234E12101001\x14",
            "event rr=01 line=1 acct=1234 code=E121 group=01 zone=001 opens",
        );
    }

    #[test]
    fn frame_04_contact_id_three_digit_line() {
        check(
            b"501100 181234E12101001\x14",
            "event rr=01 line=100 acct=1234 code=E121 group=01 zone=001 opens",
        );
    }

    #[test]
    fn frame_05_burglary() {
        check(
            b"5011 181234E13001015\x14",
            "event rr=01 line=1 acct=1234 code=E130 group=01 zone=015 opens",
        );
    }

    #[test]
    fn frame_06_restore() {
        check(
            b"5011 181234R13001015\x14",
            "event rr=01 line=1 acct=1234 code=R130 group=01 zone=015 restore",
        );
    }

    #[test]
    fn frame_07_identifier_98() {
        check(
            b"5011 981234E13001015\x14",
            "event rr=01 line=1 acct=1234 code=E130 group=01 zone=015 opens",
        );
    }

    #[test]
    fn frame_08_hex_account() {
        check(
            b"5012 18BEEFE11001003\x14",
            "event rr=01 line=2 acct=BEEF code=E110 group=01 zone=003 opens",
        );
    }

    #[test]
    fn frame_09_opening_by_user() {
        check(
            b"5011 185678E40101007\x14",
            "event rr=01 line=1 acct=5678 code=E401 group=01 zone=007",
        );
    }

    #[test]
    fn frame_10_periodic_test() {
        check(
            b"5011 185678E60200000\x14",
            "event rr=01 line=1 acct=5678 code=E602 group=00 zone=000",
        );
    }

    #[test]
    fn frame_11_previous_event() {
        check(
            b"5011 187037P13001004\x14",
            "event rr=01 line=1 acct=7037 code=P130 group=01 zone=004",
        );
    }

    #[test]
    fn frame_12_ten_digit_account() {
        check(
            b"Q01001 580123456789E13001015\x14",
            "event rr=01 line=001 acct=0123456789 code=E130 group=01 zone=015 opens",
        );
    }

    #[test]
    fn frame_13_sia_block() {
        check(
            b"S011[#1234|Nri1BA01]\x14",
            "event rr=01 line=1 acct=1234 code=BA group=1 zone=01 opens",
        );
    }

    #[test]
    fn frame_14_sia_fixed_width() {
        check(
            b"3011      1234BA0012\x14",
            "event rr=01 line=1 acct=1234 code=BA zone=0012 opens",
        );
    }

    #[test]
    fn frame_15_receiver_status() {
        check(
            b"001000[#0000|NRU0000]\x14",
            "status rr=01 line=000 code=RU zone=Some(\"0000\")",
        );
    }

    #[test]
    fn frame_16_bfsk_ignored() {
        check(b"6011      1234E10001\x14", "ignored id=6 rr=01");
    }

    #[test]
    fn frame_17_identifier_19() {
        check(
            b"5011 191234E13001015\x14",
            "nak: contact id: identifier at offset 6: expected 18 or 98, found '9'",
        );
    }

    #[test]
    fn frame_18_qualifier_x() {
        check(
            b"5011 181234X13001015\x14",
            "nak: contact id: qualifier at offset 11: expected E, R or P, found 'X'",
        );
    }

    #[test]
    fn frame_19_truncated() {
        check(
            b"5011 181234E13\x14",
            "nak: contact id: frame ends at offset 14, in or before its event code",
        );
    }

    #[test]
    fn frame_20_account_not_hex() {
        check(
            b"5011 18123GE13001015\x14",
            "nak: contact id: account at offset 10: expected a hex digit 0-9 B-F, found 'G'",
        );
    }

    #[test]
    fn frame_21_non_printable_inside() {
        check(
            b"5011 18\x001234E13001015\x14",
            "nak: byte 0x00 at offset 7 is not printable ascii",
        );
    }

    #[test]
    fn frame_22_one_character_too_long() {
        check(
            b"5011 181234E130010155\x14",
            "nak: contact id: 1 unexpected bytes from offset 20",
        );
    }

    #[test]
    fn frame_23_empty() {
        check(b"\x14", "nak: empty frame");
    }

    // Beyond the doc's table.

    #[test]
    fn contact_id_account_a_is_not_a_digit() {
        check(
            b"5011 18A234E13001015\x14",
            "nak: contact id: account at offset 7: expected a hex digit 0-9 B-F, found 'A'",
        );
    }

    #[test]
    fn contact_id_q_needs_identifier_58() {
        check(
            b"Q01001 180123456789E13001015\x14",
            "nak: contact id: identifier at offset 7: expected 58, found '1'",
        );
    }

    #[test]
    fn contact_id_line_wider_than_seven() {
        check(
            b"50112345678 181234E13001015\x14",
            "nak: contact id: line number of 8 bytes is longer than 7",
        );
    }

    #[test]
    fn receiver_number_is_hex() {
        check(
            b"5FE1 181234E13001015\x14",
            "event rr=FE line=1 acct=1234 code=E130 group=01 zone=015 opens",
        );
        check(
            b"5G11 181234E13001015\x14",
            "nak: contact id: receiver number at offset 1: expected a hex digit 0-9 A-F, found 'G'",
        );
    }

    #[test]
    fn sia_block_without_area_and_with_time() {
        check(
            b"S011[#AB12|NBA01]\x14",
            "event rr=01 line=1 acct=AB12 code=BA zone=01 opens",
        );
        check(
            b"S011[#1234|Nti10:30/ri2/FR003]\x14",
            "event rr=01 line=1 acct=1234 code=FR group=2 zone=003 restore",
        );
        check(
            b"S011[#1234|NOP]\x14",
            "event rr=01 line=1 acct=1234 code=OP",
        );
    }

    #[test]
    fn sia_blocks_with_several_events_or_text() {
        check(
            b"S011[#1234|Nri1BA01/BA02]\x14",
            "event rr=01 line=1 acct=1234 code=BA group=1 zone=01 opens + \
             event rr=01 line=1 acct=1234 code=BA group=1 zone=02 opens",
        );
        check(
            b"S011[#1234|Nri1BA01/ri2/FA03]\x14",
            "event rr=01 line=1 acct=1234 code=BA group=1 zone=01 opens + \
             event rr=01 line=1 acct=1234 code=FA group=2 zone=03 opens",
        );
        check(
            b"S011[#1234|NBA01^Salon porte^]\x14",
            "event rr=01 line=1 acct=1234 code=BA zone=01 opens",
        );
        check(
            b"S011[#1234|Nid3/OP^Marie^/ri1/BR01]\x14",
            "event rr=01 line=1 acct=1234 code=OP + \
             event rr=01 line=1 acct=1234 code=BR group=1 zone=01 restore",
        );
    }

    #[test]
    fn sia_block_errors() {
        check(
            b"S011[#1234|Nri1BA01\x14",
            "nak: sia block: frame ends at offset 19, in or before its block end",
        );
        check(
            b"S011[#1234|Nri1BA01]]\x14",
            "nak: sia block: 1 unexpected bytes from offset 20",
        );
        check(
            b"S011[#1234|Nri1ba01]\x14",
            "nak: sia block: event code at offset 19: expected a capital letter, found ']'",
        );
        check(
            b"S011[#1234|Nri1BA01/\x14",
            "nak: sia block: frame ends at offset 20, in or before its event code",
        );
        check(
            b"S011[#1234|NBA01^unterminated]\x14",
            "nak: sia block: frame ends at offset 30, in or before its text",
        );
        let long = format!("S011[#1234|N{}BA01]\x14", "ri1/".repeat(14));
        check(
            long.as_bytes(),
            "nak: sia block: data block of 67 bytes is longer than 66",
        );
    }

    #[test]
    fn lowercase_protocol_id_is_corrupt() {
        check(
            b"x011 181234E13001015\x14",
            "nak: header: protocol id at offset 0: expected a digit or capital letter, found 'x'",
        );
    }

    #[test]
    fn radionics_on_id_1_is_ignored() {
        check(b"1011      1234BA0012\x14", "ignored id=1 rr=01");
    }

    #[test]
    fn api_event_codes() {
        let cases: &[(&str, Option<(bool, bool)>)] = &[
            ("E130", Some((true, false))),
            ("R130", Some((false, true))),
            ("P130", Some((false, false))),
            ("E401", Some((false, false))),
            ("1130", Some((true, false))),
            ("3130", Some((false, true))),
            ("6130", Some((false, false))),
            ("1401", Some((false, false))),
            ("2130", None),
            ("0130", None),
            ("BA", Some((true, false))),
            ("BR", Some((false, true))),
            ("RP", Some((false, false))),
            ("e130", None),
            ("X130", None),
            ("E13", None),
            ("E13G", None),
            ("ba", None),
            ("", None),
            ("É1", None),
        ];
        for &(input, expected) in cases {
            let actual = EventCode::parse_api(input)
                .ok()
                .map(|code| (code.opens_case(), code.is_restore()));
            assert_eq!(actual, expected, "{input:?}");
            if let Ok(code) = EventCode::parse_api(input) {
                let serial = match input.as_bytes()[0] {
                    b'1' => input.replacen('1', "E", 1),
                    b'3' => input.replacen('3', "R", 1),
                    b'6' => input.replacen('6', "P", 1),
                    _ => input.to_owned(),
                };
                assert_eq!(code.to_string(), serial);
                assert!(code.joins_case());
            }
        }
    }

    #[test]
    fn noise_and_split_frames() {
        let mut deframer = Deframer::new(3);
        assert_eq!(deframer.push(b"\x00\xff\x13 \x7f5011 18"), vec![]);
        assert_eq!(
            deframer.push(b"1234E13001015\x141011           @    \x14\x06"),
            vec![
                Deframed::Frame(b"5011 181234E13001015".to_vec()),
                Deframed::Frame(b"1011           @    ".to_vec()),
            ]
        );
        assert_eq!(deframer.pending_len(), 0);
    }

    #[test]
    fn printable_noise_before_a_frame_is_dropped() {
        // Merged, the bytes would read as protocol `G`, receiver `AB`: ignored, answered ACK,
        // and the event lost. The deframer gives the recognised frame behind the noise.
        check(
            b"GAB5011 181234E13001015\x14",
            "event rr=01 line=1 acct=1234 code=E130 group=01 zone=015 opens",
        );
        // Nothing recognised behind it: the frame is judged whole.
        check(b"GAB6011      1234E10001\x14", "ignored id=G rr=AB");
        // Merged bytes that are corrupt are answered NAK, and the receiver resends the frame.
        check(
            b"+?1011           @    \x14",
            "nak: header: protocol id at offset 0: expected a digit or capital letter, found '+'",
        );
    }

    #[test]
    fn overflow_then_heartbeat() {
        // Test frame 28: 300 × `A` with no DC4, then frame 1, in one push.
        let mut input = vec![b'A'; 300];
        input.extend_from_slice(b"1011           @    \x14");
        let mut deframer = Deframer::new(3);
        assert_eq!(
            deframer.push(&input),
            vec![
                Deframed::Overflow,
                Deframed::Frame(b"1011           @    ".to_vec()),
            ]
        );
        // A run of exactly MAX_FRAME_LEN bytes is still a frame (ignored, protocol `A`).
        let mut exact = b"A01".to_vec();
        exact.resize(MAX_FRAME_LEN, b'A');
        exact.push(DC4);
        let items = deframer.push(&exact);
        assert_eq!(items.len(), 1);
        assert!(matches!(&items[0], Deframed::Frame(frame) if frame.len() == MAX_FRAME_LEN));
        // Overflow garbage ended by DC4 with no frame in it: only the overflow.
        let mut garbage = vec![b'Z'; 1000];
        garbage.push(DC4);
        assert_eq!(deframer.push(&garbage), vec![Deframed::Overflow]);
        assert_eq!(deframer.pending_len(), 0);
    }

    /// A valid frame and the text `check` renders for it.
    fn valid_frames() -> Vec<&'static [u8]> {
        vec![
            b"1011           @    ",
            b"101000           @    ",
            b"5011 181234E12101001",
            b"501100 181234E12101001",
            b"5012 18BEEFE11001003",
            b"Q01001 580123456789E13001015",
            b"S011[#1234|Nri1BA01]",
            b"3011      1234BA0012",
            b"001000[#0000|NRU0000]",
        ]
    }

    #[derive(Debug, Clone)]
    enum Segment {
        /// A valid frame (index into `valid_frames`) and its DC4.
        Frame(usize),
        /// Bytes that cannot start a frame (controls and high bytes, no DC4).
        Noise(Vec<u8>),
        /// More than MAX_FRAME_LEN printable bytes without DC4, none of which can begin a
        /// recognised frame (no digits, no `Q`/`S`, no space).
        Overflow(Vec<u8>),
        /// A short corrupt frame with its DC4 (lower-case protocol id): answered with NAK.
        Junk(Vec<u8>),
        /// Printable noise without DC4 directly before a valid frame, such that the merged
        /// bytes parse as an ignored protocol (`G`…, receiver `AB`…).
        PrefixedFrame(Vec<u8>, usize),
    }

    fn segment() -> impl Strategy<Value = Segment> {
        let noise_byte = prop_oneof![0x00u8..0x14, 0x15u8..0x20, 0x7fu8..=0xff];
        let garbage_byte = prop::sample::select(b"GHIJKLMNOPRTUVWXYZ[]|#@!".to_vec());
        prop_oneof![
            (0..valid_frames().len()).prop_map(Segment::Frame),
            prop::collection::vec(noise_byte, 1..20).prop_map(Segment::Noise),
            prop::collection::vec(garbage_byte.clone(), MAX_FRAME_LEN + 1..700)
                .prop_map(Segment::Overflow),
            (
                prop::sample::select(b"GHIJKLMNOPRTUVWXYZ".to_vec()),
                prop::collection::vec(prop::sample::select(b"ABCDEFGHXYZ".to_vec()), 2..20),
                0..valid_frames().len(),
            )
                .prop_map(|(id, rest, index)| {
                    let mut prefix = vec![id];
                    prefix.extend(rest);
                    prefix[1] = b'A';
                    prefix[2] = b'B';
                    Segment::PrefixedFrame(prefix, index)
                }),
            prop::collection::vec(0x20u8..0x7f, 0..40).prop_map(|body| {
                let mut junk = vec![b'x'];
                junk.extend(body.into_iter().filter(|&byte| byte != DC4));
                junk.push(DC4);
                Segment::Junk(junk)
            }),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), line_digits in 0u8..10) {
            let _ = parse(&bytes, line_digits);
        }

        #[test]
        fn parse_never_panics_on_near_frames(
            base in 0..9usize,
            edits in prop::collection::vec((0..40usize, any::<u8>()), 0..4),
        ) {
            let mut frame = valid_frames()[base].to_vec();
            for (at, byte) in edits {
                let at = at % (frame.len() + 1);
                frame.insert(at, byte);
            }
            let _ = parse(&frame, 3);
        }

        #[test]
        fn deframer_never_loses_a_valid_frame(
            segments in prop::collection::vec(segment(), 1..12),
            cuts in prop::collection::vec(0..2000usize, 0..30),
        ) {
            let frames = valid_frames();
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for segment in &segments {
                match segment {
                    Segment::Frame(index) => {
                        stream.extend_from_slice(frames[*index]);
                        stream.push(DC4);
                        expected.push(parse(frames[*index], 3));
                    }
                    Segment::PrefixedFrame(prefix, index) => {
                        stream.extend_from_slice(prefix);
                        stream.extend_from_slice(frames[*index]);
                        stream.push(DC4);
                        expected.push(parse(frames[*index], 3));
                    }
                    Segment::Noise(bytes) | Segment::Overflow(bytes) | Segment::Junk(bytes) => {
                        stream.extend_from_slice(bytes);
                    }
                }
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut deframer = Deframer::new(3);
            let mut recognised = Vec::new();
            let mut start = 0;
            for end in cuts.into_iter().chain([stream.len()]) {
                for item in deframer.push(&stream[start..end]) {
                    if let Deframed::Frame(frame) = item {
                        prop_assert!(frame.len() <= MAX_FRAME_LEN);
                        let parsed = parse(&frame, 3);
                        if matches!(&parsed, Ok(frame) if frame.is_recognised()) {
                            recognised.push(parsed);
                        }
                    }
                }
                prop_assert!(deframer.pending_len() <= MAX_FRAME_LEN);
                start = end;
            }
            prop_assert_eq!(recognised, expected);
        }

        #[test]
        fn deframer_output_does_not_depend_on_the_split(
            stream in prop::collection::vec(prop_oneof![Just(DC4), Just(b'A'), any::<u8>()], 0..1500),
            cuts in prop::collection::vec(0..1500usize, 0..40),
        ) {
            let whole = Deframer::new(3).push(&stream);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut deframer = Deframer::new(3);
            let mut pieces = Vec::new();
            let mut start = 0;
            for end in cuts.into_iter().chain([stream.len()]) {
                pieces.extend(deframer.push(&stream[start..end]));
                prop_assert!(deframer.pending_len() <= MAX_FRAME_LEN);
                start = end;
            }
            prop_assert_eq!(pieces, whole);
        }

        #[test]
        fn api_codes_round_trip(code in "[ERP][0-9A-F]{3}|[A-Z]{2}") {
            let parsed = EventCode::parse_api(&code);
            prop_assert!(parsed.is_ok());
            if let Ok(parsed) = parsed {
                prop_assert_eq!(parsed.to_string(), code);
            }
        }
    }
}
