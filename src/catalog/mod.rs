//! The catalog: the only user of SQLite. Owns the connection and its pragmas (WAL,
//! `synchronous=FULL`, `secure_delete`, foreign keys), versioned migrations, transactions, and
//! every SQL statement of the crate, grouped by domain (`users`, `recordings`, `audit_log`).
//! Personal values are stored sealed (encrypted) or as HMAC lookup digests, never in clear.
//! Methods are blocking: async code calls them through `Catalog::call` (a blocking thread),
//! except a few indexed one-row reads that cost less than the hand-off (the role of a request's
//! certificate, the ingest gate's lookups), and no `await` happens while a connection is
//! borrowed. Writes go through the one writer connection; reads run on reader connections
//! beside it (WAL readers see the last commit and never wait for one, nor for a commit's
//! fsync), so a read in place never queues behind the writer.

pub mod alarms;
mod audit_log;

pub use audit_log::AuditView;
mod group;
mod migrations;
pub mod policy;
pub mod recordings;
pub mod users;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::audit::AuditReceipt;
use crate::audit::chain::{AuditDraft, AuditEntry};

/// Why the catalog refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot open the catalog {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "catalog schema version {found} is newer than this build knows ({known}); refusing to touch it"
    )]
    FutureSchema { found: i64, known: i64 },
    #[error("catalog query failed ({what}): {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("catalog row is corrupt ({what})")]
    Corrupt { what: String },
    #[error("the catalog task failed: {0}")]
    Task(String),
}

impl CatalogError {
    /// True when SQLite could not write because the file system is full (`SQLITE_FULL`, from
    /// the database, its WAL or a checkpoint). The transaction was rolled back and nothing
    /// changed: the same work succeeds once space returns (the API answers 507).
    pub fn is_storage_full(&self) -> bool {
        let source = match self {
            CatalogError::Open { source, .. } | CatalogError::Sql { source, .. } => source,
            CatalogError::Corrupt { .. }
            | CatalogError::FutureSchema { .. }
            | CatalogError::Task(_) => return false,
        };
        source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
    }
}

/// A `WHERE` clause made of the filters a search was given, and nothing else: the query
/// planner then picks the index of the most selective one. The `(?1 IS NULL OR col = ?1)` form
/// hides every index from it, so that a search for one call id, or for an account with no
/// recording, read the whole table.
#[derive(Default)]
pub(crate) struct Conditions {
    clauses: Vec<String>,
    values: Vec<rusqlite::types::Value>,
}

impl Conditions {
    /// Binds `value` and returns its placeholder (`?N`).
    pub(crate) fn param(&mut self, value: impl Into<rusqlite::types::Value>) -> String {
        self.values.push(value.into());
        format!("?{}", self.values.len())
    }

    /// Adds a condition, written with placeholders from `param`.
    pub(crate) fn and(&mut self, clause: String) {
        self.clauses.push(clause);
    }

    /// Adds `column op value`, when there is a value (a filter that was given).
    pub(crate) fn compare<V: Into<rusqlite::types::Value>>(
        &mut self,
        column: &str,
        op: &str,
        value: Option<V>,
    ) {
        if let Some(value) = value {
            let value = self.param(value);
            self.and(format!("{column} {op} {value}"));
        }
    }

    /// Adds the bounds given of a time range on `column`, both included (whole seconds).
    pub(crate) fn within(
        &mut self,
        column: &str,
        from: Option<jiff::Timestamp>,
        to: Option<jiff::Timestamp>,
    ) {
        self.compare(column, ">=", from.map(secs));
        self.compare(column, "<=", to.map(secs));
    }

    /// The conditions joined with `AND` (`1` when there are none).
    pub(crate) fn sql(&self) -> String {
        match self.clauses.is_empty() {
            true => "1".to_owned(),
            false => self.clauses.join(" AND "),
        }
    }

    pub(crate) fn values(
        &self,
    ) -> rusqlite::ParamsFromIter<std::slice::Iter<'_, rusqlite::types::Value>> {
        rusqlite::params_from_iter(self.values.iter())
    }
}

