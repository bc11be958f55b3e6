//! The background sampler: asks the job source about every active domain, feeds the tracker,
//! and publishes results to the shared state and the finished-migration metrics.
//!
//! [`JobsCollector`] is the `jobs` collector: the runner calls its rounds on a thread of their
//! own because libvirt calls block (during a post-copy switch-over `virDomainGetJobStats` waits
//! until the migration completes), and hands events to it on another thread, so a lifecycle or
//! completion event is published at once even while a round is stuck in libvirt. Both share
//! [`Core`] behind a lock that is never held across a libvirt call. HTTP handlers only read the
//! state they publish. While a job runs a round happens every `interval`; otherwise every
//! `idle_interval`, and at once when an event names a domain that is not tracked yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{debug, info, warn};

use crate::clock::{Clock, Now, SystemClock};
use crate::collector::{Collect, CollectError, Event, Events, Feed, Name, Registration, Rounds};
use crate::jobs::identity::{DomainIdentity, NOVA_NS};
use crate::jobs::metrics::Metrics;
use crate::jobs::stats::JobStats;
use crate::jobs::trace::{TraceRecord, TraceWriter};
use crate::jobs::tracker::{FinishedMigration, JobObservation, Round, Tracker};
use crate::libvirt::jobs::{
    lifecycle, Call, DomainEvent, DomainId, JobSource, SourceError, SourceEvent,
};
use crate::peers::discovery::RunningJob;
use crate::records::log::RecordLog;
use crate::state::SharedState;

/// Rounds (at the active interval) to keep trying a wanted completed-stats read.
const COMPLETED_READ_TRIES: u32 = 10;

#[derive(Clone, Debug)]
pub struct SamplerConfig {
    /// Sampling period while a migration job runs.
    pub interval: Duration,
    /// Sampling period while none runs (events still wake the sampler at once).
    pub idle_interval: Duration,
    /// How long to wait for `JOB_COMPLETED` after a migrating domain left.
    pub grace: Duration,
    /// How long a domain's `vm_migration_last_*` series stay after its last migration
    /// finished; `None` keeps them until restart.
    pub last_retention: Option<Duration>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            interval: Duration::from_secs(1),
            idle_interval: Duration::from_secs(15),
            grace: Duration::from_secs(5),
            last_retention: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

impl SamplerConfig {
    pub fn from_settings(s: &crate::settings::Settings) -> Self {
        SamplerConfig {
            interval: s.sample_interval,
            idle_interval: s.sample_idle_interval,
            grace: s.completion_grace,
            last_retention: s.last_retention,
        }
    }
}

/// What rounds and events share: the tracker and everything that publishes its results.
struct Core {
    tracker: Tracker,
    state: SharedState,
    metrics: Arc<Metrics>,
    trace: Option<TraceWriter>,
    /// Records to append to the record file, taken by [`Sampler::store_records`] once the
    /// lock is released (an append fsyncs); only while there is a record file.
    to_store: Option<Vec<FinishedMigration>>,
    /// NIC transmit history, to add the network under a migration to its record.
    network: Option<Arc<Mutex<crate::netdev::TxHistory>>>,
    /// Probe results of the peers discovered for migrations, for their records.
    peers: Option<crate::peers::state::PeerState>,
    /// The running jobs, for peer discovery (woken when they change).
    running: Option<Feed<Vec<RunningJob>>>,
    /// Domains and running jobs, for the app collector; its held-back records.
    app: Option<(
        crate::app::collector::SharedHostView,
        crate::app::holdback::Holdback,
    )>,
    /// Domains listed at the last round.
    domains: Vec<DomainId>,
    /// The app metadata element of each listed domain (app collector only), and the domains
    /// whose element must be read (new, or libvirt said it changed).
    metadata: BTreeMap<String, Option<String>>,
    want_metadata: BTreeSet<String>,
    /// Nova's identity of each listed domain (`None`: no Nova metadata), kept while the domain
    /// is listed or its migration is tracked (its record takes it); and the domains whose
    /// element must be read (new, or libvirt said it changed or was redefined).
    identities: BTreeMap<String, Option<DomainIdentity>>,
    want_identity: BTreeSet<String>,
    /// Domains whose Nova element was bad, warned about once (until it changes).
    bad_identity: BTreeSet<String>,
    /// Domains whose kept completed stats should be read, with the rounds left to try: on the
    /// destination they appear a moment after the "resumed: migrated" event that asks for them.
    want_completed: HashMap<String, u32>,
    /// The first connection attempt has an outcome (connected, or failed and reported): only
    /// then does a round say something true about libvirt, so only then is the exporter ready.
    connection_known: bool,
}

/// Rounds that may be missed before the sampler counts as stuck (readiness turns 503).
const STALE_ROUNDS: u32 = 3;
/// Added to that, for a slow round under load.
const STALE_SLACK: Duration = Duration::from_secs(5);

pub struct Sampler {
    source: Arc<dyn JobSource>,
    core: Arc<Mutex<Core>>,
    /// The record file, written outside the core lock.
    store: Option<Arc<Mutex<RecordStore>>>,
    /// Monotonic time of the last sweep of completed stats.
    last_completed_sweep: Option<f64>,
    cfg: SamplerConfig,
    clock: Arc<dyn Clock>,
}

impl Core {
    fn record(&mut self, rec: TraceRecord) {
        if let Some(t) = self.trace.as_mut() {
            if let Err(e) = t.write(&rec) {
                warn!(error = %e, "cannot write the trace file; tracing stops");
                self.trace = None;
            }
        }
    }

