//! What the `app` collector's probes found ([`AppStats`]: it writes, scrapes read) and its
//! `vm_migration_app_*` families, encoded from it at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;

use super::probe::ProbeOutcome;
use crate::exposition::{GaugeFamily, Labels};
use crate::libvirt::DomainId;

/// Live figures of one target, read by scrapes.
#[derive(Debug)]
pub struct TargetStats {
    pub domain: DomainId,
    pub target: String,
    pub up: Option<bool>,
    pub outage_seconds: f64,
    pub results: [u64; ProbeOutcome::ALL.len()],
    pub duration: Histogram,
}

/// Everything the `vm_migration_app_*` families show.
#[derive(Debug, Default)]
pub struct AppStats {
    /// By (domain uuid, target name).
    pub targets: BTreeMap<(String, String), TargetStats>,
    /// Longest outage of each domain's last migration, by (domain, target).
    pub last_outage: BTreeMap<(DomainId, String), f64>,
    /// Outages over finished migrations, by mode.
    pub migration_outage: BTreeMap<&'static str, Histogram>,
}

pub type SharedAppStats = Arc<Mutex<AppStats>>;

#[derive(Debug)]
pub struct AppFamilies {
    stats: SharedAppStats,
}

impl AppFamilies {
    pub fn new(stats: SharedAppStats) -> Self {
        AppFamilies { stats }
    }
}

fn labels(s: &TargetStats) -> Labels {
    vec![
        ("domain", s.domain.name.clone()),
        ("uuid", s.domain.uuid.clone()),
        ("target", s.target.clone()),
    ]
}

impl Collector for AppFamilies {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = self.stats.lock();
        let mut up = GaugeFamily::new(
            "vm_migration_app_up",
            "Whether the guest service's last probe answered as expected (1) or not (0).",
        );
        let mut outage = GaugeFamily::new(
            "vm_migration_app_outage_seconds",
            "The outage of the guest service going on now (0 while it answers).",
        );
        for s in g.targets.values() {
            up.push(labels(s), s.up.map(|u| f64::from(u8::from(u))));
            outage.push(labels(s), Some(s.outage_seconds));
        }
        let mut last = GaugeFamily::new(
            "vm_migration_last_app_outage_seconds",
            "Longest outage the guest service showed during the domain's last migration here (first failed or late probe to the next answer).",
        );
        for ((dom, target), v) in &g.last_outage {
            last.push(
                vec![
                    ("domain", dom.name.clone()),
                    ("uuid", dom.uuid.clone()),
                    ("target", target.clone()),
                ],
                Some(*v),
            );
        }
        for f in [up, outage, last] {
            f.encode(&mut enc)?;
        }
        if !g.targets.is_empty() {
            let mut me = enc.encode_descriptor(
                "vm_migration_app_probes",
                "Probes of the guest service, by result (success|status|timeout|refused|error).",
                None,
                MetricType::Counter,
            )?;
            for s in g.targets.values() {
                for (n, r) in s.results.iter().zip(ProbeOutcome::ALL) {
                    let mut l = labels(s);
                    l.push(("result", r.as_str().to_string()));
                    ConstCounter::new(*n).encode(me.encode_family(&l)?)?;
                }
            }
            let mut me = enc.encode_descriptor(
                "vm_migration_app_probe_duration_seconds",
                "Time each probe of the guest service took (to the answer, the failure or the timeout).",
                None,
                MetricType::Histogram,
            )?;
            for s in g.targets.values() {
                s.duration.encode(me.encode_family(&labels(s))?)?;
            }
        }
        if !g.migration_outage.is_empty() {
            let mut me = enc.encode_descriptor(
                "vm_migration_app_migration_outage_seconds",
                "Longest outage a probed guest service showed during each finished migration, by mode.",
                None,
                MetricType::Histogram,
            )?;
            for (mode, h) in &g.migration_outage {
                let l: Labels = vec![("mode", mode.to_string())];
                h.encode(me.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}
