//! Tracker logic on synthetic sequences shaped like the lab's recorded migrations.

use super::*;
use crate::clock::Now;
use crate::jobs::convergence::Verdict;
use crate::jobs::test_support::params;
use crate::libvirt::jobs::{job_operation, ParamValue, Params};

fn dom() -> DomainId {
    DomainId {
        name: "g1".into(),
        uuid: "11111111-2222-4333-8444-555555555555".into(),
    }
}

/// A running outgoing migration sample at `elapsed_ms` with `remaining` bytes left.
fn running(elapsed_ms: u64, remaining: u64, iteration: u64) -> JobObservation {
    let p = params(&[
        ("operation", job_operation::MIGRATION_OUT),
        ("time_elapsed", elapsed_ms),
        ("data_remaining", remaining),
        ("data_processed", 536_870_912 - remaining),
        ("memory_iteration", iteration),
        ("downtime", 300),
    ]);
    JobObservation::Running {
        stats: Box::new(JobStats::from_params(job_type::UNBOUNDED, &p)),
        max_downtime_ms: Some(300),
    }
}

fn round(obs: Vec<JobObservation>) -> Round {
    Round {
        observations: obs.into_iter().map(|o| (dom(), o)).collect(),
    }
}

fn idle(completed: Option<RawJob>) -> JobObservation {
    JobObservation::Idle { completed }
}

fn completed_params(op: u64, elapsed: u64, downtime: u64) -> Params {
    params(&[
        ("operation", op),
        ("time_elapsed", elapsed),
        ("downtime", downtime),
        ("data_processed", 90_000_000),
        ("data_total", 536_870_912),
        ("memory_iteration", 3),
    ])
}

#[test]
fn converging_precopy_is_counted_once_from_the_event() {
    let mut t = Tracker::new(5.0);
    assert!(t
        .on_round(100.0, &round(vec![running(1000, 400_000_000, 1)]))
        .is_empty());
    assert!(t
        .on_round(101.0, &round(vec![running(2000, 100_000_000, 2)]))
        .is_empty());
    assert!(t.is_active(&dom().uuid));
    let job = t.active_jobs().next().expect("tracked");
    assert_eq!(job.started_at, 99.0);
    assert_eq!(job.max_downtime_ms, Some(300));

    // The domain leaves the source: no more listing, then the event.
    assert!(t.on_round(102.0, &Round::default()).is_empty());
    let ev = DomainEvent::JobCompleted {
        domain: dom(),
        params: completed_params(job_operation::MIGRATION_OUT, 2400, 52),
    };
    let (fin, _) = t.on_event(102.1, &ev);
    assert_eq!(fin.len(), 1);
    let f = &fin[0];
    assert_eq!(f.outcome, Outcome::Completed);
    assert_eq!(f.mode, Phase::Precopy);
    assert_eq!(f.direction, Direction::Out);
    assert_eq!(f.figures, FigureSource::Event);
    assert_eq!(f.duration_seconds, Some(2.4));
    assert_eq!(f.downtime_seconds, Some(0.052));
    assert_eq!(f.data_processed_bytes, Some(90_000_000));
    assert_eq!(f.iterations, Some(3));
    assert_eq!(f.started_at, 99.0);
    assert!(!t.has_active());
    // Well past the grace period nothing else is counted.
    assert!(t.on_round(120.0, &Round::default()).is_empty());
}

#[test]
fn abort_leaves_the_domain_running_without_a_job() {
    let mut t = Tracker::new(5.0);
    t.on_round(10.0, &round(vec![running(5000, 200_000_000, 4)]));
    let fin = t.on_round(11.0, &round(vec![idle(None)]));
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].outcome, Outcome::Aborted);
    assert_eq!(fin[0].figures, FigureSource::LastSample);
    assert_eq!(
        fin[0].downtime_seconds, None,
        "an aborted migration has no downtime"
    );
    assert_eq!(fin[0].duration_seconds, Some(5.0));
    assert!(!t.has_active());
}

#[test]
fn failed_job_keeps_failed_stats() {
    let mut t = Tracker::new(5.0);
    t.on_round(10.0, &round(vec![running(5000, 200_000_000, 4)]));
    let failed = RawJob {
        job_type: job_type::FAILED,
        params: completed_params(job_operation::MIGRATION_OUT, 6000, 0),
    };
    let fin = t.on_round(11.0, &round(vec![idle(Some(failed))]));
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].outcome, Outcome::Failed);
    assert_eq!(fin[0].figures, FigureSource::CompletedStats);
    assert_eq!(fin[0].duration_seconds, Some(6.0));
}

