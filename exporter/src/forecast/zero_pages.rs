//! How much of a guest's resident memory pass 1 would really send (`--forecast.zero-pages`).
//!
//! Pre-copy sends a zero page as a marker of a few bytes, so what pass 1 costs is the guest's
//! non-zero memory, not its resident memory. The two differ on guests holding memory they were
//! given but have not written yet: the lab's writers map their working set populated, so the
//! guest RAM was resident long before it held data (358 MiB resident against 90–265 MiB sent in
//! pass 1: forecasts 54–249 % too long). Nothing outside the guest tells a zeroed page from a
//! written one without looking, so this samples: for [`SAMPLE_PAGES`] pages spread over the
//! guest-RAM mapping, `/proc/<pid>/pagemap` says whether the page is present, and a present page
//! is read from `/proc/<pid>/mem` and tested for all-zero. Nothing of its content is kept.
//!
//! - Only present pages are read: reading a missing page would fault it in (and on a post-copy
//!   destination block on QEMU's userfaultfd until the page arrives).
//! - A missing page counts as zero (QEMU reads the zero page for it), a swapped one as data.
//! - Needs `CAP_SYS_PTRACE` (ptrace access to QEMU) and read access to QEMU's `/proc` files
//!   (`CAP_DAC_READ_SEARCH` when QEMU runs as another user), as the packaged unit grants.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Pages tested per sample: the non-zero share is known to ±2.2 % (one standard error at worst)
/// whatever the guest's size, for 512 small reads (~2 ms).
pub const SAMPLE_PAGES: u32 = 512;
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;

/// The guest-RAM mapping of a QEMU process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mapping {
    pub start: u64,
    pub len: u64,
    /// Its resident bytes (`Rss:`).
    pub rss: f64,
}

/// The guest-RAM mapping in a QEMU process's `/proc/<pid>/smaps`: the largest mapping whose size
/// is the guest's memory (within 1 %).
pub fn guest_ram_mapping(smaps: &str, memory_bytes: f64) -> Option<Mapping> {
    let mut best: Option<Mapping> = None;
    let mut current: Option<(u64, u64)> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let size = b.saturating_sub(a);
                let near = (size as f64 - memory_bytes).abs() <= memory_bytes * 0.01;
                current = near.then_some((a, size));
                continue;
            }
        }
        if let (Some((start, len)), Some(kb)) = (current, line.strip_prefix("Rss:")) {
            let kb: Option<f64> = kb.trim().trim_end_matches("kB").trim().parse().ok();
            if let Some(kb) = kb {
                if best.is_none_or(|m| len > m.len) {
                    best = Some(Mapping {
                        start,
                        len,
                        rss: kb * 1024.0,
                    });
                }
            }
            current = None;
        }
    }
    best
}

/// What one sample found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Pages looked at.
    pub pages: u32,
    /// Present pages read.
    pub present: u32,
    /// Pages holding data: present and not all-zero, swapped out, or present but unreadable.
    pub nonzero: u32,
}

impl Sample {
    /// The share of the mapping that holds data.
    pub fn nonzero_share(&self) -> f64 {
        if self.pages == 0 {
            return 1.0;
        }
        f64::from(self.nonzero) / f64::from(self.pages)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    #[error("cannot open {path}: {source} (the exporter needs CAP_SYS_PTRACE and read access to QEMU's /proc files, or run without --forecast.zero-pages)")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the mapping at {start:#x} (+{len} bytes) has no whole page of {page} bytes")]
    Empty { start: u64, len: u64, page: u64 },
}

/// A small deterministic generator (xorshift64*): which page in each stratum is looked at.
struct Picks(u64);

impl Picks {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below.max(1)
    }
}

/// The host's base page size (what `pagemap` is indexed by).
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| v.is_power_of_two())
        .unwrap_or(4096)
}

