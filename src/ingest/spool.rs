//! Spool interception (SPEC §5.2): watches `ingest.spool_dir` (inotify, plus a rescan at start),
//! takes each recording once it is complete (sidecar `NAME.json` written last, or a
//! FreePBX/Asterisk-named file closed after writing), runs it through the ingest `Pipeline` with
//! a bounded number of workers, unlinks the plaintext only after the catalog commit, and stores
//! files it cannot parse encrypted in quarantine with the reason. Never drops a file, never
//! logs a file name above `debug` (names hold phone numbers), never crashes on what it finds.
//!
//! Layout: `run` (the driver: events, rescans, dispatch, status) over a sans-I/O `Tracker` that
//! turns observations (inotify events, `stat` results, the monotonic time) into `Job`s, and the
//! worker functions that carry a job out.
//!
//! **Completion rules** (what the `Tracker` decides; each file's *event state* is `Unknown` when
//! no event was seen for it since the watch began or since events were lost, `Writing` after a
//! create or modify event, `Closed` after a close-write or a moved-to event):
//! - A **sidecar** `NAME.json` makes `NAME.<audio ext>` complete once the sidecar is `Closed`
//!   (written last, SPEC §5.2), and the audio is not `Writing`. A sidecar in state `Unknown`
//!   (present at start, or after an overflow) counts as complete once its size and mtime are
//!   unchanged over `QUIET_PERIOD` and older than `RECENT_WRITE`: a sidecar being written while
//!   callguard restarted is not taken half-written.
//! - A **FreePBX/Asterisk-named** audio file (one `parse_spool_name` accepts) without a sidecar
//!   is complete `SETTLE` after its close-write or moved-to event, if no write came since (a
//!   recorder that closes and reopens, or writes a sidecar right after, is given that moment).
//!   In state `Unknown` it is complete once its size and mtime are unchanged over
//!   `QUIET_PERIOD` and it was last modified at least `RECENT_WRITE` ago (a recorder between two
//!   writes while callguard started writes again before that, and is then `Writing`); a file
//!   that produced a write event is never taken by that rule, only by its close. Limitation: a
//!   file left open but idle for `RECENT_WRITE` while callguard was not watching it (down, or
//!   events lost) is taken as it is.
//! - An audio file with **neither sidecar nor FreePBX name** waits for its sidecar; after
//!   `GRACE_PERIOD` without change (counted from its modification time when callguard found it
//!   without events, so a restart does not start the wait again) and while not
//!   `Writing`, it goes to quarantine ("no sidecar and not a FreePBX/Asterisk file name"). A
//!   **sidecar without audio** waits as long; then it is removed if its call is already stored
//!   (a crash between the two unlinks), else quarantined.
//! - Two audio files for one sidecar, or two sidecars for one stem, are ambiguous: once none is
//!   being written, all of them go to quarantine.
//! - A file of any other name (`classify` → `Other`: no audio extension, not a sidecar) is an
//!   audio file without a recognised name: with a sidecar it is probed by its content, alone it
//!   goes to quarantine after `GRACE_PERIOD`. Temporary names (`classify` → `Temporary`),
//!   directories and symbolic links are never touched. One job per stem at a time; at most `SpoolSettings::workers` at once.
//!
//! **Quarantine** stores each file of a failed recording as its own encrypted entry: the audio
//! first, then its sidecar (also personal data) with the same reason and "sidecar of quarantine
//! entry ID". Errors that are not the file's fault (disk full, catalog, vault, read errors)
//! leave the files in the spool and retry with back-off (`RETRY_FIRST` doubling to
//! `RETRY_MAX`); what was already stored is never stored twice (the rest of the job resumes).
//!
//! **Bounds.** Events go through a queue of `EVENT_QUEUE`; when it is full events are dropped,
//! the event states are reset to `Unknown` and the directory is listed again (the same as an
//! inotify overflow). Sidecars are read up to `MAX_METADATA_BYTES`; audio is streamed in
//! `READ_CHUNK` pieces.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::audit::chain::{AuditDraft, Outcome};
use crate::catalog::CatalogError;
use crate::catalog::policy::QuarantineRow;
use crate::config::units::Period;
use crate::daemon::WorkerStatus;
use crate::ingest::metadata::{CallMetadata, MAX_METADATA_BYTES, MetadataError};
use crate::ingest::probe::FormatHint;
use crate::ingest::spool_name::{self, SpoolFile, SpoolNameError};
use crate::ingest::{Admission, IngestError, Pipeline, Sender};
use crate::objections::CALL_ID_DOMAIN;
use crate::vault::keys::KeyError;
use crate::vault::store::BlobWriter;
use crate::vault::{BlobId, VaultError};

/// What the watcher needs from the configuration.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub timezone: jiff::tz::TimeZone,
    pub workers: usize,
    /// How long quarantined files are kept (`retention.quarantine`).
    pub quarantine_retention: Period,
}

/// How often the directory is listed again while inotify works (missed events, overflow).
const RESCAN_INTERVAL: Duration = Duration::from_secs(30);
/// How often it is listed while inotify is unavailable; also the delay between attempts to
/// watch again.
const RESCAN_UNWATCHED: Duration = Duration::from_secs(5);
/// How often the completion rules are evaluated (in memory; `stat` only for `Unknown` files).
const TICK: Duration = Duration::from_millis(250);
/// A file with no event history is complete once its size and mtime stay the same this long.
const QUIET_PERIOD: Duration = Duration::from_secs(2);
/// A file with no event history modified less than this long ago is not taken by the quiet
/// rule: a recorder writing every few seconds (GSM at 1.6 kB/s through a 4 KiB buffer: every
/// 2.5 s) may be between two writes while callguard starts. Its next write is an event, and
/// then only its close completes it.
const RECENT_WRITE: Duration = Duration::from_secs(10);
/// A FreePBX-named file is taken this long after its close, if nothing was written since.
const SETTLE: Duration = Duration::from_secs(1);
/// An audio file without sidecar or FreePBX name, or a sidecar without audio, goes to
/// quarantine after this long without change.
const GRACE_PERIOD: Duration = Duration::from_secs(10 * 60);
/// First delay before retrying a failure that is not the file's fault; doubles up to
/// `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Events buffered between the inotify thread and the driver.
const EVENT_QUEUE: usize = 4096;
/// Bytes read from a spool file at a time.
const READ_CHUNK: usize = 64 * 1024;
/// At shutdown, how long jobs in progress may run before they are abandoned (their files stay
/// in the spool; a committed recording whose file stayed is an idempotent repeat next time).
const DRAIN: Duration = Duration::from_secs(10);
/// HMAC domain of the tags that stand for file names in logs.
const LOG_TAG_DOMAIN: &str = "spool_log";

