//! The composition root of `serve`: builds every module from `Config`, runs start-up recovery
//! (before READY), binds the listeners, starts every long-lived task under one
//! `CancellationToken` and `TaskTracker`, talks to systemd (READY, WATCHDOG, STOPPING) and
//! drains on SIGTERM with a deadline. The only place that spawns long-lived tasks; makes no
//! domain decision.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::AppState;
use crate::catalog::recordings::RecordingState;
use crate::catalog::{Catalog, CatalogError};
use crate::clock::SharedClock;
use crate::config::{Config, ConfigErrors};
use crate::keyring::{Keyring, KeyringError};
use crate::metrics::Metrics;
use crate::vault::{Vault, VaultError};

/// How long in-flight work may take to finish after SIGTERM.
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

/// Why the service could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{key}: {0}", key = .0.key())]
    Tls(#[from] crate::api::tls::TlsError),
    // The I/O errors below are in the message, not sources: `{:#}` would print them twice.
    #[error("{key}: cannot listen on {addr}: {error}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("another callguard process is using {0} (lock held)")]
    Locked(String),
    #[error("cannot lock {path}: {error}")]
    Lock { path: String, error: std::io::Error },
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
}

/// Status lines of background workers, shown by `/v1/status` and `callguard report`.
#[derive(Clone, Default)]
pub struct WorkerStatus {
    inner: Arc<Mutex<StatusInner>>,
}

type ReceiverProbe = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

#[derive(Default)]
struct StatusInner {
    lines: BTreeMap<String, String>,
    receivers: Vec<ReceiverProbe>,
}

/// A copy of every status line.
pub struct StatusSnapshot {
    pub lines: BTreeMap<String, String>,
    pub receivers: Vec<serde_json::Value>,
}

impl WorkerStatus {
    /// Sets the status line of worker `name`.
    pub fn set(&self, name: &str, line: impl Into<String>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.lines.insert(name.to_owned(), line.into());
    }

    /// Registers a receiver whose state `probe` reports.
    pub fn add_receiver(&self, probe: ReceiverProbe) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.receivers.push(probe);
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let (lines, probes) = {
            let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            (inner.lines.clone(), inner.receivers.clone())
        };
        StatusSnapshot {
            lines,
            receivers: probes.iter().map(|probe| probe()).collect(),
        }
    }
}

/// Options of `serve` beyond the configuration file.
#[derive(Default)]
pub struct ServeOptions {
    /// Overrides `server.listen` (tests use port 0).
    pub listen: Option<SocketAddr>,
    /// Overrides `metrics.listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Lines printed to stdout once ready (the dev instance's curl examples).
    pub banner: Option<Box<dyn Fn(SocketAddr) -> String + Send + Sync>>,
}

/// An exclusive lock on the data directory, held while the process runs.
pub struct DataLock {
    _file: std::fs::File,
}

/// Takes the data directory's lock, so that two instances (or `keys rotate` and a running
/// service) never work on the same catalog at once.
pub fn lock_data_dir(config: &Config) -> Result<DataLock, DaemonError> {
    let path = config.storage.data_dir.join(".lock");
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|error| DaemonError::Lock {
            path: path.display().to_string(),
            error,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(DataLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(DaemonError::Locked(
            config.storage.data_dir.display().to_string(),
        )),
        Err(std::fs::TryLockError::Error(error)) => Err(DaemonError::Lock {
            path: path.display().to_string(),
            error,
        }),
    }
}

/// What start-up recovery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub temp_removed: usize,
    pub orphans_removed: usize,
    /// Quarantine blobs without a quarantine row (a crash between the blob's rename and its
    /// row's commit, or between the row's expiry and the unlink): their key is not stored.
    pub quarantine_orphans_removed: usize,
    pub missing: usize,
    pub found_again: usize,
}

