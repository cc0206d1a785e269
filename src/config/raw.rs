//! The configuration file exactly as written: serde structs with `deny_unknown_fields`, one
//! doc line per key, defaults for every key, and `resolve` into the typed `Config`. Values stay
//! strings here (human units, addresses, zones) so that each bad value is reported by its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::units::{self, Period};
use crate::config::{
    AlarmsConfig, Config, ConfigError, ConfigErrors, IngestConfig, KeySource, KeysConfig,
    MASTER_KEY_CREDENTIAL, MetricsConfig, Parity, Protocol, ReceiverConfig, RetentionConfig,
    ServerConfig, StorageConfig,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    server: RawServer,
    storage: RawStorage,
    keys: RawKeys,
    ingest: RawIngest,
    retention: RawRetention,
    alarms: RawAlarms,
    metrics: RawMetrics,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    /// Address and port of the HTTPS API.
    listen: String,
    /// PEM certificate chain of the server.
    cert: PathBuf,
    /// PEM private key of the server (mode 0600 or stricter).
    key: PathBuf,
    /// PEM trust anchor(s) for client certificates.
    client_ca: PathBuf,
    /// Connections served at once.
    max_connections: usize,
    /// Time allowed for the TLS handshake and the request head.
    handshake_timeout: String,
    /// Idle connections are closed after this long.
    idle_timeout: String,
}

