//! The spool door (SPEC §5.2) through the real server: complete files are ingested and
//! unlinked, files still being written or under a temporary name are left alone, files that
//! cannot be parsed go to quarantine encrypted, a caller's objection discards the call unread,
//! and nothing of any of it stays in plaintext under the data directory (SPEC §4, guarantees 1,
//! 5 and 7). Waits poll every 100 ms up to 30 s; the only fixed wait is where time passing is
//! the point (a half-written file must still be there after it).

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::audio::{self, WavEncoding};
use crate::support::{Instance, Setup, any_file_contains, files_under};

/// A FreePBX-convention name (SPEC §5.2) for a call that started `minutes_ago` minutes ago,
/// in the spool's time zone (Europe/Paris): its recording is fresh whatever day the tests run
/// (a fixed date would be past its six months one day, and purged as it arrives).
// The server under test runs on the wall clock, so the test must too.
#[allow(clippy::disallowed_methods)]
fn freepbx_name(to: &str, from: &str, minutes_ago: i64, uniqueid: &str) -> String {
    let local = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_mins(minutes_ago))
        .unwrap()
        .in_tz("Europe/Paris")
        .unwrap();
    format!(
        "in-{to}-{from}-{}-{uniqueid}.wav",
        local.strftime("%Y%m%d-%H%M%S")
    )
}

