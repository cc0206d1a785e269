//! The security matrix: every endpoint of the route table × every kind of unauthorised client,
//! and TLS versions below 1.2. A full disk is `disk_full`.

use std::process::Command;

use callguard::api::routes::Endpoint;

use crate::support::Setup;

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
