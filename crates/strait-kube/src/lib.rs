//! Kubernetes I/O shared by Strait's binaries: watches kept as caches of stripped
//! objects (with atomic relists), lenient conversion of Gateway API objects, and
//! Lease-based leader election.
#![forbid(unsafe_code)]

pub mod lease;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use strait_api::{GrpcRoute, MeshService, ReferenceGrant};
use tokio::sync::{Notify, watch};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Reconnect backoff of every watch: 250 ms doubling to at most 5 s, with up to 25%
/// jitter. kube-runtime's default (client-go's: 0.8 s doubling to 30 s plus up to 100%
/// jitter) left a proxy up to ~50 s behind after a 30 s API-server outage, serving
/// stale routes; a sidecar's watch is cheap for the API server to re-establish, and
/// the jitter still spreads thousands of sidecars reconnecting at once.
///
/// A 410 Gone (the watch's resourceVersion is too old: the API server restarted or
/// etcd compacted) is not a failure to back off from but an answer that says "relist
/// now": the server is up. Without a reset the relist after an outage waited out the
/// backoff the outage had built up (up to ~6 s more before a change made during the
/// outage reached traffic). [`WatchBackoff::reset_handle`] lets the watch loop ask
/// for that reset as the 410 goes by.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
    min: Duration,
    max: Duration,
    reset_requested: Arc<AtomicBool>,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: Duration::from_millis(250),
            min: Duration::from_millis(250),
            max: Duration::from_secs(5),
            reset_requested: Arc::default(),
        }
    }
}

impl WatchBackoff {
    /// Setting the flag makes the next delay start over from the minimum.
    pub fn reset_handle(&self) -> Arc<AtomicBool> {
        self.reset_requested.clone()
    }
}

/// True for the watch error that asks for a relist (HTTP 410 Gone / `Expired`).
pub fn is_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        if self.reset_requested.swap(false, Ordering::Relaxed) {
            self.next = self.min;
        }
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = base.mul_f64(fastrand::f64() * 0.25);
        Some(base + jitter)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// `(namespace, name)`.
pub type ObjKey = (String, String);

/// The current objects of one watch, replaced whole on relist.
pub struct Cache<T> {
    items: RwLock<BTreeMap<ObjKey, Arc<T>>>,
    synced: watch::Sender<bool>,
}

impl<T> Cache<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Cache { items: RwLock::new(BTreeMap::new()), synced: watch::channel(false).0 })
    }

    pub fn values(&self) -> Vec<Arc<T>> {
        self.items.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.items.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Applies one watch stream to a cache, converting (and stripping) each object.
pub async fn run_watch<K, T>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
    convert: fn(K) -> Option<T>,
    cache: Arc<Cache<T>>,
    changed: Arc<Notify>,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
{
    let mut buffer: Option<BTreeMap<ObjKey, Arc<T>>> = None;
    let backoff = WatchBackoff::default();
    let relist_now = backoff.reset_handle();
    let mut stream = watcher::watcher(api, config)
        // Seen before the backoff takes its next delay for this error.
        .inspect(move |event| {
            if event.as_ref().err().is_some_and(is_gone) {
                relist_now.store(true, Ordering::Relaxed);
            }
        })
        .backoff(backoff)
        .boxed();
    let mut failing_since: Option<Instant> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(watch = what, down_for = ?since.elapsed(), "watch recovered");
                }
                e
            }
            Err(e) => {
                // Keep serving the last known state; the watcher backs off and retries.
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    tracing::warn!(watch = what, error = %e, "watch failed; keeping last known state");
                } else {
                    tracing::debug!(watch = what, error = %e, "watch still failing");
                }
                continue;
            }
        };
        let key_of =
            |o: &K| (o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default());
        match event {
            Event::Init => buffer = Some(BTreeMap::new()),
            Event::InitApply(obj) => {
                let key = key_of(&obj);
                if let (Some(buf), Some(v)) = (buffer.as_mut(), convert(obj)) {
                    buf.insert(key, Arc::new(v));
                }
            }
            Event::InitDone => {
                if let (Some(buf), Ok(mut items)) = (buffer.take(), cache.items.write()) {
                    *items = buf;
                }
                cache.synced.send_replace(true);
                tracing::debug!(watch = what, objects = cache.len(), "watch (re)listed");
                changed.notify_one();
            }
            Event::Apply(obj) => {
                let key = key_of(&obj);
                if let Ok(mut items) = cache.items.write() {
                    match convert(obj) {
                        Some(v) => items.insert(key, Arc::new(v)),
                        None => items.remove(&key),
                    };
                }
                changed.notify_one();
            }
            Event::Delete(obj) => {
                let key = key_of(&obj);
                if let Ok(mut items) = cache.items.write() {
                    items.remove(&key);
                }
                changed.notify_one();
            }
        }
    }
}

