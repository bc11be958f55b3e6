//! migration-lab: real live migrations between two libvirt hosts on this machine, watched by
//! vm-migration-exporter.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use migration_lab::{down, guest, presets, report, Lab, LabError};

#[derive(Parser)]
#[command(name = "migration-lab", version, about, long_about = None, max_term_width = 100)]
/// Two libvirt "hosts" on one machine (each libvirtd in its own mount namespace, the
/// destination also in its own network namespace behind a veth), real QEMU guests that dirty
/// memory at chosen rates and patterns, and live migrations between them watched by
/// vm-migration-exporter. Needs root.
struct Cli {
    /// Where the lab keeps guest assets and host state.
    #[arg(
        long = "lab.dir",
        env = "MIGRATION_LAB_DIR",
        default_value = "/var/tmp/migration-lab",
        global = true
    )]
    lab_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download the Debian cloud kernel and build the guest initramfs (cached).
    Setup,
    /// Start both hosts and leave them running; prints their libvirt URIs.
    Up {
        /// vm-migration-exporter binary (default: $VM_MIGRATION_EXPORTER, else next to this one).
        #[arg(long)]
        exporter: Option<PathBuf>,
    },
    /// Stop everything a lab in --lab.dir left running (also after a crash).
    Down,
    /// Only the network path, for benchmarks: the destination namespace with its veth
    /// (10.77.0.2) and the delay link (10.78.0.2) at --rtt-ms, until stdin closes.
    Path {
        #[arg(long, default_value_t = 0)]
        rtt_ms: u32,
    },
    /// What the forecast's dirty-rate calculations cost: CPU of QEMU and libvirtd and the
    /// guest's own write rate, without calculations and with them back to back (writes cost.md).
    Cost {
        #[arg(long, default_value = "lab-out")]
        out: PathBuf,
        /// The guest's random-write rate, MiB/s.
        #[arg(long, default_value_t = 100)]
        dirty_mbps: u32,
        /// Seconds of each window.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long)]
        exporter: Option<PathBuf>,
    },
    /// Compare the forecasts of an earlier run with its outcomes (writes forecast.md).
    Forecast {
        #[arg(long, default_value = "lab-out")]
        out: PathBuf,
    },
    /// Draw the plots of an earlier run again from its results.json.
    Plot {
        #[arg(long, default_value = "lab-out")]
        out: PathBuf,
    },
    /// Run a preset (smoke, ci, paper, convergence, app) or your own scenarios (--scenario FILE): one
    /// migration at a time, the exporter watching each; writes results.md, results.csv,
    /// results.json and per-migration traces to --out.
    Run {
        /// A named set: smoke, ci, paper, convergence or app (docs/lab.md).
        #[arg(long, default_value = "smoke", conflicts_with = "scenario")]
        preset: String,
        /// YAML or JSON file with a list under `scenarios:` (fields and defaults: docs/lab.md).
        #[arg(long)]
        scenario: Option<PathBuf>,
        #[arg(long, default_value = "lab-out")]
        out: PathBuf,
        #[arg(long)]
        exporter: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let say = |m: &str| eprintln!("migration-lab: {m}");
    let result = match cli.cmd {
        Cmd::Setup => guest::setup(&cli.lab_dir, &say).map(|a| {
            println!(
                "kernel {}\ninitrd {}",
                a.kernel.display(),
                a.initrd.display()
            );
        }),
        Cmd::Down => {
            down(&cli.lab_dir);
            say("stopped");
            Ok(())
        }
        Cmd::Path { rtt_ms } => path(rtt_ms, &say),
        Cmd::Up { exporter } => Lab::up(&cli.lab_dir, exporter.as_deref(), &say).map(|lab| {
            println!(
                "source      {}\ndestination {}",
                lab.src.uri(),
                lab.dst.uri()
            );
            println!("stop with: migration-lab down");
            // Leave the daemons running: `down` finds them by pid file.
            std::mem::forget(lab);
        }),
        Cmd::Run {
            preset,
            scenario,
            out,
            exporter,
        } => {
            // Scenario files are benches (lab/scenarios/forecast.yml is the forecast's).
            let evaluate = scenario.is_some() || presets::evaluates(&preset);
            match scenario {
                Some(file) => migration_lab::scenario_file::load(&file),
                None => presets::by_name(&preset).ok_or_else(|| {
                    LabError::Setup(format!(
                        "unknown --preset {preset}: use smoke, ci, paper, convergence or app, or --scenario FILE"
                    ))
                }),
            }
            .and_then(|scenarios| run(&cli.lab_dir, &scenarios, &out, exporter, evaluate, &say))
        }
        Cmd::Cost {
            out,
            dirty_mbps,
            seconds,
            exporter,
        } => std::fs::create_dir_all(&out)
            .map_err(|e| LabError::Setup(format!("--out {}: {e}", out.display())))
            .and_then(|()| Lab::up(&cli.lab_dir, exporter.as_deref(), &say))
            .and_then(|lab| {
                migration_lab::cost::run(
                    &lab,
                    &out,
                    dirty_mbps,
                    std::time::Duration::from_secs(seconds),
                )
            })
            .map(|(a, b)| {
                let md = migration_lab::cost::markdown(dirty_mbps, &a, &b);
                println!("{md}");
                let _ = std::fs::write(out.join("cost.md"), md);
            }),
        Cmd::Forecast { out } => read_results(&out).map(|r| forecast_report(&r, &out)),
        Cmd::Plot { out } => std::fs::read_to_string(out.join("results.json"))
            .map_err(|e| LabError::Setup(format!("{}/results.json: {e}", out.display())))
            .and_then(|t| {
                serde_json::from_str::<Vec<migration_lab::scenario::RunResult>>(&t)
                    .map_err(|e| LabError::Setup(format!("{}/results.json: {e}", out.display())))
            })
            .map(|results| plot(&results, &out)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("migration-lab: {e}");
            ExitCode::from(match e {
                LabError::NotRoot | LabError::Setup(_) => 2,
                _ => 1,
            })
        }
    }
}

