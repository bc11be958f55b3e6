//! Which peers get probed: the configured ones from the start, and the peer of each running
//! migration while it runs ([`Discoverer`], called from the netdev thread once per reading).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::discovery;
use super::peers::{DiscoveredPeer, Origin, PeerState, ProbeKey, KEEP_DISCOVERED};
use super::probe::{PeerSpec, ProbeSpec, Prober};
use super::routes;
use crate::state::{CollectorStatus, SharedState};

/// The collector name of migration-peer discovery.
pub const DISCOVERY_COLLECTOR: &str = "discovery";

/// Look for the peers of running migrations whenever the sampler says the running jobs changed
/// (`changed`), and at least every `interval`, until `stop` is set.
pub fn run_discovery(
    mut d: Discoverer,
    state: SharedState,
    changed: Receiver<()>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let jobs: Vec<(String, String)> = state
            .lock()
            .active
            .iter()
            .map(|j| (j.domain.name.clone(), j.domain.uuid.clone()))
            .collect();
        let t = Instant::now();
        let ok = d.tick(&jobs);
        state.lock().collectors.insert(
            DISCOVERY_COLLECTOR,
            CollectorStatus {
                success: ok,
                duration_seconds: t.elapsed().as_secs_f64(),
            },
        );
        match changed.recv_timeout(interval) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            // The sampler is gone: the exporter is stopping.
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Several changes at once need one pass.
        while changed.try_recv().is_ok() {}
    }
}

/// Spawn the probes of one peer; returns their keys.
pub fn spawn_peer(
    prober: &Prober,
    rt: &tokio::runtime::Handle,
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
            prober.spawn(rt, key.clone(), peer.address, *spec, cancel.clone());
            key
        })
        .collect()
}

/// Probes of one discovered address, shared by the migrations that go there.
struct Running {
    cancel: CancellationToken,
    keys: Vec<ProbeKey>,
    uuids: HashSet<String>,
}

/// Finds the peers of running migrations and probes them while they run.
pub struct Discoverer {
    procfs: PathBuf,
    probes: Vec<ProbeSpec>,
    prober: Prober,
    rt: tokio::runtime::Handle,
    peers: PeerState,
    cancel: CancellationToken,
    /// QEMU pid by domain uuid.
    pids: HashMap<String, u32>,
    running: HashMap<IpAddr, Running>,
}

impl Discoverer {
    pub fn new(
        procfs: PathBuf,
        probes: Vec<ProbeSpec>,
        prober: Prober,
        rt: tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> Self {
        Discoverer {
            procfs,
            probes,
            peers: prober.peers().clone(),
            prober,
            rt,
            cancel,
            pids: HashMap::new(),
            running: HashMap::new(),
        }
    }

    /// One pass over the running jobs `(name, uuid)`: start probing the peers of new ones, stop
    /// probing peers nobody migrates to any more. Returns false when procfs is unreadable.
    pub fn tick(&mut self, jobs: &[(String, String)]) -> bool {
        let ok = std::fs::metadata(&self.procfs).is_ok();
        let live: HashSet<&str> = jobs.iter().map(|(_, u)| u.as_str()).collect();
        for (name, uuid) in jobs {
            let known = self
                .peers
                .lock()
                .discovered
                .get(uuid)
                .is_some_and(|d| d.active);
            if known {
                continue;
            }
            // The pid is remembered only while it still is this domain's QEMU.
            let pid = match self.pids.get(uuid) {
                Some(p) if discovery::cmdline_has_uuid(&self.procfs, *p, uuid) => Some(*p),
                _ => discovery::find_qemu_pid(&self.procfs, uuid),
            };
            let Some(pid) = pid else { continue };
            self.pids.insert(uuid.clone(), pid);
            let Some(address) = discovery::peer_of_pid(&self.procfs, pid) else {
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
                let keys = spawn_peer(&self.prober, &self.rt, &peer, Origin::Discovered, &cancel);
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
        for (uuid, address) in ended {
            self.pids.remove(&uuid);
            let done = self.running.get_mut(&address).is_some_and(|r| {
                r.uuids.remove(&uuid);
                r.uuids.is_empty()
            });
            if done {
                if let Some(r) = self.running.remove(&address) {
                    r.cancel.cancel();
                    for k in &r.keys {
                        self.peers.retire(k);
                    }
                }
            }
        }
        ok
    }
}
