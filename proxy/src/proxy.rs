//! The request path: route, filter, balance and forward one request.
use crate::body::{self, CallerBody, ObservedBody, Outcome, ProxyBody, RefusedMessage, RequestBody};
use crate::grpc::{self, Code};
use crate::h2io::H2Body;
use crate::pool::{MAX_CONNECT_ATTEMPTS, Pool, Upstream};
use crate::state::SharedState;
use crate::telemetry::{self, CallMetrics, MethodTable, Side};
use crate::upstream::{self, SendError};
use http::{Request, Response, Uri};
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use strait_routing::{
    Backend, BackendTarget, LookupError, RequestView, RoutingState, Rule, ServiceKey, with_authority,
};

/// Longest a mirrored call may take (connect, request, response), unless the caller's
/// grpc-timeout is shorter: a mirror is a copy nobody waits for, and a stalled one
/// (a server stream, a mirror that stopped reading) must not hold a task and its
/// buffers for the life of the call. Cut off at the deadline, its stream is reset.
pub const MIRROR_DEADLINE: Duration = Duration::from_secs(10);

fn mirror_deadline(grpc_timeout: Option<Duration>) -> Duration {
    grpc_timeout.map_or(MIRROR_DEADLINE, |t| t.min(MIRROR_DEADLINE))
}

pub struct Proxy {
    pub shared: Arc<SharedState>,
    /// Kubernetes mode: endpoints are watched on demand, per Service called.
    pub demand: Option<Arc<crate::kube_source::KubeSource>>,
    pub pool: Arc<Pool>,
    pub methods: MethodTable,
    pub namespace: String,
    pub cluster_domain: String,
    pub inbound_app_addr: SocketAddr,
    pub retry_budget: crate::retry::RetryBudget,
    pub route_metrics: telemetry::RouteMetricsCache,
    /// Longest gRPC request message forwarded (`--max-grpc-message-bytes`).
    pub max_grpc_message_bytes: u32,
}

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub reason: &'static str,
    pub message: String,
}

fn refuse(code: Code, reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { code, reason, message: message.into() }
}

/// Where routing sent a request.
pub struct Routed {
    pub rule: Arc<Rule>,
    pub backend: usize,
    pub parent_key: ServiceKey,
    pub parent_port: u16,
}

impl Routed {
    /// Services whose endpoints this rule can send to (backends and mirrors).
    pub fn services(&self) -> Vec<ServiceKey> {
        let mut keys: Vec<ServiceKey> = Vec::new();
        let mirrors = self.rule.mirrors.iter().chain(self.rule.backends.iter().flat_map(|b| b.mirrors.iter()));
        for b in self.rule.backends.iter().chain(mirrors.map(|m| &m.backend)) {
            if b.endpoints().is_some() && !keys.contains(&b.service) {
                keys.push(b.service.clone());
            }
        }
        keys
    }

    pub fn backend(&self) -> &Backend {
        &self.rule.backends[self.backend]
    }
}

/// Where `forward` may send a request.
enum Destination<'a> {
    /// A backend's endpoints, balanced.
    Endpoints(&'a strait_routing::EndpointSet),
    /// One fixed address (the pod's application, a passthrough destination): no
    /// endpoint set is built for it per request.
    Address(SocketAddr),
}

/// How an outbound request names its destination.
#[derive(Clone, Debug)]
pub enum OutboundTarget {
    /// Explicit mode: the `:authority` names the Service.
    Authority,
    /// Transparent mode: the original destination was this Service's ClusterIP and port
    /// (GAMMA routes by ClusterIP, not Host).
    Service { service: ServiceKey, port: u16 },
    /// Transparent mode: the original destination is no Service (a pod IP, an external
    /// address): forwarded untouched.
    Passthrough(SocketAddr),
}

