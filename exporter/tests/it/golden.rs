//! The golden `/metrics` with every family: each collector registers its families as the runner
//! would and runs on fixed input (a replayed trace with one finished and one running
//! migration, the fixture `/proc` and `/sys` trees, fixed probe results). A family added to
//! the source without being covered here fails `every_family_in_the_source_is_in_the_golden`.

use std::net::IpAddr;
use std::path::Path;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use vm_migration_exporter::collector::{execute, Collect, Name, Rounds, TaskRounds};
use vm_migration_exporter::jobs::replay::{text, Replay};
use vm_migration_exporter::jobs::sampler::SamplerConfig;
use vm_migration_exporter::jobs::trace::TraceRecord;
use vm_migration_exporter::libvirt::jobs::{
    job_operation, job_type, Call, DomainEvent, DomainId, ParamValue, Params, RawJob,
};
use vm_migration_exporter::netdev::{Netdev, NetdevCollector};
use vm_migration_exporter::peers::probe::{ProbeCollector, Prober};
use vm_migration_exporter::peers::state::{
    DiscoveredPeer, Origin, PeerState, ProbeKey, ProbeOutcome,
};

use crate::support::{dom, normalise};

fn p(pairs: &[(&str, u64)]) -> Params {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), ParamValue::UInt(*v)))
        .collect()
}

/// A round at `t` in which g1 (until `g1_done`), g2 and g3 migrate out, every job figure set.
/// Each second is a new pass; g1 and g2 start each with half the remainder of the last
/// (converging), g3 with the same remainder while its guest dirties about as fast as it is sent
/// (not converging: stalled).
fn round(t: f64, g1_done: bool, elapsed: u64) -> Vec<TraceRecord> {
    let pass = elapsed / 1000;
    let doms: Vec<DomainId> = if g1_done {
        vec![dom(2), dom(3)]
    } else {
        vec![dom(1), dom(2), dom(3)]
    };
    let mut out = vec![TraceRecord::Round {
        t,
        domains: doms.clone(),
    }];
    for d in doms {
        let stalled = d == dom(3);
        let (data_remaining, memory_remaining, dirty_pages) = if stalled {
            (1_100_000_000, 300_000_000, 12_000)
        } else {
            (1_100_000_000 >> pass, 300_000_000 >> pass, 6_100)
        };
        out.push(TraceRecord::Job {
            t,
            domain: d.clone(),
            job: Some(RawJob {
                job_type: job_type::UNBOUNDED,
                params: p(&[
                    ("operation", job_operation::MIGRATION_OUT),
                    ("time_elapsed", elapsed),
                    ("setup_time", 40),
                    ("data_total", 2_000_000_000),
                    ("data_processed", 900_000_000 + elapsed * 1000),
                    ("data_remaining", data_remaining),
                    ("memory_total", 1_000_000_000),
                    ("memory_processed", 800_000_000),
                    ("memory_remaining", memory_remaining),
                    ("memory_dirty_rate", dirty_pages),
                    ("memory_page_size", 4096),
                    ("memory_bps", 50_000_000),
                    ("memory_iteration", 2 + pass),
                    ("memory_postcopy_requests", 0),
                    ("auto_converge_throttle", 20),
                    ("disk_total", 1_000_000),
                    ("disk_processed", 600_000),
                    ("disk_remaining", 400_000),
                    ("downtime", 40),
                ]),
            }),
        });
        out.push(TraceRecord::MaxDowntime {
            t,
            domain: d,
            ms: Some(300),
        });
    }
    out
}