/// Runs the spool watcher until `shutdown`. Reports its state under the status line `spool`.
pub async fn run(
    pipeline: Pipeline,
    settings: SpoolSettings,
    status: WorkerStatus,
    shutdown: CancellationToken,
) {
    let workers = settings.workers.max(1);
    let context = Arc::new(Context {
        pipeline,
        dir: settings.dir.clone(),
        timezone: settings.timezone.clone(),
        quarantine_retention: settings.quarantine_retention,
        sender: Sender {
            actor: "spool".into(),
            role: "recorder".into(),
        },
        counts: Counts::default(),
    });
    let dir = settings.dir;
    let mut tracker = Tracker::new(settings.timezone);
    let (event_tx, mut event_rx) = mpsc::channel(EVENT_QUEUE);
    let lost = Arc::new(AtomicBool::new(false));
    let mut watcher = match watch(&dir, &event_tx, &lost) {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::error!(dir = %dir.display(), %error, "spool: cannot watch the directory; listing it every {}s instead", RESCAN_UNWATCHED.as_secs());
            None
        }
    };
    let mut next_watch_attempt = Instant::now() + RESCAN_UNWATCHED;
    let mut next_rescan = Instant::now();
    let mut listing_failed = false;
    let mut jobs: JoinSet<Finished> = JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(dir = %dir.display(), workers, "spool watcher started");

    loop {
        let now = Instant::now();
        if lost.swap(false, Ordering::Relaxed) {
            tracing::warn!("spool: file events were lost; listing the directory again");
            tracker.events_lost();
            next_rescan = now;
        }
        if watcher.is_none() && now >= next_watch_attempt {
            next_watch_attempt = now + RESCAN_UNWATCHED;
            if let Ok(started) = watch(&dir, &event_tx, &lost) {
                tracing::info!(dir = %dir.display(), "spool: watching the directory again");
                watcher = Some(started);
                tracker.events_lost();
                next_rescan = now;
            }
        }
        if now >= next_rescan {
            match rescan(&dir, &mut tracker).await {
                Ok(()) => {
                    if listing_failed {
                        tracing::info!(dir = %dir.display(), "spool: directory readable again");
                    }
                    listing_failed = false;
                }
                Err(error) => {
                    if !listing_failed {
                        tracing::error!(dir = %dir.display(), %error, "spool: cannot list the directory; retrying");
                    }
                    listing_failed = true;
                }
            }
            let interval = match watcher.is_some() {
                true => RESCAN_INTERVAL,
                false => RESCAN_UNWATCHED,
            };
            next_rescan = Instant::now() + interval;
        }
        for name in tracker.to_stat(Instant::now()) {
            let stat = stat(&dir.join(&name)).await;
            tracker.observe(&name, stat, Instant::now());
        }
        while jobs.len() < workers {
            let Some(job) = tracker.next_job(Instant::now()) else {
                break;
            };
            tracing::debug!(?job, "spool: job started");
            let context = context.clone();
            jobs.spawn(async move { work(&context, job).await });
        }
        status.set(
            "spool",
            status_line(
                &dir,
                &context.counts,
                &tracker,
                jobs.len(),
                watcher.is_some(),
                listing_failed,
            ),
        );

        tokio::select! {
            _ = shutdown.cancelled() => break,
            received = event_rx.recv() => {
                let mut next = received;
                let mut n_events = 0;
                while let Some(result) = next {
                    match result {
                        Ok(event) => {
                            for signal in signals(&dir, &event) {
                                match signal {
                                    Signal::File { name, event } => {
                                        tracker.event(&name, event, Instant::now());
                                    }
                                    Signal::Lost => {
                                        lost.store(true, Ordering::Relaxed);
                                    }
                                    Signal::WatchGone => {
                                        tracing::warn!(dir = %dir.display(), "spool: the directory was removed or moved; watching again when it is back");
                                        watcher = None;
                                        lost.store(true, Ordering::Relaxed);
                                    }
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "spool: file watch error; listing the directory again");
                            lost.store(true, Ordering::Relaxed);
                        }
                    }
                    n_events += 1;
                    next = match n_events < EVENT_QUEUE {
                        true => event_rx.try_recv().ok(),
                        false => None,
                    };
                }
            }
            joined = jobs.join_next(), if !jobs.is_empty() => {
                match joined {
                    Some(Ok(finished)) => tracker.finished(finished, Instant::now()),
                    Some(Err(join)) => {
                        // A panic in a job: its stem stays marked busy, so the file is left
                        // alone (never taken twice, never dropped) until the next start.
                        tracing::error!(%join, "spool: a job panicked; its files stay in the spool");
                    }
                    None => {}
                }
            }
            _ = tick.tick() => {}
        }
    }

    drop(watcher);
    if !jobs.is_empty() {
        tracing::info!(n_jobs = jobs.len(), "spool: waiting for jobs in progress");
        let drained =
            tokio::time::timeout(DRAIN, async { while jobs.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                "spool: jobs still in progress abandoned at shutdown; their files stay in the spool"
            );
            jobs.abort_all();
        }
    }
    status.set("spool", "stopped");
}

/// What inotify says about one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileEvent {
    /// Closed after writing, or moved into the spool: complete as far as the writer goes.
    Closed,
    /// Removed or moved away.
    Removed,
    /// Created or written to.
    Written,
}

/// An inotify event, as the tracker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Signal {
    File {
        name: String,
        event: FileEvent,
    },
    /// Events were lost (queue overflow): what is known from events is stale.
    Lost,
    /// The spool directory itself was removed or moved: the watch is gone.
    WatchGone,
}

/// The `stat` facts the completion rules use. Two stats are the same file unchanged when
/// they are equal; `age` (it grows) is left out of that.
#[derive(Debug, Clone, Copy)]
struct Stat {
    len: u64,
    mtime: Option<SystemTime>,
    ino: u64,
    /// A regular file (not a directory, a symbolic link or anything else).
    is_file: bool,
    /// Modified less than `RECENT_WRITE` before the stat (wall clock): a writer may still
    /// hold it, between two writes, so the quiet rule does not take it yet.
    written_lately: bool,
    /// Time since the last modification (wall clock; zero if in the future or unknown): a file
    /// found at start has waited that long already, which counts toward `GRACE_PERIOD`.
    age: Duration,
}

impl PartialEq for Stat {
    fn eq(&self, other: &Stat) -> bool {
        (
            self.len,
            self.mtime,
            self.ino,
            self.is_file,
            self.written_lately,
        ) == (
            other.len,
            other.mtime,
            other.ino,
            other.is_file,
            other.written_lately,
        )
    }
}

impl Eq for Stat {}

/// What the watcher knows about one file, from events and stats.
#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    events: EventState,
    /// The last stat, when the file was first seen with it, and when it was last checked.
    stat: Option<(Stat, Instant, Instant)>,
    /// When it was first seen or last seen to change: the clock of `GRACE_PERIOD`.
    changed_at: Instant,
    /// A directory or another non-regular file with a spool name: never taken.
    not_a_file: bool,
}

/// What a file's name says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// An audio file. `name_problem` is why its name is not a FreePBX/Asterisk name (`None`:
    /// it is one), without any value from the name.
    Audio {
        stem: String,
        name_problem: Option<String>,
    },
    Sidecar {
        stem: String,
    },
}

/// What inotify said about a file since the watch began (or since events were lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventState {
    Closed { at: Instant },
    Unknown,
    Writing,
}

/// One unit of work: a stem's files, taken together.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Job {
    /// What remains of a job interrupted by a failure that was not the files' fault: store these
    /// items in quarantine, then unlink those files.
    Finish {
        stem: String,
        quarantine: Vec<QuarantineItem>,
        unlink: Vec<String>,
    },
    /// A sidecar whose audio never came: removed if its call is already stored (a crash between
    /// the two unlinks), else quarantined.
    LoneSidecar { stem: String, sidecar: String },
    /// Store `files` in quarantine (the first one is the main entry), then unlink them.
    Quarantine {
        stem: String,
        files: Vec<String>,
        reason: String,
    },
    /// Ingest `audio`, described by `sidecar` or, without one, by its FreePBX name.
    Take {
        stem: String,
        audio: String,
        sidecar: Option<String>,
    },
}

/// One file to store in quarantine, its entry id and reason decided beforehand (a resumed job
/// stores what remains under the ids and reasons first chosen).
#[derive(Debug, Clone, PartialEq, Eq)]
struct QuarantineItem {
    name: String,
    id: BlobId,
    reason: String,
}

/// What a job came to.
#[derive(Debug)]
struct Finished {
    job: Job,
    result: Result<Done, Failure>,
}

/// A job that ended without a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Done {
    /// The files were handled (ingested, discarded or quarantined) and unlinked.
    Handled,
    /// A file with a spool name is not a regular file: it is left alone from now on.
    NotAFile { name: String },
    /// A file vanished before it was read (someone else removed or renamed it).
    Vanished,
}

/// A job that must be tried again later; the files stay in the spool.
#[derive(Debug)]
struct Failure {
    error: SpoolError,
    /// What remains to do, when part of the job was done already.
    resume: Option<Job>,
}

