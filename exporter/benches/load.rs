//! Load: the exporter (its real HTTP server, sampler and collectors, in a child process) behind a
//! synthetic job source with 1,000 domains and 50 live migrations, scraped 10,000 times at
//! concurrency 64; then the same load on a reference exporter measured in the same run. Prints
//! errors, p50/p99 latency and RSS before and after. `--soak DURATION` instead replays
//! migrations that finish and are replaced (records written, domains coming and going) under a
//! steady scrape load and reports the RSS slope.
//!
//! bash scripts/bench-load.sh              (installs and starts node_exporter as the reference)
//! cargo bench -p vm-migration-exporter --bench load -- [--scrapes N] [--concurrency C]
//!     [--reference URL --reference-pid PID] [--soak 30m]
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use vm_migration_exporter::libvirt::jobs::{job_operation, job_type, lifecycle};
use vm_migration_exporter::libvirt::{
    DomainEvent, DomainId, JobSource, ParamValue, Params, RawJob, SourceError, SourceEvent,
};

const DOMAINS: usize = 1000;
const MIGRATING: usize = 50;
/// Distinct guests in the soak: domains that leave are replaced from this pool (a fleet moving
/// between hosts), so per-domain state is bounded by the fleet, as on a real host.
const FLEET: usize = 2000;
/// How long one soak migration runs: with 50 at a time, 10 finish per second, so the 10,000
/// records the exporter keeps in memory (`store::IN_MEMORY`) are reached after about 17 min and
/// the rest of a 30-minute soak shows the steady state.
const SOAK_MIGRATION: Duration = Duration::from_secs(5);

fn dom(i: usize) -> DomainId {
    DomainId {
        name: format!("instance-{i:08x}"),
        uuid: format!("00000000-0000-4000-8000-{i:012}"),
    }
}

fn params(pairs: &[(&str, u64)]) -> Params {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), ParamValue::UInt(*v)))
        .collect()
}

struct Guest {
    id: usize,
    /// A migration out of this host started then.
    migrating_since: Option<Instant>,
}

struct World {
    guests: Vec<Guest>,
    next: usize,
    soak: bool,
}

/// A libvirt stand-in: the listing, running jobs whose figures move with time, kept completed
/// stats of the incoming migration that brought each domain here, and (soak) completion events.
struct Synthetic {
    started: Instant,
    world: Mutex<World>,
    events: Sender<SourceEvent>,
}

impl Synthetic {
    fn new(soak: bool, events: Sender<SourceEvent>) -> Self {
        let now = Instant::now();
        let guests = (0..DOMAINS)
            .map(|id| Guest {
                id,
                // Staggered, so soak migrations end one after another.
                migrating_since: (id < MIGRATING)
                    .then(|| now - SOAK_MIGRATION.mul_f64(id as f64 / MIGRATING as f64)),
            })
            .collect();
        let _ = events.send(SourceEvent::Connected);
        Synthetic {
            started: now,
            world: Mutex::new(World {
                guests,
                next: DOMAINS,
                soak,
            }),
            events,
        }
    }

    /// Soak: migrations past their time complete (the domain leaves; events as libvirt sends
    /// them), another guest arrives, and an idle one starts migrating.
    fn advance(&self) {
        let mut w = self.world.lock();
        if !w.soak {
            return;
        }
        let now = Instant::now();
        let done: Vec<usize> = w
            .guests
            .iter()
            .enumerate()
            .filter(|(_, g)| g.migrating_since.is_some_and(|t| now - t >= SOAK_MIGRATION))
            .map(|(i, _)| i)
            .collect();
        for i in done.into_iter().rev() {
            let g = w.guests.swap_remove(i);
            let d = dom(g.id);
            let _ = self
                .events
                .send(SourceEvent::Domain(DomainEvent::Lifecycle {
                    domain: d.clone(),
                    event: lifecycle::STOPPED,
                    detail: lifecycle::STOPPED_MIGRATED,
                }));
            let _ = self
                .events
                .send(SourceEvent::Domain(DomainEvent::JobCompleted {
                    domain: d,
                    params: params(&[
                        ("operation", job_operation::MIGRATION_OUT),
                        ("time_elapsed", SOAK_MIGRATION.as_millis() as u64),
                        ("downtime", 40 + g.id as u64 % 50),
                        ("data_processed", 600 << 20),
                        ("data_total", 8 << 30),
                        ("memory_iteration", 5),
                    ]),
                }));
            let id = w.next % FLEET;
            w.next += 1;
            w.guests.push(Guest {
                id,
                migrating_since: None,
            });
            if let Some(idle) = w.guests.iter_mut().find(|g| g.migrating_since.is_none()) {
                idle.migrating_since = Some(now);
            }
        }
    }