fn read_results(
    out: &std::path::Path,
) -> Result<Vec<migration_lab::scenario::RunResult>, LabError> {
    let t = std::fs::read_to_string(out.join("results.json"))
        .map_err(|e| LabError::Setup(format!("{}/results.json: {e}", out.display())))?;
    serde_json::from_str(&t)
        .map_err(|e| LabError::Setup(format!("{}/results.json: {e}", out.display())))
}

fn plot(results: &[migration_lab::scenario::RunResult], out: &std::path::Path) {
    match migration_lab::plots::write(out, results) {
        Ok(files) => println!(
            "plots: {} PNG files in {}/plots/",
            files.len(),
            out.display()
        ),
        Err(e) => eprintln!("migration-lab: plots not written: {e}"),
    }
}

fn run(
    lab_dir: &std::path::Path,
    scenarios: &[migration_lab::scenario::Scenario],
    out: &std::path::Path,
    exporter: Option<PathBuf>,
    evaluate: bool,
    say: &dyn Fn(&str),
) -> Result<(), LabError> {
    std::fs::create_dir_all(out)
        .map_err(|e| LabError::Setup(format!("--out {}: {e}", out.display())))?;
    let mut lab = Lab::up(lab_dir, exporter.as_deref(), say)?;
    let mut results = Vec::new();
    let n = scenarios.len();
    for (i, s) in scenarios.iter().enumerate() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{prefix}] {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(format!("{}/{n} {}", i + 1, s.name));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let r = lab.run(s, out, &|o| {
            bar.set_message(format!(
                "pass {} remaining {} verdict {} phase {}",
                o.iteration
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "–".into()),
                o.data_remaining
                    .map(|v| format!("{:.0} MiB", v / 1048576.0))
                    .unwrap_or_else(|| "–".into()),
                o.verdict.as_deref().unwrap_or("–"),
                o.phase.as_deref().unwrap_or("–"),
            ));
        })?;
        bar.finish_with_message(format!(
            "{} ({:.1} s), exporter verdicts: {}",
            r.outcome,
            r.wall_seconds,
            r.verdicts_seen().join(" → ")
        ));
        results.push(r);
        report::write(out, &results)
            .map_err(|e| LabError::Setup(format!("writing results to {}: {e}", out.display())))?;
    }
    drop(lab);
    println!("{}", report::markdown(&results));
    if evaluate {
        forecast_report(&results, out);
    } else {
        // A first run: what the table means for the guest's users (the forecast's grading
        // against the project's goals is for the benches: `migration-lab forecast`).
        println!("{}", report::app_summary(&results));
    }
    println!(
        "results: {0}/results.md, {0}/results.csv, {0}/results.json; traces: {0}/traces/",
        out.display()
    );
    plot(&results, out);
    // The checkout this binary was built from, when it is still there.
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .filter(|r| r.join("dashboards").is_dir());
    let url = results.iter().rev().find_map(|r| r.metrics_url.as_deref());
    println!("\n{}", report::next_steps(repo, url));
    Ok(())
}

/// The forecasts against the outcomes, printed and written to `forecast.md`.
fn forecast_report(results: &[migration_lab::scenario::RunResult], out: &std::path::Path) {
    let md = migration_lab::forecast_eval::markdown(results);
    println!("{md}");
    if let Err(e) = std::fs::write(out.join("forecast.md"), &md) {
        eprintln!(
            "migration-lab: {}/forecast.md not written: {e}",
            out.display()
        );
    }
}

/// Hold the lab's network path up (no hosts) until stdin closes.
fn path(rtt_ms: u32, say: &dyn Fn(&str)) -> Result<(), LabError> {
    use std::io::Read;
    if !migration_lab::is_root() {
        return Err(LabError::NotRoot);
    }
    let link = migration_lab::net::Link::create(migration_lab::NETNS, migration_lab::SOURCE_DEV)?;
    let delay = migration_lab::delay::DelayLink::create(migration_lab::NETNS)?;
    delay.set_rtt(std::time::Duration::from_millis(u64::from(rtt_ms)));
    say(&format!(
        "path up: {} (veth), {} (delay link, RTT {rtt_ms} ms) in namespace {}; close stdin to tear down",
        migration_lab::net::DEST_ADDR,
        migration_lab::delay::DEST_ADDR,
        migration_lab::NETNS
    ));
    println!("ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(delay);
    drop(link);
    Ok(())
}
