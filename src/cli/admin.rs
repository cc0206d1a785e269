//! Administrative commands: init, check-config, users, audit verify/export, key rotation,
//! report, purge, quarantine. Each one opens the catalog itself (the service may be running:
//! SQLite serialises writers) and audits as `local:<unix user>`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::catalog::users::UserChange;
use crate::catalog::{AuditFilter, Catalog};
use crate::cli::{AuditCommand, Command, KeysCommand, QuarantineCommand, UserCommand, dev};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::keyring::Keyring;
use crate::vault::Vault;
use crate::vault::keys::MasterKey;

pub(super) fn run(
    command: Command,
    config: Config,
    is_dev: bool,
    clock: SharedClock,
) -> anyhow::Result<ExitCode> {
    let actor = format!("local:{}", crate::config::unix_user_name());
    match command {
        Command::Serve { .. } => bail!("invariant: serve is handled by cli::run"),
        Command::Init => init(&config, &actor, &clock, is_dev),
        Command::CheckConfig => {
            config.check_environment(true)?;
            // What `serve` would refuse next: the TLS files as a whole, and a master key that
            // does not open an existing catalog.
            let source = config.source.display();
            crate::api::tls::server_config(
                &config.server.cert,
                &config.server.key,
                &config.server.client_ca,
            )
            .map_err(|error| anyhow::anyhow!("{source}: {}: {error}", error.key()))?;
            if config.catalog_path().exists() {
                let catalog = open_catalog(&config)?;
                Keyring::load(config.keys.master_key.path(), &catalog)
                    .map_err(|error| anyhow::anyhow!("{source}: keys.master_key_file: {error}"))?;
            }
            say!("{source}: configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
        Command::User { command } => {
            let catalog = open_catalog(&config)?;
            match command {
                UserCommand::Add { cn, role } => {
                    validate_cn(&cn)?;
                    match catalog.user_add(&cn, role, &actor, clock.now())? {
                        UserChange::Added => say!("added {cn} with role {role}"),
                        UserChange::RoleChanged { from } => {
                            say!("changed {cn}: role {from} -> {role}")
                        }
                        UserChange::Unchanged => say!("{cn} already has role {role}"),
                    }
                }
                UserCommand::List => {
                    for user in catalog.user_list()? {
                        say!(
                            "{}\t{}\t{}",
                            user.cn,
                            user.role,
                            crate::audit::chain::format_time(user.created_at)
                        );
                    }
                }
                UserCommand::Remove { cn } => {
                    match catalog.user_remove(&cn, &actor, clock.now())? {
                        true => say!("removed {cn}"),
                        false => bail!("no user with CN `{cn}`"),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => {
            let catalog = open_catalog(&config)?;
            match command {
                AuditCommand::Verify => match crate::audit::verify(&catalog) {
                    Ok(crate::audit::Verified { n_entries: n, head }) => {
                        let head = head
                            .map(|(seq, hash)| format!("{seq}:{}", hex::encode(hash)))
                            .unwrap_or_else(|| "empty".into());
                        say!("audit chain intact: {n} entries verified, head {head}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(error) => Err(anyhow::Error::new(error).context("audit chain broken")),
                },
                AuditCommand::Export { from, to } => {
                    // Both bounds included.
                    let filter = AuditFilter {
                        from: from.map(super::TimeBound::start),
                        to: to.map(super::TimeBound::end_exclusive),
                        actor: None,
                        action: None,
                        object: None,
                    };
                    let mut after = 0;
                    loop {
                        let batch = catalog.audit_query(&filter, after, 1000)?;
                        let Some(last) = batch.last() else { break };
                        after = last.seq;
                        for entry in &batch {
                            say!("{}", crate::audit::entry_json(entry));
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Keys {
            command: KeysCommand::Rotate { new_key },
        } => rotate(&config, &new_key, &actor, &clock),
        Command::Report => report(&config, &clock),
        Command::Purge { dry_run } => purge(&config, &actor, &clock, dry_run),
        Command::Quarantine {
            command: QuarantineCommand::List,
        } => quarantine_list(&config),
    }
}

fn open_catalog(config: &Config) -> anyhow::Result<Catalog> {
    let path = config.catalog_path();
    if !path.exists() {
        bail!("no catalog at {} (run `callguard init`)", path.display());
    }
    Ok(Catalog::open(&path)?)
}

/// CNs are identifiers, not free text: the certificate's common name alone, as the server reads
/// it, which never starts or ends with a space nor is a whole distinguished name.
fn validate_cn(cn: &str) -> anyhow::Result<()> {
    if cn.is_empty() || cn.len() > 256 || !crate::api::tls::printable(cn) {
        bail!(
            "`{}` is not a usable certificate CN (1–256 printable characters)",
            cn.escape_debug()
        );
    }
    if cn.trim() != cn {
        bail!("`{cn}` starts or ends with a space: no certificate CN will match it");
    }
    if cn == crate::api::tls::NO_USABLE_CN {
        bail!("`{cn}` is how the audit log names certificates without a usable CN");
    }
    let upper = cn.to_ascii_uppercase();
    if upper.starts_with("CN=") || upper.contains(",O=") || upper.contains(", O=") {
        bail!(
            "`{cn}` looks like a distinguished name: give the common name alone (for `CN=bob,O=x`, \
             `bob`)"
        );
    }
    Ok(())
}

fn init(
    config: &Config,
    actor: &str,
    clock: &SharedClock,
    is_dev: bool,
) -> anyhow::Result<ExitCode> {
    for (dir, mode) in [
        (&config.storage.data_dir, 0o700),
        (&config.ingest.spool_dir, 0o770),
    ] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let current = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if current & 0o002 != 0 || (dir == &config.storage.data_dir && current & 0o077 != 0) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        }
    }
    let key_path = config.keys.master_key.path();
    if let Some(parent) = key_path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        // Created private whatever the umask; an existing directory is left as it is.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let created = dev::write_master_key_if_absent(key_path)?;
    let catalog = Catalog::open(&config.catalog_path())?;
    Vault::open(&config.vault_dir())?;
    let keyring =
        Keyring::load(key_path, &catalog).context("the master key does not match the catalog")?;
    drop(keyring);
    catalog.audit(
        crate::audit::chain::AuditDraft::new(
            actor,
            "",
            "instance.init",
            "",
            crate::audit::chain::Outcome::Allowed,
        ),
        clock.now(),
    )?;
    match created {
        true => say!("created master key {} (mode 0400)", key_path.display()),
        false => say!("kept existing master key {}", key_path.display()),
    }
    say!("catalog {} ready", config.catalog_path().display());
    if is_dev {
        say!("development instance: run `callguard serve --dev`");
    }
    Ok(ExitCode::SUCCESS)
}

fn rotate(
    config: &Config,
    new_key: &std::path::Path,
    actor: &str,
    clock: &SharedClock,
) -> anyhow::Result<ExitCode> {
    let _lock = crate::daemon::lock_data_dir(config)
        .context("stop the service before rotating the master key")?;
    crate::config::permissions::check_secret_file(new_key)
        .map_err(|reason| anyhow::anyhow!("--new-key: {reason}"))?;
    let catalog = open_catalog(config)?;
    let old = MasterKey::load(config.keys.master_key.path())?;
    let new = MasterKey::load(new_key)?;
    if new.same_as(&old) {
        bail!(
            "--new-key: {} holds the current master key; a rotation needs a new one (`head -c 32 \
             /dev/urandom > FILE; chmod 0400 FILE`)",
            new_key.display()
        );
    }
    let n = Keyring::rotate(&catalog, &old, &new, actor, clock.now())?;
    catalog.checkpoint()?;
    say!("re-wrapped {n} keys under the new master key; audio was not re-encrypted");
    match &config.keys.master_key {
        crate::config::KeySource::File(path) => {
            let temp = path.with_extension("key.new-rotation");
            std::fs::copy(new_key, &temp)
                .with_context(|| format!("cannot write {}", temp.display()))?;
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o400))?;
            std::fs::rename(&temp, path)
                .with_context(|| format!("cannot replace {}", path.display()))?;
            say!(
                "installed the new key as {}; keep {} until the service runs with it",
                path.display(),
                new_key.display()
            );
        }
        crate::config::KeySource::Credential(path) => {
            say!(
                "the master key comes from the systemd credential {}: re-encrypt the new key with \
                 `systemd-creds encrypt --name=callguard-master.key` into the credential store before restarting",
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn purge(
    config: &Config,
    actor: &str,
    clock: &SharedClock,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(config)?;
    let vault = Vault::open(&config.vault_dir())?;
    let now = clock.now();
    let report = crate::retention::purge::run_once(
        &catalog,
        &vault,
        &config.retention,
        actor,
        now,
        dry_run,
    )?;
    // The run itself is an administrator's act: audited even when it deletes nothing (each
    // deletion has its own entry).
    let elsewhere = match report.deleted_elsewhere.len() {
        0 => String::new(),
        n => format!(", {n} deleted meanwhile by another deletion"),
    };
    let summary = format!(
        "{}{} deleted, {} kept by holds (expired or with a deferred deletion){elsewhere}, {} quarantined files \
         expired, {} audit entries pruned",
        if dry_run { "dry run: would have " } else { "" },
        report.deleted.len(),
        report.kept.len(),
        report.quarantine_expired,
        report.audit_pruned
    );
    let draft = crate::audit::chain::AuditDraft::new(
        actor,
        "",
        "purge.run",
        "",
        crate::audit::chain::Outcome::Allowed,
    )
    .detail(summary);
    catalog.audit(draft, clock.now())?;
    let verb = match dry_run {
        true => "would delete",
        false => "deleted",
    };
    for (id, reason) in &report.deleted {
        say!("{verb}\t{id}\t{reason}");
    }
    for (id, why) in &report.kept {
        match why {
            crate::retention::Keep::Held(holds) => match report.deferred.get(id) {
                Some(reason) => say!(
                    "kept\t{id}\theld by {} ({reason} deletion deferred until release)",
                    holds.join(", ")
                ),
                None => say!("kept\t{id}\theld by {}", holds.join(", ")),
            },
            crate::retention::Keep::NotExpired => say!("kept\t{id}\tnot expired"),
        }
    }
    for id in &report.deleted_elsewhere {
        say!(
            "gone\t{id}\tdeleted meanwhile by another deletion (a purge or erasure running at the same time)"
        );
    }
    say!(
        "{} recordings {}, {} kept by holds (expired or with a deferred deletion){elsewhere}{}",
        report.deleted.len(),
        match dry_run {
            true => "would be deleted",
            false => "deleted",
        },
        report.kept.len(),
        match dry_run {
            true => String::new(),
            false => format!(
                ", {} quarantined files expired, {} audit entries pruned",
                report.quarantine_expired, report.audit_pruned
            ),
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn quarantine_list(config: &Config) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(config)?;
    let mut after: Option<String> = None;
    let mut n = 0;
    loop {
        let rows = catalog.quarantine_list(after.as_deref(), 500)?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id.clone());
        for row in &rows {
            n += 1;
            say!(
                "{}\t{}\t{} bytes\tkept until {}\t{}",
                row.id,
                crate::audit::chain::format_time(row.received_at),
                row.size,
                crate::audit::chain::format_time(row.retain_until),
                row.reason
            );
        }
    }
    if n == 0 {
        say!("quarantine is empty");
    }
    Ok(ExitCode::SUCCESS)
}

fn report(config: &Config, clock: &SharedClock) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(config)?;
    let vault = Vault::open(&config.vault_dir())?;
    let now = clock.now();
    let (stored, missing, deleted) = catalog.recording_counts()?;
    say!("recordings: {stored} stored, {missing} missing, {deleted} deleted (tombstones)");
    let dry = crate::retention::purge::run_once(
        &catalog,
        &vault,
        &config.retention,
        "report",
        now,
        true,
    )?;
    say!(
        "past retention: {} to delete at the next purge, {} kept by holds",
        dry.deleted.len(),
        dry.kept.len()
    );
    say!("next expiries:");
    for (id, at) in catalog.next_expiries(now, 5)? {
        say!("  {}\t{id}", crate::audit::chain::format_time(at));
    }
    let holds = catalog.hold_list(None, 1000)?;
    let active: Vec<_> = holds.iter().filter(|h| h.released_at.is_none()).collect();
    say!("active holds: {}", active.len());
    for hold in active {
        say!(
            "  {}\tcase {}\t{} recordings\tsince {}",
            hold.id,
            hold.case_ref,
            hold.covered,
            crate::audit::chain::format_time(hold.placed_at)
        );
    }
    let (objections, quarantined) = catalog.policy_counts()?;
    say!("active objections: {objections}");
    say!("quarantine: {quarantined} files");
    say!("vault disk use: {} bytes", vault.disk_usage());
    let head = catalog
        .audit_head()?
        .map(|(seq, hash)| format!("{seq}:{}", hex::encode(hash)))
        .unwrap_or_else(|| "empty".into());
    say!("audit head: {head}");
    Ok(ExitCode::SUCCESS)
}
