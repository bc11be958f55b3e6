//! The sampler behind the job-source seam: a trace replayed through it must produce the live
//! series while the job runs, none after, and the finished-migration metrics.

use super::*;
use crate::jobs::replay::{text, Replay};
use crate::jobs::test_support::params as p;
use crate::libvirt::jobs::{job_operation, job_type, DomainEvent, RawJob};

fn dom() -> DomainId {
    DomainId {
        name: "g1".into(),
        uuid: "0b0b0b0b-0000-4000-8000-000000000001".into(),
    }
}

fn running(t: f64, elapsed: u64, remaining: u64) -> Vec<TraceRecord> {
    vec![
        TraceRecord::Round {
            t,
            domains: vec![dom()],
        },
        TraceRecord::Job {
            t,
            domain: dom(),
            job: Some(RawJob {
                job_type: job_type::UNBOUNDED,
                params: p(&[
                    ("operation", job_operation::MIGRATION_OUT),
                    ("time_elapsed", elapsed),
                    ("data_remaining", remaining),
                    ("memory_dirty_rate", 1000),
                    ("memory_page_size", 4096),
                    ("memory_bps", 50_000_000),
                    ("memory_iteration", 2),
                    ("downtime", 4000),
                ]),
            }),
        },
        TraceRecord::MaxDowntime {
            t,
            domain: dom(),
            ms: Some(300),
        },
    ]
}

fn trace() -> Vec<TraceRecord> {
    let mut r = vec![TraceRecord::Connection {
        t: 100.0,
        connected: true,
    }];
    r.extend(running(100.0, 1000, 300_000_000));
    r.extend(running(101.0, 2000, 200_000_000));
    r.push(TraceRecord::Event {
        t: 101.5,
        event: DomainEvent::Iteration {
            domain: dom(),
            iteration: 3,
        },
    });
    r.push(TraceRecord::Round {
        t: 102.0,
        domains: vec![],
    });
    r.push(TraceRecord::Event {
        t: 102.2,
        event: DomainEvent::JobCompleted {
            domain: dom(),
            params: p(&[
                ("operation", job_operation::MIGRATION_OUT),
                ("time_elapsed", 2300),
                ("downtime", 62),
                ("data_processed", 91_000_000),
                ("memory_iteration", 3),
            ]),
        },
    });
    r.push(TraceRecord::Round {
        t: 103.0,
        domains: vec![],
    });
    r
}

