//! verdict-eval: how good are the convergence verdicts, and the alert built on them, on recorded
//! migrations?
//!
//! Replays each trace (JSON lines from `vm-migration-exporter --trace.path`, as the lab records
//! them) through the exporter's own sampler and prints, per migration and in total:
//! - the time and pass of the first `not_converging` verdict;
//! - the verdict changes after pass 2 (target: at most 2 on a steady run);
//! - on runs that did not converge: any `converging` after pass 2 before the lab intervened
//!   (target: none); on runs that converged by themselves: whether the alert fired (target: never);
//! - the ETA given at half the migration's time against the time that really remained
//!   (converging runs; target: within 15 %);
//! - when `VMMigrationNotConverging` would fire: the repository's rules, evaluated by `promtool
//!   test rules` over the series a scrape every `--interval` would have returned during the
//!   replay (target: within 60 s of the start of every run that does not converge).
//!
//! Ground truth comes from the lab's `results.json` beside the traces directory when present
//! (what the lab did: raised the max downtime, restarted libvirtd, auto-converge).
//!
//! Usage: verdict-eval [-v] [--rules FILE] [--interval SECONDS] TRACE.jsonl|DIR…
//! Source-side traces only; post-copy runs are not judged (the switch is on a schedule).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use vm_migration_exporter::jobs::convergence::Verdict;
use vm_migration_exporter::jobs::replay::{text, Replay};
use vm_migration_exporter::jobs::sampler::SamplerConfig;
use vm_migration_exporter::jobs::stats::Direction;
use vm_migration_exporter::jobs::trace::{read_trace, TraceRecord};
use vm_migration_exporter::jobs::tracker::Outcome;
use vm_migration_exporter::libvirt::jobs::{lifecycle, DomainEvent};

const ALERT: &str = "VMMigrationNotConverging";
/// Alert target: fires within this many seconds of the start of a run that does not converge.
const ALERT_TARGET_S: f64 = 60.0;
/// Verdict changes after pass 2 allowed on a steady run.
const MAX_CHANGES: usize = 2;
/// ETA target at half time.
const ETA_TARGET: f64 = 0.15;

/// One verdict as it stood after a sample round.
struct Point {
    t: f64,
    iteration: u64,
    verdict: Verdict,
    eta: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Completed with no help.
    Converged,
    /// Aborted at the deadline (or failed) without converging.
    Stuck,
    /// Auto-converge throttled the guest: converging is expected once the throttle bites.
    AutoConverge,
    /// Finished only because the lab raised the max downtime (or restarted libvirtd).
    Rescued,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Converged => "converged",
            Kind::Stuck => "not converging",
            Kind::AutoConverge => "auto-converge",
            Kind::Rescued => "rescued",
        }
    }
}

struct Evaluated {
    name: String,
    kind: Kind,
    outcome: Outcome,
    start: f64,
    end: f64,
    /// When the lab intervened (max downtime raised), if it did.
    intervened_at: Option<f64>,
    points: Vec<Point>,
    /// (time, /metrics text) after each round.
    scrapes: Vec<(f64, String)>,
}

/// What the lab did to a scenario, from its results.json next to the traces directory.
struct LabFacts {
    forced: bool,
    auto_converge: bool,
}

fn lab_facts(path: &Path) -> Option<LabFacts> {
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
    Some(LabFacts {
        forced: !sc["raise_max_downtime"].is_null()
            || !sc["restart_source_libvirtd_after"].is_null(),
        auto_converge: sc["auto_converge"].as_bool().unwrap_or(false),
    })
}

fn is_postcopy_switch(r: &TraceRecord) -> bool {
    matches!(r, TraceRecord::Event { event: DomainEvent::Lifecycle { event, detail, .. }, .. }
        if (*event, *detail) == (lifecycle::SUSPENDED, lifecycle::SUSPENDED_POSTCOPY))
}