impl Default for RawServer {
    fn default() -> RawServer {
        RawServer {
            listen: "0.0.0.0:8443".into(),
            cert: "/etc/callguard/tls/server.crt".into(),
            key: "/etc/callguard/tls/server.key".into(),
            client_ca: "/etc/callguard/tls/clients-ca.crt".into(),
            max_connections: 1024,
            handshake_timeout: "10s".into(),
            idle_timeout: "60s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    /// catalog.sqlite and vault/ live here.
    data_dir: PathBuf,
}

impl Default for RawStorage {
    fn default() -> RawStorage {
        RawStorage {
            data_dir: "/var/lib/callguard".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKeys {
    /// 32 random bytes (or 64 hex characters), mode 0400/0600.
    master_key_file: PathBuf,
}

impl Default for RawKeys {
    fn default() -> RawKeys {
        RawKeys {
            master_key_file: "/etc/callguard/master.key".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIngest {
    /// Directory the recorder writes into.
    spool_dir: PathBuf,
    /// Time zone of the local times in FreePBX-style file names.
    spool_timezone: String,
    /// Largest recording accepted.
    max_recording_bytes: String,
    /// Spool files processed at once.
    spool_workers: usize,
}

impl Default for RawIngest {
    fn default() -> RawIngest {
        RawIngest {
            spool_dir: "/var/spool/callguard".into(),
            spool_timezone: "Europe/Paris".into(),
            max_recording_bytes: "2 GiB".into(),
            spool_workers: 2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetention {
    recordings: String,
    quarantine: String,
    purge_interval: String,
    audit: String,
}

impl Default for RawRetention {
    fn default() -> RawRetention {
        RawRetention {
            recordings: "6 months".into(),
            quarantine: "6 months".into(),
            purge_interval: "5m".into(),
            audit: "5 years".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAlarms {
    /// A case left open longer closes itself.
    max_open: String,
    receiver: Vec<RawReceiver>,
}

impl Default for RawAlarms {
    fn default() -> RawAlarms {
        RawAlarms {
            max_open: "24h".into(),
            receiver: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceiver {
    name: String,
    device: PathBuf,
    #[serde(default = "default_baud")]
    baud: u32,
    #[serde(default = "default_data_bits")]
    data_bits: u8,
    #[serde(default = "default_parity")]
    parity: String,
    #[serde(default = "default_stop_bits")]
    stop_bits: u8,
    #[serde(default = "default_protocol")]
    protocol: String,
    #[serde(default = "default_true")]
    acknowledge: bool,
    #[serde(default = "default_line_digits")]
    line_digits: u8,
    #[serde(default = "default_heartbeat_timeout")]
    heartbeat_timeout: String,
    #[serde(default = "default_duplicate_window")]
    duplicate_window: String,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> String {
    "none".into()
}
fn default_stop_bits() -> u8 {
    1
}
fn default_protocol() -> String {
    "surgard".into()
}
fn default_true() -> bool {
    true
}
fn default_line_digits() -> u8 {
    1
}
fn default_heartbeat_timeout() -> String {
    "90s".into()
}
fn default_duplicate_window() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    /// Prometheus text format over plain HTTP: keep it on loopback.
    listen: String,
}

impl Default for RawMetrics {
    fn default() -> RawMetrics {
        RawMetrics {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// Every key of the file, dotted, for the documentation test.
pub fn documented_keys() -> &'static [&'static str] {
    &[
        "server.listen",
        "server.cert",
        "server.key",
        "server.client_ca",
        "server.max_connections",
        "server.handshake_timeout",
        "server.idle_timeout",
        "storage.data_dir",
        "keys.master_key_file",
        "ingest.spool_dir",
        "ingest.spool_timezone",
        "ingest.max_recording_bytes",
        "ingest.spool_workers",
        "retention.recordings",
        "retention.quarantine",
        "retention.purge_interval",
        "retention.audit",
        "alarms.max_open",
        "alarms.receiver.name",
        "alarms.receiver.device",
        "alarms.receiver.baud",
        "alarms.receiver.data_bits",
        "alarms.receiver.parity",
        "alarms.receiver.stop_bits",
        "alarms.receiver.protocol",
        "alarms.receiver.acknowledge",
        "alarms.receiver.line_digits",
        "alarms.receiver.heartbeat_timeout",
        "alarms.receiver.duplicate_window",
        "metrics.listen",
    ]
}

/// Collects errors while resolving, each with its key.
struct Resolver<'a> {
    file: &'a Path,
    errors: Vec<ConfigError>,
}

impl Resolver<'_> {
    fn error(&mut self, key: &str, reason: String) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            key: key.to_owned(),
            reason,
        });
    }

    fn addr(&mut self, key: &str, text: &str) -> SocketAddr {
        match text.parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.error(
                    key,
                    format!("`{text}` is not an address:port like 0.0.0.0:8443"),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    fn period(&mut self, key: &str, text: &str) -> Period {
        match units::parse_period(text) {
            Ok(Period::Months(0)) | Ok(Period::Fixed(std::time::Duration::ZERO)) => {
                self.error(key, "must be longer than zero".into());
                Period::Months(1)
            }
            Ok(period) if period_over(period, MAX_PERIOD_MONTHS) => {
                self.error(key, format!("`{text}` is longer than 100 years"));
                Period::Months(1)
            }
            Ok(period) => period,
            Err(error) => {
                self.error(key, error.to_string());
                Period::Months(1)
            }
        }
    }

    /// A period of at least `months` calendar months.
    fn period_at_least(&mut self, key: &str, text: &str, months: u32, why: &str) -> Period {
        let period = self.period(key, text);
        let long_enough = match period {
            Period::Months(n) => n >= months,
            Period::Fixed(duration) => duration.as_secs() >= u64::from(months) * 31 * 86_400,
        };
        if !long_enough {
            self.error(
                key,
                format!("`{text}` is shorter than {months} months: {why}"),
            );
        }
        period
    }

    /// A duration of at most `max`.
    fn duration_at_most(
        &mut self,
        key: &str,
        text: &str,
        max: std::time::Duration,
        why: &str,
    ) -> std::time::Duration {
        let duration = self.duration(key, text);
        if duration > max {
            self.error(
                key,
                format!("`{text}` is longer than {}s: {why}", max.as_secs()),
            );
        }
        duration
    }

    fn duration(&mut self, key: &str, text: &str) -> std::time::Duration {
        match units::parse_duration(text) {
            Ok(std::time::Duration::ZERO) => {
                self.error(key, "must be longer than zero".into());
                std::time::Duration::from_secs(1)
            }
            Ok(duration) => duration,
            Err(error) => {
                self.error(key, error.to_string());
                std::time::Duration::from_secs(1)
            }
        }
    }

    fn absolute(&mut self, key: &str, path: &Path) {
        if !path.is_absolute() && !path.starts_with(".") {
            self.error(
                key,
                format!("`{}` must be an absolute path", path.display()),
            );
        }
    }
}

/// Longest retention period accepted: 100 years.
const MAX_PERIOD_MONTHS: u32 = 1200;

fn period_over(period: Period, months: u32) -> bool {
    match period {
        Period::Months(n) => n > months,
        Period::Fixed(duration) => duration.as_secs() > u64::from(months) * 31 * 86_400,
    }
}

impl RawConfig {
    /// The embedded development instance: everything under `root`, loopback only.
    pub fn dev(root: &Path) -> RawConfig {
        let pki = root.join("pki");
        RawConfig {
            server: RawServer {
                listen: "127.0.0.1:8443".into(),
                cert: pki.join("server.crt"),
                key: pki.join("server.key"),
                client_ca: pki.join("ca.crt"),
                ..RawServer::default()
            },
            storage: RawStorage {
                data_dir: root.to_owned(),
            },
            keys: RawKeys {
                master_key_file: root.join("master.key"),
            },
            ingest: RawIngest {
                spool_dir: root.join("spool"),
                ..RawIngest::default()
            },
            retention: RawRetention::default(),
            alarms: RawAlarms::default(),
            metrics: RawMetrics::default(),
        }
    }

    /// Validates every value, collecting all errors.
    pub fn resolve(
        self,
        file: &Path,
        credentials_dir: Option<PathBuf>,
    ) -> Result<Config, ConfigErrors> {
        let mut r = Resolver {
            file,
            errors: Vec::new(),
        };

        let listen = r.addr("server.listen", &self.server.listen);
        if self.server.max_connections == 0 {
            r.error("server.max_connections", "must be at least 1".into());
        }
        let handshake_timeout =
            r.duration("server.handshake_timeout", &self.server.handshake_timeout);
        let idle_timeout = r.duration("server.idle_timeout", &self.server.idle_timeout);
        r.absolute("storage.data_dir", &self.storage.data_dir);
        r.absolute("ingest.spool_dir", &self.ingest.spool_dir);
        r.absolute("keys.master_key_file", &self.keys.master_key_file);

        let master_key = match credentials_dir.map(|dir| dir.join(MASTER_KEY_CREDENTIAL)) {
            Some(credential) if credential.exists() => KeySource::Credential(credential),
            _ => KeySource::File(self.keys.master_key_file.clone()),
        };

        let spool_timezone = match jiff::tz::TimeZone::get(&self.ingest.spool_timezone) {
            Ok(zone) => zone,
            Err(_) => {
                r.error(
                    "ingest.spool_timezone",
                    format!(
                        "`{}` is not an IANA time zone like Europe/Paris",
                        self.ingest.spool_timezone
                    ),
                );
                jiff::tz::TimeZone::UTC
            }
        };
        let max_recording_bytes = match units::parse_size(&self.ingest.max_recording_bytes) {
            Ok(0) => {
                r.error(
                    "ingest.max_recording_bytes",
                    "must be larger than zero".into(),
                );
                1
            }
            Ok(size) => size,
            Err(error) => {
                r.error("ingest.max_recording_bytes", error.to_string());
                1
            }
        };
        if !(1..=64).contains(&self.ingest.spool_workers) {
            r.error(
                "ingest.spool_workers",
                format!("{} is not between 1 and 64", self.ingest.spool_workers),
            );
        }

        let retention = RetentionConfig {
            recordings: r.period("retention.recordings", &self.retention.recordings),
            quarantine: r.period("retention.quarantine", &self.retention.quarantine),
            purge_interval: r.duration_at_most(
                "retention.purge_interval",
                &self.retention.purge_interval,
                std::time::Duration::from_secs(86_400),
                "recordings are deleted within one purge interval of their end (SPEC §4.3)",
            ),
            audit: r.period_at_least(
                "retention.audit",
                &self.retention.audit,
                6,
                "the audit trail must outlive the recordings it accounts for",
            ),
        };

        let max_open = r.duration("alarms.max_open", &self.alarms.max_open);
        let mut receivers = Vec::new();
        for (idx, raw) in self.alarms.receiver.into_iter().enumerate() {
            let key = |leaf: &str| format!("alarms.receiver[{idx}].{leaf}");
            if raw.name.is_empty()
                || !raw
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                r.error(
                    &key("name"),
                    format!("`{}` must be letters, digits, `-` or `_`", raw.name),
                );
            }
            if receivers
                .iter()
                .any(|other: &ReceiverConfig| other.name == raw.name)
            {
                r.error(
                    &key("name"),
                    format!("`{}` is used by another receiver", raw.name),
                );
            }
            if raw.baud == 0 || raw.baud > 4_000_000 {
                r.error(&key("baud"), format!("{} is not a serial speed", raw.baud));
            }
            if !(5..=8).contains(&raw.data_bits) {
                r.error(
                    &key("data_bits"),
                    format!("{} is not between 5 and 8", raw.data_bits),
                );
            }
            let parity = match raw.parity.as_str() {
                "none" => Parity::None,
                "even" => Parity::Even,
                "odd" => Parity::Odd,
                other => {
                    r.error(
                        &key("parity"),
                        format!("`{other}` is not one of none, even, odd"),
                    );
                    Parity::None
                }
            };
            if !(1..=2).contains(&raw.stop_bits) {
                r.error(
                    &key("stop_bits"),
                    format!("{} is not 1 or 2", raw.stop_bits),
                );
            }
            let protocol = match raw.protocol.as_str() {
                "surgard" => Protocol::Surgard,
                other => {
                    r.error(
                        &key("protocol"),
                        format!("`{other}` is not a supported protocol (surgard)"),
                    );
                    Protocol::Surgard
                }
            };
            if !(1..=7).contains(&raw.line_digits) {
                r.error(
                    &key("line_digits"),
                    format!("{} is not between 1 and 7", raw.line_digits),
                );
            }
            // The device: an absolute path (it may be absent while unplugged; the receiver
            // waits for it), not another receiver's, and if present a character device.
            if raw.device.as_os_str().is_empty() {
                r.error(&key("device"), "is empty".to_owned());
            } else if !raw.device.is_absolute() {
                r.error(
                    &key("device"),
                    format!("`{}` is not an absolute path", raw.device.display()),
                );
            } else if let Ok(metadata) = std::fs::metadata(&raw.device) {
                use std::os::unix::fs::FileTypeExt;
                if !metadata.file_type().is_char_device() {
                    r.error(
                        &key("device"),
                        format!(
                            "`{}` is not a serial (character) device",
                            raw.device.display()
                        ),
                    );
                }
            }
            if receivers
                .iter()
                .any(|other: &ReceiverConfig| other.device == raw.device)
            {
                r.error(
                    &key("device"),
                    format!(
                        "`{}` is used by another receiver (one port, one reader)",
                        raw.device.display()
                    ),
                );
            }
            let heartbeat_timeout = r.duration(&key("heartbeat_timeout"), &raw.heartbeat_timeout);
            let duplicate_window = r.duration(&key("duplicate_window"), &raw.duplicate_window);
            receivers.push(ReceiverConfig {
                name: raw.name,
                device: raw.device,
                baud: raw.baud,
                data_bits: raw.data_bits,
                parity,
                stop_bits: raw.stop_bits,
                protocol,
                acknowledge: raw.acknowledge,
                line_digits: raw.line_digits,
                heartbeat_timeout,
                duplicate_window,
            });
        }
        let metrics_listen = r.addr("metrics.listen", &self.metrics.listen);
        // Plain HTTP without authentication (SPEC §10: loopback only).
        if !metrics_listen.ip().is_loopback() {
            r.error(
                "metrics.listen",
                format!(
                    "`{}` is not a loopback address: the metrics are plain HTTP without \
                     authentication (use 127.0.0.1 or [::1]; scrape through an SSH tunnel or a \
                     local agent)",
                    self.metrics.listen
                ),
            );
        }
        if metrics_listen == listen && listen.port() != 0 {
            r.error(
                "metrics.listen",
                format!("`{}` is also `server.listen`", self.metrics.listen),
            );
        }

        if !r.errors.is_empty() {
            return Err(ConfigErrors(r.errors));
        }
        Ok(Config {
            source: file.to_owned(),
            server: ServerConfig {
                listen,
                cert: self.server.cert,
                key: self.server.key,
                client_ca: self.server.client_ca,
                max_connections: self.server.max_connections,
                handshake_timeout,
                idle_timeout,
            },
            storage: StorageConfig {
                data_dir: self.storage.data_dir,
            },
            keys: KeysConfig { master_key },
            ingest: IngestConfig {
                spool_dir: self.ingest.spool_dir,
                spool_timezone,
                spool_timezone_name: self.ingest.spool_timezone,
                max_recording_bytes,
                spool_workers: self.ingest.spool_workers,
            },
            retention,
            alarms: AlarmsConfig {
                max_open,
                receivers,
            },
            metrics: MetricsConfig {
                listen: metrics_listen,
            },
        })
    }
}