/// Tests `pages` pages of `[start, start + len)` in the process whose `/proc` directory is
/// `proc_pid`: one page at a random place in each of `pages` equal strata (`seed` picks them).
pub fn sample(
    proc_pid: &Path,
    start: u64,
    len: u64,
    pages: u32,
    seed: u64,
) -> Result<Sample, ZeroPageError> {
    let page = page_size();
    let first = start.div_ceil(page);
    let count = (start + len) / page - first.min((start + len) / page);
    if count == 0 {
        return Err(ZeroPageError::Empty { start, len, page });
    }
    let open = |name: &str| {
        let path = proc_pid.join(name);
        File::open(&path)
            .map(|f| (f, path.clone()))
            .map_err(|source| ZeroPageError::Open { path, source })
    };
    let (pagemap, pagemap_path) = open("pagemap")?;
    let (mem, _) = open("mem")?;
    let k = u64::from(pages).min(count);
    let mut picks = Picks(seed | 1);
    let mut entry = [0u8; 8];
    let mut buf = vec![0u8; page as usize];
    let mut s = Sample {
        pages: 0,
        present: 0,
        nonzero: 0,
    };
    for i in 0..k {
        // Stratum i: pages [i·count/k, (i+1)·count/k).
        let lo = i * count / k;
        let hi = ((i + 1) * count / k).max(lo + 1);
        let index = first + lo + picks.next(hi - lo);
        pagemap
            .read_exact_at(&mut entry, index * 8)
            .map_err(|source| ZeroPageError::Read {
                path: pagemap_path.clone(),
                source,
            })?;
        let e = u64::from_le_bytes(entry);
        s.pages += 1;
        if e & PRESENT != 0 {
            s.present += 1;
            // A page that cannot be read (device memory, gone since) counts as data: pass 1
            // would err long, the safe side.
            let zero =
                mem.read_exact_at(&mut buf, index * page).is_ok() && buf.iter().all(|b| *b == 0);
            if !zero {
                s.nonzero += 1;
            }
        } else if e & SWAPPED != 0 {
            s.nonzero += 1;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1048576.0;

    #[test]
    fn the_guest_ram_mapping_is_found_by_its_size() {
        let smaps = "\
55d0c0000000-55d0c0200000 r-xp 00000000 08:01 123 /usr/bin/qemu-system-x86_64
Size:               2048 kB
Rss:                1500 kB
7f0000000000-7f0020000000 rw-p 00000000 00:00 0
Size:             524288 kB
Rss:              317440 kB
7f1000000000-7f1040000000 rw-p 00000000 00:00 0
Size:            1048576 kB
Rss:              150000 kB
";
        let m = guest_ram_mapping(smaps, 512.0 * MIB).expect("found");
        assert_eq!(m.start, 0x7f00_0000_0000);
        assert_eq!(m.len, 512 << 20);
        assert_eq!(m.rss, 310.0 * MIB);
        assert_eq!(guest_ram_mapping(smaps, 64.0 * MIB), None);
        assert_eq!(guest_ram_mapping("garbage\nRss: x kB\n", 512.0 * MIB), None);
    }

    /// This test process's own memory stands in for a guest's: a region of which a known share
    /// of pages holds data, another share is written with zeros, and the rest never touched.
    #[test]
    fn the_share_of_pages_holding_data_is_estimated_from_a_real_process() {
        let page = page_size() as usize;
        let pages = 8192;
        // One page more so a page-aligned region of `pages` pages fits.
        let mut region = vec![0u8; (pages + 1) * page];
        let base = region.as_ptr() as usize;
        let offset = (page - base % page) % page;
        let aligned = &mut region[offset..offset + pages * page];
        // Pages 0..2048 hold data (one non-zero byte at a varying place), 2048..6144 were written
        // with zeros (resident, zero), 6144.. were never touched (vec![0; n] maps fresh zero
        // pages: not present, or present and zero).
        for p in 0..2048 {
            aligned[p * page + (p * 37) % page] = 1 + (p % 200) as u8;
        }
        for p in 2048..6144 {
            aligned[p * page..(p + 1) * page].fill(0);
            std::hint::black_box(&aligned[p * page]);
        }
        let start = aligned.as_ptr() as u64;
        let len = (pages * page) as u64;
        let s = sample(Path::new("/proc/self"), start, len, SAMPLE_PAGES, 7).expect("sample");
        assert_eq!(s.pages, SAMPLE_PAGES);
        // Stratified: exactly a quarter of the strata lie in the data pages (8192 pages).
        assert_eq!(s.nonzero, SAMPLE_PAGES / 4, "{s:?}");
        assert!(s.present >= SAMPLE_PAGES / 4, "{s:?}");
        assert!((s.nonzero_share() - 0.25).abs() < 1e-9);
        // Fewer pages than asked: each page once.
        let s = sample(Path::new("/proc/self"), start, 16 * page as u64, 100, 1).expect("small");
        assert_eq!((s.pages, s.nonzero), (16, 16));
        std::hint::black_box(&region);
    }

    #[test]
    fn errors_name_the_file_and_the_fix() {
        let dir = std::env::temp_dir().join(format!("vme-zero-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let e = sample(&dir, 0x10000, 1 << 20, 16, 1).expect_err("no pagemap");
        let text = e.to_string();
        assert!(
            text.contains("pagemap") && text.contains("CAP_SYS_PTRACE"),
            "{text}"
        );
        let e = sample(&dir, 0x10001, 100, 16, 1).expect_err("no whole page");
        assert!(e.to_string().contains("no whole page"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
