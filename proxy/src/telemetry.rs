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
/// Longest `:path` given label values of its own. Real gRPC paths are a protobuf
/// package, service and method name (`/pkg.v1.Service/Method`, rarely over 100 bytes);
/// without this bound one key could be a whole header list (32 KiB), copied into every
/// series and every `/metrics` scrape.
const MAX_METHOD_PATH_LEN: usize = 256;
/// Bytes of method names the table keeps in all (each name is stored once and shared
/// by every series of the method). With [`MAX_METHOD_PATH_LEN`] and [`MAX_METHODS`]
/// this bounds the label text a peer can make the proxy hold and render.
const MAX_METHOD_TABLE_BYTES: usize = 128 * 1024;

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

/// The label values of each gRPC method seen, bounded in count and bytes: a path that
/// is no plausible gRPC method name, or that arrives once the table is full, is
/// counted as `other`.
#[derive(Default)]
pub struct MethodTable {
    methods: RwLock<MethodMap>,
}

#[derive(Default)]
struct MethodMap {
    /// Keyed by the `:path`; the key shares its bytes with the entry's labels.
    by_path: HashMap<Arc<str>, Arc<MethodInfo>>,
    /// Bytes of the keys in `by_path`.
    bytes: usize,
    other: Option<Arc<MethodInfo>>,
}

impl MethodMap {
    /// Whether `path` may get labels of its own without passing the count or byte
    /// bound (asked under the read lock first, then again under the write lock).
    fn has_room_for(&self, path: &str) -> bool {
        self.by_path.len() < MAX_METHODS && self.bytes + stored_bytes(path) <= MAX_METHOD_TABLE_BYTES
    }

    fn other(&mut self) -> Arc<MethodInfo> {
        self.other.get_or_insert_with(|| Arc::new(MethodInfo::new("other".into(), "other".into()))).clone()
    }
}

/// `(service, method)` of a path shaped like a gRPC method of bounded length:
/// `/` service `/` method, the service a dotted name and the method an identifier
/// (protobuf's rules, so every real gRPC method qualifies).
pub fn plausible_grpc_method(path: &str) -> Option<(&str, &str)> {
    if path.len() > MAX_METHOD_PATH_LEN {
        return None;
    }
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let identifier = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !identifier(method) || !service.split('.').all(identifier) {
        return None;
    }
    Some((service, method))
}

/// Bytes kept for one method: its path as the key, plus the service and method labels.
fn stored_bytes(path: &str) -> usize {
    2 * path.len()
}

impl MethodTable {
    pub fn get(&self, path: &str) -> Arc<MethodInfo> {
        if let Ok(map) = self.methods.read() {
            if let Some(info) = map.by_path.get(path) {
                return info.clone();
            }
            if let Some(other) = &map.other
                && (plausible_grpc_method(path).is_none() || !map.has_room_for(path))
            {
                return other.clone();
            }
        }
        let Ok(mut map) = self.methods.write() else {
            return Arc::new(MethodInfo::new("other".into(), "other".into()));
        };
        if let Some(info) = map.by_path.get(path) {
            return info.clone();
        }
        let Some((service, method)) = plausible_grpc_method(path) else {
            return map.other();
        };
        if !map.has_room_for(path) {
            return map.other();
        }
        // Each name is stored once: every series of the method clones the `Arc`, not the
        // text.
        let key: Arc<str> = Arc::from(path);
        let (service, method): (Arc<str>, Arc<str>) = (Arc::from(service), Arc::from(method));
        let info = Arc::new(MethodInfo::new(SharedString::from_shared(service), SharedString::from_shared(method)));
        map.bytes += stored_bytes(path);
        map.by_path.insert(key, info.clone());
        info
    }

    /// Methods with label values of their own, and the bytes of their names.
    pub fn usage(&self) -> (usize, usize) {
        self.methods.read().map(|m| (m.by_path.len(), m.bytes)).unwrap_or_default()
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

/// Mirrored calls cut off before completing, by reason (`deadline`: still running at
/// the mirror deadline; `reset`: the mirror's stream failed or was reset, e.g. because
/// it fell behind the caller or the caller cancelled).
pub fn mirror_failed(error: &crate::upstream::MirrorError) {
    let reason = match error {
        crate::upstream::MirrorError::Deadline(_) => "deadline",
        crate::upstream::MirrorError::H2(_) => "reset",
    };
    metrics::counter!("strait_mirror_failures_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plausible_grpc_paths_are_methods() {
        assert_eq!(plausible_grpc_method("/pkg.v1.Echo/Unary"), Some(("pkg.v1.Echo", "Unary")));
        assert_eq!(plausible_grpc_method("/Greeter/Say_Hello2"), Some(("Greeter", "Say_Hello2")));
        for bad in ["", "/", "/a", "//m", "/s/", "/s/m/x", "/a..b/m", "/.a/m", "/s/m?q=1", "/s p/m", "/s/m\u{e9}"] {
            assert_eq!(plausible_grpc_method(bad), None, "{bad:?}");
        }
        let long = format!("/pkg.Service/{}", "M".repeat(MAX_METHOD_PATH_LEN));
        assert_eq!(plausible_grpc_method(&long), None, "over the length bound");
    }

    #[test]
    fn hostile_paths_share_one_other_entry_and_bytes_stay_bounded() {
        let table = MethodTable::default();
        let real = table.get("/pkg.v1.Echo/Unary");
        assert_eq!((real.service.as_ref(), real.method.as_ref()), ("pkg.v1.Echo", "Unary"));
        assert!(Arc::ptr_eq(&real, &table.get("/pkg.v1.Echo/Unary")), "one entry per method");
        // A 30 KB path is no method name: `other`, and nothing of it is kept.
        let huge = format!("/pkg.Service/{}", "A".repeat(30_000));
        let other = table.get(&huge);
        assert_eq!((other.service.as_ref(), other.method.as_ref()), ("other", "other"));
        assert_eq!(table.usage().0, 1);
        // Many distinct plausible names of the longest admitted length: the table stops at
        // its byte budget (well before the count limit) and the rest are `other`.
        let name = |i: usize| format!("/pkg.S{i:05}/{}", "m".repeat(MAX_METHOD_PATH_LEN - 12));
        assert_eq!(name(0).len(), MAX_METHOD_PATH_LEN);
        for i in 0..MAX_METHODS {
            table.get(&name(i));
        }
        let (count, bytes) = table.usage();
        assert!(bytes <= MAX_METHOD_TABLE_BYTES, "{bytes} bytes kept");
        assert!(count < MAX_METHODS, "the byte budget binds first: {count} methods");
        let late = table.get(&name(MAX_METHODS - 1));
        assert!(Arc::ptr_eq(&late, &other), "a method past the budget is `other`");
        assert_eq!(table.usage(), (count, bytes), "nothing more is stored");
    }

    #[test]
    fn method_count_is_capped_for_short_names() {
        let table = MethodTable::default();
        for i in 0..MAX_METHODS + 10 {
            table.get(&format!("/p.S/M{i}"));
        }
        assert_eq!(table.usage().0, MAX_METHODS);
        assert_eq!(table.get("/p.S/Mnew").method.as_ref(), "other");
    }
}
