//! The purge: walks the recordings that are expired or carry a deferred deletion, applies
//! `retention::decide` to each, shreds the deleted ones in batched transactions (row, wrapped
//! key and tombstone together, each audited), unlinks their blobs, expires quarantine and old
//! audit entries, and checkpoints the WAL. Blocking; the daemon runs it on a blocking thread
//! every `purge_interval`, `callguard purge` runs it once (or as a dry run).

use crate::audit::chain::{AuditDraft, Outcome};
use crate::catalog::{Catalog, CatalogError};
use crate::config::RetentionConfig;
use crate::retention::{Decision, Keep, decide};
use crate::vault::{BlobId, Vault, VaultError};

/// Candidates read per batch (and shredded per transaction).
const BATCH: usize = 1000;

/// Why a purge failed.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// What one run did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// Deleted recordings and why.
    pub deleted: Vec<(BlobId, String)>,
    /// Expired (or deletion-pending) recordings kept, and why.
    pub kept: Vec<(BlobId, Keep)>,
    /// Of those, the ones whose deletion waits for their holds, and its reason (an objection,
    /// an erasure): carried out at the last release.
    pub deferred: std::collections::HashMap<BlobId, String>,
    /// Expired recordings that another deletion (a second purge run, an erasure, an
    /// objection) removed between this run's read and its write: neither deleted nor kept here.
    pub deleted_elsewhere: Vec<BlobId>,
    pub quarantine_expired: usize,
    pub audit_pruned: u64,
}

/// Deletes the catalog side first (committed), then unlinks the blobs, then checkpoints the WAL:
/// after a crash between the two, start-up recovery removes the orphan blobs (unreadable anyway:
/// their key is gone).
pub fn unlink_and_checkpoint(
    catalog: &Catalog,
    vault: &Vault,
    ids: &[BlobId],
) -> Result<(), PurgeError> {
    vault.remove_many(ids)?;
    if !ids.is_empty() {
        catalog.checkpoint()?;
    }
    Ok(())
}

/// Runs the retention engine once at `now`. `actor` is `system` or `local:<user>`.
pub fn run_once(
    catalog: &Catalog,
    vault: &Vault,
    retention: &RetentionConfig,
    actor: &str,
    now: jiff::Timestamp,
    dry_run: bool,
) -> Result<PurgeReport, PurgeError> {
    // Blobs of each committed batch are unlinked on a second thread while the catalog works on
    // the next batch; their directories are fsynced once, at the end of the run.
    let (unlink_tx, unlink_rx) = std::sync::mpsc::sync_channel::<Vec<BlobId>>(4);
    let mut report = std::thread::scope(|scope| -> Result<PurgeReport, PurgeError> {
        let unlinker = scope.spawn(move || -> Result<(), VaultError> {
            let mut touched = std::collections::BTreeSet::new();
            for ids in unlink_rx {
                vault.unlink_many(&ids, &mut touched)?;
            }
            vault.sync_dirs(&touched)
        });
        let walked = walk(catalog, actor, now, dry_run, &unlink_tx);
        drop(unlink_tx);
        let unlinked = unlinker.join().unwrap_or_else(|_| {
            Err(VaultError::Write {
                path: vault.dir().to_owned(),
                source: std::io::Error::other("unlink thread panicked"),
            })
        });
        let report = walked?;
        unlinked?;
        Ok(report)
    })?;
    if !dry_run {
        let quarantine_audit = |id: &str| {
            AuditDraft::new(actor, "", "quarantine.delete", id, Outcome::Allowed)
                .detail("purge: quarantine retention")
        };
        let expired = catalog.quarantine_expire(now, &quarantine_audit)?;
        for id in &expired {
            vault.remove_quarantine(id)?;
        }
        report.quarantine_expired = expired.len();
        let cutoff = audit_cutoff(retention, now);
        report.audit_pruned = catalog.prune_audit(cutoff)?;
        if report.audit_pruned > 0 {
            tracing::info!(
                entries = report.audit_pruned,
                "audit entries past retention.audit pruned (the chain keeps its anchor)"
            );
        }
        if !report.deleted.is_empty() || report.quarantine_expired > 0 || report.audit_pruned > 0 {
            catalog.checkpoint()?;
        }
    }
    Ok(report)
}

/// The catalog side of a run: candidates in id order, decisions, shred transactions; each
/// committed batch's ids go to `unlink_tx`.
fn walk(
    catalog: &Catalog,
    actor: &str,
    now: jiff::Timestamp,
    dry_run: bool,
    unlink_tx: &std::sync::mpsc::SyncSender<Vec<BlobId>>,
) -> Result<PurgeReport, PurgeError> {
    let mut report = PurgeReport::default();
    let mut cursor: Option<BlobId> = None;
    let audit = |id: &BlobId, reason: &str| {
        AuditDraft::new(
            actor,
            "",
            "recording.delete",
            &id.to_string(),
            Outcome::Allowed,
        )
        .detail(format!("purge: {reason}"))
    };
    loop {
        let candidates = catalog.purge_candidates(now, cursor.as_ref(), BATCH)?;
        let Some(last) = candidates.last() else { break };
        cursor = Some(last.id);
        let mut batch = Vec::new();
        for candidate in &candidates {
            match decide(
                candidate.retain_until,
                candidate.pending_deletion.as_deref(),
                &candidate.hold_ids,
                now,
            ) {
                Decision::Delete(reason) => batch.push((candidate.id, reason)),
                Decision::Keep(why) => {
                    if let Some(reason) = &candidate.pending_deletion {
                        report.deferred.insert(candidate.id, reason.clone());
                    }
                    report.kept.push((candidate.id, why))
                }
            }
        }
        if dry_run {
            report.deleted.extend(batch);
            continue;
        }
        let outcome = catalog.purge_batch(&batch, &audit, now)?;
        let deleted_set: std::collections::HashSet<BlobId> =
            outcome.deleted.iter().copied().collect();
        let held: std::collections::HashSet<BlobId> = outcome.held.iter().copied().collect();
        report.deleted_elsewhere.extend(outcome.gone);
        if unlink_tx.send(outcome.deleted).is_err() {
            // The unlink thread stopped on an error; `run_once` reports it.
            break;
        }
        for (id, reason) in batch {
            if deleted_set.contains(&id) {
                report.deleted.push((id, reason));
            } else if held.contains(&id) {
                // Became held between the read and the write: the hold wins.
                report.kept.push((id, Keep::Held(catalog.holds_of(&id)?)));
            }
        }
    }
    Ok(report)
}

/// Entries older than `now - retention.audit` are pruned (the chain keeps an anchor).
fn audit_cutoff(retention: &RetentionConfig, now: jiff::Timestamp) -> jiff::Timestamp {
    match retention.audit {
        crate::config::units::Period::Fixed(duration) => {
            let span =
                jiff::SignedDuration::try_from(duration).unwrap_or(jiff::SignedDuration::MAX);
            now.checked_sub(span).unwrap_or(jiff::Timestamp::MIN)
        }
        crate::config::units::Period::Months(months) => {
            let span = jiff::Span::new().try_months(-i64::from(months));
            match span.and_then(|span| now.to_zoned(jiff::tz::TimeZone::UTC).checked_add(span)) {
                Ok(then) => then.timestamp(),
                Err(_) => jiff::Timestamp::MIN,
            }
        }
    }
}