/// The cluster-wide caches routing status and routing both compile from: Services,
/// GRPCRoutes (converted by the caller's `R`, since the status writer also keeps each
/// route's raw status) and ReferenceGrants, with one change notification for all.
pub struct ClusterCaches<R> {
    pub services: Arc<Cache<MeshService>>,
    pub routes: Arc<Cache<R>>,
    pub grants: Arc<Cache<ReferenceGrant>>,
    /// Notified on every applied change, by these watches and any the owner adds.
    pub changed: Arc<Notify>,
}

impl<R: Send + Sync + 'static> ClusterCaches<R> {
    pub fn new() -> Self {
        ClusterCaches {
            services: Cache::new(),
            routes: Cache::new(),
            grants: Cache::new(),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Starts the three cluster-wide watches; `convert_route` reads each GRPCRoute.
    pub fn start(&self, client: kube::Client, convert_route: fn(DynamicObject) -> Option<R>) {
        tokio::spawn(run_watch(
            "services",
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            MeshService::from_owned,
            self.services.clone(),
            self.changed.clone(),
        ));
        tokio::spawn(run_watch(
            "grpcroutes",
            Api::<DynamicObject>::all_with(client.clone(), &grpcroute_resource()),
            watcher::Config::default(),
            convert_route,
            self.routes.clone(),
            self.changed.clone(),
        ));
        tokio::spawn(run_watch(
            "referencegrants",
            Api::<DynamicObject>::all_with(client, &referencegrant_resource()),
            watcher::Config::default(),
            convert_grant,
            self.grants.clone(),
            self.changed.clone(),
        ));
    }

    pub fn synced(&self) -> bool {
        self.services.is_synced() && self.routes.is_synced() && self.grants.is_synced()
    }

    pub async fn wait_synced(&self) {
        self.services.wait_synced().await;
        self.routes.wait_synced().await;
        self.grants.wait_synced().await;
    }
}

impl<R: Send + Sync + 'static> Default for ClusterCaches<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// EndpointSlices keep the service-name label, addresses, conditions, target name, ports.
pub fn strip_endpoint_slice(s: EndpointSlice) -> Option<EndpointSlice> {
    let labels = s
        .metadata
        .labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL).map(|v| BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), v.clone())])));
    Some(EndpointSlice {
        metadata: ObjectMeta {
            name: s.metadata.name,
            namespace: s.metadata.namespace,
            labels,
            ..ObjectMeta::default()
        },
        address_type: s.address_type,
        endpoints: s
            .endpoints
            .into_iter()
            .map(|e| Endpoint {
                addresses: e.addresses,
                conditions: e.conditions.map(|c| EndpointConditions {
                    ready: c.ready,
                    serving: c.serving,
                    terminating: c.terminating,
                }),
                target_ref: e
                    .target_ref
                    .map(|t| k8s_openapi::api::core::v1::ObjectReference { name: t.name, ..Default::default() }),
                ..Endpoint::default()
            })
            .collect(),
        ports: s.ports,
    })
}

/// GRPCRoutes are read as untyped objects and converted leniently: the typed
/// gateway-api enums are closed, and one route with a value they do not know must
/// become that route's `UnsupportedValue`, not a failed list for every route.
pub fn convert_route(o: DynamicObject) -> Option<GrpcRoute> {
    let spec = o.data.get("spec").cloned().unwrap_or_default();
    let spec = match serde_json::from_value(spec) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(route = ?o.metadata.name, namespace = ?o.metadata.namespace, error = %e, "GRPCRoute spec unreadable; ignored");
            return None;
        }
    };
    Some(GrpcRoute { metadata: keep_route_meta(o.metadata), spec })
}

pub fn convert_grant(o: DynamicObject) -> Option<ReferenceGrant> {
    let spec = serde_json::from_value(o.data.get("spec").cloned().unwrap_or_default()).ok()?;
    Some(ReferenceGrant { metadata: keep_route_meta(o.metadata), spec })
}

