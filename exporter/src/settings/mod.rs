//! Typed settings from flags, environment and the optional YAML config file: [`flags`] (clap)
//! and [`file`] (strict serde) parse, this module merges. Nothing else in the crate knows
//! about clap or serde's view of the settings.
//!
//! Precedence: flag, then environment, then config file, then the built-in default.

pub mod file;
pub mod flags;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::collector::Name;
use crate::peers::probe::{KindError, PeerSpec, ProbeKind, ProbeSpec};
use file::{Config, ConfigError, ProbeConfig};
pub use flags::{Cli, LogFormat, LogLevel, ProbeArgs, DEFAULT_LISTEN};

/// The settings the daemon runs with, after merging flags, environment and config file.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--config.file`, read again on SIGHUP.
    pub config_file: Option<PathBuf>,
    pub listen_address: SocketAddr,
    pub web_config_file: Option<PathBuf>,
    pub web_max_connections: usize,
    pub web_max_requests: usize,
    pub telemetry_path: String,
    pub libvirt_uri: String,
    pub reconnect_max_backoff: Duration,
    pub sample_interval: Duration,
    pub sample_idle_interval: Duration,
    pub completion_grace: Duration,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub trace_path: Option<PathBuf>,
    /// `None`: records in memory only.
    pub storage_path: Option<PathBuf>,
    pub storage_retention_size: u64,
    /// `None`: keep `last_*` series until restart.
    pub last_retention: Option<Duration>,
    pub netdev: crate::netdev::Netdev,
    pub probe: ProbeSettings,
    /// Guest services to probe (the config file's `app:` section).
    pub app: crate::app::targets::AppSettings,
    /// Collectors to run (`--collector.<name>` / `--no-collector.<name>`).
    pub collectors: BTreeSet<Name>,
    pub forecast: ForecastSettings,
}

/// The forecast's settings (`--forecast.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct ForecastSettings {
    /// The read-write URI dirty-rate calculations are started on; `None`: none are started.
    pub calc_uri: Option<String>,
    pub interval: Duration,
    pub max_concurrency: usize,
    /// Bytes/s to assume when no path figure is known.
    pub bandwidth: Option<f64>,
    /// `--forecast.zero-pages`.
    pub zero_pages: bool,
}

/// Why the command line could not be turned into settings.
#[derive(Debug)]
pub enum CliError {
    /// `--help` or `--version`: print and exit 0.
    Display(clap::Error),
    /// A bad flag: one line, exit 2.
    Flag(String),
    Config(ConfigError),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Display(e) => write!(f, "{e}"),
            CliError::Flag(m) => write!(f, "{m}"),
            CliError::Config(e) => write!(f, "{e}"),
        }
    }
}

/// Parse arguments (including argv[0]) and the config file they name.
pub fn parse<I, T>(args: I) -> Result<Settings, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = flags::with_collector_flags(Cli::command())
        .try_get_matches_from(args)
        .map_err(flag_error)?;
    let cli = Cli::from_arg_matches(&matches).map_err(flag_error)?;
    let config = match &cli.config_file {
        Some(path) => Config::load(path).map_err(CliError::Config)?,
        None => Config::default(),
    };
    merge(cli, &matches, config)
}

fn flag_error(e: clap::Error) -> CliError {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => CliError::Display(e),
        _ => {
            // clap's message spans several lines (usage, hint): keep its first, which names
            // the flag and the problem.
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: bad command line")
                .trim()
                .to_string();
            CliError::Flag(format!("{first} (see --help)"))
        }
    }
}

fn from_default(m: &ArgMatches, id: &str) -> bool {
    matches!(m.value_source(id), Some(ValueSource::DefaultValue) | None)
}

/// An explicit flag (or its environment variable) wins over the config file, the file over the
/// flag's default. `id` is the flag's clap id (its field name).
fn flag_or_file<T>(m: &ArgMatches, id: &str, flag: T, file: Option<T>) -> T {
    match file {
        Some(v) if from_default(m, id) => v,
        _ => flag,
    }
}

