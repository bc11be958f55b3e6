//! The host's evacuation plan: every running guest migrated off, `concurrency` at a time. Pure.
//!
//! Each guest takes its recommended mode's time (pre-copy when it converges; otherwise one full
//! pass and the switch-over, see `model::Forecast::recommended_seconds`), at the rate one of
//! `concurrency` migrations gets. The order is longest first onto the slot that frees first
//! (LPT: within 4/3 of the shortest possible total); at concurrency 1 every order takes the
//! same total, and shortest first gets each guest off soonest on average. Guests without a
//! forecast make the total unknown: they are listed.

use serde::Serialize;

use super::model::{Forecast, Verdict};

/// One guest for the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Guest {
    pub domain: String,
    pub uuid: String,
    pub forecast: Forecast,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub domain: String,
    pub uuid: String,
    /// Seconds from the start of the evacuation.
    pub start_seconds: f64,
    pub end_seconds: f64,
    pub mode: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub concurrency: u32,
    /// Until the last guest is off; `None` when a guest has no forecast.
    pub total_seconds: Option<f64>,
    pub order: Vec<Step>,
    /// Guests whose pre-copy is forecast not to converge (they need their recommendation).
    pub not_converging: Vec<String>,
    /// Guests without a forecast.
    pub unknown: Vec<String>,
}

pub fn plan(guests: &[Guest], concurrency: u32) -> Plan {
    let c = concurrency.max(1) as usize;
    let mut timed: Vec<(&Guest, f64, String)> = Vec::new();
    let (mut not_converging, mut unknown) = (Vec::new(), Vec::new());
    for g in guests {
        match g.forecast.verdict {
            Verdict::Unknown => unknown.push(g.domain.clone()),
            Verdict::Stalls | Verdict::Diverges => not_converging.push(g.domain.clone()),
            Verdict::Converges => {}
        }
        if let (Some(s), Some(r)) = (g.forecast.recommended_seconds, g.forecast.recommendation) {
            timed.push((g, s, r.text()));
        }
    }
    if c == 1 {
        timed.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.domain.cmp(&b.0.domain)));
    } else {
        timed.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.domain.cmp(&b.0.domain)));
    }
    let mut slots = vec![0.0f64; c];
    let mut order = Vec::with_capacity(timed.len());
    for (g, secs, mode) in timed {
        let (i, start) = slots
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        slots[i] = start + secs;
        order.push(Step {
            domain: g.domain.clone(),
            uuid: g.uuid.clone(),
            start_seconds: start,
            end_seconds: start + secs,
            mode,
        });
    }
    order.sort_by(|a, b| {
        a.start_seconds
            .total_cmp(&b.start_seconds)
            .then(a.end_seconds.total_cmp(&b.end_seconds))
    });
    let total = unknown
        .is_empty()
        .then(|| slots.iter().copied().fold(0.0, f64::max));
    Plan {
        concurrency: c as u32,
        total_seconds: total,
        order,
        not_converging,
        unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::model::Recommendation;

    fn guest(name: &str, verdict: Verdict, secs: Option<f64>) -> Guest {
        Guest {
            domain: name.into(),
            uuid: format!("uuid-{name}"),
            forecast: Forecast {
                verdict,
                recommended_seconds: secs,
                recommendation: secs.map(|_| match verdict {
                    Verdict::Converges => Recommendation::Precopy,
                    _ => Recommendation::Postcopy,
                }),
                ..Forecast::unknown()
            },
        }
    }

    #[test]
    fn one_at_a_time_sums_and_goes_shortest_first() {
        let g = [
            guest("a", Verdict::Converges, Some(30.0)),
            guest("b", Verdict::Diverges, Some(10.0)),
            guest("c", Verdict::Converges, Some(20.0)),
        ];
        let p = plan(&g, 1);
        assert_eq!(p.total_seconds, Some(60.0));
        let names: Vec<_> = p.order.iter().map(|s| s.domain.as_str()).collect();
        assert_eq!(names, ["b", "c", "a"]);
        assert_eq!(p.order[2].start_seconds, 30.0);
        assert_eq!(p.order[0].mode, "post-copy");
        assert_eq!(p.not_converging, ["b"]);
    }

    #[test]
    fn parallel_slots_take_the_longest_first() {
        let g = [
            guest("a", Verdict::Converges, Some(30.0)),
            guest("b", Verdict::Converges, Some(10.0)),
            guest("c", Verdict::Converges, Some(20.0)),
            guest("d", Verdict::Converges, Some(20.0)),
        ];
        // LPT: a | c, then d after c (20 → 40) is worse than b... slots: a 30, c 20 → d on c
        // (40), b on a (40): total 40 = the optimum (80 / 2).
        let p = plan(&g, 2);
        assert_eq!(p.total_seconds, Some(40.0));
        assert_eq!(p.order.len(), 4);
        assert_eq!(plan(&g, 0).concurrency, 1);
    }

    #[test]
    fn an_unknown_guest_makes_the_total_unknown() {
        let g = [
            guest("a", Verdict::Converges, Some(30.0)),
            guest("x", Verdict::Unknown, None),
        ];
        let p = plan(&g, 1);
        assert_eq!(p.total_seconds, None);
        assert_eq!(p.unknown, ["x"]);
        assert_eq!(p.order.len(), 1);
        assert_eq!(plan(&[], 1).total_seconds, Some(0.0));
    }
}
