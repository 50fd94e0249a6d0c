//! Snapshot → routing state and route status.
use crate::filters::{HeaderModifierFilter, MirrorFilter};
use crate::matching::{HeaderMatcher, MethodMatcher, Pattern, RequestMatcher};
use crate::model::*;
use crate::status::{Condition, ParentStatus, RouteStatus};
use http::header::{HeaderName, HeaderValue};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use strait_api::{
    EndpointSlice, GrpcBackendRef, GrpcRoute, GrpcRouteFilter, GrpcRouteMatch, HeaderModifier, MeshService,
    ParentReference, ReferenceGrant, Resources,
};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The CRD's maximum backend weight.
const MAX_WEIGHT: i32 = 1_000_000;

/// The resources routing is computed from, borrowed from wherever the caller keeps them.
#[derive(Clone, Debug, Default)]
pub struct Snapshot<'a> {
    pub services: Vec<&'a MeshService>,
    pub endpoint_slices: Vec<&'a EndpointSlice>,
    pub grpc_routes: Vec<&'a GrpcRoute>,
    pub reference_grants: Vec<&'a ReferenceGrant>,
}

impl<'a> Snapshot<'a> {
    pub fn from_resources(r: &'a Resources) -> Self {
        Snapshot {
            services: r.services.iter().collect(),
            endpoint_slices: r.endpoint_slices.iter().collect(),
            grpc_routes: r.grpc_routes.iter().collect(),
            reference_grants: r.reference_grants.iter().collect(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Require a ReferenceGrant for cross-namespace backendRefs. GEP-1294 does not in a
    /// mesh; some operators want it anyway.
    pub require_reference_grants: bool,
}

struct Ctx<'a> {
    services: BTreeMap<ServiceKey, &'a MeshService>,
    slices: HashMap<ServiceKey, Vec<&'a EndpointSlice>>,
    grants: &'a [&'a ReferenceGrant],
    opts: &'a CompileOptions,
    endpoint_cache: HashMap<(ServiceKey, u16), Arc<EndpointSet>>,
    /// One empty set shared by every Service port without endpoints (in Kubernetes mode,
    /// all Services this pod has not called yet).
    no_endpoints: Arc<EndpointSet>,
}

/// A compiled rule and its matches (`None` = the rule has no matches: all requests).
type RuleWithMatches = (Arc<Rule>, Option<Vec<RequestMatcher>>);

/// A route after validation: its rules compiled once and shared by every table it binds.
struct CompiledRoute {
    key: RouteRef,
    created: Option<k8s_openapi::jiff::Timestamp>,
    rules: Vec<RuleWithMatches>,
}

/// Compiles `snap` into routing tables and route statuses.
pub fn compile(snap: &Snapshot<'_>, opts: &CompileOptions) -> RoutingState {
    let mut ctx = Ctx {
        services: BTreeMap::new(),
        slices: HashMap::new(),
        grants: &snap.reference_grants,
        opts,
        endpoint_cache: HashMap::new(),
        no_endpoints: Arc::new(EndpointSet::default()),
    };
    for svc in &snap.services {
        if svc.name.is_empty() {
            continue;
        }
        ctx.services.insert(ServiceKey::new(svc.namespace.as_str(), svc.name.as_str()), svc);
    }
    for slice in &snap.endpoint_slices {
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        let Some(svc) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        ctx.slices.entry(ServiceKey::new(ns, svc.clone())).or_default().push(slice);
    }

    // Later duplicates of the same namespace/name replace earlier ones.
    let mut routes: BTreeMap<RouteRef, &GrpcRoute> = BTreeMap::new();
    for route in &snap.grpc_routes {
        if let Some(key) = route_ref(&route.metadata) {
            routes.insert(key, route);
        }
    }

    let mut statuses = Vec::new();
    let mut compiled: Vec<CompiledRoute> = Vec::new();
    // (service, port) -> indexes into `compiled`.
    let mut bindings: HashMap<(ServiceKey, u16), Vec<usize>> = HashMap::new();
    for (key, route) in &routes {
        let service_parents: Vec<&ParentReference> = route
            .spec
            .parent_refs
            .iter()
            .filter(|p| {
                p.group.as_deref().unwrap_or(GATEWAY_GROUP).is_empty()
                    && p.kind.as_deref().unwrap_or("Gateway") == "Service"
            })
            .collect();
        if service_parents.is_empty() {
            // Routes for Gateways belong to some other controller.
            continue;
        }
        let mut resolve_issues = Vec::new();
        let result = compile_route(&mut ctx, key, route, &mut resolve_issues);
        let resolved = match resolve_issues.into_iter().next() {
            None => Condition::ok("ResolvedRefs"),
            Some((reason, msg)) => Condition::failed(reason, msg),
        };
        let index = compiled.len();
        let mut parents = Vec::new();
        for parent in service_parents {
            let ns = parent.namespace.clone().unwrap_or_else(|| key.namespace.clone());
            let bound = bind_parent(&ctx, &ServiceKey::new(ns.clone(), parent.name.clone()), parent);
            let accepted = match (&result, &bound) {
                (Err(msg), _) => Condition::failed("UnsupportedValue", msg.clone()),
                (Ok(_), Err(msg)) => Condition::failed("NoMatchingParent", msg.clone()),
                (Ok(_), Ok(_)) => Condition::ok("Accepted"),
            };
            if let (Ok(_), Ok(ports)) = (&result, &bound) {
                for port in ports {
                    let list = bindings.entry((ServiceKey::new(ns.clone(), parent.name.clone()), *port)).or_default();
                    if !list.contains(&index) {
                        list.push(index);
                    }
                }
            }
            parents.push(ParentStatus {
                parent_ref: (*parent).clone(),
                service: ServiceKey::new(ns.clone(), parent.name.clone()),
                accepted,
                resolved_refs: resolved.clone(),
            });
        }
        statuses.push(RouteStatus { route: key.clone(), generation: route.metadata.generation, parents });
        compiled.push(CompiledRoute {
            key: key.clone(),
            created: route.metadata.creation_timestamp.as_ref().map(|t| t.0),
            rules: result.unwrap_or_default(),
        });
    }

    let mut state = RoutingState { route_statuses: statuses, ..RoutingState::default() };
    let keys: Vec<ServiceKey> = ctx.services.keys().cloned().collect();
    for key in keys {
        let Some(&svc) = ctx.services.get(&key) else { continue };
        // Exact capacity: a pushed-to Vec starts at 4 elements, and ~120-byte PortRoutes
        // times 4 for the usual one port was 4.8 MB per state at 10,000 Services.
        let mut ports = Vec::with_capacity(svc.ports.len());
        for strait_api::MeshServicePort { name: port_name, port } in svc.ports.iter().cloned() {
            let bound = bindings.get(&(key.clone(), port)).map(Vec::as_slice).unwrap_or(&[]);
            let (producers, consumers): (Vec<usize>, Vec<usize>) =
                bound.iter().partition(|i| *compiled[**i].key.namespace == *key.namespace);
            let endpoints = ctx.endpoints(&key, port_name.as_deref(), port);
            let producer =
                (!producers.is_empty()).then(|| Arc::new(build_table(TableOrigin::Producer, &producers, &compiled)));
            let mut by_ns: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for i in consumers {
                by_ns.entry(compiled[i].key.namespace.clone()).or_default().push(i);
            }
            let consumers = by_ns
                .into_iter()
                .map(|(ns, idx)| {
                    let table = build_table(TableOrigin::Consumer { namespace: ns.clone() }, &idx, &compiled);
                    (ns, Arc::new(table))
                })
                .collect();
            ports.push(PortRoutes {
                service: key.clone(),
                name: port_name,
                port,
                endpoints,
                producer,
                default_table: OnceLock::new(),
                consumers,
            });
        }
        for ip in &svc.cluster_ips {
            state.by_cluster_ip.insert(*ip, key.clone());
        }
        state.services.insert(key, ServiceRoutes { cluster_ips: svc.cluster_ips.clone(), ports });
    }
    state
}

fn route_ref(meta: &strait_api::ObjectMeta) -> Option<RouteRef> {
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    Some(RouteRef { namespace: meta.namespace.clone().unwrap_or_default(), name })
}

/// The Service ports a parentRef binds, or why it binds none (`NoMatchingParent`).
fn bind_parent(ctx: &Ctx<'_>, key: &ServiceKey, parent: &ParentReference) -> Result<Vec<u16>, String> {
    let svc = ctx.services.get(key).ok_or_else(|| format!("Service {key} not found"))?;
    let ports: Vec<u16> = svc
        .ports
        .iter()
        .filter(|p| {
            parent.port.is_none_or(|want| i32::from(p.port) == want)
                && parent.section_name.as_ref().is_none_or(|want| p.name.as_ref() == Some(want))
        })
        .map(|p| p.port)
        .collect();
    if ports.is_empty() {
        let mut what = Vec::new();
        if let Some(p) = parent.port {
            what.push(format!("port {p}"));
        }
        if let Some(s) = &parent.section_name {
            what.push(format!("port name {s:?}"));
        }
        if what.is_empty() {
            return Err(format!("Service {key} has no ports"));
        }
        return Err(format!("Service {key} has no {}", what.join(" with ")));
    }
    Ok(ports)
}

type Issues = Vec<(&'static str, String)>;

fn compile_route(
    ctx: &mut Ctx<'_>,
    key: &RouteRef,
    route: &GrpcRoute,
    issues: &mut Issues,
) -> Result<Vec<RuleWithMatches>, String> {
    let mut rules = Vec::new();
    for (rule_index, rule) in route.spec.rules.iter().enumerate() {
        let at = |msg: String| format!("rules[{rule_index}]: {msg}");
        let matchers = if rule.matches.is_empty() {
            None
        } else {
            Some(
                rule.matches
                    .iter()
                    .enumerate()
                    .map(|(i, m)| compile_match(m).map_err(|e| at(format!("matches[{i}]: {e}"))))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let filters = compile_filters(ctx, key, &rule.filters, issues).map_err(&at)?;
        let mut backends = Vec::new();
        for (i, b) in rule.backend_refs.iter().enumerate() {
            backends.push(compile_backend(ctx, key, b, issues).map_err(|e| at(format!("backendRefs[{i}]: {e}")))?);
        }
        let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
        rules.push((
            Arc::new(Rule {
                route: Some(key.clone()),
                rule_index,
                rule_name: rule.name.clone(),
                request_header_modifier: filters.request,
                response_header_modifier: filters.response,
                mirrors: filters.mirrors,
                backends,
                total_weight,
            }),
            matchers,
        ));
    }
    Ok(rules)
}

fn compile_match(m: &GrpcRouteMatch) -> Result<RequestMatcher, String> {
    let method = match &m.method {
        None => MethodMatcher::Any,
        Some(mm) => {
            let service = mm.service.clone().filter(|s| !s.is_empty());
            let method = mm.method.clone().filter(|s| !s.is_empty());
            if service.is_none() && method.is_none() {
                return Err("method match needs a service or a method".into());
            }
            match mm.match_type.as_deref().unwrap_or("Exact") {
                "Exact" => {
                    if let Some(s) = &service
                        && s.contains('/')
                    {
                        return Err(format!("service {s:?} must not contain '/'"));
                    }
                    if let Some(m) = &method
                        && m.contains('/')
                    {
                        return Err(format!("method {m:?} must not contain '/'"));
                    }
                    MethodMatcher::Exact { service, method }
                }
                "RegularExpression" => MethodMatcher::RegularExpression {
                    service: service.as_deref().map(Pattern::new).transpose()?,
                    method: method.as_deref().map(Pattern::new).transpose()?,
                },
                other => return Err(format!("method match type {other:?} is not supported")),
            }
        }
    };
    let mut headers: Vec<HeaderMatcher> = Vec::new();
    for h in &m.headers {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| format!("invalid header name {:?}", h.name))?;
        // Of equivalent names only the first counts.
        if headers.iter().any(|x| x.name() == name) {
            continue;
        }
        headers.push(match h.match_type.as_deref().unwrap_or("Exact") {
            "Exact" => HeaderMatcher::Exact { name, value: h.value.clone() },
            "RegularExpression" => HeaderMatcher::RegularExpression { name, value: Pattern::new(&h.value)? },
            other => return Err(format!("header match type {other:?} is not supported")),
        });
    }
    Ok(RequestMatcher { method, headers })
}

#[derive(Default)]
struct Filters {
    request: Option<HeaderModifierFilter>,
    response: Option<HeaderModifierFilter>,
    mirrors: Vec<MirrorFilter>,
}

fn compile_filters(
    ctx: &mut Ctx<'_>,
    route: &RouteRef,
    filters: &[GrpcRouteFilter],
    issues: &mut Issues,
) -> Result<Filters, String> {
    let mut out = Filters::default();
    for (i, f) in filters.iter().enumerate() {
        let at = |msg: &str| format!("filters[{i}]: {msg}");
        match f.filter_type.as_str() {
            "RequestHeaderModifier" => {
                let m = f.request_header_modifier.as_ref().ok_or_else(|| at("requestHeaderModifier is missing"))?;
                if out.request.is_some() {
                    return Err(at("RequestHeaderModifier may appear once per rule"));
                }
                out.request = Some(compile_header_modifier(m).map_err(|e| at(&e))?);
            }
            "ResponseHeaderModifier" => {
                let m = f.response_header_modifier.as_ref().ok_or_else(|| at("responseHeaderModifier is missing"))?;
                if out.response.is_some() {
                    return Err(at("ResponseHeaderModifier may appear once per rule"));
                }
                out.response = Some(compile_header_modifier(m).map_err(|e| at(&e))?);
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref().ok_or_else(|| at("requestMirror is missing"))?;
                let parts_per_million = match (m.percent, &m.fraction) {
                    (Some(_), Some(_)) => return Err(at("requestMirror takes percent or fraction, not both")),
                    (Some(p), None) if (0..=100).contains(&p) => p as u32 * 10_000,
                    (Some(p), None) => return Err(at(&format!("percent {p} is outside 0..=100"))),
                    (None, Some(fr)) => {
                        let den = fr.denominator.unwrap_or(100);
                        if den < 1 || fr.numerator < 0 || fr.numerator > den {
                            return Err(at(&format!("fraction {}/{den} is invalid", fr.numerator)));
                        }
                        (i64::from(fr.numerator) * 1_000_000 / i64::from(den)) as u32
                    }
                    (None, None) => 1_000_000,
                };
                let r = &m.backend_ref;
                let backend = resolve_backend(
                    ctx,
                    route,
                    BackendSpec {
                        group: r.group.as_deref(),
                        kind: r.kind.as_deref(),
                        name: &r.name,
                        namespace: r.namespace.as_deref(),
                        port: r.port,
                    },
                    1,
                    issues,
                );
                out.mirrors.push(MirrorFilter { backend, parts_per_million });
            }
            other => return Err(at(&format!("filter type {other:?} is not supported"))),
        }
    }
    Ok(out)
}

fn compile_header_modifier(m: &HeaderModifier) -> Result<HeaderModifierFilter, String> {
    let name = |n: &str| {
        let name = HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("invalid header name {n:?}"))?;
        Ok::<_, String>(name)
    };
    let pair = |p: &strait_api::HeaderNameValue| {
        let v = HeaderValue::from_str(&p.value).map_err(|_| format!("invalid value for header {:?}", p.name))?;
        Ok::<_, String>((name(&p.name)?, v))
    };
    Ok(HeaderModifierFilter {
        set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: m.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
    })
}

struct BackendSpec<'s> {
    group: Option<&'s str>,
    kind: Option<&'s str>,
    name: &'s str,
    namespace: Option<&'s str>,
    port: Option<i32>,
}

fn compile_backend(
    ctx: &mut Ctx<'_>,
    route: &RouteRef,
    b: &GrpcBackendRef,
    issues: &mut Issues,
) -> Result<Backend, String> {
    let weight = b.weight.unwrap_or(1);
    if !(0..=MAX_WEIGHT).contains(&weight) {
        return Err(format!("weight {weight} is outside 0..={MAX_WEIGHT}"));
    }
    let filters = compile_filters(ctx, route, &b.filters, issues)?;
    let spec = BackendSpec {
        group: b.group.as_deref(),
        kind: b.kind.as_deref(),
        name: &b.name,
        namespace: b.namespace.as_deref(),
        port: b.port,
    };
    let mut backend = resolve_backend(ctx, route, spec, weight as u32, issues);
    backend.request_header_modifier = filters.request;
    backend.response_header_modifier = filters.response;
    backend.mirrors = filters.mirrors;
    Ok(backend)
}

/// Resolves a backend reference; problems become an `Unavailable` target and a
/// `ResolvedRefs` issue, never an error for the route.
fn resolve_backend(
    ctx: &mut Ctx<'_>,
    route: &RouteRef,
    spec: BackendSpec<'_>,
    weight: u32,
    issues: &mut Issues,
) -> Backend {
    let namespace = spec.namespace.filter(|n| !n.is_empty()).unwrap_or(&route.namespace);
    let service = ServiceKey::new(namespace, spec.name);
    let port = spec.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0);
    let mut backend = Backend {
        service: service.clone(),
        port: port.unwrap_or(0),
        weight,
        target: BackendTarget::Unavailable { reason: String::new() },
        request_header_modifier: None,
        response_header_modifier: None,
        mirrors: Vec::new(),
    };
    let group = spec.group.unwrap_or("");
    let kind = spec.kind.unwrap_or("Service");
    let problem: Option<(&'static str, String)> = if !group.is_empty() || kind != "Service" {
        Some(("InvalidKind", format!("backendRef {group}/{kind} {service} is not a core Service")))
    } else if namespace != route.namespace && ctx.opts.require_reference_grants && !granted(ctx.grants, route, &service)
    {
        Some((
            "RefNotPermitted",
            format!(
                "no ReferenceGrant in namespace {namespace} allows GRPCRoutes from {} to Service {}",
                route.namespace, spec.name
            ),
        ))
    } else if let Some(port) = port {
        match ctx.services.get(&service) {
            None => Some(("BackendNotFound", format!("Service {service} not found"))),
            Some(svc) => match svc.port(port) {
                None => Some(("BackendNotFound", format!("Service {service} has no port {port}"))),
                Some(p) => {
                    let name = p.name.clone();
                    backend.target = BackendTarget::Endpoints(ctx.endpoints(&service, name.as_deref(), port));
                    None
                }
            },
        }
    } else {
        Some(("BackendNotFound", format!("backendRef to Service {service} needs a valid port")))
    };
    if let Some((reason, message)) = problem {
        backend.target = BackendTarget::Unavailable { reason: message.clone() };
        issues.push((reason, message));
    }
    backend
}

