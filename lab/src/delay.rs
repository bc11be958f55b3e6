//! A packet-level delay link: netem does not exist here, and a TCP proxy would hide the RTT from
//! the migration's TCP (its window would only see the short hop to the proxy). Two L3 TUN devices
//! carry the path instead — `vmlabt0` in the root namespace (10.78.0.1) and `vmlabt1` moved into
//! the destination's namespace (10.78.0.2) — and two threads of this process relay every packet
//! between them after holding it for half the round-trip time, so TCP on the migration stream
//! sees the real RTT. `ping 10.78.0.2` measures it.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::ip;
use crate::LabError;

pub const SOURCE_ADDR: &str = "10.78.0.1";
pub const DEST_ADDR: &str = "10.78.0.2";
pub const SOURCE_DEV: &str = "vmlabt0";
const DEST_DEV: &str = "vmlabt1";
/// Large packets keep the relay's packet rate low (TUN has no segmentation offload).
const MTU: u16 = 9000;

/// The delayed path; its delay can change between migrations.
pub struct DelayLink {
    one_way_us: Arc<AtomicU64>,
}

fn tun_device(name: &str) -> Result<tun::Device, LabError> {
    let mut cfg = tun::Configuration::default();
    cfg.tun_name(name).layer(tun::Layer::L3).mtu(MTU);
    // Addresses are set with `ip` once the far end is in its namespace.
    cfg.platform_config(|p| {
        p.ensure_root_privileges(false);
    });
    tun::create(&cfg).map_err(|e| {
        LabError::Network(format!(
            "TUN device {name}: {e} (needs /dev/net/tun and root)"
        ))
    })
}

/// Relay packets from `from` to `to`, each held until `delay` after it arrived. Ends when a
/// device goes away (the lab deletes them on tear-down).
fn relay(from: Arc<tun::Device>, to: Arc<tun::Device>, delay: Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; usize::from(MTU) + 64];
        while let Ok(n) = from.recv(&mut buf) {
            let release = Instant::now() + Duration::from_micros(delay.load(Ordering::Relaxed));
            if tx.send((release, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((release, pkt)) = rx.recv() {
            let wait = release.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            if to.send(&pkt).is_err() {
                break;
            }
        }
    });
}

impl DelayLink {
    /// Create the TUN pair (the far end inside `netns`) and start relaying with no delay.
    pub fn create(netns: &str) -> Result<DelayLink, LabError> {
        remove();
        let src = Arc::new(tun_device(SOURCE_DEV)?);
        let dst = Arc::new(tun_device(DEST_DEV)?);
        ip(&["link", "set", DEST_DEV, "netns", netns])?;
        ip(&[
            "addr",
            "add",
            SOURCE_ADDR,
            "peer",
            DEST_ADDR,
            "dev",
            SOURCE_DEV,
        ])?;
        ip(&["link", "set", SOURCE_DEV, "mtu", &MTU.to_string(), "up"])?;
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            DEST_ADDR,
            "peer",
            SOURCE_ADDR,
            "dev",
            DEST_DEV,
        ])?;
        ip(&[
            "-n",
            netns,
            "link",
            "set",
            DEST_DEV,
            "mtu",
            &MTU.to_string(),
            "up",
        ])?;
        let one_way_us = Arc::new(AtomicU64::new(0));
        relay(src.clone(), dst.clone(), one_way_us.clone());
        relay(dst, src, one_way_us.clone());
        Ok(DelayLink { one_way_us })
    }

    /// Set the added round-trip time (half of it each way).
    pub fn set_rtt(&self, rtt: Duration) {
        self.one_way_us
            .store((rtt.as_micros() / 2) as u64, Ordering::Relaxed);
    }
}

/// The RTT `ping` measures to the far end now (average of 5 echoes), in milliseconds.
pub fn ping_rtt_ms() -> Option<f64> {
    let out = Command::new("ping")
        .args(["-c", "5", "-i", "0.2", "-q", DEST_ADDR])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "rtt min/avg/max/mdev = 80.1/80.3/80.6/0.2 ms"
    let stats = text
        .lines()
        .find(|l| l.contains("min/avg/max"))?
        .split('=')
        .nth(1)?
        .trim()
        .to_string();
    stats.split('/').nth(1)?.trim().parse().ok()
}

/// Delete the near end (the far end goes with the destination's namespace); this also ends the
/// relay threads, whose reads fail once their device is gone.
pub fn remove() {
    let _ = Command::new("ip")
        .args(["link", "del", SOURCE_DEV])
        .stderr(Stdio::null())
        .status();
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        remove();
    }
}
