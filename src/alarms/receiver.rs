//! One task per configured serial alarm receiver: owns opening the port (tokio-serial, line
//! settings, DTR), the read loop around `frame::Deframer` and `frame::parse`, the one-byte
//! ACK/NAK answers, duplicate suppression, heartbeat supervision, back-off while the device is
//! missing, and the receiver's status counters. It must not interpret bytes itself (that is
//! `frame`), decide about alarm cases (that is `alarms`), panic on any input or device error,
//! buffer without bound, or log personal data at info (account numbers only at debug).
//!
//! Bounds and what happens at them (STYLE H7):
//! - a frame is at most `frame::MAX_FRAME_LEN` bytes; a longer run is an overflow, counted and
//!   never answered;
//! - the answer to each frame is written before its event is handed on, and handing on never
//!   waits: when `events_tx` is full, events wait in the task's own queue (at most
//!   [`PENDING_EVENTS_MAX`] plus one read's worth). When that queue is full too, the task stops
//!   reading the port until the pipeline takes events again. Frames the task has not read are
//!   not answered, so the receiver keeps them and resends them: an acknowledged event is never
//!   dropped, and a stalled pipeline shows up at the receiver as a communication failure
//!   instead of silently losing alarms. Only when `events_tx` is closed (shutdown) are events
//!   dropped, and counted;
//! - writing the answers may take at most [`WRITE_TIMEOUT`]; after that the port is reopened;
//! - duplicate suppression remembers the last [`RECENT_FRAMES_MAX`] event frames;
//! - re-opening backs off from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], and starts again from the
//!   minimum after a frame or after a connection that held [`STABLE_CONNECTION`].

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::alarms::frame::{self, ACK, Deframed, Deframer, EventCode, Frame, NAK};
use crate::clock::SharedClock;

/// Events waiting in the task when `events_tx` is full. Past this, the port is not read.
pub const PENDING_EVENTS_MAX: usize = 1024;
/// Event frames remembered for duplicate suppression.
pub const RECENT_FRAMES_MAX: usize = 256;
/// Longest wait for the port to take the answers before it is reopened.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// First wait before re-opening a missing or failed device.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait between two attempts to open the device.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A connection that lasted this long was a working one: once it is lost (a cable pulled, a
/// USB adapter replugged), reopening starts again from [`BACKOFF_MIN`]. A device that opens
/// and fails at once keeps backing off.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// How to reach one receiver and how to talk to it. `config` builds it; [`Self::validate`]
/// checks the ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverSettings {
    /// Name used in logs, status and events (`"mlr2000-a"`). Not personal data.
    pub name: String,
    /// The serial device, preferably a stable udev name (`/dev/serial/by-id/…`).
    pub device: PathBuf,
    /// Line speed (default 9600).
    pub baud: u32,
    /// 5 to 8 (default 8).
    pub data_bits: u8,
    /// Default none.
    pub parity: Parity,
    /// 1 or 2 (default 1; an 8N1 UART also reads 8N2 traffic).
    pub stop_bits: u8,
    /// Answer ACK/NAK (default true). False on a passive tap: nothing is ever written.
    pub acknowledge: bool,
    /// Width of the line-number field, 1–7 (default 3, as MLR2000 / System III / 5 send).
    pub line_digits: u8,
    /// Report the receiver silent after this long without a frame (default 90 s: three missed
    /// heartbeats at the usual 30 s).
    pub heartbeat_timeout: Duration,
    /// An identical event frame repeated within this window is answered but not handed on
    /// again (default 30 s).
    pub duplicate_window: Duration,
}

/// Parity bit setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// Even parity (7E1 on MLR2E and older receivers).
    Even,
    /// No parity bit (the default, 8N1).
    None,
    /// Odd parity.
    Odd,
}

/// One event from a receiver, for the alarm-case logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    /// `ReceiverSettings::name` of the receiver that sent it.
    pub receiver: String,
    /// The panel's account (personal data: log only at debug).
    pub account: String,
    /// What happened; `code.opens_case()` and friends decide what it does to a case.
    pub code: EventCode,
    /// Zone or user number, if the format has one.
    pub zone: Option<String>,
    /// Contact ID group/partition or SIA area, if the format has one.
    pub group: Option<String>,
    /// Receiver number and line the frame names (`"01/1"`).
    pub line: String,
    /// When callguard read the frame (from the injected clock).
    pub received_at: Timestamp,
}

/// Live state of one receiver task, shared with `/v1/status` and the metrics. Thread-safe: a
/// `tokio::sync::watch` cell (an `RwLock` inside), written only by the task.
#[derive(Debug)]
pub struct ReceiverStatus {
    /// The current snapshot; receivers of the channel can wait for changes.
    state: watch::Sender<ReceiverSnapshot>,
}

/// A copy of a receiver's state at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverSnapshot {
    /// `ReceiverSettings::name`.
    pub name: String,
    /// The device is open.
    pub connected: bool,
    /// Last frame of any kind, well-formed or corrupt.
    pub last_frame_at: Option<Timestamp>,
    /// Last heartbeat frame.
    pub last_heartbeat_at: Option<Timestamp>,
    /// No frame for `heartbeat_timeout` (connected or not); cleared by the next frame.
    pub silent: bool,
    /// Frame and event counters since the task started.
    pub counts: ReceiverCounts,
}

/// Counters since the task started. `acked` and `nacked` count well-formed and corrupt frames
/// also on a passive tap, where nothing is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverCounts {
    /// Well-formed frames (events, heartbeats, status, ignored and duplicates included).
    pub acked: u64,
    /// Corrupt frames.
    pub nacked: u64,
    /// Well-formed frames of protocols callguard does not act on.
    pub ignored: u64,
    /// Event frames repeated within the duplicate window, answered but not handed on.
    pub duplicates: u64,
    /// Runs of more than `MAX_FRAME_LEN` bytes without DC4, discarded unanswered.
    pub overflows: u64,
    /// Events handed on to the pipeline.
    pub events: u64,
    /// Events dropped because the pipeline was closed (shutdown).
    pub dropped: u64,
}

