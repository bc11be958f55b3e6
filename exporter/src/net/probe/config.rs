//! The `probe:` section of the YAML config file (strict like the rest):
//!
//! ```yaml
//! probe:
//!   interval: 1s          # defaults for every probe
//!   timeout: 1s
//!   max_concurrency: 16
//!   discovery: true       # probe the peer of each running migration (ICMP)
//!   discovery_tcp_port: 16509   # and TCP-connect to this port of it (optional)
//!   peers:
//!     - name: dst
//!       address: 10.77.0.2
//!       probes:
//!         - type: icmp
//!         - type: tcp
//!           port: 16509
//!           interval: 5s
//!           timeout: 500ms
//! ```

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::positive;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub max_concurrency: Option<usize>,
    pub discovery: Option<bool>,
    pub discovery_tcp_port: Option<u16>,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub address: String,
    pub probes: Vec<ProbeEntry>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProbeType {
    Icmp,
    Tcp,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeEntry {
    #[serde(rename = "type")]
    pub kind: ProbeType,
    pub port: Option<u16>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// Check what serde cannot: the error names the key.
pub fn validate(p: &ProbeConfig) -> Result<(), String> {
    positive("probe.interval", p.interval)?;
    positive("probe.timeout", p.timeout)?;
    if p.max_concurrency == Some(0) {
        return Err("probe.max_concurrency must be at least 1".into());
    }
    if p.discovery_tcp_port == Some(0) {
        return Err("probe.discovery_tcp_port must be a port (1-65535)".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, peer) in p.peers.iter().enumerate() {
        let at = format!("probe.peers[{i}]");
        if peer.name.trim().is_empty() {
            return Err(format!("{at}.name is empty"));
        }
        if !names.insert(peer.name.as_str()) {
            return Err(format!("{at}.name '{}' is used twice", peer.name));
        }
        peer.address.parse::<IpAddr>().map_err(|_| {
            format!(
                "{at}.address '{}' is not an IP address (e.g. 10.0.0.2 or fd00::2)",
                peer.address
            )
        })?;
        if peer.probes.is_empty() {
            return Err(format!(
                "{at}.probes is empty (add `- type: icmp` or `- type: tcp`)"
            ));
        }
        for (j, pr) in peer.probes.iter().enumerate() {
            let at = format!("{at}.probes[{j}]");
            match (pr.kind, pr.port) {
                (ProbeType::Tcp, None | Some(0)) => {
                    return Err(format!("{at}.port is required for a tcp probe (1-65535)"))
                }
                (ProbeType::Icmp, Some(_)) => {
                    return Err(format!("{at}.port is only for tcp probes"))
                }
                _ => {}
            }
            positive(&format!("{at}.interval"), pr.interval)?;
            positive(&format!("{at}.timeout"), pr.timeout)?;
        }
    }
    Ok(())
}
