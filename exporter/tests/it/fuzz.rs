//! Property tests: everything that parses outside input takes arbitrary bytes without
//! panicking. No nightly toolchain is assumed, so this is proptest rather than cargo-fuzz:
//! inputs are random bytes or a corpus file (`tests/fixtures/fuzz/<target>/`, real inputs) with
//! random edits, for a bounded number of cases each; proptest keeps failing cases in
//! `proptest-regressions/` so they are replayed first.

use std::collections::VecDeque;

use proptest::prelude::*;
use proptest::sample::{select, Index};
use vm_migration_exporter::jobs::stats::JobStats;
use vm_migration_exporter::jobs::tracker::{JobObservation, Round, Tracker};
use vm_migration_exporter::libvirt::jobs::{DomainEvent, ParamValue, Params, RawJob};
use vm_migration_exporter::records::log::RecordLog;

use crate::support::dom;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = format!(
        "{}/tests/fixtures/fuzz/{target}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(Result::ok)
        .map(|d| d.path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).expect("corpus file"))
        .collect();
    assert!(!seeds.is_empty(), "{dir} holds no corpus file");
    seeds
}

/// Edit `seed`: overwrite, insert or delete bytes at random places, then maybe cut the end.
fn mutate(seed: &[u8], edits: Vec<(Index, u8, u8)>, cut: Option<Index>) -> Vec<u8> {
    let mut v = seed.to_vec();
    for (at, byte, op) in edits {
        if v.is_empty() {
            v.push(byte);
            continue;
        }
        let i = at.index(v.len());
        match op {
            0 => v[i] = byte,
            1 => v.insert(i, byte),
            _ => {
                v.remove(i);
            }
        }
    }
    if let Some(c) = cut {
        v.truncate(c.index(v.len() + 1));
    }
    v
}

/// Random bytes, or a corpus file of `target` with random edits.
fn input(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    let n = seeds.len();
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..1024),
        3 => (
            0..n,
            proptest::collection::vec((any::<Index>(), any::<u8>(), 0u8..3), 0..12),
            proptest::option::of(any::<Index>()),
        )
            .prop_map(move |(i, edits, cut)| mutate(&seeds[i], edits, cut)),
    ]
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn config_file_parser_never_panics(b in input("config")) {
        let _ = vm_migration_exporter::settings::file::Config::parse(&text(&b));
    }

    #[test]
    fn web_config_parser_never_panics(b in input("web_config")) {
        let _ = vm_migration_exporter::http::web_config::WebConfig::parse(&text(&b));
    }

    #[test]
    fn proc_net_dev_parser_never_panics(b in input("proc_net_dev")) {
        let _ = vm_migration_exporter::netdev::parse_proc_net_dev(&text(&b), "/proc/net/dev");
    }

    #[test]
    fn proc_net_tcp_parser_never_panics(b in input("proc_net_tcp")) {
        let _ = vm_migration_exporter::peers::qemu_socket::parse_proc_net_tcp(&text(&b));
    }

    #[test]
    fn route_parsers_never_panic(b in input("route"), b6 in input("ipv6_route")) {
        let _ = vm_migration_exporter::netdev::routes::parse_ipv4(&text(&b));
        let _ = vm_migration_exporter::netdev::routes::parse_ipv6(&text(&b6));
    }
}

proptest! {
    // Each case writes and reads files twice.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the record file holds, the exporter opens it, and afterwards the file holds
    /// only whole records: a second open finds the same records and nothing to repair.
    #[test]
    fn record_loader_never_panics_and_leaves_a_clean_file(b in input("records")) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("migrations.jsonl"), &b).expect("write");
        let (log, first) = RecordLog::open(dir.path(), 1 << 20).expect("open never fails on content");
        drop(log);
        let (log, again) = RecordLog::open(dir.path(), 1 << 20).expect("reopen");
        prop_assert_eq!(&first, &again);
        prop_assert_eq!(log.stats().damaged_file(), None);
        prop_assert_eq!(log.stats().records(), again.len() as u64);
        let content = std::fs::read(dir.path().join("migrations.jsonl")).expect("read");
        prop_assert!(content.is_empty() || content.ends_with(b"\n"));
    }
}

