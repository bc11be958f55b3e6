//! Which guest services to probe: the `app:` section of the config file, and an XML element in
//! the domain's libvirt metadata (namespace [`METADATA_NS`]) that the operator sets with
//! `virsh metadata`. Both give targets of one domain: a name (the `target` label) and an
//! HTTP(S) URL or a TCP address.
//!
//! ```yaml
//! app:
//!   interval: 1s             # baseline
//!   migration_interval: 20ms # from migration start until a settle period after its end
//!   targets:
//!     - domain: web-1        # libvirt name or UUID
//!       name: http           # the `target` label
//!       http: {url: "http://10.0.0.5:8080/healthz", expect_status: 200}
//!     - domain: db-1
//!       name: pg
//!       tcp: {address: "10.0.0.6:5432"}
//! ```
//!
//! ```text
//! virsh metadata web-1 --uri urn:vm-migration-exporter:app:1 --key app --set \
//!   '<targets><target name="http" http="http://10.0.0.5:8080/healthz" expect_status="200"/>
//!             <target name="pg" tcp="10.0.0.6:5432"/></targets>'
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// The namespace of the project's metadata element.
pub const METADATA_NS: &str = "urn:vm-migration-exporter:app:1";
/// Probe periods below this are refused: one request in flight per target, and a guest's
/// service is not a load test.
pub const MIN_INTERVAL: Duration = Duration::from_millis(5);

/// What one probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Http {
        url: reqwest::Url,
        /// Any 2xx/3xx when absent.
        expect_status: Option<u16>,
    },
    Tcp {
        address: SocketAddr,
    },
}

/// One service of one domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// libvirt name or UUID.
    pub domain: String,
    pub name: String,
    pub check: Check,
}

/// The `app:` section, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppSettings {
    pub interval: Duration,
    pub migration_interval: Duration,
    /// How long the fast rate goes on after a migration ended.
    pub settle: Duration,
    pub timeout: Duration,
    pub targets: Vec<Target>,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            interval: Duration::from_secs(1),
            migration_interval: Duration::from_millis(20),
            settle: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            targets: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppFile {
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    migration_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    settle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default)]
    targets: Vec<TargetFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    domain: String,
    name: String,
    http: Option<HttpFile>,
    tcp: Option<TcpFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    url: String,
    expect_status: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpFile {
    address: String,
}

impl AppFile {
    /// Validates the section; errors name the key (`app.targets[1].http.url: ...`).
    pub fn settings(self) -> Result<AppSettings, String> {
        let d = AppSettings::default();
        let interval = self.interval.unwrap_or(d.interval);
        let migration_interval = self.migration_interval.unwrap_or(d.migration_interval);
        for (key, v) in [
            ("interval", interval),
            ("migration_interval", migration_interval),
        ] {
            if v < MIN_INTERVAL {
                return Err(format!(
                    "app.{key}: {} is below the minimum of {}",
                    humantime::format_duration(v),
                    humantime::format_duration(MIN_INTERVAL)
                ));
            }
        }
        let timeout = self.timeout.unwrap_or(d.timeout);
        if timeout.is_zero() {
            return Err("app.timeout: must be above 0, e.g. 2s".into());
        }
        let mut seen = BTreeSet::new();
        let mut targets = Vec::new();
        for (i, t) in self.targets.into_iter().enumerate() {
            let at = format!("app.targets[{i}]");
            let check = match (t.http, t.tcp) {
                (Some(h), None) => {
                    http_check(&h.url, h.expect_status).map_err(|e| format!("{at}.http.{e}"))?
                }
                (None, Some(c)) => tcp_check(&c.address).map_err(|e| format!("{at}.tcp.{e}"))?,
                _ => return Err(format!("{at}: give exactly one of http or tcp")),
            };
            let target = target(&t.domain, &t.name, check).map_err(|e| format!("{at}.{e}"))?;
            if !seen.insert((target.domain.clone(), target.name.clone())) {
                return Err(format!(
                    "{at}.name: {:?} is used twice for domain {:?}",
                    target.name, target.domain
                ));
            }
            targets.push(target);
        }
        Ok(AppSettings {
            interval,
            migration_interval,
            settle: self.settle.unwrap_or(d.settle),
            timeout,
            targets,
        })
    }
}

fn target(domain: &str, name: &str, check: Check) -> Result<Target, String> {
    if domain.trim().is_empty() {
        return Err("domain: give the libvirt name or UUID".into());
    }
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "name: {name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(Target {
        domain: domain.to_string(),
        name: name.to_string(),
        check,
    })
}

fn http_check(url: &str, expect_status: Option<u16>) -> Result<Check, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("url: {url:?} is not a URL ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!(
            "url: {url:?} must be http:// or https:// with a host"
        ));
    }
    if let Some(s) = expect_status.filter(|s| !(100..=599).contains(s)) {
        return Err(format!(
            "expect_status: {s} is not an HTTP status (100-599)"
        ));
    }
    Ok(Check::Http {
        url: u,
        expect_status,
    })
}

