//! Helpers shared by the system tests (in `tests/`): the lab directory, the exporter binary cargo
//! built for them, and the lock that keeps to one lab (and so one migration) at a time.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// One lab at a time: each dirtier and TCG guest takes a core. Test binaries run one after
/// another; this serialises the tests inside one.
pub fn one_lab_at_a_time() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn lab_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("MIGRATION_LAB_DIR").unwrap_or_else(|_| "/var/tmp/migration-lab".into()),
    )
}

/// A directory of its own under the system temp dir, emptied.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("system-tests-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::create_dir_all(&d);
    d
}

/// The exporter under test: the `system-test-exporter` binary (the exporter's own `main.rs`)
/// that cargo built for these tests. Cargo gives its path only to the tests of this package, so
/// this expands there.
#[macro_export]
macro_rules! exporter_bin {
    () => {
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_system-test-exporter"))
    };
}
