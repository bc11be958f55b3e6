//! verdict-eval: how good are the convergence verdicts on recorded migrations?
//!
//! Replays each trace (JSON lines from `vm-migration-exporter --trace.path`, as the lab records
//! them) through the exporter's own sampler and prints, per migration and in total:
//! - for migrations that did not converge by themselves (aborted, or finished only after the
//!   max downtime was raised or post-copy was switched on): seconds and passes from the start to
//!   the first `stalled`/`diverging` verdict (target: within 15 s or 3 passes);
//! - for migrations that converged by themselves: whether any verdict after pass 2 said
//!   `stalled`/`diverging` (target: never);
//! - for those, the ETA given at half the migration's time against the time that really
//!   remained (target: within 15 %).
//!
//! Usage: verdict-eval TRACE.jsonl… (or a directory of them). Source-side traces only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vm_migration_exporter::libvirt::jobs::{lifecycle, DomainEvent};
use vm_migration_exporter::migration::convergence::Verdict;
use vm_migration_exporter::migration::tracker::Outcome;
use vm_migration_exporter::sampler::replay::Replay;
use vm_migration_exporter::sampler::SamplerConfig;
use vm_migration_exporter::trace::{read_trace, TraceRecord};

/// One verdict as it stood after a sample round.
struct Point {
    t: f64,
    iteration: u64,
    verdict: Verdict,
    eta: Option<f64>,
}

struct Evaluated {
    name: String,
    converged_alone: bool,
    outcome: Option<Outcome>,
    start: f64,
    end: f64,
    points: Vec<Point>,
}

/// What the lab did to a scenario, from its results.json next to the traces directory: the
/// ground truth of "converged by itself" (a trace alone can miss a raise made just before the
/// end).
fn lab_forced(path: &Path) -> Option<bool> {
    let results = path.parent()?.parent()?.join("results.json");
    let runs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(results).ok()?).ok()?;
    let name = path
        .file_name()?
        .to_string_lossy()
        .trim_end_matches("-source.jsonl")
        .to_string();
    let run = runs
        .iter()
        .find(|r| r["scenario"]["name"] == name.as_str())?;
    let sc = &run["scenario"];
    Some(!sc["raise_max_downtime"].is_null() || !sc["restart_source_libvirtd_after"].is_null())
}

fn evaluate(path: &Path) -> Result<Option<Evaluated>, String> {
    let records = read_trace(path).map_err(|e| e.to_string())?;
    // A post-copy switch on a schedule says nothing about whether pre-copy would have converged.
    let switched = records.iter().any(|r| {
        matches!(r, TraceRecord::Event { event: DomainEvent::Lifecycle { event, detail, .. }, .. }
            if (*event, *detail) == (lifecycle::SUSPENDED, lifecycle::SUSPENDED_POSTCOPY))
    });
    if switched {
        return Ok(None);
    }
    // Forced to finish: the max downtime changed during the job, or post-copy was switched on.
    let mut downtimes = records.iter().filter_map(|r| match r {
        TraceRecord::MaxDowntime { ms, .. } => Some(*ms),
        _ => None,
    });
    let first = downtimes.next().flatten();
    let raised = downtimes.any(|m| m != first);
    let postcopy = records.iter().any(|r| {
        matches!(r, TraceRecord::Event { event: DomainEvent::Lifecycle { event, detail, .. }, .. }
            if (*event, *detail) == (lifecycle::SUSPENDED, lifecycle::SUSPENDED_POSTCOPY))
    });

    let mut replay = Replay::new(records, SamplerConfig::default());
    let shared = replay.state.clone();
    let mut points = Vec::new();
    let mut start = None;
    replay.run(|t, _| {
        if let Some(j) = shared.lock().active.iter().find(|j| j.stats.is_migration()) {
            start.get_or_insert(j.started_at);
            let a = j.convergence.current();
            points.push(Point {
                t,
                iteration: j.stats.memory_iteration.unwrap_or(0),
                verdict: a.verdict,
                eta: a.eta_seconds,
            });
        }
    });
    let snap = shared.lock();
    let Some(f) = snap
        .records
        .iter()
        .find(|r| r.direction == vm_migration_exporter::migration::stats::Direction::Out)
    else {
        return Ok(None);
    };
    let Some(start) = start else { return Ok(None) };
    Ok(Some(Evaluated {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        converged_alone: f.outcome == Outcome::Completed
            && !lab_forced(path).unwrap_or(raised || postcopy),
        outcome: Some(f.outcome),
        start,
        end: f.started_at + f.duration_seconds.unwrap_or(f.finished_at - f.started_at),
        points,
    }))
}

