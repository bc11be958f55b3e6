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
    // writer's populated working set is resident but partly still zero. The guest keeps filling
    // it after the sample, before and during pass 1, for as long as those take on this machine:
    // so pass 1 sends at least what the sample read (pages do not turn back to zero) and at most
    // that plus all the writer can write from the sample to pass 1's end, each within the
    // sample's noise. Resident memory as pass 1 falls below that whenever zeroed memory is left.
    assert_eq!(f["first_pass_source"], "nonzero_sample", "{f}");
    let sampled = f["first_pass_bytes"].as_f64().expect("pass 1");
    let resident = f["resident_bytes"].as_f64().expect("resident");
    assert!(sampled <= resident * 1.05, "{f}");
    let sampled_at = f["updated_at"].as_f64().expect("the forecast's round time");
    let p1 = pass_1(&r).expect("the trace shows pass 1 and pass 2 starting");
    let memory = f64::from(ok.guest.memory_mb) * MIB;
    let noise = sample_noise(memory);
    let writes = f64::from(ok.guest.dirty_mbps) * MIB;
    // The dirtier catches up a backlog of at most 1 s after a stall.
    let fill_max = writes * (p1.end - sampled_at + 1.0);
    let (low, high) = (sampled - noise, sampled + fill_max + noise);
    // What the forecast's model says pass 1 sends given the measured times: the fill until
    // pass 1 starts, and half of it during pass 1 (for comparison; not asserted).
    let fill = f["fill_rate_bytes"].as_f64().unwrap_or(0.0);
    let modelled = (sampled + fill * (p1.start - sampled_at) + fill * (p1.end - p1.start) / 2.0)
        .min(resident.max(sampled));
    let figures = format!(
        "sampled {:.0} MiB (±{:.0}), resident {:.0} MiB, fill {:.1} MiB/s; pass 1 {:.1} s after \
         the sample, lasting {:.1} s ({:.1} MiB/s), sent {:.0} MiB; bounds {:.0}..{:.0} MiB \
         (writer {:.0} MiB/s); the model with these times {:.0} MiB; resident as pass 1 would be \
         {}",
        sampled / MIB,
        noise / MIB,
        resident / MIB,
        fill / MIB,
        p1.start - sampled_at,
        p1.end - p1.start,
        p1.sent / (p1.end - p1.start) / MIB,
        p1.sent / MIB,
        low / MIB,
        high / MIB,
        writes / MIB,
        modelled / MIB,
        if p1.sent < resident - noise {
            "outside them"
        } else {
            "inside them (no zeroed memory left to tell apart)"
        }
    );
    eprintln!("forecast pass 1: {figures}");
    assert!(low <= p1.sent && p1.sent <= high, "{figures}");

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

/// Pass 1 as the exporter's trace shows it: when libvirt said it began and when pass 2 began
/// (Unix s), and the memory bytes sent by then.
struct Pass1 {
    start: f64,
    end: f64,
    sent: f64,
}

/// From the trace's iteration events and job records; the bytes at pass 2's start interpolated
/// between the job records around it (one is pass 1's last, the next already holds some of pass
/// 2 at the same rate).
fn pass_1(r: &RunResult) -> Option<Pass1> {
    let text = std::fs::read_to_string(&r.trace).ok()?;
    let records: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let began = |n: u64| {
        records
            .iter()
            .find(|v| {
                v["record"] == "event"
                    && v["event"]["kind"] == "iteration"
                    && v["event"]["iteration"].as_u64() == Some(n)
            })
            .and_then(|v| v["t"].as_f64())
    };
    // (t, iteration, memory processed) of every job record of the migration.
    let jobs: Vec<(f64, u64, f64)> = records
        .iter()
        .filter(|v| v["record"] == "job")
        .filter_map(|v| {
            let p = &v["job"]["params"];
            Some((
                v["t"].as_f64()?,
                p["memory_iteration"].as_u64()?,
                p["memory_processed"].as_f64()?,
            ))
        })
        .collect();
    let first = jobs.iter().position(|j| j.1 >= 1)?;
    let next = jobs.iter().position(|j| j.1 >= 2)?;
    let (before, after) = (jobs[..next].iter().rev().find(|j| j.1 == 1)?, jobs[next]);
    // An event read late is no later than the record already showing its pass.
    let start = began(1)?.min(jobs[first].0);
    let end = began(2)?.max(before.0).min(after.0);
    let share = if after.0 > before.0 {
        (end - before.0) / (after.0 - before.0)
    } else {
        1.0
    };
    Some(Pass1 {
        start,
        end,
        sent: before.2 + (after.2 - before.2) * share,
    })
}

/// Three standard errors of a zero-page sample's non-zero bytes, at its worst (half the pages
/// holding data): the exporter tests 512 pages spread over the guest's memory.
fn sample_noise(memory: f64) -> f64 {
    3.0 * (0.25f64 / 512.0).sqrt() * memory
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
