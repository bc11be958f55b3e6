//! Which peers get probed: the configured ones from the start, and the peer of each running
//! migration while it runs ([`Discoverer`], on its own thread, woken by the sampler when jobs
//! start or end).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::probe::{PeerSpec, ProbeSpec, Prober};
use super::qemu_socket;
use super::state::{DiscoveredPeer, Origin, PeerState, ProbeKey, KEEP_DISCOVERED};
use crate::collector::{Collect, CollectError, Feed, Name, Registration, Rounds};
use crate::libvirt::jobs::DomainId;
use crate::netdev::routes;
use crate::record::Direction;

/// How often discovery looks without being woken (a job's socket appears a moment after the
/// job starts).
const PERIOD: Duration = Duration::from_secs(1);

/// The `discovery` collector, when `probe.discovery` is on and the probe collector runs (it
/// probes the peers it finds through the probe collector's [`Prober`]). It publishes the
/// [`RunningJobs`] feed the jobs collector fills and wakes it through.
pub const REGISTRATION: Registration = Registration {
    name: Name::Discovery,
    start: |deps, runner| {
        let settings = &deps.settings;
        let Some(prober) = deps.get::<Prober>() else {
            return Ok(());
        };
        if !settings.probe.discovery {
            return Ok(());
        }
        let feed = Feed::new(runner.waker(Name::Discovery));
        let discoverer = Discoverer::new(
            settings.netdev.procfs.clone(),
            settings.probe.qemu_trust.clone(),
            settings.probe.discovery_probes.clone(),
            // Its probes are rounds of their own, not the configured peers' `probe` ones.
            prober.with_rounds(runner.task_rounds_labelled(DISCOVERED_PROBES)),
            runner.cancel_token().child_token(),
        );
        deps.put(RunningJobs(feed.clone()));
        runner.add_rounds(DiscoveryCollector::new(discoverer, feed))
    },
};

/// The `collector` label of the discovered peers' probes.
pub const DISCOVERED_PROBES: &str = "discovery_probe";

/// The domains whose migration jobs run, as the jobs collector publishes them for discovery.
#[derive(Clone, Debug)]
pub struct RunningJobs(pub Feed<Vec<RunningJob>>);

/// The `discovery` collector: a pass whenever the sampler says the running jobs changed, and at
/// least every second.
pub struct DiscoveryCollector {
    discoverer: Discoverer,
    jobs: Feed<Vec<RunningJob>>,
}

/// A running job as discovery needs it: which domain, and which side of it this host is.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningJob {
    pub domain: DomainId,
    pub direction: Direction,
}

impl DiscoveryCollector {
    /// `jobs` is published by the jobs sampler, which wakes this collector through it.
    pub fn new(discoverer: Discoverer, jobs: Feed<Vec<RunningJob>>) -> Self {
        DiscoveryCollector { discoverer, jobs }
    }
}

impl Collect for DiscoveryCollector {
    fn name(&self) -> Name {
        Name::Discovery
    }
}

impl Rounds for DiscoveryCollector {
    fn round(&mut self) -> Result<(), CollectError> {
        self.discoverer
            .tick(&self.jobs.get())
            .map_err(CollectError::new)
    }

    fn period(&self) -> Duration {
        PERIOD
    }
}

/// Probes of one discovered address, shared by the migrations that go there.
struct Running {
    cancel: CancellationToken,
    keys: Vec<ProbeKey>,
    uuids: HashSet<String>,
}

/// Why a discovery pass could not look at every running migration: the collector reports
/// `collector_success 0` instead of finding nothing silently.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("{0} is not readable (check --path.procfs)")]
    Procfs(String),
    #[error("{0} (discovery needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to read QEMU's fd table; see the README's privileges section)")]
    FdTable(#[from] qemu_socket::FdTableError),
}

/// Finds the peers of running migrations and probes them while they run.
pub struct Discoverer {
    procfs: PathBuf,
    /// Which processes may be a domain's QEMU.
    trust: qemu_socket::QemuTrust,
    probes: Vec<ProbeSpec>,
    prober: Prober,
    peers: PeerState,
    cancel: CancellationToken,
    /// QEMU pid by domain uuid.
    pids: HashMap<String, u32>,
    running: HashMap<IpAddr, Running>,
    /// An unreadable fd table was logged (once, until one is readable again).
    fd_warned: bool,
}