pub(crate) fn sql(what: &'static str) -> impl FnOnce(rusqlite::Error) -> CatalogError {
    move |source| CatalogError::Sql { what, source }
}

/// Idle reader connections kept for the next reads; more are opened while reads overlap.
const IDLE_READERS: usize = 8;

/// A handle on the catalog database. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    /// One connection, serialised: SQLite has one writer anyway, and `synchronous=FULL`
    /// commits are the durability point of every acknowledged action.
    conn: Arc<Mutex<Connection>>,
    /// Idle read-only connections (`read`), opened on demand.
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Writes waiting for the next group commit (`group`).
    group: group::Queue,
    path: PathBuf,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish()
    }
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path` and migrates it to the current schema.
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let open_error = |source| CatalogError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = connect(path, OpenFlags::SQLITE_OPEN_CREATE).map_err(open_error)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA secure_delete = ON;
             PRAGMA foreign_keys = ON;",
        )
        .map_err(open_error)?;
        migrations::migrate(&mut conn)?;
        restrict_mode(path);
        Ok(Catalog {
            conn: Arc::new(Mutex::new(conn)),
            readers: Arc::default(),
            group: group::Queue::default(),
            path: path.to_owned(),
        })
    }

    fn idle_readers(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle reader connection, or a new one; `read` gives it back.
    fn reader(&self) -> Result<Connection, CatalogError> {
        let idle = self.idle_readers().pop();
        match idle {
            Some(conn) => Ok(conn),
            None => {
                let conn = connect(&self.path, OpenFlags::empty()).map_err(|source| {
                    CatalogError::Open {
                        path: self.path.clone(),
                        source,
                    }
                })?;
                // Deny by default: a reader that tried to write would fail, not write.
                conn.execute_batch("PRAGMA query_only = ON;")
                    .map_err(sql("open reader"))?;
                Ok(conn)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs blocking catalog work on a blocking thread.
    pub async fn call<T, F>(&self, work: F) -> Result<T, CatalogError>
    where
        T: Send + 'static,
        F: FnOnce(&Catalog) -> Result<T, CatalogError> + Send + 'static,
    {
        let catalog = self.clone();
        match tokio::task::spawn_blocking(move || work(&catalog)).await {
            Ok(result) => result,
            Err(join) => Err(CatalogError::Task(join.to_string())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction: all of it commits, or none.
    pub(crate) fn write<T>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin"))?;
        let value = work(&tx)?;
        tx.commit().map_err(sql("commit"))?;
        Ok(value)
    }

    /// Runs read-only `work` on a consistent snapshot: the last commit, on a reader connection
    /// (never waiting for the writer).
    pub(crate) fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let mut conn = self.reader()?;
        let value = snapshot(&mut conn, work);
        let mut idle = self.idle_readers();
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        value
    }

    /// Appends one audit entry in its own transaction. The receipt proves it is committed.
    pub fn audit(
        &self,
        draft: AuditDraft,
        at: jiff::Timestamp,
    ) -> Result<AuditReceipt, CatalogError> {
        let seq = self.write_grouped(move |tx| audit_log::append(tx, draft, at))?;
        Ok(AuditReceipt::committed(seq))
    }

    /// Appends the entry of a read of recording `id` if the recording is still there when the
    /// entry commits; `None` (nothing appended) if a deletion committed first. A read is thus
    /// never audited as allowed after the recording's deletion.
    pub fn audit_read(
        &self,
        id: &crate::vault::BlobId,
        draft: AuditDraft,
        at: jiff::Timestamp,
    ) -> Result<Option<AuditReceipt>, CatalogError> {
        let id = *id;
        let seq = self.write_grouped(move |tx| match recordings::exists_in(tx, &id)? {
            true => audit_log::append(tx, draft, at).map(Some),
            false => Ok(None),
        })?;
        Ok(seq.map(AuditReceipt::committed))
    }

    /// Entries with `seq > after`, oldest first.
    pub fn audit_batch(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, CatalogError> {
        self.read(|conn| audit_log::batch(conn, after, limit))
    }

    /// Entries matching a filter, oldest first, for the API and `audit export`.
    pub fn audit_query(
        &self,
        filter: &AuditFilter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, CatalogError> {
        self.read(|conn| audit_log::query(conn, filter, after, limit))
    }

    /// Runs `walk` over one consistent view of the audit table (a single read transaction):
    /// entries a running server appends or prunes meanwhile move neither end of what it sees.
    /// A long walk holds back the WAL checkpoint for its duration, never a writer.
    pub fn audit_snapshot<T, E: From<CatalogError>>(
        &self,
        walk: impl FnOnce(&AuditView<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut outcome = None;
        self.read(|conn| {
            outcome = Some(walk(&AuditView { conn }));
            Ok(())
        })?;
        outcome.unwrap_or_else(|| Err(CatalogError::Task("audit snapshot: no walk".into()).into()))
    }

    /// Deletes audit entries older than `before` (retention.audit), keeping an anchor so the
    /// rest of the chain still verifies. Returns how many were deleted.
    pub fn prune_audit(&self, before: jiff::Timestamp) -> Result<u64, CatalogError> {
        self.write(|tx| audit_log::prune(tx, before))
    }

    /// The newest entry's (seq, hash).
    pub fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, CatalogError> {
        self.read(audit_log::head)
    }

    /// Flushes the WAL into the database and truncates it, so that pages holding deleted keys
    /// (already zeroed by `secure_delete`) do not survive in the log.
    pub fn checkpoint(&self) -> Result<(), CatalogError> {
        let conn = self.lock();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(sql("wal checkpoint"))
    }

    /// The random index secret, wrapped; created on first use by `keyring_init`.
    pub fn keyring_get(&self, name: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT wrapped FROM keyring WHERE name = ?1")
                .map_err(sql("keyring get"))?;
            let mut rows = stmt.query([name]).map_err(sql("keyring get"))?;
            match rows.next().map_err(sql("keyring get"))? {
                Some(row) => Ok(Some(row.get(0).map_err(sql("keyring get"))?)),
                None => Ok(None),
            }
        })
    }

    /// Stores `wrapped` under `name` unless a value exists; returns the stored value.
    pub fn keyring_init(&self, name: &str, wrapped: &[u8]) -> Result<Vec<u8>, CatalogError> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO keyring (name, wrapped) VALUES (?1, ?2)",
                rusqlite::params![name, wrapped],
            )
            .map_err(sql("keyring init"))?;
            tx.query_row(
                "SELECT wrapped FROM keyring WHERE name = ?1",
                [name],
                |row| row.get(0),
            )
            .map_err(sql("keyring init"))
        })
    }
}

/// `work` in a read transaction of `conn`.
fn snapshot<T>(
    conn: &mut Connection,
    work: impl FnOnce(&Connection) -> Result<T, CatalogError>,
) -> Result<T, CatalogError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Deferred)
        .map_err(sql("begin read"))?;
    let value = work(&tx)?;
    tx.finish().map_err(sql("end read"))?;
    Ok(value)
}

/// A connection of the catalog's database, with the settings every connection shares: a busy
/// timeout, untrusted schema, temporary data in memory, a statement cache for the hot
/// statements. `extra` adds open flags (the writer may create the file; readers never do).
///
/// `temp_store = MEMORY` keeps statement journals in memory: a grouped commit's savepoints
/// journal the pages earlier writes of the group dirtied, and past 64 KiB SQLite spilled them to
/// an unlinked file under `/var/tmp`. That cost a file creation and dozens of writes per group,
/// and left copies of catalog pages (wrapped keys of recordings being deleted among them) in
/// the free blocks of a file system outside the data directory, where neither `secure_delete`
/// nor the WAL checkpoint after a purge reaches.
#[expect(
    clippy::disallowed_methods,
    reason = "this is the catalog's own connection opener"
)]
fn connect(path: &Path, extra: OpenFlags) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | extra;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA trusted_schema = OFF;
         PRAGMA temp_store = MEMORY;",
    )?;
    // The ingest path alone keeps about a dozen statements hot (the default cache is 16).
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Filters of `GET /v1/audit` and `audit export`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub from: Option<jiff::Timestamp>,
    pub to: Option<jiff::Timestamp>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Entries about this object id.
    pub object: Option<String>,
}

/// The catalog and its WAL hold wrapped keys and digests: owner-only.
fn restrict_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ =
            std::fs::set_permissions(PathBuf::from(name), std::fs::Permissions::from_mode(0o600));
    }
}

/// Unix seconds for storage.
pub(crate) fn secs(at: jiff::Timestamp) -> i64 {
    at.as_second()
}

/// Back from storage.
pub(crate) fn from_secs(value: i64) -> Result<jiff::Timestamp, CatalogError> {
    jiff::Timestamp::from_second(value).map_err(|_| CatalogError::Corrupt {
        what: format!("timestamp {value}"),
    })
}

/// A 32-byte digest column.
pub(crate) fn digest(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], CatalogError> {
    bytes.try_into().map_err(|_| CatalogError::Corrupt {
        what: format!("{what} is not 32 bytes"),
    })
}

impl Catalog {
    /// Applies `rewrap(context, wrapped) -> new wrapped` to every stored wrapped key (keyring
    /// entries, recording keys, and any other sealed object's key), in one transaction, audited.
    pub fn rewrap_all_keys(
        &self,
        rewrap: &RewrapFn<'_>,
        actor: &str,
        now: jiff::Timestamp,
    ) -> Result<u64, crate::keyring::KeyringError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin"))?;
        let mut n = 0u64;
        for (table, key_column, context_sql) in KEY_TABLES {
            let rows: Vec<(String, Vec<u8>)> = {
                let mut stmt = tx
                    .prepare(&format!(
                        "SELECT rowid, {context_sql}, {key_column} FROM {table}"
                    ))
                    .map_err(sql("key rotation read"))?;
                let mapped = stmt
                    .query_map([], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, Vec<u8>>(2)?,
                        ))
                    })
                    .map_err(sql("key rotation read"))?;
                let mut out = Vec::new();
                for row in mapped {
                    let (rowid, context, wrapped) = row.map_err(sql("key rotation read"))?;
                    out.push((format!("{rowid}\u{0}{context}"), wrapped));
                }
                out
            };
            for (tagged, wrapped) in rows {
                let (rowid, context) = tagged.split_once('\u{0}').unwrap_or(("0", ""));
                let new = rewrap(context.as_bytes(), &wrapped)
                    .map_err(crate::keyring::KeyringError::Key)?;
                tx.execute(
                    &format!("UPDATE {table} SET {key_column} = ?1 WHERE rowid = ?2"),
                    rusqlite::params![new, rowid],
                )
                .map_err(sql("key rotation write"))?;
                n += 1;
            }
        }
        audit_log::append(
            &tx,
            AuditDraft::new(
                actor,
                "",
                "keys.rotate",
                "",
                crate::audit::chain::Outcome::Allowed,
            )
            .detail(format!("{n} keys re-wrapped")),
            now,
        )?;
        tx.commit().map_err(sql("commit"))?;
        Ok(n)
    }
}

/// Re-wraps one key: (context, wrapped) → wrapped under the new master key.
pub type RewrapFn<'a> = dyn Fn(&[u8], &[u8]) -> Result<Vec<u8>, crate::vault::keys::KeyError> + 'a;

/// Every table holding a wrapped key: (table, key column, SQL expression of the wrap context).
const KEY_TABLES: &[(&str, &str, &str)] = &[
    ("keyring", "wrapped", "'callguard index secret'"),
    ("recordings", "wrapped_key", "id"),
    ("quarantine", "wrapped_key", "'quarantine/' || id"),
    ("alarm_cases", "wrapped_key", "'alarm/' || id"),
    (
        "contact_lists",
        "wrapped_key",
        "'contacts/' || lower(hex(account_hmac))",
    ),
];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::chain::Outcome;

    pub(crate) fn open_temp() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        (dir, catalog)
    }

    pub(crate) fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn pragmas_are_set() {
        let (_dir, catalog) = open_temp();
        let conn = catalog.lock();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let secure: i64 = conn
            .query_row("PRAGMA secure_delete", [], |r| r.get(0))
            .unwrap();
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), secure, fk, sync), ("wal", 1, 1, 2));
        drop(conn);
        // Writer and readers alike keep temporary data (statement journals) in memory.
        for temp_store in [
            catalog
                .lock()
                .query_row("PRAGMA temp_store", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            catalog
                .read(|conn| {
                    conn.query_row("PRAGMA temp_store", [], |r| r.get(0))
                        .map_err(sql("temp_store"))
                })
                .unwrap(),
        ] {
            assert_eq!(temp_store, 2);
        }
    }

    /// What SQLite's planner does for `query`: one line per step.
    fn query_plan(catalog: &Catalog, query: &str, conditions: &Conditions) -> String {
        let conn = catalog.lock();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {query}"))
            .unwrap();
        let steps: Vec<String> = stmt
            .query_map(conditions.values(), |row| row.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        steps.join("; ")
    }

    #[test]
    fn selective_searches_read_an_index_not_the_table() {
        use crate::catalog::recordings::{RecordingCursor, RecordingFilter, search_query};
        let (_dir, catalog) = open_temp();
        let digest = Some([7u8; 32]);
        let cursor = Some(RecordingCursor {
            started_at: at(1_800_000_000),
            id: crate::vault::BlobId::generate(),
        });
        for (what, filter, index) in [
            (
                "call id",
                RecordingFilter {
                    call_id_hmac: digest,
                    ..Default::default()
                },
                "call_id_hmac",
            ),
            (
                "account",
                RecordingFilter {
                    account_hmac: digest,
                    ..Default::default()
                },
                "recordings_by_account",
            ),
            (
                "caller",
                RecordingFilter {
                    caller_hmac: digest,
                    ..Default::default()
                },
                "recordings_by_caller",
            ),
            (
                "operator",
                RecordingFilter {
                    operator_hmac: digest,
                    ..Default::default()
                },
                "recordings_by_operator",
            ),
        ] {
            for cursor in [None, cursor] {
                let (query, conditions) = search_query(&filter, cursor, 50);
                let plan = query_plan(&catalog, &query, &conditions);
                assert!(
                    plan.contains(index) && !plan.contains("SCAN recordings"),
                    "{what}: {plan}"
                );
            }
        }
        // A person or an account: their newest rows first, from the index, without a sort.
        let filter = RecordingFilter {
            account_hmac: digest,
            ..Default::default()
        };
        let plan = query_plan(
            &catalog,
            &search_query(&filter, None, 50).0,
            &search_query(&filter, None, 50).1,
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        // The audit entries of one recording (exports gather them for each recording).
        let filter = AuditFilter {
            object: Some("0123".into()),
            ..Default::default()
        };
        let (query, conditions) = audit_log::query_sql(&filter, 0, 1000);
        let plan = query_plan(&catalog, &query, &conditions);
        assert!(plan.contains("audit_by_object"), "{plan}");
    }

    #[test]
    fn an_audit_snapshot_does_not_see_entries_appended_while_it_is_walked() {
        let (_dir, catalog) = open_temp();
        for n in 0..3 {
            catalog
                .audit(AuditDraft::system("test", "before"), at(1_800_000_000 + n))
                .unwrap();
        }
        catalog
            .audit_snapshot(|view| {
                let head = view.recorded_head()?;
                assert_eq!(head.map(|(seq, _)| seq), Some(3));
                let first = view.batch(0, 2)?;
                // A running server appends while `audit verify` is between two batches.
                catalog.audit(AuditDraft::system("test", "during"), at(1_800_000_010))?;
                let rest = view.batch(first[1].seq, 100)?;
                assert_eq!(first.len() + rest.len(), 3);
                assert_eq!(view.recorded_head()?, head);
                Ok::<_, CatalogError>(())
            })
            .unwrap();
        // The chain seen at one instant verifies; so does the longer one.
        assert_eq!(crate::audit::verify(&catalog).unwrap().n_entries, 4);
    }

    #[test]
    fn reads_see_the_last_commit_without_waiting_for_the_writer_and_cannot_write() {
        let (_dir, catalog) = open_temp();
        catalog
            .audit(AuditDraft::system("test", "first"), at(1_800_000_000))
            .unwrap();
        // The writer connection is busy (a commit's fsync, say): a read still answers, from
        // the last commit.
        let writer = catalog.lock();
        let seen = std::thread::scope(|scope| {
            scope
                .spawn(|| catalog.audit_batch(0, 10).unwrap().len())
                .join()
                .unwrap()
        });
        assert_eq!(seen, 1);
        drop(writer);
        catalog
            .audit(AuditDraft::system("test", "second"), at(1_800_000_001))
            .unwrap();
        assert_eq!(catalog.audit_batch(0, 10).unwrap().len(), 2);
        // Readers are query-only: a write slipped into a read fails and changes nothing.
        let write = catalog.read(|conn| {
            conn.execute(
                "INSERT INTO keyring (name, wrapped) VALUES ('slipped', x'00')",
                [],
            )
            .map_err(sql("insert"))
        });
        let Err(CatalogError::Sql { source, .. }) = write else {
            panic!("a reader wrote: {write:?}");
        };
        assert_eq!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ReadOnly)
        );
        assert_eq!(catalog.keyring_get("slipped").unwrap(), None);
        // Idle readers are kept, up to a bound.
        assert!((1..=IDLE_READERS).contains(&catalog.idle_readers().len()));
    }

    #[test]
    fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        let catalog = Catalog::open(&path).unwrap();
        catalog
            .audit(AuditDraft::system("test", "x"), at(1_800_000_000))
            .unwrap();
        drop(catalog);
        let catalog = Catalog::open(&path).unwrap();
        assert_eq!(catalog.audit_batch(0, 10).unwrap().len(), 1);
    }

    /// A catalog that cannot grow any more: SQLite answers `SQLITE_FULL` to the next write
    /// that needs a new page, as it does on a full file system.
    pub(crate) fn open_full() -> (tempfile::TempDir, Catalog) {
        let (dir, catalog) = open_temp();
        {
            let conn = catalog.lock();
            let n_pages: i64 = conn
                .query_row("PRAGMA page_count", [], |row| row.get(0))
                .unwrap();
            conn.query_row(
                &format!("PRAGMA max_page_count = {n_pages}"),
                [],
                |_| Ok(()),
            )
            .unwrap();
        }
        (dir, catalog)
    }

    /// An error from a catalog that is full.
    pub(crate) fn storage_full_error() -> CatalogError {
        let (_dir, catalog) = open_full();
        let detail = "x".repeat(64 * 1024);
        catalog
            .audit(AuditDraft::system("test", "fill").detail(detail), at(1))
            .expect_err("a full catalog refuses a write that needs new pages")
    }

    #[test]
    fn a_full_catalog_says_so_rolls_back_and_works_again_with_room() {
        let (_dir, catalog) = open_full();
        let big = || AuditDraft::system("test", "fill").detail("x".repeat(64 * 1024));
        let error = catalog.audit(big(), at(1)).unwrap_err();
        assert!(error.is_storage_full(), "{error}");
        assert!(catalog.audit_batch(0, 10).unwrap().is_empty());
        catalog
            .lock()
            .query_row("PRAGMA max_page_count = 1000000", [], |_| Ok(()))
            .unwrap();
        catalog.audit(big(), at(2)).unwrap();
        assert_eq!(catalog.audit_batch(0, 10).unwrap().len(), 1);
        let other = CatalogError::Corrupt {
            what: "not a full disk".into(),
        };
        assert!(!other.is_storage_full());
    }

    #[test]
    fn a_failed_transaction_leaves_no_audit_entry() {
        let (_dir, catalog) = open_temp();
        let result: Result<(), CatalogError> = catalog.write(|tx| {
            audit_log::append(
                tx,
                AuditDraft::new("a", "dpo", "recording.delete", "x", Outcome::Allowed),
                at(1),
            )?;
            Err(CatalogError::Corrupt {
                what: "simulated failure after the entry".into(),
            })
        });
        assert!(result.is_err());
        assert!(catalog.audit_batch(0, 10).unwrap().is_empty());
    }
}
