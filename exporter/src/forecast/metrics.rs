//! The `vm_migration_forecast_*` families, evaluated at scrape time from the collector's last
//! [`HostView`] with the default "what if" (the usual peer, no cap, one migration at a time).

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::model::Verdict;
use super::report::{evaluate, HostView, WhatIf};
use crate::exposition::GaugeFamily;

#[derive(Debug)]
pub struct ForecastFamilies {
    view: Arc<Mutex<HostView>>,
    state: crate::state::SharedState,
}

impl ForecastFamilies {
    pub fn new(view: Arc<Mutex<HostView>>, state: crate::state::SharedState) -> Self {
        ForecastFamilies { view, state }
    }
}

impl Collector for ForecastFamilies {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Copy, then evaluate outside the lock.
        let view = self.view.lock().clone().listed_only(&self.state);
        if view.updated_at.is_none() {
            return Ok(());
        }
        let report = evaluate(&view, &WhatIf::default());
        let mut verdict = GaugeFamily::new(
            "vm_migration_forecast_verdict",
            "Predicted pre-copy verdict if the domain were migrated now (1 for the current state: converges, stalls, diverges, unknown).",
        );
        let mut dirty = GaugeFamily::new(
            "vm_migration_forecast_dirty_rate_bytes_per_second",
            "Dirty rate the forecast uses, bytes per second (a dirty-rate calculation, libvirt's domain statistics, or the domain's last migration).",
        );
        let mut duration = GaugeFamily::new(
            "vm_migration_forecast_duration_seconds",
            "Predicted total time of a pre-copy migration now; absent when it would not converge or is unknown.",
        );
        let mut downtime = GaugeFamily::new(
            "vm_migration_forecast_downtime_seconds",
            "Predicted downtime at switch-over (when it does not converge: the pause of a switch-over forced at pass 2).",
        );
        for d in &report.domains {
            let l = |extra: Option<(&'static str, &str)>| {
                let mut v = vec![("domain", d.domain.clone()), ("uuid", d.uuid.clone())];
                if let Some((k, s)) = extra {
                    v.push((k, s.to_string()));
                }
                v
            };
            for s in Verdict::ALL {
                let on = d.forecast.verdict == s;
                verdict.push(
                    l(Some(("state", s.as_str()))),
                    Some(f64::from(u8::from(on))),
                );
            }
            dirty.push(l(None), d.dirty_rate.map(|r| r.bytes_per_second));
            duration.push(l(None), d.forecast.duration_seconds);
            downtime.push(l(None), d.forecast.downtime_seconds);
        }
        let mut evacuation = GaugeFamily::new(
            "vm_migration_forecast_evacuation_seconds",
            "Predicted time to migrate every running guest off this host one at a time, each in its recommended mode; absent while a guest has no forecast.",
        );
        evacuation.push(Vec::new(), report.evacuation.total_seconds);
        for f in [verdict, dirty, duration, downtime, evacuation] {
            f.encode(&mut enc)?;
        }
        Ok(())
    }
}
