//! What the peer probes know, shared between the probe tasks and discovery (writers) and the
//! scrape and the migration records (readers): per peer × probe an RTT histogram, result
//! counters, up, jitter and a bounded list of recent results; and the peer discovered for each
//! running migration.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;

pub use crate::record::{Origin, PeerSummary};

/// RTT buckets: 50 µs doubling 15 times (50 µs .. 0.82 s).
pub fn rtt_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 15)
}

/// Probe results kept per peer and probe for the RTT median and loss over a migration: at the
/// default 1 s interval, one hour.
pub const PROBE_SAMPLES: usize = 3600;
/// Probe series of discovered peers kept (not exported) after their migration ended, so the
/// record of a migration that finished just before can still read them.
pub const RETIRED_SERIES: usize = 64;
/// Discovered peers remembered (inactive) after their migration ended.
pub const KEEP_DISCOVERED: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeKey {
    pub peer: String,
    pub probe: &'static str,
    pub origin: Origin,
}

/// Result of one probe attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProbeOutcome {
    Success(f64),
    Timeout,
    Error,
}

/// `vm_migration_peer_probes_total{result}` values, in [`ProbeSeries::results`] order.
pub const RESULTS: [&str; 3] = ["success", "timeout", "error"];

#[derive(Debug)]
pub struct ProbeSeries {
    pub address: IpAddr,
    pub rtt: Histogram,
    /// success, timeout, error.
    pub results: [u64; 3],
    /// The last probe succeeded; `None` before the first one.
    pub up: Option<bool>,
    /// RFC 3550 interarrival jitter: J += (|D| − J) / 16 over consecutive RTTs.
    pub jitter: Option<f64>,
    last_rtt: Option<f64>,
    /// (unix time, RTT if the probe succeeded).
    samples: VecDeque<(f64, Option<f64>)>,
}

impl ProbeSeries {
    fn new(address: IpAddr) -> Self {
        ProbeSeries {
            address,
            rtt: Histogram::new(rtt_buckets()),
            results: [0; 3],
            up: None,
            jitter: None,
            last_rtt: None,
            samples: VecDeque::new(),
        }
    }

    fn record(&mut self, at: f64, outcome: ProbeOutcome) {
        let (idx, rtt) = match outcome {
            ProbeOutcome::Success(rtt) => {
                self.rtt.observe(rtt);
                if let Some(prev) = self.last_rtt {
                    let j = self.jitter.unwrap_or(0.0);
                    self.jitter = Some(j + ((rtt - prev).abs() - j) / 16.0);
                }
                self.last_rtt = Some(rtt);
                (0, Some(rtt))
            }
            ProbeOutcome::Timeout => (1, None),
            ProbeOutcome::Error => (2, None),
        };
        self.results[idx] += 1;
        self.up = Some(idx == 0);
        if self.samples.len() == PROBE_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, rtt));
    }
}

/// A peer found from a running migration's socket.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscoveredPeer {
    pub address: IpAddr,
    /// The device whose route leads to the peer, if the routing table says.
    pub device: Option<String>,
    pub domain: String,
    pub uuid: String,
    /// Still migrating (probed now).
    pub active: bool,
}

#[derive(Debug, Default)]
pub struct PeerInner {
    pub probes: BTreeMap<ProbeKey, ProbeSeries>,
    retired: VecDeque<(ProbeKey, ProbeSeries)>,
    /// By domain uuid.
    pub discovered: HashMap<String, DiscoveredPeer>,
    /// Probes that cannot run at all (no ICMP socket allowed).
    setup_failed: BTreeSet<ProbeKey>,
}

/// Shared probe state; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct PeerState {
    inner: Arc<Mutex<PeerInner>>,
}

impl PeerState {
    pub fn lock(&self) -> parking_lot::MutexGuard<'_, PeerInner> {
        self.inner.lock()
    }

    /// Export the series from the start (with zero counts), before the first answer.
    pub fn ensure_series(&self, key: &ProbeKey, address: IpAddr) {
        self.inner
            .lock()
            .probes
            .entry(key.clone())
            .or_insert_with(|| ProbeSeries::new(address));
    }

    pub fn record_probe(&self, key: &ProbeKey, address: IpAddr, at: f64, outcome: ProbeOutcome) {
        self.inner
            .lock()
            .probes
            .entry(key.clone())
            .or_insert_with(|| ProbeSeries::new(address))
            .record(at, outcome);
    }

    /// Note whether `key` could set up its socket; returns how many probes cannot.
    pub fn note_setup(&self, key: &ProbeKey, failed: bool) -> usize {
        let mut g = self.inner.lock();
        if failed {
            g.setup_failed.insert(key.clone());
        } else {
            g.setup_failed.remove(key);
        }
        g.setup_failed.len()
    }

    /// Stop exporting a discovered peer's series (no stale series once its migration ended);
    /// keep its results for the record.
    pub fn retire(&self, key: &ProbeKey) {
        let mut g = self.inner.lock();
        g.setup_failed.remove(key);
        if let Some(s) = g.probes.remove(key) {
            g.retired.retain(|(k, _)| k != key);
            if g.retired.len() == RETIRED_SERIES {
                g.retired.pop_front();
            }
            g.retired.push_back((key.clone(), s));
        }
    }

    /// The peer of a domain's current or last migration, by uuid.
    pub fn discovered_peer(&self, uuid: &str) -> Option<DiscoveredPeer> {
        self.inner.lock().discovered.get(uuid).cloned()
    }

    /// The probe figures of the peer discovered for domain `uuid` over `[from, to]` (unix
    /// seconds): ICMP preferred over TCP. `None` when no peer was discovered for it.
    pub fn summary_for_domain(&self, uuid: &str, from: f64, to: f64) -> Option<PeerSummary> {
        let g = self.inner.lock();
        let d = g.discovered.get(uuid)?;
        let name = d.address.to_string();
        let mut best: Option<(&ProbeKey, &ProbeSeries)> = None;
        for (k, s) in g.probes.iter().chain(g.retired.iter().map(|(k, s)| (k, s))) {
            if k.peer == name
                && k.origin == Origin::Discovered
                && best.is_none_or(|(bk, _)| bk.probe != "icmp")
            {
                best = Some((k, s));
            }
        }
        let mut out = PeerSummary {
            peer: name,
            address: d.address,
            origin: Origin::Discovered,
            probe: best.map_or("icmp", |(k, _)| k.probe).to_string(),
            device: d.device.clone(),
            probes: 0,
            rtt_median_seconds: None,
            loss_ratio: None,
        };
        if let Some((_, s)) = best {
            let mut rtts = Vec::new();
            for (at, rtt) in &s.samples {
                if *at >= from && *at <= to {
                    out.probes += 1;
                    rtts.extend(*rtt);
                }
            }
            if out.probes > 0 {
                out.loss_ratio = Some((out.probes - rtts.len() as u64) as f64 / out.probes as f64);
            }
            out.rtt_median_seconds = median(&mut rtts);
        }
        Some(out)
    }
}