#[test]
fn replayed_migration_shows_live_then_finished() {
    let mut r = Replay::new(trace(), SamplerConfig::default());
    let shared = r.state.clone();
    let mut seen = Vec::new();
    r.run(|t, reg| seen.push((t, text(reg))));

    let at = |t: f64| &seen.iter().find(|(x, _)| *x == t).expect("round ran").1;
    let uuid = &dom().uuid;
    let live = at(101.0);
    assert!(
        live.contains(&format!(
            "vm_migration_data_remaining_bytes{{domain=\"g1\",uuid=\"{uuid}\"}} 200000000"
        )),
        "{live}"
    );
    assert!(live.contains(&format!(
        "vm_migration_dirty_memory_rate_bytes_per_second{{domain=\"g1\",uuid=\"{uuid}\"}} 4096000"
    )));
    assert!(live.contains(&format!(
        "vm_migration_max_downtime_seconds{{domain=\"g1\",uuid=\"{uuid}\"}} 0.3"
    )));
    assert!(live.contains(&format!(
        "vm_migration_expected_downtime_seconds{{domain=\"g1\",uuid=\"{uuid}\"}} 4"
    )));
    assert!(live.contains(&format!(
        "vm_migration_job_active{{domain=\"g1\",uuid=\"{uuid}\",operation=\"migration_out\"}} 1"
    )));
    assert!(live.contains(&format!(
        "vm_migration_phase{{domain=\"g1\",uuid=\"{uuid}\",phase=\"precopy\"}} 1"
    )));
    assert!(live.contains("vm_migration_libvirt_up 1"));
    // Pass 2 at 4 MB/s dirtied against 50 MB/s sent: no verdict before a trend exists (a low
    // ratio at pass 2 proves nothing), but a ratio and a provisional ETA.
    assert!(
        live.contains(&format!(
            "vm_migration_convergence{{domain=\"g1\",uuid=\"{uuid}\",state=\"unknown\"}} 1"
        )),
        "{live}"
    );
    assert!(live.contains(&format!(
        "vm_migration_convergence{{domain=\"g1\",uuid=\"{uuid}\",state=\"not_converging\"}} 0"
    )));
    assert!(
        !live.contains("vm_migration_convergence_detail"),
        "the detail exists only while not converging: {live}"
    );
    assert!(
        live.contains(&format!(
            "vm_migration_dirty_to_transfer_ratio{{domain=\"g1\",uuid=\"{uuid}\"}} 0.08192"
        )),
        "{live}"
    );
    assert!(live.contains(&format!(
        "vm_migration_eta_seconds{{domain=\"g1\",uuid=\"{uuid}\"}}"
    )));
    assert!(live.contains(
        "vm_migration_finished_total{outcome=\"completed\",mode=\"precopy\",direction=\"out\"} 0"
    ));

    let end = at(103.0);
    assert!(
        !end.contains("vm_migration_job_active{"),
        "no stale job series: {end}"
    );
    assert!(!end.contains("vm_migration_data_remaining_bytes{"));
    assert!(end.contains(
        "vm_migration_finished_total{outcome=\"completed\",mode=\"precopy\",direction=\"out\"} 1"
    ));
    assert!(end.contains(&format!(
        "vm_migration_last_downtime_seconds{{domain=\"g1\",uuid=\"{uuid}\"}} 0.062"
    )));
    assert!(end.contains(&format!(
        "vm_migration_last_duration_seconds{{domain=\"g1\",uuid=\"{uuid}\"}} 2.3"
    )));
    assert!(end.contains(&format!(
        "vm_migration_last_iteration{{domain=\"g1\",uuid=\"{uuid}\"}} 3"
    )));
    assert!(
        end.contains(
            "vm_migration_downtime_seconds_bucket{le=\"0.1\",mode=\"precopy\",direction=\"out\"} 1"
        ) || end.contains(
            "vm_migration_downtime_seconds_bucket{mode=\"precopy\",direction=\"out\",le=\"0.1\"} 1"
        ),
        "{end}"
    );
    let recent = &shared.lock().records;
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].iterations, Some(3));
}

#[test]
fn iteration_event_newer_than_sample_wins() {
    let mut recs = trace();
    recs.truncate(
        recs.iter()
            .position(|r| matches!(r, TraceRecord::Round { t, .. } if *t == 102.0))
            .expect("round"),
    );
    // One more round while still running, after the iteration-3 event.
    recs.extend(running(102.0, 3000, 150_000_000));
    let mut r = Replay::new(recs, SamplerConfig::default());
    r.run(|_, _| {});
    let text = r.metrics_text();
    assert!(
        text.contains(&format!(
            "vm_migration_iteration{{domain=\"g1\",uuid=\"{}\"}} 3",
            dom().uuid
        )),
        "{text}"
    );
}

#[test]
fn disconnected_source_hides_jobs_and_reports_down() {
    let mut recs = vec![TraceRecord::Connection {
        t: 1.0,
        connected: true,
    }];
    recs.extend(running(1.0, 1000, 300_000_000));
    recs.push(TraceRecord::Connection {
        t: 1.5,
        connected: false,
    });
    recs.push(TraceRecord::Round {
        t: 2.0,
        domains: vec![],
    });
    let mut r = Replay::new(recs, SamplerConfig::default());
    r.run(|_, _| {});
    let text = r.metrics_text();
    assert!(text.contains("vm_migration_libvirt_up 0"), "{text}");
    assert!(text.contains("vm_migration_collector_success{collector=\"jobs\"} 0"));
    assert!(
        !text.contains("vm_migration_job_active{"),
        "a job we cannot see is not live"
    );
    assert!(
        text.contains(
            "vm_migration_finished_total{outcome=\"failed\",mode=\"precopy\",direction=\"out\"} 0"
        ),
        "nothing finished yet"
    );
}

