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
use super::metrics::{SharedAppStats, TargetStats};
use super::outage::{ProbeResult, TargetTrack};
use super::probe::{http_client, probe, ProbeOutcome};
use super::targets::{AppSettings, Target};
use crate::clock::unix_now;
use crate::collector::{Collect, Name, Registration, TaskRounds, Tasks};
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

/// The sampler publishes, the app collector reads; a change wakes the collector at once (a
/// switch-over may last only tens of milliseconds).
#[derive(Debug, Default)]
pub struct HostViewCell {
    view: Mutex<HostView>,
    changed: tokio::sync::Notify,
}

impl HostViewCell {
    pub fn lock(&self) -> parking_lot::MutexGuard<'_, HostView> {
        self.view.lock()
    }

    /// Replace the view; wakes the collector when it differs.
    pub fn publish(&self, view: HostView) {
        let mut v = self.view.lock();
        if *v != view {
            *v = view;
            drop(v);
            self.changed.notify_one();
        }
    }
}

pub type SharedHostView = Arc<HostViewCell>;

/// Probe duration buckets: 1 ms .. ~16 s.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

/// Outage buckets for finished migrations: 10 ms .. ~160 s.
pub fn outage_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 15)
}

/// A target whose domain left is dropped at the latest this long after twice the settle period,
/// even if the migration's record never came (libvirt lost the event, the holdback gave up).
const LEFT_MAX_EXTRA_S: f64 = 30.0;

struct Probing {
    target: Target,
    track: Arc<Mutex<TargetTrack>>,
    cancel: CancellationToken,
    /// Cuts the probe loop's wait short: its domain's migration started or switched over.
    wake: Arc<tokio::sync::Notify>,
}

/// The `app` collector; it publishes the host view it follows (the jobs collector fills it)
/// and the holdback of its domains' records.
pub const REGISTRATION: Registration = Registration {
    name: Name::App,
    start: |deps, runner| {
        let view = SharedHostView::default();
        let hold = Holdback::new(deps.settings.app.settle.as_secs_f64());
        deps.put(view.clone());
        deps.put(hold.clone());
        runner.add_tasks(AppCollector::new(
            deps.settings.app.clone(),
            view,
            hold,
            runner.task_rounds(Name::App),
            runner.cancel_token().child_token(),
        ));
        Ok(())
    },
};

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

