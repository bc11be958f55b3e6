//! vm-migration-exporter as a child process: the exporter under test in the integration and
//! system tests, and the lab's exporter watching each migration.
//!
//! The exporter logs `address=HOST:PORT` when it listens; starting it reads that line from its
//! stderr to learn the port, and keeps the log for assertions and failure messages. Which binary
//! to run is the caller's: tests pass the path cargo gives them (`CARGO_BIN_EXE_*`).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::prom::poll_until;
use crate::LabError;

/// A running exporter, killed when dropped.
pub struct Exporter {
    child: Child,
    pub addr: SocketAddr,
    client: reqwest::blocking::Client,
    log: Arc<Mutex<VecDeque<String>>>,
    /// Record storage of this instance, unless the caller gave its own `--storage.path`.
    _storage: Option<tempfile::TempDir>,
}

/// Lines of the exporter's log kept in memory: a test reads all of them, a long lab run keeps
/// its last ones (the whole log also goes to a file next to the lab's trace).
const LOG_LINES: usize = 20_000;

/// How long starting waits for the exporter to report its address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The exporter binary for the lab's command line: `explicit` (its `--exporter`), else
/// `$VM_MIGRATION_EXPORTER`, else next to the running program (how cargo and packages lay
/// binaries out).
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, LabError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("VM_MIGRATION_EXPORTER") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("vm-migration-exporter"));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        LabError::Exporter(
            "no vm-migration-exporter binary found: build it (cargo build -p vm-migration-exporter) or pass --exporter"
                .into(),
        )
    })
}

/// What a lab exporter is started with: the libvirt URI it watches, where it keeps records and
/// its raw trace, and optionally its listen address (else a free port), `--config.file` and
/// extra flags (e.g. the forecast's).
#[derive(Clone, Copy, Debug)]
pub struct Launch<'a> {
    pub uri: &'a str,
    pub storage: &'a Path,
    pub trace: &'a Path,
    pub listen: Option<SocketAddr>,
    pub config: Option<&'a Path>,
    pub extra: &'a [String],
}

impl<'a> Launch<'a> {
    /// Watch `uri`, records under `storage`, trace to `trace`; nothing optional.
    pub fn new(uri: &'a str, storage: &'a Path, trace: &'a Path) -> Self {
        Launch {
            uri,
            storage,
            trace,
            listen: None,
            config: None,
            extra: &[],
        }
    }
}

impl Exporter {
    /// Start `bin` with `args` and wait until it listens. Unless `args` say otherwise it listens
    /// on a free port of 127.0.0.1 and keeps its records in a temporary directory of its own.
    /// Panics (with the exporter's log) when it does not start: for tests.
    pub fn start(bin: impl AsRef<Path>, args: &[&str]) -> Exporter {
        Self::start_wrapped(bin, &[], args)
    }

