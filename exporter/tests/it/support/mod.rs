//! Helpers shared by the integration tests: the test kit's (the exporter as a process, polling,
//! the series parser) and a few of the exporter's own types.
#![allow(dead_code)] // not every test module uses every helper

pub mod shared;

pub use shared::*;
pub use testkit::expect_message as expect_event;
pub use testkit::exporter::{value, Exporter};
pub use testkit::prom::poll_until;

/// The exporter under test, as cargo built it for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_vm-migration-exporter");

/// Values that change from run to run are replaced, and series inside a family sorted (label
/// sets of a family come out in hash order).
pub fn normalise(text: &str) -> String {
    let volatile = [
        "vm_migration_sample_age_seconds",
        "vm_migration_collector_duration_seconds",
        "vm_migration_exporter_config_last_reload_success_timestamp_seconds",
        // The exporter's own process (CPU, memory, fds, threads, start time).
        "process_",
    ];
    let mut out = Vec::new();
    let mut block: Vec<String> = Vec::new();
    let flush = |block: &mut Vec<String>, out: &mut Vec<String>| {
        block.sort();
        out.append(block);
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut block, &mut out);
            out.push(line.to_string());
            continue;
        }
        let line = match line.rsplit_once(' ') {
            Some((series, _)) if volatile.iter().any(|v| series.starts_with(v)) => {
                format!("{series} <volatile>")
            }
            _ => line.to_string(),
        };
        block.push(line);
    }
    flush(&mut block, &mut out);
    out.join("\n")
}
