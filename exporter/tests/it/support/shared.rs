//! Helpers that speak the exporter's types, shared by its integration tests (here) and the
//! system tests (`tests/tests/exporter`, which include this file by path): one copy of each.
#![allow(dead_code)] // not every test crate uses every helper

use std::sync::mpsc;
use std::time::Duration;

use vm_migration_exporter::jobs::identity::NOVA_NS;
use vm_migration_exporter::jobs::tracker::FinishedMigration;
use vm_migration_exporter::libvirt::{DomainId, SourceEvent};

/// A domain identity: `g<n>`, with a fixed UUID ending in `n`.
pub fn dom(n: usize) -> DomainId {
    DomainId {
        name: format!("g{n}"),
        uuid: format!("0b0b0b0b-0000-4000-8000-00000000000{n}"),
    }
}

pub fn is_connected(ev: &SourceEvent) -> bool {
    matches!(ev, SourceEvent::Connected)
}

pub fn is_disconnected(ev: &SourceEvent) -> bool {
    matches!(ev, SourceEvent::Disconnected { .. })
}

/// Drains `rx` until it reports that every sender is gone (the source's own and the clones
/// held by libvirt callback data), i.e. libvirt called our free callbacks.
pub fn assert_all_senders_dropped(rx: &mpsc::Receiver<SourceEvent>, within: Duration) {
    assert!(
        testkit::prom::poll_until(within, || loop {
            match rx.try_recv() {
                Ok(_) => continue,
                Err(mpsc::TryRecvError::Empty) => break false,
                Err(mpsc::TryRecvError::Disconnected) => break true,
            }
        }),
        "event senders still alive: callback data leaked"
    );
}

/// Nova's element as Nova writes it into the domain XML it defines.
pub fn nova_instance(name: &str, project: &str) -> String {
    format!(
        r#"<nova:instance xmlns:nova="{NOVA_NS}">
  <nova:package version="29.0.1"/>
  <nova:name>{name}</nova:name>
  <nova:creationTime>2026-11-27 10:00:00</nova:creationTime>
  <nova:flavor name="m1.tiny"><nova:memory>32</nova:memory><nova:vcpus>1</nova:vcpus></nova:flavor>
  <nova:owner>
    <nova:user uuid="0aa0aa0aa0aa4aa0aa0aa0aa0aa0aa01">alice</nova:user>
    <nova:project uuid="0bb0bb0bb0bb4bb0bb0bb0bb0bb0bb02">{project}</nova:project>
  </nova:owner>
  <nova:root type="image" uuid="0cc0cc0c-0000-4000-8000-000000000003"/>
</nova:instance>"#
    )
}

/// The `vm_migration_domain_info` series of `domain` (name and labels), when its value is 1.
pub fn domain_info(metrics: &str, domain: &str) -> Option<String> {
    let label = format!("domain=\"{domain}\"");
    testkit::exporter::samples(metrics)
        .find(|s| s.name == "vm_migration_domain_info" && s.labels.contains(&label))
        .filter(|s| s.value == 1.0)
        .map(|s| s.series.to_string())
}

/// A finished-migration record as the exporter writes it (JSON, one line).
pub fn record(name: &str, uuid: &str, finished_at: f64, outcome: &str) -> String {
    serde_json::json!({
        "domain": {"name": name, "uuid": uuid},
        "direction": "out", "outcome": outcome, "mode": "precopy",
        "started_at": finished_at - 10.0, "finished_at": finished_at,
        "duration_seconds": 10.0, "downtime_seconds": if outcome == "completed" { Some(0.05) } else { None },
        "data_processed_bytes": 1000, "data_total_bytes": 2000, "memory_total_bytes": 2000,
        "iterations": 3, "postcopy_requests": null, "setup_time_seconds": 0.001,
        "dirty_rate_max_bytes": 4096, "dirty_rate_mean_bytes": 2048.0, "transfer_rate_mean_bytes": 1e6,
        "auto_converge_throttle_max_ratio": null,
        "verdicts": [{"t": finished_at - 9.0, "verdict": "unknown"}, {"t": finished_at - 5.0, "verdict": "converging"}],
        "figures": "event"
    })
    .to_string()
}

/// Record `i`: domain `g<i>`, completed.
pub fn rec(i: u32) -> FinishedMigration {
    let uuid = format!("00000000-0000-4000-8000-{i:012}");
    serde_json::from_str(&record(
        &format!("g{i}"),
        &uuid,
        1000.0 + f64::from(i),
        "completed",
    ))
    .expect("a record")
}
