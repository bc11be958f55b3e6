//! The standard `process_*` metrics describe the exporter's own process: checked against what
//! the test sees of that process from outside (its pid's `/proc` entry, the test's clock).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{value, Exporter, BIN};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn process_metrics_describe_the_exporter_process() {
    let before = now();
    let e = Exporter::start(BIN, &["--libvirt.uri", "test:///default"]);
    let after = now();
    let m = e.metrics();
    let get = |name: &str| value(&m, name).unwrap_or_else(|| panic!("no {name} in\n{m}"));

    // The start time comes from boot time (whole seconds) plus ticks (1/100 s).
    let start = get("process_start_time_seconds");
    assert!(
        start >= before - 1.5 && start <= after + 1.5,
        "start {start} outside [{before}, {after}]"
    );
    // At least the listener, the libvirt connection's and the stdio descriptors; the kernel's
    // count of the same process agrees within what a scrape opens and closes meanwhile.
    let open = get("process_open_fds");
    let seen = std::fs::read_dir(format!("/proc/{}/fd", e.pid()))
        .expect("the test reads the exporter's fd table")
        .count() as f64;
    assert!(open >= 4.0, "open fds {open}");
    assert!(
        (open - seen).abs() <= 8.0,
        "exporter says {open}, /proc says {seen}"
    );
    let max = get("process_max_fds");
    assert!(max >= open, "max fds {max} < open {open}");
    // main's raise of the soft limit to the hard one shows here.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", e.pid())).expect("limits");
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().nth(3) == Some(&format!("{max}"))),
        "{max} is not the soft limit in {limits}"
    );
    let threads = get("process_threads");
    assert!(
        threads >= 3.0,
        "threads {threads}: runtime workers and collector threads run"
    );
    let rss = get("process_resident_memory_bytes");
    let vsz = get("process_virtual_memory_bytes");
    assert!(rss > 1e6 && rss < vsz, "rss {rss}, virtual {vsz}");
    let cpu = get("process_cpu_seconds_total");
    assert!(
        cpu >= 0.0 && cpu <= (now() - before) * 2.0 + 0.1,
        "cpu {cpu} s within {} s of wall time on 2 cores",
        now() - before
    );
    // A counter: it never goes back, and it moves when the exporter works.
    let mut later = cpu;
    crate::support::poll_until(Duration::from_secs(20), || {
        let _ = e.get("/"); // some work for the exporter
        later = value(&e.metrics(), "process_cpu_seconds_total").unwrap_or(-1.0);
        later > cpu
    });
    assert!(later > cpu, "cpu seconds stayed at {cpu} (now {later})");
    assert!(
        m.contains("# TYPE process_cpu_seconds_total counter"),
        "{m}"
    );
}
