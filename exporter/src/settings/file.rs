//! The optional YAML config file. Strict: unknown keys are errors, so a typo never silently
//! falls back to a default.
//!
//! ```yaml
//! libvirt:
//!   uri: qemu:///system
//!   reconnect_max_backoff: 30s
//! sample:
//!   interval: 1s
//!   idle_interval: 15s
//!   completion_grace: 5s
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
//!
//! Parsing checks everything serde cannot (the error names the key) and turns addresses and
//! probe kinds into their types once; [`super`] only fills in defaults.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::peers::probe::{KindError, ProbeKind};

/// The file's settings, checked and typed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub libvirt: LibvirtConfig,
    pub sample: SampleConfig,
    pub probe: ProbeConfig,
    /// Guest services to probe (`app:`).
    pub app: crate::app::targets::AppSettings,
}

/// The file as written (strict: unknown keys are errors).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    libvirt: LibvirtConfig,
    #[serde(default)]
    sample: SampleConfig,
    #[serde(default)]
    probe: RawProbe,
    app: Option<crate::app::targets::AppFile>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LibvirtConfig {
    pub uri: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub reconnect_max_backoff: Option<Duration>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub completion_grace: Option<Duration>,
}

/// The `probe:` section, typed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeConfig {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub max_concurrency: Option<usize>,
    pub discovery: Option<bool>,
    pub discovery_tcp_port: Option<u16>,
    pub peers: Vec<PeerConfig>,
}

