//! The transfer rate a migration would get over its path: pure.
//!
//! `rate = min(link free capacity ÷ concurrency, bandwidth cap, TCP window ÷ RTT)` over the
//! figures that are known; `--forecast.bandwidth` when none is; unknown without that.
//! The cap is the what-if's `bandwidth=` when asked, else the domain's own cap in libvirt
//! (`virDomainMigrateGetMaxSpeed`, what `virsh migrate-setspeed` sets and a migration without
//! `--bandwidth` uses; read on the read-write connection, so only with `--forecast.enable`).
//! The lab showed why the window term matters: a 100 MiB/s cap delivered ~33 MiB/s at 80 ms RTT
//! (a window of ~2.6 MiB). The window is estimated, in this order, from
//! - the host's own past migrations over a long path (RTT ≥ [`WINDOW_BOUND_RTT_S`]): the largest
//!   `mean transfer rate × median RTT` of their records (`measured`);
//! - the kernel's limits (`sysctl`): the send buffer's maximum (`tcp_wmem`) times the share of
//!   it a full-sized segment's payload gets ([`SEND_BUFFER_PAYLOAD_SHARE`]), and no more than
//!   the receive buffer's maximum (`tcp_rmem`) less the `tcp_adv_win_scale` overhead.
//!   Here: wmem 4 MiB × 0.66 = 2.6 MiB, 33 MiB/s at 80 ms, as measured.

use serde::Serialize;

/// Records over paths at least this long say how large the window is (shorter paths are
/// limited by the link or the cap, not the window).
pub const WINDOW_BOUND_RTT_S: f64 = 0.02;
/// Payload share of the send buffer: Linux sizes it at two segments' truesize per segment of
/// congestion window (`tcp_sndbuf_expand`), ≈ 1448 payload bytes per 2.2 KB of accounting at a
/// 1500-byte MTU. Checked against the lab's 80 ms path: 4 MiB × 0.66 / 0.08 s = 33 MiB/s.
pub const SEND_BUFFER_PAYLOAD_SHARE: f64 = 0.66;

/// Where the window estimate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowSource {
    Measured,
    Sysctl,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Window {
    pub bytes: f64,
    pub source: WindowSource,
}

/// The window from `tcp_rmem`, `tcp_wmem` and `tcp_adv_win_scale` (file contents).
pub fn window_from_sysctl(rmem: &str, wmem: &str, adv_win_scale: Option<&str>) -> Option<Window> {
    let max = |t: &str| -> Option<f64> {
        let v: Vec<f64> = t
            .split_whitespace()
            .map(|f| f.parse::<f64>().ok())
            .collect::<Option<_>>()?;
        (v.len() == 3 && v[2] > 0.0).then(|| v[2])
    };
    let send = max(wmem)? * SEND_BUFFER_PAYLOAD_SHARE;
    let scale = adv_win_scale
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(1)
        .clamp(-31, 31);
    let rmem = max(rmem)?;
    // tcp_win_from_space: space − space/2^scale, or space/2^−scale.
    let receive = if scale > 0 {
        rmem - rmem / 2f64.powi(scale)
    } else {
        rmem / 2f64.powi(-scale)
    };
    Some(Window {
        bytes: send.min(receive),
        source: WindowSource::Sysctl,
    })
}

/// The window from past migrations: (mean transfer rate, median RTT) of each record.
pub fn window_from_records(records: impl IntoIterator<Item = (f64, f64)>) -> Option<Window> {
    records
        .into_iter()
        .filter(|(rate, rtt)| *rtt >= WINDOW_BOUND_RTT_S && rate.is_finite() && *rate > 0.0)
        .map(|(rate, rtt)| rate * rtt)
        .fold(None, |m: Option<f64>, w| Some(m.map_or(w, |m| m.max(w))))
        .map(|bytes| Window {
            bytes,
            source: WindowSource::Measured,
        })
}

/// libvirt's "unlimited" default (`QEMU_DOMAIN_MIG_BANDWIDTH_MAX`, 8796093022207 MiB/s) and
/// anything from 2^53 bytes/s up (no longer exact as a float, and no link is that fast) is no
/// cap.
pub const UNLIMITED_BYTES: f64 = 9_007_199_254_740_992.0;

/// A cap libvirt reports in MiB/s as bytes/s; `None` for no cap (0 is QEMU's "unlimited" for
/// the post-copy cap).
pub fn cap_from_libvirt_mibs(mibs: u64) -> Option<f64> {
    let bytes = mibs as f64 * 1048576.0;
    (mibs > 0 && bytes < UNLIMITED_BYTES).then_some(bytes)
}

