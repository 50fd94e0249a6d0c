//! Strait's routing model for GAMMA (Gateway API in mesh mode).
//!
//! [`compile`] turns a snapshot of Services, EndpointSlices, GRPCRoutes and
//! ReferenceGrants into a [`RoutingState`]: for every Service port an ordered routing
//! table for producers plus one per consumer namespace, and for every route the status
//! the Gateway API defines (`Accepted`, `ResolvedRefs`). The proxy routes with the
//! tables and the status controller writes the statuses; both come from this one
//! function, so what `kubectl get grpcroute` says and what the data plane does cannot
//! disagree.
//!
//! Everything here is pure and deterministic. Randomness for weighted choices is
//! passed in by the caller.
#![forbid(unsafe_code)]

mod authority;
mod compile;
mod filters;
mod matching;
mod model;
mod status;

pub use authority::{AuthorityError, Destination, parse_authority, with_authority};
pub use compile::{CompileOptions, Snapshot, compile};
pub use filters::{HeaderModifierFilter, MirrorFilter};
pub use matching::{HeaderMatcher, MethodMatcher, RequestMatcher, RequestView};
pub use model::*;
pub use status::{Condition, ParentStatus, RouteStatus};

#[cfg(test)]
mod tests;
