//! Everything that talks to libvirt. `ffi` holds the only unsafe code in the crate.

pub mod jobs;

pub use jobs::{
    DomainEvent, DomainId, JobSource, ParamValue, Params, RawJob, SourceError, SourceEvent,
};
