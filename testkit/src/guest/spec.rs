//! What a guest is: its dirtying parameters, kernel command line and libvirt domain XML.

use super::Assets;

/// How the guest writes memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    Seq,
    Random,
    Hot,
}

impl Pattern {
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Seq => "seq",
            Pattern::Random => "random",
            Pattern::Hot => "hot",
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GuestSpec {
    pub name: String,
    pub memory_mb: u32,
    pub dirty_mbps: u32,
    pub dirty_mb: u32,
    pub pattern: Pattern,
    pub hot_mb: u32,
    /// Serve HTTP inside the guest on [`APP_GUEST_PORT`]. A libvirt lab guest has it on the
    /// provider bridge at `net::PROVIDER_GUEST_ADDR` wherever it runs; a plain-QEMU guest
    /// (`app_nic_args`) has it forwarded from this host port by user-mode networking.
    #[serde(default)]
    pub app_port: Option<u16>,
}

/// The TCP port the guest's HTTP service listens on.
pub const APP_GUEST_PORT: u16 = 80;
/// The PCI slot of the guest's application NIC, fixed so source and destination QEMU have the
/// same device layout.
pub const APP_NIC_ADDR: &str = "0x8";

/// QEMU arguments of the guest's application NIC: user-mode networking (slirp) forwarding host
/// TCP `host_addr:host_port` (`host_addr` empty: every address) to the guest's HTTP service.
pub fn app_nic_args(host_addr: &str, host_port: u16) -> [String; 4] {
    [
        "-netdev".into(),
        format!("user,id=app0,hostfwd=tcp:{host_addr}:{host_port}-:{APP_GUEST_PORT}"),
        "-device".into(),
        format!("virtio-net-pci,netdev=app0,addr={APP_NIC_ADDR}"),
    ]
}

impl GuestSpec {
    /// An idle 512 MiB guest (64 MiB written once, no dirtying) without an HTTP service.
    pub fn idle(name: &str) -> GuestSpec {
        GuestSpec {
            name: name.to_string(),
            memory_mb: 512,
            dirty_mbps: 0,
            dirty_mb: 64,
            pattern: Pattern::Seq,
            hot_mb: 32,
            app_port: None,
        }
    }

    /// The kernel command line; the dirtier reads its parameters from it.
    pub fn cmdline(&self) -> String {
        let mut c = format!(
            "console=ttyS0 quiet panic=-1 dirty_mbps={} dirty_mb={} pattern={} hot_mb={}",
            self.dirty_mbps,
            self.dirty_mb,
            self.pattern.as_str(),
            self.hot_mb
        );
        if self.app_port.is_some() {
            c += &format!(" http_port={APP_GUEST_PORT}");
        }
        c
    }

    /// The kernel command line of a libvirt lab guest: its service on the provider network.
    fn lab_cmdline(&self) -> String {
        let mut c = self.cmdline();
        if self.app_port.is_some() {
            c += &format!(
                " app_addr={} app_mask=255.255.255.0 app_gw={}",
                crate::net::PROVIDER_GUEST_ADDR,
                crate::net::PROVIDER_HOST_ADDR
            );
        }
        c
    }

    pub fn domain_xml(&self, assets: &Assets) -> String {
        // The application NIC sits on the provider bridge of whichever host runs the guest, so
        // the guest keeps its address across the migration; a fixed MAC, like a cloud port.
        let app = match self.app_port {
            None => String::new(),
            Some(_) => format!(
                "<interface type='bridge'><mac address='{APP_MAC}'/><source bridge='{}'/>\
                 <model type='virtio'/></interface>",
                crate::net::PROVIDER_BRIDGE
            ),
        };
        // <acpi/>: without it libvirt 9.0 passes -no-acpi, which QEMU 10 rejects.
        format!(
            "<domain type='qemu'><name>{n}</name><memory unit='MiB'>{m}</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{k}</kernel><initrd>{i}</initrd>\
             <cmdline>{c}</cmdline></os>\
             <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
             <features><acpi/></features>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><controller type='usb' model='none'/>\
             <serial type='file'><source path='/var/log/libvirt/qemu/{n}.serial'/></serial>\
             {app}<memballoon model='none'/></devices></domain>",
            n = self.name,
            m = self.memory_mb,
            k = assets.kernel.display(),
            i = assets.initrd.display(),
            c = self.lab_cmdline(),
        )
    }
}

/// The MAC address of the app guest's provider-network NIC.
pub const APP_MAC: &str = "52:54:00:79:00:10";

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GuestSpec {
        GuestSpec::idle("g")
    }

    fn assets() -> Assets {
        Assets {
            kernel: "/k".into(),
            initrd: "/i".into(),
        }
    }

    #[test]
    fn no_app_port_no_nic() {
        let xml = spec().domain_xml(&assets());
        assert!(!xml.contains("qemu:"), "{xml}");
        assert!(!xml.contains("http_port"), "{xml}");
        assert!(
            xml.starts_with("<domain type='qemu'><name>g</name>"),
            "{xml}"
        );
    }

    #[test]
    fn app_guest_sits_on_the_provider_bridge_with_its_address() {
        let mut s = spec();
        s.app_port = Some(18080);
        let xml = s.domain_xml(&assets());
        assert!(
            xml.contains(
                " http_port=80 app_addr=10.79.0.10 app_mask=255.255.255.0 app_gw=10.79.0.1</cmdline>"
            ),
            "{xml}"
        );
        assert!(
            xml.contains(
                "<interface type='bridge'><mac address='52:54:00:79:00:10'/>\
                 <source bridge='vmlabbr0'/><model type='virtio'/></interface>"
            ),
            "{xml}"
        );
        // The plain-QEMU form keeps user-mode forwarding of the host port.
        assert_eq!(
            app_nic_args("127.0.0.1", 18080)[1],
            "user,id=app0,hostfwd=tcp:127.0.0.1:18080-:80"
        );
    }

    #[test]
    fn specs_without_app_port_still_parse() {
        let s: GuestSpec = serde_json::from_str(
            r#"{"name":"g","memory_mb":512,"dirty_mbps":0,"dirty_mb":64,"pattern":"seq","hot_mb":32}"#,
        )
        .expect("parses");
        assert_eq!(s.app_port, None);
    }
}
