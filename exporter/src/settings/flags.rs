//! Command-line flags, in Prometheus exporter style (`--web.listen-address`, `--libvirt.uri`),
//! each with an environment-variable fallback. Only clap lives here; [`super`] merges the
//! flags with the config file into typed settings.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use std::collections::BTreeSet;

use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, Parser, ValueEnum};

use crate::collector::Name;
use crate::peers::probe::ProbeKind;

/// Default port: 9177 is taken by the existing libvirt exporters, so this one uses 9745.
pub const DEFAULT_LISTEN: &str = ":9745";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Prometheus exporter for libvirt/QEMU live migrations.
///
/// Watches every migration job on this host through a read-only libvirt connection: live
/// progress (data remaining, dirty vs transfer rate, iteration, expected and max downtime,
/// auto-converge throttle, post-copy page requests) while a job runs, and the final figures of
/// every finished migration (outcome, duration, downtime), from libvirt's job-completed event.
/// Scrapes never wait on libvirt: a background sampler keeps the latest state.
///
/// SIGHUP (`systemctl reload`) reads --config.file and --web.config.file again: a new
/// certificate, key or basic-auth user applies from the next connection or request on, and the
/// configured peers (`probe.peers`) follow the file. A file that fails to load keeps the
/// previous configuration in force and is named in one error line;
/// vm_migration_exporter_config_last_reload_successful says whether the last reload worked.
#[derive(Debug, Parser)]
#[command(
    name = "vm-migration-exporter",
    version,
    about,
    long_about,
    max_term_width = 100
)]
pub struct Cli {
    /// Address to listen on for HTTP: `host:port`, `[v6]:port`, or `:port` for all IPv4
    /// interfaces. The default port 9745 avoids 9177, used by other libvirt exporters.
    #[arg(long = "web.listen-address", env = "VM_MIGRATION_EXPORTER_WEB_LISTEN_ADDRESS", default_value = DEFAULT_LISTEN, value_parser = parse_listen_address, value_name = "ADDR")]
    pub listen_address: SocketAddr,