/// Reconciles the vault with the catalog: unfinished writes removed, blobs without a row
/// (a crash between rename and commit, or between shred and unlink) removed, the same for
/// quarantine blobs, rows without a blob marked `missing` and reported, never dropped. Runs
/// before the spool watcher and the purge start, so nothing writes quarantine meanwhile.
pub fn recover(vault: &Vault, catalog: &Catalog) -> Result<Recovery, DaemonError> {
    let scan = vault.recover()?;
    let quarantine_blobs = vault.quarantine_blobs()?;
    let rows = catalog.recording_states()?;
    let known: std::collections::HashMap<_, _> = rows.iter().copied().collect();
    let present: std::collections::HashSet<_> = scan.blobs.iter().copied().collect();
    let mut recovery = Recovery {
        temp_removed: scan.temp_removed,
        ..Recovery::default()
    };
    for id in &scan.blobs {
        if !known.contains_key(id) {
            vault.remove(id)?;
            recovery.orphans_removed += 1;
        }
    }
    if !quarantine_blobs.is_empty() {
        let quarantine_rows = catalog.quarantine_ids()?;
        for id in &quarantine_blobs {
            if !quarantine_rows.contains(id) {
                vault.remove_quarantine(id)?;
                recovery.quarantine_orphans_removed += 1;
            }
        }
    }
    for (id, state) in rows {
        match (present.contains(&id), state) {
            (false, RecordingState::Stored) => {
                tracing::error!(recording = %id, "recording blob is missing; marked missing");
                catalog.set_recording_state(&id, RecordingState::Missing)?;
                recovery.missing += 1;
            }
            (false, RecordingState::Missing) => recovery.missing += 1,
            (true, RecordingState::Missing) => {
                catalog.set_recording_state(&id, RecordingState::Stored)?;
                recovery.found_again += 1;
            }
            (true, RecordingState::Stored) => {}
        }
    }
    Ok(recovery)
}

/// Receiver-metric ticks (3 s) between two closings of cases past `alarms.max_open`.
const CASE_EXPIRY_TICKS: u64 = 5;

/// Longest wait between two attempts to record an acknowledged alarm event.
const ALARM_RETRY_MAX: Duration = Duration::from_secs(30);

