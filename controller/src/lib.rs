//! The GRPCRoute status writer.
//!
//! It watches Services, GRPCRoutes and ReferenceGrants, compiles them with the same
//! routing model the proxies use, and writes each route's `status.parents` entries for
//! its Service parents (`controllerName: strait.io/gamma-controller`), leaving other
//! controllers' entries alone. Only the replica holding the Lease writes.
#![forbid(unsafe_code)]

pub mod proxy_binding;

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

/// One route's status write: a JSON merge patch for its `status` subresource.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusWrite {
    pub route: RouteRef,
    /// Whether Strait accepts the route for all its Service parents (`None`: it names
    /// none, and Strait's entries are being removed). For the log line.
    pub accepted: Option<bool>,
    pub patch: serde_json::Value,
}

/// What one sync pass does.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SyncPlan {
    pub writes: Vec<StatusWrite>,
    /// Routes whose status already says what it should (no write).
    pub unchanged: usize,
}

/// Decides, from one consistent `snapshot`, the status write of every route in
/// `routes` (the snapshot's routes with their raw status and resourceVersion). Pure:
/// the routing model gives each route's verdict, [`strait_status::merge_parents`] the
/// list to write. The patch replaces `status.parents` as a whole (a merge patch
/// replaces arrays), so it carries every other controller's entry unchanged; and it
/// carries the resourceVersion the verdict was computed from, so a route changed
/// meanwhile makes the write conflict (409) instead of recording a stale verdict.
pub fn plan_sync(snapshot: &Snapshot, routes: &[&RouteObject], options: &CompileOptions, now: &Time) -> SyncPlan {
    let state = compile(snapshot, options);
    let statuses: HashMap<&RouteRef, &strait_routing::RouteStatus> =
        state.route_statuses.iter().map(|s| (&s.route, s)).collect();
    let mut plan = SyncPlan::default();
    for obj in routes {
        let meta: &ObjectMeta = &obj.route.metadata;
        let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else { continue };
        let key = RouteRef { namespace: ns.to_owned(), name: name.to_owned() };
        let ours = statuses.get(&key).copied();
        let Some(parents) = strait_status::merge_parents(&obj.parents, ours, meta.generation, now) else {
            plan.unchanged += 1;
            continue;
        };
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": obj.resource_version},
            "status": {"parents": parents},
        });
        plan.writes.push(StatusWrite { route: key, accepted: ours.map(|s| s.accepted()), patch });
    }
    plan
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
        let objects: Vec<&RouteObject> = routes.iter().map(|r| r.as_ref()).collect();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let plan = plan_sync(&snapshot, &objects, &self.options, &now);
        let mut report = SyncReport { unchanged: plan.unchanged, ..SyncReport::default() };
        let resource = grpcroute_resource();
        for write in plan.writes {
            let key = &write.route;
            let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), &key.namespace, &resource);
            match api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&write.patch)).await {
                Ok(_) => {
                    tracing::info!(route = %key, accepted = write.accepted, "route status written");
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use strait_status::CONTROLLER_NAME;

    const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: app}\nspec: {ports: [{name: grpc, port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: backend, namespace: app}\nspec: {ports: [{name: grpc, port: 80}]}\n";

    fn time(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    /// A GRPCRoute as the API server returns it: `app/<name>`, generation, resourceVersion,
    /// the given parentRefs, one rule to `backend`, and `status.parents` as stored.
    fn route_object(name: &str, parent_refs: Value, backend: &str, generation: i64, parents: Value) -> RouteObject {
        let object = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": name, "namespace": "app", "generation": generation, "resourceVersion": format!("rv-{name}-{generation}")},
            "spec": {"parentRefs": parent_refs, "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]},
            "status": {"parents": parents},
        });
        let dynamic: DynamicObject = serde_json::from_value(object).expect("a DynamicObject");
        convert_route_object(dynamic).expect("a GRPCRoute")
    }

    fn service_parent(name: &str) -> Value {
        json!([{"group": "", "kind": "Service", "name": name, "port": 80}])
    }

    fn plan(routes: &[&RouteObject], options: &CompileOptions, now: &Time) -> SyncPlan {
        let resources = strait_api::parse_manifests(SERVICES, "app").expect("services parse");
        let snapshot = Snapshot {
            services: resources.services.iter().collect(),
            endpoint_slices: Vec::new(),
            grpc_routes: routes.iter().map(|r| &r.route).collect(),
            reference_grants: Vec::new(),
        };
        plan_sync(&snapshot, routes, options, now)
    }

    fn ours(patch: &Value) -> Vec<&Value> {
        patch["status"]["parents"]
            .as_array()
            .expect("status.parents")
            .iter()
            .filter(|p| p["controllerName"] == CONTROLLER_NAME)
            .collect()
    }

    /// (type, status, reason) of each condition of an entry.
    fn conditions(entry: &Value) -> Vec<(String, String, String)> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        entry["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (text(&c["type"]), text(&c["status"]), text(&c["reason"])))
            .collect()
    }

    fn written<'a>(plan: &'a SyncPlan, name: &str) -> &'a StatusWrite {
        plan.writes.iter().find(|w| w.route.name == name).unwrap_or_else(|| panic!("no write for {name}: {plan:?}"))
    }

    #[test]
    fn verdicts_become_conditions_with_the_routes_generation_and_resource_version() {
        let good = route_object("good", service_parent("svc"), "backend", 4, json!([]));
        let no_backend = route_object("no-backend", service_parent("svc"), "ghost", 2, json!([]));
        let no_parent = route_object("no-parent", service_parent("missing"), "backend", 1, json!([]));
        let now = time("2026-01-01T00:00:00Z");
        let plan = plan(&[&good, &no_backend, &no_parent], &CompileOptions::default(), &now);
        assert_eq!(plan.writes.len(), 3, "{plan:?}");
        assert_eq!(plan.unchanged, 0);

        let w = written(&plan, "good");
        assert_eq!(w.route, RouteRef { namespace: "app".into(), name: "good".into() });
        assert_eq!(w.accepted, Some(true));
        // The write is conditional on the version the verdict was computed from.
        assert_eq!(w.patch["metadata"]["resourceVersion"], "rv-good-4");
        let entry = ours(&w.patch);
        assert_eq!(entry.len(), 1, "{}", w.patch);
        assert_eq!(entry[0]["parentRef"], json!({"group": "", "kind": "Service", "name": "svc", "port": 80}));
        assert_eq!(
            conditions(entry[0]),
            [
                ("Accepted".into(), "True".into(), "Accepted".into()),
                ("ResolvedRefs".into(), "True".into(), "ResolvedRefs".into())
            ]
        );
        for c in entry[0]["conditions"].as_array().expect("conditions") {
            assert_eq!(c["observedGeneration"], 4, "conditions report the generation they judged: {c}");
            assert_eq!(c["lastTransitionTime"], "2026-01-01T00:00:00Z");
        }

        // A missing backend: accepted, but its references do not resolve.
        let w = written(&plan, "no-backend");
        assert_eq!(w.accepted, Some(true));
        let c = conditions(ours(&w.patch)[0]);
        assert_eq!(c[1], ("ResolvedRefs".into(), "False".into(), "BackendNotFound".into()), "{}", w.patch);
        assert!(ours(&w.patch)[0]["conditions"][1]["message"].as_str().is_some_and(|m| m.contains("ghost")));

        // A parent Service that does not exist: not accepted.
        let w = written(&plan, "no-parent");
        assert_eq!(w.accepted, Some(false));
        assert_eq!(conditions(ours(&w.patch)[0])[0], ("Accepted".into(), "False".into(), "NoMatchingParent".into()));
    }

    #[test]
    fn other_controllers_entries_are_carried_whole_because_the_patch_replaces_the_list() {
        let foreign = json!({"controllerName": "example.net/gateway", "parentRef": {"name": "gw"},
                             "conditions": [{"type": "Accepted", "status": "True"}], "vendorField": {"x": 1}});
        let route = route_object("r", service_parent("svc"), "backend", 1, json!([foreign.clone()]));
        let plan = plan(&[&route], &CompileOptions::default(), &time("2026-01-01T00:00:00Z"));
        let parents = plan.writes[0].patch["status"]["parents"].as_array().expect("parents").clone();
        assert_eq!(parents.len(), 2, "{parents:?}");
        assert_eq!(parents[0], foreign, "the foreign entry is written back exactly, unknown fields included");
        assert_eq!(parents[1]["controllerName"], CONTROLLER_NAME);
    }

    #[test]
    fn a_route_whose_status_is_current_needs_no_write_until_it_changes() {
        let t0 = time("2026-01-01T00:00:00Z");
        let t1 = time("2026-01-01T01:00:00Z");
        let fresh = route_object("r", service_parent("svc"), "backend", 1, json!([]));
        let first = plan(&[&fresh], &CompileOptions::default(), &t0);
        let stored = first.writes[0].patch["status"]["parents"].clone();

        // The stored status is what the controller would write: nothing to do, later too.
        let current = route_object("r", service_parent("svc"), "backend", 1, stored.clone());
        let again = plan(&[&current], &CompileOptions::default(), &t1);
        assert_eq!(again, SyncPlan { writes: Vec::new(), unchanged: 1 });

        // A new generation with the same verdict: rewritten for observedGeneration, and
        // the conditions keep the time they last changed.
        let bumped = route_object("r", service_parent("svc"), "backend", 2, stored.clone());
        let plan2 = plan(&[&bumped], &CompileOptions::default(), &t1);
        let entry = ours(&plan2.writes[0].patch)[0].clone();
        for c in entry["conditions"].as_array().expect("conditions") {
            assert_eq!(c["observedGeneration"], 2);
            assert_eq!(c["lastTransitionTime"], "2026-01-01T00:00:00Z", "the verdict did not change: {c}");
        }

        // The backend disappears from the spec's reach: ResolvedRefs flips, with a new time.
        let broken = route_object("r", service_parent("svc"), "ghost", 3, stored);
        let plan3 = plan(&[&broken], &CompileOptions::default(), &t1);
        let entry = ours(&plan3.writes[0].patch)[0].clone();
        assert_eq!(entry["conditions"][0]["lastTransitionTime"], "2026-01-01T00:00:00Z", "Accepted unchanged");
        assert_eq!(entry["conditions"][1]["status"], "False");
        assert_eq!(entry["conditions"][1]["lastTransitionTime"], "2026-01-01T01:00:00Z", "ResolvedRefs flipped");
    }

    #[test]
    fn a_route_that_leaves_the_mesh_loses_only_strait_entries() {
        let t0 = time("2026-01-01T00:00:00Z");
        let meshed = route_object("r", service_parent("svc"), "backend", 1, json!([]));
        let mut stored = plan(&[&meshed], &CompileOptions::default(), &t0).writes[0].patch["status"]["parents"].clone();
        let foreign = json!({"controllerName": "example.net/gateway", "parentRef": {"name": "gw"}, "conditions": []});
        stored.as_array_mut().expect("parents").insert(0, foreign.clone());

        // Re-pointed at a Gateway: Strait no longer owns a parent of it.
        let gateway_parent = json!([{"name": "gw"}]);
        let moved = route_object("r", gateway_parent.clone(), "backend", 2, stored);
        let plan1 = plan(&[&moved], &CompileOptions::default(), &t0);
        assert_eq!(plan1.writes.len(), 1);
        assert_eq!(plan1.writes[0].accepted, None);
        assert_eq!(plan1.writes[0].patch["status"]["parents"], json!([foreign]));

        // A Gateway route Strait never wrote to is left alone.
        let untouched = route_object("g", gateway_parent, "backend", 1, json!([foreign]));
        assert_eq!(plan(&[&untouched], &CompileOptions::default(), &t0), SyncPlan { writes: Vec::new(), unchanged: 1 });
    }

    #[test]
    fn reference_grant_policy_decides_cross_namespace_backends() {
        // A backend in another namespace: allowed by default, refused when
        // ReferenceGrants are required and none permits it.
        let object = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "cross", "namespace": "app", "generation": 1, "resourceVersion": "1"},
            "spec": {"parentRefs": service_parent("svc"),
                     "rules": [{"backendRefs": [{"name": "backend", "namespace": "other", "port": 80}]}]},
        });
        let route = convert_route_object(serde_json::from_value(object).expect("object")).expect("route");
        let other = "apiVersion: v1\nkind: Service\nmetadata: {name: backend, namespace: other}\nspec: {ports: [{name: grpc, port: 80}]}\n";
        let resources = strait_api::parse_manifests(&format!("{SERVICES}---\n{other}"), "app").expect("parse");
        let snapshot = Snapshot {
            services: resources.services.iter().collect(),
            endpoint_slices: Vec::new(),
            grpc_routes: vec![&route.route],
            reference_grants: Vec::new(),
        };
        let now = time("2026-01-01T00:00:00Z");
        let lenient = plan_sync(&snapshot, &[&route], &CompileOptions::default(), &now);
        assert_eq!(conditions(ours(&lenient.writes[0].patch)[0])[1].1, "True", "{:?}", lenient.writes[0].patch);
        let strict = plan_sync(&snapshot, &[&route], &CompileOptions { require_reference_grants: true }, &now);
        assert_eq!(
            conditions(ours(&strict.writes[0].patch)[0])[1],
            ("ResolvedRefs".into(), "False".into(), "RefNotPermitted".into())
        );
    }
}
