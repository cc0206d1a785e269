//! SQL of recordings and tombstones. A row holds the wrapped data key, the sealed personal
//! metadata and HMAC digests for lookups: no number, call id or account in clear. Deleting a
//! row (crypto-shredding) leaves a tombstone with id, time and reason only.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::audit::AuditReceipt;
use crate::audit::chain::AuditDraft;
use crate::catalog::{Catalog, CatalogError, Conditions, audit_log, digest, from_secs, secs, sql};
use crate::vault::BlobId;

/// What the probe learnt about the audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFacts {
    pub container: String,
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u16,
    pub n_frames: u64,
    pub duration_ms: u64,
}

/// Whether the blob is where it should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingState {
    /// The row exists but the blob was not found at start-up (reported, never dropped).
    Missing,
    Stored,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Missing => "missing",
            RecordingState::Stored => "stored",
        }
    }
}

/// A recording as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRow {
    pub id: BlobId,
    pub call_id_hmac: [u8; 32],
    pub caller_hmac: Option<[u8; 32]>,
    pub callee_hmac: Option<[u8; 32]>,
    pub account_hmac: Option<[u8; 32]>,
    pub operator_hmac: Option<[u8; 32]>,
    /// Alarm case id (not personal data: an opaque id).
    pub alarm_case: Option<String>,
    pub direction: String,
    pub started_at: jiff::Timestamp,
    pub retain_until: jiff::Timestamp,
    pub ingested_at: jiff::Timestamp,
    pub state: RecordingState,
    pub audio: AudioFacts,
    /// Plaintext size in bytes.
    pub size: u64,
    pub sha256: [u8; 32],
    pub wrapped_key: Vec<u8>,
    pub sealed_meta: Vec<u8>,
    /// A deletion (objection, erasure) waiting for the last hold's release: its reason.
    pub pending_deletion: Option<String>,
}

/// What a deleted recording leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub id: BlobId,
    pub deleted_at: jiff::Timestamp,
    pub reason: String,
}

/// Result of looking a recording up by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Deleted(Tombstone),
    Found(Box<RecordingRow>),
    NotFound,
}

/// Result of an insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A recording with the same call id exists already.
    Duplicate(Box<RecordingRow>),
    New(AuditReceipt),
    /// Nothing inserted, for a reason that arose after the ingest-time check: an objection for
    /// the caller (or the call) registered since (`caller_objection`, `call_objection`), or the
    /// call's earlier recording deleted since (`deleted`).
    Discarded(&'static str),
}

/// Search filters; digests are HMACs of normalised values.
#[derive(Debug, Clone, Default)]
pub struct RecordingFilter {
    pub from: Option<jiff::Timestamp>,
    pub to: Option<jiff::Timestamp>,
    pub account_hmac: Option<[u8; 32]>,
    pub caller_hmac: Option<[u8; 32]>,
    pub operator_hmac: Option<[u8; 32]>,
    pub call_id_hmac: Option<[u8; 32]>,
    pub alarm_case: Option<String>,
    /// A person on either end: (caller digest, callee digest) of the same number, for subject
    /// access (GDPR art. 15 covers the calls a person received too).
    pub party: Option<([u8; 32], [u8; 32])>,
}

/// Position in a newest-first listing: the last row's (started_at, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordingCursor {
    pub started_at: jiff::Timestamp,
    pub id: BlobId,
}

const COLUMNS: &str = "id, call_id_hmac, caller_hmac, callee_hmac, account_hmac, operator_hmac, alarm_case, \
     direction, started_at, retain_until, ingested_at, state, container, codec, sample_rate, channels, \
     n_frames, duration_ms, size, sha256, wrapped_key, sealed_meta, pending_deletion";

fn opt_digest(value: Option<Vec<u8>>, what: &str) -> Result<Option<[u8; 32]>, CatalogError> {
    match value {
        Some(bytes) => Ok(Some(digest(bytes, what)?)),
        None => Ok(None),
    }
}

