//! The compiled routing state the proxy reads on every request.
use crate::Destination;
use crate::filters::{HeaderModifierFilter, MirrorFilter};
use crate::matching::{RequestMatcher, RequestView};
use crate::status::RouteStatus;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

/// `namespace/name` of a Service; serialised as that string (it keys JSON maps).
/// Shared strings: a key is stored with its Service, its ClusterIPs, each of its ports
/// and every request routed to it, and clones are reference-count bumps.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceKey {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        ServiceKey { namespace: Arc::from(namespace.as_ref()), name: Arc::from(name.as_ref()) }
    }
}

/// `(namespace, name)` of a Service, owned or borrowed: lets the Service map be
/// searched with borrowed strings from a request, without building a key.
pub trait ServiceKeyParts {
    fn parts(&self) -> (&str, &str);
}

impl ServiceKeyParts for ServiceKey {
    fn parts(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

impl ServiceKeyParts for (&str, &str) {
    fn parts(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn ServiceKeyParts + 'a> for ServiceKey {
    fn borrow(&self) -> &(dyn ServiceKeyParts + 'a) {
        self
    }
}

// Ordered exactly as the derived `Ord` of `ServiceKey` (namespace, then name), as
// `Borrow` requires.
impl PartialEq for dyn ServiceKeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn ServiceKeyParts + '_ {}

impl PartialOrd for dyn ServiceKeyParts + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn ServiceKeyParts + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl Serialize for ServiceKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `namespace/name` of a GRPCRoute.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RouteRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for RouteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything the data plane needs, compiled from one snapshot.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingState {
    pub services: BTreeMap<ServiceKey, ServiceRoutes>,
    pub route_statuses: Vec<RouteStatus>,
    #[serde(skip)]
    pub(crate) by_cluster_ip: HashMap<IpAddr, ServiceKey>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("service {0} not found")]
    UnknownService(ServiceKey),
    #[error("service {service} has no port {port}")]
    UnknownPort { service: ServiceKey, port: u16 },
    #[error("service {0} has several ports; the authority must name one")]
    AmbiguousPort(ServiceKey),
}

impl RoutingState {
    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceRoutes> {
        self.services.get(key)
    }

    /// The port routes a request to `dest` uses.
    pub fn lookup(&self, dest: &Destination) -> Result<&PortRoutes, LookupError> {
        self.lookup_parts(&dest.namespace, &dest.name, dest.port)
    }

    /// [`RoutingState::lookup`] from borrowed parts: the request path's form, which
    /// allocates nothing unless the lookup fails.
    pub fn lookup_parts(&self, namespace: &str, name: &str, port: Option<u16>) -> Result<&PortRoutes, LookupError> {
        let parts: &dyn ServiceKeyParts = &(namespace, name);
        let svc =
            self.services.get(parts).ok_or_else(|| LookupError::UnknownService(ServiceKey::new(namespace, name)))?;
        match port {
            Some(port) => svc
                .port(port)
                .ok_or_else(|| LookupError::UnknownPort { service: ServiceKey::new(namespace, name), port }),
            None => match svc.ports.as_slice() {
                [only] => Ok(only),
                _ => Err(LookupError::AmbiguousPort(ServiceKey::new(namespace, name))),
            },
        }
    }

    /// The Service owning a ClusterIP (transparent mode routes by original destination).
    pub fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<&ServiceRoutes> {
        self.by_cluster_ip.get(&ip).and_then(|k| self.services.get(k))
    }

    /// The Service port a transparent connection to `ip:port` is for.
    pub fn destination_of(&self, ip: IpAddr, port: u16) -> Option<&PortRoutes> {
        let key = self.by_cluster_ip.get(&ip)?;
        self.services.get(key)?.port(port)
    }
}

/// One Service's routes, per port.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRoutes {
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortRoutes>,
}

impl ServiceRoutes {
    pub fn port(&self, port: u16) -> Option<&PortRoutes> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// The tables of one Service port: producers' for every caller, plus one per
/// namespace that has consumer routes (used instead of the producers' there).
#[derive(Debug)]
pub struct PortRoutes {
    pub service: ServiceKey,
    pub name: Option<String>,
    pub port: u16,
    /// The Service's own endpoints for this port, whatever the routes say: opaque TCP
    /// and HTTP/1 traffic to the ClusterIP goes here (GRPCRoutes steer gRPC only).
    pub endpoints: Arc<EndpointSet>,
    /// The producer routes' table; `None` when no route of the Service's namespace
    /// binds this port (then the Service default applies).
    pub(crate) producer: Option<Arc<RouteTable>>,
    /// The Service default table, built on first use: most Services of a cluster have
    /// no route and are never called by a given pod, and one prebuilt default table
    /// per Service port was ~0.7 KiB each (7 MiB at 10,000 Services).
    pub(crate) default_table: OnceLock<Arc<RouteTable>>,
    pub consumers: BTreeMap<String, Arc<RouteTable>>,
}

impl PortRoutes {
    pub fn table_for(&self, client_namespace: &str) -> &Arc<RouteTable> {
        self.consumers.get(client_namespace).unwrap_or_else(|| self.producer())
    }

    /// The table callers without consumer routes use.
    pub fn producer(&self) -> &Arc<RouteTable> {
        match &self.producer {
            Some(t) => t,
            None => self.default_table.get_or_init(|| Arc::new(self.build_default_table())),
        }
    }

