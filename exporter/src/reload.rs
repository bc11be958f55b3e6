//! SIGHUP: read `--config.file` and `--web.config.file` again and put them in force without a
//! restart (certificates rotate, users change, configured peers come and go), as Prometheus
//! does. Both files are read and checked first; if either is bad, neither changes, one line
//! names the file and the problem, and `vm_migration_exporter_config_last_reload_successful`
//! turns 0 until a reload succeeds.
//!
//! What a reload applies: the web config file (TLS certificate, key and minimum version;
//! basic-auth users) from the next connection or request on, and the config file's
//! `probe.peers` (with `probe.interval`/`probe.timeout`, their defaults). Other keys of the
//! config file that changed take effect at the next restart; the reload says which.

use std::ffi::OsString;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tracing::{error, info, warn};

use crate::clock::unix_now;
use crate::exposition::GaugeFamily;
use crate::http::web_config::{LiveWebConfig, WebConfigError};
use crate::peers::probe::ConfiguredPeers;
use crate::settings::{self, CliError, Settings};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    WebConfig(#[from] WebConfigError),
}

/// The outcome of the last reload (the start counts as one), for `/metrics`.
#[derive(Clone, Debug)]
pub struct ReloadStatus(Arc<Mutex<(bool, f64)>>);

impl ReloadStatus {
    /// Successful as of `at` (the start).
    pub fn new(at: f64) -> Self {
        ReloadStatus(Arc::new(Mutex::new((true, at))))
    }

    fn set(&self, ok: bool, at: f64) {
        let mut g = self.0.lock();
        g.0 = ok;
        if ok {
            g.1 = at;
        }
    }

    /// (last reload successful, Unix time of the last successful one).
    pub fn get(&self) -> (bool, f64) {
        *self.0.lock()
    }
}

impl Collector for ReloadStatus {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (ok, at) = self.get();
        let mut success = GaugeFamily::new(
            "vm_migration_exporter_config_last_reload_successful",
            "Whether the last configuration reload (SIGHUP) succeeded (1) or failed and the previous configuration stays in force (0).",
        );
        success.push(vec![], Some(if ok { 1.0 } else { 0.0 }));
        let mut time = GaugeFamily::new(
            "vm_migration_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (the start, or a SIGHUP reload).",
        );
        time.push(vec![], Some(at));
        success.encode(&mut encoder)?;
        time.encode(&mut encoder)
    }
}

/// Reads the files again on request and applies what can change while running.
pub struct Reloader {
    args: Vec<OsString>,
    /// The settings the process started with: what runs of those a reload cannot change.
    started: Settings,
    web: LiveWebConfig,
    peers: Option<ConfiguredPeers>,
    status: ReloadStatus,
}

impl Reloader {
    /// `args`: the command line the settings came from (argv[0] included); `peers`: the probe
    /// collector's configured peers, when it runs.
    pub fn new(
        args: Vec<OsString>,
        started: Settings,
        web: LiveWebConfig,
        peers: Option<ConfiguredPeers>,
        status: ReloadStatus,
    ) -> Self {
        Reloader {
            args,
            started,
            web,
            peers,
            status,
        }
    }

    /// One reload: sets the status metrics, then logs its outcome in one line (a reader who
    /// sees the line finds the metrics already saying so).
    pub fn reload(&mut self) -> Result<(), ReloadError> {
        let result = self.try_reload();
        self.status.set(result.is_ok(), unix_now());
        match &result {
            Ok(done) => info!(
                config_file = %path_or_none(&done.config_file),
                web_config_file = %path_or_none(&done.web_config_file),
                tls = done.tls,
                basic_auth = done.basic_auth,
                peers_started = done.peers_started,
                peers_stopped = done.peers_stopped,
                "configuration reloaded"
            ),
            Err(e) => {
                error!(error = %e, "reload failed; the previous configuration stays in force")
            }
        }
        result.map(|_| ())
    }