/// Why a receiver cannot be used right now. Logged by the task, which keeps retrying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiverError {
    /// The device reported end of file (a pty whose other end closed, an unplugged adapter).
    #[error("{} was closed (end of file)", .device.display())]
    Closed { device: PathBuf },
    /// A line setting out of range; `config` should have refused it.
    #[error("receiver {receiver}: {setting} = {value} is not allowed, expected {allowed}")]
    InvalidSetting {
        receiver: String,
        setting: &'static str,
        value: u32,
        allowed: &'static str,
    },
    /// The device is missing, busy (opened exclusively elsewhere) or refuses the settings.
    #[error("cannot open {}", .device.display())]
    Open {
        device: PathBuf,
        #[source]
        source: tokio_serial::Error,
    },
    /// Reading failed, typically because the device went away.
    #[error("reading {} failed", .device.display())]
    Read {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing ACK/NAK failed.
    #[error("writing the answer to {} failed", .device.display())]
    Write {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The port did not take the answers within `WRITE_TIMEOUT`.
    #[error("writing the answer to {} took longer than {timeout:?}", .device.display())]
    WriteTimeout { device: PathBuf, timeout: Duration },
}

/// Runs one receiver until `shutdown`: opens `settings.device`, answers and decodes frames,
/// hands events to `events_tx`, keeps `status` current. A missing, failing or unplugged device
/// is reopened with exponential back-off ([`BACKOFF_MIN`] to [`BACKOFF_MAX`], reset once a
/// frame is read or a connection held [`STABLE_CONNECTION`]); nothing but `shutdown` ends the task. Waits use `tokio::time`, timestamps
/// come from `clock`.
pub async fn run(
    settings: ReceiverSettings,
    events_tx: mpsc::Sender<ReceivedEvent>,
    status: Arc<ReceiverStatus>,
    clock: SharedClock,
    shutdown: CancellationToken,
) {
    run_with(settings, open_serial, events_tx, status, clock, shutdown).await;
}

impl ReceiverSettings {
    /// Settings with the defaults of `alarm-protocols.md`: 9600 8N1, acknowledging, 3-digit
    /// line numbers, 90 s heartbeat timeout, 30 s duplicate window.
    pub fn new(name: impl Into<String>, device: impl Into<PathBuf>) -> ReceiverSettings {
        ReceiverSettings {
            name: name.into(),
            device: device.into(),
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            acknowledge: true,
            line_digits: 3,
            heartbeat_timeout: Duration::from_secs(90),
            duplicate_window: Duration::from_secs(30),
        }
    }

    /// Checks the ranges `config` must enforce: baud > 0, data bits 5–8, stop bits 1 or 2,
    /// line digits 1–7.
    pub fn validate(&self) -> Result<(), ReceiverError> {
        let invalid = |setting, value, allowed| ReceiverError::InvalidSetting {
            receiver: self.name.clone(),
            setting,
            value,
            allowed,
        };
        if self.baud == 0 {
            return Err(invalid("baud", 0, "a positive speed"));
        }
        match self.data_bits {
            5..=8 => {}
            other => return Err(invalid("data_bits", u32::from(other), "5 to 8")),
        }
        match self.stop_bits {
            1 | 2 => {}
            other => return Err(invalid("stop_bits", u32::from(other), "1 or 2")),
        }
        match usize::from(self.line_digits) {
            1..=frame::MAX_LINE_DIGITS => {}
            _ => {
                let value = u32::from(self.line_digits);
                return Err(invalid("line_digits", value, "1 to 7"));
            }
        }
        Ok(())
    }
}

impl ReceiverStatus {
    /// The status of a receiver that has not connected yet.
    pub fn new(name: impl Into<String>) -> ReceiverStatus {
        ReceiverStatus {
            state: watch::Sender::new(ReceiverSnapshot {
                name: name.into(),
                connected: false,
                last_frame_at: None,
                last_heartbeat_at: None,
                silent: false,
                counts: ReceiverCounts::default(),
            }),
        }
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> ReceiverSnapshot {
        self.state.borrow().clone()
    }

    fn update(&self, change: impl FnOnce(&mut ReceiverSnapshot)) {
        self.state.send_modify(change);
    }

    /// Waits until `ready` holds for the current state, and returns that state.
    #[cfg(test)]
    async fn wait_for(&self, ready: impl FnMut(&ReceiverSnapshot) -> bool) -> ReceiverSnapshot {
        let mut changes = self.state.subscribe();
        match changes.wait_for(ready).await {
            Ok(snapshot) => snapshot.clone(),
            Err(_) => self.snapshot(),
        }
    }
}

/// Opens the device with the line settings, no flow control and DTR asserted. serialport sets
/// DTR on a best-effort basis and ignores the failure on a pty.
fn open_serial(settings: &ReceiverSettings) -> Result<tokio_serial::SerialStream, ReceiverError> {
    settings.validate()?;
    let data_bits = match settings.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match settings.parity {
        Parity::Even => tokio_serial::Parity::Even,
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop_bits = match settings.stop_bits {
        2 => tokio_serial::StopBits::Two,
        _ => tokio_serial::StopBits::One,
    };
    tokio_serial::new(settings.device.to_string_lossy(), settings.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
        .dtr_on_open(true)
        .open_native_async()
        .map_err(|source| ReceiverError::Open {
            device: settings.device.clone(),
            source,
        })
}

/// The task, with the way to open the port injected (tests pass an in-memory stream).
async fn run_with<P, O>(
    settings: ReceiverSettings,
    mut open: O,
    events_tx: mpsc::Sender<ReceivedEvent>,
    status: Arc<ReceiverStatus>,
    clock: SharedClock,
    shutdown: CancellationToken,
) where
    P: AsyncRead + AsyncWrite + Unpin,
    O: FnMut(&ReceiverSettings) -> Result<P, ReceiverError>,
{
    let mut task = Task {
        deframer: Deframer::new(settings.line_digits),
        recent: RecentFrames::default(),
        pending: VecDeque::new(),
        last_heard: Instant::now(),
        silent: false,
        backoff: BACKOFF_MIN,
        connected_at: None,
        outage_logged: false,
        settings,
        status,
        clock,
    };
    let mut port: Option<P> = None;
    let mut retry_at = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        // `None` (a timeout too long to add) never fires.
        let silent_at = task.last_heard.checked_add(task.settings.heartbeat_timeout);
        let can_read = port.is_some() && task.pending.len() < PENDING_EVENTS_MAX;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            permit = events_tx.reserve(), if !task.pending.is_empty() => {
                send_pending(permit, &mut task.pending, &task.status, &task.settings.name);
            }
            read = read_port(&mut port, &mut buf), if can_read => {
                let ended = match read {
                    Ok(0) => Some(ReceiverError::Closed { device: task.settings.device.clone() }),
                    Ok(n) => match port.as_mut() {
                        Some(port) => task.on_bytes(port, &buf[..n], &events_tx).await.err(),
                        None => None,
                    },
                    Err(source) if source.kind() == io::ErrorKind::Interrupted => None,
                    Err(source) => Some(ReceiverError::Read {
                        device: task.settings.device.clone(),
                        source,
                    }),
                };
                if let Some(error) = ended {
                    port = None;
                    task.on_lost(&error);
                    retry_at = Instant::now() + task.next_backoff();
                }
            }
            () = sleep_until(retry_at), if port.is_none() => {
                match open(&task.settings) {
                    Ok(opened) => {
                        port = Some(opened);
                        task.on_connected();
                    }
                    Err(error) => {
                        retry_at = Instant::now() + task.next_backoff();
                        task.on_open_failed(&error);
                    }
                }
            }
            () = sleep_until(silent_at.unwrap_or(task.last_heard)), if !task.silent && silent_at.is_some() => {
                task.on_silence();
            }
        }
    }
    task.status.update(|snapshot| snapshot.connected = false);
    info!(receiver = %task.settings.name, "receiver stopped");
}

/// Reads from the port if there is one; never completes otherwise.
async fn read_port<P: AsyncRead + Unpin>(
    port: &mut Option<P>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match port {
        Some(port) => port.read(buf).await,
        None => std::future::pending().await,
    }
}

/// State of the running task, besides the port.
struct Task {
    settings: ReceiverSettings,
    status: Arc<ReceiverStatus>,
    clock: SharedClock,
    /// Bytes of a frame split across reads; reset when the port is reopened.
    deframer: Deframer,
    /// Event frames seen lately, for duplicate suppression.
    recent: RecentFrames,
    /// Answered events the full channel has not taken yet, oldest first (see the module doc).
    pending: VecDeque<ReceivedEvent>,
    /// When the last frame arrived (or the task started): the silence timer runs from here.
    last_heard: Instant,
    /// The silence warning was logged and `status.silent` set.
    silent: bool,
    /// Wait before the next attempt to open the device.
    backoff: Duration,
    /// When the current connection was opened.
    connected_at: Option<Instant>,
    /// The current outage was logged at warn; repeats go to debug.
    outage_logged: bool,
}

/// What one read produced, applied to the status in one update.
#[derive(Debug, Default)]
struct Tally {
    counts: ReceiverCounts,
    frames: bool,
    heartbeat: bool,
}

impl Task {
    /// Deframes and parses `bytes`, answers every frame in one write, then updates the status
    /// and hands the events on.
    async fn on_bytes<P: AsyncWrite + Unpin>(
        &mut self,
        port: &mut P,
        bytes: &[u8],
        events_tx: &mpsc::Sender<ReceivedEvent>,
    ) -> Result<(), ReceiverError> {
        let now = self.clock.now();
        let name = self.settings.name.as_str();
        let mut tally = Tally::default();
        let mut answers = Vec::new();
        let mut events = Vec::new();
        for item in self.deframer.push(bytes) {
            let frame_bytes = match item {
                Deframed::Frame(frame_bytes) => frame_bytes,
                Deframed::Overflow => {
                    tally.counts.overflows += 1;
                    warn!(receiver = %name, "more than {} bytes without DC4, discarded", frame::MAX_FRAME_LEN);
                    continue;
                }
            };
            tally.frames = true;
            match frame::parse(&frame_bytes, self.settings.line_digits) {
                Ok(parsed) => {
                    answers.push(ACK);
                    tally.counts.acked += 1;
                    match parsed {
                        Frame::Event(_) | Frame::Events(_) => {
                            let list = match parsed {
                                Frame::Events(list) => list,
                                Frame::Event(event) => vec![event],
                                _ => Vec::new(),
                            };
                            match self.recent.is_duplicate(
                                &frame_bytes,
                                now,
                                self.settings.duplicate_window,
                            ) {
                                true => {
                                    tally.counts.duplicates += 1;
                                    debug!(receiver = %name, events = list.len(), "duplicate frame, not handed on");
                                }
                                false => {
                                    for event in list {
                                        info!(receiver = %name, code = %event.code, "alarm event");
                                        debug!(receiver = %name, account = %event.account, code = %event.code, zone = ?event.zone, group = ?event.group, "alarm event details");
                                        events.push(ReceivedEvent {
                                            receiver: self.settings.name.clone(),
                                            line: format!("{:02X}/{}", event.receiver, event.line),
                                            account: event.account,
                                            code: event.code,
                                            zone: event.zone,
                                            group: event.group,
                                            received_at: now,
                                        });
                                    }
                                }
                            }
                        }
                        Frame::Heartbeat { .. } => tally.heartbeat = true,
                        Frame::Ignored { protocol, .. } => {
                            tally.counts.ignored += 1;
                            debug!(receiver = %name, %protocol, "frame of a protocol callguard ignores");
                        }
                        Frame::ReceiverStatus { code, .. } => {
                            debug!(receiver = %name, %code, "receiver status");
                        }
                    }
                }
                Err(error) => {
                    answers.push(NAK);
                    tally.counts.nacked += 1;
                    warn!(receiver = %name, %error, "corrupt frame");
                }
            }
        }
        let written = match self.settings.acknowledge && !answers.is_empty() {
            true => self.write_answers(port, &answers).await,
            false => Ok(()),
        };
        if tally.frames {
            self.heard();
        }
        self.status.update(|snapshot| {
            let counts = &mut snapshot.counts;
            counts.acked += tally.counts.acked;
            counts.nacked += tally.counts.nacked;
            counts.ignored += tally.counts.ignored;
            counts.duplicates += tally.counts.duplicates;
            counts.overflows += tally.counts.overflows;
            if tally.frames {
                snapshot.last_frame_at = Some(now);
                snapshot.silent = false;
            }
            if tally.heartbeat {
                snapshot.last_heartbeat_at = Some(now);
            }
        });
        for event in events {
            self.hand_on(event, events_tx);
        }
        written
    }

    /// Writes the answers without flushing: `flush` on a tokio-serial port is `tcdrain`, which
    /// would block a runtime thread until the UART has sent them.
    async fn write_answers<P: AsyncWrite + Unpin>(
        &mut self,
        port: &mut P,
        answers: &[u8],
    ) -> Result<(), ReceiverError> {
        match timeout(WRITE_TIMEOUT, port.write_all(answers)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ReceiverError::Write {
                device: self.settings.device.clone(),
                source,
            }),
            Err(_elapsed) => Err(ReceiverError::WriteTimeout {
                device: self.settings.device.clone(),
                timeout: WRITE_TIMEOUT,
            }),
        }
    }

    /// Passes an answered event on without waiting: behind the queue if there is one.
    fn hand_on(&mut self, event: ReceivedEvent, events_tx: &mpsc::Sender<ReceivedEvent>) {
        if !self.pending.is_empty() {
            self.pending.push_back(event);
            return;
        }
        match events_tx.try_send(event) {
            Ok(()) => self.status.update(|snapshot| snapshot.counts.events += 1),
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.pending.push_back(event);
                if self.pending.len() == 1 {
                    warn!(receiver = %self.settings.name, "event pipeline full, queueing events");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.status.update(|snapshot| snapshot.counts.dropped += 1);
            }
        }
    }

    fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.backoff = BACKOFF_MIN;
        if self.silent {
            self.silent = false;
            info!(receiver = %self.settings.name, "receiver heard again");
        }
    }

    fn on_silence(&mut self) {
        self.silent = true;
        warn!(
            receiver = %self.settings.name,
            timeout = ?self.settings.heartbeat_timeout,
            "receiver silent: no frame within the heartbeat timeout"
        );
        self.status.update(|snapshot| snapshot.silent = true);
    }

    fn on_connected(&mut self) {
        self.connected_at = Some(Instant::now());
        self.outage_logged = false;
        self.deframer = Deframer::new(self.settings.line_digits);
        info!(receiver = %self.settings.name, device = %self.settings.device.display(), "receiver connected");
        self.status.update(|snapshot| snapshot.connected = true);
    }

    fn on_lost(&mut self, error: &ReceiverError) {
        if self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= STABLE_CONNECTION)
        {
            self.backoff = BACKOFF_MIN;
        }
        self.outage_logged = true;
        warn!(receiver = %self.settings.name, error = %error_chain(error), "receiver disconnected, reopening");
        self.status.update(|snapshot| snapshot.connected = false);
    }

    fn on_open_failed(&mut self, error: &ReceiverError) {
        match self.outage_logged {
            false => {
                self.outage_logged = true;
                warn!(receiver = %self.settings.name, error = %error_chain(error), "cannot open receiver, retrying with back-off");
            }
            true => {
                debug!(receiver = %self.settings.name, error = %error_chain(error), "cannot open receiver")
            }
        }
    }

    fn next_backoff(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }
}

