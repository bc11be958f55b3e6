//! Job tracking and finished-migration accounting, as pure logic.
//!
//! The tracker is fed sample rounds and libvirt events with explicit timestamps and decides
//! which jobs are live and when a migration has finished, with what outcome. It does no I/O, so
//! the same code runs in the daemon and in tests that replay recorded traces.
//!
//! How a finish is decided (see design.md, "Where finished-migration figures come from"):
//! - `JOB_COMPLETED` event: the final figures, authoritative.
//! - A job that vanished while its domain still runs here: read the kept completed stats
//!   (`COMPLETED|KEEP_COMPLETED`); `FAILED` → failed, otherwise aborted (an abort leaves none).
//! - A job whose domain left without an event: wait `grace` for the event, then count it as
//!   completed if libvirt said "stopped: migrated", else failed, from the last sample.
//! - Completed stats that appear on a domain we did not watch (an incoming migration on the
//!   destination, or one finished while we were disconnected) are counted once, by fingerprint.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::convergence::{Convergence, VerdictChange};
use super::stats::JobStats;
use crate::clock::Now;
use crate::libvirt::jobs::{job_type, lifecycle, DomainEvent, DomainId, RawJob};
pub use crate::record::{Direction, FigureSource, Outcome, Phase};

/// A migration job that is running now.
#[derive(Clone, Debug)]
pub struct ActiveJob {
    pub domain: DomainId,
    pub stats: JobStats,
    /// Unix time of the latest sample.
    pub sampled_at: f64,
    /// Unix time the job started (now − elapsed at first sight).
    pub started_at: f64,
    pub phase: Phase,
    pub max_downtime_ms: Option<u64>,
    /// Highest iteration announced by `MIGRATION_ITERATION` events.
    pub event_iteration: Option<i64>,
    pub convergence: Convergence,
    pub totals: RateTotals,
    /// Monotonic time the job was first missing from a round, if it is (the grace clock).
    vanished_at: Option<f64>,
    /// libvirt said the domain stopped because it migrated.
    stopped_migrated: bool,
    /// Unix time the source paused the guest to switch over (libvirt's "suspended: migrated"),
    /// while the job had not completed yet.
    pub switchover_at: Option<f64>,
    /// Monotonic times of the latest sample and of the switch-over, to compare them.
    sampled_mono: f64,
    switchover_mono: Option<f64>,
}

impl ActiveJob {
    /// Switching over: the guest is paused for the final copy and the job not yet complete.
    pub fn switching_over(&self) -> bool {
        self.switchover_at.is_some() && self.phase == Phase::Precopy
    }

    /// Whether the sampled progress figures are true now: libvirt has reported any (during
    /// set-up it says 0 remaining at pass 0, which reads as "done"), and they were sampled after
    /// the switch-over began (older ones show a pass long over).
    pub fn figures_current(&self) -> bool {
        let reported = self.stats.memory_iteration.unwrap_or(0) >= 1
            || self.stats.data_processed.unwrap_or(0) > 0;
        reported && self.switchover_mono.is_none_or(|t| self.sampled_mono >= t)
    }
}

/// Running aggregates of a job's samples, for its record.
#[derive(Clone, Debug, Default)]
pub struct RateTotals {
    dirty_max: Option<u64>,
    dirty_sum: f64,
    dirty_n: u32,
    bps_sum: f64,
    bps_n: u32,
    throttle_max: Option<u64>,
}

impl RateTotals {
    fn add(&mut self, s: &JobStats) {
        // Pass 1 has no dirty-rate measurement yet: its zero would dilute the mean.
        if s.memory_iteration.unwrap_or(0) >= 2 {
            if let Some(d) = s.dirty_rate_bytes() {
                self.dirty_max = Some(self.dirty_max.unwrap_or(0).max(d));
                self.dirty_sum += d as f64;
                self.dirty_n += 1;
            }
        }
        if let Some(b) = s.memory_bps.filter(|b| *b > 0) {
            self.bps_sum += b as f64;
            self.bps_n += 1;
        }
        if let Some(t) = s.auto_converge_throttle {
            self.throttle_max = Some(self.throttle_max.unwrap_or(0).max(t));
        }
    }

    fn mean(sum: f64, n: u32) -> Option<f64> {
        (n > 0).then(|| sum / f64::from(n))
    }
}