impl Collect for AppCollector {
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
    // Of those, the ones whose guest was paused (switch-over or post-copy).
    let mut paused_seen: BTreeSet<String> = BTreeSet::new();
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
            _ = c.host.changed.notified() => {}
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
                wake: Arc::new(tokio::sync::Notify::new()),
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
                p.wake.clone(),
            ));
            probing.insert(key, p);
        }
        left.retain(|k, _| !here.contains(k));
        // The settle window of a departed domain runs on the monotonic clock.
        let mono = crate::clock::mono_now();
        for k in probing.keys().filter(|k| !here.contains(*k)) {
            left.entry(k.clone()).or_insert(mono);
        }
        // A target whose domain left is kept until its migration's record took what it saw
        // (the record waits `settle` after libvirt's completion, which may come later than the
        // domain left), and at most a bounded time.
        let gone: Vec<_> = left
            .iter()
            .filter(|(k, since)| {
                let waited = mono - **since;
                let record_taken = probing
                    .get(*k)
                    .is_none_or(|p| !p.track.lock().in_migration());
                (waited > settle + 1.0 && record_taken) || waited > 2.0 * settle + LEFT_MAX_EXTRA_S
            })
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

        // Records of the domains probed here wait for what their application saw, also after
        // the domain left (its probes go on through the settle period).
        c.holdback
            .set_watched(probing.keys().map(|(uuid, _)| uuid.clone()).collect());

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
                        // Probe at the fast rate now, not after the slow interval's wait.
                        p.wake.notify_one();
                    }
                    if *paused && !paused_seen.contains(uuid) {
                        track.switchover(now);
                        // A probe now sees the pause, however short.
                        p.wake.notify_one();
                    }
                }
                None if running.contains(uuid) => track.migration_ended(now),
                None => {}
            }
        }
        running = jobs.keys().map(|u| u.to_string()).collect();
        paused_seen = jobs
            .iter()
            .filter(|(_, (_, paused))| *paused)
            .map(|(u, _)| u.to_string())
            .collect();

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
    wake: Arc<tokio::sync::Notify>,
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
        tracing::debug!(
            domain = %key.0,
            target = %key.1,
            sent = result.sent,
            latency_ms = result.latency() * 1e3,
            result = outcome.as_str(),
            "app probe"
        );
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
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Statuses;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A loopback HTTP server that counts the requests it answered.
    async fn counting_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let n = Arc::new(AtomicUsize::new(0));
        let count = n.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                count.fetch_add(1, Ordering::SeqCst);
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
        (addr, n)
    }

    async fn wait_for(mut what: impl FnMut() -> bool) -> bool {
        for _ in 0..2000 {
            if what() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// One `http` target of domain `web` on `addr`.
    fn web_target(addr: std::net::SocketAddr) -> Vec<Target> {
        vec![Target {
            domain: "web".into(),
            name: "http".into(),
            check: crate::app::targets::Check::Http {
                url: reqwest::Url::parse(&format!("http://{addr}/")).expect("url"),
                expect_status: None,
            },
        }]
    }

    /// With an hour between baseline probes, only the wake-ups can make the probes that follow
    /// the first one: the migration's start and its switch-over each get a probe at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_migration_start_and_a_switch_over_are_probed_at_once() {
        let (addr, served) = counting_server().await;
        let dom = DomainId {
            name: "web".into(),
            uuid: "00000000-0000-0000-0000-000000000001".into(),
        };
        let settings = AppSettings {
            interval: Duration::from_secs(3600),
            // Slower than the test waits: a probe it sees came from a wake-up, not the rate.
            migration_interval: Duration::from_secs(600),
            targets: web_target(addr),
            ..AppSettings::default()
        };
        let host = SharedHostView::default();
        let cancel = CancellationToken::new();
        let c = AppCollector::new(
            settings,
            host.clone(),
            Holdback::new(10.0),
            TaskRounds::new(Statuses::default(), Name::App),
            cancel.clone(),
        );
        Box::new(c).start();
        host.publish(HostView {
            domains: vec![dom.clone()],
            ..HostView::default()
        });
        assert!(wait_for(|| served.load(Ordering::SeqCst) == 1).await);
        host.publish(HostView {
            domains: vec![dom.clone()],
            jobs: vec![(dom.clone(), unix_now(), false)],
            ..HostView::default()
        });
        assert!(
            wait_for(|| served.load(Ordering::SeqCst) == 2).await,
            "the migration's start was not probed at once"
        );
        host.publish(HostView {
            domains: vec![dom.clone()],
            jobs: vec![(dom.clone(), unix_now(), true)],
            ..HostView::default()
        });
        assert!(
            wait_for(|| served.load(Ordering::SeqCst) == 3).await,
            "the switch-over was not probed at once"
        );
        cancel.cancel();
    }

    /// A domain that migrated away leaves this host before libvirt reports the migration
    /// complete: its record still waits for, and gets, what the application saw.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_record_of_a_domain_that_left_gets_its_app_view() {
        let (addr, served) = counting_server().await;
        let uuid = "00000000-0000-0000-0000-000000000002";
        let dom = DomainId {
            name: "web".into(),
            uuid: uuid.into(),
        };
        let settings = AppSettings {
            interval: Duration::from_secs(3600),
            migration_interval: Duration::from_millis(20),
            settle: Duration::from_millis(300),
            targets: web_target(addr),
            ..AppSettings::default()
        };
        let host = SharedHostView::default();
        let holdback = Holdback::new(0.3);
        let cancel = CancellationToken::new();
        Box::new(AppCollector::new(
            settings,
            host.clone(),
            holdback.clone(),
            TaskRounds::new(Statuses::default(), Name::App),
            cancel.clone(),
        ))
        .start();
        host.publish(HostView {
            domains: vec![dom.clone()],
            jobs: vec![(dom.clone(), unix_now(), false)],
            ..HostView::default()
        });
        assert!(wait_for(|| served.load(Ordering::SeqCst) >= 3).await);
        // Gone from the listing, job and all; libvirt's completion comes after.
        host.publish(HostView::default());
        let before = served.load(Ordering::SeqCst);
        assert!(wait_for(|| served.load(Ordering::SeqCst) > before).await);
        assert!(
            holdback
                .hold(
                    super::super::holdback::tests::finished(uuid),
                    crate::clock::mono_now()
                )
                .is_none(),
            "the record of a probed domain that left is held"
        );
        let mut ready = Vec::new();
        assert!(
            wait_for(|| {
                ready.extend(holdback.take_ready(crate::clock::mono_now(), false));
                !ready.is_empty()
            })
            .await
        );
        let app = ready[0]
            .app
            .as_ref()
            .expect("the record carries the app view");
        assert_eq!(app.len(), 1);
        assert_eq!(app[0].target, "http");
        assert!(app[0].probes >= 3, "{app:?}");
        cancel.cancel();
    }
}
