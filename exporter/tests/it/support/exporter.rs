//! The real `vm-migration-exporter` binary, started on 127.0.0.1:0 for a test.
//!
//! The exporter logs `address=HOST:PORT` when it listens; `start` reads that line from its
//! stderr to learn the port, and keeps the rest of the log for assertions.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_vm-migration-exporter");

pub struct RunningExporter {
    child: Child,
    /// Record storage of this instance (unless the test passed its own `--storage.path`).
    _storage: Option<tempfile::TempDir>,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl RunningExporter {
    /// Start the binary with `args` (plus `--web.listen-address 127.0.0.1:0`) and wait until it
    /// listens.
    pub fn start(args: &[&str]) -> RunningExporter {
        Self::start_wrapped(&[], args)
    }

    /// Start it through `wrapper` (e.g. `prlimit --nofile=1024:4096 --`, which execs it: the
    /// pid stays the exporter's).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> RunningExporter {
        let storage =
            (!args.contains(&"--storage.path")).then(|| tempfile::tempdir().expect("tempdir"));
        let mut cmd = match wrapper.split_first() {
            None => Command::new(BIN),
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(BIN);
                c
            }
        };
        cmd.args(["--web.listen-address", "127.0.0.1:0"]);
        if let Some(dir) = &storage {
            cmd.arg("--storage.path").arg(dir.path());
        }
        let mut child = cmd
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vm-migration-exporter");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log_w = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line.contains("message=listening").then(|| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                });
                // Logged before it is announced, so a test that saw the address sees the line.
                if let Ok(mut l) = log_w.lock() {
                    l.push(line);
                }
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(a)) => a,
            other => {
                let _ = child.kill();
                panic!(
                    "exporter did not report its address: {other:?}; log: {:?}",
                    log.lock().map(|l| l.clone())
                );
            }
        };
        RunningExporter {
            child,
            _storage: storage,
            addr,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the process has used so far, from `/proc/<pid>/stat`.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 (1-based, counting pid and comm); the kernel's
        // USER_HZ is 100 on every Linux architecture we run on.
        (ticks(11) + ticks(12)) / 100.0
    }

    /// Send SIGTERM and wait up to `within` for the process to exit; its status, or `None`
    /// when it is still running.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let mut status = None;
        super::poll_until(within, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Send SIGHUP (a reload request).
    pub fn hangup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -HUP {}", self.pid());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET `path` with an optional Accept header: status, content type, body.
    pub fn get_accept(&self, path: &str, accept: Option<&str>) -> (u16, String, String) {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut req = client.get(self.url(path));
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        // A failed request says what the exporter logged (it may have died).
        let resp = req.send().unwrap_or_else(|e| {
            panic!(
                "HTTP request to the exporter: {e}; its log:\n{}",
                self.log().join("\n")
            )
        });
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, ct, resp.text().expect("body"))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let (s, _, b) = self.get_accept(path, None);
        (s, b)
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for RunningExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample whose name-and-labels part is exactly `series`.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok()).flatten()
    })
}