/// One finished migration, with its final figures: also the record kept on disk and served
/// at `/api/v1/migrations`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinishedMigration {
    pub domain: DomainId,
    pub direction: Direction,
    pub outcome: Outcome,
    pub mode: Phase,
    pub started_at: f64,
    pub finished_at: f64,
    pub duration_seconds: Option<f64>,
    /// Only for completed migrations: libvirt's measured downtime.
    pub downtime_seconds: Option<f64>,
    pub data_processed_bytes: Option<u64>,
    pub data_total_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub iterations: Option<u64>,
    pub postcopy_requests: Option<u64>,
    pub setup_time_seconds: Option<f64>,
    pub dirty_rate_max_bytes: Option<u64>,
    pub dirty_rate_mean_bytes: Option<f64>,
    pub transfer_rate_mean_bytes: Option<f64>,
    pub auto_converge_throttle_max_ratio: Option<f64>,
    /// Verdict changes while it ran (empty when it was never sampled live).
    pub verdicts: Vec<VerdictChange>,
    pub figures: FigureSource,
    /// The busiest transmitting NIC while it ran (source side).
    #[serde(default)]
    pub network: Option<crate::record::NetworkSummary>,
    /// The migration's peer (found from QEMU's migration socket) as its probes saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<crate::record::PeerSummary>,
    /// What the guest's probed services saw, one entry per target (`app:` targets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<Vec<crate::record::AppMigrationRecord>>,
    /// Who the domain is to OpenStack (Nova's metadata), when it has that metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::record::DomainIdentity>,
}

/// What one sample round saw for one listed domain.
#[derive(Clone, Debug)]
pub enum JobObservation {
    Running {
        stats: Box<JobStats>,
        max_downtime_ms: Option<u64>,
    },
    /// No job now; carries the kept completed stats when they were read this round.
    Idle { completed: Option<RawJob> },
    /// libvirt could not answer for this domain this round: keep what we knew.
    Unknown,
}

/// One sample round: every active domain and what was seen of its job.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub observations: Vec<(DomainId, JobObservation)>,
}

/// Identifies one completed job so that it is counted once, however often it is seen.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    operation: Option<u64>,
    elapsed: Option<u64>,
    processed: Option<u64>,
}

impl Fingerprint {
    fn of(s: &JobStats) -> Self {
        Fingerprint {
            operation: s.operation,
            elapsed: s.time_elapsed_ms,
            processed: s.data_processed,
        }
    }
}

/// How long a domain that left the host is remembered (its last counted completed job), in
/// monotonic seconds: long enough that a domain stopped and started again does not have its
/// old kept stats counted twice, short enough that hosts where guests come and go all day do
/// not pile up memory.
pub const FORGET_AFTER_S: f64 = 24.0 * 3600.0;
/// Most domains remembered at once; past it the longest unseen are forgotten first.
pub const MAX_REMEMBERED: usize = 10_000;

/// What the tracker keeps of one domain between its jobs.
#[derive(Clone, Debug, Default)]
struct Memo {
    /// Last completed job counted.
    counted: Option<Fingerprint>,
    /// Monotonic time its last migration finished: a round that began before that (its
    /// libvirt calls ran while the completion event was handled) must not bring the job back.
    finished_mono: Option<f64>,
    /// Monotonic time it was last listed (or remembered).
    seen_mono: f64,
}

pub struct Tracker {
    active: BTreeMap<String, ActiveJob>,
    /// Per domain UUID, bounded ([`FORGET_AFTER_S`], [`MAX_REMEMBERED`]).
    memo: HashMap<String, Memo>,
    /// Completed stats seen before the first round are history, not news.
    first_round_done: bool,
    /// How long to wait for `JOB_COMPLETED` after a domain left before deciding without it.
    grace_seconds: f64,
}

impl Tracker {
    pub fn new(grace_seconds: f64) -> Self {
        Tracker {
            active: BTreeMap::new(),
            memo: HashMap::new(),
            first_round_done: false,
            grace_seconds,
        }
    }

    /// How many domains are remembered between jobs (bounded).
    pub fn remembered(&self) -> usize {
        self.memo.len()
    }

    fn counted(&self, uuid: &str) -> Option<&Fingerprint> {
        self.memo.get(uuid).and_then(|m| m.counted.as_ref())
    }

    fn memo_mut(&mut self, uuid: &str, now: Now) -> &mut Memo {
        let m = self.memo.entry(uuid.to_string()).or_default();
        m.seen_mono = m.seen_mono.max(now.mono);
        m
    }

