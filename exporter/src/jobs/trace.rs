//! Job-stat traces: what libvirt said, as JSON lines, for replay.
//!
//! The daemon writes one when started with `--trace.path` (the lab does this for every
//! migration); [`ReplaySource`] plays one back behind the [`JobSource`] seam so the sampler and
//! its accounting are tested on what real migrations looked like.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::libvirt::jobs::{DomainEvent, DomainId, JobSource, RawJob, SourceError};

/// One line of a trace. `t` is unix time in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum TraceRecord {
    /// A sample round started: the active domains libvirt listed.
    Round {
        t: f64,
        domains: Vec<DomainId>,
    },
    /// `virDomainGetJobStats` for one domain (`job` is null when it had no job).
    Job {
        t: f64,
        domain: DomainId,
        job: Option<RawJob>,
    },
    /// Completed stats read with `COMPLETED|KEEP_COMPLETED`.
    Completed {
        t: f64,
        domain: DomainId,
        job: Option<RawJob>,
    },
    MaxDowntime {
        t: f64,
        domain: DomainId,
        ms: Option<u64>,
    },
    Event {
        t: f64,
        event: DomainEvent,
    },
    Connection {
        t: f64,
        connected: bool,
    },
}

impl TraceRecord {
    pub fn t(&self) -> f64 {
        match self {
            TraceRecord::Round { t, .. }
            | TraceRecord::Job { t, .. }
            | TraceRecord::Completed { t, .. }
            | TraceRecord::MaxDowntime { t, .. }
            | TraceRecord::Event { t, .. }
            | TraceRecord::Connection { t, .. } => *t,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("trace file {path} line {line}: {source}")]
    Parse {
        path: String,
        line: usize,
        source: serde_json::Error,
    },
}

/// Appends trace records; flushed after every sample round so a crash loses at most one.
pub struct TraceWriter {
    out: BufWriter<File>,
}

impl TraceWriter {
    pub fn create(path: &Path) -> Result<Self, TraceError> {
        let f = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| TraceError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(TraceWriter {
            out: BufWriter::new(f),
        })
    }

    pub fn write(&mut self, rec: &TraceRecord) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, rec)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Read a whole trace. A torn last line (the writer crashed mid-line) is skipped.
pub fn read_trace(path: &Path) -> Result<Vec<TraceRecord>, TraceError> {
    let io = |source| TraceError::Io {
        path: path.display().to_string(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(io)?;
    let n = lines.len();
    let mut out = Vec::with_capacity(n);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == n => break,
            Err(source) => {
                return Err(TraceError::Parse {
                    path: path.display().to_string(),
                    line: i + 1,
                    source,
                })
            }
        }
    }
    Ok(out)
}

/// A [`JobSource`] that answers from a recorded trace, as of a replay clock the test moves.
///
/// At replay time `t` it answers each call with the latest answer recorded at or before `t`
/// for that domain, and lists the domains of the latest recorded round.
pub struct ReplaySource {
    records: Vec<TraceRecord>,
    now: Mutex<f64>,
    /// Metadata elements by (domain UUID, namespace): traces hold none, tests add them.
    metadata: Mutex<std::collections::BTreeMap<(String, String), String>>,
}

impl ReplaySource {
    pub fn new(records: Vec<TraceRecord>) -> Self {
        let start = records.first().map(TraceRecord::t).unwrap_or(0.0);
        ReplaySource {
            records,
            now: Mutex::new(start),
            metadata: Default::default(),
        }
    }

    /// Answer `metadata(domain, ns)` with `xml` for these (UUID, namespace, xml) triples.
    pub fn with_metadata(self, elements: &[(&str, &str, &str)]) -> Self {
        for (uuid, ns, xml) in elements {
            self.set_metadata(uuid, ns, Some(xml));
        }
        self
    }

    /// Set (or with `None` remove) a domain's element, as `virsh metadata` would.
    pub fn set_metadata(&self, uuid: &str, ns: &str, xml: Option<&str>) {
        let key = (uuid.to_string(), ns.to_string());
        let mut m = self.metadata.lock();
        match xml {
            Some(x) => m.insert(key, x.to_string()),
            None => m.remove(&key),
        };
    }

    pub fn set_time(&self, t: f64) {
        *self.now.lock() = t;
    }

    pub fn records(&self) -> &[TraceRecord] {
        &self.records
    }

    fn latest<T>(&self, pick: impl Fn(&TraceRecord) -> Option<T>) -> Option<T> {
        let now = *self.now.lock();
        self.records
            .iter()
            // Rounds are written when they end: the file is not strictly ordered by time.
            .rev()
            .filter(|r| r.t() <= now)
            .find_map(pick)
    }

    fn connected(&self) -> bool {
        self.latest(|r| match r {
            TraceRecord::Connection { connected, .. } => Some(*connected),
            _ => None,
        })
        .unwrap_or(true)
    }
}

impl JobSource for ReplaySource {
    fn is_connected(&self) -> bool {
        self.connected()
    }

    fn list_domains(&self) -> Result<Vec<DomainId>, SourceError> {
        if !self.connected() {
            return Err(SourceError::NotConnected("replay: disconnected".into()));
        }
        Ok(self
            .latest(|r| match r {
                TraceRecord::Round { domains, .. } => Some(domains.clone()),
                _ => None,
            })
            .unwrap_or_default())
    }

    fn job_stats(&self, domain: &DomainId) -> Result<Option<RawJob>, SourceError> {
        Ok(self
            .latest(|r| match r {
                TraceRecord::Job { domain: d, job, .. } if d.uuid == domain.uuid => {
                    Some(job.clone())
                }
                _ => None,
            })
            .flatten())
    }

    fn completed_job_stats(&self, domain: &DomainId) -> Result<Option<RawJob>, SourceError> {
        Ok(self
            .latest(|r| match r {
                TraceRecord::Completed { domain: d, job, .. } if d.uuid == domain.uuid => {
                    Some(job.clone())
                }
                _ => None,
            })
            .flatten())
    }

    fn max_downtime_ms(&self, domain: &DomainId) -> Result<Option<u64>, SourceError> {
        Ok(self
            .latest(|r| match r {
                TraceRecord::MaxDowntime { domain: d, ms, .. } if d.uuid == domain.uuid => {
                    Some(*ms)
                }
                _ => None,
            })
            .flatten())
    }
    fn metadata(&self, domain: &DomainId, uri: &str) -> Result<Option<String>, SourceError> {
        Ok(self
            .metadata
            .lock()
            .get(&(domain.uuid.clone(), uri.to_string()))
            .cloned())
    }
}
