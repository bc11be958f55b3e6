//! `vm_migration_domain_info` from Nova's domain metadata on libvirt's test driver: a domain
//! with Nova's element shows its identity, a plain one empty labels. Following changes on a real
//! libvirtd is a system test (tests/tests/exporter/nova_identity.rs).

use std::time::Duration;

use crate::support::{domain_info as info, nova_instance, poll_until, Exporter, BIN};

const WAIT: Duration = Duration::from_secs(30);

/// libvirt's test driver reads domains, metadata included, from a file: the same read path
/// (virDomainGetMetadata hands the element back without its namespace) without a libvirtd.
#[test]
fn domain_info_on_the_test_driver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node.xml");
    std::fs::write(
        &node,
        format!(
            "<node><domain type='test'><name>instance-00000002</name>\
             <uuid>0b0b0b0b-0000-4000-8000-000000000002</uuid><metadata>{}</metadata>\
             <memory>32768</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>\
             <domain type='test'><name>plain</name><uuid>0b0b0b0b-0000-4000-8000-000000000003</uuid>\
             <memory>32768</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain></node>",
            nova_instance("web-2", "shop")
        ),
    )
    .expect("write");
    let uri = format!("test://{}", node.display());
    let e = Exporter::start(BIN, &["--libvirt.uri", &uri]);
    let want = r#"vm_migration_domain_info{domain="instance-00000002",uuid="0b0b0b0b-0000-4000-8000-000000000002",name="web-2",project_id="0bb0bb0bb0bb4bb0bb0bb0bb0bb0bb02",project_name="shop",user_id="0aa0aa0aa0aa4aa0aa0aa0aa0aa0aa01",user_name="alice",flavor="m1.tiny"}"#;
    let mut m = String::new();
    assert!(
        poll_until(WAIT, || {
            m = e.metrics();
            info(&m, "instance-00000002").as_deref() == Some(want)
        }),
        "want {want}\n{m}\n{:#?}",
        e.log()
    );
    assert_eq!(
        info(&m, "plain").as_deref(),
        Some(
            r#"vm_migration_domain_info{domain="plain",uuid="0b0b0b0b-0000-4000-8000-000000000003",name="",project_id="",project_name="",user_id="",user_name="",flavor=""}"#
        )
    );
    assert!(
        !e.log().iter().any(|l| l.contains("Nova metadata ignored")),
        "{:#?}",
        e.log()
    );
}
