//! `vm_migration_domain_info` from Nova's domain metadata, with a real private libvirtd and tiny
//! QEMU guests: a domain created with Nova's element shows its identity, a plain one empty
//! labels, a change made with `virsh metadata` (libvirt's METADATA_CHANGE event) shows without a
//! restart, and a bad element costs one warning naming its domain.

use std::time::Duration;

use vm_migration_exporter::jobs::identity::NOVA_NS;

use testkit::exporter::Exporter;
use testkit::host::tiny_guest_xml;
use testkit::prom::poll_until;
use testkit::Host;

use crate::shared::{domain_info as info, nova_instance};
use crate::BIN;

const WAIT: Duration = Duration::from_secs(30);

/// The same element as `virsh metadata --key nova --set` takes it: without a namespace (virsh
/// puts it in `--uri` under the prefix `--key`).
fn nova_bare(name: &str, project: &str) -> String {
    nova_instance(name, project)
        .replace("nova:", "")
        .replace(&format!(r#" xmlns:nova="{NOVA_NS}""#), "")
}

#[test]
fn domain_info_follows_nova_metadata() {
    let dir = tempfile::Builder::new()
        .prefix("vmenova")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let daemon = Host::start(dir.path()).expect("start libvirtd");
    let with_nova = tiny_guest_xml("instance-00000001").replacen(
        "</name>",
        &format!(
            "</name><metadata>{}</metadata>",
            nova_instance("web-1", "shop")
        ),
        1,
    );
    for (g, xml) in [
        ("instance-00000001", with_nova),
        ("plain", tiny_guest_xml("plain")),
    ] {
        let path = dir.path().join(format!("{g}.xml"));
        std::fs::write(&path, xml).expect("write xml");
        daemon
            .virsh(&["create", &path.to_string_lossy()])
            .expect("virsh create");
    }
    let uuid = |g: &str| {
        daemon
            .virsh(&["domuuid", g])
            .expect("domuuid")
            .trim()
            .to_string()
    };
    let (nova_uuid, plain_uuid) = (uuid("instance-00000001"), uuid("plain"));

    let e = Exporter::start(BIN, &["--libvirt.uri", daemon.uri()]);
    let mut m = String::new();
    let want = format!(
        r#"vm_migration_domain_info{{domain="instance-00000001",uuid="{nova_uuid}",name="web-1",project_id="0bb0bb0bb0bb4bb0bb0bb0bb0bb0bb02",project_name="shop",user_id="0aa0aa0aa0aa4aa0aa0aa0aa0aa0aa01",user_name="alice",flavor="m1.tiny"}}"#
    );
    assert!(
        poll_until(WAIT, || {
            m = e.metrics();
            info(&m, "instance-00000001").as_deref() == Some(want.as_str())
        }),
        "want {want}\n{m}"
    );
    assert_eq!(
        info(&m, "plain"),
        Some(format!(
            r#"vm_migration_domain_info{{domain="plain",uuid="{plain_uuid}",name="",project_id="",project_name="",user_id="",user_name="",flavor=""}}"#
        ))
    );

    // Nova renames the instance and moves it to another project: picked up without a restart.
    daemon
        .virsh(&[
            "metadata",
            "instance-00000001",
            "--uri",
            NOVA_NS,
            "--key",
            "nova",
            "--set",
            &nova_bare("web-1-renamed", "shop-2"),
        ])
        .expect("virsh metadata --set");
    assert!(
        poll_until(WAIT, || {
            m = e.metrics();
            info(&m, "instance-00000001").is_some_and(|l| {
                l.contains(r#"name="web-1-renamed""#) && l.contains(r#"project_name="shop-2""#)
            })
        }),
        "{m}"
    );

    // An element in Nova's namespace that is not Nova's instance: one warning, empty labels.
    daemon
        .virsh(&[
            "metadata",
            "plain",
            "--uri",
            NOVA_NS,
            "--key",
            "nova",
            "--set",
            "<notes>hi</notes>",
        ])
        .expect("virsh metadata --set");
    assert!(
        poll_until(WAIT, || e.log().iter().any(|l| l
            .contains("Nova metadata ignored")
            && l.contains("domain=plain"))),
        "{:#?}",
        e.log()
    );
    m = e.metrics();
    assert!(
        info(&m, "plain").is_some_and(|l| l.contains(r#"name="""#)),
        "{m}"
    );
    assert_eq!(
        e.log()
            .iter()
            .filter(|l| l.contains("Nova metadata ignored"))
            .count(),
        1
    );
    for g in ["instance-00000001", "plain"] {
        let _ = daemon.virsh(&["destroy", g]);
    }
}