    /// Forget domains unseen for [`FORGET_AFTER_S`], then the longest unseen past the cap.
    fn forget(&mut self, now: Now) {
        let active = &self.active;
        self.memo
            .retain(|u, m| now.mono - m.seen_mono < FORGET_AFTER_S || active.contains_key(u));
        if self.memo.len() > MAX_REMEMBERED {
            let mut by_age: Vec<(f64, String)> = self
                .memo
                .iter()
                .map(|(u, m)| (m.seen_mono, u.clone()))
                .collect();
            by_age.sort_by(|a, b| a.0.total_cmp(&b.0));
            let excess = self.memo.len() - MAX_REMEMBERED;
            for (_, u) in by_age.into_iter().take(excess) {
                self.memo.remove(&u);
            }
        }
    }

    pub fn active_jobs(&self) -> impl Iterator<Item = &ActiveJob> {
        self.active.values()
    }

    pub fn is_active(&self, uuid: &str) -> bool {
        self.active.contains_key(uuid)
    }

    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// Apply one sample round taken at `now` (a trace's time converts: [`Now`]).
    pub fn on_round(&mut self, now: impl Into<Now>, round: &Round) -> Vec<FinishedMigration> {
        let now = now.into();
        let mut finished = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for (dom, obs) in &round.observations {
            listed.insert(dom.uuid.as_str());
            if let Some(m) = self.memo.get_mut(&dom.uuid) {
                m.seen_mono = m.seen_mono.max(now.mono);
            }
            let finished_mono = self.memo.get(&dom.uuid).and_then(|m| m.finished_mono);
            match obs {
                JobObservation::Running { .. } if finished_mono.is_some_and(|t| t >= now.mono) => {}
                JobObservation::Running {
                    stats,
                    max_downtime_ms,
                } if stats.is_migration() => {
                    self.upsert(now, dom, (**stats).clone(), *max_downtime_ms);
                }
                JobObservation::Running { .. } => {}
                JobObservation::Idle { completed } => {
                    let completed = completed.as_ref().map(JobStats::from_raw);
                    if let Some(job) = self.active.remove(&dom.uuid) {
                        // The job ended while the domain still runs here: failed or aborted.
                        finished.push(self.finish_in_place(now, job, completed.as_ref()));
                    } else if let Some(c) = completed {
                        if let Some(f) = self.new_completed(now, dom, &c) {
                            finished.push(f);
                        }
                    }
                }
                JobObservation::Unknown => {}
            }
        }
        // Jobs whose domain is no longer listed: it left (migrated away) or died.
        let gone: Vec<String> = self
            .active
            .keys()
            .filter(|u| !listed.contains(u.as_str()))
            .cloned()
            .collect();
        for uuid in gone {
            let Some(job) = self.active.get_mut(&uuid) else {
                continue;
            };
            let since = *job.vanished_at.get_or_insert(now.mono);
            if now.mono - since >= self.grace_seconds {
                if let Some(job) = self.active.remove(&uuid) {
                    finished.push(self.finish_gone(now, job));
                }
            }
        }
        self.first_round_done = true;
        self.forget(now);
        finished
    }