/// Records one acknowledged alarm event (opens or joins its case). The receiver has already
/// answered ACK, so the event must not be lost: while the catalog cannot take it (a full disk,
/// an I/O error) it is retried with back-off until it is recorded or the service stops, and the
/// events behind it wait (the receivers stop reading their ports once their queues are full, so
/// the alarm receivers keep and resend what follows).
async fn record_alarm_event(
    state: &Arc<AppState>,
    event: &crate::alarms::receiver::ReceivedEvent,
    shutdown: &CancellationToken,
) {
    let mut wait = Duration::from_secs(1);
    let mut attempts = 0u32;
    loop {
        let worker = state.clone();
        let job = event.clone();
        let result = tokio::task::spawn_blocking(move || {
            let now = worker.clock.now();
            let incoming = crate::alarms::cases::IncomingEvent {
                account: &job.account,
                code: &job.code,
                zone: job.zone.as_deref(),
                group: job.group.as_deref(),
                line: Some(&job.line),
                at: job.received_at,
            };
            worker.cases().record(
                &incoming,
                &crate::alarms::cases::Origin::receiver(&job.receiver),
                now,
            )
        })
        .await;
        attempts += 1;
        let error = match result {
            Ok(Ok(change)) => {
                if attempts > 1 {
                    state.metrics.alarm_events_waiting.set(0);
                    tracing::warn!(attempts, "alarm event recorded after retries");
                }
                tracing::debug!(?change, "alarm event recorded");
                return;
            }
            Ok(Err(crate::alarms::cases::CaseError::Catalog(error))) => error.to_string(),
            Ok(Err(error)) => {
                tracing::error!(%error, receiver = %event.receiver, "alarm event cannot be recorded; dropped");
                return;
            }
            Err(join) => {
                tracing::error!(%join, "alarm event task failed");
                return;
            }
        };
        state.metrics.alarm_events_waiting.set(1);
        tracing::error!(
            error = %error,
            receiver = %event.receiver,
            retry_in_s = wait.as_secs(),
            "cannot record an acknowledged alarm event; retrying (later events wait behind it)"
        );
        tokio::select! {
            () = shutdown.cancelled() => {
                tracing::error!(receiver = %event.receiver, "stopping with an acknowledged alarm event not recorded");
                return;
            }
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(ALARM_RETRY_MAX);
    }
}

/// Runs the gateway until SIGTERM/SIGINT. Returns the data directory's lock: the caller keeps
/// it until the process ends, since blocking work past the drain deadline (an export being
/// prepared, say) may still touch the catalog while the runtime shuts down.
pub async fn serve(
    config: Config,
    options: ServeOptions,
    clock: SharedClock,
) -> Result<DataLock, DaemonError> {
    config.check_environment(true)?;
    let lock = lock_data_dir(&config)?;
    let catalog = Catalog::open(&config.catalog_path())?;
    let keyring = Arc::new(Keyring::load(config.keys.master_key.path(), &catalog)?);
    let vault = Vault::open(&config.vault_dir())?;
    let metrics = Metrics::new();

    let recovery = recover(&vault, &catalog)?;
    metrics.recordings_missing.set(recovery.missing as i64);
    tracing::info!(
        temp_removed = recovery.temp_removed,
        orphans_removed = recovery.orphans_removed,
        quarantine_orphans_removed = recovery.quarantine_orphans_removed,
        missing = recovery.missing,
        "start-up recovery done"
    );

    let tls = crate::api::tls::server_config(
        &config.server.cert,
        &config.server.key,
        &config.server.client_ca,
    )?;
    let api_addr = options.listen.unwrap_or(config.server.listen);
    let metrics_addr = options.metrics_listen.unwrap_or(config.metrics.listen);
    let bind_error = |key: &'static str, addr: SocketAddr| {
        move |error: std::io::Error| DaemonError::Bind { key, addr, error }
    };
    let api_listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .map_err(bind_error("server.listen", api_addr))?;
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .map_err(bind_error("metrics.listen", metrics_addr))?;
    let api_bound = api_listener
        .local_addr()
        .map_err(bind_error("server.listen", api_addr))?;
    let metrics_bound = metrics_listener
        .local_addr()
        .map_err(bind_error("metrics.listen", metrics_addr))?;

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let workers = WorkerStatus::default();
    let state = Arc::new(AppState {
        config: Arc::new(config),
        catalog,
        vault,
        keyring,
        clock: clock.clone(),
        metrics: metrics.clone(),
        started_at: clock.now(),
        workers,
    });

    tracker.spawn(crate::metrics::serve(
        metrics_listener,
        metrics,
        shutdown.clone(),
    ));
    spawn_spool(&tracker, &state, shutdown.clone());
    spawn_purge(&tracker, &state, shutdown.clone());
    spawn_alarms(&tracker, &state, shutdown.clone());
    tracker.spawn(crate::api::server::run(
        api_listener,
        tls,
        state.clone(),
        shutdown.clone(),
        tracker.clone(),
    ));
    spawn_watchdog(&tracker, shutdown.clone());

    if let Some(banner) = &options.banner {
        println!("{}", banner(api_bound));
    }
    println!("callguard ready: api=https://{api_bound} metrics=http://{metrics_bound}");
    tracing::info!(api = %api_bound, metrics = %metrics_bound, "callguard ready");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    wait_for_signal().await?;
    tracing::info!("stopping: draining in-flight work");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "drain deadline passed; exiting with work in flight (nothing acknowledged is lost)"
        );
    }
    if let Err(error) = state.catalog.checkpoint() {
        tracing::warn!(%error, "final WAL checkpoint failed");
    }
    Ok(lock)
}

