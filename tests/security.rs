//! The security matrix: every endpoint of the route table × every kind of unauthorised client,
//! TLS versions below 1.2, and a vault on a full file system.

use std::process::Command;

use callguard::api::routes::Endpoint;

use crate::support::{Setup, files_under};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_endpoint_refuses_every_unauthorised_client() {
    let instance = Setup::new("").start();
    runtime().block_on(async {
        let refused_at_handshake = [
            ("no certificate", instance.anonymous()),
            ("certificate from another CA", instance.client("outsider")),
            ("expired certificate", instance.client("expired")),
        ];
        let unknown = instance.client("stranger");
        for (method, path, endpoint) in Endpoint::examples() {
            for (who, client) in &refused_at_handshake {
                let result = client
                    .send(method.clone(), &path, &[], bytes::Bytes::new())
                    .await;
                assert!(
                    result.is_err(),
                    "{who} got an HTTP answer on {method} {path}: {result:?}"
                );
            }
            let response = unknown
                .send(method.clone(), &path, &[], bytes::Bytes::new())
                .await
                .unwrap();
            assert_eq!(
                (response.status, response.code().as_str()),
                (403, "unknown_identity"),
                "{:?}",
                endpoint
            );
        }
    });
}

#[test]
fn tls_versions_below_1_2_are_refused() {
    let instance = Setup::new("").start();
    let connect = format!("127.0.0.1:{}", instance.api.port());
    let run = |version: &str| {
        let output = Command::new("openssl")
            .args([
                "s_client",
                version,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
                "-connect",
                &connect,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client (Debian package openssl)");
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    };
    for version in ["-tls1", "-tls1_1"] {
        let out = run(version);
        assert!(
            out.contains("alert") || out.contains("no protocols available"),
            "{version}: {out}"
        );
        assert!(
            !out.contains("Cipher is ECDHE"),
            "{version} negotiated a session: {out}"
        );
    }
    let out = run("-tls1_2");
    assert!(out.contains("TLSv1.2"), "{out}");
}

/// Unmounts a test file system when dropped (after the server stopped).
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn wav(seconds: u32) -> Vec<u8> {
    let n = 8000 * seconds;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + n).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&n.to_le_bytes());
    out.extend((0..n).map(|i| (i * 13 % 251) as u8));
    out
}

fn multipart(call_id: &str, audio: &[u8]) -> (String, bytes::Bytes) {
    let boundary = "cgb0undary";
    let meta = serde_json::json!({"call_id": call_id, "started_at": "2026-11-22T10:00:00Z", "direction": "inbound", "caller": "0612345678"});
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{meta}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"c.wav\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={boundary}"),
        bytes::Bytes::from(body),
    )
}

#[test]
fn a_full_vault_answers_507_leaves_nothing_and_keeps_serving() {
    let setup = Setup::new("");
    let vault = setup.data.join("vault");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs"])
        .arg(&vault)
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "this test mounts a small tmpfs and needs root (CI runs as root)"
    );
    let _mount = Mount(vault.clone());
    let instance = setup.start();
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let (content_type, body) = multipart("small-1", &wav(20));
        let response = recorder
            .send(
                hyper::Method::POST,
                "/v1/recordings",
                &[("content-type", &content_type)],
                body,
            )
            .await
            .unwrap();
        assert_eq!(
            response.status,
            201,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let (content_type, body) = multipart("big-1", &wav(120));
        let response = recorder
            .send(
                hyper::Method::POST,
                "/v1/recordings",
                &[("content-type", &content_type)],
                body,
            )
            .await
            .unwrap();
        assert_eq!(
            (response.status, response.code().as_str()),
            (507, "insufficient_storage")
        );
        // Nothing half-written remains, the catalog holds only the first, the server still answers.
        assert!(files_under(&vault.join("tmp")).is_empty());
        let status = instance.client("operator").get("/v1/status").await.unwrap();
        assert_eq!(
            (
                status.status,
                status.json()["counts"]["recordings"].as_u64()
            ),
            (200, Some(1))
        );
        // Space is there again for a small one.
        let (content_type, body) = multipart("small-2", &wav(10));
        let response = recorder
            .send(
                hyper::Method::POST,
                "/v1/recordings",
                &[("content-type", &content_type)],
                body,
            )
            .await
            .unwrap();
        assert_eq!(response.status, 201);
    });
    let setup = instance.stop();
    let (code, out, err) = setup.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
}
