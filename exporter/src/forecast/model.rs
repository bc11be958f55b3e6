//! The forecast of one guest's pre-copy migration, before it starts: pure, no I/O.
//!
//! The live verdict's model (`migration::convergence`, docs/convergence.md) applied to the
//! figures known beforehand:
//! - Pass 1 sends the guest's memory `M` (what it has touched: zero pages cost almost nothing);
//!   each later pass sends what the guest dirtied during the one before, so the remainder at
//!   pass starts forms the geometric series `V(i+1) = λ·V(i)` with `λ = D / R` (D: dirty rate,
//!   R: the transfer rate the path is expected to give).
//! - QEMU switches over once a pass starts under `R × max_downtime`; that pass's remainder sets
//!   the downtime, and the passes until then (the live model's projection, with its pass cap)
//!   the total time: `M/R + Σ V(i)/R + downtime`.
//! - The verdict uses the live model's thresholds: `λ ≥ 1 + TREND_MARGIN` diverges (the
//!   remainder grows), `λ ≥ CAUTIOUS_RATIO` stalls (QEMU's dirty rate counts a page rewritten
//!   within a period once, so a λ this close to 1 does not prove convergence; from
//!   `FALLING_CONVERGES_BELOW` on it would take ~100 passes even if it were true), a projection
//!   that does not reach the threshold within the pass cap stalls, the rest converges.
//!   Without a dirty rate or a transfer rate the verdict is `unknown`.
//! - Recommendation: pre-copy when it converges. Otherwise a forced switch-over at pass 2 would
//!   pause the guest for `min(λ·M, M) / R`: if that is at most [`RAISE_DOWNTIME_UP_TO_S`],
//!   raise the max downtime to it (with [`DOWNTIME_HEADROOM`]); else auto-converge while the
//!   throttle has to take off less than half of the dirty rate (`λ <` [`AUTO_CONVERGE_BELOW`]),
//!   else post-copy.

use serde::Serialize;

use crate::jobs::convergence::{project, CAUTIOUS_RATIO, TREND_MARGIN};

/// A forced switch-over pausing the guest up to this long is recommended as "raise max
/// downtime"; longer pauses break TCP sessions and guest watchdogs: post-copy instead.
pub const RAISE_DOWNTIME_UP_TO_S: f64 = 1.0;
/// The max downtime recommended is the predicted pause times this (the dirty rate is sampled).
pub const DOWNTIME_HEADROOM: f64 = 1.25;
/// Auto-converge throttles the vCPUs from 20 % up by 10 % a pass (QEMU's defaults): halving the
/// dirty rate takes about four passes, more takes a long throttled migration: post-copy then.
pub const AUTO_CONVERGE_BELOW: f64 = 2.0;

/// The predicted pre-copy outcome (the `state` label of `vm_migration_forecast_verdict`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Converges,
    Stalls,
    Diverges,
    Unknown,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Converges,
        Verdict::Stalls,
        Verdict::Diverges,
        Verdict::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Converges => "converges",
            Verdict::Stalls => "stalls",
            Verdict::Diverges => "diverges",
            Verdict::Unknown => "unknown",
        }
    }
}

/// How to migrate the guest.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Recommendation {
    Precopy,
    AutoConverge,
    Postcopy,
    RaiseMaxDowntime { max_downtime_ms: u64 },
}

impl Recommendation {
    pub fn text(self) -> String {
        match self {
            Recommendation::Precopy => "pre-copy".into(),
            Recommendation::AutoConverge => "auto-converge".into(),
            Recommendation::Postcopy => "post-copy".into(),
            Recommendation::RaiseMaxDowntime { max_downtime_ms } => {
                format!("raise max downtime to {max_downtime_ms} ms")
            }
        }
    }
}

