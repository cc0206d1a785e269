//! The audit hash chain, sans-I/O: the canonical encoding of an entry and its SHA-256 link to
//! the previous one. `hash = SHA-256("callguard-audit-v1\0" ‖ prev_hash ‖ seq ‖ fields)`, each
//! field length-prefixed, times as RFC 3339 UTC seconds. No storage, no clock.

use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// Whether the recorded action was allowed or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        match text {
            "allowed" => Some(Outcome::Allowed),
            "denied" => Some(Outcome::Denied),
            _ => None,
        }
    }
}

/// What a caller asks to record. Ids, never personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    /// Certificate CN, `local:<unix user>` or `system`.
    pub actor: String,
    /// The actor's role, or empty (system, local administrator, unknown CN).
    pub role: String,
    /// What happened, e.g. `recording.read_audio`.
    pub action: String,
    /// The object's id, e.g. a recording id, or empty.
    pub object: String,
    /// The stated purpose, for reads.
    pub purpose: Option<String>,
    pub outcome: Outcome,
    /// Free text without personal data (reasons, counts).
    pub detail: String,
}

impl AuditDraft {
    pub fn new(
        actor: &str,
        role: &str,
        action: &str,
        object: &str,
        outcome: Outcome,
    ) -> AuditDraft {
        AuditDraft {
            actor: actor.to_owned(),
            role: role.to_owned(),
            action: action.to_owned(),
            object: object.to_owned(),
            purpose: None,
            outcome,
            detail: String::new(),
        }
    }

    pub fn system(action: &str, object: &str) -> AuditDraft {
        AuditDraft::new("system", "", action, object, Outcome::Allowed)
    }

    pub fn purpose(mut self, purpose: &str) -> AuditDraft {
        self.purpose = Some(purpose.to_owned());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> AuditDraft {
        self.detail = detail.into();
        self
    }
}

/// A chained entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: u64,
    /// Whole seconds.
    pub at: jiff::Timestamp,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub object: String,
    pub purpose: Option<String>,
    pub outcome: Outcome,
    pub detail: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

impl AuditEntry {
    /// Links `draft` after an entry whose hash is `prev_hash`.
    pub fn seal(
        seq: u64,
        at: jiff::Timestamp,
        draft: AuditDraft,
        prev_hash: [u8; 32],
    ) -> AuditEntry {
        let at = jiff::Timestamp::from_second(at.as_second()).unwrap_or(at);
        let mut entry = AuditEntry {
            seq,
            at,
            actor: draft.actor,
            role: draft.role,
            action: draft.action,
            object: draft.object,
            purpose: draft.purpose,
            outcome: draft.outcome,
            detail: draft.detail,
            prev_hash,
            hash: [0; 32],
        };
        entry.hash = entry.compute_hash();
        entry
    }

    /// The hash this entry must have, given its fields and `prev_hash`.
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"callguard-audit-v1\0");
        hasher.update(self.prev_hash);
        hasher.update(self.seq.to_be_bytes());
        let at = format_time(self.at);
        let purpose_marker: &[u8] = match &self.purpose {
            Some(_) => b"1",
            None => b"0",
        };
        for field in [
            at.as_bytes(),
            self.actor.as_bytes(),
            self.role.as_bytes(),
            self.action.as_bytes(),
            self.object.as_bytes(),
            purpose_marker,
            self.purpose.as_deref().unwrap_or("").as_bytes(),
            self.outcome.as_str().as_bytes(),
            self.detail.as_bytes(),
        ] {
            hasher.update((field.len() as u32).to_be_bytes());
            hasher.update(field);
        }
        hasher.finalize().into()
    }
}

