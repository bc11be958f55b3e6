//! A typed view of libvirt job statistics (`virDomainGetJobStats` / `JOB_COMPLETED` params).
//!
//! Every field is optional: libvirt only sends what the hypervisor reported, and a field that is
//! absent must stay absent in `/metrics` rather than read as zero.

use crate::libvirt::jobs::{job_operation, job_type, Params, RawJob};
pub use crate::record::Direction;

/// Page size assumed when libvirt does not say (`memory_page_size` appeared in 3.9.0).
const DEFAULT_PAGE_SIZE: u64 = 4096;

/// The job statistics the exporter uses, in libvirt's units (bytes, milliseconds, pages/s).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobStats {
    pub job_type: i32,
    pub operation: Option<u64>,
    pub time_elapsed_ms: Option<u64>,
    pub time_remaining_ms: Option<u64>,
    /// Expected downtime while running; the real downtime once completed.
    pub downtime_ms: Option<u64>,
    pub setup_time_ms: Option<u64>,
    pub data_total: Option<u64>,
    pub data_processed: Option<u64>,
    pub data_remaining: Option<u64>,
    pub memory_total: Option<u64>,
    pub memory_processed: Option<u64>,
    pub memory_remaining: Option<u64>,
    pub memory_bps: Option<u64>,
    /// Pages per second, as libvirt reports it.
    pub memory_dirty_rate_pages: Option<u64>,
    pub memory_page_size: Option<u64>,
    pub memory_iteration: Option<u64>,
    pub memory_postcopy_requests: Option<u64>,
    /// Percent (0..100).
    pub auto_converge_throttle: Option<u64>,
    pub disk_total: Option<u64>,
    pub disk_processed: Option<u64>,
    pub disk_remaining: Option<u64>,
    /// Completed jobs only (libvirt 6.0+).
    pub success: Option<bool>,
    pub errmsg: Option<String>,
}

impl JobStats {
    pub fn from_raw(raw: &RawJob) -> Self {
        Self::from_params(raw.job_type, &raw.params)
    }

    pub fn from_params(job_type: i32, p: &Params) -> Self {
        let u = |k: &str| p.get(k).and_then(|v| v.as_u64());
        JobStats {
            job_type,
            operation: u("operation"),
            time_elapsed_ms: u("time_elapsed"),
            time_remaining_ms: u("time_remaining"),
            downtime_ms: u("downtime"),
            setup_time_ms: u("setup_time"),
            data_total: u("data_total"),
            data_processed: u("data_processed"),
            data_remaining: u("data_remaining"),
            memory_total: u("memory_total"),
            memory_processed: u("memory_processed"),
            memory_remaining: u("memory_remaining"),
            memory_bps: u("memory_bps"),
            memory_dirty_rate_pages: u("memory_dirty_rate"),
            memory_page_size: u("memory_page_size"),
            memory_iteration: u("memory_iteration"),
            memory_postcopy_requests: u("memory_postcopy_requests"),
            auto_converge_throttle: u("auto_converge_throttle"),
            disk_total: u("disk_total"),
            disk_processed: u("disk_processed"),
            disk_remaining: u("disk_remaining"),
            success: p.get("success").and_then(|v| v.as_bool()),
            errmsg: match p.get("errmsg") {
                Some(crate::libvirt::ParamValue::Str(s)) => Some(s.clone()),
                _ => None,
            },
        }
    }

    /// A job that is still running (bounded or unbounded).
    pub fn is_running(&self) -> bool {
        matches!(self.job_type, job_type::BOUNDED | job_type::UNBOUNDED)
    }

    /// Dirty rate in bytes per second (libvirt reports pages per second).
    pub fn dirty_rate_bytes(&self) -> Option<u64> {
        let pages = self.memory_dirty_rate_pages?;
        Some(pages.saturating_mul(self.memory_page_size.unwrap_or(DEFAULT_PAGE_SIZE)))
    }

    pub fn direction(&self) -> Direction {
        match self.operation {
            Some(job_operation::MIGRATION_IN) => Direction::In,
            _ => Direction::Out,
        }
    }

    /// Whether the job is a migration (or libvirt did not say what it is).
    pub fn is_migration(&self) -> bool {
        matches!(
            self.operation,
            None | Some(job_operation::MIGRATION_IN) | Some(job_operation::MIGRATION_OUT)
        )
    }

    pub fn operation_label(&self) -> &'static str {
        operation_label(self.operation)
    }
}

/// `virDomainJobOperation` as a label value.
pub fn operation_label(op: Option<u64>) -> &'static str {
    match op {
        Some(1) => "start",
        Some(2) => "save",
        Some(3) => "restore",
        Some(job_operation::MIGRATION_IN) => "migration_in",
        Some(job_operation::MIGRATION_OUT) => "migration_out",
        Some(6) => "snapshot",
        Some(7) => "snapshot_revert",
        Some(8) => "dump",
        Some(9) => "backup",
        Some(10) => "snapshot_delete",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::ParamValue;

    #[test]
    fn dirty_rate_is_pages_times_page_size() {
        let mut p = Params::new();
        p.insert("memory_dirty_rate".into(), ParamValue::UInt(1000));
        p.insert("memory_page_size".into(), ParamValue::UInt(4096));
        let s = JobStats::from_params(job_type::UNBOUNDED, &p);
        assert_eq!(s.dirty_rate_bytes(), Some(4_096_000));
        assert!(s.is_running());
    }

    #[test]
    fn absent_fields_stay_absent() {
        let s = JobStats::from_params(job_type::COMPLETED, &Params::new());
        assert_eq!(s.data_remaining, None);
        assert_eq!(s.dirty_rate_bytes(), None);
        assert!(!s.is_running());
        assert_eq!(s.direction(), Direction::Out);
    }

    #[test]
    fn operation_decides_direction_and_label() {
        let mut p = Params::new();
        p.insert("operation".into(), ParamValue::Int(4));
        let s = JobStats::from_params(job_type::COMPLETED, &p);
        assert_eq!(s.direction(), Direction::In);
        assert_eq!(s.operation_label(), "migration_in");
        assert!(s.is_migration());
        p.insert("operation".into(), ParamValue::Int(8));
        assert!(!JobStats::from_params(job_type::UNBOUNDED, &p).is_migration());
    }
}