/// The spool watcher over the ingest pipeline.
fn spawn_spool(tracker: &TaskTracker, state: &Arc<AppState>, shutdown: CancellationToken) {
    let pipeline = state.pipeline();
    let settings = crate::ingest::spool::SpoolSettings {
        dir: state.config.ingest.spool_dir.clone(),
        timezone: state.config.ingest.spool_timezone.clone(),
        workers: state.config.ingest.spool_workers,
        quarantine_retention: state.config.retention.quarantine,
    };
    tracker.spawn(crate::ingest::spool::run(
        pipeline,
        settings,
        state.workers.clone(),
        shutdown,
    ));
}

/// The retention engine, every `purge_interval` (and once at start).
fn spawn_purge(tracker: &TaskTracker, state: &Arc<AppState>, shutdown: CancellationToken) {
    let state = state.clone();
    tracker.spawn(async move {
        let mut interval = tokio::time::interval(state.config.retention.purge_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let now = state.clock.now();
            let worker = state.clone();
            let result = tokio::task::spawn_blocking(move || {
                crate::retention::purge::run_once(
                    &worker.catalog,
                    &worker.vault,
                    &worker.config.retention,
                    "system",
                    now,
                    false,
                )
            })
            .await;
            match result {
                Ok(Ok(report)) => {
                    for (_, reason) in &report.deleted {
                        state.metrics.count_purged(reason, 1);
                    }
                    if let Ok(n) = state.catalog.holds_active() {
                        state.metrics.holds_active.set(n as i64);
                    }
                    state.workers.set(
                        "purge",
                        format!(
                            "last run {}: {} deleted, {} kept (held), {} quarantine expired",
                            crate::audit::chain::format_time(now),
                            report.deleted.len(),
                            report.kept.len(),
                            report.quarantine_expired
                        ),
                    );
                    if !report.deleted.is_empty() {
                        tracing::info!(
                            deleted = report.deleted.len(),
                            kept = report.kept.len(),
                            "purge"
                        );
                    }
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "purge failed; retrying at the next interval");
                    state
                        .workers
                        .set("purge", format!("last run failed: {error}"));
                }
                Err(join) => tracing::error!(%join, "purge task panicked"),
            }
        }
    });
}

