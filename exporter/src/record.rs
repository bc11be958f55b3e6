//! The parts of a finished-migration record and the labels they carry: plain data shared by the
//! tracker (which fills them), the network side (which summarises itself into them), the store
//! and the encoders. A leaf: it depends on nothing in the crate, so none of those depend on each
//! other through it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Pre-copy or post-copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Precopy,
    Postcopy,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Precopy => "precopy",
            Phase::Postcopy => "postcopy",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Failed,
    Aborted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Aborted => "aborted",
        }
    }
}

/// Where the figures of a finished migration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FigureSource {
    /// The `JOB_COMPLETED` event's parameters.
    Event,
    /// Completed stats kept by libvirt, read with `KEEP_COMPLETED`.
    CompletedStats,
    /// The last live sample (libvirt gave no final figures).
    LastSample,
}

/// Which side of the migration this host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Out,
    In,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// What the network did while a migration ran: the busiest transmitting device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkSummary {
    pub device: String,
    pub peak_tx_bytes_per_second: f64,
    pub mean_tx_bytes_per_second: f64,
    pub link_speed_bytes_per_second: Option<f64>,
    /// Mean transmit rate ÷ link speed.
    pub mean_link_share: Option<f64>,
}

/// Where a probed peer came from (the `origin` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// From `--probe.peer` or the config file's `probe.peers`.
    Config,
    /// Found from a running migration's socket.
    Discovered,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Discovered => "discovered",
        }
    }
}

/// The peer of a migration as its probes saw it, for the finished-migration record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerSummary {
    /// A configured peer's name, or the discovered address.
    pub peer: String,
    pub address: IpAddr,
    pub origin: Origin,
    /// The probe the figures come from (`icmp` when it ran, else `tcp`).
    pub probe: String,
    /// The device whose route leads to the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Probes sent while the migration ran.
    pub probes: u64,
    pub rtt_median_seconds: Option<f64>,
    /// Probes without an answer ÷ all probes.
    pub loss_ratio: Option<f64>,
}

/// Median and 99th percentile of the latencies in one window, seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub probes: u64,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// The application's view of one migration, for the migration record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppMigrationRecord {
    pub target: String,
    pub probes: u64,
    pub failures: u64,
    /// The longest outage that overlapped the migration (0 when none).
    pub outage_seconds: f64,
    /// When that outage began, relative to the switch-over (negative: before it); absent when
    /// there was no outage or no switch-over was seen.
    pub outage_start_from_switchover_seconds: Option<f64>,
    /// Unix time that outage began (absent when there was none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_started_at: Option<f64>,
    pub latency_before: LatencySummary,
    pub latency_during: LatencySummary,
    pub latency_after: LatencySummary,
    /// Of the "during" probes, those sent from the switch-over (or the switch to post-copy) to
    /// the end: what users saw while the guest ran on the destination faulting pages in.
    #[serde(default)]
    pub latency_after_switchover: LatencySummary,
    /// App-observed outage ÷ libvirt's downtime, when both are known and the downtime is not 0.
    pub outage_to_downtime_ratio: Option<f64>,
}

/// Who a domain is to OpenStack, from Nova's metadata (`crate::jobs::identity`): the labels of
/// `vm_migration_domain_info` besides `domain` and `uuid`; empty where Nova wrote nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DomainIdentity {
    /// The instance's name in Nova (the libvirt name is `instance-0000…`).
    pub name: String,
    pub project_id: String,
    pub project_name: String,
    pub user_id: String,
    pub user_name: String,
    pub flavor: String,
}
