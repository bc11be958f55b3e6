//! The one read-write libvirt connection, opt-in (`--forecast.enable`, `--forecast.libvirt.uri`):
//! it only starts dirty-rate calculations (`virDomainStartDirtyRateCalc`, page sampling). Opened
//! on first use and again after a failure on a dead connection; never used for anything else.

use parking_lot::Mutex;

use super::ffi::{Conn, LvError};
use super::jobs::{Call, DomainId, SourceError};

/// Starts dirty-rate calculations: the seam the forecast collector's tests fake.
pub trait DirtyRateCalc: Send + Sync {
    /// Start a page-sampling calculation over `seconds` for `domain`; returns at once (the
    /// result shows in the domain's `dirtyrate.*` statistics once QEMU has it).
    fn start(&self, domain: &DomainId, seconds: i32) -> Result<(), SourceError>;
}

/// [`DirtyRateCalc`] on a read-write connection to `uri`.
pub struct ReadWriteCalc {
    uri: String,
    conn: Mutex<Option<Conn>>,
}

impl ReadWriteCalc {
    pub fn new(uri: &str) -> Self {
        ReadWriteCalc {
            uri: uri.to_string(),
            conn: Mutex::new(None),
        }
    }

    fn call_error(&self, e: LvError) -> SourceError {
        SourceError::Call {
            call: Call::StartDirtyRateCalc,
            message: format!("{e} (on the read-write connection to {})", self.uri),
        }
    }
}

impl DirtyRateCalc for ReadWriteCalc {
    fn start(&self, domain: &DomainId, seconds: i32) -> Result<(), SourceError> {
        // One calculation at a time on this connection: the calls are short (QEMU starts the
        // calculation and answers), and the lock keeps a reconnect from racing another call.
        let mut g = self.conn.lock();
        if g.as_ref().is_some_and(|c| !c.is_alive()) {
            *g = None;
        }
        if g.is_none() {
            let c = Conn::open_read_write(&self.uri).map_err(|e| {
                SourceError::NotConnected(format!(
                    "cannot open {} read-write: {e} (check --forecast.libvirt.uri)",
                    self.uri
                ))
            })?;
            tracing::info!(uri = %self.uri, "connected to libvirt read-write for dirty-rate calculations");
            *g = Some(c);
        }
        let Some(conn) = g.as_ref() else {
            return Err(SourceError::NotConnected(self.uri.clone()));
        };
        let dom = conn.lookup_by_uuid(&domain.uuid).map_err(|e| {
            if e.is_no_domain() {
                SourceError::NoDomain(domain.name.clone())
            } else {
                self.call_error(e)
            }
        })?;
        dom.start_dirty_rate_calc(seconds).map_err(|e| {
            if e.is_unsupported() {
                SourceError::Unsupported {
                    call: Call::StartDirtyRateCalc,
                    message: e.to_string(),
                }
            } else {
                self.call_error(e)
            }
        })
    }
}
