//! The `forecast` collector: a round gathers every running domain's inputs (libvirt's domain
//! statistics on the read-only connection, the max downtime, the domain's records, and with
//! `--forecast.enable` its migration bandwidth caps on the read-write connection) and the
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
use super::path::{self, LibvirtCap, Window};
use super::report::{DomainView, HostView, PeerPath};
use super::zero_pages::{self, Mapping};
use crate::clock::{unix_now, Clock, SystemClock};
use crate::collector::{Collect, CollectError, Name, Registration, Rounds};
use crate::jobs::tracker::Direction;
use crate::libvirt::calc::DirtyRateCalc;
use crate::libvirt::{DomainId, JobSource, SourceError};
use crate::netdev::TxHistory;
use crate::peers::state::PeerState;
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
/// A guest's fill rate is measured over the zero-page samples of this many seconds ...
const FILL_WINDOW_S: f64 = 30.0;
/// ... once they span at least this long.
const FILL_MIN_SPAN_S: f64 = 6.0;
/// Growth of the non-zero share below this is noise.
const FILL_NOISE_SHARE: f64 = 0.03;

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
    /// `--forecast.zero-pages`: sample the guests' memory for zero pages.
    pub zero_pages: bool,
}

/// A guest's zero-page samples: the non-zero bytes of those of the last [`FILL_WINDOW_S`]
/// (monotonic seconds, bytes), newest last: the newest is pass 1, the window the fill rate.
struct ZeroSampled {
    pid: u32,
    history: std::collections::VecDeque<(f64, f64)>,
}

impl ZeroSampled {
    /// Bytes/s of zeroed memory turned into data over the window: known once it spans
    /// [`FILL_MIN_SPAN_S`]; growth within [`FILL_NOISE_SHARE`] of the mapping is sampling noise
    /// (two samples of 512 pages differ by up to ~3 % by chance), 0.
    fn fill_rate(&self, len: f64) -> Option<f64> {
        let (t0, b0) = *self.history.front()?;
        let (t1, b1) = *self.history.back()?;
        if t1 - t0 < FILL_MIN_SPAN_S {
            return None;
        }
        let growth = b1 - b0;
        Some(if growth > FILL_NOISE_SHARE * len {
            growth / (t1 - t0)
        } else {
            0.0
        })
    }
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
    /// The current interval's calculations per domain uuid.
    bursts: HashMap<String, Burst>,
    /// Our latest measurements per domain uuid (bytes/s), at most [`BURST`].
    ours: HashMap<String, std::collections::VecDeque<f64>>,
    /// A calculation runs or the last round failed: the next round comes soon.
    measuring: bool,
    warned: bool,
    /// Zero-page samples per domain uuid.
    zero: HashMap<String, ZeroSampled>,
    zero_warned: bool,
    /// Times the zero-page samples (fill rates) on the monotonic clock.
    clock: Arc<dyn Clock>,
}

