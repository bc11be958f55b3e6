//! Helpers shared by the integration tests.
#![allow(dead_code)] // not every test module uses every helper

pub mod exporter;
pub mod libvirtd;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use vm_migration_exporter::libvirt::SourceEvent;

/// Polls a condition until it holds or a deadline passes (the test kit's helper).
pub use testkit::prom::poll_until;

/// Receives events until one matches `pred` (returned) or `timeout` passes (panics with the
/// events seen, to make failures readable). Non-matching events are discarded.
pub fn expect_event(
    rx: &Receiver<SourceEvent>,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&SourceEvent) -> bool,
) -> SourceEvent {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) if pred(&ev) => return ev,
            Ok(ev) => seen.push(ev),
            Err(RecvTimeoutError::Timeout) => {
                panic!("no {what} within {timeout:?}; saw instead: {seen:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("event channel closed while waiting for {what}; saw: {seen:?}")
            }
        }
    }
}

/// Values that change from run to run are replaced, and series inside a family sorted (label
/// sets of a family come out in hash order).
pub fn normalise(text: &str) -> String {
    let volatile = [
        "vm_migration_sample_age_seconds",
        "vm_migration_collector_duration_seconds",
        "vm_migration_exporter_config_last_reload_success_timestamp_seconds",
        // The exporter's own process (CPU, memory, fds, threads, start time).
        "process_",
    ];
    let mut out = Vec::new();
    let mut block: Vec<String> = Vec::new();
    let flush = |block: &mut Vec<String>, out: &mut Vec<String>| {
        block.sort();
        out.append(block);
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut block, &mut out);
            out.push(line.to_string());
            continue;
        }
        let line = match line.rsplit_once(' ') {
            Some((series, _)) if volatile.iter().any(|v| series.starts_with(v)) => {
                format!("{series} <volatile>")
            }
            _ => line.to_string(),
        };
        block.push(line);
    }
    flush(&mut block, &mut out);
    out.join("\n")
}

/// A tiny diskless TCG guest (sits in the firmware): enough for a running QEMU domain.
pub fn guest_xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <controller type='usb' model='none'/><memballoon model='none'/></devices></domain>"
    )
}

/// An HTTP server on loopback for app probes: answers 200 while `healthy` says so, 503 after.
pub fn http_server(healthy: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let ok = healthy.load(std::sync::atomic::Ordering::SeqCst);
            let status = if ok { "200 OK" } else { "503 Down" };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    addr
}
