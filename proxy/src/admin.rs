//! The admin endpoint: route dump, route query, metrics, readiness, liveness.
use crate::proxy::{Proxy, describe_rule};
use crate::state::SharedState;
use axum::Router;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use strait_routing::{RequestView, parse_authority};

#[derive(Clone)]
pub struct AdminState {
    pub shared: Arc<SharedState>,
    pub proxy: Arc<Proxy>,
    pub metrics: PrometheusHandle,
}

/// Everything, for the loopback admin listener.
pub fn router(state: AdminState) -> Router {
    probes(state.clone()).route("/routes", get(routes)).route("/routes/query", get(query)).with_state(state)
}

/// Only what may be exposed off the pod: readiness, liveness, metrics.
pub fn probe_router(state: AdminState) -> Router {
    probes(state.clone()).with_state(state)
}

fn probes(_state: AdminState) -> Router<AdminState> {
    Router::new().route("/ready", get(ready)).route("/live", get(|| async { "live\n" })).route("/metrics", get(metrics))
}

async fn ready(State(s): State<AdminState>) -> Response {
    if s.shared.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: initial configuration not loaded\n").into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::render(&s.metrics))
        .into_response()
}

/// Configuration dumps never leave the pod, even if --admin-addr is widened by mistake.
fn loopback_only(peer: SocketAddr) -> Option<Response> {
    if peer.ip().is_loopback() {
        None
    } else {
        Some((StatusCode::FORBIDDEN, "this admin endpoint answers only on loopback\n").into_response())
    }
}

async fn routes(State(s): State<AdminState>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if let Some(denied) = loopback_only(peer) {
        return denied;
    }
    let g = s.shared.load();
    let body = json!({
        "version": g.version,
        "namespace": s.proxy.namespace,
        "updatedAt": g.updated_at.map(|t| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)),
        "sourceErrors": g.source_errors,
        "routing": g.routing,
    });
    Json(body).into_response()
}

/// `/routes/query?authority=svc.ns:port&path=/pkg.Svc/Method&header=name:value&namespace=ns`
/// answers which table, rule and backends a request would get.
async fn query(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
) -> Response {
    if let Some(denied) = loopback_only(peer) {
        return denied;
    }
    let params = parse_query(q.as_deref().unwrap_or(""));
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(authority) = get("authority") else {
        return bad("authority is required, e.g. ?authority=user-service.app:50051&path=/user.v1.UserService/GetUser");
    };
    let path = get("path").unwrap_or("/");
    let namespace = get("namespace").unwrap_or(&s.proxy.namespace).to_owned();
    let mut headers = http::HeaderMap::new();
    for (_, v) in params.iter().filter(|(k, _)| k == "header") {
        let Some((name, value)) = v.split_once(':') else {
            return bad(&format!("header {v:?} must be name:value"));
        };
        let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name.trim().as_bytes()), http::HeaderValue::from_str(value.trim()))
        else {
            return bad(&format!("header {v:?} is not a valid HTTP header"));
        };
        headers.append(name, value);
    }
    let g = s.shared.load();
    let dest = match parse_authority(authority, &namespace, &s.proxy.cluster_domain) {
        Ok(d) => d,
        Err(e) => return bad(&e.to_string()),
    };
    let port = match g.routing.lookup(&dest) {
        Ok(p) => p,
        Err(e) => {
            return Json(json!({"destination": dest, "result": "UNAVAILABLE", "reason": e.to_string()}))
                .into_response();
        }
    };
    let table = port.table_for(&namespace);
    let view = RequestView { path, headers: &headers };
    let result: Value = match table.route(&view) {
        None => json!({"result": "UNIMPLEMENTED", "reason": "no rule matches"}),
        Some(entry) => {
            let shares = entry.rule.shares();
            let backends: Vec<Value> = entry
                .rule
                .backends
                .iter()
                .zip(shares)
                .map(|(b, share)| json!({"service": b.service, "port": b.port, "weight": b.weight, "share": share, "target": b.target}))
                .collect();
            json!({
                "result": "ROUTED",
                "rule": describe_rule(&entry.rule),
                "matchIndex": entry.match_index,
                "match": entry.matcher,
                "backends": backends,
                "requestHeaderModifier": entry.rule.request_header_modifier,
                "responseHeaderModifier": entry.rule.response_header_modifier,
                "mirrors": entry.rule.mirrors,
            })
        }
    };
    Json(json!({"destination": dest, "clientNamespace": namespace, "table": table.origin, "port": port.port, "decision": result})).into_response()
}

fn bad(msg: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg}))).into_response()
}

/// Query strings with repeated keys (`header=` may repeat).
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_dumps_are_loopback_only() {
        assert!(loopback_only("127.0.0.1:5000".parse().expect("addr")).is_none());
        assert!(loopback_only("[::1]:5000".parse().expect("addr")).is_none());
        let denied = loopback_only("10.1.2.3:5000".parse().expect("addr")).expect("denied");
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn query_parsing() {
        let q = parse_query("authority=a.b%3A80&header=x-a%3A1&header=x-b:2&path=/p.S/M&flag");
        assert_eq!(q[0], ("authority".into(), "a.b:80".into()));
        assert_eq!(q[1], ("header".into(), "x-a:1".into()));
        assert_eq!(q[2], ("header".into(), "x-b:2".into()));
        assert_eq!(q[4], ("flag".into(), "".into()));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%41%e2%82%ac"), "A€");
    }
}
