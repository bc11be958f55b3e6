//! The background sampler: asks the job source about every active domain, feeds the tracker,
//! and publishes results to the shared state and the finished-migration metrics.
//!
//! It runs on its own thread because libvirt calls block; HTTP handlers only read the state it
//! publishes. While a job runs it samples every `interval`; otherwise every `idle_interval`, and
//! at once when an event names a domain it is not yet tracking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::stats::JobStats;
use super::tracker::{FinishedMigration, JobObservation, Round, Tracker};
use crate::libvirt::jobs::{DomainId, JobSource, SourceError, SourceEvent};
use crate::metrics::Metrics;
use crate::state::{CollectorStatus, SharedState};
use crate::store::RecordLog;
use crate::trace::{ReplaySource, TraceRecord, TraceWriter};

/// Rounds (at the active interval) to keep trying a wanted completed-stats read.
const COMPLETED_READ_TRIES: u32 = 10;

/// The collector name of the job sampler in `vm_migration_collector_*`.
pub const COLLECTOR: &str = "jobs";

#[derive(Clone, Debug)]
pub struct SamplerConfig {
    /// Sampling period while a migration job runs.
    pub interval: Duration,
    /// Sampling period while none runs (events still wake the sampler at once).
    pub idle_interval: Duration,
    /// How long to wait for `JOB_COMPLETED` after a migrating domain left.
    pub grace: Duration,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            interval: Duration::from_secs(1),
            idle_interval: Duration::from_secs(15),
            grace: Duration::from_secs(5),
        }
    }
}

