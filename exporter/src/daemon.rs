//! Wiring: state, registry, the collectors (through the runner) and the HTTP server.

use std::sync::mpsc::Receiver;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::info;

use crate::collector::{Deps, Name, Registration, Runner, Statuses};
use crate::http::routes::{router, AppState};
use crate::http::web_config::{require_basic_auth, LiveWebConfig};
use crate::jobs::metrics::Metrics;
use crate::jobs::trace::TraceWriter;
use crate::libvirt::{JobSource, SourceEvent};
use crate::peers::probe::ConfiguredPeers;
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
    #[error(transparent)]
    Start(#[from] crate::collector::registry::StartError),
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
    let mut self_metrics: Vec<(
        &'static str,
        Box<dyn prometheus_client::collector::Collector>,
    )> = vec![("reload", Box::new(reload_status.clone()))];
    if let Some(log) = &records {
        let families = crate::records::log::StoreFamilies(log.stats());
        self_metrics.push(("storage", Box::new(families)));
    }
    let (registry, metrics) =
        Metrics::register_with(shared.clone(), statuses.clone(), self_metrics);
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
    let mut deps = Deps::new(settings.clone(), source, shared.clone());
    deps.put(metrics);
    deps.put(events);
    if let Some(t) = trace {
        deps.put(t);
    }
    if let Some(log) = records {
        deps.put(log);
    }
    crate::collector::registry::start_all(&COLLECTORS, &mut deps, &mut runner)?;
    let peers = deps.take::<ConfiguredPeers>();
    let forecast = deps.get::<ForecastView>();
    drop(deps);
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

/// Every collector, in start order: one that reads what another publishes comes after it; jobs
/// last, so the libvirt connection opening meanwhile has a head start.
const COLLECTORS: [Registration; 6] = [
    crate::netdev::REGISTRATION,
    crate::peers::probe::REGISTRATION,
    crate::peers::discovery::REGISTRATION,
    crate::app::collector::REGISTRATION,
    crate::forecast::collector::REGISTRATION,
    crate::jobs::sampler::REGISTRATION,
];

/// What the forecast collector publishes.
type ForecastView = Arc<parking_lot::Mutex<crate::forecast::report::HostView>>;

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
