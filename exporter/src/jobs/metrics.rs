//! The exporter's own families, the jobs collector's and the finished-migration ones. Other
//! collectors declare theirs next to their parsers (`netdev`, `peers::metrics`) and
//! register them through the runner ([`crate::collector`]).
//!
//! Two kinds here: cumulative metrics of finished migrations (counters, histograms, `last_*` gauges)
//! live in the registry and are updated as migrations finish; live job gauges are produced at
//! encode time from the shared [`Snapshot`](crate::state::Snapshot) by [`LiveFamilies`], so a
//! job's series vanish the moment it is no longer running, with no stale series to clean up.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::collector::{Name, Statuses, Timed};
use crate::exposition::{GaugeFamily, Labels};
use crate::jobs::convergence::{Detail, Verdict};
use crate::jobs::tracker::{ActiveJob, FinishedMigration, Outcome, Phase};
use crate::libvirt::jobs::Call;
use crate::state::SharedState;

/// Downtime buckets: 5 ms .. 60 s.
pub const DOWNTIME_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Duration buckets: 1 s .. 1 h.
pub const DURATION_BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    pub outcome: &'static str,
    pub mode: &'static str,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DowntimeLabels {
    pub mode: &'static str,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabels {
    pub domain: String,
    pub uuid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub call: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn downtime_histogram() -> Histogram {
    Histogram::new(DOWNTIME_BUCKETS)
}

/// Registered metrics of finished migrations and libvirt call errors.
pub struct Metrics {
    pub finished: Family<FinishedLabels, Counter>,
    pub duration: Family<FinishedLabels, Histogram, fn() -> Histogram>,
    pub downtime: Family<DowntimeLabels, Histogram, fn() -> Histogram>,
    pub last_duration: Family<DomainLabels, FloatGauge>,
    pub last_downtime: Family<DomainLabels, FloatGauge>,
    pub last_finished: Family<DomainLabels, FloatGauge>,
    pub last_data_processed: Family<DomainLabels, FloatGauge>,
    pub last_iterations: Family<DomainLabels, FloatGauge>,
    pub call_errors: Family<CallLabels, Counter>,
    /// When each domain's `last_*` series were set (monotonic seconds, so an NTP step neither
    /// drops them early nor keeps them late), so series of domains that have long left the host
    /// can be dropped (a host sees many guests over months).
    last_set_at: parking_lot::Mutex<std::collections::HashMap<DomainLabels, f64>>,
}

impl Metrics {
    /// Build the registry: finished-migration metrics, build info and the live collector, and
    /// the process's own families.
    pub fn register(state: SharedState, statuses: Statuses) -> (Registry, std::sync::Arc<Metrics>) {
        Self::register_with(state, statuses, Vec::new())
    }

