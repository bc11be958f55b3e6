//! The `forecast` collector: a round gathers every running domain's inputs (libvirt's domain
//! statistics on the read-only connection, the max downtime, the domain's records) and the
//! paths to the known peers (routes, NIC speed and use, probe RTTs, the TCP window), and
//! publishes them as a [`HostView`]. With `--forecast.enable` it also starts dirty-rate
//! calculations on the read-write connection: one per domain per `--forecast.interval`, never
//! for a migrating domain, at most `--forecast.max-concurrency` at once.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

use super::dirty::{self, DomainStats};
use super::metrics::ForecastFamilies;
use super::path::{self, Window};
use super::report::{DomainView, HostView, PeerPath};
use crate::clock::unix_now;
use crate::collector::{CollectError, Collector, Name, Rounds};
use crate::libvirt::calc::DirtyRateCalc;
use crate::libvirt::{DomainId, JobSource, SourceError};
use crate::migration::tracker::Direction;
use crate::net::netdev::TxHistory;
use crate::net::peers::PeerState;
use crate::state::SharedState;

/// Seconds QEMU samples pages for one calculation. Short: a pass of a migration on a fast path
/// lasts seconds, and a longer period under-reads a working set rewritten within it.
pub const CALC_SECONDS: i32 = 1;
/// Rounds between calculations, and while none is due.
const PERIOD: Duration = Duration::from_secs(15);
/// ... while a calculation runs: its result is read soon after it is ready.
const PERIOD_MEASURING: Duration = Duration::from_secs(2);
/// A calculation not seen measured after this long no longer counts as running.
const CALC_GIVE_UP_S: f64 = 30.0;
/// NIC use and probe RTTs over this many seconds.
const RECENT_S: f64 = 60.0;

/// The opt-in active part.
pub struct Calculations {
    pub calc: Arc<dyn DirtyRateCalc>,
    pub interval: Duration,
    pub max_concurrency: usize,
}

/// What the collector reads besides libvirt.
pub struct Sources {
    pub shared: SharedState,
    pub netdev: Option<Arc<Mutex<TxHistory>>>,
    pub peers: Option<PeerState>,
    /// Configured peers: name and address.
    pub configured: Vec<(String, IpAddr)>,
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    /// `--forecast.bandwidth`, bytes/s.
    pub fallback: Option<f64>,
}

/// A measurement first seen at `seen_at`; `ours` when it followed a calculation we started.
#[derive(Clone, Debug)]
struct Seen {
    key: (i64, u64),
    seen_at: f64,
    ours: bool,
}

pub struct ForecastCollector {
    source: Arc<dyn JobSource>,
    calculations: Option<Calculations>,
    sources: Sources,
    view: Arc<Mutex<HostView>>,
    seen: HashMap<String, Seen>,
    /// Unix time we last started a calculation per domain uuid.
    started: HashMap<String, f64>,
    /// Unix time we last tried to (started or refused): the next try is an interval later.
    attempted: HashMap<String, f64>,
    /// A calculation runs or the last round failed: the next round comes soon.
    measuring: bool,
    warned: bool,
}

impl ForecastCollector {
    pub fn new(
        source: Arc<dyn JobSource>,
        calculations: Option<Calculations>,
        sources: Sources,
    ) -> Self {
        ForecastCollector {
            source,
            calculations,
            sources,
            view: Arc::default(),
            seen: HashMap::new(),
            started: HashMap::new(),
            attempted: HashMap::new(),
            measuring: false,
            warned: false,
        }
    }

    /// What the rounds publish (the API reads it).
    pub fn view(&self) -> Arc<Mutex<HostView>> {
        self.view.clone()
    }

    fn stats(&self) -> Result<Vec<(DomainId, DomainStats)>, SourceError> {
        match self.source.domain_stats() {
            Ok(v) => Ok(v
                .into_iter()
                .map(|(d, p)| (d, DomainStats::parse(&p)))
                .collect()),
            // A driver without domain statistics (test:///): the domains, nothing measured.
            Err(SourceError::Unsupported { .. }) => Ok(self
                .source
                .list_domains()?
                .into_iter()
                .map(|d| (d, DomainStats::default()))
                .collect()),
            Err(e) => Err(e),
        }
    }

