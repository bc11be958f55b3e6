//! Finished-migration records: the append-only record file ([`log`]).

pub mod log;