    /// [`Metrics::register`], with more self-metrics encoders: each (and the process's) timed
    /// under its label and encoded before the collector statuses, so a scrape shows its own.
    pub fn register_with(
        state: SharedState,
        statuses: Statuses,
        self_metrics: Vec<(&'static str, Box<dyn Collector>)>,
    ) -> (Registry, std::sync::Arc<Metrics>) {
        let mut reg = Registry::default();
        let m = Metrics {
            finished: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            downtime: Family::new_with_constructor(downtime_histogram as fn() -> Histogram),
            last_duration: Family::default(),
            last_downtime: Family::default(),
            last_finished: Family::default(),
            last_data_processed: Family::default(),
            last_iterations: Family::default(),
            call_errors: Family::default(),
            last_set_at: parking_lot::Mutex::new(std::collections::HashMap::new()),
        };
        // Pre-create every outcome × mode × direction, histograms included, so rate() has a zero to
        // start from: a series first seen at 1 shows no increase.
        for outcome in [Outcome::Completed, Outcome::Failed, Outcome::Aborted] {
            for mode in [Phase::Precopy, Phase::Postcopy] {
                for direction in ["out", "in"] {
                    let labels = FinishedLabels {
                        outcome: outcome.as_str(),
                        mode: mode.as_str(),
                        direction,
                    };
                    let _ = m.finished.get_or_create(&labels);
                    let _ = m.duration.get_or_create(&labels);
                    let _ = m.downtime.get_or_create(&DowntimeLabels {
                        mode: mode.as_str(),
                        direction,
                    });
                }
            }
        }
        reg.register(
            "vm_migration_finished",
            "Migrations finished on this host, by outcome (completed|failed|aborted), mode (precopy|postcopy) and direction (out: this host was the source, in: the destination)",
            m.finished.clone(),
        );
        reg.register(
            "vm_migration_duration_seconds",
            "Total time of finished migrations (libvirt time_elapsed)",
            m.duration.clone(),
        );
        reg.register(
            "vm_migration_downtime_seconds",
            "Guest pause of completed migrations as measured by libvirt (downtime)",
            m.downtime.clone(),
        );
        for (name, help, family) in m.last_families() {
            reg.register(name, help, family.clone());
        }
        reg.register(
            "vm_migration_libvirt_call_errors",
            "libvirt calls that failed, by call",
            m.call_errors.clone(),
        );
        let process: Box<dyn Collector> = Box::new(crate::process::ProcessFamilies::default());
        for (label, inner) in std::iter::once(("process", process)).chain(self_metrics) {
            reg.register_collector(Box::new(Timed {
                label,
                statuses: statuses.clone(),
                inner,
            }));
        }
        reg.register_collector(Box::new(LiveFamilies { state, statuses }));
        (reg, std::sync::Arc::new(m))
    }

    /// Count `f` and set its domain's `last_*` series; `at_mono` ([`crate::clock::mono_now`]
    /// seconds) is when, for their retention.
    /// The per-domain `last_*` families with their names and help: registered together,
    /// dropped together.
    fn last_families(
        &self,
    ) -> [(
        &'static str,
        &'static str,
        &Family<DomainLabels, FloatGauge>,
    ); 5] {
        [
            (
                "vm_migration_last_duration_seconds",
                "Total time of the last finished migration of the domain",
                &self.last_duration,
            ),
            (
                "vm_migration_last_downtime_seconds",
                "Downtime of the last completed migration of the domain",
                &self.last_downtime,
            ),
            (
                "vm_migration_last_finished_timestamp_seconds",
                "Unix time the last migration of the domain finished",
                &self.last_finished,
            ),
            (
                "vm_migration_last_data_processed_bytes",
                "Bytes sent by the last finished migration of the domain (libvirt data_processed)",
                &self.last_data_processed,
            ),
            (
                "vm_migration_last_iteration",
                "The memory pass the last finished migration of the domain ended in (libvirt memory_iteration), as vm_migration_iteration counts them",
                &self.last_iterations,
            ),
        ]
    }

    pub fn record_finished(&self, f: &FinishedMigration, at_mono: f64) {
        let labels = FinishedLabels {
            outcome: f.outcome.as_str(),
            mode: f.mode.as_str(),
            direction: f.direction.as_str(),
        };
        self.finished.get_or_create(&labels).inc();
        let dom = DomainLabels {
            domain: f.domain.name.clone(),
            uuid: f.domain.uuid.clone(),
        };
        if let Some(d) = f.duration_seconds {
            self.duration.get_or_create(&labels).observe(d);
            self.last_duration.get_or_create(&dom).set(d);
        }
        if let Some(d) = f.downtime_seconds {
            self.downtime
                .get_or_create(&DowntimeLabels {
                    mode: f.mode.as_str(),
                    direction: f.direction.as_str(),
                })
                .observe(d);
            self.last_downtime.get_or_create(&dom).set(d);
        }
        if let Some(b) = f.data_processed_bytes {
            self.last_data_processed.get_or_create(&dom).set(b as f64);
        }
        if let Some(i) = f.iterations {
            self.last_iterations.get_or_create(&dom).set(i as f64);
        }
        self.last_finished.get_or_create(&dom).set(f.finished_at);
        self.last_set_at.lock().insert(dom, at_mono);
    }

    /// Drop the `last_*` series of domains whose last migration was recorded before `before`
    /// (monotonic seconds). Returns how many domains were dropped.
    pub fn prune_last(&self, before: f64) -> usize {
        let mut set_at = self.last_set_at.lock();
        let old: Vec<DomainLabels> = set_at
            .iter()
            .filter(|(_, &t)| t < before)
            .map(|(d, _)| d.clone())
            .collect();
        for dom in &old {
            set_at.remove(dom);
            for (_, _, family) in self.last_families() {
                family.remove(dom);
            }
        }
        old.len()
    }

    pub fn call_error(&self, call: Call) {
        self.call_errors
            .get_or_create(&CallLabels { call: call.label() })
            .inc();
    }
}

/// Encodes the live state at scrape time.
#[derive(Debug)]
struct LiveFamilies {
    state: SharedState,
    statuses: Statuses,
}

fn secs(ms: Option<u64>) -> Option<f64> {
    ms.map(|v| v as f64 / 1000.0)
}

fn num(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

impl Collector for LiveFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.state.lock();

        let mut up = GaugeFamily::new(
            "vm_migration_libvirt_up",
            "Whether the libvirt connection is open (1) or not (0).",
        );
        up.push(vec![], Some(if snap.libvirt_up { 1.0 } else { 0.0 }));
        // node_exporter's rule: a collector whose last round failed, or whose rounds stopped
        // (a thread stuck in libvirt), exports none of its series rather than stale ones.
        let jobs_current = self.statuses.get(Name::Jobs).is_none_or(|s| s.success)
            && !snap.stuck(std::time::Instant::now());
        let mut domains = GaugeFamily::new(
            "vm_migration_domains_active",
            "Active (running or paused) domains seen by the last sample; absent while the jobs collector fails.",
        );
        domains.push(
            vec![],
            snap.domains_active
                .filter(|_| jobs_current)
                .map(|n| n as f64),
        );
        let mut age = GaugeFamily::new(
            "vm_migration_sample_age_seconds",
            "Seconds since the last successful sample of libvirt jobs.",
        );
        let mono = crate::clock::mono_now();
        age.push(vec![], snap.last_success_mono.map(|t| (mono - t).max(0.0)));
        let mut success = GaugeFamily::new(
            "vm_migration_collector_success",
            "Whether the collector's last run succeeded (1) or failed (0).",
        );
        let mut duration = GaugeFamily::new(
            "vm_migration_collector_duration_seconds",
            "How long the collector's last run took.",
        );
        for (name, st) in self.statuses.all() {
            let l = vec![("collector", name.to_string())];
            success.push(l.clone(), Some(if st.success { 1.0 } else { 0.0 }));
            duration.push(l, Some(st.duration_seconds));
        }
        let mut build = GaugeFamily::new(
            "vm_migration_exporter_build_info",
            "Build information of vm-migration-exporter; always 1.",
        );
        build.push(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                (
                    "revision",
                    option_env!("VM_MIGRATION_EXPORTER_REVISION")
                        .unwrap_or("unknown")
                        .to_string(),
                ),
            ],
            Some(1.0),
        );
        for f in [&up, &domains, &age, &success, &duration, &build] {
            f.encode(&mut encoder)?;
        }

