//! End to end: a real TCG guest migrates between two real libvirtd instances while an exporter
//! watches each side. The source exporter must show the job live, then count it with exactly
//! the figures of libvirt's own job-completed event; the destination exporter must count the
//! incoming migration from the destination's kept completed stats, and leave them in place.
//!
//! The guest runs no OS (it sits in SeaBIOS): the simplest converging case. A bandwidth cap of
//! 1 MiB/s keeps the migration running long enough to be sampled live.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::exporter::{value, RunningExporter};
use crate::support::libvirtd::TestLibvirtd;
use crate::support::poll_until;

const WAIT: Duration = Duration::from_secs(120);

fn guest_xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <controller type='usb' model='none'/><memballoon model='none'/></devices></domain>"
    )
}

/// `virsh event --all --loop` on a connection, its output collected line by line.
struct EventWatch {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl EventWatch {
    fn start(uri: &str) -> EventWatch {
        let mut child = Command::new("virsh")
            .args(["-c", uri, "event", "--all", "--loop"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("virsh event");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let w = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut v) = w.lock() {
                    v.push(l);
                }
            }
        });
        EventWatch { child, lines }
    }

    /// The `key: value` lines that follow the first `job-completed` event.
    fn job_completed(&self) -> Option<BTreeMap<String, String>> {
        let lines = self.lines.lock().ok()?.clone();
        let start = lines.iter().position(|l| l.contains("'job-completed'"))?;
        let mut fields = BTreeMap::new();
        for l in &lines[start + 1..] {
            let Some((k, v)) = l.trim().split_once(':') else {
                break;
            };
            if !l.starts_with(char::is_whitespace) {
                break;
            }
            fields.insert(k.trim().to_string(), v.trim().to_string());
        }
        (!fields.is_empty()).then_some(fields)
    }

    fn all(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn num(fields: &BTreeMap<String, String>, key: &str) -> f64 {
    fields
        .get(key)
        .unwrap_or_else(|| panic!("job-completed event lacks {key}: {fields:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {fields:?}"))
}

/// `virsh domjobinfo --completed --keep-completed` on `uri`, as `key: value` (raw numbers).
fn kept_completed(daemon: &TestLibvirtd, name: &str) -> BTreeMap<String, String> {
    let out = daemon
        .virsh(&[
            "domjobinfo",
            name,
            "--completed",
            "--keep-completed",
            "--rawstats",
        ])
        .expect("domjobinfo");
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn live_migration_is_seen_live_and_counted_with_libvirts_figures() {
    let base = tempfile::Builder::new()
        .prefix("vme2e")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let src = TestLibvirtd::start(&base.path().join("s")).expect("source libvirtd");
    let dst = TestLibvirtd::start(&base.path().join("d")).expect("destination libvirtd");
    let xml = base.path().join("g.xml");
    std::fs::write(&xml, guest_xml("e2e")).expect("write xml");
    src.virsh(&["create", &xml.to_string_lossy()])
        .expect("virsh create on source");
    let uuid = src
        .virsh(&["domuuid", "e2e"])
        .expect("domuuid")
        .trim()
        .to_string();

    let src_exp =
        RunningExporter::start(&["--libvirt.uri", src.uri(), "--sample.interval", "200ms"]);
    let dst_exp =
        RunningExporter::start(&["--libvirt.uri", dst.uri(), "--sample.interval", "200ms"]);
    for e in [&src_exp, &dst_exp] {
        assert!(
            poll_until(WAIT, || e.get("/-/ready").0 == 200),
            "exporter not ready: {:?}",
            e.log()
        );
    }
    let events = EventWatch::start(src.uri());

    let migrate = Command::new("virsh")
        .args([
            "-c",
            src.uri(),
            "migrate",
            "--live",
            "--bandwidth",
            "1",
            "e2e",
            dst.uri(),
            "tcp://127.0.0.1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("virsh migrate");

    // Live: the job and its progress are visible while it runs.
    let dom = format!("domain=\"e2e\",uuid=\"{uuid}\"");
    let mut live = String::new();
    let seen_live = poll_until(WAIT, || {
        live = src_exp.metrics();
        value(&live, &format!("vm_migration_job_active{{{dom},operation=\"migration_out\"}}")) == Some(1.0)
            && value(&live, &format!("vm_migration_data_remaining_bytes{{{dom}}}")).is_some()
            // Past set-up: QEMU reports a transfer rate once data flows.
            && value(&live, &format!("vm_migration_memory_transfer_rate_bytes{{{dom}}}")).is_some()
    });
    assert!(seen_live, "job never seen live; last scrape:\n{live}");
    assert_eq!(
        value(
            &live,
            &format!("vm_migration_phase{{{dom},phase=\"precopy\"}}")
        ),
        Some(1.0)
    );
    assert!(
        value(
            &live,
            &format!("vm_migration_max_downtime_seconds{{{dom}}}")
        )
        .is_some_and(|v| v > 0.0),
        "{live}"
    );

    let out = migrate.wait_with_output_owned();
    assert!(out.0, "virsh migrate failed: {}", out.1);
    assert!(
        dst.virsh(&["domstate", "e2e"])
            .expect("domstate")
            .contains("running"),
        "guest runs on the destination"
    );

    // Finished: counted once, with libvirt's own figures.
    assert!(
        poll_until(WAIT, || events.job_completed().is_some()),
        "no job-completed event: {:?}",
        events.all()
    );
    let ev = events.job_completed().expect("event");
    let completed =
        "vm_migration_finished_total{outcome=\"completed\",mode=\"precopy\",direction=\"out\"}";
    let mut m = String::new();
    assert!(
        poll_until(WAIT, || {
            m = src_exp.metrics();
            value(&m, completed) == Some(1.0)
        }),
        "source exporter did not count the migration:\n{m}"
    );
    assert_eq!(
        value(&m, &format!("vm_migration_last_duration_seconds{{{dom}}}")),
        Some(num(&ev, "time_elapsed") / 1000.0)
    );
    assert_eq!(
        value(&m, &format!("vm_migration_last_downtime_seconds{{{dom}}}")),
        Some(num(&ev, "downtime") / 1000.0)
    );
    assert_eq!(
        value(
            &m,
            &format!("vm_migration_last_data_processed_bytes{{{dom}}}")
        ),
        Some(num(&ev, "data_processed"))
    );
    assert_eq!(
        value(&m, &format!("vm_migration_last_iterations{{{dom}}}")),
        Some(num(&ev, "memory_iteration"))
    );
    assert_eq!(
        value(
            &m,
            "vm_migration_downtime_seconds_count{mode=\"precopy\",direction=\"out\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        !m.contains("vm_migration_job_active{"),
        "no stale job series after the migration"
    );
    for outcome in ["failed", "aborted"] {
        let s = format!("vm_migration_finished_total{{outcome=\"{outcome}\",mode=\"precopy\",direction=\"out\"}}");
        assert_eq!(value(&m, &s), Some(0.0), "nothing {outcome}");
    }

    // Destination: the incoming migration, from its kept completed stats, counted once.
    let incoming =
        "vm_migration_finished_total{outcome=\"completed\",mode=\"precopy\",direction=\"in\"}";
    let mut dm = String::new();
    assert!(
        poll_until(WAIT, || {
            dm = dst_exp.metrics();
            value(&dm, incoming) == Some(1.0)
        }),
        "destination exporter did not count the incoming migration:\n{dm}\n{:?}",
        dst_exp.log()
    );
    let kept = kept_completed(&dst, "e2e");
    assert_eq!(
        kept.get("operation").map(String::as_str),
        Some("4"),
        "KEEP_COMPLETED left the stats in place: {kept:?}"
    );
    assert_eq!(
        value(&dm, &format!("vm_migration_last_downtime_seconds{{{dom}}}")),
        Some(num(&kept, "downtime") / 1000.0)
    );
    assert_eq!(
        value(&dm, &format!("vm_migration_last_duration_seconds{{{dom}}}")),
        Some(num(&kept, "time_elapsed") / 1000.0)
    );
}

trait WaitOwned {
    fn wait_with_output_owned(self) -> (bool, String);
}

impl WaitOwned for Child {
    fn wait_with_output_owned(self) -> (bool, String) {
        match self.wait_with_output() {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, e.to_string()),
        }
    }
}
