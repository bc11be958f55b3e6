//! Will this pre-copy migration converge? A verdict, a predicted downtime and an ETA, from the
//! job's own figures, updated at every sample.
//!
//! The model (Liu et al., HPDC 2011; Akoush et al., MASCOTS 2010; QEMU's switch-over rule):
//! - QEMU switches over when the data left to send falls below `threshold = R × max_downtime`
//!   (R: transfer rate). Each memory pass i starts with what the guest dirtied during pass i−1,
//!   so with dirty rate D the remainder at pass starts forms a geometric series
//!   `V(i+1) ≈ λ·V(i)`, `λ = D / R`.
//! - λ < 1: the series reaches the threshold; the pass where it does sets the downtime
//!   (`V(n) / R`) and the time until then is the ETA. λ ≥ 1: it never does.
//! - Auto-converge throttles the guest's vCPUs, which lowers D: the ratio is recomputed at every
//!   sample, so the verdict follows the throttle.
//! - libvirt reports the dirty rate only from the second pass on (QEMU measures it when it syncs
//!   the dirty bitmap, at pass boundaries), so pass 1 is always `unknown`.
//!
//! The verdict combines the rates with what the remainder actually did over the last passes, and
//! it is meant to be steady: a steady workload gets one verdict, not one per pass.
//! - One `not_converging` verdict, with the detail (`stalled`: the remainder stays flat, e.g. a hot
//!   working set rewritten every pass; `diverging`: it grows) beside it: the detail may change
//!   with noise between passes, the verdict does not.
//! - Pass starts are estimated from the bytes sent since the pass began (`remaining + processed −
//!   where the previous pass ended`), not from the largest sampled remainder, which reads up to
//!   one sampling interval of transfer too low and made the trend flap.
//! - `converging` needs evidence: a remainder falling pass after pass with λ clearly below 1, or
//!   a pass that starts under QEMU's switch-over threshold. At pass 2 the ratio alone can only
//!   say `not_converging` (λ ≥ 0.75): QEMU's dirty rate counts a page written many times in a
//!   pass once, so a low λ at pass 2 proves nothing about a rewritten working set.
//! - Hysteresis: once `not_converging`, it takes two falling passes in a row to come back.
//! - A ratio that rises pass after pass is a writer re-dirtying pages within a pass (a random
//!   writer over a bounded working set): QEMU counts each page once per sync, so the shorter the
//!   passes get the closer the measured rate comes to the real one, and the remainder falls
//!   toward a floor, not to zero. Such a run reads `converging` only if the series, projected
//!   with the ratio still rising as it did, reaches the switch-over threshold.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stats::JobStats;
use crate::record::Phase;

/// QEMU's default `downtime-limit` when libvirt does not tell us the maximum downtime.
pub const DEFAULT_MAX_DOWNTIME_S: f64 = 0.3;
/// Before a trend exists, a dirty/transfer ratio from this up reads as "stalled": QEMU counts a
/// page dirtied twice in a pass once, so with a working set rewritten every pass the measured
/// dirty rate saturates just under the transfer rate (the lab's 150 MiB/s random writer over a
/// 30 MiB/s link measured 0.82 at pass 2, then 0.96, 1.0).
pub const CAUTIOUS_RATIO: f64 = 0.75;
/// A falling remainder counts as converging only while λ is below this.
pub const FALLING_CONVERGES_BELOW: f64 = 0.9;
/// A change of the remainder smaller than this between passes is "flat".
pub const TREND_MARGIN: f64 = 0.05;
/// Passes of history that decide the trend.
const TREND_PASSES: usize = 4;
/// Weight of a new transfer-rate sample in its moving average (KubeVirt's stall detector
/// uses the same).
const RATE_EWMA_ALPHA: f64 = 0.4;
/// At most this many passes are projected (λ close to 1 converges very slowly).
pub const MAX_PROJECTED_PASSES: usize = 10_000;
/// Falling passes in a row that turn a `not_converging` verdict back to `converging`.
const RECOVERY_FALLS: usize = 2;
/// A falling remainder reads `converging` only if it fell about as λ predicts (observed pass
/// ratio ≤ λ + this). A fall much smaller than λ predicts means QEMU under-reads the dirty rate:
/// wait for the passes to agree.
const CONSISTENT_WITHIN: f64 = 0.15;
/// A rise of the per-pass ratio (least squares over the window, per pass) below this is noise.
const RISE_NOISE: f64 = 0.05;
/// Verdict changes kept per migration.
const MAX_HISTORY: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Converging,
    /// It will not switch over by itself; [`Detail`] says how. Records written before the
    /// verdict was one state said `stalled` or `diverging`.
    #[serde(alias = "stalled", alias = "diverging")]
    NotConverging,
    Postcopy,
    /// Post-copy broke off (libvirt's "suspended: post-copy failed"): the guest is paused with
    /// its memory split between the hosts and neither side can run it until the migration is
    /// resumed (`virsh migrate --postcopy-resume`). It never finishes on its own.
    PostcopyFailed,
    Unknown,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Converging,
        Verdict::NotConverging,
        Verdict::Postcopy,
        Verdict::PostcopyFailed,
        Verdict::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Converging => "converging",
            Verdict::NotConverging => "not_converging",
            Verdict::Postcopy => "postcopy",
            Verdict::PostcopyFailed => "postcopy_failed",
            Verdict::Unknown => "unknown",
        }
    }

    /// The migration will not finish on its own.
    pub fn is_non_converging(self) -> bool {
        self == Verdict::NotConverging
    }
}