#[test]
fn older_kept_stats_do_not_classify_a_newer_job() {
    let mut t = Tracker::new(5.0);
    // The domain arrived here by an incoming migration whose stats libvirt still keeps; the
    // exporter started while the outgoing job was already running, so it never saw them.
    t.on_round(10.0, &round(vec![running(5000, 200_000_000, 4)]));
    let old_incoming = RawJob {
        job_type: job_type::COMPLETED,
        params: completed_params(job_operation::MIGRATION_IN, 2000, 40),
    };
    let fin = t.on_round(11.0, &round(vec![idle(Some(old_incoming))]));
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].outcome, Outcome::Aborted);
    assert_eq!(fin[0].direction, Direction::Out);
}

#[test]
fn domain_gone_without_event_waits_for_grace_then_uses_lifecycle() {
    let mut t = Tracker::new(5.0);
    t.on_round(10.0, &round(vec![running(3000, 50_000_000, 3)]));
    let stopped = DomainEvent::Lifecycle {
        domain: dom(),
        event: lifecycle::STOPPED,
        detail: lifecycle::STOPPED_MIGRATED,
    };
    t.on_event(10.5, &stopped);
    assert!(
        t.on_round(11.0, &Round::default()).is_empty(),
        "within grace"
    );
    assert!(
        t.on_round(15.9, &Round::default()).is_empty(),
        "still within grace"
    );
    let fin = t.on_round(16.0, &Round::default());
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].outcome, Outcome::Completed);
    assert_eq!(fin[0].figures, FigureSource::LastSample);
    assert_eq!(
        fin[0].downtime_seconds, None,
        "no measured downtime without final figures"
    );
}

#[test]
fn domain_gone_without_any_word_is_failed() {
    let mut t = Tracker::new(2.0);
    t.on_round(10.0, &round(vec![running(3000, 50_000_000, 3)]));
    assert!(t.on_round(11.0, &Round::default()).is_empty());
    let fin = t.on_round(13.0, &Round::default());
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].outcome, Outcome::Failed);
}

#[test]
fn domain_back_in_the_listing_cancels_the_grace_clock() {
    let mut t = Tracker::new(2.0);
    t.on_round(10.0, &round(vec![running(3000, 50_000_000, 3)]));
    // A listing that missed it (libvirt hiccup), then it is there again.
    assert!(t.on_round(11.0, &Round::default()).is_empty());
    assert!(t
        .on_round(12.0, &round(vec![running(5000, 40_000_000, 4)]))
        .is_empty());
    assert!(
        t.on_round(13.5, &Round::default()).is_empty(),
        "grace restarts"
    );
    assert!(t.has_active());
}

#[test]
fn postcopy_switch_sets_phase_and_mode() {
    let mut t = Tracker::new(5.0);
    t.on_round(10.0, &round(vec![running(8000, 300_000_000, 6)]));
    let ev = DomainEvent::Lifecycle {
        domain: dom(),
        event: lifecycle::SUSPENDED,
        detail: lifecycle::SUSPENDED_POSTCOPY,
    };
    t.on_event(10.2, &ev);
    assert_eq!(
        t.active_jobs().next().map(|j| j.phase),
        Some(Phase::Postcopy)
    );
    let mut p = completed_params(job_operation::MIGRATION_OUT, 10_300, 4);
    p.insert("memory_postcopy_requests".into(), ParamValue::UInt(13));
    let (fin, _) = t.on_event(
        12.0,
        &DomainEvent::JobCompleted {
            domain: dom(),
            params: p,
        },
    );
    assert_eq!(fin[0].mode, Phase::Postcopy);
    assert_eq!(fin[0].postcopy_requests, Some(13));
    assert_eq!(fin[0].downtime_seconds, Some(0.004));
}

