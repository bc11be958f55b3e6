//! Where a guest's dirty rate and memory come from, before any migration: libvirt's
//! `dirtyrate.*` and `balloon.*` domain statistics, and the domain's own past migrations.
//!
//! - `dirtyrate.megabytes_per_second` (MiB/s: QEMU scales the sampled dirty share of RAM by
//!   `ram_size >> 20`) once `dirtyrate.calc_status` says measured (2). QEMU's
//!   `calc_start_time` runs on its monotonic clock, not the wall clock, so a reading's age is
//!   counted from when this exporter first saw it.
//! - `balloon.current` (KiB): the guest's memory. Pass 1 sends the pages holding data (zero
//!   pages go as markers): with `--forecast.zero-pages` the sampled non-zero share of the QEMU
//!   process's guest-RAM mapping ([`super::zero_pages`]), else that mapping's resident size
//!   (`/proc/<pid>/smaps`, the mapping as large as the guest's memory; zeroed but resident pages
//!   make it err long), else `balloon.rss`, which also counts QEMU's own memory (the lab's TCG
//!   guests: 457 MiB resident for ~310 MiB touched).
//! - The records' mean dirty rate of the domain's last migration out of this host, when libvirt
//!   has no measurement.

use serde::Serialize;

use crate::libvirt::{ParamValue, Params};

/// `virDomainDirtyRateStatus`: measured.
const MEASURED: u64 = 2;
const MIB: f64 = 1048576.0;

/// A dirty-rate measurement libvirt reports for a domain.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub bytes_per_second: f64,
    /// Identifies one calculation (QEMU's start time and period).
    pub calc_start: i64,
    pub period_s: u64,
    pub mode: Option<String>,
    /// Calculations averaged into `bytes_per_second`.
    pub samples: u32,
}

/// What one domain's statistics say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DomainStats {
    pub memory_bytes: Option<f64>,
    pub rss_bytes: Option<f64>,
    pub measured: Option<Measured>,
    /// A calculation is running now.
    pub measuring: bool,
}

impl DomainStats {
    pub fn parse(p: &Params) -> DomainStats {
        let u = |k: &str| p.get(k).and_then(ParamValue::as_u64);
        let i = |k: &str| match p.get(k) {
            Some(ParamValue::Int(v)) => Some(*v),
            Some(v) => v.as_u64().and_then(|v| i64::try_from(v).ok()),
            None => None,
        };
        let status = u("dirtyrate.calc_status");
        let measured = match (status, u("dirtyrate.megabytes_per_second")) {
            (Some(MEASURED), Some(mb)) => Some(Measured {
                bytes_per_second: mb as f64 * MIB,
                calc_start: i("dirtyrate.calc_start_time").unwrap_or(0),
                period_s: u("dirtyrate.calc_period").unwrap_or(0),
                mode: match p.get("dirtyrate.calc_mode") {
                    Some(ParamValue::Str(s)) => Some(s.clone()),
                    _ => None,
                },
                samples: 1,
            }),
            _ => None,
        };
        DomainStats {
            memory_bytes: u("balloon.current").map(|k| k as f64 * 1024.0),
            rss_bytes: u("balloon.rss").map(|k| k as f64 * 1024.0),
            measured,
            measuring: status == Some(1),
        }
    }

    /// Bytes pass 1 would send and where the figure comes from, best first: the guest-RAM
    /// mapping's non-zero share when sampled (`nonzero`, bytes: `--forecast.zero-pages`), its
    /// resident size (`ram_rss`), what the process holds; at most the guest's memory.
    pub fn first_pass(
        &self,
        nonzero: Option<f64>,
        ram_rss: Option<f64>,
    ) -> Option<(f64, FirstPassSource)> {
        let known = nonzero
            .map(|b| (b, FirstPassSource::NonzeroSample))
            .or(ram_rss.map(|b| (b, FirstPassSource::RamResident)))
            .or(self
                .rss_bytes
                .map(|b| (b, FirstPassSource::ProcessResident)));
        match (known, self.memory_bytes) {
            (Some((b, _)), Some(m)) if b > m => Some((m, FirstPassSource::Memory)),
            (Some(k), _) => Some(k),
            (None, m) => m.map(|m| (m, FirstPassSource::Memory)),
        }
    }
}

/// Where a forecast's pass-1 size comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstPassSource {
    /// The non-zero share of the guest-RAM mapping, sampled (`--forecast.zero-pages`).
    NonzeroSample,
    /// The guest-RAM mapping's resident size (`/proc/<pid>/smaps`).
    RamResident,
    /// libvirt's `balloon.rss`: QEMU's whole resident memory.
    ProcessResident,
    /// The guest's memory size.
    Memory,
}