    fn paths(&self, now: f64, records: &[(String, IpAddr)]) -> Vec<PeerPath> {
        let mut peers: BTreeMap<String, IpAddr> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut add = |name: String, addr: IpAddr| {
            if let std::collections::btree_map::Entry::Vacant(e) = peers.entry(name.clone()) {
                e.insert(addr);
                order.push(name);
            }
        };
        for (n, a) in &self.sources.configured {
            add(n.clone(), *a);
        }
        if let Some(p) = &self.sources.peers {
            let discovered: Vec<IpAddr> = p.lock().discovered.values().map(|d| d.address).collect();
            for a in discovered {
                add(a.to_string(), a);
            }
        }
        for (n, a) in records {
            add(n.clone(), *a);
        }
        order
            .into_iter()
            .filter_map(|name| {
                let address = *peers.get(&name)?;
                let device = crate::net::routes::device_for(&self.sources.procfs, address);
                let (used, speed) = match (&self.sources.netdev, &device) {
                    (Some(h), Some(dev)) => h.lock().recent(dev, now, RECENT_S),
                    _ => (None, None),
                };
                // A TUN device reports a fixed 10 Mb/s that says nothing about the path behind
                // it (a userspace relay, a VPN): unknown.
                let tun = device.as_ref().is_some_and(|d| {
                    self.sources
                        .sysfs
                        .join("class/net")
                        .join(d)
                        .join("tun_flags")
                        .exists()
                });
                let rtt = self.sources.peers.as_ref().and_then(|p| {
                    p.rtt_median(&name, now - RECENT_S)
                        .or_else(|| p.rtt_median(&address.to_string(), now - RECENT_S))
                });
                Some(PeerPath {
                    name,
                    address,
                    device,
                    link_speed_bytes: if tun { None } else { speed },
                    link_used_bytes: used,
                    rtt_seconds: rtt,
                })
            })
            .collect()
    }

    fn window(&self, from_records: Option<Window>) -> Option<Window> {
        from_records.or_else(|| {
            let read = |f: &str| {
                std::fs::read_to_string(self.sources.procfs.join("sys/net/ipv4").join(f)).ok()
            };
            path::window_from_sysctl(
                &read("tcp_rmem")?,
                &read("tcp_wmem")?,
                read("tcp_adv_win_scale").as_deref(),
            )
        })
    }

    /// Start calculations that are due; returns whether any runs now.
    fn calculate(&mut self, now: f64, domains: &[(DomainId, DomainStats, bool)]) -> bool {
        let Some(c) = &self.calculations else {
            return false;
        };
        let interval = c.interval.as_secs_f64();
        // Ours that have not been seen measured yet.
        let mut running = self
            .started
            .iter()
            .filter(|(uuid, at)| {
                now - **at < CALC_GIVE_UP_S && self.seen.get(*uuid).is_none_or(|s| s.seen_at < **at)
            })
            .count();
        for (d, stats, migrating) in domains {
            if running >= c.max_concurrency {
                break;
            }
            let due = self
                .started
                .get(&d.uuid)
                .is_none_or(|at| now - at >= interval);
            if *migrating || stats.measuring || !due {
                continue;
            }
            self.attempted.insert(d.uuid.clone(), now);
            match c.calc.start(d, CALC_SECONDS) {
                Ok(()) => {
                    debug!(domain = %d.name, "dirty-rate calculation started");
                    self.started.insert(d.uuid.clone(), now);
                    running += 1;
                }
                Err(e) => {
                    // Retried at the next interval, not every round.
                    warn!(domain = %d.name, error = %e, "cannot start a dirty-rate calculation");
                }
            }
        }
        running > 0
    }
}

impl Collector for ForecastCollector {
    fn name(&self) -> Name {
        Name::Forecast
    }

    fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(ForecastFamilies::new(self.view.clone())));
    }
}

