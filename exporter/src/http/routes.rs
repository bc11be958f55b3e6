//! HTTP routes: `/` landing page, the telemetry path, `/-/healthy`, `/-/ready`.
//!
//! Handlers only read the shared state the sampler publishes; none calls libvirt.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::exposition;
use crate::jobs::tracker::Phase;
use crate::state::SharedState;

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub state: SharedState,
    pub telemetry_path: String,
    pub libvirt_uri: String,
    /// The forecast collector's inputs; `None` when it is off.
    pub forecast: Option<Arc<parking_lot::Mutex<crate::forecast::report::HostView>>>,
}

/// `/api/v1/migrations` calls served at once: each may copy and encode up to [`MAX_LIMIT`]
/// records (megabytes), so a burst of them must not take every core or much memory.
pub const API_CONCURRENCY: usize = 4;

pub fn router(app: AppState) -> Router {
    router_with(app, API_CONCURRENCY)
}

fn router_with(app: AppState, api_concurrency: usize) -> Router {
    let api = Arc::new(Semaphore::new(api_concurrency));
    let forecast = app.forecast.clone();
    Router::new()
        .route("/", get(landing))
        .route(&app.telemetry_path.clone(), get(metrics))
        .route("/-/healthy", get(|| async { "OK\n" }))
        .route("/-/ready", get(ready))
        .route(
            "/api/v1/migrations",
            get(
                move |state: State<AppState>,
                      query: Result<
                    Query<MigrationsQuery>,
                    axum::extract::rejection::QueryRejection,
                >| migrations(state, query, api.clone()),
            ),
        )
        .route(
            "/api/v1/forecast",
            get(move |state: State<AppState>, query| {
                crate::forecast::api::forecast(forecast.clone(), state.0.state.clone(), query)
            }),
        )
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
    let (ready, stuck) = {
        let st = app.state.lock();
        (st.ready, st.stuck(std::time::Instant::now()))
    };
    let unavailable = |why: &'static str| (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    if !ready {
        unavailable("not ready: first libvirt sample pending\n")
    } else if stuck {
        unavailable("not ready: the sampler has not completed a round for several intervals (stuck in libvirt?)\n")
    } else {
        (StatusCode::OK, "OK\n").into_response()
    }
}

/// Most records one API call returns.
pub const MAX_LIMIT: usize = 10_000;
const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationsQuery {
    limit: Option<String>,
    domain: Option<String>,
}

fn bad_request(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

/// `GET /api/v1/migrations?limit=N&domain=NAME`: finished-migration records, newest first.
async fn migrations(
    State(app): State<AppState>,
    query: Result<Query<MigrationsQuery>, axum::extract::rejection::QueryRejection>,
    slots: Arc<Semaphore>,
) -> Response {
    let Ok(_permit) = slots.try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "error": format!("more than {API_CONCURRENCY} calls at once; retry shortly")
            })),
        )
            .into_response();
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_request(format!("{e}; parameters are limit and domain")),
    };
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return bad_request(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}"
            ))
        }
    };
    // Only a memory copy under the lock that scrapes take.
    let out: Vec<_> = app
        .state
        .lock()
        .records
        .iter()
        .rev()
        .filter(|r| {
            q.domain
                .as_deref()
                .is_none_or(|d| r.domain.name == d || r.domain.uuid == d)
        })
        .take(limit)
        .cloned()
        .collect();
    // Encoding thousands of records takes a while: off the async workers.
    match tokio::task::spawn_blocking(move || serde_json::to_vec(&out)).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode records\n").into_response(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Records listed on the landing page.