const KEYS: [&str; 23] = [
    "operation",
    "time_elapsed",
    "time_remaining",
    "downtime",
    "setup_time",
    "data_total",
    "data_processed",
    "data_remaining",
    "memory_total",
    "memory_processed",
    "memory_remaining",
    "memory_bps",
    "memory_dirty_rate",
    "memory_page_size",
    "memory_iteration",
    "memory_postcopy_requests",
    "auto_converge_throttle",
    "disk_total",
    "disk_processed",
    "disk_remaining",
    "success",
    "errmsg",
    "unknown_field",
];

fn value() -> impl Strategy<Value = ParamValue> {
    prop_oneof![
        any::<bool>().prop_map(ParamValue::Bool),
        any::<u64>().prop_map(ParamValue::UInt),
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            Just(u64::MAX / 2),
            0u64..(1 << 40)
        ]
        .prop_map(ParamValue::UInt),
        any::<i64>().prop_map(ParamValue::Int),
        any::<f64>().prop_map(ParamValue::Double),
        ".{0,8}".prop_map(ParamValue::Str),
    ]
}

fn params() -> impl Strategy<Value = Params> {
    proptest::collection::vec((select(&KEYS[..]), value()), 0..16)
        .prop_map(|v| v.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

#[derive(Clone, Debug)]
enum Step {
    Running(i32, Params, Option<u64>),
    Idle(Option<(i32, Params)>),
    Unknown,
    Gone,
    Completed(Params),
    Iteration(i64),
    Lifecycle(i32, i32),
}

fn step() -> impl Strategy<Value = (f64, usize, Step)> {
    let s = prop_oneof![
        4 => (-1i32..7, params(), proptest::option::of(any::<u64>()))
            .prop_map(|(t, p, d)| Step::Running(t, p, d)),
        1 => proptest::option::of((-1i32..7, params())).prop_map(Step::Idle),
        1 => Just(Step::Unknown),
        1 => Just(Step::Gone),
        1 => params().prop_map(Step::Completed),
        1 => any::<i64>().prop_map(Step::Iteration),
        1 => (-1i32..12, -1i32..12).prop_map(|(e, d)| Step::Lifecycle(e, d)),
    ];
    (
        prop_oneof![Just(0.0), 0.0f64..5.0, Just(1e9), Just(f64::NAN)],
        0usize..2,
        s,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Job statistics and events as libvirt could send them, however odd (huge, negative,
    /// wrong type, missing, out of order), go through decoding, the tracker, convergence and
    /// the finished-migration metrics without a panic, and every record serialises.
    #[test]
    fn job_stats_and_events_never_panic(steps in proptest::collection::vec(step(), 1..40)) {
        let state = vm_migration_exporter::state::shared();
        let (registry, metrics) = vm_migration_exporter::jobs::metrics::Metrics::register(state.clone(), Default::default());
        let mut tracker = Tracker::new(5.0);
        let mut now = 1_700_000_000.0;
        let mut finished = Vec::new();
        for (dt, d, s) in steps {
            now += dt;
            let domain = dom(d);
            let obs = match s {
                Step::Running(t, p, max) => Some(JobObservation::Running {
                    stats: Box::new(JobStats::from_params(t, &p)),
                    max_downtime_ms: max,
                }),
                Step::Idle(c) => Some(JobObservation::Idle {
                    completed: c.map(|(job_type, params)| RawJob { job_type, params }),
                }),
                Step::Unknown => Some(JobObservation::Unknown),
                Step::Gone => None,
                Step::Completed(params) => {
                    finished.extend(tracker.on_event(now, &DomainEvent::JobCompleted { domain, params }).0);
                    continue;
                }
                Step::Iteration(iteration) => {
                    finished.extend(tracker.on_event(now, &DomainEvent::Iteration { domain, iteration }).0);
                    continue;
                }
                Step::Lifecycle(event, detail) => {
                    finished.extend(tracker.on_event(now, &DomainEvent::Lifecycle { domain, event, detail }).0);
                    continue;
                }
            };
            let round = Round { observations: obs.map(|o| (domain, o)).into_iter().collect() };
            finished.extend(tracker.on_round(now, &round));
            state.lock().active = tracker.active_jobs().cloned().collect();
            let _ = vm_migration_exporter::exposition::encode(&registry, false);
        }
        for f in &finished {
            metrics.record_finished(f, f.finished_at);
            prop_assert!(serde_json::to_string(f).is_ok());
        }
        let mut records = VecDeque::new();
        records.extend(finished);
        state.lock().records = records;
        prop_assert!(vm_migration_exporter::exposition::encode(&registry, true).is_ok());
    }
}
