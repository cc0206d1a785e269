//! The administrative command line, run as a user would: exit codes, messages, audit chain
//! verification and tampering, configuration errors, key rotation.

use std::os::unix::fs::PermissionsExt;

use crate::support::{Setup, run_cli};

#[test]
fn usage_errors_exit_2_and_failures_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, _) = run_cli(&["frobnicate"], dir.path());
    assert_eq!(code, 2);
    let (code, _, err) = run_cli(
        &[
            "user",
            "add",
            "x",
            "--role",
            "legal",
            "--config",
            "/nonexistent.toml",
        ],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent.toml") && err.contains("cannot read"),
        "{err}"
    );
    // --dev has its own configuration: with --config it is a usage error.
    let (code, _, err) = run_cli(&["--dev", "report", "--config", "/x.toml"], dir.path());
    assert_eq!(code, 2, "{err}");
}

#[test]
fn admin_commands_refuse_what_cannot_work() {
    let setup = Setup::new("");
    // CNs as a certificate carries them, not whole names or padded ones.
    for cn in ["CN=bob,O=acme", " bob", "bob "] {
        let (code, _, err) = setup.cli(&["user", "add", cn, "--role", "legal"]);
        assert_eq!(code, 1, "{cn}: {err}");
    }
    // A rotation to the current key is no rotation.
    let current = setup.root().join("master.key");
    let (code, _, err) = setup.cli(&["keys", "rotate", "--new-key", current.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("holds the current master key"), "{err}");
    // Output into a pipe closed early: no panic, status 0.
    let mut child = std::process::Command::new(crate::support::binary())
        .args(["audit", "export", "--config"])
        .arg(&setup.config)
        .current_dir(setup.root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_config_names_the_file_key_and_reason() {
    let setup = Setup::new("");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str("[retention]\npurge_interval = \"5 parsecs\"\n");
    std::fs::write(&setup.config, text).unwrap();
    let (code, _, err) = setup.cli(&["check-config"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("callguard.toml: retention.purge_interval: unknown unit `parsecs`"),
        "{err}"
    );

    let setup = Setup::new("");
    let (code, out, err) = setup.cli(&["check-config"]);
    assert_eq!(code, 0, "{out}{err}");
    let key = setup.root().join("master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = setup.cli(&["check-config"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("keys.master_key_file") && err.contains("mode 0644"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::set_permissions(&setup.data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, _, err) = setup.cli(&["check-config"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("storage.data_dir") && err.contains("writable by others"),
        "{err}"
    );
    // The server refuses to start too.
    let (code, _, err) = setup.cli(&["serve"]);
    assert_eq!(code, 1);
    assert!(err.contains("storage.data_dir"), "{err}");
    // What only the server used to find: a key that is not the certificate's, another master
    // key than the catalog's, both ports the same.
    let setup = Setup::new("");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let server_key = setup.pki.join("server.key").display().to_string();
    let wrong_key = setup.pki.join("operator.key").display().to_string();
    std::fs::write(&setup.config, text.replace(&server_key, &wrong_key)).unwrap();
    let (code, _, err) = setup.cli(&["check-config"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("server.cert, server.key: the private key does not belong to the certificate"),
        "{err}"
    );
    std::fs::write(&setup.config, &text).unwrap();
    let other = setup.root().join("other.key");
    std::fs::write(&other, [9u8; 32]).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o400)).unwrap();
    let master = setup.root().join("master.key").display().to_string();
    std::fs::write(
        &setup.config,
        text.replace(&master, &other.display().to_string()),
    )
    .unwrap();
    let (code, _, err) = setup.cli(&["check-config"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("keys.master_key_file: the master key does not open this catalog's keys"),
        "{err}"
    );
}

/// Opens the catalog behind the service's back, as an attacker with disk access would.
#[expect(
    clippy::disallowed_methods,
    reason = "the test tampers with the database directly"
)]
fn open_raw(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn audit_verify_detects_tampering_and_names_the_entry() {
    let setup = Setup::new("");
    let (code, out, err) = setup.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("audit chain intact: 8 entries"), "{out}");
    let (code, out, _) = setup.cli(&["audit", "export"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    assert_eq!(lines[1]["action"], "user.add");
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);

    let db = open_raw(&setup.data.join("catalog.sqlite"));
    db.execute("UPDATE audit SET detail = 'role dpo' WHERE seq = 3", [])
        .unwrap();
    drop(db);
    let (code, _, err) = setup.cli(&["audit", "verify"]);
    assert_eq!(code, 1);
    assert!(err.contains("audit entry 3"), "{err}");

    let db = open_raw(&setup.data.join("catalog.sqlite"));
    db.execute(
        "UPDATE audit SET detail = 'role supervisor' WHERE seq = 3",
        [],
    )
    .unwrap();
    db.execute("DELETE FROM audit WHERE seq = 5", []).unwrap();
    drop(db);
    let (code, _, err) = setup.cli(&["audit", "verify"]);
    assert_eq!(code, 1);
    assert!(err.contains("audit entry 6"), "{err}");
}

#[test]
fn audit_export_bounds_are_both_included_and_take_dates() {
    let setup = Setup::new("");
    let (_, out, _) = setup.cli(&["audit", "export"]);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let at = first["at"].as_str().unwrap().to_owned();
    let day = &at[..10];
    let count = |args: &[&str]| {
        let mut all = vec!["audit", "export"];
        all.extend_from_slice(args);
        let (code, out, err) = setup.cli(&all);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .filter(|line| line.contains(&format!("\"at\":\"{at}\"")))
            .count()
    };
    let total = count(&[]);
    assert!(total >= 1);
    assert_eq!(count(&["--from", &at, "--to", &at]), total);
    assert_eq!(count(&["--from", day, "--to", day]), total);
    let (code, _, err) = setup.cli(&["audit", "export", "--from", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nor a date"), "{err}");
}

#[test]
fn audit_verify_detects_entries_cut_off_the_end() {
    let setup = Setup::new("");
    let db = open_raw(&setup.data.join("catalog.sqlite"));
    db.execute("DELETE FROM audit WHERE seq >= 7", []).unwrap();
    drop(db);
    let (code, _, err) = setup.cli(&["audit", "verify"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the chain ends at entry 6 but entry 8 was written"),
        "{err}"
    );
    // A new entry links to the real head, not to what is left: the gap stays visible.
    let (code, _, err) = setup.cli(&["user", "add", "carol", "--role", "legal"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = setup.cli(&["audit", "verify"]);
    assert_eq!(code, 1);
    assert!(err.contains("audit entry 9 follows entry 6"), "{err}");
    // Every entry removed: not an empty chain that verifies.
    let db = open_raw(&setup.data.join("catalog.sqlite"));
    db.execute("DELETE FROM audit", []).unwrap();
    drop(db);
    let (code, _, err) = setup.cli(&["audit", "verify"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the chain ends at entry 0 but entry 9"),
        "{err}"
    );
}

#[test]
fn users_can_be_listed_changed_and_removed() {
    let setup = Setup::new("");
    let (code, out, _) = setup.cli(&["user", "list"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 7);
    let (code, out, _) = setup.cli(&["user", "add", "alice", "--role", "legal"]);
    assert_eq!((code, out.trim()), (0, "added alice with role legal"));
    let (code, out, _) = setup.cli(&["user", "add", "alice", "--role", "dpo"]);
    assert_eq!((code, out.trim()), (0, "changed alice: role legal -> dpo"));
    // A role that does not exist is a usage error, named with the choices.
    let (code, _, err) = setup.cli(&["user", "add", "bob", "--role", "root"]);
    assert_eq!(code, 2);
    assert!(err.contains("one of operator, supervisor"), "{err}");
    assert!(err.contains("unknown role `root`"), "{err}");
    let (code, _, _) = setup.cli(&["user", "remove", "alice"]);
    assert_eq!(code, 0);
    let (code, _, err) = setup.cli(&["user", "remove", "alice"]);
    assert_eq!(code, 1);
    assert!(err.contains("no user"), "{err}");
}

#[test]
fn keys_rotate_rewraps_and_the_instance_still_works() {
    let setup = Setup::new("");
    let new_key = setup.root().join("new.key");
    std::fs::write(&new_key, "cd".repeat(32)).unwrap();
    std::fs::set_permissions(&new_key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let before = std::fs::read(setup.root().join("master.key")).unwrap();
    let (code, out, err) = setup.cli(&["keys", "rotate", "--new-key", new_key.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("re-wrapped 1 keys"), "{out}");
    assert_ne!(
        std::fs::read(setup.root().join("master.key")).unwrap(),
        before
    );
    let (code, out, err) = setup.cli(&["init"]);
    assert_eq!(code, 0, "the rotated key must open the catalog: {out}{err}");
    let (code, out, _) = setup.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    // A running service holds the lock: rotation refuses.
    let instance = setup.start();
    let (code, _, err) =
        instance
            .setup
            .cli(&["keys", "rotate", "--new-key", new_key.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("stop the service"), "{err}");
}
