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
    /// Serve HTTP inside the guest, reachable on this host TCP port (on whichever host runs the
    /// guest): QEMU user-mode networking forwards it to the guest's port [`APP_GUEST_PORT`].
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

    pub fn domain_xml(&self, assets: &Assets) -> String {
        // The application NIC goes in as QEMU arguments: libvirt 9.0 forwards ports only with
        // the passt backend (not installed here). QEMU migrates the slirp state.
        let (ns, app) = match self.app_port {
            None => (String::new(), String::new()),
            Some(port) => (
                " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'".to_string(),
                format!(
                    "<qemu:commandline>{}</qemu:commandline>",
                    app_nic_args("", port)
                        .iter()
                        .map(|a| format!("<qemu:arg value='{a}'/>"))
                        .collect::<String>()
                ),
            ),
        };
        // <acpi/>: without it libvirt 9.0 passes -no-acpi, which QEMU 10 rejects.
        format!(
            "<domain type='qemu'{ns}><name>{n}</name><memory unit='MiB'>{m}</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{k}</kernel><initrd>{i}</initrd>\
             <cmdline>{c}</cmdline></os>\
             <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
             <features><acpi/></features>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><controller type='usb' model='none'/>\
             <serial type='file'><source path='/var/log/libvirt/qemu/{n}.serial'/></serial>\
             <memballoon model='none'/></devices>{app}</domain>",
            n = self.name,
            m = self.memory_mb,
            k = assets.kernel.display(),
            i = assets.initrd.display(),
            c = self.cmdline(),
        )
    }
}

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
    fn app_port_adds_the_forwarded_nic_and_the_parameter() {
        let mut s = spec();
        s.app_port = Some(18080);
        let xml = s.domain_xml(&assets());
        assert!(xml.contains(" http_port=80</cmdline>"), "{xml}");
        assert!(
            xml.starts_with(
                "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
            ),
            "{xml}"
        );
        assert!(xml.ends_with(
            "</devices><qemu:commandline><qemu:arg value='-netdev'/>\
             <qemu:arg value='user,id=app0,hostfwd=tcp::18080-:80'/><qemu:arg value='-device'/>\
             <qemu:arg value='virtio-net-pci,netdev=app0,addr=0x8'/></qemu:commandline></domain>"
        ));
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
