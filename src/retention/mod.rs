//! Retention policy (SPEC §4 guarantees 3–4, §7): the pure decisions — delete or keep, serve or
//! refuse — as functions of a recording's facts, its holds and `now` (no I/O, no clock), and the
//! purge (`purge`) that applies them through the catalog's shred transaction. A hold always
//! wins: no decision here deletes a held recording.

#[cfg(test)]
mod model;
pub mod purge;

use crate::access::Role;

/// Why a recording is kept by the purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// Covered by these active holds (whatever else asks for deletion).
    Held(Vec<String>),
    /// Its retention period has not ended.
    NotExpired,
}

/// What the purge does with one recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Delete, for this reason (`retention`, or a deferred `objection`/`erasure`).
    Delete(String),
    Keep(Keep),
}

/// The purge decision. Holds first (they always win), then deferred deletions, then expiry.
pub fn decide(
    retain_until: jiff::Timestamp,
    pending_deletion: Option<&str>,
    hold_ids: &[String],
    now: jiff::Timestamp,
) -> Decision {
    if !hold_ids.is_empty() {
        return Decision::Keep(Keep::Held(hold_ids.to_vec()));
    }
    if let Some(reason) = pending_deletion {
        return Decision::Delete(reason.to_owned());
    }
    match is_expired(retain_until, now) {
        true => Decision::Delete("retention".to_owned()),
        false => Decision::Keep(Keep::NotExpired),
    }
}

/// A recording is expired from its `retain_until` instant on.
pub fn is_expired(retain_until: jiff::Timestamp, now: jiff::Timestamp) -> bool {
    now >= retain_until
}

/// Why a read is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Past retention, and not held or the reader may not read held recordings.
    Expired,
    /// Its deletion (an objection, an erasure) waits for a hold, and the reader is not one the
    /// hold serves.
    DeletionPending,
}

impl Refusal {
    /// Why, in the words of the audit entry and of an export's `left_out`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Expired => "retention period ended",
            Refusal::DeletionPending => "deletion pending (objection or erasure) behind a hold",
        }
    }
}

/// Whether `role` may read a recording now. Expired or deletion-pending recordings are served
/// only while held, and then only to legal and the DPO (that is what the hold is for).
pub fn may_read(
    retain_until: jiff::Timestamp,
    pending_deletion: bool,
    n_holds: usize,
    role: Role,
    now: jiff::Timestamp,
) -> Result<(), Refusal> {
    if !is_expired(retain_until, now) && !pending_deletion {
        return Ok(());
    }
    let refusal = match pending_deletion {
        true => Refusal::DeletionPending,
        false => Refusal::Expired,
    };
    match (n_holds > 0, role) {
        (true, Role::Legal | Role::Dpo) => Ok(()),
        (
            true,
            Role::AlarmSource
            | Role::Contracts
            | Role::Operator
            | Role::Recorder
            | Role::Supervisor,
        ) => Err(refusal),
        (false, _) => Err(refusal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + day * 86_400).unwrap()
    }

    fn check(retain: i64, pending: Option<&str>, holds: &[&str], now: i64, expected: Decision) {
        let holds: Vec<String> = holds.iter().map(|h| h.to_string()).collect();
        assert_eq!(decide(at(retain), pending, &holds, at(now)), expected);
    }

    #[test]
    fn decisions() {
        check(10, None, &[], 5, Decision::Keep(Keep::NotExpired));
        check(10, None, &[], 10, Decision::Delete("retention".into()));
        check(
            10,
            None,
            &["h1"],
            20,
            Decision::Keep(Keep::Held(vec!["h1".into()])),
        );
        check(
            10,
            Some("objection"),
            &[],
            5,
            Decision::Delete("objection".into()),
        );
        check(
            10,
            Some("erasure"),
            &["h1", "h2"],
            5,
            Decision::Keep(Keep::Held(vec!["h1".into(), "h2".into()])),
        );
    }

    #[test]
    fn reads_after_expiry_need_a_hold_and_a_legal_role() {
        assert_eq!(may_read(at(10), false, 0, Role::Supervisor, at(9)), Ok(()));
        assert_eq!(
            may_read(at(10), false, 0, Role::Supervisor, at(10)),
            Err(Refusal::Expired)
        );
        assert_eq!(
            may_read(at(10), false, 0, Role::Dpo, at(11)),
            Err(Refusal::Expired)
        );
        assert_eq!(may_read(at(10), false, 1, Role::Legal, at(11)), Ok(()));
        assert_eq!(may_read(at(10), false, 1, Role::Dpo, at(11)), Ok(()));
        assert_eq!(
            may_read(at(10), false, 1, Role::Supervisor, at(11)),
            Err(Refusal::Expired)
        );
        assert_eq!(
            may_read(at(10), true, 1, Role::Supervisor, at(5)),
            Err(Refusal::DeletionPending)
        );
        assert_eq!(may_read(at(10), true, 1, Role::Legal, at(5)), Ok(()));
    }
}