    /// TLS and basic-auth settings in the Prometheus exporter-toolkit format (tls_server_config:
    /// cert_file, key_file, min_version; basic_auth_users: name → bcrypt hash). Off: plain HTTP.
    /// Read again on SIGHUP (certificates rotate without a restart).
    #[arg(
        long = "web.config.file",
        env = "VM_MIGRATION_EXPORTER_WEB_CONFIG_FILE",
        value_name = "FILE"
    )]
    pub web_config_file: Option<PathBuf>,

    /// Most open HTTP connections; past it new connections are closed at once. Lowered, with a
    /// warning, when the open-files limit cannot hold it.
    #[arg(long = "web.max-connections", env = "VM_MIGRATION_EXPORTER_WEB_MAX_CONNECTIONS", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub web_max_connections: u32,

    /// Most HTTP requests served at once; past it a request is answered 503 at once (before
    /// authentication).
    #[arg(long = "web.max-requests", env = "VM_MIGRATION_EXPORTER_WEB_MAX_REQUESTS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub web_max_requests: u32,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", env = "VM_MIGRATION_EXPORTER_WEB_TELEMETRY_PATH", default_value = "/metrics", value_parser = parse_telemetry_path, value_name = "PATH")]
    pub telemetry_path: String,

    /// libvirt connection URI, opened read-only. A local daemon on a non-default socket:
    /// `qemu:///system?socket=/path/to/libvirt-sock`.
    #[arg(
        long = "libvirt.uri",
        env = "VM_MIGRATION_EXPORTER_LIBVIRT_URI",
        default_value = "qemu:///system",
        value_name = "URI"
    )]
    pub libvirt_uri: String,

    /// Longest wait between reconnection attempts after libvirtd goes away (the wait doubles
    /// from 0.5 s up to this).
    #[arg(long = "libvirt.reconnect-max-backoff", env = "VM_MIGRATION_EXPORTER_LIBVIRT_RECONNECT_MAX_BACKOFF", default_value = "30s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub reconnect_max_backoff: Duration,

    /// How often to sample job statistics while a migration job runs.
    #[arg(long = "sample.interval", env = "VM_MIGRATION_EXPORTER_SAMPLE_INTERVAL", default_value = "1s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub sample_interval: Duration,

    /// How often to look for jobs while none runs. libvirt events (a migration's first
    /// iteration, post-copy, completion) wake the sampler at once regardless.
    #[arg(long = "sample.idle-interval", env = "VM_MIGRATION_EXPORTER_SAMPLE_IDLE_INTERVAL", default_value = "15s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub sample_idle_interval: Duration,

    /// How long to wait for libvirt's job-completed event after a migrating domain left this
    /// host, before counting the migration from its last sample.
    #[arg(long = "sample.completion-grace", env = "VM_MIGRATION_EXPORTER_SAMPLE_COMPLETION_GRACE", default_value = "5s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub completion_grace: Duration,

    /// Only log messages at this level or above.
    #[arg(
        long = "log.level",
        env = "VM_MIGRATION_EXPORTER_LOG_LEVEL",
        default_value = "info",
        value_enum
    )]
    pub log_level: LogLevel,

    /// Log line format.
    #[arg(
        long = "log.format",
        env = "VM_MIGRATION_EXPORTER_LOG_FORMAT",
        default_value = "logfmt",
        value_enum
    )]
    pub log_format: LogFormat,

    /// YAML configuration file. Keys: `libvirt.uri`, `libvirt.reconnect_max_backoff`,
    /// `sample.interval`, `sample.idle_interval`, `sample.completion_grace`, `probe.interval`,
    /// `probe.timeout`, `probe.max_concurrency`, `probe.discovery`, `probe.discovery_tcp_port`,
    /// `probe.peers[]` (name, address, probes[]: type icmp|tcp, port, interval, timeout).
    /// Flags and environment variables win over the file; unknown keys are errors. Read again
    /// on SIGHUP: `probe.peers` (with `probe.interval`, `probe.timeout`) applies at once, other
    /// changed keys at the next restart (the reload logs which).
    #[arg(
        long = "config.file",
        env = "VM_MIGRATION_EXPORTER_CONFIG_FILE",
        value_name = "FILE"
    )]
    pub config_file: Option<PathBuf>,

    /// Directory for the finished-migration records (`migrations.jsonl`, append-only, kept
    /// across restarts and served at /api/v1/migrations). Empty: keep records in memory only.
    #[arg(
        long = "storage.path",
        env = "VM_MIGRATION_EXPORTER_STORAGE_PATH",
        default_value = "/var/lib/vm-migration-exporter",
        value_name = "DIR"
    )]
    pub storage_path: String,

    /// Largest size of the record file; past it, the file is rewritten with the newest records
    /// that fit in half of it.
    #[arg(long = "storage.retention-size", env = "VM_MIGRATION_EXPORTER_STORAGE_RETENTION_SIZE", default_value = "64MiB", value_parser = crate::records::log::parse_size, value_name = "SIZE")]
    pub storage_retention_size: u64,

    /// How long a domain's `vm_migration_last_*` series stay after its last migration finished
    /// on this host (guests come and go; their series should not pile up). 0 keeps them until
    /// the exporter restarts. The records under --storage.path are not affected.
    #[arg(long = "metrics.last-retention", env = "VM_MIGRATION_EXPORTER_METRICS_LAST_RETENTION", default_value = "24h", value_parser = parse_duration_or_zero, value_name = "DURATION")]
    pub last_retention: Duration,

    /// procfs mount point: NIC counters from <path>/net/dev, migration peers from the QEMU
    /// process's <path>/<pid>/fd and <path>/<pid>/net/tcp{,6}, routes from <path>/net/route.
    #[arg(
        long = "path.procfs",
        env = "VM_MIGRATION_EXPORTER_PATH_PROCFS",
        default_value = "/proc",
        value_name = "DIR"
    )]
    pub procfs: PathBuf,

    /// sysfs mount point (link speed and state from <path>/class/net/<device>/).
    #[arg(
        long = "path.sysfs",
        env = "VM_MIGRATION_EXPORTER_PATH_SYSFS",
        default_value = "/sys",
        value_name = "DIR"
    )]
    pub sysfs: PathBuf,

    /// Only report NIC devices whose name matches this regular expression.
    #[arg(long = "collector.netdev.device-include", env = "VM_MIGRATION_EXPORTER_NETDEV_DEVICE_INCLUDE", value_parser = parse_regex, value_name = "REGEX")]
    pub netdev_include: Option<regex::Regex>,

    /// Leave out NIC devices whose name matches this regular expression.
    #[arg(long = "collector.netdev.device-exclude", env = "VM_MIGRATION_EXPORTER_NETDEV_DEVICE_EXCLUDE", value_parser = parse_regex, value_name = "REGEX")]
    pub netdev_exclude: Option<regex::Regex>,

    /// Also report the guests' own devices (names starting with tap, vnet, macvtap, qvb, qvo,
    /// qbr). Off: node_exporter reports them already, and migrations cross the host's NICs.
    #[arg(long = "collector.netdev.guest-devices", env = "VM_MIGRATION_EXPORTER_NETDEV_GUEST_DEVICES", default_value = "false", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub netdev_guest_devices: bool,

    /// Append every raw libvirt job-stat sample and event to this file as JSON lines (used by
    /// the lab to record traces that tests replay). Off by default.
    #[arg(
        long = "trace.path",
        env = "VM_MIGRATION_EXPORTER_TRACE_PATH",
        value_name = "FILE"
    )]
    pub trace_path: Option<PathBuf>,

    #[command(flatten)]
    pub probe: ProbeArgs,

    #[command(flatten)]
    pub forecast: ForecastArgs,
}

