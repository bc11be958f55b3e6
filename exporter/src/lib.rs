//! vm-migration-exporter: watches libvirt live migrations and exposes them to Prometheus.
//!
//! `unsafe` code is confined to the private `libvirt::ffi`; the rest of this crate denies it,
//! and every other crate root (the binaries, tests, benches, the lab) forbids it.
#![deny(unsafe_code)]

pub mod app;
pub mod clock;
pub mod collector;
pub mod daemon;
pub mod exposition;
pub mod forecast;
pub mod http;
pub mod jobs;
pub mod libvirt;
pub mod logging;
pub mod netdev;
pub mod peers;
pub mod process;
pub mod record;
pub mod records;
pub mod reload;
pub mod settings;
pub mod state;

#[cfg(test)]
mod module_graph;