/// The spec example's parties (callee 01 45 67 89 00, caller 06 12 34 56 78), an hour ago.
fn freepbx_example() -> String {
    freepbx_name("0145678900", "0612345678", 60, "1700000000.123")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A real 16-bit PCM WAV (8 kHz mono), different for each `seconds`.
fn wav(seconds: f64) -> Vec<u8> {
    let scratch = tempfile::tempdir().unwrap();
    audio::wav_sine(scratch.path(), WavEncoding::Pcm16, 8000, 1, seconds).bytes()
}

/// 64 bytes from the middle of the PCM data: what must never be found in plaintext.
fn pcm_window(wav: &[u8]) -> Vec<u8> {
    let middle = 44 + (wav.len() - 44) / 2;
    wav[middle..middle + 64].to_vec()
}

fn sidecar(call_id: &str, caller: &str) -> Vec<u8> {
    serde_json::json!({
        "call_id": call_id,
        "started_at": crate::ingest_http::started_at(),
        "direction": "inbound",
        "caller": caller,
        "callee": "+33145678900",
        "account": "ACC-77",
        "operator": null,
        "alarm_case": null,
    })
    .to_string()
    .into_bytes()
}

/// Polls `probe` every 100 ms until it answers, for up to 30 s; fails with `what` and the log.
async fn eventually<T, F, Fut>(instance: &Instance, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", instance.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The audit entries with `action`, oldest first.
async fn audit(instance: &Instance, action: &str) -> Vec<serde_json::Value> {
    let response = instance
        .client("dpo")
        .get(&format!("/v1/audit?action={action}&limit=100"))
        .await
        .unwrap();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    response.json()["items"].as_array().cloned().unwrap()
}

/// Waits until exactly `n` entries with `action` exist and none of `names` is in the spool.
async fn settled(
    instance: &Instance,
    action: &str,
    n: usize,
    names: &[&str],
) -> Vec<serde_json::Value> {
    let spool = instance.setup.spool.clone();
    eventually(
        instance,
        &format!("{n} × {action} and {names:?} gone"),
        || {
            let spool = spool.clone();
            async move {
                let entries = audit(instance, action).await;
                let gone = names.iter().all(|name| !spool.join(name).exists());
                match entries.len() >= n && gone {
                    true => Some(entries),
                    false => None,
                }
            }
        },
    )
    .await
}

/// Fails if any file under the data directory holds one of `needles` (guarantee 1).
fn assert_no_plaintext(instance: &Instance, needles: &[&[u8]]) {
    for needle in needles {
        if let Some(path) = any_file_contains(&instance.setup.data, needle) {
            panic!(
                "{} holds plaintext {:?}",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

/// Every form of the spec example's numbers and call id.
const PERSONAL: [&[u8]; 6] = [
    b"0612345678",
    b"+33612345678",
    b"33612345678",
    b"0145678900",
    b"33145678900",
    b"1700000000.123",
];

fn blobs(data: &Path, sub: Option<&str>) -> Vec<PathBuf> {
    let vault = data.join("vault");
    files_under(&vault)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "cgv"))
        .filter(|path| {
            let in_quarantine = path.parent() == Some(&vault.join("quarantine"));
            match sub {
                Some("quarantine") => in_quarantine,
                _ => !in_quarantine,
            }
        })
        .collect()
}

#[test]
fn wav_with_sidecar_is_ingested_and_unlinked() {
    let instance = Setup::new("").start();
    let spool = instance.setup.spool.clone();
    let audio = wav(1.0);
    runtime().block_on(async {
        std::fs::write(spool.join("call-0001.wav"), &audio).unwrap();
        std::fs::write(
            spool.join("call-0001.json"),
            sidecar("pbx-call-0001", "06 12 34 56 78"),
        )
        .unwrap();
        let entries = settled(
            &instance,
            "recording.ingest",
            1,
            &["call-0001.wav", "call-0001.json"],
        )
        .await;
        let entry = &entries[0];
        assert_eq!(entry["actor"], "spool");
        assert_eq!(entry["role"], "recorder");
        assert_eq!(entry["outcome"], "allowed");
        let id = entry["object"].as_str().unwrap();
        assert_eq!(id.len(), 32, "{entry}");
        assert!(
            entry["detail"].as_str().unwrap().contains("pcm_s16le"),
            "{entry}"
        );
        assert_eq!(blobs(&instance.setup.data, None).len(), 1);
        assert!(files_under(&spool).is_empty(), "{:?}", files_under(&spool));

        let status = instance
            .client("dpo")
            .get("/v1/status")
            .await
            .unwrap()
            .json();
        let line = status["workers"]["spool"].as_str().unwrap().to_owned();
        assert!(line.contains("1 ingested"), "{line}");
        assert!(!line.contains("call-0001"), "{line}");
    });
    let mut needles: Vec<&[u8]> = PERSONAL.to_vec();
    let window = pcm_window(&audio);
    needles.push(&window);
    needles.push(b"pbx-call-0001");
    needles.push(b"ACC-77");
    assert_no_plaintext(&instance, &needles);
    assert!(!instance.log().contains("call-0001"), "{}", instance.log());
}

#[test]
fn freepbx_named_file_is_ingested_repeated_and_conflicting_calls_handled() {
    let instance = Setup::new("").start();
    let spool = instance.setup.spool.clone();
    let audio = wav(1.5);
    let other_audio = wav(1.7);
    let example = freepbx_example();
    runtime().block_on(async {
        std::fs::write(spool.join(&example), &audio).unwrap();
        let entries = settled(&instance, "recording.ingest", 1, &[&example]).await;
        let id = entries[0]["object"].as_str().unwrap().to_owned();
        // The metadata came from the name: the DPO finds it by the caller's number.
        let found = instance
            .client("dpo")
            .get("/v1/subjects/recordings?caller=%2B33612345678")
            .await
            .unwrap();
        assert_eq!(
            found.status,
            200,
            "{}",
            String::from_utf8_lossy(&found.body)
        );
        let found = found.json();
        let ids: Vec<&str> = found["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec![id.as_str()], "{found}");
        assert!(files_under(&spool).is_empty());

        // The same call again, identical audio, under another name: an idempotent repeat,
        // unlinked without a second recording.
        std::fs::write(spool.join("repeat.wav"), &audio).unwrap();
        std::fs::write(
            spool.join("repeat.json"),
            sidecar("1700000000.123", "0612345678"),
        )
        .unwrap();
        let spool_dir = spool.clone();
        eventually(&instance, "the repeat unlinked", || {
            let gone = files_under(&spool_dir).is_empty();
            async move {
                match gone {
                    true => Some(()),
                    false => None,
                }
            }
        })
        .await;
        assert_eq!(audit(&instance, "recording.ingest").await.len(), 1);

        // The same call id with other audio: a conflict, kept in quarantine.
        let conflicting = freepbx_name("0145678900", "0612345678", 59, "1700000000.123");
        std::fs::write(spool.join(&conflicting), &other_audio).unwrap();
        let entries = settled(&instance, "recording.quarantine", 1, &[&conflicting]).await;
        assert_eq!(
            entries[0]["detail"],
            format!("call id already stored with different audio (recording {id})")
        );
        assert_eq!(audit(&instance, "recording.ingest").await.len(), 1);
        assert!(files_under(&spool).is_empty());
    });
    let window = pcm_window(&audio);
    let other_window = pcm_window(&other_audio);
    let mut needles: Vec<&[u8]> = PERSONAL.to_vec();
    needles.push(&window);
    needles.push(&other_window);
    assert_no_plaintext(&instance, &needles);
    assert!(!instance.log().contains("0612345678"), "{}", instance.log());
}

#[test]
fn files_being_written_or_under_a_temporary_name_are_left_alone_until_complete() {
    let instance = Setup::new("").start();
    let spool = instance.setup.spool.clone();
    let name_only = &freepbx_name("0145678900", "0687654321", 30, "1700000001.456");
    let parked = &freepbx_name("0145678900", "0611111111", 20, "1700000002.789");
    let audio_a = wav(2.0);
    let audio_b = wav(2.5);
    let audio_c = wav(1.2);
    runtime().block_on(async {
        // A FreePBX-named file half written, its handle still open.
        let mut writer_a = std::fs::File::create(spool.join(name_only)).unwrap();
        writer_a.write_all(&audio_a[..audio_a.len() / 2]).unwrap();
        // A pair whose sidecar is complete while the audio is still being written.
        let mut writer_b = std::fs::File::create(spool.join("call-half.wav")).unwrap();
        writer_b.write_all(&audio_b[..audio_b.len() / 2]).unwrap();
        std::fs::write(
            spool.join("call-half.json"),
            sidecar("pbx-half", "+33622222222"),
        )
        .unwrap();
        // A complete file under a temporary name.
        std::fs::write(spool.join(format!("{parked}.part")), &audio_c).unwrap();

        // Time passing is the point here: longer than the quiet period (2 s) and the settling
        // time (1 s) together, with the watcher evaluating every 250 ms.
        tokio::time::sleep(Duration::from_secs(5)).await;
        for name in [
            name_only,
            "call-half.wav",
            "call-half.json",
            &format!("{parked}.part"),
        ] {
            assert!(spool.join(name).exists(), "{name} was taken early");
        }
        assert_eq!(audit(&instance, "recording.ingest").await.len(), 0);
        assert_eq!(audit(&instance, "recording.quarantine").await.len(), 0);

        writer_a.write_all(&audio_a[audio_a.len() / 2..]).unwrap();
        drop(writer_a);
        writer_b.write_all(&audio_b[audio_b.len() / 2..]).unwrap();
        drop(writer_b);
        std::fs::rename(spool.join(format!("{parked}.part")), spool.join(parked)).unwrap();

        let entries = settled(
            &instance,
            "recording.ingest",
            3,
            &[name_only, "call-half.wav", "call-half.json", parked],
        )
        .await;
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert_eq!(audit(&instance, "recording.quarantine").await.len(), 0);
        assert!(files_under(&spool).is_empty(), "{:?}", files_under(&spool));
        // Every recording whole: the durations the probe measured are the full ones.
        let mut durations: Vec<String> = entries
            .iter()
            .map(|entry| entry["detail"].as_str().unwrap().to_owned())
            .collect();
        durations.sort();
        assert_eq!(
            durations,
            vec![
                "pcm_s16le 1200 ms".to_owned(),
                "pcm_s16le 2000 ms".to_owned(),
                "pcm_s16le 2500 ms".to_owned()
            ]
        );
    });
    let windows = [
        pcm_window(&audio_a),
        pcm_window(&audio_b),
        pcm_window(&audio_c),
    ];
    let mut needles: Vec<&[u8]> = vec![
        b"0687654321",
        b"33687654321",
        b"0622222222",
        b"33622222222",
        b"0611111111",
        b"1700000001.456",
        b"pbx-half",
    ];
    needles.extend(windows.iter().map(Vec::as_slice));
    assert_no_plaintext(&instance, &needles);
}

#[test]
fn files_that_cannot_be_parsed_go_to_quarantine_encrypted() {
    let instance = Setup::new("").start();
    let spool = instance.setup.spool.clone();
    let garbage: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let garbage_sidecar = sidecar("pbx-garbage", "0612345678");
    let good_audio = wav(1.0);
    let bad_sidecar = br#"{"call_id": "pbx-badmeta", "started_at": "yesterday", "direction": "inbound", "caller": "0612345678"}"#;
    runtime().block_on(async {
        std::fs::write(spool.join("bad-audio.wav"), &garbage).unwrap();
        std::fs::write(spool.join("bad-audio.json"), &garbage_sidecar).unwrap();
        std::fs::write(spool.join("bad-meta.wav"), &good_audio).unwrap();
        std::fs::write(spool.join("bad-meta.json"), bad_sidecar).unwrap();

        let entries = settled(
            &instance,
            "recording.quarantine",
            4,
            &[
                "bad-audio.wav",
                "bad-audio.json",
                "bad-meta.wav",
                "bad-meta.json",
            ],
        )
        .await;
        assert_eq!(entries.len(), 4, "{entries:?}");
        assert_eq!(audit(&instance, "recording.ingest").await.len(), 0);
        assert!(files_under(&spool).is_empty(), "{:?}", files_under(&spool));
        for entry in &entries {
            let detail = entry["detail"].as_str().unwrap();
            assert!(
                !detail.contains("0612345678") && !detail.contains("pbx-"),
                "{detail}"
            );
        }
        assert_eq!(blobs(&instance.setup.data, Some("quarantine")).len(), 4);
        assert_eq!(blobs(&instance.setup.data, None).len(), 0);

        // The DPO's view: each file by name with its reason and the hash of its bytes.
        let listed = instance.client("dpo").get("/v1/quarantine").await.unwrap();
        assert_eq!(
            listed.status,
            200,
            "{}",
            String::from_utf8_lossy(&listed.body)
        );
        let listed = listed.json();
        let items = listed["items"].as_array().unwrap();
        let item = |name: &str| {
            items
                .iter()
                .find(|item| item["file_name"] == name)
                .unwrap_or_else(|| panic!("{name} not in {listed}"))
                .clone()
        };
        let bad_audio = item("bad-audio.wav");
        assert!(
            bad_audio["reason"]
                .as_str()
                .unwrap()
                .starts_with("audio not accepted"),
            "{bad_audio}"
        );
        assert_eq!(bad_audio["sha256"], hex::encode(Sha256::digest(&garbage)));
        assert_eq!(bad_audio["size"], garbage.len());
        let bad_audio_sidecar = item("bad-audio.json");
        assert_eq!(
            bad_audio_sidecar["reason"].as_str().unwrap(),
            format!(
                "{} (sidecar of quarantine entry {})",
                bad_audio["reason"].as_str().unwrap(),
                bad_audio["id"].as_str().unwrap()
            )
        );
        assert_eq!(
            bad_audio_sidecar["sha256"],
            hex::encode(Sha256::digest(&garbage_sidecar))
        );
        let bad_meta = item("bad-meta.wav");
        assert!(
            bad_meta["reason"]
                .as_str()
                .unwrap()
                .starts_with("invalid sidecar metadata: field `started_at`"),
            "{bad_meta}"
        );
        assert_eq!(bad_meta["sha256"], hex::encode(Sha256::digest(&good_audio)));
        item("bad-meta.json");
    });
    let garbage_window = garbage[10_000..10_064].to_vec();
    let audio_window = pcm_window(&good_audio);
    let mut needles: Vec<&[u8]> = PERSONAL.to_vec();
    needles.extend([
        garbage_window.as_slice(),
        audio_window.as_slice(),
        b"pbx-garbage",
        b"pbx-badmeta",
        b"bad-audio",
        b"bad-meta",
    ]);
    assert_no_plaintext(&instance, &needles);
}

#[test]
fn an_objecting_caller_is_discarded_unread_and_unlinked() {
    let instance = Setup::new("").start();
    let spool = instance.setup.spool.clone();
    let audio = wav(1.0);
    let example = freepbx_example();
    runtime().block_on(async {
        let objection = instance
            .client("dpo")
            .post_json(
                "/v1/objections",
                &serde_json::json!({"caller": "06 12 34 56 78", "source": "letter", "reference": "LR-1"}),
            )
            .await
            .unwrap();
        assert_eq!(
            objection.status,
            201,
            "{}",
            String::from_utf8_lossy(&objection.body)
        );
        std::fs::write(spool.join(&example), &audio).unwrap();
        std::fs::write(spool.join("call-obj.wav"), &audio).unwrap();
        std::fs::write(
            spool.join("call-obj.json"),
            sidecar("pbx-obj", "+33612345678"),
        )
        .unwrap();
        let entries = settled(
            &instance,
            "recording.discard",
            2,
            &[&example, "call-obj.wav", "call-obj.json"],
        )
        .await;
        for entry in &entries {
            assert_eq!(entry["detail"], "caller_objection", "{entry}");
            assert_eq!(entry["actor"], "spool", "{entry}");
        }
        assert_eq!(audit(&instance, "recording.ingest").await.len(), 0);
        assert_eq!(audit(&instance, "recording.quarantine").await.len(), 0);
        assert!(blobs(&instance.setup.data, None).is_empty());
        assert!(blobs(&instance.setup.data, Some("quarantine")).is_empty());
        assert!(files_under(&spool).is_empty(), "{:?}", files_under(&spool));
    });
    let window = pcm_window(&audio);
    let mut needles: Vec<&[u8]> = PERSONAL.to_vec();
    needles.extend([window.as_slice(), b"pbx-obj"]);
    assert_no_plaintext(&instance, &needles);
}

#[test]
fn files_present_at_start_are_taken_and_files_without_sidecar_wait() {
    let setup = Setup::new("");
    let audio = wav(1.0);
    let audio_2 = wav(1.3);
    let example = freepbx_example();
    std::fs::write(setup.spool.join(&example), &audio).unwrap();
    std::fs::write(setup.spool.join("call-early.wav"), &audio_2).unwrap();
    std::fs::write(
        setup.spool.join("call-early.json"),
        sidecar("pbx-early", "0633333333"),
    )
    .unwrap();
    std::fs::write(setup.spool.join("notes.txt"), b"not a recording").unwrap();
    std::fs::create_dir(setup.spool.join("folder.wav")).unwrap();
    std::fs::write(setup.spool.join("lonely.wav"), &audio).unwrap();
    let instance = setup.start();
    let spool = instance.setup.spool.clone();
    runtime().block_on(async {
        settled(
            &instance,
            "recording.ingest",
            2,
            &[&example, "call-early.wav", "call-early.json"],
        )
        .await;
        // Not touched yet: a directory (never), and audio or another kind of file waiting for
        // a sidecar (they go to quarantine only after ten minutes without one).
        assert_eq!(
            std::fs::read(spool.join("notes.txt")).unwrap(),
            b"not a recording"
        );
        assert!(spool.join("folder.wav").is_dir());
        assert_eq!(std::fs::read(spool.join("lonely.wav")).unwrap(), audio);
        assert_eq!(audit(&instance, "recording.quarantine").await.len(), 0);
        let status = instance
            .client("dpo")
            .get("/v1/status")
            .await
            .unwrap()
            .json();
        let line = status["workers"]["spool"].as_str().unwrap().to_owned();
        assert!(
            line.contains("2 ingested") && line.contains("2 waiting"),
            "{line}"
        );
    });
    let window = pcm_window(&audio_2);
    let mut needles: Vec<&[u8]> = PERSONAL.to_vec();
    needles.extend([window.as_slice(), b"0633333333", b"pbx-early"]);
    assert_no_plaintext(&instance, &needles);
}
