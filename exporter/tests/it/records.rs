//! Finished-migration records: served at /api/v1/migrations, kept in an append-only file that
//! survives restarts, a torn last line skipped with a warning.

use std::time::Duration;

use serde_json::Value;

use vm_migration_exporter::jobs::tracker::FinishedMigration;
use vm_migration_exporter::records::log::{RecordLog, StoreOp};

use crate::support::{poll_until, rec, record, value, Exporter, BIN};

/// The exporter with its records under `dir`.
fn start_on(dir: &std::path::Path) -> Exporter {
    let storage = dir.to_string_lossy().to_string();
    Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--storage.path",
            &storage,
        ],
    )
}

fn get_json(e: &Exporter, path: &str) -> (u16, Value) {
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
    let e = start_on(dir.path());
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
    let e = start_on(dir.path());
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

/// The record file can never keep the exporter from starting: damage before the last
/// line moves the file aside, keeps every valid record and names the moved file in the log and
/// in a metric.
#[test]
fn damaged_record_file_is_moved_aside_valid_records_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("migrations.jsonl");
    let a = record(
        "a",
        "00000000-0000-4000-8000-00000000000a",
        1000.0,
        "completed",
    );
    let b = record(
        "b",
        "00000000-0000-4000-8000-00000000000b",
        2000.0,
        "completed",
    );
    let mut original = format!("{a}\ngarbage\n").into_bytes();
    original.extend_from_slice(b"{\"domain\":\"\xff\xfe\"}\n");
    original.extend_from_slice(format!("{b}\n").as_bytes());
    std::fs::write(&file, &original).expect("write");
    let e = start_on(dir.path());
    let (status, all) = get_json(&e, "/api/v1/migrations");
    assert_eq!(status, 200);
    let names: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["domain"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["b", "a"],
        "valid records before and after the damage kept"
    );
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("readdir")
        .filter_map(Result::ok)
        .map(|d| d.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("migrations.jsonl.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(dir.path().join(&aside[0])).expect("read aside"),
        original,
        "the damaged file is kept as it was"
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        format!("{a}\n{b}\n")
    );
    assert!(
        e.log()
            .iter()
            .any(|l| l.contains(&aside[0]) && l.contains("line=2")),
        "a log line names the moved file and the damaged line: {:?}",
        e.log()
    );
    let m = e.metrics();
    assert!(
        m.contains(&aside[0]) && m.contains("vm_migration_storage_damaged_file_info{"),
        "{m}"
    );
    assert_eq!(value(&m, "vm_migration_storage_records"), Some(2.0), "{m}");
}

/// A write torn inside a multi-byte UTF-8 character does not keep the exporter from starting.
#[test]
fn torn_last_line_inside_a_utf8_character_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("migrations.jsonl");
    let a = record(
        "a",
        "00000000-0000-4000-8000-00000000000a",
        1000.0,
        "completed",
    );
    let mut text = format!("{a}\n{{\"domain\":{{\"name\":\"g").into_bytes();
    text.push("ä".as_bytes()[0]);
    std::fs::write(&file, &text).expect("write");
    let e = start_on(dir.path());
    let (status, all) = get_json(&e, "/api/v1/migrations");
    assert_eq!(status, 200);
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    drop(e);
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        format!("{a}\n")
    );
}

fn append(log: &mut RecordLog, r: &FinishedMigration) -> bool {
    log.append(r).is_ok()
}

/// A symlink planted where compaction writes its temp file is never followed.
#[test]
fn compaction_does_not_follow_a_planted_temp_symlink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim_dir = tempfile::tempdir().expect("tempdir");
    let victim = victim_dir.path().join("precious");
    std::fs::write(&victim, "precious\n").expect("write");
    std::os::unix::fs::symlink(&victim, dir.path().join("migrations.jsonl.tmp")).expect("symlink");
    let max = 8192;
    let (mut log, _) = RecordLog::open(dir.path(), max).expect("open");
    for i in 0..40 {
        append(&mut log, &rec(i));
    }
    assert!(
        std::fs::metadata(log.path()).expect("stat").len() <= max,
        "compacted"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read"),
        "precious\n"
    );
}

/// A compaction that fails (here: a directory in the temp file's place) is not tried again on
/// every append, and appends keep succeeding.
#[test]
fn failed_compaction_backs_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("migrations.jsonl.tmp");
    std::fs::create_dir(&blocker).expect("mkdir");
    std::fs::write(blocker.join("x"), "x").expect("write");
    let (mut log, _) = RecordLog::open(dir.path(), 8192).expect("open");
    let failed: Vec<u32> = (0..60).filter(|&i| !append(&mut log, &rec(i))).collect();
    assert!(
        failed.is_empty(),
        "every record stored although compaction fails: {failed:?}"
    );
    assert_eq!(
        log.stats().errors(StoreOp::Compact),
        1,
        "one failed compaction, then a back-off"
    );
    let (_, back) = RecordLog::open(dir.path(), 8192).expect("reopen");
    assert_eq!(back.len(), 60, "nothing lost while compaction is off");
}