/// Why a job could not finish this time. None of these is the file's fault.
#[derive(Debug, thiserror::Error)]
enum SpoolError {
    #[error("ingest failed: {0}")]
    Ingest(IngestError),
    #[error("cannot store in quarantine: {0}")]
    QuarantineCatalog(#[from] CatalogError),
    #[error("cannot make a quarantine key: {0}")]
    QuarantineKey(#[from] KeyError),
    #[error("cannot store in quarantine: {0}")]
    QuarantineVault(#[from] VaultError),
    #[error("cannot read spool file {tag}: {source}")]
    Read {
        tag: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot make the unlinks in {} durable: {source}", .dir.display())]
    SyncDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot unlink spool file {tag}: {source}")]
    Unlink {
        tag: String,
        #[source]
        source: io::Error,
    },
}

/// Per stem: the back-off after a failure, and what remains of the failed job.
#[derive(Debug, Clone)]
struct Retry {
    at: Instant,
    n_failures: u32,
    resume: Option<Job>,
}

/// The completion logic, sans I/O: observations in (events, stats, listings, job results, the
/// monotonic time as an argument), jobs out.
#[derive(Debug)]
struct Tracker {
    /// For telling FreePBX names from others.
    timezone: jiff::tz::TimeZone,
    /// Every audio file and sidecar in the spool, by name.
    files: BTreeMap<String, Entry>,
    /// Stems with a job in progress: never given out twice.
    busy: HashSet<String>,
    /// Stems waiting to retry after a failure.
    retries: BTreeMap<String, Retry>,
}

impl Tracker {
    fn new(timezone: jiff::tz::TimeZone) -> Tracker {
        Tracker {
            timezone,
            files: BTreeMap::new(),
            busy: HashSet::new(),
            retries: BTreeMap::new(),
        }
    }

    /// An entry for `name`, if the name is one the spool takes.
    fn entry(&mut self, name: &str, now: Instant) -> Option<&mut Entry> {
        if !self.files.contains_key(name) {
            let kind = match spool_name::classify(name) {
                SpoolFile::Audio { stem, .. } => {
                    let name_problem = match spool_name::parse_spool_name(name, &self.timezone) {
                        Ok(_) => None,
                        Err(error) => Some(name_reason(&error)),
                    };
                    Kind::Audio { stem, name_problem }
                }
                SpoolFile::Sidecar { stem } => Kind::Sidecar { stem },
                // Never dropped silently (SPEC §5.2): a file of any other name is treated as
                // audio that has no recognised name. With a sidecar it is probed like any
                // recording (by its content); alone it goes to quarantine after
                // `GRACE_PERIOD`, with the reason.
                SpoolFile::Other => {
                    let stem = match name.rsplit_once('.') {
                        Some((stem, _)) if !stem.is_empty() => stem,
                        _ => name,
                    };
                    Kind::Audio {
                        stem: stem.to_owned(),
                        name_problem: Some("no audio extension".to_owned()),
                    }
                }
                SpoolFile::Temporary => return None,
            };
            let entry = Entry {
                kind,
                events: EventState::Unknown,
                stat: None,
                changed_at: now,
                not_a_file: false,
            };
            self.files.insert(name.to_owned(), entry);
        }
        self.files.get_mut(name)
    }

    /// An inotify event for `name`.
    fn event(&mut self, name: &str, event: FileEvent, now: Instant) {
        match event {
            FileEvent::Removed => {
                self.files.remove(name);
            }
            FileEvent::Written => {
                if let Some(entry) = self.entry(name, now) {
                    entry.events = EventState::Writing;
                    entry.changed_at = now;
                }
            }
            FileEvent::Closed => {
                if let Some(entry) = self.entry(name, now) {
                    entry.events = EventState::Closed { at: now };
                    entry.changed_at = now;
                }
            }
        }
    }

    /// A stat of `name` (`None`: it is gone).
    fn observe(&mut self, name: &str, stat: Option<Stat>, now: Instant) {
        let Some(stat) = stat else {
            self.files.remove(name);
            return;
        };
        let Some(entry) = self.entry(name, now) else {
            return;
        };
        entry.not_a_file = !stat.is_file;
        entry.stat = match entry.stat {
            Some((previous, since, _)) if previous == stat => Some((stat, since, now)),
            Some(_) => {
                entry.changed_at = now;
                Some((stat, now, now))
            }
            None => {
                // First seen without any event (present at start, or after lost events): it
                // has been unchanged since its mtime, so restarts do not reset its grace period.
                if entry.events == EventState::Unknown {
                    let since = now.checked_sub(stat.age.min(GRACE_PERIOD)).unwrap_or(now);
                    entry.changed_at = entry.changed_at.min(since);
                }
                Some((stat, now, now))
            }
        };
    }

    /// A listing of the directory: anything not in it is gone.
    fn listed(&mut self, names: &BTreeSet<String>) {
        self.files.retain(|name, _| names.contains(name));
    }

    /// Events were lost: nothing known from events can be trusted, fall back to stats.
    fn events_lost(&mut self) {
        for entry in self.files.values_mut() {
            entry.events = EventState::Unknown;
        }
    }

    /// Files whose completion depends on a new stat now.
    fn to_stat(&self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for (name, entry) in &self.files {
            if entry.events != EventState::Unknown || entry.not_a_file {
                continue;
            }
            let due = match &entry.stat {
                None => true,
                Some((stat, since, last)) => {
                    (last.duration_since(*since) < QUIET_PERIOD || stat.written_lately)
                        && now.duration_since(*last) >= QUIET_PERIOD
                }
            };
            if due {
                out.push(name.clone());
            }
        }
        out
    }

    /// The next job to start, if one is due; its stem is then busy until `finished`.
    fn next_job(&mut self, now: Instant) -> Option<Job> {
        let job = self.due(now).into_iter().next()?;
        self.busy.insert(job.stem().to_owned());
        Some(job)
    }

    /// Every job due now, one per stem, in name order.
    fn due(&self, now: Instant) -> Vec<Job> {
        let mut groups: BTreeMap<&str, Group<'_>> = BTreeMap::new();
        for (name, entry) in &self.files {
            if entry.not_a_file {
                continue;
            }
            match &entry.kind {
                Kind::Audio { stem, name_problem } => {
                    groups.entry(stem).or_default().audio.push(Audio {
                        name,
                        entry,
                        name_problem: name_problem.as_deref(),
                    });
                }
                Kind::Sidecar { stem } => {
                    groups.entry(stem).or_default().sidecars.push((name, entry));
                }
            }
        }
        let mut jobs = Vec::new();
        for (stem, retry) in &self.retries {
            if self.busy.contains(stem) || now < retry.at {
                continue;
            }
            if let Some(job) = &retry.resume {
                jobs.push(job.clone());
            }
        }
        for (stem, group) in &groups {
            if self.busy.contains(*stem) {
                continue;
            }
            match self.retries.get(*stem) {
                Some(retry) if now < retry.at || retry.resume.is_some() => continue,
                Some(_) | None => {}
            }
            if let Some(job) = decide(stem, group, now) {
                jobs.push(job);
            }
        }
        jobs
    }

    /// A job came back.
    fn finished(&mut self, finished: Finished, now: Instant) {
        let stem = finished.job.stem().to_owned();
        self.busy.remove(&stem);
        match finished.result {
            Ok(Done::Handled) | Ok(Done::Vanished) => {
                self.retries.remove(&stem);
                for name in finished.job.files() {
                    self.files.remove(name);
                }
            }
            Ok(Done::NotAFile { name }) => {
                self.retries.remove(&stem);
                if let Some(entry) = self.files.get_mut(&name) {
                    entry.not_a_file = true;
                }
            }
            Err(failure) => {
                let n_failures = self
                    .retries
                    .get(&stem)
                    .map_or(0, |retry| retry.n_failures)
                    .saturating_add(1);
                let delay = RETRY_FIRST
                    .saturating_mul(1u32 << (n_failures - 1).min(16))
                    .min(RETRY_MAX);
                self.retries.insert(
                    stem,
                    Retry {
                        at: now + delay,
                        n_failures,
                        resume: failure.resume,
                    },
                );
            }
        }
    }

    /// Stems with files that wait (not busy, not left alone as non-files).
    fn n_waiting(&self) -> usize {
        let mut stems = BTreeSet::new();
        for entry in self.files.values() {
            if entry.not_a_file {
                continue;
            }
            let stem = match &entry.kind {
                Kind::Audio { stem, .. } | Kind::Sidecar { stem } => stem,
            };
            if !self.busy.contains(stem) {
                stems.insert(stem);
            }
        }
        stems.len()
    }

    fn n_retrying(&self) -> usize {
        self.retries.len()
    }
}

/// The files of one stem.
#[derive(Debug, Default)]
struct Group<'a> {
    audio: Vec<Audio<'a>>,
    sidecars: Vec<(&'a str, &'a Entry)>,
}

#[derive(Debug)]
struct Audio<'a> {
    name: &'a str,
    entry: &'a Entry,
    name_problem: Option<&'a str>,
}

/// The completion rules of the module documentation, for one stem.
fn decide(stem: &str, group: &Group<'_>, now: Instant) -> Option<Job> {
    let writing = |entry: &Entry| entry.events == EventState::Writing;
    let ambiguous =
        group.sidecars.len() > 1 || (group.sidecars.len() == 1 && group.audio.len() > 1);
    if ambiguous {
        let all_complete = group.audio.iter().all(|audio| complete(audio.entry))
            && group.sidecars.iter().all(|(_, entry)| complete(entry));
        if !all_complete {
            return None;
        }
        let mut files: Vec<String> = group.audio.iter().map(|a| a.name.to_owned()).collect();
        files.extend(group.sidecars.iter().map(|(name, _)| (*name).to_owned()));
        return Some(Job::Quarantine {
            stem: stem.to_owned(),
            files,
            reason: "several audio files or sidecars share one recording name".to_owned(),
        });
    }
    if let Some((sidecar, sidecar_entry)) = group.sidecars.first() {
        if !complete(sidecar_entry) {
            return None;
        }
        return match group.audio.first() {
            Some(audio) => match writing(audio.entry) {
                true => None,
                false => Some(Job::Take {
                    stem: stem.to_owned(),
                    audio: audio.name.to_owned(),
                    sidecar: Some((*sidecar).to_owned()),
                }),
            },
            None => match now.duration_since(sidecar_entry.changed_at) >= GRACE_PERIOD {
                true => Some(Job::LoneSidecar {
                    stem: stem.to_owned(),
                    sidecar: (*sidecar).to_owned(),
                }),
                false => None,
            },
        };
    }
    let audio = group.audio.first()?;
    match audio.name_problem {
        None => {
            let settled = match audio.entry.events {
                EventState::Closed { at } => now.duration_since(at) >= SETTLE,
                EventState::Unknown => quiet(audio.entry),
                EventState::Writing => false,
            };
            match settled {
                true => Some(Job::Take {
                    stem: stem.to_owned(),
                    audio: audio.name.to_owned(),
                    sidecar: None,
                }),
                false => None,
            }
        }
        Some(problem) => {
            let expired = now.duration_since(audio.entry.changed_at) >= GRACE_PERIOD;
            match expired && !writing(audio.entry) {
                true => Some(Job::Quarantine {
                    stem: stem.to_owned(),
                    files: vec![audio.name.to_owned()],
                    reason: format!("no sidecar and not a FreePBX/Asterisk file name ({problem})"),
                }),
                false => None,
            }
        }
    }
}

/// Whether the writer is done with a file, as far as events and stats tell.
fn complete(entry: &Entry) -> bool {
    match entry.events {
        EventState::Closed { .. } => true,
        EventState::Unknown => quiet(entry),
        EventState::Writing => false,
    }
}

/// Size and mtime seen unchanged over `QUIET_PERIOD`, and not modified lately.
fn quiet(entry: &Entry) -> bool {
    match &entry.stat {
        Some((stat, since, last)) => {
            last.duration_since(*since) >= QUIET_PERIOD && !stat.written_lately
        }
        None => false,
    }
}

impl Job {
    fn stem(&self) -> &str {
        match self {
            Job::Finish { stem, .. }
            | Job::LoneSidecar { stem, .. }
            | Job::Quarantine { stem, .. }
            | Job::Take { stem, .. } => stem,
        }
    }

    /// The spool files the job is about.
    fn files(&self) -> Vec<&str> {
        match self {
            Job::Finish {
                quarantine, unlink, ..
            } => {
                let mut out: Vec<&str> = unlink.iter().map(String::as_str).collect();
                out.extend(quarantine.iter().map(|item| item.name.as_str()));
                out
            }
            Job::LoneSidecar { sidecar, .. } => vec![sidecar],
            Job::Quarantine { files, .. } => files.iter().map(String::as_str).collect(),
            Job::Take { audio, sidecar, .. } => {
                let mut out = vec![audio.as_str()];
                out.extend(sidecar.as_deref());
                out
            }
        }
    }
}

/// The tracker's signals in one notify event. Paths other than direct children of `dir` are
/// ignored; directories being created are not files the spool takes.
fn signals(dir: &Path, event: &notify::Event) -> Vec<Signal> {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};

    if event.need_rescan() {
        return vec![Signal::Lost];
    }
    let file = |path: &Path, event: FileEvent| -> Option<Signal> {
        if path.parent() != Some(dir) {
            return None;
        }
        let name = path.file_name()?.to_str()?;
        Some(Signal::File {
            name: name.to_owned(),
            event,
        })
    };
    let is_dir_itself = event.paths.iter().any(|path| path == dir);
    let mut out = Vec::new();
    match event.kind {
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
            if is_dir_itself =>
        {
            out.push(Signal::WatchGone);
        }
        EventKind::Create(CreateKind::Folder) => {}
        EventKind::Create(_)
        | EventKind::Modify(ModifyKind::Data(_))
        | EventKind::Modify(ModifyKind::Any)
        | EventKind::Modify(ModifyKind::Other) => {
            out.extend(
                event
                    .paths
                    .iter()
                    .filter_map(|p| file(p, FileEvent::Written)),
            );
        }
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            out.extend(
                event
                    .paths
                    .iter()
                    .filter_map(|p| file(p, FileEvent::Closed)),
            );
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            // notify also sends the `From` and `To` halves; the pair adds nothing.
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
            out.extend(
                event
                    .paths
                    .iter()
                    .filter_map(|p| file(p, FileEvent::Removed)),
            );
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::Any | RenameMode::Other)) => {
            out.push(Signal::Lost);
        }
        EventKind::Modify(ModifyKind::Metadata(_))
        | EventKind::Access(_)
        | EventKind::Any
        | EventKind::Other => {}
    }
    out
}

