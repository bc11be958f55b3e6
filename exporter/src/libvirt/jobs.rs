//! The job-source seam: what the sampler needs from libvirt, as plain data.
//!
//! The real implementation lives in `conn.rs`; tests use the trace module's `ReplaySource`, driven
//! by job-stat traces recorded from real migrations. Keeping the seam as plain data (typed
//! parameters as a map) means a trace records exactly what libvirt said, nothing interpreted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One libvirt typed parameter value (`virTypedParameter`), as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    UInt(u64),
    Int(i64),
    Double(f64),
    Str(String),
}

impl ParamValue {
    /// The value as an unsigned integer, when it is a non-negative number.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            ParamValue::UInt(v) => Some(v),
            ParamValue::Int(v) => u64::try_from(v).ok(),
            ParamValue::Double(v) if v >= 0.0 && v.is_finite() => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            ParamValue::Bool(v) => Some(v),
            ParamValue::UInt(v) => Some(v != 0),
            ParamValue::Int(v) => Some(v != 0),
            _ => None,
        }
    }
}

/// Typed parameters of one `virDomainGetJobStats` answer or `JOB_COMPLETED` event.
pub type Params = BTreeMap<String, ParamValue>;

/// `virDomainJobType`.
pub mod job_type {
    pub const NONE: i32 = 0;
    pub const BOUNDED: i32 = 1;
    pub const UNBOUNDED: i32 = 2;
    pub const COMPLETED: i32 = 3;
    pub const FAILED: i32 = 4;
    pub const CANCELLED: i32 = 5;
}

/// `virDomainJobOperation` values that matter here.
pub mod job_operation {
    pub const MIGRATION_IN: u64 = 4;
    pub const MIGRATION_OUT: u64 = 5;
}

/// `virDomainEventType` and the details we act on.
pub mod lifecycle {
    /// Defined or redefined (Nova rewrites its metadata this way too).
    pub const DEFINED: i32 = 0;
    pub const SUSPENDED: i32 = 3;
    pub const RESUMED: i32 = 4;
    pub const STOPPED: i32 = 5;
    pub const SUSPENDED_MIGRATED: i32 = 1;
    pub const SUSPENDED_POSTCOPY: i32 = 7;
    pub const SUSPENDED_POSTCOPY_FAILED: i32 = 8;
    pub const RESUMED_MIGRATED: i32 = 1;
    pub const RESUMED_POSTCOPY: i32 = 3;
    pub const STOPPED_DESTROYED: i32 = 2;
    pub const STOPPED_MIGRATED: i32 = 3;
    pub const STOPPED_FAILED: i32 = 5;
}

/// A domain as libvirt names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DomainId {
    pub name: String,
    pub uuid: String,
}

/// The raw answer of `virDomainGetJobStats`: job type plus typed parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawJob {
    pub job_type: i32,
    pub params: Params,
}

/// Domain events the exporter subscribes to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DomainEvent {
    /// `VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION`: a new pass over memory started.
    Iteration { domain: DomainId, iteration: i64 },
    /// `VIR_DOMAIN_EVENT_ID_JOB_COMPLETED`: the final statistics of the job.
    JobCompleted { domain: DomainId, params: Params },
    /// `VIR_DOMAIN_EVENT_ID_LIFECYCLE`.
    Lifecycle {
        domain: DomainId,
        event: i32,
        detail: i32,
    },
    /// `VIR_DOMAIN_EVENT_ID_METADATA_CHANGE` for an element in namespace `uri`.
    MetadataChange {
        domain: DomainId,
        uri: Option<String>,
    },
}

impl DomainEvent {
    pub fn domain(&self) -> &DomainId {
        match self {
            DomainEvent::Iteration { domain, .. }
            | DomainEvent::JobCompleted { domain, .. }
            | DomainEvent::Lifecycle { domain, .. }
            | DomainEvent::MetadataChange { domain, .. } => domain,
        }
    }
}

/// What a connection tells the sampler besides answers to calls.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// The connection is (re)established; event callbacks are registered.
    Connected,
    /// The connection was lost; the source is retrying with backoff.
    Disconnected {
        reason: String,
    },
    Domain(DomainEvent),
}

/// One call of the job source. Its [`Call::label`] is the word errors use and the `call` label
/// of `vm_migration_libvirt_call_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    ListDomains,
    JobStats,
    CompletedJobStats,
    MaxDowntime,
    Metadata,
    DomainStats,
    StartDirtyRateCalc,
    MaxSpeed,
}