/// Sends the oldest queued event with `permit`; drops and counts the queue if the pipeline
/// is closed.
fn send_pending(
    permit: Result<mpsc::Permit<'_, ReceivedEvent>, mpsc::error::SendError<()>>,
    pending: &mut VecDeque<ReceivedEvent>,
    status: &ReceiverStatus,
    name: &str,
) {
    match (permit, pending.pop_front()) {
        (Ok(permit), Some(event)) => {
            permit.send(event);
            status.update(|snapshot| snapshot.counts.events += 1);
        }
        (Ok(_), None) => {}
        (Err(_closed), first) => {
            let n_dropped = pending.len() as u64 + u64::from(first.is_some());
            pending.clear();
            warn!(receiver = %name, n_dropped, "event pipeline closed, events dropped");
            status.update(|snapshot| snapshot.counts.dropped += n_dropped);
        }
    }
}

/// `error: source: source…` on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Event frames seen lately and when, oldest first; at most `RECENT_FRAMES_MAX`.
#[derive(Debug, Default)]
struct RecentFrames {
    seen: VecDeque<(Vec<u8>, Timestamp)>,
}

impl RecentFrames {
    /// True if the same bytes came within `window` before `now` (a resend after a lost ACK).
    /// Records `frame` as seen at `now` either way, so a frame resent for a minute every 4 s is
    /// one event. A clock step backwards makes no duplicate: a second event is harmless, a lost
    /// one is not.
    fn is_duplicate(&mut self, frame: &[u8], now: Timestamp, window: Duration) -> bool {
        let window = SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX);
        let within = |at: Timestamp| {
            let age = now.duration_since(at);
            age >= SignedDuration::ZERO && age <= window
        };
        let duplicate = match self.seen.iter().position(|(bytes, _)| bytes == frame) {
            Some(index) => {
                let at = self.seen.remove(index).map(|(_, at)| at);
                matches!(at, Some(at) if within(at))
            }
            None => false,
        };
        self.seen.retain(|&(_, at)| within(at));
        if self.seen.len() == RECENT_FRAMES_MAX {
            self.seen.pop_front();
        }
        self.seen.push_back((frame.to_vec(), now));
        duplicate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use tokio::task::JoinHandle;
    use tokio_serial::SerialStream;

