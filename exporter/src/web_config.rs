//! `--web.config.file`: TLS and basic authentication in the Prometheus exporter-toolkit format,
//! so the same file works for node_exporter and this exporter.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/vm-migration-exporter/tls.crt
//!   key_file: /etc/vm-migration-exporter/tls.key
//!   min_version: TLS12          # or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...      # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//! Keys of exporter-toolkit this exporter does not implement (client certificates, cipher
//! suites, HTTP headers) are rejected, not ignored: a security setting must never be silently
//! dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    pub tls_server_config: Option<TlsServerConfig>,
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub min_version: Option<TlsVersion>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub enum TlsVersion {
    TLS12,
    TLS13,
}

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("web config file {path}: {message} (check --web.config.file)")]
    Invalid { path: String, message: String },
}

impl WebConfig {
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let invalid = |message: String| WebConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
        let cfg: WebConfig = if text.trim().is_empty() {
            WebConfig::default()
        } else {
            serde_saphyr::from_str(&text)
                .map_err(|e| invalid(crate::settings::file::first_line(&e.to_string())))?
        };
        for (user, hash) in &cfg.basic_auth_users {
            if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")) {
                return Err(invalid(format!(
                    "basic_auth_users.{user} is not a bcrypt hash ($2y$…)"
                )));
            }
        }
        if let Some(tls) = &cfg.tls_server_config {
            for (key, f) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !f.is_file() {
                    return Err(invalid(format!(
                        "tls_server_config.{key} {} is not a readable file",
                        f.display()
                    )));
                }
            }
        }
        Ok(cfg)
    }

    /// The rustls server configuration, when TLS is on.
    pub fn rustls(&self, path: &Path) -> Result<Option<Arc<rustls::ServerConfig>>, WebConfigError> {
        let Some(tls) = &self.tls_server_config else {
            return Ok(None);
        };
        let invalid = |message: String| WebConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| invalid(format!("cannot read {}: {e}", p.display())))
        };
        let certs: Vec<_> = rustls_pemfile_certs(&read(&tls.cert_file)?)
            .map_err(|e| invalid(format!("tls_server_config.cert_file: {e}")))?;
        let key = rustls_pemfile_key(&read(&tls.key_file)?)
            .map_err(|e| invalid(format!("tls_server_config.key_file: {e}")))?;
        let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
            Some(TlsVersion::TLS13) => &[&rustls::version::TLS13],
            _ => &[&rustls::version::TLS12, &rustls::version::TLS13],
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| invalid(format!("certificate and key do not fit together: {e}")))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Arc::new(cfg)))
    }
}

fn rustls_pemfile_certs(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates: {e:?}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

fn rustls_pemfile_key(pem: &[u8]) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("no PEM private key: {e:?}"))
}

/// Basic-auth users: name → bcrypt hash.
#[derive(Clone, Debug)]
pub struct Users(pub Arc<BTreeMap<String, String>>);

/// Middleware: every route needs a valid user when users are configured.
pub async fn require_basic_auth(State(users): State<Users>, req: Request, next: Next) -> Response {
    let creds = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let ok = match creds {
        Some((user, pass)) => match users.0.get(&user).cloned() {
            // bcrypt is deliberately slow: keep it off the async worker threads.
            Some(hash) => {
                tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
                    .await
                    .unwrap_or(false)
            }
            None => false,
        },
        None => false,
    };
    if ok {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"vm-migration-exporter\"",
            )],
            "Unauthorized\n",
        )
            .into_response()
    }
}