    fn flush_trace(&mut self) {
        if let Some(t) = self.trace.as_mut() {
            if let Err(e) = t.flush() {
                warn!(error = %e, "cannot write the trace file; tracing stops");
                self.trace = None;
            }
        }
    }

    /// Handle a connection or domain event.
    fn handle(&mut self, now: Now, ev: SourceEvent) -> Event {
        let step = match ev {
            SourceEvent::Connected => {
                self.record(TraceRecord::Connection {
                    t: now.wall,
                    connected: true,
                });
                self.state.lock().libvirt_up = true;
                self.connection_known = true;
                Event::Handled { round_now: true }
            }
            SourceEvent::Disconnected { reason } => {
                debug!(%reason, "sampler: libvirt connection lost");
                self.record(TraceRecord::Connection {
                    t: now.wall,
                    connected: false,
                });
                self.tracker.on_disconnect();
                self.state.lock().libvirt_up = false;
                if std::mem::replace(&mut self.connection_known, true) {
                    Event::Failed
                } else {
                    // The first outcome is a failure: a round now reports it (and fails, which
                    // marks the collector) and makes the exporter ready.
                    Event::Handled { round_now: true }
                }
            }
            SourceEvent::Domain(DomainEvent::MetadataChange { domain, uri }) => {
                // Ours (only when guest services are probed) and Nova's.
                let app =
                    self.app.is_some() && uri.as_deref() == Some(crate::app::targets::METADATA_NS);
                let nova = uri.as_deref() == Some(NOVA_NS);
                if app {
                    self.want_metadata.insert(domain.uuid.clone());
                }
                if nova {
                    self.want_identity.insert(domain.uuid);
                }
                Event::Handled {
                    round_now: app || nova,
                }
            }
            SourceEvent::Domain(event) => {
                self.record(TraceRecord::Event {
                    t: now.wall,
                    event: event.clone(),
                });
                // A (re)definition may carry new Nova metadata: read it at the next round.
                let defined = matches!(&event, DomainEvent::Lifecycle { event, .. } if *event == lifecycle::DEFINED);
                if defined {
                    self.want_identity.insert(event.domain().uuid.clone());
                }
                let (finished, wants_sample) = self.tracker.on_event(now, &event);
                if wants_sample {
                    self.want_completed
                        .insert(event.domain().uuid.clone(), COMPLETED_READ_TRIES);
                }
                // Counter and live series change in one step, and a phase change shows at once.
                self.publish(now, finished);
                self.publish_active();
                Event::Handled {
                    round_now: wants_sample,
                }
            }
        };
        // Events are rare and decisive (a completion): never leave one in the buffer.
        self.flush_trace();
        step
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

    /// Copy the running jobs into the shared state and the feed of peer discovery (which is
    /// woken when a job started or ended, so it need not poll).
    fn publish_active(&mut self) {
        let active: Vec<_> = self.tracker.active_jobs().cloned().collect();
        if let Some(feed) = &self.running {
            feed.publish(
                active
                    .iter()
                    .map(|j| RunningJob {
                        domain: j.domain.clone(),
                        direction: j.stats.direction(),
                    })
                    .collect(),
            );
        }
        if let Some((view, _)) = &self.app {
            view.publish(crate::app::collector::HostView {
                metadata: self
                    .domains
                    .iter()
                    .filter_map(|d| {
                        let xml = self.metadata.get(&d.uuid)?.clone()?;
                        Some((d.clone(), xml))
                    })
                    .collect(),
                domains: self.domains.clone(),
                jobs: active
                    .iter()
                    .filter(|j| j.stats.is_migration())
                    .map(|j| {
                        (
                            j.domain.clone(),
                            j.started_at,
                            j.phase == crate::record::Phase::Postcopy || j.switching_over(),
                        )
                    })
                    .collect(),
            });
        }
        self.state.lock().active = active;
    }

    fn publish(&mut self, now: Now, mut finished: Vec<FinishedMigration>) {
        if finished.is_empty() {
            return;
        }
        for f in &mut finished {
            f.identity = self.identities.get(&f.domain.uuid).cloned().flatten();
        }
        if let Some(p) = &self.peers {
            for f in &mut finished {
                f.peer = p.summary_for_domain(&f.domain.uuid, f.started_at, f.finished_at);
            }
        }
        if let Some(h) = &self.network {
            let h = h.lock();
            for f in &mut finished {
                let via = f.peer.as_ref().and_then(|p| p.device.as_deref());
                f.network = h.summary_via(f.started_at, f.finished_at, via);
            }
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
            self.metrics.record_finished(f, now.mono);
        }
        // The counters went up: the finished jobs leave the live series now, not after the
        // record's disk write (an fsync) below, or a scrape meanwhile shows both.
        self.publish_active();
        // Migrations of domains whose services are probed wait for what the app saw after them.
        let finished: Vec<_> = match &self.app {
            Some((_, hold)) => finished
                .into_iter()
                .filter_map(|f| hold.hold(f, now.mono))
                .collect(),
            None => finished,
        };
        self.write_records(finished);
    }

    /// Records to memory (API, landing page) and to the record file.
    fn write_records(&mut self, finished: Vec<FinishedMigration>) {
        let mut st = self.state.lock();
        for f in &finished {
            st.push_finished(f.clone());
        }
        // Disk writes happen after the lock that scrapes take is released. The record stays
        // in memory (API, landing page) even if the disk refuses it.
        drop(st);
        if let Some(to_store) = self.to_store.as_mut() {
            to_store.extend(finished);
        }
    }

    /// Held-back records the app collector completed (or gave up on); `all` at shutdown.
    fn write_held(&mut self, now: Now, all: bool) {
        let ready = match &self.app {
            // The holdback's settle period is waited out on the monotonic clock.
            Some((_, hold)) => hold.take_ready(now.mono, all),
            None => return,
        };
        self.write_records(ready);
    }
}

impl Core {
    /// Store what Nova's element (if any) says about `dom`; a bad element is one warning (until
    /// it changes) and leaves the identity empty.
    fn set_identity(&mut self, dom: &DomainId, xml: Option<String>) {
        self.want_identity.remove(&dom.uuid);
        let identity = match xml.as_deref().map(crate::jobs::identity::parse_nova) {
            None => None,
            Some(Ok(id)) => {
                self.bad_identity.remove(&dom.uuid);
                Some(id)
            }
            Some(Err(e)) => {
                if self.bad_identity.insert(dom.uuid.clone()) {
                    warn!(domain = %dom.name, uuid = %dom.uuid, error = %e, "Nova metadata ignored (vm_migration_domain_info has empty labels for it)");
                }
                Some(DomainIdentity::default())
            }
        };
        self.identities.insert(dom.uuid.clone(), identity);
    }
}

impl Drop for Sampler {
    /// Stopping: records held back for the app collector are written as they are.
    fn drop(&mut self) {
        let now = self.clock.now();
        self.core.lock().write_held(now, true);
        store_records(&self.core, self.store.as_ref());
    }
}

/// What one round read from libvirt, before it is applied.
struct Reading {
    domains: Vec<DomainId>,
    round: Round,
    /// Trace records of the round, written together so a round stays contiguous in the trace.
    trace: Vec<TraceRecord>,
    failed_calls: Vec<Call>,
    /// App metadata elements read this round, by domain UUID.
    metadata: Vec<(String, Option<String>)>,
    /// Nova metadata elements read this round.
    nova: Vec<(DomainId, Option<String>)>,
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
            core: Arc::new(Mutex::new(Core {
                tracker: Tracker::new(cfg.grace.as_secs_f64()),
                state,
                metrics,
                trace,
                to_store: None,
                network: None,
                peers: None,
                running: None,
                want_completed: HashMap::new(),
                connection_known: false,
                app: None,
                domains: Vec::new(),
                metadata: BTreeMap::new(),
                want_metadata: BTreeSet::new(),
                identities: BTreeMap::new(),
                want_identity: BTreeSet::new(),
                bad_identity: BTreeSet::new(),
            })),
            store: None,
            last_completed_sweep: None,
            cfg,
            clock: Arc::new(SystemClock),
        }
    }

