//! Configuration: `callguard.toml` → `RawConfig` (the file as written, strict) → `Config`
//! (typed, validated). Owns every default, the unit grammar (`units`), the file-system safety
//! checks (`permissions`) and the only reads of the process environment. Errors name the file,
//! the key and the reason, and all of them are reported at once.

pub mod permissions;
pub mod raw;
pub mod units;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::raw::RawConfig;
use crate::config::units::Period;

/// Where the configuration lives when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/callguard/callguard.toml";
/// Name of the systemd credential holding the master key (`LoadCredentialEncrypted=`).
pub const MASTER_KEY_CREDENTIAL: &str = "callguard-master.key";

/// The validated configuration of one instance.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (or `<dev>` for the embedded development default).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub keys: KeysConfig,
    pub ingest: IngestConfig,
    pub retention: RetentionConfig,
    pub alarms: AlarmsConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// Connections served at once; the next one waits in the kernel backlog.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake and for the request head.
    pub handshake_timeout: Duration,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// Where the master key is read from.
    pub master_key: KeySource,
}

/// Where the 32-byte master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `$CREDENTIALS_DIRECTORY/callguard-master.key`, given by systemd (already decrypted by
    /// `LoadCredentialEncrypted=`, on a private mount only this service sees).
    Credential(PathBuf),
    /// `keys.master_key_file`.
    File(PathBuf),
}

impl KeySource {
    pub fn path(&self) -> &Path {
        match self {
            KeySource::Credential(path) => path,
            KeySource::File(path) => path,
        }
    }
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub spool_dir: PathBuf,
    pub spool_timezone: jiff::tz::TimeZone,
    /// The IANA name of `spool_timezone`, for messages.
    pub spool_timezone_name: String,
    pub max_recording_bytes: u64,
    /// Spool files processed at once.
    pub spool_workers: usize,
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub recordings: Period,
    pub quarantine: Period,
    pub purge_interval: Duration,
    pub audit: Period,
}

#[derive(Debug, Clone)]
pub struct AlarmsConfig {
    pub max_open: Duration,
    pub receivers: Vec<ReceiverConfig>,
}

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub name: String,
    pub device: PathBuf,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub protocol: Protocol,
    pub acknowledge: bool,
    pub line_digits: u8,
    pub heartbeat_timeout: Duration,
    pub duplicate_window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    Even,
    None,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Surgard,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

/// One thing wrong with the configuration: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key, e.g. `retention.recordings`; empty for whole-file problems.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key.is_empty() {
            true => write!(f, "{}: {}", self.file.display(), self.reason),
            false => write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason),
        }
    }
}

/// Everything wrong with a configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, error) in self.0.iter().enumerate() {
            if idx > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates `path`. File-system checks are separate: `check_environment`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                key: String::new(),
                reason: format!("cannot read the configuration file: {error}"),
            }])
        })?;
        Config::parse(path, &text, credentials_directory())
    }

    /// Parses configuration text. `credentials_dir` is `$CREDENTIALS_DIRECTORY` (systemd).
    pub fn parse(
        path: &Path,
        text: &str,
        credentials_dir: Option<PathBuf>,
    ) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| {
            ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                key: error
                    .span()
                    .and_then(|span| key_at(text, span.start))
                    .unwrap_or_default(),
                reason: toml_error_reason(text, &error),
            }])
        })?;
        raw.resolve(path, credentials_dir)
    }

    /// The embedded development instance of `serve --dev`: everything under `root`
    /// (`./callguard-dev`), loopback only.
    pub fn dev(root: &Path) -> Config {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_owned());
        let raw = RawConfig::dev(&root);
        match raw.resolve(Path::new("<dev>"), None) {
            Ok(config) => config,
            Err(errors) => {
                unreachable!("invariant: the embedded dev configuration is valid: {errors}")
            }
        }
    }

    /// The SQLite catalog.
    pub fn catalog_path(&self) -> PathBuf {
        self.storage.data_dir.join("catalog.sqlite")
    }

    /// The directory of encrypted blobs.
    pub fn vault_dir(&self) -> PathBuf {
        self.storage.data_dir.join("vault")
    }

    /// Checks what the file refers to: the master key's mode and size, the data directory's
    /// mode, the TLS files. `for_serve` adds what only the server needs (TLS files).
    pub fn check_environment(&self, for_serve: bool) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut push = |key: &str, reason: String| {
            errors.push(ConfigError {
                file: self.source.clone(),
                key: key.to_owned(),
                reason,
            });
        };
        let key_key = match &self.keys.master_key {
            KeySource::Credential(_) => "keys.master_key_file (systemd credential)",
            KeySource::File(_) => "keys.master_key_file",
        };
        if let Err(reason) = permissions::check_secret_file(self.keys.master_key.path()) {
            push(key_key, reason);
        }
        if let Err(reason) = permissions::check_private_dir(&self.storage.data_dir) {
            push("storage.data_dir", reason);
        }
        if let Err(reason) = permissions::check_existing_dir(&self.ingest.spool_dir) {
            push("ingest.spool_dir", reason);
        }
        if for_serve {
            for (key, path) in [
                ("server.cert", &self.server.cert),
                ("server.key", &self.server.key),
                ("server.client_ca", &self.server.client_ca),
            ] {
                if let Err(error) = std::fs::metadata(path) {
                    push(key, format!("cannot read {}: {error}", path.display()));
                }
            }
            // (A missing key is already reported above, once.)
            if self.server.key.exists()
                && let Err(reason) = permissions::check_secret_file_mode(&self.server.key)
            {
                push("server.key", reason);
            }
        }
        match errors.is_empty() {
            true => Ok(()),
            false => Err(ConfigErrors(errors)),
        }
    }
}

