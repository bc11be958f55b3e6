//! The test kit: throw-away libvirt hosts, lab guests, the lab link, the exporter as a process,
//! libvirt's events via virsh, and real Prometheus/Alertmanager. The exporter's integration
//! tests and the system tests use it directly; the `migration-lab` crate (scenarios, plots,
//! reports, its command line) is built on it.

pub mod events;
pub mod exporter;
pub mod guest;
pub mod host;
pub mod net;
pub mod prom;

pub use host::Host;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (network namespaces, libvirtd, QEMU): run it with sudo")]
    NotRoot,
    #[error("lab set-up: {0}")]
    Setup(String),
    #[error("lab network: {0}")]
    Network(String),
    #[error("lab host: {0}")]
    Host(String),
    #[error("lab guest: {0}")]
    Guest(String),
    #[error("lab migration: {0}")]
    Migration(String),
    #[error("lab exporter: {0}")]
    Exporter(String),
}

/// `program` under coreutils' `timeout`: SIGTERM after `limit`, SIGKILL 10 s later (exit
/// status 124 or 137 then), so a wedged daemon cannot hang a test or its clean-up.
pub fn bounded(program: &str, limit: std::time::Duration) -> std::process::Command {
    let mut c = std::process::Command::new("timeout");
    c.arg("--kill-after=10")
        .arg(limit.as_secs().max(1).to_string())
        .arg(program);
    c
}

/// How long one `virsh` command (not a migration) may take.
pub const VIRSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// CPU time (user + system) of process `pid` so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based, counting pid and comm); the kernel's
    // USER_HZ is 100 on every Linux architecture we run on.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Receives from `rx` until a message matches `pred` (returned) or `timeout` passes; panics
/// then with the messages seen, to make failures readable. Non-matching ones are discarded.
pub fn expect_message<T: std::fmt::Debug>(
    rx: &std::sync::mpsc::Receiver<T>,
    timeout: std::time::Duration,
    what: &str,
    mut pred: impl FnMut(&T) -> bool,
) -> T {
    use std::sync::mpsc::RecvTimeoutError;
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) if pred(&m) => return m,
            Ok(m) => seen.push(m),
            Err(RecvTimeoutError::Timeout) => {
                panic!("no {what} within {timeout:?}; saw instead: {seen:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("channel closed while waiting for {what}; saw: {seen:?}")
            }
        }
    }
}

/// An HTTP server on loopback (for the exporter's app probes): answers 200 while `healthy`
/// says so, 503 after. It lives as long as the test process.
pub fn http_server(healthy: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let ok = healthy.load(std::sync::atomic::Ordering::SeqCst);
            let status = if ok { "200 OK" } else { "503 Down" };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    addr
}
