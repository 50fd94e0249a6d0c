//! Kubernetes mode: routing state from watches on the API server.
//!
//! API-server load per sidecar: one watch each on Services, GRPCRoutes and
//! ReferenceGrants (cluster-wide: any Service may be called and any namespace may hold
//! consumer routes), plus one EndpointSlice watch per Service this pod actually sends
//! to (label `kubernetes.io/service-name`), started on first use and dropped after
//! `--endpoint-idle-timeout` without traffic. Objects are stripped at ingest to the
//! fields routing reads, so memory follows what the pod needs, not the cluster's size.
//!
//! Each watch keeps its last complete state while the API server is unreachable
//! (the watcher retries with backoff). A relist (410 Gone, reconnect) is buffered and
//! swapped in whole at its end, so no intermediate empty set is ever published.
use crate::state::SharedState;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use strait_api::GrpcRoute;
use strait_kube::{Cache, ClusterCaches, SERVICE_NAME_LABEL, convert_route, run_watch, strip_endpoint_slice};
use strait_routing::{CompileOptions, ServiceKey, Snapshot, compile};

/// Changes arriving within this window are compiled together.
const DEBOUNCE: Duration = Duration::from_millis(5);

struct SliceWatch {
    cache: Arc<Cache<EndpointSlice>>,
    task: tokio::task::AbortHandle,
    last_used_ms: AtomicU64,
    /// A state compiled from this watch's complete list has been published. Listed
    /// (`cache.is_synced()`) is not enough: until the compile loop publishes, the
    /// routing state has no endpoints for the Service, and a request routed then
    /// fails with "no endpoints".
    published: AtomicBool,
}

pub struct KubeSource {
    client: Client,
    caches: ClusterCaches<GrpcRoute>,
    slices: RwLock<HashMap<ServiceKey, Arc<SliceWatch>>>,
    options: CompileOptions,
    epoch: Instant,
    /// How long a Service's first request waits for its endpoints to be listed.
    pub demand_wait: Duration,
}

impl KubeSource {
    pub fn new(client: Client, options: CompileOptions) -> Arc<Self> {
        Arc::new(KubeSource {
            client,
            caches: ClusterCaches::new(),
            slices: RwLock::new(HashMap::new()),
            options,
            epoch: Instant::now(),
            demand_wait: Duration::from_secs(5),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// True when every key's endpoints are watched, listed and published; marks them used.
    pub fn endpoints_ready(&self, keys: &[&ServiceKey]) -> bool {
        let now = self.now_ms();
        let Ok(map) = self.slices.read() else { return false };
        keys.iter().all(|k| match map.get(*k) {
            Some(w) => {
                w.last_used_ms.store(now, Ordering::Relaxed);
                w.cache.is_synced() && w.published.load(Ordering::Acquire)
            }
            None => false,
        })
    }

    /// Starts EndpointSlice watches for `keys` not yet watched and waits (bounded)
    /// until all are listed and compiled into the published state.
    ///
    /// Concurrent first requests for a Service all wait here: each waits for the
    /// watch's own `published` flag, not for "some newer version" or "listed".
    pub async fn demand(self: &Arc<Self>, keys: &[ServiceKey], _shared: &SharedState) {
        let mut waits = Vec::new();
        {
            let Ok(mut map) = self.slices.write() else { return };
            for key in keys {
                let w = map.entry(key.clone()).or_insert_with(|| {
                    tracing::debug!(service = %key, "watching endpoints on demand");
                    let cache = Cache::new();
                    let api = Api::<EndpointSlice>::namespaced(self.client.clone(), &key.namespace);
                    let cfg = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={}", key.name));
                    let task = tokio::spawn(run_watch(
                        "endpointslices",
                        api,
                        cfg,
                        strip_endpoint_slice,
                        cache.clone(),
                        self.caches.changed.clone(),
                    ));
                    Arc::new(SliceWatch {
                        cache,
                        task: task.abort_handle(),
                        last_used_ms: AtomicU64::new(0),
                        published: AtomicBool::new(false),
                    })
                });
                w.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
                if !(w.cache.is_synced() && w.published.load(Ordering::Acquire)) {
                    waits.push(w.clone());
                }
            }
        }
        if waits.is_empty() {
            return;
        }
        let deadline = self.demand_wait;
        let all = async {
            for w in &waits {
                w.cache.wait_synced().await;
            }
            // The compile loop publishes after the list; wait until a state built from
            // every one of these lists is out.
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            while !waits.iter().all(|w| w.published.load(Ordering::Acquire)) {
                tick.tick().await;
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(services = ?keys.iter().map(ToString::to_string).collect::<Vec<_>>(), "endpoints not listed in time; routing with what is known");
        }
    }

    /// Drops EndpointSlice watches unused for `idle`.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let cutoff = self.now_ms().saturating_sub(idle.as_millis() as u64);
        let Ok(mut map) = self.slices.write() else { return 0 };
        let before = map.len();
        map.retain(|key, w| {
            let keep = w.last_used_ms.load(Ordering::Relaxed) >= cutoff;
            if !keep {
                tracing::debug!(service = %key, "endpoints idle; watch dropped");
                w.task.abort();
            }
            keep
        });
        let dropped = before - map.len();
        if dropped > 0 {
            self.caches.changed.notify_one();
        }
        dropped
    }

    pub fn watched_services(&self) -> usize {
        self.slices.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Compiles the caches into a routing state and publishes it.
    pub fn publish(&self, shared: &SharedState) -> u64 {
        let services = self.caches.services.values();
        let routes = self.caches.routes.values();
        let grants = self.caches.grants.values();
        // Watches listed before their values are read: the state published below
        // holds their complete lists.
        let mut listed = Vec::new();
        let slices: Vec<Arc<EndpointSlice>> = match self.slices.read() {
            Ok(m) => m
                .values()
                .flat_map(|w| {
                    if w.cache.is_synced() {
                        listed.push(w.clone());
                    }
                    w.cache.values()
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let snapshot = Snapshot {
            services: services.iter().map(|s| s.as_ref()).collect(),
            endpoint_slices: slices.iter().map(|s| s.as_ref()).collect(),
            grpc_routes: routes.iter().map(|r| r.as_ref()).collect(),
            reference_grants: grants.iter().map(|g| g.as_ref()).collect(),
        };
        let state = compile(&snapshot, &self.options);
        let version = shared.publish(state, BTreeMap::new());
        for w in listed {
            w.published.store(true, Ordering::Release);
        }
        version
    }

    /// Waits for the initial lists, publishes, marks ready, then recompiles on every
    /// change (bursts coalesced).
    pub async fn run(
        self: Arc<Self>,
        shared: Arc<SharedState>,
        idle: Duration,
        on_publish: impl Fn() + Send + 'static,
    ) {
        self.caches.start(self.client.clone(), convert_route);
        self.caches.wait_synced().await;
        let version = self.publish(&shared);
        on_publish();
        shared.set_ready();
        tracing::info!(
            version,
            services = self.caches.services.len(),
            routes = self.caches.routes.len(),
            "initial sync done; ready"
        );
        let evictor = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((idle / 4).max(Duration::from_secs(1)));
            loop {
                tick.tick().await;
                evictor.evict_idle(idle);
            }
        });
        loop {
            self.caches.changed.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
            let started = Instant::now();
            let version = self.publish(&shared);
            on_publish();
            tracing::debug!(version, compile = ?started.elapsed(), "configuration updated");
        }
    }
}