/// How a `not_converging` migration fails to converge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// The remainder at each pass start stays about the same.
    Stalled,
    /// It grows from pass to pass.
    Diverging,
}

impl Detail {
    pub const ALL: [Detail; 2] = [Detail::Stalled, Detail::Diverging];

    pub fn as_str(self) -> &'static str {
        match self {
            Detail::Stalled => "stalled",
            Detail::Diverging => "diverging",
        }
    }
}

/// What the model says about a migration now.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Assessment {
    pub verdict: Verdict,
    /// Set while `verdict` is `NotConverging`.
    pub detail: Option<Detail>,
    /// Dirty rate ÷ transfer rate (λ).
    pub dirty_to_transfer_ratio: Option<f64>,
    /// Pause expected at switch-over if the trend holds (or, when it will not switch over by
    /// itself, the pause a forced switch-over at the next pass boundary would cost).
    pub predicted_downtime_seconds: Option<f64>,
    /// Time until switch-over if the trend holds; `None` when it will not.
    pub eta_seconds: Option<f64>,
}

impl Assessment {
    pub fn unknown() -> Self {
        Assessment {
            verdict: Verdict::Unknown,
            detail: None,
            dirty_to_transfer_ratio: None,
            predicted_downtime_seconds: None,
            eta_seconds: None,
        }
    }
}

/// A verdict change, for the migration record.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerdictChange {
    /// Unix time.
    pub t: f64,
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trend {
    Falling,
    Flat,
    Rising,
}

/// The remainder at the start of each pass (passes 2 onwards) → its trend over the last passes.
pub fn trend(pass_starts: &[f64]) -> Option<Trend> {
    let v = window(pass_starts);
    if v.len() < 2 {
        return None;
    }
    // Falling: every step so far, or the last two (a remainder that has started to fall, e.g.
    // once auto-converge throttles the guest enough).
    if falls_in_a_row(v) >= RECOVERY_FALLS.min(v.len() - 1) {
        return Some(Trend::Falling);
    }
    // Rising: the least-squares slope over the window, per pass, is above the margin of the
    // window's mean. A fit, not the last step: one pass that starts high is noise.
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let xm = (n - 1.0) / 2.0;
    let (num, den) = v.iter().enumerate().fold((0.0, 0.0), |(num, den), (i, y)| {
        let dx = i as f64 - xm;
        (num + dx * (y - mean), den + dx * dx)
    });
    if mean > 0.0 && num / den > TREND_MARGIN * mean {
        return Some(Trend::Rising);
    }
    Some(Trend::Flat)
}

fn window(pass_starts: &[f64]) -> &[f64] {
    &pass_starts[pass_starts.len().saturating_sub(TREND_PASSES)..]
}

/// How many of the latest passes each started clearly below the one before.
fn falls_in_a_row(pass_starts: &[f64]) -> usize {
    pass_starts
        .windows(2)
        .rev()
        .take_while(|w| w[1] < w[0] * (1.0 - TREND_MARGIN))
        .count()
}

