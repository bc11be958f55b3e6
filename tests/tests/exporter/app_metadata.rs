//! App targets from libvirt domain metadata, with a real private libvirtd and a tiny QEMU guest:
//! the source reads the element and reports its changes; the exporter probes what it names,
//! picks up a change without a restart, and a bad element costs one warning naming its domain.

use std::sync::mpsc;
use std::time::Duration;

use vm_migration_exporter::app::targets::METADATA_NS;
use vm_migration_exporter::libvirt::{DomainEvent, JobSource, LibvirtSource, SourceEvent};

use testkit::expect_message as expect_event;
use testkit::exporter::{value, Exporter};
use testkit::host::tiny_guest_xml as guest_xml;
use testkit::http_server;
use testkit::prom::poll_until;
use testkit::Host;

const WAIT: Duration = Duration::from_secs(30);

fn http_ok() -> std::net::SocketAddr {
    http_server(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
        true,
    )))
}

fn set_metadata(daemon: &Host, domain: &str, xml: &str) {
    daemon
        .virsh(&[
            "metadata",
            domain,
            "--uri",
            METADATA_NS,
            "--key",
            "app",
            "--set",
            xml,
        ])
        .expect("virsh metadata --set");
}

#[test]
fn metadata_targets_are_read_followed_and_bad_ones_named() {
    let dir = tempfile::Builder::new()
        .prefix("vmemeta")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let daemon = Host::start(dir.path()).expect("start libvirtd");
    for g in ["m1", "m2"] {
        let xml = dir.path().join(format!("{g}.xml"));
        std::fs::write(&xml, guest_xml(g)).expect("write xml");
        daemon
            .virsh(&["create", &xml.to_string_lossy()])
            .expect("virsh create");
    }

    // The source: no element yet, then the element and an event for our namespace.
    let (tx, rx) = mpsc::channel();
    let src = LibvirtSource::start(daemon.uri(), Duration::from_secs(1), tx);
    expect_event(&rx, WAIT, "Connected", |e| {
        matches!(e, SourceEvent::Connected)
    });
    let m1 = src
        .list_domains()
        .expect("list")
        .into_iter()
        .find(|d| d.name == "m1")
        .expect("m1 listed");
    assert_eq!(src.metadata(&m1, METADATA_NS), Ok(None));
    let a = http_ok();
    set_metadata(
        &daemon,
        "m1",
        &format!("<targets><target name='http' http='http://{a}/healthz'/></targets>"),
    );
    expect_event(&rx, WAIT, "metadata change for m1", |e| {
        matches!(e, SourceEvent::Domain(DomainEvent::MetadataChange { domain, uri })
            if domain.name == "m1" && uri.as_deref() == Some(METADATA_NS))
    });
    let xml = src
        .metadata(&m1, METADATA_NS)
        .expect("metadata call")
        .expect("element");
    assert!(xml.contains(&format!("http://{a}/healthz")), "{xml}");
    src.shutdown();

    // The exporter probes it; m2 gets a bad element: one warning naming m2, m1 unaffected.
    let e = Exporter::start(crate::BIN, &["--libvirt.uri", daemon.uri()]);
    let up = |dom: &str, uuid: &str, target: &str| {
        value(
            &e.metrics(),
            &format!("vm_migration_app_up{{domain=\"{dom}\",uuid=\"{uuid}\",target=\"{target}\"}}"),
        )
    };
    assert!(
        poll_until(WAIT, || up("m1", &m1.uuid, "http") == Some(1.0)),
        "{}",
        e.metrics()
    );
    set_metadata(
        &daemon,
        "m2",
        "<targets><target name='x' tcp='not-an-address'/></targets>",
    );
    assert!(
        poll_until(WAIT, || e.log().iter().any(|l| l
            .contains("app metadata ignored")
            && l.contains("domain=m2"))),
        "{:#?}",
        e.log()
    );
    assert_eq!(
        e.log()
            .iter()
            .filter(|l| l.contains("app metadata ignored"))
            .count(),
        1,
        "one warning for one bad element"
    );
    assert_eq!(up("m1", &m1.uuid, "http"), Some(1.0));
    // A change is picked up without a restart: another target name for m1.
    let b = http_ok();
    set_metadata(
        &daemon,
        "m1",
        &format!("<targets><target name='api' http='http://{b}/'/></targets>"),
    );
    assert!(
        poll_until(WAIT, || up("m1", &m1.uuid, "api") == Some(1.0)),
        "{}",
        e.metrics()
    );
    for g in ["m1", "m2"] {
        let _ = daemon.virsh(&["destroy", g]);
    }
}
