//! PNG plots of a lab run: total time (completed and aborted runs told apart) and downtime per
//! scenario, data remaining over time per migration (verdict changes, the switch-over, libvirt's
//! end of the job and virsh's return marked), and for guests with a service, each probe's
//! latency around the migration. Only what was measured is drawn: samples as points, steps
//! between close samples, nothing across gaps ([`step_runs`]).

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

/// Pieces of a sampled series drawn as steps: a sample's value holds until the next sample. A
/// run of samples ends at a sample without a value (the series was absent then) or at a gap
/// longer than twice the series' median interval (nothing was measured there, so nothing is
/// drawn). Each piece is the step line through one run; a run of one sample is a lone point.
pub fn step_runs(samples: &[(f64, Option<f64>)]) -> Vec<Vec<(f64, f64)>> {
    let mut gaps: Vec<f64> = samples.windows(2).map(|w| w[1].0 - w[0].0).collect();
    gaps.sort_by(f64::total_cmp);
    let max_gap = gaps.get(gaps.len() / 2).map(|m| 2.0 * m);
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut prev: Option<(f64, f64)> = None;
    for &(t, v) in samples {
        let Some(v) = v.filter(|v| v.is_finite()) else {
            prev = None;
            continue;
        };
        match (prev, runs.last_mut()) {
            (Some((pt, pv)), Some(run)) if max_gap.is_some_and(|g| t - pt <= g) => {
                run.push((t, pv));
                run.push((t, v));
            }
            _ => runs.push(vec![(t, v)]),
        }
        prev = Some((t, v));
    }
    runs
}

/// A labelled vertical line of a plot.
#[derive(Clone, Debug, PartialEq)]
struct Mark {
    t: f64,
    label: String,
    color: RGBColor,
}

/// Seconds since `virsh migrate` as a label's suffix.
fn at(t: f64) -> String {
    format!("{t:.2} s")
}

/// The ends of a migration as marks: libvirt's own end of the job (its start plus libvirt's
/// `time_elapsed`) and virsh's return, which can come seconds later (the destination's finish
/// phase), each with its own colour and label.
fn end_marks(r: &RunResult) -> Vec<Mark> {
    let mut out = Vec::new();
    if let Some(t) = r.libvirt_end_s() {
        out.push(Mark {
            t,
            label: format!("libvirt: job {} at {}", r.outcome, at(t)),
            color: outcome_color(&r.outcome),
        });
    }
    if let Some(t) = r.ended_s {
        out.push(Mark {
            t,
            label: format!("virsh returned at {}", at(t)),
            color: RGBColor(110, 110, 110),
        });
    }
    out
}

/// What the data-remaining plot draws, in seconds since `virsh migrate` and MiB.
#[derive(Debug, Default, PartialEq)]
struct RemainingLayers {
    /// Each sample the lab took of the exporter's gauge.
    samples: Vec<(f64, f64)>,
    /// Step lines between samples close enough together (see [`step_runs`]).
    steps: Vec<Vec<(f64, f64)>>,
    /// libvirt's own figure at the end of the job (its job-completed event), at the job's end.
    libvirt_end: Option<(f64, f64)>,
    marks: Vec<Mark>,
}

