//! Wiring: state, metrics, the sampler thread and the HTTP server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::libvirt::{JobSource, SourceEvent};
use crate::metrics::Metrics;
use crate::migration::sampler::{Sampler, SamplerConfig};
use crate::net::peers::Origin;
use crate::net::probe::Prober;
use crate::net::probing::{run_discovery, spawn_peer, Discoverer};
use crate::server::{router, AppState};
use crate::settings::Settings;
use crate::state;
use crate::store::RecordLog;
use crate::trace::TraceWriter;
use crate::web_config::{require_basic_auth, Users, WebConfig};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source} (check --web.listen-address)")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    WebConfig(#[from] crate::web_config::WebConfigError),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Run the exporter until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    source: Arc<dyn JobSource>,
    events: Receiver<SourceEvent>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let web = match &settings.web_config_file {
        Some(p) => {
            let cfg = WebConfig::load(p)?;
            Some((cfg.rustls(p)?, cfg.basic_auth_users))
        }
        None => None,
    };
    let shared = state::shared();
    let records = match &settings.storage_path {
        Some(dir) => {
            let (log, loaded) = RecordLog::open(dir, settings.storage_retention_size)?;
            info!(path = %log.path().display(), records = loaded.len(), "migration records loaded");
            shared.lock().records = loaded;
            Some(log)
        }
        None => None,
    };
    let (mut registry, metrics) = Metrics::register(shared.clone());
    let peers = crate::net::peers::PeerState::default();
    registry.register_collector(Box::new(crate::net::peer_metrics::PeerCollector::new(
        peers.clone(),
    )));
    let trace = match &settings.trace_path {
        Some(p) => Some(TraceWriter::create(p)?),
        None => None,
    };
    let listener = TcpListener::bind(settings.listen_address)
        .await
        .map_err(|source| AppError::Listen {
            addr: settings.listen_address.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(AppError::Serve)?;
    let (tls, users) = web.unwrap_or_default();
    info!(address = %local, tls = tls.is_some(), basic_auth = !users.is_empty(), telemetry_path = %settings.telemetry_path, libvirt_uri = %settings.libvirt_uri, "listening");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = Sampler::new(
        source,
        shared.clone(),
        metrics,
        trace,
        SamplerConfig {
            interval: settings.sample_interval,
            idle_interval: settings.sample_idle_interval,
            grace: settings.completion_grace,
            last_retention: settings.last_retention,
        },
    );
    let history = Arc::new(parking_lot::Mutex::new(
        crate::net::netdev::TxHistory::default(),
    ));
    let mut sampler = sampler.with_network(history.clone(), Some(peers.clone()));
    // Probes are tokio tasks on this runtime; discovery has a thread of its own.
    let probes = &settings.probe;
    let prober = Prober::new(peers, shared.clone(), probes.max_concurrency);
    let rt = tokio::runtime::Handle::current();
    let cancel = CancellationToken::new();
    for peer in &probes.peers {
        spawn_peer(&prober, &rt, peer, Origin::Config, &cancel);
    }
    if !probes.peers.is_empty() {
        info!(peers = probes.peers.len(), "probing configured peers");
    }
    let discovery_thread = if probes.discovery {
        let d = Discoverer::new(
            settings.netdev.procfs.clone(),
            probes.discovery_probes.clone(),
            prober.clone(),
            rt.clone(),
            cancel.child_token(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        sampler = sampler.with_jobs_changed(tx);
        let (state_d, stop_d) = (shared.clone(), stop.clone());
        Some(
            std::thread::Builder::new()
                .name("discovery".into())
                .spawn(move || {
                    run_discovery(d, state_d, rx, std::time::Duration::from_secs(1), stop_d)
                })
                .map_err(AppError::Serve)?,
        )
    } else {
        None
    };
    let sampler = match records {
        Some(log) => sampler.with_records(log),
        None => sampler,
    };
    let (netdev, state_net, stop_net) = (settings.netdev.clone(), shared.clone(), stop.clone());
    let netdev_thread = std::thread::Builder::new()
        .name("netdev".into())
        .spawn(move || {
            crate::net::run_netdev(
                netdev,
                std::time::Duration::from_secs(1),
                state_net,
                history,
                stop_net,
            )
        })
        .map_err(AppError::Serve)?;
    let stop_sampler = stop.clone();
    let sampler_thread = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || sampler.run(events, stop_sampler))
        .map_err(AppError::Serve)?;

    let app = router(AppState {
        registry: Arc::new(registry),
        state: shared,
        telemetry_path: settings.telemetry_path.clone(),
        libvirt_uri: settings.libvirt_uri.clone(),
    });
    let app = if users.is_empty() {
        app
    } else {
        app.layer(axum::middleware::from_fn_with_state(
            Users(Arc::new(users)),
            require_basic_auth,
        ))
    };
    let served = match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(AppError::Serve),
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
            });
            let std_listener = listener.into_std().map_err(AppError::Serve)?;
            axum_server::from_tcp_rustls(
                std_listener,
                axum_server::tls_rustls::RustlsConfig::from_config(tls),
            )
            .handle(handle)
            .serve(app.into_make_service())
            .await
            .map_err(AppError::Serve)
        }
    };
    stop.store(true, Ordering::Relaxed);
    cancel.cancel();
    // The sampler wakes at least once per sample interval and sees the flag.
    let _ = sampler_thread.join();
    let _ = netdev_thread.join();
    if let Some(t) = discovery_thread {
        let _ = t.join();
    }
    served
}
