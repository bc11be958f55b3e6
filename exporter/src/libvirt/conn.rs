//! The real [`JobSource`]: one read-only libvirt connection, kept open and reopened.
//!
//! ```text
//! let (tx, rx) = std::sync::mpsc::channel();
//! let source = LibvirtSource::start("qemu:///system", Duration::from_secs(30), tx);
//! // rx yields SourceEvent::Connected / Disconnected { reason } / Domain(..)
//! source.list_domains()?;
//! source.shutdown();
//! ```
//!
//! A connection-manager thread (`libvirt-conn`) opens the connection with
//! `virConnectOpenReadOnly`, sets a keepalive (5 s interval, 3 missed = dead), registers a close
//! callback and the LIFECYCLE, MIGRATION_ITERATION and JOB_COMPLETED domain events, then sends
//! [`SourceEvent::Connected`]. When the connection closes (close callback, a failed call on a
//! connection that is no longer alive, or the periodic `virConnectIsAlive` check) it tears the
//! connection down, sends [`SourceEvent::Disconnected`] and retries with exponential backoff
//! from 0.5 s up to the configured cap. One `warn!` per outage, one `info!` on recovery.
//! While disconnected every call returns [`SourceError::NotConnected`] at once.
//! The first failed attempt also sends `Disconnected` (so a consumer learns why it is not up);
//! later failed retries of the same outage send nothing more.
//!
//! Call semantics:
//! - `job_stats` / `completed_job_stats`: `Ok(None)` for job type NONE, and for a driver that
//!   does not implement `virDomainGetJobStats` at all (`test:///` answers `VIR_ERR_NO_SUPPORT`).
//!   Completed stats are always read with `COMPLETED | KEEP_COMPLETED`.
//! - `max_downtime_ms`: works on a read-only connection with libvirt 9.0 (verified against a
//!   private libvirtd + QEMU 7.2 guest: 300 ms, QEMU's default). `Ok(None)` when the driver
//!   does not implement it (`test:///`) or the daemon denies it (`NO_SUPPORT`,
//!   `OPERATION_DENIED`, `ACCESS_DENIED`), e.g. under a stricter access driver.
//! - a domain that vanished (`VIR_ERR_NO_DOMAIN`) gives [`SourceError::NoDomain`]; an error on
//!   a connection that is no longer alive gives `NotConnected` and wakes the manager.
//! - calls block while libvirtd is hung, at most until the keepalive declares it dead.
//!
//! Measured on this machine: a killed libvirtd is noticed at once (close callback, reason EOF
//! on the socket); a SIGSTOPped one after ~20 s (reason keepalive timeout), after which calls
//! return `NotConnected` immediately, and it reconnects when the daemon resumes.
//!
//! Why a closed connection is never kept, whatever the order of events (libvirtd resumed right
//! as the keepalive gives up included):
//! - libvirt closes the client on the thread that notices (its event thread when no call is in
//!   flight, else the calling thread on its way out of the RPC loop) and runs the close callback:
//!   `Ctl::Closed` of this generation. A failed call on a dead connection sends one too.
//! - if that notice never comes (closed before the callback was registered, a lost wake-up of
//!   the calling thread, a driver without close callbacks), `virConnectIsAlive` says so within
//!   `LIVENESS_CHECK`: it reads the client's state and takes no lock that a call in flight holds
//!   (the remote driver releases its lock for the RPC).
//! - notices of an older generation (a second notice, a late call on the old connection) are
//!   ignored while connected and while waiting out the backoff: they neither end the new
//!   connection nor stop the retries, which go on for ever (backoff capped).
//! - resumed before the verdict, libvirtd's answers reset the keepalive and nothing closes;
//!   after it, the next attempt (0.5 s later) finds it answering, or waits in
//!   `virConnectOpen` until it answers (libvirt has no keepalive before a connection is open:
//!   a libvirtd that accepts and never answers holds the attempt, with `libvirt_up 0`, until
//!   it answers or dies).
//! - the manager waits only on its channel (with a timeout), on `connect()` and on dropping a
//!   dead connection; a call in flight holds its own `Arc<Live>`, so the old connection is
//!   closed after that call returns and the new one does not wait for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::ffi::{self, Conn, Dom, EventKind, LvError};
use super::jobs::{job_type, Call, DomainId, JobSource, Params, RawJob, SourceError, SourceEvent};