#[test]
fn postcopy_failure_is_sticky_until_resumed_and_counts_failed_when_the_domain_goes() {
    let mut t = Tracker::new(2.0);
    let lc = |event, detail| DomainEvent::Lifecycle {
        domain: dom(),
        event,
        detail,
    };
    let verdict = |t: &Tracker| {
        t.active_jobs()
            .next()
            .map(|j| j.convergence.current().verdict)
    };
    t.on_round(10.0, &round(vec![running(8000, 300_000_000, 6)]));
    t.on_event(
        10.2,
        &lc(lifecycle::SUSPENDED, lifecycle::SUSPENDED_POSTCOPY),
    );
    assert_eq!(verdict(&t), Some(Verdict::Postcopy));
    t.on_event(
        11.0,
        &lc(lifecycle::SUSPENDED, lifecycle::SUSPENDED_POSTCOPY_FAILED),
    );
    assert_eq!(verdict(&t), Some(Verdict::PostcopyFailed));
    // The job stays, frozen: later samples do not talk the verdict back to post-copy.
    t.on_round(12.0, &round(vec![running(10_000, 12_000_000, 8)]));
    assert_eq!(verdict(&t), Some(Verdict::PostcopyFailed));
    // Resumed (virsh migrate --postcopy-resume): post-copy again.
    t.on_event(13.0, &lc(lifecycle::RESUMED, lifecycle::RESUMED_POSTCOPY));
    assert_eq!(verdict(&t), Some(Verdict::Postcopy));
    t.on_event(
        14.0,
        &lc(lifecycle::SUSPENDED, lifecycle::SUSPENDED_POSTCOPY_FAILED),
    );
    // Given up: the domain is destroyed; after the grace it is one failed post-copy migration.
    t.on_event(15.0, &lc(lifecycle::STOPPED, lifecycle::STOPPED_DESTROYED));
    assert!(t.on_round(15.5, &Round::default()).is_empty());
    let fin = t.on_round(18.0, &Round::default());
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].outcome, Outcome::Failed);
    assert_eq!(fin[0].mode, Phase::Postcopy);
    assert_eq!(
        fin[0].verdicts.last().map(|v| v.verdict),
        Some(Verdict::PostcopyFailed)
    );
}

#[test]
fn incoming_completed_stats_count_once_and_history_not_at_all() {
    let mut t = Tracker::new(5.0);
    let history = RawJob {
        job_type: job_type::COMPLETED,
        params: completed_params(job_operation::MIGRATION_IN, 4000, 60),
    };
    // First round after start: stats kept from before are history.
    assert!(t
        .on_round(1.0, &round(vec![idle(Some(history.clone()))]))
        .is_empty());
    assert!(t
        .on_round(16.0, &round(vec![idle(Some(history))]))
        .is_empty());
    // A new incoming migration of the same domain completes.
    let fresh = RawJob {
        job_type: job_type::COMPLETED,
        params: completed_params(job_operation::MIGRATION_IN, 4812, 52),
    };
    let fin = t.on_round(31.0, &round(vec![idle(Some(fresh.clone()))]));
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].direction, Direction::In);
    assert_eq!(fin[0].outcome, Outcome::Completed);
    assert_eq!(fin[0].figures, FigureSource::CompletedStats);
    assert_eq!(fin[0].downtime_seconds, Some(0.052));
    assert!(
        t.on_round(46.0, &round(vec![idle(Some(fresh))])).is_empty(),
        "seen already"
    );
}

#[test]
fn incoming_event_then_kept_stats_is_one_migration() {
    let mut t = Tracker::new(5.0);
    t.on_round(1.0, &Round::default());
    let p = completed_params(job_operation::MIGRATION_IN, 4812, 52);
    let (fin, _) = t.on_event(
        5.0,
        &DomainEvent::JobCompleted {
            domain: dom(),
            params: p.clone(),
        },
    );
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].direction, Direction::In);
    let kept = RawJob {
        job_type: job_type::COMPLETED,
        params: p,
    };
    assert!(t.on_round(6.0, &round(vec![idle(Some(kept))])).is_empty());
}

#[test]
fn short_migration_seen_only_by_its_event() {
    let mut t = Tracker::new(5.0);
    let (fin, _) = t.on_event(
        50.0,
        &DomainEvent::JobCompleted {
            domain: dom(),
            params: completed_params(job_operation::MIGRATION_OUT, 1200, 80),
        },
    );
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].started_at, 48.8);
    assert_eq!(fin[0].duration_seconds, Some(1.2));
}

#[test]
fn event_for_an_untracked_domain_asks_for_a_sample() {
    let mut t = Tracker::new(5.0);
    let (fin, wants) = t.on_event(
        1.0,
        &DomainEvent::Iteration {
            domain: dom(),
            iteration: 1,
        },
    );
    assert!(fin.is_empty());
    assert!(wants);
    t.on_round(1.1, &round(vec![running(100, 500_000_000, 1)]));
    let (_, wants) = t.on_event(
        2.0,
        &DomainEvent::Iteration {
            domain: dom(),
            iteration: 2,
        },
    );
    assert!(!wants);
    assert_eq!(
        t.active_jobs().next().and_then(|j| j.event_iteration),
        Some(2)
    );
}