/// What the ratio λ and the trend of pass starts (passes 2 onwards) say, before hysteresis.
///
/// Without a trend yet the ratio can only say `not_converging`: a low λ at pass 2 may be QEMU
/// counting a working set rewritten many times in a pass once.
pub fn verdict(ratio: Option<f64>, trend: Option<Trend>) -> Verdict {
    match (trend, ratio) {
        (_, Some(l)) if l >= 1.0 => Verdict::NotConverging,
        (Some(Trend::Rising | Trend::Flat), _) => Verdict::NotConverging,
        // Falling with λ close to 1 takes ~100 passes (the 80 ms RTT lab run: 0.97): no
        // convergence in any useful time. Falling with λ ≥ 1: a bounded working set.
        (Some(Trend::Falling), Some(l)) if l >= FALLING_CONVERGES_BELOW => Verdict::NotConverging,
        (Some(Trend::Falling), _) => Verdict::Converging,
        (None, Some(l)) if l >= CAUTIOUS_RATIO => Verdict::NotConverging,
        (None, _) => Verdict::Unknown,
    }
}

/// Project the geometric series from the remainder `start` at the current pass start.
/// Returns (remainder at switch-over, seconds of further passes until then), or `None` when it
/// never gets there (λ ≥ 1) within the projection limit.
pub fn project(start: f64, ratio: f64, rate: f64, max_downtime_s: f64) -> Option<(f64, f64)> {
    project_rising(start, ratio, 0.0, rate, max_downtime_s)
}

/// [`project`] with the ratio growing by `rise` each pass (up to 1): a remainder falling toward
/// a floor, as a random writer's does once its passes are short enough to be re-dirtied
/// whole. `None` when the ratio gets to 1 before the remainder gets under the threshold.
pub fn project_rising(
    start: f64,
    ratio: f64,
    rise: f64,
    rate: f64,
    max_downtime_s: f64,
) -> Option<(f64, f64)> {
    // NaN and non-positive rates have no projection.
    if rate.is_nan() || rate <= 0.0 || ratio.is_nan() || ratio < 0.0 || rise.is_nan() {
        return None;
    }
    let threshold = rate * max_downtime_s;
    let mut ratio = ratio;
    let mut v = start * ratio;
    let mut secs = 0.0;
    for _ in 0..MAX_PROJECTED_PASSES {
        if v < threshold {
            return Some((v, secs));
        }
        ratio = (ratio + rise.max(0.0)).min(1.0);
        if ratio >= 1.0 {
            return None;
        }
        secs += v / rate;
        v *= ratio;
    }
    None
}

/// How fast the per-pass ratio rises, per pass: the least-squares slope of (pass, ratio) over
/// the window. `None` with fewer than two passes.
pub fn ratio_rise(ratios: &[(u64, f64)]) -> Option<f64> {
    let v = &ratios[ratios.len().saturating_sub(TREND_PASSES)..];
    if v.len() < 2 {
        return None;
    }
    let n = v.len() as f64;
    let xm = v.iter().map(|(x, _)| *x as f64).sum::<f64>() / n;
    let ym = v.iter().map(|(_, y)| y).sum::<f64>() / n;
    let (num, den) = v.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        let dx = *x as f64 - xm;
        (num + dx * (y - ym), den + dx * dx)
    });
    (den > 0.0).then(|| num / den)
}

/// What the samples of one memory pass say about the remainder when it began.
#[derive(Clone, Debug, Default)]
struct Pass {
    /// Largest remainder sampled in the pass: it only falls while a pass runs, so this is up to
    /// one sampling interval of transfer below the start.
    sampled_max: f64,
    /// Bytes sent when the previous pass ended (its last sample's processed + remaining), known
    /// when the sample before this pass's first was of the previous pass.
    boundary: Option<f64>,
    /// remaining + bytes sent since `boundary`: the start, less what QEMU carried over unsent
    /// from the previous pass (under its switch-over threshold).
    from_sent: Option<f64>,
    /// The ratio the model used (larger of λ and the observed pass ratio) at the pass's latest
    /// sample.
    effective: Option<f64>,
}

impl Pass {
    fn start(&self, number: u64) -> f64 {
        match self.from_sent {
            // Pass 1 ends in zero pages that cost almost nothing to send, so the estimate for
            // pass 2 can read low: take the larger of the two lower bounds.
            Some(e) if number == 2 => e.max(self.sampled_max),
            Some(e) => e,
            None => self.sampled_max,
        }
    }
}

/// The remainder and the bytes sent so far, RAM only where libvirt gives both (disk blocks are
/// not sent in passes); the bytes sent may be missing.
fn memory_progress(s: &JobStats) -> Option<(f64, Option<f64>)> {
    let f = |v: u64| v as f64;
    match (s.memory_remaining, s.memory_processed) {
        (Some(r), p) => Some((f(r), p.map(f))),
        (None, _) => Some((f(s.data_remaining?), s.data_processed.map(f))),
    }
}