impl Discoverer {
    pub fn new(
        procfs: PathBuf,
        trust: qemu_socket::QemuTrust,
        probes: Vec<ProbeSpec>,
        prober: Prober,
        cancel: CancellationToken,
    ) -> Self {
        Discoverer {
            procfs,
            trust,
            probes,
            peers: prober.peers().clone(),
            prober,
            cancel,
            pids: HashMap::new(),
            running: HashMap::new(),
            fd_warned: false,
        }
    }

    /// One pass over the running jobs: start probing the peers of new ones, stop
    /// probing peers nobody migrates to any more. An error when procfs or a QEMU process's fd
    /// table could not be read (the other jobs are still handled).
    pub fn tick(&mut self, jobs: &[RunningJob]) -> Result<(), DiscoveryError> {
        let mut failure = match std::fs::metadata(&self.procfs) {
            Ok(_) => None,
            Err(_) => Some(DiscoveryError::Procfs(self.procfs.display().to_string())),
        };
        let live: HashSet<&str> = jobs.iter().map(|j| j.domain.uuid.as_str()).collect();
        for job in jobs {
            let (name, uuid) = (&job.domain.name, &job.domain.uuid);
            let known = self
                .peers
                .lock()
                .discovered
                .get(uuid)
                .is_some_and(|d| d.active);
            if known {
                continue;
            }
            // The pid is remembered only while it still is this domain's QEMU (a reused pid
            // is checked again).
            let pid = match self.pids.get(uuid) {
                Some(p)
                    if qemu_socket::cmdline_has_uuid(&self.procfs, *p, uuid)
                        && self.trust.trusts(&self.procfs, *p) =>
                {
                    Some(*p)
                }
                _ => qemu_socket::find_qemu_pid(&self.procfs, uuid, &self.trust, job.direction),
            };
            let Some(pid) = pid else { continue };
            self.pids.insert(uuid.clone(), pid);
            let address = match qemu_socket::peer_of_pid(&self.procfs, pid) {
                Ok(a) => {
                    if std::mem::take(&mut self.fd_warned) {
                        info!(domain = %name, "QEMU's fd table is readable again; discovery works");
                    }
                    a
                }
                Err(e) => {
                    let e = DiscoveryError::from(e);
                    // One line, not one per round: a missing capability stays missing.
                    if std::mem::replace(&mut self.fd_warned, true) {
                        debug!(domain = %name, error = %e, "migration peer not discoverable");
                    } else {
                        warn!(domain = %name, error = %e, "migration peers cannot be discovered");
                    }
                    failure = Some(e);
                    None
                }
            };
            let Some(address) = address else {
                continue;
            };
            let device = routes::device_for(&self.procfs, address);
            info!(domain = %name, peer = %address, device = device.as_deref().unwrap_or("unknown"), "migration peer discovered; probing it while the migration runs");
            self.peers.lock().discovered.insert(
                uuid.clone(),
                DiscoveredPeer {
                    address,
                    device,
                    domain: name.clone(),
                    uuid: uuid.clone(),
                    active: true,
                },
            );
            let run = self.running.entry(address).or_insert_with(|| {
                let cancel = self.cancel.child_token();
                let peer = PeerSpec {
                    name: address.to_string(),
                    address,
                    probes: self.probes.clone(),
                };
                let keys = self.prober.spawn_peer(&peer, Origin::Discovered, &cancel);
                Running {
                    cancel,
                    keys,
                    uuids: HashSet::new(),
                }
            });
            run.uuids.insert(uuid.clone());
        }
        let mut ended = Vec::new();
        {
            let mut g = self.peers.lock();
            for d in g.discovered.values_mut() {
                if d.active && !live.contains(d.uuid.as_str()) {
                    d.active = false;
                    ended.push((d.uuid.clone(), d.address));
                }
            }
            if g.discovered.len() > KEEP_DISCOVERED {
                g.discovered.retain(|_, d| d.active);
            }
        }
        // Jobs that ended, whether or not their peer was found, need no pid any more.
        self.pids.retain(|uuid, _| live.contains(uuid.as_str()));
        for (uuid, address) in ended {
            let done = self.running.get_mut(&address).is_some_and(|r| {
                r.uuids.remove(&uuid);
                r.uuids.is_empty()
            });
            if done {
                if let Some(r) = self.running.remove(&address) {
                    r.cancel.cancel();
                    for k in &r.keys {
                        self.prober.retire(k);
                    }
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::probe::ProbeKind;
    use std::path::Path;

    const UUID: &str = "ab5e0000-0000-4000-8000-000000000001";

    /// A procfs with one QEMU (pid 4242, `-uuid UUID`) and, when `socket`, its established
    /// migration socket to 10.77.0.2 (the discovery fixture's inode 5001).
    fn procfs(socket: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("4242");
        std::fs::create_dir_all(p.join("fd")).expect("mkdir");
        std::fs::create_dir_all(p.join("net")).expect("mkdir");
        std::fs::write(
            p.join("cmdline"),
            format!("/usr/bin/qemu-system-x86_64\0-uuid\0{UUID}\0"),
        )
        .expect("write");
        std::os::unix::fs::symlink("/usr/bin/qemu-system-x86_64", p.join("exe")).expect("symlink");
        std::fs::write(p.join("status"), "Uid:\t0\t0\t0\t0\n").expect("write");
        let tcp = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/net/discovery/tcp"),
        )
        .expect("fixture");
        std::fs::write(p.join("net/tcp"), tcp).expect("write");
        if socket {
            std::os::unix::fs::symlink("socket:[5001]", p.join("fd/20")).expect("symlink");
        }
        dir
    }

    fn discoverer(procfs: &Path, rt: &tokio::runtime::Runtime) -> Discoverer {
        let prober = Prober::new(
            PeerState::default(),
            crate::collector::TaskRounds::new(Default::default(), crate::collector::Name::Probe),
            4,
            rt.handle().clone(),
        );
        let probes = vec![ProbeSpec {
            kind: ProbeKind::Tcp { port: 9 },
            interval: Duration::from_secs(3600),
            timeout: Duration::from_millis(100),
        }];
        Discoverer::new(
            procfs.to_path_buf(),
            qemu_socket::QemuTrust {
                uids: vec![0],
                emulators: Vec::new(),
            },
            probes,
            prober,
            CancellationToken::new(),
        )
    }

    /// The outgoing migration of domain `g` (UUID).
    fn job() -> RunningJob {
        RunningJob {
            domain: DomainId {
                name: "g".into(),
                uuid: UUID.into(),
            },
            direction: Direction::Out,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn peer_is_probed_while_the_job_runs_and_retired_after() {
        let rt = runtime();
        let dir = procfs(true);
        let mut d = discoverer(dir.path(), &rt);
        let jobs = vec![job()];
        d.tick(&jobs).expect("readable");
        let peer = d.peers.discovered_peer(UUID).expect("discovered");
        assert_eq!(peer.address, "10.77.0.2".parse::<IpAddr>().expect("ip"));
        assert!(peer.active);
        let key = ProbeKey {
            peer: "10.77.0.2".into(),
            probe: "tcp",
            origin: Origin::Discovered,
        };
        assert!(
            d.peers.lock().probes.contains_key(&key),
            "probe series exported"
        );
        d.tick(&[]).expect("readable");
        assert!(!d.peers.discovered_peer(UUID).expect("kept").active);
        assert!(d.peers.lock().probes.is_empty(), "series retired");
        assert!(d.running.is_empty() && d.pids.is_empty());
    }

    /// An impostor (a user's process with the domain's `-uuid` and a connection to
    /// an address of the user's choosing) listed before the real QEMU must not be probed.
    #[test]
    fn an_impostor_process_is_not_taken_for_qemu() {
        let rt = runtime();
        let dir = procfs(true);
        let fake = dir.path().join("100");
        std::fs::create_dir_all(fake.join("fd")).expect("mkdir");
        std::fs::create_dir_all(fake.join("net")).expect("mkdir");
        std::fs::write(
            fake.join("cmdline"),
            format!("/usr/bin/python3\0-uuid\0{UUID}\0"),
        )
        .expect("write");
        std::os::unix::fs::symlink("/usr/bin/python3.11", fake.join("exe")).expect("symlink");
        std::fs::write(fake.join("status"), "Uid:\t1000\t1000\t1000\t1000\n").expect("write");
        // Its socket goes to 192.0.2.66, an address the user chose.
        std::fs::write(
            fake.join("net/tcp"),
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:A000 420200C0:0050 01 00100000:00000000 00:00000000 00000000  1000        0 7001 1 0000000000000000 20 4 30 10 -1\n",
        )
        .expect("write");
        std::os::unix::fs::symlink("socket:[7001]", fake.join("fd/3")).expect("symlink");
        let mut d = discoverer(dir.path(), &rt);
        d.tick(&[job()]).expect("readable");
        let peer = d.peers.discovered_peer(UUID).expect("discovered");
        assert_eq!(
            peer.address,
            "10.77.0.2".parse::<IpAddr>().expect("ip"),
            "the real QEMU's peer"
        );
        assert_eq!(d.pids.get(UUID), Some(&4242));
    }

    #[test]
    fn a_job_that_ends_before_its_socket_appears_leaves_nothing_behind() {
        let rt = runtime();
        let dir = procfs(false);
        let mut d = discoverer(dir.path(), &rt);
        let jobs = vec![job()];
        d.tick(&jobs).expect("readable");
        assert_eq!(d.peers.discovered_peer(UUID), None);
        assert_eq!(d.pids.get(UUID), Some(&4242), "the QEMU pid is remembered");
        d.tick(&[]).expect("readable");
        assert!(d.pids.is_empty(), "{:?}", d.pids);
    }

    /// Log lines written through `tracing` while `f` runs on this thread.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
        #[derive(Clone)]
        struct Buf(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf(Default::default());
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        let out = tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8_lossy(&buf.0.lock()).to_string();
        (out, text.lines().map(str::to_string).collect())
    }

    /// This thread without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH in its effective set while
    /// it lives: it gets the EACCES that the exporter without its capabilities gets from
    /// another user's `/proc/<pid>/fd`, as root or not (capabilities are per thread; the
    /// permitted set stays, so they come back on drop, also when the test panics).
    struct WithoutDacCapabilities(rustix::thread::CapabilitySets);

    impl WithoutDacCapabilities {
        fn new() -> Self {
            use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
            let before = capabilities(None).expect("capget");
            let mut sets = before;
            sets.effective
                .remove(CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH);
            set_capabilities(None, sets).expect("capset: lower this thread's effective set");
            WithoutDacCapabilities(before)
        }
    }

    impl Drop for WithoutDacCapabilities {
        fn drop(&mut self) {
            let _ = rustix::thread::set_capabilities(None, self.0);
        }
    }

    /// A QEMU whose fd table the exporter may not read (no CAP_SYS_PTRACE /
    /// CAP_DAC_READ_SEARCH) fails the discovery round, with one log line naming the fd table
    /// and the capabilities, however many rounds fail; readable again, it says so once.
    /// The EACCES is the kernel's: a mode-000 directory read by a thread without the DAC
    /// capabilities (root's uid alone does not read it), whoever runs the test.
    #[test]
    fn an_unreadable_fd_table_fails_the_round_and_is_logged_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = procfs(true);
        let fd = dir.path().join("4242/fd");
        std::fs::set_permissions(&fd, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        let caps = WithoutDacCapabilities::new();
        let denied = std::fs::read_dir(&fd).map(|_| ()).map_err(|e| e.kind());
        assert_eq!(
            denied,
            Err(std::io::ErrorKind::PermissionDenied),
            "the mode-000 directory must be unreadable to this thread"
        );
        let rt = runtime();
        let statuses = crate::collector::Statuses::default();
        let mut runner = crate::collector::Runner::new(
            statuses.clone(),
            prometheus_client::registry::Registry::default(),
            [Name::Discovery].into_iter().collect(),
        );
        let feed = Feed::new(runner.waker(Name::Discovery));
        feed.publish(vec![job()]);
        let mut c = DiscoveryCollector::new(discoverer(dir.path(), &rt), feed);
        let (ok, log) = logged(|| {
            (0..3)
                .map(|_| crate::collector::execute(&statuses, Name::Discovery, || c.round()))
                .collect::<Vec<_>>()
        });
        assert_eq!(ok, vec![false; 3], "every round fails");
        assert_eq!(
            statuses.get(Name::Discovery).map(|s| s.success),
            Some(false)
        );
        let warned: Vec<_> = log.iter().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warned.len(), 1, "one line for three rounds: {log:#?}");
        let line = warned[0];
        for part in [
            fd.display().to_string().as_str(),
            "Permission denied",
            "CAP_SYS_PTRACE",
            "domain=g",
        ] {
            assert!(line.contains(part), "{line} does not name {part}");
        }
        assert_eq!(c.discoverer.peers.discovered_peer(UUID), None);
        std::fs::set_permissions(&fd, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        drop(caps);
        let (ok, log) =
            logged(|| crate::collector::execute(&statuses, Name::Discovery, || c.round()));
        assert!(ok, "readable again: the round succeeds");
        assert!(log.iter().any(|l| l.contains("readable again")), "{log:#?}");
        assert!(c.discoverer.peers.discovered_peer(UUID).is_some());
    }
}
