//! NIC counters and link state from `/proc/net/dev` and `/sys/class/net/<dev>/{speed,operstate}`
//! (under `--path.procfs` and `--path.sysfs`, so the exporter works in a container and tests run
//! on fixture trees), in node_exporter's netdev collector's footsteps.

pub mod routes;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tracing::warn;

use crate::clock::unix_now;
use crate::collector::{Collect, CollectError, Name, Registration, Rounds};
use crate::exposition::GaugeFamily;

pub use crate::record::NetworkSummary;

/// Counters of one device, as `/proc/net/dev` has them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    pub name: String,
    pub counters: Counters,
    /// Link speed in bytes/s; `None` when the driver does not know (virtual devices).
    pub speed_bytes: Option<u64>,
    pub up: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NetdevError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} line {line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
}

/// Parse `/proc/net/dev`. Device names may contain `:` (the counters follow the last one).
pub fn parse_proc_net_dev(text: &str, path: &str) -> Result<Vec<(String, Counters)>, NetdevError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(2) {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: &str| NetdevError::Parse {
            path: path.to_string(),
            line: i + 1,
            message: message.to_string(),
        };
        let (name, rest) = line
            .rsplit_once(':')
            .ok_or_else(|| err("no ':' after the device name"))?;
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| err("a counter is not a number"))?;
        if v.len() < 16 {
            return Err(err("fewer than 16 counters"));
        }
        out.push((
            name.trim().to_string(),
            Counters {
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_drops: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_drops: v[11],
            },
        ));
    }
    Ok(out)
}

/// Name prefixes of devices that belong to one guest each: libvirt's `vnet*` and `macvtap*`,
/// Nova's `tap*`, and the per-port `qvb*`/`qvo*`/`qbr*` of OpenStack's hybrid plugging.
/// node_exporter already reports them, and a migration crosses the host's own NICs, not these;
/// they come and go with the guests and would multiply the series by the number of guests.
pub const GUEST_DEVICE_PREFIXES: [&str; 6] = ["tap", "vnet", "macvtap", "qvb", "qvo", "qbr"];

/// Whether `name` is a guest's device ([`GUEST_DEVICE_PREFIXES`]).
pub fn is_guest_device(name: &str) -> bool {
    GUEST_DEVICE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Reads devices from a procfs and sysfs root.
#[derive(Clone, Debug)]
pub struct Netdev {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub include: Option<regex::Regex>,
    pub exclude: Option<regex::Regex>,
    /// Also report the guests' own devices ([`GUEST_DEVICE_PREFIXES`]); off by default.
    pub guest_devices: bool,
}

impl Netdev {
    pub fn read(&self) -> Result<Vec<Device>, NetdevError> {
        let path = self.procfs.join("net/dev");
        let text = std::fs::read_to_string(&path).map_err(|e| NetdevError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut out = Vec::new();
        for (name, counters) in parse_proc_net_dev(&text, &path.display().to_string())? {
            if (!self.guest_devices && is_guest_device(&name))
                || self.include.as_ref().is_some_and(|r| !r.is_match(&name))
                || self.exclude.as_ref().is_some_and(|r| r.is_match(&name))
            {
                continue;
            }
            // A device can vanish between the two reads: then it has no speed and is not up.
            let class = self.sysfs.join("class/net").join(&name);
            let speed_bytes = read_trimmed(&class.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|mbit| *mbit > 0)
                .map(|mbit| mbit as u64 * 125_000);
            let up = read_trimmed(&class.join("operstate")).as_deref() == Some("up");
            out.push(Device {
                name,
                counters,
                speed_bytes,
                up,
            });
        }
        Ok(out)
    }
}

/// `speed` of a virtual device fails to read with EINVAL: that is "unknown", not an error.
fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The `netdev` collector; it publishes its transmit history (records and the forecast read it).
pub const REGISTRATION: Registration = Registration {
    name: Name::Netdev,
    start: |deps, runner| {
        let c = NetdevCollector::new(deps.settings.netdev.clone());
        deps.put(c.history());
        runner.add_rounds(c)
    },
};

/// How often NIC counters are read.
const PERIOD: Duration = Duration::from_secs(1);

/// The `netdev` collector: reads the devices every second into the latest reading (encoded at
/// scrape time) and the transmit history (for migration records).
pub struct NetdevCollector {
    netdev: Netdev,
    latest: Arc<Mutex<Vec<Device>>>,
    history: Arc<Mutex<TxHistory>>,
    /// A failure is logged once until reading works again.
    warned: bool,
}

impl NetdevCollector {
    pub fn new(netdev: Netdev) -> Self {
        NetdevCollector {
            netdev,
            latest: Arc::default(),
            history: Arc::default(),
            warned: false,
        }
    }

    /// The transmit history this collector fills.
    pub fn history(&self) -> Arc<Mutex<TxHistory>> {
        self.history.clone()
    }
}

impl Collect for NetdevCollector {
    fn name(&self) -> Name {
        Name::Netdev
    }

    fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(NetdevFamilies {
            latest: self.latest.clone(),
        }));
    }
}

