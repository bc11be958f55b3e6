//! The latest known state, shared between the sampler (writer) and HTTP handlers (readers).
//!
//! The sampler takes the lock only to copy in results it already has, never across a libvirt
//! call, so a scrape waits at most for a memory copy.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::migration::tracker::{ActiveJob, FinishedMigration};

#[derive(Debug, Default)]
pub struct Snapshot {
    /// The libvirt connection is open.
    pub libvirt_up: bool,
    /// The sampler has finished its first round (whatever its result).
    pub ready: bool,
    /// Active domains in the last successful listing.
    pub domains_active: Option<u64>,
    /// Unix time of the last successful sample round.
    pub last_success_at: Option<f64>,
    /// Migration jobs running now, as of the last round.
    pub active: Vec<ActiveJob>,
    /// Finished-migration records, oldest first (loaded from storage at start, bounded).
    pub records: VecDeque<FinishedMigration>,
}

impl Snapshot {
    pub fn push_finished(&mut self, f: FinishedMigration) {
        self.records.push_back(f);
        while self.records.len() > crate::store::IN_MEMORY {
            self.records.pop_front();
        }
    }
}

pub type SharedState = Arc<Mutex<Snapshot>>;

pub fn shared() -> SharedState {
    Arc::new(Mutex::new(Snapshot::default()))
}
