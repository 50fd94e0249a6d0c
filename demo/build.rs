//! Compiles demo/proto with `protox` (pure Rust) because no `protoc` binary
//! is available on build machines, then feeds the descriptor set to
//! tonic-prost-build for client and server code generation.

use std::path::Path;

const PROTOS: &[&str] = &[
    "strait/demo/v1/common.proto",
    "strait/test/v1/echo.proto",
    "user/v1/user.proto",
    "order/v1/order.proto",
    "recommendation/v1/recommendation.proto",
    "payment/v1/payment.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, [root])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