/// First retry delay after a failure; doubled per failed attempt up to the cap.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Default backoff cap.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Keepalive: probe every `KEEPALIVE_INTERVAL_S` seconds, give up after `KEEPALIVE_COUNT`
/// unanswered probes (so a hung libvirtd is noticed within about 20 s).
pub const KEEPALIVE_INTERVAL_S: i32 = 5;
pub const KEEPALIVE_COUNT: u32 = 3;
/// How often the manager double-checks `virConnectIsAlive` while connected (covers drivers
/// without close callbacks, such as `test:///`).
const LIVENESS_CHECK: Duration = Duration::from_secs(2);

enum Ctl {
    /// The connection of this generation closed or died.
    Closed {
        generation: u64,
        reason: String,
    },
    Shutdown,
}

/// One open connection with its registrations; deregistered and closed on drop.
struct Live {
    conn: Conn,
    /// One call at a time on this connection: libvirt 9.0's client crashed (SIGSEGV in its RPC
    /// loop) when the keepalive closed the connection under two calls in flight, the sampler's
    /// and the forecast's (tests/tests/exporter/libvirtd_faults.rs, frozen libvirtd with a guest).
    calls: Mutex<()>,
    generation: u64,
    event_ids: Vec<i32>,
    close_cb: bool,
    ctl: Sender<Ctl>,
}

impl Live {
    fn report_dead(&self, reason: &str) {
        let _ = self.ctl.send(Ctl::Closed {
            generation: self.generation,
            reason: reason.to_string(),
        });
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        for id in self.event_ids.drain(..) {
            if let Err(e) = self.conn.deregister_domain_event(id) {
                tracing::debug!("deregistering domain event callback {id}: {e}");
            }
        }
        if self.close_cb {
            if let Err(e) = self.conn.unregister_close_callback() {
                tracing::debug!("unregistering the close callback: {e}");
            }
        }
        // `conn` drops next: virConnectClose. Callback data still held by libvirt (when a
        // deregistration failed on a dead connection) is freed when libvirt disposes of it.
    }
}

struct Shared {
    uri: String,
    backoff_cap: Duration,
    connected: AtomicBool,
    shutting_down: AtomicBool,
    live: RwLock<Option<Arc<Live>>>,
    last_error: Mutex<String>,
    events: Sender<SourceEvent>,
    ctl: Sender<Ctl>,
}

/// The libvirt-backed [`JobSource`]. See the module documentation.
pub struct LibvirtSource {
    shared: Arc<Shared>,
    manager: Mutex<Option<JoinHandle<()>>>,
}

impl LibvirtSource {
    /// Starts the connection manager for `uri` and returns at once (the first connection
    /// attempt runs on the manager thread; watch `events` for [`SourceEvent::Connected`]).
    /// `backoff_cap` caps the retry delay (production: [`DEFAULT_BACKOFF_CAP`]).
    pub fn start(
        uri: &str,
        backoff_cap: Duration,
        events: Sender<SourceEvent>,
    ) -> Arc<LibvirtSource> {
        let (ctl_tx, ctl_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            uri: uri.to_string(),
            backoff_cap: backoff_cap.max(INITIAL_BACKOFF),
            connected: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            live: RwLock::new(None),
            last_error: Mutex::new("not connected yet".into()),
            events,
            ctl: ctl_tx,
        });
        let for_thread = Arc::clone(&shared);
        let manager = std::thread::Builder::new()
            .name("libvirt-conn".into())
            .spawn(move || manage(&for_thread, &ctl_rx));
        let manager = match manager {
            Ok(h) => Some(h),
            Err(e) => {
                let msg = format!("cannot spawn the libvirt connection thread: {e}");
                tracing::error!("{msg}");
                *shared.last_error.lock() = msg;
                None
            }
        };
        Arc::new(LibvirtSource {
            shared,
            manager: Mutex::new(manager),
        })
    }

    /// The URI this source connects to.
    pub fn uri(&self) -> &str {
        &self.shared.uri
    }

    /// Stops the manager thread and closes the connection. Idempotent; also run on drop.
    /// Sends no further events.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.shared.ctl.send(Ctl::Shutdown);
        if let Some(h) = self.manager.lock().take() {
            let _ = h.join();
        }
        self.shared.connected.store(false, Ordering::SeqCst);
        take_live(&self.shared);
    }

    fn live(&self) -> Result<Arc<Live>, SourceError> {
        self.shared
            .live
            .read()
            .clone()
            .ok_or_else(|| SourceError::NotConnected(self.shared.last_error.lock().clone()))
    }

    /// Maps a libvirt error; a failure on a dead connection wakes the manager.
    fn error(&self, live: &Live, call: Call, e: LvError, domain: &DomainId) -> SourceError {
        if e.is_no_domain() {
            return SourceError::NoDomain(domain_label(domain));
        }
        if !live.conn.is_alive() {
            live.report_dead(&e.message);
            return SourceError::NotConnected(e.message);
        }
        call_error(call, &e, e.to_string())
    }

    /// The domain, for `call` (whose error a failed lookup is).
    fn lookup(&self, live: &Live, domain: &DomainId, call: Call) -> Result<Dom, SourceError> {
        live.conn
            .lookup_by_uuid(&domain.uuid)
            .map_err(|e| self.error(live, call, e, domain))
    }

    fn stats(&self, domain: &DomainId, completed: bool) -> Result<Option<RawJob>, SourceError> {
        let call = if completed {
            Call::CompletedJobStats
        } else {
            Call::JobStats
        };
        let live = self.live()?;
        let _one_call = live.calls.lock();
        let dom = self.lookup(&live, domain, call)?;
        match dom.job_stats(completed) {
            Ok(job) => Ok((job.job_type != job_type::NONE).then_some(job)),
            // A driver without job stats (test:///) has no job we could ever see.
            Err(e) if e.is_unsupported() => Ok(None),
            Err(e) => Err(self.error(&live, call, e, domain)),
        }
    }
}

