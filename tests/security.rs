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

#[test]
fn requests_a_browser_sends_for_another_site_are_refused_and_audited() {
    let instance = Setup::new("").start();
    runtime().block_on(async {
        let dpo = instance.client("dpo");
        let objection = serde_json::json!({
            "caller": "+33611112222", "source": "web", "reference": "a=b"
        })
        .to_string();
        let post = |headers: Vec<(&'static str, &'static str)>| {
            let (dpo, body) = (&dpo, objection.clone());
            async move {
                dpo.send(
                    hyper::Method::POST,
                    "/v1/objections",
                    &headers,
                    bytes::Bytes::from(body),
                )
                .await
                .unwrap()
            }
        };
        // A form on another site's page (text/plain keeps the JSON intact), in a browser that
        // says where it comes from, and in one that only sends Origin.
        for headers in [
            vec![
                ("content-type", "text/plain"),
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
            ],
            vec![
                ("content-type", "text/plain"),
                ("origin", "https://evil.example"),
            ],
            vec![("sec-fetch-site", "same-site"), ("sec-fetch-mode", "cors")],
        ] {
            let response = post(headers.clone()).await;
            assert_eq!(
                (response.status, response.code().as_str()),
                (403, "cross_site_request"),
                "{headers:?}"
            );
        }
        // Another site's script reading a list: refused, even as a GET. Its media element
        // (a supervision page's player) may play what it cannot read.
        let get = |dest: &'static str| {
            let dpo = &dpo;
            async move {
                dpo.send(
                    hyper::Method::GET,
                    "/v1/objections",
                    &[
                        ("sec-fetch-site", "cross-site"),
                        ("sec-fetch-mode", "no-cors"),
                        ("sec-fetch-dest", dest),
                    ],
                    bytes::Bytes::new(),
                )
                .await
                .unwrap()
                .status
            }
        };
        assert_eq!(get("empty").await, 403);
        assert_eq!(get("script").await, 403);
        assert_eq!(get("audio").await, 200);
        let listed = dpo.get("/v1/objections").await.unwrap();
        assert_eq!(listed.json()["items"].as_array().map(Vec::len), Some(0));

        // The server's own origin, the user's own navigation, and clients that are not
        // browsers pass.
        let accepted = [
            vec![
                ("origin", "https://localhost"),
                ("content-type", "application/json"),
            ],
            vec![
                ("sec-fetch-site", "same-origin"),
                ("content-type", "application/json"),
            ],
            vec![("content-type", "application/json")],
        ];
        for headers in accepted {
            let response = post(headers.clone()).await;
            assert_eq!(response.status, 201, "{headers:?}: {:?}", response.body);
            // Answers carrying personal data are never cached.
            assert_eq!(response.headers["cache-control"], "no-store");
        }
        let linked = dpo
            .send(
                hyper::Method::GET,
                "/v1/status",
                &[
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "navigate"),
                ],
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(linked.status, 200, "a link from another site opens");

        let audit = dpo.get("/v1/audit?action=objection.create").await.unwrap();
        let entries = audit.json();
        let outcomes: Vec<&str> = entries["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|entry| entry["outcome"].as_str())
            .collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == "denied").count(),
            3,
            "{outcomes:?}"
        );
    });
}

#[test]
fn a_certificate_without_a_role_learns_nothing_of_the_routes() {
    let instance = Setup::new("").start();
    runtime().block_on(async {
        let stranger = instance.client("stranger");
        for (method, path) in [
            (hyper::Method::GET, "/nope"),
            (hyper::Method::PUT, "/v1/audit"),
            (hyper::Method::DELETE, "/v1/recordings"),
        ] {
            let response = stranger
                .send(method.clone(), path, &[], bytes::Bytes::new())
                .await
                .unwrap();
            assert_eq!(
                (response.status, response.code().as_str()),
                (403, "unknown_identity"),
                "{method} {path}"
            );
            assert!(response.headers.get("allow").is_none());
        }
    });
}

#[test]
fn connections_that_never_finish_their_handshake_cannot_lock_clients_out() {
    let instance =
        Setup::with_server("max_connections = 4\nhandshake_timeout = \"60s\"", "").start();
    runtime().block_on(async {
        // Three times the limit of connections that never send a byte, as a flood would: each
        // holds its place for the whole handshake timeout unless a newcomer takes it.
        let mut idle = Vec::new();
        for _ in 0..12 {
            idle.push(tokio::net::TcpStream::connect(instance.api).await.unwrap());
        }
        let dpo = instance.client("dpo");
        for attempt in 0..3 {
            let answer =
                tokio::time::timeout(std::time::Duration::from_secs(20), dpo.get("/v1/status"))
                    .await
                    .unwrap_or_else(|_| panic!("attempt {attempt}: locked out"))
                    .unwrap();
            assert_eq!(answer.status, 200);
        }
        let metrics = instance.metrics_response().await;
        let shed: f64 = metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix("callguard_tls_handshake_failures_total{reason=\"shed\"} ")
            })
            .and_then(|value| value.trim().parse().ok())
            .expect("the shed counter is exported");
        assert!(shed >= 8.0, "{shed} handshakes shed");
        drop(idle);
    });
}

#[test]
fn a_certificate_naming_two_cns_names_no_one() {
    let instance = Setup::new("").start();
    let pki = &instance.setup.pki;
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(pki)
            .output()
            .expect("openssl");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    std::fs::write(pki.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, subject) in [
        ("twocns", "/CN=supervisor/CN=dpo"),
        ("multirdn", "/CN=supervisor+CN=dpo"),
    ] {
        run(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-subj",
            subject,
            "-multivalue-rdn",
            "-out",
            &format!("{name}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "client.ext",
            "-out",
            &format!("{name}.crt"),
        ]);
    }
    runtime().block_on(async {
        for name in ["twocns", "multirdn"] {
            let response = instance.client(name).get("/v1/audit").await.unwrap();
            assert_eq!(
                (response.status, response.code().as_str()),
                (403, "unknown_identity"),
                "{name}"
            );
        }
        let audit = instance
            .client("dpo")
            .get("/v1/audit?actor=(no%20usable%20CN)")
            .await
            .unwrap()
            .json();
        let entries = audit["items"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "{audit}");
        assert!(entries.iter().all(|e| e["outcome"] == "denied"));
    });
}

#[test]
fn an_oversized_json_body_is_answered_413_while_the_client_still_sends() {
    let instance = Setup::new("").start();
    runtime().block_on(async {
        let alarm_source = instance.client("alarm_source");
        let padding = "x".repeat(700 * 1024);
        let body = serde_json::json!({"account": "1234", "event": "E130", "zone": padding});
        for _ in 0..3 {
            let response = alarm_source
                .send(
                    hyper::Method::POST,
                    "/v1/alarms",
                    &[("content-type", "application/json")],
                    bytes::Bytes::from(body.to_string()),
                )
                .await
                .expect("an answer, not a broken pipe");
            assert_eq!(
                (response.status, response.code().as_str()),
                (413, "payload_too_large")
            );
        }
    });
}

#[test]
fn the_server_writes_no_core_dump() {
    let instance = Setup::new("").start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", instance.pid())).unwrap();
    let core = limits
        .lines()
        .find(|line| line.starts_with("Max core file size"))
        .expect("a core limit line");
    let values: Vec<&str> = core.split_whitespace().skip(4).take(2).collect();
    assert_eq!(values, ["0", "0"], "{core}");
}
