//! Application QoS: what the users of a guest's services saw during its migrations.

pub mod collector;
pub mod holdback;
pub mod metrics;
pub mod outage;
pub mod probe;
pub mod targets;