    /// Read the time from `clock` (tests step its wall clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The time now, on the sampler's clock.
    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// Keep finished-migration records in this file too.
    pub fn with_records(mut self, log: RecordLog) -> Self {
        self.core.lock().to_store = Some(Vec::new());
        self.store = Some(Arc::new(Mutex::new(RecordStore {
            log,
            unwritten: std::collections::VecDeque::new(),
            failing: false,
        })));
        self
    }

    /// Add the NIC's throughput (the route to the peer, else the busiest) and the peer's probe
    /// figures to each finished migration's record.
    pub fn with_network(
        self,
        history: Option<Arc<Mutex<crate::netdev::TxHistory>>>,
        peers: Option<crate::peers::state::PeerState>,
    ) -> Self {
        {
            let mut core = self.core.lock();
            core.network = history;
            core.peers = peers;
        }
        self
    }

    /// Publish the host's domains and jobs for the app collector, and keep back the records of
    /// its domains until it has added what their services saw.
    pub fn with_app(
        self,
        view: crate::app::collector::SharedHostView,
        hold: crate::app::holdback::Holdback,
    ) -> Self {
        self.core.lock().app = Some((view, hold));
        self
    }

    /// Publish the running jobs into `feed` (peer discovery reads it).
    pub fn with_running_jobs(self, feed: Feed<Vec<RunningJob>>) -> Self {
        self.core.lock().running = Some(feed);
        self
    }