impl Call {
    pub fn label(self) -> &'static str {
        match self {
            Call::ListDomains => "list_domains",
            Call::JobStats => "job_stats",
            Call::CompletedJobStats => "completed_job_stats",
            Call::MaxDowntime => "migrate_get_max_downtime",
            Call::Metadata => "get_metadata",
            Call::DomainStats => "get_all_domain_stats",
            Call::StartDirtyRateCalc => "start_dirty_rate_calc",
            Call::MaxSpeed => "migrate_get_max_speed",
        }
    }

    /// The libvirt function behind it (a domain lookup comes first for all but `ListDomains`).
    pub fn function(self) -> &'static str {
        match self {
            Call::ListDomains => "virConnectListAllDomains",
            Call::JobStats | Call::CompletedJobStats => "virDomainGetJobStats",
            Call::MaxDowntime => "virDomainMigrateGetMaxDowntime",
            Call::Metadata => "virDomainGetMetadata",
            Call::DomainStats => "virConnectGetAllDomainStats",
            Call::StartDirtyRateCalc => "virDomainStartDirtyRateCalc",
            Call::MaxSpeed => "virDomainMigrateGetMaxSpeed",
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.label(), self.function())
    }
}

/// Why a call to the job source failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SourceError {
    #[error("libvirt is not connected: {0}")]
    NotConnected(String),
    /// The domain went away between listing and asking (common at migration switch-over).
    #[error("domain {0} no longer exists")]
    NoDomain(String),
    /// The driver does not implement the call (e.g. job stats on `test:///`): nothing to see.
    #[error("libvirt call {call} is not supported by this driver: {message}")]
    Unsupported { call: Call, message: String },
    #[error("libvirt call {call} failed: {message}")]
    Call { call: Call, message: String },
}

impl SourceError {
    /// The call that failed, when libvirt answered with an error.
    pub fn call(&self) -> Option<Call> {
        match self {
            SourceError::Unsupported { call, .. } | SourceError::Call { call, .. } => Some(*call),
            SourceError::NotConnected(_) | SourceError::NoDomain(_) => None,
        }
    }
}

/// What the sampler needs from libvirt. All calls may block; the sampler runs them off the
/// async runtime, and `/metrics` never waits on them.
pub trait JobSource: Send + Sync {
    /// Whether the connection is currently open.
    fn is_connected(&self) -> bool;
    /// Active (running or paused) domains.
    fn list_domains(&self) -> Result<Vec<DomainId>, SourceError>;
    /// The current job of a domain; `None` when it has no job (`VIR_DOMAIN_JOB_NONE`).
    fn job_stats(&self, domain: &DomainId) -> Result<Option<RawJob>, SourceError>;
    /// Statistics of the last completed job, read with `COMPLETED | KEEP_COMPLETED` so that
    /// they stay there for Nova and `virsh domjobinfo --completed`.
    fn completed_job_stats(&self, domain: &DomainId) -> Result<Option<RawJob>, SourceError>;
    /// `virDomainMigrateGetMaxDowntime` in milliseconds; `None` when libvirt refuses
    /// (for example on a read-only connection to an older libvirt).
    fn max_downtime_ms(&self, domain: &DomainId) -> Result<Option<u64>, SourceError>;
    /// The domain's metadata element in namespace `uri` (`virDomainGetMetadata`), `None` when
    /// it has none. Sources without metadata (recorded traces) have none.
    fn metadata(&self, _domain: &DomainId, _uri: &str) -> Result<Option<String>, SourceError> {
        Ok(None)
    }
    /// Dirty-rate and balloon statistics of the running domains
    /// (`virConnectGetAllDomainStats(DIRTYRATE | BALLOON)`), as typed parameters. Sources
    /// without them (recorded traces) have none.
    fn domain_stats(&self) -> Result<Vec<(DomainId, Params)>, SourceError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_call_as_the_metric_label_does() {
        for call in [
            Call::ListDomains,
            Call::JobStats,
            Call::CompletedJobStats,
            Call::MaxDowntime,
            Call::Metadata,
            Call::DomainStats,
            Call::StartDirtyRateCalc,
            Call::MaxSpeed,
        ] {
            let e = SourceError::Call {
                call,
                message: "boom".into(),
            };
            assert_eq!(e.call(), Some(call));
            let text = e.to_string();
            assert!(
                text.contains(&format!("libvirt call {} ", call.label()))
                    && text.contains(call.function()),
                "{text}"
            );
        }
        assert_eq!(SourceError::NoDomain("g".into()).call(), None);
    }
}