/// The job-completed event bumps the counter and removes the job from the live snapshot in one
/// step, so no scrape shows both.
#[test]
fn completion_event_removes_the_live_job_at_once() {
    let mut recs = vec![TraceRecord::Connection {
        t: 1.0,
        connected: true,
    }];
    recs.extend(running(1.0, 1000, 300_000_000));
    let mut r = Replay::new(recs, SamplerConfig::default());
    r.run(|_, _| {});
    let shared = r.state.clone();
    assert_eq!(shared.lock().active.len(), 1);
    let done = DomainEvent::JobCompleted {
        domain: dom(),
        params: p(&[
            ("operation", job_operation::MIGRATION_OUT),
            ("time_elapsed", 1500),
        ]),
    };
    r.sampler.handle(2.0, SourceEvent::Domain(done));
    let st = shared.lock();
    assert!(st.active.is_empty(), "live job must go with the completion");
    assert_eq!(st.records.len(), 1);
}

#[test]
fn last_series_are_dropped_after_the_retention_but_counters_stay() {
    let mut records = trace();
    // The migration finished at 102.2; rounds 10 min and 2 h later, with a 1 h retention.
    for t in [702.2, 7302.2] {
        records.push(TraceRecord::Round { t, domains: vec![] });
    }
    let mut r = Replay::new(
        records,
        SamplerConfig {
            last_retention: Some(Duration::from_secs(3600)),
            ..SamplerConfig::default()
        },
    );
    let mut seen = Vec::new();
    r.run(|t, reg| seen.push((t, text(reg))));
    let at = |t: f64| &seen.iter().find(|(x, _)| *x == t).expect("round ran").1;
    let finished =
        "vm_migration_finished_total{outcome=\"completed\",mode=\"precopy\",direction=\"out\"} 1";
    let kept = at(702.2);
    for name in [
        "vm_migration_last_duration_seconds{",
        "vm_migration_last_downtime_seconds{",
        "vm_migration_last_finished_timestamp_seconds{",
        "vm_migration_last_data_processed_bytes{",
        "vm_migration_last_iteration{",
    ] {
        assert!(
            kept.contains(name),
            "{name} missing within the retention:\n{kept}"
        );
    }
    let pruned = at(7302.2);
    assert!(!pruned.contains("vm_migration_last_"), "{pruned}");
    assert!(pruned.contains(finished), "{pruned}");
    assert!(kept.contains(finished), "{kept}");
}

/// Ready means a round ran after the first connection attempt's outcome (connected, or failed
/// and reported as down), not merely a round before the connection was open, which would let a
/// client read `vm_migration_libvirt_up 0` from a "ready" exporter.
#[test]
fn ready_only_after_the_first_connection_outcome() {
    let round = |t| TraceRecord::Round { t, domains: vec![] };
    let mut r = Replay::new(vec![round(1.0)], SamplerConfig::default());
    r.run(|_, _| {});
    assert!(!r.state.lock().ready, "no connection outcome yet");

    let connected = TraceRecord::Connection {
        t: 1.0,
        connected: true,
    };
    let mut r = Replay::new(vec![connected, round(2.0)], SamplerConfig::default());
    r.run(|_, _| {});
    let (ready, up) = {
        let st = r.state.lock();
        (st.ready, st.libvirt_up)
    };
    assert!(ready && up);

    let failed = TraceRecord::Connection {
        t: 1.0,
        connected: false,
    };
    let mut r = Replay::new(vec![failed, round(2.0)], SamplerConfig::default());
    r.run(|_, _| {});
    let (ready, up) = {
        let st = r.state.lock();
        (st.ready, st.libvirt_up)
    };
    assert!(
        ready && !up,
        "a failed first attempt is reported, then ready"
    );

    let r = Replay::new(Vec::new(), SamplerConfig::default());
    let down = || SourceEvent::Disconnected {
        reason: "refused".into(),
    };
    assert_eq!(
        r.sampler.handle(1.0, down()),
        Event::Handled { round_now: true },
        "the first outcome asks for a round at once"
    );
    assert_eq!(r.sampler.handle(2.0, down()), Event::Failed);
}