/// Why a name is not a FreePBX/Asterisk recording name, without any value from the name (the
/// `to` and `from` fields are phone numbers, the last one the call id).
fn name_reason(error: &SpoolNameError) -> String {
    match error {
        SpoolNameError::Field { index, problem, .. } => format!("field {index}: {problem}"),
        SpoolNameError::FieldCount { .. }
        | SpoolNameError::LocalTime { .. }
        | SpoolNameError::NoExtension
        | SpoolNameError::NotAudio { .. }
        | SpoolNameError::Party { .. }
        | SpoolNameError::TooLong { .. } => error.to_string(),
    }
}

/// Why a sidecar was refused, without any value from it (`MetadataError` never repeats a
/// value; an unknown field's name is left out too, it could be anything).
fn metadata_reason(error: &MetadataError) -> String {
    match error {
        MetadataError::UnknownField { .. } => {
            "invalid sidecar metadata: a field is not allowed".to_owned()
        }
        // The sidecar is read up to one byte past the limit: its size is not known.
        MetadataError::TooLarge { max, .. } => {
            format!("invalid sidecar metadata: larger than {max} bytes")
        }
        MetadataError::DuplicateField { .. }
        | MetadataError::Invalid { .. }
        | MetadataError::Json { .. }
        | MetadataError::Missing { .. } => format!("invalid sidecar metadata: {error}"),
    }
}

/// The quarantine reason of an ingest error that is the file's fault; `None` for the others
/// (the file stays in the spool and is retried).
fn quarantine_reason(error: &IngestError) -> Option<String> {
    match error {
        IngestError::DuplicateCallId { existing } => Some(format!(
            "call id already stored with different audio (recording {existing})"
        )),
        IngestError::InvalidMetadata(why) => Some(format!("invalid metadata: {why}")),
        IngestError::TooLarge { limit } => Some(format!(
            "recording larger than the limit of {limit} bytes (ingest.max_recording_bytes)"
        )),
        IngestError::UnsupportedAudio(problem) => Some(format!("audio not accepted: {problem}")),
        IngestError::Catalog(_)
        | IngestError::Discarded(_)
        | IngestError::Key(_)
        | IngestError::Objection(_)
        | IngestError::Source(_)
        | IngestError::StorageFull(_)
        | IngestError::Vault(_) => None,
    }
}

/// What every job needs.
struct Context {
    pipeline: Pipeline,
    dir: PathBuf,
    timezone: jiff::tz::TimeZone,
    quarantine_retention: Period,
    /// Who the audit trail says sent the recordings.
    sender: Sender,
    counts: Counts,
}

/// Totals for the status line.
#[derive(Debug, Default)]
struct Counts {
    ingested: AtomicU64,
    quarantined: AtomicU64,
    discarded: AtomicU64,
}

