//! Spool interception (SPEC §5.2): watches `ingest.spool_dir` (inotify, plus a rescan at start),
//! takes each recording once it is complete (sidecar `NAME.json` written last, or a
//! FreePBX/Asterisk-named file closed after writing), runs it through the ingest `Pipeline` with
//! a bounded number of workers, unlinks the plaintext only after the catalog commit, and stores
//! files it cannot parse encrypted in quarantine with the reason. Never drops a file.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::config::units::Period;
use crate::daemon::WorkerStatus;
use crate::ingest::Pipeline;

/// What the watcher needs from the configuration.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub timezone: jiff::tz::TimeZone,
    pub workers: usize,
    /// How long quarantined files are kept (`retention.quarantine`).
    pub quarantine_retention: Period,
}

/// Runs the spool watcher until `shutdown`. Reports its state under the status line `spool`.
pub async fn run(
    pipeline: Pipeline,
    settings: SpoolSettings,
    status: WorkerStatus,
    shutdown: CancellationToken,
) {
    let _ = (pipeline, settings);
    status.set("spool", "not implemented yet");
    shutdown.cancelled().await;
}
