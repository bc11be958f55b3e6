//! Results as a markdown table and CSV.

use std::fmt::Write as _;
use std::path::Path;

use crate::scenario::{Mode, RunResult};

fn cells(r: &RunResult) -> Vec<String> {
    let s = &r.scenario;
    let rec = r.exporter_record.as_ref();
    let num = |k: &str| rec.and_then(|v| v[k].as_f64());
    let app = rec.and_then(|v| v["app"].get(0));
    vec![
        s.name.clone(),
        match s.mode {
            Mode::Precopy => "precopy".into(),
            Mode::Postcopy => "postcopy".into(),
        },
        s.guest.dirty_mbps.to_string(),
        s.guest.pattern.as_str().to_string(),
        s.bandwidth_mibs
            .map(|b| b.to_string())
            .unwrap_or_else(|| "none".into()),
        match (s.rtt_ms, r.ping_rtt_ms) {
            (Some(rtt), Some(p)) => format!("{rtt} (ping {p:.1})"),
            (Some(rtt), None) => rtt.to_string(),
            _ => "0".into(),
        },
        r.outcome.clone(),
        r.libvirt_number("time_elapsed")
            .map(|ms| format!("{:.1}", ms / 1000.0))
            .or_else(|| num("duration_seconds").map(|d| format!("{d:.1}")))
            .unwrap_or_default(),
        r.libvirt_number("downtime")
            .map(|ms| format!("{ms:.0}"))
            .unwrap_or_default(),
        r.libvirt_number("data_processed")
            .or_else(|| num("data_processed_bytes"))
            .map(|b| format!("{:.0}", b / 1048576.0))
            .unwrap_or_default(),
        r.libvirt_number("memory_iteration")
            .or_else(|| num("iterations"))
            .map(|i| format!("{i:.0}"))
            .unwrap_or_default(),
        rec.and_then(|v| v["outcome"].as_str())
            .unwrap_or("none")
            .to_string(),
        r.verdicts_seen().join(" → "),
        r.integrity.clone().unwrap_or_default(),
        // The RTT the exporter's probes of the discovered peer saw while it migrated.
        rec.and_then(|v| v["peer"]["rtt_median_seconds"].as_f64())
            .map(|s| format!("{:.2}", s * 1000.0))
            .unwrap_or_default(),
        r.libvirt_number("memory_postcopy_requests")
            .or_else(|| num("postcopy_requests"))
            .map(|n| format!("{n:.0}"))
            .unwrap_or_default(),
        // What the guest's service showed (app guests): the longest outage, and the p99 latency
        // from the switch-over (or the switch to post-copy) to the end.
        app.and_then(|a| a["outage_seconds"].as_f64())
            .map(|s| format!("{:.0}", s * 1000.0))
            .unwrap_or_default(),
        app.and_then(|a| a["latency_after_switchover"]["p99_seconds"].as_f64())
            .map(|s| format!("{:.1}", s * 1000.0))
            .unwrap_or_default(),
    ]
}

const HEAD: [&str; 18] = [
    "scenario",
    "mode",
    "dirty MiB/s",
    "pattern",
    "bandwidth MiB/s",
    "added RTT ms",
    "outcome",
    "total s",
    "downtime ms",
    "data MiB",
    "iterations",
    "exporter outcome",
    "exporter verdicts",
    "guest memory after",
    "exporter peer RTT ms",
    "post-copy page requests",
    "app outage ms",
    "app p99 after switch ms",
];

pub fn markdown(results: &[RunResult]) -> String {
    let mut s = format!("| {} |\n|{}\n", HEAD.join(" | "), "---|".repeat(HEAD.len()));
    for r in results {
        let _ = writeln!(s, "| {} |", cells(r).join(" | "));
    }
    s
}

pub fn csv(results: &[RunResult]) -> String {
    let q = |c: &str| {
        if c.contains([',', '"']) {
            format!("\"{}\"", c.replace('"', "\"\""))
        } else {
            c.to_string()
        }
    };
    let mut s = HEAD.iter().map(|h| q(h)).collect::<Vec<_>>().join(",") + "\n";
    for r in results {
        s += &(cells(r).iter().map(|c| q(c)).collect::<Vec<_>>().join(",") + "\n");
    }
    s
}

pub fn write(out: &Path, results: &[RunResult]) -> std::io::Result<()> {
    std::fs::write(out.join("results.md"), markdown(results))?;
    std::fs::write(out.join("results.csv"), csv(results))?;
    let json = serde_json::to_string_pretty(results).unwrap_or_default();
    std::fs::write(out.join("results.json"), json)
}
