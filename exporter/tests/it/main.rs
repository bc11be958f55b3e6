//! Integration tests: one binary, one module per area. Shared helpers live in `support`.
#![forbid(unsafe_code)]

mod alerting;
mod app_metadata;
mod app_qos;
mod binary;
mod forecast;
mod fuzz;
mod golden;
mod http_limits;
mod landing;
mod libvirt_source;
mod migration_e2e;
mod netns;
mod nova_identity;
mod process_metrics;
mod records;
mod reload;
mod replay;
mod support;
mod web_config;
