//! Versioned schema migrations, applied in order inside one transaction each; the version is
//! `PRAGMA user_version`. A catalog newer than this build is refused, never downgraded.

use rusqlite::Connection;

use crate::catalog::{CatalogError, sql};

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: foundation.
    "CREATE TABLE keyring (
         name TEXT PRIMARY KEY,
         wrapped BLOB NOT NULL
     ) STRICT;
     CREATE TABLE users (
         cn TEXT PRIMARY KEY,
         role TEXT NOT NULL,
         created_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE recordings (
         id TEXT PRIMARY KEY,
         call_id_hmac BLOB NOT NULL UNIQUE,
         caller_hmac BLOB,
         callee_hmac BLOB,
         account_hmac BLOB,
         operator_hmac BLOB,
         alarm_case TEXT,
         direction TEXT NOT NULL,
         started_at INTEGER NOT NULL,
         retain_until INTEGER NOT NULL,
         ingested_at INTEGER NOT NULL,
         state TEXT NOT NULL,
         container TEXT NOT NULL,
         codec TEXT NOT NULL,
         sample_rate INTEGER NOT NULL,
         channels INTEGER NOT NULL,
         n_frames INTEGER NOT NULL,
         duration_ms INTEGER NOT NULL,
         size INTEGER NOT NULL,
         sha256 BLOB NOT NULL,
         wrapped_key BLOB NOT NULL,
         sealed_meta BLOB NOT NULL,
         pending_deletion TEXT
     ) STRICT;
     CREATE INDEX recordings_by_start ON recordings (started_at, id);
     CREATE INDEX recordings_by_expiry ON recordings (retain_until);
     CREATE INDEX recordings_by_caller ON recordings (caller_hmac);
     CREATE INDEX recordings_by_account ON recordings (account_hmac);
     CREATE INDEX recordings_by_operator ON recordings (operator_hmac);
     CREATE INDEX recordings_by_case ON recordings (alarm_case);
     CREATE TABLE tombstones (
         id TEXT PRIMARY KEY,
         deleted_at INTEGER NOT NULL,
         reason TEXT NOT NULL
     ) STRICT;
     CREATE TABLE audit (
         seq INTEGER PRIMARY KEY,
         at INTEGER NOT NULL,
         actor TEXT NOT NULL,
         role TEXT NOT NULL,
         action TEXT NOT NULL,
         object TEXT NOT NULL,
         purpose TEXT,
         outcome TEXT NOT NULL,
         detail TEXT NOT NULL,
         prev_hash BLOB NOT NULL,
         hash BLOB NOT NULL
     ) STRICT;
     CREATE INDEX audit_by_time ON audit (at);
     CREATE TABLE audit_anchor (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         seq INTEGER NOT NULL,
         hash BLOB NOT NULL
     ) STRICT;",
    // 2: policy (objections, holds) and quarantine.
    "CREATE TABLE objections (
         id TEXT PRIMARY KEY,
         caller_hmac BLOB NOT NULL,
         source TEXT NOT NULL,
         reference TEXT NOT NULL,
         last_digits TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         withdrawn_at INTEGER
     ) STRICT;
     CREATE INDEX objections_active_by_caller ON objections (caller_hmac) WHERE withdrawn_at IS NULL;
     CREATE TABLE call_objections (
         call_id_hmac BLOB PRIMARY KEY,
         created_at INTEGER NOT NULL,
         expires_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE holds (
         id TEXT PRIMARY KEY,
         case_ref TEXT NOT NULL,
         reason TEXT NOT NULL,
         selector_kind TEXT NOT NULL,
         selector_hmac BLOB,
         selector_from INTEGER,
         selector_to INTEGER,
         include_future INTEGER NOT NULL,
         placed_by TEXT NOT NULL,
         placed_at INTEGER NOT NULL,
         released_at INTEGER,
         released_by TEXT,
         release_reason TEXT,
         covered_at_release INTEGER
     ) STRICT;
     -- A held recording's row cannot be deleted while the hold is active: holds win by
     -- construction (ON DELETE RESTRICT). Released holds drop their rows here.
     CREATE TABLE hold_recordings (
         hold_id TEXT NOT NULL REFERENCES holds (id),
         recording_id TEXT NOT NULL REFERENCES recordings (id) ON DELETE RESTRICT,
         PRIMARY KEY (hold_id, recording_id)
     ) STRICT;
     CREATE INDEX hold_recordings_by_recording ON hold_recordings (recording_id);
     CREATE TABLE quarantine (
         id TEXT PRIMARY KEY,
         reason TEXT NOT NULL,
         sealed_name BLOB NOT NULL,
         size INTEGER NOT NULL,
         sha256 BLOB NOT NULL,
         received_at INTEGER NOT NULL,
         retain_until INTEGER NOT NULL,
         wrapped_key BLOB NOT NULL
     ) STRICT;
     CREATE INDEX quarantine_by_expiry ON quarantine (retain_until);",
    // 3: alarm cases and trusted contacts.
    "CREATE TABLE alarm_cases (
         id TEXT PRIMARY KEY,
         account_hmac BLOB NOT NULL,
         sealed_account BLOB NOT NULL,
         wrapped_key BLOB NOT NULL,
         opened_at INTEGER NOT NULL,
         last_event_at INTEGER NOT NULL,
         closed_at INTEGER,
         closed_by TEXT,
         outcome TEXT
     ) STRICT;
     CREATE UNIQUE INDEX alarm_cases_one_open_per_account ON alarm_cases (account_hmac) WHERE closed_at IS NULL;
     CREATE TABLE alarm_events (
         case_id TEXT NOT NULL REFERENCES alarm_cases (id),
         at INTEGER NOT NULL,
         code TEXT NOT NULL,
         zone TEXT,
         source TEXT NOT NULL
     ) STRICT;
     CREATE INDEX alarm_events_by_case ON alarm_events (case_id, at);
     CREATE TABLE contact_lists (
         account_hmac BLOB PRIMARY KEY,
         wrapped_key BLOB NOT NULL,
         sealed_list BLOB NOT NULL,
         n_contacts INTEGER NOT NULL,
         updated_at INTEGER NOT NULL
     ) STRICT;",
    // 4: a deleted recording's call id digest stays with its tombstone, so that the same call
    // sent again (a recorder's retry, a spool file dropped again) is not stored anew.
    "ALTER TABLE tombstones ADD COLUMN call_id_hmac BLOB;
     CREATE INDEX tombstones_by_call ON tombstones (call_id_hmac) WHERE call_id_hmac IS NOT NULL;",
    // 5: the audit chain's head, written with each entry: entries cut off the end of the
    // chain no longer leave a shorter chain that verifies. And the callee index, and alarm
    // events' partition and line.
    "CREATE TABLE audit_head (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         seq INTEGER NOT NULL,
         hash BLOB NOT NULL
     ) STRICT;
     INSERT INTO audit_head (id, seq, hash) SELECT 1, seq, hash FROM audit ORDER BY seq DESC LIMIT 1;
     -- Subject access finds a person as the callee too.
     CREATE INDEX recordings_by_callee ON recordings (callee_hmac);
     -- An alarm event's partition or area, and the receiver line it came in on.
     ALTER TABLE alarm_events ADD COLUMN grp TEXT;
     ALTER TABLE alarm_events ADD COLUMN line TEXT;",
    // 6: a released hold keeps the list of what it covered (ids only): legal and the DPO can
    // still tell which recordings it held, and so why one outlived its retention.
    "CREATE TABLE released_hold_recordings (
         hold_id TEXT NOT NULL,
         recording_id TEXT NOT NULL,
         PRIMARY KEY (hold_id, recording_id)
     ) STRICT, WITHOUT ROWID;",
    // 7: searches by one person, account or operator read their rows in the listing's order
    // (newest first) from the index, instead of sorting every match; an export gathers each
    // recording's audit entries from an index instead of reading the whole log per recording.
    "DROP INDEX recordings_by_caller;
     DROP INDEX recordings_by_callee;
     DROP INDEX recordings_by_account;
     DROP INDEX recordings_by_operator;
     CREATE INDEX recordings_by_caller ON recordings (caller_hmac, started_at, id);
     CREATE INDEX recordings_by_callee ON recordings (callee_hmac, started_at, id);
     CREATE INDEX recordings_by_account ON recordings (account_hmac, started_at, id);
     CREATE INDEX recordings_by_operator ON recordings (operator_hmac, started_at, id);
     CREATE INDEX audit_by_object ON audit (object, seq);",
];