/// The `forecast` collector; it reads the NIC history and the peers' state when their collectors
/// run, and publishes its [`HostView`] (the API evaluates it).
pub const REGISTRATION: Registration = Registration {
    name: Name::Forecast,
    start: |deps, runner| {
        let s = &deps.settings;
        let calculations = s.forecast.calc_uri.as_deref().map(|uri| Calculations {
            calc: Arc::new(crate::libvirt::calc::ReadWriteCalc::new(uri)),
            interval: s.forecast.interval,
            max_concurrency: s.forecast.max_concurrency,
        });
        let sources = Sources {
            shared: deps.state.clone(),
            netdev: deps.get::<Arc<Mutex<crate::netdev::TxHistory>>>(),
            peers: deps.get::<crate::peers::state::PeerState>(),
            configured: s
                .probe
                .peers
                .iter()
                .map(|p| (p.name.clone(), p.address))
                .collect(),
            procfs: s.netdev.procfs.clone(),
            sysfs: s.netdev.sysfs.clone(),
            fallback: s.forecast.bandwidth,
            zero_pages: s.forecast.zero_pages,
        };
        let f = ForecastCollector::new(deps.source.clone(), calculations, sources);
        deps.put(f.view());
        runner.add_rounds(f)
    },
};

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
            bursts: HashMap::new(),
            ours: HashMap::new(),
            measuring: false,
            warned: false,
            zero: HashMap::new(),
            zero_warned: false,
            clock: Arc::new(SystemClock),
        }
    }

    /// Reads the time from `clock` (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
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
                let device = crate::netdev::routes::device_for(&self.sources.procfs, address);
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

    /// The guest-RAM mapping of the domain's QEMU process (`pids`: QEMU's by uuid).
    fn guest_ram(
        &self,
        pids: &HashMap<String, u32>,
        d: &DomainId,
        memory: Option<f64>,
    ) -> Option<(u32, Mapping)> {
        let pid = *pids.get(&d.uuid.to_ascii_lowercase())?;
        let smaps =
            std::fs::read_to_string(self.sources.procfs.join(pid.to_string()).join("smaps"))
                .ok()?;
        Some((pid, zero_pages::guest_ram_mapping(&smaps, memory?)?))
    }

    /// The bytes of `ram` holding data (`--forecast.zero-pages`) and, once known, the rate the
    /// guest fills zeroed memory, sampled every round: a guest
    /// filling zeroed memory changes it fast (the lab's 25 MiB/s writer: a sample taken 10 s
    /// before the migration read 140 MiB, pass 1 sent 345). Never for a migrating guest: its
    /// last sample stays.
    fn nonzero_bytes(
        &mut self,
        d: &DomainId,
        pid: u32,
        ram: &Mapping,
        migrating: bool,
    ) -> Option<(f64, Option<f64>)> {
        if !self.sources.zero_pages {
            return None;
        }
        if !migrating {
            let dir = self.sources.procfs.join(pid.to_string());
            let seed = unix_now().to_bits() ^ u64::from(pid);
            match zero_pages::sample(&dir, ram.start, ram.len, zero_pages::SAMPLE_PAGES, seed) {
                Ok(sample) => {
                    let t = self.clock.now().mono;
                    let bytes = sample.nonzero_share() * ram.len as f64;
                    let z = self.zero.entry(d.uuid.clone()).or_insert(ZeroSampled {
                        pid,
                        history: Default::default(),
                    });
                    if z.pid != pid {
                        // Another QEMU process: its samples say nothing of this one's fill.
                        *z = ZeroSampled {
                            pid,
                            history: Default::default(),
                        };
                    }
                    z.history.push_back((t, bytes));
                    while z
                        .history
                        .front()
                        .is_some_and(|(t0, _)| t - t0 > FILL_WINDOW_S)
                    {
                        z.history.pop_front();
                    }
                }
                Err(e) => {
                    if !self.zero_warned {
                        warn!(domain = %d.name, error = %e, "cannot sample the guest's memory for zero pages; pass 1 is taken as its resident size");
                        self.zero_warned = true;
                    }
                    self.zero.remove(&d.uuid);
                }
            }
        }
        let z = self.zero.get(&d.uuid).filter(|z| z.pid == pid)?;
        let (_, latest) = *z.history.back()?;
        Some((latest, z.fill_rate(ram.len as f64)))
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

    /// Start calculations that are due; returns whether any runs now. Every interval a guest
    /// gets a burst of [`BURST`] calculations one after another (a 1 s page sample of a 512 MiB
    /// guest counts 256 pages: one page more or less is 2 MiB/s; the lab's first version, with
    /// three, still read a 20 MiB/s writer as 13 and a 35 MiB/s one as 45; the mean of five
    /// has 0.45 × one calculation's noise).
    fn calculate(&mut self, now: f64, domains: &[(DomainId, DomainStats, bool)]) -> bool {
        let Some(c) = &self.calculations else {
            return false;
        };
        let interval = c.interval.as_secs_f64();
        let seen_since = |seen: &HashMap<String, Seen>, uuid: &str, at: f64| {
            seen.get(uuid).is_some_and(|s| s.seen_at >= at)
        };
        // Ours that have not been seen measured yet.
        let in_flight = |b: &Burst, uuid: &str, seen: &HashMap<String, Seen>| {
            b.last_start
                .is_some_and(|at| now - at < CALC_GIVE_UP_S && !seen_since(seen, uuid, at))
        };
        let mut running = self
            .bursts
            .iter()
            .filter(|(uuid, b)| in_flight(b, uuid, &self.seen))
            .count();
        for (d, stats, migrating) in domains {
            if running >= c.max_concurrency {
                break;
            }
            if *migrating || stats.measuring {
                continue;
            }
            let b = self.bursts.entry(d.uuid.clone()).or_insert(Burst {
                began: now,
                calcs: 0,
                last_start: None,
            });
            if now - b.began >= interval {
                *b = Burst {
                    began: now,
                    calcs: 0,
                    last_start: None,
                };
            }
            if b.calcs >= BURST || in_flight(b, &d.uuid, &self.seen) {
                continue;
            }
            b.calcs += 1;
            b.last_start = Some(now);
            match c.calc.start(d, CALC_SECONDS) {
                Ok(()) => {
                    debug!(domain = %d.name, "dirty-rate calculation started");
                    self.started.insert(d.uuid.clone(), now);
                    running += 1;
                }
                Err(e) => {
                    // Retried at the next interval, not every round.
                    b.calcs = BURST;
                    b.last_start = None;
                    warn!(domain = %d.name, error = %e, "cannot start a dirty-rate calculation");
                }
            }
        }
        running > 0
    }
}

