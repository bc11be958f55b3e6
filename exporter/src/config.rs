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
//! probe:            # peer probes: see crate::net::probe::config
//!   peers:
//!     - name: dst
//!       address: 10.77.0.2
//!       probes: [{type: icmp}, {type: tcp, port: 16509}]
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub libvirt: LibvirtConfig,
    #[serde(default)]
    pub sample: SampleConfig,
    #[serde(default)]
    pub probe: crate::net::probe::config::ProbeConfig,
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

/// A duration key, when given, must be longer than zero; the error names the key.
pub(crate) fn positive(key: &str, d: Option<Duration>) -> Result<(), String> {
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
        let cfg: Config =
            serde_saphyr::from_str(text).map_err(|e| one_line(&e.to_string(), text))?;
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
        crate::net::probe::config::validate(&self.probe)
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
        assert_eq!(c.probe.peers[0].probes[1].port, Some(16509));
        for (text, want) in [
            ("probe:\n  peers:\n    - name: a\n      address: nowhere\n      probes: [{type: icmp}]\n", "probe.peers[0].address 'nowhere' is not an IP address"),
            ("probe:\n  peers:\n    - name: a\n      address: 10.0.0.1\n      probes: [{type: tcp}]\n", "probe.peers[0].probes[0].port is required"),
            ("probe:\n  peers:\n    - name: a\n      address: 10.0.0.1\n      probes: [{type: icmp, port: 7}]\n", "probe.peers[0].probes[0].port is only for tcp"),
            ("probe:\n  peers:\n    - name: a\n      address: 10.0.0.1\n      probes: []\n", "probe.peers[0].probes is empty"),
            ("probe:\n  peers:\n    - {name: a, address: 10.0.0.1, probes: [{type: icmp}]}\n    - {name: a, address: 10.0.0.2, probes: [{type: icmp}]}\n", "probe.peers[1].name 'a' is used twice"),
            ("probe:\n  max_concurrency: 0\n", "probe.max_concurrency must be at least 1"),
            ("probe:\n  timeout: 0s\n", "probe.timeout must be longer than zero"),
        ] {
            let e = Config::parse(text).expect_err(want);
            assert!(e.contains(want), "{e} does not contain {want}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = Config::parse("probe:\n  peers:\n    - name: a\n      address: 10.0.0.1\n      probes: [{type: udp}]\n")
            .expect_err("unknown probe type");
        assert!(e.contains("udp"), "{e}");
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(
            Config::parse("\n").expect("empty is fine"),
            Config::default()
        );
    }
}
