//! A libvirt "host": a private libvirtd (and virtlogd) in its own mount namespace, optionally in
//! a network namespace of its own. The lab runs two of them as source and destination; the
//! exporter's integration tests use them as throw-away daemons.
//!
//! ```text
//! let dir = tempfile::tempdir()?;                 // keep it short: socket paths max 107 bytes
//! let uri = Host::uri_for(dir.path());    // known before the daemon exists
//! let mut daemon = Host::start(dir.path())?;   // returns once the socket accepts
//! assert_eq!(daemon.uri(), uri);
//! daemon.virsh(&["list", "--all"])?;              // read-write virsh against it
//! daemon.kill();                                  // SIGKILL, as if it crashed
//! let daemon = Host::start(dir.path())?;  // same socket again
//! drop(daemon);                                   // SIGTERM (then SIGKILL), QEMUs killed too
//! ```
//!
//! Each daemon runs in its own mount namespace (`unshare -m --propagation private`) with
//! `/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`, `/var/log/libvirt` and
//! `/var/cache/libvirt` bind-mounted from subdirectories of `dir`, plus its own `virtlogd`, so
//! several can run at once (one per test) without seeing each other's state. Its sockets are in
//! `dir/sock/` (`libvirt-sock`, `libvirt-sock-ro`); its log is `dir/log/libvirtd.log`; the
//! QEMU driver runs guests as root with no security driver, cgroups or namespaces (see
//! `shared/notes/libvirt-lab.md`). Needs root, `unshare`, `libvirtd` and `virtlogd`.
//!
//! Processes are tracked by pid file only (never by name), and `Drop` kills exactly those.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long `start` waits for the socket to appear.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `Drop`/`kill` wait for a process to go away after a signal.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running private libvirtd (and its virtlogd). Killed and cleaned up on drop.
#[derive(Debug)]
pub struct Host {
    dir: PathBuf,
    netns: Option<String>,
    uri: String,
    pid: Option<i32>,
    virtlogd_pid: Option<i32>,
}

impl Host {
    /// The read-write socket a daemon started in `dir` listens on.
    pub fn socket_path(dir: &Path) -> PathBuf {
        dir.join("sock").join("libvirt-sock")
    }

    /// The URI of a daemon started in `dir` (valid before it starts, for reconnect tests).
    pub fn uri_for(dir: &Path) -> String {
        format!("qemu:///system?socket={}", Self::socket_path(dir).display())
    }

    /// Starts libvirtd with private state under `dir` (created if missing; the directory itself
    /// is left in place on drop, only the state in it is removed). Returns once the socket
    /// exists and the pid file is written.
    pub fn start(dir: &Path) -> io::Result<Host> {
        Self::start_in(dir, None)
    }

    /// Like [`Host::start`], with the daemon (and so its guests) inside network namespace
    /// `netns` (which must exist), listening on TCP too so peers can reach it.
    pub fn start_in(dir: &Path, netns: Option<&str>) -> io::Result<Host> {
        Self::launch(dir, netns, true)
    }

