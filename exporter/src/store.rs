//! Finished-migration records: an append-only JSON-lines file that survives restarts.
//!
//! One line per finished migration, appended and flushed as it finishes. On start the file is
//! read back (newest kept in memory for the API); a torn last line (the process died while
//! writing it) is cut off with a warning, never fatal. When the file grows past the retention
//! size it is rewritten, atomically (temp file + rename), with the newest records that fit in
//! half of it.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::migration::tracker::FinishedMigration;

pub const FILE_NAME: &str = "migrations.jsonl";
/// Records kept in memory for the API and the landing page.
pub const IN_MEMORY: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage {path}: {source} (check --storage.path: it must be a writable directory)")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("storage {path} line {line}: {message} (the file is damaged before its last line; move it away to start afresh)")]
    Corrupt {
        path: String,
        line: usize,
        message: String,
    },
}

/// The record file. Appends go through here; readers use the in-memory copy in the state.
pub struct RecordLog {
    path: PathBuf,
    file: File,
    len: u64,
    max_bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl RecordLog {
    /// Open (creating the directory and file if needed) and read back the newest
    /// [`IN_MEMORY`] records, oldest first.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
    ) -> Result<(RecordLog, VecDeque<FinishedMigration>), StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(FILE_NAME);
        let records = load(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        Ok((
            RecordLog {
                path,
                file,
                len,
                max_bytes,
            },
            records,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record; compacts when the file passes the retention size.
    pub fn append(
        &mut self,
        rec: &FinishedMigration,
        newest: &VecDeque<FinishedMigration>,
    ) -> Result<(), StoreError> {
        let mut line = serde_json::to_string(rec).map_err(|e| StoreError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(io_err(&self.path))?;
        self.file.flush().map_err(io_err(&self.path))?;
        self.len += line.len() as u64;
        if self.len > self.max_bytes {
            self.compact(newest)?;
        }
        Ok(())
    }

    /// Rewrite the file with the newest records that fit in half the retention size.
    fn compact(&mut self, newest: &VecDeque<FinishedMigration>) -> Result<(), StoreError> {
        let budget = self.max_bytes / 2;
        let mut lines = Vec::new();
        let mut used = 0u64;
        for rec in newest.iter().rev() {
            let Ok(l) = serde_json::to_string(rec) else {
                continue;
            };
            if used + l.len() as u64 + 1 > budget {
                break;
            }
            used += l.len() as u64 + 1;
            lines.push(l);
        }
        lines.reverse();
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            for l in &lines {
                writeln!(f, "{l}").map_err(io_err(&tmp))?;
            }
            f.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        self.len = used;
        Ok(())
    }
}

/// Read the records back; cut off a torn last line.
fn load(path: &Path) -> Result<VecDeque<FinishedMigration>, StoreError> {
    let mut out = VecDeque::new();
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(path)(e)),
    };
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(io_err(path))?;
    let mut good_bytes = 0u64;
    let n = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            good_bytes += line.len() as u64 + 1;
            continue;
        }
        match serde_json::from_str::<FinishedMigration>(line) {
            Ok(r) => {
                out.push_back(r);
                if out.len() > IN_MEMORY {
                    out.pop_front();
                }
                good_bytes += line.len() as u64 + 1;
            }
            Err(e) if i + 1 == n => {
                warn!(path = %path.display(), line = i + 1, error = %e, "skipping a torn last record (the exporter stopped while writing it)");
                // Cut it off so the next append starts on a line of its own.
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len(good_bytes).map_err(io_err(path))?;
            }
            Err(e) => {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    line: i + 1,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// Parse a size such as `64MiB`, `512KiB`, `1GiB` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size; use e.g. 64MiB, 512KiB or a byte count"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        u => return Err(format!("'{s}': unknown unit '{u}'; use B, KiB, MiB or GiB")),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if v < 4096 {
        return Err(format!("'{s}' is too small; at least 4KiB"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::libvirt::DomainId;
    use crate::migration::stats::Direction;
    use crate::migration::tracker::{FigureSource, Outcome, Phase};

    fn rec(i: u32) -> FinishedMigration {
        FinishedMigration {
            domain: DomainId {
                name: format!("g{i}"),
                uuid: format!("00000000-0000-4000-8000-{i:012}"),
            },
            direction: Direction::Out,
            outcome: Outcome::Completed,
            mode: Phase::Precopy,
            started_at: f64::from(i),
            finished_at: f64::from(i) + 1.0,
            duration_seconds: Some(1.0),
            downtime_seconds: Some(0.05),
            data_processed_bytes: Some(1),
            data_total_bytes: Some(1),
            memory_total_bytes: Some(1),
            iterations: Some(3),
            postcopy_requests: None,
            setup_time_seconds: None,
            dirty_rate_max_bytes: None,
            dirty_rate_mean_bytes: None,
            transfer_rate_mean_bytes: None,
            auto_converge_throttle_max_ratio: None,
            verdicts: Vec::new(),
            figures: FigureSource::Event,
            network: None,
            peer: None,
            app: None,
        }
    }

    #[test]
    fn retention_keeps_the_newest_within_the_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let max = 8192;
        let (mut log, mut mem) = RecordLog::open(dir.path(), max).expect("open");
        for i in 0..100 {
            mem.push_back(rec(i));
            log.append(&rec(i), &mem).expect("append");
            let len = fs::metadata(log.path()).expect("stat").len();
            assert!(len <= max, "file {len} bytes after record {i}");
        }
        let (_, back) = RecordLog::open(dir.path(), max).expect("reopen");
        assert!(back.len() > 5, "kept {}", back.len());
        assert_eq!(back.back(), Some(&rec(99)), "the newest survives");
        let firsts: Vec<f64> = back.iter().map(|r| r.started_at).collect();
        assert!(
            firsts.windows(2).all(|w| w[0] + 1.0 == w[1]),
            "a contiguous newest run, in order: {firsts:?}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("8192"), Ok(8192));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("1").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
