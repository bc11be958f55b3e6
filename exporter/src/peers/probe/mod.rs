//! Peer probes, blackbox_exporter style: one prober per kind (`icmp`, `tcp`) with one signature,
//! each peer × probe in its own tokio task on its own interval; together they are the `probe`
//! collector ([`ProbeCollector`]), whose round is one probe of every peer × probe. A shared semaphore bounds how
//! many probes are in flight; a probe holds its permit at most `timeout`, so an unreachable
//! peer costs others nothing as long as fewer than `--probe.max-concurrency` peers time out at
//! once. Results go into [`PeerState`]; scrapes only read it.

pub mod icmp;
pub mod tcp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use prometheus_client::registry::Registry;

use crate::clock::unix_now;
use crate::collector::{Collect, Name, Registration, TaskRounds, Tasks};
use crate::peers::metrics::PeerFamilies;
use crate::peers::state::{Origin, PeerState, ProbeKey, ProbeOutcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Icmp,
    Tcp { port: u16 },
}

/// Why a probe name and port make no [`ProbeKind`]; callers word it for their flag or key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KindError {
    Unknown(String),
    /// `tcp` without a port (or port 0).
    PortRequired,
    /// A port given to a probe that does not use one.
    PortNotUsed,
}

impl ProbeKind {
    /// The probe names, as flags, the config file and the `probe` label spell them.
    pub const NAMES: [&'static str; 2] = ["icmp", "tcp"];

    pub fn label(self) -> &'static str {
        match self {
            ProbeKind::Icmp => "icmp",
            ProbeKind::Tcp { .. } => "tcp",
        }
    }

    /// The kind named `name` (one of [`Self::NAMES`]), with its port when it takes one.
    pub fn from_name(name: &str, port: Option<u16>) -> Result<ProbeKind, KindError> {
        match (name, port) {
            ("icmp", None) => Ok(ProbeKind::Icmp),
            ("icmp", Some(_)) => Err(KindError::PortNotUsed),
            ("tcp", None | Some(0)) => Err(KindError::PortRequired),
            ("tcp", Some(port)) => Ok(ProbeKind::Tcp { port }),
            (other, _) => Err(KindError::Unknown(other.to_string())),
        }
    }

    /// Whether probes of this name take a port.
    pub fn takes_port(name: &str) -> bool {
        name == "tcp"
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    pub address: IpAddr,
    pub probes: Vec<ProbeSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("ICMP echo needs CAP_NET_RAW (raw socket: {raw}) or a datagram ICMP socket, which net.ipv4.ping_group_range does not allow for gid {gid} ({dgram}); run with CAP_NET_RAW (e.g. setcap cap_net_raw+ep, or the container's capabilities) or widen the sysctl")]
    IcmpPermission {
        dgram: String,
        raw: String,
        gid: String,
    },
    #[error("{0}")]
    Io(std::io::Error),
}

impl ProbeError {
    /// Set-up errors (no socket at all) make the `probe` collector fail.
    pub fn is_setup(&self) -> bool {
        matches!(self, ProbeError::IcmpPermission { .. })
    }
}

/// Spawns probe tasks on one runtime that share one concurrency limit.
#[derive(Clone, Debug)]
pub struct Prober {
    net: PeerState,
    rounds: TaskRounds<ProbeKey>,
    limit: Arc<Semaphore>,
    rt: tokio::runtime::Handle,
}

impl Prober {
    pub fn new(
        net: PeerState,
        rounds: TaskRounds<ProbeKey>,
        max_concurrency: usize,
        rt: tokio::runtime::Handle,
    ) -> Self {
        Prober {
            net,
            rounds,
            limit: Arc::new(Semaphore::new(max_concurrency.max(1))),
            rt,
        }
    }

    /// The same prober (peers' state, concurrency limit, runtime) reporting its rounds in
    /// `rounds`.
    pub fn with_rounds(&self, rounds: TaskRounds<ProbeKey>) -> Prober {
        Prober {
            rounds,
            ..self.clone()
        }
    }

    pub fn peers(&self) -> &PeerState {
        &self.net
    }