/// One reader task per configured receiver, the task that turns their events into cases, the
/// case-expiry tick (`alarms.max_open`), and the receivers' metrics.
fn spawn_alarms(tracker: &TaskTracker, state: &Arc<AppState>, shutdown: CancellationToken) {
    use crate::alarms::receiver::{self, ReceiverSettings, ReceiverStatus};
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel::<receiver::ReceivedEvent>(1024);
    let mut statuses = Vec::new();
    for config in &state.config.alarms.receivers {
        let mut settings = ReceiverSettings::new(config.name.clone(), config.device.clone());
        settings.baud = config.baud;
        settings.data_bits = config.data_bits;
        settings.parity = match config.parity {
            crate::config::Parity::Even => receiver::Parity::Even,
            crate::config::Parity::None => receiver::Parity::None,
            crate::config::Parity::Odd => receiver::Parity::Odd,
        };
        settings.stop_bits = config.stop_bits;
        settings.acknowledge = config.acknowledge;
        settings.line_digits = config.line_digits;
        settings.heartbeat_timeout = config.heartbeat_timeout;
        settings.duplicate_window = config.duplicate_window;
        let status = Arc::new(ReceiverStatus::new(config.name.clone()));
        let probe_status = status.clone();
        state.workers.add_receiver(Arc::new(move || {
            let snap = probe_status.snapshot();
            serde_json::json!({
                "name": snap.name,
                "connected": snap.connected,
                "silent": snap.silent,
                "last_frame_at": snap.last_frame_at.map(crate::audit::chain::format_time),
                "last_heartbeat_at": snap.last_heartbeat_at.map(crate::audit::chain::format_time),
                "frames": {
                    "acked": snap.counts.acked, "nacked": snap.counts.nacked, "ignored": snap.counts.ignored,
                    "duplicates": snap.counts.duplicates, "overflows": snap.counts.overflows, "events": snap.counts.events,
                },
            })
        }));
        statuses.push(status.clone());
        tracker.spawn(receiver::run(
            settings,
            events_tx.clone(),
            status,
            state.clock.clone(),
            shutdown.clone(),
        ));
    }
    drop(events_tx);

    let consumer = state.clone();
    let consumer_shutdown = shutdown.clone();
    tracker.spawn(async move {
        loop {
            let event = tokio::select! {
                _ = consumer_shutdown.cancelled() => return,
                event = events_rx.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            record_alarm_event(&consumer, &event, &consumer_shutdown).await;
        }
    });

    let ticker = state.clone();
    tracker.spawn(async move {
        // Receiver metrics follow within a few seconds; cases past max_open close every 15 s.
        let mut interval = tokio::time::interval(Duration::from_secs(3));
        let mut ticks = 0u64;
        let mut last: Vec<crate::alarms::receiver::ReceiverCounts> =
            vec![Default::default(); statuses.len()];
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let (mut connected, mut silent) = (0, 0);
            for (status, previous) in statuses.iter().zip(last.iter_mut()) {
                let snap = status.snapshot();
                connected += i64::from(snap.connected);
                silent += i64::from(snap.silent);
                let counts = snap.counts;
                for (result, now, before) in [
                    ("ack", counts.acked, previous.acked),
                    ("nak", counts.nacked, previous.nacked),
                    ("ignored", counts.ignored, previous.ignored),
                    ("duplicate", counts.duplicates, previous.duplicates),
                    ("overflow", counts.overflows, previous.overflows),
                ] {
                    if now > before {
                        ticker
                            .metrics
                            .alarm_frames
                            .get_or_create(&vec![("result", result.to_owned())])
                            .inc_by(now - before);
                    }
                }
                *previous = counts;
            }
            ticker.metrics.receivers_connected.set(connected);
            ticker.metrics.receivers_silent.set(silent);
            let expiry_due = ticks.is_multiple_of(CASE_EXPIRY_TICKS);
            ticks += 1;
            if !expiry_due {
                continue;
            }
            let worker = ticker.clone();
            let expired =
                tokio::task::spawn_blocking(move || worker.cases().expire(worker.clock.now()))
                    .await;
            if let Ok(Err(error)) = expired {
                tracing::error!(%error, "cannot close expired alarm cases");
            }
        }
    });
}

/// Pings the systemd watchdog at half its interval, if one is configured.
fn spawn_watchdog(tracker: &TaskTracker, shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    tracker.spawn(async move {
        let mut interval = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    });
}

