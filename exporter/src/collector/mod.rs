//! The collector seam: every source of series is a [`Collect`], and one [`Runner`] owns their
//! threads and tasks, stops them, and keeps `vm_migration_collector_success` and
//! `vm_migration_collector_duration_seconds` for each (node_exporter's `execute()`).
//!
//! Two ways to run:
//! - [`Rounds`]: a round on a thread of its own, every [`Rounds::period`] and at once when its
//!   [`Waker`] fires; libvirt's events, if the collector takes any, on a second thread
//!   ([`Events`]). The runner times each round.
//! - [`Tasks`]: async tasks on the runtime (the probes, each on its own interval). A round is
//!   complete when every member has reported once since it began; [`TaskRounds`] times it.
//!
//! Adding a collector: a [`Name`], a type implementing [`Collect`] and one of the two, its
//! families registered in [`Collect::register`], a [`Registration`] in its own file, and that
//! registration in the daemon's list (one line).

pub mod registry;
pub mod runner;

pub use registry::{Deps, Registration};
pub use runner::{execute, Feed, Runner, Running, TaskRounds, Timed, Waker};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::registry::Registry;

/// Every collector, named once: the `collector` label and `--collector.<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Name {
    Jobs,
    Netdev,
    Discovery,
    Probe,
    App,
    Forecast,
}

impl Name {
    /// In the order the runner starts them.
    pub const ALL: [Name; 6] = [
        Name::Jobs,
        Name::Netdev,
        Name::Discovery,
        Name::Probe,
        Name::App,
        Name::Forecast,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Name::Jobs => "jobs",
            Name::Netdev => "netdev",
            Name::Discovery => "discovery",
            Name::Probe => "probe",
            Name::App => "app",
            Name::Forecast => "forecast",
        }
    }

    /// What it collects, for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            Name::Jobs => "libvirt migration jobs: live progress, convergence, finished migrations",
            Name::Netdev => "NIC counters and link state (--path.procfs, --path.sysfs)",
            Name::Discovery => {
                "the peer of each running migration, from QEMU's migration socket (needs probe)"
            }
            Name::Probe => "ICMP/TCP probes of configured and discovered peers",
            Name::App => "HTTP/TCP probes of guest services (the config file's app: section), fast while the guest migrates",
            Name::Forecast => "per-domain migratability forecast and host evacuation plan (dirty rates: libvirt's domain statistics and records; calculations only with --forecast.enable)",
        }
    }
}

/// The last round of one collector.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CollectorStatus {
    pub success: bool,
    pub duration_seconds: f64,
}

/// The last round of every collector that ran one, by name; the runner writes, scrapes read.
#[derive(Clone, Debug, Default)]
pub struct Statuses(Arc<Mutex<BTreeMap<&'static str, CollectorStatus>>>);

impl Statuses {
    fn set(&self, name: Name, success: bool, took: Duration) {
        self.set_label(name.as_str(), success, took);
    }

    /// For what reports under a label of its own but is no [`Name`] (self-metrics, discovery's
    /// probes).
    fn set_label(&self, label: &'static str, success: bool, took: Duration) {
        self.0.lock().insert(
            label,
            CollectorStatus {
                success,
                duration_seconds: took.as_secs_f64(),
            },
        );
    }

    pub fn get(&self, name: Name) -> Option<CollectorStatus> {
        self.0.lock().get(name.as_str()).copied()
    }

    /// By name (the order `/metrics` lists them in).
    pub fn all(&self) -> Vec<(&'static str, CollectorStatus)> {
        self.0.lock().iter().map(|(n, s)| (*n, *s)).collect()
    }
}

/// Why a round failed: the collector exports `collector_success 0`.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CollectError(Box<dyn std::error::Error + Send + Sync>);

impl CollectError {
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        CollectError(e.into())
    }
}

/// What every collector says about itself.
pub trait Collect: Send + 'static {
    fn name(&self) -> Name;
    /// Register the families it exports (their encoders read what its rounds publish).
    fn register(&self, _registry: &mut Registry) {}
}

/// A collector that works in rounds on a thread of its own.
pub trait Rounds: Collect {
    /// One round: read and publish. Blocking calls are fine: scrapes never wait on it.
    fn round(&mut self) -> Result<(), CollectError>;
    /// How long to wait after a round before the next, unless woken.
    fn period(&self) -> Duration;
    /// Events to handle between rounds, on a second thread (taken once, at start).
    fn events(&mut self) -> Option<Box<dyn Events>> {
        None
    }
}

/// What one wait for an event gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing arrived in time.
    Idle,
    /// One event handled; `round_now` asks for a round at once.
    Handled { round_now: bool },
    /// The source is down: the collector fails until its next round says otherwise.
    Failed,
    /// The event source is gone.
    Closed,
}

/// The event side of a [`Rounds`] collector.
pub trait Events: Send + 'static {
    /// Wait up to `timeout` for one event and handle it.
    fn next(&mut self, timeout: Duration) -> Event;
}

/// A collector whose work is async tasks, started once; they run until the runner's token is
/// cancelled and report their rounds through the [`TaskRounds`] they were built with.
pub trait Tasks: Collect {
    fn start(self: Box<Self>);
}