impl PeerState {
    /// The median RTT of the probes of `peer` (a configured name, or a discovered address)
    /// answered since `since` (unix seconds), ICMP preferred; for forecasts.
    pub fn rtt_median(&self, peer: &str, since: f64) -> Option<f64> {
        let g = self.inner.lock();
        let mut best: Option<Vec<f64>> = None;
        let mut best_icmp = false;
        for (k, s) in g.probes.iter().filter(|(k, _)| k.peer == peer) {
            let rtts: Vec<f64> = s
                .samples
                .iter()
                .filter(|(at, _)| *at >= since)
                .filter_map(|(_, rtt)| *rtt)
                .collect();
            let icmp = k.probe == "icmp";
            if !rtts.is_empty() && (best.is_none() || (icmp && !best_icmp)) {
                best = Some(rtts);
                best_icmp = icmp;
            }
        }
        median(&mut best?)
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovered(st: &PeerState, address: IpAddr) {
        st.lock().discovered.insert(
            "u1".into(),
            DiscoveredPeer {
                address,
                device: Some("eth0".into()),
                domain: "d".into(),
                uuid: "u1".into(),
                active: true,
            },
        );
    }

    #[test]
    fn median_loss_and_jitter_over_the_migration_window() {
        let st = PeerState::default();
        let a: IpAddr = "10.77.0.2".parse().expect("ip");
        discovered(&st, a);
        let key = ProbeKey {
            peer: a.to_string(),
            probe: "icmp",
            origin: Origin::Discovered,
        };
        for (t, o) in [
            (0.0, ProbeOutcome::Success(9.0)),
            (1.0, ProbeOutcome::Success(0.010)),
            (2.0, ProbeOutcome::Timeout),
            (3.0, ProbeOutcome::Success(0.030)),
            (4.0, ProbeOutcome::Success(0.020)),
            (9.0, ProbeOutcome::Success(5.0)),
        ] {
            st.record_probe(&key, a, t, o);
        }
        let s = st.summary_for_domain("u1", 0.5, 4.5).expect("summary");
        assert_eq!(s.probes, 4);
        assert_eq!(s.loss_ratio, Some(0.25));
        assert_eq!(s.rtt_median_seconds, Some(0.020));
        assert_eq!(s.device.as_deref(), Some("eth0"));
        assert_eq!(s.probe, "icmp");
        let g = st.lock();
        let series = g.probes.get(&key).expect("series");
        assert_eq!(series.results, [5, 1, 0]);
        assert!(series.jitter.is_some_and(|j| j > 0.0));
        assert_eq!(series.up, Some(true));
        drop(g);
        assert_eq!(st.summary_for_domain("other", 0.0, 9.0), None);
    }

    #[test]
    fn retired_series_are_not_exported_but_still_summarised() {
        let st = PeerState::default();
        let a: IpAddr = "10.77.0.2".parse().expect("ip");
        discovered(&st, a);
        let tcp = ProbeKey {
            peer: a.to_string(),
            probe: "tcp",
            origin: Origin::Discovered,
        };
        st.record_probe(&tcp, a, 1.0, ProbeOutcome::Success(0.002));
        st.record_probe(&tcp, a, 2.0, ProbeOutcome::Error);
        st.retire(&tcp);
        assert!(st.lock().probes.is_empty());
        let s = st.summary_for_domain("u1", 0.0, 3.0).expect("summary");
        assert_eq!(s.probe, "tcp");
        assert_eq!((s.probes, s.loss_ratio), (2, Some(0.5)));
        assert_eq!(s.rtt_median_seconds, Some(0.002));
    }

    #[test]
    fn samples_are_bounded() {
        let st = PeerState::default();
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let key = ProbeKey {
            peer: "p".into(),
            probe: "icmp",
            origin: Origin::Config,
        };
        for i in 0..(PROBE_SAMPLES + 5) {
            st.record_probe(&key, a, i as f64, ProbeOutcome::Timeout);
        }
        let g = st.lock();
        let s = g.probes.get(&key).expect("series");
        assert_eq!(s.samples.len(), PROBE_SAMPLES);
        assert_eq!(s.results[1], (PROBE_SAMPLES + 5) as u64);
    }
}
