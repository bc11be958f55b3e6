//! The `app` collector: probes the services of guests running on this host, slowly while
//! nothing happens and fast from the moment the domain's migration starts until a settle period
//! after it ends, and completes the migration's record with what the application saw.
//!
//! One supervisor task follows the sampler's view of the host ([`HostView`]): a target whose
//! domain is here gets a probe task, one whose domain left loses it (and its series). Each probe
//! task has at most one request in flight; its timeout is bounded by the collector's timeout
//! and never blocks a scrape or the sampler.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::holdback::Holdback;
use super::outage::{ProbeResult, TargetTrack};
use super::probe::{http_client, probe, ProbeOutcome};
use super::targets::{AppSettings, Target};
use crate::clock::unix_now;
use crate::collector::{Collector, Name, TaskRounds, Tasks};
use crate::libvirt::DomainId;

/// What the sampler saw of this host at its last round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostView {
    /// Domains listed here.
    pub domains: Vec<DomainId>,
    /// The app metadata element (namespace `METADATA_NS`) of domains that have one.
    pub metadata: Vec<(DomainId, String)>,
    /// Running migration jobs: (domain, unix start time, guest paused for switch-over or
    /// post-copy).
    pub jobs: Vec<(DomainId, f64, bool)>,
}

/// The sampler publishes, the app collector reads.
pub type SharedHostView = Arc<Mutex<HostView>>;

/// Probe duration buckets: 1 ms .. ~16 s.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

/// Outage buckets for finished migrations: 10 ms .. ~160 s.
pub fn outage_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 15)
}

/// Live figures of one target, read by scrapes.
#[derive(Debug)]
pub struct TargetStats {
    pub domain: DomainId,
    pub target: String,
    pub up: Option<bool>,
    pub outage_seconds: f64,
    pub results: [u64; ProbeOutcome::ALL.len()],
    pub duration: Histogram,
}

/// Everything the `vm_migration_app_*` families show.
#[derive(Debug, Default)]
pub struct AppStats {
    /// By (domain uuid, target name).
    pub targets: BTreeMap<(String, String), TargetStats>,
    /// Longest outage of each domain's last migration, by (domain, target).
    pub last_outage: BTreeMap<(DomainId, String), f64>,
    /// Outages over finished migrations, by mode.
    pub migration_outage: BTreeMap<&'static str, Histogram>,
}

pub type SharedAppStats = Arc<Mutex<AppStats>>;

struct Probing {
    target: Target,
    track: Arc<Mutex<TargetTrack>>,
    cancel: CancellationToken,
}

pub struct AppCollector {
    settings: AppSettings,
    host: SharedHostView,
    holdback: Holdback,
    stats: SharedAppStats,
    rounds: TaskRounds<(String, String)>,
    cancel: CancellationToken,
}

impl AppCollector {
    pub fn new(
        settings: AppSettings,
        host: SharedHostView,
        holdback: Holdback,
        rounds: TaskRounds<(String, String)>,
        cancel: CancellationToken,
    ) -> Self {
        AppCollector {
            settings,
            host,
            holdback,
            stats: SharedAppStats::default(),
            rounds,
            cancel,
        }
    }
}

impl Collector for AppCollector {
    fn name(&self) -> Name {
        Name::App
    }

    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(super::metrics::AppFamilies::new(
            self.stats.clone(),
        )));
    }
}

impl Tasks for AppCollector {
    fn start(self: Box<Self>) {
        if !self.settings.targets.is_empty() {
            info!(
                targets = self.settings.targets.len(),
                "probing guest services (app: in the config file)"
            );
        }
        tokio::spawn(supervise(*self));
    }
}

/// Targets from the domains' metadata, parsed once per element; a bad element is one warning
/// naming its domain, and only that domain loses its metadata targets.
#[derive(Default)]
struct MetadataTargets {
    by_uuid: BTreeMap<String, (String, Vec<Target>)>,
}