        // Jobs (and the domains' identities) are only shown while libvirt answers and the
        // sampler keeps up: what we cannot see now is not presented as current.
        if snap.libvirt_up && jobs_current {
            encode_identities(&snap.identities, &mut encoder)?;
            encode_jobs(&snap.active, &mut encoder)?;
        }
        Ok(())
    }
}

/// `vm_migration_domain_info`: one series per listed domain, Nova's identity in its labels
/// (empty where the domain has none), for joins (`* on (uuid) group_left (name, project_name)`).
fn encode_identities(
    domains: &[(
        crate::libvirt::jobs::DomainId,
        Option<crate::record::DomainIdentity>,
    )],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mut info = GaugeFamily::new(
        "vm_migration_domain_info",
        "Active domains on this host with who they are to OpenStack (Nova's instance metadata: name, project, user, flavor; empty where absent); always 1.",
    );
    let none = crate::record::DomainIdentity::default();
    for (d, id) in domains {
        let id = id.as_ref().unwrap_or(&none);
        info.push(
            vec![
                ("domain", d.name.clone()),
                ("uuid", d.uuid.clone()),
                ("name", id.name.clone()),
                ("project_id", id.project_id.clone()),
                ("project_name", id.project_name.clone()),
                ("user_id", id.user_id.clone()),
                ("user_name", id.user_name.clone()),
                ("flavor", id.flavor.clone()),
            ],
            Some(1.0),
        );
    }
    info.encode(encoder)
}

type Extract = fn(&ActiveJob) -> Option<f64>;

