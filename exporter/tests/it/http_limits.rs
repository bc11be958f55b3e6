//! HTTP: the listener stays usable under hostile clients (loopback only, bounded in
//! count and time): half-open connections time out, a full descriptor table cannot lock scrapes
//! out, connections and heads are capped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{Exporter, BIN};

/// Read until the server closes (EOF or reset) or `within` passes; true when it closed.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn scrape(e: &Exporter) -> Result<u16, String> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|x| x.to_string())?
        .get(e.url("/metrics"))
        .send()
        .map(|r| r.status().as_u16())
        .map_err(|x| x.to_string())
}

/// 1,100 clients that each send half a request, against systemd's soft limit of 1024 open
/// files: before, accept() ran out of descriptors and /metrics went unanswered while the
/// half-open connections stayed open for good.
#[test]
fn half_open_flood_at_a_1024_fd_limit_leaves_metrics_answering() {
    let e = Exporter::start_wrapped(
        BIN,
        &["prlimit", "--nofile=1024:8192", "--"],
        &["--libvirt.uri", "test:///default"],
    );
    // The test itself holds 1,100 sockets too.
    let (_, ours) = vm_migration_exporter::http::listener::raise_nofile_limit().expect("getrlimit");
    assert!(
        ours >= 1200,
        "this test needs an open-files hard limit of 1200, have {ours}"
    );
    let opened = Instant::now();
    let mut conns = Vec::with_capacity(1100);
    for i in 0..1100 {
        let mut s = TcpStream::connect(e.addr).unwrap_or_else(|err| panic!("connect {i}: {err}"));
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
        conns.push(s);
    }
    for _ in 0..3 {
        assert_eq!(scrape(&e), Ok(200), "a scrape during the flood");
    }
    // Header-read timeout: the server closes every one of them. Connections the kernel queued
    // while the exporter was at its open-files cap are accepted only as earlier ones close, and
    // get their own 10 s; a loaded machine adds more. A server without the timeout holds them
    // all for good, which no bound here lets pass.
    let limit = Duration::from_secs(2 * 10) + Duration::from_secs(20);
    let mut still_open = 0;
    for s in &mut conns {
        if !closed_within(s, limit.saturating_sub(opened.elapsed())) {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open,
        0,
        "half-open connections left after {:?}",
        opened.elapsed()
    );
}

/// An idle keep-alive connection is closed after the same 10 s.
#[test]
fn idle_keep_alive_connection_is_closed() {
    let e = Exporter::start(BIN, &["--libvirt.uri", "test:///default"]);
    let mut s = TcpStream::connect(e.addr).expect("connect");
    s.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 256];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = s.read(&mut buf).expect("response");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(15)),
        "still open after 15 s idle"
    );
    assert!(
        idle.elapsed() >= Duration::from_secs(5),
        "closed too early: {:?}",
        idle.elapsed()
    );
}

/// Heads past 16 KiB are refused (431), not buffered up to hyper's 400 KB default.
#[test]
fn oversized_request_head_is_refused() {
    let e = Exporter::start(BIN, &["--libvirt.uri", "test:///default"]);
    let mut s = TcpStream::connect(e.addr).expect("connect");
    let big = "a".repeat(64 * 1024);
    let req = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes());
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let head = String::from_utf8_lossy(&out);
    assert!(head.starts_with("HTTP/1.1 431"), "{head:.200}");
}

/// --web.max-connections: past the cap a new connection is closed at once; scrapes work again
/// when a slot frees.
#[test]
fn connection_cap_closes_new_connections() {
    let e = Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--web.max-connections",
            "4",
        ],
    );
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(e.addr).expect("connect"))
        .collect();
    // The cap is taken when the server accepts; poll until a fifth is turned away.
    let turned_away = crate::support::poll_until(Duration::from_secs(10), || {
        TcpStream::connect(e.addr)
            .map(|mut s| closed_within(&mut s, Duration::from_millis(500)))
            .unwrap_or(false)
    });
    assert!(turned_away, "a connection past the cap was kept");
    held.clear();
    assert!(
        crate::support::poll_until(Duration::from_secs(10), || scrape(&e) == Ok(200)),
        "scrapes answer again once connections close"
    );
}