fn granted(grants: &[&ReferenceGrant], route: &RouteRef, to: &ServiceKey) -> bool {
    grants.iter().any(|g| {
        g.metadata.namespace.as_deref() == Some(&*to.namespace)
            && g.spec
                .from
                .iter()
                .any(|f| f.group == GATEWAY_GROUP && f.kind == "GRPCRoute" && f.namespace == route.namespace)
            && g.spec.to.iter().any(|t| {
                t.group.is_empty()
                    && t.kind == "Service"
                    && t.name.as_ref().is_none_or(|n| n.is_empty() || **n == *to.name)
            })
    })
}

impl Ctx<'_> {
    /// The routable endpoints of a Service port, shared between every backend using it.
    fn endpoints(&mut self, key: &ServiceKey, port_name: Option<&str>, port: u16) -> Arc<EndpointSet> {
        let Some(slices) = self.slices.get(key) else { return self.no_endpoints.clone() };
        if let Some(set) = self.endpoint_cache.get(&(key.clone(), port)) {
            return set.clone();
        }
        let mut all: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
        for slice in slices {
            if slice.address_type == "FQDN" {
                continue;
            }
            // The slice port named like the Service port carries the target port number
            // (named targetPorts resolve per pod, so this is per slice).
            let Some(target_port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().filter(|n| !n.is_empty()) == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
                let c = ep.conditions.as_ref();
                // Unknown readiness is ready, per the EndpointSlice API.
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                let addr = SocketAddr::new(ip, target_port);
                let candidate = Endpoint {
                    addr,
                    ready,
                    serving,
                    terminating,
                    target: ep.target_ref.as_ref().and_then(|t| t.name.clone()),
                };
                // Duplicates across slices (during controller updates) keep the most usable view.
                match all.get(&addr) {
                    Some(old) if (old.ready, old.serving) >= (candidate.ready, candidate.serving) => {}
                    _ => {
                        all.insert(addr, candidate);
                    }
                }
            }
        }
        let ready: Vec<Endpoint> = all.values().filter(|e| e.ready).cloned().collect();
        let endpoints =
            if ready.is_empty() { all.into_values().filter(|e| e.serving && e.terminating).collect() } else { ready };
        let set = Arc::new(EndpointSet { endpoints });
        self.endpoint_cache.insert((key.clone(), port), set.clone());
        set
    }
}

