//! Finished-migration records: served at /api/v1/migrations, kept in an append-only file that
//! survives restarts, a torn last line skipped with a warning.

use std::time::Duration;

use serde_json::Value;

use crate::support::exporter::{RunningExporter, BIN};
use crate::support::poll_until;

fn record(name: &str, uuid: &str, finished_at: f64, outcome: &str) -> String {
    serde_json::json!({
        "domain": {"name": name, "uuid": uuid},
        "direction": "out", "outcome": outcome, "mode": "precopy",
        "started_at": finished_at - 10.0, "finished_at": finished_at,
        "duration_seconds": 10.0, "downtime_seconds": if outcome == "completed" { Some(0.05) } else { None },
        "data_processed_bytes": 1000, "data_total_bytes": 2000, "memory_total_bytes": 2000,
        "iterations": 3, "postcopy_requests": null, "setup_time_seconds": 0.001,
        "dirty_rate_max_bytes": 4096, "dirty_rate_mean_bytes": 2048.0, "transfer_rate_mean_bytes": 1e6,
        "auto_converge_throttle_max_ratio": null,
        "verdicts": [{"t": finished_at - 9.0, "verdict": "unknown"}, {"t": finished_at - 5.0, "verdict": "converging"}],
        "figures": "event"
    })
    .to_string()
}

fn get_json(e: &RunningExporter, path: &str) -> (u16, Value) {
    let (status, body) = e.get(path);
    (
        status,
        serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("{path}: not JSON ({err}): {body}")),
    )
}

#[test]
fn records_survive_a_restart_torn_line_skipped_newest_first_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("migrations.jsonl");
    let lines = [
        record(
            "a",
            "00000000-0000-4000-8000-00000000000a",
            1000.0,
            "completed",
        ),
        record(
            "b",
            "00000000-0000-4000-8000-00000000000b",
            2000.0,
            "aborted",
        ),
        record(
            "a",
            "00000000-0000-4000-8000-00000000000a",
            3000.0,
            "failed",
        ),
    ];
    // The last write was cut short by a crash.
    std::fs::write(
        &file,
        format!("{}\n{{\"domain\":{{\"name\":\"c\"", lines.join("\n")),
    )
    .expect("write");
    let storage = dir.path().to_string_lossy().to_string();

    let e = RunningExporter::start(&[
        "--libvirt.uri",
        "test:///default",
        "--storage.path",
        &storage,
    ]);
    let (status, all) = get_json(&e, "/api/v1/migrations");
    assert_eq!(status, 200);
    let finished: Vec<f64> = all
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["finished_at"].as_f64().unwrap_or(0.0))
        .collect();
    assert_eq!(
        finished,
        vec![3000.0, 2000.0, 1000.0],
        "newest first, torn line skipped"
    );
    assert!(
        poll_until(Duration::from_secs(10), || e
            .log()
            .iter()
            .any(|l| l.contains("torn"))),
        "a warning names the torn record: {:?}",
        e.log()
    );
    let (_, one) = get_json(&e, "/api/v1/migrations?limit=1");
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    assert_eq!(one[0]["outcome"], "failed");
    let (_, only_a) = get_json(&e, "/api/v1/migrations?domain=a");
    assert_eq!(only_a.as_array().map(Vec::len), Some(2));
    let (_, by_uuid) = get_json(
        &e,
        "/api/v1/migrations?domain=00000000-0000-4000-8000-00000000000b",
    );
    assert_eq!(by_uuid[0]["domain"]["name"], "b");
    assert_eq!(only_a[1]["verdicts"][1]["verdict"], "converging");
    for bad in ["limit=0", "limit=lots", "limit=10001", "colour=red"] {
        let (status, body) = get_json(&e, &format!("/api/v1/migrations?{bad}"));
        assert_eq!(status, 400, "{bad}");
        assert!(
            body["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{bad}: {body}"
        );
    }
    let page = e.get("/").1;
    assert!(page.contains("Recently finished (3 of 3"), "{page}");
    drop(e);

    // The torn tail was cut off, so the file ends on a whole line and can be appended to.
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        text.ends_with('\n') && !text.contains("\"name\":\"c\""),
        "{text}"
    );
    let e = RunningExporter::start(&[
        "--libvirt.uri",
        "test:///default",
        "--storage.path",
        &storage,
    ]);
    let (_, again) = get_json(&e, "/api/v1/migrations");
    assert_eq!(
        again.as_array().map(Vec::len),
        Some(3),
        "still there after a second restart"
    );
}

#[test]
fn unusable_storage_is_bad_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let p = file.to_string_lossy().to_string();
    let out = std::process::Command::new(BIN)
        .args([
            "--libvirt.uri",
            "test:///default",
            "--web.listen-address",
            "127.0.0.1:0",
            "--storage.path",
            &p,
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--storage.path") && err.contains(&p), "{err}");
}

#[test]
fn damage_before_the_last_line_is_refused_not_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("migrations.jsonl");
    let good = record(
        "a",
        "00000000-0000-4000-8000-00000000000a",
        1000.0,
        "completed",
    );
    std::fs::write(&file, format!("garbage\n{good}\n")).expect("write");
    let p = dir.path().to_string_lossy().to_string();
    let out = std::process::Command::new(BIN)
        .args([
            "--libvirt.uri",
            "test:///default",
            "--web.listen-address",
            "127.0.0.1:0",
            "--storage.path",
            &p,
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        format!("garbage\n{good}\n"),
        "never lose data"
    );
}
