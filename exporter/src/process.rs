//! The standard `process_*` metrics every Prometheus client library exports, for the exporter's
//! own process, read from `/proc/self` at scrape time (as client_golang's process collector
//! does). Always `/proc/self`: `--path.procfs` points at the host's processes, not at ours.
//!
//! A file that cannot be read or parsed leaves out only the series it feeds.

use std::path::{Path, PathBuf};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use crate::exposition::GaugeFamily;

/// `USER_HZ`: the unit of the tick counts in `/proc/<pid>/stat` and `/proc/stat`. The kernel
/// exports 100 on every architecture (client_golang's procfs uses the same constant).
const USER_HZ: f64 = 100.0;

/// What `/proc/<pid>/stat` tells about the process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub cpu_seconds: f64,
    pub threads: u64,
    /// Ticks after boot when the process started.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
    pub rss_pages: u64,
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold spaces
/// and parentheses itself: the fields after it start after the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // rest starts at field 3 (state); field n is at index n - 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_seconds: (num(14)? + num(15)?) as f64 / USER_HZ,
        threads: num(20)?,
        start_ticks: num(22)?,
        virtual_bytes: num(23)?,
        rss_pages: num(24)?,
    })
}

/// `btime` (boot time, Unix seconds) from `/proc/stat`.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft "Max open files" limit from `/proc/<pid>/limits`; `None` when unlimited.
pub fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident set size in bytes (`VmRSS`, in kB) from `/proc/<pid>/status`: no page size needed.
pub fn parse_rss_bytes(status: &str) -> Option<u64> {
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Encodes the `process_*` families of the process under `dir` (`/proc/self`) at scrape time.
#[derive(Debug)]
pub struct ProcessFamilies {
    dir: PathBuf,
    /// `/proc/stat`, for the boot time.
    proc_stat: PathBuf,
}

impl Default for ProcessFamilies {
    fn default() -> Self {
        ProcessFamilies {
            dir: PathBuf::from("/proc/self"),
            proc_stat: PathBuf::from("/proc/stat"),
        }
    }
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

impl Collector for ProcessFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stat = read(&self.dir.join("stat")).and_then(|t| parse_stat(&t));
        if let Some(s) = stat {
            let me = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(s.cpu_seconds).encode(me)?;
        }
        let gauge = |name, help, v: Option<f64>| {
            let mut g = GaugeFamily::new(name, help);
            g.push(vec![], v);
            g
        };
        let open_fds = std::fs::read_dir(self.dir.join("fd"))
            .ok()
            .map(|d| d.count() as f64);
        let boot = read(&self.proc_stat).and_then(|t| parse_boot_time(&t));
        let start = stat
            .zip(boot)
            .map(|(s, b)| b as f64 + s.start_ticks as f64 / USER_HZ);
        let rss = read(&self.dir.join("status")).and_then(|t| parse_rss_bytes(&t));
        let families = [
            gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                open_fds,
            ),
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                read(&self.dir.join("limits"))
                    .and_then(|t| parse_max_fds(&t))
                    .map(|n| n as f64),
            ),
            gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stat.map(|s| s.virtual_bytes as f64),
            ),
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss.map(|b| b as f64),
            ),
            gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                start,
            ),
            gauge(
                "process_threads",
                "Number of OS threads in the process.",
                stat.map(|s| s.threads as f64),
            ),
        ];
        for f in &families {
            f.encode(&mut encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line, with a command name holding a space and a `)`.
    const STAT: &str = "4242 (vm-migr) ation) S 1 4242 4242 0 -1 4194560 3054 0 0 0 \
        150 37 0 0 20 0 7 0 123456 987654321 2345 18446744073709551615 1 1 0 0 0 0 0 4096 17922 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_after_the_command_name() {
        let s = parse_stat(STAT).expect("parses");
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 1.87,
                threads: 7,
                start_ticks: 123456,
                virtual_bytes: 987654321,
                rss_pages: 2345,
            }
        );
        assert_eq!(parse_stat("4242 (x) S 1 2"), None, "truncated");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn limits_status_and_boot_time() {
        let limits =
            "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            parse_rss_bytes("Name:\tx\nVmSize:\t  10 kB\nVmRSS:\t    2048 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1764270000\nprocesses 9\n"),
            Some(1764270000)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }
}