/// The convergence state of one running migration.
#[derive(Clone, Debug, Default)]
pub struct Convergence {
    passes: BTreeMap<u64, Pass>,
    /// (iteration, processed, remaining) of the previous sample.
    last: Option<(u64, f64, f64)>,
    rate_ewma: Option<f64>,
    current: Option<Assessment>,
    history: Vec<VerdictChange>,
}

impl Convergence {
    /// Take one sample of the job at unix time `t`.
    pub fn observe(
        &mut self,
        t: f64,
        s: &JobStats,
        max_downtime_ms: Option<u64>,
        phase: Phase,
    ) -> Assessment {
        let a = self.assess(s, max_downtime_ms, phase);
        // Post-copy failed: the verdict stays so whatever the frozen job stats say.
        if self.is_postcopy_failed() {
            return self.current();
        }
        self.record(t, a);
        a
    }

    fn assess(&mut self, s: &JobStats, max_downtime_ms: Option<u64>, phase: Phase) -> Assessment {
        let remaining = s.data_remaining.or(s.memory_remaining).map(|v| v as f64);
        if let Some(bps) = s.memory_bps.filter(|b| *b > 0) {
            let b = bps as f64;
            self.rate_ewma = Some(match self.rate_ewma {
                Some(e) => RATE_EWMA_ALPHA * b + (1.0 - RATE_EWMA_ALPHA) * e,
                None => b,
            });
        }
        if let (Some(i), Some((rem, processed))) = (s.memory_iteration, memory_progress(s)) {
            let last = match processed {
                Some(p) => self.last.replace((i, p, rem)),
                None => self.last.take(),
            };
            let p = self.passes.entry(i).or_default();
            p.sampled_max = p.sampled_max.max(rem);
            if let (Some((li, lp, lr)), None) = (last, p.boundary) {
                // Checked: libvirt may say anything, u64::MAX included (fuzz seed).
                if li.checked_add(1) == Some(i) {
                    p.boundary = Some(lp + lr);
                }
            }
            if let (Some(b), Some(sent)) = (p.boundary, processed) {
                if sent >= b {
                    let e = rem + sent - b;
                    p.from_sent = Some(p.from_sent.map_or(e, |x| x.max(e)));
                }
            }
        }
        let rate = self.rate_ewma;
        if phase == Phase::Postcopy {
            return Assessment {
                verdict: Verdict::Postcopy,
                detail: None,
                dirty_to_transfer_ratio: None,
                predicted_downtime_seconds: None,
                eta_seconds: match (remaining, rate) {
                    (Some(r), Some(b)) => Some(r / b),
                    _ => None,
                },
            };
        }
        // The first pass copies everything and has no dirty rate yet.
        if s.memory_iteration.unwrap_or(0) < 2 {
            return Assessment::unknown();
        }
        let ratio = match (s.dirty_rate_bytes(), rate) {
            (Some(d), Some(b)) => Some(d as f64 / b),
            _ => None,
        };
        // Pass 1 copies all memory: its remainder says nothing about the trend.
        let starts: Vec<f64> = self.passes.range(2..).map(|(n, p)| p.start(*n)).collect();
        let max_dt = max_downtime_ms
            .map(|m| m as f64 / 1000.0)
            .unwrap_or(DEFAULT_MAX_DOWNTIME_S);
        // The current pass started below QEMU's switch-over threshold: QEMU checks the remainder
        // right after each dirty-bitmap sync (a pass start), so it switches over now, whatever the
        // trend looked like (near the end passes are shorter than the sampling period). Mid-pass
        // the remainder always dips below the threshold; that proves nothing.
        let below_threshold = matches!((starts.last(), rate), (Some(s), Some(b)) if *s < b * max_dt)
            && ratio.is_none_or(|l| l < 1.0);
        let trend = trend(&starts);
        // What the remainder itself did from the previous pass start to this one: QEMU's dirty
        // rate under-reads a working set rewritten within a pass, the remainder does not.
        let observed = match starts.as_slice() {
            [.., a, b] if *a > 0.0 => Some(b / a),
            _ => None,
        };
        let effective = match (ratio, observed) {
            (Some(l), Some(r)) => Some(l.max(r)),
            (l, r) => l.or(r),
        };
        if let Some(p) = s.memory_iteration.and_then(|i| self.passes.get_mut(&i)) {
            p.effective = effective;
        }
        // The ratio rising pass after pass: a remainder falling toward a floor. Converging only
        // if the series still reaches the threshold with the ratio rising as it did.
        let ratios: Vec<(u64, f64)> = self
            .passes
            .range(2..)
            .filter_map(|(n, p)| p.effective.map(|e| (*n, e)))
            .collect();
        let saturating = match (ratio_rise(&ratios), starts.last(), effective, rate) {
            (Some(rise), Some(start), Some(l), Some(b)) if rise > RISE_NOISE => {
                project_rising(*start, l, rise, b, max_dt).is_none()
            }
            _ => false,
        };
        let candidate = if below_threshold {
            Verdict::Converging
        } else {
            verdict(effective, trend)
        };
        let previous = self.current.map(|a| a.verdict);
        let consistent =
            matches!((observed, ratio), (Some(r), Some(l)) if r <= l + CONSISTENT_WITHIN);
        let settled = below_threshold
            || (consistent
                && !saturating
                && (falls_in_a_row(window(&starts)) >= RECOVERY_FALLS
                    || previous != Some(Verdict::NotConverging)));
        let v = match (candidate, previous) {
            // `converging` only on a remainder that fell as the measured ratio predicts (they
            // disagree while QEMU's once-a-second dirty rate lags passes shorter than that, or
            // counts a rewritten working set once), and, back from `not_converging`
            // (hysteresis), only after two falls in a row.
            (Verdict::Converging, Some(p @ (Verdict::NotConverging | Verdict::Converging)))
                if !settled =>
            {
                p
            }
            (Verdict::Converging, _) if !settled => Verdict::Unknown,
            // A verdict once reached is not given up for lack of evidence.
            (Verdict::Unknown, Some(p @ (Verdict::NotConverging | Verdict::Converging))) => p,
            (c, _) => c,
        };
        let detail = (v == Verdict::NotConverging).then_some(if trend == Some(Trend::Rising) {
            Detail::Diverging
        } else {
            Detail::Stalled
        });
        let start = starts.last().copied();
        let (predicted, eta) = match (start, effective, rate, remaining) {
            (Some(start), Some(l), Some(b), Some(rem)) => match project(start, l, b, max_dt) {
                // While still unknown (pass 2, low λ) the projection stands as a provisional ETA.
                Some((at_switch, further))
                    if v == Verdict::Converging || (v == Verdict::Unknown && !saturating) =>
                {
                    (Some(at_switch / b), Some(rem / b + further))
                }
                // It will not switch over by itself: a forced switch-over at the next pass
                // boundary would pause for about what the next pass would have to send.
                _ => (Some((start * l).min(start) / b), None),
            },
            _ => (None, None),
        };
        Assessment {
            verdict: v,
            detail,
            dirty_to_transfer_ratio: ratio,
            predicted_downtime_seconds: predicted,
            eta_seconds: eta,
        }
    }

