//! Mutual TLS, identities and the access matrix, through the real server.

use std::sync::Arc;

use callguard::api::routes::Endpoint;
use tokio::io::AsyncWriteExt;

use crate::support::{Client, ROLES, Setup};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn status_answers_each_role_and_refuses_everyone_else() {
    let instance = Setup::new("").start();
    runtime().block_on(async {
        for role in ROLES {
            let response = instance.client(role).get("/v1/status").await.unwrap();
            assert_eq!(response.status, 200, "{role}: {:?}", response.body);
            let body = response.json();
            assert_eq!(body["identity"]["role"], role);
            assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        }
        // No certificate, another CA, an expired certificate: refused during the handshake.
        for (name, client) in [
            ("no certificate", instance.anonymous()),
            ("other CA", instance.client("outsider")),
            ("expired", instance.client("expired")),
        ] {
            let error = client.get("/v1/status").await.expect_err(name);
            assert!(
                error.starts_with("tls")
                    || error.starts_with("http")
                    || error.starts_with("request"),
                "{name}: {error}"
            );
        }
        // A valid certificate whose CN has no role: 403 with the error shape, audited.
        let response = instance.client("stranger").get("/v1/status").await.unwrap();
        assert_eq!(response.status, 403);
        assert_eq!(response.code(), "unknown_identity");
        assert!(
            response.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not registered")
        );
        let audit = instance
            .client("dpo")
            .get("/v1/audit?actor=stranger")
            .await
            .unwrap()
            .json();
        let entry = &audit["items"][0];
        assert_eq!(
            (entry["outcome"].as_str(), entry["action"].as_str()),
            (Some("denied"), Some("status"))
        );
    });
}

#[test]
fn every_route_checks_the_role_before_anything_else() {
    let instance = Setup::new("").start();
    runtime().block_on(async {
        let clients: Vec<(&str, Client)> = ROLES
            .iter()
            .map(|role| (*role, instance.client(role)))
            .collect();
        for (method, path, endpoint) in Endpoint::examples() {
            let allowed: Vec<&str> = endpoint
                .allowed_roles()
                .iter()
                .map(|r| r.as_str())
                .collect();
            for (role, client) in &clients {
                let response = client
                    .send(method.clone(), &path, &[], bytes::Bytes::new())
                    .await
                    .unwrap();
                match allowed.contains(role) {
                    true => assert!(
                        response.status != 403
                            || response.code() == "purpose_not_allowed"
                            || response.code() == "no_open_alarm",
                        "{role} refused on {method} {path}: {:?}",
                        response.body
                    ),
                    false => {
                        assert_eq!(response.status, 403, "{role} allowed on {method} {path}");
                        assert_eq!(response.code(), "forbidden", "{role} on {method} {path}");
                    }
                }
            }
        }
        // Refusals are audited.
        let denied = instance
            .client("dpo")
            .get("/v1/audit?limit=1000")
            .await
            .unwrap()
            .json();
        let n_denied = denied["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["outcome"] == "denied" && e["detail"] == "role not allowed on this endpoint"
            })
            .count();
        let expected: usize = Endpoint::examples()
            .iter()
            .map(|(_, _, e)| ROLES.len() - e.allowed_roles().len())
            .sum();
        assert_eq!(n_denied, expected);
    });
}

#[test]
fn malformed_paths_and_ids_are_404_never_files() {
    let instance = Setup::new("").start();
    runtime().block_on(async {
        let client = instance.client("dpo");
        for path in [
            "/v1/recordings/../../../etc/passwd",
            "/v1/recordings/%2e%2e%2f%2e%2e%2fcatalog.sqlite",
            "/v1/recordings/not-an-id",
            "/v1/nothing",
            "/",
        ] {
            let response = client.get(path).await.unwrap();
            assert_eq!(response.status, 404, "{path}");
            assert_eq!(response.code(), "not_found", "{path}");
        }
        let response = client
            .send(hyper::Method::PATCH, "/v1/status", &[], bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(
            (response.status, response.code().as_str()),
            (405, "method_not_allowed")
        );
        assert_eq!(response.headers["allow"], "GET, HEAD");
        let response = client
            .send(
                hyper::Method::PUT,
                "/v1/recordings",
                &[],
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 405);
        assert_eq!(response.headers["allow"], "GET, HEAD, POST");
    });
}

#[test]
fn tls_1_2_is_accepted_and_slow_or_huge_clients_are_cut_off() {
    let instance = Setup::with_server("handshake_timeout = \"2s\"", "").start();
    runtime().block_on(async {
        // TLS 1.2 only.
        let pki = &instance.setup.pki;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(pki.join("ca.crt")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        use rustls::pki_types::pem::PemObject;
        let chain: Vec<_> =
            rustls::pki_types::CertificateDer::pem_file_iter(pki.join("operator.crt"))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_file(pki.join("operator.key")).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
        let response = Client::with_config(instance.api, config)
            .get("/v1/status")
            .await
            .unwrap();
        assert_eq!(response.status, 200);

        // A client that connects and sends nothing is disconnected after the handshake timeout.
        let mut idle = tokio::net::TcpStream::connect(instance.api).await.unwrap();
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
        )
        .await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "idle connection not closed: {closed:?}"
        );
        let _ = idle.shutdown().await;

        // A huge header is refused, a huge JSON body gets 413.
        let client = instance.client("operator");
        let big = "x".repeat(100 * 1024);
        let response = client
            .send(
                hyper::Method::GET,
                "/v1/status",
                &[("x-big", &big)],
                bytes::Bytes::new(),
            )
            .await;
        assert!(
            response.is_err() || response.as_ref().map(|r| r.status).unwrap_or(0) == 431,
            "{response:?}"
        );
        let dpo = instance.client("dpo");
        let huge = bytes::Bytes::from(vec![b' '; 3 << 20]);
        let response = dpo
            .send(
                hyper::Method::POST,
                "/v1/objections",
                &[("content-type", "application/json")],
                huge,
            )
            .await;
        if let Ok(response) = response {
            assert!(
                response.status == 413 || response.status == 501,
                "{}",
                response.status
            );
        }
        // The server is still fine.
        assert_eq!(client.get("/v1/status").await.unwrap().status, 200);
    });
}

#[test]
fn metrics_are_served_in_prometheus_format() {
    let instance = Setup::new("").start();
    let body = runtime().block_on(async {
        let _ = instance.client("operator").get("/v1/status").await.unwrap();
        instance.metrics_response().await
    });
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("callguard_http_requests_total{endpoint=\"status\",status=\"200\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("callguard_http_request_duration_seconds_bucket"),
        "{body}"
    );
    // Labelled counters exist at 0 before their first event.
    crate::support::assert_has_lines(
        &body,
        &[
            "callguard_recordings_discarded_total{reason=\"caller_objection\"} 0",
            "callguard_recordings_purged_total{reason=\"retention\"} 0",
            "callguard_audio_reads_total{purpose=\"quality_review\"} 0",
            "callguard_alarm_frames_total{result=\"ack\"} 0",
        ],
    );
}
