//! Scenarios: one guest, one migration, the conditions around it, and what happened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use crate::events::EventWatch;
use crate::exporter::{sample, Exporter, Launch};
use crate::guest::{self, GuestSpec, Pattern};
use crate::{Lab, LabError};

/// How long to wait for the guest's first status line after a migration: it prints one every
/// 5 s.
const INTEGRITY_WAIT: Duration = Duration::from_secs(12);

/// How long `virsh migrate` may run past the scenario's deadline (its abort): a migration
/// already in post-copy cannot be aborted and finishes its copy first.
const ABORT_GRACE: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Precopy,
    Postcopy,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub guest: GuestSpec,
    pub mode: Mode,
    /// QEMU's own cap (`virsh migrate --bandwidth`, MiB/s).
    pub bandwidth_mibs: Option<u32>,
    /// A token-bucket cap on the link (Mbit/s).
    pub link_mbit: Option<u32>,
    /// Added round-trip time (ms): the migration then takes the delayed path.
    #[serde(default)]
    pub rtt_ms: Option<u32>,
    pub auto_converge: bool,
    /// Switch a post-copy-enabled migration to post-copy after this long.
    pub postcopy_after: Option<Duration>,
    /// ... or once the exporter shows this memory pass.
    #[serde(default)]
    pub postcopy_after_iterations: Option<u32>,
    /// Raise the max downtime to `.1` ms after `.0`.
    pub raise_max_downtime: Option<(Duration, u64)>,
    /// Restart the source's libvirtd after this long.
    pub restart_source_libvirtd_after: Option<Duration>,
    /// Abort with `virsh domjobabort` if still running then.
    pub deadline: Duration,
}

impl Scenario {
    /// An idle 512 MiB guest migrated without limits.
    pub fn idle(name: &str) -> Scenario {
        Scenario {
            name: name.to_string(),
            guest: GuestSpec::idle(name),
            mode: Mode::Precopy,
            bandwidth_mibs: None,
            link_mbit: None,
            rtt_ms: None,
            auto_converge: false,
            postcopy_after: None,
            postcopy_after_iterations: None,
            raise_max_downtime: None,
            restart_source_libvirtd_after: None,
            deadline: Duration::from_secs(120),
        }
    }

    /// A guest dirtying `mbps` MiB/s of a 256 MiB working set, migrated at `cap` MiB/s.
    pub fn stressed(name: &str, mbps: u32, pattern: Pattern, cap: u32) -> Scenario {
        let mut s = Scenario::idle(name);
        s.guest.dirty_mbps = mbps;
        s.guest.dirty_mb = 256;
        s.guest.pattern = pattern;
        s.bandwidth_mibs = Some(cap);
        s
    }
}

/// What the exporter showed at one moment of the migration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Observation {
    /// Seconds since `virsh migrate` started.
    pub t: f64,
    pub job_active: bool,
    pub iteration: Option<f64>,
    pub data_remaining: Option<f64>,
    pub verdict: Option<String>,
    pub phase: Option<String>,
    pub postcopy_requests: Option<f64>,
    pub libvirt_up: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: Scenario,
    /// completed | aborted | failed, as libvirt saw it.
    pub outcome: String,
    pub virsh_output: String,
    /// Fields of libvirt's job-completed event on the source (`virsh event`), when one came.
    pub libvirt_completed: Option<BTreeMap<String, String>>,
    pub observations: Vec<Observation>,
    /// The exporter's record of this migration (`/api/v1/migrations`).
    pub exporter_record: Option<serde_json::Value>,
    #[serde(skip, default)]
    pub exporter_metrics: String,
    pub wall_seconds: f64,
    pub trace: PathBuf,
    /// The guest's last console line after the migration (its integrity check).
    pub guest_status: Option<String>,
    /// The guest's memory after the migration: `ok`, `CORRUPT` (its reference pattern changed),
    /// `oops` (a kernel oops or panic on its console), or `no status` (no line within the wait).
    #[serde(default)]
    pub integrity: Option<String>,
    /// Average RTT `ping` measured over the migration's path just before it (delayed path only).
    #[serde(default)]
    pub ping_rtt_ms: Option<f64>,
    /// The exporter's forecast for this domain just before the migration started
    /// (`/api/v1/forecast?peer=dst&bandwidth=<the scenario's cap>`), with dirty-rate
    /// calculations on the source's read-write URI.
    #[serde(default)]
    pub forecast: Option<serde_json::Value>,
    /// The guest's HTTP service before the migration (on the source) ...
    #[serde(default)]
    pub app_before: Option<guest::AppReply>,
    /// ... and after it, where the guest then runs.
    #[serde(default)]
    pub app_after: Option<guest::AppReply>,
    /// Seconds from `virsh migrate` to its return (the migration's end, as the lab saw it).
    #[serde(default)]
    pub ended_s: Option<f64>,
    /// Seconds from `virsh migrate` to the source pausing the guest (switch-over or post-copy).
    #[serde(default)]
    pub switchover_s: Option<f64>,
    /// Seconds from `virsh migrate` to the start of libvirt's job (from the exporter's samples).
    #[serde(default)]
    pub job_started_s: Option<f64>,
    /// Where the exporter watching this migration served its metrics.
    #[serde(default)]
    pub metrics_url: Option<String>,
    /// Every probe the exporter made of the guest's service (app guests only).
    #[serde(default)]
    pub app_probes: Vec<crate::app_view::AppProbe>,
}

