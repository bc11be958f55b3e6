//! The HTTP(S) listener: our own accept loop over hyper, so that every connection is bounded.
//!
//! `axum::serve` sets no header-read timeout and accepts without limit; on a host with the
//! 1024-descriptor soft limit systemd gives, 1,100 clients that send half a request each would
//! keep `/metrics` unreachable. Here:
//! - the soft `RLIMIT_NOFILE` is raised to the hard limit at start (Go does this for every
//!   exporter), and the connection cap is kept below it so `accept` never runs out of
//!   descriptors;
//! - a request's headers must arrive within [`HEADER_READ_TIMEOUT`] of the connection waiting
//!   for them, which is also the idle keep-alive timeout (hyper starts the timer when it starts
//!   reading the next request head);
//! - request heads are bounded ([`MAX_HEAD_BYTES`], [`MAX_HEADERS`]), bodies are not read;
//! - `--web.max-connections` caps open connections (past it new ones are closed at once) and
//!   `--web.max-requests` caps requests in flight (past it: 503 at once, before authentication).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::http::web_config::LiveWebConfig;

/// Time allowed for a request's headers, from when the connection starts waiting for them
/// (so also the longest a keep-alive connection stays idle). Prometheus scrapes send their
/// request at once; 10 s is the exporter-toolkit-style bound Go exporters use.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line + headers) read; hyper answers 431 past it. Its smallest
/// allowed buffer is 8 KiB; a scrape's head is a few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 64;
/// Concurrent HTTP/2 streams per connection (TLS with ALPN h2).
const MAX_H2_STREAMS: u32 = 16;
/// Descriptors kept free for everything else (libvirt socket, /proc reads, probes, records).
const FD_RESERVE: u64 = 256;
/// How long in-flight requests get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

/// Raise the soft open-files limit to the hard one; returns (old soft, new soft).
pub fn raise_nofile_limit() -> Result<(u64, u64), nix::Error> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard.max(soft)))
}

/// The connection cap actually used: the requested one, or less when the open-files limit is
/// too low to hold it (then `accept` would fail with EMFILE and nothing could be served).
pub fn connection_cap(requested: usize) -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(s, _)| s)
        .unwrap_or(1024);
    let fits = usize::try_from(soft.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX);
    if requested > fits {
        warn!(
            requested,
            used = fits,
            open_files_limit = soft,
            "--web.max-connections is above what the open-files limit allows; raise LimitNOFILE"
        );
    }
    requested.min(fits)
}

/// Middleware state for [`limit_requests`].
#[derive(Clone)]
pub struct RequestSlots(Arc<Semaphore>);

impl RequestSlots {
    pub fn new(max: usize) -> Self {
        RequestSlots(Arc::new(Semaphore::new(max.max(1))))
    }
}

/// `--web.max-requests`: past the cap a request is answered 503 at once (a scraper counts a
/// failed scrape and retries next interval) instead of queueing without bound.
pub async fn limit_requests(
    axum::extract::State(slots): axum::extract::State<RequestSlots>,
    req: Request,
    next: Next,
) -> Response {
    match slots.0.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many concurrent requests (--web.max-requests)\n",
        )
            .into_response(),
    }
}

/// Serve `app` on `listener` (TLS while `tls` holds a TLS configuration) until `shutdown` resolves, then give
/// in-flight requests [`DRAIN`] to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: LiveWebConfig,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(Some(HEADER_READ_TIMEOUT))
        .keep_alive_timeout(HEADER_READ_TIMEOUT);
    let (h1, h2) = (Arc::new(h1), Arc::new(h2));
    tokio::pin!(shutdown);
    let mut last_accept_warning: Option<tokio::time::Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: nothing to do but wait for connections to close.
                    let now = tokio::time::Instant::now();
                    if last_accept_warning.is_none_or(|t| now - t > Duration::from_secs(10)) {
                        warn!(error = %e, "cannot accept a connection");
                        last_accept_warning = Some(now);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, max = limits.max_connections, "connection cap reached; closing a new connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // The TLS configuration in force now: a reload applies from the next connection on.
        let acceptor = tls.tls().map(tokio_rustls::TlsAcceptor::from);
        let (app, watcher, h1, h2) = (app.clone(), graceful.watcher(), h1.clone(), h2.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let svc = TowerToHyperService::new(app);
            let result = match acceptor {
                None => {
                    watcher
                        .watch(h1.serve_connection(TokioIo::new(tcp), svc))
                        .await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        watcher
                            .watch(h2.serve_connection(TokioIo::new(stream), svc))
                            .await
                    } else {
                        watcher
                            .watch(h1.serve_connection(TokioIo::new(stream), svc))
                            .await
                    }
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        info!("connections still open after the drain period; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    /// --web.max-requests: with the only slot taken by a request in flight, the next one is
    /// answered 503 at once; when the first finishes, requests are served again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_past_the_cap_get_503() {
        let release = Arc::new(tokio::sync::Notify::new());
        let entered = Arc::new(tokio::sync::Notify::new());
        let (r, en) = (release.clone(), entered.clone());
        let app = Router::new()
            .route(
                "/slow",
                get(move || {
                    let (r, en) = (r.clone(), en.clone());
                    async move {
                        en.notify_one();
                        r.notified().await;
                        "done"
                    }
                }),
            )
            .route("/fast", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                RequestSlots::new(1),
                limit_requests,
            ));
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let limits = Limits {
            max_connections: 16,
        };
        tokio::spawn(serve(
            l,
            app,
            LiveWebConfig::default(),
            limits,
            std::future::pending(),
        ));
        let slow = tokio::spawn(reqwest::get(format!("http://{addr}/slow")));
        entered.notified().await;
        let status = |path: &'static str| async move {
            reqwest::get(format!("http://{addr}{path}"))
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        };
        assert_eq!(status("/fast").await, 503);
        release.notify_one();
        let first = slow.await.expect("join").expect("slow request");
        assert_eq!(first.status().as_u16(), 200);
        assert_eq!(status("/fast").await, 200);
    }
}
