//! The forecast against what happened: before each migration the lab records the exporter's
//! forecast for the guest (`/api/v1/forecast`, with a dirty-rate calculation on the source's
//! read-write URI); after the run this module compares it with the outcome and the time.
//!
//! Ground truth of a pre-copy run: it converged by itself when it completed before any rescue
//! (a raised max downtime) or deadline; post-copy, auto-converge and libvirtd-restart runs are
//! not judged (the forecast is of plain pre-copy), nor are runs that failed for another reason.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::exporter::Exporter;
use crate::scenario::{Mode, RunResult, Scenario};

/// How long the lab waits for the forecast to have the guest's measured dirty rate (and, on the
/// delayed path, the peer's RTT) before migrating anyway.
const FORECAST_WAIT: Duration = Duration::from_secs(40);

/// The transfer-rate cap of a scenario as a `bandwidth=` value (bytes/s): QEMU's cap, or the
/// token bucket on the link, whichever is lower.
pub fn bandwidth_bytes(s: &Scenario) -> Option<u64> {
    let cap = s.bandwidth_mibs.map(|m| u64::from(m) * 1048576);
    let link = s.link_mbit.map(|m| u64::from(m) * 125_000);
    match (cap, link) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The query the lab asks: the migration's path (the `dst` peer) at the scenario's cap.
pub fn query(s: &Scenario) -> String {
    match bandwidth_bytes(s) {
        Some(b) => format!("/api/v1/forecast?peer=dst&bandwidth={b}B"),
        None => "/api/v1/forecast?peer=dst".into(),
    }
}

/// Wait for the exporter's forecast of `domain` and return its entry (with the what-if and the
/// window the exporter used); `None` if the exporter gave none in time.
pub fn record(exporter: &Exporter, s: &Scenario, domain: &str) -> Option<serde_json::Value> {
    let q = query(s);
    let until = Instant::now() + FORECAST_WAIT;
    let mut last = None;
    loop {
        if let Some(report) = exporter
            .body(&q)
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        {
            let entry = report["domains"]
                .as_array()
                .and_then(|d| d.iter().find(|e| e["domain"] == domain).cloned());
            if let Some(mut e) = entry {
                // The mean of the exporter's whole first burst of calculations (five).
                let measured = e["dirty_rate"]["source"] == "calculation"
                    && e["dirty_rate"]["samples"].as_u64() >= Some(5);
                let path_known = s.rtt_ms.is_none() || !e["path"]["window_rate"].is_null();
                e["what_if"] = report["what_if"].clone();
                e["window"] = report["window"].clone();
                // When the round that sampled the guest began (Unix s): the guest keeps writing
                // between the forecast and the migration, and a comparison needs to know how long.
                e["updated_at"] = report["updated_at"].clone();
                if measured && path_known {
                    return Some(e);
                }
                last = Some(e);
            }
        }
        if Instant::now() >= until {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What a run says about the forecast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truth {
    Converged,
    NotConverged,
    NotJudged(&'static str),
}

pub fn truth(r: &RunResult) -> Truth {
    let s = &r.scenario;
    if s.mode == Mode::Postcopy {
        return Truth::NotJudged("post-copy");
    }
    if s.auto_converge {
        return Truth::NotJudged("auto-converge");
    }
    if s.restart_source_libvirtd_after.is_some() {
        return Truth::NotJudged("libvirtd restarted");
    }
    let elapsed = actual_seconds(r).unwrap_or(r.wall_seconds);
    match r.outcome.as_str() {
        "completed" => match s.raise_max_downtime {
            Some((after, _)) if elapsed >= after.as_secs_f64() => Truth::NotConverged,
            _ => Truth::Converged,
        },
        "aborted" => Truth::NotConverged,
        _ => Truth::NotJudged("failed"),
    }
}

/// libvirt's total time of a completed migration.
pub fn actual_seconds(r: &RunResult) -> Option<f64> {
    r.libvirt_number("time_elapsed")
        .map(|ms| ms / 1000.0)
        .or_else(|| r.exporter_record.as_ref()?["duration_seconds"].as_f64())
}

fn verdict(r: &RunResult) -> &str {
    r.forecast
        .as_ref()
        .and_then(|f| f["verdict"].as_str())
        .unwrap_or("none")
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The comparison as markdown: one row per run, the confusion matrix, the time error.
pub fn markdown(results: &[RunResult]) -> String {
    let mut h = String::new();
    h.push_str("| scenario | λ | dirty MiB/s (source) | rate MiB/s (limit) | pass 1 MiB (source) | resident MiB | fill MiB/s | forecast | recommendation | forecast s | outcome | judged as | actual s | time error |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    // rows: converged / not converged; columns: converges / stalls|diverges / unknown|none.
    let mut matrix = [[0u32; 3]; 2];
    let mut errors = Vec::new();
    for r in results {
        let f = r.forecast.as_ref();
        let num = |k: &str| f.and_then(|f| f[k].as_f64());
        let v = verdict(r);
        let t = truth(r);
        let actual = actual_seconds(r);
        let forecast_s = num("duration_seconds");
        let err = match (t, forecast_s, actual) {
            (Truth::Converged, Some(p), Some(a)) if a > 0.0 && v == "converges" => {
                Some((p - a) / a)
            }
            _ => None,
        };
        if let Some(e) = err {
            errors.push(e.abs());
        }
        let row = match t {
            Truth::Converged => Some(0),
            Truth::NotConverged => Some(1),
            Truth::NotJudged(_) => None,
        };
        let col = match v {
            "converges" => 0,
            "stalls" | "diverges" => 1,
            _ => 2,
        };
        if let Some(row) = row {
            matrix[row][col] += 1;
        }
        let mib = |b: Option<f64>| {
            b.map(|b| format!("{:.1}", b / 1048576.0))
                .unwrap_or_default()
        };
        let _ = writeln!(
            h,
            "| {} | {} | {} ({}) | {} ({}) | {} ({}) | {} | {} | {v} | {} | {} | {} | {} | {} | {} |",
            r.scenario.name,
            num("dirty_to_transfer_ratio")
                .map(|l| format!("{l:.2}"))
                .unwrap_or_default(),
            mib(f.and_then(|f| f["dirty_rate"]["bytes_per_second"].as_f64())),
            f.and_then(|f| f["dirty_rate"]["source"].as_str())
                .unwrap_or("–"),
            mib(f.and_then(|f| f["path"]["rate"].as_f64())),
            f.and_then(|f| f["path"]["limit"].as_str()).unwrap_or("–"),
            mib(num("first_pass_bytes")),
            f.and_then(|f| f["first_pass_source"].as_str())
                .unwrap_or("–"),
            mib(num("resident_bytes")),
            mib(num("fill_rate_bytes")),
            f.and_then(|f| f["recommendation_text"].as_str())
                .unwrap_or("–"),
            forecast_s.map(|s| format!("{s:.1}")).unwrap_or_default(),
            r.outcome,
            match t {
                Truth::Converged => "converged".to_string(),
                Truth::NotConverged => "did not converge".to_string(),
                Truth::NotJudged(why) => format!("not judged ({why})"),
            },
            actual.map(|s| format!("{s:.1}")).unwrap_or_default(),
            err.map(|e| format!("{:+.0} %", e * 100.0))
                .unwrap_or_default(),
        );
    }
    let _ = write!(
        h,
        "\n| actual \\ forecast | converges | stalls or diverges | unknown or none |\n|---|---|---|---|\n\
| converged | {} | {} | {} |\n| did not converge | {} | {} | {} |\n\n",
        matrix[0][0], matrix[0][1], matrix[0][2], matrix[1][0], matrix[1][1], matrix[1][2]
    );
    let _ = writeln!(
        h,
        "\"converges\" forecast for a run that did not converge: {} (goal 0)",
        matrix[1][0]
    );
    let _ = writeln!(
        h,
        "median total-time error of converging runs forecast to converge: {} over {} runs (goal ≤ 25 %)",
        median(&mut errors)
            .map(|m| format!("{:.0} %", m * 100.0))
            .unwrap_or_else(|| "–".into()),
        errors.len()
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::Pattern;

    fn run(s: Scenario, outcome: &str, wall: f64, forecast: serde_json::Value) -> RunResult {
        RunResult {
            scenario: s,
            outcome: outcome.into(),
            virsh_output: String::new(),
            libvirt_completed: (outcome == "completed").then(|| {
                [("time_elapsed".to_string(), format!("{}", wall * 1000.0))]
                    .into_iter()
                    .collect()
            }),
            observations: Vec::new(),
            exporter_record: None,
            exporter_metrics: String::new(),
            wall_seconds: wall,
            trace: Default::default(),
            guest_status: None,
            integrity: None,
            ping_rtt_ms: None,
            forecast: Some(forecast),
            app_before: None,
            app_after: None,
            ended_s: None,
            switchover_s: None,
            job_started_s: None,
            metrics_url: None,
            app_probes: Vec::new(),
        }
    }

    #[test]
    fn the_matrix_and_the_error_count_what_they_should() {
        let ok = run(
            Scenario::idle("a"),
            "completed",
            10.0,
            serde_json::json!({"verdict": "converges", "duration_seconds": 12.0}),
        );
        let stuck = run(
            Scenario::stressed("b", 150, Pattern::Random, 30),
            "aborted",
            60.0,
            serde_json::json!({"verdict": "converges", "duration_seconds": 5.0}),
        );
        let mut rescued_s = Scenario::stressed("c", 150, Pattern::Random, 30);
        rescued_s.raise_max_downtime = Some((Duration::from_secs(25), 12000));
        let rescued = run(
            rescued_s,
            "completed",
            30.0,
            serde_json::json!({"verdict": "diverges"}),
        );
        let mut post = Scenario::idle("d");
        post.mode = Mode::Postcopy;
        let post = run(
            post,
            "completed",
            5.0,
            serde_json::json!({"verdict": "unknown"}),
        );
        assert_eq!(truth(&rescued), Truth::NotConverged);
        assert_eq!(truth(&post), Truth::NotJudged("post-copy"));
        let md = markdown(&[ok, stuck, rescued, post]);
        assert!(md.contains("| converged | 1 | 0 | 0 |"), "{md}");
        assert!(md.contains("| did not converge | 1 | 1 | 0 |"), "{md}");
        assert!(md.contains("did not converge: 1 (goal 0)"), "{md}");
        assert!(
            md.contains("error of converging runs forecast to converge: 20 % over 1 runs"),
            "{md}"
        );
        assert_eq!(
            query(&Scenario::stressed("x", 1, Pattern::Seq, 30)),
            "/api/v1/forecast?peer=dst&bandwidth=31457280B"
        );
    }
}
