//! Issue 6, disk full, through the real server: the data directory (catalog and vault, SPEC §3
//! `storage.data_dir`) on a small tmpfs that the test mounts and fills. Uploads get `507
//! insufficient_storage` and leave nothing (SPEC §5.1); spool files wait in the spool, untouched
//! and not quarantined, and are ingested once space returns (SPEC §5.2); SQLite's own
//! `SQLITE_FULL` is a `507` too and rolls back; the service keeps answering; afterwards every
//! catalog recording has its blob and the other way round, the audit chain verifies and the
//! database passes `PRAGMA integrity_check`. Mounting needs root (CI runs as root): as another
//! user the tests say so and pass without running. Waits poll conditions with a deadline.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::ingest_http::{
    metadata, ok, runtime, sha256_hex, started_at, temp_files, tone_wav, vault_files,
};
use crate::support::client::{Client, Response};
use crate::support::{Instance, Setup, files_under, recording_blob_files};

/// What stays free while the disk is "nearly full": room for the catalog's WAL to grow by a
/// few commits (audited reads), none for any recording the test sends (1.3 MB and more).
const HEADROOM: u64 = 512 * 1024;

/// How long a condition may take to hold. The spool retries a failed file after 2 s, then
/// 4 s, 8 s ... up to 60 s (`RETRY_FIRST`, `RETRY_MAX` in `src/ingest/spool.rs`): space returns
/// right after the second failure, so the next attempt comes 4 (at worst 8) s later.
const PATIENCE: Duration = Duration::from_secs(30);

