//! vm-migration-exporter as a child process of the lab, scraped while migrations run.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::LabError;

pub struct Exporter {
    child: Child,
    pub addr: SocketAddr,
    client: reqwest::blocking::Client,
    /// The last lines it logged (for failure messages).
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

/// Lines of the exporter's log kept for [`Exporter::log`].
const LOG_LINES: usize = 200;

/// The exporter binary: `$VM_MIGRATION_EXPORTER`, else next to this program, else
/// target/{release,debug}.
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
        if let Some(up) = dir.parent() {
            candidates.push(up.join("vm-migration-exporter"));
        }
    }
    candidates.push(PathBuf::from("target/release/vm-migration-exporter"));
    candidates.push(PathBuf::from("target/debug/vm-migration-exporter"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| LabError::Exporter("no vm-migration-exporter binary found: build it (cargo build -p vm-migration-exporter) or pass --exporter".into()))
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
    /// Start `bin` as `how` says and wait until it listens.
    pub fn start(bin: &Path, how: &Launch) -> Result<Exporter, LabError> {
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
        let mut child = Command::new(bin)
            .args(["--web.listen-address", &listen, "--libvirt.uri", uri])
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
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Exporter(format!("cannot start {}: {e}", bin.display())))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| LabError::Exporter("no stderr".into()))?;
        // Its log goes next to the trace, for looking into a run afterwards.
        let log_path = trace.with_extension("log");
        let mut log_file = std::fs::File::create(&log_path)
            .map_err(|e| LabError::Exporter(format!("{}: {e}", log_path.display())))?;
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut k) = kept.lock() {
                    if k.len() == LOG_LINES {
                        k.pop_front();
                    }
                    k.push_back(line.clone());
                }
                let _ = writeln!(log_file, "{line}");
                if line.contains("message=listening") {
                    let addr = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                        .and_then(|a| a.parse().ok());
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(a)) => a,
            _ => {
                let _ = child.kill();
                return Err(LabError::Exporter(
                    "the exporter did not start listening".into(),
                ));
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
        })
    }

    /// The last lines it logged, oldest first.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Option<String> {
        self.client
            .get(format!("http://{}{}", self.addr, path))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.text().ok())
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").unwrap_or_default()
    }

    /// Finished-migration records, newest first.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.get("/api/v1/migrations")
            .and_then(|b| serde_json::from_str::<Vec<serde_json::Value>>(&b).ok())
            .unwrap_or_default()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a sample in exposition text whose series starts with `name{` and contains all
/// `labels` (e.g. `domain="g1"`).
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        (rest.starts_with('{') && labels.iter().all(|lab| rest.contains(lab)))
            .then(|| v.parse().ok())
            .flatten()
    })
}
