//! Alerting end to end on real migrations: Prometheus (1 s scrape and evaluation, the
//! repository's rules) scrapes the exporter watching the lab's source host and sends alerts to
//! Alertmanager, which calls a webhook in this test. A migration that will not converge pages
//! with its domain (and is aborted a `for:` and a few seconds after its page); a converging one
//! does not. The time from the start of the migration to the notification is printed for the
//! docs.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use migration_lab::guest::Pattern;
use migration_lab::prom::{rules_file, Alertmanager, Prometheus, Webhook};
use migration_lab::scenario::Scenario;
use migration_lab::Lab;
use system_tests::{exporter_bin, lab_dir, one_lab_at_a_time, scratch};

/// The `for:` of VMMigrationNotConverging in the rules Prometheus runs here.
fn rule_for() -> Duration {
    let rules = std::fs::read_to_string(rules_file()).expect("the rules file");
    let rule = rules
        .split("- alert: ")
        .find(|r| r.starts_with("VMMigrationNotConverging"))
        .expect("VMMigrationNotConverging in the rules");
    let secs = rule
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("for: ")?
                .strip_suffix('s')?
                .parse()
                .ok()
        })
        .expect("a `for:` in seconds");
    Duration::from_secs(secs)
}

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
    let bin = exporter_bin!();
    let mut lab = Lab::up(&lab_dir(), Some(&bin), &|m| eprintln!("lab: {m}")).expect("lab up");
    lab.exporter_listen = Some(port);

    // A loaded guest that converges: no page.
    let converging = Scenario::stressed("alert-converging", 10, Pattern::Seq, 30);
    let r = lab.run(&converging, &dir, &|_| {}).expect("converging run");
    assert_eq!(r.outcome, "completed", "{}", r.virsh_output);

    // Guests that write several times faster than their capped link sends, with different
    // rates, patterns and pass lengths: 8 s passes; 1 s passes whose sampled remainders swing
    // (a verdict that must not flap every pass); a hot set. Each must page while it
    // runs. It is aborted once it has run this long after its page (at its 75 s deadline
    // only if it has not paged): a second alert series (labels that changed with the verdict's detail)
    // would have been pending before the abort for longer than the rule's `for:`, plus an
    // evaluation and Alertmanager's group_wait (1 s each here), so it would have been notified.
    let watch_after_page = rule_for() + Duration::from_secs(5);
    let mut stuck = Vec::new();
    for (name, mbps, pattern, cap) in [
        ("alert-stuck", 150, Pattern::Random, 30),
        ("alert-stuck-fast-passes", 150, Pattern::Random, 100),
        ("alert-stuck-hot", 200, Pattern::Hot, 50),
    ] {
        let mut s = Scenario::stressed(name, mbps, pattern, cap);
        s.deadline = Duration::from_secs(75);
        stuck.push(s);
    }
    for s in &stuck {
        let name = s.name.as_str();
        let started = Instant::now();
        let paged_at = std::sync::Mutex::new(None);
        let paged = || *paged_at.lock().unwrap_or_else(|e| e.into_inner());
        let r = lab
            .run_until(
                s,
                &dir,
                &|_| {
                    let mut p = paged_at.lock().unwrap_or_else(|e| e.into_inner());
                    if p.is_none() && !not_converging(&hook, name).is_empty() {
                        *p = Some(started.elapsed());
                    }
                },
                &|| paged().is_some_and(|p| started.elapsed() >= p + watch_after_page),
            )
            .unwrap_or_else(|e| panic!("{name} run: {e}"));
        assert_eq!(r.outcome, "aborted", "{name}: {}", r.virsh_output);
        let paged = paged();
        assert!(
            paged.is_some(),
            "{name}: no VMMigrationNotConverging notification while it ran; verdicts {:?}; webhook got {:?}",
            r.verdicts_seen(),
            hook.notifications()
        );
        let a = &not_converging(&hook, name)[0];
        assert_eq!(a["labels"]["severity"], "critical");
        assert!(
            a["labels"].get("state").is_none(),
            "the verdict's detail is no label of the alert: {a}"
        );
        assert!(
            a["annotations"]["description"]
                .as_str()
                .is_some_and(|d| d.contains(name)),
            "{a}"
        );
        // One alert per migration: however the detail changed, Alertmanager saw one series.
        let distinct: std::collections::BTreeSet<String> = not_converging(&hook, name)
            .iter()
            .map(|a| a["labels"].to_string())
            .collect();
        assert_eq!(distinct.len(), 1, "{name}: {distinct:?}");
        println!(
            "alerting: {name}: migration start → VMMigrationNotConverging notification: {:.1} s (run {:.1} s)",
            paged.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
            r.wall_seconds
        );
    }
    assert!(
        not_converging(&hook, "alert-converging").is_empty(),
        "the converging migration must not page"
    );
    drop(prom);
}
