//! SQL of alarm cases, their events and trusted-contact lists. A contact list is one sealed
//! blob under its own key, replaced whole (new key) on every change, so a removed contact's
//! ciphertext is never readable again. Reading a list needs an `OpenAlarmCase` token, which
//! only `alarms::cases` can make: there is no other read path.

use rusqlite::{OptionalExtension, params};

use crate::alarms::cases::OpenAlarmCase;
use crate::audit::AuditReceipt;
use crate::audit::chain::AuditDraft;
use crate::catalog::{Catalog, CatalogError, audit_log, from_secs, secs, sql};

/// A case as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseRow {
    pub id: String,
    pub account_hmac: [u8; 32],
    pub sealed_account: Vec<u8>,
    pub wrapped_key: Vec<u8>,
    pub opened_at: jiff::Timestamp,
    pub last_event_at: jiff::Timestamp,
    pub closed_at: Option<jiff::Timestamp>,
    pub closed_by: Option<String>,
    pub outcome: Option<String>,
}

/// Which cases a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseListing {
    Open,
    Closed,
    All,
}

/// One event of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub at: jiff::Timestamp,
    pub code: String,
    pub zone: Option<String>,
    pub source: String,
    /// Contact ID group/partition or SIA area, when the frame has one.
    pub group: Option<String>,
    /// Receiver number and line of a serial frame (`"01/1"`).
    pub line: Option<String>,
}

/// A stored contact list: its wrapped key and sealed content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedContacts {
    pub wrapped_key: Vec<u8>,
    pub sealed_list: Vec<u8>,
}

const CASE_COLUMNS: &str = "id, account_hmac, sealed_account, wrapped_key, opened_at, last_event_at, closed_at, closed_by, outcome";

fn case_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<CaseRow, CatalogError>> {
    let account_hmac: Vec<u8> = row.get(1)?;
    let opened_at: i64 = row.get(4)?;
    let last_event_at: i64 = row.get(5)?;
    let closed_at: Option<i64> = row.get(6)?;
    let (id, sealed_account, wrapped_key, closed_by, outcome) = (
        row.get(0)?,
        row.get(2)?,
        row.get(3)?,
        row.get(7)?,
        row.get(8)?,
    );
    Ok((|| {
        Ok(CaseRow {
            id,
            account_hmac: crate::catalog::digest(account_hmac, "case account_hmac")?,
            sealed_account,
            wrapped_key,
            opened_at: from_secs(opened_at)?,
            last_event_at: from_secs(last_event_at)?,
            closed_at: closed_at.map(from_secs).transpose()?,
            closed_by,
            outcome,
        })
    })())
}

/// Makes a new case: (id, sealed account, wrapped key).
pub type NewCaseFn<'a> = dyn Fn() -> Result<(String, Vec<u8>, Vec<u8>), CatalogError> + 'a;

/// What an event did to the cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseChange {
    /// No open case and the event opens none.
    Ignored,
    Joined(String),
    Opened(String),
}

impl Catalog {
    /// The open case of an account, if any.
    pub fn open_case_of(&self, account_hmac: &[u8; 32]) -> Result<Option<CaseRow>, CatalogError> {
        self.read(|conn| {
            conn.query_row(
                &format!("SELECT {CASE_COLUMNS} FROM alarm_cases WHERE account_hmac = ?1 AND closed_at IS NULL"),
                [account_hmac.as_slice()],
                case_from_row,
            )
            .optional()
            .map_err(sql("open case"))?
            .transpose()
        })
    }

    /// A case by id.
    pub fn case(&self, id: &str) -> Result<Option<CaseRow>, CatalogError> {
        self.read(|conn| {
            conn.query_row(
                &format!("SELECT {CASE_COLUMNS} FROM alarm_cases WHERE id = ?1"),
                [id],
                case_from_row,
            )
            .optional()
            .map_err(sql("case get"))?
            .transpose()
        })
    }