impl Proxy {
    /// Routes a request to a Service; pure apart from the random draw.
    pub fn route(
        &self,
        state: &RoutingState,
        target: &OutboundTarget,
        authority: Option<&str>,
        req: &RequestView<'_>,
        random: u64,
    ) -> Result<Routed, Refusal> {
        let lookup_error = |e: LookupError| {
            let reason = match e {
                LookupError::UnknownService(_) => "unknown_service",
                LookupError::UnknownPort { .. } => "unknown_port",
                LookupError::AmbiguousPort(_) => "ambiguous_port",
            };
            refuse(Code::Unavailable, reason, e.to_string())
        };
        // Borrowed all the way: naming and finding the Service allocates nothing.
        let port = match target {
            OutboundTarget::Service { service, port } => {
                state.lookup_parts(&service.namespace, &service.name, Some(*port)).map_err(lookup_error)?
            }
            _ => {
                let authority = authority.ok_or_else(|| {
                    refuse(Code::Unavailable, "no_authority", "request has no :authority naming a Service")
                })?;
                with_authority(authority, &self.namespace, &self.cluster_domain, |namespace, name, port| {
                    state.lookup_parts(namespace, name, port)
                })
                .map_err(|e| refuse(Code::Unavailable, "bad_authority", e.to_string()))?
                .map_err(lookup_error)?
            }
        };
        let parent = || format!("{}:{}", port.service, port.port);
        let table = port.table_for(&self.namespace);
        let entry = table.route(req).ok_or_else(|| {
            refuse(Code::Unimplemented, "no_route", format!("no GRPCRoute rule for {} matches {}", parent(), req.path))
        })?;
        let rule = entry.rule.clone();
        let backend = rule.pick_backend_index(random).ok_or_else(|| {
            refuse(
                Code::Unavailable,
                "no_backend",
                format!("rule {} of {} has no backend with weight", describe_rule(&rule), parent()),
            )
        })?;
        Ok(Routed { rule, backend, parent_key: port.service.clone(), parent_port: port.port })
    }

