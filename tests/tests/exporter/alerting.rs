//! The alerting chain with the real pieces: the exporter, Prometheus running the repository's
//! rules, Alertmanager, and a webhook. The time from the condition to the notification is
//! printed (a figure for the docs, not an assertion).

use std::time::{Duration, Instant};

use testkit::exporter::Exporter;
use testkit::prom::poll_until;
use testkit::prom::{rules_file, Alertmanager, Prometheus, Webhook};
use testkit::Host;

/// Alerts with `for: 1m` need a little over a minute at 1 s evaluation.
const WAIT: Duration = Duration::from_secs(150);

fn alerts_named(hook: &Webhook, name: &str, status: &str) -> Vec<serde_json::Value> {
    hook.notifications()
        .iter()
        .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["labels"]["alertname"] == name && a["status"] == status)
        .collect()
}

#[test]
fn libvirt_down_pages_and_resolves_through_alertmanager() {
    let dir = tempfile::Builder::new()
        .prefix("vmealert")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let lv_dir = dir.path().join("lv");
    let uri = Host::uri_for(&lv_dir);
    let exporter = Exporter::start(
        crate::BIN,
        &[
            "--libvirt.uri",
            &uri,
            "--libvirt.reconnect-max-backoff",
            "1s",
        ],
    );
    let hook = Webhook::start();
    let am = Alertmanager::start(dir.path(), hook.addr);
    let prom = Prometheus::start(dir.path(), &[exporter.addr], &rules_file(), Some(am.addr));
    let started = Instant::now();

    assert!(
        poll_until(WAIT, || !alerts_named(
            &hook,
            "VMMigrationLibvirtDown",
            "firing"
        )
        .is_empty()),
        "no VMMigrationLibvirtDown notification; webhook got {:?}; ALERTS: {:?}",
        hook.notifications(),
        prom.query("ALERTS")
    );
    let fired = started.elapsed();
    let a = &alerts_named(&hook, "VMMigrationLibvirtDown", "firing")[0];
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["instance"], exporter.addr.to_string());
    assert!(a["annotations"]["runbook_url"]
        .as_str()
        .is_some_and(|u| u.ends_with("VMMigrationLibvirtDown.md")));
    // No migration alert fires on a host with nothing migrating.
    let others: Vec<_> = hook
        .notifications()
        .iter()
        .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["labels"]["alertname"] != "VMMigrationLibvirtDown")
        .collect();
    assert!(others.is_empty(), "unexpected alerts: {others:?}");

    // libvirtd comes up: the exporter reconnects by itself and the alert resolves.
    let _daemon = Host::start(&lv_dir).expect("libvirtd");
    let up_at = Instant::now();
    assert!(
        poll_until(WAIT, || !alerts_named(
            &hook,
            "VMMigrationLibvirtDown",
            "resolved"
        )
        .is_empty()),
        "no resolved notification; webhook got {:?}",
        hook.notifications()
    );
    println!(
        "alerting: libvirt down → notification {:.1}s (for: 1m), libvirt up → resolved {:.1}s",
        fired.as_secs_f64(),
        up_at.elapsed().as_secs_f64()
    );
}
