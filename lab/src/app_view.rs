//! What a run's application saw, for plots: each probe the exporter made of the guest's service
//! (its `app probe` debug log lines) and the moment the source paused the guest (libvirt's
//! "suspended: migrated" or "suspended: post-copy" event in the exporter's trace).

use serde::{Deserialize, Serialize};

/// One probe of the guest's service.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppProbe {
    /// Seconds since `virsh migrate` started.
    pub t: f64,
    pub latency_s: f64,
    pub good: bool,
}

/// libvirt's lifecycle codes: SUSPENDED, and its MIGRATED and POSTCOPY details.
const SUSPENDED: i64 = 3;
const SUSPENDED_MIGRATED: i64 = 1;
const SUSPENDED_POSTCOPY: i64 = 7;

/// The exporter's `app probe` log lines (logfmt), as times relative to `t0` (unix seconds).
pub fn probes_from_log(log: &str, t0: f64) -> Vec<AppProbe> {
    log.lines()
        .filter(|l| l.contains("message=\"app probe\""))
        .filter_map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            };
            Some(AppProbe {
                t: field("sent")?.parse::<f64>().ok()? - t0,
                latency_s: field("latency_ms")?.parse::<f64>().ok()? / 1e3,
                good: field("result")? == "success",
            })
        })
        .collect()
}

/// Unix time of the first pause of the guest for its switch-over (or post-copy) in an exporter
/// trace (JSON lines).
pub fn switchover_from_trace(trace: &str) -> Option<f64> {
    trace
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| {
            let e = &r["event"];
            r["record"] == "event"
                && e["kind"] == "lifecycle"
                && e["event"].as_i64() == Some(SUSPENDED)
                && matches!(
                    e["detail"].as_i64(),
                    Some(SUSPENDED_MIGRATED | SUSPENDED_POSTCOPY)
                )
        })
        .and_then(|r| r["t"].as_f64())
}

/// Unix time the migration job started as libvirt counts it: the first job sample in an
/// exporter trace less the job's `time_elapsed` then.
pub fn job_start_from_trace(trace: &str) -> Option<f64> {
    trace
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["record"] == "job")
        .find_map(|r| Some(r["t"].as_f64()? - r["job"]["params"]["time_elapsed"].as_f64()? / 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lines_become_relative_times() {
        let log = "ts=2026-11-27T20:20:00Z level=debug target=vm_migration_exporter::app::collector message=\"app probe\" domain=g target=http sent=1000.5 latency_ms=2.5 result=success\n\
                   ts=2026-11-27T20:20:00Z level=debug target=log message=\"starting new connection\"\n\
                   ts=2026-11-27T20:20:01Z level=debug target=vm_migration_exporter::app::collector message=\"app probe\" domain=g target=http sent=1001 latency_ms=1001.6 result=timeout\n\
                   ts=2026-11-27T20:20:01Z level=debug message=\"app probe\" sent=oops latency_ms=1 result=success\n";
        let p = probes_from_log(log, 1000.0);
        assert_eq!(
            p,
            vec![
                AppProbe {
                    t: 0.5,
                    latency_s: 0.0025,
                    good: true
                },
                AppProbe {
                    t: 1.0,
                    latency_s: 1.0016,
                    good: false
                },
            ]
        );
    }

    #[test]
    fn the_first_migration_pause_is_the_switch_over() {
        let trace = r#"{"record":"round","t":1.0,"domains":[]}
{"record":"event","t":2.0,"event":{"kind":"lifecycle","domain":{"name":"g","uuid":"u"},"event":3,"detail":0}}
{"record":"event","t":3.5,"event":{"kind":"lifecycle","domain":{"name":"g","uuid":"u"},"event":3,"detail":7}}
{"record":"event","t":4.0,"event":{"kind":"lifecycle","domain":{"name":"g","uuid":"u"},"event":3,"detail":1}}
not json"#;
        assert_eq!(switchover_from_trace(trace), Some(3.5));
        assert_eq!(switchover_from_trace("{}"), None);
    }

    #[test]
    fn the_job_start_is_the_first_sample_less_its_elapsed_time() {
        let trace = r#"{"record":"job","t":100.0,"domain":{"name":"g"},"job":null}
{"record":"job","t":101.5,"domain":{"name":"g"},"job":{"job_type":2,"params":{"time_elapsed":385}}}
{"record":"job","t":102.5,"domain":{"name":"g"},"job":{"job_type":2,"params":{"time_elapsed":1385}}}"#;
        let t = job_start_from_trace(trace).expect("a job sample");
        assert!((t - 101.115).abs() < 1e-9, "{t}");
        assert_eq!(
            job_start_from_trace(r#"{"record":"job","t":1.0,"job":null}"#),
            None
        );
    }
}
