//! Finished-migration records: an append-only JSON-lines file that survives restarts.
//!
//! One line per finished migration, appended and fsynced as it finishes. On start the file is
//! read back (newest kept in memory for the API). The file never stops the exporter from
//! starting: a torn last line (the process died while writing it) is cut off with a warning; a
//! damaged line anywhere else makes the whole file move aside (`migrations.jsonl.damaged-<unix
//! time>`, named in a log line and in `vm_migration_storage_damaged_file_info`) and the valid
//! records are written to a fresh file. An append that fails part way (disk full) is rolled back
//! to the last whole record, so a later append cannot glue two records together. When the file
//! grows past the retention size it is rewritten, atomically (temp file + rename + directory
//! fsync), with the newest records that fit in half of it; a failed rewrite backs off instead of
//! being retried on every append.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use tracing::{error, warn};

use crate::exposition::GaugeFamily;
use crate::jobs::tracker::FinishedMigration;

pub const FILE_NAME: &str = "migrations.jsonl";
/// Records kept in memory for the API and the landing page.
pub const IN_MEMORY: usize = 10_000;
/// Longest line taken for a record: real ones are a few KiB (verdict history included); a longer
/// line is damage, and reading it whole could exhaust memory.
const MAX_LINE: usize = 1 << 20;
/// First wait before a failed compaction is tried again; doubles up to [`COMPACT_BACKOFF_MAX`].
const COMPACT_BACKOFF: Duration = Duration::from_secs(60);
const COMPACT_BACKOFF_MAX: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage {path}: {source} (check --storage.path: it must be a writable directory)")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    fn io(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::io(path, source)
}

/// Operations counted in `vm_migration_storage_errors_total{op}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    Load,
    Append,
    Compact,
}

impl StoreOp {
    const ALL: [StoreOp; 3] = [StoreOp::Load, StoreOp::Append, StoreOp::Compact];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Load => "load",
            StoreOp::Append => "append",
            StoreOp::Compact => "compact",
        }
    }
}

/// Figures of the record file for `vm_migration_storage_*`, shared with the scrape.
#[derive(Debug, Default)]
pub struct StoreStats {
    records: AtomicU64,
    bytes: AtomicU64,
    errors: [AtomicU64; 3],
    /// The file moved aside at start because it was damaged.
    damaged_file: Mutex<Option<String>>,
}

impl StoreStats {
    pub fn errors(&self, op: StoreOp) -> u64 {
        self.errors[op as usize].load(Ordering::Relaxed)
    }

    fn error(&self, op: StoreOp) {
        self.errors[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn damaged_file(&self) -> Option<String> {
        self.damaged_file.lock().clone()
    }
}

/// Encodes `vm_migration_storage_*` at scrape time from [`StoreStats`] (atomics: no lock that a
/// disk write holds).
#[derive(Debug)]
pub struct StoreFamilies(pub Arc<StoreStats>);

impl Collector for StoreFamilies {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let mut records = GaugeFamily::new(
            "vm_migration_storage_records",
            "Finished-migration records in the record file under --storage.path.",
        );
        records.push(Vec::new(), Some(s.records() as f64));
        records.encode(&mut enc)?;
        let mut bytes = GaugeFamily::new(
            "vm_migration_storage_bytes",
            "Size of the record file under --storage.path.",
        );
        bytes.push(Vec::new(), Some(s.bytes() as f64));
        bytes.encode(&mut enc)?;
        let mut me = enc.encode_descriptor(
            "vm_migration_storage_errors",
            "Failed operations on the record file, by op (load|append|compact); an append that failed is rolled back, the record kept in memory and retried every round until the disk takes it.",
            None,
            MetricType::Counter,
        )?;
        for op in StoreOp::ALL {
            ConstCounter::new(s.errors(op))
                .encode(me.encode_family(&vec![("op", op.as_str().to_string())])?)?;
        }
        let mut damaged = GaugeFamily::new(
            "vm_migration_storage_damaged_file_info",
            "A damaged record file found at start and moved aside to this path (valid records were kept); always 1.",
        );
        if let Some(f) = s.damaged_file() {
            damaged.push(vec![("file", f)], Some(1.0));
        }
        damaged.encode(&mut enc)
    }
}

/// The record file. Appends go through here; readers use the in-memory copy in the state.
pub struct RecordLog {
    dir: PathBuf,
    path: PathBuf,
    /// `None` after a compaction renamed the file but could not reopen it; retried on append.
    file: Option<File>,
    /// Bytes of whole records in the file.
    len: u64,
    /// The file may hold a partial record past `len` (a rollback failed): cut it before writing.
    dirty: bool,
    max_bytes: u64,
    /// A compaction failed: none is tried before this instant.
    compact_not_before: Option<Instant>,
    compact_backoff: Duration,
    stats: Arc<StoreStats>,
}

/// What a read of the record file found.
#[derive(Default)]
struct Scan {
    records: VecDeque<FinishedMigration>,
    /// Valid records in the file (the in-memory copy keeps only the newest [`IN_MEMORY`]).
    count: u64,
    /// Byte ranges of the valid lines, newline included (to rewrite them after damage).
    valid: Vec<(u64, u64)>,
    /// First damaged line before the last one: line number and reason.
    damage: Option<(usize, String)>,
    /// The last line is torn: line number, reason, and where the file is cut.
    torn: Option<(usize, String, u64)>,
    /// The last record is whole but its newline is missing.
    missing_newline: bool,
}

fn scan(reader: impl Read) -> std::io::Result<Scan> {
    let mut reader = BufReader::new(reader);
    let mut out = Scan::default();
    let mut buf = Vec::new();
    let (mut pos, mut lineno) = (0u64, 0usize);
    // A failed line is torn only if nothing but blank lines follows it.
    let mut pending: Option<(usize, String, u64)> = None;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        let start = pos;
        pos += n as u64;
        lineno += 1;
        let terminated = buf.last() == Some(&b'\n');
        let parsed = if !terminated && buf.len() > MAX_LINE {
            pos += reader.skip_until(b'\n')? as u64;
            Err(format!("longer than {MAX_LINE} bytes"))
        } else if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            serde_json::from_slice::<FinishedMigration>(&buf).map_err(|e| e.to_string())
        };
        if let Some((l, msg, _)) = pending.take() {
            out.damage.get_or_insert((l, msg));
        }
        match parsed {
            Ok(r) => {
                out.records.push_back(r);
                if out.records.len() > IN_MEMORY {
                    out.records.pop_front();
                }
                out.count += 1;
                out.valid.push((start, pos));
                out.missing_newline = !terminated;
            }
            Err(msg) => pending = Some((lineno, msg, start)),
        }
    }
    if let Some(p) = pending {
        out.missing_newline = false;
        out.torn = Some(p);
    }
    Ok(out)
}

