//! kiln-web's Prometheus metrics (`kiln_web_…`, listed in `docs/metrics.md`), served on
//! `--metrics-listen` when given, on an address of their own: never on the site's port, where
//! anyone could read them.

use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::runs::RunManager;

/// An HTTP request's method and the class of its status (`2xx`, `3xx`, `4xx`, `5xx`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// `GET`, `POST`, … (others are counted as `OTHER`).
    pub method: &'static str,
    /// The status class.
    pub status: &'static str,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RunLabels {
    /// `succeeded`, `failed` or `cancelled`.
    pub state: &'static str,
}

/// What the web app counts.
#[derive(Debug, Clone)]
pub struct WebMetrics {
    /// HTTP requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to answer a request (up to the handler's answer; uploads included).
    pub request_seconds: Histogram,
    /// Runs started by users.
    pub runs_started: Counter,
    /// Runs that ended, by state.
    pub runs_ended: Family<RunLabels, Counter>,
    /// Failed logins.
    pub failed_logins: Counter,
}

impl Default for WebMetrics {
    fn default() -> Self {
        WebMetrics {
            requests: Family::default(),
            // 1 ms to about 4 minutes.
            request_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
            runs_started: Counter::default(),
            runs_ended: Family::default(),
            failed_logins: Counter::default(),
        }
    }
}

impl WebMetrics {
    /// Registers these metrics, and the runs `runs` is watching, in `registry` under
    /// `kiln_web_`.
    pub fn register(&self, registry: &mut Registry, runs: &Arc<RunManager>) {
        let registry = registry.sub_registry_with_prefix("kiln_web");
        registry.register("http_requests", "HTTP requests answered, by method and status class", self.requests.clone());
        registry.register_with_unit(
            "http_request",
            "Time to answer an HTTP request",
            Unit::Seconds,
            self.request_seconds.clone(),
        );
        registry.register("runs_started", "Runs started by users", self.runs_started.clone());
        registry.register("runs_ended", "Runs that ended, by state", self.runs_ended.clone());
        registry.register(
            "failed_logins",
            "Logins refused for a wrong address or password",
            self.failed_logins.clone(),
        );
        registry.register_collector(Box::new(ActiveRuns(Arc::downgrade(runs))));
    }

    /// Counts a request answered with `status` after `seconds`.
    pub fn record_request(&self, method: &str, status: u16, seconds: f64) {
        let method = match method {
            "GET" => "GET",
            "POST" => "POST",
            "HEAD" => "HEAD",
            _ => "OTHER",
        };
        let status = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.get_or_create(&RequestLabels { method, status }).inc();
        self.request_seconds.observe(seconds);
    }
}

/// The runs being watched now, read at each scrape.
struct ActiveRuns(Weak<RunManager>);

impl std::fmt::Debug for ActiveRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActiveRuns")
    }
}

impl Collector for ActiveRuns {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(runs) = self.0.upgrade() else { return Ok(()) };
        let active = ConstGauge::new(i64::try_from(runs.active()).unwrap_or(i64::MAX));
        active.encode(encoder.encode_descriptor(
            "runs_active",
            "Runs being submitted or watched by this server",
            None,
            active.metric_type(),
        )?)
    }
}