    fn record(&mut self, t: f64, a: Assessment) {
        if self.current.map(|c| c.verdict) != Some(a.verdict) && self.history.len() < MAX_HISTORY {
            self.history.push(VerdictChange {
                t,
                verdict: a.verdict,
            });
        }
        self.current = Some(a);
    }

    /// Post-copy was switched on, or resumed after a failure (lifecycle event): say so at once.
    pub fn postcopy(&mut self, t: f64) {
        let mut a = self.current.unwrap_or_else(Assessment::unknown);
        a.verdict = Verdict::Postcopy;
        a.detail = None;
        a.dirty_to_transfer_ratio = None;
        a.predicted_downtime_seconds = None;
        self.record(t, a);
    }

    /// Post-copy failed (lifecycle event): the verdict from now on.
    pub fn postcopy_failed(&mut self, t: f64) {
        let mut a = self.current.unwrap_or_else(Assessment::unknown);
        a.verdict = Verdict::PostcopyFailed;
        a.detail = None;
        a.dirty_to_transfer_ratio = None;
        a.predicted_downtime_seconds = None;
        a.eta_seconds = None;
        self.record(t, a);
    }

    /// Post-copy failed and has not been resumed since.
    pub fn is_postcopy_failed(&self) -> bool {
        self.current
            .is_some_and(|a| a.verdict == Verdict::PostcopyFailed)
    }

    pub fn current(&self) -> Assessment {
        self.current.unwrap_or_else(Assessment::unknown)
    }

    pub fn history(&self) -> &[VerdictChange] {
        &self.history
    }
}

#[cfg(test)]
#[path = "convergence_tests.rs"]
mod tests;