    fn guest<T>(&self, d: &DomainId, f: impl FnOnce(&Guest) -> T) -> Result<T, SourceError> {
        let w = self.world.lock();
        w.guests
            .iter()
            .find(|g| dom(g.id).uuid == d.uuid)
            .map(f)
            .ok_or_else(|| SourceError::NoDomain(d.name.clone()))
    }
}

impl JobSource for Synthetic {
    fn is_connected(&self) -> bool {
        true
    }

    fn list_domains(&self) -> Result<Vec<DomainId>, SourceError> {
        self.advance();
        Ok(self.world.lock().guests.iter().map(|g| dom(g.id)).collect())
    }

    fn job_stats(&self, d: &DomainId) -> Result<Option<RawJob>, SourceError> {
        let since = self.guest(d, |g| g.migrating_since)?;
        Ok(since.map(|t| {
            let el = t.elapsed().as_millis() as u64;
            let pass = 1 + el / 4000;
            let remaining = (2u64 << 30).saturating_sub((el % 4000) << 19);
            RawJob {
                job_type: job_type::UNBOUNDED,
                params: params(&[
                    ("operation", job_operation::MIGRATION_OUT),
                    ("time_elapsed", el),
                    ("data_total", 8 << 30),
                    ("data_processed", (el << 17) + 1),
                    ("data_remaining", remaining),
                    ("memory_total", 8 << 30),
                    ("memory_processed", el << 17),
                    ("memory_remaining", remaining),
                    ("memory_bps", 120 << 20),
                    ("memory_dirty_rate", 15_000),
                    ("memory_page_size", 4096),
                    ("memory_iteration", pass),
                    ("downtime", 700),
                    ("setup_time", 6),
                ]),
            }
        }))
    }

    fn completed_job_stats(&self, d: &DomainId) -> Result<Option<RawJob>, SourceError> {
        let id = self.guest(d, |g| g.id)?;
        // Appear after the first rounds, so the exporter counts every domain's arrival once
        // (stats there at its start are history) and has `last_*` series for all of them.
        if self.started.elapsed() < Duration::from_secs(3) {
            return Ok(None);
        }
        Ok(Some(RawJob {
            job_type: job_type::COMPLETED,
            params: params(&[
                ("operation", job_operation::MIGRATION_IN),
                ("time_elapsed", 5000 + id as u64),
                ("downtime", 30 + id as u64 % 70),
                ("data_processed", 500 << 20),
                ("memory_iteration", 3),
            ]),
        }))
    }

    fn max_downtime_ms(&self, _: &DomainId) -> Result<Option<u64>, SourceError> {
        Ok(Some(300))
    }
}

