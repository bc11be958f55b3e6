//! Migration job tracking: typed job stats, the pure tracker, and the sampler that drives it.

pub mod convergence;
pub mod replay;
pub mod sampler;
pub mod stats;
pub mod tracker;