/// The forecast flags, flattened into [`Cli`].
#[derive(Debug, Args)]
pub struct ForecastArgs {
    /// Start dirty-rate calculations (virDomainStartDirtyRateCalc, page sampling: QEMU hashes
    /// a sample of pages, the guest runs on) and read the domains' migration bandwidth caps
    /// (virDomainMigrateGetMaxSpeed, refused read-only) for the forecast, on a read-write
    /// connection to --forecast.libvirt.uri. Off: the exporter stays read-only and uses the
    /// dirty rates libvirt already reports and the domains' past migrations; caps are unknown.
    #[arg(long = "forecast.enable", env = "VM_MIGRATION_EXPORTER_FORECAST_ENABLE", default_value = "false", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub forecast_enable: bool,

    /// The read-write libvirt URI used only to start dirty-rate calculations and read the
    /// migration bandwidth caps (default: the --libvirt.uri daemon). Needs --forecast.enable.
    #[arg(
        long = "forecast.libvirt.uri",
        env = "VM_MIGRATION_EXPORTER_FORECAST_LIBVIRT_URI",
        value_name = "URI"
    )]
    pub forecast_libvirt_uri: Option<String>,

    /// How often each domain's dirty rate is calculated (at least 10s).
    #[arg(long = "forecast.interval", env = "VM_MIGRATION_EXPORTER_FORECAST_INTERVAL", default_value = "5m", value_parser = parse_forecast_interval, value_name = "DURATION")]
    pub forecast_interval: Duration,

    /// Most dirty-rate calculations running at once.
    #[arg(long = "forecast.max-concurrency", env = "VM_MIGRATION_EXPORTER_FORECAST_MAX_CONCURRENCY", default_value = "2", value_parser = clap::value_parser!(u16).range(1..=64), value_name = "N")]
    pub forecast_max_concurrency: u16,

    /// The transfer rate to assume when no path figure is known (no link speed, cap or RTT to
    /// the peer), per second, e.g. 40MiB. Unset: such forecasts are unknown.
    #[arg(long = "forecast.bandwidth", env = "VM_MIGRATION_EXPORTER_FORECAST_BANDWIDTH", value_parser = crate::forecast::api::parse_bandwidth, value_name = "RATE")]
    pub forecast_bandwidth: Option<f64>,

    /// Sample each guest's memory for zero pages (512 pages of QEMU's guest-RAM mapping each
    /// forecast round, read from /proc/<pid>/mem and tested for all-zero; nothing of their
    /// content is kept), so pass 1 is forecast as the memory holding data rather than all resident memory
    /// (zeroed pages cost pre-copy almost nothing). Reads guest memory: off unless asked for.
    /// Needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH.
    #[arg(long = "forecast.zero-pages", env = "VM_MIGRATION_EXPORTER_FORECAST_ZERO_PAGES", default_value = "false", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub forecast_zero_pages: bool,
}

