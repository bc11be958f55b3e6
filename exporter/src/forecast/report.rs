//! What the collector publishes (the inputs of every forecast on this host) and the forecasts
//! made from it for one "what if" (peer, bandwidth, concurrency). Pure: `/metrics` evaluates
//! the default, `/api/v1/forecast` the one asked for, and neither waits on libvirt.

use std::net::IpAddr;

use serde::Serialize;

use super::dirty::{DirtyRate, FirstPassSource};
use super::model::{self, Forecast, Inputs};
use super::path::{self, LibvirtCap, PathEstimate, PathInputs, Window};
use super::plan::{self, Plan};
use crate::jobs::convergence::DEFAULT_MAX_DOWNTIME_S;
use crate::libvirt::DomainId;

/// One running domain's inputs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DomainView {
    pub domain: DomainId,
    /// A migration job runs now: no calculation is started for it, and it is left out of the
    /// evacuation plan (it is leaving already).
    pub migrating: bool,
    pub memory_bytes: Option<f64>,
    /// What pass 1 would send (see `dirty::DomainStats::first_pass`) ...
    pub first_pass_bytes: Option<f64>,
    /// ... and where that figure comes from.
    pub first_pass_source: Option<FirstPassSource>,
    /// The guest-RAM mapping's resident bytes in the QEMU process.
    pub resident_bytes: Option<f64>,
    /// Bytes/s of zeroed memory the guest turns into data (successive zero-page samples).
    pub fill_rate_bytes: Option<f64>,
    pub dirty_rate: Option<DirtyRate>,
    /// libvirt's max downtime for the domain; QEMU's default when libvirt does not say.
    pub max_downtime_seconds: Option<f64>,
    /// libvirt's migration bandwidth caps for the domain; `None` when not read (read-only:
    /// libvirt refuses `virDomainMigrateGetMaxSpeed` there) or refused.
    pub libvirt_cap: Option<LibvirtCap>,
    /// The peer of its last migration out of this host, when that peer's path is known.
    pub last_peer: Option<String>,
}

/// What is known of the path to one peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerPath {
    pub name: String,
    pub address: IpAddr,
    pub device: Option<String>,
    pub link_speed_bytes: Option<f64>,
    pub link_used_bytes: Option<f64>,
    pub rtt_seconds: Option<f64>,
}

/// The host's inputs, as of the collector's last round.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HostView {
    pub updated_at: Option<f64>,
    pub domains: Vec<DomainView>,
    pub peers: Vec<PeerPath>,
    pub window: Option<Window>,
    /// `--forecast.bandwidth`, bytes/s.
    pub fallback_bytes: Option<f64>,
    /// `--forecast.enable`: this exporter starts dirty-rate calculations.
    pub calculations: bool,
}

impl HostView {
    /// Without the domains the sampler's last listing no longer has (a guest that died or left
    /// since the forecast's last round): nothing about them is current. Unchanged while there is
    /// no listing (the jobs collector off or not connected yet).
    pub fn listed_only(mut self, state: &crate::state::SharedState) -> HostView {
        let st = state.lock();
        if st.domains_active.is_some() {
            let listed: std::collections::HashSet<&str> =
                st.identities.iter().map(|(d, _)| d.uuid.as_str()).collect();
            self.domains
                .retain(|d| listed.contains(d.domain.uuid.as_str()));
        }
        self
    }

    pub fn peer(&self, name_or_address: &str) -> Option<&PeerPath> {
        self.peers
            .iter()
            .find(|p| p.name == name_or_address || p.address.to_string() == name_or_address)
    }
}

/// The question: over which peer's path, at which cap, how many at once.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WhatIf {
    pub peer: Option<String>,
    /// The migration bandwidth cap, bytes/s.
    pub bandwidth_bytes: Option<f64>,
    pub concurrency: u32,
}

