//! The lab's `ci` scenarios against real libvirtd and QEMU, one migration at a time, each
//! asserting on states and on equality with libvirt's own figures — never on wall-clock times.

use std::path::PathBuf;

use migration_lab::exporter::sample;
use migration_lab::scenario::{RunResult, Scenario};
use migration_lab::{presets, Lab};
use system_tests::{exporter_bin, lab_dir, one_lab_at_a_time, scratch};

fn ci(name: &str) -> Scenario {
    presets::ci()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no ci scenario {name}"))
}

fn run(s: &Scenario) -> RunResult {
    let _one = one_lab_at_a_time();
    let out = scratch(&s.name);
    let bin = exporter_bin!();
    let mut lab = Lab::up(&lab_dir(), Some(&bin), &|m| eprintln!("lab: {m}")).expect("lab up");
    let r = lab.run(s, &out, &|_| {}).expect("scenario ran");
    // VME_TRACE_DIR=dir keeps the exporter's raw traces (replay fixtures).
    if let Ok(dir) = std::env::var("VME_TRACE_DIR") {
        let _ = std::fs::copy(
            &r.trace,
            PathBuf::from(dir).join(r.trace.file_name().unwrap_or_default()),
        );
    }
    // Whatever became of the migration, the guest's memory is intact where it runs now (QEMU
    // 7.2 lost TCG dirty writes: this is what caught it).
    if matches!(r.outcome.as_str(), "completed" | "aborted") {
        assert_eq!(
            r.integrity.as_deref(),
            Some("ok"),
            "{}: guest memory after the migration; last status {:?}",
            s.name,
            r.guest_status
        );
    }
    r
}

fn finished(r: &RunResult, outcome: &str, mode: &str) -> Option<f64> {
    let labels = [
        format!("outcome=\"{outcome}\""),
        format!("mode=\"{mode}\""),
        "direction=\"out\"".to_string(),
    ];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    sample(&r.exporter_metrics, "vm_migration_finished_total", &labels)
}

fn last(r: &RunResult, name: &str) -> Option<f64> {
    sample(
        &r.exporter_metrics,
        name,
        &[&format!("domain=\"{}\"", r.scenario.name)],
    )
}

