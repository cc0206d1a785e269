//! Retention at scale, on the real disk: a catalog of 1 000 000 recordings of which 100 000 are
//! expired (each of those with a real, tiny vault blob), then
//!
//! - the purge (`retention::purge::run_once`) of the 100 000: time and records/s (target < 30 s);
//! - a hold placed on an account with 100 000 recordings (`Catalog::hold_place`), and its release;
//! - the ingest-time objection gate (`Objections::check`, and `Catalog::objection_for` alone)
//!   with 1 000 registered objections, averaged over 100 000 lookups (target < 50 µs).
//!
//! `fn main` (`harness = false`): each figure is one long operation, not a loop criterion could
//! sample. The data directory is created under the target directory (`CARGO_TARGET_TMPDIR`, the
//! real disk, not tmpfs) and removed at the end.
//!
//! Set-up: the catalog has no batch insert, and `insert_recording` commits (and fsyncs) once per
//! row; the bench measures that on a sample, then writes the rest of the rows through a second
//! SQLite connection in large transactions (same columns, same values as `insert_recording`,
//! without the per-row ingest audit entry). Blob files are written in the vault's real format at
//! their real paths, without an fsync each, then synced once.
//!
//! Run: `cargo bench --bench purge` (optional argument: total recordings, default 1 000 000;
//! a tenth of them expire, a tenth are on the held account).

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use callguard::audit::chain::{AuditDraft, Outcome};
use callguard::catalog::Catalog;
use callguard::catalog::policy::{HoldPlacement, HoldSelector};
use callguard::catalog::recordings::{AudioFacts, RecordingRow, RecordingState};
use callguard::config::RetentionConfig;
use callguard::config::units::Period;
use callguard::ingest::ACCOUNT_DOMAIN;
use callguard::ingest::metadata::PhoneNumber;
use callguard::keyring::Keyring;
use callguard::objections::{CALL_ID_DOMAIN, CALLER_DOMAIN, Objections, Source};
use callguard::retention::purge::run_once;
use callguard::vault::format::Header;
use callguard::vault::keys::{DataKey, MasterKey};
use callguard::vault::{BlobId, Vault};

const RETENTION: Period = Period::Months(6);
const HELD_ACCOUNT: &str = "ACC-HOLD";
const N_ACCOUNTS: u64 = 20_000;
const N_CALLERS: u64 = 200_000;
/// Rows inserted through `Catalog::insert_recording`, one transaction each, to measure it.
const N_API_SAMPLE: u64 = 1_000;
/// Rows per transaction of the bulk set-up.
const BULK_BATCH: u64 = 20_000;
const N_OBJECTIONS: u64 = 1_000;
const N_LOOKUPS: u64 = 100_000;
const DAY: i64 = 86_400;