fn parse_forecast_interval(s: &str) -> Result<Duration, String> {
    let d = parse_positive_duration(s)?;
    if d < Duration::from_secs(10) {
        return Err(format!(
            "'{s}' is too short: at least 10s (a calculation samples the guest for 1 s)"
        ));
    }
    Ok(d)
}

/// The peer-probe flags, flattened into [`Cli`].
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// A peer to probe: `[NAME=]ADDRESS` (IP). Repeat for more. Peers with several probes
    /// or their own intervals go in the config file under `probe.peers`.
    #[arg(
        long = "probe.peer",
        env = "VM_MIGRATION_EXPORTER_PROBE_PEER",
        value_delimiter = ',',
        value_name = "[NAME=]IP"
    )]
    pub peers: Vec<String>,

    /// Probes to run against each `--probe.peer`.
    #[arg(
        long = "probe.peer-probes",
        env = "VM_MIGRATION_EXPORTER_PROBE_PEER_PROBES",
        value_delimiter = ',',
        default_value = "icmp",
        value_parser = PossibleValuesParser::new(ProbeKind::NAMES),
        value_name = "PROBES"
    )]
    pub peer_probes: Vec<String>,

    /// Port for the `tcp` probe of `--probe.peer` peers (e.g. 16509, libvirtd).
    #[arg(long = "probe.tcp-port", env = "VM_MIGRATION_EXPORTER_PROBE_TCP_PORT", value_parser = clap::value_parser!(u16).range(1..), value_name = "PORT")]
    pub tcp_port: Option<u16>,

    /// Default interval between probes of one peer.
    #[arg(long = "probe.interval", env = "VM_MIGRATION_EXPORTER_PROBE_INTERVAL", default_value = "1s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub interval: Duration,

    /// Default time to wait for a probe's answer before counting a timeout.
    #[arg(long = "probe.timeout", env = "VM_MIGRATION_EXPORTER_PROBE_TIMEOUT", default_value = "1s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// Most probes in flight at once, all peers together.
    #[arg(long = "probe.max-concurrency", env = "VM_MIGRATION_EXPORTER_PROBE_MAX_CONCURRENCY", default_value = "16", value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub max_concurrency: u16,

    /// Probe (ICMP) the peer of each running migration, found from the QEMU process's
    /// migration socket under --path.procfs.
    #[arg(long = "probe.discovery", env = "VM_MIGRATION_EXPORTER_PROBE_DISCOVERY", default_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub discovery: bool,

    /// Also TCP-connect to this port of discovered peers (never the migration port itself:
    /// QEMU's incoming migration listener accepts one connection).
    #[arg(long = "probe.discovery-tcp-port", env = "VM_MIGRATION_EXPORTER_PROBE_DISCOVERY_TCP_PORT", value_parser = clap::value_parser!(u16).range(1..), value_name = "PORT")]
    pub discovery_tcp_port: Option<u16>,

    /// Users libvirt runs QEMU as (qemu.conf `user`; names or uids). Discovery only takes a
    /// process whose real and effective uid are among them, so a local user's process cannot
    /// pass for a domain's QEMU. Default: root, libvirt-qemu and qemu (from /etc/passwd, else
    /// the uids Debian and Red Hat give them: 64055 and 107).
    #[arg(
        long = "probe.discovery-qemu-users",
        env = "VM_MIGRATION_EXPORTER_PROBE_DISCOVERY_QEMU_USERS",
        value_delimiter = ',',
        value_name = "USERS"
    )]
    pub discovery_qemu_users: Option<Vec<String>>,

    /// QEMU executables discovery takes besides `qemu-system-*` and `qemu-kvm` (a domain's
    /// `<emulator>` with another name).
    #[arg(
        long = "probe.discovery-emulators",
        env = "VM_MIGRATION_EXPORTER_PROBE_DISCOVERY_EMULATORS",
        value_delimiter = ',',
        value_name = "PATHS"
    )]
    pub discovery_emulators: Vec<PathBuf>,
}

