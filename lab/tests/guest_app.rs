//! The guest's optional HTTP service answers through QEMU user-mode networking, and keeps
//! answering after a live migration to a second QEMU: the same guest (its request counter goes
//! on) behind the destination's forwarded port. Plain QEMU under TCG: no libvirt, no
//! namespaces, no root. Builds the guest assets (one kernel download, cached) under
//! `$MIGRATION_LAB_GUEST_DIR` (default `/var/tmp/migration-lab-guest-app`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use migration_lab::guest::{self, AppReply, GuestSpec, Pattern};
use migration_lab::prom::poll_until;

/// A QEMU this test started: killed (by its own handle) when dropped.
struct Qemu {
    child: Child,
    monitor: PathBuf,
    serial: PathBuf,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    fn start(
        dir: &Path,
        tag: &str,
        assets: &guest::Assets,
        spec: &GuestSpec,
        http: SocketAddr,
        incoming: Option<SocketAddr>,
    ) -> Qemu {
        let monitor = dir.join(format!("{tag}.monitor"));
        let serial = dir.join(format!("{tag}.serial"));
        let _ = std::fs::remove_file(&monitor);
        let _ = std::fs::remove_file(&serial);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "pc", "-accel", "tcg", "-m", "256", "-smp", "1"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-kernel")
            .arg(&assets.kernel)
            .arg("-initrd")
            .arg(&assets.initrd)
            .args(["-append", &spec.cmdline()])
            .args(guest::app_nic_args(&http.ip().to_string(), http.port()));
        if let Some(m) = incoming {
            cmd.args(["-incoming", &format!("tcp:{m}")]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{tag}.stderr"))).expect("stderr"))
            .spawn()
            .expect("qemu-system-x86_64 starts (apt-get install qemu-system-x86)");
        Qemu {
            child,
            monitor,
            serial,
        }
    }

    /// One HMP command on the monitor socket; its output up to the next prompt.
    fn hmp(&self, command: &str) -> Result<String, String> {
        let mut s = UnixStream::connect(&self.monitor).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let read_prompt = |s: &mut UnixStream| -> Result<String, String> {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"(qemu) ") {
                let n = s.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("monitor closed".into());
                }
                got.extend_from_slice(&buf[..n]);
            }
            Ok(String::from_utf8_lossy(&got).into_owned())
        };
        read_prompt(&mut s)?; // the banner
        s.write_all(format!("{command}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        read_prompt(&mut s)
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// The value `f` yields once it yields one (the lab's `poll_until`), or panic naming `what`.
fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let mut got = None;
    let done = poll_until(timeout, || {
        got = f();
        got.is_some()
    });
    assert!(done, "timed out after {timeout:?}: {what}");
    got.expect("poll_until returned true only with a value")
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
}

fn get(addr: SocketAddr) -> AppReply {
    guest::app_get(addr, Duration::from_secs(10)).expect("the guest answers")
}

#[test]
fn guest_http_service_answers_before_and_after_live_migration() {
    let lab_dir = PathBuf::from(
        std::env::var("MIGRATION_LAB_GUEST_DIR")
            .unwrap_or_else(|_| "/var/tmp/migration-lab-guest-app".into()),
    );
    let assets = guest::setup(&lab_dir, &|m| eprintln!("setup: {m}")).expect("guest assets");
    let run_dir = lab_dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).expect("run dir");
    let spec = GuestSpec {
        name: "app".into(),
        memory_mb: 256,
        // An idle guest, as in the lab's ci idle run: with the dirtier writing 10 MiB/s, QEMU
        // 7.2 under TCG left the destination's guest kernel crashed right after this plain
        // migration in 5 of 35 runs (timer rbtree corruption; docs/lab.md, known issue).
        // This test is about the service surviving the migration, not about that.
        dirty_mbps: 0,
        dirty_mb: 32,
        pattern: Pattern::Seq,
        hot_mb: 32,
        app_port: Some(0), // the port itself goes to QEMU below
    };
    let (http_src, http_dst, migration) = (free_port(), free_port(), free_port());

    let mut src = Qemu::start(&run_dir, "src", &assets, &spec, http_src, None);
    until(
        "the guest's HTTP service starts",
        Duration::from_secs(180),
        || {
            if let Some(st) = src.exited() {
                panic!("source QEMU exited ({st}): {}", src.console());
            }
            let console = src.console();
            assert!(
                !console.contains("app: error"),
                "guest app failed:\n{console}"
            );
            console.contains("app: http listening on :80").then_some(())
        },
    );
    // The forwarder may accept before the guest's socket is reachable: poll for the answer.
    let first =
        guest::app_wait(http_src, Duration::from_secs(30)).expect("an HTTP answer from the source");
    let second = get(http_src);
    println!("before migration: {first:?} then {second:?}");
    assert_eq!(second.requests, first.requests + 1);
    assert!(second.uptime_s >= first.uptime_s);

    let mut dst = Qemu::start(&run_dir, "dst", &assets, &spec, http_dst, Some(migration));
    until(
        "the destination waits for the migration",
        Duration::from_secs(60),
        || {
            if let Some(st) = dst.exited() {
                panic!("destination QEMU exited ({st})");
            }
            dst.hmp("info status")
                .ok()
                .filter(|s| s.contains("inmigrate"))
        },
    );
    let started = Instant::now();
    let out = src
        .hmp(&format!("migrate -d tcp:{migration}"))
        .expect("migrate");
    assert!(!out.contains("rror"), "migrate: {out}");
    let status = until("the migration ends", Duration::from_secs(180), || {
        let info = src.hmp("info migrate").ok()?;
        let status = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("Migration status: "))?
            .trim()
            .to_string();
        ["completed", "failed", "cancelled"]
            .contains(&status.as_str())
            .then_some((status, info))
    });
    assert_eq!(status.0, "completed", "{}", status.1);
    println!("migrated in {:?}", started.elapsed());
    until(
        "the destination runs the guest",
        Duration::from_secs(30),
        || {
            dst.hmp("info status")
                .ok()
                .filter(|s| s.contains("VM status: running"))
        },
    );

    let after = guest::app_wait(http_dst, Duration::from_secs(30)).unwrap_or_else(|e| {
        panic!(
            "no HTTP answer from the destination ({e}); its console:\n{}",
            dst.console()
        )
    });
    println!("after migration: {after:?}");
    assert_eq!(
        after.requests,
        second.requests + 1,
        "the request counter goes on: the same guest answered"
    );
    assert!(after.uptime_s > second.uptime_s);
    // The dirtier runs on at the destination with its memory intact.
    let line = until(
        "a dirtier status line on the destination",
        Duration::from_secs(30),
        || {
            dst.console()
                .lines()
                .find(|l| l.starts_with("dirtier: t="))
                .map(str::to_string)
        },
    );
    assert!(line.ends_with("ref=ok"), "{line}");
    drop(src);
    drop(dst);
    let _ = std::fs::remove_dir_all(&run_dir);
}