async fn wait_for_signal() -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::AuditDraft;
    use crate::vault::BlobId;
    use crate::vault::keys::DataKey;
    use crate::vault::store::BlobWriter;

    #[tokio::test]
    async fn recovery_removes_temporaries_and_orphans_and_reports_missing_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        let vault = Vault::open(&dir.path().join("vault")).unwrap();
        let key = DataKey::generate().unwrap();
        let write = async |id: BlobId| {
            let mut writer = BlobWriter::create(&vault, id, &key, u64::MAX)
                .await
                .unwrap();
            writer.write(b"some audio").await.unwrap();
            writer.finish().await.unwrap();
        };
        // A committed recording with its blob, one whose blob vanished, an orphan blob (crash
        // between the blob's fsync and the commit), an unfinished write (crash mid-upload), and
        // the temporary file of a write an earlier version left unfinished.
        let mut present = crate::catalog::recordings::tests::row(1, 100);
        let mut vanished = crate::catalog::recordings::tests::row(2, 100);
        present.id = BlobId::generate();
        vanished.id = BlobId::generate();
        write(present.id).await;
        let orphan = BlobId::generate();
        write(orphan).await;
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        for row in [&present, &vanished] {
            catalog
                .insert_recording(row, AuditDraft::system("recording.ingest", ""), now)
                .unwrap();
        }
        let unfinished_id = BlobId::generate();
        let mut unfinished = BlobWriter::create(&vault, unfinished_id, &key, u64::MAX)
            .await
            .unwrap();
        // More than a write batch: sealed chunks are in the blob's file when it "crashes".
        unfinished.write(&vec![7u8; 1200 * 1024]).await.unwrap();
        std::mem::forget(unfinished);
        let shard = vault.blob_path(&orphan).parent().unwrap().to_owned();
        std::fs::write(shard.join(format!("{orphan}-0123abcd.tmp")), b"sealed").unwrap();

        let recovery = recover(&vault, &catalog).unwrap();
        assert_eq!(
            recovery,
            Recovery {
                temp_removed: 1,
                orphans_removed: 2,
                quarantine_orphans_removed: 0,
                missing: 1,
                found_again: 0
            }
        );
        assert!(!vault.blob_path(&orphan).exists());
        assert!(!vault.blob_path(&unfinished_id).exists());
        assert!(vault.blob_path(&present.id).exists());
        let states: std::collections::HashMap<_, _> =
            catalog.recording_states().unwrap().into_iter().collect();
        assert_eq!(states[&vanished.id], RecordingState::Missing);
        assert_eq!(states[&present.id], RecordingState::Stored);
        // Reported, never dropped: the row is still there at the next start.
        assert_eq!(recover(&vault, &catalog).unwrap().missing, 1);
    }

    #[tokio::test]
    async fn recovery_removes_quarantine_blobs_without_a_row_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        let vault = Vault::open(&dir.path().join("vault")).unwrap();
        let key = DataKey::generate().unwrap();
        let write = async |id: BlobId| {
            let mut writer = BlobWriter::create_quarantine(&vault, id, &key, u64::MAX)
                .await
                .unwrap();
            writer.write(b"not audio").await.unwrap();
            writer.finish().await.unwrap();
        };
        // A quarantined file with its row, and a blob whose row never committed (a crash
        // between `store_in_quarantine`'s rename and its insert): its key was never stored.
        let recorded = BlobId::generate();
        let orphan = BlobId::generate();
        write(recorded).await;
        write(orphan).await;
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let row = crate::catalog::policy::QuarantineRow {
            id: recorded.to_string(),
            reason: "not audio".to_owned(),
            sealed_name: vec![1; 16],
            size: 9,
            sha256: [7; 32],
            received_at: now,
            retain_until: now,
            wrapped_key: vec![2; 40],
        };
        catalog
            .quarantine_insert(
                &row,
                AuditDraft::system("recording.quarantine", "not audio"),
                now,
            )
            .unwrap();
        // Not a blob name: left alone, like unexpected files among the recording blobs.
        let stray = vault.dir().join("quarantine").join("README");
        std::fs::write(&stray, b"operator notes").unwrap();
        let orphan_path = vault.quarantine_path(&orphan.to_string());
        let recorded_path = vault.quarantine_path(&recorded.to_string());
        assert!(orphan_path.exists() && recorded_path.exists());

        let recovery = recover(&vault, &catalog).unwrap();
        assert_eq!(
            recovery,
            Recovery {
                quarantine_orphans_removed: 1,
                ..Recovery::default()
            }
        );
        assert!(
            !orphan_path.exists(),
            "orphan quarantine blob still on disk"
        );
        assert!(
            recorded_path.exists(),
            "a recorded quarantine blob was removed"
        );
        assert!(stray.exists());
        let listed = catalog.quarantine_list(None, 10).unwrap();
        assert_eq!(listed, vec![row]);
        // Nothing left to remove at the next start.
        assert_eq!(recover(&vault, &catalog).unwrap(), Recovery::default());
    }
}