fn evaluate(path: &Path) -> Result<Option<Evaluated>, String> {
    let records = read_trace(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // A post-copy switch on a schedule says nothing about whether pre-copy would have converged.
    if records.iter().any(is_postcopy_switch) {
        return Ok(None);
    }
    // Forced to finish: the max downtime changed during the job.
    let downtimes: Vec<(f64, Option<u64>)> = records
        .iter()
        .filter_map(|r| match r {
            TraceRecord::MaxDowntime { t, ms, .. } => Some((*t, *ms)),
            _ => None,
        })
        .collect();
    let intervened_at = downtimes
        .iter()
        .find(|(_, ms)| Some(ms) != downtimes.first().map(|(_, m)| m))
        .map(|(t, _)| *t);

    let mut replay = Replay::new(records, SamplerConfig::default());
    let shared = replay.state.clone();
    let mut points = Vec::new();
    let mut scrapes = Vec::new();
    let mut start = None;
    replay.run(|t, registry| {
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
        scrapes.push((t, text(registry)));
    });
    let snap = shared.lock();
    let Some(f) = snap.records.iter().find(|r| r.direction == Direction::Out) else {
        return Ok(None);
    };
    let Some(start) = start else { return Ok(None) };
    let facts = lab_facts(path);
    let forced = facts
        .as_ref()
        .map(|f| f.forced)
        .unwrap_or(intervened_at.is_some());
    let kind = match (f.outcome, forced, facts.is_some_and(|f| f.auto_converge)) {
        (_, _, true) => Kind::AutoConverge,
        (_, true, _) => Kind::Rescued,
        (Outcome::Completed, false, _) => Kind::Converged,
        _ => Kind::Stuck,
    };
    Ok(Some(Evaluated {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind,
        outcome: f.outcome,
        start,
        end: f.started_at + f.duration_seconds.unwrap_or(f.finished_at - f.started_at),
        intervened_at,
        points,
        scrapes,
    }))
}

/// The series of one scrape: `name{labels}` (with the scrape's instance and job) → value.
fn parse_scrape(body: &str) -> BTreeMap<String, String> {
    let target = "instance=\"replay:9745\",job=\"vm-migration-exporter\"";
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let series = match series.split_once('{') {
                Some((name, rest)) => format!("{name}{{{target},{rest}"),
                None => format!("{series}{{{target}}}"),
            };
            Some((series, value.to_string()))
        })
        .collect()
}

/// A Go duration as promtool prints it (`1m5s`, `45s`, `500ms`) in seconds.
fn go_duration(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        total += match c {
            'h' => v * 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                v / 1000.0
            }
            'm' => v * 60.0,
            's' => v,
            _ => return None,
        };
    }
    num.is_empty().then_some(total)
}

