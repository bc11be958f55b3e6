//! `LibvirtSource` against `test:///default`, a missing socket, and a real private libvirtd.

use std::sync::mpsc;
use std::time::Duration;

use vm_migration_exporter::libvirt::jobs::lifecycle;
use vm_migration_exporter::libvirt::{
    DomainEvent, DomainId, JobSource, LibvirtSource, SourceError, SourceEvent,
};

use crate::support::libvirtd::TestLibvirtd;
use crate::support::{expect_event, guest_xml, poll_until};

const WAIT: Duration = Duration::from_secs(30);
/// Small cap so reconnect tests do not wait long between attempts.
const CAP: Duration = Duration::from_secs(1);

fn is_connected(ev: &SourceEvent) -> bool {
    matches!(ev, SourceEvent::Connected)
}

fn is_disconnected(ev: &SourceEvent) -> bool {
    matches!(ev, SourceEvent::Disconnected { .. })
}

fn unknown_domain() -> DomainId {
    DomainId {
        name: "nope".into(),
        uuid: "0badc0de-0000-4000-8000-000000000001".into(),
    }
}

#[test]
fn test_driver_connects_lists_and_has_no_jobs() {
    let (tx, rx) = mpsc::channel();
    let src = LibvirtSource::start("test:///default", CAP, tx);
    expect_event(&rx, WAIT, "Connected", is_connected);
    assert!(src.is_connected());

    let doms = src.list_domains().expect("list_domains");
    let test = doms
        .iter()
        .find(|d| d.name == "test")
        .unwrap_or_else(|| panic!("domain `test` not listed: {doms:?}"))
        .clone();
    assert_eq!(test.uuid.len(), 36, "UUID string: {}", test.uuid);

    assert_eq!(src.job_stats(&test), Ok(None));
    assert_eq!(src.completed_job_stats(&test), Ok(None));
    // The test driver does not implement it: refused, reported as "unknown".
    assert_eq!(src.max_downtime_ms(&test), Ok(None));

    let gone = unknown_domain();
    let r = src.job_stats(&gone);
    assert!(matches!(r, Err(SourceError::NoDomain(_))), "{r:?}");
    assert!(matches!(
        src.completed_job_stats(&gone),
        Err(SourceError::NoDomain(_))
    ));
    assert!(matches!(
        src.max_downtime_ms(&gone),
        Err(SourceError::NoDomain(_))
    ));

    src.shutdown();
    assert!(!src.is_connected());
    assert!(matches!(
        src.list_domains(),
        Err(SourceError::NotConnected(_))
    ));
    drop(src);
    assert_all_senders_dropped(&rx);
}

#[test]
fn missing_socket_is_not_connected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = TestLibvirtd::uri_for(dir.path());
    let (tx, rx) = mpsc::channel();
    let src = LibvirtSource::start(&uri, CAP, tx);
    let ev = expect_event(&rx, WAIT, "Disconnected", is_disconnected);
    let SourceEvent::Disconnected { reason } = ev else {
        unreachable!()
    };
    assert!(reason.contains("libvirt-sock"), "reason: {reason}");
    assert!(!src.is_connected());
    assert!(matches!(
        src.list_domains(),
        Err(SourceError::NotConnected(_))
    ));
    let d = unknown_domain();
    assert!(matches!(
        src.job_stats(&d),
        Err(SourceError::NotConnected(_))
    ));
    assert!(matches!(
        src.completed_job_stats(&d),
        Err(SourceError::NotConnected(_))
    ));
    assert!(matches!(
        src.max_downtime_ms(&d),
        Err(SourceError::NotConnected(_))
    ));
    // Retries do not repeat the Disconnected event: one per outage.
    assert!(
        rx.recv_timeout(CAP * 3).is_err(),
        "no further events while the outage lasts"
    );
    src.shutdown();
}

#[test]
fn reconnects_when_libvirtd_appears_and_notices_its_death() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = mpsc::channel();
    let src = LibvirtSource::start(&TestLibvirtd::uri_for(dir.path()), CAP, tx);
    expect_event(&rx, WAIT, "initial Disconnected", is_disconnected);

    let mut daemon = TestLibvirtd::start(dir.path()).expect("start libvirtd");
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
    let daemon = TestLibvirtd::start(dir.path()).expect("restart libvirtd");
    expect_event(&rx, WAIT, "Connected after restart", is_connected);
    assert_eq!(src.list_domains(), Ok(vec![]));
    drop(src);
    // Every callback's opaque data (each holds a clone of the event sender) was freed by
    // libvirt, also the first connection's, whose deregistration failed on the dead socket.
    assert_all_senders_dropped(&rx);
    drop(daemon);
}

/// Drains `rx` until it reports that every sender is gone (the source's own and the clones
/// held by libvirt callback data), i.e. libvirt called our free callbacks.
fn assert_all_senders_dropped(rx: &mpsc::Receiver<SourceEvent>) {
    assert!(
        poll_until(WAIT, || loop {
            match rx.try_recv() {
                Ok(_) => continue,
                Err(mpsc::TryRecvError::Empty) => break false,
                Err(mpsc::TryRecvError::Disconnected) => break true,
            }
        }),
        "event senders still alive: callback data leaked"
    );
}

#[test]
fn real_qemu_domain_events_job_stats_and_max_downtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestLibvirtd::start(dir.path()).expect("start libvirtd");
    let (tx, rx) = mpsc::channel();
    let src = LibvirtSource::start(daemon.uri(), CAP, tx);
    expect_event(&rx, WAIT, "Connected", is_connected);

    let xml = dir.path().join("g.xml");
    std::fs::write(&xml, guest_xml("g1")).expect("write xml");
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
