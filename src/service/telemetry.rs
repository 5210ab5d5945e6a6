//! Telemetry: Prometheus metrics (served over HTTP by [`metrics_router`]) and the JSON decision
//! log (one tracing event per decision, target [`DECISION_TARGET`]). Generic: the labels are
//! whatever action ids and entity types the live policy pack and data have.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::config::DecisionLog;
use crate::engine::decide::Decision;
use crate::service::reload::Reloader;
use crate::service::replica::ReplicaSlot;
use crate::service::state::State;

/// The tracing target of decision log events.
pub const DECISION_TARGET: &str = "blue_authz::decision";

/// A request's context and request-scoped entities as the decision log writes them: the text
/// a gRPC caller sent, or the JSON an AuthZEN caller's values became (written out only when the
/// decision is logged).
#[derive(Clone, Copy)]
pub enum Input<'a> {
    Text(&'a str, &'a str),
    Json(
        Option<&'a serde_json::Map<String, serde_json::Value>>,
        &'a [serde_json::Value],
    ),
}

impl Input<'_> {
    fn text(&self) -> (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>) {
        use std::borrow::Cow;
        match *self {
            Input::Text(c, e) => (Cow::Borrowed(c), Cow::Borrowed(e)),
            Input::Json(c, e) => (
                Cow::Owned(crate::engine::request::context_text(c)),
                Cow::Owned(crate::engine::request::entities_text(e)),
            ),
        }
    }
}

/// One decision as the log records it.
pub struct Logged<'a> {
    pub request_id: &'a str,
    pub method: &'static str,
    pub principal: &'a dyn std::fmt::Display,
    pub action: &'a dyn std::fmt::Display,
    pub resource: &'a dyn std::fmt::Display,
    pub decision: &'a Decision,
    pub policy_version: &'a str,
    pub revision: u64,
    pub latency: Duration,
    pub context_json: &'a str,
    pub entities_json: &'a str,
}

/// What the decision log needs from a call beyond each decision, whatever its transport.
pub struct CallLog<'a> {
    pub method: &'static str,
    /// The caller's `x-request-id`, if it sent one.
    pub given_id: Option<&'a str>,
    pub started: Instant,
    request_id: Option<String>,
}

impl<'a> CallLog<'a> {
    pub fn new(method: &'static str, given_id: Option<&'a str>, started: Instant) -> Self {
        CallLog {
            method,
            given_id,
            started,
            request_id: None,
        }
    }

