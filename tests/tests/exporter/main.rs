//! The exporter against the real components it watches: private libvirtds (`testkit::Host`),
//! QEMU guests, live migrations between two daemons, network namespaces, Prometheus and
//! Alertmanager. Needs root. The exporter is the `system-test-exporter` binary of this package
//! (the exporter's own `main.rs`); the hermetic tests of the same binary are in
//! exporter/tests/it.
#![forbid(unsafe_code)]

mod alerting;
mod app_metadata;
mod libvirt_source;
mod libvirtd_faults;
mod migration_e2e;
mod netns;
mod nova_identity;
mod records_disk;

/// The exporter's test helpers that speak its types, one copy for both tiers.
#[path = "../../../exporter/tests/it/support/shared.rs"]
mod shared;

/// The exporter under test, as cargo built it for these tests.
const BIN: &str = env!("CARGO_BIN_EXE_system-test-exporter");
