//! Prometheus metrics. Labels are bounded enums: never digests, repository names or raw paths.

use axum::http::{Method, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[allow(non_camel_case_types)] // the variant names are the label values
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RouteKind {
    base,
    blob,
    upload,
    manifest,
    tags,
    referrers,
    other,
}

#[allow(non_camel_case_types)] // the variant names are the label values
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum MethodLabel {
    get,
    head,
    put,
    post,
    patch,
    delete,
    other,
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

/// What a pull-through lookup found.
#[allow(non_camel_case_types)] // the variant names are the label values
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CacheResult {
    /// Served from the cache (a tag confirmed fresh, or content held by digest).
    hit,
    /// Fetched from the upstream.
    miss,
    /// The upstream failed; the last known answer was served.
    stale,
}

#[allow(non_camel_case_types)] // the variant names are the label values
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ObjectKind {
    manifest,
    blob,
}

/// Where content came from: an upstream registry, a model hub, or a peer node.
#[allow(non_camel_case_types)] // the variant names are the label values
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum SourceKind {
    upstream,
    hub,
    peer,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOnly {
    pub source: SourceKind,
}

/// What a digest's owners said when asked where to read a blob.
#[allow(non_camel_case_types)] // the variant names are the label values
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum LocateResult {
    /// A peer holds or fetches it (a peer hit).
    peer,
    /// Nobody has it: this node fetches it from the origin for the cluster (a peer miss).
    origin,
    /// No owner answered: this node fetched it from the origin on its own.
    alone,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocateLabels {
    pub result: LocateResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub source: SourceKind,
    pub kind: ObjectKind,
    pub result: CacheResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: SourceKind,
    pub kind: ObjectKind,
}

/// Why a connection was answered 503 and closed without being served.
#[allow(non_camel_case_types)] // the variant names are the label values
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RefusalReason {
    /// The connection cap was reached.
    cap,
    /// The process had no file descriptor left to serve it with.
    fds,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: RefusalReason,
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
    pub cache_lookups: Family<CacheLabels, Counter>,
    pub upstream_errors: Family<SourceLabels, Counter>,
    /// Blob bytes fetched, by the kind of source they came from.
    pub fetched_bytes: Family<SourceOnly, Counter>,
    pub peer_locates: Family<LocateLabels, Counter>,
    /// A fetch moved from one source to another mid-blob (a peer failed, stalled or lied).
    pub peer_switches: Counter,
    /// Pieces asked of another peer after their first was late, failed or lied.
    pub peer_pieces_retried: Counter,
    /// Fetches that read a blob in stripes, each from this node's parent in its tree.
    pub peer_striped_fetches: Counter,
    /// Stripes located again after their parent was lost.
    pub peer_stripe_relocations: Counter,
    /// Blob bytes sent to peers on the cluster listener.
    pub peer_uploaded_bytes: Counter,
    /// Pieces a peer sent that did not match their hash.
    pub peer_pieces_rejected: Counter,
    /// Peers dropped for a digest (unreachable, busy, broken or lying).
    pub peer_bans: Counter,
    pub peer_announcements: Counter,
    pub cache_served_bytes: Counter,
    pub cache_capacity: Gauge,
    pub cache_used: Gauge,
    pub cache_reserved: Gauge,
    pub cache_pinned: Gauge,
    pub connections_open: Gauge,
    connections_refused: Family<RefusalLabels, Counter>,
    /// Bytes streamed from a source to clients without being cached (no room).
    pub passthrough_bytes: Counter,
    /// Blob fetches that found no room and streamed through uncached.
    pub passthrough_fetches: Counter,
}

impl Metrics {
    /// Register Manta's metrics in `registry` (which it then owns, to encode), the cache's
    /// lifecycle counters among them.
    pub fn new(mut registry: Registry, cache: &crate::store::CacheStats) -> Self {
        let m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            blob_bytes_served: Counter::default(),
            blob_bytes_received: Counter::default(),
            blobs_indexed: Gauge::default(),
            recovered_orphans: Counter::default(),
            cache_lookups: Family::default(),
            upstream_errors: Family::default(),
            fetched_bytes: Family::default(),
            peer_locates: Family::default(),
            peer_switches: Counter::default(),
            peer_pieces_retried: Counter::default(),
            peer_striped_fetches: Counter::default(),
            peer_stripe_relocations: Counter::default(),
            peer_uploaded_bytes: Counter::default(),
            peer_pieces_rejected: Counter::default(),
            peer_bans: Counter::default(),
            peer_announcements: Counter::default(),
            cache_served_bytes: Counter::default(),
            cache_capacity: Gauge::default(),
            cache_used: Gauge::default(),
            cache_reserved: Gauge::default(),
            cache_pinned: Gauge::default(),
            connections_open: Gauge::default(),
            connections_refused: Family::default(),
            passthrough_bytes: Counter::default(),
            passthrough_fetches: Counter::default(),
        };
        let gauges = [
            (
                "manta_cache_capacity_bytes",
                "Most the cache may hold",
                &m.cache_capacity,
            ),
            (
                "manta_cache_used_bytes",
                "Bytes of blobs in the store",
                &m.cache_used,
            ),
            (
                "manta_cache_reserved_bytes",
                "Bytes promised to downloads and uploads in flight",
                &m.cache_reserved,
            ),
            (
                "manta_cache_pinned_bytes",
                "Bytes of blobs held by pins (as of the last eviction plan)",
                &m.cache_pinned,
            ),
        ];
        for (name, help, g) in gauges {
            registry.register(name, help, g.clone());
        }
        let counters = [
            ("manta_cache_evicted_bytes", "Blob bytes evicted", &cache.evicted_bytes),
            ("manta_cache_evicted_blobs", "Blobs evicted", &cache.evicted_blobs),
            (
                "manta_cache_evicted_roots",
                "Artifacts (hub revisions, tags, manifests, loose blobs) evicted or removed",
                &cache.evicted_roots,
            ),
            ("manta_cache_eviction_runs", "Eviction runs that removed something", &cache.eviction_runs),
            (
                "manta_cache_reservations_refused",
                "Downloads and uploads refused because they could not fit",
                &cache.reservations_refused,
            ),
            ("manta_verify_blobs", "Blobs re-hashed by verification or scrub", &cache.verified_blobs),
            ("manta_verify_bytes", "Bytes re-hashed by verification or scrub", &cache.verified_bytes),
            (
                "manta_verify_corrupt_blobs",
                "Blobs found corrupt on disk (by verification, scrub or a verified read) and dropped",
                &cache.corrupt_blobs,
            ),
            (
                "manta_cache_missing_blobs",
                "Indexed blobs found missing or short on disk",
                &cache.missing_blobs,
            ),
        ];
        for (name, help, c) in counters {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "manta_cache_lookups",
            "Pull-through lookups by source kind, object kind and result (hit, miss, stale)",
            m.cache_lookups.clone(),
        );
        registry.register(
            "manta_upstream_errors",
            "Failed requests to sources by source kind and object kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "manta_source_fetched_bytes",
            "Blob bytes fetched, by kind of source (upstream registry, model hub, peer)",
            m.fetched_bytes.clone(),
        );
        registry.register(
            "manta_peer_locates",
            "Asks of a digest's owners by answer: a peer has it (peer), this node fetches it from the origin for the cluster (origin), or no owner answered (alone)",
            m.peer_locates.clone(),
        );
        registry.register(
            "manta_peer_source_switches",
            "Fetches that moved to another source mid-blob (a peer failed, stalled or sent a bad piece)",
            m.peer_switches.clone(),
        );
        registry.register(
            "manta_peer_pieces_retried",
            "Pieces read from several peers at once that were asked of another peer (the first was late, failed or sent a bad piece)",
            m.peer_pieces_retried.clone(),
        );
        registry.register(
            "manta_peer_striped_fetches",
            "Fetches that read a blob in stripes (a large blob in a large cluster), each stripe from this node's parent in that stripe's tree",
            m.peer_striped_fetches.clone(),
        );
        registry.register(
            "manta_peer_stripe_relocations",
            "Stripes of a striped fetch located again after their parent failed (from another peer, or from the origin when no peer had the rest)",
            m.peer_stripe_relocations.clone(),
        );
        registry.register(
            "manta_peer_uploaded_bytes",
            "Blob bytes sent to peers (complete blobs, and blobs this node is still fetching)",
            m.peer_uploaded_bytes.clone(),
        );
        registry.register(
            "manta_peer_pieces_rejected",
            "Pieces from peers that did not match their hash, fetched again elsewhere",
            m.peer_pieces_rejected.clone(),
        );
        registry.register(
            "manta_peer_bans",
            "Peers dropped as a source of a digest (unreachable, busy, broken or lying)",
            m.peer_bans.clone(),
        );
        registry.register(
            "manta_peer_announcements",
            "Announcements of fetch progress, completion and loss sent to digests' owners",
            m.peer_announcements.clone(),
        );
        registry.register(
            "manta_cache_served_bytes",
            "Blob bytes of pull-through repositories served from the local cache",
            m.cache_served_bytes.clone(),
        );
        registry.register(
            "manta_connections_open",
            "Client connections being served, over every listener",
            m.connections_open.clone(),
        );
        registry.register(
            "manta_connections_refused",
            "Connections answered 503 and closed unserved: the connection cap was reached (cap), or no file descriptor was left (fds)",
            m.connections_refused.clone(),
        );
        registry.register(
            "manta_cache_passthrough_bytes",
            "Blob bytes streamed from their source to clients without being cached, because the cache had no room",
            m.passthrough_bytes.clone(),
        );
        registry.register(
            "manta_cache_passthrough_fetches",
            "Blob fetches that found no room in the cache and streamed through to their clients uncached",
            m.passthrough_fetches.clone(),
        );
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
            Method::GET => MethodLabel::get,
            Method::HEAD => MethodLabel::head,
            Method::PUT => MethodLabel::put,
            Method::POST => MethodLabel::post,
            Method::PATCH => MethodLabel::patch,
            Method::DELETE => MethodLabel::delete,
            _ => MethodLabel::other,
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

    pub fn lookup(&self, kind: ObjectKind, result: CacheResult) {
        self.cache_lookups
            .get_or_create(&CacheLabels {
                source: SourceKind::upstream,
                kind,
                result,
            })
            .inc();
    }

    pub fn connection_refused(&self, reason: RefusalReason) {
        self.connections_refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    pub fn upstream_error(&self, kind: ObjectKind) {
        self.upstream_errors
            .get_or_create(&SourceLabels {
                source: SourceKind::upstream,
                kind,
            })
            .inc();
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Metrics {
    /// Count `n` blob bytes fetched from a source of `kind`.
    pub fn fetched(&self, kind: SourceKind, n: u64) {
        self.fetched_bytes
            .get_or_create(&SourceOnly { source: kind })
            .inc_by(n);
    }

    pub fn located(&self, result: LocateResult) {
        self.peer_locates
            .get_or_create(&LocateLabels { result })
            .inc();
    }
}