impl Drop for LibvirtSource {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn domain_label(d: &DomainId) -> String {
    if d.name.is_empty() {
        d.uuid.clone()
    } else {
        format!("{} ({})", d.name, d.uuid)
    }
}

impl JobSource for LibvirtSource {
    fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    fn list_domains(&self) -> Result<Vec<DomainId>, SourceError> {
        let live = self.live()?;
        let _one_call = live.calls.lock();
        let doms = live.conn.list_active_domains().map_err(|e| {
            if !live.conn.is_alive() {
                live.report_dead(&e.message);
                SourceError::NotConnected(e.message)
            } else {
                SourceError::Call {
                    call: Call::ListDomains,
                    message: e.to_string(),
                }
            }
        })?;
        // A domain that cannot name itself has just gone away: skip it.
        Ok(doms.iter().filter_map(|d| d.id().ok()).collect())
    }

    fn job_stats(&self, domain: &DomainId) -> Result<Option<RawJob>, SourceError> {
        self.stats(domain, false)
    }

    fn completed_job_stats(&self, domain: &DomainId) -> Result<Option<RawJob>, SourceError> {
        self.stats(domain, true)
    }

    fn max_downtime_ms(&self, domain: &DomainId) -> Result<Option<u64>, SourceError> {
        let live = self.live()?;
        let _one_call = live.calls.lock();
        let dom = self.lookup(&live, domain, Call::MaxDowntime)?;
        match dom.max_downtime_ms() {
            Ok(v) => Ok(Some(v)),
            // Not supported by the driver (e.g. test:///) or refused to this connection.
            Err(e) if e.is_refusal() => Ok(None),
            Err(e) => Err(self.error(&live, Call::MaxDowntime, e, domain)),
        }
    }

    fn metadata(&self, domain: &DomainId, uri: &str) -> Result<Option<String>, SourceError> {
        let live = self.live()?;
        let _one_call = live.calls.lock();
        let dom = self.lookup(&live, domain, Call::Metadata)?;
        match dom.metadata_element(uri) {
            Ok(v) => Ok(v),
            Err(e) if e.is_refusal() => Ok(None),
            Err(e) => Err(self.error(&live, Call::Metadata, e, domain)),
        }
    }

    fn domain_stats(&self) -> Result<Vec<(DomainId, Params)>, SourceError> {
        let live = self.live()?;
        let _one_call = live.calls.lock();
        match live.conn.dirty_rate_stats() {
            Ok(v) => Ok(v),
            Err(e) if !live.conn.is_alive() => {
                live.report_dead(&e.message);
                Err(SourceError::NotConnected(e.message))
            }
            Err(e) if e.is_unsupported() => Err(SourceError::Unsupported {
                call: Call::DomainStats,
                message: e.to_string(),
            }),
            Err(e) => Err(SourceError::Call {
                call: Call::DomainStats,
                message: e.to_string(),
            }),
        }
    }
}

/// Opens and sets up one connection.
fn connect(shared: &Shared, generation: u64) -> Result<Live, LvError> {
    let conn = Conn::open_read_only(&shared.uri)?;
    match conn.set_keepalive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT) {
        Ok(true) => {}
        Ok(false) => tracing::debug!("libvirt connection has no keepalive (local driver)"),
        Err(e) => tracing::debug!("virConnectSetKeepAlive: {e}"),
    }
    let mut live = Live {
        conn,
        calls: Mutex::new(()),
        generation,
        event_ids: Vec::new(),
        close_cb: false,
        ctl: shared.ctl.clone(),
    };
    let ctl = shared.ctl.clone();
    match live.conn.register_close_callback(Box::new(move |reason| {
        let _ = ctl.send(Ctl::Closed {
            generation,
            reason: format!(
                "libvirt connection closed: {}",
                ffi::close_reason_text(reason)
            ),
        });
    })) {
        Ok(()) => live.close_cb = true,
        Err(e) => tracing::debug!("no close callback on this connection: {e}"),
    }
    let events = shared.events.clone();
    let handler: ffi::EventHandler = Arc::new(move |ev| {
        let _ = events.send(SourceEvent::Domain(ev));
    });
    for kind in [
        EventKind::Lifecycle,
        EventKind::MigrationIteration,
        EventKind::JobCompleted,
        EventKind::MetadataChange,
    ] {
        // Fatal: `Connected` promises registered callbacks. `live` drops on error, which
        // deregisters what was registered so far and closes the connection.
        let id = live
            .conn
            .register_domain_event(kind, Arc::clone(&handler))?;
        live.event_ids.push(id);
    }
    Ok(live)
}

