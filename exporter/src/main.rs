//! vm-migration-exporter: parse flags, set up logging, run until SIGINT/SIGTERM; SIGHUP
//! reloads the config files.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::mpsc;

use vm_migration_exporter::libvirt::LibvirtSource;
use vm_migration_exporter::settings::{self, CliError};
use vm_migration_exporter::{daemon, logging};

/// Longest a shutdown may take after SIGTERM/SIGINT (the HTTP drain takes up to 5 s of it);
/// systemd's default stop timeout is 90 s; an exporter should be gone within 10 s.
const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(8);

/// Exit code for bad flags or configuration, as clap and the Prometheus exporters use.
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let settings = match settings::parse(args.clone()) {
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
    // Go raises it for every exporter; systemd's soft 1024 is too few for a busy listener.
    match vm_migration_exporter::http::listener::raise_nofile_limit() {
        Ok((old, new)) if new > old => tracing::info!(old, new, "raised the open-files limit"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    match run(settings, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            // A storage directory we cannot use is bad configuration, like a bad flag.
            match e.downcast_ref::<daemon::DaemonError>() {
                Some(
                    daemon::DaemonError::Store(_)
                    | daemon::DaemonError::Trace(_)
                    | daemon::DaemonError::WebConfig(_),
                ) => ExitCode::from(EXIT_BAD_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(settings: settings::Settings, args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // First: SIGHUP's default action ends the process.
    let requests = runtime.block_on(async { reload_signal() })?;
    let (tx, rx) = mpsc::channel();
    let source = LibvirtSource::start(&settings.libvirt_uri, settings.reconnect_max_backoff, tx);
    let reloads = daemon::Reloads { requests, args };
    let result = runtime.block_on(daemon::run(
        settings,
        source.clone(),
        rx,
        shutdown_signal(),
        reloads,
    ));
    source.shutdown();
    Ok(result?)
}

/// SIGHUP, as reload requests (`systemctl reload`, `kill -HUP`).
fn reload_signal() -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
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
    // A thread blocked in libvirt (a hung libvirtd) must not keep the process alive: records
    // are fsynced as they are appended, so nothing is lost by leaving it behind.
    let _ = std::thread::Builder::new()
        .name("shutdown-deadline".into())
        .spawn(|| {
            std::thread::sleep(SHUTDOWN_DEADLINE);
            tracing::error!(
                deadline = ?SHUTDOWN_DEADLINE,
                "shutdown did not finish in time (a thread is blocked, likely in libvirt); exiting"
            );
            std::process::exit(1);
        });
}
