//! Retention, holds, objections, erasure and exports through the real server and CLI: the
//! guarantees 2–5 of SPEC §4 as a user sees them. Time-dependent cases use past `started_at`
//! values and `callguard purge`, never waits.

use std::io::Read;

use jiff::SignedDuration;
use sha2::{Digest, Sha256};

use crate::ingest_http::{eventually, listed, started_at, tone_wav, vault_files};
use crate::support::client::Response;
use crate::support::{Client, Setup};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A short 8 kHz 16-bit mono WAV (half a second), a different tone for each `seed`.
fn wav(seed: u32) -> Vec<u8> {
    tone_wav(200.0 + 50.0 * f64::from(seed), 0.5)
}

/// Uploads one recording; returns the answer.
async fn upload(client: &Client, meta: serde_json::Value, audio: &[u8]) -> Response {
    client.upload(&meta, "call.wav", audio).await.unwrap()
}

fn meta(call_id: &str, started_at: &str, caller: &str, account: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "call_id": call_id, "started_at": started_at, "direction": "inbound",
        "caller": caller, "callee": "0145678900", "account": account,
    })
}

/// A call start `ago` before now, RFC 3339 to the second: fresh, since retention runs for six
/// months from it (the expired calls use dates of 2025, long past).
#[expect(
    clippy::disallowed_methods,
    reason = "the server under test runs on the wall clock"
)]
fn started_ago(ago: SignedDuration) -> String {
    jiff::Timestamp::now()
        .checked_sub(ago)
        .unwrap()
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

async fn stored(client: &Client, meta: serde_json::Value, audio: &[u8]) -> String {
    let response = upload(client, meta, audio).await;
    assert_eq!(
        response.status,
        201,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    response.json()["id"].as_str().unwrap().to_owned()
}

#[expect(
    clippy::disallowed_methods,
    reason = "the test inspects the database directly"
)]
fn rows_with_id(setup: &Setup, id: &str) -> i64 {
    let db = rusqlite::Connection::open(setup.data.join("catalog.sqlite")).unwrap();
    db.query_row(
        "SELECT count(*) FROM recordings WHERE id = ?1",
        [id],
        |row| row.get(0),
    )
    .unwrap()
}

fn blob_exists(setup: &Setup, id: &str) -> bool {
    setup
        .data
        .join("vault")
        .join(&id[30..])
        .join(format!("{id}.cgv"))
        .exists()
}