    /// The caller's request id, or one made up for this call (the same for all its
    /// decisions).
    pub fn request_id(&mut self, telemetry: &Telemetry) -> String {
        let given = self.given_id;
        self.request_id
            .get_or_insert_with(|| telemetry.request_id(given))
            .clone()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpErrorLabels {
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

/// How often a refused caller is logged, at most (the count covers every refusal).
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A gRPC status code as gRPC and the README spell it (`INVALID_ARGUMENT`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn latency_histogram() -> Histogram {
    // 10 µs to about 1.3 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 18))
}

/// Counters and the decision log switch, shared by the gRPC services.
pub struct Telemetry {
    /// The decision log's switch, sampling and context (settable while serving).
    log_enabled: std::sync::atomic::AtomicBool,
    log_sample: AtomicU64,
    log_context: std::sync::atomic::AtomicBool,
    /// Decisions by action id: [deny, allow].
    decisions: RwLock<hashbrown::HashMap<Box<str>, [AtomicU64; 2]>>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
    http_errors: Family<HttpErrorLabels, Counter>,
    /// Calls refused for a missing or wrong token, by listener.
    refused: Family<ListenerLabels, Counter>,
    /// When a refusal was last logged, and how many were not logged since.
    refusal_log: std::sync::Mutex<(Option<Instant>, u64)>,
    next_id: AtomicU64,
    boot: u64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("log", &self.decision_log())
            .finish()
    }
}

impl Telemetry {
    pub fn new(log: DecisionLog) -> Arc<Self> {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            ^ (std::process::id() as u64) << 40;
        Arc::new(Telemetry {
            log_enabled: log.enabled.into(),
            log_sample: AtomicU64::new(log.sample.to_bits()),
            log_context: log.include_context.into(),
            decisions: RwLock::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            errors: Family::default(),
            http_errors: Family::default(),
            refused: Family::default(),
            refusal_log: std::sync::Mutex::new((None, 0)),
            next_id: AtomicU64::new(0),
            boot,
        })
    }

    /// What the decision log writes now.
    pub fn decision_log(&self) -> DecisionLog {
        DecisionLog {
            enabled: self.log_enabled.load(Ordering::Relaxed),
            sample: f64::from_bits(self.log_sample.load(Ordering::Relaxed)),
            include_context: self.log_context.load(Ordering::Relaxed),
        }
    }

    /// Switches the decision log, its sampling and context, from the next decision on.
    pub fn set_decision_log(&self, log: DecisionLog) {
        self.log_sample
            .store(log.sample.to_bits(), Ordering::Relaxed);
        self.log_context
            .store(log.include_context, Ordering::Relaxed);
        self.log_enabled.store(log.enabled, Ordering::Relaxed);
    }

    /// Counts one decision of `action`.
    pub fn count_decision(&self, action: &str, allow: bool) {
        let slot = allow as usize;
        if let Ok(map) = self.decisions.read() {
            if let Some(c) = map.get(action) {
                c[slot].fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Ok(mut map) = self.decisions.write() {
            map.entry(action.into()).or_default()[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a finished gRPC call: its latency, and its status code if it failed.
    pub fn finish(&self, method: &'static str, started: Instant, code: Option<tonic::Code>) {
        self.observe(method, started);
        if let Some(code) = code {
            self.errors
                .get_or_create(&ErrorLabels {
                    method,
                    code: code_name(code),
                })
                .inc();
        }
    }

    /// Counts a call refused on `listener` ("data", "http") for a missing or wrong token, and
    /// logs it, at most once every 10 s with the number refused since: a misconfigured client
    /// or a probe shows in the metrics and the log without flooding either.
    pub fn refused(&self, listener: &'static str) {
        self.refused
            .get_or_create(&ListenerLabels { listener })
            .inc();
        let mut log = self.refusal_log.lock().unwrap_or_else(|e| e.into_inner());
        log.1 += 1;
        if log.0.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
            tracing::warn!(
                listener,
                refused = log.1,
                "calls refused for a missing or wrong bearer token (logged at most every 10 s; the count is since the last such line)"
            );
            *log = (Some(Instant::now()), 0);
        }
    }

    /// Records a finished HTTP call: its latency, and its status if it is an error.
    pub fn finish_http(&self, method: &'static str, started: Instant, status: u16) {
        self.observe(method, started);
        if status >= 400 {
            self.http_errors
                .get_or_create(&HttpErrorLabels { method, status })
                .inc();
        }
    }

    fn observe(&self, method: &'static str, started: Instant) {
        self.latency
            .get_or_create(&MethodLabels { method })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts a decision, and logs it when the decision log samples it.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        call: &mut CallLog<'_>,
        principal: &dyn std::fmt::Display,
        action: &str,
        resource: &dyn std::fmt::Display,
        raw: Input<'_>,
        d: &Decision,
        version: &str,
        revision: u64,
    ) {
        self.count_decision(action, d.allow);
        if self.sampled() {
            let request_id = call.request_id(self);
            let (context_json, entities_json) = raw.text();
            self.log_decision(&Logged {
                request_id: &request_id,
                method: call.method,
                principal,
                action: &action,
                resource,
                decision: d,
                policy_version: version,
                revision,
                latency: call.started.elapsed(),
                context_json: &context_json,
                entities_json: &entities_json,
            });
        }
    }

    /// Whether this decision should be logged (the switch, then the sample).
    pub fn sampled(&self) -> bool {
        if !self.log_enabled.load(Ordering::Relaxed) {
            return false;
        }
        let sample = f64::from_bits(self.log_sample.load(Ordering::Relaxed));
        sample >= 1.0 || random_unit() < sample
    }

    /// The caller's `x-request-id`, or a new process-unique id.
    pub fn request_id(&self, given: Option<&str>) -> String {
        match given {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => {
                let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                format!("{:016x}-{n}", self.boot)
            }
        }
    }

    /// Writes one decision log line (call only when [`Telemetry::sampled`]).
    pub fn log_decision(&self, d: &Logged<'_>) {
        let determining = d.decision.determining.join(",");
        let errors = d.decision.errors.join("; ");
        let decision = if d.decision.allow { "ALLOW" } else { "DENY" };
        let latency_us = d.latency.as_micros() as u64;
        // Absent (None) fields are left out of the line.
        let include = self.log_context.load(Ordering::Relaxed);
        tracing::info!(
            target: DECISION_TARGET,
            request_id = d.request_id,
            method = d.method,
            principal = %d.principal,
            action = %d.action,
            resource = %d.resource,
            decision,
            determining_policies = determining,
            errors,
            policy_version = d.policy_version,
            revision = d.revision,
            latency_us,
            context = include.then_some(d.context_json),
            entities = include.then_some(d.entities_json),
        );
    }

    /// The metrics registry: these counters, and the live state read at each scrape.
    pub fn registry(
        self: &Arc<Self>,
        engine: Arc<State>,
        reloader: Arc<Reloader>,
        replica: ReplicaSlot,
    ) -> Registry {
        let mut registry = Registry::with_prefix("blue_authz");
        registry.register(
            "request_duration_seconds",
            "Time to answer a call, by method: the gRPC method, or the AuthZEN endpoint (`authzen.evaluation`, ...)",
            self.latency.clone(),
        );
        registry.register(
            "grpc_errors",
            "gRPC calls that ended with an error status, by method and code (`INVALID_ARGUMENT`, ...)",
            self.errors.clone(),
        );
        registry.register(
            "http_errors",
            "AuthZEN HTTP calls answered with an error status, by method (the endpoint, `authzen.evaluation`, ...) and status",
            self.http_errors.clone(),
        );
        registry.register(
            "unauthenticated",
            "Calls refused for a missing or wrong bearer token, by listener (data, http)",
            self.refused.clone(),
        );
        registry.register_collector(Box::new(Scrape {
            telemetry: self.clone(),
            engine,
            reloader,
            replica,
        }));
        registry
    }
}

/// Gauges and counters computed at scrape time from the live state.
struct Scrape {
    telemetry: Arc<Telemetry>,
    engine: Arc<State>,
    reloader: Arc<Reloader>,
    replica: ReplicaSlot,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

fn label(k: &'static str, v: impl Into<String>) -> (Cow<'static, str>, Cow<'static, str>) {
    (Cow::Borrowed(k), Cow::Owned(v.into()))
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut decisions: Vec<(Labels, u64)> = Vec::new();
        if let Ok(map) = self.telemetry.decisions.read() {
            for (action, counts) in map.iter() {
                for (i, result) in ["deny", "allow"].into_iter().enumerate() {
                    let labels = vec![label("action", &**action), label("decision", result)];
                    decisions.push((labels, counts[i].load(Ordering::Relaxed)));
                }
            }
        }
        decisions.sort_by(|a, b| a.0.cmp(&b.0));
        let mut enc = encoder.encode_descriptor(
            "decisions",
            "Decisions made, by action and decision (allow, deny)",
            None,
            MetricType::Counter,
        )?;
        for (labels, n) in &decisions {
            ConstCounter::new(*n).encode(enc.encode_family(labels)?)?;
        }

        let status = self.reloader.status();
        let mut enc = encoder.encode_descriptor(
            "policy_reloads",
            "Policy reload candidates, by result (accepted, rejected, unchanged)",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("accepted", status.accepted),
            ("rejected", status.rejected),
            ("unchanged", status.unchanged),
        ] {
            let labels = vec![label("result", result)];
            ConstCounter::new(n).encode(enc.encode_family(&labels)?)?;
        }

        let mut enc = encoder.encode_descriptor(
            "policy_info",
            "The live policy set (value 1), labelled with its version and enabled overlays",
            None,
            MetricType::Gauge,
        )?;
        if !status.live_version.is_empty() {
            let labels = vec![
                label("version", status.live_version.clone()),
                label("overlays", status.live_overlays.join(",")),
            ];
            ConstGauge::new(1i64).encode(enc.encode_family(&labels)?)?;
        }

        let (revision, counts) = match self.engine.live() {
            Some(live) => (live.store().revision(), live.store().counts_by_type()),
            None => (0, Vec::new()),
        };
        let enc = encoder.encode_descriptor(
            "store_revision",
            "Revision of the entity store",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(revision as i64).encode(enc)?;
        if let Some(replica) = self.replica.get() {
            let view = replica.status.view();
            let gauges: [(&str, &str, f64); 4] = [
                (
                    "source_up",
                    "Whether the shared source answered the last call (1) or not (0)",
                    if view.reachable { 1.0 } else { 0.0 },
                ),
                (
                    "source_revision",
                    "The shared source's newest revision, as last seen",
                    view.head.max(revision) as f64,
                ),
                (
                    "source_behind_revisions",
                    "Batches of the shared source this replica has not applied yet, as last seen",
                    view.head.saturating_sub(revision) as f64,
                ),
                (
                    "source_last_answer_age_seconds",
                    "Seconds since the shared source last answered (-1: never)",
                    view.since_answered.map(|d| d.as_secs_f64()).unwrap_or(-1.0),
                ),
            ];
            for (name, help, value) in gauges {
                let enc = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(value).encode(enc)?;
            }
        }
        let enc = encoder.encode_descriptor(
            "store_writable",
            "Whether writes to the entity store succeed (1) or fail (0: a full disk, the shared source away); decisions go on either way",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.engine.write_fault().is_none() as i64).encode(enc)?;
        let enc = encoder.encode_descriptor(
            "revision_waiters",
            "Calls waiting now for their min_revision to be reached",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.engine.revision_waiters() as i64).encode(enc)?;
        let total: usize = counts.iter().map(|(_, n)| n).sum();
        let enc = encoder.encode_descriptor(
            "store_empty",
            "Whether the loaded entity store holds no entity at all (1): every decision that needs data denies",
            None,
            MetricType::Gauge,
        )?;
        let empty = self.engine.live().is_some() && total == 0;
        ConstGauge::new(empty as i64).encode(enc)?;
        let mut enc = encoder.encode_descriptor(
            "store_entities",
            "Entities in the store, by type",
            None,
            MetricType::Gauge,
        )?;
        for (ty, n) in counts {
            let labels = vec![label("type", ty)];
            ConstGauge::new(n as i64).encode(enc.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// `GET /metrics` (Prometheus text format), for a listener to serve.
pub fn metrics_router(registry: Registry) -> axum::Router {
    use axum::http::header::CONTENT_TYPE;
    let registry = Arc::new(registry);
    // The process's own figures under Prometheus's standard names, without our prefix.
    let mut process = Registry::default();
    process.register_collector(Box::new(
        crate::service::process_metrics::ProcessCollector::new(),
    ));
    let process = Arc::new(process);
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (registry, process) = (registry.clone(), process.clone());
            async move {
                use prometheus_client::encoding::text::{encode_eof, encode_registry};
                let mut body = String::new();
                let encoded = encode_registry(&mut body, &registry)
                    .and_then(|()| encode_registry(&mut body, &process))
                    .and_then(|()| encode_eof(&mut body));
                match encoded {
                    Ok(()) => (
                        axum::http::StatusCode::OK,
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    ),
                    Err(_) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
                        "cannot encode the metrics\n".to_string(),
                    ),
                }
            }
        }),
    )
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let local = 0u8;
    (t ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}

/// A uniform number in [0, 1), from a per-thread xorshift generator.
fn random_unit() -> f64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}
