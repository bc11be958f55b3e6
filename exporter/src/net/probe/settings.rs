//! The peer-probe flags (flattened into the main `Cli`) and their merge with the config file's
//! `probe:` section into [`ProbeSettings`].

use std::net::IpAddr;
use std::time::Duration;

use clap::{ArgMatches, Args, ValueEnum};

use super::config::{ProbeConfig, ProbeType};
use super::{PeerSpec, ProbeKind, ProbeSpec};
use crate::cli::{flag_or_file, parse_positive_duration};

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlagProbe {
    Icmp,
    Tcp,
}

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
        value_enum,
        value_name = "PROBES"
    )]
    pub peer_probes: Vec<FlagProbe>,

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
}

/// Merge: an explicit flag (or env) wins over the file, the file over the default. Peers from
/// `--probe.peer` and from `probe.peers` are all probed; names must be unique.
pub fn resolve(a: &ProbeArgs, m: &ArgMatches, pc: &ProbeConfig) -> Result<ProbeSettings, String> {
    let interval = flag_or_file(m, "interval", a.interval, pc.interval);
    let timeout = flag_or_file(m, "timeout", a.timeout, pc.timeout);
    let max_concurrency = flag_or_file(
        m,
        "max_concurrency",
        usize::from(a.max_concurrency),
        pc.max_concurrency,
    );
    let discovery = flag_or_file(m, "discovery", a.discovery, pc.discovery);

    let mut peers = Vec::new();
    let mut flag_probes = Vec::new();
    for p in &a.peer_probes {
        let kind = match p {
            FlagProbe::Icmp => ProbeKind::Icmp,
            FlagProbe::Tcp => ProbeKind::Tcp {
                port: a.tcp_port.ok_or(
                    "--probe.peer-probes includes tcp but --probe.tcp-port is not set".to_string(),
                )?,
            },
        };
        flag_probes.push(ProbeSpec {
            kind,
            interval,
            timeout,
        });
    }
    for raw in &a.peers {
        let (name, addr) = match raw.split_once('=') {
            Some((n, a)) => (n.trim().to_string(), a.trim()),
            None => (raw.trim().to_string(), raw.trim()),
        };
        let address: IpAddr = addr.parse().map_err(|_| {
            format!("--probe.peer '{raw}': '{addr}' is not an IP address; use [NAME=]IP, e.g. dst=10.0.0.2")
        })?;
        if name.is_empty() {
            return Err(format!("--probe.peer '{raw}': empty name"));
        }
        peers.push(PeerSpec {
            name,
            address,
            probes: flag_probes.clone(),
        });
    }
    for p in &pc.peers {
        let address: IpAddr = p
            .address
            .parse()
            .map_err(|_| format!("probe.peers: '{}' is not an IP address", p.address))?;
        let probes = p
            .probes
            .iter()
            .map(|e| ProbeSpec {
                kind: match e.kind {
                    ProbeType::Icmp => ProbeKind::Icmp,
                    ProbeType::Tcp => ProbeKind::Tcp {
                        port: e.port.unwrap_or(0),
                    },
                },
                interval: e.interval.unwrap_or(interval),
                timeout: e.timeout.unwrap_or(timeout),
            })
            .collect();
        peers.push(PeerSpec {
            name: p.name.clone(),
            address,
            probes,
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &peers {
        if !seen.insert(p.name.as_str()) {
            return Err(format!(
                "peer name '{}' is given twice (--probe.peer and probe.peers together)",
                p.name
            ));
        }
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
    })
}
