//! PNG plots of a lab run: total time (completed and aborted runs told apart) and downtime per
//! scenario, data remaining over time per migration (verdict changes, the switch-over and the
//! end marked), and for guests with a service, each probe's latency around the migration.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::scenario::RunResult;

/// Debian's fonts-dejavu-core; plotters draws text with it.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<(), String> {
    use std::sync::OnceLock;
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes =
            std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core)"))?;
        // plotters keeps a reference for the process's lifetime.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "cannot load the font".to_string())
    })
    .clone()
}

fn bars(path: &Path, title: &str, unit: &str, rows: &[(String, f64)]) -> Result<(), String> {
    let rows: Vec<(String, f64, RGBColor)> =
        rows.iter().map(|(n, v)| (n.clone(), *v, BLUE)).collect();
    colored_bars(path, title, unit, &rows)
}

/// Horizontal bars, each in its own colour.
fn colored_bars(
    path: &Path,
    title: &str,
    unit: &str,
    rows: &[(String, f64, RGBColor)],
) -> Result<(), String> {
    let root = BitMapBackend::new(path, (1000, 120 + 34 * rows.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(330)
        // Segments: each label sits at the middle of its bar.
        .build_cartesian_2d(0.0..max, (0..rows.len()).into_segmented())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(unit)
        .y_labels(rows.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => rows.get(*i).map(|r| r.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, v, c))| {
            let mut r = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (*v, SegmentValue::Exact(i + 1)),
                ],
                c.mix(0.6).filled(),
            );
            r.set_margin(5, 5, 0, 0);
            r
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Colour of a run's outcome: completed blue, aborted (at the deadline) orange, failed red.
fn outcome_color(outcome: &str) -> RGBColor {
    match outcome {
        "completed" => BLUE,
        "aborted" => RGBColor(230, 130, 0),
        _ => RED,
    }
}

/// A labelled vertical line at `t` from `bottom` to `top` (any y axis: linear or log).
#[allow(clippy::too_many_arguments)]
fn mark<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    t: f64,
    bottom: f64,
    top: f64,
    label_at: f64,
    label: &str,
    color: RGBColor,
) -> Result<(), String> {
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(t, bottom), (t, top)],
            color.stroke_width(1),
        )))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(std::iter::once(Text::new(
            label.to_string(),
            (t, label_at),
            ("sans-serif", 14).into_font().color(&color),
        )))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn remaining(path: &Path, r: &RunResult) -> Result<(), String> {
    // Only what the job showed while it ran: nothing after the migration's end (the exporter's
    // last figures are not "still remaining" then).
    let end = r.ended_s.unwrap_or(f64::INFINITY);
    let mut pts: Vec<(f64, f64)> = r
        .observations
        .iter()
        .filter(|o| o.t <= end)
        .filter_map(|o| o.data_remaining.map(|d| (o.t, d / 1048576.0)))
        .collect();
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let tmax = pts.iter().map(|p| p.0).chain(r.ended_s).fold(1.0, f64::max) * 1.04;
    let ymax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let title = format!(
        "{}: data remaining ({}), verdicts {}",
        r.scenario.name,
        r.outcome,
        r.verdicts_seen().join(" → ")
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..tmax, 0.0..ymax)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds since virsh migrate")
        .y_desc("MiB")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    // A completed migration has nothing left at its end.
    let done = match (r.outcome.as_str(), r.ended_s) {
        ("completed", Some(e)) => Some((e, 0.0)),
        _ => None,
    };
    if let (Some(d), Some(last)) = (done, pts.last().copied()) {
        chart
            .draw_series(LineSeries::new(vec![last, d], RED.mix(0.5).stroke_width(1)))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(Circle::new(d, 4, RED.filled())))
            .map_err(|e| e.to_string())?;
    }
    pts.dedup();
    chart
        .draw_series(LineSeries::new(pts, RED.stroke_width(2)))
        .map_err(|e| e.to_string())?;
    // Verdict changes as vertical marks.
    let mut last: Option<&str> = None;
    for o in r.observations.iter().filter(|o| o.t <= end) {
        if let Some(v) = o.verdict.as_deref() {
            if last != Some(v) {
                let color = match v {
                    "converging" => GREEN,
                    "not_converging" | "postcopy_failed" => RED,
                    _ => BLACK,
                };
                mark(&mut chart, o.t, 0.0, ymax, ymax * 0.95, v, color)?;
                last = Some(v);
            }
        }
    }
    if let Some(t) = r.switchover_s {
        let what = if r
            .observations
            .iter()
            .any(|o| o.phase.as_deref() == Some("postcopy"))
        {
            "post-copy"
        } else {
            "switch-over"
        };
        mark(&mut chart, t, 0.0, ymax, ymax * 0.85, what, MAGENTA)?;
    }
    if let Some(e) = r.ended_s {
        mark(
            &mut chart,
            e,
            0.0,
            ymax,
            ymax * 0.75,
            &r.outcome,
            outcome_color(&r.outcome),
        )?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Each probe of the guest's service around the migration: latency of good answers, failures
/// at the top; migration start, switch-over and end marked.
fn app_latency(path: &Path, r: &RunResult) -> Result<(), String> {
    let probes = &r.app_probes;
    let t0 = probes.iter().map(|p| p.t).fold(0.0, f64::min);
    let t1 = probes
        .iter()
        .map(|p| p.t + p.latency_s)
        .chain(r.ended_s)
        .fold(1.0, f64::max);
    let top_ms = probes
        .iter()
        .map(|p| p.latency_s * 1e3)
        .fold(10.0, f64::max)
        * 2.0;
    let failures = probes.iter().filter(|p| !p.good).count();
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let outage = r
        .exporter_record
        .as_ref()
        .and_then(|x| x["app"][0]["outage_seconds"].as_f64());
    let title = format!(
        "{}: app probes ({} sent, {} failed; outage {}; libvirt downtime {})",
        r.scenario.name,
        probes.len(),
        failures,
        outage.map_or("-".into(), |o| format!("{:.0} ms", o * 1e3)),
        r.libvirt_number("downtime")
            .map_or("-".into(), |d| format!("{d:.0} ms")),
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(t0..t1, (0.3..top_ms).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds since virsh migrate")
        .y_desc("latency, ms (log)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(
            probes
                .iter()
                .filter(|p| p.good)
                .map(|p| Circle::new((p.t, (p.latency_s * 1e3).max(0.3)), 2, BLUE.filled())),
        )
        .map_err(|e| e.to_string())?
        .label("answered")
        .legend(|(x, y)| Circle::new((x + 8, y), 3, BLUE.filled()));
    chart
        .draw_series(
            probes
                .iter()
                .filter(|p| !p.good)
                .map(|p| Cross::new((p.t, top_ms * 0.8), 5, RED.stroke_width(2))),
        )
        .map_err(|e| e.to_string())?
        .label("failed (sent at)")
        .legend(|(x, y)| Cross::new((x + 8, y), 4, RED.stroke_width(2)));
    let marks = [
        Some((0.0, "migrate", BLACK)),
        r.switchover_s.map(|t| (t, "switch-over", MAGENTA)),
        r.ended_s.map(|t| (t, "end", outcome_color(&r.outcome))),
    ];
    // Labels at different heights: start and switch-over are often close together.
    for (i, (t, label, color)) in marks.into_iter().flatten().enumerate() {
        let at = top_ms * [0.5, 0.2, 0.5][i.min(2)];
        mark(&mut chart, t, 0.3, top_ms, at, label, color)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Write all plots into `out/plots/`; returns the files written.
pub fn write(out: &Path, results: &[RunResult]) -> Result<Vec<PathBuf>, String> {
    register_font()?;
    let dir = out.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    let total: Vec<(String, f64, RGBColor)> = results
        .iter()
        .filter_map(|r| {
            let v = r
                .libvirt_number("time_elapsed")
                .map(|ms| ms / 1000.0)
                .or_else(|| r.exporter_record.as_ref()?["duration_seconds"].as_f64())
                .or(r.ended_s)?;
            let name = match r.outcome.as_str() {
                "completed" => r.scenario.name.clone(),
                "aborted" => format!("{} (aborted at deadline)", r.scenario.name),
                o => format!("{} ({o})", r.scenario.name),
            };
            Some((name, v, outcome_color(&r.outcome)))
        })
        .collect();
    let p = dir.join("total-time.png");
    colored_bars(
        &p,
        "Total migration time (blue: completed, orange: aborted at the deadline, red: failed)",
        "seconds",
        &total,
    )?;
    files.push(p);
    let down: Vec<(String, f64)> = results
        .iter()
        .filter_map(|r| {
            r.libvirt_number("downtime")
                .map(|ms| (r.scenario.name.clone(), ms))
        })
        .collect();
    let p = dir.join("downtime.png");
    bars(
        &p,
        "Downtime of completed migrations",
        "milliseconds",
        &down,
    )?;
    files.push(p);
    for r in results {
        let p = dir.join(format!("remaining-{}.png", r.scenario.name));
        remaining(&p, r)?;
        files.push(p);
        if !r.app_probes.is_empty() {
            let p = dir.join(format!("app-{}.png", r.scenario.name));
            app_latency(&p, r)?;
            files.push(p);
        }
    }
    Ok(files)
}

/// A time-series panel as a PNG: one line per series, time in seconds from the first sample.
pub fn timeseries_png(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    register_font()?;
    let t0 = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(f64::INFINITY, f64::min);
    let t1 = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !t0.is_finite() || !lo.is_finite() {
        return Err(format!("{title}: no data to draw"));
    }
    let (lo, hi) = (lo.min(0.0), if hi > lo { hi * 1.1 } else { lo + 1.0 });
    let root = BitMapBackend::new(path, (900, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..(t1 - t0).max(1.0), lo..hi)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .label_style(("sans-serif", 13))
        .y_label_formatter(&|v| {
            let a = v.abs();
            if a >= 1e9 {
                format!("{:.1}G", v / 1e9)
            } else if a >= 1e6 {
                format!("{:.1}M", v / 1e6)
            } else if a >= 1e3 {
                format!("{:.1}k", v / 1e3)
            } else if a == 0.0 || a >= 0.1 {
                format!("{v:.2}")
            } else if a >= 1e-3 {
                // Seconds of RTT or downtime: milliseconds read better than 0.01.
                format!("{:.1}m", v * 1e3)
            } else {
                format!("{:.0}µ", v * 1e6)
            }
        })
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|(t, v)| (t - t0, *v)),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
