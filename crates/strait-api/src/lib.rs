//! The Kubernetes resources Strait reads, and a parser for ordinary multi-document
//! manifest files (file mode).
//!
//! `EndpointSlice` comes from k8s-openapi; Services are read into the compact
//! [`MeshService`]. `GRPCRoute` and
//! `ReferenceGrant` are mirrored here with *open* string fields where the CRD has
//! enums (`type`, `kind`, ...): the Gateway API wants a route carrying a value we do
//! not support to be reported `Accepted=False/UnsupportedValue`, which is impossible
//! if deserialisation of the whole snapshot fails first. Fields the API server would
//! default (weight, match type, backendRef group/kind) stay `Option` here and are
//! defaulted in one place, the routing model, so file mode and kube mode agree.
#![forbid(unsafe_code)]

mod gateway;
mod manifest;
mod service;

pub use gateway::*;
pub use k8s_openapi::api::core::v1::Service;
pub use k8s_openapi::api::discovery::v1::EndpointSlice;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
pub use manifest::{ManifestError, Resources, parse_manifests};
pub use service::{MeshService, MeshServicePort};
