//! `--metrics IP:PORT`: Prometheus text exposition at `/metrics`, built with `prometheus-client`
//! (the Prometheus project's own Rust client).
//!
//! Two kinds of figures. Everything the session layer, the B2BUA and the workers already count
//! is read when Prometheus scrapes ([`Scrape`], a collector): nothing extra happens per packet.
//! What exists only as an event (a control request and its latency, the MOS of an ended call)
//! is recorded where it happens, into [`Recorded`], a handful of atomic updates per request or
//! per call, never per packet.
//!
//! Names follow Prometheus conventions: `sluice_` prefix, `_total` counters, seconds and bytes.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::session::Sessions;

/// A control request's front end, method and outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `ng`, `grpc` or `sip`.
    pub frontend: &'static str,
    pub method: &'static str,
    /// `ok` or `error` (SIP: a final response >= 300 sluice sent itself counts as `error`).
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    frontend: &'static str,
    method: &'static str,
}

/// What is recorded as it happens.
#[derive(Debug)]
pub struct Recorded {
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    mos: Histogram,
}

impl Default for Recorded {
    fn default() -> Self {
        // 50 us to ~3 s: an ng offer costs ~0.2 ms, a gRPC one ~1 ms on the test machine.
        fn latency_histogram() -> Histogram {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                50e-6, 2.0, 16,
            ))
        }
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        Recorded {
            requests: Family::default(),
            latency,
            // MOS 1.0-4.5 in steps that separate "bad" (< 3.1), "poor", "fair", "good".
            mos: Histogram::new([1.5, 2.0, 2.5, 3.0, 3.1, 3.6, 4.0, 4.3, 4.5]),
        }
    }
}

/// The process's recorder: one per process, like the Prometheus registry it feeds.
pub fn recorded() -> &'static Recorded {
    static R: OnceLock<Recorded> = OnceLock::new();
    R.get_or_init(Recorded::default)
}

/// A control request handled by `frontend`; `method` comes from a fixed set (command or method
/// names), never from the request's free text, which `'static` enforces (and no label is
/// allocated per request).
pub fn request(frontend: &'static str, method: &'static str, ok: bool, took: Duration) {
    let r = recorded();
    r.requests
        .get_or_create(&RequestLabels {
            frontend,
            method,
            result: if ok { "ok" } else { "error" },
        })
        .inc();
    r.latency
        .get_or_create(&MethodLabels { frontend, method })
        .observe(took.as_secs_f64());
}

/// The average MOS of one stream of an ended call (from its endpoints' RTCP).
pub fn ended_stream_mos(mos: f64) {
    recorded().mos.observe(mos);
}