fn remaining_layers(r: &RunResult) -> RemainingLayers {
    // Only what the job showed while it ran: nothing after the migration's end (the exporter's
    // last figures are not "still remaining" then).
    let end = r.ended_s.unwrap_or(f64::INFINITY);
    let series: Vec<(f64, Option<f64>)> = r
        .observations
        .iter()
        .filter(|o| o.t <= end)
        .map(|o| (o.t, o.data_remaining.map(|d| d / 1048576.0)))
        .collect();
    let samples = series.iter().filter_map(|&(t, v)| Some((t, v?))).collect();
    let libvirt_end = r
        .libvirt_end_s()
        .zip(r.libvirt_number("data_remaining").map(|b| b / 1048576.0));
    let mut marks = Vec::new();
    let mut last: Option<&str> = None;
    for o in r.observations.iter().filter(|o| o.t <= end) {
        if let Some(v) = o.verdict.as_deref() {
            if last != Some(v) {
                let color = match v {
                    "converging" => GREEN,
                    "not_converging" | "postcopy_failed" => RED,
                    _ => BLACK,
                };
                marks.push(Mark {
                    t: o.t,
                    label: v.to_string(),
                    color,
                });
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
        marks.push(Mark {
            t,
            label: format!("{what} at {}", at(t)),
            color: MAGENTA,
        });
    }
    marks.extend(end_marks(r));
    RemainingLayers {
        steps: step_runs(&series),
        samples,
        libvirt_end,
        marks,
    }
}

/// Draws `marks` as vertical lines from `bottom` to `top`, their labels stepping down from
/// `top` (marks are often close together: the switch-over and libvirt's end within a blink).
fn draw_marks<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    marks: &[Mark],
    bottom: f64,
    top: f64,
    label_heights: &[f64],
) -> Result<(), String> {
    for (i, m) in marks.iter().enumerate() {
        let at = label_heights[i % label_heights.len()];
        mark(chart, m.t, bottom, top, at, &m.label, m.color)?;
    }
    Ok(())
}

fn remaining(path: &Path, r: &RunResult) -> Result<(), String> {
    let layers = remaining_layers(r);
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let tmax = layers
        .samples
        .iter()
        .map(|p| p.0)
        .chain(layers.marks.iter().map(|m| m.t))
        .fold(1.0, f64::max)
        * 1.3;
    let ymax = layers.samples.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let title = format!(
        "{}: data remaining ({}; {} sample{}), verdicts {}",
        r.scenario.name,
        r.outcome,
        layers.samples.len(),
        if layers.samples.len() == 1 { "" } else { "s" },
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
    for run in layers.steps.iter().filter(|r| r.len() > 1) {
        chart
            .draw_series(LineSeries::new(run.clone(), RED.stroke_width(2)))
            .map_err(|e| e.to_string())?;
    }
    chart
        .draw_series(
            layers
                .samples
                .iter()
                .map(|&p| Circle::new(p, 4, RED.filled())),
        )
        .map_err(|e| e.to_string())?
        .label("the exporter's gauge, as sampled (held until the next sample)")
        .legend(|(x, y)| Circle::new((x + 8, y), 4, RED.filled()));
    if let Some(p) = layers.libvirt_end {
        chart
            .draw_series(std::iter::once(TriangleMarker::new(p, 7, BLUE.filled())))
            .map_err(|e| e.to_string())?
            .label("libvirt's figure at the job's end")
            .legend(|(x, y)| TriangleMarker::new((x + 8, y), 5, BLUE.filled()));
    }
    draw_marks(
        &mut chart,
        &layers.marks,
        0.0,
        ymax,
        &[ymax * 0.95, ymax * 0.85, ymax * 0.75, ymax * 0.65],
    )?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Each probe of the guest's service around the migration: latency of good answers, failures
/// at the top; migration start, switch-over, libvirt's end and virsh's return marked.
fn app_latency(path: &Path, r: &RunResult) -> Result<(), String> {
    let probes = &r.app_probes;
    let t0 = probes.iter().map(|p| p.t).fold(0.0, f64::min);
    let t1 = probes
        .iter()
        .map(|p| p.t + p.latency_s)
        .chain(r.ended_s)
        .fold(1.0, f64::max);
    // Room right of the last mark for its label.
    let t1 = t1 + 0.15 * (t1 - t0);
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
    let mut marks = vec![Mark {
        t: 0.0,
        label: "virsh migrate".into(),
        color: BLACK,
    }];
    marks.extend(r.switchover_s.map(|t| Mark {
        t,
        label: format!("switch-over at {}", at(t)),
        color: MAGENTA,
    }));
    marks.extend(end_marks(r));
    // Labels at different heights (log axis): start, switch-over and libvirt's end are often
    // close together.
    draw_marks(
        &mut chart,
        &marks,
        0.3,
        top_ms,
        &[top_ms * 0.5, top_ms * 0.25, top_ms * 0.12, top_ms * 0.06],
    )?;
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
    // Steps between samples, points at them, nothing across a gap in the data.
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let samples: Vec<(f64, Option<f64>)> =
            pts.iter().map(|&(t, v)| (t - t0, Some(v))).collect();
        for run in step_runs(&samples).into_iter().filter(|r| r.len() > 1) {
            chart
                .draw_series(LineSeries::new(run, color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(
                samples
                    .iter()
                    .filter_map(|&(t, v)| Some(Circle::new((t, v?), 2, color.filled()))),
            )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Observation, Scenario};

    /// Whether any drawn line passes over time `t`.
    fn drawn_at(runs: &[Vec<(f64, f64)>], t: f64) -> bool {
        runs.iter()
            .filter(|r| r.len() > 1)
            .any(|r| r[0].0 <= t && t <= r[r.len() - 1].0)
    }

    #[test]
    fn samples_become_steps_broken_at_gaps_and_absent_values() {
        let s = [
            (0.0, Some(100.0)),
            (0.5, Some(80.0)),
            (1.0, Some(60.0)),
            // 2 s without a sample: four intervals.
            (3.0, Some(20.0)),
            (3.5, None),
            (4.0, Some(10.0)),
            (4.5, Some(5.0)),
        ];
        let runs = step_runs(&s);
        assert_eq!(
            runs,
            vec![
                vec![
                    (0.0, 100.0),
                    (0.5, 100.0),
                    (0.5, 80.0),
                    (1.0, 80.0),
                    (1.0, 60.0)
                ],
                vec![(3.0, 20.0)],
                vec![(4.0, 10.0), (4.5, 10.0), (4.5, 5.0)],
            ]
        );
        // Nothing between 1.0 and 3.0 (no samples), nor around the absent value.
        assert!(!drawn_at(&runs, 2.0));
        assert!(!drawn_at(&runs, 3.7));
        // A value holds until the next sample, no slope between them.
        assert!(runs[0]
            .windows(2)
            .all(|w| w[0].0 == w[1].0 || w[0].1 == w[1].1));
        // Two samples a whole interval apart each are not a gap; a lone sample is a point.
        assert_eq!(step_runs(&[(1.0, Some(3.0))]), vec![vec![(1.0, 3.0)]]);
        assert_eq!(
            step_runs(&[(0.0, Some(1.0)), (1.0, Some(2.0))]).len(),
            1,
            "two samples, one interval"
        );
        assert!(step_runs(&[(0.0, None), (0.0, Some(f64::NAN))]).is_empty());
    }

    fn observation(t: f64, remaining_mib: Option<f64>) -> Observation {
        Observation {
            t,
            job_active: remaining_mib.is_some(),
            iteration: None,
            data_remaining: remaining_mib.map(|m| m * 1048576.0),
            verdict: None,
            phase: None,
            postcopy_requests: None,
            libvirt_up: Some(1.0),
        }
    }

    /// A completed idle pre-copy as the smoke run saw it: one sample of the gauge at 0.5 s, the
    /// switch-over at 0.75 s, libvirt's job done at 0.8 s, virsh back at 2.7 s.
    fn smoke_like() -> RunResult {
        let completed = [("time_elapsed", "780"), ("data_remaining", "0")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RunResult {
            scenario: Scenario::idle("smoke-idle"),
            outcome: "completed".into(),
            virsh_output: String::new(),
            libvirt_completed: Some(completed),
            observations: vec![
                observation(0.0, None),
                observation(0.5, Some(505.0)),
                observation(1.0, None),
                observation(1.5, None),
                observation(2.0, None),
                observation(2.5, None),
            ],
            exporter_record: None,
            exporter_metrics: String::new(),
            wall_seconds: 3.0,
            trace: PathBuf::new(),
            guest_status: None,
            integrity: None,
            ping_rtt_ms: None,
            forecast: None,
            app_before: None,
            app_after: None,
            ended_s: Some(2.7),
            switchover_s: Some(0.75),
            job_started_s: Some(0.02),
            metrics_url: None,
            app_probes: Vec::new(),
        }
    }

    #[test]
    fn the_remaining_plot_draws_the_sample_not_a_line_to_virsh_returning() {
        let r = smoke_like();
        let l = remaining_layers(&r);
        assert_eq!(l.samples, vec![(0.5, 505.0)]);
        // No line at all: one sample, then the gauge was gone. (A line from it to zero at
        // virsh's return would cross 1.5 s.)
        assert!(l.steps.iter().all(|run| run.len() == 1), "{:?}", l.steps);
        assert!(!drawn_at(&l.steps, 1.5));
        // libvirt's own end of the job, with its figure (nothing left), at 0.02 + 0.78 s.
        let (t, mib) = l.libvirt_end.expect("libvirt's end");
        assert!((t - 0.8).abs() < 1e-9 && mib == 0.0, "{t} {mib}");
        // libvirt's end and virsh's return are two marks, told apart by label and colour.
        let find = |prefix: &str| {
            l.marks
                .iter()
                .find(|m| m.label.starts_with(prefix))
                .cloned()
                .unwrap_or_else(|| panic!("no {prefix} mark in {:?}", l.marks))
        };
        let libvirt = find("libvirt: job completed");
        let virsh = find("virsh returned");
        assert!((libvirt.t - 0.8).abs() < 1e-9);
        assert!((virsh.t - 2.7).abs() < 1e-9);
        assert_ne!(libvirt.color, virsh.color);
        assert!((find("switch-over").t - 0.75).abs() < 1e-9);
    }

    #[test]
    fn without_libvirt_figures_only_virsh_returning_is_marked() {
        let mut r = smoke_like();
        r.outcome = "aborted".into();
        r.libvirt_completed = None;
        let l = remaining_layers(&r);
        assert_eq!(l.libvirt_end, None);
        assert!(l.marks.iter().all(|m| !m.label.starts_with("libvirt")));
        assert!(l
            .marks
            .iter()
            .any(|m| m.label.starts_with("virsh returned")));
    }
}