fn total_finished(r: &RunResult) -> f64 {
    r.exporter_metrics
        .lines()
        .filter(|l| l.starts_with("vm_migration_finished_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The record names the peer the exporter found from QEMU's migration socket (the address the
/// migration went to), and its probes' RTT over the migration; returns the median RTT.
fn assert_peer_in_record(r: &RunResult, address: &str) -> f64 {
    let rec = r
        .exporter_record
        .as_ref()
        .expect("the exporter kept a record");
    let peer = &rec["peer"];
    assert_eq!(peer["address"], address, "record: {rec}");
    assert_eq!(peer["origin"], "discovered", "record: {rec}");
    assert_eq!(peer["probe"], "icmp", "record: {rec}");
    assert!(
        peer["probes"].as_u64().unwrap_or(0) >= 1,
        "probes ran during the migration: {rec}"
    );
    let rtt = peer["rtt_median_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("an RTT median: {rec}"));
    assert!(rtt > 0.0, "{rec}");
    rtt
}

/// The exporter's `last_*` figures equal those of libvirt's job-completed event.
fn assert_matches_libvirt(r: &RunResult) {
    let ev = |k: &str| {
        r.libvirt_number(k)
            .unwrap_or_else(|| panic!("job-completed event lacks {k}: {:?}", r.libvirt_completed))
    };
    assert_eq!(
        last(r, "vm_migration_last_duration_seconds"),
        Some(ev("time_elapsed") / 1000.0)
    );
    assert_eq!(
        last(r, "vm_migration_last_downtime_seconds"),
        Some(ev("downtime") / 1000.0)
    );
    assert_eq!(
        last(r, "vm_migration_last_data_processed_bytes"),
        Some(ev("data_processed"))
    );
    assert_eq!(
        last(r, "vm_migration_last_iteration"),
        Some(ev("memory_iteration"))
    );
}

#[test]
fn idle_precopy_converges_and_the_exporter_matches_libvirt() {
    let r = run(&ci("ci-idle-precopy"));
    assert_eq!(r.outcome, "completed", "{}", r.virsh_output);
    assert_eq!(
        finished(&r, "completed", "precopy"),
        Some(1.0),
        "{}",
        r.exporter_metrics
    );
    assert_eq!(total_finished(&r), 1.0);
    assert_matches_libvirt(&r);
    assert_peer_in_record(&r, "10.77.0.2");
    // The guest's HTTP service answered on the source before and on the destination after,
    // the same guest: its request counter and uptime went on.
    let before = r
        .app_before
        .as_ref()
        .expect("the guest app answered before");
    let after = r
        .app_after
        .as_ref()
        .expect("the guest app answered on the destination");
    assert!(
        after.requests > before.requests,
        "{before:?} then {after:?}"
    );
    assert!(
        after.uptime_s > before.uptime_s,
        "{before:?} then {after:?}"
    );
    // The exporter probed that service every 20 ms through the migration, at the address the
    // guest kept: the record carries libvirt's downtime and the outage the service showed, which
    // is at least the downtime less one fast probe interval and lies inside the migration.
    let rec = r.exporter_record.as_ref().expect("record");
    let app = &rec["app"][0];
    assert_eq!(app["target"], "http", "{rec}");
    let downtime = rec["downtime_seconds"].as_f64().expect("downtime");
    let outage = app["outage_seconds"].as_f64().expect("outage");
    assert!(
        outage >= downtime - 0.02,
        "outage {outage} s, downtime {downtime} s: {app}"
    );
    let began = app["outage_started_at"].as_f64().expect("outage start");
    let (start, end) = (
        rec["started_at"].as_f64().expect("start"),
        rec["finished_at"].as_f64().expect("end"),
    );
    assert!(
        began >= start && began + outage <= end + 1.0,
        "outage {began}+{outage} outside the migration {start}..{end}: {app}"
    );
    assert!(
        app["latency_during"]["probes"].as_u64().unwrap_or(0) > 10,
        "{app}"
    );
    assert!(
        !r.verdicts_seen().iter().any(|v| v == "not_converging"),
        "{:?}",
        r.verdicts_seen()
    );
}

#[test]
fn loaded_precopy_converges_without_a_false_alarm() {
    let r = run(&ci("ci-loaded-precopy"));
    assert!(
        !r.exporter_metrics.contains("vm_migration_app_"),
        "a guest without targets has no app series"
    );
    assert_eq!(r.outcome, "completed", "{}", r.virsh_output);
    assert_matches_libvirt(&r);
    let after_pass_2: Vec<_> = r
        .observations
        .iter()
        .filter(|o| o.iteration.is_some_and(|i| i > 2.0))
        .collect();
    assert!(
        !after_pass_2
            .iter()
            .any(|o| matches!(o.verdict.as_deref(), Some("not_converging"))),
        "a converging migration is never called not_converging after pass 2: {:?}",
        r.verdicts_seen()
    );
    assert!(
        r.verdicts_seen().iter().any(|v| v == "converging"),
        "{:?}",
        r.verdicts_seen()
    );
}

#[test]
fn stressed_precopy_does_not_converge_and_is_counted_aborted() {
    let r = run(&ci("ci-stressed-precopy"));
    assert_eq!(r.outcome, "aborted", "{}", r.virsh_output);
    let live: Vec<_> = r.observations.iter().filter(|o| o.job_active).collect();
    let passes: Vec<f64> = live.iter().filter_map(|o| o.iteration).collect();
    assert!(
        passes.windows(2).all(|w| w[1] >= w[0]),
        "passes never go back: {passes:?}"
    );
    assert!(
        passes.last().copied().unwrap_or(0.0) >= 3.0,
        "the iteration climbed: {passes:?}"
    );
    // Data remaining does not fall: every complete pass starts no lower than half of where the
    // second did. A pass's start is its peak: the first scrape in a pass can still carry the
    // previous pass's last sample (the iteration comes from libvirt's event at once, the
    // remainder with the next sample), and the pass under way at the abort may show nothing else.
    let start_of = |pass: f64| {
        live.iter()
            .filter(|o| o.iteration == Some(pass))
            .filter_map(|o| o.data_remaining)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))))
    };
    let last_pass = passes.last().copied().unwrap_or(0.0);
    let second = start_of(2.0).expect("pass 2 was observed with data remaining");
    assert!(
        last_pass >= 4.0,
        "a complete pass after the second to compare: {passes:?}"
    );
    let mut pass = 3.0;
    while pass < last_pass {
        let start = start_of(pass).unwrap_or_else(|| panic!("pass {pass} observed: {passes:?}"));
        assert!(
            start >= second * 0.5,
            "remaining fell from {second} (pass 2) to {start} (pass {pass})"
        );
        pass += 1.0;
    }
    let verdicts = r.verdicts_seen();
    assert!(
        verdicts.iter().any(|v| v == "not_converging"),
        "exporter called it non-converging: {verdicts:?}"
    );
    assert!(!verdicts.iter().any(|v| v == "converging"), "{verdicts:?}");
    assert_eq!(
        finished(&r, "aborted", "precopy"),
        Some(1.0),
        "{}",
        r.exporter_metrics
    );
    assert_eq!(total_finished(&r), 1.0);
    // Over the delay link: the probes crossed it, so no RTT below the delay it adds.
    let rtt = assert_peer_in_record(&r, "10.78.0.2");
    let delay = presets::RTT_METRO_MS as f64 / 1000.0;
    assert!(
        rtt >= delay,
        "median RTT {rtt} s under the path's {delay} s"
    );
}