impl Rounds for NetdevCollector {
    fn round(&mut self) -> Result<(), CollectError> {
        match self.netdev.read() {
            Ok(devices) => {
                self.history.lock().push(unix_now(), &devices);
                *self.latest.lock() = devices;
                self.warned = false;
                Ok(())
            }
            Err(e) => {
                // No stale counters: the families are absent until a read works again.
                self.latest.lock().clear();
                if !self.warned {
                    warn!(error = %e, "cannot read NIC counters (check --path.procfs)");
                    self.warned = true;
                }
                Err(CollectError::new(e))
            }
        }
    }

    fn period(&self) -> Duration {
        PERIOD
    }
}

/// Encodes the `vm_migration_network_*` families from the latest reading.
#[derive(Debug)]
struct NetdevFamilies {
    latest: Arc<Mutex<Vec<Device>>>,
}

impl Collector for NetdevFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_netdev(&self.latest.lock(), &mut encoder)
    }
}

type DevCounter = fn(&Counters) -> u64;

/// NIC counters (names without `_total`: the encoder adds it for counters).
const NETDEV_COUNTERS: &[(&str, &str, DevCounter)] = &[
    (
        "vm_migration_network_receive_bytes",
        "Bytes received by the device (/proc/net/dev).",
        |c| c.rx_bytes,
    ),
    (
        "vm_migration_network_transmit_bytes",
        "Bytes transmitted by the device (/proc/net/dev).",
        |c| c.tx_bytes,
    ),
    (
        "vm_migration_network_receive_packets",
        "Packets received by the device.",
        |c| c.rx_packets,
    ),
    (
        "vm_migration_network_transmit_packets",
        "Packets transmitted by the device.",
        |c| c.tx_packets,
    ),
    (
        "vm_migration_network_receive_drops",
        "Received packets the device dropped.",
        |c| c.rx_drops,
    ),
    (
        "vm_migration_network_transmit_drops",
        "Packets to send that the device dropped.",
        |c| c.tx_drops,
    ),
    (
        "vm_migration_network_receive_errors",
        "Receive errors of the device.",
        |c| c.rx_errors,
    ),
    (
        "vm_migration_network_transmit_errors",
        "Transmit errors of the device.",
        |c| c.tx_errors,
    ),
];

fn encode_netdev(
    devices: &[Device],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    if devices.is_empty() {
        return Ok(());
    }
    for (name, help, get) in NETDEV_COUNTERS {
        let mut me = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for d in devices {
            let labels = [("device", d.name.as_str())];
            ConstCounter::new(get(&d.counters)).encode(me.encode_family(&labels)?)?;
        }
    }
    let mut speed = GaugeFamily::new(
        "vm_migration_network_speed_bytes_per_second",
        "Link speed of the device in bytes per second; absent when the driver does not know it.",
    );
    let mut up = GaugeFamily::new(
        "vm_migration_network_up",
        "1 when the device's operational state is up.",
    );
    for d in devices {
        let l = vec![("device", d.name.clone())];
        speed.push(l.clone(), d.speed_bytes.map(|s| s as f64));
        up.push(l, Some(if d.up { 1.0 } else { 0.0 }));
    }
    speed.encode(encoder)?;
    up.encode(encoder)
}

