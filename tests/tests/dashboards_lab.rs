//! The dashboards against a real Prometheus that scraped a lab migration: every panel returns
//! data, and the panels are drawn to PNG (VME_SCREENSHOT_DIR) so the docs show what the boards
//! show — no Grafana server exists here.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use migration_lab::guest::Pattern;
use migration_lab::prom::{rules_file, Prometheus};
use migration_lab::scenario::{Mode, Scenario};
use migration_lab::{plots, Lab};
use system_tests::{exporter_bin, lab_dir, one_lab_at_a_time, scratch};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Grafana's variables, as a user with "All" selected and a 5-minute range would have them.
fn fill(expr: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("$__range", "5m")
        .replace("$host", ".*")
        .replace("$uuid", ".*")
        .replace("$cluster", ".*")
        .replace("$job", ".*")
}

fn series(result: &[serde_json::Value]) -> Vec<(String, Vec<(f64, f64)>)> {
    result
        .iter()
        .map(|s| {
            let name = s["metric"].as_object().map(|m| {
                m.iter()
                    .filter(|(k, _)| *k != "instance" && *k != "job" && *k != "uuid")
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let pts = s["values"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse::<f64>().ok()?)))
                        .collect()
                })
                .unwrap_or_default();
            (name.unwrap_or_default(), pts)
        })
        .collect()
}

#[test]
fn every_dashboard_panel_returns_data_from_a_real_migration() {
    let _one = one_lab_at_a_time();
    let dir = scratch("dashboards");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let prom = Prometheus::start(&dir, &[port], &rules_file(), None);
    let bin = exporter_bin!();
    let mut lab = Lab::up(&lab_dir(), Some(&bin), &|m| eprintln!("lab: {m}")).expect("lab up");
    lab.exporter_listen = Some(port);
    let start = now();
    // A converging migration (duration and downtime histograms) ...
    // (with the guest's HTTP service, probed by the exporter: the Application QoS panels) ...
    let mut converging = Scenario::stressed("dash-converging", 10, Pattern::Seq, 30);
    converging.guest.app_port = Some(migration_lab::presets::CI_APP_PORT);
    let r = lab.run(&converging, &dir, &|_| {}).expect("run");
    assert_eq!(r.outcome, "completed", "{}", r.virsh_output);
    // ... a stuck one with auto-converge (verdicts, throttle, predicted vs max downtime), aborted
    // at its deadline ...
    let mut stuck = Scenario::stressed("dash-stuck", 150, Pattern::Random, 30);
    stuck.auto_converge = true;
    stuck.deadline = Duration::from_secs(40);
    // Over the delay link, so the peer RTT panels show the path's latency.
    stuck.rtt_ms = Some(migration_lab::presets::RTT_METRO_MS);
    let r = lab.run(&stuck, &dir, &|_| {}).expect("run");
    assert_eq!(r.outcome, "aborted", "{}", r.virsh_output);
    // ... and one rescued by post-copy (phase, page requests). Post-copy together with
    // auto-converge failed in QEMU 7.2 here ("domain is not running"), so they run apart.
    let mut post = Scenario::stressed("dash-postcopy", 150, Pattern::Random, 30);
    post.mode = Mode::Postcopy;
    post.postcopy_after = Some(Duration::from_secs(8));
    post.deadline = Duration::from_secs(90);
    let r = lab.run(&post, &dir, &|_| {}).expect("run");
    assert_eq!(r.outcome, "completed", "{}", r.virsh_output);
    drop(lab);
    let end = now();

    let shots = std::env::var("VME_SCREENSHOT_DIR").ok();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut empty_panels = Vec::new();
    let mut empty_queries = Vec::new();
    for file in [
        "fleet-overview.json",
        "migration-detail.json",
        "network-path.json",
    ] {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join(file)).expect("dashboard"))
                .expect("JSON");
        // Text variables (the user's own PromQL) hold their default.
        let texts: Vec<(String, String)> = d["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .filter(|v| v["type"] == "textbox")
            .map(|v| {
                let name = v["name"].as_str().unwrap_or_default();
                (
                    format!("${name}"),
                    v["query"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        for p in d["panels"].as_array().expect("panels") {
            let title = p["title"].as_str().unwrap_or("?");
            // Rows only group panels.
            if p["type"] == "row" {
                continue;
            }
            let mut drawn = Vec::new();
            for t in p["targets"].as_array().expect("targets") {
                let expr = texts.iter().fold(
                    t["expr"].as_str().expect("expr").to_string(),
                    |e, (k, v)| e.replace(k, v),
                );
                let expr = fill(&expr);
                let result = prom.query_range(&expr, start, end);
                if result.is_empty() {
                    empty_queries.push(format!("{file}: {title}: {expr}"));
                }
                drawn.extend(series(&result));
            }
            // NaN (a quantile of no observations) is no data either.
            drawn
                .iter_mut()
                .for_each(|(_, pts)| pts.retain(|(_, v)| v.is_finite()));
            if drawn.iter().all(|(_, pts)| pts.is_empty()) {
                empty_panels.push(format!("{file}: {title}"));
                continue;
            }
            if let Some(dir) = &shots {
                let out = Path::new(dir).join(file.trim_end_matches(".json"));
                std::fs::create_dir_all(&out).expect("screenshot dir");
                let name: String = title
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_lowercase()
                        } else {
                            '-'
                        }
                    })
                    .collect();
                plots::timeseries_png(&out.join(format!("{name}.png")), title, &drawn)
                    .expect("png");
            }
        }
    }
    for q in &empty_queries {
        println!("dashboards: query with no data in this run: {q}");
    }
    assert!(
        empty_panels.is_empty(),
        "panels without data: {empty_panels:#?}"
    );
}
