//! `--dev`: the embedded development instance under `./callguard-dev/`: directories, a generated
//! master key (0400), a generated PKI (CA, server, one client certificate per role, CN = role)
//! and the users registered. Running it again reuses everything. Prints ready-to-paste curl
//! examples.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use jiff::Timestamp;

use crate::access::Role;
use crate::catalog::Catalog;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::pki::{self, Authority, Validity};
use crate::vault::keys::MasterKey;

/// Root of the dev instance, relative to the working directory.
pub(crate) const DEV_ROOT: &str = "callguard-dev";

pub(crate) struct Prepared {
    pub(crate) config: Config,
    pub(crate) banner: Box<dyn Fn(SocketAddr) -> String + Send + Sync>,
}

pub(crate) fn config() -> Config {
    Config::dev(Path::new(DEV_ROOT))
}

/// Creates (or reuses) everything the dev instance needs.
pub(crate) fn prepare(clock: &SharedClock) -> anyhow::Result<Prepared> {
    let config = config();
    let root = config.storage.data_dir.clone();
    let pki_dir = root.join("pki");
    for dir in [&root, &pki_dir, &config.ingest.spool_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    }
    write_master_key_if_absent(config.keys.master_key.path())?;
    let roles_missing = Role::ALL
        .iter()
        .any(|role| !pki_dir.join(format!("{role}.crt")).exists());
    if !pki_dir.join("ca.crt").exists() || !pki_dir.join("server.crt").exists() || roles_missing {
        let authority = match pki_dir.join("ca.key").exists() {
            true => Authority::load(&pki_dir.join("ca.crt"), &pki_dir.join("ca.key"))?,
            false => {
                let authority = Authority::generate("callguard dev CA")?;
                authority.save(&pki_dir)?;
                authority
            }
        };
        if !pki_dir.join("server.crt").exists() {
            pki::write_pair(&pki_dir, "server", &authority.server()?)?;
        }
        for role in Role::ALL {
            if !pki_dir.join(format!("{role}.crt")).exists() {
                pki::write_pair(
                    &pki_dir,
                    role.as_str(),
                    &authority.client(role.as_str(), Validity::Current)?,
                )?;
            }
        }
    }
    let catalog = Catalog::open(&config.catalog_path())?;
    let actor = format!("local:{}", crate::config::unix_user_name());
    for role in Role::ALL {
        catalog.user_add(role.as_str(), role, &actor, clock.now())?;
    }
    let pki_display = display_path(&pki_dir);
    let started = clock.now();
    let banner = Box::new(move |addr: SocketAddr| banner(&pki_display, addr, started));
    Ok(Prepared { config, banner })
}

/// Writes 32 random bytes with mode 0400 unless the file exists.
pub(crate) fn write_master_key_if_absent(path: &Path) -> anyhow::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    let key = MasterKey::generate()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o400);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut file, key.danger_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(true)
}

/// `./callguard-dev/pki` when under the working directory, else the absolute path.
fn display_path(path: &Path) -> PathBuf {
    match std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_owned))
    {
        Some(relative) => relative,
        None => path.to_owned(),
    }
}

/// The start-up text: where the instance lives and `curl` commands that work against it. The
/// upload example's call starts at `now` (a fixed date would fall out of retention one day and
/// be purged at once) and its `call_id` is new at each start.
fn banner(pki: &Path, addr: SocketAddr, now: Timestamp) -> String {
    let pki = pki.display();
    let second = now.as_second();
    let started_at = Timestamp::from_second(second).unwrap_or(now);
    let base = format!("https://{addr}");
    let curl = |role: &str| {
        format!("curl --cacert {pki}/ca.crt --cert {pki}/{role}.crt --key {pki}/{role}.key")
    };
    format!(
        "callguard development instance\n\
         \n  data, keys, spool and PKI: {root}\n\
         \n  Status (any role):\n    {status} {base}/v1/status\n\
         \n  Upload a recording (recorder):\n    {recorder} -F 'metadata={{\"call_id\":\"demo-{second}\",\"started_at\":\"{started_at}\",\"direction\":\"inbound\",\"caller\":\"0612345678\",\"callee\":\"0145678900\"}};type=application/json' -F audio=@call.wav {base}/v1/recordings\n\
         \n  Search recordings (supervisor):\n    {supervisor} '{base}/v1/recordings?limit=10'\n\
         \n  Audit log (dpo):\n    {dpo} {base}/v1/audit\n",
        root = pki.to_string().trim_end_matches("/pki"),
        status = curl("operator"),
        recorder = curl("recorder"),
        supervisor = curl("supervisor"),
        dpo = curl("dpo"),
    )
}
