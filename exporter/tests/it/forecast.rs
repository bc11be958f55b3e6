//! The forecast through the real binary on libvirt's test driver (no dirty rates there: the
//! model itself is unit-tested, and proven against real migrations in the lab): the API's
//! what-ifs and their validation, the metrics, the landing page, the opt-in flags.

use std::process::Command;
use std::time::Duration;

use crate::support::poll_until;
use crate::support::{value, Exporter, BIN};

const WAIT: Duration = Duration::from_secs(30);

fn json(e: &Exporter, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = e.get(path);
    let v = serde_json::from_str(&body).unwrap_or_else(|err| panic!("{path}: {err}: {body}"));
    (status, v)
}

/// Polls until the forecast lists the test driver's domain.
fn forecast_of_test_domain(e: &Exporter) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    assert!(
        poll_until(WAIT, || {
            last = json(e, "/api/v1/forecast").1;
            last["domains"][0]["domain"] == "test"
        }),
        "no forecast of the test domain: {last}; log: {:?}",
        e.log()
    );
    last
}

#[test]
fn the_api_answers_what_ifs_and_refuses_bad_ones() {
    let e = Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--forecast.bandwidth",
            "40MiB",
        ],
    );
    let r = forecast_of_test_domain(&e);
    let d = &r["domains"][0];
    // No dirty rate on the test driver: unknown, on the assumed bandwidth.
    assert_eq!(d["verdict"], "unknown", "{r}");
    assert_eq!(d["path"]["limit"], "fallback", "{r}");
    assert_eq!(d["path"]["rate"], 40.0 * 1048576.0, "{r}");
    assert_eq!(r["calculations"], false);
    assert_eq!(r["evacuation"]["unknown"][0], "test", "{r}");
    assert!(r["evacuation"]["total_seconds"].is_null(), "{r}");

    let (status, r) = json(&e, "/api/v1/forecast?bandwidth=100MiB&concurrency=3");
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["what_if"]["bandwidth_bytes"], 104857600.0);
    assert_eq!(r["what_if"]["concurrency"], 3);
    assert_eq!(r["domains"][0]["path"]["limit"], "cap", "{r}");
    assert_eq!(r["evacuation"]["concurrency"], 3);

    for (query, says) in [
        ("peer=nope", "peer 'nope' is not a known peer"),
        ("bandwidth=fast", "bandwidth: 'fast' is not a bandwidth"),
        ("bandwidth=0MiB", "out of range"),
        ("concurrency=0", "from 1 to 64"),
        ("concurrency=65", "from 1 to 64"),
        ("limit=3", "parameters are peer, bandwidth and concurrency"),
    ] {
        let (status, body) = json(&e, &format!("/api/v1/forecast?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{query}: {msg}");
    }
    // The metrics: one verdict state set for the domain, the collector reporting success.
    let m = e.metrics();
    assert_eq!(
        value(&m, "vm_migration_collector_success{collector=\"forecast\"}"),
        Some(1.0),
        "{m}"
    );
    let line = |state: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("vm_migration_forecast_verdict{")
                    && l.contains("domain=\"test\"")
                    && l.contains(&format!("state=\"{state}\""))
            })
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
    };
    assert_eq!(line("unknown"), Some(1.0), "{m}");
    for s in ["converges", "stalls", "diverges"] {
        assert_eq!(line(s), Some(0.0), "{s}: {m}");
    }
    // Unknown: no duration, no evacuation time (absent, not 0).
    assert!(
        !m.contains("vm_migration_forecast_duration_seconds{"),
        "{m}"
    );
    assert!(
        !m.contains("vm_migration_forecast_evacuation_seconds"),
        "{m}"
    );
    let (status, page) = e.get("/");
    assert_eq!(status, 200);
    assert!(
        page.contains("Forecast: if migrated now")
            && page.contains("<td>test</td><td>unknown</td>"),
        "{page}"
    );
}

#[test]
fn a_configured_peer_is_a_what_if_and_the_collector_can_be_off() {
    let e = Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--probe.peer",
            "dst=127.0.0.1",
        ],
    );
    forecast_of_test_domain(&e);
    for peer in ["dst", "127.0.0.1"] {
        let (status, r) = json(&e, &format!("/api/v1/forecast?peer={peer}"));
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["domains"][0]["peer"], "dst", "{r}");
    }
    let off = Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--no-collector.forecast",
        ],
    );
    let (status, r) = json(&off, "/api/v1/forecast");
    assert_eq!(status, 404);
    assert!(
        r["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--no-collector.forecast"),
        "{r}"
    );
    assert!(!off.metrics().contains("vm_migration_forecast_"));
}

/// With the opt-in on a driver that cannot calculate dirty rates: a warning naming the call,
/// and the forecast goes on read-only.
#[test]
fn calculations_that_libvirt_refuses_are_logged_and_the_forecast_goes_on() {
    let e = Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--forecast.enable",
            "--forecast.libvirt.uri",
            "test:///default",
        ],
    );
    let r = forecast_of_test_domain(&e);
    assert_eq!(r["calculations"], true, "{r}");
    assert!(
        poll_until(WAIT, || e
            .log()
            .iter()
            .any(|l| l.contains("cannot start a dirty-rate calculation"))),
        "{:?}",
        e.log()
    );
    let m = e.metrics();
    assert_eq!(
        value(&m, "vm_migration_collector_success{collector=\"forecast\"}"),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn bad_forecast_flags_exit_2_with_one_line_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--forecast.bandwidth", "40"], "--forecast.bandwidth"),
        (&["--forecast.bandwidth", "40 MiB"], "--forecast.bandwidth"),
        (&["--forecast.bandwidth", "0MiB"], "--forecast.bandwidth"),
        (&["--forecast.interval", "5s"], "--forecast.interval"),
        (&["--forecast.interval", "often"], "--forecast.interval"),
        (
            &["--forecast.max-concurrency", "0"],
            "--forecast.max-concurrency",
        ),
        (&["--forecast.enable", "maybe"], "--forecast.enable"),
        (
            &["--forecast.libvirt.uri", "qemu:///system"],
            "--forecast.libvirt.uri",
        ),
        (
            &["--forecast.enable", "--no-collector.forecast"],
            "--forecast.enable",
        ),
    ];
    for (args, names) in cases {
        let out = Command::new(BIN).args(*args).output().expect("run binary");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(names), "{args:?}: should name {names}: {err}");
    }
}
