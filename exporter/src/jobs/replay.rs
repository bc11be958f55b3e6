//! A sampler driven by a recorded trace instead of libvirt: unit tests, the fixture tests and
//! `verdict-eval` replay lab traces through the same code the daemon runs.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use super::sampler::{Sampler, SamplerConfig};
use crate::collector::{execute, CollectError, Event, Name, Statuses};
use crate::jobs::metrics::Metrics;
use crate::jobs::trace::{ReplaySource, TraceRecord};
use crate::libvirt::jobs::SourceEvent;
use crate::state::SharedState;

pub struct Replay {
    /// What the daemon would publish: live jobs, records.
    pub state: SharedState,
    /// The collector status the runner would keep.
    pub statuses: Statuses,
    /// The metrics registry `/metrics` would encode.
    pub registry: Registry,
    /// The finished-migration and call-error metrics in it.
    pub metrics: Arc<Metrics>,
    pub sampler: Sampler,
    source: Arc<ReplaySource>,
}

impl Replay {
    pub fn new(records: Vec<TraceRecord>, cfg: SamplerConfig) -> Self {
        Self::with_source(ReplaySource::new(records), cfg)
    }

    /// Replay through `source` (e.g. a [`ReplaySource`] with metadata elements added).
    pub fn with_source(source: ReplaySource, cfg: SamplerConfig) -> Self {
        let state = crate::state::shared();
        let statuses = Statuses::default();
        let (registry, metrics) = Metrics::register(state.clone(), statuses.clone());
        let source = Arc::new(source);
        let sampler = Sampler::new(source.clone(), state.clone(), metrics.clone(), None, cfg);
        Replay {
            state,
            statuses,
            registry,
            metrics,
            sampler,
            source,
        }
    }

    /// Deliver every record at its recorded time, as the runner would: events as they come, a
    /// round at each recorded round time. `after_round` sees each round's time and the registry
    /// as a scrape would find it then.
    pub fn run(&mut self, mut after_round: impl FnMut(f64, &Registry)) {
        for rec in self.source.records() {
            self.source.set_time(rec.t());
            let (t, ev) = match rec {
                TraceRecord::Round { t, .. } => {
                    execute(&self.statuses, Name::Jobs, || self.sampler.round(*t));
                    after_round(*t, &self.registry);
                    continue;
                }
                TraceRecord::Event { t, event } => (*t, SourceEvent::Domain(event.clone())),
                TraceRecord::Connection { t, connected: true } => (*t, SourceEvent::Connected),
                TraceRecord::Connection {
                    t,
                    connected: false,
                } => (
                    *t,
                    SourceEvent::Disconnected {
                        reason: "replay".into(),
                    },
                ),
                _ => continue,
            };
            if self.sampler.handle(t, ev) == Event::Failed {
                execute(&self.statuses, Name::Jobs, || {
                    Err(CollectError::new("replay: libvirt disconnected"))
                });
            }
        }
    }

    /// The source it replays through (to change metadata, or the replay clock).
    pub fn source(&self) -> &ReplaySource {
        &self.source
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