    /// Probe `address` per `spec` until `cancel` fires.
    pub fn spawn(
        &self,
        key: ProbeKey,
        address: IpAddr,
        spec: ProbeSpec,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let me = self.clone();
        me.net.ensure_series(&key, address);
        me.rounds.join(key.clone());
        self.rt.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = me.run(key, address, spec) => {}
            }
        })
    }

    /// Spawn the probes of one peer; returns their keys.
    pub fn spawn_peer(
        &self,
        peer: &PeerSpec,
        origin: Origin,
        cancel: &CancellationToken,
    ) -> Vec<ProbeKey> {
        peer.probes
            .iter()
            .map(|spec| {
                let key = ProbeKey {
                    peer: peer.name.clone(),
                    probe: spec.kind.label(),
                    origin,
                };
                self.spawn(key.clone(), peer.address, *spec, cancel.clone());
                key
            })
            .collect()
    }

    /// Stop counting a discovered peer's probes (their tasks were cancelled) and its series.
    pub fn retire(&self, key: &ProbeKey) {
        self.rounds.leave(key);
        self.net.retire(key);
    }

    async fn run(self, key: ProbeKey, address: IpAddr, spec: ProbeSpec) {
        let mut tick = tokio::time::interval(spec.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut icmp: Option<icmp::IcmpSocket> = None;
        let mut reported = false;
        loop {
            tick.tick().await;
            let Ok(_permit) = self.limit.acquire().await else {
                return;
            };
            self.rounds.begin(&key);
            let result = match spec.kind {
                ProbeKind::Icmp => {
                    if icmp.is_none() {
                        match icmp::IcmpSocket::open(address) {
                            Ok(s) => {
                                debug!(peer = %key.peer, socket = icmp::kind_label(s.is_raw()), "ICMP socket open");
                                icmp = Some(s);
                            }
                            Err(e) => {
                                if !reported {
                                    error!(peer = %key.peer, error = %e, "cannot probe with ICMP");
                                    reported = true;
                                }
                                self.finish(&key, address, ProbeOutcome::Error, true);
                                continue;
                            }
                        }
                    }
                    match icmp.as_mut() {
                        Some(s) => tokio::time::timeout(spec.timeout, s.ping()).await,
                        None => continue,
                    }
                }
                ProbeKind::Tcp { port } => {
                    tokio::time::timeout(
                        spec.timeout,
                        tcp::connect_time(SocketAddr::new(address, port)),
                    )
                    .await
                }
            };
            let outcome = match result {
                Ok(Ok(rtt)) => ProbeOutcome::Success(rtt.as_secs_f64()),
                Ok(Err(e)) => {
                    debug!(peer = %key.peer, probe = key.probe, error = %e, "probe failed");
                    if matches!(spec.kind, ProbeKind::Icmp) {
                        // Send errors (e.g. no route) may leave the socket unusable: reopen.
                        icmp = None;
                    }
                    ProbeOutcome::Error
                }
                Err(_) => ProbeOutcome::Timeout,
            };
            self.finish(&key, address, outcome, false);
        }
    }

    fn finish(&self, key: &ProbeKey, address: IpAddr, outcome: ProbeOutcome, setup_error: bool) {
        self.net.record_probe(key, address, unix_now(), outcome);
        if let ProbeOutcome::Success(rtt) = outcome {
            // One line per probe at debug level: the benchmark (scripts/bench-net.sh) reads it.
            debug!(peer = %key.peer, probe = key.probe, rtt_seconds = rtt, "probe");
        }
        let setup_failures = self.net.note_setup(key, setup_error);
        if setup_error && setup_failures == 1 {
            warn!(peer = %key.peer, probe = key.probe, collector = self.rounds.label(), "probe cannot run; the collector's vm_migration_collector_success is 0");
        }
        self.rounds.end(key, !setup_error);
    }
}

/// The configured peers being probed; a reload replaces the list ([`ConfiguredPeers::apply`]):
/// peers that left or changed stop (their series go), new or changed ones start. Cheap to
/// clone; clones share the list.
#[derive(Clone)]
pub struct ConfiguredPeers {
    prober: Prober,
    cancel: CancellationToken,
    running: Arc<parking_lot::Mutex<Vec<RunningPeer>>>,
}

struct RunningPeer {
    spec: PeerSpec,
    cancel: CancellationToken,
    keys: Vec<ProbeKey>,
}

impl ConfiguredPeers {
    pub fn new(prober: Prober, cancel: CancellationToken) -> Self {
        ConfiguredPeers {
            prober,
            cancel,
            running: Default::default(),
        }
    }

    /// Probe exactly `peers` from now on; returns (started, stopped) peer counts.
    pub fn apply(&self, peers: &[PeerSpec]) -> (usize, usize) {
        let mut running = self.running.lock();
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut *running)
            .into_iter()
            .partition(|r| peers.contains(&r.spec));
        for r in &gone {
            r.cancel.cancel();
            for k in &r.keys {
                self.prober.retire(k);
            }
        }
        *running = keep;
        let mut started = 0;
        for peer in peers {
            if running.iter().any(|r| &r.spec == peer) {
                continue;
            }
            let cancel = self.cancel.child_token();
            let keys = self.prober.spawn_peer(peer, Origin::Config, &cancel);
            running.push(RunningPeer {
                spec: peer.clone(),
                cancel,
                keys,
            });
            started += 1;
        }
        (started, gone.len())
    }
}

/// The `probe` collector; it publishes the peers' state (records and the forecast read it), the
/// [`Prober`] (discovery probes through it) and the [`ConfiguredPeers`] (a reload replaces them).
pub const REGISTRATION: Registration = Registration {
    name: Name::Probe,
    start: |deps, runner| {
        let settings = &deps.settings.probe;
        let peers = PeerState::default();
        let prober = Prober::new(
            peers.clone(),
            runner.task_rounds(Name::Probe),
            settings.max_concurrency,
            tokio::runtime::Handle::current(),
        );
        let probe = ProbeCollector::new(
            prober.clone(),
            settings.peers.clone(),
            runner.cancel_token().child_token(),
        );
        deps.put(peers);
        deps.put(prober);
        deps.put(probe.configured());
        runner.add_tasks(probe);
        Ok(())
    },
};

/// The `probe` collector: the configured peers' probes, started with it and replaced on a
/// reload ([`ConfiguredPeers`]); discovery adds and retires discovered peers' through the
/// same [`Prober`].
pub struct ProbeCollector {
    prober: Prober,
    peers: Vec<PeerSpec>,
    configured: ConfiguredPeers,
}

impl ProbeCollector {
    pub fn new(prober: Prober, peers: Vec<PeerSpec>, cancel: CancellationToken) -> Self {
        ProbeCollector {
            configured: ConfiguredPeers::new(prober.clone(), cancel),
            prober,
            peers,
        }
    }

    /// The handle a reload replaces the configured peers through.
    pub fn configured(&self) -> ConfiguredPeers {
        self.configured.clone()
    }
}

impl Collect for ProbeCollector {
    fn name(&self) -> Name {
        Name::Probe
    }

    fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(PeerFamilies::new(self.prober.peers().clone())));
    }
}

impl Tasks for ProbeCollector {
    fn start(self: Box<Self>) {
        self.configured.apply(&self.peers);
        if !self.peers.is_empty() {
            info!(peers = self.peers.len(), "probing configured peers");
        }
    }
}