/// Seconds of transmit history kept per device (for migration records).
const HISTORY: usize = 3600;
/// Most devices with a history at once (tap devices come and go with their guests); past it
/// the devices read longest ago are dropped first.
pub const MAX_DEVICES: usize = 4096;

/// Transmit byte counters over time, per device, to summarise the network under a migration.
#[derive(Debug, Default)]
pub struct TxHistory {
    by_device: BTreeMap<String, VecDeque<(f64, u64)>>,
    speed: BTreeMap<String, Option<u64>>,
}

impl TxHistory {
    pub fn push(&mut self, t: f64, devices: &[Device]) {
        for d in devices {
            let h = self.by_device.entry(d.name.clone()).or_default();
            h.push_back((t, d.counters.tx_bytes));
            while h.len() > HISTORY {
                h.pop_front();
            }
            self.speed.insert(d.name.clone(), d.speed_bytes);
        }
        // Devices gone for a whole history window are forgotten (a wall clock stepped back
        // makes `t - last` negative: those are kept, and the cap still holds).
        self.by_device
            .retain(|_, h| h.back().is_some_and(|(last, _)| t - last < HISTORY as f64));
        if self.by_device.len() > MAX_DEVICES {
            let mut by_last: Vec<(f64, String)> = self
                .by_device
                .iter()
                .map(|(n, h)| (h.back().map_or(f64::MIN, |(l, _)| *l), n.clone()))
                .collect();
            by_last.sort_by(|a, b| a.0.total_cmp(&b.0));
            let excess = self.by_device.len() - MAX_DEVICES;
            for (_, n) in by_last.into_iter().take(excess) {
                self.by_device.remove(&n);
            }
        }
        let kept = &self.by_device;
        self.speed.retain(|n, _| kept.contains_key(n));
    }

    /// Devices with a history (bounded by [`MAX_DEVICES`]).
    pub fn devices(&self) -> usize {
        self.by_device.len().max(self.speed.len())
    }

    /// The mean transmit rate of `device` over the last `window` seconds before `now`, and its
    /// link speed (bytes/s), for forecasts.
    pub fn recent(&self, device: &str, now: f64, window: f64) -> (Option<f64>, Option<f64>) {
        let speed = self.speed.get(device).copied().flatten().map(|s| s as f64);
        let rate = self.by_device.get(device).and_then(|h| {
            self.device_summary(device, h, now - window, now)
                .map(|(_, s)| s.mean_tx_bytes_per_second)
        });
        (rate, speed)
    }

    /// The device that sent the most between `from` and `to`, with its peak and mean rate.
    pub fn summary(&self, from: f64, to: f64) -> Option<NetworkSummary> {
        self.summary_via(from, to, None)
    }

    /// Like [`Self::summary`], but the device `via` (the route to the migration's peer) when it
    /// has readings in the window, even if another device sent more.
    pub fn summary_via(&self, from: f64, to: f64, via: Option<&str>) -> Option<NetworkSummary> {
        let mut best: Option<(u64, NetworkSummary)> = None;
        for (name, h) in &self.by_device {
            let preferred = via == Some(name.as_str());
            if name == "lo" && !preferred {
                continue;
            }
            let Some((bytes, summary)) = self.device_summary(name, h, from, to) else {
                continue;
            };
            if preferred {
                return Some(summary);
            }
            if best.as_ref().is_none_or(|(b, _)| bytes > *b) && bytes > 0 {
                best = Some((bytes, summary));
            }
        }
        best.map(|(_, s)| s)
    }

