//! Application probes through the real binary: targets from the config file follow their
//! domain (libvirt's test driver has one domain, `test`), probe a real HTTP server on loopback,
//! and show it going down and coming back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::poll_until;
use crate::support::{value, Exporter, BIN};
use testkit::http_server;

#[test]
fn config_targets_of_present_domains_are_probed_and_absent_ones_not() {
    let healthy = Arc::new(AtomicBool::new(true));
    let addr = http_server(healthy.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "app:\n  interval: 100ms\n  targets:\n    - domain: test\n      name: http\n      http: {{url: \"http://{addr}/healthz\"}}\n    - domain: test\n      name: tcp\n      tcp: {{address: \"{addr}\"}}\n    - domain: elsewhere\n      name: http\n      http: {{url: \"http://{addr}/\"}}\n"
        ),
    )
    .expect("write config");
    let e = Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--config.file",
            cfg.to_str().expect("utf-8 path"),
        ],
    );
    let uuid = "6695eb01-f6a4-8304-79aa-97f2502e193f";
    let up = |target: &str| {
        value(
            &e.metrics(),
            &format!("vm_migration_app_up{{domain=\"test\",uuid=\"{uuid}\",target=\"{target}\"}}"),
        )
    };
    assert!(
        poll_until(Duration::from_secs(20), || up("http") == Some(1.0)
            && up("tcp") == Some(1.0)),
        "{}",
        e.metrics()
    );
    let m = e.metrics();
    let probes = |m: &str, result: &str| {
        value(
            m,
            &format!("vm_migration_app_probes_total{{domain=\"test\",uuid=\"{uuid}\",target=\"http\",result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(probes(&m, "success") >= 1.0, "{m}");
    assert!(
        m.contains("vm_migration_app_probe_duration_seconds_bucket{"),
        "{m}"
    );
    assert!(
        !m.contains("domain=\"elsewhere\""),
        "a target whose domain is not here is not probed: {m}"
    );
    assert!(
        poll_until(Duration::from_secs(20), || e
            .metrics()
            .contains("vm_migration_collector_success{collector=\"app\"} 1")),
        "{}",
        e.metrics()
    );
    // The service fails: up 0, failures counted by result, an outage going on.
    healthy.store(false, Ordering::SeqCst);
    assert!(
        poll_until(Duration::from_secs(20), || up("http") == Some(0.0)),
        "{}",
        e.metrics()
    );
    assert!(
        poll_until(Duration::from_secs(20), || {
            let m = e.metrics();
            probes(&m, "status") >= 2.0
                && value(
                    &m,
                    &format!("vm_migration_app_outage_seconds{{domain=\"test\",uuid=\"{uuid}\",target=\"http\"}}"),
                )
                .is_some_and(|o| o > 0.0)
        }),
        "{}",
        e.metrics()
    );
    assert_eq!(up("tcp"), Some(1.0), "the TCP target still connects");
    healthy.store(true, Ordering::SeqCst);
    assert!(
        poll_until(Duration::from_secs(20), || {
            up("http") == Some(1.0)
            && value(
                &e.metrics(),
                &format!("vm_migration_app_outage_seconds{{domain=\"test\",uuid=\"{uuid}\",target=\"http\"}}"),
            ) == Some(0.0)
        }),
        "{}",
        e.metrics()
    );
}

#[test]
fn a_bad_app_section_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        "app:\n  targets:\n    - domain: test\n      name: http\n      http: {url: \"ftp://x/\"}\n",
    )
    .expect("write config");
    let out = std::process::Command::new(crate::support::BIN)
        .args(["--libvirt.uri", "test:///default", "--config.file"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("app.targets[0].http.url"), "{err}");
}
