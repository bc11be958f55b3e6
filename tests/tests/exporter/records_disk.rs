//! Record writes on a full disk (a 64k tmpfs, so root): every record whose append succeeded is
//! there after a restart, none glued to another, and the exporter starts and serves on a full
//! disk.

use vm_migration_exporter::jobs::tracker::FinishedMigration;
use vm_migration_exporter::records::log::{RecordLog, StoreOp};

use testkit::exporter::{value, Exporter};

use crate::shared::rec;
use crate::BIN;

fn append(log: &mut RecordLog, r: &FinishedMigration) -> bool {
    log.append(r).is_ok()
}

/// The exporter on the test driver with its records under `dir`.
fn start_on(dir: &std::path::Path) -> Exporter {
    let storage = dir.to_string_lossy().to_string();
    Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--storage.path",
            &storage,
        ],
    )
}

/// A small tmpfs, unmounted on drop (the tests run as root).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount a tmpfs (needs root): {st}");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// Fill `dir`'s file system with one file; returns its path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).expect("create filler");
    let chunk = vec![b'x'; 4096];
    while f.write(&chunk).map(|n| n > 0).unwrap_or(false) {}
    let _ = f.write_all(b"x");
    p
}

/// Disk full during record writes, then space freed: every record whose append succeeded is
/// there after a restart, none glued to another, and the exporter keeps serving.
#[test]
fn disk_full_then_freed_loses_and_glues_nothing() {
    let fs = Tmpfs::mount("64k");
    let dir = fs.0.path();
    let (mut log, _) = RecordLog::open(dir, 1 << 20).expect("open");
    let mut stored = Vec::new();
    let mut i = 0;
    // Half-fill the last page, then take every free page: the next records fail part way.
    while i < 3 {
        assert!(append(&mut log, &rec(i)));
        stored.push(i);
        i += 1;
    }
    let filler = fill(dir);
    let mut failures = 0;
    for _ in 0..20 {
        if append(&mut log, &rec(i)) {
            stored.push(i);
        } else {
            failures += 1;
        }
        i += 1;
    }
    assert!(failures > 0, "the disk never filled");
    assert!(log.stats().errors(StoreOp::Append) >= failures);

    std::fs::remove_file(filler).expect("free space");
    for _ in 0..3 {
        assert!(append(&mut log, &rec(i)), "append after space came back");
        stored.push(i);
        i += 1;
    }
    drop(log);
    let (log, back) = RecordLog::open(dir, 1 << 20).expect("reopen");
    assert_eq!(log.stats().damaged_file(), None, "no damaged line");
    let names: Vec<String> = back.iter().map(|r| r.domain.name.clone()).collect();
    let want: Vec<String> = stored.iter().map(|i| format!("g{i}")).collect();
    assert_eq!(names, want, "every stored record, once, in order");
    // The exporter starts and serves on a full disk, with every record.
    drop(log);
    let _filler = fill(dir);
    {
        let e = start_on(dir);
        let m = e.metrics();
        assert_eq!(
            value(&m, "vm_migration_storage_records"),
            Some(stored.len() as f64),
            "{m}"
        );
    }
}
