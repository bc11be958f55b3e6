//! Migration job tracking as pure logic: typed job stats, the tracker and the convergence model.
//! No I/O and nothing above it in the crate: [`crate::sampler`] drives it.

pub mod convergence;
pub mod stats;
pub mod tracker;
