//! Helpers shared by the system tests (in `tests/`): the lab directory, a freshly built exporter
//! binary, and the lock that keeps to one lab (and so one migration) at a time.

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

/// The exporter under test, built from this checkout: `cargo test -p system-tests` alone would
/// not rebuild it, and a stale binary would test old code.
pub fn exporter_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "vm-migration-exporter",
            "--bin",
            "vm-migration-exporter",
        ])
        .current_dir(&root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building vm-migration-exporter failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug/vm-migration-exporter")
}
