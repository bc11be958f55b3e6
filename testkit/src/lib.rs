//! The test kit: throw-away libvirt hosts, lab guests, the lab link, the exporter as a process,
//! libvirt's events via virsh, and real Prometheus/Alertmanager. The exporter's integration
//! tests use it directly; the `migration-lab` crate (scenarios, plots, reports, its command
//! line) is built on it.

pub mod events;
pub mod exporter;
pub mod guest;
pub mod host;
pub mod net;
pub mod prom;

pub use host::Host;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (network namespaces, libvirtd, QEMU): run it with sudo")]
    NotRoot,
    #[error("lab set-up: {0}")]
    Setup(String),
    #[error("lab network: {0}")]
    Network(String),
    #[error("lab host: {0}")]
    Host(String),
    #[error("lab guest: {0}")]
    Guest(String),
    #[error("lab migration: {0}")]
    Migration(String),
    #[error("lab exporter: {0}")]
    Exporter(String),
}

/// `program` under coreutils' `timeout`: SIGTERM after `limit`, SIGKILL 10 s later (exit
/// status 124 or 137 then), so a wedged daemon cannot hang a test or its clean-up.
pub fn bounded(program: &str, limit: std::time::Duration) -> std::process::Command {
    let mut c = std::process::Command::new("timeout");
    c.arg("--kill-after=10")
        .arg(limit.as_secs().max(1).to_string())
        .arg(program);
    c
}

/// How long one `virsh` command (not a migration) may take.
pub const VIRSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