    /// Like [`Exporter::start`], run through `wrapper` (e.g. `prlimit --nofile=1024:4096 --`,
    /// which execs it: the pid stays the exporter's).
    pub fn start_wrapped(bin: impl AsRef<Path>, wrapper: &[&str], args: &[&str]) -> Exporter {
        let bin = bin.as_ref();
        let storage = (!args.contains(&"--storage.path")).then(|| {
            tempfile::Builder::new()
                .prefix("vme-storage")
                .tempdir()
                .expect("a temporary storage directory")
        });
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin),
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(bin);
                c
            }
        };
        if !args.contains(&"--web.listen-address") {
            cmd.args(["--web.listen-address", "127.0.0.1:0"]);
        }
        if let Some(dir) = &storage {
            cmd.arg("--storage.path").arg(dir.path());
        }
        cmd.args(args);
        Self::spawn(cmd, None, storage).unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
    }

    /// Start `bin` as a lab exporter (`how`), its log copied next to the trace, and wait until
    /// it listens.
    pub fn launch(bin: &Path, how: &Launch) -> Result<Exporter, LabError> {
        let Launch {
            uri,
            storage,
            trace,
            listen,
            config,
            extra,
        } = *how;
        let listen = listen
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let mut cmd = Command::new(bin);
        cmd.args(["--web.listen-address", &listen, "--libvirt.uri", uri])
            .args(["--sample.interval", "500ms", "--sample.idle-interval", "2s"])
            // Probe each migration's peer four times a second: short ci migrations still get
            // several RTT samples into their records.
            .args(["--probe.interval", "250ms", "--probe.timeout", "1s"])
            .arg("--storage.path")
            .arg(storage)
            .arg("--trace.path")
            .arg(trace)
            .args(config.iter().flat_map(|c| [Path::new("--config.file"), c]))
            // Debug level logs every probe of a guest's service (the lab plots them) when there
            // is a config (the lab gives one only for app guests); VME_EXPORTER_LOG_LEVEL=debug
            // wins (more to read when a lab test fails).
            .args([
                "--log.level".to_string(),
                std::env::var("VME_EXPORTER_LOG_LEVEL").unwrap_or_else(|_| {
                    if config.is_some() { "debug" } else { "info" }.to_string()
                }),
            ])
            .args(["--log.format", "logfmt"])
            .args(extra);
        let log_path = trace.with_extension("log");
        let log_file = std::fs::File::create(&log_path)
            .map_err(|e| LabError::Exporter(format!("{}: {e}", log_path.display())))?;
        Self::spawn(cmd, Some(log_file), None)
    }

    /// Run `cmd`, keep its log (and copy it to `log_file`), and wait for its address.
    fn spawn(
        mut cmd: Command,
        mut log_file: Option<std::fs::File>,
        storage: Option<tempfile::TempDir>,
    ) -> Result<Exporter, LabError> {
        let program: OsString = cmd.get_program().to_owned();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Exporter(format!("cannot start {program:?}: {e}")))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| LabError::Exporter("no stderr".into()))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let kept = log.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line.contains("message=listening").then(|| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                });
                if let Some(f) = log_file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                // Kept before the address is announced, so a caller that saw the address
                // also sees the line.
                if let Ok(mut k) = kept.lock() {
                    if k.len() == LOG_LINES {
                        k.pop_front();
                    }
                    k.push_back(line);
                }
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(LISTEN_TIMEOUT) {
            Ok(Some(a)) => a,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let said: Vec<String> = log
                    .lock()
                    .map(|l| l.iter().cloned().collect())
                    .unwrap_or_default();
                return Err(LabError::Exporter(format!(
                    "the exporter did not report a listening address within {LISTEN_TIMEOUT:?}; its log:\n{}",
                    said.join("\n")
                )));
            }
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| LabError::Exporter(e.to_string()))?;
        Ok(Exporter {
            child,
            addr,
            client,
            log,
            _storage: storage,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::cpu_seconds(self.pid()).unwrap_or(0.0)
    }

    /// Send SIGTERM and wait up to `within` for the process to exit; its status, or `None`
    /// when it is still running.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let mut status = None;
        poll_until(within, || {
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

    /// GET `path` with an optional Accept header: status, content type, body. Panics (with the
    /// exporter's log: it may have died) when the request fails: for tests.
    pub fn get_accept(&self, path: &str, accept: Option<&str>) -> (u16, String, String) {
        let mut req = self.client.get(self.url(path));
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
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

    /// GET `path`: status and body (see [`Exporter::get_accept`]).
    pub fn get(&self, path: &str) -> (u16, String) {
        let (s, _, b) = self.get_accept(path, None);
        (s, b)
    }

    /// The body of a successful GET of `path`; `None` when it failed or was not a success.
    pub fn body(&self, path: &str) -> Option<String> {
        self.client
            .get(self.url(path))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.text().ok())
    }

    /// `/metrics`, or an empty text when the exporter does not answer.
    pub fn metrics(&self) -> String {
        self.body("/metrics").unwrap_or_default()
    }

    /// Finished-migration records, newest first.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.body("/api/v1/migrations")
            .and_then(|b| serde_json::from_str::<Vec<serde_json::Value>>(&b).ok())
            .unwrap_or_default()
    }

    /// What it logged so far (the last [`LOG_LINES`] lines), oldest first.
    /// Waits up to `within` for `/-/ready` to answer 200; panics with the exporter's log if not.
    pub fn wait_ready(&self, within: Duration) {
        assert!(
            poll_until(within, || self.get("/-/ready").0 == 200),
            "exporter never became ready; log: {:?}",
            self.log()
        );
    }

    pub fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample line of exposition text: `name{labels} value` (labels as written, without the
/// braces; empty when there are none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// Name and labels as written: `name{labels}`, or `name`.
    pub series: &'a str,
    pub name: &'a str,
    pub labels: &'a str,
    pub value: f64,
}

/// The samples of exposition text (comments and unparsable lines skipped). A sample's
/// timestamp, if any, is not supported: the exporter writes none.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let value = v.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            Some(Sample {
                series,
                name,
                labels,
                value,
            })
        })
}

/// The value of the sample whose name-and-labels part is exactly `series`
/// (`vm_migration_libvirt_up`, `vm_migration_collector_success{collector="jobs"}`).
pub fn value(text: &str, series: &str) -> Option<f64> {
    samples(text).find(|s| s.series == series).map(|s| s.value)
}

/// The value of the first sample named `name` whose labels contain all of `labels` (each as
/// written, e.g. `domain="g1"`).
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    samples(text)
        .find(|s| s.name == name && labels.iter().all(|l| s.labels.contains(l)))
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP a An a.\n# TYPE a gauge\na 1\n\
                        b{domain=\"g1\",state=\"x\"} 2.5\nb{domain=\"g2\",state=\"y\"} 3\n\
                        c{x=\"has } brace\"} 4\nbroken\n";

    #[test]
    fn value_matches_the_whole_series() {
        assert_eq!(value(TEXT, "a"), Some(1.0));
        assert_eq!(value(TEXT, "b{domain=\"g2\",state=\"y\"}"), Some(3.0));
        assert_eq!(value(TEXT, "b{domain=\"g2\"}"), None);
        assert_eq!(value(TEXT, "# TYPE a"), None);
        assert_eq!(value(TEXT, "broken"), None);
    }

    #[test]
    fn sample_matches_name_and_contained_labels() {
        assert_eq!(sample(TEXT, "a", &[]), Some(1.0));
        assert_eq!(sample(TEXT, "b", &["domain=\"g1\""]), Some(2.5));
        assert_eq!(
            sample(TEXT, "b", &["state=\"y\"", "domain=\"g2\""]),
            Some(3.0)
        );
        assert_eq!(sample(TEXT, "b", &["domain=\"g3\""]), None);
        // A name is matched whole, not as a prefix.
        assert_eq!(sample(TEXT, "", &[]), None);
        assert_eq!(sample(TEXT, "c", &["x=\"has } brace\""]), Some(4.0));
    }
}