#[test]
fn raising_max_downtime_lets_it_complete() {
    let r = run(&ci("ci-stressed-raised-downtime"));
    assert_eq!(r.outcome, "completed", "{}", r.virsh_output);
    assert_eq!(
        finished(&r, "completed", "precopy"),
        Some(1.0),
        "{}",
        r.exporter_metrics
    );
    assert_matches_libvirt(&r);
    assert!(
        r.verdicts_seen().iter().any(|v| v == "not_converging"),
        "{:?}",
        r.verdicts_seen()
    );
}

#[test]
fn postcopy_switches_phase_and_counts_by_mode() {
    let r = run(&ci("ci-postcopy"));
    assert_eq!(r.outcome, "completed", "{}", r.virsh_output);
    assert!(
        r.observations
            .iter()
            .any(|o| o.phase.as_deref() == Some("postcopy")),
        "phase switched"
    );
    assert!(
        r.observations
            .iter()
            .any(|o| o.verdict.as_deref() == Some("postcopy")),
        "verdict postcopy"
    );
    let requests = r.libvirt_number("memory_postcopy_requests").unwrap_or(0.0);
    assert!(
        requests > 0.0,
        "libvirt counted page requests: {:?}",
        r.libvirt_completed
    );
    assert_eq!(
        finished(&r, "completed", "postcopy"),
        Some(1.0),
        "{}",
        r.exporter_metrics
    );
    let downtimes = sample(
        &r.exporter_metrics,
        "vm_migration_downtime_seconds_count",
        &["mode=\"postcopy\"", "direction=\"out\""],
    );
    assert_eq!(downtimes, Some(1.0));
    assert_eq!(
        last(&r, "vm_migration_last_downtime_seconds"),
        r.libvirt_number("downtime").map(|d| d / 1000.0)
    );
}

#[test]
fn source_libvirtd_restart_loses_no_record() {
    let r = run(&ci("ci-libvirtd-restart"));
    assert_ne!(
        r.outcome, "completed",
        "libvirt cancels a migration whose source daemon restarts: {}",
        r.virsh_output
    );
    assert!(
        r.observations
            .last()
            .is_some_and(|o| o.libvirt_up == Some(1.0)),
        "the exporter reconnected by itself"
    );
    let rec = r
        .exporter_record
        .as_ref()
        .expect("the migration has a record");
    assert!(
        matches!(rec["outcome"].as_str(), Some("aborted" | "failed")),
        "{rec}"
    );
    assert_eq!(total_finished(&r), 1.0, "{}", r.exporter_metrics);
}