/// Raw column values, converted outside rusqlite's closure so errors keep their type.
struct RawRow {
    id: String,
    call_id_hmac: Vec<u8>,
    caller_hmac: Option<Vec<u8>>,
    callee_hmac: Option<Vec<u8>>,
    account_hmac: Option<Vec<u8>>,
    operator_hmac: Option<Vec<u8>>,
    alarm_case: Option<String>,
    direction: String,
    started_at: i64,
    retain_until: i64,
    ingested_at: i64,
    state: String,
    container: String,
    codec: String,
    sample_rate: i64,
    channels: i64,
    n_frames: i64,
    duration_ms: i64,
    size: i64,
    sha256: Vec<u8>,
    wrapped_key: Vec<u8>,
    sealed_meta: Vec<u8>,
    pending_deletion: Option<String>,
}

fn raw_row(row: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: row.get(0)?,
        call_id_hmac: row.get(1)?,
        caller_hmac: row.get(2)?,
        callee_hmac: row.get(3)?,
        account_hmac: row.get(4)?,
        operator_hmac: row.get(5)?,
        alarm_case: row.get(6)?,
        direction: row.get(7)?,
        started_at: row.get(8)?,
        retain_until: row.get(9)?,
        ingested_at: row.get(10)?,
        state: row.get(11)?,
        container: row.get(12)?,
        codec: row.get(13)?,
        sample_rate: row.get(14)?,
        channels: row.get(15)?,
        n_frames: row.get(16)?,
        duration_ms: row.get(17)?,
        size: row.get(18)?,
        sha256: row.get(19)?,
        wrapped_key: row.get(20)?,
        sealed_meta: row.get(21)?,
        pending_deletion: row.get(22)?,
    })
}

impl RawRow {
    fn into_row(self) -> Result<RecordingRow, CatalogError> {
        let corrupt = |what: &str| CatalogError::Corrupt {
            what: format!("recording {}: {what}", self.id),
        };
        let id = BlobId::parse(&self.id).ok_or_else(|| corrupt("id"))?;
        let state = match self.state.as_str() {
            "stored" => RecordingState::Stored,
            "missing" => RecordingState::Missing,
            _ => return Err(corrupt("state")),
        };
        Ok(RecordingRow {
            id,
            call_id_hmac: digest(self.call_id_hmac, "call_id_hmac")?,
            caller_hmac: opt_digest(self.caller_hmac, "caller_hmac")?,
            callee_hmac: opt_digest(self.callee_hmac, "callee_hmac")?,
            account_hmac: opt_digest(self.account_hmac, "account_hmac")?,
            operator_hmac: opt_digest(self.operator_hmac, "operator_hmac")?,
            alarm_case: self.alarm_case,
            direction: self.direction,
            started_at: from_secs(self.started_at)?,
            retain_until: from_secs(self.retain_until)?,
            ingested_at: from_secs(self.ingested_at)?,
            state,
            audio: AudioFacts {
                container: self.container,
                codec: self.codec,
                sample_rate: u32::try_from(self.sample_rate).map_err(|_| corrupt("sample_rate"))?,
                channels: u16::try_from(self.channels).map_err(|_| corrupt("channels"))?,
                n_frames: u64::try_from(self.n_frames).map_err(|_| corrupt("n_frames"))?,
                duration_ms: u64::try_from(self.duration_ms).map_err(|_| corrupt("duration_ms"))?,
            },
            size: u64::try_from(self.size).map_err(|_| corrupt("size"))?,
            sha256: digest(self.sha256, "sha256")?,
            wrapped_key: self.wrapped_key,
            sealed_meta: self.sealed_meta,
            pending_deletion: self.pending_deletion,
        })
    }
}

