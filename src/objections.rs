//! The objection registry (SPEC §4 guarantee 5, §7): objections keyed by the HMAC of the
//! caller's E.164 number (never the number), call-level objections by call id that expire after
//! a day, withdrawal, and the ingest-time check. Registering an objection deletes the caller's
//! recordings at once, or records the deletion for when their holds are released.

use crate::audit::chain::{AuditDraft, Outcome};
use crate::catalog::policy::{Deletion, ObjectionRow};
use crate::catalog::{Catalog, CatalogError};
use crate::ingest::metadata::PhoneNumber;
use crate::keyring::Keyring;
use crate::retention::purge::{PurgeError, unlink_and_checkpoint};
use crate::vault::{BlobId, Vault};

/// How long a call-level objection waits for its recording.
pub const CALL_OBJECTION_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// HMAC domains of lookup digests.
pub const CALLER_DOMAIN: &str = "caller";
pub const CALL_ID_DOMAIN: &str = "call_id";

/// Where an objection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Call,
    Email,
    Letter,
    Web,
}

impl Source {
    pub fn parse(text: &str) -> Option<Source> {
        match text {
            "call" => Some(Source::Call),
            "email" => Some(Source::Email),
            "letter" => Some(Source::Letter),
            "web" => Some(Source::Web),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Call => "call",
            Source::Email => "email",
            Source::Letter => "letter",
            Source::Web => "web",
        }
    }
}

/// Why an objection operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectionError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Purge(#[from] PurgeError),
}

/// What registering an objection did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub id: String,
    pub recordings_deleted: u64,
    pub recordings_deferred: u64,
}

/// The registry, over the catalog and vault.
pub struct Objections<'a> {
    pub catalog: &'a Catalog,
    pub vault: &'a Vault,
    pub keyring: &'a Keyring,
}

impl Objections<'_> {
    /// Registers an objection for `caller` and deletes (or defers) their recordings.
    pub fn register(
        &self,
        caller: &PhoneNumber,
        source: Source,
        reference: &str,
        actor: &str,
        role: &str,
        now: jiff::Timestamp,
    ) -> Result<Registered, ObjectionError> {
        let id = format!("obj_{}", BlobId::generate());
        let caller_hmac = self.keyring.digest(CALLER_DOMAIN, caller.as_str());
        let row = ObjectionRow {
            id: id.clone(),
            source: source.as_str().to_owned(),
            reference: reference.to_owned(),
            last_digits: caller.last_digits(),
            created_at: now,
            withdrawn_at: None,
        };
        let audit = AuditDraft::new(actor, role, "objection.create", &id, Outcome::Allowed)
            .detail(format!("source {}", source.as_str()));
        let deletion = |recording: &BlobId| {
            AuditDraft::new(
                actor,
                role,
                "recording.delete",
                &recording.to_string(),
                Outcome::Allowed,
            )
            .detail(format!("objection {id}"))
        };
        let (deleted, deferred) = self.catalog.objection_create(
            &row,
            &caller_hmac,
            actor,
            role,
            now,
            &deletion,
            audit,
        )?;
        unlink_and_checkpoint(self.catalog, self.vault, &deleted)?;
        Ok(Registered {
            id,
            recordings_deleted: deleted.len() as u64,
            recordings_deferred: deferred,
        })
    }

    /// An operator reports that the caller objected during call `call_id`: its recording is
    /// discarded on arrival (for a day), or deleted now if already stored.
    pub fn register_call(
        &self,
        call_id: &str,
        actor: &str,
        role: &str,
        now: jiff::Timestamp,
    ) -> Result<Deletion, ObjectionError> {
        let digest = self.keyring.digest(CALL_ID_DOMAIN, call_id);
        let expires = now
            .checked_add(jiff::SignedDuration::from_secs(
                CALL_OBJECTION_TTL.as_secs() as i64,
            ))
            .unwrap_or(now);
        let audit = |recording: Option<&BlobId>, what: &str| {
            let object = recording.map(ToString::to_string).unwrap_or_default();
            AuditDraft::new(actor, role, "objection.call", &object, Outcome::Allowed).detail(what)
        };
        let deletion = |recording: &BlobId| {
            AuditDraft::new(
                actor,
                role,
                "recording.delete",
                &recording.to_string(),
                Outcome::Allowed,
            )
            .detail("call objection")
        };
        let (outcome, id) = self
            .catalog
            .call_objection(&digest, expires, now, &deletion, &audit)?;
        if let (Deletion::Deleted, Some(id)) = (outcome, id) {
            unlink_and_checkpoint(self.catalog, self.vault, &[id])?;
        }
        Ok(outcome)
    }

    /// Withdraws objection `id`; false if no active objection has that id.
    pub fn withdraw(
        &self,
        id: &str,
        actor: &str,
        role: &str,
        now: jiff::Timestamp,
    ) -> Result<bool, ObjectionError> {
        let audit = AuditDraft::new(actor, role, "objection.withdraw", id, Outcome::Allowed);
        Ok(self.catalog.objection_withdraw(id, audit, now)?)
    }

    /// The ingest gate: why this call must not be recorded, if it must not.
    pub fn check(
        &self,
        caller: Option<&PhoneNumber>,
        call_id: &str,
        now: jiff::Timestamp,
    ) -> Result<Option<&'static str>, ObjectionError> {
        let caller_hmac = caller.map(|number| self.keyring.digest(CALLER_DOMAIN, number.as_str()));
        let call_hmac = self.keyring.digest(CALL_ID_DOMAIN, call_id);
        Ok(self
            .catalog
            .objection_for(caller_hmac.as_ref(), &call_hmac, now)?)
    }
}