    /// Explicit outbound: the destination Service is named by `:authority`. Not an
    /// `async fn` wrapping `outbound_to`: that would add a second copy of the request to
    /// every call's future.
    pub fn outbound<B: CallerBody>(
        self: Arc<Self>,
        req: Request<B>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send {
        self.outbound_to(req, OutboundTarget::Authority)
    }

    pub async fn outbound_to<B: CallerBody>(
        self: Arc<Self>,
        req: Request<B>,
        target: OutboundTarget,
    ) -> Result<Response<ProxyBody>, Infallible> {
        if let OutboundTarget::Passthrough(addr) = target {
            // Boxed: passthrough is the rare path, and its future would double this one's size.
            return Box::pin(self.forward_to(Side::Outbound, req, addr)).await;
        }
        let is_grpc = grpc::is_grpc(req.headers());
        let mut call = CallMetrics::start(Side::Outbound, self.methods.get(req.uri().path()));
        let authority = request_authority(&req);
        let route_now = |generation: &crate::state::Generation| {
            let view = RequestView { path: req.uri().path(), headers: req.headers() };
            self.route(
                &generation.routing,
                &target,
                authority.as_ref().map(RequestAuthority::as_str),
                &view,
                fastrand::u64(..),
            )
        };
        let mut routed = route_now(&self.shared.load());
        if let (Some(kube), Ok(r)) = (&self.demand, &routed) {
            // First call to these Services from this pod: watch their endpoints, wait
            // for the list, then route on the state that includes them.
            let keys = r.services();
            if !kube.endpoints_ready(&keys.iter().collect::<Vec<_>>()) {
                Box::pin(kube.demand(&keys, &self.shared)).await;
                routed = route_now(&self.shared.load());
            }
        }
        let routed = match routed {
            Ok(r) => r,
            Err(refusal) => return Ok(self.refused(Side::Outbound, is_grpc, call, refusal)),
        };
        let backend = routed.backend();
        call.set_route(self.route_metrics.get(&routed));
        let (mut parts, incoming) = req.into_parts();
        if let Some(f) = &routed.rule.request_header_modifier {
            f.apply(&mut parts.headers);
        }
        if let Some(f) = &backend.request_header_modifier {
            f.apply(&mut parts.headers);
        }
        let endpoints = match &backend.target {
            BackendTarget::Endpoints(set) => set.clone(),
            BackendTarget::Unavailable { reason } => {
                let msg = format!("backend {}:{} is unavailable: {reason}", backend.service, backend.port);
                return Ok(self.refused(
                    Side::Outbound,
                    is_grpc,
                    call,
                    refuse(Code::Unavailable, "backend_unresolved", msg),
                ));
            }
        };
        if let Err(uri_err) = absolute_uri(&mut parts.uri, authority.as_ref().map(RequestAuthority::as_str)) {
            return Ok(self.refused(Side::Outbound, is_grpc, call, refuse(Code::Internal, "bad_uri", uri_err)));
        }
        let request_messages = Arc::new(AtomicU32::new(0));
        let refused_message = RefusedMessage::default();
        let mut body = self.request_body(is_grpc, incoming, request_messages.clone(), &refused_message);
        for mirror in routed.rule.mirrors.iter().chain(backend.mirrors.iter()) {
            if mirror.should_mirror(fastrand::u32(..))
                && let Some(set) = mirror.backend.endpoints()
                && let Some(u) = self.pool.pick(set, None)
            {
                let copy = body.add_mirror();
                let mut req = Request::from_parts(clone_parts(&parts), body::boxed(copy));
                *req.version_mut() = http::Version::HTTP_2;
                let deadline = mirror_deadline(parts.headers.get(grpc::GRPC_TIMEOUT).and_then(grpc::parse_timeout));
                tokio::spawn(send_mirror(self.pool.clone(), u, req, deadline));
            }
        }
        let deadline = parts.headers.get(grpc::GRPC_TIMEOUT).and_then(grpc::parse_timeout);
        let req = Request::from_parts(parts, body::boxed(body));
        let forwarded = self.forward(Side::Outbound, req, Destination::Endpoints(&endpoints), deadline).await;
        match forwarded {
            Ok((mut resp, guard)) => {
                if let Some(f) = &routed.rule.response_header_modifier {
                    f.apply(resp.headers_mut());
                }
                if let Some(f) = &routed.backend().response_header_modifier {
                    f.apply(resp.headers_mut());
                }
                Ok(observe(resp, call, request_messages, guard, refused_message))
            }
            Err(refusal) => {
                Ok(self.refused(Side::Outbound, is_grpc, call, or_message_too_large(refusal, &refused_message)))
            }
        }
    }

    /// The caller's request body, counted; a gRPC body also limited to
    /// `--max-grpc-message-bytes` per message (a refusal lands in `refused`).
    fn request_body<B: http_body::Body>(
        &self,
        is_grpc: bool,
        incoming: B,
        messages: Arc<AtomicU32>,
        refused: &RefusedMessage,
    ) -> RequestBody<B> {
        let body = RequestBody::new(incoming, messages);
        if is_grpc { body.limit_messages(self.max_grpc_message_bytes, refused.clone()) } else { body }
    }

    /// Explicit inbound: everything goes to `--inbound-app-addr`.
    pub async fn inbound<B: CallerBody>(self: Arc<Self>, req: Request<B>) -> Result<Response<ProxyBody>, Infallible> {
        let app = self.inbound_app_addr;
        self.forward_to(Side::Inbound, req, app).await
    }

    /// Forwards to one fixed address (the application, or an outbound destination
    /// that is no Service), with metrics but no routing.
    pub async fn forward_to<B: CallerBody>(
        self: Arc<Self>,
        side: Side,
        req: Request<B>,
        addr: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let is_grpc = grpc::is_grpc(req.headers());
        let call = CallMetrics::start(side, self.methods.get(req.uri().path()));
        let authority = request_authority(&req);
        let (mut parts, incoming) = req.into_parts();
        // The address names the destination only when the request does not.
        let fallback_authority;
        let authority = match &authority {
            Some(a) => a.as_str(),
            None => {
                fallback_authority = addr.to_string();
                &fallback_authority
            }
        };
        if let Err(e) = absolute_uri(&mut parts.uri, Some(authority)) {
            return Ok(self.refused(side, is_grpc, call, refuse(Code::Internal, "bad_uri", e)));
        }
        let deadline = parts.headers.get(grpc::GRPC_TIMEOUT).and_then(grpc::parse_timeout);
        let request_messages = Arc::new(AtomicU32::new(0));
        let refused_message = RefusedMessage::default();
        let body = self.request_body(is_grpc, incoming, request_messages.clone(), &refused_message);
        let req = Request::from_parts(parts, body::boxed(body));
        match self.forward(side, req, Destination::Address(addr), deadline).await {
            Ok((resp, guard)) => Ok(observe(resp, call, request_messages, guard, refused_message)),
            Err(refusal) => Ok(self.refused(side, is_grpc, call, or_message_too_large(refusal, &refused_message))),
        }
    }

    /// Sends to one endpoint of `endpoints`, moving on to another when connecting fails
    /// (the request has not left the proxy then, so this never duplicates a call).
    async fn forward(
        &self,
        side: Side,
        mut req: Request<ProxyBody>,
        destination: Destination<'_>,
        deadline: Option<Duration>,
    ) -> Result<(Response<H2Body>, crate::pool::PendingGuard), Refusal> {
        let started = Instant::now();
        self.retry_budget.deposit(started);
        // Endpoints this request failed to connect to (allocated only on failure).
        let mut tried: Vec<SocketAddr> = Vec::new();
        // Built only on failure: the success path allocates no message.
        let mut last_error: std::borrow::Cow<'static, str> = "no endpoints".into();
        for attempt in 0.. {
            let picked = match &destination {
                Destination::Address(addr) => {
                    (attempt < MAX_CONNECT_ATTEMPTS && !tried.contains(addr)).then(|| self.pool.upstream(*addr))
                }
                Destination::Endpoints(set) => self.pool.pick_attempt(set, attempt, &tried),
            };
            let Some(upstream) = picked else {
                break;
            };
            // Past the usual attempts only while connecting has been quick (refusals).
            if attempt >= MAX_CONNECT_ATTEMPTS && started.elapsed() >= self.pool.connect_search_limit() {
                break;
            }
            if attempt > 0 && !self.retry_budget.try_withdraw(Instant::now()) {
                telemetry::proxy_error(side, "retry_budget_exhausted");
                last_error = format!("{last_error} (retry budget exhausted)").into();
                break;
            }
            let guard = self.pool.start_request(&upstream);
            // Connecting is rare and its future is large (TCP connect + HTTP/2
            // handshake): boxed on that path only, so every request's future stays small
            // (a per-request future over glibc's 1 KiB thread-cache limit took the slow
            // malloc path, with fastbin consolidation, on every call).
            let ready = self.pool.ready_sender(&upstream);
            let waited = ready.is_none() || attempt > 0;
            let connected = match ready {
                Some(s) => Ok(s),
                None => Box::pin(self.pool.sender(&upstream)).await,
            };
            let sender = match connected {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(endpoint = %upstream.addr, error = %e, "connect failed; endpoint backed off");
                    self.pool.mark_failed(&upstream);
                    last_error = e.to_string().into();
                    tried.push(upstream.addr);
                    continue;
                }
            };
            // Latency samples exclude connection setup: they measure the endpoint. On the
            // usual path nothing has waited since `started` (a clock read saved per call).
            let sent_at = if waited { Instant::now() } else { started };
            let sent = upstream::send_request(sender, req);
            let deadline_passed = |d: Duration| {
                refuse(
                    Code::DeadlineExceeded,
                    "deadline",
                    format!("no response from {} within grpc-timeout {d:?}", upstream.addr),
                )
            };
            let result = match deadline {
                Some(d) => match tokio::time::timeout(d.saturating_sub(started.elapsed()), sent).await {
                    Ok(r) => r,
                    Err(_) => return Err(deadline_passed(d)),
                },
                None => sent.await,
            };
            // An answer that arrives after the deadline (typically the upstream
            // enforcing the same grpc-timeout, counted from a moment later than the
            // proxy's clock, within the same timer tick) is not what the caller is owed:
            // its deadline has passed, as its own gRPC library would conclude.
            if result.is_ok()
                && let Some(d) = deadline.filter(|d| started.elapsed() >= *d)
            {
                return Err(deadline_passed(d));
            }
            match result {
                Ok(resp) => {
                    self.pool.observe_rtt(&upstream, sent_at.elapsed());
                    return Ok((resp, guard));
                }
                Err(SendError::Unsent { req: unsent, error }) => {
                    req = *unsent;
                    last_error = format!("{}: {error}", upstream.addr).into();
                    if error.is_go_away() && error.is_remote() {
                        // The endpoint is closing this connection gracefully (a restart, a
                        // connection age limit): it is not failing, a new connection will do.
                        self.pool.forget_connection(&upstream);
                    } else {
                        // The connection died before our request was written.
                        self.pool.mark_failed(&upstream);
                        tried.push(upstream.addr);
                    }
                }
                Err(SendError::Failed(err)) => {
                    let msg = format!("upstream {} failed: {err}", upstream.addr);
                    tracing::debug!(error = %msg, "forward failed");
                    return Err(refuse(Code::Unavailable, "upstream_error", msg));
                }
            }
        }
        let what = match side {
            Side::Outbound => "no reachable endpoint",
            Side::Inbound => "application unreachable",
        };
        Err(refuse(Code::Unavailable, "no_endpoint", format!("{what}: {last_error}")))
    }