/// The SQL of a recording search and its bound values: only the filters given, so that the
/// planner can use the index of the most selective one.
pub(crate) fn search_query(
    filter: &RecordingFilter,
    cursor: Option<RecordingCursor>,
    limit: usize,
) -> (String, Conditions) {
    let mut conditions = Conditions::default();
    conditions.within("started_at", filter.from, filter.to);
    for (column, digest) in [
        ("account_hmac", &filter.account_hmac),
        ("caller_hmac", &filter.caller_hmac),
        ("operator_hmac", &filter.operator_hmac),
        ("call_id_hmac", &filter.call_id_hmac),
    ] {
        conditions.compare(column, "=", digest.map(|digest| digest.to_vec()));
    }
    conditions.compare("alarm_case", "=", filter.alarm_case.clone());
    if let Some(cursor) = cursor {
        let at = conditions.param(secs(cursor.started_at));
        let id = conditions.param(cursor.id.to_string());
        conditions.and(format!(
            "(started_at < {at} OR (started_at = {at} AND id < {id}))"
        ));
    }
    if let Some((caller, callee)) = &filter.party {
        let caller = conditions.param(caller.to_vec());
        let callee = conditions.param(callee.to_vec());
        conditions.and(format!(
            "(caller_hmac = {caller} OR callee_hmac = {callee})"
        ));
    }
    let limit = conditions.param(limit as i64);
    let query = format!(
        "SELECT {COLUMNS} FROM recordings WHERE {} ORDER BY started_at DESC, id DESC LIMIT {limit}",
        conditions.sql()
    );
    (query, conditions)
}

fn collect(
    rows: impl Iterator<Item = rusqlite::Result<RawRow>>,
) -> Result<Vec<RecordingRow>, CatalogError> {
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(sql("recording row"))?.into_row()?);
    }
    Ok(out)
}

fn by_call(
    tx: &rusqlite::Connection,
    call_id_hmac: &[u8; 32],
) -> Result<Option<RecordingRow>, CatalogError> {
    let raw = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM recordings WHERE call_id_hmac = ?1"
        ))
        .and_then(|mut stmt| {
            stmt.query_row([call_id_hmac.as_slice()], raw_row)
                .optional()
        })
        .map_err(sql("recording by call id"))?;
    match raw {
        Some(raw) => Ok(Some(raw.into_row()?)),
        None => Ok(None),
    }
}

/// The tombstone of a deleted recording of this call, if any.
pub(crate) fn deleted_call_in(
    conn: &rusqlite::Connection,
    call_id_hmac: &[u8; 32],
) -> Result<Option<BlobId>, CatalogError> {
    let id: Option<String> = conn
        .prepare_cached("SELECT id FROM tombstones WHERE call_id_hmac = ?1 LIMIT 1")
        .and_then(|mut stmt| {
            stmt.query_row([call_id_hmac.as_slice()], |row| row.get(0))
                .optional()
        })
        .map_err(sql("tombstone by call id"))?;
    Ok(id.as_deref().and_then(BlobId::parse))
}

/// Deletes the row (and with it the wrapped key) and writes the tombstone, in `tx`. The
/// tombstone keeps the call id's digest (no personal data: a keyed hash of the recorder's call
/// identifier), so the same call is not stored again.
pub(crate) fn shred_in(
    tx: &Transaction<'_>,
    id: &BlobId,
    reason: &str,
    now: jiff::Timestamp,
) -> Result<bool, CatalogError> {
    let call_id_hmac: Option<Vec<u8>> = tx
        .prepare_cached("DELETE FROM recordings WHERE id = ?1 RETURNING call_id_hmac")
        .and_then(|mut stmt| {
            stmt.query_row([id.to_string()], |row| row.get(0))
                .optional()
        })
        .map_err(sql("recording delete"))?;
    let Some(call_id_hmac) = call_id_hmac else {
        return Ok(false);
    };
    tx.prepare_cached(
        "INSERT OR REPLACE INTO tombstones (id, deleted_at, reason, call_id_hmac) \
         VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut stmt| stmt.execute(params![id.to_string(), secs(now), reason, call_id_hmac]))
    .map_err(sql("tombstone"))?;
    Ok(true)
}

/// Whether recording `id` has its row (it is stored, not deleted).
pub(crate) fn exists_in(conn: &Connection, id: &BlobId) -> Result<bool, CatalogError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM recordings WHERE id = ?1)")
        .and_then(|mut stmt| stmt.query_row([id.to_string()], |row| row.get(0)))
        .map_err(sql("recording presence"))
}

