//! Prometheus metrics. Labels are bounded enums: never digests, repository names or raw paths.

use axum::http::{Method, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RouteKind {
    Base,
    Blob,
    Upload,
    Manifest,
    Tags,
    Referrers,
    Other,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum MethodLabel {
    Get,
    Head,
    Put,
    Post,
    Patch,
    Delete,
    Other,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    Redirect,
    ClientError,
    ServerError,
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            StatusClass::Success => "2xx",
            StatusClass::Redirect => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: RouteKind,
    pub method: MethodLabel,
    pub status: StatusClass,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    pub blob_bytes_served: Counter,
    pub blob_bytes_received: Counter,
    pub blobs_indexed: Gauge,
    pub recovered_orphans: Counter,
}

impl Metrics {
    /// Register Manta's metrics in `registry` (which it then owns, to encode).
    pub fn new(mut registry: Registry) -> Self {
        let m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            blob_bytes_served: Counter::default(),
            blob_bytes_received: Counter::default(),
            blobs_indexed: Gauge::default(),
            recovered_orphans: Counter::default(),
        };
        registry.register(
            "manta_http_requests",
            "HTTP requests by route kind, method and status class",
            m.requests.clone(),
        );
        registry.register(
            "manta_blob_served_bytes",
            "Blob bytes sent to clients",
            m.blob_bytes_served.clone(),
        );
        registry.register(
            "manta_blob_received_bytes",
            "Blob bytes received from uploads",
            m.blob_bytes_received.clone(),
        );
        registry.register(
            "manta_blobs_indexed",
            "Blobs in the index at start-up",
            m.blobs_indexed.clone(),
        );
        registry.register(
            "manta_recovery_removed_files",
            "Orphan and temp files removed by start-up reconciliation",
            m.recovered_orphans.clone(),
        );
        Self { registry, ..m }
    }

    pub fn observe_request(&self, route: RouteKind, method: &Method, status: StatusCode) {
        let method = match *method {
            Method::GET => MethodLabel::Get,
            Method::HEAD => MethodLabel::Head,
            Method::PUT => MethodLabel::Put,
            Method::POST => MethodLabel::Post,
            Method::PATCH => MethodLabel::Patch,
            Method::DELETE => MethodLabel::Delete,
            _ => MethodLabel::Other,
        };
        let status = match status.as_u16() {
            500.. => StatusClass::ServerError,
            400..=499 => StatusClass::ClientError,
            300..=399 => StatusClass::Redirect,
            _ => StatusClass::Success,
        };
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
