//! The audit log: append-only, hash-chained entries (`chain`) stored in the catalog in the same
//! SQLite transaction as the action they record, so that an action whose entry cannot be written
//! does not happen. Owns the `AuditReceipt` proof token, chain verification and JSON export.
//! Entries carry ids, roles and reasons, never personal data.

pub mod chain;

use crate::audit::chain::{AuditEntry, ChainError, Verifier};
use crate::catalog::{Catalog, CatalogError};

/// Proof that an audit entry is durably committed. Sensitive reads (audio, contacts) take one,
/// so they cannot happen unaudited. Only the catalog's audit append creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditReceipt {
    seq: u64,
}

impl AuditReceipt {
    /// Called by `catalog` once the entry's transaction has committed (and nowhere else).
    pub(crate) fn committed(seq: u64) -> AuditReceipt {
        AuditReceipt { seq }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// Why `audit verify` failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What a successful verification saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub n_entries: u64,
    /// (seq, hash) of the newest entry.
    pub head: Option<(u64, [u8; 32])>,
}

/// Walks the whole chain in batches, in one snapshot of the catalog: `audit verify` on a running
/// server sees the chain as it was at one instant, never a head recorded after the entries it
/// read (which would look like entries cut off the end).
pub fn verify(catalog: &Catalog) -> Result<Verified, VerifyError> {
    catalog.audit_snapshot(|audit| {
        let mut verifier = Verifier::new(audit.anchor()?);
        let mut after = verifier.head().map_or(0, |(seq, _)| seq);
        loop {
            let batch = audit.batch(after, 1000)?;
            if batch.is_empty() {
                break;
            }
            for entry in &batch {
                verifier.push(entry)?;
                after = entry.seq;
            }
        }
        // A chain cut at its end still links: its recorded head says where it must end.
        if let Some((expected, hash)) = audit.recorded_head()?
            && verifier.head() != Some((expected, hash))
        {
            return Err(ChainError::Truncated {
                found: verifier.head().map_or(0, |(seq, _)| seq),
                expected,
            }
            .into());
        }
        Ok(Verified {
            n_entries: verifier.n_verified,
            head: verifier.head(),
        })
    })
}

/// The JSON form of an entry (SPEC §6), shared by the API and `audit export`.
pub fn entry_json(entry: &AuditEntry) -> serde_json::Value {
    serde_json::json!({
        "seq": entry.seq,
        "at": chain::format_time(entry.at),
        "actor": entry.actor,
        "role": entry.role,
        "action": entry.action,
        "object": entry.object,
        "purpose": entry.purpose,
        "outcome": entry.outcome.as_str(),
        "detail": entry.detail,
        "prev_hash": hex::encode(entry.prev_hash),
        "hash": hex::encode(entry.hash),
    })
}
