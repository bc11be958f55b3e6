//! The convergence targets on every committed lab trace, judged by `verdict-eval` (the alert by
//! promtool over the replayed scrapes): a regression test of the model on real migrations.

use std::path::PathBuf;
use std::process::Command;

fn fixtures(set: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../exporter/tests/fixtures")
        .join(set)
        .join("traces")
        .to_string_lossy()
        .into_owned()
}

/// "label: N of M" → (N, M).
fn total(out: &str, label: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no line '{label}' in:\n{out}"));
    let nums: Vec<u32> = line
        .rsplit_once(": ")
        .map(|(_, r)| r)
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums.as_slice() {
        [n, m, ..] => (*n, *m),
        _ => panic!("cannot read '{line}'"),
    }
}

#[test]
fn every_committed_trace_meets_the_convergence_targets() {
    let out = Command::new(env!("CARGO_BIN_EXE_verdict-eval"))
        .args([
            fixtures("lab-ci"),
            fixtures("lab-paper"),
            fixtures("lab-convergence"),
        ])
        .output()
        .expect("verdict-eval runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (fired, stuck) = total(
        &stdout,
        "runs that do not converge whose alert fired within 60 s",
    );
    assert!(stuck >= 8, "{stdout}");
    assert_eq!(fired, stuck, "{stdout}");
    let (steady, runs) = total(&stdout, "steady runs with at most 2 verdict changes");
    assert_eq!(steady, runs, "{stdout}");
    let (false_conv, _) = total(&stdout, "runs that do not converge called converging");
    assert_eq!(false_conv, 0, "{stdout}");
    let (false_alarms, converging) = total(&stdout, "converging runs on which the alert fired");
    assert!(converging >= 6, "{stdout}");
    assert_eq!(false_alarms, 0, "{stdout}");
    let (eta_ok, judged) = total(
        &stdout,
        "converging runs with the half-time ETA within 15 %",
    );
    assert!(
        judged >= 3,
        "slow converging runs judged for the ETA: {stdout}"
    );
    assert_eq!(eta_ok, judged, "{stdout}");
}
