//! SQL of the privacy policy: objections (caller and call level), litigation holds and their
//! coverage, deferred deletions, purge candidates, quarantine rows. Decisions are made by
//! `retention::decide` and the `objections` module; this file only stores and selects.
//! Holds win at the database level too: `hold_recordings` references `recordings` with
//! `ON DELETE RESTRICT`, so no statement can delete a row an active hold covers.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::audit::chain::AuditDraft;
use crate::catalog::recordings::{Tombstone, exists_in, shred_in, tombstone_in};
use crate::catalog::{Catalog, CatalogError, audit_log, digest, from_secs, secs, sql};
use crate::vault::BlobId;

/// What happened to one recording that something asked to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// A hold covers it: the deletion is recorded and happens at the last release.
    Deferred,
    /// Row and wrapped key gone; the caller must unlink the blob.
    Deleted,
    /// No such recording.
    Absent,
}

/// What `purge_batch` did with each recording of its batch.
#[derive(Debug, Default)]
pub struct PurgeBatch {
    /// Shredded by this batch: their blobs are to unlink.
    pub deleted: Vec<BlobId>,
    /// Held since the purge read them: kept.
    pub held: Vec<BlobId>,
    /// Deleted meanwhile by something else (another purge run, an erasure, an objection).
    pub gone: Vec<BlobId>,
}

/// What `hold_place` did.
#[derive(Debug)]
pub enum HoldPlacement {
    /// The hold is placed and covers `covered` recordings; `deleted` are the recordings it
    /// named by id that were already deleted, with their tombstones.
    Placed {
        covered: u64,
        deleted: Vec<Tombstone>,
    },
    /// A recording named by id neither exists nor was ever deleted: nothing was placed.
    UnknownRecording(BlobId),
}

/// A registered objection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectionRow {
    pub id: String,
    pub source: String,
    pub reference: String,
    pub last_digits: String,
    pub created_at: jiff::Timestamp,
    pub withdrawn_at: Option<jiff::Timestamp>,
}

/// What a hold selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldSelector {
    Account([u8; 32]),
    Caller([u8; 32]),
    Ids(Vec<BlobId>),
    Range {
        from: jiff::Timestamp,
        to: jiff::Timestamp,
    },
}

/// A hold as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    pub id: String,
    pub case_ref: String,
    pub reason: String,
    pub selector_kind: String,
    pub include_future: bool,
    pub placed_by: String,
    pub placed_at: jiff::Timestamp,
    pub released_at: Option<jiff::Timestamp>,
    pub released_by: Option<String>,
    pub release_reason: Option<String>,
    /// Recordings covered now (active) or at release.
    pub covered: u64,
    /// A range selector's bounds, both included (to the second).
    pub range: Option<(jiff::Timestamp, jiff::Timestamp)>,
}

/// A recording the purge looks at: expired or with a deferred deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeCandidate {
    pub id: BlobId,
    pub retain_until: jiff::Timestamp,
    pub pending_deletion: Option<String>,
    pub hold_ids: Vec<String>,
}

/// A quarantined file as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRow {
    pub id: String,
    pub reason: String,
    pub sealed_name: Vec<u8>,
    pub size: u64,
    pub sha256: [u8; 32],
    pub received_at: jiff::Timestamp,
    pub retain_until: jiff::Timestamp,
    pub wrapped_key: Vec<u8>,
}

/// Deletes `id` now, or records the deletion for when its holds are released.
pub(crate) fn delete_or_defer_in(
    tx: &Transaction<'_>,
    id: &BlobId,
    reason: &str,
    audit: AuditDraft,
    now: jiff::Timestamp,
) -> Result<Deletion, CatalogError> {
    let exists: Option<Option<String>> = tx
        .query_row(
            "SELECT pending_deletion FROM recordings WHERE id = ?1",
            [id.to_string()],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql("deletion lookup"))?;
    let Some(pending) = exists else {
        return Ok(Deletion::Absent);
    };
    if n_holds_in(tx, id)? > 0 {
        // An explicit erasure or call objection outlives a caller objection, which can be
        // withdrawn: it replaces an `objection` reason, never the reverse.
        let replace = match pending.as_deref() {
            None => true,
            Some("objection") => reason != "objection",
            Some(_) => false,
        };
        if replace {
            tx.execute(
                "UPDATE recordings SET pending_deletion = ?2 WHERE id = ?1",
                params![id.to_string(), reason],
            )
            .map_err(sql("defer deletion"))?;
        }
        let mut deferred = audit;
        deferred.detail = format!("{} (deferred: held)", deferred.detail)
            .trim_start()
            .to_owned();
        audit_log::append(tx, deferred, now)?;
        return Ok(Deletion::Deferred);
    }
    shred_in(tx, id, reason, now)?;
    audit_log::append(tx, audit, now)?;
    Ok(Deletion::Deleted)
}