#[test]
fn retention_holds_objections_and_erasure_end_to_end() {
    let instance = Setup::new("").start();
    let setup = &instance.setup;
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let supervisor = instance.client("supervisor");
        let legal = instance.client("legal");
        let dpo = instance.client("dpo");
        let operator = instance.client("operator");

        // Two expired recordings, one expired and one fresh on account ACC1, one fresh elsewhere.
        let expired_a = stored(&recorder, meta("call-a", "2025-01-10T10:00:00Z", "0611111111", None), &wav(1)).await;
        let expired_b = stored(&recorder, meta("call-b", "2025-02-10T10:00:00Z", "0622222222", None), &wav(2)).await;
        let held_old = stored(&recorder, meta("call-d", "2025-03-10T10:00:00Z", "0633333333", Some("ACC1")), &wav(3)).await;
        let held_new = stored(&recorder, meta("call-c", &started_ago(SignedDuration::from_hours(4 * 24)), "0644444444", Some("ACC1")), &wav(4)).await;
        let free = stored(&recorder, meta("call-f", &started_ago(SignedDuration::from_hours(3 * 24)), "0655555555", None), &wav(5)).await;

        // Read-time enforcement: expired and unheld is never served, even before any purge.
        let response = supervisor.get(&format!("/v1/recordings/{expired_a}")).await.unwrap();
        assert_eq!((response.status, response.code().as_str()), (410, "expired"));
        let response = dpo.get(&format!("/v1/recordings/{expired_a}/audio?purpose=data_subject_request")).await.unwrap();
        assert_eq!((response.status, response.code().as_str()), (410, "expired"));
        let list = supervisor.get("/v1/recordings").await.unwrap().json();
        let listed: Vec<&str> = list["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert!(!listed.contains(&expired_a.as_str()) && listed.contains(&free.as_str()), "{listed:?}");

        // A hold on ACC1, including future recordings.
        let response = legal
            .post_json(
                "/v1/holds",
                &serde_json::json!({"case_ref": "RG 26/01234", "reason": "appeal pending", "selector": {"account": "ACC1"}, "include_future": true}),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 201, "{}", String::from_utf8_lossy(&response.body));
        let hold = response.json();
        assert_eq!(hold["recordings"], 2);
        let hold_id = hold["id"].as_str().unwrap().to_owned();
        let holds = legal.get("/v1/holds").await.unwrap().json();
        let mut covered: Vec<&str> = holds["items"][0]["recording_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap()).collect();
        covered.sort();
        let mut expected = [held_old.as_str(), held_new.as_str()];
        expected.sort();
        assert_eq!(covered, expected, "{holds}");

        // Dry run explains, then the purge deletes exactly the unheld expired ones.
        let (code, out, err) = setup.cli(&["purge", "--dry-run"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("would delete\t{expired_a}\tretention")), "{out}");
        assert!(out.contains(&format!("kept\t{held_old}\theld by {hold_id}")), "{out}");
        assert!(blob_exists(setup, &expired_a));
        let (code, out, err) = setup.cli(&["purge"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("2 recordings deleted"), "{out}");
        let runs = dpo.get("/v1/audit?action=purge.run").await.unwrap().json();
        let details: Vec<&str> = runs["items"].as_array().unwrap().iter().map(|e| e["detail"].as_str().unwrap()).collect();
        assert!(details[0].starts_with("dry run: would have 2 deleted"), "{runs}");
        assert!(details[1].starts_with("2 deleted, 1 kept by holds (expired or with a deferred deletion)"), "{runs}");
        for id in [&expired_a, &expired_b] {
            assert!(!blob_exists(setup, id), "blob of {id} still on disk");
            assert_eq!(rows_with_id(setup, id), 0, "wrapped key of {id} still in the catalog");
            let response = dpo.get(&format!("/v1/recordings/{id}")).await.unwrap();
            assert_eq!((response.status, response.code().as_str()), (410, "deleted"));
            assert_eq!(response.json()["tombstone"]["reason"], "retention");
        }
        for id in [&held_old, &held_new, &free] {
            assert!(blob_exists(setup, id));
        }
        // Asking for an erased recording's audio is refused and audited, as for an expired one.
        let response = supervisor
            .get(&format!("/v1/recordings/{expired_a}/audio?purpose=quality_review"))
            .await
            .unwrap();
        assert_eq!((response.status, response.code().as_str()), (410, "deleted"));
        let reads = dpo
            .get(&format!("/v1/audit?action=recording.read_audio&object={expired_a}"))
            .await
            .unwrap()
            .json();
        let last = reads["items"].as_array().unwrap().last().unwrap();
        assert_eq!(
            (&last["outcome"], &last["detail"], &last["purpose"]),
            (&serde_json::json!("denied"), &serde_json::json!("deleted"), &serde_json::json!("quality_review")),
        );

        // The held, expired recording: legal and the DPO may still read it; supervisors may not.
        assert_eq!(supervisor.get(&format!("/v1/recordings/{held_old}")).await.unwrap().status, 410);
        let detail = legal.get(&format!("/v1/recordings/{held_old}")).await.unwrap();
        assert_eq!(detail.status, 200);
        assert_eq!(detail.json()["holds"][0], hold_id.as_str());
        let audio = legal.get(&format!("/v1/recordings/{held_old}/audio?purpose=litigation")).await.unwrap();
        assert_eq!((audio.status, audio.body.as_ref()), (200, wav(3).as_slice()));

        // include_future: a later recording on ACC1 is covered at ingest.
        let later = stored(&recorder, meta("call-e", &started_ago(SignedDuration::from_hours(2 * 24)), "0666666666", Some("ACC1")), &wav(6)).await;
        let detail = legal.get(&format!("/v1/holds/{hold_id}")).await.unwrap().json();
        assert_eq!(detail["recordings"], 3);
        assert!(detail["recording_ids"].as_array().unwrap().iter().any(|id| id == later.as_str()));

        // The evidence export: manifest hashes match the audio in the tar.
        let export = legal.get(&format!("/v1/holds/{hold_id}/export")).await.unwrap();
        assert_eq!(export.status, 200);
        let mut archive = tar::Archive::new(export.body.as_ref());
        let mut files = std::collections::HashMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            files.insert(name, bytes);
        }
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let recordings = manifest["recordings"].as_array().unwrap();
        assert_eq!(recordings.len(), 3);
        for recording in recordings {
            let bytes = &files[recording["file"].as_str().unwrap()];
            assert_eq!(hex::encode(Sha256::digest(bytes)), recording["sha256"].as_str().unwrap());
        }
        assert!(manifest["audit_entries"].as_array().unwrap().iter().any(|e| e["action"] == "hold.place" || e["action"] == "recording.ingest"));
        assert!(manifest["audit_head"]["hash"].as_str().unwrap().len() == 64);

        // Objections: the unheld recording goes at once, the held one at release; future calls
        // from that caller are discarded before anything is stored.
        let response = dpo
            .post_json("/v1/objections", &serde_json::json!({"caller": "06 55 55 55 55", "source": "letter", "reference": "LR-2026-17"}))
            .await
            .unwrap();
        assert_eq!(response.status, 201);
        assert_eq!((response.json()["recordings_deleted"].as_u64(), response.json()["recordings_deferred"].as_u64()), (Some(1), Some(0)));
        assert!(!blob_exists(setup, &free));
        let response = operator
            .post_json("/v1/objections", &serde_json::json!({"caller": "+33644444444", "source": "call", "reference": "during call"}))
            .await
            .unwrap();
        assert_eq!((response.json()["recordings_deleted"].as_u64(), response.json()["recordings_deferred"].as_u64()), (Some(0), Some(1)));
        assert!(blob_exists(setup, &held_new));
        let before = instance.client("operator").get("/v1/status").await.unwrap().json()["counts"]["recordings"].clone();
        let response = upload(&recorder, meta("call-g", &started_ago(SignedDuration::from_mins(10)), "0655555555", None), &wav(7)).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.json(), serde_json::json!({"status": "discarded", "reason": "caller_objection"}));
        let listed = dpo.get("/v1/objections").await.unwrap().json();
        assert_eq!(listed["items"][1]["last_digits"], "55");

        // Call-level objection, recording arriving later.
        let response = operator.post_json("/v1/calls/call-h/objection", &serde_json::json!({})).await.unwrap();
        assert_eq!(response.status, 201);
        let response = upload(&recorder, meta("call-h", &started_ago(SignedDuration::from_mins(5)), "0677777777", None), &wav(8)).await;
        assert_eq!(response.json()["reason"], "call_objection");
        let after = instance.client("operator").get("/v1/status").await.unwrap().json()["counts"]["recordings"].clone();
        assert_eq!(before, after, "a discarded call must not be stored");

        // Erasure of a held recording is deferred.
        let response = dpo
            .send(
                hyper::Method::DELETE,
                &format!("/v1/recordings/{later}"),
                &[("content-type", "application/json")],
                bytes::Bytes::from(r#"{"reason": "data subject erasure request 2026-88"}"#),
            )
            .await
            .unwrap();
        assert_eq!((response.status, response.code().as_str()), (409, "hold_active"));
        assert!(blob_exists(setup, &later));

        // Release: deferred deletions happen at once, the expired one at the next purge.
        let response = legal.post_json(&format!("/v1/holds/{hold_id}/release"), &serde_json::json!({"reason": "appeals exhausted"})).await.unwrap();
        assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
        assert_eq!(response.json()["recordings_deleted"], 2);
        let again = legal.post_json(&format!("/v1/holds/{hold_id}/release"), &serde_json::json!({"reason": "twice"})).await.unwrap();
        assert_eq!((again.status, again.code().as_str()), (409, "already_released"));
        let export = legal.get(&format!("/v1/holds/{hold_id}/export")).await.unwrap();
        assert_eq!((export.status, export.code().as_str()), (409, "already_released"));
        assert!(!blob_exists(setup, &held_new) && !blob_exists(setup, &later));
        assert!(blob_exists(setup, &held_old));
        let (code, out, _) = setup.cli(&["purge"]);
        assert_eq!(code, 0);
        assert!(out.contains("1 recordings deleted"), "{out}");
        assert!(!blob_exists(setup, &held_old));
        let response = dpo.get(&format!("/v1/recordings/{held_new}")).await.unwrap();
        assert_eq!(response.json()["tombstone"]["reason"], "objection");
        // The released hold still says what it covered, deleted recordings included.
        let released = legal.get(&format!("/v1/holds/{hold_id}")).await.unwrap().json();
        assert_eq!(released["state"], "released");
        let ids = released["recording_ids"].as_array().unwrap();
        assert_eq!(ids.len() as u64, released["recordings"].as_u64().unwrap(), "{released}");
        for id in [&held_new, &later, &held_old] {
            let id = id.to_string();
            assert!(ids.iter().any(|listed| listed.as_str() == Some(id.as_str())), "{id} not in {released}");
        }

        // The server counted each deletion by its reason, the deferred ones at release (the
        // expired one went through the CLI's purge, another process), and each discard.
        let metrics = instance.metrics_response().await;
        crate::support::assert_has_lines(&metrics, &[
            "callguard_recordings_purged_total{reason=\"objection\"} 2",
            "callguard_recordings_purged_total{reason=\"erasure\"} 1",
            "callguard_recordings_discarded_total{reason=\"caller_objection\"} 1",
            "callguard_recordings_discarded_total{reason=\"call_objection\"} 1",
        ]);

        let (code, out, err) = setup.cli(&["audit", "verify"]);
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, _) = setup.cli(&["report"]);
        assert_eq!(code, 0);
        assert!(out.contains("active holds: 0") && out.contains("active objections: 2"), "{out}");
    });
    // No number in clear anywhere under the data directory.
    for needle in [
        "0655555555",
        "+33655555555",
        "33644444444",
        "call-a",
        "ACC1",
    ] {
        assert_eq!(
            crate::support::any_file_contains(&instance.setup.data, needle.as_bytes()),
            None,
            "{needle} found in clear"
        );
    }
}