/// The schema version this build writes.
pub(crate) fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), CatalogError> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sql("schema version"))?;
    if found > current_version() {
        return Err(CatalogError::FutureSchema {
            found,
            known: current_version(),
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(sql("migration begin"))?;
        tx.execute_batch(migration).map_err(sql("migration"))?;
        tx.pragma_update(None, "user_version", index as i64 + 1)
            .map_err(sql("schema version"))?;
        tx.commit().map_err(sql("migration commit"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{AuditDraft, AuditEntry, GENESIS};
    use crate::catalog::Catalog;
    use crate::catalog::recordings::Lookup;
    use crate::vault::BlobId;

    const RECORDING: &str = "0123456789abcdef0123456789abcdef";

    /// A catalog as a build of schema `version` left it: that version's tables and rows written
    /// the way that build wrote them (three chained audit entries, or an anchor alone when
    /// `pruned`; a user, a recording, a tombstone and, from version 2, an active hold on the
    /// recording).
    fn catalog_at(path: &std::path::Path, version: usize, pruned: bool) -> (u64, [u8; 32]) {
        #[expect(
            clippy::disallowed_methods,
            reason = "test builds a catalog of an earlier schema"
        )]
        let mut conn = Connection::open(path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        for (index, migration) in MIGRATIONS[..version].iter().enumerate() {
            let tx = conn.transaction().unwrap();
            tx.execute_batch(migration).unwrap();
            tx.pragma_update(None, "user_version", index as i64 + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        conn.execute(
            "INSERT INTO users (cn, role, created_at) VALUES ('alice', 'supervisor', 1800000000)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO recordings (id, call_id_hmac, caller_hmac, direction, started_at,
                 retain_until, ingested_at, state, container, codec, sample_rate, channels,
                 n_frames, duration_ms, size, sha256, wrapped_key, sealed_meta)
             VALUES (?1, ?2, ?3, 'inbound', 1800000000, 1815000000, 1800000060, 'stored', 'wav',
                 'pcm_mulaw', 8000, 1, 480000, 60000, 480058, ?4, x'00', x'00')",
            rusqlite::params![RECORDING, [1u8; 32], [2u8; 32], [3u8; 32]],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO tombstones (id, deleted_at, reason) VALUES ('fedcba9876543210fedcba9876543210', 1800000100, 'objection')",
            [],
        )
        .unwrap();
        if version >= 2 {
            conn.execute_batch(&format!(
                "INSERT INTO holds (id, case_ref, reason, selector_kind, include_future, placed_by, placed_at)
                 VALUES ('h1', 'RG 26/00001', 'appeal', 'ids', 0, 'legal', 1800000200);
                 INSERT INTO hold_recordings (hold_id, recording_id) VALUES ('h1', '{RECORDING}');"
            ))
            .unwrap();
        }
        let mut head = (0, GENESIS);
        if pruned {
            head = (41, [7u8; 32]);
            conn.execute(
                "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2)",
                rusqlite::params![head.0 as i64, head.1],
            )
            .unwrap();
        } else {
            for n in 1..=3u64 {
                let at = jiff::Timestamp::from_second(1_800_000_000 + n as i64).unwrap();
                let entry = AuditEntry::seal(n, at, AuditDraft::system("test.entry", ""), head.1);
                conn.execute(
                    "INSERT INTO audit (seq, at, actor, role, action, object, purpose, outcome,
                         detail, prev_hash, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    rusqlite::params![
                        entry.seq as i64,
                        entry.at.as_second(),
                        entry.actor,
                        entry.role,
                        entry.action,
                        entry.object,
                        entry.purpose,
                        entry.outcome.as_str(),
                        entry.detail,
                        entry.prev_hash,
                        entry.hash,
                    ],
                )
                .unwrap();
                head = (entry.seq, entry.hash);
            }
        }
        // From version 5 on, each append also records the chain's head.
        if version >= 5 && !pruned {
            conn.execute(
                "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)",
                rusqlite::params![head.0 as i64, head.1],
            )
            .unwrap();
        }
        head
    }

    #[test]
    fn a_catalog_of_every_earlier_schema_upgrades_with_its_data_and_its_chain() {
        for version in 1..MIGRATIONS.len() {
            for pruned in [false, true] {
                let case = format!("from version {version}, pruned chain: {pruned}");
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("catalog.sqlite");
                let head = catalog_at(&path, version, pruned);

                let catalog = Catalog::open(&path).unwrap();
                let schema: i64 = catalog
                    .lock()
                    .query_row("PRAGMA user_version", [], |row| row.get(0))
                    .unwrap();
                assert_eq!(schema, current_version(), "{case}");
                let verified = crate::audit::verify(&catalog).unwrap();
                assert_eq!(
                    (verified.n_entries, verified.head),
                    (if pruned { 0 } else { 3 }, Some(head)),
                    "{case}"
                );
                // The next entry links to the old head, and the chain still verifies.
                let at = jiff::Timestamp::from_second(1_800_001_000).unwrap();
                let seq = catalog
                    .audit(AuditDraft::system("test.after_upgrade", ""), at)
                    .unwrap()
                    .seq();
                assert_eq!(seq, head.0 + 1, "{case}");
                let verified = crate::audit::verify(&catalog).unwrap();
                assert_eq!(
                    verified.head.map(|(seq, _)| seq),
                    Some(head.0 + 1),
                    "{case}"
                );

                let users = catalog.user_list().unwrap();
                assert_eq!(users.len(), 1, "{case}");
                assert_eq!(users[0].cn, "alice", "{case}");
                let id = BlobId::parse(RECORDING).unwrap();
                match catalog.recording(&id).unwrap() {
                    Lookup::Found(row) => {
                        assert_eq!(
                            (row.size, row.audio.duration_ms),
                            (480_058, 60_000),
                            "{case}"
                        )
                    }
                    other => panic!("{case}: the recording is gone: {other:?}"),
                }
                let deleted = BlobId::parse("fedcba9876543210fedcba9876543210").unwrap();
                assert!(
                    matches!(catalog.recording(&deleted).unwrap(), Lookup::Deleted(_)),
                    "{case}"
                );
                if version >= 2 {
                    assert_eq!(catalog.holds_of(&id).unwrap(), ["h1"], "{case}");
                }
            }
        }
    }

    #[test]
    fn a_future_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        drop(crate::catalog::Catalog::open(&path).unwrap());
        {
            #[expect(
                clippy::disallowed_methods,
                reason = "test writes a foreign schema version"
            )]
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 999).unwrap();
        }
        assert!(matches!(
            crate::catalog::Catalog::open(&path),
            Err(CatalogError::FutureSchema { found: 999, .. })
        ));
    }
}