pub struct Sampler {
    source: Arc<dyn JobSource>,
    tracker: Tracker,
    state: SharedState,
    metrics: Arc<Metrics>,
    trace: Option<TraceWriter>,
    records: Option<RecordLog>,
    /// Domains whose kept completed stats should be read, with the rounds left to try: on the
    /// destination they appear a moment after the "resumed: migrated" event that asks for them.
    want_completed: HashMap<String, u32>,
    last_completed_sweep: Option<f64>,
    cfg: SamplerConfig,
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Sampler {
    pub fn new(
        source: Arc<dyn JobSource>,
        state: SharedState,
        metrics: Arc<Metrics>,
        trace: Option<TraceWriter>,
        cfg: SamplerConfig,
    ) -> Self {
        Sampler {
            source,
            tracker: Tracker::new(cfg.grace.as_secs_f64()),
            state,
            metrics,
            trace,
            records: None,
            want_completed: HashMap::new(),
            last_completed_sweep: None,
            cfg,
        }
    }

    /// Keep finished-migration records in this file too.
    pub fn with_records(mut self, log: RecordLog) -> Self {
        self.records = Some(log);
        self
    }

    /// Handle a connection or domain event. Returns true when a round should run now.
    pub fn handle(&mut self, now: f64, ev: SourceEvent) -> bool {
        let sample_now = self.handle_event(now, ev);
        // Events are rare and decisive (a completion): never leave one in the buffer.
        self.flush_trace();
        sample_now
    }

    fn handle_event(&mut self, now: f64, ev: SourceEvent) -> bool {
        match ev {
            SourceEvent::Connected => {
                self.record(TraceRecord::Connection {
                    t: now,
                    connected: true,
                });
                self.state.lock().libvirt_up = true;
                true
            }
            SourceEvent::Disconnected { reason } => {
                debug!(%reason, "sampler: libvirt connection lost");
                self.record(TraceRecord::Connection {
                    t: now,
                    connected: false,
                });
                self.tracker.on_disconnect();
                let mut st = self.state.lock();
                st.libvirt_up = false;
                st.collectors.insert(
                    COLLECTOR,
                    CollectorStatus {
                        success: false,
                        duration_seconds: 0.0,
                    },
                );
                false
            }
            SourceEvent::Domain(event) => {
                self.record(TraceRecord::Event {
                    t: now,
                    event: event.clone(),
                });
                let (finished, wants_sample) = self.tracker.on_event(now, &event);
                if wants_sample {
                    self.want_completed
                        .insert(event.domain().uuid.clone(), COMPLETED_READ_TRIES);
                }
                // Counter and live series change in one step: a scrape never sees a finished
                // migration still listed as running.
                self.publish(finished, true);
                wants_sample
            }
        }
    }

    /// Sample every active domain once.
    pub fn round(&mut self, now: f64) {
        let started = Instant::now();
        let ok = self.try_round(now);
        let mut st = self.state.lock();
        st.ready = true;
        st.libvirt_up = self.source.is_connected();
        st.collectors.insert(
            COLLECTOR,
            CollectorStatus {
                success: ok,
                duration_seconds: started.elapsed().as_secs_f64(),
            },
        );
        if ok {
            st.last_success_at = Some(now);
        }
        st.active = self.tracker.active_jobs().cloned().collect();
        drop(st);
        self.flush_trace();
    }

    fn flush_trace(&mut self) {
        if let Some(t) = self.trace.as_mut() {
            if let Err(e) = t.flush() {
                warn!(error = %e, "cannot write the trace file; tracing stops");
                self.trace = None;
            }
        }
    }

    fn try_round(&mut self, now: f64) -> bool {
        if !self.source.is_connected() {
            return false;
        }
        let domains = match self.source.list_domains() {
            Ok(d) => d,
            Err(e) => {
                self.call_failed("list_domains", &e);
                return false;
            }
        };
        self.record(TraceRecord::Round {
            t: now,
            domains: domains.clone(),
        });
        let sweep = self
            .last_completed_sweep
            .is_none_or(|t| now - t >= self.cfg.idle_interval.as_secs_f64());
        let mut round = Round::default();
        for dom in &domains {
            let running = match self.source.job_stats(dom) {
                Ok(job) => {
                    self.record(TraceRecord::Job {
                        t: now,
                        domain: dom.clone(),
                        job: job.clone(),
                    });
                    job.map(|j| JobStats::from_raw(&j))
                        .filter(JobStats::is_running)
                }
                // It left between listing and asking: the next round sees it gone.
                Err(SourceError::NoDomain(_)) => continue,
                // A driver without job support (test:///) has no migrations to watch.
                Err(SourceError::Unsupported { .. }) => None,
                // The destination of an incoming migration has no live stats to give.
                Err(SourceError::Call { message, .. })
                    if message.contains("only on the source host") =>
                {
                    None
                }
                Err(e) => {
                    self.call_failed("job_stats", &e);
                    round
                        .observations
                        .push((dom.clone(), JobObservation::Unknown));
                    continue;
                }
            };
            let obs = match running {
                Some(stats) => JobObservation::Running {
                    max_downtime_ms: self.max_downtime(now, dom),
                    stats: Box::new(stats),
                },
                None => {
                    let wanted = self.want_completed.contains_key(&dom.uuid);
                    let completed = if sweep || wanted || self.tracker.is_active(&dom.uuid) {
                        self.completed(now, dom)
                    } else {
                        None
                    };
                    self.tried_completed(&dom.uuid, completed.is_some());
                    JobObservation::Idle { completed }
                }
            };
            round.observations.push((dom.clone(), obs));
        }
        if sweep {
            self.last_completed_sweep = Some(now);
        }
        // A wanted read for a domain that left cannot succeed any more.
        self.want_completed
            .retain(|uuid, _| domains.iter().any(|d| &d.uuid == uuid));
        self.state.lock().domains_active = Some(domains.len() as u64);
        let finished = self.tracker.on_round(now, &round);
        // The round itself refreshes the live jobs once it is done.
        self.publish(finished, false);
        true
    }

    fn max_downtime(&mut self, now: f64, dom: &DomainId) -> Option<u64> {
        match self.source.max_downtime_ms(dom) {
            Ok(ms) => {
                self.record(TraceRecord::MaxDowntime {
                    t: now,
                    domain: dom.clone(),
                    ms,
                });
                ms
            }
            Err(e) => {
                self.call_failed("migrate_get_max_downtime", &e);
                None
            }
        }
    }

    fn completed(&mut self, now: f64, dom: &DomainId) -> Option<crate::libvirt::RawJob> {
        match self.source.completed_job_stats(dom) {
            Ok(job) => {
                self.record(TraceRecord::Completed {
                    t: now,
                    domain: dom.clone(),
                    job: job.clone(),
                });
                job
            }
            Err(SourceError::NoDomain(_)) => None,
            Err(e) => {
                self.call_failed("completed_job_stats", &e);
                None
            }
        }
    }

    /// Count down a wanted completed-stats read; it is done once the stats were there.
    fn tried_completed(&mut self, uuid: &str, found: bool) {
        if let Some(left) = self.want_completed.get_mut(uuid) {
            *left = left.saturating_sub(1);
            if found || *left == 0 {
                self.want_completed.remove(uuid);
            }
        }
    }

    fn call_failed(&self, call: &'static str, e: &SourceError) {
        debug!(call, error = %e, "libvirt call failed");
        if !matches!(e, SourceError::NotConnected(_)) {
            self.metrics.call_error(call);
        }
    }

    fn publish(&mut self, finished: Vec<FinishedMigration>, refresh_active: bool) {
        if finished.is_empty() {
            return;
        }
        for f in &finished {
            info!(
                domain = %f.domain.name,
                uuid = %f.domain.uuid,
                direction = f.direction.as_str(),
                outcome = f.outcome.as_str(),
                mode = f.mode.as_str(),
                duration_seconds = f.duration_seconds,
                downtime_seconds = f.downtime_seconds,
                figures = ?f.figures,
                "migration finished"
            );
            self.metrics.record_finished(f);
        }
        let mut st = self.state.lock();
        for f in finished {
            st.push_finished(f);
            // The record stays in memory (API, landing page) even if the disk refuses it.
            if let (Some(log), Some(rec)) = (self.records.as_mut(), st.records.back()) {
                if let Err(e) = log.append(rec, &st.records) {
                    warn!(error = %e, "cannot store a migration record");
                }
            }
        }
        if refresh_active {
            st.active = self.tracker.active_jobs().cloned().collect();
        }
    }

    fn record(&mut self, rec: TraceRecord) {
        if let Some(t) = self.trace.as_mut() {
            if let Err(e) = t.write(&rec) {
                warn!(error = %e, "cannot write the trace file; tracing stops");
                self.trace = None;
            }
        }
    }

    /// Drive the sampler through a recorded trace: events are delivered at their recorded times
    /// and a round runs at each recorded round time. `after_round` sees each round's time.
    pub fn replay(&mut self, source: &ReplaySource, mut after_round: impl FnMut(f64)) {
        let records = source.records();
        for (i, rec) in records.iter().enumerate() {
            source.set_time(rec.t());
            match rec {
                TraceRecord::Event { t, event } => {
                    self.handle(*t, SourceEvent::Domain(event.clone()));
                }
                TraceRecord::Connection { t, connected: true } => {
                    self.handle(*t, SourceEvent::Connected);
                }
                TraceRecord::Connection {
                    t,
                    connected: false,
                } => {
                    self.handle(
                        *t,
                        SourceEvent::Disconnected {
                            reason: "replay".into(),
                        },
                    );
                }
                TraceRecord::Round { t, .. } => {
                    // Answer as of the end of this round's records, like the live round did.
                    let end = records[i + 1..]
                        .iter()
                        .take_while(|r| {
                            matches!(
                                r,
                                TraceRecord::Job { .. }
                                    | TraceRecord::Completed { .. }
                                    | TraceRecord::MaxDowntime { .. }
                            )
                        })
                        .map(TraceRecord::t)
                        .fold(*t, f64::max);
                    source.set_time(end);
                    self.round(*t);
                    after_round(*t);
                }
                _ => {}
            }
        }
    }

    /// Run until `stop` is set or the event channel closes.
    pub fn run(mut self, events: Receiver<SourceEvent>, stop: Arc<AtomicBool>) {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            // A round that is due runs before more events are taken, so a flood of events
            // cannot starve sampling.
            let wait = next.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                match events.recv_timeout(wait) {
                    Ok(ev) => {
                        if self.handle(unix_now(), ev) {
                            next = Instant::now();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            self.round(unix_now());
            let period = if self.tracker.has_active() || !self.want_completed.is_empty() {
                self.cfg.interval
            } else {
                self.cfg.idle_interval
            };
            next = Instant::now() + period;
        }
    }
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