fn trace() -> Vec<TraceRecord> {
    let mut r = vec![TraceRecord::Connection {
        t: 100.0,
        connected: true,
    }];
    r.extend(round(100.0, false, 1000));
    r.extend(round(101.0, false, 2000));
    r.push(TraceRecord::Event {
        t: 101.5,
        event: DomainEvent::JobCompleted {
            domain: dom(1),
            params: p(&[
                ("operation", job_operation::MIGRATION_OUT),
                ("time_elapsed", 2300),
                ("downtime", 62),
                ("data_processed", 91_000_000),
                ("memory_iteration", 3),
            ]),
        },
    });
    r.extend(round(102.0, true, 3000));
    r.extend(round(103.0, true, 4000));
    r
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `/metrics` as the daemon would serve it after the trace, with every collector's families.
fn every_family() -> String {
    // g2 is an OpenStack instance (Nova's metadata); g1 and g3 are plain libvirt domains.
    let nova = format!(
        r#"<nova:instance xmlns:nova="{}"><nova:name>web-2</nova:name><nova:flavor name="m1.small"/><nova:owner><nova:user uuid="6d3c2b1a">alice</nova:user><nova:project uuid="a1b2c3d4">shop</nova:project></nova:owner></nova:instance>"#,
        vm_migration_exporter::jobs::identity::NOVA_NS
    );
    let source = vm_migration_exporter::jobs::trace::ReplaySource::new(trace()).with_metadata(&[(
        &dom(2).uuid,
        vm_migration_exporter::jobs::identity::NOVA_NS,
        &nova,
    )]);
    let mut replay = Replay::with_source(source, SamplerConfig::default());
    replay.run(|_, _| {});
    replay.metrics.call_error(Call::MaxDowntime);
    let statuses = replay.statuses.clone();
    let registry: &mut Registry = &mut replay.registry;

    let mut netdev = NetdevCollector::new(Netdev {
        procfs: fixtures().join("proc"),
        sysfs: fixtures().join("sys"),
        include: None,
        exclude: None,
        guest_devices: false,
    });
    netdev.register(registry);
    assert!(execute(&statuses, Name::Netdev, || netdev.round()));

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let peers = PeerState::default();
    let rounds = TaskRounds::new(statuses.clone(), Name::Probe);
    let prober = Prober::new(peers.clone(), rounds.clone(), 1, rt.handle().clone());
    let probes = ProbeCollector::new(prober, vec![], CancellationToken::new());
    probes.register(registry);
    let dst: IpAddr = "10.77.0.2".parse().expect("ip");
    let config = ProbeKey {
        peer: "dst".into(),
        probe: "icmp",
        origin: Origin::Config,
    };
    peers.ensure_series(&config, dst);
    for (i, o) in [
        ProbeOutcome::Success(0.0004),
        ProbeOutcome::Success(0.0006),
        ProbeOutcome::Timeout,
        ProbeOutcome::Success(0.0005),
    ]
    .into_iter()
    .enumerate()
    {
        peers.record_probe(&config, dst, 100.0 + i as f64, o);
    }
    // One probe round, as the probe tasks report it.
    rounds.join(config.clone());
    rounds.begin(&config);
    rounds.end(&config, true);
    peers.lock().discovered.insert(
        dom(2).uuid,
        DiscoveredPeer {
            address: dst,
            device: Some("eth0".into()),
            domain: dom(2).name,
            uuid: dom(2).uuid,
            active: true,
        },
    );
    // One probed guest service: two good probes and a refused one, and one finished migration
    // with its app-observed outage.
    let app = vm_migration_exporter::app::metrics::SharedAppStats::default();
    {
        use prometheus_client::metrics::histogram::Histogram;
        use vm_migration_exporter::app::collector::{duration_buckets, outage_buckets};
        use vm_migration_exporter::app::metrics::TargetStats;
        let mut g = app.lock();
        let duration = Histogram::new(duration_buckets());
        for l in [0.002, 0.003, 0.0001] {
            duration.observe(l);
        }
        let mut results = [0; 5];
        results[0] = 2;
        results[3] = 1;
        g.targets.insert(
            (dom(2).uuid, "http".into()),
            TargetStats {
                domain: dom(2),
                target: "http".into(),
                up: Some(true),
                outage_seconds: 0.0,
                results,
                duration,
            },
        );
        g.last_outage.insert((dom(1), "http".into()), 0.07);
        let outage = Histogram::new(outage_buckets());
        outage.observe(0.07);
        g.migration_outage.insert("precopy", outage);
    }
    registry.register_collector(Box::new(
        vm_migration_exporter::app::metrics::AppFamilies::new(app),
    ));
    // The forecast of two guests (one converging, one not) over the configured peer's path.
    {
        use vm_migration_exporter::forecast::dirty::{DirtyRate, DirtySource, FirstPassSource};
        use vm_migration_exporter::forecast::report::{DomainView, HostView, PeerPath};
        let guest = |n: usize, dirty_mibs: f64| DomainView {
            domain: dom(n),
            migrating: false,
            memory_bytes: Some(512.0 * 1048576.0),
            first_pass_bytes: Some(256.0 * 1048576.0),
            first_pass_source: Some(FirstPassSource::RamResident),
            resident_bytes: Some(256.0 * 1048576.0),
            fill_rate_bytes: None,
            dirty_rate: Some(DirtyRate {
                bytes_per_second: dirty_mibs * 1048576.0,
                source: DirtySource::Calculation,
                seen_at: 100.0,
                samples: 1,
            }),
            max_downtime_seconds: Some(0.3),
            libvirt_cap: None,
            last_peer: None,
        };
        let view = HostView {
            updated_at: Some(100.0),
            domains: vec![guest(1, 16.0), guest(2, 150.0)],
            peers: vec![PeerPath {
                name: "dst".into(),
                address: dst,
                device: Some("eth0".into()),
                link_speed_bytes: Some(128.0 * 1048576.0),
                link_used_bytes: Some(0.0),
                rtt_seconds: Some(0.0005),
            }],
            window: None,
            fallback_bytes: None,
            calculations: true,
        };
        registry.register_collector(Box::new(
            vm_migration_exporter::forecast::metrics::ForecastFamilies::new(
                std::sync::Arc::new(parking_lot::Mutex::new(view)),
                // No listing: every domain of the view is shown.
                vm_migration_exporter::state::shared(),
            ),
        ));
    }
    // The record file: found damaged at start (moved aside), its two valid records kept.
    let dir = tempfile::tempdir().expect("tempdir");
    let one = serde_json::to_string(&replay.state.lock().records[0]).expect("record");
    std::fs::write(
        dir.path().join("migrations.jsonl"),
        format!("{one}\ndamage\n{one}\n"),
    )
    .expect("write");
    let (log, _) =
        vm_migration_exporter::records::log::RecordLog::open(dir.path(), 1 << 20).expect("open");
    replay.registry.register_collector(Box::new(
        vm_migration_exporter::records::log::StoreFamilies(log.stats()),
    ));
    // The start counts as the first successful load.
    replay
        .registry
        .register_collector(Box::new(vm_migration_exporter::reload::ReloadStatus::new(
            100.0,
        )));
    let out = text(&replay.registry).replace(&dir.path().display().to_string(), "<dir>");
    // The moved file is named after the time it was found.
    match out.split_once("migrations.jsonl.damaged-") {
        Some((head, tail)) => {
            let rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{head}migrations.jsonl.damaged-<time>{rest}")
        }
        None => out,
    }
}

#[test]
fn golden_metrics_with_every_family() {
    insta::assert_snapshot!("metrics_every_family", normalise(&every_family()));
}

#[test]
fn every_family_in_the_source_is_in_the_golden() {
    let out = every_family();
    let mut missing = Vec::new();
    let mut files = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(
                std::fs::read_dir(&p)
                    .expect("src dir")
                    .map(|e| e.expect("entry").path()),
            );
            continue;
        }
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.ends_with(".rs") || name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let src = std::fs::read_to_string(&p).expect("source");
        for name in src.split('"').skip(1).step_by(2) {
            let is_family = name.starts_with("vm_migration_")
                && !name.ends_with('_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            // Counters are written with `_total` in the text format.
            let typed = |n: &str| out.contains(&format!("# TYPE {n} "));
            if is_family && !typed(name) && !typed(&format!("{name}_total")) {
                missing.push(format!("{name} ({})", p.display()));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "families named in the source but not in the golden: {missing:?}"
    );
}