/// The tombstone of recording `id`, if it was deleted.
pub(crate) fn tombstone_in(
    conn: &Connection,
    id: &BlobId,
) -> Result<Option<Tombstone>, CatalogError> {
    let tomb: Option<(i64, String)> = conn
        .query_row(
            "SELECT deleted_at, reason FROM tombstones WHERE id = ?1",
            [id.to_string()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(sql("tombstone get"))?;
    match tomb {
        Some((deleted_at, reason)) => Ok(Some(Tombstone {
            id: *id,
            deleted_at: from_secs(deleted_at)?,
            reason,
        })),
        None => Ok(None),
    }
}

impl Catalog {
    /// Commits a new recording and its audit entry, unless its call id exists already or an
    /// objection now covers it.
    pub fn insert_recording(
        &self,
        row: &RecordingRow,
        audit: AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<Inserted, CatalogError> {
        let row = row.clone();
        self.write_grouped(move |tx| {
            if let Some(existing) = by_call(tx, &row.call_id_hmac)? {
                return Ok(Inserted::Duplicate(Box::new(existing)));
            }
            // The ingest-time check ran before the audio arrived; an objection registered since
            // wins all the same (guarantee 5), checked in the transaction that would insert.
            let objection = crate::catalog::policy::objection_in(
                tx,
                row.caller_hmac.as_ref(),
                &row.call_id_hmac,
                now,
            )?;
            if let Some(reason) = objection {
                return Ok(Inserted::Discarded(reason));
            }
            if deleted_call_in(tx, &row.call_id_hmac)?.is_some() {
                return Ok(Inserted::Discarded("deleted"));
            }
            tx.prepare_cached(&format!(
                "INSERT INTO recordings ({COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
            ))
            .and_then(|mut stmt| stmt.execute(params![
                    row.id.to_string(),
                    row.call_id_hmac.as_slice(),
                    row.caller_hmac.as_ref().map(|d| d.as_slice()),
                    row.callee_hmac.as_ref().map(|d| d.as_slice()),
                    row.account_hmac.as_ref().map(|d| d.as_slice()),
                    row.operator_hmac.as_ref().map(|d| d.as_slice()),
                    row.alarm_case,
                    row.direction,
                    secs(row.started_at),
                    secs(row.retain_until),
                    secs(row.ingested_at),
                    row.state.as_str(),
                    row.audio.container,
                    row.audio.codec,
                    i64::from(row.audio.sample_rate),
                    i64::from(row.audio.channels),
                    row.audio.n_frames as i64,
                    row.audio.duration_ms as i64,
                    row.size as i64,
                    row.sha256.as_slice(),
                    row.wrapped_key,
                    row.sealed_meta,
                    row.pending_deletion,
                ]))
            .map_err(sql("recording insert"))?;
            crate::catalog::policy::attach_future_holds_in(
                tx,
                &row.id,
                row.caller_hmac.as_ref(),
                row.account_hmac.as_ref(),
                row.started_at,
            )?;
            let seq = audit_log::append(tx, audit, now)?;
            Ok(Inserted::New(AuditReceipt::committed(seq)))
        })
    }

    /// A recording, its tombstone, or nothing.
    pub fn recording(&self, id: &BlobId) -> Result<Lookup, CatalogError> {
        self.read(|conn| {
            let raw = conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM recordings WHERE id = ?1"),
                    [id.to_string()],
                    raw_row,
                )
                .optional()
                .map_err(sql("recording get"))?;
            if let Some(raw) = raw {
                return Ok(Lookup::Found(Box::new(raw.into_row()?)));
            }
            Ok(match tombstone_in(conn, id)? {
                Some(tomb) => Lookup::Deleted(tomb),
                None => Lookup::NotFound,
            })
        })
    }

    /// The tombstone id of a deleted recording of this call, if any.
    pub fn deleted_call(&self, call_id_hmac: &[u8; 32]) -> Result<Option<BlobId>, CatalogError> {
        self.read(|conn| deleted_call_in(conn, call_id_hmac))
    }

    /// The recording with this call id digest, if any.
    pub fn recording_by_call(
        &self,
        call_id_hmac: &[u8; 32],
    ) -> Result<Option<RecordingRow>, CatalogError> {
        self.read(|conn| by_call(conn, call_id_hmac))
    }

    /// Newest first, after `cursor`, at most `limit` rows.
    pub fn search_recordings(
        &self,
        filter: &RecordingFilter,
        cursor: Option<RecordingCursor>,
        limit: usize,
    ) -> Result<Vec<RecordingRow>, CatalogError> {
        let (query, conditions) = search_query(filter, cursor, limit);
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(&query)
                .map_err(sql("recording search"))?;
            let rows = stmt
                .query_map(conditions.values(), raw_row)
                .map_err(sql("recording search"))?;
            collect(rows)
        })
    }

    /// Crypto-shreds one recording's catalog side: row and wrapped key deleted, tombstone
    /// written, audit appended, in one transaction. The caller then unlinks the blob and
    /// checkpoints. Returns false if there was no such row.
    pub fn shred_recording(
        &self,
        id: &BlobId,
        reason: &str,
        audit: AuditDraft,
        now: jiff::Timestamp,
    ) -> Result<bool, CatalogError> {
        self.write(|tx| {
            let deleted = shred_in(tx, id, reason, now)?;
            if deleted {
                audit_log::append(tx, audit, now)?;
            }
            Ok(deleted)
        })
    }

    /// Marks a recording's blob as found or missing (start-up reconciliation).
    pub fn set_recording_state(
        &self,
        id: &BlobId,
        state: RecordingState,
    ) -> Result<(), CatalogError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE recordings SET state = ?2 WHERE id = ?1",
                params![id.to_string(), state.as_str()],
            )
            .map_err(sql("recording state"))?;
            Ok(())
        })
    }

    /// Every recording id with its state, for start-up reconciliation.
    pub fn recording_states(&self) -> Result<Vec<(BlobId, RecordingState)>, CatalogError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT id, state FROM recordings ORDER BY id")
                .map_err(sql("recording ids"))?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(sql("recording ids"))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, state) = row.map_err(sql("recording ids"))?;
                let id = BlobId::parse(&id).ok_or_else(|| CatalogError::Corrupt {
                    what: format!("recording id `{id}`"),
                })?;
                let state = match state.as_str() {
                    "missing" => RecordingState::Missing,
                    _ => RecordingState::Stored,
                };
                out.push((id, state));
            }
            Ok(out)
        })
    }

    /// (stored, missing, tombstones) counts.
    pub fn recording_counts(&self) -> Result<(u64, u64, u64), CatalogError> {
        self.read(|conn| {
            let count = |query: &str| -> Result<u64, CatalogError> {
                conn.query_row(query, [], |row| row.get::<_, i64>(0))
                    .map(|n| n as u64)
                    .map_err(sql("recording counts"))
            };
            Ok((
                count("SELECT count(*) FROM recordings WHERE state = 'stored'")?,
                count("SELECT count(*) FROM recordings WHERE state = 'missing'")?,
                count("SELECT count(*) FROM tombstones")?,
            ))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::audit::chain::Outcome;
    use crate::catalog::tests::{at, open_temp};

    use super::*;

    pub(crate) fn row(call: u8, started: i64) -> RecordingRow {
        RecordingRow {
            id: BlobId::generate(),
            call_id_hmac: [call; 32],
            caller_hmac: Some([1; 32]),
            callee_hmac: None,
            account_hmac: Some([2; 32]),
            operator_hmac: None,
            alarm_case: None,
            direction: "inbound".into(),
            started_at: at(started),
            retain_until: at(started + 1000),
            ingested_at: at(started + 1),
            state: RecordingState::Stored,
            audio: AudioFacts {
                container: "wav".into(),
                codec: "pcm_mulaw".into(),
                sample_rate: 8000,
                channels: 1,
                n_frames: 8000,
                duration_ms: 1000,
            },
            size: 8044,
            sha256: [call; 32],
            wrapped_key: vec![0; 60],
            sealed_meta: vec![1; 40],
            pending_deletion: None,
        }
    }

    fn draft() -> AuditDraft {
        AuditDraft::new(
            "recorder",
            "recorder",
            "recording.ingest",
            "",
            Outcome::Allowed,
        )
    }

    #[test]
    fn an_objection_registered_after_the_ingest_check_still_refuses_the_insert() {
        let (_dir, catalog) = open_temp();
        let late = row(3, 100);
        let deletion = |_: &BlobId| AuditDraft::system("recording.delete", "");
        catalog
            .call_objection(
                &late.call_id_hmac,
                at(1000),
                at(4),
                &deletion,
                &|_, what| AuditDraft::system("objection.call", "").detail(what),
            )
            .unwrap();
        assert!(matches!(
            catalog.insert_recording(&late, draft(), at(5)).unwrap(),
            Inserted::Discarded("call_objection")
        ));
        assert_eq!(catalog.recording(&late.id).unwrap(), Lookup::NotFound);
    }

    #[test]
    fn insert_lookup_duplicate_and_shred() {
        let (_dir, catalog) = open_temp();
        let first = row(1, 100);
        assert!(matches!(
            catalog.insert_recording(&first, draft(), at(5)).unwrap(),
            Inserted::New(_)
        ));
        let again = row(1, 200);
        match catalog.insert_recording(&again, draft(), at(6)).unwrap() {
            Inserted::Duplicate(existing) => assert_eq!(existing.id, first.id),
            Inserted::New(_) | Inserted::Discarded(_) => panic!("duplicate call id accepted"),
        }
        assert_eq!(
            catalog.recording(&first.id).unwrap(),
            Lookup::Found(Box::new(first.clone()))
        );
        assert_eq!(catalog.recording(&again.id).unwrap(), Lookup::NotFound);
        assert!(
            catalog
                .shred_recording(
                    &first.id,
                    "retention",
                    AuditDraft::system("recording.purge", ""),
                    at(7)
                )
                .unwrap()
        );
        match catalog.recording(&first.id).unwrap() {
            Lookup::Deleted(tomb) => assert_eq!(
                (tomb.reason.as_str(), tomb.deleted_at),
                ("retention", at(7))
            ),
            other => panic!("expected a tombstone, got {other:?}"),
        }
        assert_eq!(catalog.recording_counts().unwrap(), (0, 0, 1));
        catalog.checkpoint().unwrap();
    }

    #[test]
    fn search_pages_newest_first_with_a_cursor() {
        let (_dir, catalog) = open_temp();
        for n in 0..25u8 {
            catalog
                .insert_recording(&row(n, 1000 + i64::from(n) / 2), draft(), at(5))
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = catalog
                .search_recordings(&RecordingFilter::default(), cursor, 10)
                .unwrap();
            if page.is_empty() {
                break;
            }
            let last = page.last().unwrap();
            cursor = Some(RecordingCursor {
                started_at: last.started_at,
                id: last.id,
            });
            seen.extend(page);
        }
        assert_eq!(seen.len(), 25);
        assert!(
            seen.windows(2)
                .all(|w| (w[0].started_at, w[0].id) > (w[1].started_at, w[1].id))
        );
        let filtered = RecordingFilter {
            from: Some(at(1010)),
            ..RecordingFilter::default()
        };
        assert_eq!(
            catalog
                .search_recordings(&filtered, None, 100)
                .unwrap()
                .len(),
            5
        );
        let other_caller = RecordingFilter {
            caller_hmac: Some([9; 32]),
            ..RecordingFilter::default()
        };
        assert!(
            catalog
                .search_recordings(&other_caller, None, 100)
                .unwrap()
                .is_empty()
        );
    }
}
