//! Before a migration starts: will it converge, how long will it take, what should be done
//! instead, and how long evacuating the host would take.
//!
//! - [`model`]: the forecast of one guest (pure; the live verdict's model applied beforehand).
//! - [`dirty`]: where the dirty rate and memory figures come from (libvirt's domain statistics,
//!   the domain's records).
//! - [`path`]: the transfer rate the path would give (link, cap, TCP window ÷ RTT).
//! - [`zero_pages`]: how much of a guest's resident memory holds data (`--forecast.zero-pages`).
//! - [`plan`]: the evacuation plan (pure).
//! - [`report`]: the collector's published inputs and their evaluation for one "what if".
//! - [`collector`]: the `forecast` collector (and the opt-in dirty-rate calculations).
//! - [`metrics`], [`api`]: `vm_migration_forecast_*`, `/api/v1/forecast`, the landing page.

pub mod api;
pub mod collector;
pub mod dirty;
pub mod metrics;
pub mod model;
pub mod path;
pub mod plan;
pub mod report;
pub mod zero_pages;
