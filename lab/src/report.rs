//! Results as a markdown table and CSV.

use std::fmt::Write as _;
use std::path::Path;

use crate::scenario::{Mode, RunResult};

/// The longest outage of the guest's service during the migration, from the exporter's record
/// (`vm_migration_last_app_outage_seconds` carries the same figure).
pub fn app_outage_seconds(r: &RunResult) -> Option<f64> {
    r.exporter_record.as_ref()?["app"].get(0)?["outage_seconds"].as_f64()
}

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
        // Next to it, what the guest's service showed (app guests): its longest outage as the
        // exporter's probes saw it.
        app_outage_seconds(r)
            .map(|s| format!("{:.0}", s * 1000.0))
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
        // The p99 latency of the guest's service from the switch-over (or the switch to
        // post-copy) to the end.
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
    "downtime ms (libvirt)",
    "app outage ms (exporter)",
    "data MiB",
    "iterations",
    "exporter outcome",
    "exporter verdicts",
    "guest memory after",
    "exporter peer RTT ms",
    "post-copy page requests",
    "app p99 after switch ms",
];

pub fn markdown(results: &[RunResult]) -> String {
    let mut s = format!("| {} |\n|{}\n", HEAD.join(" | "), "---|".repeat(HEAD.len()));
    for r in results {
        let _ = writeln!(s, "| {} |", cells(r).join(" | "));
    }
    s
}

/// One sentence per migration whose guest served HTTP: libvirt's downtime next to the outage
/// the guest's users saw, which is what the exporter's app probes are for.
pub fn app_summary(results: &[RunResult]) -> String {
    let mut s = String::new();
    for r in results
        .iter()
        .filter(|r| r.scenario.guest.app_port.is_some())
    {
        let name = &r.scenario.name;
        let downtime = r
            .libvirt_number("downtime")
            .map_or("no downtime figure".into(), |ms| {
                format!("paused the guest for {ms:.0} ms (its downtime)")
            });
        let total = r
            .libvirt_number("time_elapsed")
            .map(|ms| format!(" of a {:.1} s migration", ms / 1000.0))
            .unwrap_or_default();
        let outage = match app_outage_seconds(r) {
            Some(o) if o <= 0.0 => "its HTTP service, probed by the exporter every 20 ms while it \
migrated, answered every probe in time (vm_migration_last_app_outage_seconds 0)"
                .to_string(),
            Some(o) => format!(
                "its HTTP service, probed by the exporter every 20 ms while it migrated, did not answer for {:.0} ms \
(vm_migration_last_app_outage_seconds)",
                o * 1000.0
            ),
            None => "the exporter recorded no outage figure for its HTTP service".into(),
        };
        let _ = writeln!(
            s,
            "{name} ({}): libvirt {downtime}{total}; {outage}.",
            r.outcome
        );
    }
    s
}

/// Where to go from the lab: the exporter on a real host, Prometheus, the rules and the boards.
/// `repo` is the checkout holding `dashboards/` and `alerts/` (when the binary runs from one);
/// `metrics_url` where this run's exporter served its metrics.
pub fn next_steps(repo: Option<&Path>, metrics_url: Option<&str>) -> String {
    let at = |rel: &str| match repo {
        Some(r) => r.join(rel).display().to_string(),
        None => rel.to_string(),
    };
    let boards = repo
        .and_then(|r| std::fs::read_dir(r.join("dashboards")).ok())
        .map(|d| {
            let mut names: Vec<String> = d
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".json"))
                .collect();
            names.sort();
            names.join(", ")
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "*.json".into());
    let mut s = String::from("Next steps\n");
    if let Some(u) = metrics_url {
        let _ = writeln!(
            s,
            "- While the guest migrated, the exporter served {u} (it stopped with the run)."
        );
    }
    let _ = writeln!(
        s,
        "- On each hypervisor: vm-migration-exporter --libvirt.uri qemu:///system \
(metrics at http://HOST:9745/metrics; packages and Helm chart: README.md)."
    );
    let _ = writeln!(
        s,
        "- Prometheus, in prometheus.yml (the rules select this job name):\n  \
scrape_configs: [{{job_name: vm-migration-exporter, static_configs: [{{targets: ['HOST:9745']}}]}}]"
    );
    let _ = writeln!(
        s,
        "- Alert and recording rules: rule_files: ['{}']",
        at("alerts/vm-migration.rules.yml")
    );
    let _ = writeln!(
        s,
        "- Grafana boards in {}: {boards}; import each (Dashboards → New → Import) and pick \
your Prometheus for its datasource variable.",
        at("dashboards")
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn app_run(outage: Option<f64>) -> RunResult {
        let mut s = Scenario::idle("smoke-idle");
        s.guest.app_port = Some(18480);
        let completed = [("time_elapsed", "780"), ("downtime", "24")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RunResult {
            scenario: s,
            outcome: "completed".into(),
            virsh_output: String::new(),
            libvirt_completed: Some(completed),
            observations: Vec::new(),
            exporter_record: outage.map(
                |o| serde_json::json!({"outcome": "completed", "app": [{"outage_seconds": o}]}),
            ),
            exporter_metrics: String::new(),
            wall_seconds: 3.0,
            trace: Default::default(),
            guest_status: None,
            integrity: Some("ok".into()),
            ping_rtt_ms: None,
            forecast: None,
            app_before: None,
            app_after: None,
            ended_s: Some(2.7),
            switchover_s: None,
            job_started_s: None,
            metrics_url: None,
            app_probes: Vec::new(),
        }
    }

    #[test]
    fn the_app_outage_sits_next_to_libvirts_downtime() {
        let r = app_run(Some(0.142));
        let md = markdown(std::slice::from_ref(&r));
        let head: Vec<&str> = md.lines().next().unwrap_or("").split(" | ").collect();
        let at = |h: &str| head.iter().position(|c| c.trim_matches(['|', ' ']) == h);
        let downtime = at("downtime ms (libvirt)").expect("downtime column");
        assert_eq!(at("app outage ms (exporter)"), Some(downtime + 1), "{md}");
        let row: Vec<&str> = md.lines().nth(2).unwrap_or("").split(" | ").collect();
        assert_eq!((row[downtime], row[downtime + 1]), ("24", "142"), "{md}");
        let said = app_summary(&[r, app_run(None)]);
        assert!(
            said.contains("paused the guest for 24 ms")
                && said.contains("did not answer for 142 ms"),
            "{said}"
        );
        assert!(said.contains("recorded no outage figure"), "{said}");
        // Guests without a service say nothing.
        assert_eq!(
            app_summary(&[RunResult {
                scenario: Scenario::idle("plain"),
                ..app_run(Some(0.1))
            }]),
            ""
        );
    }

    #[test]
    fn next_steps_name_the_boards_the_rules_and_the_scrape_job() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace");
        let s = next_steps(Some(repo), Some("http://127.0.0.1:4000/metrics"));
        assert!(s.contains("served http://127.0.0.1:4000/metrics"), "{s}");
        assert!(s.contains("job_name: vm-migration-exporter"), "{s}");
        assert!(
            s.contains(
                &repo
                    .join("alerts/vm-migration.rules.yml")
                    .display()
                    .to_string()
            ),
            "{s}"
        );
        // Every board in the checkout, by name.
        for e in std::fs::read_dir(repo.join("dashboards")).expect("dashboards/") {
            let n = e.expect("entry").file_name().into_string().expect("utf-8");
            if n.ends_with(".json") {
                assert!(s.contains(&n), "{n} missing from {s}");
            }
        }
        assert!(next_steps(None, None).contains("rule_files: ['alerts/vm-migration.rules.yml']"));
    }
}