fn traces(args: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for a in args {
        let p = PathBuf::from(a);
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                let mut v: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                    .filter(|p| !p.to_string_lossy().contains("destination"))
                    .collect();
                v.sort();
                out.extend(v);
            }
        } else {
            out.push(p);
        }
    }
    out
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let verbose = args.iter().any(|a| a == "-v" || a == "--verbose");
    args.retain(|a| a != "-v" && a != "--verbose");
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: verdict-eval [-v] TRACE.jsonl|DIR…  (source-side traces from --trace.path; -v lists every verdict change)");
        return ExitCode::from(2);
    }
    // (seconds, pass) of the first non-converging verdict, None when never flagged; only runs
    // that lasted 15 s or reached pass 3 count (an earlier abort gave the model no chance).
    let mut detect: Vec<Option<(f64, u64)>> = Vec::new();
    let mut false_alarms = 0;
    let mut converging_runs = 0;
    let mut eta_errors = Vec::new();
    println!("| trace | outcome | converged by itself | first stalled/diverging | false alarm after pass 2 | ETA error at half time |");
    println!("|---|---|---|---|---|---|");
    for path in traces(&args) {
        let e = match evaluate(&path) {
            Ok(Some(e)) => e,
            Ok(None) => {
                eprintln!(
                    "verdict-eval: {}: post-copy (or no outgoing migration): not judged",
                    path.display()
                );
                continue;
            }
            Err(err) => {
                eprintln!("verdict-eval: {err}");
                return ExitCode::from(2);
            }
        };
        if verbose {
            let mut last = None;
            for p in &e.points {
                if last != Some(p.verdict) {
                    eprintln!(
                        "{}: {:>6.1} s pass {:>2} {}",
                        e.name,
                        p.t - e.start,
                        p.iteration,
                        p.verdict.as_str()
                    );
                    last = Some(p.verdict);
                }
            }
        }
        let first_bad = e.points.iter().find(|p| p.verdict.is_non_converging());
        let (detect_cell, alarm_cell, eta_cell);
        if e.converged_alone {
            converging_runs += 1;
            let alarm = e
                .points
                .iter()
                .any(|p| p.iteration > 2 && p.verdict.is_non_converging());
            false_alarms += usize::from(alarm);
            alarm_cell = if alarm { "YES" } else { "no" }.to_string();
            detect_cell = "–".to_string();
            let half = e.start + (e.end - e.start) / 2.0;
            let at_half = e
                .points
                .iter()
                .rev()
                .find(|p| p.t <= half && p.eta.is_some());
            eta_cell = match at_half.and_then(|p| p.eta.map(|eta| (p, eta))) {
                Some((p, eta)) if e.end > p.t => {
                    let err = (eta - (e.end - p.t)).abs() / (e.end - p.t);
                    eta_errors.push(err);
                    format!("{:.0} %", err * 100.0)
                }
                _ => "no ETA before half time".to_string(),
            };
        } else {
            alarm_cell = "–".to_string();
            eta_cell = "–".to_string();
            let max_pass = e.points.iter().map(|p| p.iteration).max().unwrap_or(0);
            let eligible = e.end - e.start >= 15.0 || max_pass >= 3;
            let first = first_bad.map(|p| (p.t - e.start, p.iteration));
            if eligible {
                detect.push(first);
            }
            detect_cell = match first {
                Some((s, i)) => format!("{s:.1} s, pass {i}"),
                None if eligible => "never (miss)".to_string(),
                None => "never (ended before 15 s and pass 3)".to_string(),
            };
        }
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            e.name,
            e.outcome.map(|o| o.as_str()).unwrap_or("?"),
            if e.converged_alone { "yes" } else { "no" },
            detect_cell,
            alarm_cell,
            eta_cell
        );
    }
    println!();
    let within = detect
        .iter()
        .flatten()
        .filter(|(s, i)| *s <= 15.0 || *i <= 3)
        .count();
    println!(
        "non-converging runs flagged within 15 s or 3 passes: {within} of {}",
        detect.len()
    );
    println!(
        "converging runs with a false alarm after pass 2: {false_alarms} of {converging_runs}"
    );
    let eta_ok = eta_errors.iter().filter(|e| **e <= 0.15).count();
    println!(
        "converging runs with the half-time ETA within 15 %: {eta_ok} of {}",
        eta_errors.len()
    );
    ExitCode::SUCCESS
}