/// A domain's migration bandwidth caps as libvirt answered them, bytes/s; `None` inside for no
/// cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LibvirtCap {
    pub precopy_bytes: Option<f64>,
    pub postcopy_bytes: Option<f64>,
}

impl LibvirtCap {
    pub fn from_mibs(precopy: u64, postcopy: Option<u64>) -> LibvirtCap {
        LibvirtCap {
            precopy_bytes: cap_from_libvirt_mibs(precopy),
            postcopy_bytes: postcopy.and_then(cap_from_libvirt_mibs),
        }
    }
}

/// What is known about the path.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PathInputs {
    /// Link speed of the device routed to the peer, bytes/s.
    pub link_speed: Option<f64>,
    /// What the device sends now, bytes/s.
    pub link_used: Option<f64>,
    /// The what-if's bandwidth cap (`bandwidth=`), bytes/s: replaces `libvirt_cap`.
    pub cap: Option<f64>,
    /// The domain's pre-copy cap in libvirt, bytes/s.
    pub libvirt_cap: Option<f64>,
    pub rtt_s: Option<f64>,
    pub window: Option<Window>,
    /// `--forecast.bandwidth`: when nothing else is known.
    pub fallback: Option<f64>,
}

/// Which term sets the rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Link,
    /// The what-if's `bandwidth=`.
    Cap,
    /// The domain's cap in libvirt (`virDomainMigrateGetMaxSpeed`).
    LibvirtCap,
    Window,
    Fallback,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PathEstimate {
    /// Bytes/s one migration would send; `None` when nothing is known.
    pub rate: Option<f64>,
    pub limit: Option<Limit>,
    pub link_free: Option<f64>,
    /// window ÷ RTT.
    pub window_rate: Option<f64>,
}