    fn refused(&self, side: Side, is_grpc: bool, call: CallMetrics, r: Refusal) -> Response<ProxyBody> {
        tracing::debug!(reason = r.reason, code = r.code as u8, message = %r.message, "request refused by proxy");
        telemetry::proxy_error(side, r.reason);
        call.finish(Outcome { grpc_status: Some(r.code as u32), response_messages: 0, completed: true }, 0);
        grpc::error_response(is_grpc, r.code, &r.message)
    }

    /// Upkeep after a configuration change (and periodically): drops pooled endpoints no
    /// table names once they are idle (see [`Pool::retain`]). Destinations outside the
    /// tables — the application behind a transparent inbound redirect, passthrough
    /// destinations — keep their connections while in use: in Kubernetes mode a
    /// change anywhere in the cluster publishes, and closing the pod's connection to
    /// its application on each would fail or delay its calls.
    pub fn prune_pool(&self) {
        self.pool.retain(&self.live_endpoints());
    }

    /// Every endpoint address the current tables can send to (connection pool upkeep).
    pub fn live_endpoints(&self) -> HashSet<SocketAddr> {
        let g = self.shared.load();
        let mut live = HashSet::new();
        live.insert(self.inbound_app_addr);
        for svc in g.routing.services.values() {
            for port in &svc.ports {
                // The Service default table (built only when used) sends to these.
                live.extend(port.endpoints.endpoints.iter().map(|e| e.addr));
                for table in port.route_tables() {
                    for e in &table.entries {
                        let backends = e.rule.backends.iter().chain(e.rule.mirrors.iter().map(|m| &m.backend));
                        for b in backends {
                            for ep in b.endpoints().map(|s| s.endpoints.as_slice()).unwrap_or(&[]) {
                                live.insert(ep.addr);
                            }
                        }
                    }
                }
            }
        }
        live
    }
}