/// When each alert of `rules` fires (seconds from the migration's start) if Prometheus scraped
/// the replayed exporter every `interval` seconds and evaluated the rules as often.
fn alert_times(
    e: &Evaluated,
    rules: &Path,
    interval: u64,
    work: &Path,
) -> Result<BTreeMap<String, f64>, String> {
    let rules_text = std::fs::read_to_string(rules)
        .map_err(|err| format!("{}: {err} (pass --rules FILE)", rules.display()))?;
    let alerts: Vec<&str> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    let step = interval as f64;
    let ticks = ((e.end - e.start) / step).ceil() as usize + 2;
    let mut series: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    let mut next = 0;
    let mut current = BTreeMap::new();
    for k in 0..ticks {
        let at = e.start + k as f64 * step;
        while next < e.scrapes.len() && e.scrapes[next].0 <= at {
            current = parse_scrape(&e.scrapes[next].1);
            next += 1;
        }
        for (s, v) in &current {
            series.entry(s.clone()).or_insert_with(|| vec![None; ticks])[k] = Some(v.clone());
        }
    }
    let mut yaml = format!(
        "rule_files: [{rules:?}]\nevaluation_interval: {interval}s\ntests:\n  - interval: {interval}s\n    input_series:\n",
        rules = rules.canonicalize().unwrap_or_else(|_| rules.to_path_buf())
    );
    for (s, values) in &series {
        // A series that leaves a scrape is marked stale, as Prometheus does.
        let mut out = Vec::with_capacity(values.len());
        let mut seen = false;
        for v in values {
            match v {
                Some(v) => {
                    seen = true;
                    out.push(v.clone());
                }
                None if seen => {
                    seen = false;
                    out.push("stale".into());
                }
                None => out.push("_".into()),
            }
        }
        yaml.push_str(&format!(
            "      - series: {}\n        values: '{}'\n",
            serde_json::Value::String(s.clone()),
            out.join(" ")
        ));
    }
    yaml.push_str("    alert_rule_test:\n");
    for k in 0..ticks {
        for a in &alerts {
            yaml.push_str(&format!(
                "      - {{eval_time: {}s, alertname: {a}, exp_alerts: []}}\n",
                k as u64 * interval
            ));
        }
    }
    let file = work.join(format!("{}.test.yml", e.name));
    std::fs::write(&file, yaml).map_err(|err| format!("{}: {err}", file.display()))?;
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .map_err(|err| {
            format!("promtool: {err} (apt-get install prometheus, or scripts/install-deps.sh)")
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Every listed failure is an alert that fired where none was expected.
    let mut fired = BTreeMap::new();
    for l in stdout.lines().chain(stderr.lines()) {
        let Some(rest) = l.trim().strip_prefix("alertname: ") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once(", time: ") else {
            continue;
        };
        let Some(t) = go_duration(rest.trim().trim_end_matches(',')) else {
            continue;
        };
        let first: &mut f64 = fired.entry(name.to_string()).or_insert(f64::INFINITY);
        *first = first.min(t);
    }
    if !out.status.success() && fired.is_empty() {
        return Err(format!(
            "promtool test rules {} failed: {stdout}{stderr}",
            file.display()
        ));
    }
    Ok(fired)
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

struct Args {
    verbose: bool,
    rules: PathBuf,
    interval: u64,
    paths: Vec<String>,
}

const USAGE: &str = "usage: verdict-eval [-v] [--rules FILE] [--interval SECONDS] TRACE.jsonl|DIR…
  Replays source-side traces (from --trace.path) and judges the convergence verdicts and the
  VMMigrationNotConverging alert. -v lists every verdict change; --rules (default: the
  repository's alerts/vm-migration.rules.yml) and --interval (scrape and evaluation interval,
  default 1) set how promtool evaluates the alert.";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        verbose: false,
        rules: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../alerts/vm-migration.rules.yml"
        )),
        interval: 1,
        paths: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-v" | "--verbose" => a.verbose = true,
            "-h" | "--help" => return Err(USAGE.into()),
            "--rules" => a.rules = it.next().ok_or("--rules needs a file")?.into(),
            "--interval" => {
                a.interval = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v| *v > 0)
                    .ok_or(
                        "--interval needs a whole number of seconds above 0, e.g. --interval 15",
                    )?
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            _ => a.paths.push(arg),
        }
    }
    if a.paths.is_empty() {
        return Err(USAGE.into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("verdict-eval: {msg}");
            return ExitCode::from(2);
        }
    };
    let work = std::env::temp_dir().join(format!("verdict-eval-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("verdict-eval: {}: {e}", work.display());
        return ExitCode::from(2);
    }
    let result = report(&args, &work);
    let _ = std::fs::remove_dir_all(&work);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verdict-eval: {e}");
            ExitCode::from(2)
        }
    }
}

fn cell(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1} s"))
        .unwrap_or_else(|| "never".into())
}