fn n_holds_in(conn: &rusqlite::Connection, id: &BlobId) -> Result<u64, CatalogError> {
    conn.prepare_cached("SELECT count(*) FROM hold_recordings WHERE recording_id = ?1")
        .and_then(|mut stmt| stmt.query_row([id.to_string()], |row| row.get::<_, i64>(0)))
        .map(|n| n as u64)
        .map_err(sql("hold count"))
}

fn hold_ids_in(conn: &rusqlite::Connection, id: &BlobId) -> Result<Vec<String>, CatalogError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT hold_id FROM hold_recordings WHERE recording_id = ?1 ORDER BY hold_id",
        )
        .map_err(sql("holds of recording"))?;
    let rows = stmt
        .query_map([id.to_string()], |row| row.get::<_, String>(0))
        .map_err(sql("holds of recording"))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(sql("holds of recording"))?);
    }
    Ok(out)
}

fn ids_where(
    conn: &rusqlite::Connection,
    query: &str,
    param: &dyn rusqlite::ToSql,
) -> Result<Vec<BlobId>, CatalogError> {
    let mut stmt = conn.prepare(query).map_err(sql("recording selection"))?;
    let rows = stmt
        .query_map([param], |row| row.get::<_, String>(0))
        .map_err(sql("recording selection"))?;
    let mut out = Vec::new();
    for row in rows {
        let text = row.map_err(sql("recording selection"))?;
        out.push(BlobId::parse(&text).ok_or_else(|| CatalogError::Corrupt {
            what: format!("recording id `{text}`"),
        })?);
    }
    Ok(out)
}

/// Attaches a freshly inserted recording to every active `include_future` hold it matches.
pub(crate) fn attach_future_holds_in(
    tx: &Transaction<'_>,
    id: &BlobId,
    caller_hmac: Option<&[u8; 32]>,
    account_hmac: Option<&[u8; 32]>,
    started_at: jiff::Timestamp,
) -> Result<u64, CatalogError> {
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO hold_recordings (hold_id, recording_id)
             SELECT id, ?1 FROM holds
             WHERE released_at IS NULL AND include_future = 1 AND (
                   (selector_kind = 'caller' AND selector_hmac = ?2)
                OR (selector_kind = 'account' AND selector_hmac = ?3)
                OR (selector_kind = 'range' AND ?4 >= selector_from AND ?4 <= selector_to))",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                id.to_string(),
                caller_hmac.map(|d| d.as_slice()),
                account_hmac.map(|d| d.as_slice()),
                secs(started_at)
            ])
        })
        .map_err(sql("attach future holds"))?;
    Ok(n as u64)
}

/// Why a call must not be recorded, if it must not, on `conn` (a snapshot or a transaction): an
/// active objection for the caller, or a pending call-level objection for the call id.
pub(crate) fn objection_in(
    conn: &Connection,
    caller_hmac: Option<&[u8; 32]>,
    call_id_hmac: &[u8; 32],
    now: jiff::Timestamp,
) -> Result<Option<&'static str>, CatalogError> {
    if let Some(caller) = caller_hmac {
        let objected: bool = conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM objections WHERE caller_hmac = ?1 AND withdrawn_at IS NULL)")
            .and_then(|mut stmt| stmt.query_row([caller.as_slice()], |row| row.get(0)))
            .map_err(sql("objection check"))?;
        if objected {
            return Ok(Some("caller_objection"));
        }
    }
    let call_objected: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM call_objections WHERE call_id_hmac = ?1 AND expires_at > ?2)")
        .and_then(|mut stmt| stmt.query_row(params![call_id_hmac.as_slice(), secs(now)], |row| row.get(0)))
        .map_err(sql("call objection check"))?;
    Ok(call_objected.then_some("call_objection"))
}

