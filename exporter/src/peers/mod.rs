//! The network path: NIC counters and link state ([`netdev`]), probes of peer hosts
//! ([`probe`], state in [`peers`], families in [`peer_metrics`]) and the peer of each running
//! migration ([`discovery`], [`probing`]).

pub mod discovery;
pub mod netdev;
pub mod peer_metrics;
pub mod peers;
pub mod probe;
pub mod probing;
pub mod routes;