    fn device_summary(
        &self,
        name: &str,
        h: &VecDeque<(f64, u64)>,
        from: f64,
        to: f64,
    ) -> Option<(u64, NetworkSummary)> {
        let window: Vec<&(f64, u64)> = h
            .iter()
            .filter(|(t, _)| *t >= from - 1.0 && *t <= to + 1.0)
            .collect();
        let (first, last) = (window.first()?, window.last()?);
        if last.0 <= first.0 {
            return None;
        }
        let bytes = last.1.saturating_sub(first.1);
        let peak = window
            .windows(2)
            .filter(|w| w[1].0 > w[0].0)
            .map(|w| w[1].1.saturating_sub(w[0].1) as f64 / (w[1].0 - w[0].0))
            .fold(0.0, f64::max);
        let mean = bytes as f64 / (last.0 - first.0);
        let speed = self.speed.get(name).copied().flatten().map(|s| s as f64);
        Some((
            bytes,
            NetworkSummary {
                device: name.to_string(),
                peak_tx_bytes_per_second: peak,
                mean_tx_bytes_per_second: mean,
                link_speed_bytes_per_second: speed,
                mean_link_share: speed.map(|s| mean / s),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0: 123456789 1000  1    2    0     0          0         5 987654321   2000    3    4    0     0       0          0
weird:name: 5 6 7 8 0 0 0 0 9 10 11 12 0 0 0 0
";

    #[test]
    fn parses_counters_and_odd_names() {
        let devs = parse_proc_net_dev(DEV, "fixture").expect("parses");
        assert_eq!(devs.len(), 3);
        assert_eq!(devs[1].0, "eth0");
        assert_eq!(
            devs[1].1,
            Counters {
                rx_bytes: 123456789,
                rx_packets: 1000,
                rx_errors: 1,
                rx_drops: 2,
                tx_bytes: 987654321,
                tx_packets: 2000,
                tx_errors: 3,
                tx_drops: 4,
            }
        );
        assert_eq!(devs[2].0, "weird:name");
        assert_eq!(devs[2].1.tx_drops, 12);
    }

    #[test]
    fn damaged_lines_are_errors_naming_the_line() {
        let bad = "h1\nh2\n  eth0: 1 2 3\n";
        let e = parse_proc_net_dev(bad, "/proc/net/dev").expect_err("short line");
        assert_eq!(
            e.to_string(),
            "/proc/net/dev line 3: fewer than 16 counters"
        );
        assert!(parse_proc_net_dev("h1\nh2\n eth0 1 2\n", "x").is_err());
    }

    #[test]
    fn sysfs_speed_unknown_or_missing_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("net")).expect("mkdir");
        std::fs::write(dir.path().join("net/dev"), DEV).expect("write");
        for (dev, speed, state) in [("eth0", "10000", "up"), ("lo", "", "unknown")] {
            let c = dir.path().join("class/net").join(dev);
            std::fs::create_dir_all(&c).expect("mkdir");
            if !speed.is_empty() {
                std::fs::write(c.join("speed"), format!("{speed}\n")).expect("write");
            }
            std::fs::write(c.join("operstate"), format!("{state}\n")).expect("write");
        }
        // "weird:name" has no sysfs entry: it vanished between the reads.
        let n = Netdev {
            procfs: dir.path().to_path_buf(),
            sysfs: dir.path().to_path_buf(),
            include: None,
            exclude: Some(regex::Regex::new("^lo$").expect("regex")),
            guest_devices: false,
        };
        let devs = n.read().expect("reads");
        assert_eq!(
            devs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["eth0", "weird:name"]
        );
        assert_eq!(devs[0].speed_bytes, Some(1_250_000_000));
        assert!(devs[0].up);
        assert_eq!(devs[1].speed_bytes, None);
        assert!(!devs[1].up);
    }

    #[test]
    fn guest_devices_are_left_out_unless_asked_for() {
        let dev = "h1\nh2\n    eth0: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n   vnet3: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n\
                   tap5d1e-4b: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n macvtap0: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n\
                   qvb5d1e-4b: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  vmlabs0: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n";
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("net")).expect("mkdir");
        std::fs::write(dir.path().join("net/dev"), dev).expect("write");
        let names = |guest_devices: bool, exclude: Option<&str>| {
            let n = Netdev {
                procfs: dir.path().to_path_buf(),
                sysfs: dir.path().to_path_buf(),
                include: None,
                exclude: exclude.map(|e| regex::Regex::new(e).expect("regex")),
                guest_devices,
            };
            n.read()
                .expect("reads")
                .into_iter()
                .map(|d| d.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(false, None), ["eth0", "vmlabs0"]);
        assert_eq!(
            names(true, None),
            [
                "eth0",
                "vnet3",
                "tap5d1e-4b",
                "macvtap0",
                "qvb5d1e-4b",
                "vmlabs0"
            ]
        );
        // The exclude expression still applies to the guests' devices when they are included.
        assert_eq!(
            names(true, Some("^tap")),
            ["eth0", "vnet3", "macvtap0", "qvb5d1e-4b", "vmlabs0"]
        );
    }

    /// node_exporter's rule: after a failed read no stale counters are scraped beside
    /// `collector_success{collector="netdev"} 0`.
    #[test]
    fn a_failed_read_withholds_the_device_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("net")).expect("mkdir");
        std::fs::write(dir.path().join("net/dev"), DEV).expect("write");
        let mut c = NetdevCollector::new(Netdev {
            procfs: dir.path().to_path_buf(),
            sysfs: dir.path().to_path_buf(),
            include: None,
            exclude: None,
            guest_devices: false,
        });
        let mut registry = Registry::default();
        c.register(&mut registry);
        c.round().expect("reads");
        let text = crate::jobs::replay::text(&registry);
        assert!(
            text.contains("vm_migration_network_transmit_bytes_total{device=\"eth0\"} 987654321"),
            "{text}"
        );
        std::fs::remove_file(dir.path().join("net/dev")).expect("rm");
        assert!(c.round().is_err());
        let text = crate::jobs::replay::text(&registry);
        assert!(!text.contains("vm_migration_network_"), "{text}");
        std::fs::write(dir.path().join("net/dev"), DEV).expect("write");
        c.round().expect("reads again");
        assert!(crate::jobs::replay::text(&registry).contains("device=\"eth0\""));
    }

