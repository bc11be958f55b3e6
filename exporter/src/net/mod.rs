//! The network path: NIC counters and link state ([`netdev`]), probes of peer hosts
//! ([`probe`], state in [`peers`]) and the peer of each running migration ([`discovery`],
//! [`probing`]).

pub mod discovery;
pub mod netdev;
pub mod peer_metrics;
pub mod peers;
pub mod probe;
pub mod probing;
pub mod routes;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::warn;

use crate::clock::unix_now;
use crate::state::{CollectorStatus, SharedState};
use netdev::{Netdev, TxHistory};

/// The collector name in `vm_migration_collector_*`.
pub const NETDEV_COLLECTOR: &str = "netdev";

/// Read NIC counters every `interval` into the shared state and the transmit history, until
/// `stop` is set. Scrapes encode the latest reading.
pub fn run_netdev(
    netdev: Netdev,
    interval: Duration,
    state: SharedState,
    history: Arc<Mutex<TxHistory>>,
    stop: Arc<AtomicBool>,
) {
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = netdev.read();
        let now = unix_now();
        let ok = result.is_ok();
        match result {
            Ok(devices) => {
                history.lock().push(now, &devices);
                state.lock().netdev = devices;
                warned = false;
            }
            Err(e) if !warned => {
                warn!(error = %e, "cannot read NIC counters (check --path.procfs)");
                warned = true;
            }
            Err(_) => {}
        }
        state.lock().collectors.insert(
            NETDEV_COLLECTOR,
            CollectorStatus {
                success: ok,
                duration_seconds: started.elapsed().as_secs_f64(),
            },
        );
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}