    const FRAME_1: &[u8] = b"1011           @    \x14";
    const FRAME_5: &[u8] = b"5011 181234E13001015\x14";
    const FRAME_9: &[u8] = b"5011 185678E40101007\x14";
    const FRAME_17: &[u8] = b"5011 191234E13001015\x14";
    /// Generous: only a real bug makes a wait this long.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn start_time() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// A receiver task on the slave end of a pty pair, driven from the master end.
    struct Rig {
        /// The alarm receiver's side: the test writes frames and reads answers here.
        panel: SerialStream,
        /// Keeps the slave open so the master never sees a hangup while the task reopens.
        _slave: Option<SerialStream>,
        events_rx: mpsc::Receiver<ReceivedEvent>,
        status: Arc<ReceiverStatus>,
        clock: Arc<ManualClock>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    /// A pty pair and the path of its slave end.
    fn pty() -> (SerialStream, SerialStream, PathBuf) {
        let (master, slave) = SerialStream::pair().unwrap();
        let path = tokio_serial::SerialPort::name(&slave).unwrap();
        (master, slave, PathBuf::from(path))
    }

    impl Rig {
        /// Starts `run` on a fresh pty and waits until it has opened the slave by its path.
        async fn start(adjust: impl FnOnce(&mut ReceiverSettings)) -> Rig {
            let (master, slave, path) = pty();
            Rig::start_on(master, Some(slave), path, adjust).await
        }

