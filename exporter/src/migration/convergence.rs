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
//! The verdict combines the rates with what the remainder actually did over the last passes, so
//! a workload whose working set bounds the remainder (a hot set rewritten every pass) reads as
//! `stalled`, not `diverging`.

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
const CAUTIOUS_RATIO: f64 = 0.75;
/// A falling remainder counts as converging only while λ is below this.
const FALLING_CONVERGES_BELOW: f64 = 0.9;
/// A change of the remainder smaller than this between passes is "flat".
const TREND_MARGIN: f64 = 0.05;
/// Passes of history that decide the trend.
const TREND_PASSES: usize = 4;
/// Weight of a new transfer-rate sample in its moving average (KubeVirt's stall detector
/// uses the same).
const RATE_EWMA_ALPHA: f64 = 0.4;
/// At most this many passes are projected (λ close to 1 converges very slowly).
const MAX_PROJECTED_PASSES: usize = 10_000;
/// Verdict changes kept per migration.
const MAX_HISTORY: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Converging,
    Stalled,
    Diverging,
    Postcopy,
    /// Post-copy broke off (libvirt's "suspended: post-copy failed"): the guest is paused with
    /// its memory split between the hosts and neither side can run it until the migration is
    /// resumed (`virsh migrate --postcopy-resume`). It never finishes on its own.
    PostcopyFailed,
    Unknown,
}

impl Verdict {
    pub const ALL: [Verdict; 6] = [
        Verdict::Converging,
        Verdict::Stalled,
        Verdict::Diverging,
        Verdict::Postcopy,
        Verdict::PostcopyFailed,
        Verdict::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Converging => "converging",
            Verdict::Stalled => "stalled",
            Verdict::Diverging => "diverging",
            Verdict::Postcopy => "postcopy",
            Verdict::PostcopyFailed => "postcopy_failed",
            Verdict::Unknown => "unknown",
        }
    }

    /// Stalled or diverging: the migration will not finish on its own.
    pub fn is_non_converging(self) -> bool {
        matches!(self, Verdict::Stalled | Verdict::Diverging)
    }
}

/// What the model says about a migration now.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Assessment {
    pub verdict: Verdict,
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

/// The remainder at the start of each pass (approximated by the largest remainder sampled in
/// the pass: it only falls while a pass runs) → its trend over the last passes.
pub fn trend(pass_starts: &[f64]) -> Option<Trend> {
    let v = &pass_starts[pass_starts.len().saturating_sub(TREND_PASSES)..];
    if v.len() < 2 {
        return None;
    }
    if v.windows(2).all(|w| w[1] < w[0] * (1.0 - TREND_MARGIN)) {
        return Some(Trend::Falling);
    }
    // Rising: the latest pass started clearly above the window's low point and no lower than the
    // one before (the first pass, a full copy, is always the highest: compare with the low).
    let (last, before) = (v[v.len() - 1], &v[..v.len() - 1]);
    let low = before.iter().copied().fold(f64::INFINITY, f64::min);
    if last > low * (1.0 + TREND_MARGIN) && last >= before[before.len() - 1] {
        return Some(Trend::Rising);
    }
    Some(Trend::Flat)
}

/// The verdict from the ratio λ and the trend of pass starts (passes 2 onwards).
///
/// `diverging` needs an observed rise of the remainder; without a trend yet the ratio decides
/// between `converging` and a cautious `stalled`.
pub fn verdict(ratio: Option<f64>, trend: Option<Trend>) -> Verdict {
    match (trend, ratio) {
        (Some(Trend::Rising), _) => Verdict::Diverging,
        // Falling with λ close to 1 takes ~100 passes (the 80 ms RTT lab run: 0.97): a stall.
        (Some(Trend::Falling), Some(l)) if l < FALLING_CONVERGES_BELOW => Verdict::Converging,
        (Some(Trend::Falling), None) => Verdict::Converging,
        // Falling although the guest dirties faster than we send: a bounded working set.
        (Some(Trend::Falling), Some(_)) => Verdict::Stalled,
        (Some(Trend::Flat), _) => Verdict::Stalled,
        (None, Some(l)) if l >= CAUTIOUS_RATIO => Verdict::Stalled,
        (None, Some(_)) => Verdict::Converging,
        (None, None) => Verdict::Unknown,
    }
}

/// Project the geometric series from the remainder `start` at the current pass start.
/// Returns (remainder at switch-over, seconds of further passes until then), or `None` when it
/// never gets there (λ ≥ 1) within the projection limit.
pub fn project(start: f64, ratio: f64, rate: f64, max_downtime_s: f64) -> Option<(f64, f64)> {
    // NaN and non-positive rates have no projection.
    if rate.is_nan() || rate <= 0.0 || ratio.is_nan() || ratio < 0.0 {
        return None;
    }
    let threshold = rate * max_downtime_s;
    let mut v = start * ratio;
    let mut secs = 0.0;
    for _ in 0..MAX_PROJECTED_PASSES {
        if v < threshold {
            return Some((v, secs));
        }
        if ratio >= 1.0 {
            return None;
        }
        secs += v / rate;
        v *= ratio;
    }
    None
}

#[derive(Clone, Debug, Default)]
struct Pass {
    max_remaining: f64,
}

/// The convergence state of one running migration.
#[derive(Clone, Debug, Default)]
pub struct Convergence {
    passes: BTreeMap<u64, Pass>,
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
        if let (Some(i), Some(r)) = (s.memory_iteration, remaining) {
            let p = self.passes.entry(i).or_default();
            p.max_remaining = p.max_remaining.max(r);
        }
        let rate = self.rate_ewma;
        if phase == Phase::Postcopy {
            return Assessment {
                verdict: Verdict::Postcopy,
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
        let starts: Vec<f64> = self
            .passes
            .range(2..)
            .map(|(_, p)| p.max_remaining)
            .collect();
        let max_dt = max_downtime_ms
            .map(|m| m as f64 / 1000.0)
            .unwrap_or(DEFAULT_MAX_DOWNTIME_S);
        // The current pass started below QEMU's switch-over threshold: QEMU checks the remainder
        // right after each dirty-bitmap sync (a pass start), so it switches over now, whatever the
        // trend looked like (near the end passes are shorter than the sampling period). Mid-pass
        // the remainder always dips below the threshold; that proves nothing.
        let below_threshold = matches!((starts.last(), rate), (Some(s), Some(b)) if *s < b * max_dt)
            && ratio.is_none_or(|l| l < 1.0);
        let v = if below_threshold {
            Verdict::Converging
        } else {
            verdict(ratio, trend(&starts))
        };
        let start = starts.last().copied();
        let (predicted, eta) = match (start, ratio, rate, remaining) {
            (Some(start), Some(l), Some(b), Some(rem)) => match project(start, l, b, max_dt) {
                Some((at_switch, further)) if v == Verdict::Converging => {
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
        a.dirty_to_transfer_ratio = None;
        a.predicted_downtime_seconds = None;
        self.record(t, a);
    }

    /// Post-copy failed (lifecycle event): the verdict from now on.
    pub fn postcopy_failed(&mut self, t: f64) {
        let mut a = self.current.unwrap_or_else(Assessment::unknown);
        a.verdict = Verdict::PostcopyFailed;
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