/// Per-job gauges labelled `domain`, `uuid`: name, help, value (absent → no series).
const JOB_GAUGES: &[(&str, &str, Extract)] = &[
    ("vm_migration_elapsed_seconds", "Time since the job started (libvirt time_elapsed).", |j| secs(j.stats.time_elapsed_ms)),
    ("vm_migration_data_total_bytes", "Total data to transfer as libvirt estimates it (data_total).", |j| num(j.stats.data_total)),
    ("vm_migration_data_processed_bytes", "Data transferred so far (data_processed).", |j| num(j.stats.data_processed)),
    ("vm_migration_data_remaining_bytes", "Data still to transfer (data_remaining).", |j| num(j.stats.data_remaining)),
    ("vm_migration_memory_total_bytes", "Guest memory to migrate (memory_total).", |j| num(j.stats.memory_total)),
    ("vm_migration_memory_processed_bytes", "Memory transferred so far, pages sent again included (memory_processed).", |j| num(j.stats.memory_processed)),
    ("vm_migration_memory_remaining_bytes", "Memory still to transfer (memory_remaining).", |j| num(j.stats.memory_remaining)),
    ("vm_migration_dirty_memory_rate_bytes_per_second", "Rate the guest dirties memory, bytes per second (memory_dirty_rate x page size).", |j| num(j.stats.dirty_rate_bytes())),
    ("vm_migration_memory_transfer_rate_bytes_per_second", "Rate memory is transferred, bytes per second (memory_bps).", |j| num(j.stats.memory_bps)),
    ("vm_migration_iteration", "Current pass over guest memory (memory_iteration, or the latest MIGRATION_ITERATION event if newer).", |j| num(iteration(j))),
    ("vm_migration_expected_downtime_seconds", "Downtime QEMU expects if it switched over now (downtime of a running job).", |j| secs(j.stats.downtime_ms)),
    ("vm_migration_max_downtime_seconds", "Maximum tolerated downtime set for the migration (virDomainMigrateGetMaxDowntime).", |j| secs(j.max_downtime_ms)),
    ("vm_migration_auto_converge_throttle_ratio", "Guest CPU throttle applied by auto-converge, 0..1.", |j| j.stats.auto_converge_throttle.map(|p| p as f64 / 100.0)),
    ("vm_migration_setup_seconds", "Time spent setting up the migration before data flowed (setup_time).", |j| secs(j.stats.setup_time_ms)),
    ("vm_migration_disk_total_bytes", "Disk data to transfer for non-shared storage (disk_total).", |j| num(j.stats.disk_total)),
    ("vm_migration_disk_processed_bytes", "Disk data transferred so far (disk_processed).", |j| num(j.stats.disk_processed)),
    ("vm_migration_disk_remaining_bytes", "Disk data still to transfer (disk_remaining).", |j| num(j.stats.disk_remaining)),
    ("vm_migration_start_timestamp_seconds", "Unix time the running job started.", |j| Some(j.started_at)),
    ("vm_migration_dirty_to_transfer_ratio", "Dirty rate divided by transfer rate; pre-copy converges only below 1.", |j| j.convergence.current().dirty_to_transfer_ratio),
    ("vm_migration_predicted_downtime_seconds", "Pause predicted at switch-over if the trend holds (data left at switch-over / transfer rate); for a migration that will not converge, the pause a forced switch-over at the next pass would cost.", |j| j.convergence.current().predicted_downtime_seconds),
    ("vm_migration_eta_seconds", "Seconds until switch-over if the trend holds; absent when it will not converge.", |j| j.convergence.current().eta_seconds),
];

/// The job gauges that describe the copy's progress: absent while libvirt has reported none
/// (set-up) and while the guest is paused for the switch-over with figures from before it.
const PROGRESS: &[&str] = &[
    "vm_migration_data_total_bytes",
    "vm_migration_data_processed_bytes",
    "vm_migration_data_remaining_bytes",
    "vm_migration_memory_total_bytes",
    "vm_migration_memory_processed_bytes",
    "vm_migration_memory_remaining_bytes",
    "vm_migration_dirty_memory_rate_bytes_per_second",
    "vm_migration_memory_transfer_rate_bytes_per_second",
    "vm_migration_iteration",
    "vm_migration_expected_downtime_seconds",
    "vm_migration_disk_total_bytes",
    "vm_migration_disk_processed_bytes",
    "vm_migration_disk_remaining_bytes",
    "vm_migration_dirty_to_transfer_ratio",
    "vm_migration_predicted_downtime_seconds",
    "vm_migration_eta_seconds",
];

