//! Metrics, named as gRPC users already alert on them (go-grpc-prometheus
//! conventions), plus Strait's per-route counters. Rendered by the admin endpoint.
use crate::body::Outcome;
use crate::grpc;
use metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Latency buckets (seconds): sub-millisecond to tens of seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Distinct gRPC methods given their own label values; more become `other` so a caller
/// sending random paths cannot grow the metric set without bound.
const MAX_METHODS: usize = 2000;

/// Installs the global recorder; the handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()
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

/// Interned label values for one gRPC method, and the call type learnt from earlier calls.
pub struct MethodInfo {
    service: SharedString,
    method: SharedString,
    /// 0 = not yet seen; otherwise index+1 into TYPES.
    learned_type: AtomicU8,
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
            return Arc::new(MethodInfo {
                service: service.into(),
                method: method.into(),
                learned_type: AtomicU8::new(0),
            });
        };
        if map.len() >= MAX_METHODS {
            let other = map.entry("<other>".into()).or_insert_with(|| {
                Arc::new(MethodInfo { service: "other".into(), method: "other".into(), learned_type: AtomicU8::new(0) })
            });
            return other.clone();
        }
        map.entry(path.into())
            .or_insert_with(|| {
                Arc::new(MethodInfo { service: service.into(), method: method.into(), learned_type: AtomicU8::new(0) })
            })
            .clone()
    }
}

/// Route labels of an outbound call: parent Service port, route, rule, backend.
#[derive(Clone, Debug)]
pub struct RouteLabels {
    pub parent: SharedString,
    pub route: SharedString,
    pub rule: SharedString,
    pub backend: SharedString,
}

/// One call being measured; [`CallMetrics::finish`] records it.
pub struct CallMetrics {
    side: Side,
    method: Arc<MethodInfo>,
    start: Instant,
    route: Option<RouteLabels>,
}

impl CallMetrics {
    pub fn start(side: Side, method: Arc<MethodInfo>) -> Self {
        let (started, _, _) = side.names();
        metrics::counter!(started, "grpc_type" => method.learned(), "grpc_service" => method.service.clone(), "grpc_method" => method.method.clone()).increment(1);
        CallMetrics { side, method, start: Instant::now(), route: None }
    }

    pub fn set_route(&mut self, labels: RouteLabels) {
        self.route = Some(labels);
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
        let elapsed = self.start.elapsed().as_secs_f64();
        let (_, handled, seconds) = self.side.names();
        let (svc, m) = (self.method.service.clone(), self.method.method.clone());
        metrics::counter!(handled, "grpc_type" => grpc_type, "grpc_service" => svc.clone(), "grpc_method" => m.clone(), "grpc_code" => code).increment(1);
        metrics::histogram!(seconds, "grpc_type" => grpc_type, "grpc_service" => svc, "grpc_method" => m)
            .record(elapsed);
        if let Some(r) = self.route {
            metrics::counter!("strait_route_requests_total", "parent" => r.parent.clone(), "route" => r.route.clone(), "rule" => r.rule.clone(), "backend" => r.backend.clone(), "grpc_code" => code).increment(1);
            metrics::histogram!("strait_route_request_duration_seconds", "parent" => r.parent, "route" => r.route, "rule" => r.rule, "backend" => r.backend).record(elapsed);
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
