//! vm-migration-exporter: watches libvirt live migrations and exposes them to Prometheus.
//!
//! `unsafe` code is confined to `libvirt::ffi`; everything else denies it.
#![deny(unsafe_code)]

pub mod app;
pub mod app_qos;
pub mod cli;
pub mod config;
pub mod exposition;
pub mod libvirt;
pub mod logging;
pub mod metrics;
pub mod migration;
pub mod net;
pub mod server;
pub mod state;
pub mod store;
pub mod trace;
pub mod web_config;