fn merge(cli: Cli, m: &ArgMatches, cfg: Config) -> Result<Settings, CliError> {
    let pick = |id: &str, flag: Duration, file: Option<Duration>| flag_or_file(m, id, flag, file);
    let probe = resolve_probes(&cli.probe, m, &cfg.probe).map_err(|e| match e {
        ProbeSettingsError::Flag(m) => CliError::Flag(m),
        ProbeSettingsError::File(message) => CliError::Config(ConfigError::Invalid {
            path: cli
                .config_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            message,
        }),
    })?;
    let f = &cli.forecast;
    if f.forecast_libvirt_uri.is_some() && !f.forecast_enable {
        return Err(CliError::Flag(
            "--forecast.libvirt.uri is set but --forecast.enable is not: add --forecast.enable to start dirty-rate calculations, or drop the URI".into(),
        ));
    }
    if f.forecast_enable && !settings_collectors_has_forecast(m) {
        return Err(CliError::Flag(
            "--forecast.enable needs the forecast collector: drop --no-collector.forecast".into(),
        ));
    }
    let forecast = ForecastSettings {
        calc_uri: f.forecast_enable.then(|| {
            f.forecast_libvirt_uri.clone().unwrap_or_else(|| {
                flag_or_file(
                    m,
                    "libvirt_uri",
                    cli.libvirt_uri.clone(),
                    cfg.libvirt.uri.clone(),
                )
            })
        }),
        interval: f.forecast_interval,
        max_concurrency: usize::from(f.forecast_max_concurrency),
        bandwidth: f.forecast_bandwidth,
        zero_pages: f.forecast_zero_pages,
    };
    Ok(Settings {
        config_file: cli.config_file.clone(),
        forecast,
        listen_address: cli.listen_address,
        web_config_file: cli.web_config_file,
        web_max_connections: cli.web_max_connections as usize,
        web_max_requests: cli.web_max_requests as usize,
        telemetry_path: cli.telemetry_path,
        libvirt_uri: flag_or_file(m, "libvirt_uri", cli.libvirt_uri, cfg.libvirt.uri),
        reconnect_max_backoff: pick(
            "reconnect_max_backoff",
            cli.reconnect_max_backoff,
            cfg.libvirt.reconnect_max_backoff,
        ),
        sample_interval: pick("sample_interval", cli.sample_interval, cfg.sample.interval),
        sample_idle_interval: pick(
            "sample_idle_interval",
            cli.sample_idle_interval,
            cfg.sample.idle_interval,
        ),
        completion_grace: pick(
            "completion_grace",
            cli.completion_grace,
            cfg.sample.completion_grace,
        ),
        log_level: cli.log_level,
        log_format: cli.log_format,
        trace_path: cli.trace_path,
        storage_path: (!cli.storage_path.is_empty()).then(|| PathBuf::from(cli.storage_path)),
        storage_retention_size: cli.storage_retention_size,
        last_retention: (!cli.last_retention.is_zero()).then_some(cli.last_retention),
        netdev: crate::netdev::Netdev {
            procfs: cli.procfs,
            sysfs: cli.sysfs,
            include: cli.netdev_include,
            exclude: cli.netdev_exclude,
            guest_devices: cli.netdev_guest_devices,
        },
        probe,
        app: cfg.app.clone(),
        collectors: flags::enabled_collectors(m),
    })
}

fn settings_collectors_has_forecast(m: &ArgMatches) -> bool {
    flags::enabled_collectors(m).contains(&Name::Forecast)
}

/// Peer-probe settings after merging flags, environment and config file.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSettings {
    /// Configured peers, probed all the time.
    pub peers: Vec<PeerSpec>,
    /// Most probes in flight at once, all peers together.
    pub max_concurrency: usize,
    /// Probe the peer of each running migration.
    pub discovery: bool,
    /// The probes run against discovered peers.
    pub discovery_probes: Vec<ProbeSpec>,
    /// Which processes discovery takes for a domain's QEMU.
    pub qemu_trust: crate::peers::qemu_socket::QemuTrust,
}

/// Why the probe flags and the file's `probe:` section make no [`ProbeSettings`].
enum ProbeSettingsError {
    Flag(String),
    File(String),
}

/// Merge: an explicit flag (or env) wins over the file, the file over the default. Peers from
/// `--probe.peer` and from `probe.peers` are all probed; names must be unique.
fn resolve_probes(
    a: &ProbeArgs,
    m: &ArgMatches,
    pc: &ProbeConfig,
) -> Result<ProbeSettings, ProbeSettingsError> {
    use ProbeSettingsError::{File, Flag};
    let interval = flag_or_file(m, "interval", a.interval, pc.interval);
    let timeout = flag_or_file(m, "timeout", a.timeout, pc.timeout);
    let max_concurrency = flag_or_file(
        m,
        "max_concurrency",
        usize::from(a.max_concurrency),
        pc.max_concurrency,
    );
    let discovery = flag_or_file(m, "discovery", a.discovery, pc.discovery);

    let mut flag_probes = Vec::new();
    for name in &a.peer_probes {
        let port = a.tcp_port.filter(|_| ProbeKind::takes_port(name));
        let kind = ProbeKind::from_name(name, port).map_err(|e| match e {
            KindError::PortRequired => Flag(format!(
                "--probe.peer-probes includes {name} but --probe.tcp-port is not set"
            )),
            // clap only lets ProbeKind::NAMES through.
            KindError::Unknown(_) | KindError::PortNotUsed => {
                Flag(format!("--probe.peer-probes: '{name}' is not a probe type"))
            }
        })?;
        flag_probes.push(ProbeSpec {
            kind,
            interval,
            timeout,
        });
    }
    // Where each peer name was first given, for the duplicate message.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut peers = Vec::new();
    for raw in &a.peers {
        let (name, addr) = match raw.split_once('=') {
            Some((n, a)) => (n.trim().to_string(), a.trim()),
            None => (raw.trim().to_string(), raw.trim()),
        };
        let address = addr.parse().map_err(|_| {
            Flag(format!("--probe.peer '{raw}': '{addr}' is not an IP address; use [NAME=]IP, e.g. dst=10.0.0.2"))
        })?;
        if name.is_empty() {
            return Err(Flag(format!("--probe.peer '{raw}': empty name")));
        }
        if let Some(first) = seen.insert(name.clone(), format!("--probe.peer '{raw}'")) {
            return Err(Flag(format!(
                "--probe.peer '{raw}': peer name '{name}' is given twice (also in {first})"
            )));
        }
        peers.push(PeerSpec {
            name,
            address,
            probes: flag_probes.clone(),
        });
    }
    for (i, p) in pc.peers.iter().enumerate() {
        let at = format!("probe.peers[{i}]");
        if let Some(first) = seen.insert(p.name.clone(), at.clone()) {
            return Err(File(format!(
                "{at}.name '{}' is used twice (also in {first})",
                p.name
            )));
        }
        let probes = p
            .probes
            .iter()
            .map(|e| ProbeSpec {
                kind: e.kind,
                interval: e.interval.unwrap_or(interval),
                timeout: e.timeout.unwrap_or(timeout),
            })
            .collect();
        peers.push(PeerSpec {
            name: p.name.clone(),
            address: p.address,
            probes,
        });
    }
    let mut discovery_probes = vec![ProbeSpec {
        kind: ProbeKind::Icmp,
        interval,
        timeout,
    }];
    if let Some(port) = a.discovery_tcp_port.or(pc.discovery_tcp_port) {
        discovery_probes.push(ProbeSpec {
            kind: ProbeKind::Tcp { port },
            interval,
            timeout,
        });
    }
    Ok(ProbeSettings {
        peers,
        max_concurrency,
        discovery,
        discovery_probes,
        qemu_trust: qemu_trust(a).map_err(Flag)?,
    })
}

