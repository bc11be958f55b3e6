//! The forecast before real migrations (issue 17): a guest that converges and one that cannot,
//! each forecast by the exporter (with a dirty-rate calculation on the source's read-write URI)
//! before the lab migrates it; the verdicts must match what then happened.

use std::time::Duration;

use migration_lab::guest::Pattern;
use migration_lab::scenario::{RunResult, Scenario};
use migration_lab::Lab;
use system_tests::{exporter_binary, lab_dir, one_lab_at_a_time, scratch};

fn run(s: &Scenario) -> RunResult {
    let _one = one_lab_at_a_time();
    let out = scratch(&s.name);
    let bin = exporter_binary();
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
