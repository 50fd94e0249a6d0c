//! Metrics, named as gRPC users already alert on them (go-grpc-prometheus
//! conventions), plus Strait's per-route counters. Rendered by the admin endpoint.
use crate::body::Outcome;
use crate::grpc;
use crate::histogram::{self, Histogram};
use foldhash::HashMap;
use metrics::SharedString;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Distinct gRPC methods given their own label values; more become `other` so a caller
/// sending random paths cannot grow the metric set without bound.
const MAX_METHODS: usize = 2000;

/// Installs the global recorder for counters and gauges (latency histograms are
/// [`histogram::LATENCY`]); [`render`] writes `/metrics`.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new().install_recorder()
}

/// Every metric in the Prometheus text format.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    text.push_str(&histogram::LATENCY.render());
    text
}

/// Which side of the proxy a call crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Calls the pod's app makes (the proxy acts as gRPC client): `grpc_client_*`.
    Outbound,
    /// Calls the pod's app serves: `grpc_server_*`.
    Inbound,
}

impl Side {
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Side::Outbound => {
                ("grpc_client_started_total", "grpc_client_handled_total", "grpc_client_handling_seconds")
            }
            Side::Inbound => ("grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds"),
        }
    }
}

/// Interned label values for one gRPC method, the call type learnt from earlier calls,
/// and the metric handles already registered for it: looking a handle up by label set
/// in the recorder on every call (building the key, hashing five strings) was the
/// costliest part of recording metrics per request.
pub struct MethodInfo {
    service: SharedString,
    method: SharedString,
    /// 0 = not yet seen; otherwise index+1 into TYPES.
    learned_type: AtomicU8,
    handles: RwLock<HashMap<HandleKey, Handle>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum HandleKey {
    Started { side: u8, grpc_type: &'static str },
    Handled { side: u8, grpc_type: &'static str, code: &'static str },
    Seconds { side: u8, grpc_type: &'static str },
}

#[derive(Clone)]
enum Handle {
    Counter(metrics::Counter),
    Histogram(Arc<Histogram>),
}

impl MethodInfo {
    fn new(service: SharedString, method: SharedString) -> Self {
        MethodInfo { service, method, learned_type: AtomicU8::new(0), handles: RwLock::new(HashMap::default()) }
    }

    fn handle(&self, key: HandleKey, make: impl FnOnce() -> Handle) -> Option<Handle> {
        if let Some(h) = self.handles.read().ok().and_then(|m| m.get(&key).cloned()) {
            return Some(h);
        }
        let h = make();
        if let Ok(mut m) = self.handles.write() {
            m.insert(key, h.clone());
        }
        Some(h)
    }

    fn counter(&self, key: HandleKey, make: impl FnOnce() -> metrics::Counter) -> Option<metrics::Counter> {
        match self.handle(key, || Handle::Counter(make()))? {
            Handle::Counter(c) => Some(c),
            Handle::Histogram(_) => None,
        }
    }

    fn histogram(&self, key: HandleKey, make: impl FnOnce() -> Arc<Histogram>) -> Option<Arc<Histogram>> {
        match self.handle(key, || Handle::Histogram(make()))? {
            Handle::Histogram(h) => Some(h),
            Handle::Counter(_) => None,
        }
    }
}

const TYPES: [&str; 4] = ["unary", "client_stream", "server_stream", "bidi_stream"];

impl MethodInfo {
    fn learned(&self) -> &'static str {
        match self.learned_type.load(Ordering::Relaxed) {
            0 => "unknown",
            n => TYPES.get(usize::from(n) - 1).copied().unwrap_or("unknown"),
        }
    }
    fn learn(&self, t: &'static str) {
        if let Some(i) = TYPES.iter().position(|x| *x == t) {
            self.learned_type.store(i as u8 + 1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
pub struct MethodTable {
    methods: RwLock<HashMap<Box<str>, Arc<MethodInfo>>>,
}

impl MethodTable {
    pub fn get(&self, path: &str) -> Arc<MethodInfo> {
        if let Ok(map) = self.methods.read()
            && let Some(info) = map.get(path)
        {
            return info.clone();
        }
        let (service, method) = match strait_routing::RequestView::grpc_method(&strait_routing::RequestView {
            path,
            headers: &http::HeaderMap::new(),
        }) {
            Some((s, m)) => (s.to_owned(), m.to_owned()),
            None => ("unknown".to_owned(), "unknown".to_owned()),
        };
        let Ok(mut map) = self.methods.write() else {
            return Arc::new(MethodInfo::new(service.into(), method.into()));
        };
        if map.len() >= MAX_METHODS {
            let other = map
                .entry("<other>".into())
                .or_insert_with(|| Arc::new(MethodInfo::new("other".into(), "other".into())));
            return other.clone();
        }
        map.entry(path.into()).or_insert_with(|| Arc::new(MethodInfo::new(service.into(), method.into()))).clone()
    }
}

/// The per-route metric handles of one (rule, backend, parent Service port).
pub struct RouteHandles {
    labels: [SharedString; 4],
    requests: RwLock<HashMap<&'static str, metrics::Counter>>,
    duration: Arc<Histogram>,
}

impl RouteHandles {
    fn requests(&self, code: &'static str) -> metrics::Counter {
        if let Some(c) = self.requests.read().ok().and_then(|m| m.get(code).cloned()) {
            return c;
        }
        let [parent, route, rule, backend] = self.labels.clone();
        let c = metrics::counter!("strait_route_requests_total", "parent" => parent, "route" => route, "rule" => rule, "backend" => backend, "grpc_code" => code);
        if let Ok(mut m) = self.requests.write() {
            m.insert(code, c.clone());
        }
        c
    }
}

type RouteKey = (usize, usize, u16);
/// A cached entry: the pinned rule, the parent Service, its handles.
type RouteEntry = (Arc<strait_routing::Rule>, strait_routing::ServiceKey, Arc<RouteHandles>);

/// Route metric handles, built once per (rule, backend, parent) instead of formatting
/// four label strings and looking them up in the recorder on every request. Entries
/// hold their `Rule` so a pointer key is never reused while cached; the cache is
/// cleared whenever a new configuration is published.
#[derive(Default)]
pub struct RouteMetricsCache {
    entries: RwLock<HashMap<RouteKey, Vec<RouteEntry>>>,
}

impl RouteMetricsCache {
    pub fn get(&self, r: &crate::proxy::Routed) -> Arc<RouteHandles> {
        let key = (Arc::as_ptr(&r.rule) as usize, r.backend, r.parent_port);
        if let Ok(m) = self.entries.read()
            && let Some(found) = m.get(&key).and_then(|v| v.iter().find(|(_, p, _)| *p == r.parent_key))
        {
            return found.2.clone();
        }
        let b = r.backend();
        let labels: [SharedString; 4] = [
            format!("{}:{}", r.parent_key, r.parent_port).into(),
            r.rule.route.as_ref().map_or_else(|| "default".to_owned(), |x| x.to_string()).into(),
            r.rule.rule_name.clone().unwrap_or_else(|| r.rule.rule_index.to_string()).into(),
            format!("{}:{}", b.service, b.port).into(),
        ];
        let [parent, route, rule, backend] = &labels;
        let duration = histogram::LATENCY.histogram(
            "strait_route_request_duration_seconds",
            &[
                ("parent", parent.as_ref()),
                ("route", route.as_ref()),
                ("rule", rule.as_ref()),
                ("backend", backend.as_ref()),
            ],
        );
        let handles = Arc::new(RouteHandles { labels, requests: RwLock::new(HashMap::default()), duration });
        if let Ok(mut m) = self.entries.write() {
            m.entry(key).or_default().push((r.rule.clone(), r.parent_key.clone(), handles.clone()));
        }
        handles
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.entries.write() {
            m.clear();
        }
    }
}

/// One call being measured; [`CallMetrics::finish`] records it.
pub struct CallMetrics {
    side: Side,
    method: Arc<MethodInfo>,
    start: Instant,
    route: Option<Arc<RouteHandles>>,
}

impl CallMetrics {
    pub fn start(side: Side, method: Arc<MethodInfo>) -> Self {
        let (started, _, _) = side.names();
        let grpc_type = method.learned();
        let key = HandleKey::Started { side: side as u8, grpc_type };
        if let Some(c) = method.counter(key, || {
            metrics::counter!(started, "grpc_type" => grpc_type, "grpc_service" => method.service.clone(), "grpc_method" => method.method.clone())
        }) {
            c.increment(1);
        }
        CallMetrics { side, method, start: Instant::now(), route: None }
    }

    pub fn set_route(&mut self, handles: Arc<RouteHandles>) {
        self.route = Some(handles);
    }

    /// Records a call that ended. A stream dropped before its end without a status
    /// counts as `Canceled`.
    pub fn finish(self, outcome: Outcome, request_messages: u32) {
        let code = match (outcome.grpc_status, outcome.completed) {
            (Some(c), _) => grpc::code_name(c),
            (None, false) => "Canceled",
            (None, true) => "Unknown",
        };
        let grpc_type = grpc::infer_type(request_messages, outcome.response_messages);
        self.method.learn(grpc_type);
        let elapsed = self.start.elapsed();
        let (_, handled, seconds) = self.side.names();
        let side = self.side as u8;
        let info = &self.method;
        if let Some(c) = info.counter(HandleKey::Handled { side, grpc_type, code }, || {
            metrics::counter!(handled, "grpc_type" => grpc_type, "grpc_service" => info.service.clone(), "grpc_method" => info.method.clone(), "grpc_code" => code)
        }) {
            c.increment(1);
        }
        if let Some(h) = info.histogram(HandleKey::Seconds { side, grpc_type }, || {
            histogram::LATENCY.histogram(
                seconds,
                &[
                    ("grpc_type", grpc_type),
                    ("grpc_service", info.service.as_ref()),
                    ("grpc_method", info.method.as_ref()),
                ],
            )
        }) {
            h.record(elapsed);
        }
        if let Some(r) = self.route {
            r.requests(code).increment(1);
            r.duration.record(elapsed);
        }
    }
}

/// Requests the proxy answered itself, by reason.
pub fn proxy_error(side: Side, reason: &'static str) {
    let side = match side {
        Side::Outbound => "outbound",
        Side::Inbound => "inbound",
    };
    metrics::counter!("strait_proxy_errors_total", "direction" => side, "reason" => reason).increment(1);
}
