//! The `jobs` collector and what it is made of: the [`sampler`] (libvirt's domains, job stats and
//! events, in rounds) drives the pure model ([`stats`], [`tracker`], [`convergence`]: no I/O,
//! unit-tested and replayed on recorded traces through [`replay`] and [`trace`]); [`identity`]
//! reads Nova's metadata; [`metrics`] holds the jobs and finished-migration families.

pub mod convergence;
pub mod identity;
pub mod metrics;
pub mod replay;
pub mod sampler;
pub mod stats;
pub mod trace;
pub mod tracker;

/// What the jobs module's unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::libvirt::jobs::{ParamValue, Params};

    /// libvirt typed parameters from (name, unsigned value) pairs.
    pub(crate) fn params(pairs: &[(&str, u64)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), ParamValue::UInt(*v)))
            .collect()
    }
}
