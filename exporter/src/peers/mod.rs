//! Peer hosts: the `probe` collector's ICMP/TCP probes ([`probe`]), what they know ([`state`],
//! encoded by [`metrics`]), and the `discovery` collector ([`discovery`]), which finds the peer of
//! each running migration from the QEMU process's socket ([`qemu_socket`]).

pub mod discovery;
pub mod metrics;
pub mod probe;
pub mod qemu_socket;
pub mod state;