fn main() -> Result<(), Box<dyn Error>> {
    let n_total = match std::env::args().nth(1).map(|arg| arg.parse::<u64>()) {
        Some(Ok(n)) if n >= 100 => n,
        _ => 1_000_000,
    };
    let dir = tempfile::Builder::new()
        .prefix("purge-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    println!("purge bench: data in {} (real disk)", dir.path().display());
    let result = run(dir.path(), n_total);
    let cleanup = Instant::now();
    drop(dir);
    println!("cleanup: {:.1} s", cleanup.elapsed().as_secs_f64());
    result
}

/// Which recordings are what: every tenth expires, every tenth (other) one is on the held account.
fn is_expired(n: u64) -> bool {
    n % 10 == 3
}

fn is_on_held_account(n: u64) -> bool {
    n % 10 == 7
}

fn caller_number(n: u64) -> String {
    format!("+3361{:07}", n % N_CALLERS)
}

fn plus_secs(at: jiff::Timestamp, secs: i64) -> jiff::Timestamp {
    at.checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(at)
}

/// Builds recording `n` as the ingest pipeline would: HMAC digests, a wrapped data key and
/// sealed metadata. Returns the row and its data key (for the blob).
fn recording(
    keyring: &Keyring,
    n: u64,
    now: jiff::Timestamp,
) -> Result<(RecordingRow, DataKey), Box<dyn Error>> {
    let id = BlobId::generate();
    let (key, wrapped_key) = keyring.new_recording_key(&id)?;
    let call_id = format!("call-{n}");
    let caller = caller_number(n);
    let account = match is_on_held_account(n) {
        true => HELD_ACCOUNT.to_owned(),
        false => format!("ACC-{:05}", n % N_ACCOUNTS),
    };
    // Expired: started 200 to 365 days ago; the others within the last 170 days.
    let age_days = match is_expired(n) {
        true => 200 + (n % 166) as i64,
        false => (n % 170) as i64,
    };
    let started_at = plus_secs(now, -age_days * DAY - (n % DAY as u64) as i64);
    let personal = serde_json::json!({
        "call_id": call_id, "caller": caller, "callee": null, "account": account, "operator": null,
    });
    let sealed_meta = key.seal(
        format!("{id}/meta").as_bytes(),
        personal.to_string().as_bytes(),
    )?;
    let row = RecordingRow {
        id,
        call_id_hmac: keyring.digest(CALL_ID_DOMAIN, &call_id),
        caller_hmac: Some(keyring.digest(CALLER_DOMAIN, &caller)),
        callee_hmac: None,
        account_hmac: Some(keyring.digest(ACCOUNT_DOMAIN, &account)),
        operator_hmac: None,
        alarm_case: None,
        direction: "inbound".to_owned(),
        started_at,
        retain_until: RETENTION.after(started_at),
        ingested_at: now,
        state: RecordingState::Stored,
        audio: AudioFacts {
            container: "wav".to_owned(),
            codec: "pcm_s16le".to_owned(),
            sample_rate: 8000,
            channels: 1,
            n_frames: 160,
            duration_ms: 20,
        },
        size: 364,
        sha256: [(n % 251) as u8; 32],
        wrapped_key,
        sealed_meta,
        pending_deletion: None,
    };
    Ok((row, key))
}

/// A tiny blob in the vault's format (header and one sealed chunk), at its real path.
fn write_blob(vault: &Vault, id: &BlobId, key: &DataKey) -> Result<(), Box<dyn Error>> {
    let mut nonce_prefix = [0u8; 7];
    nonce_prefix.copy_from_slice(&id.as_bytes()[9..16]);
    let header = Header {
        chunk_size: vault.chunk_size(),
        recording_id: *id.as_bytes(),
        nonce_prefix,
    };
    let mut chunk = vec![0x55u8; 64];
    let tag = header.seal_chunk(&key.cipher(), 0, true, &mut chunk)?;
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(&chunk);
    bytes.extend_from_slice(&tag);
    let path = vault.blob_path(id);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, bytes)?;
    Ok(())
}

/// The same statement as `Catalog::insert_recording`, on the set-up connection.
fn insert_raw(tx: &rusqlite::Transaction<'_>, row: &RecordingRow) -> rusqlite::Result<usize> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO recordings (id, call_id_hmac, caller_hmac, callee_hmac, account_hmac,
             operator_hmac, alarm_case, direction, started_at, retain_until, ingested_at, state,
             container, codec, sample_rate, channels, n_frames, duration_ms, size, sha256,
             wrapped_key, sealed_meta, pending_deletion)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                 ?19, ?20, ?21, ?22, ?23)",
    )?;
    stmt.execute(rusqlite::params![
        row.id.to_string(),
        row.call_id_hmac.as_slice(),
        row.caller_hmac.as_ref().map(|d| d.as_slice()),
        row.callee_hmac.as_ref().map(|d| d.as_slice()),
        row.account_hmac.as_ref().map(|d| d.as_slice()),
        row.operator_hmac.as_ref().map(|d| d.as_slice()),
        row.alarm_case,
        row.direction,
        row.started_at.as_second(),
        row.retain_until.as_second(),
        row.ingested_at.as_second(),
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
    ])
}

/// `Vault::remove` alone, on 1 000 blobs that are not in the catalog, in the same directory.
fn remove_cost(vault: &Vault, keyring: &Keyring) -> Result<Duration, Box<dyn Error>> {
    const N_SAMPLE: u32 = 1_000;
    let mut ids = Vec::new();
    for _ in 0..N_SAMPLE {
        let id = BlobId::generate();
        let (key, _) = keyring.new_recording_key(&id)?;
        write_blob(vault, &id, &key)?;
        ids.push(id);
    }
    let _ = std::process::Command::new("sync").status();
    let started = Instant::now();
    for id in &ids {
        vault.remove(id)?;
    }
    Ok(started.elapsed() / N_SAMPLE)
}

#[expect(
    clippy::disallowed_methods,
    reason = "bench set-up only: bulk rows through a second connection, the catalog has no batch insert"
)]
fn open_setup_connection(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    rusqlite::Connection::open(path)
}

