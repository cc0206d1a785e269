//! Alarm cases (SPEC §8): an alarm-class event opens a case for its account, later events join
//! it, an operator closes it, or it closes itself after `alarms.max_open`. Owns the
//! `OpenAlarmCase` token: proof that a case was found open at `now`, the only key to trusted
//! contacts. The account is personal data: stored as an HMAC digest plus a sealed copy for
//! operators.

use crate::alarms::frame::EventCode;
use crate::audit::chain::{AuditDraft, Outcome};
use crate::catalog::alarms::{CaseChange, CaseListing, CaseRow, EventRow};
use crate::catalog::{Catalog, CatalogError};
use crate::keyring::Keyring;
use crate::vault::BlobId;
use crate::vault::keys::KeyError;

/// The outcome of a case that closed itself after `alarms.max_open`.
pub const EXPIRED_OUTCOME: &str = "expired (max_open)";

/// Proof that case `id` was open (and not past `max_open`) when checked. Only this module can
/// make one, and reading trusted contacts requires it.
#[derive(Debug)]
pub struct OpenAlarmCase {
    id: String,
    account_hmac: [u8; 32],
}

impl OpenAlarmCase {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn account_hmac(&self) -> &[u8; 32] {
        &self.account_hmac
    }
}

/// Why a case cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("no alarm case with this id")]
    NotFound,
    #[error("the alarm case is closed")]
    Closed,
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// One alarm event as it arrives, from a serial frame or `POST /v1/alarms`.
#[derive(Debug, Clone, Copy)]
pub struct IncomingEvent<'a> {
    /// The panel's account (personal data).
    pub account: &'a str,
    pub code: &'a EventCode,
    /// Zone or user number.
    pub zone: Option<&'a str>,
    /// Contact ID group/partition or SIA area.
    pub group: Option<&'a str>,
    /// Receiver number and line of a serial frame (`"01/1"`).
    pub line: Option<&'a str>,
    /// When it was received.
    pub at: jiff::Timestamp,
}

impl<'a> IncomingEvent<'a> {
    /// An event with only what the HTTP API carries.
    pub fn new(
        account: &'a str,
        code: &'a EventCode,
        zone: Option<&'a str>,
        at: jiff::Timestamp,
    ) -> IncomingEvent<'a> {
        IncomingEvent {
            account,
            code,
            zone,
            group: None,
            line: None,
            at,
        }
    }
}

/// Where an alarm event comes from: the event's `source` (a receiver's name, or `api`) and who
/// the audit entry of a case it opens names.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub source: &'a str,
    pub actor: &'a str,
    pub role: &'a str,
}

impl<'a> Origin<'a> {
    /// A serial receiver: the event's source and the audit actor are its configured name.
    pub fn receiver(name: &'a str) -> Origin<'a> {
        Origin {
            source: name,
            actor: name,
            role: "",
        }
    }

    /// `POST /v1/alarms` by the client certificate `cn` with role `role`.
    pub fn api(cn: &'a str, role: &'a str) -> Origin<'a> {
        Origin {
            source: "api",
            actor: cn,
            role,
        }
    }
}

/// The case registry over the catalog.
pub struct Cases<'a> {
    pub catalog: &'a Catalog,
    pub keyring: &'a Keyring,
    pub max_open: std::time::Duration,
}