impl MetadataTargets {
    fn update(&mut self, metadata: &[(DomainId, String)]) -> Vec<Target> {
        self.by_uuid
            .retain(|uuid, _| metadata.iter().any(|(d, _)| &d.uuid == uuid));
        let mut out = Vec::new();
        for (dom, xml) in metadata {
            let fresh = self.by_uuid.get(&dom.uuid).is_none_or(|(x, _)| x != xml);
            if fresh {
                let targets = match super::targets::from_metadata(&dom.uuid, xml) {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(domain = %dom.name, uuid = %dom.uuid, error = %e, "app metadata ignored: fix it with virsh metadata --uri {}", super::targets::METADATA_NS);
                        Vec::new()
                    }
                };
                self.by_uuid
                    .insert(dom.uuid.clone(), (xml.clone(), targets));
            }
            if let Some((_, t)) = self.by_uuid.get(&dom.uuid) {
                out.extend(t.iter().cloned());
            }
        }
        out
    }
}

/// A target belongs to a listed domain when its `domain` is the name or the UUID.
fn domain_of<'a>(t: &Target, domains: &'a [DomainId]) -> Option<&'a DomainId> {
    domains
        .iter()
        .find(|d| d.name == t.domain || d.uuid.eq_ignore_ascii_case(&t.domain))
}

async fn supervise(c: AppCollector) {
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "app probes cannot start: no HTTP client");
            return;
        }
    };
    let mut probing: BTreeMap<(String, String), Probing> = BTreeMap::new();
    // Domains (uuid) migrating at the last look.
    let mut running: BTreeSet<String> = BTreeSet::new();
    // Targets whose domain is no longer listed here, since when: they are probed through the
    // settle period (the migration's record wants the "after" window), then dropped.
    let mut left: BTreeMap<(String, String), f64> = BTreeMap::new();
    let settle = c.settings.settle.as_secs_f64();
    let mut from_metadata = MetadataTargets::default();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = c.cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = unix_now();
        let view = c.host.lock().clone();
        // The config file's targets, then the metadata's (a name the file gives a domain wins).
        let mut targets = c.settings.targets.clone();
        for t in from_metadata.update(&view.metadata) {
            let taken = targets.iter().any(|f| {
                f.name == t.name && domain_of(f, &view.domains) == domain_of(&t, &view.domains)
            });
            if !taken {
                targets.push(t);
            }
        }
        let watched: BTreeSet<String> = targets
            .iter()
            .filter_map(|t| domain_of(t, &view.domains))
            .map(|d| d.uuid.clone())
            .collect();
        c.holdback.set_watched(watched);

        // Start probing targets whose domain is here; stop those whose domain left.
        let mut here = BTreeSet::new();
        for t in &targets {
            let Some(dom) = domain_of(t, &view.domains) else {
                continue;
            };
            let key = (dom.uuid.clone(), t.name.clone());
            here.insert(key.clone());
            match probing.get(&key) {
                // The same check: keep probing. Another one (the metadata changed): start over.
                Some(p) if p.target.check == t.check => continue,
                Some(p) => p.cancel.cancel(),
                None => {}
            }
            let p = Probing {
                target: t.clone(),
                track: Arc::new(Mutex::new(TargetTrack::default())),
                cancel: c.cancel.child_token(),
            };
            c.stats.lock().targets.insert(
                key.clone(),
                TargetStats {
                    domain: dom.clone(),
                    target: t.name.clone(),
                    up: None,
                    outage_seconds: 0.0,
                    results: [0; ProbeOutcome::ALL.len()],
                    duration: Histogram::new(duration_buckets()),
                },
            );
            c.rounds.join(key.clone());
            info!(domain = %dom.name, target = %t.name, "probing a guest service");
            tokio::spawn(probe_loop(
                t.clone(),
                key.clone(),
                client.clone(),
                c.settings.clone(),
                p.track.clone(),
                c.stats.clone(),
                c.rounds.clone(),
                Rates {
                    host: c.host.clone(),
                    ended: Arc::new(Mutex::new(None)),
                },
                p.cancel.clone(),
            ));
            probing.insert(key, p);
        }
        left.retain(|k, _| !here.contains(k));
        // The settle window of a departed domain runs on the monotonic clock.
        let mono = crate::clock::mono_now();
        for k in probing.keys().filter(|k| !here.contains(*k)) {
            left.entry(k.clone()).or_insert(mono);
        }
        let gone: Vec<_> = left
            .iter()
            .filter(|(_, since)| mono - **since > settle + 1.0)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            left.remove(&k);
            if let Some(p) = probing.remove(&k) {
                p.cancel.cancel();
            }
            c.rounds.leave(&k);
            c.stats.lock().targets.remove(&k);
        }

        // Migration starts, switch-overs and ends, for every probed target of the domain.
        let jobs: BTreeMap<&str, (f64, bool)> = view
            .jobs
            .iter()
            .map(|(d, start, paused)| (d.uuid.as_str(), (*start, *paused)))
            .collect();
        for ((uuid, _), p) in &probing {
            let mut track = p.track.lock();
            match jobs.get(uuid.as_str()) {
                Some((start, paused)) => {
                    if !running.contains(uuid) && !track.in_migration() {
                        track.migration_started(*start);
                    }
                    if *paused {
                        track.switchover(now);
                    }
                }
                None if running.contains(uuid) => track.migration_ended(now),
                None => {}
            }
        }
        running = jobs.keys().map(|u| u.to_string()).collect();

        // Held records whose settle period is over: add what the application saw.
        // The holdback waits on the monotonic clock (the sampler's too): an NTP step neither
        // releases records early nor keeps them.
        for mut f in c.holdback.due(crate::clock::mono_now()) {
            let downtime = f.downtime_seconds;
            let mut entries = Vec::new();
            for ((uuid, name), p) in &probing {
                if *uuid != f.domain.uuid {
                    continue;
                }
                let mut track = p.track.lock();
                if let Some(r) = track.take_record(name, now, downtime) {
                    entries.push(r);
                }
            }
            if !entries.is_empty() {
                let mut st = c.stats.lock();
                for r in &entries {
                    st.migration_outage
                        .entry(f.mode.as_str())
                        .or_insert_with(|| Histogram::new(outage_buckets()))
                        .observe(r.outage_seconds);
                    st.last_outage
                        .insert((f.domain.clone(), r.target.clone()), r.outage_seconds);
                }
                f.app = Some(entries);
            }
            c.holdback.complete(f);
        }
    }
    for (_, p) in probing {
        p.cancel.cancel();
    }
}