        async fn start_on(
            panel: SerialStream,
            slave: Option<SerialStream>,
            device: PathBuf,
            adjust: impl FnOnce(&mut ReceiverSettings),
        ) -> Rig {
            let mut settings = ReceiverSettings::new("rx-test", device);
            adjust(&mut settings);
            let (events_tx, events_rx) = mpsc::channel(64);
            let status = Arc::new(ReceiverStatus::new("rx-test"));
            let clock = Arc::new(ManualClock::new(start_time()));
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run(
                settings,
                events_tx,
                status.clone(),
                clock.clone(),
                shutdown.clone(),
            ));
            let rig = Rig {
                panel,
                _slave: slave,
                events_rx,
                status,
                clock,
                shutdown,
                task,
            };
            rig.wait_for(|s| s.connected).await;
            rig
        }

        async fn send(&mut self, bytes: &[u8]) {
            AsyncWriteExt::write_all(&mut self.panel, bytes)
                .await
                .unwrap();
        }

        /// Reads exactly `n` answer bytes.
        async fn answers(&mut self, n: usize) -> Vec<u8> {
            let mut answers = vec![0; n];
            timeout(
                PATIENCE,
                AsyncReadExt::read_exact(&mut self.panel, &mut answers),
            )
            .await
            .expect("answers within the patience")
            .unwrap();
            answers
        }

        async fn event(&mut self) -> ReceivedEvent {
            timeout(PATIENCE, self.events_rx.recv())
                .await
                .expect("an event within the patience")
                .expect("the task holds the sender")
        }

        async fn wait_for(&self, ready: impl FnMut(&ReceiverSnapshot) -> bool) -> ReceiverSnapshot {
            timeout(PATIENCE, self.status.wait_for(ready))
                .await
                .expect("status reached within the patience")
        }

        /// Sends a corrupt frame and checks the next answer is its NAK: proves nothing else was
        /// written before it.
        async fn probe_nothing_else_written(&mut self) {
            self.send(FRAME_17).await;
            assert_eq!(self.answers(1).await, [NAK]);
        }

        async fn stop(self) -> ReceiverSnapshot {
            self.shutdown.cancel();
            timeout(PATIENCE, self.task)
                .await
                .expect("the task ends on shutdown")
                .unwrap();
            self.status.snapshot()
        }
    }

    #[derive(Debug)]
    enum Expect {
        Ack,
        AckEvent(&'static str, &'static str),
        Nak,
    }