/// Figures read at scrape time.
pub struct Scrape {
    pub sessions: Arc<Sessions>,
    pub sip: Vec<crate::b2bua::Shared>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrape({} SIP cores)", self.sip.len())
    }
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge<T>(e: &mut DescriptorEncoder, name: &str, help: &str, v: T) -> Result<(), std::fmt::Error>
where
    ConstGauge<T>: EncodeMetric,
    T: Copy,
{
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.sessions.statistics();
        let e = &mut e;
        gauge(
            e,
            "sluice_calls_active",
            "Calls the relay holds now.",
            s.calls_current as i64,
        )?;
        counter(
            e,
            "sluice_calls",
            "Calls created since start.",
            s.calls_total,
        )?;
        counter(
            e,
            "sluice_calls_timed_out",
            "Calls deleted for lack of media and signalling (--timeout).",
            s.calls_timed_out,
        )?;
        gauge(
            e,
            "sluice_ports_in_use",
            "Relay ports held by calls.",
            s.ports_in_use as i64,
        )?;
        gauge(
            e,
            "sluice_ports_free",
            "Relay ports free to allocate.",
            s.ports_free as i64,
        )?;
        counter(
            e,
            "sluice_packets_relayed",
            "RTP and RTCP packets sent on to the other leg, all paths.",
            s.packets_relayed,
        )?;
        counter(
            e,
            "sluice_relayed_bytes",
            "Bytes of the packets in sluice_packets_relayed_total.",
            s.bytes_relayed,
        )?;
        {
            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            struct Reason {
                reason: &'static str,
            }
            let mut enc = e.encode_descriptor(
                "sluice_packets_dropped",
                "Packets not relayed, by reason (see README, Metrics).",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (reason, n) in s.dropped_by_reason {
                ConstCounter::new(n).encode(enc.encode_family(&Reason { reason })?)?;
            }
        }
        gauge(
            e,
            "sluice_xdp_flows",
            "Flow entries the XDP program forwards in the kernel now.",
            s.kernel_flows as i64,
        )?;
        counter(
            e,
            "sluice_xdp_packets",
            "Packets the XDP program forwarded or handed to a worker.",
            s.kernel_packets,
        )?;
        {
            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            struct Stream {
                path: &'static str,
                kind: &'static str,
            }
            let mut enc = e.encode_descriptor(
                "sluice_streams",
                "Streams of live calls by where their packets go and what sluice does to them.",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            // Every combination, zeros included, so that a dashboard's series never vanish.
            for (path, by_kind) in crate::session::STREAM_PATHS.into_iter().zip(s.streams) {
                for (kind, n) in crate::session::STREAM_KINDS.into_iter().zip(by_kind) {
                    ConstGauge::new(n as i64).encode(enc.encode_family(&Stream { path, kind })?)?;
                }
            }
        }
        gauge(
            e,
            "sluice_transcoder_channels",
            "Transcoded directions of live calls (two per transcoded stream).",
            s.transcoder_channels as i64,
        )?;
        counter(
            e,
            "sluice_transcoded_packets",
            "Packets the transcoders produced.",
            s.transcoded_packets,
        )?;
        counter(
            e,
            "sluice_transcoder_concealed_frames",
            "Frames the transcoders concealed (lost and not recovered).",
            s.transcoder_concealed_frames,
        )?;
        counter(
            e,
            "sluice_transcoder_fec_recovered_frames",
            "Frames the transcoders rebuilt from Opus in-band FEC.",
            s.transcoder_fec_recovered_frames,
        )?;
        {
            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            struct Reason {
                reason: &'static str,
            }
            let mut enc = e.encode_descriptor(
                "sluice_calls_ended",
                "Calls ended, by reason (see README, Metrics).",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (reason, n) in s.calls_ended {
                ConstCounter::new(n).encode(enc.encode_family(&Reason { reason })?)?;
            }
        }
        counter(
            e,
            "sluice_events_missed",
            "WatchEvents events dropped from full subscriber queues.",
            s.events_missed,
        )?;
        let (load, cpu) = self.sessions.load_gauge().readings();
        if load.is_finite() {
            gauge(
                e,
                "sluice_host_load1",
                "1-minute load average (--max-load).",
                load,
            )?;
        }
        if cpu.is_finite() {
            gauge(
                e,
                "sluice_host_cpu_busy_ratio",
                "Busy share of all CPUs over the last second (--max-cpu).",
                cpu / 100.0,
            )?;
        }
        if !s.workers.is_empty() {
            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            struct W {
                worker: String,
            }
            for (name, help, pick) in [
                (
                    "sluice_worker_rx_packets",
                    "Frames an AF_XDP worker took from its RX ring.",
                    (|w: &crate::session::WorkerReport| w.rx) as fn(&_) -> u64,
                ),
                (
                    "sluice_worker_tx_packets",
                    "Packets a worker sent on.",
                    |w| w.tx,
                ),
                (
                    "sluice_worker_dropped_packets",
                    "Packets a worker dropped.",
                    |w| w.dropped,
                ),
            ] {
                let mut enc = e.encode_descriptor(
                    name,
                    help,
                    None,
                    prometheus_client::metrics::MetricType::Counter,
                )?;
                for w in &s.workers {
                    let c = ConstCounter::new(pick(w));
                    c.encode(enc.encode_family(&W {
                        worker: w.index.to_string(),
                    })?)?;
                }
            }
            let mut enc = e.encode_descriptor(
                "sluice_worker_load_ratio",
                "Busy share of a worker over the last second.",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for w in &s.workers {
                let g = ConstGauge::new(w.load_permille as f64 / 1000.0);
                g.encode(enc.encode_family(&W {
                    worker: w.index.to_string(),
                })?)?;
            }
        }
        if !self.sip.is_empty() {
            let mut t = crate::b2bua::B2buaCounters::default();
            let mut live = 0;
            for core in &self.sip {
                let b = crate::b2bua::lock(core);
                let c = b.counters();
                t.calls_started += c.calls_started;
                t.calls_answered += c.calls_answered;
                t.calls_failed += c.calls_failed;
                t.malformed += c.malformed;
                t.rejected += c.rejected;
                live += b.live().0;
            }
            gauge(
                e,
                "sluice_sip_calls_active",
                "SIP calls the B2BUA holds now.",
                live as i64,
            )?;
            counter(
                e,
                "sluice_sip_calls",
                "SIP calls the B2BUA took.",
                t.calls_started,
            )?;
            counter(
                e,
                "sluice_sip_calls_answered",
                "SIP calls answered (2xx).",
                t.calls_answered,
            )?;
            counter(
                e,
                "sluice_sip_calls_failed",
                "SIP calls that ended without an answer.",
                t.calls_failed,
            )?;
            counter(
                e,
                "sluice_sip_malformed_messages",
                "Datagrams and stream bytes that were not SIP (dropped).",
                t.malformed,
            )?;
            counter(
                e,
                "sluice_sip_rejected_requests",
                "Requests refused before reaching a call (4xx/5xx sent by sluice).",
                t.rejected,
            )?;
        }
        Ok(())
    }
}

/// The registry a scrape encodes: the collector and the recorder.
pub fn registry(scrape: Scrape) -> Registry {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(scrape));
    let r = recorded();
    reg.register(
        "sluice_control_requests",
        "Control requests by front end, method and result",
        r.requests.clone(),
    );
    reg.register_with_unit(
        "sluice_control_request_duration",
        "Time to handle a control request",
        prometheus_client::registry::Unit::Seconds,
        r.latency.clone(),
    );
    reg.register(
        "sluice_ended_stream_mos",
        "Average MOS (E-model, from the endpoints' RTCP) of each stream side of ended calls that reported one",
        r.mos.clone(),
    );
    reg
}

/// Serves `GET /metrics` on `addr` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                let ok = prometheus_client::encoding::text::encode(&mut body, &registry).is_ok();
                let status = if ok {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                };
                (
                    status,
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await?;
    Ok(())
}

/// Binds now, so that a taken port fails the start.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))
}

/// The gRPC methods, as metrics labels (a fixed set: a request for any other path is counted as
/// `other`, so that no client can grow the label space).
const GRPC_METHODS: [&str; 11] = [
    "Ping",
    "Offer",
    "Answer",
    "Delete",
    "Query",
    "List",
    "Statistics",
    "WatchEvents",
    "SetMaxSessions",
    "ListSipCalls",
    "HangupSipCall",
];

fn grpc_method(path: &str) -> &'static str {
    let name = path.strip_prefix("/sluice.v1.Control/").unwrap_or_default();
    GRPC_METHODS
        .into_iter()
        .find(|m| *m == name)
        .unwrap_or(if path.contains("ServerReflection") {
            "reflection"
        } else {
            "other"
        })
}

/// A tower layer around the gRPC router that counts and times every request by method. The
/// result is the `grpc-status` of the response headers (tonic sends a failed call as a
/// trailers-only response, with the status there); a streaming call is timed to its headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTimingLayer;

impl<S> tower::Layer<S> for GrpcTimingLayer {
    type Service = GrpcTiming<S>;
    fn layer(&self, inner: S) -> GrpcTiming<S> {
        GrpcTiming { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcTiming<S> {
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcTiming<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = grpc_method(req.uri().path());
        let started = std::time::Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            if let Ok(resp) = &r {
                let ok = resp
                    .headers()
                    .get("grpc-status")
                    .is_none_or(|v| v.as_bytes() == b"0");
                request("grpc", method, ok, started.elapsed());
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_map_to_a_fixed_set_of_labels() {
        assert_eq!(grpc_method("/sluice.v1.Control/Offer"), "Offer");
        assert_eq!(grpc_method("/sluice.v1.Control/Offer2"), "other");
        assert_eq!(grpc_method("/x/../sluice.v1.Control/Offer"), "other");
        assert_eq!(
            grpc_method("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "reflection"
        );
    }
}