/// Write `chunks` of `src` to `path` atomically: a temp file beside it (never following a
/// symlink planted there), fsynced, renamed over `path`, then the directory fsynced so the
/// rename itself survives a power cut.
fn write_atomically(
    dir: &Path,
    path: &Path,
    chunks: &mut dyn Iterator<Item = &[u8]>,
) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    // A leftover of a compaction that died, or something planted: unlink never follows links.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let written = (|| {
        let mut w = std::io::BufWriter::new(f);
        for c in chunks {
            w.write_all(c)?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if written.is_err() {
        // Give the space back (disk full is the usual cause).
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Unix seconds, for the name of a file moved aside.
fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RecordLog {
    /// Open (creating the directory and file if needed) and read back the newest
    /// [`IN_MEMORY`] records, oldest first. Fails only when the directory or file cannot be
    /// used at all (bad configuration), never because of what the file holds.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
    ) -> Result<(RecordLog, VecDeque<FinishedMigration>), StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(FILE_NAME);
        let stats = Arc::new(StoreStats::default());
        let opened = match File::open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let existed = opened.is_some();
        let found = match opened {
            Some(f) => scan(f).map_err(io_err(&path))?,
            None => Scan::default(),
        };
        let count = found.count;
        let repaired = match &found.damage {
            Some((line, msg)) => match quarantine(dir, &path, &found) {
                Ok(aside) => {
                    warn!(path = %path.display(), moved_to = %aside.display(), line, error = %msg, records_kept = found.count,
                        "the record file is damaged: moved aside, its valid records kept in a fresh file");
                    *stats.damaged_file.lock() = Some(aside.display().to_string());
                    true
                }
                Err(e) => {
                    stats.error(StoreOp::Load);
                    error!(path = %path.display(), line, error = %e, damage = %msg,
                        "the record file is damaged and cannot be moved aside; appending after the damage");
                    false
                }
            },
            None => false,
        };
        if !repaired {
            if let Some((line, msg, cut)) = &found.torn {
                warn!(path = %path.display(), line, error = %msg, "skipping a torn last record (the exporter stopped while writing it)");
                // Cut it off so the next append starts on a line of its own.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(*cut).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if !repaired && found.missing_newline {
            // A whole record whose newline never reached the disk: end its line.
            file.write_all(b"\n").map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
        }
        if !existed {
            sync_dir(dir).map_err(io_err(dir))?;
        }
        let len = file.metadata().map_err(io_err(&path))?.len();
        stats.records.store(count, Ordering::Relaxed);
        stats.bytes.store(len, Ordering::Relaxed);
        Ok((
            RecordLog {
                dir: dir.to_path_buf(),
                path,
                file: Some(file),
                len,
                dirty: false,
                max_bytes,
                compact_not_before: None,
                compact_backoff: COMPACT_BACKOFF,
                stats,
            },
            found.records,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The figures behind `vm_migration_storage_*`.
    pub fn stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }

    /// Append one record (written and fsynced); compacts when the file passes the retention
    /// size. On error the record is not in the file, and the file is as it was before the call.
    pub fn append(&mut self, rec: &FinishedMigration) -> Result<(), StoreError> {
        if let Err(e) = self.append_line(rec) {
            self.stats.error(StoreOp::Append);
            return Err(e);
        }
        let due = self.compact_not_before.is_none_or(|t| Instant::now() >= t);
        if self.len > self.max_bytes && due {
            if let Err(e) = self.compact() {
                // The record itself is stored; the file is only larger than wanted for now.
                self.stats.error(StoreOp::Compact);
                warn!(error = %e, retry_in = ?self.compact_backoff, "cannot compact the record file");
                self.compact_not_before = Some(Instant::now() + self.compact_backoff);
                self.compact_backoff = (self.compact_backoff * 2).min(COMPACT_BACKOFF_MAX);
                return Ok(());
            }
            self.compact_not_before = None;
            self.compact_backoff = COMPACT_BACKOFF;
        }
        Ok(())
    }

    fn append_line(&mut self, rec: &FinishedMigration) -> Result<(), StoreError> {
        let path = &self.path;
        let mut line =
            serde_json::to_vec(rec).map_err(|e| StoreError::io(path, std::io::Error::other(e)))?;
        line.push(b'\n');
        if self.file.is_none() {
            let f = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(io_err(path))?;
            self.len = f.metadata().map_err(io_err(path))?.len();
            self.file = Some(f);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if self.dirty {
            file.set_len(self.len).map_err(io_err(path))?;
            self.dirty = false;
        }
        if let Err(e) = file.write_all(&line).and_then(|()| file.sync_data()) {
            // Roll back to the last whole record: a partial line left here would glue the next
            // record to it.
            if file.set_len(self.len).is_err() {
                self.dirty = true;
            }
            return Err(StoreError::io(path, e));
        }
        self.len += line.len() as u64;
        self.stats.records.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.store(self.len, Ordering::Relaxed);
        Ok(())
    }

    /// Rewrite the file with the newest records that fit in half the retention size.
    fn compact(&mut self) -> Result<(), StoreError> {
        let path = &self.path;
        let mut data = Vec::new();
        File::open(path)
            .and_then(|f| f.take(self.len).read_to_end(&mut data))
            .map_err(io_err(path))?;
        let budget = (self.max_bytes / 2) as usize;
        let mut start = data.len();
        let mut kept = 0u64;
        // Whole lines from the end, newest first, while they fit.
        while start > 0 {
            let line_start = data[..start - 1]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            if data.len() - line_start > budget {
                break;
            }
            start = line_start;
            kept += 1;
        }
        let keep = &data[start..];
        write_atomically(&self.dir, path, &mut std::iter::once(keep)).map_err(io_err(path))?;
        // The old descriptor points at the replaced file now.
        self.file = None;
        let f = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        self.file = Some(f);
        self.len = keep.len() as u64;
        self.dirty = false;
        self.stats.records.store(kept, Ordering::Relaxed);
        self.stats.bytes.store(self.len, Ordering::Relaxed);
        Ok(())
    }
}

/// Keep a damaged file for inspection under a name of its own and put a fresh file with its
/// valid lines in its place. The original is linked aside first, so a crash in between leaves
/// both names; the rename over it is atomic.
fn quarantine(dir: &Path, path: &Path, found: &Scan) -> std::io::Result<PathBuf> {
    let data = fs::read(path)?;
    let stamp = unix_secs();
    let mut n = 0;
    let aside = loop {
        let name = match n {
            0 => format!("{FILE_NAME}.damaged-{stamp}"),
            n => format!("{FILE_NAME}.damaged-{stamp}.{n}"),
        };
        let aside = dir.join(name);
        match fs::hard_link(path, &aside) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e),
            Ok(()) => break aside,
        }
    };
    let mut lines = found.valid.iter().map(|&(s, e)| {
        let (s, e) = (s as usize, (e as usize).min(data.len()));
        &data[s.min(e)..e]
    });
    let mut with_newline = lines
        .by_ref()
        .chain(found.missing_newline.then_some(&b"\n"[..]));
    write_atomically(dir, path, &mut with_newline)?;
    Ok(aside)
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

    use crate::jobs::stats::Direction;
    use crate::jobs::tracker::{FigureSource, Outcome, Phase};
    use crate::libvirt::DomainId;

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
            identity: None,
        }
    }

    #[test]
    fn retention_keeps_the_newest_within_the_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let max = 8192;
        let (mut log, mut mem) = RecordLog::open(dir.path(), max).expect("open");
        for i in 0..100 {
            mem.push_back(rec(i));
            log.append(&rec(i)).expect("append");
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
