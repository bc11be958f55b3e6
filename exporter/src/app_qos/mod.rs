//! Application QoS: what the users of a guest's services saw during its migrations.

pub mod outage;
