//! Prometheus metrics of the API: requests by method and status, and their latency.
//! Served at `/metrics` to callers holding `metrics:read` (a token like any other, so an
//! exporter scrapes with a service token); a caller without it gets a 403, audited.
//! Labels never hold a path, an id or a subject: their number stays bounded.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The permission that reads `/metrics`.
pub const METRICS_PERMISSION: &str = "metrics:read";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    status: u16,
}

/// The API's metrics and their registry.
pub(super) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(super) fn new() -> Self {
        let mut registry = Registry::with_prefix("stepbox");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method and status",
            requests.clone(),
        );
        // 0.25 ms to about 4 s.
        let latency = Histogram::new(exponential_buckets(0.000_25, 2.0, 15));
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer",
            latency.clone(),
        );
        Self {
            registry,
            requests,
            latency,
        }
    }

    /// Count one answered request.
    pub(super) fn observe(&self, method: &str, status: u16, took: Duration) {
        // Only the methods we route; anything else is one label, not one per verb sent.
        let method = match method {
            "GET" | "POST" | "PUT" | "DELETE" | "HEAD" => method,
            _ => "OTHER",
        };
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                status,
            })
            .inc();
        self.latency.observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub(super) fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