    /// Tables compiled from routes (producer, then consumers), without building the
    /// Service default: what connection-pool upkeep walks.
    pub fn route_tables(&self) -> impl Iterator<Item = &Arc<RouteTable>> {
        self.producer.iter().chain(self.consumers.values())
    }

    /// All traffic to the Service's own endpoints on this port.
    fn build_default_table(&self) -> RouteTable {
        let backend = Backend {
            service: self.service.clone(),
            port: self.port,
            weight: 1,
            target: BackendTarget::Endpoints(self.endpoints.clone()),
            request_header_modifier: None,
            response_header_modifier: None,
            mirrors: Vec::new(),
        };
        let rule = Rule {
            route: None,
            rule_index: 0,
            rule_name: None,
            request_header_modifier: None,
            response_header_modifier: None,
            mirrors: Vec::new(),
            backends: vec![backend],
            total_weight: 1,
        };
        RouteTable {
            origin: TableOrigin::ServiceDefault,
            entries: vec![TableEntry { matcher: RequestMatcher::ANY, match_index: None, rule: Arc::new(rule) }],
        }
    }
}

impl Serialize for PortRoutes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // A dump shows the default table without keeping it built.
        let default;
        let producer = match (&self.producer, self.default_table.get()) {
            (Some(t), _) | (None, Some(t)) => t.as_ref(),
            (None, None) => {
                default = self.build_default_table();
                &default
            }
        };
        let mut st = s.serialize_struct("PortRoutes", 5)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("port", &self.port)?;
        st.serialize_field("endpoints", &self.endpoints)?;
        st.serialize_field("producer", producer)?;
        st.serialize_field("consumers", &self.consumers)?;
        st.end()
    }
}

/// Where a table's rules came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TableOrigin {
    /// No route binds this port: all traffic to the Service's own endpoints.
    ServiceDefault,
    /// Routes in the Service's namespace.
    Producer,
    /// Routes in `namespace`, for callers in that namespace only.
    Consumer { namespace: String },
}

/// Match entries in precedence order; the first that matches wins.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTable {
    pub origin: TableOrigin,
    pub entries: Vec<TableEntry>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableEntry {
    #[serde(rename = "match")]
    pub matcher: RequestMatcher,
    /// Index in the rule's `matches`; `None` for a rule without matches.
    pub match_index: Option<usize>,
    pub rule: Arc<Rule>,
}

impl RouteTable {
    /// The rule a request gets, or `None` (gRPC UNIMPLEMENTED).
    pub fn route(&self, req: &RequestView<'_>) -> Option<&TableEntry> {
        self.entries.iter().find(|e| e.matcher.matches(req))
    }
}

/// A compiled GRPCRoute rule.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// `None` for a Service's default rule.
    pub route: Option<RouteRef>,
    pub rule_index: usize,
    pub rule_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifierFilter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifierFilter>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorFilter>,
    pub backends: Vec<Backend>,
    pub total_weight: u64,
}

impl Rule {
    /// Picks a backend by weight; `random` is uniform over u64. `None` when no backend
    /// has weight (the request gets UNAVAILABLE).
    pub fn pick_backend(&self, random: u64) -> Option<&Backend> {
        self.pick_backend_index(random).map(|i| &self.backends[i])
    }

    /// Index form of [`Rule::pick_backend`].
    pub fn pick_backend_index(&self, random: u64) -> Option<usize> {
        if self.total_weight == 0 {
            return None;
        }
        let mut x = random % self.total_weight;
        for (i, b) in self.backends.iter().enumerate() {
            let w = u64::from(b.weight);
            if x < w {
                return Some(i);
            }
            x -= w;
        }
        None
    }

    /// Each backend's share of traffic, for the dump and tests.
    pub fn shares(&self) -> Vec<f64> {
        self.backends
            .iter()
            .map(|b| if self.total_weight == 0 { 0.0 } else { f64::from(b.weight) / self.total_weight as f64 })
            .collect()
    }
}

/// One backendRef, resolved.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub service: ServiceKey,
    pub port: u16,
    pub weight: u32,
    pub target: BackendTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifierFilter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifierFilter>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorFilter>,
}

impl Backend {
    #[cfg(test)]
    pub(crate) fn unavailable_for_tests() -> Self {
        Backend {
            service: ServiceKey::new("ns", "svc"),
            port: 1,
            weight: 1,
            target: BackendTarget::Unavailable { reason: "test".into() },
            request_header_modifier: None,
            response_header_modifier: None,
            mirrors: Vec::new(),
        }
    }

    pub fn endpoints(&self) -> Option<&Arc<EndpointSet>> {
        match &self.target {
            BackendTarget::Endpoints(set) => Some(set),
            BackendTarget::Unavailable { .. } => None,
        }
    }
}

/// Where a backend's traffic goes.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum BackendTarget {
    Endpoints(Arc<EndpointSet>),
    /// The backendRef could not be resolved; its share of traffic gets UNAVAILABLE.
    Unavailable {
        reason: String,
    },
}

/// The endpoints traffic may go to: ready ones, or, when none is ready, serving
/// terminating ones (as kube-proxy falls back), deduplicated across slices.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EndpointSet {
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}
