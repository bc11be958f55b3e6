//! Integration tests: one binary, one module per area. Shared helpers live in `support`.

mod alerting;
mod binary;
mod landing;
mod libvirt_source;
mod migration_e2e;
mod netns;
mod records;
mod replay;
mod support;
mod verdict_eval;
mod web_config;