    /// Test frames 1–23 of alarm-protocols.md, one by one over the pty: each answered with one
    /// byte; events handed on in order.
    #[tokio::test]
    async fn frames_1_to_23_over_a_pty() {
        use Expect::*;
        let table: &[(&[u8], Expect)] = &[
            (b"1011           @    \x14", Ack),
            (b"101000           @    \x14", Ack),
            (b"5011 181234E12101001\x14", AckEvent("1234", "E121")),
            (b"501100 181234E12101001\x14", AckEvent("1234", "E121")),
            (b"5011 181234E13001015\x14", AckEvent("1234", "E130")),
            (b"5011 181234R13001015\x14", AckEvent("1234", "R130")),
            (b"5011 981234E13001015\x14", AckEvent("1234", "E130")),
            (b"5012 18BEEFE11001003\x14", AckEvent("BEEF", "E110")),
            (b"5011 185678E40101007\x14", AckEvent("5678", "E401")),
            (b"5011 185678E60200000\x14", AckEvent("5678", "E602")),
            (b"5011 187037P13001004\x14", AckEvent("7037", "P130")),
            (
                b"Q01001 580123456789E13001015\x14",
                AckEvent("0123456789", "E130"),
            ),
            (b"S011[#1234|Nri1BA01]\x14", AckEvent("1234", "BA")),
            (b"3011      1234BA0012\x14", AckEvent("1234", "BA")),
            (b"001000[#0000|NRU0000]\x14", Ack),
            (b"6011      1234E10001\x14", Ack),
            (b"5011 191234E13001015\x14", Nak),
            (b"5011 181234X13001015\x14", Nak),
            (b"5011 181234E13\x14", Nak),
            (b"5011 18123GE13001015\x14", Nak),
            (b"5011 18\x001234E13001015\x14", Nak),
            (b"5011 181234E130010155\x14", Nak),
            (b"\x14", Nak),
        ];
        let mut rig = Rig::start(|_| {}).await;
        let mut expected_events = Vec::new();
        for (index, (frame, expect)) in table.iter().enumerate() {
            rig.send(frame).await;
            let answer = rig.answers(1).await;
            let wanted = match expect {
                Ack | AckEvent(..) => ACK,
                Nak => NAK,
            };
            assert_eq!(answer, [wanted], "frame {}", index + 1);
            if let AckEvent(account, code) = expect {
                expected_events.push((account.to_string(), code.to_string()));
            }
        }
        // A sentinel closes the list, so frames without events are proven to emit none.
        rig.send(b"5011 189999E13001015\x14").await;
        assert_eq!(rig.answers(1).await, [ACK]);
        expected_events.push(("9999".to_string(), "E130".to_string()));
        let mut received = Vec::new();
        while received.len() < expected_events.len() {
            let event = rig.event().await;
            assert_eq!(event.receiver, "rx-test");
            assert_eq!(event.received_at, start_time());
            received.push((event.account, event.code.to_string()));
        }
        assert_eq!(received, expected_events);
        let snapshot = rig.stop().await;
        assert!(!snapshot.connected);
        assert_eq!(
            snapshot.counts,
            ReceiverCounts {
                acked: 17,
                nacked: 7,
                ignored: 1,
                duplicates: 0,
                overflows: 0,
                events: 13,
                dropped: 0,
            }
        );
        assert_eq!(snapshot.last_heartbeat_at, Some(start_time()));
        assert_eq!(snapshot.last_frame_at, Some(start_time()));
    }

    #[tokio::test]
    async fn frame_24_noise_then_frame() {
        let mut rig = Rig::start(|_| {}).await;
        rig.send(b"\x00\xff\x13").await;
        rig.send(FRAME_5).await;
        assert_eq!(rig.answers(1).await, [ACK]);
        let event = rig.event().await;
        assert_eq!(
            (event.account.as_str(), event.code.to_string()),
            ("1234", "E130".into())
        );
        assert!(event.code.opens_case());
        rig.probe_nothing_else_written().await;
        rig.stop().await;
    }

    #[tokio::test]
    async fn frame_25_two_frames_in_one_write_answered_in_order() {
        let mut rig = Rig::start(|_| {}).await;
        rig.send(&[FRAME_5, FRAME_1].concat()).await;
        assert_eq!(rig.answers(2).await, [ACK, ACK]);
        rig.send(&[FRAME_17, FRAME_9, FRAME_17].concat()).await;
        assert_eq!(rig.answers(3).await, [NAK, ACK, NAK]);
        rig.stop().await;
    }

