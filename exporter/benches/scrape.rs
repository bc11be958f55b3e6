//! Scrape cost: encoding /metrics for a busy host, against a reference measured in the same
//! run: prometheus-client encoding the same number of series from plain registered gauges.
//! Prints medians and the ratio (ours / reference); no thresholds, machines here are noisy.
//!
//! cargo bench -p vm-migration-exporter --bench scrape
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vm_migration_exporter::jobs::metrics::Metrics;
use vm_migration_exporter::jobs::stats::JobStats;
use vm_migration_exporter::jobs::tracker::{JobObservation, Round, Tracker};
use vm_migration_exporter::libvirt::jobs::{job_operation, job_type, DomainId, ParamValue, Params};
use vm_migration_exporter::{exposition, state};

const ACTIVE: usize = 50;
const FINISHED_DOMAINS: usize = 1000;
const RUNS: usize = 200;

fn dom(i: usize) -> DomainId {
    DomainId {
        name: format!("instance-{i:08x}"),
        uuid: format!("00000000-0000-4000-8000-{i:012}"),
    }
}

fn running(i: usize) -> JobObservation {
    let p: Params = [
        ("operation", job_operation::MIGRATION_OUT),
        ("time_elapsed", 30_000 + i as u64),
        ("data_total", 8 << 30),
        ("data_processed", 4 << 30),
        ("data_remaining", 1 << 30),
        ("memory_total", 8 << 30),
        ("memory_processed", 4 << 30),
        ("memory_remaining", 1 << 30),
        ("memory_bps", 100 << 20),
        ("memory_dirty_rate", 20_000),
        ("memory_page_size", 4096),
        ("memory_iteration", 4),
        ("downtime", 900),
        ("setup_time", 5),
        ("auto_converge_throttle", 20),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_string(), ParamValue::UInt(*v)))
    .collect();
    JobObservation::Running {
        stats: Box::new(JobStats::from_params(job_type::UNBOUNDED, &p)),
        max_downtime_ms: Some(500),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut size = 0;
    let samples = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            size = black_box(f());
            t.elapsed()
        })
        .collect();
    (median(samples), size)
}

fn main() {
    // Ours: the live collector over 50 running migrations, and last_* series of 1000 domains.
    let shared = state::shared();
    let (reg, metrics) = Metrics::register(shared.clone(), Default::default());
    let mut tracker = Tracker::new(5.0);
    let round = Round {
        observations: (0..ACTIVE).map(|i| (dom(i), running(i))).collect(),
    };
    for t in 0..6 {
        tracker.on_round(f64::from(t), &round);
    }
    {
        let mut st = shared.lock();
        st.libvirt_up = true;
        st.active = tracker.active_jobs().cloned().collect();
    }
    for i in ACTIVE..ACTIVE + FINISHED_DOMAINS {
        let done = Params::from([
            (
                "operation".to_string(),
                ParamValue::UInt(job_operation::MIGRATION_OUT),
            ),
            ("time_elapsed".to_string(), ParamValue::UInt(12_000)),
            ("downtime".to_string(), ParamValue::UInt(80)),
            ("data_processed".to_string(), ParamValue::UInt(1 << 30)),
            ("memory_iteration".to_string(), ParamValue::UInt(5)),
        ]);
        let mut t = Tracker::new(5.0);
        let ev = vm_migration_exporter::libvirt::DomainEvent::JobCompleted {
            domain: dom(i),
            params: done,
        };
        for f in t.on_event(100.0, &ev).0 {
            metrics.record_finished(&f, 100.0);
        }
    }
    let (om, om_size) = time(|| {
        exposition::encode(&reg, true)
            .map(|(b, _)| b.len())
            .unwrap_or(0)
    });
    let (text, text_size) = time(|| {
        exposition::encode(&reg, false)
            .map(|(b, _)| b.len())
            .unwrap_or(0)
    });
    let series = exposition::encode(&reg, false)
        .map(|(b, _)| b.lines().filter(|l| !l.starts_with('#')).count())
        .unwrap_or(0);

    // Reference: the same number of series as plain registered gauges.
    let mut reference = Registry::default();
    let fam: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>> = Family::default();
    for i in 0..series {
        fam.get_or_create(&vec![
            ("domain".to_string(), format!("instance-{i:08x}")),
            (
                "uuid".to_string(),
                format!("00000000-0000-4000-8000-{i:012}"),
            ),
        ])
        .set(i as f64);
    }
    reference.register("reference_gauge", "Reference series", fam);
    let (refd, ref_size) = time(|| {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &reference);
        s.len()
    });

    println!("scrape encoding, {series} series ({ACTIVE} running migrations, {FINISHED_DOMAINS} domains with last_* figures), median of {RUNS}:");
    println!("| encoding | time | bytes | ratio to reference |");
    println!("|---|---|---|---|");
    println!("| reference: prometheus-client, plain gauges | {refd:?} | {ref_size} | 1.00 |");
    println!(
        "| ours, OpenMetrics | {om:?} | {om_size} | {:.2} |",
        om.as_secs_f64() / refd.as_secs_f64()
    );
    println!(
        "| ours, text 0.0.4 | {text:?} | {text_size} | {:.2} |",
        text.as_secs_f64() / refd.as_secs_f64()
    );
}