    /// Handle a connection or domain event.
    pub fn handle(&self, now: impl Into<Now>, ev: SourceEvent) -> Event {
        let step = self.core.lock().handle(now.into(), ev);
        store_records(&self.core, self.store.as_ref());
        step
    }

    /// Sample every active domain once: read libvirt without holding the lock, then apply.
    pub fn round(&mut self, now: impl Into<Now>) -> Result<(), CollectError> {
        let now = now.into();
        let reading = self.read(now);
        let mut core = self.core.lock();
        let result = match reading {
            Ok(r) => {
                for rec in r.trace {
                    core.record(rec);
                }
                for call in r.failed_calls {
                    core.metrics.call_error(call);
                }
                // A wanted read for a domain that left cannot succeed any more.
                core.want_completed
                    .retain(|uuid, _| r.domains.iter().any(|d| &d.uuid == uuid));
                core.state.lock().domains_active = Some(r.domains.len() as u64);
                core.domains = r.domains.clone();
                for (uuid, xml) in r.metadata {
                    core.want_metadata.remove(&uuid);
                    core.metadata.insert(uuid, xml);
                }
                // Domains come and go: nothing is kept for one that left.
                let listed: BTreeSet<&str> = r.domains.iter().map(|d| d.uuid.as_str()).collect();
                core.metadata
                    .retain(|uuid, _| listed.contains(uuid.as_str()));
                core.want_metadata
                    .retain(|uuid| listed.contains(uuid.as_str()));
                for (dom, xml) in r.nova {
                    core.set_identity(&dom, xml);
                }
                let finished = core.tracker.on_round(now, &r.round);
                core.publish(now, finished);
                // After the records of this round took theirs.
                let Core {
                    identities,
                    bad_identity,
                    tracker,
                    ..
                } = &mut *core;
                identities.retain(|uuid, _| {
                    r.domains.iter().any(|d| &d.uuid == uuid) || tracker.is_active(uuid)
                });
                bad_identity.retain(|uuid| identities.contains_key(uuid));
                let listed: Vec<_> = r
                    .domains
                    .iter()
                    .map(|d| (d.clone(), identities.get(&d.uuid).cloned().flatten()))
                    .collect();
                core.state.lock().identities = listed;
                Ok(())
            }
            Err(e) => Err(e),
        };
        core.publish_active();
        core.write_held(now, false);
        if let Some(keep) = self.cfg.last_retention {
            // Waited out on the monotonic clock, like every other wait.
            let dropped = core.metrics.prune_last(now.mono - keep.as_secs_f64());
            if dropped > 0 {
                debug!(
                    domains = dropped,
                    "dropped last_* series past --metrics.last-retention"
                );
            }
        }
        let busy = core.tracker.has_active() || !core.want_completed.is_empty();
        let period = if busy {
            self.cfg.interval
        } else {
            self.cfg.idle_interval
        };
        let mut st = core.state.lock();
        st.ready = core.connection_known;
        // Several periods without a round (a thread stuck in libvirt, or dead) make /-/ready 503.
        st.next_round_by = Some(Instant::now() + period * STALE_ROUNDS + STALE_SLACK);
        st.libvirt_up = self.source.is_connected();
        if result.is_ok() {
            st.last_success_mono = Some(now.mono);
        }
        drop(st);
        core.flush_trace();
        drop(core);
        store_records(&self.core, self.store.as_ref());
        result
    }

