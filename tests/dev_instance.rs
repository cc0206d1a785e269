//! README's first command, as a new user runs it: `callguard serve --dev` in an empty
//! directory, then the printed curls for `/v1/status` and for an upload pasted into a shell.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use callguard::clock::{Clock, SystemClock};

use crate::support::binary;

/// Runs `serve --dev` in `dir` on free ports; returns the child and every line printed up to
/// the ready line.
fn start_dev(dir: &std::path::Path) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(binary())
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let ready = line.starts_with("callguard ready: ");
            lines.push(line);
            if ready {
                let _ = tx.send(lines.clone());
            }
        }
    });
    let lines = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the dev instance did not become ready");
    (child, lines)
}

/// The printed command line that starts with `curl ` and ends with `suffix`.
fn printed_curl(lines: &[String], suffix: &str) -> String {
    lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("curl ") && l.ends_with(suffix))
        .unwrap_or_else(|| panic!("no curl for {suffix} printed:\n{}", lines.join("\n")))
        .to_owned()
}

/// Runs `curl` as pasted into a shell in `dir`; returns the HTTP status and the JSON body.
fn paste(curl: &str, dir: &std::path::Path) -> (String, serde_json::Value) {
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("{curl} -s -w '\\n%{{http_code}}'"))
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    (code.to_owned(), body)
}

#[test]
fn the_dev_instance_prints_a_curl_that_works_and_reuses_its_pki() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = start_dev(dir.path());
    let curl = printed_curl(&lines, "/v1/status");
    let (code, status) = paste(&curl, dir.path());
    assert_eq!(code, "200", "{status}");
    assert_eq!(status["identity"]["role"], "operator");

    // The same curl without the client certificate fails the handshake.
    let without =
        curl.split(" --cert").next().unwrap().to_owned() + " " + curl.rsplit(' ').next().unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("{without} -s -o /dev/null -w '%{{http_code}}'"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "000");
    assert!(!output.status.success());

    // The printed upload, with a `call.wav` beside it: stored, and not already past retention
    // (its call starts when the instance does).
    let upload = printed_curl(&lines, "/v1/recordings");
    let started_at: jiff::Timestamp = upload
        .split("\"started_at\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no started_at in {upload}"))
        .parse()
        .unwrap();
    let skew = (SystemClock.now() - started_at).get_seconds().abs();
    assert!(
        skew < 600,
        "the example call starts {skew} s away from now: {upload}"
    );
    let call = crate::support::audio::wav_sine(
        dir.path(),
        crate::support::audio::WavEncoding::Mulaw,
        8000,
        1,
        1.5,
    );
    std::fs::rename(&call.path, dir.path().join("call.wav")).unwrap();
    let (code, stored) = paste(&upload, dir.path());
    assert_eq!(code, "201", "{stored}");
    assert_eq!(stored["codec"], "pcm_mulaw", "{stored}");
    let retain_until: jiff::Timestamp = stored["retain_until"].as_str().unwrap().parse().unwrap();
    assert!(
        retain_until > SystemClock.now() + jiff::SignedDuration::from_hours(24 * 150),
        "{stored}"
    );

    let _ = child.kill();
    let _ = child.wait();
    let pki = dir.path().join("callguard-dev/pki");
    let ca = std::fs::read(pki.join("ca.crt")).unwrap();
    let key = std::fs::read(dir.path().join("callguard-dev/master.key")).unwrap();
    for role in crate::support::ROLES {
        assert!(
            pki.join(format!("{role}.crt")).exists() && pki.join(format!("{role}.key")).exists(),
            "{role}"
        );
    }
    // Twice: same directory, same certificates, same key.
    let (mut child, _) = start_dev(dir.path());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(std::fs::read(pki.join("ca.crt")).unwrap(), ca);
    assert_eq!(
        std::fs::read(dir.path().join("callguard-dev/master.key")).unwrap(),
        key
    );
}
