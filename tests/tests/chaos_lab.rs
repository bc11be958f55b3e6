//! Chaos in the lab: real libvirtd and QEMU misbehave in the middle of a migration
//! and the exporter must keep answering, tell the truth about libvirt, and count each
//! migration once. One lab serves every case (set-up is the expensive part); each case has its
//! own small guest and its own exporter. Assertions wait for the state they check.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use migration_lab::exporter::{sample, Exporter, Launch};
use migration_lab::guest::{self, GuestSpec};
use migration_lab::prom::poll_until;
use migration_lab::{Host, Lab};
use system_tests::{exporter_bin, lab_dir, one_lab_at_a_time, scratch};

/// QEMU's cap while a case needs the migration to keep running (MiB/s): a 256 MiB idle guest
/// then takes well over a minute.
const SLOW_MIBS: &str = "1";
/// The longest a `virsh migrate` of these tests may run (they lift the cap or abort well before).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(600);

/// A small idle guest: quick to boot under TCG, and no dirtier taking a core.
fn small(name: &str) -> GuestSpec {
    let mut g = GuestSpec::idle(name);
    g.memory_mb = 256;
    g.dirty_mb = 16;
    g
}

struct Case<'a> {
    lab: &'a mut Lab,
    name: String,
    out: PathBuf,
}

/// Destroys the guest on both hosts, whatever happened.
struct GuestGuard(String, [String; 2]);

