//! Route status as the Gateway API defines it, per Service parentRef.
use crate::model::RouteRef;
use serde::Serialize;
use strait_api::ParentReference;

/// One status condition. `reason` is the Gateway API's reason string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub(crate) fn ok(reason: &str) -> Self {
        Condition { status: true, reason: reason.into(), message: String::new() }
    }
    pub(crate) fn failed(reason: &str, message: impl Into<String>) -> Self {
        Condition { status: false, reason: reason.into(), message: message.into() }
    }
}

/// `Accepted` and `ResolvedRefs` for one Service parentRef of a route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    /// The parentRef exactly as written in the spec (status must echo it).
    pub parent_ref: ParentReference,
    /// The Service it names (namespace defaulted to the route's).
    pub service: crate::model::ServiceKey,
    pub accepted: Condition,
    pub resolved_refs: Condition,
}

/// The status of one GRPCRoute that names at least one Service parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub route: RouteRef,
    pub generation: Option<i64>,
    pub parents: Vec<ParentStatus>,
}

impl RouteStatus {
    /// True when every Service parent accepted the route.
    pub fn accepted(&self) -> bool {
        self.parents.iter().all(|p| p.accepted.status)
    }
}
