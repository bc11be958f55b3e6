use super::*;

const FAST: f64 = 0.02;
const SLOW: f64 = 1.0;

/// Probes every `interval` from `from` to `to`, one in flight: each is sent at a tick (or when
/// the one before answered, if later) and answered after `latency(sent)`; `None` = failed at
/// once (refused).
fn probe_run(
    t: &mut TargetTrack,
    from: f64,
    to: f64,
    interval: f64,
    latency: impl Fn(f64) -> Option<f64>,
) -> Vec<Outage> {
    let mut out = Vec::new();
    let mut tick = from;
    while tick < to {
        let sent = tick;
        let (done, good) = match latency(sent) {
            Some(l) => (sent + l, true),
            None => (sent + 0.001, false),
        };
        out.extend(t.observe(ProbeResult { sent, done, good }, interval));
        tick += interval;
        while tick < done {
            tick += interval;
        }
    }
    out
}

/// A guest whose service answers in 2 ms except while paused in [p, p + d): a request sent
/// during the pause (or in flight when it began) is answered when it resumes.
fn paused(p: f64, d: f64) -> impl Fn(f64) -> Option<f64> {
    move |sent| {
        let normal = sent + 0.002;
        Some(if normal >= p && sent < p + d {
            p + d + 0.002 - sent
        } else {
            0.002
        })
    }
}

#[test]
fn a_pause_is_seen_within_one_interval() {
    for (p, d) in [
        (100.013, 0.056),
        (100.0, 0.3),
        (100.019, 0.041),
        (100.5, 2.1),
    ] {
        let mut t = TargetTrack::default();
        probe_run(&mut t, 90.0, 99.0, SLOW, paused(p, d));
        t.migration_started(99.0);
        probe_run(&mut t, 99.0, 100.0, FAST, paused(p, d));
        t.switchover(p);
        let outages = probe_run(&mut t, 100.0, 104.0, FAST, paused(p, d));
        t.migration_ended(p + d + 0.01);
        probe_run(&mut t, 104.0, 106.0, FAST, paused(p, d));
        assert_eq!(outages.len(), 1, "p={p} d={d}: {outages:?}");
        let r = t.take_record("http", 106.0, Some(d)).expect("record");
        assert!(
            r.outage_seconds >= d - FAST && r.outage_seconds <= d + 0.003,
            "pause {d} s seen as {} s",
            r.outage_seconds
        );
        let from = r
            .outage_start_from_switchover_seconds
            .expect("relative start");
        assert!(from.abs() <= FAST, "began {from} s from the switch-over");
        let ratio = r.outage_to_downtime_ratio.expect("ratio");
        assert!(
            (1.0 - FAST / d..=1.0 + 0.003 / d).contains(&ratio),
            "{ratio}"
        );
        assert_eq!(r.failures, 0);
    }
}

#[test]
fn healthy_probing_has_no_outage_even_with_slow_answers() {
    let mut t = TargetTrack::default();
    t.migration_started(0.0);
    // Latency wobbling between 2 and 15 ms at a 20 ms rate, and above the interval now and then
    // (the next probe waits for the one in flight), but within 4 × the median.
    let outages = probe_run(&mut t, 0.0, 30.0, FAST, |s| {
        let spike = if (s * 10.0) as u64 % 97 == 0 {
            0.02
        } else {
            0.0
        };
        Some(0.002 + 0.013 * (s * 7.0).sin().abs() + spike)
    });
    assert!(outages.is_empty(), "{outages:?}");
    assert!(t.up());
    assert_eq!(t.current_outage(30.001), 0.0);
    let r = t.take_record("http", 30.0, Some(0.05)).expect("record");
    assert_eq!(r.outage_seconds, 0.0);
    assert_eq!(r.outage_start_from_switchover_seconds, None);
    assert_eq!(r.outage_to_downtime_ratio, Some(0.0));
}

#[test]
fn refused_connections_open_an_outage_until_the_first_good_answer() {
    let mut t = TargetTrack::default();
    t.migration_started(10.0);
    let answers = |s: f64| {
        if (11.0..11.5).contains(&s) {
            None
        } else {
            Some(0.002)
        }
    };
    probe_run(&mut t, 10.0, 11.2, FAST, answers);
    assert!(!t.up());
    // Live: the outage so far, from the first failed probe.
    let live = t.current_outage(11.3);
    assert!((live - 0.3).abs() <= FAST, "{live}");
    let outages = probe_run(&mut t, 11.2, 12.0, FAST, answers);
    assert_eq!(outages.len(), 1);
    assert!(
        (outages[0].seconds - 0.5).abs() <= FAST + 0.003,
        "{outages:?}"
    );
    assert!(t.up());
    let r = t.take_record("pg", 12.0, None).expect("record");
    assert!((25..=26).contains(&r.failures), "{r:?}");
    assert!(r.probes > r.failures);
    assert_eq!(r.outage_to_downtime_ratio, None, "no downtime from libvirt");
}

#[test]
fn an_outage_still_open_at_the_end_counts_up_to_then() {
    let mut t = TargetTrack::default();
    probe_run(&mut t, 0.0, 1.0, FAST, |_| Some(0.002));
    t.migration_started(1.0);
    probe_run(&mut t, 1.0, 3.0, FAST, |s| (s < 2.0).then_some(0.002));
    let r = t.take_record("http", 3.0, Some(0.1)).expect("record");
    assert!((r.outage_seconds - 1.0).abs() <= FAST, "{r:?}");
}

#[test]
fn latency_windows_before_during_and_after() {
    let mut t = TargetTrack::default();
    probe_run(&mut t, 0.0, 50.0, SLOW, |_| Some(0.001));
    t.migration_started(50.0);
    probe_run(&mut t, 50.0, 55.0, FAST, |_| Some(0.010));
    // From the switch (to post-copy) on, answers take 30 ms.
    t.switchover(55.0);
    probe_run(&mut t, 55.0, 60.0, FAST, |_| Some(0.030));
    t.migration_ended(60.0);
    probe_run(&mut t, 60.0, 65.0, FAST, |_| Some(0.004));
    let r = t.take_record("http", 65.0, Some(0.05)).expect("record");
    let near = |v: Option<f64>, want: f64| v.is_some_and(|v| (v - want).abs() < 1e-9);
    assert_eq!(r.latency_before.probes, 50);
    assert!(near(r.latency_before.p50_seconds, 0.001), "{r:?}");
    assert!(near(r.latency_during.p50_seconds, 0.010), "{r:?}");
    assert!(near(r.latency_during.p99_seconds, 0.030), "{r:?}");
    assert!(near(r.latency_after_switchover.p50_seconds, 0.030), "{r:?}");
    // Only the "during" probes sent from the switch on: the 30 ms ones, none of the 10 ms ones.
    assert!(near(r.latency_after_switchover.p99_seconds, 0.030), "{r:?}");
    assert!(
        r.latency_after_switchover.probes > 100
            && r.latency_after_switchover.probes < r.latency_during.probes,
        "{r:?}"
    );
    assert!(near(r.latency_after.p50_seconds, 0.004), "{r:?}");
    assert!(r.latency_after.probes > 200);
    assert!(!t.in_migration(), "the record closes the migration");
    assert!(t.take_record("http", 66.0, None).is_none());
}

#[test]
fn quantiles_are_nearest_rank() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(quantile(&v, 0.5), Some(50.0));
    assert_eq!(quantile(&v, 0.99), Some(99.0));
    assert_eq!(quantile(&[3.0], 0.99), Some(3.0));
    assert_eq!(quantile(&[], 0.5), None);
}