#[test]
fn non_migration_jobs_are_not_migrations() {
    let mut t = Tracker::new(5.0);
    let p = params(&[("operation", 8), ("time_elapsed", 100)]); // a dump
    let obs = JobObservation::Running {
        stats: Box::new(JobStats::from_params(job_type::UNBOUNDED, &p)),
        max_downtime_ms: None,
    };
    t.on_round(1.0, &round(vec![obs]));
    assert!(!t.has_active());
    let (fin, _) = t.on_event(
        2.0,
        &DomainEvent::JobCompleted {
            domain: dom(),
            params: p,
        },
    );
    assert!(fin.is_empty());
}

#[test]
fn a_round_that_began_before_the_completion_does_not_revive_the_job() {
    let mut t = Tracker::new(5.0);
    t.on_round(10.0, &round(vec![running(1000, 100_000_000, 2)]));
    // The completion event is handled while the next round (begun at 11.0) waits in libvirt.
    let (fin, _) = t.on_event(
        11.5,
        &DomainEvent::JobCompleted {
            domain: dom(),
            params: completed_params(job_operation::MIGRATION_OUT, 2400, 52),
        },
    );
    assert_eq!(fin.len(), 1);
    assert!(t
        .on_round(11.0, &round(vec![running(2000, 50_000_000, 3)]))
        .is_empty());
    assert!(
        !t.has_active(),
        "the stale sample must not bring the job back"
    );
    assert!(
        t.on_round(30.0, &Round::default()).is_empty(),
        "and nothing is counted twice"
    );
}

#[test]
fn switchover_withholds_figures_from_before_the_pause() {
    let mut t = Tracker::new(5.0);
    t.on_round(10.0, &round(vec![running(8000, 531_000_000, 1)]));
    let job = t.active_jobs().next().expect("active");
    assert!(job.figures_current() && !job.switching_over());
    // The source pauses the guest; libvirt reports the completion seconds later.
    t.on_event(
        10.5,
        &DomainEvent::Lifecycle {
            domain: dom(),
            event: lifecycle::SUSPENDED,
            detail: lifecycle::SUSPENDED_MIGRATED,
        },
    );
    let job = t.active_jobs().next().expect("active");
    assert!(job.switching_over());
    assert!(!job.figures_current(), "531 MB left is a pass long over");
    // A sample taken during the pause is true again.
    t.on_round(11.0, &round(vec![running(9000, 2_000_000, 3)]));
    let job = t.active_jobs().next().expect("active");
    assert!(job.switching_over() && job.figures_current());
    let (fin, _) = t.on_event(
        12.6,
        &DomainEvent::JobCompleted {
            domain: dom(),
            params: completed_params(job_operation::MIGRATION_OUT, 10_600, 60),
        },
    );
    assert_eq!(fin[0].mode, Phase::Precopy, "switch-over is no mode");
}

#[test]
fn set_up_reports_no_figures() {
    let mut t = Tracker::new(5.0);
    // During set-up libvirt answers a job with nothing sent, nothing left and pass 0.
    let p = params(&[
        ("operation", job_operation::MIGRATION_OUT),
        ("time_elapsed", 300),
        ("data_remaining", 0),
        ("data_processed", 0),
        ("memory_remaining", 0),
        ("memory_iteration", 0),
    ]);
    let setup = JobObservation::Running {
        stats: Box::new(JobStats::from_params(job_type::UNBOUNDED, &p)),
        max_downtime_ms: Some(300),
    };
    t.on_round(10.0, &round(vec![setup]));
    let job = t.active_jobs().next().expect("active");
    assert!(
        !job.figures_current(),
        "0 remaining at pass 0 is not 'done'"
    );
    t.on_round(11.0, &round(vec![running(1300, 500_000_000, 1)]));
    assert!(t.active_jobs().next().expect("active").figures_current());
}

fn at(wall: f64, mono: f64) -> Now {
    Now { wall, mono }
}

/// The completion grace is waited out on the monotonic clock: an NTP step forward while a
/// migrated domain waits for its `JOB_COMPLETED` must not skip the wait (the migration would be
/// counted `failed` from its last sample, and once more when the event came).
#[test]
fn a_wall_clock_step_forward_does_not_skip_the_grace() {
    let mut t = Tracker::new(5.0);
    t.on_round(at(100.0, 10.0), &round(vec![running(1000, 400_000_000, 1)]));
    assert!(t.on_round(at(101.0, 11.0), &Round::default()).is_empty());
    // NTP steps the wall clock an hour ahead; one monotonic second passes.
    assert!(
        t.on_round(at(3702.0, 12.0), &Round::default()).is_empty(),
        "still within the 5 s grace"
    );
    let ev = DomainEvent::JobCompleted {
        domain: dom(),
        params: completed_params(job_operation::MIGRATION_OUT, 2400, 52),
    };
    let (fin, _) = t.on_event(at(3702.5, 12.5), &ev);
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].outcome, Outcome::Completed);
    assert_eq!(fin[0].figures, FigureSource::Event);
    assert_eq!(fin[0].finished_at, 3702.5, "records carry wall time");
}

