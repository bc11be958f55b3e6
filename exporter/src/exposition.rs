//! Exposition formats: OpenMetrics when the scraper asks for it, text 0.0.4 otherwise.
//!
//! `prometheus-client` writes OpenMetrics only. The two differ, for what we emit, in how a
//! counter family is named in `# HELP`/`# TYPE` (`x` vs `x_total`) and in the `# EOF` marker;
//! promtool 2.42's linter misreads OpenMetrics counters, so text clients get 0.0.4.
//!
//! [`GaugeFamily`] writes a gauge family built at scrape time, for every encoder.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (and does not refuse it with `q=0`).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// Encode the registry; returns the body and its content type.
pub fn encode(
    registry: &Registry,
    openmetrics: bool,
) -> Result<(String, &'static str), std::fmt::Error> {
    let mut body = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut body, registry)?;
    if openmetrics {
        Ok((body, OPENMETRICS_CONTENT_TYPE))
    } else {
        Ok((openmetrics_to_text(&body), TEXT_CONTENT_TYPE))
    }
}

/// Rewrite OpenMetrics text as Prometheus text format 0.0.4.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // prometheus-client writes HELP before TYPE: hold HELP until the type is known.
    let mut pending_help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            if let Some((hname, help)) = pending_help.take() {
                if hname == rest.split(' ').next().unwrap_or("") {
                    out.push_str(&format!("# HELP {name} {help}\n"));
                }
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Label pairs of one series built at encode time.
pub type Labels = Vec<(&'static str, String)>;

/// One gauge family built at encode time; empty families are not written.
pub struct GaugeFamily {
    name: &'static str,
    help: &'static str,
    series: Vec<(Labels, f64)>,
}

impl GaugeFamily {
    pub fn new(name: &'static str, help: &'static str) -> Self {
        GaugeFamily {
            name,
            help,
            series: Vec::new(),
        }
    }

    pub fn push(&mut self, labels: Labels, value: Option<f64>) {
        if let Some(v) = value {
            self.series.push((labels, v));
        }
    }

    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.series.is_empty() {
            return Ok(());
        }
        let mut me = encoder.encode_descriptor(self.name, self.help, None, MetricType::Gauge)?;
        for (labels, v) in &self.series {
            ConstGauge::new(*v).encode(me.encode_family(labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"
        ));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
    }

    #[test]
    fn counters_get_total_in_metadata_and_eof_goes() {
        let om = "# HELP a_finished Help text.\n# TYPE a_finished counter\na_finished_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1.5\n# EOF\n";
        let text = openmetrics_to_text(om);
        assert_eq!(
            text,
            "# HELP a_finished_total Help text.\n# TYPE a_finished_total counter\na_finished_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1.5\n"
        );
    }
}