    /// The libvirt side of a round; an error when libvirt could not list domains.
    fn read(&mut self, now: Now) -> Result<Reading, CollectError> {
        if !self.source.is_connected() {
            return Err(CollectError::new("libvirt is not connected"));
        }
        let domains = match self.source.list_domains() {
            Ok(d) => d,
            Err(e) => {
                call_failed(&self.core, Call::ListDomains, &e);
                return Err(CollectError::new(e));
            }
        };
        let sweep = self
            .last_completed_sweep
            .is_none_or(|t| now.mono - t >= self.cfg.idle_interval.as_secs_f64());
        let mut r = Reading {
            domains: domains.clone(),
            round: Round::default(),
            trace: vec![TraceRecord::Round {
                t: now.wall,
                domains: domains.clone(),
            }],
            failed_calls: Vec::new(),
            metadata: Vec::new(),
            nova: Vec::new(),
        };
        let wanted_identity: Vec<&DomainId> = {
            let core = self.core.lock();
            domains
                .iter()
                .filter(|d| {
                    !core.identities.contains_key(&d.uuid) || core.want_identity.contains(&d.uuid)
                })
                .collect()
        };
        for dom in wanted_identity {
            match self.source.metadata(dom, NOVA_NS) {
                Ok(xml) => r.nova.push((dom.clone(), xml)),
                Err(SourceError::NoDomain(_)) => {}
                Err(e) => {
                    debug!(call = Call::Metadata.label(), error = %e, "libvirt call failed");
                    r.failed_calls.push(Call::Metadata);
                }
            }
        }
        let wanted_metadata: Vec<&DomainId> = {
            let core = self.core.lock();
            match core.app {
                Some(_) => domains
                    .iter()
                    .filter(|d| {
                        !core.metadata.contains_key(&d.uuid) || core.want_metadata.contains(&d.uuid)
                    })
                    .collect(),
                None => Vec::new(),
            }
        };
        for dom in wanted_metadata {
            match self.source.metadata(dom, crate::app::targets::METADATA_NS) {
                Ok(xml) => r.metadata.push((dom.uuid.clone(), xml)),
                Err(SourceError::NoDomain(_)) => {}
                Err(e) => {
                    debug!(call = Call::Metadata.label(), error = %e, "libvirt call failed");
                    r.failed_calls.push(Call::Metadata);
                }
            }
        }
        for dom in &domains {
            let running = match self.source.job_stats(dom) {
                Ok(job) => {
                    r.trace.push(TraceRecord::Job {
                        t: now.wall,
                        domain: dom.clone(),
                        job: job.clone(),
                    });
                    job.map(|j| JobStats::from_raw(&j))
                        .filter(JobStats::is_running)
                }
                // It left between listing and asking: the next round sees it gone.
                Err(SourceError::NoDomain(_)) => continue,
                // A driver without job support (test:///), or the destination of an incoming
                // migration (live stats exist only on the source): no job to show here.
                Err(SourceError::Unsupported { .. }) => None,
                Err(e) => {
                    debug!(call = Call::JobStats.label(), error = %e, "libvirt call failed");
                    if !matches!(e, SourceError::NotConnected(_)) {
                        r.failed_calls.push(Call::JobStats);
                    }
                    r.round
                        .observations
                        .push((dom.clone(), JobObservation::Unknown));
                    continue;
                }
            };
            let obs = match running {
                Some(stats) => {
                    let max_downtime_ms = match self.source.max_downtime_ms(dom) {
                        Ok(ms) => {
                            r.trace.push(TraceRecord::MaxDowntime {
                                t: now.wall,
                                domain: dom.clone(),
                                ms,
                            });
                            ms
                        }
                        Err(e) => {
                            debug!(call = Call::MaxDowntime.label(), error = %e, "libvirt call failed");
                            r.failed_calls.push(Call::MaxDowntime);
                            None
                        }
                    };
                    JobObservation::Running {
                        max_downtime_ms,
                        stats: Box::new(stats),
                    }
                }
                None => {
                    let wanted = {
                        let core = self.core.lock();
                        core.want_completed.contains_key(&dom.uuid)
                            || core.tracker.is_active(&dom.uuid)
                    };
                    let completed = if sweep || wanted {
                        match self.source.completed_job_stats(dom) {
                            Ok(job) => {
                                r.trace.push(TraceRecord::Completed {
                                    t: now.wall,
                                    domain: dom.clone(),
                                    job: job.clone(),
                                });
                                job
                            }
                            Err(SourceError::NoDomain(_)) => None,
                            Err(e) => {
                                debug!(call = Call::CompletedJobStats.label(), error = %e, "libvirt call failed");
                                r.failed_calls.push(Call::CompletedJobStats);
                                None
                            }
                        }
                    } else {
                        None
                    };
                    self.core
                        .lock()
                        .tried_completed(&dom.uuid, completed.is_some());
                    JobObservation::Idle { completed }
                }
            };
            r.round.observations.push((dom.clone(), obs));
        }
        if sweep {
            self.last_completed_sweep = Some(now.mono);
        }
        Ok(r)
    }

