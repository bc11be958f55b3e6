//! Finished migrations of domains whose services are probed wait a settle period before they
//! are recorded, so that their record can carry what the application saw after the migration.
//! The sampler hands them over and writes them when they come back (or, should the app
//! collector not answer, when the wait is long over: a record is never lost to it).

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::jobs::tracker::FinishedMigration;

/// Extra wait past the settle period before the sampler writes a held record as it is.
const SAFETY_S: f64 = 10.0;

#[derive(Clone, Debug, Default)]
pub struct Holdback(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    /// UUIDs of the domains with probed targets.
    watched: BTreeSet<String>,
    settle_s: f64,
    /// (record, monotonic time (`clock::mono_now`) the app collector may complete it).
    held: Vec<(FinishedMigration, f64)>,
    done: Vec<FinishedMigration>,
}

impl Holdback {
    pub fn new(settle_s: f64) -> Self {
        let h = Holdback::default();
        h.0.lock().settle_s = settle_s;
        h
    }

    /// The app collector: these domains' migrations wait for it.
    pub fn set_watched(&self, uuids: BTreeSet<String>) {
        self.0.lock().watched = uuids;
    }

    /// The sampler: keep `f` back if its domain is watched; gives it back otherwise.
    pub fn hold(&self, f: FinishedMigration, now: f64) -> Option<FinishedMigration> {
        let mut g = self.0.lock();
        if !g.watched.contains(&f.domain.uuid) {
            return Some(f);
        }
        let release = now + g.settle_s;
        g.held.push((f, release));
        None
    }

    /// The app collector: held records whose settle period is over at `now`.
    pub fn due(&self, now: f64) -> Vec<FinishedMigration> {
        let mut g = self.0.lock();
        let (due, keep): (Vec<_>, Vec<_>) = g.held.drain(..).partition(|(_, r)| *r <= now);
        g.held = keep;
        due.into_iter().map(|(f, _)| f).collect()
    }

    /// The app collector: a completed record for the sampler to write.
    pub fn complete(&self, f: FinishedMigration) {
        self.0.lock().done.push(f);
    }

    /// The sampler: records to write now: the completed ones, and any held far past their
    /// settle period (the app collector stopped); `all` also takes every held one (shutdown).
    pub fn take_ready(&self, now: f64, all: bool) -> Vec<FinishedMigration> {
        let mut g = self.0.lock();
        let mut out: Vec<FinishedMigration> = g.done.drain(..).collect();
        let (late, keep): (Vec<_>, Vec<_>) = g
            .held
            .drain(..)
            .partition(|(_, r)| all || *r + SAFETY_S <= now);
        g.held = keep;
        out.extend(late.into_iter().map(|(f, _)| f));
        out
    }

    /// Whether records are waiting (the sampler keeps its fast period meanwhile).
    pub fn pending(&self) -> bool {
        let g = self.0.lock();
        !g.held.is_empty() || !g.done.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn finished(uuid: &str) -> FinishedMigration {
        let line = format!(
            r#"{{"domain":{{"name":"g","uuid":"{uuid}"}},"direction":"out","outcome":"completed","mode":"precopy","started_at":1.0,"finished_at":2.0,"duration_seconds":1.0,"downtime_seconds":0.05,"data_processed_bytes":null,"data_total_bytes":null,"memory_total_bytes":null,"iterations":null,"postcopy_requests":null,"setup_time_seconds":null,"dirty_rate_max_bytes":null,"dirty_rate_mean_bytes":null,"transfer_rate_mean_bytes":null,"auto_converge_throttle_max_ratio":null,"verdicts":[],"figures":"event"}}"#
        );
        serde_json::from_str(&line).expect("record")
    }

    #[test]
    fn watched_domains_wait_the_settle_period_and_are_never_lost() {
        let h = Holdback::new(10.0);
        h.set_watched(["u1".to_string()].into());
        assert!(
            h.hold(finished("u2"), 100.0).is_some(),
            "not watched: back at once"
        );
        assert!(h.hold(finished("u1"), 100.0).is_none());
        assert!(h.pending());
        assert!(h.due(105.0).is_empty(), "settling");
        assert!(h.take_ready(105.0, false).is_empty());
        let due = h.due(110.0);
        assert_eq!(due.len(), 1);
        let mut f = due.into_iter().next().expect("one");
        f.app = Some(Vec::new());
        h.complete(f);
        let ready = h.take_ready(110.5, false);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].app, Some(Vec::new()));
        assert!(!h.pending());
        // The app collector never comes: written as it is, late but not lost.
        assert!(h.hold(finished("u1"), 200.0).is_none());
        assert!(h.take_ready(215.0, false).is_empty());
        assert_eq!(h.take_ready(220.0, false).len(), 1);
        // Shutdown takes everything held.
        assert!(h.hold(finished("u1"), 300.0).is_none());
        assert_eq!(h.take_ready(300.0, true).len(), 1);
    }
}