/// A tmpfs mounted over a directory, holding what the directory held before.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) over `dir` and copies `dir`'s
    /// former content into it. `None`, after saying why, when not running as root.
    fn mount_over(dir: &Path, size: &str) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("SKIPPED: the disk-full tests mount a tmpfs and need root (CI runs as root)");
            return None;
        }
        let aside = dir.with_extension("before-mount");
        std::fs::rename(dir, &aside).unwrap();
        std::fs::create_dir(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("tmpfs")
            .arg(dir)
            .status()
            .expect("mount (Debian package mount)");
        assert!(status.success(), "mount -t tmpfs on {}", dir.display());
        let tmpfs = Tmpfs {
            dir: dir.to_owned(),
        };
        let status = Command::new("cp")
            .arg("-a")
            .arg(aside.join("."))
            .arg(dir)
            .status()
            .expect("cp");
        assert!(status.success(), "cp -a into {}", dir.display());
        std::fs::remove_dir_all(&aside).unwrap();
        Some(tmpfs)
    }

    /// Bytes free for writing.
    fn available(&self) -> u64 {
        let output = Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(&self.dir)
            .output()
            .expect("stat -f");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let numbers: Vec<u64> = text
            .split_whitespace()
            .map(|field| field.parse().unwrap())
            .collect();
        numbers[0] * numbers[1]
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }

    /// Writes the filler file so that exactly `keep` bytes (a multiple of 4 KiB) stay free.
    fn fill_leaving(&self, keep: u64) {
        let size = self.available().checked_sub(keep).expect("room to fill");
        std::fs::write(self.filler(), vec![0xa5u8; size as usize]).unwrap();
        assert_eq!(self.available(), keep);
    }

    /// Takes every free byte.
    fn fill_completely(&self) {
        self.fill_leaving(0);
    }

    /// Space returns.
    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for Tmpfs {
    /// Unmounts, then removes the mount point if nothing else holds it (when a failing test
    /// dropped its instance's directory first, the mount point is all that is left of it).
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Polls `probe` every 100 ms until it answers, for up to `PATIENCE`; fails with `what` and
/// the server's log.
async fn until<T, F, Fut>(instance: &Instance, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "still not true after {PATIENCE:?}: {what}\n{}",
            instance.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn text(response: &Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

/// The spool worker's status line (`GET /v1/status`).
async fn spool_line(client: &Client) -> String {
    let response = ok("status", client.get("/v1/status")).await;
    assert_eq!(response.status, 200, "{}", text(&response));
    response.json()["workers"]["spool"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls the spool's status line until `done(line, logged failures)` holds; returns the line.
async fn until_spool(
    instance: &Instance,
    dpo: &Client,
    what: &str,
    done: impl Fn(&str, usize) -> bool,
) -> String {
    until(instance, what, || async {
        let line = spool_line(dpo).await;
        done(&line, spool_failures(instance).len()).then_some(line)
    })
    .await
}

/// Asserts SPEC §5.1's answer for a full disk.
fn assert_full(response: &Response) {
    assert_eq!(
        (response.status, response.code().as_str()),
        (507, "insufficient_storage"),
        "{}",
        text(response)
    );
}

/// Uploads `audio` as call `call_id`, caller 06 12 34 56 78.
async fn upload(recorder: &Client, call_id: &str, audio: &[u8]) -> Response {
    ok(
        call_id,
        recorder.upload(&metadata(call_id, "0612345678"), "call.wav", audio),
    )
    .await
}

/// Same, expecting `201`: the new recording's id.
async fn upload_new(recorder: &Client, call_id: &str, audio: &[u8]) -> String {
    let response = upload(recorder, call_id, audio).await;
    assert_eq!(response.status, 201, "{call_id}: {}", text(&response));
    response.json()["id"].as_str().unwrap().to_owned()
}

/// Log lines of spool jobs that failed (and will be retried).
fn spool_failures(instance: &Instance) -> Vec<String> {
    instance
        .log()
        .lines()
        .filter(|line| line.contains("spool: job failed"))
        .map(str::to_owned)
        .collect()
}

/// A FreePBX/Asterisk recording name (SPEC §5.2) for a call that started an hour ago, Paris
/// time, from 06 12 34 56 78 to 01 45 67 89 00, with `unique_id` as the call id.
fn freepbx_name(unique_id: &str) -> String {
    let start: jiff::Timestamp = started_at().parse().unwrap();
    let local = start.to_zoned(jiff::tz::TimeZone::get("Europe/Paris").unwrap());
    format!(
        "in-0145678900-0612345678-{}-{unique_id}.wav",
        local.strftime("%Y%m%d-%H%M%S")
    )
}

/// Every recording id the catalog lists (as the DPO, who sees them all).
async fn catalog_ids(dpo: &Client) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut path = "/v1/recordings?limit=100".to_owned();
    loop {
        let response = ok("list", dpo.get(&path)).await;
        assert_eq!(response.status, 200, "{}", text(&response));
        let page = response.json();
        for item in page["items"].as_array().unwrap() {
            ids.insert(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/recordings?limit=100&cursor={cursor}"),
            None => return ids,
        }
    }
}

/// Every recording id with a blob in the vault (`vault/xx/<id>.cgv`, not temporary, not
/// quarantined).
fn vault_ids(data: &Path) -> BTreeSet<String> {
    recording_blob_files(data)
        .into_iter()
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The one recording stored for `call_id`, checked against the audio sent: listed once, with
/// the SHA-256 of what was sent, and read back byte for byte (an audited read).
async fn assert_stored(dpo: &Client, call_id: &str, audio: &[u8]) -> String {
    let path = format!("/v1/recordings?call_id={call_id}");
    let response = ok(call_id, dpo.get(&path)).await;
    assert_eq!(response.status, 200, "{}", text(&response));
    let items = response.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{call_id}: {items:?}");
    assert_eq!(items[0]["sha256"], sha256_hex(audio), "{call_id}");
    let id = items[0]["id"].as_str().unwrap().to_owned();
    let read = ok(call_id, dpo.get(&audio_path(&id))).await;
    assert_eq!(read.status, 200, "{call_id}: {}", text(&read));
    assert_eq!(
        sha256_hex(&read.body),
        sha256_hex(audio),
        "{call_id}: read back"
    );
    id
}

fn audio_path(id: &str) -> String {
    format!("/v1/recordings/{id}/audio?purpose=data_subject_request")
}

/// Nothing stored for `call_id`.
async fn assert_absent(dpo: &Client, call_id: &str) {
    let response = ok(
        call_id,
        dpo.get(&format!("/v1/recordings?call_id={call_id}")),
    )
    .await;
    assert_eq!(response.status, 200, "{}", text(&response));
    assert_eq!(response.json()["items"], json!([]), "{call_id}");
}

/// The end state both tests must reach: no temporary or quarantined blob, every catalog
/// recording has its blob and every blob its recording, none marked missing.
async fn assert_consistent(instance: &Instance, dpo: &Client, n_recordings: usize) {
    let data = &instance.setup.data;
    let files = vault_files(data);
    assert_eq!((files.temp, files.quarantine), (0, 0), "{files:?}");
    let listed = catalog_ids(dpo).await;
    assert_eq!(listed.len(), n_recordings, "{listed:?}");
    assert_eq!(
        listed,
        vault_ids(data),
        "catalog rows and vault blobs differ"
    );
    let status = ok("status", dpo.get("/v1/status")).await.json();
    assert_eq!(status["counts"]["recordings"], n_recordings, "{status}");
    assert_eq!(status["counts"]["recordings_missing"], 0, "{status}");
}

/// After the server stopped: the audit chain verifies, SQLite finds its database intact and the
/// retention report counts what the API listed.
#[expect(
    clippy::disallowed_methods,
    reason = "the test inspects the database read-only, after the server stopped"
)]
fn assert_intact_after_stop(setup: &Setup, n_recordings: usize) {
    let (code, out, err) = setup.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "audit verify: {out}{err}");
    let db = rusqlite::Connection::open_with_flags(
        setup.data.join("catalog.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(db);
    let (code, out, err) = setup.cli(&["report"]);
    assert_eq!(code, 0, "report: {out}{err}");
    let expected = format!("recordings: {n_recordings} stored, 0 missing");
    assert!(out.contains(&expected), "{out}");
}

#[test]
fn a_full_disk_refuses_uploads_keeps_spool_files_waiting_and_catches_up_when_space_returns() {
    // See: issue 6.
    let setup = Setup::new("");
    let Some(tmpfs) = Tmpfs::mount_over(&setup.data, "16m") else {
        return;
    };
    let spool = setup.spool.clone();
    let instance = setup.start();
    let first = tone_wav(440.0, 2.0);
    let sized = tone_wav(350.0, 90.0);
    let streamed = tone_wav(370.0, 85.0);
    let with_sidecar = tone_wav(420.0, 95.0);
    let named = tone_wav(480.0, 80.0);
    let named_file = freepbx_name("1700000000.601");
    let spool_files: Vec<(String, Vec<u8>)> = vec![
        ("full-call-1.wav".to_owned(), with_sidecar.clone()),
        (
            "full-call-1.json".to_owned(),
            metadata("spool-sidecar-1", "0612345678")
                .to_string()
                .into_bytes(),
        ),
        (named_file.clone(), named.clone()),
    ];
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let dpo = instance.client("dpo");
        let supervisor = instance.client("supervisor");
        let first_id = upload_new(&recorder, "first", &first).await;

        // The disk fills up: uploads, sized or streamed, are refused and leave nothing.
        tmpfs.fill_leaving(HEADROOM);
        assert_full(&upload(&recorder, "http-sized", &sized).await);
        let upload = recorder
            .start_upload(&metadata("http-streamed", "0612345678"), "call.wav")
            .await
            .unwrap();
        for piece in streamed.chunks(32 * 1024) {
            if upload.send(piece).await.is_err() {
                break;
            }
        }
        assert_full(&upload.finish().await.unwrap());
        assert!(temp_files(&instance.setup.data).is_empty());
        assert_eq!(
            vault_ids(&instance.setup.data),
            BTreeSet::from([first_id.clone()])
        );
        assert_absent(&dpo, "http-sized").await;
        assert_absent(&dpo, "http-streamed").await;

        // The service keeps answering: status, searches, reading a stored recording.
        let status = ok("status", supervisor.get("/v1/status")).await;
        assert_eq!(status.status, 200, "{}", text(&status));
        assert_eq!(status.json()["counts"]["recordings"], 1);
        let search = ok("search", supervisor.get("/v1/recordings?account=ACC-0042")).await;
        assert_eq!(search.status, 200, "{}", text(&search));
        assert_eq!(search.json()["items"][0]["id"], first_id.as_str());
        assert_stored(&dpo, "first", &first).await;

        // Spool files of both conventions wait, untouched and not quarantined, while the
        // status line shows them retrying; each failure is logged as storage full.
        for (name, bytes) in &spool_files {
            std::fs::write(spool.join(name), bytes).unwrap();
        }
        let line = until_spool(
            &instance,
            &dpo,
            "both spool recordings failed twice",
            |line, n| n >= 4 && line.contains("2 retrying"),
        )
        .await;
        assert!(line.contains("0 ingested, 0 quarantined"), "{line}");
        for failure in spool_failures(&instance) {
            assert!(failure.contains("storage full"), "{failure}");
        }
        for (name, bytes) in &spool_files {
            let now = std::fs::read(spool.join(name)).unwrap();
            assert!(now == *bytes, "{name} changed in the spool");
        }
        let files = vault_files(&instance.setup.data);
        assert_eq!((files.blobs, files.temp, files.quarantine), (1, 0, 0));
        let quarantine = ok("quarantine", dpo.get("/v1/quarantine")).await;
        assert_eq!(quarantine.status, 200, "{}", text(&quarantine));
        assert_eq!(quarantine.json()["items"], json!([]));

        // Space returns: the spool catches up on its own and uploads work again.
        tmpfs.free();
        until_spool(
            &instance,
            &dpo,
            "the spool emptied and both ingested",
            |line, _| {
                files_under(&spool).is_empty()
                    && line.contains("2 ingested")
                    && !line.contains("retrying")
            },
        )
        .await;
        assert_stored(&dpo, "spool-sidecar-1", &with_sidecar).await;
        assert_stored(&dpo, "1700000000.601", &named).await;
        for (call_id, audio) in [("http-sized", &sized), ("http-streamed", &streamed)] {
            upload_new(&recorder, call_id, audio).await;
            assert_stored(&dpo, call_id, audio).await;
        }
        assert_consistent(&instance, &dpo, 5).await;
    });
    let setup = instance.stop();
    assert_intact_after_stop(&setup, 5);
    drop(tmpfs);
}

#[test]
fn a_full_catalog_answers_507_rolls_back_and_works_again_when_space_returns() {
    // See: issue 6. SQLite itself meets a full file system (SQLITE_FULL in its WAL).
    let setup = Setup::new("");
    let Some(tmpfs) = Tmpfs::mount_over(&setup.data, "4m") else {
        return;
    };
    let spool = setup.spool.clone();
    let instance = setup.start();
    // Same length, different content: their blobs take the same number of pages.
    let first = tone_wav(440.0, 1.0);
    let second = tone_wav(523.0, 1.0);
    let from_spool = tone_wav(659.0, 1.0);
    let spool_name = freepbx_name("1700000000.602");
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let dpo = instance.client("dpo");
        let legal = instance.client("legal");
        let first_id = upload_new(&recorder, "first", &first).await;
        let blob = files_under(&instance.setup.data.join("vault"))
            .into_iter()
            .find(|path| {
                path.file_stem()
                    .is_some_and(|stem| stem == first_id.as_str())
            })
            .unwrap();
        let blob_pages = std::fs::metadata(&blob).unwrap().len().div_ceil(4096) * 4096;
        let hold = json!({
            "case_ref": "RG-2026-0006",
            "reason": "disk-full test",
            "selector": {"recording_ids": [first_id]},
            "include_future": false,
        });
        // Another caller than the test's, whose recordings it would delete.
        let objection = json!({"caller": "+33699999999", "source": "letter", "reference": "L-6"});

        // Every byte taken: whatever must commit to the catalog is refused with 507, and
        // rolled back; what only reads keeps working.
        tmpfs.fill_completely();
        let read = ok("read", dpo.get(&audio_path(&first_id))).await;
        assert_eq!(
            (read.status, read.code().as_str()),
            (507, "insufficient_storage"),
            "an audio read must be audited first: {}",
            text(&read)
        );
        assert_full(&ok("hold", legal.post_json("/v1/holds", &hold)).await);
        assert_full(&ok("objection", dpo.post_json("/v1/objections", &objection)).await);
        assert_full(&upload(&recorder, "second", &second).await);
        // A refusal must be audited too: it cannot be, so it is a 507, never an unaudited 403.
        assert_full(&ok("refused", recorder.get("/v1/holds")).await);
        let holds = ok("holds", legal.get("/v1/holds")).await;
        assert_eq!(holds.status, 200, "{}", text(&holds));
        assert_eq!(holds.json()["items"], json!([]));
        let objections = ok("objections", dpo.get("/v1/objections")).await;
        assert_eq!(objections.status, 200, "{}", text(&objections));
        assert_eq!(objections.json()["items"], json!([]));
        let status = ok("status", dpo.get("/v1/status")).await;
        assert_eq!(status.status, 200, "{}", text(&status));
        assert_eq!(catalog_ids(&dpo).await, BTreeSet::from([first_id.clone()]));

        // Room for one blob and not one page more: the audio is written, the catalog commit
        // fails (SQLITE_FULL), and the blob is removed again.
        tmpfs.free();
        tmpfs.fill_leaving(blob_pages);
        // SPEC §5.1: the catalog's SQLITE_FULL at commit is a full disk too (507).
        assert_full(&upload(&recorder, "second", &second).await);
        // The log reaches the test through a pipe and a reader thread: it may lag the answer.
        until(
            &instance,
            "the catalog's SQLITE_FULL in the log",
            || async {
                instance
                    .log()
                    .contains("database or disk is full")
                    .then_some(())
            },
        )
        .await;
        assert!(temp_files(&instance.setup.data).is_empty());
        assert_eq!(
            tmpfs.available(),
            blob_pages,
            "the refused blob was not removed"
        );
        assert_absent(&dpo, "second").await;

        // The same for a spool file: it fails at the commit, stays and is retried.
        std::fs::write(spool.join(&spool_name), &from_spool).unwrap();
        until_spool(&instance, &dpo, "the spool file failed twice", |line, n| {
            n >= 2 && line.contains("1 retrying")
        })
        .await;
        for failure in spool_failures(&instance) {
            assert!(failure.contains("database or disk is full"), "{failure}");
        }
        assert!(std::fs::read(spool.join(&spool_name)).unwrap() == from_spool);
        assert_eq!(vault_files(&instance.setup.data).quarantine, 0);

        // Space returns: everything refused works, the spool file is ingested.
        tmpfs.free();
        until_spool(&instance, &dpo, "the spool file ingested", |line, _| {
            files_under(&spool).is_empty() && line.contains("1 ingested")
        })
        .await;
        assert_stored(&dpo, "1700000000.602", &from_spool).await;
        assert_stored(&dpo, "first", &first).await;
        let placed = ok("hold", legal.post_json("/v1/holds", &hold)).await;
        assert_eq!(placed.status, 201, "{}", text(&placed));
        let holds = ok("holds", legal.get("/v1/holds")).await;
        assert_eq!(holds.json()["items"].as_array().unwrap().len(), 1);
        let objected = ok("objection", dpo.post_json("/v1/objections", &objection)).await;
        assert_eq!(objected.status, 201, "{}", text(&objected));
        let objections = ok("objections", dpo.get("/v1/objections")).await;
        assert_eq!(objections.json()["items"].as_array().unwrap().len(), 1);
        upload_new(&recorder, "second", &second).await;
        assert_stored(&dpo, "second", &second).await;
        assert_consistent(&instance, &dpo, 3).await;
    });
    let setup = instance.stop();
    assert_intact_after_stop(&setup, 3);
    drop(tmpfs);
}