/// The child: the exporter with the synthetic source, until killed.
fn serve(addr: &str, storage: &str, soak: bool) {
    vm_migration_exporter::logging::init(
        vm_migration_exporter::settings::LogLevel::Warn,
        vm_migration_exporter::settings::LogFormat::Logfmt,
    );
    let settings = match vm_migration_exporter::settings::parse([
        "vm-migration-exporter",
        "--web.listen-address",
        addr,
        "--storage.path",
        storage,
        "--probe.discovery=false",
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("load: settings: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (tx, rx) = std::sync::mpsc::channel();
    let source = Arc::new(Synthetic::new(soak, tx));
    // No reloads in the bench: the sender stays alive, nothing is ever sent.
    let (_reload_tx, requests) = tokio::sync::mpsc::unbounded_channel();
    let reloads = vm_migration_exporter::daemon::Reloads {
        requests,
        args: std::env::args_os().collect(),
    };
    let r = runtime.block_on(vm_migration_exporter::daemon::run(
        settings,
        source,
        rx,
        std::future::pending(),
        reloads,
    ));
    eprintln!("load: exporter ended: {r:?}");
    std::process::exit(1);
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

struct Load {
    errors: usize,
    latencies: Vec<Duration>,
    wall: Duration,
    bytes: usize,
}

/// `n` GETs of `url` from `concurrency` clients; an error is a failed request, a non-200, or a
/// body without `must_contain`.
async fn load(url: &str, n: usize, concurrency: usize, must_contain: &str) -> Load {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url, needle) = (
            client.clone(),
            next.clone(),
            url.to_string(),
            must_contain.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut errors, mut lat, mut bytes) = (0, Vec::new(), 0);
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t = Instant::now();
                let ok = match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => match r.text().await {
                        Ok(body) => {
                            bytes = body.len();
                            body.contains(&needle)
                        }
                        Err(_) => false,
                    },
                    _ => false,
                };
                lat.push(t.elapsed());
                errors += usize::from(!ok);
            }
            (errors, lat, bytes)
        }));
    }
    let mut out = Load {
        errors: 0,
        latencies: Vec::with_capacity(n),
        wall: Duration::ZERO,
        bytes: 0,
    };
    for t in tasks {
        let (e, l, b) = t.await.expect("client task");
        out.errors += e;
        out.latencies.extend(l);
        out.bytes = out.bytes.max(b);
    }
    out.wall = started.elapsed();
    out.latencies.sort();
    out
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Least-squares slope of (seconds, KiB) in KiB per minute.
fn slope_kib_per_min(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    num / den * 60.0
}

fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

struct Args {
    scrapes: usize,
    concurrency: usize,
    reference: Option<(String, u32)>,
    soak: Option<Duration>,
}