/// `$CREDENTIALS_DIRECTORY`, set by systemd when the unit has credentials.
fn credentials_directory() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from)
}

/// The name of the Unix user running this process, for audit actors (`local:<user>`): the real
/// uid (`getuid`, the user who ran the command), never `$USER`, which the caller sets.
pub fn unix_user_name() -> String {
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let mut fields = line.split(':');
        let name = fields.next();
        let uid_field = fields.nth(1);
        if let (Some(name), Some(uid_field)) = (name, uid_field)
            && uid_field.parse::<u32>() == Ok(uid)
        {
            return name.to_owned();
        }
    }
    format!("uid{uid}")
}

/// The dotted key (`server.listen`, `alarms.receiver[1].baud`) of the `key = value` line that
/// holds byte `offset` of `text`, from the table headers above it; `None` off such a line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |idx| idx + 1);
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in text[..line_start].lines() {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix("[[")
            .and_then(|rest| rest.split("]]").next())
        {
            let name = name.trim().to_owned();
            let seen = arrays.entry(name.clone()).or_insert(0);
            table = format!("{name}[{seen}]");
            *seen += 1;
        } else if let Some(name) = line
            .strip_prefix('[')
            .and_then(|rest| rest.split(']').next())
        {
            table = name.trim().to_owned();
        }
    }
    let (key, _) = text[line_start..].lines().next()?.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with(['#', '[']) {
        return None;
    }
    Some(match table.is_empty() {
        true => key.to_owned(),
        false => format!("{table}.{key}"),
    })
}