/// Orders every match of the bound routes as the GRPCRoute spec requires: most service
/// characters, most method characters, most header matches; then the oldest route,
/// then `namespace/name`; then rule order and match order within a route.
fn build_table(origin: TableOrigin, routes: &[usize], compiled: &[CompiledRoute]) -> RouteTable {
    let mut keyed = Vec::new();
    for &ri in routes {
        let route = &compiled[ri];
        for (rule_pos, (rule, matchers)) in route.rules.iter().enumerate() {
            let list: Vec<(Option<usize>, RequestMatcher)> = match matchers {
                None => vec![(None, RequestMatcher::ANY)],
                Some(ms) => ms.iter().cloned().enumerate().map(|(i, m)| (Some(i), m)).collect(),
            };
            for (match_index, matcher) in list {
                let (s, m, h) = matcher.precedence();
                let sort_key = (
                    Reverse((s, m, h)),
                    route.created.is_none(),
                    route.created,
                    route.key.clone(),
                    rule_pos,
                    match_index,
                );
                keyed.push((sort_key, TableEntry { matcher, match_index, rule: rule.clone() }));
            }
        }
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    // Not `into_iter().map().collect()`: that reuses `keyed`'s larger buffer in place.
    let mut entries = Vec::with_capacity(keyed.len());
    entries.extend(keyed.into_iter().map(|(_, e)| e));
    RouteTable { origin, entries }
}