/// A request cut because of an oversized message is answered for that reason
/// (RESOURCE_EXHAUSTED), not for the upstream reset that cutting it caused.
fn or_message_too_large(refusal: Refusal, refused: &RefusedMessage) -> Refusal {
    match refused.get() {
        Some(too_large) => refuse(Code::ResourceExhausted, "message_too_large", too_large.to_string()),
        None => refusal,
    }
}

fn observe(
    resp: Response<H2Body>,
    call: CallMetrics,
    request_messages: Arc<AtomicU32>,
    guard: crate::pool::PendingGuard,
    refused_message: RefusedMessage,
) -> Response<ProxyBody> {
    let headers_status = grpc::status_of(resp.headers());
    let is_grpc = grpc::is_grpc(resp.headers());
    let (parts, incoming) = resp.into_parts();
    let body = ObservedBody::new(
        incoming,
        headers_status,
        Box::new(move |outcome| {
            drop(guard);
            call.finish(outcome, request_messages.load(Ordering::Relaxed));
        }),
    )
    .grpc(is_grpc)
    .refused_request(refused_message);
    Response::from_parts(parts, body::boxed(body))
}

async fn send_mirror(pool: Arc<Pool>, upstream: Arc<Upstream>, req: Request<ProxyBody>, deadline: Duration) {
    let _guard = pool.start_request(&upstream);
    let addr = upstream.addr;
    let sender = match tokio::time::timeout(deadline, pool.sender(&upstream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(mirror = %addr, error = %e, "mirror connect failed");
            return;
        }
        Err(_) => {
            tracing::debug!(mirror = %addr, ?deadline, "mirror connect outlived the mirror deadline");
            return;
        }
    };
    match upstream::send_mirror(sender, req, deadline).await {
        Ok(discarded) => tracing::trace!(mirror = %addr, discarded, "mirror completed"),
        Err(error) => {
            telemetry::mirror_failed(&error);
            tracing::debug!(mirror = %addr, %error, "mirror request did not complete")
        }
    }
}