impl RunResult {
    pub fn verdicts_seen(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for o in &self.observations {
            if let Some(x) = &o.verdict {
                if v.last() != Some(x) {
                    v.push(x.clone());
                }
            }
        }
        v
    }

    pub fn libvirt_number(&self, key: &str) -> Option<f64> {
        self.libvirt_completed.as_ref()?.get(key)?.parse().ok()
    }

    /// Seconds from `virsh migrate` to the end of libvirt's job: its start plus libvirt's
    /// `time_elapsed` (completed migrations). virsh returns later, after the destination's
    /// finish phase; `ended_s` is that.
    pub fn libvirt_end_s(&self) -> Option<f64> {
        let elapsed = self.libvirt_number("time_elapsed")? / 1e3;
        Some(self.job_started_s.unwrap_or(0.0) + elapsed)
    }
}

/// Destroys a scenario's guest on both hosts when dropped, so a run that fails half-way (an
/// error, a panic) leaves no guest behind. It holds the URIs, not the hosts, which the run
/// still needs mutably (a libvirtd restart).
struct GuestGuard {
    name: String,
    uris: [String; 2],
}

impl Drop for GuestGuard {
    fn drop(&mut self) {
        for uri in &self.uris {
            // Not running there (or already gone) is fine: destroy just fails.
            let _ = testkit::bounded("virsh", testkit::VIRSH_TIMEOUT)
                .args(["-c", uri, "destroy", &self.name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn observe(m: &str, dom: &str, t: f64) -> Observation {
    let d = format!("domain=\"{dom}\"");
    let labels = [d.as_str()];
    let one_of = |name: &str, key: &str, values: &[&str]| {
        values
            .iter()
            .find(|v| sample(m, name, &[d.as_str(), &format!("{key}=\"{v}\"")]) == Some(1.0))
            .map(|v| v.to_string())
    };
    Observation {
        t,
        job_active: sample(m, "vm_migration_job_active", &labels) == Some(1.0),
        iteration: sample(m, "vm_migration_iteration", &labels),
        data_remaining: sample(m, "vm_migration_data_remaining_bytes", &labels),
        verdict: one_of(
            "vm_migration_convergence",
            "state",
            &[
                "converging",
                "not_converging",
                "postcopy",
                "postcopy_failed",
                "unknown",
            ],
        ),
        phase: one_of("vm_migration_phase", "phase", &["precopy", "postcopy"]),
        postcopy_requests: sample(m, "vm_migration_postcopy_page_requests_total", &labels),
        libvirt_up: sample(m, "vm_migration_libvirt_up", &[]),
    }
}

impl Lab {
    /// Run one scenario end to end. `progress` sees every observation as it is made.
    pub fn run(
        &mut self,
        s: &Scenario,
        out: &Path,
        progress: &dyn Fn(&Observation),
    ) -> Result<RunResult, LabError> {
        self.run_until(s, out, progress, &|| false)
    }

    /// As [`Lab::run`], and the migration is aborted (`virsh domjobabort`) as soon as `enough`
    /// says so (asked after each observation), not only at `s.deadline`: a test that has seen
    /// what it waits for need not wait out the deadline.
    pub fn run_until(
        &mut self,
        s: &Scenario,
        out: &Path,
        progress: &dyn Fn(&Observation),
        enough: &dyn Fn() -> bool,
    ) -> Result<RunResult, LabError> {
        let traces = out.join("traces");
        std::fs::create_dir_all(&traces)
            .map_err(|e| LabError::Setup(format!("{}: {e}", traces.display())))?;
        self.link.set_bandwidth(s.link_mbit)?;
        self.delay
            .set_rtt(Duration::from_millis(u64::from(s.rtt_ms.unwrap_or(0))));
        let (dest_addr, ping_rtt_ms) = match s.rtt_ms {
            Some(_) => (crate::delay::DEST_ADDR, crate::delay::ping_rtt_ms()),
            None => (crate::net::DEST_ADDR, None),
        };
        let name = &s.guest.name;
        let xml = out.join(format!("{name}.xml"));
        std::fs::write(&xml, s.guest.domain_xml(&self.assets))
            .map_err(|e| LabError::Setup(e.to_string()))?;
        self.src
            .virsh(&["create", &xml.to_string_lossy()])
            .map_err(|e| LabError::Guest(e.to_string()))?;
        // From here on, every way out of this function destroys the guest.
        let cleanup = GuestGuard {
            name: name.clone(),
            uris: [self.src.uri().to_string(), self.dst.uri().to_string()],
        };
        let serial = self.src.dir().join(format!("log/qemu/{name}.serial"));
        guest::wait_running(&serial, Duration::from_secs(90))?;
        // The guest's HTTP service, when it has one, answers on the source before migrating, at
        // the provider-network address it keeps wherever it runs.
        let app_addr: Option<std::net::SocketAddr> = s.guest.app_port.map(|_| {
            std::net::SocketAddr::new(
                std::net::IpAddr::from(crate::net::PROVIDER_GUEST_IP),
                guest::APP_GUEST_PORT,
            )
        });
        let app_before = match app_addr {
            Some(a) => Some(guest::app_wait(a, Duration::from_secs(60))?),
            None => None,
        };

        let trace = traces.join(format!("{name}-source.jsonl"));
        let _ = std::fs::remove_file(&trace);
        let storage = out.join("records").join(name);
        let _ = std::fs::remove_dir_all(&storage);
        // A guest with an HTTP service: the exporter probes it (the app collector).
        let config = match app_addr {
            Some(addr) => {
                let path = out.join("records").join(format!("{name}.config.yml"));
                let yaml = format!(
                    "app:\n  targets:\n    - domain: {name}\n      name: http\n      http: {{url: \"http://{addr}/\"}}\n"
                );
                std::fs::create_dir_all(out.join("records"))
                    .and_then(|()| std::fs::write(&path, yaml))
                    .map_err(|e| LabError::Setup(format!("{}: {e}", path.display())))?;
                Some(path)
            }
            None => None,
        };
        // The forecast: one dirty-rate calculation per guest (the interval outlasts the run, so
        // none runs during the migration), pass 1 from the guest's sampled non-zero memory, the
        // migration's path as a configured peer.
        let forecast_flags: Vec<String> = vec![
            "--forecast.enable".into(),
            "--forecast.zero-pages".into(),
            "--forecast.libvirt.uri".into(),
            self.src.uri().into(),
            "--forecast.interval".into(),
            "1h".into(),
            "--probe.peer".into(),
            format!("dst={dest_addr}"),
        ];
        let exporter = Exporter::launch(
            &self.exporter_bin,
            &Launch {
                listen: self.exporter_listen,
                config: config.as_deref(),
                extra: &forecast_flags,
                ..Launch::new(self.src.uri(), &storage, &trace)
            },
        )?;
        let metrics_url = format!("http://{}/metrics", exporter.addr);
        eprintln!("migration-lab: {name}: vm-migration-exporter serving {metrics_url}");
        let ready_by = Instant::now() + Duration::from_secs(30);
        while exporter.body("/-/ready").is_none() && Instant::now() < ready_by {
            std::thread::sleep(Duration::from_millis(100));
        }
        let forecast = crate::forecast_eval::record(&exporter, s, name);
        let events = EventWatch::start(self.src.uri())?;

        let mut args: Vec<String> = vec![
            "-c".into(),
            self.src.uri().into(),
            "migrate".into(),
            "--live".into(),
        ];
        if let Some(b) = s.bandwidth_mibs {
            args.extend(["--bandwidth".into(), b.to_string()]);
        }
        if s.mode == Mode::Postcopy {
            args.push("--postcopy".into());
            // The cap holds after the switch too: QEMU's post-copy phase is uncapped otherwise,
            // and a capped run would finish its post-copy in a blink.
            if let Some(b) = s.bandwidth_mibs {
                args.extend(["--postcopy-bandwidth".into(), b.to_string()]);
            }
        }
        if s.auto_converge {
            args.push("--auto-converge".into());
        }
        args.extend([
            name.clone(),
            self.dst.uri().into(),
            format!("tcp://{dest_addr}"),
        ]);
        let started = Instant::now();
        let started_unix = unix_now();
        let mut child = Command::new("virsh")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Migration(format!("virsh migrate: {e}")))?;

        let (mut switched, mut raised, mut restarted, mut aborted) = (false, false, false, false);
        let mut ended_s: Option<f64> = None;
        let mut observations = Vec::new();
        let status = loop {
            if let Some(st) = child
                .try_wait()
                .map_err(|e| LabError::Migration(e.to_string()))?
            {
                break st;
            }
            let el = started.elapsed();
            // The abort at the deadline ends virsh within seconds; one that still runs long
            // after is killed, so a wedged daemon cannot hang the run.
            if el >= s.deadline + ABORT_GRACE {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::Migration(format!(
                    "virsh migrate still ran {ABORT_GRACE:?} after the deadline ({:?}) and its abort; killed",
                    s.deadline
                )));
            }
            let o = observe(&exporter.metrics(), name, el.as_secs_f64());
            progress(&o);
            observations.push(o);
            let pass_reached = s.postcopy_after_iterations.is_some_and(|n| {
                observations
                    .last()
                    .and_then(|o: &Observation| o.iteration)
                    .is_some_and(|i| i >= f64::from(n))
            });
            let time_reached = s.postcopy_after.is_some_and(|after| el >= after);
            if !switched && (pass_reached || time_reached) {
                switched = self.src.virsh(&["migrate-postcopy", name]).is_ok();
            }
            if let Some((after, ms)) = s.raise_max_downtime {
                if !raised && el >= after {
                    raised = self
                        .src
                        .virsh(&["migrate-setmaxdowntime", name, &ms.to_string()])
                        .is_ok();
                }
            }
            if let Some(after) = s.restart_source_libvirtd_after {
                if !restarted && el >= after {
                    self.src.restart().map_err(|e| {
                        LabError::Host(format!("restarting the source libvirtd: {e}"))
                    })?;
                    restarted = true;
                }
            }
            if !aborted && (el >= s.deadline || enough()) {
                aborted = self.src.virsh(&["domjobabort", name]).is_ok();
            }
            // Half a second to the next observation, watching for virsh's return meanwhile:
            // the migration's end is then known to 20 ms.
            let next = Instant::now() + Duration::from_millis(500);
            while Instant::now() < next && ended_s.is_none() {
                std::thread::sleep(Duration::from_millis(20));
                if child.try_wait().ok().flatten().is_some() {
                    ended_s = Some(started.elapsed().as_secs_f64());
                }
            }
        };
        let ended_s = ended_s.unwrap_or_else(|| started.elapsed().as_secs_f64());
        let output = child
            .wait_with_output()
            .map_err(|e| LabError::Migration(e.to_string()))?;
        let virsh_output = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .trim()
        .to_string();
        let outcome = if status.success() {
            "completed"
        } else if aborted || virsh_output.contains("cancel") {
            "aborted"
        } else {
            "failed"
        };

        // Let libvirt's event and the exporter's record arrive.
        let settle = Instant::now() + Duration::from_secs(30);
        let mut record = None;
        while Instant::now() < settle {
            record = exporter
                .records()
                .into_iter()
                .find(|r| r["domain"]["name"] == name.as_str());
            let event_done = outcome != "completed" || events.job_completed().is_some();
            if record.is_some() && event_done {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let exporter_metrics = exporter.metrics();
        let where_now = if outcome == "completed" {
            &self.dst
        } else {
            &self.src
        };
        // Memory integrity: a status line the guest printed after the migration ended, where it
        // runs now (the dirtier checks its 16 MiB reference pattern each time), and no kernel
        // oops on that console.
        let serial = where_now.dir().join(format!("log/qemu/{name}.serial"));
        let lines_at_end = if where_now.dir() == self.src.dir() {
            guest::status_lines(&serial)
        } else {
            0
        };
        let integrity = guest::integrity_after(&serial, lines_at_end, INTEGRITY_WAIT);
        let guest_status = guest::last_status(&serial);
        // ... and afterwards wherever the guest runs, at the same address.
        let app_after = app_addr.and_then(|a| guest::app_wait(a, Duration::from_secs(30)).ok());
        drop(cleanup);
        let trace_text = std::fs::read_to_string(&trace).unwrap_or_default();
        let switchover_s =
            crate::app_view::switchover_from_trace(&trace_text).map(|t| t - started_unix);
        let job_started_s =
            crate::app_view::job_start_from_trace(&trace_text).map(|t| t - started_unix);
        let app_probes = match app_addr {
            Some(_) => std::fs::read_to_string(trace.with_extension("log"))
                .map(|l| crate::app_view::probes_from_log(&l, started_unix))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(RunResult {
            scenario: s.clone(),
            outcome: outcome.to_string(),
            virsh_output,
            libvirt_completed: events.job_completed(),
            observations,
            exporter_record: record,
            exporter_metrics,
            wall_seconds: started.elapsed().as_secs_f64(),
            trace,
            guest_status,
            integrity: Some(integrity.as_str()),
            ping_rtt_ms,
            forecast,
            app_before,
            app_after,
            ended_s: Some(ended_s),
            switchover_s,
            job_started_s,
            metrics_url: Some(metrics_url),
            app_probes,
        })
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
