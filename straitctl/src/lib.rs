//! straitctl: the user's command line for Strait. The binary (main.rs) only parses
//! arguments and prints; everything here is testable on its own.
#![forbid(unsafe_code)]

pub mod check;
pub mod cluster;
pub mod routes_view;
pub mod uninject;