impl Context {
    /// A tag standing for a file name in logs: a keyed hash, so it says nothing about the
    /// number in the name but is the same for the same name.
    fn tag(&self, name: &str) -> String {
        let digest = self.pipeline.keyring.digest(LOG_TAG_DOMAIN, name);
        hex::encode(&digest[..6])
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Runs one job and says how it ended.
async fn work(context: &Context, job: Job) -> Finished {
    let result = match &job {
        Job::Finish {
            stem,
            quarantine,
            unlink,
        } => finish(context, stem, quarantine.clone(), unlink.clone()).await,
        Job::LoneSidecar { stem, sidecar } => lone_sidecar(context, stem, sidecar).await,
        Job::Quarantine {
            stem,
            files,
            reason,
        } => {
            let items = quarantine_items(files, reason);
            finish(context, stem, items, files.clone()).await
        }
        Job::Take {
            stem,
            audio,
            sidecar,
        } => take(context, stem, audio, sidecar.as_deref()).await,
    };
    match &result {
        Ok(Done::Handled) | Ok(Done::Vanished) => {}
        Ok(Done::NotAFile { name }) => {
            tracing::info!(file = %context.tag(name), "spool: not a regular file; left alone");
        }
        Err(failure) => {
            tracing::warn!(
                files = ?job.files().iter().map(|name| context.tag(name)).collect::<Vec<_>>(),
                error = %failure.error,
                "spool: job failed; the files stay in the spool and are retried later"
            );
        }
    }
    Finished { job, result }
}

/// The quarantine entries for `files`: the first one with `reason`, the others (its sidecar)
/// pointing to it.
fn quarantine_items(files: &[String], reason: &str) -> Vec<QuarantineItem> {
    let mut items: Vec<QuarantineItem> = Vec::with_capacity(files.len());
    for name in files {
        let id = BlobId::generate();
        let reason = match items.first() {
            None => reason.to_owned(),
            Some(first) => format!("{reason} (sidecar of quarantine entry {})", first.id),
        };
        items.push(QuarantineItem {
            name: name.clone(),
            id,
            reason,
        });
    }
    items
}

/// An audio file with its sidecar, or a FreePBX-named one: gate, ingest, unlink; quarantine
/// what cannot be parsed.
async fn take(
    context: &Context,
    stem: &str,
    audio: &str,
    sidecar: Option<&str>,
) -> Result<Done, Failure> {
    let mut files = vec![audio.to_owned()];
    files.extend(sidecar.map(str::to_owned));
    let audio_tag = context.tag(audio);
    tracing::debug!(audio, sidecar, file = %audio_tag, "spool: taking a recording");

    let parsed = match sidecar {
        Some(sidecar) => match read_sidecar(context, sidecar).await? {
            Opened::Done(done) => return Ok(done),
            Opened::File(bytes) => {
                CallMetadata::from_json(&bytes).map_err(|error| metadata_reason(&error))
            }
        },
        None => match spool_name::parse_spool_name(audio, &context.timezone) {
            Ok(name) => Ok(name.into_metadata()),
            Err(error) => Err(format!(
                "no sidecar and not a FreePBX/Asterisk file name ({})",
                name_reason(&error)
            )),
        },
    };
    let meta = match parsed {
        Ok(meta) => meta,
        Err(reason) => {
            return finish(context, stem, quarantine_items(&files, &reason), files).await;
        }
    };

    // Opened before the gate, so that a vanished file is not reported as a discarded call.
    let file = match open_regular(&context.path(audio)).await {
        Ok(Opened::File(file)) => file,
        Ok(Opened::Done(done)) => return Ok(done),
        Err(source) => {
            return Err(Failure {
                error: SpoolError::Read {
                    tag: audio_tag,
                    source,
                },
                resume: None,
            });
        }
    };
    let sender = &context.sender;
    let admitted = match context.pipeline.admit(&meta, sender).await {
        Ok(Admission::Admit(admitted)) => admitted,
        Ok(Admission::Discard(reason)) => {
            // Guarantee 5: nothing of a discarded call is read or kept; the gate audited it.
            drop(file);
            let result = finish(context, stem, Vec::new(), files).await;
            if result.is_ok() {
                context.counts.discarded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(file = %audio_tag, reason, "spool: call discarded, files removed");
            }
            return result;
        }
        // Refused by the gate for the file's own fault (a start more than a day ahead, from a
        // recorder's clock error): quarantined, as a bad file is; retrying would keep the
        // plaintext in the spool until that day.
        Err(error) => {
            drop(file);
            return match quarantine_reason(&error) {
                Some(reason) => {
                    finish(context, stem, quarantine_items(&files, &reason), files).await
                }
                None => Err(Failure {
                    error: SpoolError::Ingest(error),
                    resume: None,
                }),
            };
        }
    };
    let hint = FormatHint::from_file_name(audio);
    match context
        .pipeline
        .ingest(admitted, hint, chunks(file), sender)
        .await
    {
        Ok(stored) => {
            // Committed: from here on, only the unlinks remain, even after a failure.
            match stored.repeated {
                true => {
                    tracing::info!(file = %audio_tag, recording = %stored.id, "spool: recording already stored (identical repeat), files removed")
                }
                false => {
                    context.counts.ingested.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(file = %audio_tag, recording = %stored.id, codec = %stored.audio.codec, duration_ms = stored.audio.duration_ms, "spool: recording ingested");
                }
            }
            finish(context, stem, Vec::new(), files).await
        }
        Err(IngestError::Discarded(reason)) => {
            // Objected to while being read (guarantee 5): the pipeline kept nothing.
            let result = finish(context, stem, Vec::new(), files).await;
            if result.is_ok() {
                context.counts.discarded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(file = %audio_tag, reason, "spool: call discarded, files removed");
            }
            result
        }
        Err(error) => match quarantine_reason(&error) {
            Some(reason) => finish(context, stem, quarantine_items(&files, &reason), files).await,
            None => Err(Failure {
                error: SpoolError::Ingest(error),
                resume: None,
            }),
        },
    }
}

/// A sidecar left alone past the grace period.
async fn lone_sidecar(context: &Context, stem: &str, sidecar: &str) -> Result<Done, Failure> {
    let bytes = match read_sidecar(context, sidecar).await? {
        Opened::Done(done) => return Ok(done),
        Opened::File(bytes) => bytes,
    };
    let files = vec![sidecar.to_owned()];
    if let Ok(meta) = CallMetadata::from_json(&bytes) {
        let call_hmac = context
            .pipeline
            .keyring
            .digest(CALL_ID_DOMAIN, &meta.call_id);
        let existing = context
            .pipeline
            .catalog
            .call(move |catalog| catalog.recording_by_call(&call_hmac))
            .await;
        match existing {
            Ok(Some(_)) => {
                tracing::info!(file = %context.tag(sidecar), "spool: sidecar of a stored recording removed");
                return finish(context, stem, Vec::new(), files).await;
            }
            Ok(None) => {}
            Err(error) => {
                return Err(Failure {
                    error: SpoolError::Ingest(IngestError::Catalog(error)),
                    resume: None,
                });
            }
        }
    }
    let items = quarantine_items(&files, "sidecar without an audio file");
    finish(context, stem, items, files).await
}

/// Stores `items` in quarantine, then unlinks `unlink` and makes that durable. On a failure,
/// what remains is the `resume` job.
async fn finish(
    context: &Context,
    stem: &str,
    items: Vec<QuarantineItem>,
    unlink: Vec<String>,
) -> Result<Done, Failure> {
    for (item_idx, item) in items.iter().enumerate() {
        match store_in_quarantine(context, item).await {
            Ok(true) => {
                context.counts.quarantined.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %context.tag(&item.name), quarantine = %item.id, reason = %item.reason, "spool: file stored in quarantine");
            }
            Ok(false) => {}
            Err(error) => {
                return Err(Failure {
                    error,
                    resume: Some(Job::Finish {
                        stem: stem.to_owned(),
                        quarantine: items[item_idx..].to_vec(),
                        unlink,
                    }),
                });
            }
        }
    }
    match unlink_durably(context, &unlink).await {
        Ok(()) => Ok(Done::Handled),
        Err(error) => Err(Failure {
            error,
            resume: Some(Job::Finish {
                stem: stem.to_owned(),
                quarantine: Vec::new(),
                unlink,
            }),
        }),
    }
}

/// Encrypts one spool file into the vault's quarantine and records it. `false`: the file is
/// gone (or not a regular file), nothing stored.
async fn store_in_quarantine(context: &Context, item: &QuarantineItem) -> Result<bool, SpoolError> {
    let tag = context.tag(&item.name);
    let file = match open_regular(&context.path(&item.name)).await {
        Ok(Opened::File(file)) => file,
        Ok(Opened::Done(_)) => return Ok(false),
        Err(source) => return Err(SpoolError::Read { tag, source }),
    };
    let pipeline = &context.pipeline;
    let id = item.id;
    let id_text = id.to_string();
    let (key, wrapped_key) = pipeline.keyring.new_key(&format!("quarantine/{id_text}"))?;
    let mut writer = BlobWriter::create_quarantine(&pipeline.vault, id, &key, u64::MAX).await?;
    let mut hasher = Sha256::new();
    let mut source = chunks(file);
    while let Some(chunk) = source.next().await {
        let chunk = chunk.map_err(|source| SpoolError::Read {
            tag: tag.clone(),
            source,
        })?;
        hasher.update(&chunk);
        writer.write(&chunk).await?;
    }
    let sealed = writer.finish().await?;
    let sealed_name = key.seal(
        format!("quarantine/{id_text}/name").as_bytes(),
        item.name.as_bytes(),
    )?;
    let now = pipeline.clock.now();
    let row = QuarantineRow {
        id: id_text.clone(),
        reason: item.reason.clone(),
        sealed_name,
        size: sealed.plaintext_len,
        sha256: hasher.finalize().into(),
        received_at: now,
        retain_until: context.quarantine_retention.after(now),
        wrapped_key,
    };
    let draft = AuditDraft::new(
        &context.sender.actor,
        &context.sender.role,
        "recording.quarantine",
        &id_text,
        Outcome::Allowed,
    )
    .detail(item.reason.clone());
    let inserted = pipeline
        .catalog
        .call(move |catalog| catalog.quarantine_insert(&row, draft, now))
        .await;
    if let Err(error) = inserted {
        // Not recorded: the blob must not outlive it (its key was never stored anyway).
        if let Err(remove) = pipeline.vault.remove_quarantine(&id_text) {
            tracing::error!(quarantine = %id_text, error = %remove, "spool: cannot remove an unrecorded quarantine blob");
        }
        return Err(error.into());
    }
    pipeline.metrics.quarantined.inc();
    Ok(true)
}

/// Unlinks `names` in order (a file already gone is fine), then fsyncs the spool directory:
/// the unlink is the recorder's acknowledgement (guarantee 7).
async fn unlink_durably(context: &Context, names: &[String]) -> Result<(), SpoolError> {
    for name in names {
        match tokio::fs::remove_file(context.path(name)).await {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SpoolError::Unlink {
                    tag: context.tag(name),
                    source,
                });
            }
        }
    }
    let dir = context.dir.clone();
    let synced = tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await;
    match synced {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(SpoolError::SyncDir {
            dir: context.dir.clone(),
            source,
        }),
        Err(join) => Err(SpoolError::SyncDir {
            dir: context.dir.clone(),
            source: io::Error::other(join.to_string()),
        }),
    }
}

