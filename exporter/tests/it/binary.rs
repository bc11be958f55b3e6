//! The real binary on libvirt's test driver: serving, content negotiation, golden output,
//! promtool, bad input, SIGTERM, and a libvirtd that is missing (a real libvirtd that comes, goes
//! and freezes is a system test: tests/tests/exporter/libvirtd_faults.rs).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{normalise, poll_until, value, Exporter, BIN};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn test_driver_is_up_lists_domains_and_shows_no_jobs() {
    let e = Exporter::start(BIN, &["--libvirt.uri", "test:///default"]);
    e.wait_ready(WAIT);
    // Ready means one round ran; it may have run before the connection opened.
    let mut m = String::new();
    assert!(
        poll_until(WAIT, || {
            m = e.metrics();
            value(&m, "vm_migration_libvirt_up") == Some(1.0)
                && value(&m, "vm_migration_collector_success{collector=\"jobs\"}") == Some(1.0)
        }),
        "{m}"
    );
    assert_eq!(
        value(&m, "vm_migration_domains_active"),
        Some(1.0),
        "test:///default runs one domain"
    );
    assert_eq!(
        value(&m, "vm_migration_collector_success{collector=\"jobs\"}"),
        Some(1.0)
    );
    assert!(
        !m.contains("vm_migration_job_active{"),
        "no job series without a job"
    );
    assert!(
        !m.contains("vm_migration_libvirt_call_errors_total{"),
        "no failed calls: {m}"
    );
    assert_eq!(e.get("/-/healthy"), (200, "OK\n".to_string()));
    let (status, page) = e.get("/");
    assert_eq!(status, 200);
    assert!(
        page.contains("href=\"/metrics\"") && page.contains("connected"),
        "{page}"
    );
    assert_eq!(e.get("/nope").0, 404);
}

#[test]
fn content_negotiation_openmetrics_and_text() {
    let e = Exporter::start(BIN, &["--libvirt.uri", "test:///default"]);
    e.wait_ready(WAIT);
    let (_, ct, om) = e.get_accept(
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"),
    );
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE vm_migration_finished counter"));
    let (_, ct, text) = e.get_accept("/metrics", None);
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE vm_migration_finished_total counter"));
}

#[test]
fn custom_telemetry_path() {
    let e = Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--web.telemetry-path",
            "/x/metrics",
        ],
    );
    e.wait_ready(WAIT);
    assert_eq!(e.get("/metrics").0, 404);
    assert!(e.get("/x/metrics").1.contains("vm_migration_libvirt_up"));
    assert!(e.get("/").1.contains("href=\"/x/metrics\""));
}

/// The fixture `--path.procfs` and `--path.sysfs` trees (three NICs).
pub fn fixture_paths() -> [String; 4] {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    [
        "--path.procfs".into(),
        base.join("proc").display().to_string(),
        "--path.sysfs".into(),
        base.join("sys").display().to_string(),
    ]
}

#[test]
fn golden_metrics_against_the_test_driver() {
    // NICs from the fixture trees: the machine's own belong to the machine, not the exporter.
    let paths = fixture_paths();
    let mut args = vec!["--libvirt.uri", "test:///default"];
    args.extend(paths.iter().map(String::as_str));
    let e = Exporter::start(BIN, &args);
    e.wait_ready(WAIT);
    // Connected, and every collector that runs by itself has reported a good round (the first
    // may run before the connection is open; the next one follows it).
    let mut m = String::new();
    assert!(
        poll_until(WAIT, || {
            m = e.metrics();
            value(&m, "vm_migration_libvirt_up") == Some(1.0)
                && ["jobs", "netdev", "discovery", "forecast"].iter().all(|c| {
                    value(
                        &m,
                        &format!("vm_migration_collector_success{{collector=\"{c}\"}}"),
                    ) == Some(1.0)
                })
        }),
        "{m}"
    );
    insta::assert_snapshot!("metrics_test_driver", normalise(&m));
}