    /// Applies one event in one transaction: cases open past `stale_before` are closed first
    /// (`max_open`), then the event joins the account's open case, or opens one when `opens`
    /// (with `new_case` giving id, sealed account and wrapped key), or is ignored.
    #[expect(
        clippy::too_many_arguments,
        reason = "one transaction with its audit context"
    )]
    pub fn record_alarm_event(
        &self,
        account_hmac: &[u8; 32],
        event: &EventRow,
        opens: bool,
        stale_before: jiff::Timestamp,
        new_case: &NewCaseFn<'_>,
        audit_open: &dyn Fn(&str) -> AuditDraft,
        audit_expire: &dyn Fn(&str) -> AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<CaseChange, CatalogError> {
        self.write(|tx| {
            let open: Option<(String, i64)> = tx
                .query_row(
                    "SELECT id, opened_at FROM alarm_cases WHERE account_hmac = ?1 AND closed_at IS NULL",
                    [account_hmac.as_slice()],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(sql("open case"))?;
            let open = match open {
                Some((id, opened_at)) if opened_at <= secs(stale_before) => {
                    tx.execute(
                        "UPDATE alarm_cases SET closed_at = ?2, closed_by = 'system', outcome = 'expired (max_open)' WHERE id = ?1",
                        params![id, secs(now)],
                    )
                    .map_err(sql("case expire"))?;
                    audit_log::append(tx, audit_expire(&id), now)?;
                    None
                }
                other => other.map(|(id, _)| id),
            };
            let (case_id, change) = match (open, opens) {
                (Some(id), _) => (id.clone(), CaseChange::Joined(id)),
                (None, true) => {
                    let (id, sealed_account, wrapped_key) = new_case()?;
                    tx.execute(
                        "INSERT INTO alarm_cases (id, account_hmac, sealed_account, wrapped_key, opened_at, last_event_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                        params![id, account_hmac.as_slice(), sealed_account, wrapped_key, secs(now)],
                    )
                    .map_err(sql("case open"))?;
                    audit_log::append(tx, audit_open(&id), now)?;
                    (id.clone(), CaseChange::Opened(id))
                }
                (None, false) => return Ok(CaseChange::Ignored),
            };
            tx.execute(
                "INSERT INTO alarm_events (case_id, at, code, zone, source, grp, line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![case_id, secs(event.at), event.code, event.zone, event.source, event.group, event.line],
            )
            .map_err(sql("case event"))?;
            tx.execute("UPDATE alarm_cases SET last_event_at = max(last_event_at, ?2) WHERE id = ?1", params![case_id, secs(event.at)])
                .map_err(sql("case event"))?;
            Ok(change)
        })
    }

    /// Closes an open case; false if it is not open.
    pub fn close_case(
        &self,
        id: &str,
        closed_by: &str,
        outcome: &str,
        audit: AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<bool, CatalogError> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE alarm_cases SET closed_at = ?2, closed_by = ?3, outcome = ?4 WHERE id = ?1 AND closed_at IS NULL",
                    params![id, secs(now), closed_by, outcome],
                )
                .map_err(sql("case close"))?;
            if n > 0 {
                audit_log::append(tx, audit, now)?;
            }
            Ok(n > 0)
        })
    }

    /// Closes every case opened at or before `stale_before`; returns their ids.
    pub fn expire_cases(
        &self,
        stale_before: jiff::Timestamp,
        max_open: jiff::SignedDuration,
        audit: &dyn Fn(&str) -> AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<Vec<String>, CatalogError> {
        self.write(|tx| {
            let ids: Vec<String> = {
                let mut stmt = tx
                    .prepare("SELECT id FROM alarm_cases WHERE closed_at IS NULL AND opened_at <= ?1")
                    .map_err(sql("case expiry"))?;
                let rows = stmt.query_map([secs(stale_before)], |row| row.get(0)).map_err(sql("case expiry"))?;
                rows.collect::<Result<_, _>>().map_err(sql("case expiry"))?
            };
            for id in &ids {
                tx.execute(
                    // Closed when it expired, not when the worker came by.
                    "UPDATE alarm_cases SET closed_at = MIN(opened_at + ?2, ?3), closed_by = 'system', outcome = ?4 WHERE id = ?1",
                    params![id, max_open.as_secs(), secs(now), crate::alarms::cases::EXPIRED_OUTCOME],
                )
                .map_err(sql("case expiry"))?;
                audit_log::append(tx, audit(id), now)?;
            }
            Ok(ids)
        })
    }

    /// One page of cases with their events, after the case id `after`: open ones oldest
    /// first (the order they are handled in), closed ones and all of them newest first. A case
    /// opened at or before `stale_before` counts as closed (past `alarms.max_open`) even before
    /// the expiry worker records it.
    pub fn cases_page(
        &self,
        which: CaseListing,
        stale_before: jiff::Timestamp,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(CaseRow, Vec<EventRow>)>, CatalogError> {
        let (condition, order) = match which {
            CaseListing::Open => (
                "closed_at IS NULL AND opened_at > ?1 AND (?2 IS NULL OR id > ?2)",
                "ASC",
            ),
            CaseListing::Closed => (
                "(closed_at IS NOT NULL OR opened_at <= ?1) AND (?2 IS NULL OR id < ?2)",
                "DESC",
            ),
            CaseListing::All => ("?1 = ?1 AND (?2 IS NULL OR id < ?2)", "DESC"),
        };
        self.read(|conn| {
            let mut stmt = conn
                .prepare(&format!("SELECT {CASE_COLUMNS} FROM alarm_cases WHERE {condition} ORDER BY id {order} LIMIT ?3"))
                .map_err(sql("alarm cases"))?;
            let rows = stmt
                .query_map(params![secs(stale_before), after, limit as i64], case_from_row)
                .map_err(sql("alarm cases"))?;
            let mut cases = Vec::new();
            for row in rows {
                cases.push(row.map_err(sql("alarm cases"))??);
            }
            let mut out = Vec::new();
            let mut events = conn
                .prepare("SELECT at, code, zone, source, grp, line FROM alarm_events WHERE case_id = ?1 ORDER BY at, rowid")
                .map_err(sql("case events"))?;
            for case in cases {
                let rows = events
                    .query_map([&case.id], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
                    })
                    .map_err(sql("case events"))?;
                let mut list = Vec::new();
                for row in rows {
                    let (at, code, zone, source, group, line) = row.map_err(sql("case events"))?;
                    list.push(EventRow { at: from_secs(at)?, code, zone, source, group, line });
                }
                out.push((case, list));
            }
            Ok(out)
        })
    }

    /// Replaces an account's contact list (or removes it when `list` is `None`), audited.
    /// Returns the number of contacts the previous list had.
    pub fn replace_contacts(
        &self,
        account_hmac: &[u8; 32],
        list: Option<(&SealedContacts, u64)>,
        audit: AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<u64, CatalogError> {
        self.write(|tx| {
            let previous: Option<i64> = tx
                .query_row("SELECT n_contacts FROM contact_lists WHERE account_hmac = ?1", [account_hmac.as_slice()], |row| row.get(0))
                .optional()
                .map_err(sql("contacts"))?;
            tx.execute("DELETE FROM contact_lists WHERE account_hmac = ?1", [account_hmac.as_slice()]).map_err(sql("contacts"))?;
            if let Some((sealed, n)) = list {
                tx.execute(
                    "INSERT INTO contact_lists (account_hmac, wrapped_key, sealed_list, n_contacts, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![account_hmac.as_slice(), sealed.wrapped_key, sealed.sealed_list, n as i64, secs(now)],
                )
                .map_err(sql("contacts"))?;
            }
            audit_log::append(tx, audit, now)?;
            Ok(previous.unwrap_or(0) as u64)
        })
    }

    /// The sealed contact list of the account of an open case. Needs the token (the case was
    /// checked open) and the receipt (the read is audited).
    pub fn sealed_contacts(
        &self,
        case: &OpenAlarmCase,
        _audited: &AuditReceipt,
    ) -> Result<Option<SealedContacts>, CatalogError> {
        let account_hmac = case.account_hmac();
        self.read(|conn| {
            conn.query_row(
                "SELECT wrapped_key, sealed_list FROM contact_lists WHERE account_hmac = ?1",
                [account_hmac.as_slice()],
                |row| {
                    Ok(SealedContacts {
                        wrapped_key: row.get(0)?,
                        sealed_list: row.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(sql("contacts read"))
        })
    }
}