fn tcp_check(address: &str) -> Result<Check, String> {
    address
        .parse()
        .map(|address| Check::Tcp { address })
        .map_err(|_| format!("address: {address:?} must be IP:port, e.g. 10.0.0.6:5432"))
}

/// The targets in a domain's metadata element (as `virDomainGetMetadata` returns it).
pub fn from_metadata(domain: &str, xml: &str) -> Result<Vec<Target>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "targets" {
        return Err(format!(
            "the element is <{}>; expected <targets> with <target> children",
            root.tag_name().name()
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, t) in root.children().filter(|n| n.is_element()).enumerate() {
        let at = format!("target[{i}]");
        if t.tag_name().name() != "target" {
            return Err(format!("{at}: <{}> is not <target>", t.tag_name().name()));
        }
        for a in t.attributes() {
            if !matches!(a.name(), "name" | "http" | "tcp" | "expect_status") {
                return Err(format!("{at}: unknown attribute {:?}", a.name()));
            }
        }
        let name = t.attribute("name").unwrap_or_default();
        let expect = match t.attribute("expect_status") {
            Some(s) => Some(
                s.parse::<u16>()
                    .map_err(|_| format!("{at}.expect_status: {s:?} is not a status"))?,
            ),
            None => None,
        };
        let check = match (t.attribute("http"), t.attribute("tcp")) {
            (Some(u), None) => http_check(u, expect).map_err(|e| format!("{at}.http {e}"))?,
            (None, Some(a)) => tcp_check(a).map_err(|e| format!("{at}.tcp {e}"))?,
            _ => {
                return Err(format!(
                    "{at}: give exactly one of http=\"URL\" or tcp=\"IP:port\""
                ))
            }
        };
        let target = target(domain, name, check).map_err(|e| format!("{at}.{e}"))?;
        if !seen.insert(target.name.clone()) {
            return Err(format!("{at}.name: {name:?} is used twice"));
        }
        out.push(target);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(yaml: &str) -> Result<AppSettings, String> {
        serde_saphyr::from_str::<AppFile>(yaml)
            .map_err(|e| e.to_string())?
            .settings()
    }

    #[test]
    fn the_documented_example_parses() {
        let s = file(
            "interval: 1s
migration_interval: 20ms
targets:
  - domain: web-1
    name: http
    http: {url: \"http://10.0.0.5:8080/healthz\"}
  - domain: db-1
    name: pg
    tcp: {address: \"10.0.0.6:5432\"}
",
        )
        .expect("valid");
        assert_eq!(s.migration_interval, Duration::from_millis(20));
        assert_eq!(s.targets.len(), 2);
        assert_eq!(
            s.targets[1].check,
            Check::Tcp {
                address: "10.0.0.6:5432".parse().expect("addr")
            }
        );
    }

    #[test]
    fn bad_sections_name_the_key() {
        for (yaml, want) in [
            ("targets: [{domain: a, name: x, http: {url: 'ftp://h/'}}]", "app.targets[0].http.url"),
            ("targets: [{domain: a, name: x, http: {url: 'not a url'}}]", "app.targets[0].http.url"),
            ("targets: [{domain: a, name: x, tcp: {address: 'h:1'}}]", "app.targets[0].tcp.address"),
            ("targets: [{domain: a, name: x}]", "exactly one of http or tcp"),
            ("targets: [{domain: a, name: 'a b', tcp: {address: '1.2.3.4:5'}}]", "app.targets[0].name"),
            ("targets: [{domain: a, name: x, tcp: {address: '1.2.3.4:5'}}, {domain: a, name: x, tcp: {address: '1.2.3.4:6'}}]", "used twice"),
            ("migration_interval: 1ms", "app.migration_interval"),
            ("targets: [{domain: a, name: x, http: {url: 'http://h/', expect_status: 99}}]", "expect_status"),
        ] {
            let err = file(yaml).expect_err(yaml);
            assert!(err.contains(want), "{yaml}: {err}");
        }
        assert!(file("intervall: 1s").is_err(), "unknown keys are errors");
    }

    #[test]
    fn metadata_element() {
        let xml = format!(
            r#"<targets xmlns="{METADATA_NS}"><target name="http" http="https://10.0.0.5/healthz" expect_status="204"/><target name="pg" tcp="10.0.0.6:5432"/></targets>"#
        );
        let t = from_metadata("web-1", &xml).expect("valid");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].domain, "web-1");
        assert!(matches!(
            &t[0].check,
            Check::Http {
                expect_status: Some(204),
                ..
            }
        ));
        for (bad, want) in [
            ("<targets><target name='x'/></targets>", "exactly one of"),
            ("<targets><target name='x' tcp='nope'/></targets>", "target[0].tcp"),
            ("<targets><target name='x' tcp='1.2.3.4:5' colour='red'/></targets>", "colour"),
            ("<other/>", "expected <targets>"),
            ("<targets><target", "not XML"),
            ("<targets><target name='x' tcp='1.2.3.4:5'/><target name='x' tcp='1.2.3.4:6'/></targets>", "used twice"),
        ] {
            let err = from_metadata("d", bad).expect_err(bad);
            assert!(err.contains(want), "{bad}: {err}");
        }
    }
}