/// An exporter on the test driver probing 127.0.0.1 every 100 ms with `probes` (TCP to a
/// listener that lives as long as the returned one), plus `extra` flags.
fn probing_self(probes: &str, extra: &[&str]) -> (std::net::TcpListener, Exporter) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port().to_string();
    let mut args = vec![
        "--libvirt.uri",
        "test:///default",
        "--probe.peer",
        "self=127.0.0.1",
        "--probe.peer-probes",
        probes,
        "--probe.tcp-port",
        &port,
        "--probe.interval",
        "100ms",
    ];
    args.extend_from_slice(extra);
    let e = Exporter::start(BIN, &args);
    (listener, e)
}

#[test]
fn promtool_accepts_the_output() {
    // With a peer probe (TCP to a local listener) so the peer families are checked too: ICMP
    // probes fill the same families, and need a ping socket or CAP_NET_RAW (the system tests
    // probe over ICMP: tests/tests/exporter/netns.rs).
    let (_listener, e) = probing_self("tcp", &[]);
    e.wait_ready(WAIT);
    let mut m = String::new();
    let probed = poll_until(Duration::from_secs(15), || {
        m = e.metrics();
        value(
            &m,
            "vm_migration_peer_up{peer=\"self\",probe=\"tcp\",origin=\"config\"}",
        ) == Some(1.0)
    });
    assert!(probed, "the probe of 127.0.0.1 should succeed:\n{m}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus) must be installed: scripts/install-deps.sh");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(m.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}");
    assert!(said.trim().is_empty(), "promtool lint findings: {said}");
}

#[test]
fn no_collector_flags_turn_collectors_off() {
    // A probe of a local listener: once its rounds show, every enabled collector has run.
    let (_listener, e) = probing_self(
        "tcp",
        &[
            "--no-collector.netdev",
            "--collector.discovery",
            "--no-collector.discovery",
        ],
    );
    e.wait_ready(WAIT);
    let mut m = String::new();
    assert!(
        poll_until(WAIT, || {
            m = e.metrics();
            value(&m, "vm_migration_collector_success{collector=\"probe\"}") == Some(1.0)
        }),
        "the probe collector should report a round: {m}"
    );
    assert_eq!(
        value(&m, "vm_migration_collector_success{collector=\"jobs\"}"),
        Some(1.0)
    );
    for off in ["netdev", "discovery"] {
        assert!(
            !m.contains(&format!("collector=\"{off}\"")),
            "{off} is off (the last of --collector/--no-collector wins): {m}"
        );
    }
    assert!(!m.contains("vm_migration_network_"), "{m}");
    let help = Command::new(BIN).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    for name in ["jobs", "netdev", "discovery", "probe"] {
        assert!(
            help.contains(&format!("--collector.{name}"))
                && help.contains(&format!("--no-collector.{name}")),
            "--help lists the flags of {name}"
        );
    }
}

#[test]
fn missing_libvirtd_serves_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = testkit::Host::uri_for(dir.path());
    let e = Exporter::start(BIN, &["--libvirt.uri", &uri]);
    e.wait_ready(WAIT);
    let m = e.metrics();
    assert_eq!(value(&m, "vm_migration_libvirt_up"), Some(0.0), "{m}");
    assert_eq!(
        value(&m, "vm_migration_collector_success{collector=\"jobs\"}"),
        Some(0.0)
    );
}

