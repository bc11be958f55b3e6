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

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

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
        let cfg = Self::parse(&text).map_err(invalid)?;
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

    /// Parse and check the text of a web config file (files named in it are not read); the
    /// error is one line.
    pub fn parse(text: &str) -> Result<WebConfig, String> {
        let cfg: WebConfig = if text.trim().is_empty() {
            WebConfig::default()
        } else {
            serde_saphyr::from_str(text)
                .map_err(|e| crate::settings::file::first_line(&e.to_string()))?
        };
        for (user, hash) in &cfg.basic_auth_users {
            if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")) {
                return Err(format!(
                    "basic_auth_users.{user} is not a bcrypt hash ($2y$…)"
                ));
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

/// Cached bcrypt results per kind (right and wrong passwords apart, so a flood of wrong ones
/// cannot push a good scraper's entry out): exporter-toolkit keeps 100.
const CACHE_MAX: usize = 100;

type CacheKey = [u8; 32];

#[derive(Default)]
struct Cache {
    good: HashSet<CacheKey>,
    bad: HashSet<CacheKey>,
}

impl Cache {
    fn get(&self, k: &CacheKey) -> Option<bool> {
        if self.good.contains(k) {
            Some(true)
        } else if self.bad.contains(k) {
            Some(false)
        } else {
            None
        }
    }

    fn insert(&mut self, k: CacheKey, ok: bool) {
        let set = if ok { &mut self.good } else { &mut self.bad };
        if set.len() >= CACHE_MAX {
            // Any entry: the set's order is randomised per process.
            if let Some(old) = set.iter().next().copied() {
                set.remove(&old);
            }
        }
        set.insert(k);
    }
}

struct Auth {
    users: BTreeMap<String, String>,
    /// Checked for unknown users so they take as long as known ones (no user discovery by
    /// timing); made on first use at the cost of the configured hashes.
    fake_hash: OnceLock<String>,
    /// Held across every bcrypt: a flood of new passwords costs at most one core.
    bcrypt: Arc<tokio::sync::Mutex<()>>,
    cache: parking_lot::Mutex<Cache>,
}

/// Basic-auth users (name → bcrypt hash) with exporter-toolkit's defences: results cached per
/// (user, hash, password), one bcrypt at a time, a fake hash for unknown users.
#[derive(Clone)]
pub struct Users(Arc<Auth>);

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("users", &self.0.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The cost of a `$2y$NN$…` hash (bcrypt's default 12 when it cannot be read).
fn bcrypt_cost(hash: &str) -> u32 {
    hash.get(4..6).and_then(|c| c.parse().ok()).unwrap_or(12)
}

/// SHA-256 over the length-prefixed parts, so the cache holds no password.
fn cache_key(user: &str, hash: &str, pass: &str) -> CacheKey {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, hash, pass] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// `Authorization: Basic <base64(user:password)>`, the scheme matched case-insensitively
/// (RFC 7617; Go's `ParseBasicAuth` does the same).
fn credentials(value: &header::HeaderValue) -> Option<(String, String)> {
    let v = value.to_str().ok()?.trim_start();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

impl Users {
    pub fn new(users: BTreeMap<String, String>) -> Users {
        Users(Arc::new(Auth {
            users,
            fake_hash: OnceLock::new(),
            bcrypt: Arc::new(tokio::sync::Mutex::new(())),
            cache: parking_lot::Mutex::new(Cache::default()),
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.0.users.is_empty()
    }

    /// Whether the `Authorization` header names a configured user with the right password.
    pub async fn check(&self, value: Option<&header::HeaderValue>) -> bool {
        let Some((user, pass)) = value.and_then(credentials) else {
            return false;
        };
        let hash = self.0.users.get(&user).cloned();
        let key = cache_key(&user, hash.as_deref().unwrap_or(""), &pass);
        if let Some(ok) = self.0.cache.lock().get(&key) {
            return ok;
        }
        // Owned guard moved into the blocking task: a client that hangs up while waiting
        // cannot let a second bcrypt start beside the first.
        let guard = self.0.bcrypt.clone().lock_owned().await;
        let auth = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = guard;
            if let Some(ok) = auth.cache.lock().get(&key) {
                return ok; // worked out while this one waited
            }
            let ok = match &hash {
                Some(h) => bcrypt::verify(&pass, h).unwrap_or(false),
                None => {
                    let fake = auth.fake_hash.get_or_init(|| {
                        let cost = auth.users.values().map(|h| bcrypt_cost(h)).max();
                        bcrypt::hash("not a password of anyone", cost.unwrap_or(10))
                            .unwrap_or_default()
                    });
                    let _ = bcrypt::verify(&pass, fake);
                    false
                }
            };
            auth.cache.lock().insert(key, ok);
            ok
        })
        .await
        .unwrap_or(false)
    }
}

/// The TLS configuration and users in force: set at start, replaced whole on a reload (SIGHUP).
/// A connection takes the TLS configuration current when it is accepted, a request the users
/// current when it arrives; nothing already in flight changes.
#[derive(Clone, Debug)]
pub struct LiveWebConfig(Arc<parking_lot::RwLock<Current>>);

/// A web config file, read and checked.
#[derive(Debug, Default)]
pub struct WebState {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub users: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Current {
    tls: Option<Arc<rustls::ServerConfig>>,
    users: Users,
}

impl Default for LiveWebConfig {
    fn default() -> Self {
        Self::new(None, BTreeMap::new())
    }
}

impl LiveWebConfig {
    pub fn new(tls: Option<Arc<rustls::ServerConfig>>, users: BTreeMap<String, String>) -> Self {
        LiveWebConfig(Arc::new(parking_lot::RwLock::new(Current {
            tls,
            users: Users::new(users),
        })))
    }

    /// Read `path` (and the certificate and key it names) into a TLS configuration and users.
    pub fn load(path: Option<&Path>) -> Result<Self, WebConfigError> {
        let s = Self::read(path)?;
        Ok(Self::new(s.tls, s.users))
    }

    /// Read and check `path` (and the certificate and key it names) without changing what is
    /// in force; [`Self::put`] applies it.
    pub fn read(path: Option<&Path>) -> Result<WebState, WebConfigError> {
        match path {
            None => Ok(WebState::default()),
            Some(p) => {
                let cfg = WebConfig::load(p)?;
                Ok(WebState {
                    tls: cfg.rustls(p)?,
                    users: cfg.basic_auth_users,
                })
            }
        }
    }

    pub fn put(&self, s: WebState) {
        self.set(s.tls, s.users);
    }

    pub fn set(&self, tls: Option<Arc<rustls::ServerConfig>>, users: BTreeMap<String, String>) {
        *self.0.write() = Current {
            tls,
            users: Users::new(users),
        };
    }

    /// The TLS configuration for a new connection; `None`: plain HTTP.
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.0.read().tls.clone()
    }

    pub fn users(&self) -> Users {
        self.0.read().users.clone()
    }
}

/// Middleware: every route needs a valid user when users are configured (at the time the
/// request arrives: a reload applies to the next request).
pub async fn require_basic_auth(
    State(live): State<LiveWebConfig>,
    req: Request,
    next: Next,
) -> Response {
    let users = live.users();
    if users.is_empty() || users.check(req.headers().get(header::AUTHORIZATION)).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> header::HeaderValue {
        header::HeaderValue::from_str(s).expect("header value")
    }

    fn basic(scheme: &str, user: &str, pass: &str) -> header::HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        value(&format!("{scheme} {b}"))
    }

    #[test]
    fn scheme_is_case_insensitive() {
        for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
            assert_eq!(
                credentials(&basic(scheme, "u", "p:w")),
                Some(("u".into(), "p:w".into())),
                "{scheme}"
            );
        }
        assert_eq!(credentials(&basic("Bearer", "u", "p")), None);
        assert_eq!(credentials(&value("Basic")), None);
        assert_eq!(credentials(&value("Basic !!!")), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_are_cached_and_unknown_users_pay_a_bcrypt() {
        let hash = bcrypt::hash("right", 4).expect("hash");
        let users = Users::new(BTreeMap::from([("prom".to_string(), hash)]));
        assert!(users.check(Some(&basic("basic", "prom", "right"))).await);
        assert!(!users.check(Some(&basic("Basic", "prom", "wrong"))).await);
        assert!(!users.check(Some(&basic("Basic", "nobody", "right"))).await);
        let sizes = {
            let c = users.0.cache.lock();
            (c.good.len(), c.bad.len())
        };
        assert_eq!(sizes, (1, 2));
        assert!(
            users.0.fake_hash.get().is_some_and(|h| h.starts_with("$2")),
            "the unknown user was checked against a real bcrypt hash"
        );
        // Answered from the cache: a poisoned hash would fail a fresh bcrypt.
        assert!(users.check(Some(&basic("basic", "prom", "right"))).await);
    }

    #[test]
    fn cache_is_bounded_and_wrong_passwords_do_not_evict_right_ones() {
        let mut c = Cache::default();
        c.insert([1; 32], true);
        for i in 0..1000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.insert(k, false);
        }
        assert_eq!(c.bad.len(), CACHE_MAX);
        assert_eq!(c.get(&[1; 32]), Some(true));
    }
}