/// An objection registered while a call from that caller is being uploaded wins: the upload,
/// admitted before the objection, is discarded when it completes instead of being stored and
/// served. Found by the crash campaign of issue 6 (round 2 of `CRASH_SEED=1`).
// See: docs/crash-campaign.md
#[test]
fn an_objection_registered_while_the_call_is_uploading_discards_it() {
    let instance = Setup::new("").start();
    let data = instance.setup.data.clone();
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let dpo = instance.client("dpo");
        let audio = tone_wav(440.0, 1.0);
        let upload = recorder
            .start_upload(
                &meta("call-late", &started_at(), "0688888888", None),
                "call.wav",
            )
            .await
            .unwrap();
        upload.send(&audio[..audio.len() / 2]).await.unwrap();
        // Past the objection check: the audio is being written into the vault.
        eventually("the upload is being written", || vault_files(&data).blobs > 0)
        .await;
        let response = dpo
            .post_json(
                "/v1/objections",
                &serde_json::json!({"caller": "06 88 88 88 88", "source": "letter", "reference": "LR-late"}),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 201, "{:?}", response.body);
        upload.send(&audio[audio.len() / 2..]).await.unwrap();
        let response = upload.finish().await.unwrap();
        assert_eq!(
            (response.status, response.json()),
            (
                200,
                serde_json::json!({"status": "discarded", "reason": "caller_objection"})
            )
        );
        assert!(listed(&dpo, "call-late").await.is_empty());
        let status = dpo.get("/v1/status").await.unwrap().json();
        assert_eq!(status["counts"]["recordings"], 0, "{status}");
        let files = vault_files(&data);
        assert_eq!((files.blobs, files.temp), (0, 0), "{files:?}");
        let discards = dpo
            .get("/v1/audit?action=recording.discard")
            .await
            .unwrap()
            .json();
        assert_eq!(discards["items"][0]["detail"], "caller_objection", "{discards}");
    });
}