/// Runs the binary with `args`; returns (exit code, stderr).
fn run_bad(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN).args(args).output().expect("run binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_2_with_one_line_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--sample.interval", "0s"], "--sample.interval"),
        (&["--sample.interval", "fast"], "--sample.interval"),
        (
            &["--metrics.last-retention", "a day"],
            "--metrics.last-retention",
        ),
        (&["--web.listen-address", "nope"], "--web.listen-address"),
        (&["--web.telemetry-path", "metrics"], "--web.telemetry-path"),
        // Route patterns the router would panic on: a panic is exit 101, not 2.
        (&["--web.telemetry-path", "/m{"], "--web.telemetry-path"),
        (&["--web.telemetry-path", "/:x"], "--web.telemetry-path"),
        (&["--web.telemetry-path", "/*x"], "--web.telemetry-path"),
        (
            &["--web.telemetry-path", "/metrics?x"],
            "--web.telemetry-path",
        ),
        (&["--web.telemetry-path", "//"], "--web.telemetry-path"),
        (&["--log.format", "xml"], "--log.format"),
        (&["--no-such-flag"], "--no-such-flag"),
        (&["--probe.peer", "dst=nowhere"], "--probe.peer"),
        (
            &["--probe.peer", "10.0.0.2", "--probe.peer-probes", "tcp"],
            "--probe.tcp-port",
        ),
        (&["--probe.peer-probes", "udp"], "--probe.peer-probes"),
        (&["--probe.max-concurrency", "0"], "--probe.max-concurrency"),
        (&["--probe.timeout", "0s"], "--probe.timeout"),
    ];
    for (args, names) in cases {
        let (code, err) = run_bad(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one line, got {err}"
        );
        assert!(
            err.contains(names),
            "{args:?}: message should name {names}: {err}"
        );
    }
}

#[test]
fn bad_config_files_exit_2_naming_file_and_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("typo.yml", "sample:\n  intervall: 1s\n", "intervall"),
        ("badduration.yml", "sample:\n  interval: soon\n", "interval"),
        ("notyaml.yml", "libvirt: [unclosed\n", "libvirt"),
        ("toplevel.yml", "peers: []\n", "peers"),
    ];
    for (name, body, names) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("write config");
        let p = path.to_string_lossy().to_string();
        let (code, err) = run_bad(&["--config.file", &p]);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line, got {err}");
        assert!(err.contains(&p), "{name}: should name the file: {err}");
        assert!(err.contains(names), "{name}: should name {names}: {err}");
    }
    let missing = dir.path().join("missing.yml").to_string_lossy().to_string();
    let (code, err) = run_bad(&["--config.file", &missing]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&missing) && err.contains("--config.file"),
        "{err}"
    );
}

#[test]
fn config_file_sets_uri_and_flags_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yml");
    std::fs::write(&path, "libvirt:\n  uri: test:///default\n").expect("write");
    let p = path.to_string_lossy().to_string();
    let e = Exporter::start(BIN, &["--config.file", &p]);
    e.wait_ready(WAIT);
    assert!(
        e.get("/").1.contains("test:///default"),
        "config file URI used"
    );
    let e2 = Exporter::start(
        BIN,
        &["--config.file", &p, "--libvirt.uri", "test:///default?x=1"],
    );
    e2.wait_ready(WAIT);
    assert!(
        e2.get("/").1.contains("test:///default?x=1"),
        "flag wins over file"
    );
}

#[test]
fn help_explains_every_flag_and_version_prints() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--web.listen-address",
        "--web.telemetry-path",
        "--libvirt.uri",
        "--libvirt.reconnect-max-backoff",
        "--sample.interval",
        "--sample.idle-interval",
        "--sample.completion-grace",
        "--log.level",
        "--log.format",
        "--config.file",
        "--trace.path",
        "--storage.path",
        "--storage.retention-size",
        "--metrics.last-retention",
        "--web.config.file",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(
        help.contains("9745") && help.contains("9177"),
        "help explains the port choice"
    );
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("vm-migration-exporter {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn port_in_use_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = holder.local_addr().expect("addr").to_string();
    let (code, err) = run_bad(&[
        "--libvirt.uri",
        "test:///default",
        "--storage.path",
        "",
        "--web.listen-address",
        &addr,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--web.listen-address") && err.contains(&addr),
        "{err}"
    );
}

/// An idle exporter stops at once, not after the sampler's idle interval.
#[test]
fn sigterm_exits_within_10s() {
    let mut e = Exporter::start(BIN, &["--libvirt.uri", "test:///default"]);
    e.wait_ready(WAIT);
    let t0 = std::time::Instant::now();
    let st = e.terminate(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "exit status {st:?} after {:?}",
        t0.elapsed()
    );
}