impl Drop for GuestGuard {
    fn drop(&mut self) {
        for uri in &self.1 {
            let _ = migration_lab::bounded("virsh", migration_lab::VIRSH_TIMEOUT)
                .args(["-c", uri, "destroy", &self.0])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl<'a> Case<'a> {
    fn new(lab: &'a mut Lab, name: &str, out: &Path) -> Self {
        Case {
            lab,
            name: name.to_string(),
            out: out.join(name),
        }
    }

    /// Boot the guest on the source and wait for its first status line.
    fn boot(&self) -> GuestGuard {
        std::fs::create_dir_all(&self.out).expect("case dir");
        let xml = self.out.join("domain.xml");
        std::fs::write(&xml, small(&self.name).domain_xml(&self.lab.assets)).expect("xml");
        self.lab
            .src
            .virsh(&["create", &xml.to_string_lossy()])
            .expect("create the guest");
        let guard = GuestGuard(
            self.name.clone(),
            [self.lab.src.uri().into(), self.lab.dst.uri().into()],
        );
        let serial = self
            .lab
            .src
            .dir()
            .join(format!("log/qemu/{}.serial", self.name));
        guest::wait_running(&serial, Duration::from_secs(90)).expect("the guest boots");
        guard
    }

    /// An exporter watching `host`, keeping records in `storage`.
    fn exporter(&self, host: &Host, storage: &Path, tag: &str) -> Exporter {
        let trace = self.out.join(format!("trace-{tag}.jsonl"));
        let e = Exporter::launch(
            &self.lab.exporter_bin,
            &Launch::new(host.uri(), storage, &trace),
        )
        .expect("the exporter starts");
        assert!(
            poll_until(Duration::from_secs(30), || e.body("/-/ready").is_some()),
            "{tag} exporter ready"
        );
        e
    }

    /// `virsh migrate --live` to the destination, capped at `mibs` MiB/s.
    fn migrate(&self, mibs: Option<&str>) -> Child {
        let mut args = vec!["-c", self.lab.src.uri(), "migrate", "--live"];
        if let Some(b) = mibs {
            args.extend(["--bandwidth", b]);
        }
        let target = format!("tcp://{}", migration_lab::net::DEST_ADDR);
        // Bounded: a test that waits for it cannot hang on a wedged daemon.
        migration_lab::bounded("virsh", MIGRATE_TIMEOUT)
            .args(&args)
            .args([self.name.as_str(), self.lab.dst.uri(), target.as_str()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("virsh migrate")
    }

    /// Lift the cap: the migration completes within seconds.
    fn unthrottle(&self) {
        self.lab
            .src
            .virsh(&["migrate-setspeed", &self.name, "8000"])
            .expect("migrate-setspeed");
    }

    fn domain_label(&self) -> String {
        format!("domain=\"{}\"", self.name)
    }

    fn job_active(&self, e: &Exporter) -> bool {
        sample(
            &e.metrics(),
            "vm_migration_job_active",
            &[&self.domain_label()],
        ) == Some(1.0)
    }

    fn wait_job_active(&self, e: &Exporter) {
        assert!(
            poll_until(Duration::from_secs(60), || self.job_active(e)),
            "{}: the exporter shows the running migration:\n{}",
            self.name,
            e.metrics()
        );
    }

    /// The exporter's records of this case's guest.
    fn records(&self, e: &Exporter) -> Vec<serde_json::Value> {
        e.records()
            .into_iter()
            .filter(|r| r["domain"]["name"] == self.name.as_str())
            .collect()
    }

    /// Wait for the guest's first record; then destroy the guest and wait for a round that no
    /// longer lists it, so any second record would have been made by then.
    fn the_only_record(&self, e: &Exporter, guard: GuestGuard) -> serde_json::Value {
        assert!(
            poll_until(Duration::from_secs(60), || !self.records(e).is_empty()),
            "{}: a record",
            self.name
        );
        drop(guard);
        assert!(
            poll_until(Duration::from_secs(30), || sample_plain(
                &e.metrics(),
                "vm_migration_domains_active"
            ) == Some(0.0)),
            "{}: a round after the guest went",
            self.name
        );
        let recs = self.records(e);
        assert_eq!(recs.len(), 1, "{}: recorded once: {recs:?}", self.name);
        recs.into_iter().next().expect("one")
    }
}

/// An unlabelled sample (`name value`).
fn sample_plain(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(' ')
            .and_then(|v| v.trim().parse().ok())
    })
}

fn finished_total(text: &str, direction: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("vm_migration_finished_total{"))
        .filter(|l| l.contains(&format!("direction=\"{direction}\"")))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

/// SIGCONTs a stopped libvirtd even when the case fails half-way.
struct Continue(i32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// libvirtd SIGKILLed mid-migration and started again: scrapes answer throughout, libvirt_up
/// says 0 while it is gone and 1 once it is back, and the migration (cancelled by the new
/// libvirtd) is recorded once.
fn libvirtd_killed_and_restarted(lab: &mut Lab, out: &Path, storage: &Path) {
    let c = Case::new(lab, "chaos-kill", out);
    let guard = c.boot();
    let e = c.exporter(&c.lab.src, storage, "src");
    let mut virsh = c.migrate(Some(SLOW_MIBS));
    c.wait_job_active(&e);
    c.lab.src.kill();
    assert!(
        poll_until(Duration::from_secs(30), || e
            .body("/metrics")
            .is_some_and(|m| m.contains("vm_migration_libvirt_up 0"))),
        "libvirt_up 0 while libvirtd is dead"
    );
    assert!(
        !c.job_active(&e),
        "no live job while libvirt cannot be asked"
    );
    c.lab.src.restart().expect("libvirtd starts again");
    assert!(
        poll_until(Duration::from_secs(60), || e
            .body("/metrics")
            .is_some_and(|m| m.contains("vm_migration_libvirt_up 1"))),
        "libvirt_up 1 once it is back"
    );
    let _ = virsh.wait();
    let rec = c.the_only_record(&e, guard);
    assert!(
        matches!(rec["outcome"].as_str(), Some("aborted" | "failed")),
        "{rec}"
    );
    assert_eq!(finished_total(&e.metrics(), "out"), 1.0);
}

/// libvirtd frozen (SIGSTOP) for 20 s mid-migration: every scrape still answers at once, no
/// job is shown live while libvirt is reported down, and the migration completes and is
/// recorded once after SIGCONT.
fn libvirtd_stopped_for_20s(lab: &mut Lab, out: &Path) {
    let c = Case::new(lab, "chaos-stop", out);
    let guard = c.boot();
    let e = c.exporter(&c.lab.src, &c.out.join("records"), "src");
    let mut virsh = c.migrate(Some(SLOW_MIBS));
    c.wait_job_active(&e);
    let pid = c.lab.src.pid().expect("libvirtd pid");
    signal(pid, "STOP");
    let stopped = Instant::now();
    let cont = Continue(pid);
    let (mut scrapes, mut down_seen, mut unready_seen) = (0, false, false);
    while stopped.elapsed() < Duration::from_secs(20) {
        let t = Instant::now();
        let m = e
            .body("/metrics")
            .expect("a scrape answers while libvirtd is frozen");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a scrape took {:?}",
            t.elapsed()
        );
        let down = m.contains("vm_migration_libvirt_up 0");
        down_seen |= down;
        // What cannot be read is not shown as live: not while libvirt is down, nor once the
        // sampler has missed several rounds (0.5 s interval: 3 rounds + 5 s of slack).
        if down || stopped.elapsed() > Duration::from_secs(8) {
            assert!(
                !m.contains("vm_migration_job_active{"),
                "{:?} after SIGSTOP:\n{m}",
                stopped.elapsed()
            );
        }
        unready_seen |= e.body("/-/ready").is_none();
        scrapes += 1;
        // Pacing of a fixed 20 s observation window (every scrape must hold), not synchronisation.
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(scrapes >= 20, "{scrapes} scrapes in 20 s");
    assert!(
        unready_seen,
        "/-/ready says 503 while the sampler is stuck in libvirt"
    );
    // The keepalive (5 s x 3) declares a frozen libvirtd dead about 20 s after its last answer:
    // at the very end of the window or not at all, so it is reported, not required.
    eprintln!("chaos: libvirt_up 0 seen while frozen: {down_seen}");
    drop(cont);
    assert!(
        poll_until(Duration::from_secs(60), || e
            .body("/metrics")
            .is_some_and(|m| m.contains("vm_migration_libvirt_up 1"))),
        "libvirt_up 1 after SIGCONT; virsh list: {:?}; exporter log:\n{}",
        c.lab.src.virsh(&["list", "--all"]),
        e.log().join("\n")
    );
    c.unthrottle();
    let status = virsh.wait().expect("virsh");
    let rec = c.the_only_record(&e, guard);
    if status.success() {
        assert_eq!(rec["outcome"], "completed", "{rec}");
    }
    assert_eq!(finished_total(&e.metrics(), "out"), 1.0);
}

/// The source QEMU killed mid-migration: one `failed` record, and no live series left.
fn source_qemu_killed(lab: &mut Lab, out: &Path) {
    let c = Case::new(lab, "chaos-qemu", out);
    let guard = c.boot();
    let e = c.exporter(&c.lab.src, &c.out.join("records"), "src");
    let mut virsh = c.migrate(Some(SLOW_MIBS));
    c.wait_job_active(&e);
    let pidfile = c.lab.src.dir().join(format!("run/qemu/{}.pid", c.name));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("QEMU pid file")
        .trim()
        .parse()
        .expect("pid");
    signal(pid, "KILL");
    let _ = virsh.wait();
    assert!(
        poll_until(Duration::from_secs(60), || !c.records(&e).is_empty()),
        "a record"
    );
    let m = e.metrics();
    let label = c.domain_label();
    assert!(
        !m.lines().any(|l| l.starts_with("vm_migration_")
            && !l.starts_with("vm_migration_last_")
            && l.contains(&label)),
        "no live series of the guest once it is recorded:\n{m}"
    );
    let rec = c.the_only_record(&e, guard);
    assert_eq!(rec["outcome"], "failed", "{rec}");
}

/// The source's exporter SIGKILLed mid-migration and started again after it completed: the
/// destination's exporter counts the incoming migration once from its kept completed stats,
/// the restarted one does not count it again, and its record file (with an earlier case's
/// record) survives.
fn exporter_killed_and_restarted(lab: &mut Lab, out: &Path, storage: &Path) {
    let c = Case::new(lab, "chaos-exporter", out);
    let guard = c.boot();
    let before = std::fs::read_to_string(storage.join("migrations.jsonl")).unwrap_or_default();
    assert_eq!(
        before.lines().count(),
        1,
        "the first case's record: {before}"
    );
    let dst = c.exporter(&c.lab.dst, &c.out.join("records-dst"), "dst");
    let src = c.exporter(&c.lab.src, storage, "src");
    let mut virsh = c.migrate(Some(SLOW_MIBS));
    c.wait_job_active(&src);
    drop(src); // SIGKILL
    c.unthrottle();
    assert!(
        virsh.wait().expect("virsh").success(),
        "the migration completes"
    );
    assert!(
        poll_until(Duration::from_secs(60), || {
            let m = dst.metrics();
            finished_total(&m, "in") == 1.0
                && sample(
                    &m,
                    "vm_migration_finished_total",
                    &[
                        "outcome=\"completed\"",
                        "mode=\"precopy\"",
                        "direction=\"in\"",
                    ],
                ) == Some(1.0)
        }),
        "the destination counts the incoming migration:\n{}",
        dst.metrics()
    );
    let src = c.exporter(&c.lab.src, storage, "src-again");
    let recs = src.records();
    assert_eq!(recs.len(), 1, "the earlier record is loaded: {recs:?}");
    assert_eq!(recs[0]["domain"]["name"], "chaos-kill");
    drop(guard);
    // A round on each side after the guest went: nothing more is counted anywhere.
    for e in [&src, &dst] {
        assert!(poll_until(Duration::from_secs(30), || sample_plain(
            &e.metrics(),
            "vm_migration_domains_active"
        ) == Some(0.0)));
    }
    let fleet = finished_total(&src.metrics(), "out") + finished_total(&dst.metrics(), "in");
    assert_eq!(fleet, 1.0, "counted once in the fleet");
    assert_eq!(c.records(&dst).len(), 1);
}

/// A tmpfs of our own for --storage.path, unmounted on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The disk under --storage.path fills up during a record write, then space is freed: the
/// exporter keeps serving, and the record is written whole once there is room (none lost,
/// none glued to another).
fn disk_full(lab: &mut Lab, out: &Path) {
    let c = Case::new(lab, "chaos-disk", out);
    let guard = c.boot();
    let mnt = c.out.join("tmpfs");
    std::fs::create_dir_all(&mnt).expect("mount point");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mount a 64k tmpfs");
    let _fs = Tmpfs(mnt.clone());
    let storage = mnt.join("records");
    let e = c.exporter(&c.lab.src, &storage, "src");
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 256 << 10]);
    let mut virsh = c.migrate(None);
    assert!(
        virsh.wait().expect("virsh").success(),
        "the migration completes"
    );
    assert!(
        poll_until(Duration::from_secs(60), || {
            sample(
                &e.metrics(),
                "vm_migration_storage_errors_total",
                &["op=\"append\""],
            )
            .is_some_and(|v| v > 0.0)
        }),
        "the full disk is reported:\n{}",
        e.metrics()
    );
    assert_eq!(c.records(&e).len(), 1, "the record is served from memory");
    let file = storage.join("migrations.jsonl");
    assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), "");
    std::fs::remove_file(&filler).expect("free the space");
    assert!(
        poll_until(Duration::from_secs(60), || std::fs::read_to_string(&file)
            .is_ok_and(|t| t.lines().count() == 1)),
        "written once there is room"
    );
    let text = std::fs::read_to_string(&file).expect("records");
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("a whole record per line");
        assert_eq!(v["domain"]["name"], "chaos-disk");
    }
    drop(guard);
    assert!(e.body("/metrics").is_some(), "still serving");
}

#[test]
fn chaos_mid_migration() {
    let _one = one_lab_at_a_time();
    let out = scratch("chaos");
    let bin = exporter_bin!();
    let mut lab = Lab::up(&lab_dir(), Some(&bin), &|m| eprintln!("lab: {m}")).expect("lab up");
    let storage = out.join("records-src");
    let started = Instant::now();
    libvirtd_killed_and_restarted(&mut lab, &out, &storage);
    eprintln!("chaos: libvirtd SIGKILL done at {:?}", started.elapsed());
    libvirtd_stopped_for_20s(&mut lab, &out);
    eprintln!("chaos: libvirtd SIGSTOP done at {:?}", started.elapsed());
    source_qemu_killed(&mut lab, &out);
    eprintln!("chaos: QEMU SIGKILL done at {:?}", started.elapsed());
    exporter_killed_and_restarted(&mut lab, &out, &storage);
    eprintln!("chaos: exporter SIGKILL done at {:?}", started.elapsed());
    disk_full(&mut lab, &out);
    eprintln!("chaos: disk full done at {:?}", started.elapsed());
}