/// A DPO erasure is final: the same call sent again (a recorder's retry) is discarded, not
/// stored anew. Refused reads are audited under the action of the read, and a malformed query
/// string is refused instead of widening the search.
#[test]
fn a_deleted_call_is_not_stored_again_and_refused_reads_are_audited() {
    let instance = Setup::new("").start();
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let supervisor = instance.client("supervisor");
        let dpo = instance.client("dpo");
        let call = meta(
            "call-erased",
            &started_ago(SignedDuration::from_hours(2)),
            "0612345678",
            None,
        );
        let id = stored(&recorder, call.clone(), &wav(1)).await;
        let response = dpo
            .send(
                hyper::Method::DELETE,
                &format!("/v1/recordings/{id}"),
                &[("content-type", "application/json")],
                bytes::Bytes::from(r#"{"reason": "erasure request 2026-91"}"#),
            )
            .await
            .unwrap();
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );

        // Sent again, identical or not: discarded, nothing stored, the tombstone stays.
        for audio in [wav(1), wav(2)] {
            let response = upload(&recorder, call.clone(), &audio).await;
            assert_eq!(
                (response.status, response.json()),
                (
                    200,
                    serde_json::json!({"status": "discarded", "reason": "deleted"})
                )
            );
        }
        let status = dpo.get("/v1/status").await.unwrap().json();
        assert_eq!(status["counts"]["recordings"], 0, "{status}");
        assert_eq!(vault_files(&instance.setup.data).blobs, 0);
        let response = supervisor
            .get(&format!("/v1/recordings/{id}"))
            .await
            .unwrap();
        assert_eq!(
            (response.status, response.code().as_str()),
            (410, "deleted")
        );
        // An operator's call objection for it says it is deleted, and its audit entry names it.
        let operator = instance.client("operator");
        let response = operator
            .post_json("/v1/calls/call-erased/objection", &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(
            (response.status, response.json()["recording"].as_str()),
            (201, Some("deleted"))
        );
        let entries = dpo
            .get("/v1/audit?action=objection.call")
            .await
            .unwrap()
            .json();
        assert_eq!(entries["items"][0]["object"], id.as_str(), "{entries}");
        assert_eq!(
            entries["items"][0]["detail"], "recording already deleted",
            "{entries}"
        );
        let metrics = instance.metrics_response().await;
        crate::support::assert_has_lines(
            &metrics,
            &["callguard_recordings_discarded_total{reason=\"deleted\"} 2"],
        );

        // Refused reads: no purpose, an unknown purpose, a purpose the role may not use.
        let live = stored(
            &recorder,
            meta(
                "call-live",
                &started_ago(SignedDuration::from_hours(1)),
                "0612345678",
                None,
            ),
            &wav(3),
        )
        .await;
        let audio = |query: &str| format!("/v1/recordings/{live}/audio{query}");
        let response = supervisor.get(&audio("")).await.unwrap();
        assert_eq!(
            (response.status, response.code().as_str()),
            (400, "purpose_required")
        );
        for purpose in ["marketing", "litigation"] {
            let response = supervisor
                .get(&audio(&format!("?purpose={purpose}")))
                .await
                .unwrap();
            assert_eq!(
                (response.status, response.code().as_str()),
                (403, "purpose_not_allowed"),
                "{purpose}"
            );
            let message = response.json()["error"]["message"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(message.contains("quality_review, training"), "{message}");
        }
        let entries = dpo
            .get("/v1/audit?action=recording.read_audio")
            .await
            .unwrap()
            .json();
        let denied: Vec<(String, serde_json::Value)> = entries["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["outcome"] == "denied" && e["object"] == live.as_str())
            .map(|e| {
                (
                    e["detail"].as_str().unwrap().to_owned(),
                    e["purpose"].clone(),
                )
            })
            .collect();
        assert_eq!(
            denied,
            [
                ("no purpose stated".to_owned(), serde_json::Value::Null),
                ("unknown purpose".to_owned(), serde_json::Value::Null),
                (
                    "purpose not allowed for this role".to_owned(),
                    serde_json::json!("litigation")
                ),
            ],
            "{entries}"
        );

        // A malformed escape in a filter is refused, never dropped; `+` unencoded is a `+`.
        for query in ["caller=%zz", "account=%E9", "call_id=abc%", "from=%zz"] {
            let response = dpo.get(&format!("/v1/recordings?{query}")).await.unwrap();
            assert_eq!(response.status, 400, "{query}");
            let message = response.json()["error"]["message"]
                .as_str()
                .unwrap()
                .to_owned();
            let name = query.split('=').next().unwrap();
            assert!(message.contains(&format!("`{name}`")), "{message}");
        }
        let found = dpo
            .get("/v1/recordings?caller=+33612345678")
            .await
            .unwrap()
            .json();
        let ids: Vec<&str> = found["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [live.as_str()], "{found}");

        // A misspelt key of a hold is refused, not ignored (it would mean include_future=false).
        let legal = instance.client("legal");
        let response = legal
            .post_json(
                "/v1/holds",
                &serde_json::json!({"case_ref": "RG 1", "reason": "r", "selector": {"account": "A"}, "includeFuture": true}),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 400);
        let message = response.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("unknown key `includeFuture`"), "{message}");
        // A hold naming a recording that does not exist, or was deleted, is not placed.
        let response = legal
            .post_json(
                "/v1/holds",
                &serde_json::json!({"case_ref": "RG 2", "reason": "r", "selector": {"recording_ids": [live, "0123456789abcdef0123456789abcdef"]}}),
            )
            .await
            .unwrap();
        assert_eq!((response.status, response.code().as_str()), (404, "not_found"));
        let response = legal
            .post_json(
                "/v1/holds",
                &serde_json::json!({"case_ref": "RG 3", "reason": "r", "selector": {"recording_ids": [id]}}),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 201, "{}", String::from_utf8_lossy(&response.body));
        let placed = response.json();
        assert_eq!(placed["recordings"], 0, "{placed}");
        assert_eq!(placed["deleted"][0]["id"], id.as_str(), "{placed}");
        assert_eq!(placed["deleted"][0]["reason"], "erasure", "{placed}");
        let holds = legal.get("/v1/holds").await.unwrap().json();
        assert_eq!(holds["items"].as_array().unwrap().len(), 1, "{holds}");

        // Subject access finds the person on either end of the call: `live` was received by
        // 01 45 67 89 00. The search filter stays the caller.
        let found = dpo
            .get("/v1/subjects/recordings?caller=0145678900")
            .await
            .unwrap()
            .json();
        assert_eq!(found["items"][0]["id"], live.as_str(), "{found}");
        assert_eq!(found["items"].as_array().unwrap().len(), 1, "{found}");
        let found = dpo
            .get("/v1/recordings?caller=0145678900")
            .await
            .unwrap()
            .json();
        assert_eq!(found["items"], serde_json::json!([]), "{found}");

        // The subject's export carries what the DPO may read: an expired, unheld recording of
        // theirs is left out, by id and why; the export itself is audited.
        let old = stored(
            &recorder,
            meta("call-old", "2025-01-10T10:00:00Z", "0612345678", None),
            &wav(4),
        )
        .await;
        let export = dpo
            .get("/v1/subjects/export?caller=0612345678")
            .await
            .unwrap();
        assert_eq!(export.status, 200);
        let mut archive = tar::Archive::new(export.body.as_ref());
        let mut names = Vec::new();
        let mut manifest = serde_json::Value::Null;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if name == "manifest.json" {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                manifest = serde_json::from_slice(&bytes).unwrap();
            }
            names.push(name);
        }
        assert_eq!(names, ["manifest.json".to_owned(), format!("{live}.wav")]);
        assert_eq!(
            manifest["left_out"],
            serde_json::json!([{"id": old, "why": "retention period ended"}])
        );
        let entries = dpo
            .get("/v1/audit?action=subject.export")
            .await
            .unwrap()
            .json();
        assert_eq!(
            entries["items"][0]["detail"], "1 recordings exported, 1 left out",
            "{entries}"
        );
    });
}