    /// Whether a migration job is being tracked (the round period depends on it).
    fn busy(&self) -> bool {
        let core = self.core.lock();
        core.tracker.has_active()
            || !core.want_completed.is_empty()
            || core.app.as_ref().is_some_and(|(_, h)| h.pending())
    }
}

/// The `jobs` collector. It takes the daemon's libvirt events, families, trace writer and
/// record log; it fills what other collectors published for it (discovery's running jobs, the
/// app collector's host view and holdback) and reads the NIC history and the peers' state for
/// the records.
pub const REGISTRATION: Registration = Registration {
    name: Name::Jobs,
    start: |deps, runner| {
        let (Some(events), Some(metrics)) = (
            deps.take::<Receiver<SourceEvent>>(),
            deps.get::<Arc<Metrics>>(),
        ) else {
            return Err(std::io::Error::other(
                "no libvirt events or families to start with",
            ));
        };
        let mut sampler = Sampler::new(
            deps.source.clone(),
            deps.state.clone(),
            metrics,
            deps.take::<TraceWriter>(),
            SamplerConfig::from_settings(&deps.settings),
        )
        .with_network(
            deps.get::<Arc<Mutex<crate::netdev::TxHistory>>>(),
            deps.get::<crate::peers::state::PeerState>(),
        );
        if let Some(crate::peers::discovery::RunningJobs(feed)) = deps.get() {
            sampler = sampler.with_running_jobs(feed);
        }
        if let Some(log) = deps.take::<RecordLog>() {
            sampler = sampler.with_records(log);
        }
        if let (Some(view), Some(hold)) = (
            deps.get::<crate::app::collector::SharedHostView>(),
            deps.get::<crate::app::holdback::Holdback>(),
        ) {
            sampler = sampler.with_app(view, hold);
        }
        runner.add_rounds(JobsCollector::new(sampler, events))
    },
};