/// Where the dirty rate of a forecast comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DirtySource {
    /// A calculation this exporter started (`--forecast.enable`).
    Calculation,
    /// A calculation another tool started, reported in libvirt's domain statistics.
    Domstats,
    /// The domain's last migration's mean dirty rate.
    Record,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DirtyRate {
    pub bytes_per_second: f64,
    pub source: DirtySource,
    /// Unix time the reading was first seen (calculations) or the migration finished (record).
    pub seen_at: f64,
    /// Calculations averaged (1 for libvirt's latest and for a record).
    pub samples: u32,
}

/// The measurement when there is one, else the record's figure.
pub fn choose(
    measured: Option<(&Measured, bool, f64)>,
    record: Option<(f64, f64)>,
) -> Option<DirtyRate> {
    if let Some((m, ours, seen_at)) = measured {
        return Some(DirtyRate {
            bytes_per_second: m.bytes_per_second,
            source: if ours {
                DirtySource::Calculation
            } else {
                DirtySource::Domstats
            },
            seen_at,
            samples: m.samples,
        });
    }
    record
        .filter(|(r, _)| r.is_finite() && *r >= 0.0)
        .map(|(bytes_per_second, at)| DirtyRate {
            bytes_per_second,
            source: DirtySource::Record,
            seen_at: at,
            samples: 1,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, ParamValue)]) -> Params {
        kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn a_measured_calculation_and_the_memory_figures() {
        let p = params(&[
            ("dirtyrate.calc_status", ParamValue::Int(2)),
            ("dirtyrate.calc_start_time", ParamValue::Int(1234)),
            ("dirtyrate.calc_period", ParamValue::Int(1)),
            ("dirtyrate.megabytes_per_second", ParamValue::Int(113)),
            (
                "dirtyrate.calc_mode",
                ParamValue::Str("page-sampling".into()),
            ),
            ("balloon.current", ParamValue::UInt(524288)),
            ("balloon.rss", ParamValue::UInt(307200)),
        ]);
        let s = DomainStats::parse(&p);
        let m = s.measured.clone().expect("measured");
        assert_eq!(m.bytes_per_second, 113.0 * MIB);
        assert_eq!((m.calc_start, m.period_s), (1234, 1));
        assert_eq!(m.mode.as_deref(), Some("page-sampling"));
        assert_eq!(s.memory_bytes, Some(512.0 * MIB));
        use FirstPassSource::*;
        assert_eq!(
            s.first_pass(None, None),
            Some((300.0 * MIB, ProcessResident))
        );
        assert_eq!(
            s.first_pass(None, Some(200.0 * MIB)),
            Some((200.0 * MIB, RamResident))
        );
        assert_eq!(
            s.first_pass(Some(90.0 * MIB), Some(200.0 * MIB)),
            Some((90.0 * MIB, NonzeroSample))
        );
        // Never more than the guest's memory.
        assert_eq!(
            s.first_pass(None, Some(600.0 * MIB)),
            Some((512.0 * MIB, Memory))
        );
        assert!(!s.measuring);
    }

    #[test]
    fn no_rate_until_measured() {
        let p = params(&[
            ("dirtyrate.calc_status", ParamValue::Int(1)),
            ("dirtyrate.megabytes_per_second", ParamValue::Int(0)),
            ("balloon.current", ParamValue::UInt(1024)),
        ]);
        let s = DomainStats::parse(&p);
        assert_eq!(s.measured, None);
        assert!(s.measuring);
        assert_eq!(
            s.first_pass(None, None),
            Some((1048576.0, FirstPassSource::Memory))
        );
        assert_eq!(DomainStats::parse(&Params::new()), DomainStats::default());
        // A negative rate (a broken answer) is no rate.
        let p = params(&[
            ("dirtyrate.calc_status", ParamValue::Int(2)),
            ("dirtyrate.megabytes_per_second", ParamValue::Int(-5)),
        ]);
        assert_eq!(DomainStats::parse(&p).measured, None);
    }

    #[test]
    fn a_measurement_wins_over_the_record() {
        let m = Measured {
            bytes_per_second: 10.0,
            calc_start: 1,
            period_s: 1,
            mode: None,
            samples: 1,
        };
        let d = choose(Some((&m, true, 5.0)), Some((99.0, 1.0))).expect("rate");
        assert_eq!(
            (d.bytes_per_second, d.source),
            (10.0, DirtySource::Calculation)
        );
        let d = choose(Some((&m, false, 5.0)), None).expect("rate");
        assert_eq!(d.source, DirtySource::Domstats);
        let d = choose(None, Some((99.0, 1.0))).expect("rate");
        assert_eq!((d.bytes_per_second, d.source), (99.0, DirtySource::Record));
        assert_eq!(choose(None, Some((f64::NAN, 1.0))), None);
        assert_eq!(choose(None, None), None);
    }
}