fn collector_flag(name: Name, on: bool) -> String {
    let prefix = if on { "collector" } else { "no-collector" };
    format!("{prefix}.{}", name.as_str())
}

/// `--collector.<name>` and `--no-collector.<name>` for every collector the runner knows
/// (all on by default; the last of the two given wins, as in node_exporter).
pub fn with_collector_flags(mut cmd: Command) -> Command {
    for name in Name::ALL {
        let (on, off) = (collector_flag(name, true), collector_flag(name, false));
        cmd = cmd
            .arg(
                Arg::new(on.clone())
                    .long(on.clone())
                    .action(ArgAction::SetTrue)
                    .overrides_with(off.clone())
                    .help(format!(
                        "Enable the {} collector (default: on): {}.",
                        name.as_str(),
                        name.help()
                    )),
            )
            .arg(
                Arg::new(off.clone())
                    .long(off)
                    .action(ArgAction::SetTrue)
                    .overrides_with(on)
                    .help(format!("Disable the {} collector.", name.as_str())),
            );
    }
    cmd
}

/// The collectors left on by `--no-collector.<name>` flags.
pub fn enabled_collectors(m: &ArgMatches) -> BTreeSet<Name> {
    Name::ALL
        .into_iter()
        .filter(|n| !m.get_flag(&collector_flag(*n, false)))
        .collect()
}

pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.to_socket_addrs()
        .map_err(|e| format!("'{s}' is not host:port ({e}); use e.g. :9745 or 127.0.0.1:9745"))?
        .next()
        .ok_or_else(|| format!("'{s}' resolves to no address"))
}

fn parse_telemetry_path(s: &str) -> Result<String, String> {
    // Plain path characters only: the router reads `{`, `:` and `*` as patterns (and panics on
    // some), and `?`, `#`, `%` or spaces can never match a request path.
    let plain = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '~' | '-'));
    if !s.starts_with('/')
        || s == "/"
        || !plain
        || s.contains("//")
        || s.starts_with("/-/")
        || s.starts_with("/api/")
    {
        return Err(format!(
            "'{s}' must be an absolute path of letters, digits and / . _ ~ -, other than /, /-/… and /api/…, e.g. /metrics"
        ));
    }
    Ok(s.to_string())
}

fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    // Unanchored, as node_exporter's --collector.netdev.device-* flags are.
    regex::Regex::new(s).map_err(|e| {
        format!(
            "'{s}' is not a regular expression: {}",
            e.to_string().lines().last().unwrap_or("invalid")
        )
    })
}

/// A duration where 0 means "off".
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration ({e}); use e.g. 30m, 24h, or 0 for never"))
}

pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration ({e}); use e.g. 500ms, 1s, 2m"))?;
    if d.is_zero() {
        return Err(format!("'{s}' must be longer than zero"));
    }
    Ok(d)
}
