//! A sampler driven by a recorded trace instead of libvirt: unit tests, the fixture tests and
//! `verdict-eval` replay lab traces through the same code the daemon runs.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use super::sampler::{Sampler, SamplerConfig};
use crate::metrics::Metrics;
use crate::state::SharedState;
use crate::trace::{ReplaySource, TraceRecord};

pub struct Replay {
    /// What the daemon would publish: live jobs, records, collector status.
    pub state: SharedState,
    /// The metrics registry `/metrics` would encode.
    pub registry: Registry,
    pub sampler: Sampler,
    source: Arc<ReplaySource>,
}

impl Replay {
    pub fn new(records: Vec<TraceRecord>, cfg: SamplerConfig) -> Self {
        let state = crate::state::shared();
        let (registry, metrics) = Metrics::register(state.clone());
        let source = Arc::new(ReplaySource::new(records));
        let sampler = Sampler::new(source.clone(), state.clone(), metrics, None, cfg);
        Replay {
            state,
            registry,
            sampler,
            source,
        }
    }

    /// Deliver every record at its recorded time; `after_round` sees each round's time and the
    /// registry as a scrape would find it then.
    pub fn run(&mut self, mut after_round: impl FnMut(f64, &Registry)) {
        let Replay {
            registry,
            sampler,
            source,
            ..
        } = self;
        sampler.replay(source, |t| after_round(t, registry));
    }

    /// The registry now, in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        text(&self.registry)
    }
}

/// A registry in the Prometheus text format (what a scrape returns).
pub fn text(registry: &Registry) -> String {
    // Writing to a String cannot fail; an encoder error would mean a broken metric.
    crate::exposition::encode(registry, false)
        .map(|(body, _)| body)
        .unwrap_or_else(|e| format!("# encode error: {e}"))
}
