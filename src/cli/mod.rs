//! The command line (SPEC §2): clap definitions and one `run` that dispatches, prints errors once
//! (`{:#}`) and chooses the exit code: 0 success, 1 failure with a one-line reason on stderr,
//! 2 usage error. Administrative commands audit as `local:<unix user>`. Business logic lives in
//! the domain modules; this module only calls them.

/// `println!` for command output that fails (`?`) instead of panicking when stdout is closed,
/// as `callguard audit export | head -1` does; `main` then exits quietly.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod admin;
mod dev;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::access::Role;
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, DEFAULT_CONFIG_PATH};

/// callguard: privacy gateway for call recordings.
#[derive(Debug, Parser)]
#[command(name = "callguard", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Act on the embedded development instance under ./callguard-dev/ (its own configuration:
    /// not with --config).
    #[arg(long, global = true, conflicts_with = "config")]
    pub dev: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Listen address of the HTTPS API, overriding server.listen (port 0: any free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Listen address of the metrics endpoint, overriding metrics.listen.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Create directories, the catalog and (if absent) a master key with mode 0400. Idempotent.
    Init,
    /// Validate the configuration and say exactly what is wrong.
    CheckConfig,
    /// Map client-certificate CNs to roles.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Run the retention engine once now.
    Purge {
        /// Print what would be deleted, and why others are kept, without deleting.
        #[arg(long)]
        dry_run: bool,
    },
    /// Retention report: recordings by state, next expiries, holds, objections, quarantine, disk use.
    Report,
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Master-key tools.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Recordings that could not be parsed.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Register CN with a role (or change its role).
    Add {
        /// The common name (CN) of the client certificate.
        cn: String,
        /// operator, supervisor, legal, dpo, recorder, alarm_source or contracts.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List registered CNs.
    List,
    /// Remove a CN.
    Remove {
        /// The common name (CN) of the client certificate.
        cn: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain; name the first bad entry.
    Verify,
    /// Print entries as JSON lines.
    Export {
        /// First instant included: RFC 3339 (`2026-12-01T08:00:00Z`), or a date (`2026-12-01`:
        /// from its start, UTC).
        #[arg(long, value_name = "TIME", value_parser = parse_bound)]
        from: Option<TimeBound>,
        /// Last instant included: RFC 3339, to the second, or a date (to its end, UTC).
        #[arg(long, value_name = "TIME", value_parser = parse_bound)]
        to: Option<TimeBound>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-wrap every data key under a new master key, without re-encrypting audio.
    Rotate {
        #[arg(long, value_name = "FILE")]
        new_key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined files with the reason.
    List,
}

/// Parses the command line, runs it, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    if let Err(error) = crate::keyring::forbid_core_dumps() {
        eprintln!("callguard: warning: core dumps could not be turned off: {error}");
    }
    // clap checks the conflict only where both are written at the same level.
    let explicit_config = std::env::args_os()
        .skip(1)
        .any(|arg| arg == "--config" || arg.to_string_lossy().starts_with("--config="));
    if cli.dev && explicit_config {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--dev acts on ./callguard-dev/ with its own configuration: drop --config",
            )
            .exit();
    }
    match run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): what it wanted, it has.
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            let message = format!("{error:#}").replace('\n', "; ");
            eprintln!("callguard: {message}");
            ExitCode::from(1)
        }
    }
}

/// How long `serve` waits, after its drain, for blocking threads to finish before it exits.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let clock: SharedClock = Arc::new(SystemClock);
    match cli.command {
        Command::Serve {
            listen,
            metrics_listen,
        } => {
            init_tracing(true);
            let (config, banner) = match cli.dev {
                true => {
                    let prepared = dev::prepare(&clock)?;
                    (prepared.config, Some(prepared.banner))
                }
                false => (load(&cli.config)?, None),
            };
            let options = crate::daemon::ServeOptions {
                listen,
                metrics_listen,
                banner,
            };
            // An upload in a format read to the end (FLAC, MP3, Ogg) holds a blocking thread
            // for its probe, and file and SQLite work runs on blocking threads too: leave room
            // above `server.max_connections`.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(config.server.max_connections.saturating_mul(2).max(512))
                .thread_stack_size(1024 * 1024)
                .build()?;
            let lock = runtime.block_on(crate::daemon::serve(config, options, clock))?;
            // Blocking work still running after the drain deadline (an export being prepared)
            // is abandoned, not awaited: the process ends now. The data directory stays locked
            // until it does, so no second instance starts beside threads of this one.
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            std::mem::forget(lock);
            Ok(ExitCode::SUCCESS)
        }
        command => {
            init_tracing(false);
            let config = match cli.dev {
                true => dev::config(),
                false => load(&cli.config)?,
            };
            admin::run(command, config, cli.dev, clock)
        }
    }
}

/// Loads and validates the configuration file.
fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// Logs go to stdout for the service (journald takes them), stderr at `warn` for commands.
fn init_tracing(service: bool) {
    use tracing_subscriber::EnvFilter;
    // Symphonia reports, through `log`, what it notices in the streams it demuxes ("ogg stream
    // ends inside a page"): the probe decides what of it matters and says so itself.
    let default = match service {
        true => "info,symphonia=error",
        false => "warn,symphonia=error",
    };
    let filter =
        EnvFilter::try_from_env("CALLGUARD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match service {
        true => builder
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(std::io::stdout)
            .try_init(),
        false => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// A time bound of `audit export`: an instant, or a whole day (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBound {
    Instant(jiff::Timestamp),
    Day(jiff::civil::Date),
}

impl TimeBound {
    /// The first instant the bound includes, as a `from`.
    pub fn start(self) -> jiff::Timestamp {
        match self {
            TimeBound::Instant(at) => at,
            TimeBound::Day(day) => day
                .to_zoned(jiff::tz::TimeZone::UTC)
                .map_or(jiff::Timestamp::MIN, |zoned| zoned.timestamp()),
        }
    }

    /// The first instant after the bound, as an exclusive `to`: the next second, or the next
    /// day's start.
    pub fn end_exclusive(self) -> jiff::Timestamp {
        match self {
            TimeBound::Instant(at) => at
                .checked_add(jiff::SignedDuration::from_secs(1))
                .unwrap_or(jiff::Timestamp::MAX),
            TimeBound::Day(day) => match day.tomorrow() {
                Ok(next) => TimeBound::Day(next).start(),
                Err(_) => jiff::Timestamp::MAX,
            },
        }
    }
}

/// `--from`/`--to`: RFC 3339, or a date alone.
fn parse_bound(text: &str) -> Result<TimeBound, String> {
    if let Ok(at) = text.parse::<jiff::Timestamp>() {
        return Ok(TimeBound::Instant(at));
    }
    match text.parse::<jiff::civil::Date>() {
        Ok(day) if text.len() == 10 => Ok(TimeBound::Day(day)),
        _ => Err(format!(
            "`{text}` is neither an RFC 3339 time (2026-12-01T08:00:00Z) nor a date (2026-12-01)"
        )),
    }
}

/// `--role`: a role's name; anything else is a usage error (exit 2), named with the choices.
fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown role `{text}` (one of {})", names.join(", "))
    })
}
