//! What a guest's application looked like to its users around a migration, from the results of
//! probing one of its services: outages, and latency before, during and after.
//!
//! An **outage** is a stretch in which the target did not answer well: it begins when the first
//! probe that failed (refused, timed out, wrong status) or answered late was sent, and ends when
//! a probe answers again (the late one itself, or the first good one after failures). A probe is
//! late when it took longer than the probe interval in effect and four times the target's median
//! latency over the last minute (so a slow but steady service is not "out"; until five answers
//! are known, only failures count). A guest paused for D seconds is seen out for between
//! D − interval and D + the usual latency (the first late probe was sent during the pause or just
//! before it), so the resolution is one probe interval.
//!
//! Pure: the probe loop feeds results and migration events with their times.

use serde::{Deserialize, Serialize};

/// One probe, as the probe loop saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeResult {
    /// Unix time the request was sent.
    pub sent: f64,
    /// Unix time it answered or failed.
    pub done: f64,
    /// Answered as expected (status, within the timeout).
    pub good: bool,
}

impl ProbeResult {
    pub fn latency(&self) -> f64 {
        (self.done - self.sent).max(0.0)
    }
}

/// An outage: when it began and how long it lasted (so far, for one still going on).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    pub start: f64,
    pub seconds: f64,
}

pub use crate::record::{AppMigrationRecord, LatencySummary};

/// Latencies kept from before a migration starts (the "before" window), at most this long.
pub const BEFORE_WINDOW_S: f64 = 60.0;
/// A probe is late beyond this many times the target's median latency (and the interval).
const LATE_FACTOR: f64 = 4.0;
/// Answers needed before a probe can be judged late.
const MIN_HISTORY: usize = 5;
/// Latencies kept per window (bounded memory at a 20 ms probe rate: ~3 minutes).
const MAX_SAMPLES: usize = 10_000;

#[derive(Clone, Debug, Default)]
struct Window {
    latencies: Vec<f64>,
}

impl Window {
    fn push(&mut self, l: f64) {
        if self.latencies.len() < MAX_SAMPLES {
            self.latencies.push(l);
        }
    }

    fn summary(&self) -> LatencySummary {
        let mut v = self.latencies.clone();
        v.sort_by(f64::total_cmp);
        LatencySummary {
            probes: v.len() as u64,
            p50_seconds: quantile(&v, 0.5),
            p99_seconds: quantile(&v, 0.99),
        }
    }
}

/// Nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[derive(Clone, Debug)]
struct MigrationView {
    started: f64,
    switchover: Option<f64>,
    ended: Option<f64>,
    probes: u64,
    failures: u64,
    longest: Option<Outage>,
    before: Window,
    during: Window,
    after_switchover: Window,
    after: Window,
}

impl MigrationView {
    fn overlaps(&self, o: &Outage) -> bool {
        o.start + o.seconds >= self.started && self.ended.is_none_or(|e| o.start <= e)
    }
}

/// One target's probe history, around the migrations of its domain.
#[derive(Clone, Debug, Default)]
pub struct TargetTrack {
    /// Send time of the first probe that failed since the last answer.
    open: Option<f64>,
    up: bool,
    /// (answer time, latency) of good probes within [`BEFORE_WINDOW_S`].
    recent: std::collections::VecDeque<(f64, f64)>,
    migration: Option<MigrationView>,
}

