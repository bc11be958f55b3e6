//! vm-migration-exporter: watches libvirt live migrations and exposes them to Prometheus.
//!
//! `unsafe` code is confined to the private `libvirt::ffi`; the rest of this crate denies it,
//! and every other crate root (the binaries, tests, benches, the lab) forbids it.
#![deny(unsafe_code)]

pub mod app;
pub mod app_qos;
pub mod clock;
pub mod collector;
pub mod exposition;
pub mod forecast;
pub mod identity;
pub mod libvirt;
pub mod logging;
pub mod metrics;
pub mod migration;
pub mod net;
pub mod process;
pub mod record;
pub mod reload;
pub mod sampler;
pub mod serve;
pub mod server;
pub mod settings;
pub mod state;
pub mod store;
pub mod trace;
pub mod web_config;