/// The users QEMU may run as (given, or those of the defaults that exist) and the emulators.
fn qemu_trust(a: &ProbeArgs) -> Result<crate::peers::qemu_socket::QemuTrust, String> {
    use crate::peers::qemu_socket::resolve_user;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let uids = match &a.discovery_qemu_users {
        Some(users) => users
            .iter()
            .map(|u| {
                resolve_user(&passwd, u).ok_or_else(|| {
                    format!("--probe.discovery-qemu-users: no user '{u}' in /etc/passwd (give a user name from it or a numeric uid)")
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        // In a container /etc/passwd is not the host's: the distributions' fixed uids stand in.
        None => std::iter::once(0)
            .chain(
                [("libvirt-qemu", 64055), ("qemu", 107)]
                    .iter()
                    .map(|(u, fixed)| resolve_user(&passwd, u).unwrap_or(*fixed)),
            )
            .collect(),
    };
    Ok(crate::peers::qemu_socket::QemuTrust {
        uids,
        emulators: a.discovery_emulators.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with_file(body: &str, args: &[&str]) -> Result<Settings, CliError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yml");
        std::fs::write(&path, body).expect("write");
        let p = path.to_string_lossy().to_string();
        let mut argv = vec!["vm-migration-exporter", "--config.file", &p];
        argv.extend_from_slice(args);
        parse(argv)
    }

    #[test]
    fn a_peer_name_given_twice_names_both_places() {
        let twice = "probe:\n  peers:\n    - {name: a, address: 10.0.0.1, probes: [{type: icmp}]}\n    - {name: a, address: 10.0.0.2, probes: [{type: icmp}]}\n";
        let e = parse_with_file(twice, &[]).expect_err("duplicate in the file");
        let e = e.to_string();
        assert!(
            e.contains("probe.peers[1].name 'a' is used twice (also in probe.peers[0])")
                && e.contains("c.yml"),
            "{e}"
        );
        let once = "probe:\n  peers:\n    - {name: a, address: 10.0.0.1, probes: [{type: icmp}]}\n";
        let e = parse_with_file(once, &["--probe.peer", "a=10.0.0.3"])
            .expect_err("flag and file")
            .to_string();
        assert!(e.contains("also in --probe.peer 'a=10.0.0.3'"), "{e}");
        let e = parse(["x", "--probe.peer", "a=10.0.0.3,a=10.0.0.4"])
            .expect_err("two flags")
            .to_string();
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn file_peers_take_the_flag_defaults_and_flags_win() {
        let body = "probe:\n  interval: 5s\n  peers:\n    - name: dst\n      address: 10.77.0.2\n      probes: [{type: icmp}, {type: tcp, port: 16509, timeout: 200ms}]\n";
        let s = parse_with_file(body, &["--probe.timeout", "2s"]).expect("valid");
        let peer = &s.probe.peers[0];
        assert_eq!(
            peer.address,
            "10.77.0.2".parse::<std::net::IpAddr>().expect("ip")
        );
        assert_eq!(
            peer.probes,
            vec![
                ProbeSpec {
                    kind: ProbeKind::Icmp,
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(2),
                },
                ProbeSpec {
                    kind: ProbeKind::Tcp { port: 16509 },
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_millis(200),
                },
            ]
        );
    }
}
