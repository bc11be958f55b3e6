//! `LibvirtSource` against `test:///default` and a missing socket (a real private libvirtd is a
//! system test: tests/tests/exporter/libvirt_source.rs).

use std::sync::mpsc;
use std::time::Duration;

use vm_migration_exporter::libvirt::{
    DomainId, JobSource, LibvirtSource, SourceError, SourceEvent,
};

use crate::support::{assert_all_senders_dropped, expect_event, is_connected, is_disconnected};

const WAIT: Duration = Duration::from_secs(30);
/// Small cap so reconnect tests do not wait long between attempts.
const CAP: Duration = Duration::from_secs(1);

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
    assert_all_senders_dropped(&rx, WAIT);
}

#[test]
fn missing_socket_is_not_connected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = testkit::Host::uri_for(dir.path());
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