    /// Apply one libvirt event received at `now`. Returns finished migrations, and whether the
    /// event concerns a domain whose job the tracker has not sampled yet (sample soon).
    pub fn on_event(
        &mut self,
        now: impl Into<Now>,
        ev: &DomainEvent,
    ) -> (Vec<FinishedMigration>, bool) {
        let now = now.into();
        let uuid = &ev.domain().uuid;
        match ev {
            DomainEvent::JobCompleted { domain, params } => {
                let stats = JobStats::from_params(job_type::COMPLETED, params);
                if !stats.is_migration() {
                    return (Vec::new(), false);
                }
                let job = self.active.remove(uuid);
                let outcome = if stats.success == Some(false) {
                    Outcome::Failed
                } else {
                    Outcome::Completed
                };
                let f = self.finish_with(now, domain, job, &stats, outcome, FigureSource::Event);
                (vec![f], false)
            }
            // Not about jobs (the sampler reads the new metadata).
            DomainEvent::MetadataChange { .. } => (Vec::new(), false),
            DomainEvent::Iteration { iteration, .. } => match self.active.get_mut(uuid) {
                Some(job) => {
                    job.event_iteration = Some(job.event_iteration.unwrap_or(0).max(*iteration));
                    (Vec::new(), false)
                }
                None => (Vec::new(), true),
            },
            DomainEvent::Lifecycle { event, detail, .. } => {
                let postcopy = matches!(
                    (*event, *detail),
                    (lifecycle::SUSPENDED, lifecycle::SUSPENDED_POSTCOPY)
                        | (lifecycle::RESUMED, lifecycle::RESUMED_POSTCOPY)
                );
                let postcopy_failed = (*event, *detail)
                    == (lifecycle::SUSPENDED, lifecycle::SUSPENDED_POSTCOPY_FAILED);
                let paused_to_switch =
                    (*event, *detail) == (lifecycle::SUSPENDED, lifecycle::SUSPENDED_MIGRATED);
                let migrated_away =
                    (*event, *detail) == (lifecycle::STOPPED, lifecycle::STOPPED_MIGRATED);
                // A domain resumed after an incoming migration has fresh completed stats.
                let incoming_done =
                    (*event, *detail) == (lifecycle::RESUMED, lifecycle::RESUMED_MIGRATED);
                match self.active.get_mut(uuid) {
                    Some(job) => {
                        let resumed = job.convergence.is_postcopy_failed()
                            && (*event, *detail)
                                == (lifecycle::RESUMED, lifecycle::RESUMED_POSTCOPY);
                        if postcopy && (job.phase != Phase::Postcopy || resumed) {
                            job.phase = Phase::Postcopy;
                            job.convergence.postcopy(now.wall);
                        }
                        if postcopy_failed {
                            job.phase = Phase::Postcopy;
                            job.convergence.postcopy_failed(now.wall);
                        }
                        if migrated_away {
                            job.stopped_migrated = true;
                        }
                        if paused_to_switch && job.switchover_at.is_none() {
                            job.switchover_at = Some(now.wall);
                            job.switchover_mono = Some(now.mono);
                        }
                        (Vec::new(), false)
                    }
                    // A pause for a job not seen yet (a short migration between idle rounds):
                    // sample now, so the job and its switch-over are known at once.
                    None => (Vec::new(), postcopy || incoming_done || paused_to_switch),
                }
            }
        }
    }

    /// The connection dropped: events may be lost until it is back. Jobs stay tracked; the
    /// next round after reconnecting decides what became of them.
    pub fn on_disconnect(&mut self) {}

    fn upsert(&mut self, now: Now, dom: &DomainId, stats: JobStats, max_downtime_ms: Option<u64>) {
        let postcopy_seen = stats.memory_postcopy_requests.is_some_and(|r| r > 0);
        let job = self
            .active
            .entry(dom.uuid.clone())
            .or_insert_with(|| ActiveJob {
                domain: dom.clone(),
                stats: stats.clone(),
                sampled_at: now.wall,
                started_at: now.wall - stats.time_elapsed_ms.unwrap_or(0) as f64 / 1000.0,
                phase: Phase::Precopy,
                max_downtime_ms: None,
                event_iteration: None,
                convergence: Convergence::default(),
                totals: RateTotals::default(),
                vanished_at: None,
                stopped_migrated: false,
                switchover_at: None,
                sampled_mono: now.mono,
                switchover_mono: None,
            });
        job.domain = dom.clone();
        job.stats = stats;
        job.sampled_at = now.wall;
        job.sampled_mono = now.mono;
        job.vanished_at = None;
        if max_downtime_ms.is_some() {
            job.max_downtime_ms = max_downtime_ms;
        }
        if postcopy_seen {
            job.phase = Phase::Postcopy;
        }
        job.totals.add(&job.stats);
        job.convergence
            .observe(now.wall, &job.stats, job.max_downtime_ms, job.phase);
    }

    /// Completed stats found on an idle domain: count them if they are news.
    fn new_completed(
        &mut self,
        now: Now,
        dom: &DomainId,
        c: &JobStats,
    ) -> Option<FinishedMigration> {
        if !c.is_migration() {
            return None;
        }
        let fp = Fingerprint::of(c);
        let first_sight = self.counted(&dom.uuid).is_none();
        if self.counted(&dom.uuid) == Some(&fp) {
            return None;
        }
        self.memo_mut(&dom.uuid, now).counted = Some(fp);
        if first_sight && !self.first_round_done {
            // Kept from before this exporter started: already history.
            return None;
        }
        let outcome = outcome_of_completed(c);
        Some(self.finish_with(now, dom, None, c, outcome, FigureSource::CompletedStats))
    }

