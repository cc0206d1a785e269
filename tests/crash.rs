//! SPEC §4.7 "nothing acknowledged is lost": `kill -9` while uploads are in flight, then a
//! restart of the same instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::ingest_http::{
    PATIENCE, assert_no_plaintext, counts, eventually, listed, metadata, ok, sha256_hex, tone_wav,
    vault_files,
};
use crate::support::Setup;

const FAST: usize = 10;
const SLOW: usize = 10;

/// How one upload ended, seen from the recorder.
#[derive(Debug)]
enum Outcome {
    /// 201 before the kill: (id, sha256 answered).
    Acknowledged(String, String),
    /// No 201: the connection died first.
    Lost(String),
}

#[test]
fn kill_9_during_concurrent_uploads_loses_nothing_acknowledged_and_leaves_nothing_partial() {
    let mut instance = Setup::new("").start();
    let uploads: Vec<(String, Vec<u8>, bool)> = (0..FAST + SLOW)
        .map(|i| {
            let slow = i < SLOW;
            let call_id = format!("CG-crash-{:x}-{i:02}", std::process::id());
            // Distinct tones at 8 kHz: 3 s (48 KB) for the slow ones, 1 to 7 s for the fast
            // ones, so that the kill finds them at different stages.
            let seconds = if slow {
                3.0
            } else {
                1.0 + 2.0 * (i % 4) as f64
            };
            (call_id, tone_wav(300.0 + 37.0 * i as f64, seconds), slow)
        })
        .collect();
    let data = instance.setup.data.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let (setup, outcomes) = runtime.block_on(async {
        let recorder = instance.client("recorder");
        let half_sent = Arc::new(AtomicUsize::new(0));
        let (answered_tx, mut answered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for (call_id, bytes, slow) in uploads.iter().cloned() {
            if !slow && tasks.len() == SLOW {
                // Every slow upload mid-flight (half sent, their blobs being written in the
                // vault) before the fast ones start.
                eventually("slow uploads mid-flight", || {
                    half_sent.load(Ordering::SeqCst) == SLOW && vault_files(&data).blobs >= SLOW
                })
                .await;
            }
            let recorder = recorder.clone();
            let half_sent = half_sent.clone();
            let answered = answered_tx.clone();
            let mut killed = killed_rx.clone();
            tasks.push(tokio::spawn(async move {
                let meta = metadata(&call_id, "0612345678");
                let result = match slow {
                    false => recorder.upload(&meta, "call.wav", &bytes).await,
                    true => {
                        // Half at once, then a trickle that stops short of the end until the
                        // server is gone: mid-flight at the kill, whatever the timing.
                        let upload = recorder.start_upload(&meta, "call.wav").await;
                        match upload {
                            Err(error) => Err(error),
                            Ok(upload) => {
                                let half = bytes.len() / 2;
                                let mut sent = upload.send(&bytes[..half]).await.map(|_| half);
                                half_sent.fetch_add(1, Ordering::SeqCst);
                                let stop = bytes.len() * 9 / 10;
                                while let Ok(at) = sent {
                                    if *killed.borrow() || at >= stop {
                                        break;
                                    }
                                    let end = (at + 256).min(stop);
                                    sent = upload.send(&bytes[at..end]).await.map(|_| end);
                                    let _ = tokio::time::timeout(
                                        std::time::Duration::from_millis(100),
                                        killed.changed(),
                                    )
                                    .await;
                                }
                                let _ = killed.wait_for(|k| *k).await;
                                upload.finish().await
                            }
                        }
                    }
                };
                if !slow {
                    let _ = answered.send(());
                }
                match result {
                    Ok(response) if response.status == 201 => {
                        let body = response.json();
                        Outcome::Acknowledged(
                            body["id"].as_str().unwrap_or("").to_owned(),
                            body["sha256"].as_str().unwrap_or("").to_owned(),
                        )
                    }
                    Ok(response) => panic!(
                        "{call_id}: unexpected answer {} {}",
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    ),
                    Err(error) => Outcome::Lost(error),
                }
            }));
        }

        // Kill as soon as three fast uploads are answered: the others are still being sent,
        // probed, written or committed.
        for _ in 0..3 {
            tokio::time::timeout(PATIENCE, answered_rx.recv())
                .await
                .expect("three fast uploads answered in time")
                .expect("answer channel");
        }
        let setup = instance.kill9();
        killed_tx.send(true).unwrap();
        let mut outcomes = Vec::new();
        for task in tasks {
            let outcome = tokio::time::timeout(PATIENCE * 2, task)
                .await
                .expect("an upload still hangs after the kill")
                .expect("upload task");
            outcomes.push(outcome);
        }
        (setup, outcomes)
    });
    drop(instance);

    // Same setup, restarted.
    let instance = setup.start();
    runtime.block_on(async {
        let dpo = instance.client("dpo");
        let mut visible = 0u64;
        let mut acknowledged = 0;
        for ((call_id, bytes, slow), outcome) in uploads.iter().zip(&outcomes) {
            let items = listed(&dpo, call_id).await;
            match outcome {
                Outcome::Acknowledged(id, sha) => {
                    acknowledged += 1;
                    assert_eq!(sha, &sha256_hex(bytes), "{call_id}: sha256 answered");
                    assert_eq!(items.len(), 1, "{call_id} was acknowledged and is lost");
                    assert_eq!(items[0]["id"], id.as_str(), "{call_id}");
                }
                Outcome::Lost(error) => {
                    // A slow upload never sent its whole body: it must not exist. A fast one
                    // may have been committed just before the kill without its answer
                    // getting out; then it must be whole (the recorder's retry gets 200).
                    assert!(
                        items.len() <= usize::from(!slow),
                        "{call_id} (no 201: {error}) is visible: {items:?}"
                    );
                }
            }
            if let Some(item) = items.first() {
                visible += 1;
                assert_eq!(item["sha256"], sha256_hex(bytes), "{call_id}: {item}");
                let id = item["id"].as_str().unwrap();
                let path = format!("/v1/recordings/{id}/audio?purpose=data_subject_request");
                let audio = ok(&path, dpo.get(&path)).await;
                assert_eq!(audio.status, 200, "{call_id}: {:?}", audio.body);
                assert!(audio.body[..] == bytes[..], "{call_id}: audio differs");
            }
        }
        assert!(acknowledged >= 3, "{outcomes:?}");
        let counts: Value = counts(&dpo).await;
        assert_eq!(counts["recordings"], visible, "{counts}");
        assert_eq!(counts["recordings_missing"], 0, "{counts}");
        // Blobs whose row never committed are removed at start-up.
        eventually("one blob per visible recording after recovery", || {
            vault_files(&data).blobs as u64 == visible
        })
        .await;
        assert_eq!(vault_files(&data).temp, 0);
        eprintln!(
            "crash test: {acknowledged} acknowledged, {visible} visible, outcomes {:?}",
            outcomes
                .iter()
                .map(|o| matches!(o, Outcome::Acknowledged(..)))
                .collect::<Vec<_>>()
        );
    });

    let setup = instance.stop();
    let (code, out, err) = setup.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "audit verify after the crash: {out}{err}");
    let files: Vec<(String, Vec<u8>)> = uploads
        .iter()
        .map(|(call_id, bytes, _)| (call_id.clone(), bytes.clone()))
        .collect();
    let call_ids: Vec<String> = uploads.iter().map(|(c, _, _)| c.clone()).collect();
    assert_no_plaintext(&setup.data, &files, &call_ids);
}
