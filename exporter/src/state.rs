//! The latest known state, shared between the sampler (writer) and HTTP handlers (readers).
//!
//! The sampler takes the lock only to copy in results it already has, never across a libvirt
//! call, so a scrape waits at most for a memory copy.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::jobs::tracker::{ActiveJob, FinishedMigration};
use crate::libvirt::jobs::DomainId;
use crate::record::DomainIdentity;

#[derive(Debug, Default)]
pub struct Snapshot {
    /// The libvirt connection is open.
    pub libvirt_up: bool,
    /// The sampler has finished a round after the first connection attempt's outcome was known
    /// (connected, or failed and reported as `libvirt_up 0`).
    pub ready: bool,
    /// A round is due before this instant; past it the sampler is stuck and `/-/ready` is 503.
    pub next_round_by: Option<std::time::Instant>,
    /// Active domains in the last successful listing.
    pub domains_active: Option<u64>,
    /// Monotonic time (`clock::mono_now`) of the last successful sample round: its age is
    /// what the stuck-sampler alert reads, and an NTP step must not move it.
    pub last_success_mono: Option<f64>,
    /// The domains of the last successful listing, with Nova's identity where they have one.
    pub identities: Vec<(DomainId, Option<DomainIdentity>)>,
    /// Migration jobs running now, as of the last round.
    pub active: Vec<ActiveJob>,
    /// Finished-migration records, oldest first (loaded from storage at start, bounded).
    pub records: VecDeque<FinishedMigration>,
}

impl Snapshot {
    /// The sampler has missed several rounds (stuck in libvirt, or its thread is gone).
    pub fn stuck(&self, now: std::time::Instant) -> bool {
        self.next_round_by.is_some_and(|t| now > t)
    }

    pub fn push_finished(&mut self, f: FinishedMigration) {
        self.records.push_back(f);
        while self.records.len() > crate::records::log::IN_MEMORY {
            self.records.pop_front();
        }
    }
}

pub type SharedState = Arc<Mutex<Snapshot>>;

pub fn shared() -> SharedState {
    Arc::new(Mutex::new(Snapshot::default()))
}