/// QEMU processes by the `-uuid` of their command line (lower case), in one pass over procfs.
fn qemu_pids(procfs: &std::path::Path) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(procfs) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args = raw.split(|b| *b == 0);
        while let Some(a) = args.next() {
            if a == b"-uuid" {
                if let Some(u) = args.next() {
                    out.insert(String::from_utf8_lossy(u).to_ascii_lowercase(), pid);
                }
                break;
            }
        }
    }
    out
}

/// One guest's calculations of the current interval.
#[derive(Clone, Copy, Debug)]
struct Burst {
    began: f64,
    calcs: u32,
    last_start: Option<f64>,
}

/// Calculations per guest per interval, one after another.
pub const BURST: u32 = 5;

impl Collect for ForecastCollector {
    fn name(&self) -> Name {
        Name::Forecast
    }

    fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(ForecastFamilies::new(
            self.view.clone(),
            self.sources.shared.clone(),
        )));
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
                    if ours {
                        let r = self.ours.entry(d.uuid.clone()).or_default();
                        if r.len() == BURST as usize {
                            r.pop_front();
                        }
                        r.push_back(m.bytes_per_second);
                    }
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
        self.bursts.retain(|u, _| live.contains(u.as_str()));
        self.ours.retain(|u, _| live.contains(u.as_str()));
        self.zero.retain(|u, _| live.contains(u.as_str()));

        let record_peers: Vec<(String, IpAddr)> =
            records.values().filter_map(|(_, _, p)| p.clone()).collect();
        let peers = self.paths(now, &record_peers);
        let window = self.window(path::window_from_records(windows));
        let pids = qemu_pids(&self.sources.procfs);
        let mut views = Vec::with_capacity(domains.len());
        for (d, s, m) in domains {
            let rec = records.get(&d.uuid);
            // Ours: the mean of the latest burst.
            let mean = self
                .ours
                .get(&d.uuid)
                .filter(|r| !r.is_empty())
                .map(|r| (r.iter().sum::<f64>() / r.len() as f64, r.len() as u32));
            let averaged = s.measured.clone().map(|mut m| {
                if let (Some((mean, n)), Some(true)) =
                    (mean, self.seen.get(&d.uuid).map(|x| x.ours))
                {
                    m.bytes_per_second = mean;
                    m.samples = n;
                }
                m
            });
            let measured = match (&averaged, self.seen.get(&d.uuid)) {
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
            let ram = self.guest_ram(&pids, &d, s.memory_bytes);
            let nonzero = ram
                .as_ref()
                .and_then(|(pid, ram)| self.nonzero_bytes(&d, *pid, ram, m));
            let first_pass = s.first_pass(nonzero.map(|(b, _)| b), ram.map(|(_, r)| r.rss));
            // libvirt refuses the caps to the read-only connection: read-write only. Not for a
            // migrating domain (its job holds the domain; the cap is the one it runs with).
            let libvirt_cap = match (&self.calculations, m) {
                (Some(c), false) => match c.calc.max_speed(&d) {
                    Ok(v) => Some(LibvirtCap::from_mibs(v.precopy_mibs, v.postcopy_mibs)),
                    Err(e) => {
                        debug!(domain = %d.name, error = %e, "no migration bandwidth cap for the forecast");
                        None
                    }
                },
                _ => None,
            };
            views.push(DomainView {
                migrating: m,
                libvirt_cap,
                memory_bytes: s.memory_bytes,
                first_pass_bytes: first_pass.map(|(b, _)| b),
                first_pass_source: first_pass.map(|(_, src)| src),
                resident_bytes: ram.map(|(_, r)| r.rss),
                fill_rate_bytes: nonzero.and_then(|(_, fill)| fill),
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
    use crate::jobs::stats::JobStats;
    use crate::jobs::tracker::{JobObservation, Round, Tracker};
    use crate::libvirt::calc::MaxSpeed;
    use crate::libvirt::jobs::{job_operation, job_type};
    use crate::libvirt::{ParamValue, Params, RawJob};

    fn dom(n: u8) -> DomainId {
        DomainId {
            name: format!("g{n}"),
            uuid: format!("uuid-{n}"),
        }
    }

    /// Three running guests; g1's dirty rate is measured once a calculation was started for it.
    struct Fake {
        calc_started: Mutex<Vec<String>>,
        /// Domains whose caps were read.
        caps_read: Mutex<Vec<String>>,
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
                    // The n-th calculation measures 8 + 2n MiB/s (n from 1), starting at n.
                    let n = started.iter().filter(|u| **u == d.uuid).count() as i64;
                    if n > 0 {
                        p.insert("dirtyrate.calc_status".into(), ParamValue::Int(2));
                        p.insert("dirtyrate.calc_start_time".into(), ParamValue::Int(n));
                        p.insert("dirtyrate.calc_period".into(), ParamValue::Int(1));
                        p.insert(
                            "dirtyrate.megabytes_per_second".into(),
                            ParamValue::Int(8 + 2 * n),
                        );
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
        /// g1 capped at 30 MiB/s (25 in post-copy), g2 at libvirt's defaults (unlimited), g3
        /// gone.
        fn max_speed(&self, d: &DomainId) -> Result<MaxSpeed, SourceError> {
            self.0.caps_read.lock().push(d.uuid.clone());
            match d.name.as_str() {
                "g1" => Ok(MaxSpeed {
                    precopy_mibs: 30,
                    postcopy_mibs: Some(25),
                }),
                "g2" => Ok(MaxSpeed {
                    precopy_mibs: 8_796_093_022_207,
                    postcopy_mibs: Some(0),
                }),
                _ => Err(SourceError::NoDomain(d.name.clone())),
            }
        }
    }

    fn collector(calc: bool) -> (ForecastCollector, Arc<Fake>, SharedState) {
        collector_with(calc, PathBuf::from("/nonexistent"), false)
    }

    fn collector_with(
        calc: bool,
        procfs: PathBuf,
        zero_pages: bool,
    ) -> (ForecastCollector, Arc<Fake>, SharedState) {
        let fake = Arc::new(Fake {
            calc_started: Mutex::new(Vec::new()),
            caps_read: Mutex::new(Vec::new()),
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
                procfs,
                sysfs: PathBuf::from("/nonexistent"),
                fallback: Some(40.0 * 1048576.0),
                zero_pages,
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
        // Each round sees the last one measured and starts the next: five for g1, then g2;
        // g3 migrates, never.
        for _ in 0..14 {
            c.round().expect("round");
        }
        let burst: Vec<&str> = ["uuid-1"; 5].into_iter().chain(["uuid-2"; 5]).collect();
        assert_eq!(*fake.calc_started.lock(), burst, "not due again");
        assert_eq!(c.period(), PERIOD);
        let v = c.view().lock().clone();
        let g1 = &v.domains[0];
        assert_eq!(g1.domain.name, "g1");
        let rate = g1.dirty_rate.expect("measured");
        // The mean of the burst: 10, 12, 14, 16 and 18 MiB/s.
        assert_eq!(rate.bytes_per_second, 14.0 * 1048576.0);
        assert_eq!(rate.samples, BURST);
        assert_eq!(rate.source, dirty::DirtySource::Calculation);
        assert_eq!(g1.first_pass_bytes, Some(256.0 * 1048576.0));
        assert_eq!(g1.max_downtime_seconds, Some(0.5));
        assert!(v.domains[2].migrating && !v.domains[0].migrating);
        assert!(v.calculations);
        // libvirt's caps, read on the read-write connection, never for the migrating g3.
        assert_eq!(
            g1.libvirt_cap,
            Some(LibvirtCap {
                precopy_bytes: Some(30.0 * 1048576.0),
                postcopy_bytes: Some(25.0 * 1048576.0),
            })
        );
        assert_eq!(
            v.domains[1].libvirt_cap,
            Some(LibvirtCap::default()),
            "unlimited"
        );
        assert_eq!(v.domains[2].libvirt_cap, None);
        assert!(!fake.caps_read.lock().iter().any(|u| u == "uuid-3"));
        assert!(fake.caps_read.lock().contains(&"uuid-1".to_string()));
        // The default forecast of g1 is limited by its cap.
        let r = crate::forecast::report::evaluate(&v, &Default::default());
        assert_eq!(r.domains[0].path.limit, Some(path::Limit::LibvirtCap));
        assert_eq!(r.domains[0].path.rate, Some(30.0 * 1048576.0));
        assert_eq!(r.domains[1].path.limit, Some(path::Limit::Fallback));
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
        // libvirt refuses the caps to a read-only connection: unknown, not asked.
        assert!(v.domains.iter().all(|d| d.libvirt_cap.is_none()));
        assert!(fake.caps_read.lock().is_empty());
    }

    #[test]
    fn qemu_processes_are_found_by_uuid_in_one_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        for (pid, cmd) in [
            ("17", &b"/bin/sh\0-c\0true\0"[..]),
            (
                "4242",
                b"/usr/bin/qemu-system-x86_64\0-name\0guest=g1\0-uuid\0UUID-1\0-m\0mem\0",
            ),
        ] {
            std::fs::create_dir_all(p.join(pid)).expect("mkdir");
            std::fs::write(p.join(pid).join("cmdline"), cmd).expect("write");
        }
        std::fs::create_dir_all(p.join("self")).expect("mkdir");
        let pids = qemu_pids(p);
        assert_eq!(pids.len(), 1);
        assert_eq!(pids.get("uuid-1"), Some(&4242));
    }

    /// A QEMU stand-in whose "guest RAM" is a 512 MiB region of this test process: its smaps
    /// entry is written to a fake procfs, its pagemap and mem are this process's own.
    struct GuestRam {
        dir: tempfile::TempDir,
        region: Vec<u8>,
        offset: usize,
    }

    const MIB: f64 = 1048576.0;
    const GUEST: usize = 512 << 20;

    impl GuestRam {
        fn new() -> Self {
            let page = zero_pages::page_size() as usize;
            let region = vec![0u8; GUEST + page];
            let offset = (page - region.as_ptr() as usize % page) % page;
            let dir = tempfile::tempdir().expect("tempdir");
            for (pid, uuid) in [("4242", "uuid-1"), ("4343", "uuid-3")] {
                let d = dir.path().join(pid);
                std::fs::create_dir_all(&d).expect("mkdir");
                let cmd = format!("/usr/bin/qemu-system-x86_64\0-uuid\0{uuid}\0");
                std::fs::write(d.join("cmdline"), cmd).expect("cmdline");
                for f in ["pagemap", "mem"] {
                    std::os::unix::fs::symlink(format!("/proc/self/{f}"), d.join(f))
                        .expect("symlink");
                }
            }
            let mut g = GuestRam {
                dir,
                region,
                offset,
            };
            g.set_rss_mib(300);
            g
        }

        fn set_rss_mib(&mut self, rss: u64) {
            let start = self.region.as_ptr() as usize + self.offset;
            let smaps = format!(
                "{start:x}-{:x} rw-p 00000000 00:00 0\nSize: {} kB\nRss: {} kB\n",
                start + GUEST,
                GUEST / 1024,
                rss * 1024
            );
            for pid in ["4242", "4343"] {
                std::fs::write(self.dir.path().join(pid).join("smaps"), &smaps).expect("smaps");
            }
        }

        /// Writes data into the first `mib` MiB of the guest RAM.
        fn write_mib(&mut self, mib: usize) {
            let page = zero_pages::page_size() as usize;
            let ram = &mut self.region[self.offset..self.offset + GUEST];
            for p in 0..(mib << 20) / page {
                ram[p * page + 1] = 0x5a;
            }
        }
    }

    #[test]
    fn with_zero_pages_pass_1_is_the_memory_holding_data_sampled_every_round() {
        let mut ram = GuestRam::new();
        ram.write_mib(64);
        let procfs = ram.dir.path().to_path_buf();
        let first = |c: &ForecastCollector, n: usize| {
            let v = c.view().lock().clone();
            let d = &v.domains[n];
            (d.first_pass_bytes, d.first_pass_source, d.resident_bytes)
        };

        // Without the flag: the mapping's resident size.
        let (mut c, _, _) = collector_with(false, procfs.clone(), false);
        c.round().expect("round");
        assert_eq!(
            first(&c, 0),
            (
                Some(300.0 * MIB),
                Some(dirty::FirstPassSource::RamResident),
                Some(300.0 * MIB)
            )
        );

        // With it: the sampled share holding data, 64 of 512 MiB (stratified: exact here).
        let clock = Arc::new(crate::clock::ManualClock::new(1000.0));
        let (c, _, _) = collector_with(false, procfs, true);
        let mut c = c.with_clock(clock.clone());
        c.round().expect("round");
        let sampled = (
            Some(64.0 * MIB),
            Some(dirty::FirstPassSource::NonzeroSample),
            Some(300.0 * MIB),
        );
        assert_eq!(first(&c, 0), sampled);
        // g3 migrates: never sampled (a post-copy destination could block the read).
        assert_eq!(first(&c, 2).1, Some(dirty::FirstPassSource::RamResident));
        let fill = |c: &ForecastCollector| c.view().lock().domains[0].fill_rate_bytes;
        assert_eq!(fill(&c), None, "one sample: no rate yet");
        // The guest writes more (its resident size unchanged): the next round sees it; the
        // fill rate is known once the samples span 6 s.
        ram.write_mib(128);
        clock.advance(4.0);
        c.round().expect("round");
        assert_eq!(first(&c, 0).0, Some(128.0 * MIB));
        assert_eq!(fill(&c), None, "4 s: too short a span");
        clock.advance(4.0);
        c.round().expect("round");
        assert_eq!(fill(&c), Some(64.0 * MIB / 8.0));
        // 30 s later without writing: the window holds no growth.
        for _ in 0..4 {
            clock.advance(10.0);
            c.round().expect("round");
        }
        assert_eq!(fill(&c), Some(0.0));
    }
}