/// What the forecast starts from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Inputs {
    /// Bytes pass 1 sends: the memory holding data when the migration starts ...
    pub memory_bytes: f64,
    /// ... plus what the guest fills of its zeroed memory before pass 1 reaches it: bytes/s
    /// of zero memory turning into data (`fill_rate`), of which half lies ahead of pass 1's scan
    /// on average; pass 1 then sends `M / (1 − fill/(2R))`, at most `memory_limit`: the memory
    /// resident now (the zeroed memory there is to fill; a guest filling beyond it grows its
    /// resident size, which the next round sees), else the guest's memory.
    pub fill_rate: Option<f64>,
    pub memory_limit: Option<f64>,
    /// Bytes per second the guest dirties.
    pub dirty_rate: Option<f64>,
    /// Bytes per second the migration is expected to send.
    pub transfer_rate: Option<f64>,
    pub max_downtime_s: f64,
}

/// The forecast of one guest.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Forecast {
    pub verdict: Verdict,
    /// λ = dirty rate ÷ transfer rate.
    pub dirty_to_transfer_ratio: Option<f64>,
    /// Pre-copy from start to end, when it converges.
    pub duration_seconds: Option<f64>,
    /// The pause at switch-over; when it does not converge, the pause of a switch-over forced
    /// at pass 2.
    pub downtime_seconds: Option<f64>,
    pub recommendation: Option<Recommendation>,
    /// Time with the recommended mode: the pre-copy duration, or (when it does not converge)
    /// one full pass and the switch-over (post-copy, or pre-copy with the raised max downtime;
    /// a lower bound for auto-converge).
    pub recommended_seconds: Option<f64>,
}

impl Forecast {
    pub fn unknown() -> Self {
        Forecast {
            verdict: Verdict::Unknown,
            dirty_to_transfer_ratio: None,
            duration_seconds: None,
            downtime_seconds: None,
            recommendation: None,
            recommended_seconds: None,
        }
    }
}

/// The forecast from `i`; see the module doc.
pub fn forecast(i: &Inputs) -> Forecast {
    let (Some(d), Some(r)) = (i.dirty_rate, i.transfer_rate) else {
        return Forecast::unknown();
    };
    let m = i.memory_bytes;
    if !(r > 0.0 && r.is_finite() && d >= 0.0 && d.is_finite() && m >= 0.0 && m.is_finite()) {
        return Forecast::unknown();
    }
    let max_dt = if i.max_downtime_s.is_finite() && i.max_downtime_s > 0.0 {
        i.max_downtime_s
    } else {
        crate::jobs::convergence::DEFAULT_MAX_DOWNTIME_S
    };
    let m = first_pass_bytes(m, i.fill_rate, r, i.memory_limit);
    let l = d / r;
    let projected = (l < CAUTIOUS_RATIO)
        .then(|| project(m, l, r, max_dt))
        .flatten();
    let verdict = match projected {
        Some(_) => Verdict::Converges,
        None if l >= 1.0 + TREND_MARGIN => Verdict::Diverges,
        None => Verdict::Stalls,
    };
    let first_pass = m / r;
    match projected {
        Some((at_switch, further)) => {
            let downtime = at_switch / r;
            let total = first_pass + further + downtime;
            Forecast {
                verdict,
                dirty_to_transfer_ratio: Some(l),
                duration_seconds: Some(total),
                downtime_seconds: Some(downtime),
                recommendation: Some(Recommendation::Precopy),
                recommended_seconds: Some(total),
            }
        }
        None => {
            // The live model's forced switch-over: about what the next pass would send.
            let forced = (m * l).min(m) / r;
            let recommendation = if forced <= RAISE_DOWNTIME_UP_TO_S {
                Recommendation::RaiseMaxDowntime {
                    max_downtime_ms: round_up_10ms(forced * DOWNTIME_HEADROOM),
                }
            } else if l < AUTO_CONVERGE_BELOW {
                Recommendation::AutoConverge
            } else {
                Recommendation::Postcopy
            };
            Forecast {
                verdict,
                dirty_to_transfer_ratio: Some(l),
                duration_seconds: None,
                downtime_seconds: Some(forced),
                recommendation: Some(recommendation),
                recommended_seconds: Some(first_pass + forced),
            }
        }
    }
}

