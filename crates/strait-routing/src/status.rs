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
    /// The parentRef as written, with group/kind/namespace defaulted.
    pub parent_ref: ParentReference,
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
