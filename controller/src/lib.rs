//! The GRPCRoute status writer.
//!
//! It watches Services, GRPCRoutes and ReferenceGrants, compiles them with the same
//! routing model the proxies use, and writes each route's `status.parents` entries for
//! its Service parents (`controllerName: strait.io/gamma-controller`), leaving other
//! controllers' entries alone. Only the replica holding the Lease writes.
#![forbid(unsafe_code)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use strait_api::GrpcRoute;
use strait_kube::{ClusterCaches, grpcroute_resource};
use strait_routing::{CompileOptions, RouteRef, Snapshot, compile};
use tokio::sync::watch;

/// A GRPCRoute with what status writing needs besides the spec.
pub struct RouteObject {
    pub route: GrpcRoute,
    pub parents: Vec<serde_json::Value>,
    pub resource_version: Option<String>,
}

/// Leniently converts a GRPCRoute, keeping its raw `status.parents`.
pub fn convert_route_object(o: DynamicObject) -> Option<RouteObject> {
    let parents = o.data.pointer("/status/parents").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    let resource_version = o.metadata.resource_version.clone();
    let route = strait_kube::convert_route(o)?;
    Some(RouteObject { route, parents, resource_version })
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub written: usize,
    pub unchanged: usize,
    pub failed: usize,
}

pub struct StatusController {
    client: Client,
    caches: ClusterCaches<RouteObject>,
    options: CompileOptions,
}

impl StatusController {
    pub fn new(client: Client, options: CompileOptions) -> Arc<Self> {
        Arc::new(StatusController { client, caches: ClusterCaches::new(), options })
    }

    pub fn start_watches(&self) {
        self.caches.start(self.client.clone(), convert_route_object);
    }

    pub fn synced(&self) -> bool {
        self.caches.synced()
    }

    /// Computes every route's status and writes those that changed.
    pub async fn sync_once(&self) -> SyncReport {
        let services = self.caches.services.values();
        let routes = self.caches.routes.values();
        let grants = self.caches.grants.values();
        let snapshot = Snapshot {
            services: services.iter().map(|s| s.as_ref()).collect(),
            endpoint_slices: Vec::new(),
            grpc_routes: routes.iter().map(|r| &r.route).collect(),
            reference_grants: grants.iter().map(|g| g.as_ref()).collect(),
        };
        let state = compile(&snapshot, &self.options);
        let statuses: HashMap<&RouteRef, &strait_routing::RouteStatus> =
            state.route_statuses.iter().map(|s| (&s.route, s)).collect();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut report = SyncReport::default();
        let resource = grpcroute_resource();
        for obj in &routes {
            let meta: &ObjectMeta = &obj.route.metadata;
            let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else { continue };
            let key = RouteRef { namespace: ns.to_owned(), name: name.to_owned() };
            let ours = statuses.get(&key).copied();
            let Some(parents) = strait_status::merge_parents(&obj.parents, ours, meta.generation, &now) else {
                report.unchanged += 1;
                continue;
            };
            let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &resource);
            // The resourceVersion we computed from makes a concurrent change conflict
            // (409) instead of being overwritten; the next sync retries from fresh state.
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": obj.resource_version},
                "status": {"parents": parents},
            });
            match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    tracing::info!(route = %key, accepted = ours.map(|s| s.accepted()), "route status written");
                    report.written += 1;
                }
                Err(e) => {
                    tracing::warn!(route = %key, error = %e, "writing route status failed; will retry");
                    report.failed += 1;
                }
            }
        }
        report
    }

    /// Syncs on every change and every `resync` while `leader` is true.
    pub async fn run(self: Arc<Self>, mut leader: watch::Receiver<bool>, resync: Duration) {
        self.start_watches();
        let mut tick = tokio::time::interval(resync);
        loop {
            tokio::select! {
                _ = self.caches.changed.notified() => {
                    // Coalesce a burst of watch events into one pass.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = tick.tick() => {}
                _ = leader.changed() => {}
            }
            if !*leader.borrow() || !self.synced() {
                continue;
            }
            let report = self.sync_once().await;
            if report.failed > 0 {
                // Retry soon rather than at the next resync.
                let changed = self.caches.changed.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    changed.notify_one();
                });
            }
            tracing::debug!(?report, "status sync");
        }
    }
}
