//! What the forecast's dirty-rate calculations cost (`migration-lab cost`): one guest on the
//! source, a window without calculations and a window with them back to back
//! (`virsh domdirtyrate-calc --seconds 1`, page sampling, as the exporter starts them), and in
//! each the CPU time of its QEMU process and of the source libvirtd (from `/proc/<pid>/stat`),
//! and the write rate the guest's dirtier reports on its console (its own figure: does sampling
//! slow the guest down?). Back to back is the worst case: the exporter calculates once per guest
//! per `--forecast.interval` (default 5 minutes).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::guest::{self, GuestSpec, Pattern};
use crate::{Lab, LabError};

/// One window's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub seconds: f64,
    pub qemu_cpu_seconds: f64,
    pub libvirtd_cpu_seconds: f64,
    pub calculations: u32,
    /// Mean of the dirtier's `rate=` figures printed in the window.
    pub guest_rate_mibs: Option<f64>,
    /// Mean dirty rate the calculations measured.
    pub measured_mibs: Option<f64>,
}

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: i32) -> Option<f64> {
    testkit::cpu_seconds(u32::try_from(pid).ok()?)
}

fn rates_in(serial: &Path, skip_lines: usize) -> (usize, Option<f64>) {
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" rate=")).collect();
    let new: Vec<f64> = lines
        .iter()
        .skip(skip_lines)
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("rate="))
                .and_then(|v| v.trim_end_matches("MiB/s").parse().ok())
        })
        .collect();
    let mean = (!new.is_empty()).then(|| new.iter().sum::<f64>() / new.len() as f64);
    (lines.len(), mean)
}

fn measured(lab: &Lab, name: &str) -> Option<(i64, f64)> {
    let out = lab.src.virsh(&["domstats", "--dirtyrate", name]).ok()?;
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("dirtyrate.{k}=")))
            .map(str::to_string)
    };
    if get("calc_status")?.trim() != "2" {
        return None;
    }
    let start: i64 = get("calc_start_time")?.trim().parse().ok()?;
    let rate: f64 = get("megabytes_per_second")?.trim().parse().ok()?;
    Some((start, rate))
}

/// Run the measurement; returns (without, with) calculations.
pub fn run(
    lab: &Lab,
    out: &Path,
    dirty_mbps: u32,
    window: Duration,
) -> Result<(Window, Window), LabError> {
    let mut spec = GuestSpec::idle("cost");
    spec.dirty_mbps = dirty_mbps;
    spec.dirty_mb = 256;
    spec.pattern = Pattern::Random;
    let xml = out.join("cost.xml");
    std::fs::write(&xml, spec.domain_xml(&lab.assets))
        .map_err(|e| LabError::Setup(e.to_string()))?;
    let _ = lab.src.virsh(&["destroy", "cost"]);
    lab.src
        .virsh(&["create", &xml.to_string_lossy()])
        .map_err(|e| LabError::Guest(e.to_string()))?;
    let result = (|| {
        let serial = lab.src.dir().join("log/qemu/cost.serial");
        guest::wait_running(&serial, Duration::from_secs(90))?;
        let pid_file = lab.src.dir().join("run/qemu/cost.pid");
        let qemu: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| LabError::Guest(format!("no QEMU pid in {}", pid_file.display())))?;
        let libvirtd = lab.src.pid().unwrap_or(0);
        let mut windows = [Window::default(); 2];
        for (i, calculate) in [false, true].into_iter().enumerate() {
            let (lines0, _) = rates_in(&serial, 0);
            let (q0, l0) = (cpu_seconds(qemu), cpu_seconds(libvirtd));
            let began = Instant::now();
            let mut w = Window::default();
            let mut rates = Vec::new();
            let mut last_start = measured(lab, "cost").map(|m| m.0);
            while began.elapsed() < window {
                if calculate {
                    lab.src
                        .virsh(&["domdirtyrate-calc", "cost", "--seconds", "1"])
                        .map_err(|e| LabError::Guest(e.to_string()))?;
                    w.calculations += 1;
                    // Until this calculation is measured (a new start time).
                    let until = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < until {
                        if let Some((start, rate)) = measured(lab, "cost") {
                            if Some(start) != last_start {
                                last_start = Some(start);
                                rates.push(rate);
                                break;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            w.seconds = began.elapsed().as_secs_f64();
            w.qemu_cpu_seconds = cpu_seconds(qemu).zip(q0).map_or(0.0, |(a, b)| a - b);
            w.libvirtd_cpu_seconds = cpu_seconds(libvirtd).zip(l0).map_or(0.0, |(a, b)| a - b);
            w.guest_rate_mibs = rates_in(&serial, lines0).1;
            w.measured_mibs =
                (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64);
            windows[i] = w;
        }
        Ok((windows[0], windows[1]))
    })();
    let _ = lab.src.virsh(&["destroy", "cost"]);
    result
}

/// The two windows as markdown.
pub fn markdown(dirty_mbps: u32, without: &Window, with: &Window) -> String {
    let row = |name: &str, w: &Window| {
        format!(
            "| {name} | {:.0} | {} | {:.2} | {:.3} | {} | {} |\n",
            w.seconds,
            w.calculations,
            w.qemu_cpu_seconds,
            w.libvirtd_cpu_seconds,
            w.guest_rate_mibs
                .map(|r| format!("{r:.1}"))
                .unwrap_or_default(),
            w.measured_mibs
                .map(|r| format!("{r:.1}"))
                .unwrap_or_default(),
        )
    };
    let per_calc = |a: f64, b: f64| {
        if with.calculations == 0 {
            0.0
        } else {
            (b / with.seconds - a / without.seconds) * with.seconds / f64::from(with.calculations)
        }
    };
    format!(
        "Guest: 512 MiB, random writes at {dirty_mbps} MiB/s over 256 MiB.\n\n\
| window | s | calculations | QEMU CPU s | libvirtd CPU s | guest's own write rate MiB/s | measured dirty rate MiB/s |\n|---|---|---|---|---|---|---|\n{}{}\n\
Extra CPU per calculation: QEMU {:.3} s, libvirtd {:.4} s.\n",
        row("without calculations", without),
        row("calculations back to back", with),
        per_calc(without.qemu_cpu_seconds, with.qemu_cpu_seconds),
        per_calc(without.libvirtd_cpu_seconds, with.libvirtd_cpu_seconds),
    )
}