/// RFC 3339 UTC to the second, as the API shows times.
pub fn format_time(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("audit entry {seq}: its hash does not match its content (entry altered)")]
    BadHash { seq: u64 },
    #[error(
        "audit entry {seq}: prev_hash does not match entry {prev}'s hash (entry removed, inserted or reordered)"
    )]
    BrokenLink { seq: u64, prev: u64 },
    #[error(
        "audit entry {seq} follows entry {prev}: sequence numbers must increase by one (entries removed)"
    )]
    Gap { seq: u64, prev: u64 },
    #[error(
        "the chain ends at entry {found} but entry {expected} was written: entries removed from the end"
    )]
    Truncated { found: u64, expected: u64 },
}

/// Incremental verifier: feed entries in `seq` order.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The last verified entry (seq, hash); `None` before the first.
    last: Option<(u64, [u8; 32])>,
    pub n_verified: u64,
}

impl Verifier {
    /// Starts at the genesis, or after an anchor (seq, hash) kept when old entries expired.
    pub fn new(anchor: Option<(u64, [u8; 32])>) -> Verifier {
        Verifier {
            last: anchor,
            n_verified: 0,
        }
    }

    pub fn push(&mut self, entry: &AuditEntry) -> Result<(), ChainError> {
        let expected_prev = match self.last {
            Some((prev_seq, prev_hash)) => {
                if entry.seq != prev_seq + 1 {
                    return Err(ChainError::Gap {
                        seq: entry.seq,
                        prev: prev_seq,
                    });
                }
                if entry.prev_hash != prev_hash {
                    return Err(ChainError::BrokenLink {
                        seq: entry.seq,
                        prev: prev_seq,
                    });
                }
                prev_hash
            }
            None => GENESIS,
        };
        if self.last.is_none() && entry.prev_hash != expected_prev {
            return Err(ChainError::BrokenLink {
                seq: entry.seq,
                prev: 0,
            });
        }
        if entry.compute_hash() != entry.hash {
            return Err(ChainError::BadHash { seq: entry.seq });
        }
        self.last = Some((entry.seq, entry.hash));
        self.n_verified += 1;
        Ok(())
    }

    /// The head reached so far.
    pub fn head(&self) -> Option<(u64, [u8; 32])> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = GENESIS;
        let mut out = Vec::new();
        for seq in 1..=n {
            let draft = AuditDraft::new(
                "supervisor",
                "supervisor",
                "recording.read_audio",
                "abc",
                Outcome::Allowed,
            )
            .purpose("quality_review");
            let entry = AuditEntry::seal(
                seq,
                jiff::Timestamp::from_second(1_800_000_000 + seq as i64).unwrap(),
                draft,
                prev,
            );
            prev = entry.hash;
            out.push(entry);
        }
        out
    }

    fn verify(entries: &[AuditEntry]) -> Result<u64, ChainError> {
        let mut verifier = Verifier::new(None);
        for entry in entries {
            verifier.push(entry)?;
        }
        Ok(verifier.n_verified)
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
    }

    #[test]
    fn every_tampering_names_the_first_bad_entry() {
        let mut altered = chain(5);
        altered[2].detail = "edited".into();
        assert_eq!(verify(&altered), Err(ChainError::BadHash { seq: 3 }));

        let mut removed = chain(5);
        removed.remove(1);
        assert_eq!(verify(&removed), Err(ChainError::Gap { seq: 3, prev: 1 }));

        let mut rehashed = chain(5);
        rehashed[3].detail = "edited".into();
        rehashed[3].hash = rehashed[3].compute_hash();
        assert_eq!(
            verify(&rehashed),
            Err(ChainError::BrokenLink { seq: 5, prev: 4 })
        );

        let mut purpose = chain(3);
        purpose[0].purpose = None;
        assert_eq!(verify(&purpose), Err(ChainError::BadHash { seq: 1 }));
    }

    #[test]
    fn an_anchor_continues_a_pruned_chain() {
        let entries = chain(6);
        let mut verifier = Verifier::new(Some((3, entries[2].hash)));
        for entry in &entries[3..] {
            verifier.push(entry).unwrap();
        }
        assert_eq!(verifier.head(), Some((6, entries[5].hash)));
    }
}