fn args() -> Args {
    let mut a = Args {
        scrapes: 10_000,
        concurrency: 64,
        reference: None,
        soak: None,
    };
    let mut it = std::env::args().skip(1);
    let mut reference_url = None;
    let mut reference_pid = None;
    while let Some(arg) = it.next() {
        let mut value = |what: &str| {
            it.next().unwrap_or_else(|| {
                eprintln!("load: {arg} needs {what}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--scrapes" => a.scrapes = value("a number").parse().unwrap_or(a.scrapes),
            "--concurrency" => a.concurrency = value("a number").parse().unwrap_or(a.concurrency),
            "--reference" => reference_url = Some(value("a URL")),
            "--reference-pid" => reference_pid = value("a pid").parse().ok(),
            "--soak" => {
                let v = value("a duration (e.g. 30m)");
                a.soak = Some(humantime::parse_duration(&v).unwrap_or_else(|e| {
                    eprintln!("load: --soak {v}: {e}");
                    std::process::exit(2)
                }));
            }
            // cargo bench passes --bench; other harness flags mean nothing here.
            _ => {}
        }
    }
    if let (Some(u), Some(p)) = (reference_url, reference_pid) {
        a.reference = Some((u, p));
    }
    a
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    if let Ok(addr) = std::env::var("VME_LOAD_CHILD") {
        let storage = std::env::var("VME_LOAD_STORAGE").unwrap_or_default();
        serve(&addr, &storage, std::env::var_os("VME_LOAD_SOAK").is_some());
        return;
    }
    let a = args();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let storage = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("own path"));
    cmd.env("VME_LOAD_CHILD", &addr)
        .env("VME_LOAD_STORAGE", storage.path());
    if a.soak.is_some() {
        cmd.env("VME_LOAD_SOAK", "1");
    }
    let child = Child(cmd.spawn().expect("start the exporter"));
    let pid = child.0.id();
    let url = format!("http://{addr}/metrics");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::blocking::Client::new();
    let get = |u: &str| client.get(u).send().ok().and_then(|r| r.text().ok());

    // Ready, with every domain's arrival counted (`last_*` series for all of them).
    let deadline = Instant::now() + Duration::from_secs(120);
    let warm = loop {
        let text = get(&url).unwrap_or_default();
        let counted = text
            .lines()
            .filter(|l| l.starts_with("vm_migration_last_duration_seconds{"))
            .count();
        if counted >= DOMAINS - MIGRATING || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let series = warm
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let live = warm
        .lines()
        .filter(|l| l.starts_with("vm_migration_job_active{"))
        .count();
    println!(
        "exporter: {DOMAINS} domains, {live} live migration jobs, {series} series, {} bytes per scrape",
        warm.len()
    );
    if live != MIGRATING {
        eprintln!("load: expected {MIGRATING} live jobs, the exporter shows {live}");
        std::process::exit(1);
    }

    if let Some(d) = a.soak {
        soak(
            &rt,
            &url,
            pid,
            d,
            &get,
            sample_sum(&warm, "vm_migration_finished_total{"),
        );
        return;
    }
    println!(
        "\n{} scrapes of /metrics at concurrency {}\n",
        a.scrapes, a.concurrency
    );
    println!("| target | errors | p50 ms | p99 ms | max ms | scrapes/s | body bytes | RSS before KiB | RSS after KiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let run = |name: &str, url: &str, pid: u32, needle: &str| {
        let before = rss_kib(pid).unwrap_or(0);
        let l = rt.block_on(load(url, a.scrapes, a.concurrency, needle));
        let after = rss_kib(pid).unwrap_or(0);
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {before} | {after} |",
            l.errors,
            pct(&l.latencies, 0.5),
            pct(&l.latencies, 0.99),
            pct(&l.latencies, 1.0),
            a.scrapes as f64 / l.wall.as_secs_f64(),
            l.bytes
        );
        (pct(&l.latencies, 0.5), pct(&l.latencies, 0.99))
    };
    let ours = run(
        "vm-migration-exporter",
        &url,
        pid,
        "vm_migration_job_active{",
    );
    if let Some((rurl, rpid)) = &a.reference {
        let reference = run("reference", rurl, *rpid, "# TYPE");
        println!(
            "\nratio ours/reference: p50 {:.2}, p99 {:.2}",
            ours.0 / reference.0,
            ours.1 / reference.1
        );
    }
}

/// Replayed migrations under a steady scrape load for `d`; RSS every 10 s and its slope.
fn soak(
    rt: &tokio::runtime::Runtime,
    url: &str,
    pid: u32,
    d: Duration,
    get: &dyn Fn(&str) -> Option<String>,
    finished_before: f64,
) {
    let started = Instant::now();
    let rss = Arc::new(Mutex::new(VecDeque::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (rss, stop) = (rss.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(k) = rss_kib(pid) {
                    rss.lock()
                        .push_back((started.elapsed().as_secs_f64(), k as f64));
                }
                std::thread::sleep(Duration::from_secs(10));
            }
        })
    };
    // Four clients, each scraping four times a second, until the time is up.
    let (errors, scrapes) = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (client, url) = (client.clone(), url.to_string());
            tasks.push(tokio::spawn(async move {
                let (mut errors, mut n) = (0usize, 0usize);
                while started.elapsed() < d {
                    let ok = match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => r.text().await.is_ok(),
                        _ => false,
                    };
                    errors += usize::from(!ok);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                (errors, n)
            }));
        }
        let mut out = (0, 0);
        for t in tasks {
            let (e, n) = t.await.expect("client task");
            out.0 += e;
            out.1 += n;
        }
        out
    });
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let text = get(url).unwrap_or_default();
    let finished = sample_sum(&text, "vm_migration_finished_total{") - finished_before;
    let points: Vec<(f64, f64)> = rss.lock().iter().copied().collect();
    let half: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(t, _)| *t >= d.as_secs_f64() / 2.0)
        .collect();
    // Once the in-memory record buffer is full (10,000 records at 10 per second).
    let full_at = 10_000.0 / (MIGRATING as f64 / SOAK_MIGRATION.as_secs_f64()) + 60.0;
    let steady: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(t, _)| *t >= full_at)
        .collect();
    let first = points.first().map_or(0.0, |p| p.1);
    let last = points.last().map_or(0.0, |p| p.1);
    let peak = points.iter().map(|p| p.1).fold(0.0, f64::max);
    println!(
        "\nsoak {:.0} s: {scrapes} scrapes, {errors} errors, {finished} migrations finished (records written)",
        d.as_secs_f64()
    );
    println!(
        "RSS first {first:.0} KiB, last {last:.0} KiB, peak {peak:.0} KiB; slope {:.1} KiB/min over the run, {:.1} KiB/min over its second half, {:.1} KiB/min from {full_at:.0} s on (in-memory records full; {} samples)",
        slope_kib_per_min(&points),
        slope_kib_per_min(&half),
        slope_kib_per_min(&steady),
        steady.len()
    );
}