/// ... and a step backwards stretched it (by the step: an hour here).
#[test]
fn a_wall_clock_step_back_does_not_stretch_the_grace() {
    let mut t = Tracker::new(5.0);
    t.on_round(
        at(5000.0, 10.0),
        &round(vec![running(1000, 400_000_000, 1)]),
    );
    assert!(t.on_round(at(5001.0, 11.0), &Round::default()).is_empty());
    let fin = t.on_round(at(1402.0, 16.5), &Round::default());
    assert_eq!(fin.len(), 1, "5.5 monotonic seconds: the grace is over");
    assert_eq!(fin[0].outcome, Outcome::Failed);
}

/// A round begun before a completion must not revive the job; that was judged on the wall
/// clock, so after a step back every new job of the domain was ignored for the step's length.
#[test]
fn a_wall_clock_step_back_does_not_hide_the_next_migration() {
    let mut t = Tracker::new(5.0);
    t.on_round(
        at(5000.0, 10.0),
        &round(vec![running(1000, 400_000_000, 1)]),
    );
    let ev = DomainEvent::JobCompleted {
        domain: dom(),
        params: completed_params(job_operation::MIGRATION_OUT, 2400, 52),
    };
    assert_eq!(t.on_event(at(5001.0, 11.0), &ev).0.len(), 1);
    // An hour back; a new migration of the same domain a few seconds later.
    t.on_round(at(1405.0, 15.0), &round(vec![running(500, 400_000_000, 1)]));
    assert!(t.is_active(&dom().uuid), "the new job is live");
}

/// What the tracker remembers per domain (its last counted completed job, when its last
/// migration ended) is bounded on a host where guests come and go: 10,000 domains migrating in
/// and leaving again leave bounded state.
#[test]
fn ten_thousand_domains_coming_and_going_leave_bounded_state() {
    let mut t = Tracker::new(5.0);
    t.on_round(at(0.0, 0.0), &Round::default());
    let mut counted = 0;
    for i in 0..10_000u32 {
        let d = DomainId {
            name: format!("g{i}"),
            uuid: format!("00000000-0000-4000-8000-{i:012}"),
        };
        let time = f64::from(i) * 30.0;
        // It arrives with the incoming migration's kept stats, then leaves the host.
        let arrived = Round {
            observations: vec![(
                d.clone(),
                idle(Some(RawJob {
                    job_type: job_type::COMPLETED,
                    params: completed_params(job_operation::MIGRATION_IN, 2000 + u64::from(i), 40),
                })),
            )],
        };
        counted += t.on_round(at(time, time), &arrived).len();
        t.on_round(at(time + 10.0, time + 10.0), &Round::default());
        assert!(t.remembered() <= MAX_REMEMBERED);
    }
    assert_eq!(counted, 10_000, "each incoming migration counted once");
    let end = 10_000.0 * 30.0;
    assert!(
        t.remembered() <= (FORGET_AFTER_S / 30.0) as usize + 1,
        "{}",
        t.remembered()
    );
    t.on_round(
        at(end + FORGET_AFTER_S, end + FORGET_AFTER_S),
        &Round::default(),
    );
    assert_eq!(t.remembered(), 0, "every departed domain forgotten");
    assert!(!t.has_active());
}

#[test]
fn the_cap_forgets_the_longest_unseen_first() {
    let mut t = Tracker::new(5.0);
    t.on_round(at(0.0, 0.0), &Round::default());
    let n = MAX_REMEMBERED + 5;
    let doms: Vec<DomainId> = (0..n)
        .map(|i| DomainId {
            name: format!("g{i}"),
            uuid: format!("00000000-0000-4000-8000-{i:012}"),
        })
        .collect();
    for (i, d) in doms.iter().enumerate() {
        let r = Round {
            observations: vec![(
                d.clone(),
                idle(Some(RawJob {
                    job_type: job_type::COMPLETED,
                    params: completed_params(job_operation::MIGRATION_IN, 2000, 40),
                })),
            )],
        };
        t.on_round(at(i as f64, i as f64), &r);
    }
    assert_eq!(t.remembered(), MAX_REMEMBERED);
    assert!(t.counted(&doms[0].uuid).is_none(), "the oldest went");
    assert!(t.counted(&doms[n - 1].uuid).is_some(), "the newest stays");
}