/// A spool file opened, or why there is nothing to read.
enum Opened<T> {
    Done(Done),
    File(T),
}

/// Opens a regular file (not through a symbolic link); a vanished file or a non-file is a
/// `Done`, not an error.
async fn open_regular(path: &Path) -> Result<Opened<tokio::fs::File>, io::Error> {
    let name = || {
        path.file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match tokio::fs::symlink_metadata(path).await {
        Ok(metadata) if metadata.is_file() => {}
        Ok(_) => return Ok(Opened::Done(Done::NotAFile { name: name() })),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(Opened::Done(Done::Vanished));
        }
        Err(error) => return Err(error),
    }
    match tokio::fs::File::open(path).await {
        Ok(file) => Ok(Opened::File(file)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Opened::Done(Done::Vanished)),
        Err(error) => Err(error),
    }
}

/// Reads a sidecar, at most one byte more than metadata may be (so that the parser reports
/// it too large).
async fn read_sidecar(context: &Context, sidecar: &str) -> Result<Opened<Vec<u8>>, Failure> {
    let read_error = |source| Failure {
        error: SpoolError::Read {
            tag: context.tag(sidecar),
            source,
        },
        resume: None,
    };
    let file = match open_regular(&context.path(sidecar)).await {
        Ok(Opened::File(file)) => file,
        Ok(Opened::Done(done)) => return Ok(Opened::Done(done)),
        Err(source) => return Err(read_error(source)),
    };
    let mut bytes = Vec::new();
    let limit = MAX_METADATA_BYTES as u64 + 1;
    match file.take(limit).read_to_end(&mut bytes).await {
        Ok(_) => Ok(Opened::File(bytes)),
        Err(source) => Err(read_error(source)),
    }
}

/// A file as a stream of `READ_CHUNK` pieces; ends after the first error.
fn chunks(file: tokio::fs::File) -> impl Stream<Item = Result<Bytes, io::Error>> + Unpin {
    Box::pin(futures_util::stream::unfold(
        Some(file),
        |state| async move {
            let mut file = state?;
            let mut buffer = BytesMut::with_capacity(READ_CHUNK);
            match file.read_buf(&mut buffer).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buffer.freeze()), Some(file))),
                Err(error) => Some((Err(error), None)),
            }
        },
    ))
}

/// `lstat` of a spool file; `None` when it is gone or cannot be examined (then the next
/// listing finds it again).
async fn stat(path: &Path) -> Option<Stat> {
    use std::os::unix::fs::MetadataExt;
    match tokio::fs::symlink_metadata(path).await {
        Ok(metadata) => {
            let mtime = metadata.modified().ok();
            // An mtime far in the future (a clock stepped back) is not held against the file.
            let written_lately = mtime.is_some_and(|mtime| match mtime.elapsed() {
                Ok(age) => age < RECENT_WRITE,
                Err(ahead) => ahead.duration() < Duration::from_secs(60),
            });
            let age = mtime
                .and_then(|mtime| mtime.elapsed().ok())
                .unwrap_or_default();
            Some(Stat {
                len: metadata.len(),
                mtime,
                ino: metadata.ino(),
                is_file: metadata.is_file(),
                written_lately,
                age,
            })
        }
        Err(error) => {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(%error, "spool: cannot examine a spool file");
            }
            None
        }
    }
}

/// Lists the spool directory into the tracker.
async fn rescan(dir: &Path, tracker: &mut Tracker) -> Result<(), io::Error> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut names = BTreeSet::new();
    let mut stats = Vec::new();
    loop {
        let entry = match entries.next_entry().await {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(%error, "spool: error while listing the directory");
                return Ok(());
            }
        };
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            tracing::debug!(name = ?file_name, "spool: file name is not UTF-8; left alone");
            continue;
        };
        if spool_name::classify(name) == SpoolFile::Temporary {
            continue;
        }
        names.insert(name.to_owned());
        stats.push((name.to_owned(), stat(&entry.path()).await));
    }
    tracker.listed(&names);
    let now = Instant::now();
    for (name, stat) in stats {
        tracker.observe(&name, stat, now);
    }
    Ok(())
}