fn report(args: &Args, work: &Path) -> Result<(), String> {
    // Totals per target: (met, judged).
    let mut alert_ok = (0, 0);
    let mut steady_ok = (0, 0);
    let mut false_conv = (0, 0);
    let mut false_alarm = (0, 0);
    let mut eta_ok = (0, 0);
    let mut changes_all = 0;
    println!(
        "| trace | kind | outcome | first not_converging | changes after pass 2 | converging after pass 2 | alert fires ({} s scrape) | other alerts | ETA error at half time |",
        args.interval
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for path in traces(&args.paths) {
        let Some(e) = evaluate(&path)? else {
            eprintln!(
                "verdict-eval: {}: post-copy (or no outgoing migration): not judged",
                path.display()
            );
            continue;
        };
        if args.verbose {
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
        let first_bad = e
            .points
            .iter()
            .find(|p| p.verdict.is_non_converging())
            .map(|p| (p.t - e.start, p.iteration));
        let changes = e
            .points
            .windows(2)
            .filter(|w| w[1].iteration > 2 && w[0].verdict != w[1].verdict)
            .count();
        changes_all += changes;
        let before_help = |p: &&Point| e.intervened_at.is_none_or(|t| p.t < t);
        let conv_after_2 = e
            .points
            .iter()
            .filter(before_help)
            .any(|p| p.iteration > 2 && p.verdict == Verdict::Converging);
        let fired = alert_times(&e, &args.rules, args.interval, work)?;
        let alert_at = fired.get(ALERT).copied();
        let others: BTreeSet<&str> = fired
            .keys()
            .map(String::as_str)
            .filter(|a| *a != ALERT)
            .collect();
        let mut eta_cell = "–".to_string();
        match e.kind {
            Kind::Stuck => {
                alert_ok.1 += 1;
                alert_ok.0 += usize::from(alert_at.is_some_and(|t| t <= ALERT_TARGET_S));
                steady_ok.1 += 1;
                steady_ok.0 += usize::from(changes <= MAX_CHANGES);
                false_conv.1 += 1;
                false_conv.0 += usize::from(conv_after_2);
            }
            Kind::Rescued => {
                // Judged on the time before the lab stepped in.
                false_conv.1 += 1;
                false_conv.0 += usize::from(conv_after_2);
                if e.intervened_at
                    .is_some_and(|t| t - e.start > ALERT_TARGET_S)
                {
                    alert_ok.1 += 1;
                    alert_ok.0 += usize::from(alert_at.is_some_and(|t| t <= ALERT_TARGET_S));
                }
            }
            Kind::Converged => {
                false_alarm.1 += 1;
                false_alarm.0 += usize::from(alert_at.is_some());
                steady_ok.1 += 1;
                steady_ok.0 += usize::from(changes <= MAX_CHANGES);
                let half = e.start + (e.end - e.start) / 2.0;
                let at_half = e
                    .points
                    .iter()
                    .rev()
                    .find(|p| p.t <= half && p.eta.is_some());
                eta_cell = match at_half.and_then(|p| p.eta.map(|eta| (p, eta))) {
                    Some((p, eta)) if e.end > p.t => {
                        let err = (eta - (e.end - p.t)).abs() / (e.end - p.t);
                        eta_ok.1 += 1;
                        eta_ok.0 += usize::from(err <= ETA_TARGET);
                        format!("{:.0} %", err * 100.0)
                    }
                    _ => "no ETA before half time".to_string(),
                };
            }
            Kind::AutoConverge => {}
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            e.name.trim_end_matches("-source.jsonl"),
            e.kind.as_str(),
            e.outcome.as_str(),
            first_bad
                .map(|(s, i)| format!("{s:.1} s, pass {i}"))
                .unwrap_or_else(|| "never".into()),
            changes,
            if matches!(e.kind, Kind::Stuck | Kind::Rescued) {
                if conv_after_2 {
                    "YES"
                } else {
                    "no"
                }
            } else {
                "–"
            },
            cell(alert_at),
            if others.is_empty() {
                "–".to_string()
            } else {
                others.into_iter().collect::<Vec<_>>().join(", ")
            },
            eta_cell
        );
    }
    println!();
    println!(
        "runs that do not converge whose alert fired within {ALERT_TARGET_S:.0} s: {} of {}",
        alert_ok.0, alert_ok.1
    );
    println!(
        "steady runs with at most {MAX_CHANGES} verdict changes after pass 2: {} of {} ({changes_all} changes in all runs)",
        steady_ok.0, steady_ok.1
    );
    println!(
        "runs that do not converge called converging after pass 2: {} of {}",
        false_conv.0, false_conv.1
    );
    println!(
        "converging runs on which the alert fired (false alarms): {} of {}",
        false_alarm.0, false_alarm.1
    );
    println!(
        "converging runs with the half-time ETA within {:.0} %: {} of {}",
        ETA_TARGET * 100.0,
        eta_ok.0,
        eta_ok.1
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promtool_durations() {
        assert_eq!(go_duration("45s"), Some(45.0));
        assert_eq!(go_duration("1m5s"), Some(65.0));
        assert_eq!(go_duration("2m"), Some(120.0));
        assert_eq!(go_duration("1h0m1s"), Some(3601.0));
        assert_eq!(go_duration("500ms"), Some(0.5));
        assert_eq!(go_duration("0s"), Some(0.0));
        assert_eq!(go_duration("5x"), None);
        assert_eq!(go_duration("5"), None);
    }

    #[test]
    fn scrape_lines_become_series_of_one_target() {
        let s = parse_scrape(
            "# HELP x y\nvm_migration_libvirt_up 1\nvm_migration_convergence{domain=\"g\",state=\"unknown\"} 1.0\n",
        );
        assert_eq!(
            s.get(
                "vm_migration_libvirt_up{instance=\"replay:9745\",job=\"vm-migration-exporter\"}"
            ),
            Some(&"1".to_string())
        );
        assert_eq!(
            s.get("vm_migration_convergence{instance=\"replay:9745\",job=\"vm-migration-exporter\",domain=\"g\",state=\"unknown\"}"),
            Some(&"1.0".to_string())
        );
        assert_eq!(s.len(), 2);
    }
}