/// A connected source with one migrating domain whose listing can be made to fail.
struct Flaky {
    list_fails: std::sync::atomic::AtomicBool,
    gone: std::sync::atomic::AtomicBool,
}

impl JobSource for Flaky {
    fn is_connected(&self) -> bool {
        true
    }
    fn list_domains(&self) -> Result<Vec<DomainId>, SourceError> {
        if self.list_fails.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SourceError::Call {
                call: Call::ListDomains,
                message: "internal error: client socket is closed".into(),
            });
        }
        if self.gone.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        Ok(vec![dom()])
    }
    fn job_stats(&self, _: &DomainId) -> Result<Option<RawJob>, SourceError> {
        Ok(Some(RawJob {
            job_type: job_type::UNBOUNDED,
            params: p(&[
                ("operation", job_operation::MIGRATION_OUT),
                ("time_elapsed", 1000),
                ("data_processed", 1_000_000),
                ("data_remaining", 300_000_000),
                ("memory_iteration", 1),
            ]),
        }))
    }
    fn completed_job_stats(&self, _: &DomainId) -> Result<Option<RawJob>, SourceError> {
        Ok(None)
    }
    fn max_downtime_ms(&self, _: &DomainId) -> Result<Option<u64>, SourceError> {
        Ok(Some(300))
    }
}

fn flaky_sampler() -> (
    Arc<Flaky>,
    Sampler,
    SharedState,
    crate::collector::Statuses,
    prometheus_client::registry::Registry,
) {
    flaky_sampler_with(SamplerConfig::default())
}

fn flaky_sampler_with(
    cfg: SamplerConfig,
) -> (
    Arc<Flaky>,
    Sampler,
    SharedState,
    crate::collector::Statuses,
    prometheus_client::registry::Registry,
) {
    let source = Arc::new(Flaky {
        list_fails: false.into(),
        gone: false.into(),
    });
    let state = crate::state::shared();
    let statuses = crate::collector::Statuses::default();
    let (registry, metrics) = Metrics::register(state.clone(), statuses.clone());
    let sampler = Sampler::new(source.clone(), state.clone(), metrics, None, cfg);
    sampler.handle(1.0, SourceEvent::Connected);
    (source, sampler, state, statuses, registry)
}

/// node_exporter's rule: after a failed jobs round (libvirt up, but the listing failed) the
/// last round's live job series are not scraped as if current.
#[test]
fn a_failed_jobs_round_withholds_the_live_series() {
    let (source, mut sampler, _, statuses, registry) = flaky_sampler();
    crate::collector::execute(&statuses, Name::Jobs, || sampler.round(2.0));
    let live = text(&registry);
    assert!(live.contains("vm_migration_job_active{"), "{live}");
    assert!(live.contains("vm_migration_domains_active 1"), "{live}");

    source
        .list_fails
        .store(true, std::sync::atomic::Ordering::SeqCst);
    crate::collector::execute(&statuses, Name::Jobs, || sampler.round(3.0));
    let failed = text(&registry);
    assert!(
        failed.contains("vm_migration_collector_success{collector=\"jobs\"} 0"),
        "{failed}"
    );
    assert!(failed.contains("vm_migration_libvirt_up 1"), "{failed}");
    for gone in [
        "vm_migration_job_active{",
        "vm_migration_data_remaining_bytes{",
        "vm_migration_phase{",
        "vm_migration_domains_active ",
    ] {
        assert!(!failed.contains(gone), "{gone} is stale:\n{failed}");
    }

    source
        .list_fails
        .store(false, std::sync::atomic::Ordering::SeqCst);
    crate::collector::execute(&statuses, Name::Jobs, || sampler.round(4.0));
    assert!(text(&registry).contains("vm_migration_job_active{"));
}