fn manage(shared: &Shared, ctl: &Receiver<Ctl>) {
    let mut backoff = INITIAL_BACKOFF;
    let mut generation = 0u64;
    // Some(reason) while an outage is in progress (warned once, cleared on recovery).
    let mut outage: Option<String> = None;
    let send = |ev: SourceEvent| {
        if !shared.shutting_down.load(Ordering::SeqCst) {
            let _ = shared.events.send(ev);
        }
    };
    loop {
        if shared.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        generation += 1;
        match connect(shared, generation) {
            Ok(live) => {
                *shared.live.write() = Some(Arc::new(live));
                shared.connected.store(true, Ordering::SeqCst);
                if outage.take().is_some() {
                    tracing::info!(uri = %shared.uri, "libvirt connection restored");
                } else {
                    tracing::info!(uri = %shared.uri, "connected to libvirt (read-only)");
                }
                backoff = INITIAL_BACKOFF;
                send(SourceEvent::Connected);
                let reason = loop {
                    match ctl.recv_timeout(LIVENESS_CHECK) {
                        Ok(Ctl::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                            shared.connected.store(false, Ordering::SeqCst);
                            take_live(shared);
                            return;
                        }
                        Ok(Ctl::Closed {
                            generation: g,
                            reason,
                        }) if g == generation => break reason,
                        Ok(Ctl::Closed { .. }) => continue,
                        Err(RecvTimeoutError::Timeout) => {
                            let alive = shared
                                .live
                                .read()
                                .as_ref()
                                .is_some_and(|l| l.conn.is_alive());
                            if !alive {
                                break "libvirt connection is no longer alive".to_string();
                            }
                        }
                    }
                };
                shared.connected.store(false, Ordering::SeqCst);
                *shared.last_error.lock() = reason.clone();
                // Dropping the last Arc<Live> deregisters callbacks and closes the connection;
                // calls still in flight hold their own Arc and finish (with errors) first.
                take_live(shared);
                tracing::warn!(uri = %shared.uri, "lost the libvirt connection: {reason}; reconnecting with backoff");
                outage = Some(reason.clone());
                send(SourceEvent::Disconnected { reason });
            }
            Err(e) => {
                let reason = format!("cannot connect to {}: {}", shared.uri, e.message);
                *shared.last_error.lock() = reason.clone();
                if outage.is_none() {
                    tracing::warn!(
                        "{reason}; retrying with backoff up to {:?}",
                        shared.backoff_cap
                    );
                    outage = Some(reason.clone());
                    send(SourceEvent::Disconnected { reason });
                } else {
                    tracing::debug!("{reason}");
                }
            }
        }
        // Wait for the backoff (shutdown interrupts it; stale close notices are ignored).
        let deadline = std::time::Instant::now() + backoff;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match ctl.recv_timeout(left) {
                Ok(Ctl::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Ctl::Closed { .. }) => continue,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        backoff = (backoff * 2).min(shared.backoff_cap);
    }
}

/// Take the connection out of `shared` and drop it after the write lock is released:
/// `shared.live.write().take();` dropped the last `Arc<Live>` (deregistering callbacks and
/// closing the connection, which waits on a hung libvirtd) while every caller of `live()`
/// waited on the lock.
fn take_live(shared: &Shared) {
    let last = shared.live.write().take();
    drop(last);
}
/// A failed call on a live connection: `Unsupported` when the driver lacks the call (its
/// message as libvirt said it), else `Call` with `message`.
pub(super) fn call_error(call: Call, e: &LvError, message: String) -> SourceError {
    if e.is_unsupported() {
        return SourceError::Unsupported {
            call,
            message: e.to_string(),
        };
    }
    SourceError::Call { call, message }
}
