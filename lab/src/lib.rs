//! The migration lab: two libvirt hosts on one machine (each libvirtd in its own mount
//! namespace, the destination also in its own network namespace behind a veth), real TCG
//! guests that dirty memory at chosen rates and patterns, migrations under chosen conditions,
//! and vm-migration-exporter watching each one. The system tests drive it through this
//! library; `migration-lab` is its command line (with plots, reports and progress). Hosts,
//! guests, the link and the Prometheus helpers come from the `testkit` crate.

pub mod app_view;
pub mod cost;
pub mod delay;
pub mod forecast_eval;
pub mod plots;
pub mod presets;
pub mod report;
pub mod scenario;
pub mod scenario_file;

use std::path::{Path, PathBuf};

// The pieces live in the test kit (shared with the exporter's tests); the lab is built of them.
pub use testkit::{
    bounded, events, exporter, guest, host, is_root, net, prom, Host, LabError, VIRSH_TIMEOUT,
};

/// Network namespace and source-side veth of the lab.
pub const NETNS: &str = "vmlab-dst";
pub const SOURCE_DEV: &str = "vmlabs0";

/// A running lab. Fields drop in order: hosts (and their guests) first, then the link.
pub struct Lab {
    pub src: Host,
    pub dst: Host,
    /// The delayed path (dropped before `link`, whose namespace holds its far end).
    pub delay: delay::DelayLink,
    pub link: net::Link,
    pub assets: guest::Assets,
    pub exporter_bin: PathBuf,
    /// Where each scenario's exporter listens (default: a free port on 127.0.0.1).
    pub exporter_listen: Option<std::net::SocketAddr>,
    pub dir: PathBuf,
}

impl Lab {
    /// Set up assets, clean whatever an earlier run left, start both hosts and the link.
    pub fn up(dir: &Path, exporter: Option<&Path>, say: &dyn Fn(&str)) -> Result<Lab, LabError> {
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        let exporter_bin = exporter::find_binary(exporter)?;
        let assets = guest::setup(dir, say)?;
        down(dir);
        say("starting the source and destination libvirtd");
        let link = net::Link::create(NETNS, SOURCE_DEV)?;
        let src = Host::start(&dir.join("hosts/src"))
            .map_err(|e| LabError::Host(format!("source: {e}")))?;
        let dst = Host::start_in(&dir.join("hosts/dst"), Some(NETNS))
            .map_err(|e| LabError::Host(format!("destination: {e}")))?;
        let delay = delay::DelayLink::create(NETNS)?;
        for h in [&src, &dst] {
            h.virsh(&["version"])
                .map_err(|e| LabError::Host(format!("health check of {}: {e}", h.uri())))?;
        }
        Ok(Lab {
            src,
            dst,
            delay,
            link,
            assets,
            exporter_bin,
            exporter_listen: None,
            dir: dir.to_path_buf(),
        })
    }
}

/// Tear down what a lab in `dir` may have left behind (also after a crash): daemons and guests
/// by their pid files, the network namespace and veth.
pub fn down(dir: &Path) {
    for h in ["src", "dst"] {
        host::stop_leftovers(&dir.join("hosts").join(h));
    }
    delay::remove();
    net::remove(NETNS, SOURCE_DEV);
}
