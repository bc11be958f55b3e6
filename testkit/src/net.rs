//! The link between the lab's hosts: the destination lives in its own network namespace,
//! joined to the source (the root namespace) by a veth pair, so the migration stream crosses a
//! real interface that `tc` can shape.

use std::process::{Command, Stdio};

use crate::LabError;

pub const SOURCE_ADDR: &str = "10.77.0.1";
pub const DEST_ADDR: &str = "10.77.0.2";

/// The guests' provider network: a bridge of this name in each host's namespace, joined by a
/// veth pair, so a guest keeps its address wherever it runs (as on a real provider network).
pub const PROVIDER_BRIDGE: &str = "vmlabbr0";
/// The root namespace's (the source host's, and the exporter's) address on it.
pub const PROVIDER_HOST_ADDR: &str = "10.79.0.1";
/// The app guest's address on it.
pub const PROVIDER_GUEST_ADDR: &str = "10.79.0.10";
/// The same, as octets.
pub const PROVIDER_GUEST_IP: [u8; 4] = [10, 79, 0, 10];
/// The veth pair joining the two bridges (source side, destination side).
const PROVIDER_VETH: (&str, &str) = ("vmlabps0", "vmlabpd0");

/// A network namespace and the veth pair into it; removed on drop.
#[derive(Debug)]
pub struct Link {
    pub netns: String,
    pub source_dev: String,
}

/// Run `ip` with `args`; its stderr becomes the error.
pub fn ip(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Network(format!("ip {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(LabError::Network(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Link {
    /// Create namespace `netns` and the veth `source_dev` ↔ `vmlabd0` inside it.
    pub fn create(netns: &str, source_dev: &str) -> Result<Link, LabError> {
        remove(netns, source_dev);
        ip(&["netns", "add", netns])?;
        let link = Link {
            netns: netns.to_string(),
            source_dev: source_dev.to_string(),
        };
        ip(&[
            "link", "add", source_dev, "type", "veth", "peer", "name", "vmlabd0",
        ])?;
        ip(&["link", "set", "vmlabd0", "netns", netns])?;
        ip(&[
            "addr",
            "add",
            &format!("{SOURCE_ADDR}/24"),
            "dev",
            source_dev,
        ])?;
        ip(&["link", "set", source_dev, "up"])?;
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{DEST_ADDR}/24"),
            "dev",
            "vmlabd0",
        ])?;
        ip(&["-n", netns, "link", "set", "vmlabd0", "up"])?;
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
        // The provider network: a bridge on each side, the veth pair between them.
        let (ps, pd) = PROVIDER_VETH;
        ip(&["link", "add", PROVIDER_BRIDGE, "type", "bridge"])?;
        ip(&[
            "-n",
            netns,
            "link",
            "add",
            PROVIDER_BRIDGE,
            "type",
            "bridge",
        ])?;
        ip(&["link", "add", ps, "type", "veth", "peer", "name", pd])?;
        ip(&["link", "set", pd, "netns", netns])?;
        ip(&["link", "set", ps, "master", PROVIDER_BRIDGE])?;
        ip(&["-n", netns, "link", "set", pd, "master", PROVIDER_BRIDGE])?;
        ip(&[
            "addr",
            "add",
            &format!("{PROVIDER_HOST_ADDR}/24"),
            "dev",
            PROVIDER_BRIDGE,
        ])?;
        for dev in [ps, PROVIDER_BRIDGE] {
            ip(&["link", "set", dev, "up"])?;
            ip(&[
                "-n",
                netns,
                "link",
                "set",
                if dev == ps { pd } else { dev },
                "up",
            ])?;
        }
        Ok(link)
    }

    /// Cap the source's sending rate with a token bucket (`None` removes the cap).
    pub fn set_bandwidth(&self, mbit: Option<u32>) -> Result<(), LabError> {
        let _ = Command::new("tc")
            .args(["qdisc", "del", "dev", &self.source_dev, "root"])
            .stderr(Stdio::null())
            .status();
        if let Some(rate) = mbit {
            let out = Command::new("tc")
                .args(["qdisc", "add", "dev", &self.source_dev, "root", "tbf"])
                .args([
                    "rate",
                    &format!("{rate}mbit"),
                    "burst",
                    "256kb",
                    "latency",
                    "50ms",
                ])
                .output()
                .map_err(|e| LabError::Network(format!("tc: {e}")))?;
            if !out.status.success() {
                return Err(LabError::Network(format!(
                    "tc tbf failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(())
    }
}

/// Remove a namespace and veth left by an earlier run (deleting the namespace removes the
/// veth pair with it).
pub fn remove(netns: &str, source_dev: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", netns])
        .stderr(Stdio::null())
        .status();
    for dev in [source_dev, PROVIDER_VETH.0, PROVIDER_BRIDGE] {
        let _ = Command::new("ip")
            .args(["link", "del", dev])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        remove(&self.netns, &self.source_dev);
    }
}
