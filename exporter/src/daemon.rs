//! Wiring: state, registry, the collectors (through the runner) and the HTTP server.

use std::sync::mpsc::Receiver;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::info;

use crate::collector::{Feed, Name, Runner, Statuses};
use crate::http::routes::{router, AppState};
use crate::http::web_config::{require_basic_auth, LiveWebConfig};
use crate::jobs::metrics::Metrics;
use crate::jobs::sampler::{JobsCollector, Sampler, SamplerConfig};
use crate::jobs::trace::TraceWriter;
use crate::libvirt::{JobSource, SourceEvent};
use crate::netdev::NetdevCollector;
use crate::peers::discovery::{Discoverer, DiscoveryCollector};
use crate::peers::probe::{ProbeCollector, Prober};
use crate::peers::state::PeerState;
use crate::records::log::RecordLog;
use crate::settings::Settings;
use crate::state::{self, SharedState};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}: {source} (check --web.listen-address)")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Trace(#[from] crate::jobs::trace::TraceError),
    #[error(transparent)]
    Store(#[from] crate::records::log::StoreError),
    #[error(transparent)]
    WebConfig(#[from] crate::http::web_config::WebConfigError),
    #[error("cannot start a collector thread: {0}")]
    Thread(std::io::Error),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Reload requests (SIGHUP in the daemon) and the command line the settings came from.
pub struct Reloads {
    pub requests: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// argv, argv[0] included: a reload parses it again with the config file as it is now.
    pub args: Vec<std::ffi::OsString>,
}

/// Run the exporter until `shutdown` resolves; each reload request reads the config files
/// again ([`crate::reload`]).
pub async fn run(
    settings: Settings,
    source: Arc<dyn JobSource>,
    events: Receiver<SourceEvent>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    reloads: Reloads,
) -> Result<(), DaemonError> {
    let web = Web::load(&settings)?;
    let reload_status = crate::reload::ReloadStatus::new(crate::clock::unix_now());
    let shared = state::shared();
    let records = open_records(&settings, &shared)?;
    let statuses = Statuses::default();
    let (mut registry, metrics) = Metrics::register(shared.clone(), statuses.clone());
    if let Some(log) = &records {
        registry.register_collector(Box::new(crate::records::log::StoreFamilies(log.stats())));
    }
    registry.register_collector(Box::new(reload_status.clone()));
    let trace = match &settings.trace_path {
        Some(p) => Some(TraceWriter::create(p)?),
        None => None,
    };
    let listener = TcpListener::bind(settings.listen_address)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: settings.listen_address.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(DaemonError::Serve)?;
    info!(address = %local, tls = web.live.tls().is_some(), basic_auth = !web.live.users().is_empty(), telemetry_path = %settings.telemetry_path, libvirt_uri = %settings.libvirt_uri, "listening");

    let mut runner = Runner::new(statuses, registry, settings.collectors.clone());
    let sampler = Sampler::new(
        source.clone(),
        shared.clone(),
        metrics,
        trace,
        sampler_config(&settings),
    );
    let (peers, forecast) = start_collectors(
        &mut runner,
        &settings,
        sampler,
        events,
        records,
        source,
        &shared,
    )?;
    let (registry, running) = runner.into_parts();
    let reloader = crate::reload::Reloader::new(
        reloads.args,
        settings.clone(),
        web.live.clone(),
        peers,
        reload_status,
    );
    let reloading = tokio::spawn(serve_reloads(reloader, reloads.requests));
    if !settings.collectors.contains(&Name::Jobs) {
        // Nothing will sample libvirt: readiness must not wait for it.
        shared.lock().ready = true;
    }

    let app = AppState {
        registry: Arc::new(registry),
        state: shared,
        telemetry_path: settings.telemetry_path.clone(),
        libvirt_uri: settings.libvirt_uri.clone(),
        forecast,
    };
    let served = web.serve(listener, app, shutdown).await;
    reloading.abort();
    running.stop();
    served
}

/// Reload on each request, one at a time, off the async workers (it reads files).
async fn serve_reloads(
    reloader: crate::reload::Reloader,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let reloader = Arc::new(parking_lot::Mutex::new(reloader));
    while requests.recv().await.is_some() {
        info!("reload requested (SIGHUP)");
        let r = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || r.lock().reload()).await;
    }
}

/// Every collector, in one list: what each needs from the others is wired here. Returns the
/// configured peers' handle (a reload replaces them) when the probe collector runs, and what the
/// forecast collector publishes when it runs (the API reads it).
fn start_collectors(
    runner: &mut Runner,
    settings: &Settings,
    sampler: Sampler,
    events: Receiver<SourceEvent>,
    records: Option<RecordLog>,
    source: Arc<dyn JobSource>,
    shared: &SharedState,
) -> Result<Started, DaemonError> {
    let probes = &settings.probe;
    let peers = PeerState::default();
    let netdev = NetdevCollector::new(settings.netdev.clone());
    let discovery =
        probes.discovery && runner.enabled(Name::Discovery) && runner.enabled(Name::Probe);
    let running_jobs = discovery.then(|| Feed::new(runner.waker(Name::Discovery)));
    let mut sampler = sampler.with_network(
        runner.enabled(Name::Netdev).then(|| netdev.history()),
        runner.enabled(Name::Probe).then(|| peers.clone()),
    );
    if let Some(feed) = &running_jobs {
        sampler = sampler.with_running_jobs(feed.clone());
    }
    if let Some(log) = records {
        sampler = sampler.with_records(log);
    }
    let app = runner.enabled(Name::App).then(|| {
        let view = crate::app::collector::SharedHostView::default();
        let hold = crate::app::holdback::Holdback::new(settings.app.settle.as_secs_f64());
        (view, hold)
    });
    if let Some((view, hold)) = &app {
        sampler = sampler.with_app(view.clone(), hold.clone());
    }
    let forecast = runner.enabled(Name::Forecast).then(|| {
        crate::forecast::collector::ForecastCollector::new(
            source,
            settings.forecast.calc_uri.as_deref().map(|uri| {
                crate::forecast::collector::Calculations {
                    calc: Arc::new(crate::libvirt::calc::ReadWriteCalc::new(uri)),
                    interval: settings.forecast.interval,
                    max_concurrency: settings.forecast.max_concurrency,
                }
            }),
            crate::forecast::collector::Sources {
                shared: shared.clone(),
                netdev: runner.enabled(Name::Netdev).then(|| netdev.history()),
                peers: runner.enabled(Name::Probe).then(|| peers.clone()),
                configured: probes
                    .peers
                    .iter()
                    .map(|p| (p.name.clone(), p.address))
                    .collect(),
                procfs: settings.netdev.procfs.clone(),
                sysfs: settings.netdev.sysfs.clone(),
                fallback: settings.forecast.bandwidth,
                zero_pages: settings.forecast.zero_pages,
            },
        )
    });
    let prober = Prober::new(
        peers,
        runner.task_rounds(Name::Probe),
        probes.max_concurrency,
        tokio::runtime::Handle::current(),
    );
    let cancel = runner.cancel_token();

    runner.add_rounds(netdev).map_err(DaemonError::Thread)?;
    if let Some(feed) = running_jobs {
        let discoverer = Discoverer::new(
            settings.netdev.procfs.clone(),
            probes.qemu_trust.clone(),
            probes.discovery_probes.clone(),
            prober.clone(),
            cancel.child_token(),
        );
        runner
            .add_rounds(DiscoveryCollector::new(discoverer, feed))
            .map_err(DaemonError::Thread)?;
    }
    let probe = ProbeCollector::new(prober, probes.peers.clone(), cancel.child_token());
    let configured = runner.enabled(Name::Probe).then(|| probe.configured());
    runner.add_tasks(probe);
    if let Some((view, hold)) = app {
        runner.add_tasks(crate::app::collector::AppCollector::new(
            settings.app.clone(),
            view,
            hold,
            runner.task_rounds(Name::App),
            cancel.child_token(),
        ));
    }
    let forecast_view = forecast.as_ref().map(|f| f.view());
    if let Some(f) = forecast {
        runner.add_rounds(f).map_err(DaemonError::Thread)?;
    }
    // Last, as before the runner: the libvirt connection opening meanwhile has a head start.
    runner
        .add_rounds(JobsCollector::new(sampler, events))
        .map_err(DaemonError::Thread)?;
    Ok((configured, forecast_view))
}

/// What the running collectors hand back: the configured peers and the forecast's view.
type Started = (
    Option<crate::peers::probe::ConfiguredPeers>,
    Option<ForecastView>,
);

/// What the forecast collector publishes.
type ForecastView = Arc<parking_lot::Mutex<crate::forecast::report::HostView>>;

fn sampler_config(s: &Settings) -> SamplerConfig {
    SamplerConfig {
        interval: s.sample_interval,
        idle_interval: s.sample_idle_interval,
        grace: s.completion_grace,
        last_retention: s.last_retention,
    }
}

/// The record file, with its records loaded into the state.
fn open_records(
    settings: &Settings,
    shared: &SharedState,
) -> Result<Option<RecordLog>, DaemonError> {
    let Some(dir) = &settings.storage_path else {
        return Ok(None);
    };
    let (log, loaded) = RecordLog::open(dir, settings.storage_retention_size)?;
    info!(path = %log.path().display(), records = loaded.len(), "migration records loaded");
    shared.lock().records = loaded;
    Ok(Some(log))
}

/// TLS and basic auth from `--web.config.file` (plain HTTP without it), replaced on reload.
struct Web {
    live: LiveWebConfig,
    max_requests: usize,
    limits: crate::http::listener::Limits,
}

impl Web {
    fn load(settings: &Settings) -> Result<Web, DaemonError> {
        Ok(Web {
            live: LiveWebConfig::load(settings.web_config_file.as_deref())?,
            max_requests: settings.web_max_requests,
            limits: crate::http::listener::Limits {
                max_connections: crate::http::listener::connection_cap(
                    settings.web_max_connections,
                ),
            },
        })
    }

    /// Serve until `shutdown` resolves.
    async fn serve(
        self,
        listener: TcpListener,
        app: AppState,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), DaemonError> {
        // Always in place: users may appear on a reload (without users it lets all through).
        let app = router(app).layer(axum::middleware::from_fn_with_state(
            self.live.clone(),
            require_basic_auth,
        ));
        // Outermost: a request over the cap is refused before it costs a bcrypt.
        let app = app
            .layer(axum::middleware::from_fn_with_state(
                crate::http::listener::RequestSlots::new(self.max_requests),
                crate::http::listener::limit_requests,
            ))
            .layer(axum::extract::DefaultBodyLimit::max(
                crate::http::listener::MAX_HEAD_BYTES,
            ));
        crate::http::listener::serve(listener, app, self.live, self.limits, shutdown)
            .await
            .map_err(DaemonError::Serve)
    }
}