/// Pass 1's bytes with the guest filling zeroed memory at `fill` bytes/s while pass 1 runs at
/// `r`: `M + fill·T/2` with `T` pass 1's own time, so `M / (1 − fill/(2r))`; at most `limit`.
pub fn first_pass_bytes(m: f64, fill: Option<f64>, r: f64, limit: Option<f64>) -> f64 {
    let limit = limit
        .filter(|l| l.is_finite())
        .map_or(f64::INFINITY, |l| l.max(m));
    match fill.filter(|g| g.is_finite() && *g > 0.0) {
        Some(g) if g < 2.0 * r => (m / (1.0 - g / (2.0 * r))).min(limit),
        // Filling as fast as pass 1 sends: it sends all the guest will have filled.
        Some(_) if limit.is_finite() => limit,
        _ => m,
    }
}

fn round_up_10ms(s: f64) -> u64 {
    ((s * 100.0).ceil() as u64).max(1) * 10
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::convergence::FALLING_CONVERGES_BELOW;

    const MIB: f64 = 1048576.0;

    fn inputs(mem_mib: f64, dirty_mibs: f64, rate_mibs: f64) -> Inputs {
        Inputs {
            memory_bytes: mem_mib * MIB,
            fill_rate: None,
            memory_limit: None,
            dirty_rate: Some(dirty_mibs * MIB),
            transfer_rate: Some(rate_mibs * MIB),
            max_downtime_s: 0.3,
        }
    }

    #[test]
    fn a_slow_writer_converges_with_the_geometric_series_time() {
        // 512 MiB at 100 MiB/s, λ = 0.5, threshold 30 MiB: passes of 512, 256, 128, 64, 32
        // MiB, then 16 MiB (under 30) is the switch-over.
        let f = forecast(&inputs(512.0, 50.0, 100.0));
        assert_eq!(f.verdict, Verdict::Converges);
        assert_eq!(f.dirty_to_transfer_ratio, Some(0.5));
        let total = f.duration_seconds.expect("time");
        assert!(
            (total - (5.12 + 2.56 + 1.28 + 0.64 + 0.32 + 0.16)).abs() < 1e-9,
            "{total}"
        );
        assert!((f.downtime_seconds.expect("downtime") - 0.16).abs() < 1e-9);
        assert_eq!(f.recommendation, Some(Recommendation::Precopy));
        assert_eq!(f.recommended_seconds, f.duration_seconds);
    }

    #[test]
    fn an_idle_guest_switches_over_after_the_first_pass() {
        let f = forecast(&inputs(100.0, 0.0, 100.0));
        assert_eq!(f.verdict, Verdict::Converges);
        assert!((f.duration_seconds.expect("time") - 1.0).abs() < 1e-9);
        assert_eq!(f.downtime_seconds, Some(0.0));
    }

    #[test]
    fn the_verdict_follows_the_live_models_thresholds() {
        let v = |l: f64| forecast(&inputs(512.0, 100.0 * l, 100.0)).verdict;
        assert_eq!(v(CAUTIOUS_RATIO - 0.01), Verdict::Converges);
        // Too close to 1 to trust a sampled dirty rate, and never in useful time from 0.9.
        assert_eq!(v(CAUTIOUS_RATIO), Verdict::Stalls);
        assert_eq!(v(FALLING_CONVERGES_BELOW), Verdict::Stalls);
        assert_eq!(v(1.0), Verdict::Stalls);
        assert_eq!(v(1.0 + TREND_MARGIN - 0.001), Verdict::Stalls);
        assert_eq!(v(1.0 + TREND_MARGIN), Verdict::Diverges);
        assert_eq!(v(3.0), Verdict::Diverges);
    }

    #[test]
    fn unknown_without_rates_or_with_nonsense() {
        let mut i = inputs(512.0, 50.0, 100.0);
        i.dirty_rate = None;
        assert_eq!(forecast(&i), Forecast::unknown());
        let mut i = inputs(512.0, 50.0, 100.0);
        i.transfer_rate = Some(0.0);
        assert_eq!(forecast(&i).verdict, Verdict::Unknown);
        i.transfer_rate = Some(f64::NAN);
        assert_eq!(forecast(&i).verdict, Verdict::Unknown);
        let mut i = inputs(512.0, -1.0, 100.0);
        assert_eq!(forecast(&i).verdict, Verdict::Unknown);
        i.dirty_rate = Some(f64::INFINITY);
        assert_eq!(forecast(&i).verdict, Verdict::Unknown);
    }

    #[test]
    fn a_zero_max_downtime_means_qemus_default() {
        let mut i = inputs(512.0, 50.0, 100.0);
        i.max_downtime_s = 0.0;
        assert_eq!(forecast(&i), forecast(&inputs(512.0, 50.0, 100.0)));
    }

    #[test]
    fn recommendations_for_guests_that_do_not_converge() {
        // A small guest (32 MiB touched) at λ 1.5: a forced switch pauses 32 MiB / 100 MiB/s.
        let f = forecast(&inputs(32.0, 150.0, 100.0));
        assert_eq!(f.verdict, Verdict::Diverges);
        assert!((f.downtime_seconds.expect("pause") - 0.32).abs() < 1e-9);
        assert_eq!(
            f.recommendation,
            Some(Recommendation::RaiseMaxDowntime {
                max_downtime_ms: 400
            })
        );
        assert_eq!(f.duration_seconds, None);
        assert!((f.recommended_seconds.expect("time") - 0.64).abs() < 1e-9);
        // 512 MiB at λ 0.8: the pause would be 4 s; the throttle can close the gap.
        let f = forecast(&inputs(512.0, 80.0, 100.0));
        assert_eq!(f.verdict, Verdict::Stalls);
        assert_eq!(f.recommendation, Some(Recommendation::AutoConverge));
        // The lab's 150 MiB/s writer at 33 MiB/s (80 ms RTT): post-copy.
        let f = forecast(&inputs(512.0, 150.0, 33.0));
        assert_eq!(f.verdict, Verdict::Diverges);
        assert_eq!(f.recommendation, Some(Recommendation::Postcopy));
        assert_eq!(
            Recommendation::RaiseMaxDowntime {
                max_downtime_ms: 1250
            }
            .text(),
            "raise max downtime to 1250 ms"
        );
    }

    #[test]
    fn a_guest_filling_zeroed_memory_sends_more_in_pass_1() {
        // 200 MiB holding data, filling 10 MiB/s more, at 40 MiB/s: T = M/(R − fill/2) =
        // 200/35 s, sending 200 + 10·T/2 = 228.6 MiB.
        let m = first_pass_bytes(200.0 * MIB, Some(10.0 * MIB), 40.0 * MIB, Some(512.0 * MIB));
        assert!((m / MIB - 200.0 / 0.875).abs() < 1e-9, "{}", m / MIB);
        // Never more than the guest's memory; filling faster than twice the rate: all of it.
        let m = first_pass_bytes(500.0 * MIB, Some(10.0 * MIB), 40.0 * MIB, Some(512.0 * MIB));
        assert_eq!(m, 512.0 * MIB);
        let m = first_pass_bytes(100.0 * MIB, Some(90.0 * MIB), 40.0 * MIB, Some(512.0 * MIB));
        assert_eq!(m, 512.0 * MIB);
        // No fill (or a broken one): M.
        for g in [None, Some(0.0), Some(-5.0), Some(f64::NAN)] {
            assert_eq!(first_pass_bytes(100.0, g, 40.0, Some(512.0)), 100.0);
        }
        // A limit under M (a stale resident size) never cuts M.
        assert_eq!(first_pass_bytes(100.0, Some(10.0), 40.0, Some(90.0)), 100.0);
        // The forecast's time follows: longer than without the fill.
        let base = forecast(&inputs(200.0, 10.0, 40.0));
        let mut i = inputs(200.0, 10.0, 40.0);
        i.fill_rate = Some(10.0 * MIB);
        i.memory_limit = Some(512.0 * MIB);
        let filled = forecast(&i);
        assert!(
            filled.duration_seconds.expect("time") > base.duration_seconds.expect("time") + 0.5,
            "{filled:?} vs {base:?}"
        );
    }
}