/// A sampler stuck in libvirt (no round for several intervals) turns /-/ready 503 and its last
/// live job series leave the scrape.
#[test]
fn a_stuck_sampler_withholds_the_live_series() {
    let (_, mut sampler, state, statuses, registry) = flaky_sampler();
    crate::collector::execute(&statuses, Name::Jobs, || sampler.round(2.0));
    assert!(text(&registry).contains("vm_migration_job_active{"));
    // The round due by now did not happen.
    state.lock().next_round_by = Some(Instant::now() - Duration::from_secs(1));
    let stuck = text(&registry);
    assert!(!stuck.contains("vm_migration_job_active{"), "{stuck}");
    assert!(!stuck.contains("vm_migration_elapsed_seconds{"), "{stuck}");
    assert!(
        stuck.contains("vm_migration_sample_age_seconds"),
        "the age that the stuck-sampler alert reads stays: {stuck}"
    );
}

/// A round at the time on the sampler's clock.
fn clocked_round(s: &mut Sampler, statuses: &crate::collector::Statuses) {
    let now = s.now();
    crate::collector::execute(statuses, Name::Jobs, || s.round(now));
}

/// libvirt's job-completed event for `dom()`, at the time on the sampler's clock.
fn completes_now(s: &Sampler) {
    let done = DomainEvent::JobCompleted {
        domain: dom(),
        params: p(&[
            ("operation", job_operation::MIGRATION_OUT),
            ("time_elapsed", 1500),
            ("downtime", 40),
        ]),
    };
    s.handle(s.now(), SourceEvent::Domain(done));
}

/// Through the sampler's clock seam: an NTP step (the wall clock an hour ahead)
/// while a migrated-away domain waits for its completion event must not end the wait.
#[test]
fn a_wall_clock_step_does_not_skip_the_completion_grace() {
    let (source, sampler, state, statuses, _) = flaky_sampler();
    let clock = Arc::new(crate::clock::ManualClock::new(1000.0));
    let mut sampler = sampler.with_clock(clock.clone());
    let round = |s: &mut Sampler| clocked_round(s, &statuses);
    round(&mut sampler);
    assert_eq!(state.lock().active.len(), 1);
    // The domain left (migrated away); an empty listing from now on.
    source.gone.store(true, std::sync::atomic::Ordering::SeqCst);
    clock.advance(1.0);
    round(&mut sampler);
    clock.step_wall(3600.0);
    clock.advance(1.0);
    round(&mut sampler);
    assert!(
        state.lock().records.is_empty(),
        "2 s into the 5 s grace, whatever the wall clock says"
    );
    clock.advance(0.5);
    completes_now(&sampler);
    let st = state.lock();
    assert_eq!(st.records.len(), 1, "{:?}", st.records);
    assert_eq!(st.records[0].outcome.as_str(), "completed");
    assert_eq!(
        st.records[0].finished_at, 4602.5,
        "stamped with the (stepped) wall time"
    );
}

/// The `last_*` retention is waited out on the monotonic clock: with the wall clock stepped an
/// hour ahead the series were dropped an hour early, stepped back they stayed an hour late.
#[test]
fn a_wall_clock_step_neither_cuts_nor_stretches_the_last_retention() {
    for step in [3600.0, -3600.0] {
        let (source, sampler, _, statuses, registry) = flaky_sampler_with(SamplerConfig {
            last_retention: Some(Duration::from_secs(2 * 3600)),
            ..SamplerConfig::default()
        });
        let clock = Arc::new(crate::clock::ManualClock::new(1000.0));
        let mut sampler = sampler.with_clock(clock.clone());
        let round = |s: &mut Sampler| clocked_round(s, &statuses);
        round(&mut sampler);
        source.gone.store(true, std::sync::atomic::Ordering::SeqCst);
        clock.advance(0.5);
        completes_now(&sampler);
        let last = "vm_migration_last_finished_timestamp_seconds{";
        assert!(text(&registry).contains(last), "set by the completion");
        // An hour later by the monotonic clock; the wall clock says 0 h or 2 h (and a bit).
        clock.step_wall(step);
        clock.advance(3600.5);
        round(&mut sampler);
        let kept = text(&registry);
        assert!(
            kept.contains(last),
            "wall step {step}: 1 h into a 2 h retention:\n{kept}"
        );
        // Past the retention by the monotonic clock; the wall clock says 1 h or 3 h.
        clock.advance(3600.0);
        round(&mut sampler);
        let gone = text(&registry);
        assert!(
            !gone.contains("vm_migration_last_"),
            "wall step {step}: past the 2 h retention:\n{gone}"
        );
        assert!(
            gone.contains("vm_migration_finished_total{outcome=\"completed\",mode=\"precopy\",direction=\"out\"} 1"),
            "the counter stays:\n{gone}"
        );
    }
}

