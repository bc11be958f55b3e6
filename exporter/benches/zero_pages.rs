//! Zero-page sampling (`--forecast.zero-pages`): what one guest's sample costs, against a
//! reference measured in the same run: reading and parsing the process's `/proc/<pid>/smaps`,
//! which the forecast does for every guest every round anyway. The "guest" is a 512 MiB region
//! of this process, a quarter of it holding data, half zeroed, the rest never touched. Prints
//! medians and the ratio (ours / reference); no thresholds, machines here are noisy.
//!
//! cargo bench -p vm-migration-exporter --bench zero_pages
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use vm_migration_exporter::forecast::zero_pages::{self, SAMPLE_PAGES};

const GUEST: usize = 512 << 20;
const RUNS: usize = 200;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut f: impl FnMut() -> f64) -> (Duration, f64) {
    let mut last = 0.0;
    let samples = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            last = black_box(f());
            t.elapsed()
        })
        .collect();
    (median(samples), last)
}

fn main() {
    let page = zero_pages::page_size() as usize;
    let mut region = vec![0u8; GUEST + page];
    let offset = (page - region.as_ptr() as usize % page) % page;
    let ram = &mut region[offset..offset + GUEST];
    let pages = GUEST / page;
    for p in 0..pages / 4 {
        ram[p * page + p % page] = 1;
    }
    for p in pages / 4..3 * pages / 4 {
        ram[p * page] = 0;
        ram[p * page + 1] = black_box(0);
    }
    let start = ram.as_ptr() as u64;
    let memory = GUEST as f64;
    let mut seed = 1u64;
    let (reference, rss) = time(|| {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        zero_pages::guest_ram_mapping(&smaps, memory).map_or(0.0, |m| m.rss)
    });
    let (ours, share) = time(|| {
        seed += 1;
        zero_pages::sample(
            Path::new("/proc/self"),
            start,
            GUEST as u64,
            SAMPLE_PAGES,
            seed,
        )
        .map_or(-1.0, |s| s.nonzero_share())
    });
    println!(
        "guest RAM: {} MiB, {} pages sampled",
        GUEST >> 20,
        SAMPLE_PAGES
    );
    println!(
        "| what | median | result | ratio to reference |\n|---|---|---|---|\n\
| reference: read and parse /proc/self/smaps | {:.0} µs | resident {:.0} MiB | 1.00 |\n\
| ours: zero-page sample | {:.0} µs | non-zero share {:.3} (true 0.250) | {:.2} |",
        reference.as_secs_f64() * 1e6,
        rss / 1048576.0,
        ours.as_secs_f64() * 1e6,
        share,
        ours.as_secs_f64() / reference.as_secs_f64()
    );
    black_box(&region);
}