impl Catalog {
    /// Why a call must not be recorded, if it must not: an active objection for the caller, or
    /// a pending call-level objection for the call id.
    pub fn objection_for(
        &self,
        caller_hmac: Option<&[u8; 32]>,
        call_id_hmac: &[u8; 32],
        now: jiff::Timestamp,
    ) -> Result<Option<&'static str>, CatalogError> {
        self.read(|conn| objection_in(conn, caller_hmac, call_id_hmac, now))
    }

    /// Registers an objection and deletes (or defers, if held) the caller's recordings, all in
    /// one transaction. Returns (deleted ids to unlink, number deferred).
    #[expect(
        clippy::too_many_arguments,
        reason = "one transaction with its audit context"
    )]
    pub fn objection_create(
        &self,
        row: &ObjectionRow,
        caller_hmac: &[u8; 32],
        actor: &str,
        role: &str,
        now: jiff::Timestamp,
        deletion_audit: &dyn Fn(&BlobId) -> AuditDraft,
        audit: AuditDraft,
    ) -> Result<(Vec<BlobId>, u64), CatalogError> {
        let _ = (actor, role);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO objections (id, caller_hmac, source, reference, last_digits, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![row.id, caller_hmac.as_slice(), row.source, row.reference, row.last_digits, secs(now)],
            )
            .map_err(sql("objection insert"))?;
            audit_log::append(tx, audit, now)?;
            let ids = ids_where(tx, "SELECT id FROM recordings WHERE caller_hmac = ?1", &caller_hmac.as_slice())?;
            let mut deleted = Vec::new();
            let mut deferred = 0;
            for id in ids {
                match delete_or_defer_in(tx, &id, "objection", deletion_audit(&id), now)? {
                    Deletion::Deleted => deleted.push(id),
                    Deletion::Deferred => deferred += 1,
                    Deletion::Absent => {}
                }
            }
            Ok((deleted, deferred))
        })
    }

    /// Registers a call-level objection until `expires_at`, and deletes (or defers) the
    /// recording of that call if it is already stored. Returns the deletion outcome and the
    /// recording to unlink; a call whose recording was deleted before is `Deleted` with none.
    /// `audit` makes the objection's entry from the recording it concerns, if known, and what
    /// became of it.
    pub fn call_objection(
        &self,
        call_id_hmac: &[u8; 32],
        expires_at: jiff::Timestamp,
        now: jiff::Timestamp,
        deletion_audit: &dyn Fn(&BlobId) -> AuditDraft,
        audit: &dyn Fn(Option<&BlobId>, &str) -> AuditDraft,
    ) -> Result<(Deletion, Option<BlobId>), CatalogError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO call_objections (call_id_hmac, created_at, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (call_id_hmac) DO UPDATE SET expires_at = excluded.expires_at",
                params![call_id_hmac.as_slice(), secs(now), secs(expires_at)],
            )
            .map_err(sql("call objection insert"))?;
            let ids = ids_where(tx, "SELECT id FROM recordings WHERE call_id_hmac = ?1", &call_id_hmac.as_slice())?;
            if let Some(id) = ids.first() {
                let outcome = delete_or_defer_in(tx, id, "call_objection", deletion_audit(id), now)?;
                let what = match outcome {
                    Deletion::Deferred => "recording deletion deferred (held)",
                    Deletion::Deleted | Deletion::Absent => "recording deleted",
                };
                audit_log::append(tx, audit(Some(id), what), now)?;
                return Ok((outcome, Some(*id)));
            }
            if let Some(tomb) = crate::catalog::recordings::deleted_call_in(tx, call_id_hmac)? {
                audit_log::append(tx, audit(Some(&tomb), "recording already deleted"), now)?;
                return Ok((Deletion::Deleted, None));
            }
            audit_log::append(tx, audit(None, "recording not received yet: discarded on arrival"), now)?;
            Ok((Deletion::Absent, None))
        })
    }

    /// Active and withdrawn objections, newest first.
    pub fn objection_list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectionRow>, CatalogError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, source, reference, last_digits, created_at, withdrawn_at FROM objections
                     WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
                )
                .map_err(sql("objection list"))?;
            let rows = stmt
                .query_map(params![after, limit as i64], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, Option<i64>>(5)?,
                    ))
                })
                .map_err(sql("objection list"))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, source, reference, last_digits, created_at, withdrawn_at) = row.map_err(sql("objection list"))?;
                out.push(ObjectionRow {
                    id,
                    source,
                    reference,
                    last_digits,
                    created_at: from_secs(created_at)?,
                    withdrawn_at: withdrawn_at.map(from_secs).transpose()?,
                });
            }
            Ok(out)
        })
    }

    /// Whether objection `id` exists and when it was withdrawn: `None` for an unknown id,
    /// `Some(None)` for an active one.
    pub fn objection_withdrawn_at(
        &self,
        id: &str,
    ) -> Result<Option<Option<jiff::Timestamp>>, CatalogError> {
        self.read(|conn| {
            let found: Option<Option<i64>> = conn
                .query_row(
                    "SELECT withdrawn_at FROM objections WHERE id = ?1",
                    [id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sql("objection lookup"))?;
            found.map(|at| at.map(from_secs).transpose()).transpose()
        })
    }

    /// Withdraws an active objection; deferred deletions it caused are cancelled unless another
    /// active objection covers the same caller. Returns false if there was no active one.
    pub fn objection_withdraw(
        &self,
        id: &str,
        audit: AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<bool, CatalogError> {
        self.write(|tx| {
            let caller: Option<Vec<u8>> = tx
                .query_row("SELECT caller_hmac FROM objections WHERE id = ?1 AND withdrawn_at IS NULL", [id], |row| row.get(0))
                .optional()
                .map_err(sql("objection withdraw"))?;
            let Some(caller) = caller else { return Ok(false) };
            tx.execute("UPDATE objections SET withdrawn_at = ?2 WHERE id = ?1", params![id, secs(now)])
                .map_err(sql("objection withdraw"))?;
            tx.execute(
                "UPDATE recordings SET pending_deletion = NULL
                 WHERE caller_hmac = ?1 AND pending_deletion = 'objection'
                   AND NOT EXISTS (SELECT 1 FROM objections WHERE caller_hmac = ?1 AND withdrawn_at IS NULL)",
                [caller.as_slice()],
            )
            .map_err(sql("objection withdraw"))?;
            audit_log::append(tx, audit, now)?;
            Ok(true)
        })
    }

    /// Erasure or any other explicit deletion of one recording: now, or deferred if held.
    pub fn delete_recording(
        &self,
        id: &BlobId,
        reason: &str,
        audit: AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<Deletion, CatalogError> {
        self.write(|tx| delete_or_defer_in(tx, id, reason, audit, now))
    }

    /// Places a hold and attaches the recordings its selector matches now. Recordings named
    /// by id are classified in the same transaction: one deleted meanwhile (an erasure racing
    /// the hold) is reported with its tombstone, never silently left out; an id that neither
    /// exists nor was deleted places nothing. `audit` gets the number covered and the number
    /// of named recordings already deleted.
    #[expect(
        clippy::too_many_arguments,
        reason = "one transaction with its audit context"
    )]
    pub fn hold_place(
        &self,
        id: &str,
        case_ref: &str,
        reason: &str,
        selector: &HoldSelector,
        include_future: bool,
        placed_by: &str,
        audit: &dyn Fn(u64, usize) -> AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<HoldPlacement, CatalogError> {
        self.write(|tx| {
            let mut live = Vec::new();
            let mut deleted = Vec::new();
            if let HoldSelector::Ids(ids) = selector {
                for recording in ids {
                    if exists_in(tx, recording)? {
                        live.push(recording.to_string());
                        continue;
                    }
                    match tombstone_in(tx, recording)? {
                        Some(tomb) => deleted.push(tomb),
                        None => return Ok(HoldPlacement::UnknownRecording(*recording)),
                    }
                }
            }
            let (kind, hmac, from, to) = match selector {
                HoldSelector::Account(d) => ("account", Some(d.as_slice()), None, None),
                HoldSelector::Caller(d) => ("caller", Some(d.as_slice()), None, None),
                HoldSelector::Ids(_) => ("ids", None, None, None),
                HoldSelector::Range { from, to } => ("range", None, Some(secs(*from)), Some(secs(*to))),
            };
            tx.execute(
                "INSERT INTO holds (id, case_ref, reason, selector_kind, selector_hmac, selector_from, selector_to,
                                    include_future, placed_by, placed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![id, case_ref, reason, kind, hmac, from, to, include_future, placed_by, secs(now)],
            )
            .map_err(sql("hold insert"))?;
            let covered = match selector {
                HoldSelector::Account(d) => tx.execute(
                    "INSERT OR IGNORE INTO hold_recordings (hold_id, recording_id) SELECT ?1, id FROM recordings WHERE account_hmac = ?2",
                    params![id, d.as_slice()],
                ),
                HoldSelector::Caller(d) => tx.execute(
                    "INSERT OR IGNORE INTO hold_recordings (hold_id, recording_id) SELECT ?1, id FROM recordings WHERE caller_hmac = ?2",
                    params![id, d.as_slice()],
                ),
                HoldSelector::Range { from, to } => tx.execute(
                    "INSERT OR IGNORE INTO hold_recordings (hold_id, recording_id)
                     SELECT ?1, id FROM recordings WHERE started_at >= ?2 AND started_at <= ?3",
                    params![id, secs(*from), secs(*to)],
                ),
                HoldSelector::Ids(_) => {
                    let mut n = 0;
                    for recording in &live {
                        n += tx
                            .execute(
                                "INSERT OR IGNORE INTO hold_recordings (hold_id, recording_id) VALUES (?1, ?2)",
                                params![id, recording],
                            )
                            .map_err(sql("hold attach"))?;
                    }
                    Ok(n)
                }
            }
            .map_err(sql("hold attach"))? as u64;
            audit_log::append(tx, audit(covered, deleted.len()), now)?;
            Ok(HoldPlacement::Placed { covered, deleted })
        })
    }

    /// Releases an active hold. Recordings no longer covered by any hold that carry a deferred
    /// deletion are shredded now (returned with the deletion's reason, to unlink); expired ones
    /// wait for the next purge. `None` if the hold does not exist or is already released.
    pub fn hold_release(
        &self,
        id: &str,
        reason: &str,
        released_by: &str,
        audit: AuditDraft,
        deletion_audit: &dyn Fn(&BlobId, &str) -> AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<Option<Vec<(BlobId, String)>>, CatalogError> {
        self.write(|tx| {
            let active: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM holds WHERE id = ?1 AND released_at IS NULL)", [id], |row| row.get(0))
                .map_err(sql("hold release"))?;
            if !active {
                return Ok(None);
            }
            let covered = ids_where(tx, "SELECT recording_id FROM hold_recordings WHERE hold_id = ?1", &id)?;
            tx.execute(
                "UPDATE holds SET released_at = ?2, released_by = ?3, release_reason = ?4, covered_at_release = ?5 WHERE id = ?1",
                params![id, secs(now), released_by, reason, covered.len() as i64],
            )
            .map_err(sql("hold release"))?;
            tx.execute(
                "INSERT INTO released_hold_recordings (hold_id, recording_id)
                 SELECT hold_id, recording_id FROM hold_recordings WHERE hold_id = ?1",
                [id],
            )
            .map_err(sql("hold release"))?;
            tx.execute("DELETE FROM hold_recordings WHERE hold_id = ?1", [id]).map_err(sql("hold release"))?;
            audit_log::append(tx, audit, now)?;
            let mut deleted = Vec::new();
            for recording in covered {
                if n_holds_in(tx, &recording)? > 0 {
                    continue;
                }
                let pending: Option<Option<String>> = tx
                    .query_row("SELECT pending_deletion FROM recordings WHERE id = ?1", [recording.to_string()], |row| row.get(0))
                    .optional()
                    .map_err(sql("pending deletion"))?;
                if let Some(Some(why)) = pending {
                    shred_in(tx, &recording, &why, now)?;
                    audit_log::append(tx, deletion_audit(&recording, &why), now)?;
                    deleted.push((recording, why));
                }
            }
            Ok(Some(deleted))
        })
    }

    /// Holds, newest first; active ones count their current coverage.
    pub fn hold_list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HoldRow>, CatalogError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT h.id, h.case_ref, h.reason, h.selector_kind, h.include_future, h.placed_by, h.placed_at,
                            h.released_at, h.released_by, h.release_reason,
                            COALESCE(h.covered_at_release, (SELECT count(*) FROM hold_recordings r WHERE r.hold_id = h.id)),
                            h.selector_from, h.selector_to
                     FROM holds h WHERE (?1 IS NULL OR h.id < ?1) ORDER BY h.id DESC LIMIT ?2",
                )
                .map_err(sql("hold list"))?;
            let rows = stmt.query_map(params![after, limit as i64], hold_from_row).map_err(sql("hold list"))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(sql("hold list"))??);
            }
            Ok(out)
        })
    }

    /// One hold and the recordings it covers now, or covered when it was released.
    pub fn hold_get(&self, id: &str) -> Result<Option<(HoldRow, Vec<BlobId>)>, CatalogError> {
        let list = self.read(|conn| {
            let hold = conn
                .query_row(
                    "SELECT h.id, h.case_ref, h.reason, h.selector_kind, h.include_future, h.placed_by, h.placed_at,
                            h.released_at, h.released_by, h.release_reason,
                            COALESCE(h.covered_at_release, (SELECT count(*) FROM hold_recordings r WHERE r.hold_id = h.id)),
                            h.selector_from, h.selector_to
                     FROM holds h WHERE h.id = ?1",
                    [id],
                    hold_from_row,
                )
                .optional()
                .map_err(sql("hold get"))?;
            let Some(hold) = hold else { return Ok(None) };
            let covered = ids_where(
                conn,
                "SELECT recording_id FROM hold_recordings WHERE hold_id = ?1
                 UNION ALL SELECT recording_id FROM released_hold_recordings WHERE hold_id = ?1
                 ORDER BY 1",
                &id,
            )?;
            Ok(Some((hold?, covered)))
        })?;
        Ok(list)
    }

    /// The ids of the active holds covering a recording.
    pub fn holds_of(&self, id: &BlobId) -> Result<Vec<String>, CatalogError> {
        self.read(|conn| hold_ids_in(conn, id))
    }

    /// Number of active holds.
    pub fn holds_active(&self) -> Result<u64, CatalogError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT count(*) FROM holds WHERE released_at IS NULL",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(sql("hold count"))
        })
    }

    /// Recordings the purge must look at (expired at `now`, or with a deferred deletion), with
    /// the holds covering each, after `cursor`, at most `limit`.
    pub fn purge_candidates(
        &self,
        now: jiff::Timestamp,
        after: Option<&BlobId>,
        limit: usize,
    ) -> Result<Vec<PurgeCandidate>, CatalogError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, retain_until, pending_deletion FROM recordings
                     WHERE (retain_until <= ?1 OR pending_deletion IS NOT NULL) AND id > COALESCE(?2, '')
                     ORDER BY id LIMIT ?3",
                )
                .map_err(sql("purge candidates"))?;
            let rows = stmt
                .query_map(params![secs(now), after.map(|id| id.to_string()), limit as i64], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, Option<String>>(2)?))
                })
                .map_err(sql("purge candidates"))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, retain_until, pending_deletion) = row.map_err(sql("purge candidates"))?;
                let id = BlobId::parse(&id).ok_or_else(|| CatalogError::Corrupt { what: format!("recording id `{id}`") })?;
                out.push(PurgeCandidate { id, retain_until: from_secs(retain_until)?, pending_deletion, hold_ids: hold_ids_in(conn, &id)? });
            }
            Ok(out)
        })
    }

    /// Shreds a batch of recordings the purge decided to delete, in one transaction. A
    /// recording that became held meanwhile is kept; one another deletion removed meanwhile (a
    /// second purge, an erasure) is neither.
    pub fn purge_batch(
        &self,
        batch: &[(BlobId, String)],
        audit: &dyn Fn(&BlobId, &str) -> AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<PurgeBatch, CatalogError> {
        self.write(|tx| {
            let mut outcome = PurgeBatch::default();
            for (id, reason) in batch {
                if n_holds_in(tx, id)? > 0 {
                    outcome.held.push(*id);
                } else if shred_in(tx, id, reason, now)? {
                    audit_log::append(tx, audit(id, reason), now)?;
                    outcome.deleted.push(*id);
                } else {
                    outcome.gone.push(*id);
                }
            }
            Ok(outcome)
        })
    }

    /// Stores a quarantine row (the encrypted blob is already durable), audited.
    pub fn quarantine_insert(
        &self,
        row: &QuarantineRow,
        audit: AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<(), CatalogError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO quarantine (id, reason, sealed_name, size, sha256, received_at, retain_until, wrapped_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    row.id,
                    row.reason,
                    row.sealed_name,
                    row.size as i64,
                    row.sha256.as_slice(),
                    secs(row.received_at),
                    secs(row.retain_until),
                    row.wrapped_key
                ],
            )
            .map_err(sql("quarantine insert"))?;
            audit_log::append(tx, audit, now)?;
            Ok(())
        })
    }

    /// Quarantined files, newest first.
    pub fn quarantine_list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<QuarantineRow>, CatalogError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, reason, sealed_name, size, sha256, received_at, retain_until, wrapped_key FROM quarantine
                     WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
                )
                .map_err(sql("quarantine list"))?;
            let rows = stmt
                .query_map(params![after, limit as i64], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Vec<u8>>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, i64>(6)?,
                        row.get::<_, Vec<u8>>(7)?,
                    ))
                })
                .map_err(sql("quarantine list"))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, reason, sealed_name, size, sha256, received_at, retain_until, wrapped_key) =
                    row.map_err(sql("quarantine list"))?;
                out.push(QuarantineRow {
                    id,
                    reason,
                    sealed_name,
                    size: size as u64,
                    sha256: digest(sha256, "quarantine sha256")?,
                    received_at: from_secs(received_at)?,
                    retain_until: from_secs(retain_until)?,
                    wrapped_key,
                });
            }
            Ok(out)
        })
    }

    /// The ids of every quarantine row, in one query (start-up recovery compares them with
    /// the blobs in `vault/quarantine/`; the table is small: one row per quarantined file).
    pub fn quarantine_ids(&self) -> Result<std::collections::HashSet<String>, CatalogError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT id FROM quarantine")
                .map_err(sql("quarantine ids"))?;
            let ids = stmt
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(sql("quarantine ids"))?
                .collect::<Result<_, _>>()
                .map_err(sql("quarantine ids"))?;
            Ok(ids)
        })
    }

    /// Deletes quarantine rows expired at `now`; returns their ids (blobs to unlink).
    pub fn quarantine_expire(
        &self,
        now: jiff::Timestamp,
        audit: &dyn Fn(&str) -> AuditDraft,
    ) -> Result<Vec<String>, CatalogError> {
        self.write(|tx| {
            let mut stmt = tx
                .prepare("SELECT id FROM quarantine WHERE retain_until <= ?1")
                .map_err(sql("quarantine expiry"))?;
            let ids: Vec<String> = stmt
                .query_map([secs(now)], |row| row.get(0))
                .map_err(sql("quarantine expiry"))?
                .collect::<Result<_, _>>()
                .map_err(sql("quarantine expiry"))?;
            drop(stmt);
            for id in &ids {
                tx.execute("DELETE FROM quarantine WHERE id = ?1", [id])
                    .map_err(sql("quarantine expiry"))?;
                audit_log::append(tx, audit(id), now)?;
            }
            Ok(ids)
        })
    }

    /// (active objections, quarantined files).
    pub fn policy_counts(&self) -> Result<(u64, u64), CatalogError> {
        self.read(|conn| {
            let count = |query: &str| -> Result<u64, CatalogError> {
                conn.query_row(query, [], |row| row.get::<_, i64>(0))
                    .map(|n| n as u64)
                    .map_err(sql("policy counts"))
            };
            Ok((
                count("SELECT count(*) FROM objections WHERE withdrawn_at IS NULL")?,
                count("SELECT count(*) FROM quarantine")?,
            ))
        })
    }

    /// The next `limit` expiries of unheld recordings (for the report).
    pub fn next_expiries(
        &self,
        now: jiff::Timestamp,
        limit: usize,
    ) -> Result<Vec<(BlobId, jiff::Timestamp)>, CatalogError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, retain_until FROM recordings WHERE retain_until > ?1
                     AND NOT EXISTS (SELECT 1 FROM hold_recordings h WHERE h.recording_id = recordings.id)
                     ORDER BY retain_until LIMIT ?2",
                )
                .map_err(sql("next expiries"))?;
            let rows = stmt
                .query_map(params![secs(now), limit as i64], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))
                .map_err(sql("next expiries"))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, at) = row.map_err(sql("next expiries"))?;
                let id = BlobId::parse(&id).ok_or_else(|| CatalogError::Corrupt { what: format!("recording id `{id}`") })?;
                out.push((id, from_secs(at)?));
            }
            Ok(out)
        })
    }
}