impl TargetTrack {
    /// Feed one probe result; `interval` is the probe period in effect when it was sent.
    /// Returns an outage that just ended, if this probe ended one.
    pub fn observe(&mut self, p: ProbeResult, interval: f64) -> Option<Outage> {
        if let Some(m) = self.migration.as_mut() {
            m.probes += 1;
            m.failures += u64::from(!p.good);
        }
        if !p.good {
            self.up = false;
            self.open.get_or_insert(p.sent);
            return None;
        }
        let late = self.recent.len() >= MIN_HISTORY
            && p.latency() > interval.max(LATE_FACTOR * self.median_latency());
        let ended = match (self.open.take(), late) {
            (Some(start), _) => Some(start),
            (None, true) => Some(p.sent),
            (None, false) => None,
        }
        .map(|start| Outage {
            start,
            seconds: p.done - start,
        });
        self.up = true;
        self.recent.push_back((p.done, p.latency()));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| *t < p.done - BEFORE_WINDOW_S)
        {
            self.recent.pop_front();
        }
        if let Some(m) = self.migration.as_mut() {
            let w = match m.ended {
                Some(e) if p.sent >= e => &mut m.after,
                _ => &mut m.during,
            };
            w.push(p.latency());
            let switched = m.switchover.is_some_and(|s| p.sent >= s);
            if switched && m.ended.is_none_or(|e| p.sent < e) {
                m.after_switchover.push(p.latency());
            }
            if let Some(o) = ended.filter(|o| m.overlaps(o)) {
                if m.longest.is_none_or(|l| o.seconds > l.seconds) {
                    m.longest = Some(o);
                }
            }
        }
        ended
    }

    /// The outage going on at `now`, from failed probes (0 while the target answers).
    pub fn current_outage(&self, now: f64) -> f64 {
        self.open.map_or(0.0, |start| (now - start).max(0.0))
    }

    fn median_latency(&self) -> f64 {
        let mut v: Vec<f64> = self.recent.iter().map(|(_, l)| *l).collect();
        v.sort_by(f64::total_cmp);
        quantile(&v, 0.5).unwrap_or(0.0)
    }

    /// Whether the last probe answered well.
    pub fn up(&self) -> bool {
        self.up
    }

    /// The domain's migration started at `t`: latencies from now on are "during".
    pub fn migration_started(&mut self, t: f64) {
        let mut before = Window::default();
        for (_, l) in &self.recent {
            before.push(*l);
        }
        self.migration = Some(MigrationView {
            started: t,
            switchover: None,
            ended: None,
            probes: 0,
            failures: 0,
            longest: None,
            before,
            during: Window::default(),
            after_switchover: Window::default(),
            after: Window::default(),
        });
    }

    /// The source paused the guest for the switch-over (or post-copy) at `t`.
    pub fn switchover(&mut self, t: f64) {
        if let Some(m) = self.migration.as_mut() {
            m.switchover.get_or_insert(t);
        }
    }

    /// The migration ended at `t`: probes sent from now on are "after".
    pub fn migration_ended(&mut self, t: f64) {
        if let Some(m) = self.migration.as_mut() {
            m.ended.get_or_insert(t);
        }
    }

    /// Whether a migration is being watched (started, record not taken yet).
    pub fn in_migration(&self) -> bool {
        self.migration.is_some()
    }

    /// The record of the migration, closed at `now` (an outage still open then counts up to
    /// `now`); `downtime` is libvirt's. Forgets the migration.
    pub fn take_record(
        &mut self,
        target: &str,
        now: f64,
        downtime: Option<f64>,
    ) -> Option<AppMigrationRecord> {
        let m = self.migration.take()?;
        let mut longest = m.longest;
        let open = self.open.map(|start| Outage {
            start,
            seconds: now - start,
        });
        if let Some(o) = open.filter(|o| longest.is_none_or(|l| o.seconds > l.seconds)) {
            longest = Some(o);
        }
        let outage = longest.map_or(0.0, |o| o.seconds);
        Some(AppMigrationRecord {
            target: target.to_string(),
            probes: m.probes,
            failures: m.failures,
            outage_seconds: outage,
            outage_started_at: longest.map(|o| o.start),
            outage_start_from_switchover_seconds: match (longest, m.switchover) {
                (Some(o), Some(s)) => Some(o.start - s),
                _ => None,
            },
            latency_before: m.before.summary(),
            latency_during: m.during.summary(),
            latency_after: m.after.summary(),
            latency_after_switchover: m.after_switchover.summary(),
            outage_to_downtime_ratio: downtime.filter(|d| *d > 0.0).map(|d| outage / d),
        })
    }
}

#[cfg(test)]
#[path = "outage_tests.rs"]
mod tests;
