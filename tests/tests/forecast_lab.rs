//! The forecast before real migrations: a guest that converges and one that cannot,
//! each forecast by the exporter (with a dirty-rate calculation on the source's read-write URI)
//! before the lab migrates it; the verdicts must match what then happened. And the domain's
//! migration bandwidth cap set in libvirt (`virsh migrate-setspeed`) limits its forecast.

use std::process::Stdio;
use std::time::Duration;

use migration_lab::exporter::{Exporter, Launch};
use migration_lab::guest::{self, GuestSpec, Pattern};
use migration_lab::prom::poll_until;
use migration_lab::scenario::{RunResult, Scenario};
use migration_lab::Lab;
use system_tests::{exporter_bin, lab_dir, one_lab_at_a_time, scratch};

const MIB: f64 = 1048576.0;

fn run(s: &Scenario) -> RunResult {
    let _one = one_lab_at_a_time();
    let out = scratch(&s.name);
    let bin = exporter_bin!();
    let mut lab = Lab::up(&lab_dir(), Some(&bin), &|m| eprintln!("lab: {m}")).expect("lab up");
    lab.run(s, &out, &|_| {}).expect("scenario ran")
}

fn forecast(r: &RunResult) -> &serde_json::Value {
    r.forecast.as_ref().expect("the lab recorded a forecast")
}

#[test]
fn a_converging_and_a_stuck_guest_are_forecast_as_they_then_migrate() {
    // 10 MiB/s of sequential writes over a 40 MiB/s cap: λ ≈ 0.25.
    let mut ok = Scenario::stressed("fc-test-converges", 10, Pattern::Seq, 40);
    ok.deadline = Duration::from_secs(60);
    let r = run(&ok);
    let f = forecast(&r);
    assert_eq!(f["dirty_rate"]["source"], "calculation", "{f}");
    assert_eq!(f["path"]["limit"], "cap", "{f}");
    assert_eq!(f["verdict"], "converges", "{f}");
    assert_eq!(f["recommendation"]["mode"], "precopy", "{f}");
    assert_eq!(r.outcome, "completed", "{}", r.virsh_output);
    assert!(
        f["duration_seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{f}"
    );
    // Pass 1 from the guest's sampled non-zero memory (the lab runs --forecast.zero-pages): the
    // writer's populated working set is resident but partly still zero, and the sample is no
    // further from what pass 1 then sent than the resident size is (beyond 5 % of sampling
    // noise and the pages written between the forecast and the scan).
    assert_eq!(f["first_pass_source"], "nonzero_sample", "{f}");
    let sampled = f["first_pass_bytes"].as_f64().expect("pass 1");
    let resident = f["resident_bytes"].as_f64().expect("resident");
    assert!(sampled <= resident * 1.05, "{f}");
    let sent = pass_1_sent(&r).expect("the trace shows pass 2 starting");
    assert!(
        (sampled - sent).abs() <= (resident - sent).abs() + 0.05 * resident,
        "sampled {:.0} MiB, resident {:.0} MiB, pass 1 sent {:.0} MiB",
        sampled / MIB,
        resident / MIB,
        sent / MIB
    );

    // 150 MiB/s of random writes over a 30 MiB/s cap: it never switches over; aborted at 20 s.
    let mut stuck = Scenario::stressed("fc-test-stuck", 150, Pattern::Random, 30);
    stuck.deadline = Duration::from_secs(20);
    let r = run(&stuck);
    let f = forecast(&r);
    assert_eq!(f["dirty_rate"]["source"], "calculation", "{f}");
    assert_eq!(f["verdict"], "diverges", "{f}");
    assert_eq!(f["recommendation"]["mode"], "postcopy", "{f}");
    assert!(f["duration_seconds"].is_null(), "{f}");
    assert_eq!(r.outcome, "aborted", "{}", r.virsh_output);
}

/// Memory bytes sent when the exporter first saw pass 2 (the trace's job records): pass 1 and
/// at most one sampling interval of pass 2.
fn pass_1_sent(r: &RunResult) -> Option<f64> {
    let text = std::fs::read_to_string(&r.trace).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["record"] == "job")
        .map(|v| v["job"]["params"].clone())
        .find(|p| p["memory_iteration"].as_u64().is_some_and(|i| i >= 2))
        .and_then(|p| p["memory_processed"].as_f64())
}

/// Destroys the guest, whatever happened.
struct GuestGuard(String, String);

