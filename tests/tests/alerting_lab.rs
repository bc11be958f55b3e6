//! Alerting end to end on real migrations: Prometheus (1 s scrape and evaluation, the
//! repository's rules) scrapes the exporter watching the lab's source host and sends alerts to
//! Alertmanager, which calls a webhook in this test. A migration that will not converge pages
//! with its domain; a converging one does not. The time from the start of the migration to the
//! notification is printed for the docs.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use migration_lab::guest::Pattern;
use migration_lab::prom::{poll_until, rules_file, Alertmanager, Prometheus, Webhook};
use migration_lab::scenario::Scenario;
use migration_lab::Lab;
use system_tests::{exporter_binary, lab_dir, one_lab_at_a_time, scratch};

fn not_converging(hook: &Webhook, domain: &str) -> Vec<serde_json::Value> {
    hook.notifications()
        .iter()
        .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| {
            a["labels"]["alertname"] == "VMMigrationNotConverging"
                && a["labels"]["domain"] == domain
        })
        .collect()
}

#[test]
fn non_converging_migration_pages_with_its_domain_and_converging_does_not() {
    let _one = one_lab_at_a_time();
    let dir = scratch("alerting");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let hook = Webhook::start();
    let am = Alertmanager::start(&dir, hook.addr);
    let prom = Prometheus::start(&dir, &[port], &rules_file(), Some(am.addr));
    let bin = exporter_binary();
    let mut lab = Lab::up(&lab_dir(), Some(&bin), &|m| eprintln!("lab: {m}")).expect("lab up");
    lab.exporter_listen = Some(port);

    // A loaded guest that converges: no page.
    let converging = Scenario::stressed("alert-converging", 10, Pattern::Seq, 30);
    let r = lab.run(&converging, &dir, &|_| {}).expect("converging run");
    assert_eq!(r.outcome, "completed", "{}", r.virsh_output);

    // 150 MiB/s of random writes against 30 MiB/s: pages once stalled for 30 s.
    let mut stuck = Scenario::stressed("alert-stuck", 150, Pattern::Random, 30);
    stuck.deadline = Duration::from_secs(90);
    let started = Instant::now();
    let paged_at = std::sync::Mutex::new(None);
    let r = lab
        .run(&stuck, &dir, &|_| {
            let mut p = paged_at.lock().unwrap_or_else(|e| e.into_inner());
            if p.is_none() && !not_converging(&hook, "alert-stuck").is_empty() {
                *p = Some(started.elapsed());
            }
        })
        .expect("stuck run");
    assert_eq!(r.outcome, "aborted", "{}", r.virsh_output);
    assert!(
        poll_until(Duration::from_secs(30), || !not_converging(
            &hook,
            "alert-stuck"
        )
        .is_empty()),
        "no VMMigrationNotConverging notification for alert-stuck; webhook got {:?}",
        hook.notifications()
    );
    let a = &not_converging(&hook, "alert-stuck")[0];
    assert_eq!(a["labels"]["severity"], "critical");
    assert!(
        matches!(a["labels"]["state"].as_str(), Some("stalled" | "diverging")),
        "{a}"
    );
    assert!(
        a["annotations"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("alert-stuck")),
        "{a}"
    );
    assert!(
        not_converging(&hook, "alert-converging").is_empty(),
        "the converging migration must not page"
    );
    let paged = paged_at.lock().map(|p| *p).unwrap_or(None);
    println!(
        "alerting: migration start → VMMigrationNotConverging notification: {}",
        paged
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "after the abort".into())
    );
    drop(prom);
}