    #[tokio::test]
    async fn frame_26_one_byte_at_a_time_gets_one_ack() {
        let mut rig = Rig::start(|_| {}).await;
        for &byte in FRAME_5 {
            rig.send(&[byte]).await;
            // The doc's stimulus (bytes 5 ms apart), not a synchronisation.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(rig.answers(1).await, [ACK]);
        rig.probe_nothing_else_written().await;
        assert_eq!(rig.event().await.account, "1234");
        rig.stop().await;
    }

    #[tokio::test]
    async fn frame_27_resent_frame_is_answered_but_one_event() {
        let mut rig = Rig::start(|_| {}).await;
        rig.send(FRAME_5).await;
        assert_eq!(rig.answers(1).await, [ACK]);
        rig.clock.advance(Duration::from_secs(4));
        rig.send(FRAME_5).await;
        assert_eq!(rig.answers(1).await, [ACK]);
        rig.send(FRAME_9).await;
        assert_eq!(rig.answers(1).await, [ACK]);
        assert_eq!(rig.event().await.account, "1234");
        // The next event is frame 9's: the resent frame 5 was not handed on.
        assert_eq!(rig.event().await.account, "5678");
        // After the window (from the last copy), the same bytes are a new event.
        rig.clock.advance(Duration::from_secs(31));
        rig.send(FRAME_5).await;
        assert_eq!(rig.answers(1).await, [ACK]);
        let event = rig.event().await;
        assert_eq!(event.account, "1234");
        assert_eq!(
            event.received_at,
            start_time() + SignedDuration::from_secs(35)
        );
        let snapshot = rig.stop().await;
        assert_eq!(snapshot.counts.duplicates, 1);
        assert_eq!(snapshot.counts.events, 3);
    }

    #[tokio::test]
    async fn frame_28_overflow_then_heartbeat() {
        let mut rig = Rig::start(|_| {}).await;
        let mut burst = vec![b'A'; 300];
        burst.extend_from_slice(FRAME_1);
        rig.send(&burst).await;
        // The first answer is the heartbeat's ACK: nothing was written for the overflow.
        assert_eq!(rig.answers(1).await, [ACK]);
        rig.probe_nothing_else_written().await;
        let snapshot = rig.stop().await;
        assert_eq!(snapshot.counts.overflows, 1);
        assert_eq!(snapshot.counts.acked, 1);
        assert_eq!(snapshot.counts.nacked, 1);
        assert!(snapshot.last_heartbeat_at.is_some());
    }

    #[tokio::test]
    async fn frame_30_retry_storm_then_frame() {
        let mut rig = Rig::start(|_| {}).await;
        let mut storm = FRAME_17.repeat(25);
        storm.extend_from_slice(FRAME_5);
        rig.send(&storm).await;
        let mut expected = vec![NAK; 25];
        expected.push(ACK);
        assert_eq!(rig.answers(26).await, expected);
        assert_eq!(rig.event().await.account, "1234");
        assert_eq!(rig.status.snapshot().counts.nacked, 25);
        rig.stop().await;
    }

    #[tokio::test]
    async fn passive_tap_writes_nothing() {
        let mut rig = Rig::start(|settings| settings.acknowledge = false).await;
        rig.send(&[FRAME_5, FRAME_17, FRAME_1].concat()).await;
        rig.wait_for(|s| s.counts.acked == 2 && s.counts.nacked == 1)
            .await;
        assert_eq!(rig.event().await.account, "1234");
        // An absence check needs a bound. Answers are written before the counts move, so a
        // bug shows up here; a pass can only be false if the kernel delays pty data > 300 ms.
        let mut byte = [0u8; 1];
        let read = timeout(
            Duration::from_millis(300),
            AsyncReadExt::read(&mut rig.panel, &mut byte),
        )
        .await;
        assert!(read.is_err(), "a passive tap wrote {byte:?}");
        rig.stop().await;
    }

    #[tokio::test]
    async fn device_unplugged_and_plugged_again() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("receiver");
        let (master, slave, path) = pty();
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let mut rig = Rig::start_on(master, Some(slave), link.clone(), |_| {}).await;
        rig.send(FRAME_5).await;
        assert_eq!(rig.answers(1).await, [ACK]);
        assert_eq!(rig.event().await.account, "1234");

        // Unplug: both ends of the pty go away, then its name.
        let (spare_master, _) = SerialStream::pair().unwrap();
        let old_panel = std::mem::replace(&mut rig.panel, spare_master);
        drop(old_panel);
        drop(rig._slave.take());
        rig.wait_for(|s| !s.connected).await;
        std::fs::remove_file(&link).unwrap();

        // Plug a new device in under the same name (atomic rename of a fresh symlink).
        let (master, slave, path) = pty();
        let fresh = dir.path().join("receiver.new");
        std::os::unix::fs::symlink(&path, &fresh).unwrap();
        std::fs::rename(&fresh, &link).unwrap();
        rig.panel = master;
        rig._slave = Some(slave);
        rig.wait_for(|s| s.connected).await;
        rig.send(FRAME_9).await;
        assert_eq!(rig.answers(1).await, [ACK]);
        assert_eq!(rig.event().await.account, "5678");
        let snapshot = rig.stop().await;
        assert_eq!(snapshot.counts.events, 2);
    }