/// Which probe period applies now.
struct Rates {
    host: SharedHostView,
    /// When this target's domain's migration was last seen to end.
    ended: Arc<Mutex<Option<f64>>>,
}

impl Rates {
    fn interval(&self, uuid: &str, s: &AppSettings, now: f64) -> Duration {
        let migrating = self.host.lock().jobs.iter().any(|(d, _, _)| d.uuid == uuid);
        let mut ended = self.ended.lock();
        if migrating {
            *ended = Some(f64::INFINITY);
            return s.migration_interval;
        }
        match *ended {
            Some(t) if t.is_infinite() => {
                *ended = Some(now);
                s.migration_interval
            }
            Some(t) if now - t < s.settle.as_secs_f64() => s.migration_interval,
            _ => s.interval,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    target: Target,
    key: (String, String),
    client: reqwest::Client,
    settings: AppSettings,
    track: Arc<Mutex<TargetTrack>>,
    stats: SharedAppStats,
    rounds: TaskRounds<(String, String)>,
    rates: Rates,
    cancel: CancellationToken,
) {
    loop {
        // The settle window after a migration is waited out on the monotonic clock.
        let now = crate::clock::mono_now();
        let interval = rates.interval(&key.0, &settings, now);
        let next = tokio::time::Instant::now() + interval;
        // A probe never outlasts the slow interval, so a dead guest cannot pile requests up.
        let timeout = settings.timeout.min(settings.interval.max(interval));
        rounds.begin(&key);
        let (result, outcome): (ProbeResult, ProbeOutcome) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = probe(&client, &target.check, timeout, unix_now) => r,
        };
        rounds.end(&key, true);
        let secs = interval.as_secs_f64();
        let current = {
            let mut t = track.lock();
            t.observe(result, secs);
            (t.up(), t.current_outage(result.done))
        };
        if let Some(s) = stats.lock().targets.get_mut(&key) {
            s.up = Some(current.0);
            s.outage_seconds = current.1;
            if let Some(i) = ProbeOutcome::ALL.iter().position(|o| *o == outcome) {
                s.results[i] += 1;
            }
            s.duration.observe(result.latency());
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}
