//! One probe of a guest's service: an HTTP(S) GET (status, latency) or a TCP connect. Bounded by
//! a timeout; never follows redirects (a redirect is the service's answer).

use std::net::SocketAddr;
use std::time::Duration;

use super::outage::ProbeResult;
use crate::app::targets::Check;

/// Why a probe was not good: the `result` label of `vm_migration_app_probes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeOutcome {
    Success,
    /// Answered, with another status than expected.
    Status,
    Timeout,
    Refused,
    Error,
}

impl ProbeOutcome {
    pub const ALL: [ProbeOutcome; 5] = [
        ProbeOutcome::Success,
        ProbeOutcome::Status,
        ProbeOutcome::Timeout,
        ProbeOutcome::Refused,
        ProbeOutcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeOutcome::Success => "success",
            ProbeOutcome::Status => "status",
            ProbeOutcome::Timeout => "timeout",
            ProbeOutcome::Refused => "refused",
            ProbeOutcome::Error => "error",
        }
    }
}

/// An HTTP client for probes: no redirects, no proxies from the environment, no connection
/// reuse (each probe measures a fresh connection, as a new user would see it).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(0)
        .user_agent(concat!("vm-migration-exporter/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Runs one probe; `now` gives unix time (the send and answer times go into the result).
pub async fn probe(
    client: &reqwest::Client,
    check: &Check,
    timeout: Duration,
    now: impl Fn() -> f64,
) -> (ProbeResult, ProbeOutcome) {
    let sent = now();
    let outcome = match tokio::time::timeout(timeout, run(client, check)).await {
        Ok(o) => o,
        Err(_) => ProbeOutcome::Timeout,
    };
    let done = now();
    (
        ProbeResult {
            sent,
            done,
            good: outcome == ProbeOutcome::Success,
        },
        outcome,
    )
}

async fn run(client: &reqwest::Client, check: &Check) -> ProbeOutcome {
    match check {
        Check::Tcp { address } => tcp(*address).await,
        Check::Http { url, expect_status } => match client.get(url.clone()).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Read the body: the answer is complete only then.
                let body_ok = resp.bytes().await.is_ok();
                let expected = match expect_status {
                    Some(s) => status == *s,
                    None => (200..400).contains(&status),
                };
                match (expected, body_ok) {
                    (true, true) => ProbeOutcome::Success,
                    (false, _) => ProbeOutcome::Status,
                    (true, false) => ProbeOutcome::Error,
                }
            }
            Err(e) if e.is_timeout() => ProbeOutcome::Timeout,
            Err(e) if e.is_connect() && refused(&e) => ProbeOutcome::Refused,
            Err(_) => ProbeOutcome::Error,
        },
    }
}

async fn tcp(address: SocketAddr) -> ProbeOutcome {
    match tokio::net::TcpStream::connect(address).await {
        Ok(_) => ProbeOutcome::Success,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => ProbeOutcome::Refused,
        Err(_) => ProbeOutcome::Error,
    }
}

/// Whether a connect error was a refusal (the guest's kernel answered RST).
fn refused(e: &reqwest::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn clock() -> impl Fn() -> f64 {
        let start = std::time::Instant::now();
        move || start.elapsed().as_secs_f64()
    }

    /// A one-request-at-a-time HTTP server on loopback answering `status`.
    fn server(status: u16, requests: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in l.incoming().take(requests).flatten() {
                let mut s = s;
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        addr
    }

    fn http(addr: SocketAddr, expect_status: Option<u16>) -> Check {
        Check::Http {
            url: reqwest::Url::parse(&format!("http://{addr}/healthz")).expect("url"),
            expect_status,
        }
    }

    #[tokio::test]
    async fn http_status_decides() {
        let c = http_client().expect("client");
        let t = Duration::from_secs(5);
        let (r, o) = probe(&c, &http(server(200, 1), None), t, clock()).await;
        assert_eq!(o, ProbeOutcome::Success);
        assert!(r.good && r.done >= r.sent);
        let (r, o) = probe(&c, &http(server(503, 1), None), t, clock()).await;
        assert_eq!((o, r.good), (ProbeOutcome::Status, false));
        let (_, o) = probe(&c, &http(server(204, 1), Some(204)), t, clock()).await;
        assert_eq!(o, ProbeOutcome::Success);
        let (_, o) = probe(&c, &http(server(200, 1), Some(204)), t, clock()).await;
        assert_eq!(o, ProbeOutcome::Status);
    }

    #[tokio::test]
    async fn refused_and_silent_targets() {
        let c = http_client().expect("client");
        // A port nobody listens on: bind, learn it, close.
        let closed = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let (_, o) = probe(&c, &http(closed, None), Duration::from_secs(5), clock()).await;
        assert_eq!(o, ProbeOutcome::Refused);
        let (_, o) = probe(
            &c,
            &Check::Tcp { address: closed },
            Duration::from_secs(5),
            clock(),
        )
        .await;
        assert_eq!(o, ProbeOutcome::Refused);
        // Accepts but never answers: the timeout bounds the probe.
        let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr");
        let (r, o) = probe(&c, &http(addr, None), Duration::from_millis(200), clock()).await;
        assert_eq!(o, ProbeOutcome::Timeout);
        assert!(r.done - r.sent < 2.0, "{r:?}");
        drop(silent);
        let (_, o) = probe(
            &c,
            &Check::Tcp {
                address: server(200, 1),
            },
            Duration::from_secs(5),
            clock(),
        )
        .await;
        assert_eq!(o, ProbeOutcome::Success);
    }
}