    #[tokio::test]
    async fn missing_device_is_retried_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("later");
        let mut settings = ReceiverSettings::new("rx-missing", &link);
        settings.heartbeat_timeout = Duration::from_millis(200);
        let (events_tx, _events_rx) = mpsc::channel(4);
        let status = Arc::new(ReceiverStatus::new("rx-missing"));
        let clock: SharedClock = Arc::new(ManualClock::new(start_time()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            settings,
            events_tx,
            status.clone(),
            clock,
            shutdown.clone(),
        ));
        // Silence is reported even while the device is missing.
        let snapshot = timeout(PATIENCE, status.wait_for(|s| s.silent))
            .await
            .unwrap();
        assert!(!snapshot.connected);
        // The device appears: the task finds it.
        let (mut master, _slave, path) = pty();
        std::os::unix::fs::symlink(&path, &link).unwrap();
        timeout(PATIENCE, status.wait_for(|s| s.connected))
            .await
            .unwrap();
        AsyncWriteExt::write_all(&mut master, FRAME_1)
            .await
            .unwrap();
        let mut answer = [0u8; 1];
        timeout(PATIENCE, AsyncReadExt::read_exact(&mut master, &mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, [ACK]);
        let snapshot = timeout(PATIENCE, status.wait_for(|s| s.last_heartbeat_at.is_some()))
            .await
            .unwrap();
        assert_eq!(snapshot.counts.acked, 1);
        shutdown.cancel();
        timeout(PATIENCE, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn invalid_settings_keep_the_task_alive_until_shutdown() {
        let mut settings = ReceiverSettings::new("rx-bad", "/dev/null");
        settings.data_bits = 9;
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "receiver rx-bad: data_bits = 9 is not allowed, expected 5 to 8"
        );
        let (events_tx, _events_rx) = mpsc::channel(4);
        let status = Arc::new(ReceiverStatus::new("rx-bad"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            settings,
            events_tx,
            status.clone(),
            Arc::new(ManualClock::new(start_time())),
            shutdown.clone(),
        ));
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        shutdown.cancel();
        timeout(PATIENCE, task).await.unwrap().unwrap();
        assert!(!status.snapshot().connected);
    }

    /// Paused-time tests run the same task on an in-memory stream, so virtual time can pass.
    struct Bench {
        panel: tokio::io::DuplexStream,
        events_rx: mpsc::Receiver<ReceivedEvent>,
        status: Arc<ReceiverStatus>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Bench {
        async fn start(capacity: usize, adjust: impl FnOnce(&mut ReceiverSettings)) -> Bench {
            let (panel, port) = tokio::io::duplex(1 << 16);
            let mut port = Some(port);
            let mut settings = ReceiverSettings::new("rx-mem", "/dev/mem-test");
            adjust(&mut settings);
            let (events_tx, events_rx) = mpsc::channel(capacity);
            let status = Arc::new(ReceiverStatus::new("rx-mem"));
            let shutdown = CancellationToken::new();
            let open = move |settings: &ReceiverSettings| {
                port.take().ok_or_else(|| ReceiverError::Closed {
                    device: settings.device.clone(),
                })
            };
            let task = tokio::spawn(run_with(
                settings,
                open,
                events_tx,
                status.clone(),
                Arc::new(ManualClock::new(start_time())),
                shutdown.clone(),
            ));
            status.wait_for(|s| s.connected).await;
            Bench {
                panel,
                events_rx,
                status,
                shutdown,
                task,
            }
        }

        async fn answers(&mut self, n: usize) -> Vec<u8> {
            let mut answers = vec![0; n];
            timeout(PATIENCE, self.panel.read_exact(&mut answers))
                .await
                .unwrap()
                .unwrap();
            answers
        }

        async fn stop(self) -> ReceiverSnapshot {
            self.shutdown.cancel();
            timeout(PATIENCE, self.task).await.unwrap().unwrap();
            self.status.snapshot()
        }
    }

    /// Test frame 29: heartbeats every 30 s keep the receiver alive; 95 s of silence marks it
    /// silent after the 90 s timeout; the next frame clears it.
    #[tokio::test(start_paused = true)]
    async fn frame_29_silence_reported_and_cleared() {
        let mut bench = Bench::start(4, |_| {}).await;
        for _ in 0..4 {
            bench.panel.write_all(FRAME_1).await.unwrap();
            assert_eq!(bench.answers(1).await, [ACK]);
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert!(!bench.status.snapshot().silent);
        }
        tokio::time::sleep(Duration::from_secs(65)).await;
        assert!(bench.status.snapshot().silent);
        bench.panel.write_all(FRAME_1).await.unwrap();
        assert_eq!(bench.answers(1).await, [ACK]);
        timeout(PATIENCE, bench.status.wait_for(|s| !s.silent))
            .await
            .unwrap();
        let snapshot = bench.stop().await;
        assert_eq!(snapshot.counts.acked, 5);
    }

    /// A full pipeline never delays answers and loses nothing: events queue in the task, and
    /// past `PENDING_EVENTS_MAX` the task stops reading (the receiver keeps the frames).
    #[tokio::test(start_paused = true)]
    async fn full_pipeline_answers_first_and_loses_nothing() {
        let mut bench = Bench::start(1, |_| {}).await;
        let n_frames = PENDING_EVENTS_MAX + 500;
        let frames: Vec<u8> = (0..n_frames)
            .flat_map(|index| {
                format!("5011 181234E130{:02}{:03}\x14", index / 1000, index % 1000).into_bytes()
            })
            .collect();
        bench.panel.write_all(&frames).await.unwrap();
        // The first PENDING_EVENTS_MAX + 1 frames are answered while nobody takes events.
        let first = bench.answers(PENDING_EVENTS_MAX + 1).await;
        assert!(first.iter().all(|&answer| answer == ACK));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let stalled = bench.status.snapshot().counts.acked;
        assert!(
            stalled < n_frames as u64,
            "reading stops while the queue is full"
        );
        // The pipeline drains: every event arrives once, in order, and every frame is answered.
        for index in 0..n_frames {
            let event = timeout(PATIENCE, bench.events_rx.recv())
                .await
                .unwrap()
                .unwrap();
            let zone = format!("{:03}", index % 1000);
            assert_eq!(event.zone.as_deref(), Some(zone.as_str()), "event {index}");
        }
        let rest = bench.answers(n_frames - PENDING_EVENTS_MAX - 1).await;
        assert!(rest.iter().all(|&answer| answer == ACK));
        let snapshot = bench.stop().await;
        assert_eq!(snapshot.counts.events, n_frames as u64);
        assert_eq!(snapshot.counts.dropped, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_pipeline_drops_and_counts_but_still_answers() {
        let mut bench = Bench::start(4, |_| {}).await;
        bench.events_rx.close();
        bench
            .panel
            .write_all(&[FRAME_5, FRAME_9].concat())
            .await
            .unwrap();
        assert_eq!(bench.answers(2).await, [ACK, ACK]);
        let snapshot = timeout(PATIENCE, bench.status.wait_for(|s| s.counts.dropped == 2))
            .await
            .unwrap();
        assert_eq!(snapshot.counts.events, 0);
        bench.stop().await;
    }

    #[test]
    fn recent_frames_window_and_clock_steps() {
        let window = Duration::from_secs(30);
        let t0 = start_time();
        let mut recent = RecentFrames::default();
        let at = |seconds: i64| t0 + SignedDuration::from_secs(seconds);
        assert!(!recent.is_duplicate(b"a", at(0), window));
        assert!(recent.is_duplicate(b"a", at(4), window));
        assert!(
            recent.is_duplicate(b"a", at(34), window),
            "window runs from the last copy"
        );
        assert!(!recent.is_duplicate(b"a", at(65), window));
        assert!(!recent.is_duplicate(b"b", at(65), window));
        assert!(
            !recent.is_duplicate(b"a", at(10), window),
            "clock stepped back"
        );
        for index in 0..RECENT_FRAMES_MAX + 10 {
            recent.is_duplicate(index.to_string().as_bytes(), at(66), window);
        }
        assert_eq!(recent.seen.len(), RECENT_FRAMES_MAX);
    }
}
