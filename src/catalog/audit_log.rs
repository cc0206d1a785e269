//! SQL of the audit table: append (inside the caller's transaction, so the entry commits with
//! the action), batches for verification, filtered queries, the anchor of a pruned chain.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::audit::chain::{AuditDraft, AuditEntry, GENESIS, Outcome};
use crate::catalog::{AuditFilter, CatalogError, Conditions, digest, from_secs, secs, sql};

/// Appends `draft` after the current head, in `tx`. Returns the new entry's seq.
pub(crate) fn append(
    tx: &Transaction<'_>,
    draft: AuditDraft,
    at: jiff::Timestamp,
) -> Result<u64, CatalogError> {
    // The recorded head, not the last row: after entries were cut off the end, the next one
    // still links to the real head, and the gap shows.
    let (prev_seq, prev_hash) = match recorded_head(tx)? {
        Some(head) => head,
        None => match head(tx)? {
            Some(head) => head,
            None => match anchor(tx)? {
                Some(anchor) => anchor,
                None => (0, GENESIS),
            },
        },
    };
    let entry = AuditEntry::seal(prev_seq + 1, at, draft, prev_hash);
    tx.prepare_cached(
        "INSERT INTO audit (seq, at, actor, role, action, object, purpose, outcome, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            entry.seq as i64,
            secs(entry.at),
            entry.actor,
            entry.role,
            entry.action,
            entry.object,
            entry.purpose,
            entry.outcome.as_str(),
            entry.detail,
            entry.prev_hash.as_slice(),
            entry.hash.as_slice(),
        ])
    })
    .map_err(sql("audit append"))?;
    tx.prepare_cached(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )
    .and_then(|mut stmt| stmt.execute(params![entry.seq as i64, entry.hash.as_slice()]))
    .map_err(sql("audit head"))?;
    Ok(entry.seq)
}

/// The head written with the last entry appended (see `append`).
pub(crate) fn recorded_head(conn: &Connection) -> Result<Option<(u64, [u8; 32])>, CatalogError> {
    seq_and_hash(
        conn,
        "SELECT seq, hash FROM audit_head WHERE id = 1",
        "audit head",
    )
}

/// The newest entry left in the table.
pub(crate) fn head(conn: &Connection) -> Result<Option<(u64, [u8; 32])>, CatalogError> {
    seq_and_hash(
        conn,
        "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
        "audit hash",
    )
}

/// Where the chain starts once old entries were pruned.
pub(crate) fn anchor(conn: &Connection) -> Result<Option<(u64, [u8; 32])>, CatalogError> {
    seq_and_hash(
        conn,
        "SELECT seq, hash FROM audit_anchor WHERE id = 1",
        "audit anchor",
    )
}

/// The one `(seq, hash)` row `query` selects, if any.
fn seq_and_hash(
    conn: &Connection,
    query: &str,
    what: &'static str,
) -> Result<Option<(u64, [u8; 32])>, CatalogError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(query)
        .and_then(|mut stmt| {
            stmt.query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(sql(what))?;
    match row {
        Some((seq, hash)) => Ok(Some((seq as u64, digest(hash, what)?))),
        None => Ok(None),
    }
}

const COLUMNS: &str =
    "seq, at, actor, role, action, object, purpose, outcome, detail, prev_hash, hash";

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AuditEntry, CatalogError>> {
    let seq: i64 = row.get(0)?;
    let at: i64 = row.get(1)?;
    let outcome: String = row.get(7)?;
    let prev_hash: Vec<u8> = row.get(9)?;
    let hash: Vec<u8> = row.get(10)?;
    let (actor, role, action, object, purpose, detail) = (
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(8)?,
    );
    Ok((|| {
        Ok(AuditEntry {
            seq: seq as u64,
            at: from_secs(at)?,
            actor,
            role,
            action,
            object,
            purpose,
            // An unknown outcome is kept as "denied" text-wise by failing the hash check later;
            // map it so verification names the entry instead of failing the whole query.
            outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Denied),
            detail,
            prev_hash: digest(prev_hash, "audit prev_hash")?,
            hash: digest(hash, "audit hash")?,
        })
    })())
}

/// The audit table as one read transaction saw it (`Catalog::audit_snapshot`).
pub struct AuditView<'c> {
    pub(super) conn: &'c Connection,
}

impl AuditView<'_> {
    /// The (seq, hash) the chain starts after, once old entries have been pruned.
    pub fn anchor(&self) -> Result<Option<(u64, [u8; 32])>, CatalogError> {
        anchor(self.conn)
    }

    /// Entries with `seq > after`, oldest first.
    pub fn batch(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, CatalogError> {
        batch(self.conn, after, limit)
    }

    /// The (seq, hash) recorded with the last entry appended: where the chain must end.
    pub fn recorded_head(&self) -> Result<Option<(u64, [u8; 32])>, CatalogError> {
        recorded_head(self.conn)
    }
}

pub(crate) fn batch(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<AuditEntry>, CatalogError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))
        .map_err(sql("audit batch"))?;
    let rows = stmt
        .query_map(params![after as i64, limit as i64], entry_from_row)
        .map_err(sql("audit batch"))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(sql("audit batch"))??);
    }
    Ok(out)
}

pub(crate) fn query(
    conn: &Connection,
    filter: &AuditFilter,
    after: u64,
    limit: usize,
) -> Result<Vec<AuditEntry>, CatalogError> {
    let (query, conditions) = query_sql(filter, after, limit);
    let mut stmt = conn.prepare_cached(&query).map_err(sql("audit query"))?;
    let rows = stmt
        .query_map(conditions.values(), entry_from_row)
        .map_err(sql("audit query"))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(sql("audit query"))??);
    }
    Ok(out)
}

/// The SQL of a filtered audit query and its bound values (only the filters given: the entries
/// of one object come from `audit_by_object`).
pub(crate) fn query_sql(filter: &AuditFilter, after: u64, limit: usize) -> (String, Conditions) {
    let mut conditions = Conditions::default();
    let after = conditions.param(after as i64);
    conditions.and(format!("seq > {after}"));
    conditions.within("at", filter.from, filter.to);
    conditions.compare("actor", "=", filter.actor.clone());
    conditions.compare("action", "=", filter.action.clone());
    conditions.compare("object", "=", filter.object.clone());
    let limit = conditions.param(limit as i64);
    let query = format!(
        "SELECT {COLUMNS} FROM audit WHERE {} ORDER BY seq LIMIT {limit}",
        conditions.sql()
    );
    (query, conditions)
}

/// Deletes entries older than `before`, keeping the chain verifiable from an anchor: the
/// (seq, hash) of the newest deleted entry. Returns the number deleted.
pub(crate) fn prune(tx: &Transaction<'_>, before: jiff::Timestamp) -> Result<u64, CatalogError> {
    let last: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT seq, hash FROM audit WHERE at < ?1 ORDER BY seq DESC LIMIT 1",
            [secs(before)],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(sql("audit prune"))?;
    let Some((seq, hash)) = last else {
        return Ok(0);
    };
    let n = tx
        .execute("DELETE FROM audit WHERE seq <= ?1", [seq])
        .map_err(sql("audit prune"))?;
    tx.execute(
        "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        params![seq, hash],
    )
    .map_err(sql("audit anchor"))?;
    Ok(n as u64)
}