/// One `probe.peers[]` entry; durations left out take the `probe:` (or flag) defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerConfig {
    pub name: String,
    pub address: IpAddr,
    pub probes: Vec<ProbeEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeEntry {
    pub kind: ProbeKind,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    max_concurrency: Option<usize>,
    discovery: Option<bool>,
    discovery_tcp_port: Option<u16>,
    #[serde(default)]
    peers: Vec<RawPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    address: String,
    probes: Vec<RawProbeEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbeEntry {
    #[serde(rename = "type")]
    kind: String,
    port: Option<u16>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

impl RawProbe {
    /// Check what serde cannot and type it; the error names the key.
    fn typed(self) -> Result<ProbeConfig, String> {
        positive("probe.interval", self.interval)?;
        positive("probe.timeout", self.timeout)?;
        if self.max_concurrency == Some(0) {
            return Err("probe.max_concurrency must be at least 1".into());
        }
        if self.discovery_tcp_port == Some(0) {
            return Err("probe.discovery_tcp_port must be a port (1-65535)".into());
        }
        let mut peers = Vec::new();
        for (i, peer) in self.peers.into_iter().enumerate() {
            let at = format!("probe.peers[{i}]");
            if peer.name.trim().is_empty() {
                return Err(format!("{at}.name is empty"));
            }
            let address = peer.address.parse::<IpAddr>().map_err(|_| {
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
            let mut probes = Vec::new();
            for (j, pr) in peer.probes.into_iter().enumerate() {
                let at = format!("{at}.probes[{j}]");
                let kind = ProbeKind::from_name(&pr.kind, pr.port).map_err(|e| match e {
                    KindError::Unknown(k) => format!(
                        "{at}.type '{k}' is not a probe type ({})",
                        ProbeKind::NAMES.join(", ")
                    ),
                    KindError::PortRequired => {
                        format!("{at}.port is required for a tcp probe (1-65535)")
                    }
                    KindError::PortNotUsed => format!("{at}.port is only for tcp probes"),
                })?;
                positive(&format!("{at}.interval"), pr.interval)?;
                positive(&format!("{at}.timeout"), pr.timeout)?;
                probes.push(ProbeEntry {
                    kind,
                    interval: pr.interval,
                    timeout: pr.timeout,
                });
            }
            peers.push(PeerConfig {
                name: peer.name,
                address,
                probes,
            });
        }
        Ok(ProbeConfig {
            interval: self.interval,
            timeout: self.timeout,
            max_concurrency: self.max_concurrency,
            discovery: self.discovery,
            discovery_tcp_port: self.discovery_tcp_port,
            peers,
        })
    }
}

/// A duration key, when given, must be longer than zero; the error names the key.
fn positive(key: &str, d: Option<Duration>) -> Result<(), String> {
    if d.is_some_and(|d| d.is_zero()) {
        Err(format!("{key} must be longer than zero"))
    } else {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot read it: {source} (check --config.file)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message} (fix the file; keys are listed in --help under --config.file)")]
    Invalid { path: String, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parse YAML text; the error is one line.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let raw: RawConfig =
            serde_saphyr::from_str(text).map_err(|e| one_line(&e.to_string(), text))?;
        let cfg = Config {
            libvirt: raw.libvirt,
            sample: raw.sample,
            probe: raw.probe.typed()?,
            app: match raw.app {
                Some(a) => a.settings()?,
                None => Default::default(),
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let durations = [
            (
                "libvirt.reconnect_max_backoff",
                self.libvirt.reconnect_max_backoff,
            ),
            ("sample.interval", self.sample.interval),
            ("sample.idle_interval", self.sample.idle_interval),
            ("sample.completion_grace", self.sample.completion_grace),
        ];
        for (key, d) in durations {
            positive(key, d)?;
        }
        if self
            .libvirt
            .uri
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            return Err("libvirt.uri is empty".into());
        }
        Ok(())
    }
}

/// The first line of a YAML parser error (position and problem), without its `error: `.
pub fn first_line(err: &str) -> String {
    let first = err
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid YAML");
    first.trim().trim_start_matches("error: ").to_string()
}

/// The parser's first line names the position and the problem (the rest is a source snippet);
/// when it points at a `key: value` line, name the key too.
fn one_line(err: &str, text: &str) -> String {
    let first = first_line(err);
    let first = first.as_str();
    let key = first
        .strip_prefix("line ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| text.lines().nth(n.checked_sub(1)?))
        .and_then(|l| l.split_once(':'))
        .map(|(k, _)| k.trim().trim_start_matches("- "))
        .filter(|k| !k.is_empty() && !first.contains(&format!("`{k}`")));
    match key {
        Some(k) => format!("{first} (key `{k}`)"),
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            "libvirt:\n  uri: qemu:///system?socket=/tmp/s\n  reconnect_max_backoff: 10s\nsample:\n  interval: 500ms\n  idle_interval: 5s\n",
        )
        .expect("valid config");
        assert_eq!(
            c.libvirt.uri.as_deref(),
            Some("qemu:///system?socket=/tmp/s")
        );
        assert_eq!(c.sample.interval, Some(Duration::from_millis(500)));
        assert_eq!(
            c.libvirt.reconnect_max_backoff,
            Some(Duration::from_secs(10))
        );
        assert_eq!(c.sample.completion_grace, None);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = Config::parse("sample:\n  intervall: 1s\n").expect_err("typo must fail");
        assert!(e.contains("intervall"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn bad_duration_and_zero_are_errors() {
        assert!(Config::parse("sample:\n  interval: soon\n").is_err());
        let e = Config::parse("sample:\n  interval: 0s\n").expect_err("zero must fail");
        assert!(e.contains("sample.interval"), "{e}");
    }

    #[test]
    fn probe_peers_parse_and_bad_ones_name_the_key() {
        let c = Config::parse(
            "probe:\n  interval: 200ms\n  peers:\n    - name: dst\n      address: 10.77.0.2\n      probes:\n        - type: icmp\n        - type: tcp\n          port: 16509\n",
        )
        .expect("valid probe config");
        assert_eq!(c.probe.peers.len(), 1);
        assert_eq!(
            c.probe.peers[0].probes[1].kind,
            ProbeKind::Tcp { port: 16509 }
        );
        for (text, want) in [
            ("probe:\n  peers:\n    - name: a\n      address: nowhere\n      probes: [{type: icmp}]\n", "probe.peers[0].address 'nowhere' is not an IP address"),
            ("probe:\n  peers:\n    - name: a\n      address: 10.0.0.1\n      probes: [{type: tcp}]\n", "probe.peers[0].probes[0].port is required"),
            ("probe:\n  peers:\n    - name: a\n      address: 10.0.0.1\n      probes: [{type: icmp, port: 7}]\n", "probe.peers[0].probes[0].port is only for tcp"),
            ("probe:\n  peers:\n    - name: a\n      address: 10.0.0.1\n      probes: []\n", "probe.peers[0].probes is empty"),
            ("probe:\n  max_concurrency: 0\n", "probe.max_concurrency must be at least 1"),
            ("probe:\n  timeout: 0s\n", "probe.timeout must be longer than zero"),
        ] {
            let e = Config::parse(text).expect_err(want);
            assert!(e.contains(want), "{e} does not contain {want}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = Config::parse("probe:\n  peers:\n    - name: a\n      address: 10.0.0.1\n      probes: [{type: udp}]\n")
            .expect_err("unknown probe type");
        assert!(e.contains("udp") && e.contains("probes[0].type"), "{e}");
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(
            Config::parse("\n").expect("empty is fine"),
            Config::default()
        );
    }
}