impl Rounds for ForecastCollector {
    fn round(&mut self) -> Result<(), CollectError> {
        let now = unix_now();
        let stats = match self.stats() {
            Ok(s) => {
                if self.warned {
                    info!("forecast inputs readable again");
                    self.warned = false;
                }
                s
            }
            Err(e) => {
                if !self.warned {
                    warn!(error = %e, "cannot read the domains' statistics for the forecast");
                    self.warned = true;
                }
                // A failed collector exports none of its series; try again soon (libvirt may
                // just not be connected yet).
                self.view.lock().domains.clear();
                self.measuring = true;
                return Err(CollectError::new(e));
            }
        };
        // Copies only, under the state's lock.
        let (migrating, records, windows): (Vec<String>, HashMap<String, _>, Vec<(f64, f64)>) = {
            let st = self.sources.shared.lock();
            let mut last = HashMap::new();
            let mut windows = Vec::new();
            for r in st.records.iter().filter(|r| r.direction == Direction::Out) {
                last.insert(
                    r.domain.uuid.clone(),
                    (
                        r.dirty_rate_mean_bytes,
                        r.finished_at,
                        r.peer.as_ref().map(|p| (p.peer.clone(), p.address)),
                    ),
                );
                if let (Some(rate), Some(rtt)) = (
                    r.transfer_rate_mean_bytes,
                    r.peer.as_ref().and_then(|p| p.rtt_median_seconds),
                ) {
                    windows.push((rate, rtt));
                }
            }
            let migrating = st.active.iter().map(|j| j.domain.uuid.clone()).collect();
            (migrating, last, windows)
        };
        let domains: Vec<(DomainId, DomainStats, bool)> = stats
            .into_iter()
            .map(|(d, s)| {
                let m = migrating.contains(&d.uuid);
                (d, s, m)
            })
            .collect();
        // New measurements: first seen now; ours if we started one since the last seen.
        for (d, s, _) in &domains {
            if let Some(m) = &s.measured {
                let key = (m.calc_start, m.period_s);
                if self.seen.get(&d.uuid).is_none_or(|x| x.key != key) {
                    let ours = self.started.contains_key(&d.uuid);
                    self.seen.insert(
                        d.uuid.clone(),
                        Seen {
                            key,
                            seen_at: now,
                            ours,
                        },
                    );
                }
            }
        }
        self.measuring = self.calculate(now, &domains);
        let live: std::collections::HashSet<&str> =
            domains.iter().map(|(d, _, _)| d.uuid.as_str()).collect();
        self.seen.retain(|u, _| live.contains(u.as_str()));
        self.started.retain(|u, _| live.contains(u.as_str()));
        self.attempted.retain(|u, _| live.contains(u.as_str()));

        let record_peers: Vec<(String, IpAddr)> =
            records.values().filter_map(|(_, _, p)| p.clone()).collect();
        let peers = self.paths(now, &record_peers);
        let window = self.window(path::window_from_records(windows));
        let mut views = Vec::with_capacity(domains.len());
        for (d, s, m) in domains {
            let rec = records.get(&d.uuid);
            let measured = match (&s.measured, self.seen.get(&d.uuid)) {
                (Some(m), Some(seen)) => Some((m, seen.ours, seen.seen_at)),
                _ => None,
            };
            let record_rate = rec.and_then(|(rate, at, _)| rate.map(|r| (r, *at)));
            let max_downtime = match self.source.max_downtime_ms(&d) {
                Ok(v) => v.map(|ms| ms as f64 / 1000.0),
                Err(e) => {
                    debug!(domain = %d.name, error = %e, "no max downtime for the forecast");
                    None
                }
            };
            views.push(DomainView {
                migrating: m,
                memory_bytes: s.memory_bytes,
                first_pass_bytes: s.first_pass_bytes(),
                dirty_rate: dirty::choose(measured, record_rate),
                max_downtime_seconds: max_downtime,
                last_peer: rec
                    .and_then(|(_, _, p)| p.as_ref().map(|(n, _)| n.clone()))
                    .filter(|n| peers.iter().any(|p| &p.name == n)),
                domain: d,
            });
        }
        views.sort_by(|a, b| a.domain.name.cmp(&b.domain.name));
        let calculations = self.calculations.is_some();
        *self.view.lock() = HostView {
            updated_at: Some(now),
            domains: views,
            peers,
            window,
            fallback_bytes: self.sources.fallback,
            calculations,
        };
        Ok(())
    }