    fn finish_in_place(
        &mut self,
        now: Now,
        job: ActiveJob,
        completed: Option<&JobStats>,
    ) -> FinishedMigration {
        let dom = job.domain.clone();
        // Kept stats may belong to an older job (say, the migration that brought the domain
        // here): only those of the same operation, at least as long as the job we watched, count.
        let same_job = |c: &&JobStats| {
            c.is_migration()
                && c.operation == job.stats.operation
                && c.time_elapsed_ms >= job.stats.time_elapsed_ms
                && self.counted(&dom.uuid) != Some(&Fingerprint::of(c))
        };
        match completed.filter(same_job) {
            Some(c) => {
                let outcome = match outcome_of_completed(c) {
                    // Completed stats while the domain still runs here: the job did not move it.
                    Outcome::Completed if c.direction() == Direction::Out => Outcome::Aborted,
                    o => o,
                };
                self.finish_with(
                    now,
                    &dom,
                    Some(job),
                    c,
                    outcome,
                    FigureSource::CompletedStats,
                )
            }
            _ => {
                let last = job.stats.clone();
                self.finish_with(
                    now,
                    &dom,
                    Some(job),
                    &last,
                    Outcome::Aborted,
                    FigureSource::LastSample,
                )
            }
        }
    }

    fn finish_gone(&mut self, now: Now, job: ActiveJob) -> FinishedMigration {
        let outcome = if job.stopped_migrated {
            Outcome::Completed
        } else {
            Outcome::Failed
        };
        let dom = job.domain.clone();
        let last = job.stats.clone();
        self.finish_with(
            now,
            &dom,
            Some(job),
            &last,
            outcome,
            FigureSource::LastSample,
        )
    }

    fn finish_with(
        &mut self,
        now: Now,
        dom: &DomainId,
        job: Option<ActiveJob>,
        stats: &JobStats,
        outcome: Outcome,
        figures: FigureSource,
    ) -> FinishedMigration {
        let memo = self.memo_mut(&dom.uuid, now);
        if figures != FigureSource::LastSample {
            memo.counted = Some(Fingerprint::of(stats));
        }
        memo.finished_mono = Some(now.mono);
        let now = now.wall;
        let postcopy = stats.memory_postcopy_requests.is_some_and(|r| r > 0)
            || job.as_ref().is_some_and(|j| j.phase == Phase::Postcopy);
        let duration = stats.time_elapsed_ms.map(|ms| ms as f64 / 1000.0);
        let totals = job.as_ref().map(|j| &j.totals);
        let started_at = match &job {
            Some(j) => j.started_at,
            None => now - duration.unwrap_or(0.0),
        };
        FinishedMigration {
            domain: dom.clone(),
            direction: stats.direction(),
            outcome,
            mode: if postcopy {
                Phase::Postcopy
            } else {
                Phase::Precopy
            },
            started_at,
            finished_at: now,
            duration_seconds: duration,
            downtime_seconds: match (outcome, figures) {
                (Outcome::Completed, FigureSource::Event | FigureSource::CompletedStats) => {
                    stats.downtime_ms.map(|ms| ms as f64 / 1000.0)
                }
                _ => None,
            },
            data_processed_bytes: stats.data_processed,
            data_total_bytes: stats.data_total,
            memory_total_bytes: stats.memory_total,
            iterations: stats.memory_iteration.or(job
                .as_ref()
                .and_then(|j| j.event_iteration)
                .and_then(|i| u64::try_from(i).ok())),
            postcopy_requests: stats.memory_postcopy_requests,
            setup_time_seconds: stats.setup_time_ms.map(|ms| ms as f64 / 1000.0),
            dirty_rate_max_bytes: totals.and_then(|t| t.dirty_max),
            dirty_rate_mean_bytes: totals.and_then(|t| RateTotals::mean(t.dirty_sum, t.dirty_n)),
            transfer_rate_mean_bytes: totals.and_then(|t| RateTotals::mean(t.bps_sum, t.bps_n)),
            auto_converge_throttle_max_ratio: totals
                .and_then(|t| t.throttle_max)
                .or(stats.auto_converge_throttle)
                .map(|p| p as f64 / 100.0),
            verdicts: job
                .as_ref()
                .map(|j| j.convergence.history().to_vec())
                .unwrap_or_default(),
            figures,
            network: None,
            peer: None,
            app: None,
            identity: None,
        }
    }
}

fn outcome_of_completed(c: &JobStats) -> Outcome {
    match (c.job_type, c.success) {
        (job_type::FAILED, _) | (_, Some(false)) => Outcome::Failed,
        (job_type::CANCELLED, _) => Outcome::Aborted,
        _ => Outcome::Completed,
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
