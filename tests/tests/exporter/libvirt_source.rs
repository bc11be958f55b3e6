//! `LibvirtSource` against a real private libvirtd: it connects when the daemon appears,
//! notices its death and reconnects, and forwards a QEMU domain's events and job figures.

use std::sync::mpsc;
use std::time::Duration;

use vm_migration_exporter::libvirt::jobs::lifecycle;
use vm_migration_exporter::libvirt::{
    DomainEvent, JobSource, LibvirtSource, SourceError, SourceEvent,
};

use testkit::expect_message as expect_event;
use testkit::host::tiny_guest_xml;
use testkit::prom::poll_until;
use testkit::Host;

use crate::shared::{assert_all_senders_dropped, is_connected, is_disconnected};

const WAIT: Duration = Duration::from_secs(30);
/// Small cap so reconnect tests do not wait long between attempts.
const CAP: Duration = Duration::from_secs(1);

#[test]
fn reconnects_when_libvirtd_appears_and_notices_its_death() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = mpsc::channel();
    let src = LibvirtSource::start(&Host::uri_for(dir.path()), CAP, tx);
    expect_event(&rx, WAIT, "initial Disconnected", is_disconnected);

    let mut daemon = Host::start(dir.path()).expect("start libvirtd");
    expect_event(&rx, WAIT, "Connected after libvirtd started", is_connected);
    assert!(src.is_connected());
    assert_eq!(src.list_domains(), Ok(vec![]));

    daemon.kill();
    let ev = expect_event(&rx, WAIT, "Disconnected after kill", is_disconnected);
    // Noticed through the close callback (EOF on the socket), not the periodic liveness check.
    assert!(
        matches!(&ev, SourceEvent::Disconnected { reason } if reason.contains("end of file")),
        "{ev:?}"
    );
    assert!(!src.is_connected(), "{ev:?}");
    assert!(matches!(
        src.list_domains(),
        Err(SourceError::NotConnected(_))
    ));

    // Second recovery on the same socket: callbacks are registered on the new connection.
    drop(daemon);
    let daemon = Host::start(dir.path()).expect("restart libvirtd");
    expect_event(&rx, WAIT, "Connected after restart", is_connected);
    assert_eq!(src.list_domains(), Ok(vec![]));
    drop(src);
    // Every callback's opaque data (each holds a clone of the event sender) was freed by
    // libvirt, also the first connection's, whose deregistration failed on the dead socket.
    assert_all_senders_dropped(&rx, WAIT);
    drop(daemon);
}

#[test]
fn real_qemu_domain_events_job_stats_and_max_downtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Host::start(dir.path()).expect("start libvirtd");
    let (tx, rx) = mpsc::channel();
    let src = LibvirtSource::start(daemon.uri(), CAP, tx);
    expect_event(&rx, WAIT, "Connected", is_connected);

    let xml = dir.path().join("g.xml");
    std::fs::write(&xml, tiny_guest_xml("g1")).expect("write xml");
    let xml = xml.to_string_lossy().into_owned();
    daemon.virsh(&["create", &xml]).expect("virsh create");

    // The lifecycle event proves the callbacks are registered and forwarded.
    let ev = expect_event(&rx, WAIT, "lifecycle Started for g1", |ev| {
        matches!(ev, SourceEvent::Domain(DomainEvent::Lifecycle { domain, event, .. })
            if domain.name == "g1" && *event == 2 /* VIR_DOMAIN_EVENT_STARTED */)
    });
    let SourceEvent::Domain(dev) = ev else {
        unreachable!()
    };
    let g1 = dev.domain().clone();
    assert!(poll_until(WAIT, || src
        .list_domains()
        .is_ok_and(|d| d.contains(&g1))));

    assert_eq!(src.job_stats(&g1), Ok(None));
    assert_eq!(src.completed_job_stats(&g1), Ok(None));
    // Read-only connection, libvirt 9.0: see the answer recorded in the module docs of conn.rs.
    let max = src.max_downtime_ms(&g1).expect("max downtime call");
    assert_eq!(max, Some(300), "QEMU's default downtime limit is 300 ms");

    daemon.virsh(&["destroy", "g1"]).expect("virsh destroy");
    expect_event(&rx, WAIT, "lifecycle Stopped for g1", |ev| {
        matches!(ev, SourceEvent::Domain(DomainEvent::Lifecycle { domain, event, .. })
            if domain == &g1 && *event == lifecycle::STOPPED)
    });
    assert!(matches!(src.job_stats(&g1), Err(SourceError::NoDomain(_))));
    src.shutdown();
}