impl Drop for GuestGuard {
    fn drop(&mut self) {
        let _ = migration_lab::bounded("virsh", migration_lab::VIRSH_TIMEOUT)
            .args(["-c", &self.1, "destroy", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The forecast entry of `domain` under `query`, once `cond` holds for it (or the last one).
fn entry_when(
    e: &Exporter,
    query: &str,
    domain: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> (bool, serde_json::Value) {
    let mut last = serde_json::Value::Null;
    let ok = poll_until(Duration::from_secs(60), || {
        let Some(report) = e
            .body(query)
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        else {
            return false;
        };
        match report["domains"]
            .as_array()
            .and_then(|d| d.iter().find(|x| x["domain"] == domain))
        {
            Some(x) => {
                last = x.clone();
                cond(x)
            }
            None => false,
        }
    });
    (ok, last)
}

#[test]
fn the_cap_set_in_libvirt_limits_the_forecast() {
    let _one = one_lab_at_a_time();
    let out = scratch("fc-test-libvirt-cap");
    let bin = exporter_bin!();
    let lab = Lab::up(&lab_dir(), Some(&bin), &|m| eprintln!("lab: {m}")).expect("lab up");
    let name = "fc-test-cap";
    let mut spec = GuestSpec::idle(name);
    spec.memory_mb = 256;
    spec.dirty_mb = 16;
    let xml = out.join("domain.xml");
    std::fs::write(&xml, spec.domain_xml(&lab.assets)).expect("xml");
    lab.src
        .virsh(&["create", &xml.to_string_lossy()])
        .expect("create the guest");
    let _guard = GuestGuard(name.into(), lab.src.uri().into());
    let serial = lab.src.dir().join(format!("log/qemu/{name}.serial"));
    guest::wait_running(&serial, Duration::from_secs(90)).expect("the guest boots");
    // Why the cap needs the read-write connection: libvirt refuses it read-only.
    let ro = migration_lab::bounded("virsh", migration_lab::VIRSH_TIMEOUT)
        .args(["-r", "-c", lab.src.uri(), "migrate-getspeed", name])
        .output()
        .expect("virsh -r");
    assert!(
        !ro.status.success()
            && String::from_utf8_lossy(&ro.stderr).contains("read only access prevents"),
        "{ro:?}"
    );

    let start = |tag: &str, extra: &[String]| {
        let (storage, trace) = (
            out.join(format!("records-{tag}")),
            out.join(format!("trace-{tag}.jsonl")),
        );
        let e = Exporter::launch(
            &lab.exporter_bin,
            &Launch {
                extra,
                ..Launch::new(lab.src.uri(), &storage, &trace)
            },
        )
        .expect("the exporter starts");
        assert!(poll_until(Duration::from_secs(30), || e
            .body("/-/ready")
            .is_some()));
        e
    };
    let rw = start(
        "rw",
        &[
            "--forecast.enable".into(),
            "--forecast.libvirt.uri".into(),
            lab.src.uri().into(),
            "--forecast.interval".into(),
            "1h".into(),
        ],
    );
    // libvirt's default is "unlimited" (8796093022207 MiB/s): read, and no cap.
    let (ok, x) = entry_when(&rw, "/api/v1/forecast", name, |x| {
        x["libvirt_cap"].is_object()
    });
    assert!(ok, "{x}\n{}", rw.log().join("\n"));
    assert!(x["libvirt_cap"]["precopy_bytes"].is_null(), "{x}");
    assert_ne!(x["path"]["limit"], "libvirt_cap", "{x}");

    lab.src
        .virsh(&["migrate-setspeed", name, "20"])
        .expect("migrate-setspeed");
    lab.src
        .virsh(&["migrate-setspeed", "--postcopy", name, "15"])
        .expect("migrate-setspeed --postcopy");
    let told = lab
        .src
        .virsh(&["migrate-getspeed", name])
        .expect("getspeed");
    assert_eq!(told.trim(), "20", "libvirt's own figure");
    let (ok, x) = entry_when(&rw, "/api/v1/forecast", name, |x| {
        x["path"]["limit"] == "libvirt_cap"
    });
    assert!(
        ok,
        "the cap from libvirt never limited the forecast: {x}\n{}",
        rw.log().join("\n")
    );
    assert_eq!(x["path"]["rate"].as_f64(), Some(20.0 * MIB), "{x}");
    assert_eq!(
        x["libvirt_cap"]["precopy_bytes"].as_f64(),
        Some(20.0 * MIB),
        "{x}"
    );
    assert_eq!(
        x["libvirt_cap"]["postcopy_bytes"].as_f64(),
        Some(15.0 * MIB),
        "{x}"
    );
    // A what-if's bandwidth replaces it.
    let (ok, x) = entry_when(&rw, "/api/v1/forecast?bandwidth=100MiB", name, |_| true);
    assert!(ok);
    assert_eq!(x["path"]["limit"], "cap", "{x}");
    assert_eq!(x["path"]["rate"].as_f64(), Some(100.0 * MIB), "{x}");
    let landing = rw.body("/").expect("landing page");
    assert!(landing.contains("20.0 MiB/s (libvirt_cap)"), "{landing}");

    // Read-only (no --forecast.enable): the cap is unknown, not guessed.
    let ro = start("ro", &[]);
    let (ok, x) = entry_when(&ro, "/api/v1/forecast", name, |_| true);
    assert!(ok, "{}", ro.log().join("\n"));
    assert!(x["libvirt_cap"].is_null(), "{x}");
    assert_ne!(x["path"]["limit"], "libvirt_cap", "{x}");
}
