//! The real binary against a private libvirtd that is missing at start, then frozen
//! (SIGSTOP) under it: it serves down and recovers by itself, scrapes and SIGTERM are never held
//! up by a hung libvirtd, and a libvirtd resumed as the keepalive gives up is reconnected.

use std::process::Command;
use std::time::Duration;

use testkit::exporter::{value, Exporter};
use testkit::host::tiny_guest_xml;
use testkit::prom::poll_until;
use testkit::Host;

use crate::BIN;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn missing_libvirtd_serves_down_then_recovers_by_itself() {
    let dir = tempfile::Builder::new()
        .prefix("vme")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let uri = Host::uri_for(dir.path());
    let e = Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            &uri,
            "--libvirt.reconnect-max-backoff",
            "1s",
        ],
    );
    e.wait_ready(WAIT);
    let m = e.metrics();
    assert_eq!(value(&m, "vm_migration_libvirt_up"), Some(0.0), "{m}");
    assert_eq!(
        value(&m, "vm_migration_collector_success{collector=\"jobs\"}"),
        Some(0.0)
    );

    let mut daemon = Host::start(dir.path()).expect("start libvirtd");
    assert!(
        poll_until(WAIT, || {
            let m = e.metrics();
            value(&m, "vm_migration_libvirt_up") == Some(1.0)
                && value(&m, "vm_migration_domains_active") == Some(0.0)
        }),
        "exporter did not reconnect; log: {:?}",
        e.log()
    );
    daemon.kill();
    assert!(
        poll_until(WAIT, || value(&e.metrics(), "vm_migration_libvirt_up")
            == Some(0.0)),
        "exporter did not notice libvirtd dying"
    );
}

/// A private libvirtd with an exporter watching it (sampling every second), connected; then
/// libvirtd is frozen with SIGSTOP. Resumed (SIGCONT) when dropped.
struct Frozen {
    e: Exporter,
    pid: String,
    _daemon: Host,
    _dir: tempfile::TempDir,
}

impl Frozen {
    fn start() -> Frozen {
        Self::start_with(false)
    }

    /// With a running guest, so rounds also ask about a domain when libvirtd freezes.
    fn start_with_guest() -> Frozen {
        Self::start_with(true)
    }

    fn start_with(guest: bool) -> Frozen {
        let dir = tempfile::Builder::new()
            .prefix("vmefr")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let daemon = Host::start(dir.path()).expect("libvirtd");
        if guest {
            let xml = dir.path().join("g.xml");
            std::fs::write(&xml, tiny_guest_xml("frozen-g")).expect("xml");
            daemon
                .virsh(&["create", &xml.to_string_lossy()])
                .expect("a running guest");
        }
        let e = Exporter::start(
            BIN,
            &[
                "--libvirt.uri",
                daemon.uri(),
                "--sample.idle-interval",
                "1s",
            ],
        );
        e.wait_ready(WAIT);
        assert!(poll_until(WAIT, || value(
            &e.metrics(),
            "vm_migration_libvirt_up"
        ) == Some(1.0)));
        let pid = daemon.pid().expect("libvirtd pid").to_string();
        // A hung libvirtd: the sampler's calls block inside libvirt until keepalive gives up
        // (5 s x 3), and until then the connection still counts as up.
        assert!(Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill")
            .success());
        Frozen {
            e,
            pid,
            _daemon: daemon,
            _dir: dir,
        }
    }
}

impl Frozen {
    fn resume(&self) {
        let _ = Command::new("kill").args(["-CONT", &self.pid]).status();
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.resume();
    }
}

#[test]
fn scrapes_answer_while_libvirtd_is_frozen() {
    let f = Frozen::start();
    let e = &f.e;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let scrape = || {
        client
            .get(e.url("/metrics"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.text().ok())
    };
    // Stuck, not failing: no round has finished for three idle intervals while the connection
    // is still up (a failed call would have marked it down).
    let stuck = |m: &str| {
        value(m, "vm_migration_libvirt_up") == Some(1.0)
            && value(m, "vm_migration_sample_age_seconds").is_some_and(|a| a > 3.0)
    };
    let mut last = String::new();
    let got_stuck = poll_until(Duration::from_secs(10), || {
        last = scrape().unwrap_or_default();
        stuck(&last)
    });
    let mut answered = Vec::new();
    if got_stuck {
        for _ in 0..5 {
            answered.extend(scrape());
            let _ = client.get(e.url("/-/healthy")).send();
        }
    }
    f.resume();
    assert!(
        got_stuck,
        "a sample round should be stuck in libvirt; last scrape:\n{last}"
    );
    assert_eq!(
        answered.len(),
        5,
        "every scrape answered while libvirtd was frozen"
    );
    let still = answered.last().map(String::as_str).unwrap_or_default();
    assert!(
        stuck(still),
        "the round was still stuck during the scrapes:\n{still}"
    );
}

/// With libvirtd SIGSTOPped, SIGTERM still ends the exporter within 10 s.
#[test]
fn sigterm_exits_within_10s_while_libvirtd_is_frozen() {
    let mut f = Frozen::start();
    let e = &mut f.e;
    // Let a round start and block inside libvirt.
    let before = value(&e.metrics(), "vm_migration_sample_age_seconds").unwrap_or(0.0);
    assert!(poll_until(WAIT, || value(
        &e.metrics(),
        "vm_migration_sample_age_seconds"
    )
    .is_some_and(|a| a > before + 1.5)));
    let t0 = std::time::Instant::now();
    let st = e.terminate(Duration::from_secs(10));
    f.resume();
    assert!(
        st.is_some(),
        "still running {:?} after SIGTERM",
        t0.elapsed()
    );
}

/// libvirtd resumed right after the keepalive declared it dead (a race the chaos lab test
/// found): the exporter reconnects and samples again.
#[test]
fn a_libvirtd_resumed_as_the_keepalive_gives_up_is_reconnected() {
    let f = Frozen::start_with_guest();
    let e = &f.e;
    let down = poll_until(Duration::from_secs(40), || {
        value(&e.metrics(), "vm_migration_libvirt_up") == Some(0.0)
    });
    f.resume();
    assert!(down, "the keepalive declares a frozen libvirtd dead");
    let back = poll_until(Duration::from_secs(30), || {
        value(&e.metrics(), "vm_migration_libvirt_up") == Some(1.0) && e.get("/-/ready").0 == 200
    });
    assert!(
        back,
        "reconnected and sampling again; log:\n{}",
        e.log().join("\n")
    );
}

/// With the sampler stuck in a frozen libvirtd, /-/ready turns 503 (after three missed rounds
/// and 5 s) rather than staying 200; it comes back when libvirtd resumes.
#[test]
fn ready_turns_503_while_the_sampler_is_stuck() {
    let f = Frozen::start();
    let e = &f.e;
    let stuck = poll_until(WAIT, || e.get("/-/ready").0 == 503);
    assert!(stuck, "/-/ready stayed 200 while no round completed");
    f.resume();
    e.wait_ready(WAIT);
}