    /// Tap devices come and go with their guests: the link-speed map and the histories must
    /// not keep every name ever seen.
    #[test]
    fn ten_thousand_tap_devices_coming_and_going_leave_bounded_state() {
        let mut h = TxHistory::default();
        let dev = |name: String| Device {
            name,
            counters: Counters::default(),
            speed_bytes: Some(1_250_000_000),
            up: true,
        };
        // Ten new guests every 10 s, each tap device read once.
        for i in 0..1_000u32 {
            let devices: Vec<Device> = (0..10)
                .map(|k| dev(format!("tap{}", i * 10 + k)))
                .chain([dev("eth0".into())])
                .collect();
            h.push(f64::from(i) * 10.0, &devices);
            assert!(h.devices() <= MAX_DEVICES);
        }
        assert!(h.devices() <= HISTORY + 11, "{}", h.devices());
        // An hour on, only the devices still there are remembered.
        h.push(20_000.0, &[dev("eth0".into())]);
        assert_eq!(h.devices(), 1);
        // A burst of more devices at once than the cap (a clock stepped back keeps them all).
        let many: Vec<Device> = (0..MAX_DEVICES + 100)
            .map(|k| dev(format!("vnet{k}")))
            .collect();
        h.push(20_001.0, &many);
        assert_eq!(h.devices(), MAX_DEVICES);
    }

    #[test]
    fn summary_picks_the_busiest_device_with_peak_and_mean() {
        let mut h = TxHistory::default();
        let dev = |name: &str, tx: u64| Device {
            name: name.into(),
            counters: Counters {
                tx_bytes: tx,
                ..Counters::default()
            },
            speed_bytes: Some(1_000_000),
            up: true,
        };
        for (t, a, b) in [
            (0.0, 0, 0),
            (1.0, 100_000, 10),
            (2.0, 500_000, 20),
            (3.0, 600_000, 30),
        ] {
            h.push(t, &[dev("eth0", a), dev("eth1", b)]);
        }
        let s = h.summary(0.0, 3.0).expect("summary");
        assert_eq!(s.device, "eth0");
        assert_eq!(s.peak_tx_bytes_per_second, 400_000.0);
        assert_eq!(s.mean_tx_bytes_per_second, 200_000.0);
        assert_eq!(s.mean_link_share, Some(0.2));
        assert_eq!(h.summary(10.0, 20.0), None);
        // The route to the peer names eth1: its figures, although eth0 sent more.
        let via = h.summary_via(0.0, 3.0, Some("eth1")).expect("summary");
        assert_eq!(via.device, "eth1");
        assert_eq!(via.mean_tx_bytes_per_second, 10.0);
        // A preferred device without readings falls back to the busiest.
        let gone = h.summary_via(0.0, 3.0, Some("eth9")).expect("summary");
        assert_eq!(gone.device, "eth0");
    }
}