const LANDING_RECORDS: usize = 20;

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, no time crate needed).
fn utc(t: f64) -> String {
    let secs = t.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
    // Before the state's lock below: the forecast's view reads the listing under it.
    let forecast = app
        .forecast
        .as_ref()
        .map(|f| f.lock().clone().listed_only(&app.state));
    let snap = app.state.lock();
    let mut h = String::with_capacity(8192);
    let _ =
        write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>vm-migration-exporter</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right;white-space:nowrap}}th{{background:#eee}}\
td:first-child{{text-align:left}}.converging,.completed{{color:#1a7f37}}\
.not_converging,.aborted{{color:#9a6700}}.postcopy_failed,.failed{{color:#cf222e;font-weight:bold}}</style></head><body>\
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
<th>data remaining</th><th>dirty rate</th><th>transfer rate</th><th>verdict</th><th>ETA</th>\
<th>predicted downtime</th><th>max downtime</th></tr>",
        );
        for j in &snap.active {
            let s = &j.stats;
            let a = j.convergence.current();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{v}\">{v}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&j.domain.name),
                if j.phase == Phase::Postcopy { "post-copy" } else { "pre-copy" },
                seconds(s.time_elapsed_ms.map(|m| m as f64 / 1000.0)),
                s.memory_iteration.map(|i| i.to_string()).unwrap_or_else(|| "–".into()),
                mib(s.data_remaining),
                mib_s(s.dirty_rate_bytes()),
                mib_s(s.memory_bps),
                seconds(a.eta_seconds),
                seconds(a.predicted_downtime_seconds),
                seconds(j.max_downtime_ms.map(|m| m as f64 / 1000.0)),
                v = a.verdict.as_str(),
            );
        }
        h.push_str("</table>");
    }
    if let Some(view) = &forecast {
        h.push_str(&crate::forecast::api::landing_section(view));
    }
    let shown = snap.records.len().min(LANDING_RECORDS);
    let _ = write!(
        h,
        "<h2>Recently finished ({shown} of {}; all at <a href=\"/api/v1/migrations\">/api/v1/migrations</a>)</h2>",
        snap.records.len()
    );
    if shown > 0 {
        h.push_str(
            "<table><tr><th>domain</th><th>direction</th><th>outcome</th><th>mode</th>\
<th>finished</th><th>duration</th><th>downtime</th><th>data sent</th><th>iterations</th><th>verdicts</th></tr>",
        );
        for f in snap.records.iter().rev().take(LANDING_RECORDS) {
            let verdicts: Vec<&str> = f.verdicts.iter().map(|v| v.verdict.as_str()).collect();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"{o}\">{o}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.domain.name),
                f.direction.as_str(),
                f.mode.as_str(),
                utc(f.finished_at),
                seconds(f.duration_seconds),
                seconds(f.downtime_seconds),
                mib(f.data_processed_bytes),
                f.iterations.map(|i| i.to_string()).unwrap_or_else(|| "–".into()),
                if verdicts.is_empty() { "–".to_string() } else { verdicts.join(" → ") },
                o = f.outcome.as_str(),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>");
    Html(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(api_concurrency: usize) -> std::net::SocketAddr {
        let app = router_with(
            AppState {
                registry: Arc::new(Registry::default()),
                state: crate::state::shared(),
                telemetry_path: "/metrics".into(),
                libvirt_uri: "test:///default".into(),
                forecast: None,
            },
            api_concurrency,
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await });
        addr
    }

    async fn status(addr: std::net::SocketAddr, path: &str) -> u16 {
        reqwest::get(format!("http://{addr}{path}"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// The API answers 503 past its concurrency cap (here 0 slots: every call is over it),
    /// and the cap is its own: other routes are not affected.
    #[tokio::test]
    async fn api_calls_past_the_cap_get_503() {
        let full = serve(0).await;
        assert_eq!(status(full, "/api/v1/migrations").await, 503);
        assert_eq!(status(full, "/-/healthy").await, 200);
        let open = serve(1).await;
        assert_eq!(status(open, "/api/v1/migrations?limit=10000").await, 200);
        assert_eq!(status(open, "/api/v1/migrations?limit=10001").await, 400);
    }
}