impl Default for WhatIf {
    fn default() -> Self {
        WhatIf {
            peer: None,
            bandwidth_bytes: None,
            concurrency: 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DomainReport {
    pub domain: String,
    pub uuid: String,
    pub migrating: bool,
    pub first_pass_bytes: Option<f64>,
    pub first_pass_source: Option<FirstPassSource>,
    pub resident_bytes: Option<f64>,
    pub fill_rate_bytes: Option<f64>,
    pub dirty_rate: Option<DirtyRate>,
    pub max_downtime_seconds: f64,
    /// libvirt's caps for the domain (pre-copy's is the path's `libvirt_cap` limit).
    pub libvirt_cap: Option<LibvirtCap>,
    pub peer: Option<String>,
    pub path: PathEstimate,
    #[serde(flatten)]
    pub forecast: Forecast,
    /// The recommendation in words ("raise max downtime to 400 ms").
    pub recommendation_text: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub updated_at: Option<f64>,
    pub what_if: WhatIf,
    pub calculations: bool,
    pub window: Option<Window>,
    pub domains: Vec<DomainReport>,
    pub evacuation: Plan,
}

/// The path a domain's migration would take under `w`.
fn path_for<'a>(view: &'a HostView, d: &DomainView, w: &WhatIf) -> Option<&'a PeerPath> {
    match &w.peer {
        Some(p) => view.peer(p),
        None => d
            .last_peer
            .as_deref()
            .and_then(|p| view.peer(p))
            .or(view.peers.first()),
    }
}

/// Every domain's forecast and the evacuation plan under `w`.
pub fn evaluate(view: &HostView, w: &WhatIf) -> Report {
    let mut domains = Vec::with_capacity(view.domains.len());
    for d in &view.domains {
        let peer = path_for(view, d, w);
        let inputs = PathInputs {
            link_speed: peer.and_then(|p| p.link_speed_bytes),
            link_used: peer.and_then(|p| p.link_used_bytes),
            cap: w.bandwidth_bytes,
            libvirt_cap: d.libvirt_cap.and_then(|c| c.precopy_bytes),
            rtt_s: peer.and_then(|p| p.rtt_seconds),
            window: view.window,
            fallback: view.fallback_bytes,
        };
        let path = path::estimate(&inputs, w.concurrency);
        let max_dt = d.max_downtime_seconds.unwrap_or(DEFAULT_MAX_DOWNTIME_S);
        let forecast = match d.first_pass_bytes {
            Some(m) => model::forecast(&Inputs {
                memory_bytes: m,
                fill_rate: d.fill_rate_bytes,
                // What the guest can fill in pass 1: its zeroed resident memory (the lab's
                // writers that had covered their working set still showed the fill of the
                // last 30 s: +34 % without this bound).
                memory_limit: d.resident_bytes.or(d.memory_bytes),
                dirty_rate: d.dirty_rate.map(|r| r.bytes_per_second),
                transfer_rate: path.rate,
                max_downtime_s: max_dt,
            }),
            None => Forecast::unknown(),
        };
        domains.push(DomainReport {
            domain: d.domain.name.clone(),
            uuid: d.domain.uuid.clone(),
            migrating: d.migrating,
            first_pass_bytes: d.first_pass_bytes,
            first_pass_source: d.first_pass_source,
            resident_bytes: d.resident_bytes,
            fill_rate_bytes: d.fill_rate_bytes,
            dirty_rate: d.dirty_rate,
            max_downtime_seconds: max_dt,
            libvirt_cap: d.libvirt_cap,
            peer: peer.map(|p| p.name.clone()),
            path,
            recommendation_text: forecast.recommendation.map(|r| r.text()),
            forecast,
        });
    }
    let guests: Vec<plan::Guest> = domains
        .iter()
        .filter(|d| !d.migrating)
        .map(|d| plan::Guest {
            domain: d.domain.clone(),
            uuid: d.uuid.clone(),
            forecast: d.forecast,
        })
        .collect();
    let mut evacuation = plan::plan(&guests, w.concurrency);
    if view.updated_at.is_none() {
        // No round yet: nothing is known, not "nothing to migrate".
        evacuation.total_seconds = None;
    }
    Report {
        updated_at: view.updated_at,
        what_if: w.clone(),
        calculations: view.calculations,
        window: view.window,
        evacuation,
        domains,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::dirty::DirtySource;
    use crate::forecast::model::Verdict;
    use crate::forecast::path::{Limit, WindowSource};

    const MIB: f64 = 1048576.0;

    fn domain(name: &str, dirty_mibs: Option<f64>, migrating: bool) -> DomainView {
        DomainView {
            domain: DomainId {
                name: name.into(),
                uuid: format!("uuid-{name}"),
            },
            migrating,
            memory_bytes: Some(512.0 * MIB),
            first_pass_bytes: Some(300.0 * MIB),
            first_pass_source: Some(FirstPassSource::RamResident),
            resident_bytes: Some(300.0 * MIB),
            fill_rate_bytes: None,
            dirty_rate: dirty_mibs.map(|m| DirtyRate {
                bytes_per_second: m * MIB,
                source: DirtySource::Calculation,
                seen_at: 0.0,
                samples: 1,
            }),
            max_downtime_seconds: None,
            libvirt_cap: None,
            last_peer: None,
        }
    }

    fn view() -> HostView {
        HostView {
            updated_at: Some(1.0),
            domains: vec![
                domain("slow", Some(20.0), false),
                domain("hot", Some(150.0), false),
                domain("leaving", Some(0.0), true),
            ],
            peers: vec![
                PeerPath {
                    name: "near".into(),
                    address: "10.77.0.2".parse().expect("ip"),
                    device: Some("eth0".into()),
                    link_speed_bytes: Some(1250.0 * MIB),
                    link_used_bytes: Some(0.0),
                    rtt_seconds: Some(0.0002),
                },
                PeerPath {
                    name: "far".into(),
                    address: "10.78.0.2".parse().expect("ip"),
                    device: None,
                    link_speed_bytes: None,
                    link_used_bytes: None,
                    rtt_seconds: Some(0.08),
                },
            ],
            window: Some(Window {
                bytes: 2.64 * MIB,
                source: WindowSource::Sysctl,
            }),
            fallback_bytes: None,
            calculations: true,
        }
    }

    #[test]
    fn the_peer_and_the_cap_change_the_forecast() {
        let v = view();
        let near = evaluate(
            &v,
            &WhatIf {
                bandwidth_bytes: Some(100.0 * MIB),
                ..WhatIf::default()
            },
        );
        assert_eq!(near.domains[0].peer.as_deref(), Some("near"));
        assert_eq!(near.domains[0].path.limit, Some(Limit::Cap));
        assert_eq!(near.domains[0].forecast.verdict, Verdict::Converges);
        assert_eq!(near.domains[1].forecast.verdict, Verdict::Diverges);
        let far = evaluate(
            &v,
            &WhatIf {
                peer: Some("10.78.0.2".into()),
                bandwidth_bytes: Some(100.0 * MIB),
                concurrency: 1,
            },
        );
        assert_eq!(far.domains[0].path.limit, Some(Limit::Window));
        // 20 MiB/s over 33 MiB/s: λ 0.61 still converges, more slowly.
        assert_eq!(far.domains[0].forecast.verdict, Verdict::Converges);
        assert!(
            far.domains[0].forecast.duration_seconds > near.domains[0].forecast.duration_seconds
        );
    }

    #[test]
    fn a_filling_guest_sends_more_in_pass_1_but_no_more_than_is_resident() {
        let w = WhatIf {
            bandwidth_bytes: Some(100.0 * MIB),
            ..WhatIf::default()
        };
        let duration = |v: &HostView| evaluate(v, &w).domains[0].forecast.duration_seconds;
        let mut v = view();
        let plain = duration(&v);
        // Filling 20 MiB/s at 100 MiB/s: pass 1 sends 300/(1 − 0.1) = 333 MiB.
        v.domains[0].fill_rate_bytes = Some(20.0 * MIB);
        v.domains[0].resident_bytes = Some(400.0 * MIB);
        let filling = duration(&v).expect("time");
        let mut bigger = view();
        bigger.domains[0].first_pass_bytes = Some(300.0 / 0.9 * MIB);
        assert!((filling - duration(&bigger).expect("time")).abs() < 1e-9);
        assert!(filling > plain.expect("time"));
        // Only 310 MiB resident: at most 10 MiB more to fill.
        v.domains[0].resident_bytes = Some(310.0 * MIB);
        let bounded = duration(&v).expect("time");
        bigger.domains[0].first_pass_bytes = Some(310.0 * MIB);
        assert!((bounded - duration(&bigger).expect("time")).abs() < 1e-9);
    }

    #[test]
    fn a_domains_libvirt_cap_limits_its_forecast_unless_the_what_if_sets_one() {
        let mut v = view();
        v.domains[0].libvirt_cap = Some(LibvirtCap {
            precopy_bytes: Some(10.0 * MIB),
            postcopy_bytes: None,
        });
        let r = evaluate(&v, &WhatIf::default());
        let slow = &r.domains[0];
        assert_eq!(slow.path.limit, Some(Limit::LibvirtCap));
        assert_eq!(slow.path.rate, Some(10.0 * MIB));
        // 20 MiB/s of dirtying over a 10 MiB/s cap cannot converge.
        assert_eq!(slow.forecast.verdict, Verdict::Diverges);
        assert_eq!(slow.libvirt_cap, v.domains[0].libvirt_cap);
        // The others have no cap: the link.
        assert_eq!(r.domains[1].path.limit, Some(Limit::Link));
        let asked = evaluate(
            &v,
            &WhatIf {
                bandwidth_bytes: Some(100.0 * MIB),
                ..WhatIf::default()
            },
        );
        assert_eq!(asked.domains[0].path.limit, Some(Limit::Cap));
        assert_eq!(asked.domains[0].forecast.verdict, Verdict::Converges);
    }

    #[test]
    fn the_plan_leaves_out_migrating_guests_and_counts_the_rest() {
        let r = evaluate(
            &view(),
            &WhatIf {
                bandwidth_bytes: Some(100.0 * MIB),
                ..WhatIf::default()
            },
        );
        assert_eq!(r.evacuation.order.len(), 2);
        assert_eq!(r.evacuation.not_converging, ["hot"]);
        let sum: f64 = r.domains[..2]
            .iter()
            .filter_map(|d| d.forecast.recommended_seconds)
            .sum();
        assert_eq!(r.evacuation.total_seconds, Some(sum));
        // No rates at all: unknown, and so is the evacuation.
        let mut v = view();
        v.peers.clear();
        let r = evaluate(&v, &WhatIf::default());
        assert!(r
            .domains
            .iter()
            .all(|d| d.forecast.verdict == Verdict::Unknown));
        assert_eq!(r.evacuation.total_seconds, None);
        // ... unless --forecast.bandwidth says what to assume.
        v.fallback_bytes = Some(40.0 * MIB);
        let r = evaluate(&v, &WhatIf::default());
        assert_eq!(r.domains[0].path.limit, Some(Limit::Fallback));
        assert_eq!(r.domains[0].forecast.verdict, Verdict::Converges);
    }

    /// A guest that died or left since the forecast's last round is not shown as current
    /// (found by the chaos test: its forecast series outlived the killed QEMU).
    #[test]
    fn only_domains_still_listed_are_shown() {
        let state = crate::state::shared();
        let all: Vec<String> = view()
            .domains
            .iter()
            .map(|d| d.domain.uuid.clone())
            .collect();
        assert!(all.len() >= 2);
        // No listing yet: nothing to judge by, everything stays.
        assert_eq!(view().listed_only(&state).domains.len(), all.len());
        {
            let mut st = state.lock();
            st.domains_active = Some(1);
            st.identities = vec![(view().domains[0].domain.clone(), None)];
        }
        let shown: Vec<String> = view()
            .listed_only(&state)
            .domains
            .iter()
            .map(|d| d.domain.uuid.clone())
            .collect();
        assert_eq!(shown, vec![all[0].clone()]);
    }
}