fn hold_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<HoldRow, CatalogError>> {
    let placed_at: i64 = row.get(6)?;
    let released_at: Option<i64> = row.get(7)?;
    let id: String = row.get(0)?;
    let case_ref: String = row.get(1)?;
    let reason: String = row.get(2)?;
    let selector_kind: String = row.get(3)?;
    let include_future: bool = row.get(4)?;
    let placed_by: String = row.get(5)?;
    let released_by: Option<String> = row.get(8)?;
    let release_reason: Option<String> = row.get(9)?;
    let covered: i64 = row.get(10)?;
    let range: (Option<i64>, Option<i64>) = (row.get(11)?, row.get(12)?);
    Ok((|| {
        Ok(HoldRow {
            id,
            case_ref,
            reason,
            selector_kind,
            include_future,
            placed_by,
            placed_at: from_secs(placed_at)?,
            released_at: released_at.map(from_secs).transpose()?,
            released_by,
            release_reason,
            covered: covered as u64,
            range: match range {
                (Some(from), Some(to)) => Some((from_secs(from)?, from_secs(to)?)),
                _ => None,
            },
        })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::Outcome;
    use crate::catalog::recordings::RecordingRow;
    use crate::catalog::recordings::tests::row;
    use crate::catalog::tests::{at, open_temp};

    fn insert(catalog: &Catalog, recordings: &[&RecordingRow]) {
        for recording in recordings {
            catalog
                .insert_recording(
                    recording,
                    AuditDraft::system("recording.ingest", ""),
                    at(200),
                )
                .unwrap();
        }
    }

    fn place(catalog: &Catalog, ids: Vec<BlobId>) -> HoldPlacement {
        let audit = |n: u64, n_deleted: usize| {
            AuditDraft::new("legal", "legal", "hold.place", "h", Outcome::Allowed)
                .detail(format!("{n} {n_deleted}"))
        };
        catalog
            .hold_place(
                "hold_1",
                "RG 26/1",
                "appeal",
                &HoldSelector::Ids(ids),
                false,
                "legal",
                &audit,
                at(500),
            )
            .unwrap()
    }

    #[test]
    fn a_hold_by_ids_names_what_was_deleted_and_places_nothing_for_an_unknown_id() {
        let (_dir, catalog) = open_temp();
        let (kept, erased) = (row(1, 100), row(2, 100));
        insert(&catalog, &[&kept, &erased]);
        // The erasure commits just before the hold that names it.
        let deletion = catalog
            .delete_recording(
                &erased.id,
                "erasure",
                AuditDraft::system("recording.delete", ""),
                at(400),
            )
            .unwrap();
        assert_eq!(deletion, Deletion::Deleted);

        let unknown = BlobId::generate();
        assert!(matches!(
            place(&catalog, vec![kept.id, unknown]),
            HoldPlacement::UnknownRecording(id) if id == unknown
        ));
        assert!(catalog.hold_list(None, 10).unwrap().is_empty());

        match place(&catalog, vec![kept.id, erased.id]) {
            HoldPlacement::Placed { covered, deleted } => {
                assert_eq!(covered, 1);
                assert_eq!(deleted.len(), 1);
                assert_eq!(
                    (deleted[0].id, deleted[0].reason.as_str()),
                    (erased.id, "erasure")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(catalog.holds_of(&kept.id).unwrap(), ["hold_1"]);
        let entry = catalog.audit_batch(0, 100).unwrap().pop().unwrap();
        assert_eq!(
            (entry.action.as_str(), entry.detail.as_str()),
            ("hold.place", "1 1")
        );
    }

    #[test]
    fn a_purge_batch_tells_held_from_deleted_meanwhile_and_a_read_after_a_deletion_is_not_audited()
    {
        let (_dir, catalog) = open_temp();
        let (expired, held, erased) = (row(1, 100), row(2, 100), row(3, 100));
        insert(&catalog, &[&expired, &held, &erased]);
        // Between the purge's read and its write: a hold on one, an erasure of another.
        assert!(matches!(
            place(&catalog, vec![held.id]),
            HoldPlacement::Placed { covered: 1, .. }
        ));
        let erasure = AuditDraft::system("recording.delete", "");
        catalog
            .delete_recording(&erased.id, "erasure", erasure, at(2000))
            .unwrap();
        let batch: Vec<(BlobId, String)> = [&expired, &held, &erased]
            .iter()
            .map(|r| (r.id, "retention".to_owned()))
            .collect();
        let audit = |id: &BlobId, _: &str| AuditDraft::system("recording.delete", &id.to_string());
        let outcome = catalog.purge_batch(&batch, &audit, at(2001)).unwrap();
        assert_eq!(
            (outcome.deleted, outcome.held, outcome.gone),
            (vec![expired.id], vec![held.id], vec![erased.id])
        );

        // A read whose entry would commit after the deletion is not audited as allowed.
        let read = || AuditDraft::system("recording.read_audio", "");
        assert!(
            catalog
                .audit_read(&erased.id, read(), at(2002))
                .unwrap()
                .is_none()
        );
        assert!(
            catalog
                .audit_read(&held.id, read(), at(2002))
                .unwrap()
                .is_some()
        );
        let reads = catalog
            .audit_batch(0, 100)
            .unwrap()
            .into_iter()
            .filter(|entry| entry.action == "recording.read_audio")
            .count();
        assert_eq!(reads, 1);
    }
}