/// Starts the inotify watch on `dir`; events go to `event_tx`, and `lost` is set when the
/// queue is full (the event is dropped, the driver lists the directory again).
fn watch(
    dir: &Path,
    event_tx: &mpsc::Sender<notify::Result<notify::Event>>,
    lost: &Arc<AtomicBool>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::Watcher;
    let event_tx = event_tx.clone();
    let lost_flag = lost.clone();
    let handler = move |result: notify::Result<notify::Event>| {
        if event_tx.try_send(result).is_err() {
            lost_flag.store(true, Ordering::Relaxed);
        }
    };
    let mut watcher = notify::recommended_watcher(handler)?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

fn status_line(
    dir: &Path,
    counts: &Counts,
    tracker: &Tracker,
    n_busy: usize,
    watching: bool,
    listing_failed: bool,
) -> String {
    let mut line = format!(
        "watching {}: {} ingested, {} quarantined, {} discarded, {} waiting, {} in progress",
        dir.display(),
        counts.ingested.load(Ordering::Relaxed),
        counts.quarantined.load(Ordering::Relaxed),
        counts.discarded.load(Ordering::Relaxed),
        tracker.n_waiting(),
        n_busy,
    );
    let n_retrying = tracker.n_retrying();
    if n_retrying > 0 {
        line.push_str(&format!(", {n_retrying} retrying after an error"));
    }
    if !watching {
        line.push_str(&format!(
            "; inotify unavailable, listing every {}s",
            RESCAN_UNWATCHED.as_secs()
        ));
    }
    if listing_failed {
        line.push_str("; the directory cannot be listed");
    }
    line
}

#[cfg(test)]
mod tests {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind};

    use super::*;

    const FREEPBX: &str = "in-0145678900-0612345678-20261122-101500-1700000000.123.wav";

    /// One helper for the completion logic. `script` is one step per line, `SECONDS VERB
    /// [ARGS]`, on a monotonic clock starting at 0:
    /// - `write NAME`, `close NAME`, `remove NAME`: inotify events;
    /// - `stat NAME LEN MTIME` (a regular file), `dir NAME`, `gone NAME`: stat results;
    /// - `list NAME...`: a directory listing (names only);
    /// - `lost`: events were lost;
    /// - `tostat`: prints the files that need a stat;
    /// - `due`: prints the jobs due, without starting them;
    /// - `start`: starts every due job (prints them), marking the stems busy;
    /// - `ok STEM`, `fail STEM`, `vanished STEM`: the started job of STEM came back.
    ///
    /// Each printing step adds `SECONDS VERB: OUTPUT` as a line; `expected` is all of them.
    fn check(script: &str, expected: &str) {
        let base = Instant::now();
        let mut tracker = Tracker::new(jiff::tz::TimeZone::get("Europe/Paris").unwrap());
        let mut started: BTreeMap<String, Job> = BTreeMap::new();
        let mut out = Vec::new();
        for line in script
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            let seconds: f64 = words[0].parse().unwrap();
            let now = base + Duration::from_secs_f64(seconds);
            let arg = |idx: usize| words[idx].to_owned();
            match words[1] {
                "write" => tracker.event(&arg(2), FileEvent::Written, now),
                "close" => tracker.event(&arg(2), FileEvent::Closed, now),
                "remove" => tracker.event(&arg(2), FileEvent::Removed, now),
                "stat" => {
                    let stat = Stat {
                        len: words[3].parse().unwrap(),
                        mtime: Some(
                            SystemTime::UNIX_EPOCH + Duration::from_secs(words[4].parse().unwrap()),
                        ),
                        ino: 7,
                        is_file: true,
                        written_lately: words.get(5) == Some(&"lately"),
                        age: words
                            .get(5)
                            .and_then(|word| word.strip_prefix("age="))
                            .map_or(Duration::ZERO, |secs| {
                                Duration::from_secs(secs.parse().unwrap())
                            }),
                    };
                    tracker.observe(&arg(2), Some(stat), now);
                }
                "dir" => {
                    let stat = Stat {
                        len: 4096,
                        mtime: None,
                        ino: 8,
                        is_file: false,
                        written_lately: false,
                        age: Duration::ZERO,
                    };
                    tracker.observe(&arg(2), Some(stat), now);
                }
                "gone" => tracker.observe(&arg(2), None, now),
                "list" => {
                    let names = words[2..].iter().map(|name| name.to_string()).collect();
                    tracker.listed(&names);
                }
                "lost" => tracker.events_lost(),
                "tostat" => {
                    let names = tracker.to_stat(now);
                    out.push(format!("{seconds} tostat: {}", render_list(&names)));
                }
                "due" => {
                    let jobs: Vec<String> = tracker.due(now).iter().map(render).collect();
                    out.push(format!("{seconds} due: {}", render_list(&jobs)));
                }
                "start" => {
                    let mut jobs = Vec::new();
                    while let Some(job) = tracker.next_job(now) {
                        jobs.push(render(&job));
                        started.insert(job.stem().to_owned(), job);
                    }
                    out.push(format!("{seconds} start: {}", render_list(&jobs)));
                }
                "ok" | "fail" | "vanished" => {
                    let job = started.remove(words[2]).expect("a started job");
                    let result = match words[1] {
                        "ok" => Ok(Done::Handled),
                        "vanished" => Ok(Done::Vanished),
                        _ => Err(Failure {
                            error: SpoolError::Read {
                                tag: "t".into(),
                                source: io::Error::other("disk on fire"),
                            },
                            resume: None,
                        }),
                    };
                    tracker.finished(Finished { job, result }, now);
                }
                verb => panic!("unknown verb {verb}"),
            }
        }
        let actual = out.join("\n");
        let expected: Vec<&str> = expected
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(actual, expected.join("\n"), "\nscript:\n{script}");
    }

    fn render_list(items: &[String]) -> String {
        match items.is_empty() {
            true => "-".to_owned(),
            false => items.join(" | "),
        }
    }

    fn render(job: &Job) -> String {
        match job {
            Job::Finish {
                quarantine, unlink, ..
            } => format!(
                "finish {} then unlink {}",
                quarantine.len(),
                unlink.join(" ")
            ),
            Job::LoneSidecar { sidecar, .. } => format!("lone {sidecar}"),
            Job::Quarantine { files, reason, .. } => {
                format!("quarantine {}: {reason}", files.join(" "))
            }
            Job::Take {
                audio,
                sidecar: Some(sidecar),
                ..
            } => format!("take {audio} + {sidecar}"),
            Job::Take {
                audio,
                sidecar: None,
                ..
            } => format!("take {audio}"),
        }
    }

    #[test]
    fn sidecar_written_last_completes_the_pair() {
        check(
            "0 write call-1.wav
             0.1 close call-1.wav
             5 due
             5 write call-1.json
             5.1 due
             5.2 close call-1.json
             5.2 start
             5.3 due
             6 ok call-1
             6 due",
            "5 due: -
             5.1 due: -
             5.2 start: take call-1.wav + call-1.json
             5.3 due: -
             6 due: -",
        );
        // The sidecar may come before the audio is closed: the audio's close then completes it.
        check(
            "0 write call-2.wav
             1 write call-2.json
             1 close call-2.json
             1 due
             9 close call-2.wav
             9 due",
            "1 due: -
             9 due: take call-2.wav + call-2.json",
        );
        // Moved in whole (rename from a temporary name): complete at once.
        check(
            "0 close call-3.wav
             0 close call-3.json
             0 due",
            "0 due: take call-3.wav + call-3.json",
        );
    }

    #[test]
    fn freepbx_name_completes_at_close_after_settling() {
        check(
            &format!(
                "0 write {FREEPBX}
                 0.5 tostat
                 100 due
                 100 close {FREEPBX}
                 100.5 due
                 100.7 write {FREEPBX}
                 101.5 due
                 102 close {FREEPBX}
                 102.9 due
                 103 due"
            ),
            &format!(
                "0.5 tostat: -
                 100 due: -
                 100.5 due: -
                 101.5 due: -
                 102.9 due: -
                 103 due: take {FREEPBX}"
            ),
        );
        // A sidecar that comes while the name-only file settles wins.
        check(
            &format!(
                "0 close {FREEPBX}
                 0.5 close {}
                 0.5 due",
                FREEPBX.replace(".wav", ".json")
            ),
            &format!(
                "0.5 due: take {FREEPBX} + {}",
                FREEPBX.replace(".wav", ".json")
            ),
        );
    }

    #[test]
    fn files_present_at_start_need_a_quiet_period() {
        check(
            &format!(
                "0 stat {FREEPBX} 1000 50
                 0 due
                 1 tostat
                 2 tostat
                 2 stat {FREEPBX} 2000 51
                 2 due
                 4 tostat
                 4 stat {FREEPBX} 2000 51
                 4 tostat
                 4 due"
            ),
            &format!(
                "0 due: -
                 1 tostat: -
                 2 tostat: {FREEPBX}
                 2 due: -
                 4 tostat: {FREEPBX}
                 4 tostat: -
                 4 due: take {FREEPBX}"
            ),
        );
        // Same for a sidecar present at start.
        check(
            "0 stat a.wav 1000 50
             0 stat a.json 10 50
             2 stat a.wav 1000 50
             2 due
             2 stat a.json 10 50
             2 due",
            "2 due: -
             2 due: take a.wav + a.json",
        );
        // Modified lately (a writer between two writes while callguard started): stat again
        // until it is not, then quiet as usual.
        check(
            &format!(
                "0 stat {FREEPBX} 1000 50 lately
                 2 tostat
                 2 stat {FREEPBX} 1000 50 lately
                 2 due
                 4 tostat
                 4 stat {FREEPBX} 1000 50 lately
                 6 stat {FREEPBX} 1000 50
                 6 due
                 8 tostat
                 8 stat {FREEPBX} 1000 50
                 8 due"
            ),
            &format!(
                "2 tostat: {FREEPBX}
                 2 due: -
                 4 tostat: {FREEPBX}
                 6 due: -
                 8 tostat: {FREEPBX}
                 8 due: take {FREEPBX}"
            ),
        );
        // A write event makes the quiet rule irrelevant: only the close counts.
        check(
            &format!(
                "0 stat {FREEPBX} 1000 50
                 1 write {FREEPBX}
                 1 tostat
                 9 stat {FREEPBX} 1000 50
                 60 due"
            ),
            "1 tostat: -
             60 due: -",
        );
        // After lost events, the quiet rule applies again, from new stats.
        check(
            &format!(
                "0 write {FREEPBX}
                 1 lost
                 1 stat {FREEPBX} 1000 50
                 2 due
                 3 stat {FREEPBX} 1000 50
                 3 due"
            ),
            &format!(
                "2 due: -
                 3 due: take {FREEPBX}"
            ),
        );
    }

    #[test]
    fn audio_without_sidecar_or_freepbx_name_waits_then_goes_to_quarantine() {
        check(
            "0 close call-9.wav
             599 due
             601 write call-9.wav
             1200 due
             1201 close call-9.wav
             1800 due
             1801.5 due",
            "599 due: -
             1200 due: -
             1800 due: -
             1801.5 due: quarantine call-9.wav: no sidecar and not a FreePBX/Asterisk file name \
             (expected 6 fields `type-to-from-YYYYMMDD-HHMMSS-uniqueid` before the extension, \
             found 2)",
        );
        // A FreePBX-looking name with a bad field says which field, not its value.
        check(
            "0 close in-201-0612345678-20261340-101500-1.wav
             700 due",
            "700 due: quarantine in-201-0612345678-20261340-101500-1.wav: no sidecar and not a \
             FreePBX/Asterisk file name (field 4: month 13 out of range)",
        );
        // Its sidecar arriving within the grace period takes it normally.
        check(
            "0 close call-9.wav
             300 close call-9.json
             300 due",
            "300 due: take call-9.wav + call-9.json",
        );
        // Found at start, it has waited since its mtime: a restart does not start the wait
        // again.
        check(
            "0 stat call-8.wav 100 50 age=590
             0 due
             9 stat call-8.wav 100 50
             11 due",
            "0 due: -
             11 due: quarantine call-8.wav: no sidecar and not a FreePBX/Asterisk file name \
             (expected 6 fields `type-to-from-YYYYMMDD-HHMMSS-uniqueid` before the extension, \
             found 2)",
        );
        // Any other name is never left behind silently: taken with its sidecar (then probed
        // by its content), or quarantined after the grace period.
        check(
            "0 close call-7.au
             0 close call-7.json
             0 due",
            "0 due: take call-7.au + call-7.json",
        );
        check(
            "0 close notes.txt
             599 due
             601 due",
            "599 due: -
             601 due: quarantine notes.txt: no sidecar and not a FreePBX/Asterisk file name \
             (no audio extension)",
        );
    }

    #[test]
    fn lone_and_ambiguous_sidecars() {
        check(
            "0 close call-5.json
             1 due
             601 due",
            "1 due: -
             601 due: lone call-5.json",
        );
        check(
            "0 close call-6.wav
             0 write call-6.flac
             0 close call-6.json
             1 due
             2 close call-6.flac
             2 due",
            "1 due: -
             2 due: quarantine call-6.flac call-6.wav call-6.json: several audio files or \
             sidecars share one recording name",
        );
    }

    #[test]
    fn temporary_names_and_non_files_are_left_alone() {
        check(
            &format!(
                "0 close {FREEPBX}.part
                 0 close .call-1.wav
                 0 close call-1.wav~
                 0 stat weird.wav 10 1
                 0 dir folder.wav
                 0 dir folder.json
                 900 tostat
                 900 stat weird.wav 10 1
                 900 due"
            ),
            "900 tostat: weird.wav
             900 due: quarantine weird.wav: no sidecar and not a FreePBX/Asterisk file name \
             (expected 6 fields `type-to-from-YYYYMMDD-HHMMSS-uniqueid` before the extension, \
             found 1)",
        );
    }

    #[test]
    fn one_job_per_stem_and_retries_with_back_off() {
        check(
            "0 close a.wav
             0 close a.json
             0 close b.wav
             0 close b.json
             0 start
             0 start
             0.1 write a.json
             0.1 close a.json
             0.2 due
             1 fail a
             1 due
             2.9 due
             3 start
             3 fail a
             6.9 due
             7 due
             7 ok b
             7 due",
            "0 start: take a.wav + a.json | take b.wav + b.json
             0 start: -
             0.2 due: -
             1 due: -
             2.9 due: -
             3 start: take a.wav + a.json
             6.9 due: -
             7 due: take a.wav + a.json
             7 due: take a.wav + a.json",
        );
    }

    #[test]
    fn removals_listings_and_vanished_files_forget() {
        check(
            "0 close a.wav
             0 close a.json
             0 remove a.json
             0 due
             1 close c.wav
             1 close c.json
             1 list c.json
             1 due
             2 close d.wav
             2 close d.json
             2 start
             2 vanished d
             2 due
             3 stat e.wav 1 1
             3 gone e.wav
             3 tostat",
            "0 due: -
             1 due: -
             2 start: take d.wav + d.json
             2 due: -
             3 tostat: -",
        );
    }

    #[test]
    fn a_resumed_job_runs_instead_of_a_new_decision() {
        let base = Instant::now();
        let mut tracker = Tracker::new(jiff::tz::TimeZone::UTC);
        tracker.event("x.wav", FileEvent::Closed, base);
        tracker.event("x.json", FileEvent::Closed, base);
        let job = tracker.next_job(base).unwrap();
        let resume = Job::Finish {
            stem: "x".into(),
            quarantine: Vec::new(),
            unlink: vec!["x.wav".into(), "x.json".into()],
        };
        let failure = Failure {
            error: SpoolError::Unlink {
                tag: "t".into(),
                source: io::Error::other("read-only"),
            },
            resume: Some(resume.clone()),
        };
        tracker.finished(
            Finished {
                job,
                result: Err(failure),
            },
            base,
        );
        assert_eq!(tracker.due(base + Duration::from_secs(1)), vec![]);
        assert_eq!(tracker.due(base + RETRY_FIRST), vec![resume.clone()]);
        // Still the resume job when the files were already forgotten by a listing.
        tracker.listed(&BTreeSet::new());
        assert_eq!(tracker.next_job(base + RETRY_FIRST), Some(resume.clone()));
        tracker.finished(
            Finished {
                job: resume,
                result: Ok(Done::Handled),
            },
            base + RETRY_FIRST,
        );
        assert_eq!(tracker.due(base + RETRY_MAX), vec![]);
        assert_eq!(tracker.n_retrying(), 0);
    }

    #[test]
    fn back_off_is_capped() {
        let base = Instant::now();
        let mut tracker = Tracker::new(jiff::tz::TimeZone::UTC);
        tracker.event("x.wav", FileEvent::Closed, base);
        tracker.event("x.json", FileEvent::Closed, base);
        let mut now = base;
        for _ in 0..40 {
            let job = tracker.next_job(now).expect("due again after the back-off");
            let failure = Failure {
                error: SpoolError::Read {
                    tag: "t".into(),
                    source: io::Error::other("no"),
                },
                resume: None,
            };
            tracker.finished(
                Finished {
                    job,
                    result: Err(failure),
                },
                now,
            );
            now += RETRY_MAX;
        }
    }

    #[test]
    fn quarantine_items_point_to_the_main_entry() {
        let items = quarantine_items(&["a.wav".into(), "a.json".into()], "audio not accepted");
        assert_eq!(items[0].reason, "audio not accepted");
        assert_eq!(
            items[1].reason,
            format!(
                "audio not accepted (sidecar of quarantine entry {})",
                items[0].id
            )
        );
        assert_ne!(items[0].id, items[1].id);
    }

    #[test]
    fn reasons_carry_no_value_from_the_file() {
        let tz = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
        for name in [
            "in-0145678900-0612345678-20261122-101500-17000\u{7}00000.123.wav",
            "in-0145678900-0612345678-20261122-991500-1700000000.123.wav",
            "bogus-0145678900-0612345678-20261122-101500-1700000000.123.wav",
            "in-0145678900-061234567-20261122-101500-1700000000.123.wav",
        ] {
            let error = spool_name::parse_spool_name(name, &tz).unwrap_err();
            let reason = name_reason(&error);
            for secret in ["0612345678", "061234567", "0145678900", "1700000000"] {
                assert!(!reason.contains(secret), "{reason}");
            }
        }
        for document in [
            r#"{"0612345678": 1}"#,
            r#"{"call_id": "c-1", "started_at": "2026-11-22T10:00:00Z", "direction": "in", "caller": "0612345678"}"#,
            r#"{"call_id": "c-1", "started_at": "2026-11-22T10:00:00Z", "direction": "inbound", "caller": "06123456789"}"#,
            r#"{"call_id": "c-1", "call_id": "c-1"}"#,
            r#"{"call_id": "0612345678""#,
        ] {
            let error = CallMetadata::from_json(document.as_bytes()).unwrap_err();
            let reason = metadata_reason(&error);
            assert!(reason.starts_with("invalid sidecar metadata: "), "{reason}");
            for secret in ["0612345678", "c-1"] {
                assert!(!reason.contains(secret), "{reason}");
            }
        }
    }

    #[test]
    fn notify_events_become_signals() {
        let dir = Path::new("/spool");
        let event = |kind: EventKind, paths: &[&str]| {
            let mut event = notify::Event::new(kind);
            for path in paths {
                event = event.add_path(PathBuf::from(path));
            }
            signals(dir, &event)
        };
        let file = |name: &str, event: FileEvent| Signal::File {
            name: name.to_owned(),
            event,
        };
        assert_eq!(
            event(EventKind::Create(CreateKind::File), &["/spool/a.wav"]),
            vec![file("a.wav", FileEvent::Written)]
        );
        assert_eq!(
            event(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &["/spool/a.wav"]
            ),
            vec![file("a.wav", FileEvent::Written)]
        );
        assert_eq!(
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/spool/a.wav"]
            ),
            vec![file("a.wav", FileEvent::Closed)]
        );
        assert_eq!(
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                &["/spool/a.wav"]
            ),
            vec![]
        );
        assert_eq!(
            event(
                EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::To)),
                &["/spool/a.wav"]
            ),
            vec![file("a.wav", FileEvent::Closed)]
        );
        assert_eq!(
            event(
                EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::From)),
                &["/spool/a.wav"]
            ),
            vec![file("a.wav", FileEvent::Removed)]
        );
        assert_eq!(
            event(EventKind::Remove(RemoveKind::File), &["/spool/a.wav"]),
            vec![file("a.wav", FileEvent::Removed)]
        );
        assert_eq!(
            event(EventKind::Create(CreateKind::Folder), &["/spool/d.wav"]),
            vec![]
        );
        assert_eq!(
            event(EventKind::Create(CreateKind::File), &["/spool/sub/a.wav"]),
            vec![]
        );
        assert_eq!(
            event(EventKind::Remove(RemoveKind::Folder), &["/spool"]),
            vec![Signal::WatchGone]
        );
        let overflow = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(signals(dir, &overflow), vec![Signal::Lost]);
    }
}
