//! The one read-write libvirt connection, opt-in (`--forecast.enable`, `--forecast.libvirt.uri`):
//! it starts dirty-rate calculations (`virDomainStartDirtyRateCalc`, page sampling) and reads
//! the domains' migration bandwidth caps (`virDomainMigrateGetMaxSpeed`: libvirt 9.0 refuses it
//! on the read-only connection). Opened on first use and again after a failure on a dead
//! connection; never used for anything else.

use parking_lot::Mutex;

use super::ffi::{Conn, Dom, LvError};
use super::jobs::{Call, DomainId, SourceError};

/// libvirt's migration bandwidth caps of one domain, in MiB/s as libvirt reports them
/// (its "unlimited" is a huge number, not a flag: `forecast::path::LibvirtCap` reads it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxSpeed {
    pub precopy_mibs: u64,
    /// `None` when the post-copy cap cannot be read (an older QEMU).
    pub postcopy_mibs: Option<u64>,
}

/// The read-write connection's calls: the seam the forecast collector's tests fake.
pub trait DirtyRateCalc: Send + Sync {
    /// Start a page-sampling calculation over `seconds` for `domain`; returns at once (the
    /// result shows in the domain's `dirtyrate.*` statistics once QEMU has it).
    fn start(&self, domain: &DomainId, seconds: i32) -> Result<(), SourceError>;
    /// The domain's migration bandwidth caps (`virDomainMigrateGetMaxSpeed`, pre-copy and
    /// post-copy).
    fn max_speed(&self, domain: &DomainId) -> Result<MaxSpeed, SourceError>;
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

    fn error(&self, call: Call, e: LvError) -> SourceError {
        let message = format!("{e} (on the read-write connection to {})", self.uri);
        super::conn::call_error(call, &e, message)
    }

    /// `f` on the domain, on the (re)opened connection. One call at a time on this connection:
    /// the calls are short, and the lock keeps a reconnect from racing another call.
    fn on_domain<T>(
        &self,
        domain: &DomainId,
        call: Call,
        f: impl FnOnce(&Dom) -> Result<T, LvError>,
    ) -> Result<T, SourceError> {
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
            tracing::info!(uri = %self.uri, "connected to libvirt read-write for the forecast");
            *g = Some(c);
        }
        let Some(conn) = g.as_ref() else {
            return Err(SourceError::NotConnected(self.uri.clone()));
        };
        let dom = conn.lookup_by_uuid(&domain.uuid).map_err(|e| {
            if e.is_no_domain() {
                SourceError::NoDomain(domain.name.clone())
            } else {
                self.error(call, e)
            }
        })?;
        f(&dom).map_err(|e| self.error(call, e))
    }
}

impl DirtyRateCalc for ReadWriteCalc {
    fn start(&self, domain: &DomainId, seconds: i32) -> Result<(), SourceError> {
        self.on_domain(domain, Call::StartDirtyRateCalc, |dom| {
            dom.start_dirty_rate_calc(seconds)
        })
    }

    fn max_speed(&self, domain: &DomainId) -> Result<MaxSpeed, SourceError> {
        self.on_domain(domain, Call::MaxSpeed, |dom| {
            let precopy_mibs = dom.migrate_max_speed_mibs(false)?;
            // The post-copy cap is QEMU's `max-postcopy-bandwidth` (one monitor query); a QEMU
            // without it leaves it unknown, not the pre-copy figure.
            let postcopy_mibs = match dom.migrate_max_speed_mibs(true) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::debug!(domain = %domain.name, error = %e, "no post-copy bandwidth cap");
                    None
                }
            };
            Ok(MaxSpeed {
                precopy_mibs,
                postcopy_mibs,
            })
        })
    }
}