/// The rate of one of `concurrency` migrations sharing the link.
pub fn estimate(p: &PathInputs, concurrency: u32) -> PathEstimate {
    let share = f64::from(concurrency.max(1));
    let link_free = p
        .link_speed
        .filter(|s| *s > 0.0)
        .map(|s| (s - p.link_used.unwrap_or(0.0)).max(0.0) / share);
    let window_rate = match (p.window, p.rtt_s) {
        (Some(w), Some(rtt)) if rtt > 0.0 => Some(w.bytes / rtt),
        _ => None,
    };
    // A what-if's cap replaces the domain's own: it asks "what if it were migrated at this".
    let cap = match p.cap.filter(|c| *c > 0.0) {
        Some(c) => Some((c, Limit::Cap)),
        None => p
            .libvirt_cap
            .filter(|c| *c > 0.0)
            .map(|c| (c, Limit::LibvirtCap)),
    };
    let terms = [
        link_free.map(|v| (v, Limit::Link)),
        cap,
        window_rate.map(|v| (v, Limit::Window)),
    ];
    let best = terms
        .into_iter()
        .flatten()
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let (rate, limit) = match best {
        Some((v, l)) => (Some(v), Some(l)),
        None => match p.fallback.filter(|f| *f > 0.0) {
            Some(f) => (Some(f), Some(Limit::Fallback)),
            None => (None, None),
        },
    };
    PathEstimate {
        rate,
        limit,
        link_free,
        window_rate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1048576.0;

    #[test]
    fn the_smallest_known_term_sets_the_rate() {
        let w = window_from_sysctl("4096 131072 33554432", "4096 16384 4194304", Some("1"))
            .expect("window");
        assert_eq!(w.source, WindowSource::Sysctl);
        assert!((w.bytes / MIB - 2.64).abs() < 0.01, "{}", w.bytes / MIB);
        let p = PathInputs {
            link_speed: Some(1250.0 * MIB),
            link_used: Some(250.0 * MIB),
            cap: Some(100.0 * MIB),
            libvirt_cap: None,
            rtt_s: Some(0.08),
            window: Some(w),
            fallback: Some(40.0 * MIB),
        };
        // The lab's 80 ms path: a 100 MiB/s cap delivers ~33 MiB/s.
        let e = estimate(&p, 1);
        assert_eq!(e.limit, Some(Limit::Window));
        assert!((e.rate.expect("rate") / MIB - 33.0).abs() < 0.1);
        assert_eq!(e.link_free, Some(1000.0 * MIB));
        // At no RTT the cap binds; ten at once share the free link.
        let short = PathInputs {
            rtt_s: Some(0.0002),
            ..p
        };
        assert_eq!(estimate(&short, 1).limit, Some(Limit::Cap));
        let e = estimate(&short, 20);
        assert_eq!((e.limit, e.rate), (Some(Limit::Link), Some(50.0 * MIB)));
    }

    #[test]
    fn the_domains_libvirt_cap_is_a_limit_a_what_if_cap_replaces() {
        let p = PathInputs {
            link_speed: Some(1250.0 * MIB),
            link_used: Some(0.0),
            libvirt_cap: Some(30.0 * MIB),
            fallback: Some(40.0 * MIB),
            ..PathInputs::default()
        };
        let e = estimate(&p, 1);
        assert_eq!(
            (e.limit, e.rate),
            (Some(Limit::LibvirtCap), Some(30.0 * MIB))
        );
        // bandwidth=100MiB replaces it, even when larger.
        let what_if = PathInputs {
            cap: Some(100.0 * MIB),
            ..p
        };
        let e = estimate(&what_if, 1);
        assert_eq!((e.limit, e.rate), (Some(Limit::Cap), Some(100.0 * MIB)));
        // Alone it is known: no fallback. A tighter window still binds.
        let alone = PathInputs {
            libvirt_cap: Some(30.0 * MIB),
            fallback: Some(40.0 * MIB),
            ..PathInputs::default()
        };
        assert_eq!(estimate(&alone, 1).limit, Some(Limit::LibvirtCap));
        let far = PathInputs {
            rtt_s: Some(0.2),
            window: Some(Window {
                bytes: 2.0 * MIB,
                source: WindowSource::Sysctl,
            }),
            ..p
        };
        assert_eq!(estimate(&far, 1).limit, Some(Limit::Window));
        assert_eq!(
            serde_json::to_value(Limit::LibvirtCap).expect("json"),
            "libvirt_cap"
        );
    }

    #[test]
    fn libvirts_unlimited_is_no_cap() {
        // QEMU_DOMAIN_MIG_BANDWIDTH_MAX: what `virsh migrate-getspeed` says by default.
        assert_eq!(cap_from_libvirt_mibs(8_796_093_022_207), None);
        assert_eq!(cap_from_libvirt_mibs(1 << 33), None, "2^53 bytes/s");
        assert_eq!(
            cap_from_libvirt_mibs((1 << 33) - 1),
            Some(((1u64 << 33) - 1) as f64 * MIB)
        );
        assert_eq!(cap_from_libvirt_mibs(0), None);
        assert_eq!(cap_from_libvirt_mibs(u64::MAX), None);
        assert_eq!(cap_from_libvirt_mibs(30), Some(30.0 * MIB));
        let c = LibvirtCap::from_mibs(8_796_093_022_207, Some(25));
        assert_eq!(c.precopy_bytes, None);
        assert_eq!(c.postcopy_bytes, Some(25.0 * MIB));
        assert_eq!(LibvirtCap::from_mibs(30, Some(0)).postcopy_bytes, None);
        assert_eq!(LibvirtCap::from_mibs(30, None).postcopy_bytes, None);
    }

    #[test]
    fn the_fallback_only_when_nothing_is_known() {
        let p = PathInputs {
            fallback: Some(40.0 * MIB),
            ..PathInputs::default()
        };
        let e = estimate(&p, 1);
        assert_eq!((e.rate, e.limit), (Some(40.0 * MIB), Some(Limit::Fallback)));
        assert_eq!(estimate(&PathInputs::default(), 1).rate, None);
        // A saturated link gives 0, not the fallback: a migration would crawl.
        let busy = PathInputs {
            link_speed: Some(100.0),
            link_used: Some(120.0),
            ..p
        };
        assert_eq!(estimate(&busy, 1).rate, Some(0.0));
    }

    #[test]
    fn windows_from_records_and_bad_sysctls() {
        let w = window_from_records([(33.0 * MIB, 0.08), (500.0 * MIB, 0.0002), (10.0, 0.1)])
            .expect("one long path");
        assert_eq!(w.source, WindowSource::Measured);
        assert!((w.bytes / MIB - 2.64).abs() < 1e-9);
        assert_eq!(window_from_records([(500.0 * MIB, 0.0002)]), None);
        assert_eq!(window_from_sysctl("4096 x 1", "1 2 3", None), None);
        assert_eq!(window_from_sysctl("1 2", "1 2 3", None), None);
        // A receive buffer smaller than the send side's share bounds the window.
        let w = window_from_sysctl("1 1 1000000", "1 1 4194304", Some("2")).expect("window");
        assert_eq!(w.bytes, 750_000.0);
        let w = window_from_sysctl("1 1 1000000", "1 1 4194304", Some("-1")).expect("window");
        assert_eq!(w.bytes, 500_000.0);
    }
}
