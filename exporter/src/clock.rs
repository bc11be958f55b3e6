//! Time, two ways: wall-clock Unix seconds for what is stamped (samples, records, series), and
//! monotonic seconds for every duration the exporter waits out (completion grace, record
//! holdback, settle windows, sweeps). An NTP step moves the first and never the second, so it
//! can neither skip nor stretch a wait. [`Clock`] is the seam: tests step the wall clock alone.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; 0 if the clock is before it.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Monotonic seconds since a process-wide origin (the first call): comparable between threads
/// and collectors, never stepped.
pub fn mono_now() -> f64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// One moment on both clocks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Now {
    /// Unix seconds: stamps only, never subtracted to time a wait.
    pub wall: f64,
    /// [`mono_now`] seconds: for every wait.
    pub mono: f64,
}

/// A recorded trace has one time per record and no clock steps: both clocks read it.
impl From<f64> for Now {
    fn from(t: f64) -> Now {
        Now { wall: t, mono: t }
    }
}

/// Where the sampler reads the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Now;
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now {
            wall: unix_now(),
            mono: mono_now(),
        }
    }
}

/// A clock that moves only when told: `advance` moves both, `step_wall` only the wall clock
/// (what an NTP step does).
#[derive(Debug)]
pub struct ManualClock(parking_lot::Mutex<Now>);

impl ManualClock {
    pub fn new(start: f64) -> Self {
        ManualClock(parking_lot::Mutex::new(Now::from(start)))
    }

    pub fn advance(&self, secs: f64) {
        let mut n = self.0.lock();
        n.wall += secs;
        n.mono += secs;
    }

    pub fn step_wall(&self, secs: f64) {
        self.0.lock().wall += secs;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Now {
        *self.0.lock()
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> Now {
        (**self).now()
    }
}