fn keep_route_meta(m: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        generation: m.generation,
        creation_timestamp: m.creation_timestamp,
        ..ObjectMeta::default()
    }
}

/// The resource descriptions of the Gateway API kinds, from the gateway-api crate.
pub fn grpcroute_resource() -> ApiResource {
    ApiResource::erase::<gateway_api::grpcroutes::GrpcRoute>(&())
}

pub fn referencegrant_resource() -> ApiResource {
    ApiResource::erase::<gateway_api::referencegrants::ReferenceGrant>(&())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_is_capped_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = (&mut b).take(10).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] <= Duration::from_millis(313));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(6250)), "{delays:?}");
        assert!(delays[9] >= Duration::from_secs(5));
        b.reset();
        assert!(b.next().is_some_and(|d| d < Duration::from_millis(320)));
    }

    #[test]
    fn gone_resets_the_backoff_built_up_by_an_outage() {
        let mut b = WatchBackoff::default();
        let relist_now = b.reset_handle();
        // An outage: connection errors have pushed the delay to its cap.
        let outage: Vec<Duration> = (&mut b).take(8).collect();
        assert!(outage[7] >= Duration::from_secs(5), "{outage:?}");
        // The API server is back and answers 410 Gone: relist at the minimum delay.
        let gone = watcher::Error::WatchError(Box::new(kube::core::Status {
            code: 410,
            reason: "Expired".into(),
            ..Default::default()
        }));
        assert!(is_gone(&gone));
        relist_now.store(true, Ordering::Relaxed);
        assert!(b.next().is_some_and(|d| d < Duration::from_millis(320)));
        // One reset only: further errors back off again.
        assert!(b.next().is_some_and(|d| d >= Duration::from_millis(500)));
        let failed = watcher::Error::WatchError(Box::new(kube::core::Status { code: 500, ..Default::default() }));
        assert!(!is_gone(&failed));
        assert!(!is_gone(&watcher::Error::NoResourceVersion));
    }

    #[test]
    fn stripping_keeps_what_routing_reads() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "n", "annotations": {"big": "x".repeat(1000)},
                          "managedFields": [{"manager": "kubectl"}], "labels": {"app": "a"}},
            "spec": {"ports": [{"name": "grpc", "port": 80, "targetPort": "grpc"}], "clusterIP": "10.96.0.1",
                     "clusterIPs": ["10.96.0.1"], "selector": {"app": "a"}},
        }))
        .expect("service");
        let s = MeshService::from_owned(svc).expect("kept");
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("n", "a"));
        assert_eq!(s.cluster_ips, vec![std::net::IpAddr::from([10, 96, 0, 1])]);
        assert_eq!(s.ports[0].port, 80);

        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a-1", "namespace": "n", "labels": {"kubernetes.io/service-name": "a", "other": "x"},
                          "managedFields": [{"manager": "kcm"}]},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "node-1",
                           "targetRef": {"kind": "Pod", "name": "a-xyz", "uid": "u"}}],
            "ports": [{"name": "grpc", "port": 8080}],
        }))
        .expect("slice");
        let s = strip_endpoint_slice(slice).expect("kept");
        assert_eq!(s.metadata.labels.as_ref().map(|l| l.len()), Some(1));
        assert!(s.metadata.managed_fields.is_none());
        assert!(s.endpoints[0].node_name.is_none());
        assert_eq!(s.endpoints[0].target_ref.as_ref().and_then(|t| t.name.as_deref()), Some("a-xyz"));
    }

    #[test]
    fn routes_convert_leniently() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "r", "namespace": "n", "generation": 4, "managedFields": [{"manager": "x"}]},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "a"}],
                     "rules": [{"filters": [{"type": "SomeFutureFilter"}]}]},
            "status": {"parents": []},
        }))
        .expect("object");
        let r = convert_route(obj).expect("converted");
        assert_eq!(r.metadata.generation, Some(4));
        assert!(r.metadata.managed_fields.is_none());
        assert_eq!(r.spec.rules[0].filters[0].filter_type, "SomeFutureFilter");
        let bad: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "r", "namespace": "n"}, "spec": {"rules": "not-a-list"},
        }))
        .expect("object");
        assert!(convert_route(bad).is_none());
    }
}
