//! vm-migration-exporter: parse flags, set up logging, run until SIGINT/SIGTERM.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::mpsc;

use vm_migration_exporter::libvirt::LibvirtSource;
use vm_migration_exporter::settings::{self, CliError};
use vm_migration_exporter::{app, logging};

/// Exit code for bad flags or configuration, as clap and the Prometheus exporters use.
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let settings = match settings::parse(std::env::args_os()) {
        Ok(s) => s,
        Err(CliError::Display(e)) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vm-migration-exporter: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    logging::init(settings.log_level, settings.log_format);
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            // A storage directory we cannot use is bad configuration, like a bad flag.
            match e.downcast_ref::<app::AppError>() {
                Some(
                    app::AppError::Store(_) | app::AppError::Trace(_) | app::AppError::WebConfig(_),
                ) => ExitCode::from(EXIT_BAD_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(settings: settings::Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::channel();
    let source = LibvirtSource::start(&settings.libvirt_uri, settings.reconnect_max_backoff, tx);
    let result = runtime.block_on(app::run(settings, source.clone(), rx, shutdown_signal()));
    source.shutdown();
    Ok(result?)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