fn run(root: &Path, n_total: u64) -> Result<(), Box<dyn Error>> {
    let now: jiff::Timestamp = "2027-06-15T12:00:00Z".parse()?;
    let catalog_path = root.join("catalog.sqlite");
    let catalog = Catalog::open(&catalog_path)?;
    let vault = Vault::open(&root.join("vault"))?;
    let keyring = Keyring::open(&MasterKey::generate()?, &catalog)?;

    // Set-up 1: a sample through the public API, one committed transaction per row.
    let started = Instant::now();
    let mut n_expired = 0u64;
    let n_sample = N_API_SAMPLE.min(n_total);
    for n in 0..n_sample {
        let (row, key) = recording(&keyring, n, now)?;
        if is_expired(n) {
            write_blob(&vault, &row.id, &key)?;
            n_expired += 1;
        }
        let draft = AuditDraft::new(
            "recorder",
            "recorder",
            "recording.ingest",
            &row.id.to_string(),
            Outcome::Allowed,
        );
        catalog.insert_recording(&row, draft, now)?;
    }
    let per_row = started.elapsed() / n_sample.max(1) as u32;
    println!(
        "set-up: Catalog::insert_recording, one transaction each: {:.2} ms/row ({:.0} rows/s); 1 000 000 rows that way would take {:.0} min",
        millis(per_row),
        1.0 / per_row.as_secs_f64(),
        per_row.as_secs_f64() * 1_000_000.0 / 60.0
    );

    // Set-up 2: the rest in large transactions.
    let started = Instant::now();
    let mut setup = open_setup_connection(&catalog_path)?;
    setup.busy_timeout(Duration::from_secs(10))?;
    let mut n = n_sample;
    while n < n_total {
        let end = (n + BULK_BATCH).min(n_total);
        let tx = setup.transaction()?;
        for m in n..end {
            let (row, key) = recording(&keyring, m, now)?;
            if is_expired(m) {
                write_blob(&vault, &row.id, &key)?;
                n_expired += 1;
            }
            insert_raw(&tx, &row)?;
        }
        tx.commit()?;
        n = end;
    }
    drop(setup);
    catalog.checkpoint()?;
    let synced = std::process::Command::new("sync").status();
    let n_held_account = (0..n_total).filter(|n| is_on_held_account(*n)).count();
    println!(
        "set-up: {n_total} recordings ({n_expired} expired with a blob file each, {n_held_account} on {HELD_ACCOUNT}) in {:.1} s{}",
        started.elapsed().as_secs_f64(),
        match synced {
            Ok(status) if status.success() => "",
            _ => " (sync failed: blob files may still be in the page cache)",
        }
    );

    // 1. The purge.
    let retention = RetentionConfig {
        recordings: RETENTION,
        quarantine: Period::Fixed(Duration::from_secs(30 * DAY as u64)),
        purge_interval: Duration::from_secs(300),
        audit: Period::Months(120),
    };
    let n_shards = std::fs::read_dir(vault.dir())?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name() != "quarantine")
        .count();
    println!("vault: the {n_expired} blob files sit in {n_shards} shard directories");
    let started = Instant::now();
    let dry = run_once(&catalog, &vault, &retention, "system", now, true)?;
    println!(
        "purge breakdown: dry run (candidates and decisions, no write) found {} in {:.2} s",
        dry.deleted.len(),
        started.elapsed().as_secs_f64()
    );
    let per_remove = remove_cost(&vault, &keyring)?;
    println!(
        "purge breakdown: Vault::remove (unlink + fsync of the directory) {:.2} ms per blob, {:.0} s for 100 000",
        millis(per_remove),
        per_remove.as_secs_f64() * 100_000.0
    );
    let started = Instant::now();
    let report = run_once(&catalog, &vault, &retention, "system", now, false)?;
    let elapsed = started.elapsed();
    let n_deleted = report.deleted.len();
    let for_100k = elapsed.mul_f64(100_000.0 / n_deleted.max(1) as f64);
    println!(
        "purge: {n_deleted} expired recordings deleted (of {n_total}) in {:.2} s = {:.0} records/s; for 100 000: {:.1} s (target < 30 s: {})",
        elapsed.as_secs_f64(),
        n_deleted as f64 / elapsed.as_secs_f64(),
        for_100k.as_secs_f64(),
        verdict(for_100k < Duration::from_secs(30)),
    );
    let (n_stored, _, n_tombstones) = catalog.recording_counts()?;
    let n_blobs_left = vault.recover()?.blobs.len();
    println!(
        "purge: afterwards {n_stored} recordings, {n_tombstones} tombstones, {n_blobs_left} blob files"
    );
    if n_deleted as u64 != n_expired || n_blobs_left != 0 {
        return Err(format!(
            "the purge deleted {n_deleted} of {n_expired} expired recordings, {n_blobs_left} blobs left"
        )
        .into());
    }

    // 2. A hold on an account with 100 000 recordings, and its release.
    let selector = HoldSelector::Account(keyring.digest(ACCOUNT_DOMAIN, HELD_ACCOUNT));
    let audit = |n: u64, _: usize| {
        AuditDraft::new(
            "legal-1",
            "legal",
            "hold.place",
            "hold_bench",
            Outcome::Allowed,
        )
        .detail(format!("{n} recordings"))
    };
    let started = Instant::now();
    let placement = catalog.hold_place(
        "hold_bench",
        "case-1",
        "litigation",
        &selector,
        false,
        "legal-1",
        &audit,
        now,
    )?;
    let placed = started.elapsed();
    let HoldPlacement::Placed {
        covered: n_covered, ..
    } = placement
    else {
        return Err("the hold named an unknown recording".into());
    };
    println!(
        "hold placement on {HELD_ACCOUNT}: {n_covered} recordings covered in {:.0} ms (no target set)",
        millis(placed)
    );
    let deletion = |id: &BlobId, why: &str| {
        AuditDraft::new(
            "legal-1",
            "legal",
            "recording.delete",
            &id.to_string(),
            Outcome::Allowed,
        )
        .detail(why.to_owned())
    };
    let release_audit = AuditDraft::new(
        "legal-1",
        "legal",
        "hold.release",
        "hold_bench",
        Outcome::Allowed,
    );
    let started = Instant::now();
    catalog.hold_release(
        "hold_bench",
        "settled",
        "legal-1",
        release_audit,
        &deletion,
        now,
    )?;
    println!(
        "hold release of those {n_covered}: {:.0} ms (no target set)",
        millis(started.elapsed())
    );

    // 1 bis. The catalog side of the purge alone: 32 days later another ~10 % expire, rows
    // without blob files (`Vault::remove` of an absent blob returns at once, no fsync).
    let later = plus_secs(now, 32 * DAY);
    let started = Instant::now();
    let report = run_once(&catalog, &vault, &retention, "system", later, false)?;
    let elapsed = started.elapsed();
    println!(
        "purge, blobs absent (catalog side only: candidates, shredding, tombstones, audit, checkpoint): {} deleted in {:.2} s = {:.0} records/s",
        report.deleted.len(),
        elapsed.as_secs_f64(),
        report.deleted.len() as f64 / elapsed.as_secs_f64()
    );

    // 3. The ingest-time objection gate, with 1 000 objections registered.
    let registry = Objections {
        catalog: &catalog,
        vault: &vault,
        keyring: &keyring,
    };
    let started = Instant::now();
    let mut objected = Vec::new();
    for n in 0..N_OBJECTIONS {
        // Numbers with no recording: registering deletes nothing, the catalog keeps its size.
        let number = PhoneNumber::parse(&format!("+3362{n:07}"))?;
        registry.register(&number, Source::Letter, "ref", "dpo-1", "dpo", now)?;
        objected.push(number);
    }
    println!(
        "set-up: {N_OBJECTIONS} objections registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // One lookup in ten is for an objecting caller, the others for callers in the catalog.
    let callers: Vec<PhoneNumber> = (0..N_LOOKUPS)
        .map(|n| match n % 10 {
            0 => Ok(objected[(n / 10 % N_OBJECTIONS) as usize].clone()),
            _ => PhoneNumber::parse(&caller_number(n * 7919)),
        })
        .collect::<Result<_, _>>()?;
    let call_ids: Vec<String> = (0..N_LOOKUPS).map(|n| format!("new-call-{n}")).collect();
    let started = Instant::now();
    let mut n_refused = 0u64;
    for (caller, call_id) in callers.iter().zip(&call_ids) {
        if registry.check(Some(caller), call_id, now)?.is_some() {
            n_refused += 1;
        }
    }
    let per_check = started.elapsed() / N_LOOKUPS as u32;
    println!(
        "objection check (Objections::check, with the HMACs): {:.1} µs per call over {N_LOOKUPS} lookups, {n_refused} refused (target < 50 µs: {})",
        micros(per_check),
        verdict(per_check < Duration::from_micros(50)),
    );
    let digests: Vec<([u8; 32], [u8; 32])> = callers
        .iter()
        .zip(&call_ids)
        .map(|(caller, call_id)| {
            (
                keyring.digest(CALLER_DOMAIN, caller.as_str()),
                keyring.digest(CALL_ID_DOMAIN, call_id),
            )
        })
        .collect();
    let started = Instant::now();
    for (caller, call) in &digests {
        catalog.objection_for(Some(caller), call, now)?;
    }
    let per_lookup = started.elapsed() / N_LOOKUPS as u32;
    println!(
        "objection check (Catalog::objection_for, digests precomputed): {:.1} µs per call (target < 50 µs: {})",
        micros(per_lookup),
        verdict(per_lookup < Duration::from_micros(50)),
    );
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    match met {
        true => "met",
        false => "MISSED",
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000_000.0
}
