//! Integration tests: one binary, one module per area. Shared helpers live in `support`.

mod libvirt_source;
mod support;
