//! HTTP routes: `/` landing page, the telemetry path, `/-/healthy`, `/-/ready`.
//!
//! Handlers only read the shared state the sampler publishes; none calls libvirt.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

use crate::exposition;
use crate::migration::tracker::Phase;
use crate::state::SharedState;

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub state: SharedState,
    pub telemetry_path: String,
    pub libvirt_uri: String,
}

pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/", get(landing))
        .route(&app.telemetry_path.clone(), get(metrics))
        .route("/-/healthy", get(|| async { "OK\n" }))
        .route("/-/ready", get(ready))
        .with_state(app)
}

async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match exposition::encode(&app.registry, exposition::wants_openmetrics(accept)) {
        Ok((body, content_type)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn ready(State(app): State<AppState>) -> Response {
    if app.state.lock().ready {
        (StatusCode::OK, "OK\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: first libvirt sample pending\n",
        )
            .into_response()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn mib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
        .unwrap_or_else(|| "–".into())
}

fn mib_s(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1} MiB/s", b as f64 / 1048576.0))
        .unwrap_or_else(|| "–".into())
}

fn seconds(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.3} s")).unwrap_or_else(|| "–".into())
}

async fn landing(State(app): State<AppState>) -> Html<String> {
    let snap = app.state.lock();
    let mut h = String::with_capacity(8192);
    let _ =
        write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>vm-migration-exporter</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}th{{background:#eee}}\
td:first-child{{text-align:left}}</style></head><body>\
<h1>vm-migration-exporter</h1><p>Version {ver}. libvirt <code>{uri}</code>: <b>{up}</b>.</p>\
<ul><li><a href=\"{path}\">{path}</a>: metrics</li><li><a href=\"/-/healthy\">/-/healthy</a></li>\
<li><a href=\"/-/ready\">/-/ready</a></li></ul>",
        ver = env!("CARGO_PKG_VERSION"),
        uri = esc(&app.libvirt_uri),
        up = if snap.libvirt_up { "connected" } else { "not connected" },
        path = esc(&app.telemetry_path),
    );
    let _ = write!(h, "<h2>Active migrations ({})</h2>", snap.active.len());
    if !snap.active.is_empty() {
        h.push_str(
            "<table><tr><th>domain</th><th>phase</th><th>elapsed</th><th>iteration</th>\
<th>data remaining</th><th>dirty rate</th><th>transfer rate</th><th>expected downtime</th>\
<th>max downtime</th></tr>",
        );
        for j in &snap.active {
            let s = &j.stats;
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&j.domain.name),
                if j.phase == Phase::Postcopy { "post-copy" } else { "pre-copy" },
                seconds(s.time_elapsed_ms.map(|m| m as f64 / 1000.0)),
                s.memory_iteration.map(|i| i.to_string()).unwrap_or_else(|| "–".into()),
                mib(s.data_remaining),
                mib_s(s.dirty_rate_bytes()),
                mib_s(s.memory_bps),
                seconds(s.downtime_ms.map(|m| m as f64 / 1000.0)),
                seconds(j.max_downtime_ms.map(|m| m as f64 / 1000.0)),
            );
        }
        h.push_str("</table>");
    }
    let _ = write!(h, "<h2>Recently finished ({})</h2>", snap.recent.len());
    if !snap.recent.is_empty() {
        h.push_str(
            "<table><tr><th>domain</th><th>direction</th><th>outcome</th><th>mode</th>\
<th>duration</th><th>downtime</th><th>data sent</th><th>iterations</th></tr>",
        );
        for f in &snap.recent {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.domain.name),
                f.direction.as_str(),
                f.outcome.as_str(),
                f.mode.as_str(),
                seconds(f.duration_seconds),
                seconds(f.downtime_seconds),
                mib(f.data_processed_bytes),
                f.iterations.map(|i| i.to_string()).unwrap_or_else(|| "–".into()),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>");
    Html(h)
}