/// A small tmpfs of our own, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// A record the disk refused (full) stays queued and is written once space is freed, not kept
/// in memory only.
#[test]
fn records_a_full_disk_refused_are_written_once_space_is_freed() {
    let fs = Tmpfs::mount("64k").expect("mount a tmpfs (the tests run as root)");
    let storage = fs.0.path().join("storage");
    let (log, _) = crate::records::log::RecordLog::open(&storage, 64 << 20).expect("open");
    let (source, sampler, state, statuses, _) = flaky_sampler();
    let mut sampler = sampler.with_records(log);
    crate::collector::execute(&statuses, Name::Jobs, || sampler.round(2.0));
    // Fill the disk.
    let filler = fs.0.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 256 << 10]);
    let done = |t: u64| DomainEvent::JobCompleted {
        domain: dom(),
        params: p(&[
            ("operation", job_operation::MIGRATION_OUT),
            ("time_elapsed", 1500 + t),
            ("downtime", 40),
        ]),
    };
    sampler.handle(3.0, SourceEvent::Domain(done(0)));
    assert_eq!(state.lock().records.len(), 1, "kept in memory");
    let file = storage.join("migrations.jsonl");
    let on_disk = || std::fs::read_to_string(&file).expect("read");
    assert_eq!(on_disk(), "", "refused, and nothing partial left behind");
    source.gone.store(true, std::sync::atomic::Ordering::SeqCst);
    crate::collector::execute(&statuses, Name::Jobs, || sampler.round(4.0));
    assert_eq!(on_disk(), "", "still full");

    std::fs::remove_file(&filler).expect("free the space");
    crate::collector::execute(&statuses, Name::Jobs, || sampler.round(5.0));
    let text = on_disk();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let rec: FinishedMigration = serde_json::from_str(lines[0]).expect("a whole record");
    assert_eq!(rec.duration_seconds, Some(1.5));
}

/// What Nova writes into a domain's metadata (trimmed).
fn nova(name: &str) -> String {
    format!(
        r#"<nova:instance xmlns:nova="{}"><nova:name>{name}</nova:name><nova:flavor name="m1.small"/><nova:owner><nova:user uuid="u-1">alice</nova:user><nova:project uuid="p-1">shop</nova:project></nova:owner></nova:instance>"#,
        crate::jobs::identity::NOVA_NS
    )
}

fn info_line(metrics: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| l.starts_with("vm_migration_domain_info{"))
        .map(str::to_string)
}