#[test]
fn time_bounds_include_both_ends_to_the_second_and_misspelt_filters_are_refused() {
    let instance = Setup::new("").start();
    runtime().block_on(async {
        let (recorder, dpo, legal) = (instance.client("recorder"), instance.client("dpo"), instance.client("legal"));
        let at = started_ago(SignedDuration::from_hours(2));
        let id = stored(&recorder, meta("bounds-1", &at, "0611223344", None), &wav(21)).await;
        let t: jiff::Timestamp = at.parse().unwrap();
        let second = |delta: i64| t.checked_add(SignedDuration::from_secs(delta)).unwrap().to_string();
        let count = |query: String| {
            let dpo = &dpo;
            async move {
                let response = dpo.get(&format!("/v1/recordings?{query}")).await.unwrap();
                (response.status, response.json()["items"].as_array().map(Vec::len).unwrap_or(0))
            }
        };
        let q = crate::ingest_http::query_escape;
        assert_eq!(count(format!("from={}&to={}", q(&at), q(&at))).await, (200, 1), "from = to = the start");
        assert_eq!(count(format!("to={}", q(&second(-1)))).await, (200, 0));
        assert_eq!(count(format!("from={}", q(&second(1)))).await, (200, 0));
        assert_eq!(count(format!("from={}&to={}", q(&at), q(&second(-1)))).await.0, 400, "to before from");
        assert_eq!(count("CALLER=0699".to_owned()).await.0, 400, "a misspelt filter");
        assert_eq!(count(format!("from={}&from={}", q(&at), q(&second(2)))).await.0, 400, "two values");
        assert_eq!(count("caller=&cursor=".to_owned()).await, (200, 1), "an empty one is absent");

        // A hold over [t, t] covers the call that started at t, and says so.
        let hold = legal
            .post_json(
                "/v1/holds",
                &serde_json::json!({"case_ref": "RG 26/1", "reason": "bounds", "selector": {"from": at, "to": at}}),
            )
            .await
            .unwrap();
        assert_eq!(hold.status, 201, "{:?}", hold.body);
        assert_eq!(hold.json()["recordings"], 1);
        let hold_id = hold.json()["id"].as_str().unwrap().to_owned();
        let shown = legal.get(&format!("/v1/holds/{hold_id}")).await.unwrap().json();
        assert_eq!((shown["from"].as_str(), shown["to"].as_str()), (Some(at.as_str()), Some(at.as_str())));
        assert_eq!(shown["recording_ids"][0], id.to_string());
    });
}