impl Cases<'_> {
    /// When and how a case closed: as recorded, or, for a case past `max_open` that the expiry
    /// worker has not closed yet, the instant it expired. `None` while it is open.
    pub fn closing(
        &self,
        case: &CaseRow,
        now: jiff::Timestamp,
    ) -> Option<(jiff::Timestamp, String)> {
        match (case.closed_at, &case.outcome) {
            (Some(at), outcome) => Some((at, outcome.clone().unwrap_or_default())),
            (None, _) if !self.is_open(case, now) => Some((
                case.opened_at
                    .checked_add(self.max_open_span())
                    .unwrap_or(jiff::Timestamp::MAX),
                EXPIRED_OUTCOME.to_owned(),
            )),
            (None, _) => None,
        }
    }

    fn max_open_span(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::try_from(self.max_open).unwrap_or(jiff::SignedDuration::MAX)
    }

    fn stale_before(&self, now: jiff::Timestamp) -> jiff::Timestamp {
        now.checked_sub(self.max_open_span())
            .unwrap_or(jiff::Timestamp::MIN)
    }

    /// Applies one alarm event, from `origin`.
    pub fn record(
        &self,
        incoming: &IncomingEvent<'_>,
        origin: &Origin<'_>,
        now: jiff::Timestamp,
    ) -> Result<CaseChange, CaseError> {
        let IncomingEvent {
            account,
            code,
            zone,
            group,
            line,
            at,
        } = *incoming;
        let account_hmac = crate::ingest::account_digest(self.keyring, account);
        let event = EventRow {
            at,
            code: code.to_string(),
            zone: zone.map(str::to_owned),
            source: origin.source.to_owned(),
            group: group.map(str::to_owned),
            line: line.map(str::to_owned),
        };
        let keyring = self.keyring;
        let new_case = || -> Result<(String, Vec<u8>, Vec<u8>), CatalogError> {
            let id = format!("case_{}", BlobId::generate());
            let (key, wrapped) = keyring
                .new_key(&format!("alarm/{id}"))
                .map_err(|e| CatalogError::Task(e.to_string()))?;
            let sealed = key
                .seal(format!("alarm/{id}/account").as_bytes(), account.as_bytes())
                .map_err(|e| CatalogError::Task(e.to_string()))?;
            Ok((id, sealed, wrapped))
        };
        let audit_open = |id: &str| {
            AuditDraft::new(
                origin.actor,
                origin.role,
                "alarm.open",
                id,
                Outcome::Allowed,
            )
            .detail(format!("event {code}"))
        };
        let audit_expire =
            |id: &str| AuditDraft::system("alarm.close", id).detail("max_open reached");
        let opens = code.opens_case();
        Ok(self.catalog.record_alarm_event(
            &account_hmac,
            &event,
            opens,
            self.stale_before(now),
            &new_case,
            &audit_open,
            &audit_expire,
            now,
        )?)
    }

    /// Checks that case `id` is open now; the token unlocks its account's contacts.
    pub fn open_case(&self, id: &str, now: jiff::Timestamp) -> Result<OpenAlarmCase, CaseError> {
        let case = self.catalog.case(id)?.ok_or(CaseError::NotFound)?;
        match self.is_open(&case, now) {
            true => Ok(OpenAlarmCase {
                id: case.id,
                account_hmac: case.account_hmac,
            }),
            false => Err(CaseError::Closed),
        }
    }

    /// Whether `case` is open now: not closed, and opened within `alarms.max_open` (a case
    /// past it is closed even before the expiry worker records it).
    pub fn is_open(&self, case: &CaseRow, now: jiff::Timestamp) -> bool {
        case.closed_at.is_none() && case.opened_at > self.stale_before(now)
    }

    /// One page of cases (see `Catalog::cases_page`), with cases past `max_open` counted as
    /// closed.
    pub fn page(
        &self,
        which: CaseListing,
        after: Option<&str>,
        limit: usize,
        now: jiff::Timestamp,
    ) -> Result<Vec<(CaseRow, Vec<EventRow>)>, CaseError> {
        Ok(self
            .catalog
            .cases_page(which, self.stale_before(now), after, limit)?)
    }

    /// Closes every case past `max_open`; returns how many.
    pub fn expire(&self, now: jiff::Timestamp) -> Result<usize, CaseError> {
        let audit = |id: &str| AuditDraft::system("alarm.close", id).detail("max_open reached");
        Ok(self
            .catalog
            .expire_cases(self.stale_before(now), self.max_open_span(), &audit, now)?
            .len())
    }

    /// The account of a case, opened (for operators).
    pub fn account_of(&self, case: &CaseRow) -> Result<String, CaseError> {
        let key = self
            .keyring
            .key(&format!("alarm/{}", case.id), &case.wrapped_key)?;
        let plain = key.open(
            format!("alarm/{}/account", case.id).as_bytes(),
            &case.sealed_account,
        )?;
        Ok(String::from_utf8_lossy(&plain).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::open_temp;
    use crate::vault::keys::MasterKey;

    fn at(minutes: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + minutes * 60).unwrap()
    }

    #[test]
    fn cases_open_join_close_and_expire() {
        let (_dir, catalog) = open_temp();
        let keyring = Keyring::open(&MasterKey::generate().unwrap(), &catalog).unwrap();
        let cases = Cases {
            catalog: &catalog,
            keyring: &keyring,
            max_open: std::time::Duration::from_secs(24 * 3600),
        };
        let code = |text: &str| EventCode::parse_api(text).unwrap();

        assert_eq!(
            cases
                .record(
                    &IncomingEvent::new("1234", &code("E602"), None, at(0)),
                    &Origin::receiver("r1"),
                    at(0)
                )
                .unwrap(),
            CaseChange::Ignored
        );
        let CaseChange::Opened(id) = cases
            .record(
                &IncomingEvent::new("1234", &code("E130"), Some("015"), at(1)),
                &Origin::receiver("r1"),
                at(1),
            )
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            cases
                .record(
                    &IncomingEvent::new("1234", &code("R130"), Some("015"), at(2)),
                    &Origin::receiver("r1"),
                    at(2)
                )
                .unwrap(),
            CaseChange::Joined(id.clone())
        );
        assert_eq!(
            cases
                .record(
                    &IncomingEvent::new("1234", &code("BA"), Some("01"), at(3)),
                    &Origin::api("source-1", "alarm_source"),
                    at(3)
                )
                .unwrap(),
            CaseChange::Joined(id.clone())
        );
        let open = cases.open_case(&id, at(4)).unwrap();
        assert_eq!(open.id(), id);
        let (case, events) = cases
            .page(CaseListing::Open, None, 10, at(4))
            .unwrap()
            .remove(0);
        assert!(
            cases
                .page(CaseListing::Closed, None, 10, at(4))
                .unwrap()
                .is_empty()
        );
        let audit = catalog.audit_batch(0, 100).unwrap();
        let opened = audit.iter().find(|e| e.action == "alarm.open").unwrap();
        assert_eq!((opened.actor.as_str(), opened.role.as_str()), ("r1", ""));
        assert_eq!(cases.account_of(&case).unwrap(), "1234");
        assert_eq!(
            events.iter().map(|e| e.code.as_str()).collect::<Vec<_>>(),
            ["E130", "R130", "BA"]
        );

        // After max_open the case no longer unlocks anything, and closes itself.
        assert!(matches!(
            cases.open_case(&id, at(1 + 24 * 60)),
            Err(CaseError::Closed)
        ));
        assert_eq!(cases.expire(at(1 + 24 * 60)).unwrap(), 1);
        let CaseChange::Opened(second) = cases
            .record(
                &IncomingEvent::new("1234", &code("E110"), None, at(2000)),
                &Origin::receiver("r1"),
                at(2000),
            )
            .unwrap()
        else {
            panic!()
        };
        assert_ne!(second, id);
        assert!(
            catalog
                .close_case(
                    &second,
                    "operator",
                    "false alarm",
                    AuditDraft::system("alarm.close", &second),
                    at(2001)
                )
                .unwrap()
        );
        assert!(matches!(
            cases.open_case(&second, at(2002)),
            Err(CaseError::Closed)
        ));
        assert!(matches!(
            cases.open_case("case_nope", at(2002)),
            Err(CaseError::NotFound)
        ));
    }
}