/// Nova's identity of a domain is in `vm_migration_domain_info` while it is listed,
/// and its migration's record carries it (the domain had already left when the completion
/// came).
#[test]
fn nova_identity_labels_domain_info_and_the_record() {
    use crate::jobs::identity::NOVA_NS;
    let source = crate::jobs::trace::ReplaySource::new(trace()).with_metadata(&[(
        &dom().uuid,
        NOVA_NS,
        &nova("web-1"),
    )]);
    let mut r = Replay::with_source(source, SamplerConfig::default());
    let mut seen = Vec::new();
    r.run(|t, reg| seen.push((t, info_line(&text(reg)))));
    let want = format!(
        r#"vm_migration_domain_info{{domain="g1",uuid="{}",name="web-1",project_id="p-1",project_name="shop",user_id="u-1",user_name="alice",flavor="m1.small"}} 1.0"#,
        dom().uuid
    );
    assert_eq!(seen[0], (100.0, Some(want)));
    assert_eq!(seen[2], (102.0, None), "gone with the domain");
    let st = r.state.lock();
    let id = st.records[0].identity.as_ref().expect("the record has it");
    assert_eq!(
        (
            id.name.as_str(),
            id.project_name.as_str(),
            id.flavor.as_str()
        ),
        ("web-1", "shop", "m1.small")
    );
    let json = serde_json::to_string(&st.records[0]).expect("json");
    assert!(
        json.contains(r#""identity":{"name":"web-1","project_id":"p-1""#),
        "{json}"
    );
}

/// The element is read once per domain, again when libvirt says Nova's metadata changed or the
/// domain was redefined; a domain without it (or with a bad one) has empty labels.
#[test]
fn nova_identity_is_reread_on_metadata_change_and_redefinition() {
    use crate::jobs::identity::NOVA_NS;
    let plain = DomainId {
        name: "plain".into(),
        uuid: "0b0b0b0b-0000-4000-8000-0000000000ff".into(),
    };
    let rounds: Vec<TraceRecord> = (0..5)
        .map(|i| TraceRecord::Round {
            t: 100.0 + f64::from(i),
            domains: vec![dom(), plain.clone()],
        })
        .collect();
    let source = crate::jobs::trace::ReplaySource::new(rounds).with_metadata(&[(
        &dom().uuid,
        NOVA_NS,
        &nova("before"),
    )]);
    let mut r = Replay::with_source(source, SamplerConfig::default());
    let round = |r: &mut Replay, t: f64| {
        r.source().set_time(t);
        r.sampler.round(t).expect("round");
        r.state.lock().identities.clone()
    };
    let name_of = |ids: &[(DomainId, Option<DomainIdentity>)], uuid: &str| {
        ids.iter()
            .find(|(d, _)| d.uuid == uuid)
            .map(|(_, i)| i.clone().unwrap_or_default().name)
    };
    let ids = round(&mut r, 100.0);
    assert_eq!(name_of(&ids, &dom().uuid).as_deref(), Some("before"));
    assert_eq!(
        name_of(&ids, &plain.uuid).as_deref(),
        Some(""),
        "listed, no Nova"
    );
    // Changed without an event: still the cached one (no call per round).
    r.source()
        .set_metadata(&dom().uuid, NOVA_NS, Some(&nova("after")));
    let ids = round(&mut r, 101.0);
    assert_eq!(name_of(&ids, &dom().uuid).as_deref(), Some("before"));
    // The event for Nova's namespace asks for a round and a new read.
    let ev = r.sampler.handle(
        101.5,
        SourceEvent::Domain(DomainEvent::MetadataChange {
            domain: dom(),
            uri: Some(NOVA_NS.into()),
        }),
    );
    assert_eq!(ev, Event::Handled { round_now: true });
    let ids = round(&mut r, 102.0);
    assert_eq!(name_of(&ids, &dom().uuid).as_deref(), Some("after"));
    // A redefinition (Nova rewrites its metadata this way) too.
    r.source()
        .set_metadata(&dom().uuid, NOVA_NS, Some(&nova("redefined")));
    r.sampler.handle(
        102.5,
        SourceEvent::Domain(DomainEvent::Lifecycle {
            domain: dom(),
            event: crate::libvirt::jobs::lifecycle::DEFINED,
            detail: 1,
        }),
    );
    let ids = round(&mut r, 103.0);
    assert_eq!(name_of(&ids, &dom().uuid).as_deref(), Some("redefined"));
    // A bad element: empty labels, the domain still listed.
    r.source()
        .set_metadata(&dom().uuid, NOVA_NS, Some("<instance"));
    r.sampler.handle(
        103.5,
        SourceEvent::Domain(DomainEvent::MetadataChange {
            domain: dom(),
            uri: Some(NOVA_NS.into()),
        }),
    );
    let ids = round(&mut r, 104.0);
    assert_eq!(name_of(&ids, &dom().uuid).as_deref(), Some(""));
}
