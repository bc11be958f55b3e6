//! libvirt's domain events as `virsh event --loop` prints them: what libvirt itself announced,
//! to compare the exporter's figures with.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::LabError;

/// `virsh event --all --loop` on a connection, its lines collected as they come.
pub struct EventWatch {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl EventWatch {
    pub fn start(uri: &str) -> Result<EventWatch, LabError> {
        let mut child = Command::new("virsh")
            .args(["-c", uri, "event", "--all", "--loop"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LabError::Migration(format!("virsh event: {e}")))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| LabError::Migration("virsh event: no stdout".into()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let w = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut v) = w.lock() {
                    v.push(l);
                }
            }
        });
        Ok(EventWatch { child, lines })
    }

    /// The `key: value` fields of the first `job-completed` event, once it came.
    pub fn job_completed(&self) -> Option<BTreeMap<String, String>> {
        let lines = self.lines.lock().ok()?.clone();
        let start = lines.iter().position(|l| l.contains("'job-completed'"))?;
        let fields: BTreeMap<String, String> = lines[start + 1..]
            .iter()
            .take_while(|l| l.starts_with(char::is_whitespace))
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        (!fields.is_empty()).then_some(fields)
    }
}

impl EventWatch {
    /// Everything virsh printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
