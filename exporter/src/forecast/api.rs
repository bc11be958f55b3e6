//! `GET /api/v1/forecast?peer=…&bandwidth=…&concurrency=…`: every running domain's forecast and
//! the host's evacuation plan for one "what if", as JSON; and the landing page's section. Both
//! evaluate the collector's last inputs: no request waits on libvirt.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use parking_lot::Mutex;

use super::report::{evaluate, HostView, Report, WhatIf};

/// Most migrations at once a what-if may ask for.
pub const MAX_CONCURRENCY: u32 = 64;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastQuery {
    peer: Option<String>,
    bandwidth: Option<String>,
    concurrency: Option<String>,
}

/// A bandwidth: a number and a unit, per second (`40MiB`, `1.5GiB/s`, `100MB`): binary units
/// B, KiB, MiB, GiB, decimal KB, MB, GB. Strict: no spaces, more than 0, at most 1 TiB/s.
pub fn parse_bandwidth(s: &str) -> Result<f64, String> {
    let bad = || {
        format!("'{s}' is not a bandwidth; use e.g. 40MiB (per second; units B, KiB, MiB, GiB, KB, MB, GB)")
    };
    let t = s.strip_suffix("/s").unwrap_or(s);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return Err(bad()),
    };
    let v = n * mult;
    if !(1.0..=1024.0 * 1073741824.0).contains(&v) {
        return Err(format!(
            "'{s}' is out of range: from 1B to 1024GiB per second"
        ));
    }
    Ok(v)
}

fn bad_request(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

/// The what-if a query asks for, checked against what the collector knows.
pub fn what_if(q: &ForecastQuery, view: &HostView) -> Result<WhatIf, String> {
    let peer = match q.peer.as_deref() {
        None => None,
        Some(p) if view.peer(p).is_some() => Some(p.to_string()),
        Some(p) => {
            let known: Vec<String> = view.peers.iter().map(|p| p.name.clone()).collect();
            return Err(format!(
                "peer '{p}' is not a known peer (configured, discovered, or of a past migration); known: {}",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ));
        }
    };
    let bandwidth_bytes = match q.bandwidth.as_deref() {
        None => None,
        Some(b) => Some(parse_bandwidth(b).map_err(|e| format!("bandwidth: {e}"))?),
    };
    let concurrency = match q.concurrency.as_deref() {
        None => 1,
        Some(c) => match c.parse::<u32>() {
            Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => n,
            _ => {
                return Err(format!(
                    "concurrency '{c}' must be a whole number from 1 to {MAX_CONCURRENCY}"
                ))
            }
        },
    };
    Ok(WhatIf {
        peer,
        bandwidth_bytes,
        concurrency,
    })
}

/// The handler; `view` is `None` when the forecast collector is off.
pub async fn forecast(
    view: Option<Arc<Mutex<HostView>>>,
    state: crate::state::SharedState,
    query: Result<Query<ForecastQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return bad_request(format!(
                "{e}; parameters are peer, bandwidth and concurrency"
            ))
        }
    };
    let Some(view) = view else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({
                "error": "the forecast collector is disabled (--no-collector.forecast)"
            })),
        )
            .into_response();
    };
    let view = view.lock().clone().listed_only(&state);
    match what_if(&q, &view) {
        Ok(w) => Json(evaluate(&view, &w)).into_response(),
        Err(e) => bad_request(e),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

/// The landing page's forecast section.
pub fn landing_section(view: &HostView) -> String {
    let r: Report = evaluate(view, &WhatIf::default());
    let mut h = String::new();
    let _ =
        write!(
        h,
        "<h2>Forecast: if migrated now (<a href=\"/api/v1/forecast\">/api/v1/forecast</a>)</h2>\
<p>Dirty-rate calculations: <b>{}</b>. Evacuation one at a time: <b>{}</b>{}.</p>",
        if r.calculations { "on" } else { "off (read-only: libvirt's and the records' figures)" },
        opt(r.evacuation.total_seconds, |s| format!("{s:.1} s")),
        if r.evacuation.not_converging.is_empty() {
            String::new()
        } else {
            format!(
                "; not converging in pre-copy: {}",
                esc(&r.evacuation.not_converging.join(", "))
            )
        }
    );
    if r.domains.is_empty() {
        return h;
    }
    h.push_str(
        "<table><tr><th>domain</th><th>verdict</th><th>dirty rate</th><th>transfer rate</th>\
<th>λ</th><th>duration</th><th>downtime</th><th>recommendation</th></tr>",
    );
    let mib = |b: f64| format!("{:.1} MiB/s", b / 1048576.0);
    for d in &r.domains {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.domain),
            d.forecast.verdict.as_str(),
            d.dirty_rate
                .map(|x| format!("{} ({})", mib(x.bytes_per_second), serde_json::to_value(x.source).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()))
                .unwrap_or_else(|| "–".into()),
            opt(d.path.rate, |r| match d.path.limit {
                Some(l) => format!(
                    "{} ({})",
                    mib(r),
                    serde_json::to_value(l)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                ),
                None => mib(r),
            }),
            opt(d.forecast.dirty_to_transfer_ratio, |l| format!("{l:.2}")),
            opt(d.forecast.duration_seconds, |s| format!("{s:.1} s")),
            opt(d.forecast.downtime_seconds, |s| format!("{:.0} ms", s * 1000.0)),
            esc(d.recommendation_text.as_deref().unwrap_or("–")),
        );
    }
    h.push_str("</table>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidths_parse_strictly() {
        assert_eq!(parse_bandwidth("40MiB"), Ok(40.0 * 1048576.0));
        assert_eq!(parse_bandwidth("40MiB/s"), Ok(40.0 * 1048576.0));
        assert_eq!(parse_bandwidth("1.5GiB"), Ok(1.5 * 1073741824.0));
        assert_eq!(parse_bandwidth("100MB"), Ok(1e8));
        for bad in [
            "", "40", "MiB", "40 MiB", "40mib", "-1MiB", "0MiB", ".5MiB", "1.MiB", "1..2MiB",
            "2048GiB", "NaNMiB", "40MiB/h",
        ] {
            assert!(parse_bandwidth(bad).is_err(), "{bad}");
        }
        assert!(parse_bandwidth("x").unwrap_err().contains("use e.g. 40MiB"));
    }

    #[test]
    fn what_ifs_are_checked() {
        let view = HostView::default();
        let q = |peer: Option<&str>, bw: Option<&str>, c: Option<&str>| ForecastQuery {
            peer: peer.map(String::from),
            bandwidth: bw.map(String::from),
            concurrency: c.map(String::from),
        };
        assert_eq!(what_if(&q(None, None, None), &view), Ok(WhatIf::default()));
        let w = what_if(&q(None, Some("40MiB"), Some("4")), &view).expect("valid");
        assert_eq!(
            (w.bandwidth_bytes, w.concurrency),
            (Some(40.0 * 1048576.0), 4)
        );
        let e = what_if(&q(Some("dst"), None, None), &view).expect_err("unknown peer");
        assert!(
            e.contains("peer 'dst' is not a known peer") && e.contains("known: none"),
            "{e}"
        );
        for c in ["0", "65", "-1", "two", "1.5"] {
            let e = what_if(&q(None, None, Some(c)), &view).expect_err(c);
            assert!(e.contains("from 1 to 64"), "{e}");
        }
        let e = what_if(&q(None, Some("fast"), None), &view).expect_err("bad bandwidth");
        assert!(e.starts_with("bandwidth: 'fast' is not a bandwidth"), "{e}");
    }
}
