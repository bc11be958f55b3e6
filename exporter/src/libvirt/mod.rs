//! Everything that talks to libvirt. `ffi` holds the only unsafe code in the crate.

pub mod calc;
pub mod conn;
#[allow(unsafe_code)]
mod ffi;
pub mod jobs;

pub use conn::LibvirtSource;
pub use jobs::{
    Call, DomainEvent, DomainId, JobSource, ParamValue, Params, RawJob, SourceError, SourceEvent,
};