/// The `jobs` collector: the sampler's rounds, and libvirt's events between them.
pub struct JobsCollector {
    sampler: Sampler,
    events: Option<Receiver<SourceEvent>>,
}

impl JobsCollector {
    pub fn new(sampler: Sampler, events: Receiver<SourceEvent>) -> Self {
        JobsCollector {
            sampler,
            events: Some(events),
        }
    }
}

impl Collect for JobsCollector {
    fn name(&self) -> Name {
        Name::Jobs
    }
}

impl Rounds for JobsCollector {
    fn round(&mut self) -> Result<(), CollectError> {
        let now = self.sampler.now();
        self.sampler.round(now)
    }

    fn period(&self) -> Duration {
        if self.sampler.busy() {
            self.sampler.cfg.interval
        } else {
            self.sampler.cfg.idle_interval
        }
    }

    fn events(&mut self) -> Option<Box<dyn Events>> {
        let rx = self.events.take()?;
        Some(Box::new(SourceEvents {
            core: self.sampler.core.clone(),
            store: self.sampler.store.clone(),
            clock: self.sampler.clock.clone(),
            rx,
        }))
    }
}

/// libvirt's events, handled as they come (not at the next round).
struct SourceEvents {
    core: Arc<Mutex<Core>>,
    store: Option<Arc<Mutex<RecordStore>>>,
    clock: Arc<dyn Clock>,
    rx: Receiver<SourceEvent>,
}

impl Events for SourceEvents {
    fn next(&mut self, timeout: Duration) -> Event {
        match self.rx.recv_timeout(timeout) {
            Ok(ev) => {
                let step = self.core.lock().handle(self.clock.now(), ev);
                store_records(&self.core, self.store.as_ref());
                step
            }
            Err(RecvTimeoutError::Timeout) => Event::Idle,
            Err(RecvTimeoutError::Disconnected) => Event::Closed,
        }
    }
}

/// The record file and the records it refused (full, read-only), oldest first: written before
/// any newer one once it takes them again (retried every round), so none is lost to a full disk.
struct RecordStore {
    log: RecordLog,
    unwritten: std::collections::VecDeque<FinishedMigration>,
    failing: bool,
}

impl RecordStore {
    /// Append the records the disk has not taken yet, in order, until one fails.
    fn store_unwritten(&mut self) {
        let waiting = self.unwritten.len();
        while let Some(f) = self.unwritten.front() {
            if let Err(e) = self.log.append(f) {
                // Logged once per outage, not once per round.
                if !self.failing {
                    warn!(error = %e, waiting = self.unwritten.len(), "cannot store a migration record; kept in memory and retried every round");
                }
                self.failing = true;
                break;
            }
            self.unwritten.pop_front();
        }
        if self.unwritten.is_empty() && std::mem::take(&mut self.failing) {
            info!(written = waiting, "migration records stored again");
        }
        while self.unwritten.len() > crate::records::log::IN_MEMORY {
            self.unwritten.pop_front();
            warn!("the record file has refused records for too long: dropping the oldest unwritten one");
        }
    }
}

/// Append what the core queued for the record file, and retry what the disk refused, with the
/// core lock released: an append fsyncs. The store's lock is taken first, so records reach the
/// file in the order the core queued them even when rounds and events both write.
fn store_records(core: &Mutex<Core>, store: Option<&Arc<Mutex<RecordStore>>>) {
    let Some(store) = store else {
        return;
    };
    let mut store = store.lock();
    let queued = core.lock().to_store.as_mut().map(std::mem::take);
    store.unwritten.extend(queued.unwrap_or_default());
    store.store_unwritten();
}

fn call_failed(core: &Mutex<Core>, call: Call, e: &SourceError) {
    debug!(call = call.label(), error = %e, "libvirt call failed");
    if !matches!(e, SourceError::NotConnected(_)) {
        core.lock().metrics.call_error(call);
    }
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
