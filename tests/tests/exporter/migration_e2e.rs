//! End to end: a real TCG guest migrates between two real libvirtd instances while an exporter
//! watches each side. The source exporter must show the job live, then count it with exactly
//! the figures of libvirt's own job-completed event; the destination exporter must count the
//! incoming migration from the destination's kept completed stats, and leave them in place.
//!
//! The guest runs no OS (it sits in SeaBIOS): the simplest converging case. A bandwidth cap of
//! 1 MiB/s keeps the migration running long enough to be sampled live.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::events::EventWatch;
use testkit::exporter::{value, Exporter};
use testkit::prom::poll_until;
use testkit::Host;

const WAIT: Duration = Duration::from_secs(120);

fn guest_xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>\
         <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <controller type='usb' model='none'/><memballoon model='none'/></devices></domain>"
    )
}

fn num(fields: &BTreeMap<String, String>, key: &str) -> f64 {
    fields
        .get(key)
        .unwrap_or_else(|| panic!("job-completed event lacks {key}: {fields:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {fields:?}"))
}

/// `virsh domjobinfo --completed --keep-completed` on `uri`, as `key: value` (raw numbers).
fn kept_completed(daemon: &Host, name: &str) -> BTreeMap<String, String> {
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

/// Two libvirt "hosts", a guest on the source, and an exporter on each side.
struct Pair {
    // Fields drop in this order: exporters, then daemons (which kill their QEMUs by pid file),
    // then the directory holding those pid files, and last the lock the next test waits on.
    src_exp: Exporter,
    dst_exp: Exporter,
    src: Host,
    dst: Host,
    _base: tempfile::TempDir,
    uuid: String,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// One migration at a time: each TCG guest takes a core of a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Pair {
    fn start(name: &str) -> Pair {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let base = tempfile::Builder::new()
            .prefix("vme2e")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let src = Host::start(&base.path().join("s")).expect("source libvirtd");
        let dst = Host::start(&base.path().join("d")).expect("destination libvirtd");
        let xml = base.path().join("g.xml");
        std::fs::write(&xml, guest_xml(name)).expect("write xml");
        src.virsh(&["create", &xml.to_string_lossy()])
            .expect("virsh create on source");
        let uuid = src
            .virsh(&["domuuid", name])
            .expect("domuuid")
            .trim()
            .to_string();
        // VME_TRACE_DIR=dir records what each exporter saw, for replay fixtures.
        let exporter = |uri: &str, side: &str| {
            let mut args = vec!["--libvirt.uri".to_string(), uri.to_string()];
            args.extend(["--sample.interval".to_string(), "200ms".to_string()]);
            if let Ok(dir) = std::env::var("VME_TRACE_DIR") {
                args.extend([
                    "--trace.path".to_string(),
                    format!("{dir}/{name}-{side}.jsonl"),
                ]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Exporter::start(crate::BIN, &args)
        };
        let src_exp = exporter(src.uri(), "source");
        let dst_exp = exporter(dst.uri(), "destination");
        for e in [&src_exp, &dst_exp] {
            assert!(
                poll_until(WAIT, || e.get("/-/ready").0 == 200),
                "not ready: {:?}",
                e.log()
            );
        }
        Pair {
            _base: base,
            src,
            dst,
            src_exp,
            dst_exp,
            uuid,
            _serial: serial,
        }
    }

    fn dom(&self, name: &str) -> String {
        format!("domain=\"{name}\",uuid=\"{}\"", self.uuid)
    }

    /// Start a live migration capped at 1 MiB/s in the background.
    fn migrate(&self, name: &str) -> Child {
        let (src, dst) = (self.src.uri(), self.dst.uri());
        Command::new("virsh")
            .args([
                "-c",
                src,
                "migrate",
                "--live",
                "--bandwidth",
                "1",
                name,
                dst,
                "tcp://127.0.0.1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("virsh migrate")
    }

    /// Wait until the source exporter shows the job live with progress; returns that scrape.
    fn wait_live(&self, name: &str) -> String {
        let dom = self.dom(name);
        let series = |n: &str| format!("{n}{{{dom}}}");
        let active = format!("vm_migration_job_active{{{dom},operation=\"migration_out\"}}");
        let mut live = String::new();
        let seen = poll_until(WAIT, || {
            live = self.src_exp.metrics();
            value(&live, &active) == Some(1.0)
                && value(&live, &series("vm_migration_data_remaining_bytes")).is_some()
                // Past set-up: QEMU reports a transfer rate once data flows.
                && value(&live, &series("vm_migration_memory_transfer_rate_bytes_per_second")).is_some()
        });
        assert!(seen, "job never seen live; last scrape:\n{live}");
        live
    }
}

fn outcome_series(outcome: &str, direction: &str) -> String {
    format!("vm_migration_finished_total{{outcome=\"{outcome}\",mode=\"precopy\",direction=\"{direction}\"}}")
}

#[test]
fn live_migration_is_seen_live_and_counted_with_libvirts_figures() {
    let pair = Pair::start("e2e");
    let events = EventWatch::start(pair.src.uri()).expect("virsh event");
    let migrate = pair.migrate("e2e");

    // Live: the job and its progress are visible while it runs.
    let dom = pair.dom("e2e");
    let series = |n: &str| format!("{n}{{{dom}}}");
    let live = pair.wait_live("e2e");
    let precopy = format!("vm_migration_phase{{{dom},phase=\"precopy\"}}");
    assert_eq!(value(&live, &precopy), Some(1.0));
    let max_downtime = value(&live, &series("vm_migration_max_downtime_seconds"));
    assert!(max_downtime.is_some_and(|v| v > 0.0), "{live}");

    let (ok, said) = migrate.wait_with_output_owned();
    assert!(ok, "virsh migrate failed: {said}");
    let state = pair.dst.virsh(&["domstate", "e2e"]).expect("domstate");
    assert!(state.contains("running"), "guest runs on the destination");

    // Finished: counted once, with libvirt's own figures.
    assert!(
        poll_until(WAIT, || events.job_completed().is_some()),
        "no job-completed event: {:?}",
        events.lines()
    );
    let ev = events.job_completed().expect("event");
    let mut m = String::new();
    let counted = poll_until(WAIT, || {
        m = pair.src_exp.metrics();
        value(&m, &outcome_series("completed", "out")) == Some(1.0)
    });
    assert!(counted, "source exporter did not count the migration:\n{m}");
    let last = |n: &str| value(&m, &series(n));
    assert_eq!(
        last("vm_migration_last_duration_seconds"),
        Some(num(&ev, "time_elapsed") / 1000.0)
    );
    assert_eq!(
        last("vm_migration_last_downtime_seconds"),
        Some(num(&ev, "downtime") / 1000.0)
    );
    assert_eq!(
        last("vm_migration_last_data_processed_bytes"),
        Some(num(&ev, "data_processed"))
    );
    assert_eq!(
        last("vm_migration_last_iteration"),
        Some(num(&ev, "memory_iteration"))
    );
    let downtimes = "vm_migration_downtime_seconds_count{mode=\"precopy\",direction=\"out\"}";
    assert_eq!(value(&m, downtimes), Some(1.0), "{m}");
    assert!(
        !m.contains("vm_migration_job_active{"),
        "no stale job series after the migration"
    );
    for outcome in ["failed", "aborted"] {
        assert_eq!(
            value(&m, &outcome_series(outcome, "out")),
            Some(0.0),
            "nothing {outcome}"
        );
    }

    // The record of it, served by the API.
    let (status, body) = pair.src_exp.get("/api/v1/migrations");
    assert_eq!(status, 200);
    let recs: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(recs.as_array().map(Vec::len), Some(1), "{body}");
    let rec = &recs[0];
    assert_eq!(rec["outcome"], "completed");
    assert_eq!(rec["domain"]["uuid"], pair.uuid.as_str());
    assert_eq!(
        rec["duration_seconds"].as_f64(),
        Some(num(&ev, "time_elapsed") / 1000.0)
    );
    assert_eq!(
        rec["downtime_seconds"].as_f64(),
        Some(num(&ev, "downtime") / 1000.0)
    );
    assert_eq!(
        rec["data_processed_bytes"].as_f64(),
        Some(num(&ev, "data_processed"))
    );
    assert!(
        rec["verdicts"].as_array().is_some_and(|v| !v.is_empty()),
        "verdict history: {rec}"
    );

    // Destination: the incoming migration, from its kept completed stats, counted once.
    let mut dm = String::new();
    let counted_in = poll_until(WAIT, || {
        dm = pair.dst_exp.metrics();
        value(&dm, &outcome_series("completed", "in")) == Some(1.0)
    });
    assert!(
        counted_in,
        "destination did not count the incoming migration:\n{dm}"
    );
    let kept = kept_completed(&pair.dst, "e2e");
    let op = kept.get("operation").map(String::as_str);
    assert_eq!(
        op,
        Some("4"),
        "KEEP_COMPLETED left the stats in place: {kept:?}"
    );
    let last_in = |n: &str| value(&dm, &series(n));
    assert_eq!(
        last_in("vm_migration_last_downtime_seconds"),
        Some(num(&kept, "downtime") / 1000.0)
    );
    assert_eq!(
        last_in("vm_migration_last_duration_seconds"),
        Some(num(&kept, "time_elapsed") / 1000.0)
    );
}

#[test]
fn aborted_migration_counts_as_aborted_and_the_guest_stays() {
    let pair = Pair::start("e2eabort");
    let migrate = pair.migrate("e2eabort");
    pair.wait_live("e2eabort");
    pair.src
        .virsh(&["domjobabort", "e2eabort"])
        .expect("domjobabort");
    let (ok, said) = migrate.wait_with_output_owned();
    assert!(!ok, "an aborted migration must fail: {said}");
    let state = pair.src.virsh(&["domstate", "e2eabort"]).expect("domstate");
    assert!(
        state.contains("running"),
        "guest still on the source: {state}"
    );

    let mut m = String::new();
    let counted = poll_until(WAIT, || {
        m = pair.src_exp.metrics();
        value(&m, &outcome_series("aborted", "out")) == Some(1.0)
    });
    assert!(counted, "abort not counted:\n{m}\n{:?}", pair.src_exp.log());
    for outcome in ["completed", "failed"] {
        assert_eq!(
            value(&m, &outcome_series(outcome, "out")),
            Some(0.0),
            "nothing {outcome}: {m}"
        );
    }
    let dom = pair.dom("e2eabort");
    let last = |n: &str| value(&m, &format!("{n}{{{dom}}}"));
    assert!(
        last("vm_migration_last_duration_seconds").is_some_and(|d| d > 0.0),
        "{m}"
    );
    assert_eq!(
        last("vm_migration_last_downtime_seconds"),
        None,
        "no downtime for an abort"
    );
    assert!(
        !m.contains("vm_migration_job_active{"),
        "no stale job series after the abort"
    );
    let dm = pair.dst_exp.metrics();
    assert_eq!(
        value(&dm, &outcome_series("completed", "in")),
        Some(0.0),
        "nothing arrived: {dm}"
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
