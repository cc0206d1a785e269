//! Black-box test harness: runs the real `callguard` binary in a fresh temporary directory with
//! a generated configuration and PKI (generated at run time, never committed), on port 0, and
//! talks to it over real mutual TLS. Waits on the readiness line, never a sleep loop; prints the
//! instance's log when a test fails.

#![allow(dead_code)]

pub mod audio;
pub mod client;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callguard::pki::{self, Authority, Validity};

pub use client::Client;

/// Every role name, as registered in a fresh instance.
pub const ROLES: [&str; 7] = [
    "operator",
    "supervisor",
    "legal",
    "dpo",
    "recorder",
    "alarm_source",
    "contracts",
];

/// A temporary instance directory with config and PKI, not yet running.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub pki: PathBuf,
    pub data: PathBuf,
    pub spool: PathBuf,
}

/// The path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_callguard")
}

/// Runs `callguard ARGS` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("spawn callguard");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Setup {
    /// A directory with PKI (CA, server, one client per role, `stranger` (valid, unregistered),
    /// `expired`, and `outsider` signed by another CA), a config using port 0, initialised and
    /// with every role registered. `extra` is appended to the config file.
    pub fn new(extra: &str) -> Setup {
        Setup::with_server("", extra)
    }

    /// Same, with extra keys in the `[server]` table.
    pub fn with_server(server_extra: &str, extra: &str) -> Setup {
        Setup::with_sections(server_extra, "", extra)
    }

    /// Same, with extra keys in the `[server]` and `[ingest]` tables (TOML forbids opening a
    /// table twice, so `[ingest]` keys cannot go in `extra`).
    pub fn with_sections(server_extra: &str, ingest_extra: &str, extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        let pki_dir = root.join("pki");
        let data = root.join("data");
        let spool = root.join("spool");
        std::fs::create_dir_all(&pki_dir).unwrap();
        let ca = Authority::generate("test CA").unwrap();
        ca.save(&pki_dir).unwrap();
        pki::write_pair(&pki_dir, "server", &ca.server().unwrap()).unwrap();
        for role in ROLES {
            pki::write_pair(&pki_dir, role, &ca.client(role, Validity::Current).unwrap()).unwrap();
        }
        pki::write_pair(
            &pki_dir,
            "stranger",
            &ca.client("stranger", Validity::Current).unwrap(),
        )
        .unwrap();
        pki::write_pair(
            &pki_dir,
            "expired",
            &ca.client("operator", Validity::Expired).unwrap(),
        )
        .unwrap();
        let other = Authority::generate("other CA").unwrap();
        pki::write_pair(
            &pki_dir,
            "outsider",
            &other.client("operator", Validity::Current).unwrap(),
        )
        .unwrap();

        let config = root.join("callguard.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"{p}/server.crt\"\nkey = \"{p}/server.key\"\nclient_ca = \"{p}/ca.crt\"\n{server_extra}\n\
             [storage]\ndata_dir = \"{data}\"\n[keys]\nmaster_key_file = \"{root}/master.key\"\n\
             [ingest]\nspool_dir = \"{spool}\"\n{ingest_extra}\n[metrics]\nlisten = \"127.0.0.1:0\"\n{extra}\n",
            p = pki_dir.display(),
            data = data.display(),
            root = root.display(),
            spool = spool.display(),
        );
        std::fs::write(&config, text).unwrap();
        let setup = Setup {
            dir,
            config,
            pki: pki_dir,
            data,
            spool,
        };
        let (code, out, err) = setup.cli(&["init"]);
        assert_eq!(code, 0, "init failed: {out}{err}");
        for role in ROLES {
            let (code, out, err) = setup.cli(&["user", "add", role, "--role", role]);
            assert_eq!(code, 0, "user add failed: {out}{err}");
        }
        setup
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs an administrative command against this instance's config.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.config.display().to_string();
        let mut full: Vec<&str> = args.to_vec();
        full.push("--config");
        full.push(&config);
        run_cli(&full, self.dir.path())
    }

    /// Starts the server and waits for its readiness line.
    pub fn start(self) -> Instance {
        Instance::start(self)
    }
}

