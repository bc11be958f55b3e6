//! The landing page as a browser shows it: headless Chromium renders it, the DOM it built holds
//! the records, and a screenshot comes out (written to VME_SCREENSHOT_DIR when set, for docs).

use std::process::Command;

use crate::support::{Exporter, BIN};

fn chromium(args: &[&str], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().expect("profile dir");
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (Debian package chromium) must be installed: scripts/install-deps.sh")
}

#[test]
fn landing_page_renders_records_in_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let line = serde_json::json!({
        "domain": {"name": "web-<1>", "uuid": "00000000-0000-4000-8000-0000000000aa"},
        "direction": "out", "outcome": "aborted", "mode": "precopy",
        "started_at": 1795580000.0, "finished_at": 1795580120.0, "duration_seconds": 120.0,
        "downtime_seconds": null, "data_processed_bytes": 3221225472u64, "data_total_bytes": 536870912,
        "memory_total_bytes": 536870912, "iterations": 25, "postcopy_requests": null,
        "setup_time_seconds": 0.002, "dirty_rate_max_bytes": 157286400, "dirty_rate_mean_bytes": 1.5e8,
        "transfer_rate_mean_bytes": 3.1e7, "auto_converge_throttle_max_ratio": null,
        "verdicts": [{"t": 1795580000.5, "verdict": "unknown"}, {"t": 1795580017.0, "verdict": "diverging"}],
        "figures": "last_sample"
    });
    std::fs::write(dir.path().join("migrations.jsonl"), format!("{line}\n")).expect("write");
    let storage = dir.path().to_string_lossy().to_string();
    let e = Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--storage.path",
            &storage,
        ],
    );

    let dom = chromium(&["--dump-dom"], &e.url("/"));
    assert!(
        dom.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains("web-&lt;1&gt;"),
        "domain name shown, escaped: {html}"
    );
    // A record written before the verdict was one state ("diverging") loads as not_converging.
    assert!(
        html.contains("unknown → not_converging"),
        "verdict history shown: {html}"
    );
    assert!(
        html.contains("2026-11-25 04:15:20 UTC"),
        "finish time shown as a date: {html}"
    );
    assert!(
        html.contains("<td class=\"aborted\">aborted</td>"),
        "{html}"
    );

    let shots = std::env::var("VME_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().to_path_buf());
    let png = shots.join("landing-page.png");
    let shot = chromium(
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,520",
        ],
        &e.url("/"),
    );
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "a real PNG: {} bytes",
        bytes.len()
    );
}