    fn period(&self) -> Duration {
        if self.measuring {
            PERIOD_MEASURING
        } else {
            PERIOD
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::jobs::{job_operation, job_type};
    use crate::libvirt::{ParamValue, Params, RawJob};
    use crate::migration::stats::JobStats;
    use crate::migration::tracker::{JobObservation, Round, Tracker};

    fn dom(n: u8) -> DomainId {
        DomainId {
            name: format!("g{n}"),
            uuid: format!("uuid-{n}"),
        }
    }

    /// Three running guests; g1's dirty rate is measured once a calculation was started for it.
    struct Fake {
        calc_started: Mutex<Vec<String>>,
    }

    impl JobSource for Fake {
        fn is_connected(&self) -> bool {
            true
        }
        fn list_domains(&self) -> Result<Vec<DomainId>, SourceError> {
            Ok((1..=3).map(dom).collect())
        }
        fn job_stats(&self, _: &DomainId) -> Result<Option<RawJob>, SourceError> {
            Ok(None)
        }
        fn completed_job_stats(&self, _: &DomainId) -> Result<Option<RawJob>, SourceError> {
            Ok(None)
        }
        fn max_downtime_ms(&self, _: &DomainId) -> Result<Option<u64>, SourceError> {
            Ok(Some(500))
        }
        fn domain_stats(&self) -> Result<Vec<(DomainId, Params)>, SourceError> {
            let started = self.calc_started.lock().clone();
            Ok((1..=3)
                .map(|n| {
                    let d = dom(n);
                    let mut p = Params::new();
                    p.insert("balloon.current".into(), ParamValue::UInt(524288));
                    p.insert("balloon.rss".into(), ParamValue::UInt(262144));
                    if started.contains(&d.uuid) {
                        p.insert("dirtyrate.calc_status".into(), ParamValue::Int(2));
                        p.insert("dirtyrate.calc_start_time".into(), ParamValue::Int(77));
                        p.insert("dirtyrate.calc_period".into(), ParamValue::Int(1));
                        p.insert("dirtyrate.megabytes_per_second".into(), ParamValue::Int(12));
                    }
                    (d, p)
                })
                .collect())
        }
    }

    struct Calc(Arc<Fake>);
    impl DirtyRateCalc for Calc {
        fn start(&self, d: &DomainId, seconds: i32) -> Result<(), SourceError> {
            assert_eq!(seconds, CALC_SECONDS);
            self.0.calc_started.lock().push(d.uuid.clone());
            Ok(())
        }
    }

    fn collector(calc: bool) -> (ForecastCollector, Arc<Fake>, SharedState) {
        let fake = Arc::new(Fake {
            calc_started: Mutex::new(Vec::new()),
        });
        let shared = crate::state::shared();
        // g3 is migrating: the tracker's view of a running outgoing job, as the sampler keeps it.
        let mut t = Tracker::new(5.0);
        let p: Params = [
            ("operation", job_operation::MIGRATION_OUT),
            ("time_elapsed", 1000),
            ("data_remaining", 1000),
            ("memory_iteration", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ParamValue::UInt(v)))
        .collect();
        t.on_round(
            1.0,
            &Round {
                observations: vec![(
                    dom(3),
                    JobObservation::Running {
                        stats: Box::new(JobStats::from_params(job_type::UNBOUNDED, &p)),
                        max_downtime_ms: Some(300),
                    },
                )],
            },
        );
        shared.lock().active = t.active_jobs().cloned().collect();
        let c = ForecastCollector::new(
            fake.clone(),
            calc.then(|| Calculations {
                calc: Arc::new(Calc(fake.clone())),
                interval: Duration::from_secs(300),
                max_concurrency: 1,
            }),
            Sources {
                shared: shared.clone(),
                netdev: None,
                peers: None,
                configured: Vec::new(),
                procfs: PathBuf::from("/nonexistent"),
                sysfs: PathBuf::from("/nonexistent"),
                fallback: Some(40.0 * 1048576.0),
            },
        );
        (c, fake, shared)
    }

    #[test]
    fn calculations_are_bounded_never_for_a_migrating_guest_and_once_per_interval() {
        let (mut c, fake, _) = collector(true);
        c.round().expect("round");
        // One at a time: g1 only.
        assert_eq!(*fake.calc_started.lock(), ["uuid-1"]);
        assert_eq!(c.period(), PERIOD_MEASURING);
        c.round().expect("round");
        // g1 is measured now (its slot is free): g2 next; g3 migrates, never.
        assert_eq!(*fake.calc_started.lock(), ["uuid-1", "uuid-2"]);
        for _ in 0..3 {
            c.round().expect("round");
        }
        assert_eq!(
            *fake.calc_started.lock(),
            ["uuid-1", "uuid-2"],
            "not due again"
        );
        let v = c.view().lock().clone();
        let g1 = &v.domains[0];
        assert_eq!(g1.domain.name, "g1");
        let rate = g1.dirty_rate.expect("measured");
        assert_eq!(rate.bytes_per_second, 12.0 * 1048576.0);
        assert_eq!(rate.source, dirty::DirtySource::Calculation);
        assert_eq!(g1.first_pass_bytes, Some(256.0 * 1048576.0));
        assert_eq!(g1.max_downtime_seconds, Some(0.5));
        assert!(v.domains[2].migrating && !v.domains[0].migrating);
        assert!(v.calculations);
    }

    #[test]
    fn read_only_it_starts_nothing_and_still_forecasts_from_what_libvirt_reports() {
        let (mut c, fake, _) = collector(false);
        // Another tool measured g1 already.
        fake.calc_started.lock().push("uuid-1".into());
        c.round().expect("round");
        assert_eq!(*fake.calc_started.lock(), ["uuid-1"], "nothing started");
        assert_eq!(c.period(), PERIOD);
        let v = c.view().lock().clone();
        assert_eq!(
            v.domains[0].dirty_rate.map(|r| r.source),
            Some(dirty::DirtySource::Domstats)
        );
        assert_eq!(v.domains[1].dirty_rate, None);
        assert!(!v.calculations);
    }
}
