//! TCP connect time: SYN to SYN-ACK as seen by `connect()`; the connection is closed at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::ProbeError;

/// Connect to `addr`; a refused or unreachable port is an error, not a timeout.
pub async fn connect_time(addr: SocketAddr) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Io)?;
    let rtt = start.elapsed();
    drop(stream);
    Ok(rtt)
}
