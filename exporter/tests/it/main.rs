//! Integration tests, the hermetic tier: the library and the real binary, as an unprivileged user,
//! with no libvirtd, QEMU or network namespace (libvirt's test driver stands in). What needs
//! those is a system test (the `system-tests` crate in tests/). One binary, one module per area;
//! shared helpers live in `support`.
#![forbid(unsafe_code)]

mod app_qos;
mod binary;
mod forecast;
mod fuzz;
mod golden;
mod http_limits;
mod landing;
mod libvirt_source;
mod nova_identity;
mod process_metrics;
mod records;
mod reload;
mod replay;
mod support;
mod web_config;
