//! Strait's injector: the mutating admission webhook that adds the `strait-init` init
//! container and the `strait-proxy` sidecar to pods, and the same mutation as a CLI.
//! The mutation itself is the pure `strait-inject` crate.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod cli;
pub mod tls;
pub mod webhook;