/// The iteration from job stats, or from a newer `MIGRATION_ITERATION` event.
fn iteration(j: &ActiveJob) -> Option<u64> {
    let from_event = j.event_iteration.and_then(|i| u64::try_from(i).ok());
    match (j.stats.memory_iteration, from_event) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The per-job gauge families, filled from the running jobs.
fn encode_jobs(jobs: &[ActiveJob], encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut active = GaugeFamily::new(
        "vm_migration_job_active",
        "1 for each domain with a running job, labelled by libvirt's job operation.",
    );
    let mut phase = GaugeFamily::new(
        "vm_migration_phase",
        "Migration phase: 1 for the current one (precopy, switchover: the source paused the guest for the final copy, or postcopy), 0 for the others.",
    );
    let mut convergence = GaugeFamily::new(
        "vm_migration_convergence",
        "Convergence verdict: 1 for the current state (converging, not_converging, postcopy, postcopy_failed, unknown), 0 for the others.",
    );
    let mut detail = GaugeFamily::new(
        "vm_migration_convergence_detail",
        "While the verdict is not_converging: 1 for how (stalled: the remainder stays flat; diverging: it grows), 0 for the other.",
    );
    let mut gauges: Vec<GaugeFamily> = JOB_GAUGES
        .iter()
        .map(|(n, h, _)| GaugeFamily::new(n, h))
        .collect();
    for job in jobs {
        let dom = vec![
            ("domain", job.domain.name.clone()),
            ("uuid", job.domain.uuid.clone()),
        ];
        let with = |k: &'static str, v: &str| {
            let mut l = dom.clone();
            l.push((k, v.to_string()));
            l
        };
        active.push(with("operation", job.stats.operation_label()), Some(1.0));
        let now = if job.switching_over() {
            "switchover"
        } else {
            job.phase.as_str()
        };
        for p in ["precopy", "switchover", "postcopy"] {
            phase.push(with("phase", p), Some(if p == now { 1.0 } else { 0.0 }));
        }
        let current = job.convergence.current();
        for v in Verdict::ALL {
            convergence.push(
                with("state", v.as_str()),
                Some(if v == current.verdict { 1.0 } else { 0.0 }),
            );
        }
        if let Some(d) = current.detail {
            for x in Detail::ALL {
                detail.push(
                    with("detail", x.as_str()),
                    Some(if x == d { 1.0 } else { 0.0 }),
                );
            }
        }
        let current = job.figures_current();
        for (fam, (name, _, extract)) in gauges.iter_mut().zip(JOB_GAUGES) {
            // Withheld rather than shown wrong: none reported yet, or from before the pause.
            let v = if current || !PROGRESS.contains(name) {
                extract(job)
            } else {
                None
            };
            fam.push(dom.clone(), v);
        }
    }
    active.encode(encoder)?;
    phase.encode(encoder)?;
    convergence.encode(encoder)?;
    detail.encode(encoder)?;
    for f in &gauges {
        f.encode(encoder)?;
    }
    encode_postcopy_requests(jobs, encoder)
}

/// `vm_migration_postcopy_page_requests_total`: a counter, as libvirt's figure only grows
/// during a job (a new job starts it again from zero, which `rate()` takes as a reset).
fn encode_postcopy_requests(
    jobs: &[ActiveJob],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let series: Vec<(Labels, u64)> = jobs
        .iter()
        .filter_map(|j| {
            let n = j.stats.memory_postcopy_requests?;
            let labels = vec![
                ("domain", j.domain.name.clone()),
                ("uuid", j.domain.uuid.clone()),
            ];
            Some((labels, n))
        })
        .collect();
    if series.is_empty() {
        return Ok(());
    }
    // Registered without `_total`: the encoder adds it to counters.
    let mut me = encoder.encode_descriptor(
        "vm_migration_postcopy_page_requests",
        "Pages the destination requested from the source in post-copy (memory_postcopy_requests).",
        None,
        MetricType::Counter,
    )?;
    for (labels, n) in &series {
        ConstCounter::new(*n).encode(me.encode_family(labels)?)?;
    }
    Ok(())
}
