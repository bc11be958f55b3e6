//! vm-migration-exporter: watches libvirt live migrations and exposes them to Prometheus.
//!
//! `unsafe` code is confined to `libvirt::ffi`; everything else forbids it.
#![deny(unsafe_code)]

pub mod libvirt;
