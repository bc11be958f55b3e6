//! The guest's HTTP service, as a client sees it (through QEMU's port forward).

use std::time::Duration;

use crate::LabError;

/// One answer of the guest's HTTP service.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AppReply {
    /// Requests the guest served so far, this one included.
    pub requests: u64,
    /// The guest's uptime (CLOCK_BOOTTIME) when it answered.
    pub uptime_s: f64,
}

/// One HTTP/1.0 GET of the guest's service at `addr`. Before the guest listens, QEMU's
/// forwarder accepts and then closes the connection: that is an error here.
pub fn app_get(addr: std::net::SocketAddr, timeout: Duration) -> Result<AppReply, LabError> {
    use std::io::{Read, Write};
    let err = |e: String| LabError::Guest(format!("http://{addr}/: {e}"));
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| err(e.to_string()))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| err(e.to_string()))?;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| err(e.to_string()))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if !text.starts_with("HTTP/1.0 200 ") {
        return Err(err(format!("unexpected answer {:?}", text.lines().next())));
    }
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(|v| v.trim_end_matches('s').to_string())
    };
    let requests = field("requests=").and_then(|v| v.parse().ok());
    let uptime_s = field("uptime=").and_then(|v| v.parse().ok());
    match (requests, uptime_s) {
        (Some(requests), Some(uptime_s)) => Ok(AppReply { requests, uptime_s }),
        _ => Err(err(format!("no requests=/uptime= in {text:?}"))),
    }
}

/// Ask the guest's service at `addr` until it answers or `timeout` passes (it starts after the
/// guest boots; after a migration, once the destination runs the guest).
pub fn app_wait(addr: std::net::SocketAddr, timeout: Duration) -> Result<AppReply, LabError> {
    let mut last = app_get(addr, Duration::from_secs(2));
    crate::prom::poll_until(timeout, || {
        if last.is_err() {
            last = app_get(addr, Duration::from_secs(2));
        }
        last.is_ok()
    });
    last
}
