//! Encodes the `vm_migration_peer_*` families from [`PeerState`] at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use super::state::{PeerState, ProbeKey, RESULTS};
use crate::exposition::{GaugeFamily, Labels};

#[derive(Debug)]
pub struct PeerFamilies {
    peers: PeerState,
}

impl PeerFamilies {
    pub fn new(peers: PeerState) -> Self {
        PeerFamilies { peers }
    }
}

fn labels(k: &ProbeKey) -> Labels {
    vec![
        ("peer", k.peer.clone()),
        ("probe", k.probe.to_string()),
        ("origin", k.origin.as_str().to_string()),
    ]
}

impl Collector for PeerFamilies {
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
        }
        let mut up = GaugeFamily::new(
            "vm_migration_peer_up",
            "Whether the peer's last probe succeeded (1) or not (0).",
        );
        let mut jitter = GaugeFamily::new(
            "vm_migration_peer_rtt_jitter_seconds",
            "Smoothed variation between consecutive RTTs (RFC 3550 interarrival jitter: J += (|D| - J)/16).",
        );
        for (k, s) in &g.probes {
            up.push(labels(k), s.up.map(|u| f64::from(u8::from(u))));
            jitter.push(labels(k), s.jitter);
        }
        let mut discovered = GaugeFamily::new(
            "vm_migration_peer_discovered",
            "1 for each running migration whose peer was found from QEMU's migration socket; device is the route to it.",
        );
        for d in g.discovered.values().filter(|d| d.active) {
            let l = vec![
                ("domain", d.domain.clone()),
                ("uuid", d.uuid.clone()),
                ("peer", d.address.to_string()),
                ("device", d.device.clone().unwrap_or_default()),
            ];
            discovered.push(l, Some(1.0));
        }
        for family in [up, jitter, discovered] {
            family.encode(&mut enc)?;
        }
        Ok(())
    }
}