/// Turns a toml error into one line: position, then the parser's reason, with Rust's type
/// names in words.
fn toml_error_reason(text: &str, error: &toml::de::Error) -> String {
    let mut message = error.message().trim().to_owned();
    for number in ["u8", "u16", "u32", "u64", "usize"] {
        message = message.replace(&format!("expected {number}"), "expected a whole number");
    }
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        match Config::parse(Path::new("/etc/callguard/callguard.toml"), text, None) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn empty_file_is_the_documented_defaults() {
        let config = Config::parse(Path::new("x.toml"), "", None).unwrap();
        assert_eq!(config.retention.recordings, Period::Months(6));
        assert_eq!(config.retention.purge_interval, Duration::from_secs(300));
        assert_eq!(config.ingest.max_recording_bytes, 2 << 30);
        assert_eq!(
            config.keys.master_key,
            KeySource::File("/etc/callguard/master.key".into())
        );
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:8443");
    }

    #[test]
    fn the_shipped_file_equals_the_built_in_defaults_and_documents_every_key() {
        let shipped = include_str!("../../firmware-config/callguard.toml");
        let from_file = Config::parse(Path::new("callguard.toml"), shipped, None).unwrap();
        let defaults = Config::parse(Path::new("callguard.toml"), "", None).unwrap();
        let mut file_view = format!("{from_file:?}");
        let default_view = format!("{defaults:?}");
        // The shipped file declares one example receiver; the defaults have none.
        assert_eq!(from_file.alarms.receivers.len(), 1);
        file_view = file_view.replace(&format!("{:?}", from_file.alarms.receivers), "[]");
        assert_eq!(
            file_view.replace("\"callguard.toml\"", ""),
            default_view.replace("\"callguard.toml\"", "")
        );
        for key in raw::documented_keys() {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                shipped
                    .lines()
                    .any(|line| line.trim_start().starts_with(&format!("{leaf} ="))),
                "firmware-config/callguard.toml does not document `{key}`"
            );
        }
    }

    #[test]
    fn errors_name_the_key_and_the_reason() {
        let errors =
            errors_of("[retention]\nrecordings = \"6 fortnights\"\npurge_interval = \"1 month\"\n");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("retention.recordings: unknown unit `fortnights`"),
            "{errors:?}"
        );
        assert!(errors[1].contains("retention.purge_interval"), "{errors:?}");
    }

    #[test]
    fn retention_periods_are_bounded_both_ways() {
        let errors = errors_of(
            "[retention]\nrecordings = \"100000 years\"\npurge_interval = \"2 days\"\n\
             audit = \"30s\"\n",
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("retention.recordings: `100000 years` is longer than 100 years")
        );
        assert!(errors[1].contains("retention.purge_interval: `2 days` is longer than 86400s"));
        assert!(errors[2].contains("retention.audit: `30s` is shorter than 6 months"));
        // systemd's M is a month: "6M" keeps recordings six months, not six minutes.
        let text = "[retention]\nrecordings = \"6M\"\n";
        let config = Config::parse(Path::new("x.toml"), text, None).expect("valid");
        assert_eq!(config.retention.recordings, Period::Months(6));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_position() {
        let errors = errors_of("[server]\nlisten = \"0.0.0.0:8443\"\nlistne = \"x\"\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("line 3"), "{errors:?}");
        assert!(errors[0].contains("listne"), "{errors:?}");
    }

    #[test]
    fn bad_values_are_each_reported() {
        let errors = errors_of(
            "[server]\nlisten = \"nowhere\"\n[ingest]\nspool_timezone = \"Mars/Olympus\"\nmax_recording_bytes = \"0\"\n\
             [[alarms.receiver]]\nname = \"r1\"\ndevice = \"/dev/x\"\nbaud = 0\nline_digits = 9\nparity = \"mark\"\n",
        );
        let joined = errors.join("\n");
        for key in [
            "server.listen",
            "ingest.spool_timezone",
            "ingest.max_recording_bytes",
            "alarms.receiver[0].baud",
            "alarms.receiver[0].line_digits",
            "alarms.receiver[0].parity",
        ] {
            assert!(joined.contains(key), "{key} missing from {joined}");
        }
    }

    #[test]
    fn type_errors_name_their_key() {
        for (text, expected) in [
            (
                "[server]\nlisten = 38743\n",
                "server.listen: line 2, column 10: invalid type: integer `38743`, expected a \
                 string",
            ),
            (
                "[ingest]\nspool_workers = \"two\"\n",
                "ingest.spool_workers: line 2, column 17: invalid type: string \"two\", expected a \
                 whole number",
            ),
            (
                "[[alarms.receiver]]\nname = \"a\"\ndevice = \"/dev/a\"\n\
                 [[alarms.receiver]]\nname = \"b\"\nbaud = \"9600\"\n",
                "alarms.receiver[1].baud: line 6",
            ),
        ] {
            let errors = errors_of(text);
            assert!(
                errors.len() == 1 && errors[0].contains(expected),
                "{expected} missing from {errors:?}"
            );
        }
    }

    #[test]
    fn receiver_devices_and_the_metrics_address_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let regular = dir.path().join("not-a-tty");
        std::fs::write(&regular, b"").unwrap();
        let receiver = |name: &str, device: &str| {
            format!("[[alarms.receiver]]\nname = \"{name}\"\ndevice = \"{device}\"\n")
        };
        let text = format!(
            "[metrics]\nlisten = \"0.0.0.0:9464\"\n{}{}{}{}{}",
            receiver("a", ""),
            receiver("b", "ttyUSB0"),
            receiver("c", &regular.display().to_string()),
            receiver("d", "/dev/null"),
            receiver("e", "/dev/null"),
        );
        let joined = errors_of(&text).join("\n");
        for expected in [
            "metrics.listen: `0.0.0.0:9464` is not a loopback address",
            "alarms.receiver[0].device: is empty",
            "alarms.receiver[1].device: `ttyUSB0` is not an absolute path",
            "is not a serial (character) device",
            "alarms.receiver[4].device: `/dev/null` is used by another receiver",
        ] {
            assert!(
                joined.contains(expected),
                "{expected} missing from {joined}"
            );
        }
        // Absent (unplugged) is fine: the receiver waits for it.
        assert!(errors_of(&receiver("f", "/dev/callguard-absent-device")).is_empty());
    }

    #[test]
    fn credential_directory_wins_over_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MASTER_KEY_CREDENTIAL), [7u8; 32]).unwrap();
        let config = Config::parse(Path::new("x.toml"), "", Some(dir.path().to_owned())).unwrap();
        assert_eq!(
            config.keys.master_key,
            KeySource::Credential(dir.path().join(MASTER_KEY_CREDENTIAL))
        );
    }

    #[test]
    fn dev_config_is_valid_and_loopback() {
        let config = Config::dev(Path::new("callguard-dev"));
        assert!(config.server.listen.ip().is_loopback());
        assert!(config.metrics.listen.ip().is_loopback());
    }
}
