//! Real Prometheus and Alertmanager for tests (Debian packages `prometheus`,
//! `prometheus-alertmanager`), each with fresh storage in a temp dir, plus a webhook receiver
//! that records what Alertmanager sends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const START: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn ready(url: &str) -> bool {
    reqwest::blocking::get(url)
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

/// Start a daemon quietly and wait until it answers `/-/ready` on `addr`.
fn start_daemon(mut cmd: Command, addr: SocketAddr, what: &str) -> Proc {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} must be installed: {e}"));
    let proc = Proc(child);
    assert!(
        poll_until(START, || ready(&format!("http://{addr}/-/ready"))),
        "{what} did not start on {addr}"
    );
    proc
}

/// Kills the process on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Records every webhook notification body (Alertmanager's JSON).
pub struct Webhook {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream);
                let mut len = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_ok() {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        if let Ok(mut s) = store.lock() {
                            s.push(v);
                        }
                    }
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Webhook { addr, received }
    }

    pub fn notifications(&self) -> Vec<serde_json::Value> {
        self.received.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

pub struct Alertmanager {
    pub addr: SocketAddr,
    _proc: Proc,
}

impl Alertmanager {
    /// Alertmanager routing everything to `webhook` at once (1 s group wait and interval).
    pub fn start(dir: &Path, webhook: SocketAddr) -> Alertmanager {
        let cfg = dir.join("alertmanager.yml");
        std::fs::write(
            &cfg,
            format!(
                "route:\n  receiver: hook\n  group_by: [alertname, instance, domain]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: hook\n    webhook_configs:\n      - url: http://{webhook}/\n        send_resolved: true\n"
            ),
        )
        .expect("write alertmanager.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cmd = Command::new("prometheus-alertmanager");
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=");
        Alertmanager {
            addr,
            _proc: start_daemon(
                cmd,
                addr,
                "prometheus-alertmanager (Debian package prometheus-alertmanager)",
            ),
        }
    }
}

pub struct Prometheus {
    pub addr: SocketAddr,
    _proc: Proc,
}

impl Prometheus {
    /// Prometheus scraping `targets` as job `vm-migration-exporter` every second, evaluating
    /// `rules` every second and sending alerts to `alertmanager`.
    pub fn start(
        dir: &Path,
        targets: &[SocketAddr],
        rules: &Path,
        alertmanager: Option<SocketAddr>,
    ) -> Prometheus {
        let cfg = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let mut text = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: vm-migration-exporter\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        if let Some(am) = alertmanager {
            text.push_str(&format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{am}']\n"
            ));
        }
        std::fs::write(&cfg, text).expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prom-data").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        Prometheus {
            addr,
            _proc: start_daemon(cmd, addr, "prometheus (Debian package prometheus)"),
        }
    }

    /// An instant query; returns the `data.result` array.
    pub fn query(&self, q: &str) -> Vec<serde_json::Value> {
        self.api("query", &[("query", q)])
    }

    /// A query over `[start, end]` with a 1 s step; returns `data.result`.
    pub fn query_range(&self, q: &str, start: f64, end: f64) -> Vec<serde_json::Value> {
        let (s, e) = (format!("{start:.3}"), format!("{end:.3}"));
        self.api(
            "query_range",
            &[("query", q), ("start", &s), ("end", &e), ("step", "1")],
        )
    }

    fn api(&self, endpoint: &str, params: &[(&str, &str)]) -> Vec<serde_json::Value> {
        let url = format!("http://{}/api/v1/{endpoint}", self.addr);
        let resp = reqwest::blocking::Client::new()
            .get(url)
            .query(params)
            .send();
        let Ok(text) = resp.and_then(|r| r.text()) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(v["status"], "success", "{endpoint} {params:?} failed: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// The repository's alert rules file.
pub fn rules_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../alerts/vm-migration.rules.yml")
}