    fn launch(dir: &Path, netns: Option<&str>, with_virtlogd: bool) -> io::Result<Host> {
        let dir = dir.to_path_buf();
        for sub in ["etc", "run", "lib", "log/qemu", "cache", "sock"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        // Mount points for the bind mounts (present on a host with libvirt installed).
        for mp in MOUNTS.iter().map(|(_, target)| target) {
            fs::create_dir_all(mp)?;
        }
        let sock = Self::socket_path(&dir);
        let _ = fs::remove_file(&sock); // a stale socket from a killed daemon
        let libvirtd_pidfile = dir.join("libvirtd.pid");
        let virtlogd_pidfile = dir.join("virtlogd.pid");
        let _ = fs::remove_file(&libvirtd_pidfile);
        if with_virtlogd {
            let _ = fs::remove_file(&virtlogd_pidfile);
        }

        fs::write(
            dir.join("etc/libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{}\"\nauth_unix_ro = \"none\"\nauth_unix_rw = \"none\"\n\
                 listen_tls = 0\nlisten_tcp = {}\nauth_tcp = \"none\"\nhost_uuid = \"{}\"\n\
                 log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
                dir.join("sock").display(),
                u8::from(netns.is_some()),
                host_uuid()
            ),
        )?;
        // Daemons share the network namespace: each gets its own incoming-migration ports.
        let (port_min, port_max) = migration_ports();
        fs::write(
            dir.join("etc/qemu.conf"),
            format!(
                "user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\nnamespaces = [ ]\n\
                 cgroup_controllers = [ ]\nmigration_address = \"0.0.0.0\"\nmigration_port_min = {port_min}\nmigration_port_max = {port_max}\n"
            ),
        )?;

        let mut script = String::from("set -e\n");
        for (sub, target) in MOUNTS {
            script.push_str(&format!(
                "mount --bind '{}' '{target}'\n",
                dir.join(sub).display()
            ));
        }
        script.push_str(&format!(
            "{}exec libvirtd -d {} -f /etc/libvirt/libvirtd.conf -p '{}'\n",
            if with_virtlogd {
                format!("virtlogd -d -p '{}'\n", virtlogd_pidfile.display())
            } else {
                String::new()
            },
            if netns.is_some() { "--listen" } else { "" },
            libvirtd_pidfile.display()
        ));
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "unshare"]);
                c
            }
            None => Command::new("unshare"),
        };
        let out = cmd
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .output()?;
        let mut me = Host {
            netns: netns.map(str::to_string),
            uri: Self::uri_for(&dir),
            dir,
            pid: None,
            virtlogd_pid: None,
        };
        me.virtlogd_pid = read_pid(&virtlogd_pidfile);
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "starting libvirtd failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            me.pid = read_pid(&libvirtd_pidfile);
            me.virtlogd_pid = me.virtlogd_pid.or_else(|| read_pid(&virtlogd_pidfile));
            if me.pid.is_some() && sock.exists() {
                return Ok(me);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "libvirtd did not create {} within {START_TIMEOUT:?}; see {}",
                    sock.display(),
                    me.dir.join("log/libvirtd.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `qemu:///system?socket=<dir>/sock/libvirt-sock`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The daemon's pid (from its pid file), `None` once killed.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// The state directory passed to [`Host::start`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `virsh -c <uri> <args>` (read-write) and returns its stdout; an error carries
    /// stderr.
    pub fn virsh(&self, args: &[&str]) -> io::Result<String> {
        let out = crate::bounded("virsh", crate::VIRSH_TIMEOUT)
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if matches!(out.status.code(), Some(124 | 137)) {
            return Err(io::Error::other(format!(
                "virsh {args:?} did not return within {:?} (libvirtd wedged?)",
                crate::VIRSH_TIMEOUT
            )));
        }
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "virsh {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops libvirtd (SIGTERM) and starts it again on the same state, leaving its guests
    /// running, as an operator's `systemctl restart libvirtd` would.
    pub fn restart(&mut self) -> io::Result<()> {
        if let Some(pid) = self.pid.take() {
            signal_and_wait(pid, "TERM");
        }
        let netns = self.netns.clone();
        // virtlogd keeps running (and keeps the guests' logs): only libvirtd starts again.
        let mut fresh = Host::launch(&self.dir, netns.as_deref(), false)?;
        self.pid = fresh.pid.take();
        fresh.virtlogd_pid = None;
        // `fresh` owns nothing now; forgetting it keeps its Drop from touching our guests.
        std::mem::forget(fresh);
        Ok(())
    }

    /// SIGKILLs libvirtd (as if it crashed) and waits until it is gone. virtlogd and guests
    /// are left running until drop. Idempotent.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            signal_and_wait(pid, "KILL");
        }
    }

    /// Pids of QEMU processes started by this daemon (from `run/qemu/*.pid`).
    fn guest_pids(&self) -> Vec<i32> {
        let Ok(rd) = fs::read_dir(self.dir.join("run/qemu")) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
            .filter_map(|e| read_pid(&e.path()))
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            signal_and_wait(pid, "TERM");
        }
        for pid in self.guest_pids() {
            signal_and_wait(pid, "KILL");
        }
        if let Some(pid) = self.virtlogd_pid.take() {
            signal_and_wait(pid, "TERM");
        }
        for sub in ["etc", "run", "lib", "log", "cache", "sock"] {
            let _ = fs::remove_dir_all(self.dir.join(sub));
        }
        let _ = fs::remove_file(self.dir.join("libvirtd.pid"));
        let _ = fs::remove_file(self.dir.join("virtlogd.pid"));
    }
}

/// Kill what a host in `dir` left running (guests, libvirtd, virtlogd), by pid file only.
pub fn stop_leftovers(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir.join("run/qemu")) {
        for p in rd.filter_map(Result::ok).map(|e| e.path()) {
            if p.extension().is_some_and(|x| x == "pid") {
                if let Some(pid) = read_pid(&p) {
                    signal_and_wait(pid, "KILL");
                }
            }
        }
    }
    for f in ["libvirtd.pid", "virtlogd.pid"] {
        if let Some(pid) = read_pid(&dir.join(f)) {
            signal_and_wait(pid, "TERM");
        }
    }
}

/// (subdirectory of `dir`, mount target) for the bind mounts.
const MOUNTS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

/// A range of 16 ports per daemon started by this process, from 49152 upwards.
fn migration_ports() -> (u32, u32) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) % 512;
    let min = 49152 + n * 16;
    (min, min + 15)
}

fn host_uuid() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        std::process::id(),
        n & 0xffff,
        (u64::from(nanos) << 8) | 0x1
    )
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Alive = /proc/<pid> exists and is not a zombie (our pid 1 may not reap daemons).
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Sends `SIG<sig>` to `pid`, waits until it is gone, escalates to SIGKILL after the timeout.
fn signal_and_wait(pid: i32, sig: &str) {
    if !alive(pid) {
        return;
    }
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive(pid) {
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tiny diskless TCG guest (it sits in the firmware): enough for a running QEMU domain on a
/// [`Host`].
pub fn tiny_guest_xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <controller type='usb' model='none'/><memballoon model='none'/></devices></domain>"
    )
}
