//! The `status.parents` Strait writes on GRPCRoutes.
//!
//! For each Service parentRef Strait owns one entry (`controllerName` =
//! [`CONTROLLER_NAME`]) with `Accepted` and `ResolvedRefs` conditions taken from the
//! routing model's [`RouteStatus`] — the same computation the proxies route with.
//! Entries of other controllers are kept as they are, in their order.
#![forbid(unsafe_code)]

use gateway_api::grpcroutes::{GrpcRouteStatusParents, GrpcRouteStatusParentsParentRef};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use strait_api::ParentReference;
use strait_routing::RouteStatus;

pub const CONTROLLER_NAME: &str = "strait.io/gamma-controller";

/// The parents list a route should have. `ours` is `None` when the route names no
/// Service parent (any entries Strait wrote earlier are removed). Conditions whose
/// status did not change keep their `lastTransitionTime`, so an unchanged route yields
/// a list equal to `existing` and needs no write.
pub fn desired_parents(
    existing: &[GrpcRouteStatusParents],
    ours: Option<&RouteStatus>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<GrpcRouteStatusParents> {
    let mut out: Vec<GrpcRouteStatusParents> =
        existing.iter().filter(|p| p.controller_name != CONTROLLER_NAME).cloned().collect();
    let Some(ours) = ours else { return out };
    for parent in &ours.parents {
        let parent_ref = status_parent_ref(&parent.parent_ref);
        let previous = existing.iter().find(|p| p.controller_name == CONTROLLER_NAME && p.parent_ref == parent_ref);
        let condition = |kind: &str, c: &strait_routing::Condition| {
            let status = if c.status { "True" } else { "False" };
            let old = previous.and_then(|p| p.conditions.iter().find(|x| x.type_ == kind));
            let last_transition_time = match old {
                Some(o) if o.status == status => o.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: kind.to_owned(),
                status: status.to_owned(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        };
        out.push(GrpcRouteStatusParents {
            controller_name: CONTROLLER_NAME.to_owned(),
            parent_ref,
            conditions: vec![condition("Accepted", &parent.accepted), condition("ResolvedRefs", &parent.resolved_refs)],
        });
    }
    out
}

/// [`desired_parents`] over the raw `status.parents` of an object: other controllers'
/// entries pass through untouched (even in shapes these types do not know). Returns
/// `None` when nothing of ours would change, i.e. no write is needed.
pub fn merge_parents(
    existing: &[serde_json::Value],
    ours: Option<&RouteStatus>,
    generation: Option<i64>,
    now: &Time,
) -> Option<Vec<serde_json::Value>> {
    let is_ours = |v: &serde_json::Value| v.get("controllerName").and_then(|c| c.as_str()) == Some(CONTROLLER_NAME);
    let current: Vec<GrpcRouteStatusParents> =
        existing.iter().filter(|v| is_ours(v)).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect();
    let desired = desired_parents(&current, ours, generation, now);
    let unreadable = existing.iter().filter(|v| is_ours(v)).count() != current.len();
    if desired == current && !unreadable {
        return None;
    }
    let mut out: Vec<serde_json::Value> = existing.iter().filter(|v| !is_ours(v)).cloned().collect();
    out.extend(desired.iter().filter_map(|p| serde_json::to_value(p).ok()));
    Some(out)
}

/// The spec's parentRef, echoed as written.
pub fn status_parent_ref(p: &ParentReference) -> GrpcRouteStatusParentsParentRef {
    GrpcRouteStatusParentsParentRef {
        group: p.group.clone(),
        kind: p.kind.clone(),
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        port: p.port,
        section_name: p.section_name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_routing::{CompileOptions, Snapshot, compile};

    fn time(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    fn status_of(yaml: &str) -> RouteStatus {
        let res = strait_api::parse_manifests(yaml, "app").expect("parses");
        let state = compile(&Snapshot::from_resources(&res), &CompileOptions::default());
        state.route_statuses.into_iter().next().expect("one route status")
    }

    const SVC: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: svc}\nspec: {ports: [{name: grpc, port: 80}]}\n---\n";

    fn route(backend: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: svc, port: 80}}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 80}}]}}]\n"
        )
    }

    fn other_controller() -> GrpcRouteStatusParents {
        GrpcRouteStatusParents {
            controller_name: "example.net/gateway".into(),
            parent_ref: GrpcRouteStatusParentsParentRef { name: "gw".into(), ..Default::default() },
            conditions: vec![],
        }
    }

    #[test]
    fn writes_our_entry_and_keeps_others() {
        let st = status_of(&(SVC.to_owned() + &route("svc")));
        let t0 = time("2026-01-01T00:00:00Z");
        let out = desired_parents(&[other_controller()], Some(&st), Some(3), &t0);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], other_controller());
        let ours = &out[1];
        assert_eq!(ours.controller_name, CONTROLLER_NAME);
        assert_eq!(ours.parent_ref.group.as_deref(), Some(""));
        assert_eq!(ours.parent_ref.kind.as_deref(), Some("Service"));
        assert_eq!(ours.parent_ref.port, Some(80));
        let kinds: Vec<(&str, &str, &str)> =
            ours.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect();
        assert_eq!(kinds, vec![("Accepted", "True", "Accepted"), ("ResolvedRefs", "True", "ResolvedRefs")]);
        assert!(ours.conditions.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn unchanged_route_is_stable_and_transitions_update_time() {
        let st = status_of(&(SVC.to_owned() + &route("svc")));
        let t0 = time("2026-01-01T00:00:00Z");
        let t1 = time("2026-01-01T00:05:00Z");
        let first = desired_parents(&[], Some(&st), Some(1), &t0);
        assert_eq!(desired_parents(&first, Some(&st), Some(1), &t1), first, "no change, no write");

        // Backend goes missing: ResolvedRefs flips and only its time moves.
        let broken = status_of(&(SVC.to_owned() + &route("ghost")));
        let second = desired_parents(&first, Some(&broken), Some(2), &t1);
        let c = &second[0].conditions;
        assert_eq!((c[0].status.as_str(), &c[0].last_transition_time), ("True", &t0));
        assert_eq!(
            (c[1].status.as_str(), c[1].reason.as_str(), &c[1].last_transition_time),
            ("False", "BackendNotFound", &t1)
        );
        assert!(c[1].message.contains("ghost"));
    }

    #[test]
    fn merge_keeps_foreign_entries_raw_and_skips_noop_writes() {
        let st = status_of(&(SVC.to_owned() + &route("svc")));
        let t0 = time("2026-01-01T00:00:00Z");
        let foreign = serde_json::json!({"controllerName": "example.net/x", "parentRef": {"name": "gw"}, "conditions": [], "futureField": 1});
        let merged = merge_parents(std::slice::from_ref(&foreign), Some(&st), Some(1), &t0).expect("first write");
        assert_eq!(merged[0], foreign, "foreign entry untouched, unknown fields kept");
        assert_eq!(merged[1]["controllerName"], CONTROLLER_NAME);
        assert_eq!(merge_parents(&merged, Some(&st), Some(1), &time("2026-01-02T00:00:00Z")), None, "no-op");
        assert!(merge_parents(&merged, Some(&st), Some(2), &t0).is_some(), "new generation is written");
    }

    #[test]
    fn route_without_service_parents_loses_our_entries() {
        let st = status_of(&(SVC.to_owned() + &route("svc")));
        let t0 = time("2026-01-01T00:00:00Z");
        let mut existing = desired_parents(&[], Some(&st), Some(1), &t0);
        existing.insert(0, other_controller());
        assert_eq!(desired_parents(&existing, None, Some(2), &t0), vec![other_controller()]);
    }
}