/// A request's authority: the URI's (a shared-buffer clone), else the Host header's.
enum RequestAuthority {
    Uri(http::uri::Authority),
    Host(String),
}

impl RequestAuthority {
    fn as_str(&self) -> &str {
        match self {
            RequestAuthority::Uri(a) => a.as_str(),
            RequestAuthority::Host(h) => h,
        }
    }
}

fn request_authority<B>(req: &Request<B>) -> Option<RequestAuthority> {
    req.uri().authority().cloned().map(RequestAuthority::Uri).or_else(|| {
        let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
        Some(RequestAuthority::Host(host.to_owned()))
    })
}

/// The HTTP/2 client needs scheme and authority on the URI.
fn absolute_uri(uri: &mut Uri, authority: Option<&str>) -> Result<(), String> {
    if uri.scheme().is_some() && uri.authority().is_some() {
        return Ok(());
    }
    let authority = authority.ok_or("request has no authority")?;
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    *uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map_err(|e| format!("invalid request URI: {e}"))?;
    Ok(())
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.headers_mut() = p.headers.clone();
    *req.version_mut() = p.version;
    req.into_parts().0
}

pub fn describe_rule(rule: &Rule) -> String {
    match (&rule.route, &rule.rule_name) {
        (None, _) => "default".into(),
        (Some(r), Some(name)) => format!("{r}#{name}"),
        (Some(r), None) => format!("{r}#{}", rule.rule_index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;

    /// An HTTP/2 server answering every request with grpc-status 0; counts the TCP
    /// connections it accepted.
    async fn app() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else { return };
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        let mut head = http::Response::new(());
                        head.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
                        let Ok(mut send) = respond.send_response(head, false) else { continue };
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn proxy(inbound_app_addr: SocketAddr) -> Arc<Proxy> {
        use clap::Parser;
        let args = crate::config::Args::parse_from(["x", "--config-dir", "/tmp"]);
        Arc::new(Proxy {
            shared: crate::state::SharedState::new(),
            demand: None,
            pool: Pool::new(crate::pool::ClientConfig { connect_timeout: Duration::from_secs(2), h2: args.h2 }),
            methods: MethodTable::default(),
            namespace: "app".into(),
            cluster_domain: "cluster.local".into(),
            inbound_app_addr,
            retry_budget: crate::retry::RetryBudget::new(0.2, 10),
            route_metrics: telemetry::RouteMetricsCache::default(),
            max_grpc_message_bytes: args.max_grpc_message_bytes,
        })
    }

    /// Transparent inbound: the destination is the pod's IP and the app's port, which no
    /// routing table names. A configuration change elsewhere (here: publishes of a new
    /// generation, as every Service event in the cluster causes in Kubernetes mode)
    /// must not close the pod's connection to its app.
    #[tokio::test]
    async fn configuration_changes_under_load_open_no_new_connection_to_the_app() {
        let (app_addr, accepted) = app().await;
        // The explicit-mode app address is another port: the transparent destination is
        // not special-cased by it.
        let proxy = proxy(SocketAddr::from(([127, 0, 0, 1], 9)));
        let mut calls = Vec::new();
        for round in 0..20 {
            // A burst of calls in flight while the configuration changes.
            for _ in 0..5 {
                let p = proxy.clone();
                calls.push(tokio::spawn(async move {
                    let mut req = Request::new(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\0")));
                    *req.uri_mut() = "/pkg.App/Call".parse().expect("uri");
                    req.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
                    let resp = p.forward_to(Side::Inbound, req, app_addr).await.expect("infallible");
                    let body = resp.into_body().collect().await.expect("body");
                    body.trailers().and_then(grpc::status_of)
                }));
            }
            proxy.shared.publish(strait_routing::RoutingState::default(), Default::default());
            proxy.prune_pool();
            if round % 5 == 4 {
                for call in calls.drain(..) {
                    assert_eq!(call.await.expect("task"), Some(0), "every call answered");
                }
            }
        }
        for call in calls {
            assert_eq!(call.await.expect("task"), Some(0));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection to the app for 100 calls and 20 publishes");
    }
}