    fn try_reload(&mut self) -> Result<Reloaded, ReloadError> {
        // Flags and environment are the process's own; the config file is read again.
        let new = settings::parse(self.args.clone()).map_err(|e| match e {
            CliError::Display(_) => ReloadError::Settings("unexpected --help".into()),
            other => ReloadError::Settings(other.to_string()),
        })?;
        // Read and check the web config before anything changes.
        let web = LiveWebConfig::read(new.web_config_file.as_deref())?;
        let (tls, basic_auth) = (web.tls.is_some(), !web.users.is_empty());
        self.web.put(web);
        let (peers_started, peers_stopped) = match &self.peers {
            Some(p) => p.apply(&new.probe.peers),
            None => (0, 0),
        };
        let restart = needs_restart(&self.started, &new);
        if !restart.is_empty() {
            warn!(
                keys = %restart.join(", "),
                "reload: these settings changed and take effect at the next restart"
            );
        }
        Ok(Reloaded {
            config_file: new.config_file,
            web_config_file: new.web_config_file,
            tls,
            basic_auth,
            peers_started,
            peers_stopped,
        })
    }
}

/// What a successful reload put in force, for its log line.
struct Reloaded {
    config_file: Option<std::path::PathBuf>,
    web_config_file: Option<std::path::PathBuf>,
    tls: bool,
    basic_auth: bool,
    peers_started: usize,
    peers_stopped: usize,
}

fn path_or_none(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "none".into())
}

/// Settings a reload does not apply that differ from those the process runs with, by the
/// config file key they come from.
fn needs_restart(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            out.push(key);
        }
    };
    check(old.libvirt_uri != new.libvirt_uri, "libvirt.uri");
    check(
        old.reconnect_max_backoff != new.reconnect_max_backoff,
        "libvirt.reconnect_max_backoff",
    );
    check(
        old.sample_interval != new.sample_interval,
        "sample.interval",
    );
    check(
        old.sample_idle_interval != new.sample_idle_interval,
        "sample.idle_interval",
    );
    check(
        old.completion_grace != new.completion_grace,
        "sample.completion_grace",
    );
    check(
        old.probe.max_concurrency != new.probe.max_concurrency,
        "probe.max_concurrency",
    );
    check(
        old.probe.discovery != new.probe.discovery,
        "probe.discovery",
    );
    check(
        old.probe.discovery_probes != new.probe.discovery_probes,
        "probe.discovery_tcp_port, probe.interval, probe.timeout (discovered peers)",
    );
    check(old.app != new.app, "app");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each log line written while `f` runs, with the status metric's "successful" at the
    /// moment the line was written.
    fn logged_with_status(status: &ReloadStatus, f: impl FnOnce()) -> Vec<(bool, String)> {
        #[derive(Clone)]
        struct Writer(ReloadStatus, Arc<Mutex<Vec<(bool, String)>>>);
        impl std::io::Write for Writer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let seen = self.0.get().0;
                self.1
                    .lock()
                    .push((seen, String::from_utf8_lossy(b).into_owned()));
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let w = Writer(status.clone(), Arc::default());
        let lines = w.1.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        let out = lines.lock().clone();
        out
    }

    /// Whoever reads a reload's outcome in the log (an operator, `systemctl reload`'s caller,
    /// the package check) then finds `..._last_reload_successful` saying the same.
    #[test]
    fn the_status_metric_is_set_before_the_outcome_is_logged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.yml");
        std::fs::write(&config, "probe:\n  peers: []\n").expect("write");
        let args: Vec<OsString> = vec![
            "vm-migration-exporter".into(),
            "--config.file".into(),
            config.clone().into(),
        ];
        let started = settings::parse(args.clone()).expect("settings");
        let status = ReloadStatus::new(0.0);
        let mut r = Reloader::new(
            args,
            started,
            LiveWebConfig::new(None, Default::default()),
            None,
            status.clone(),
        );

        std::fs::write(&config, "probe: [unclosed\n").expect("write");
        let lines = logged_with_status(&status, || assert!(r.reload().is_err()));
        let failed: Vec<_> = lines
            .iter()
            .filter(|(_, l)| l.contains("reload failed"))
            .collect();
        assert_eq!(failed.len(), 1, "{lines:#?}");
        assert!(
            !failed[0].0,
            "logged while the metric still said 1: {lines:#?}"
        );

        std::fs::write(&config, "probe:\n  peers: []\n").expect("write");
        let lines = logged_with_status(&status, || r.reload().expect("reload"));
        let reloaded: Vec<_> = lines
            .iter()
            .filter(|(_, l)| l.contains("configuration reloaded"))
            .collect();
        assert_eq!(reloaded.len(), 1, "{lines:#?}");
        assert!(
            reloaded[0].0,
            "logged while the metric still said 0: {lines:#?}"
        );
        assert!(status.get().0);
    }
}
