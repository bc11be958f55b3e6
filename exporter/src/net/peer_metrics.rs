//! Encodes the `vm_migration_peer_*` families from [`PeerState`] at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::peers::{PeerState, ProbeKey, RESULTS};

#[derive(Debug)]
pub struct PeerCollector {
    peers: PeerState,
}

impl PeerCollector {
    pub fn new(peers: PeerState) -> Self {
        PeerCollector { peers }
    }
}

fn labels(k: &ProbeKey) -> Vec<(&'static str, String)> {
    vec![
        ("peer", k.peer.clone()),
        ("probe", k.probe.to_string()),
        ("origin", k.origin.as_str().to_string()),
    ]
}

impl Collector for PeerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = self.peers.lock();
        if !g.probes.is_empty() {
            let mut me = enc.encode_descriptor(
                "vm_migration_peer_rtt_seconds",
                "Round-trip time of successful probes (ICMP echo, or TCP connect), by peer and probe; origin is config or discovered.",
                None,
                MetricType::Histogram,
            )?;
            for (k, s) in &g.probes {
                s.rtt.encode(me.encode_family(&labels(k))?)?;
            }
            let mut me = enc.encode_descriptor(
                "vm_migration_peer_probes",
                "Probes sent, by result (success|timeout|error): loss is the rate of non-success over the rate of all.",
                None,
                MetricType::Counter,
            )?;
            for (k, s) in &g.probes {
                for (n, r) in s.results.iter().zip(RESULTS) {
                    let mut l = labels(k);
                    l.push(("result", r.to_string()));
                    ConstCounter::new(*n).encode(me.encode_family(&l)?)?;
                }
            }
            let mut me = enc.encode_descriptor(
                "vm_migration_peer_up",
                "Whether the peer's last probe succeeded (1) or not (0).",
                None,
                MetricType::Gauge,
            )?;
            for (k, s) in &g.probes {
                if let Some(up) = s.up {
                    ConstGauge::new(i64::from(up)).encode(me.encode_family(&labels(k))?)?;
                }
            }
            let mut me = enc.encode_descriptor(
                "vm_migration_peer_rtt_jitter_seconds",
                "Smoothed variation between consecutive RTTs (RFC 3550 interarrival jitter: J += (|D| - J)/16).",
                None,
                MetricType::Gauge,
            )?;
            for (k, s) in &g.probes {
                if let Some(j) = s.jitter {
                    ConstGauge::new(j).encode(me.encode_family(&labels(k))?)?;
                }
            }
        }
        let active: Vec<_> = g.discovered.values().filter(|d| d.active).collect();
        if !active.is_empty() {
            let mut me = enc.encode_descriptor(
                "vm_migration_peer_discovered",
                "1 for each running migration whose peer was found from QEMU's migration socket; device is the route to it.",
                None,
                MetricType::Gauge,
            )?;
            for d in active {
                let l = vec![
                    ("domain", d.domain.clone()),
                    ("uuid", d.uuid.clone()),
                    ("peer", d.address.to_string()),
                    ("device", d.device.clone().unwrap_or_default()),
                ];
                ConstGauge::new(1i64).encode(me.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}