/// A running server.
pub struct Instance {
    pub setup: Setup,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Instance {
    fn start(setup: Setup) -> Instance {
        let mut child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&setup.config)
            .current_dir(setup.dir.path())
            .env("CALLGUARD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn callguard serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let stderr_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                stderr_log.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stdout_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("callguard ready: ") {
                    let _ = ready_tx.send(rest.to_owned());
                }
                stdout_log.lock().unwrap().push(line);
            }
        });
        let ready = match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "callguard did not become ready:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        let mut api = None;
        let mut metrics = None;
        for part in ready.split_whitespace() {
            if let Some(addr) = part.strip_prefix("api=https://") {
                api = addr.parse().ok();
            }
            if let Some(addr) = part.strip_prefix("metrics=http://") {
                metrics = addr.parse().ok();
            }
        }
        Instance {
            setup,
            api: api.expect("api address in the ready line"),
            metrics: metrics.expect("metrics address in the ready line"),
            child: Some(child),
            log,
        }
    }

    /// A client presenting `name`.crt/key from the PKI directory.
    pub fn client(&self, name: &str) -> Client {
        Client::new(
            self.api,
            &self.setup.pki.join("ca.crt"),
            Some((
                &self.setup.pki.join(format!("{name}.crt")),
                &self.setup.pki.join(format!("{name}.key")),
            )),
        )
    }

    /// A client presenting no certificate.
    pub fn anonymous(&self) -> Client {
        Client::new(self.api, &self.setup.pki.join("ca.crt"), None)
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The raw answer (status line, headers, body) of `GET /metrics` on the metrics listener;
    /// see `assert_has_lines`.
    pub async fn metrics_response(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.metrics).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Kills the server with SIGKILL (crash tests) and waits for it.
    pub fn kill9(&mut self) -> Setup {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(
            &mut self.setup,
            Setup {
                config: placeholder.path().join("none"),
                pki: placeholder.path().to_owned(),
                data: placeholder.path().to_owned(),
                spool: placeholder.path().to_owned(),
                dir: placeholder,
            },
        )
    }

    /// Stops the server with SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> Setup {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let status = child.wait().expect("wait");
            assert!(
                status.success(),
                "callguard did not stop cleanly: {status}\n{}",
                self.log()
            );
        }
        self.kill9()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- callguard log ----\n{}\n-----------------------",
                self.log()
            );
            return;
        }
        // A panic in a server task is caught by the runtime and the request goes on failing
        // quietly: any test whose server panicked fails. (The stderr reader may still be
        // catching up with the last lines; they are rare, and the next test catches them.)
        // Decoder panics that the probe contains (symphonia on malformed input) are expected.
        let log = self.log();
        if let Some(line) = log
            .lines()
            .find(|line| line.contains("panicked at") && !line.contains("symphonia"))
        {
            panic!("the server panicked: {line}\n---- callguard log ----\n{log}");
        }
    }
}

/// Whether `path` is the temporary file of a vault write in progress (or cut by a crash):
/// `<id>-<random>.tmp` beside the blobs, in a shard or the quarantine.
pub fn is_vault_temporary(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "tmp")
}

/// The files of the vault under data directory `data` that are neither writes in progress nor
/// quarantined: the recordings' blobs.
pub fn recording_blob_files(data: &Path) -> Vec<PathBuf> {
    let quarantine = data.join("vault").join("quarantine");
    files_under(&data.join("vault"))
        .into_iter()
        .filter(|path| !path.starts_with(&quarantine) && !is_vault_temporary(path))
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match path.is_dir() {
                true => stack.push(path),
                false => out.push(path),
            }
        }
    }
    out
}

/// Whether any file under `dir` contains `needle`.
pub fn any_file_contains(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    files_under(dir).into_iter().find(|path| {
        std::fs::read(path)
            .map(|bytes| !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    })
}

/// Fails unless each of `lines` is a whole line of `text` (metrics samples, CLI output).
pub fn assert_has_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.lines().any(|l| l == *line), "no `{line}` in:\n{text}");
    }
}
