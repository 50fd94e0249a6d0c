//! `strait-controller`: GRPCRoute status for GAMMA Service parents, leader-elected.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;
use strait_kube::lease::{LeaderElector, LeaseConfig};

#[derive(Debug, Parser)]
#[command(name = "strait-controller", version, about = "Writes GRPCRoute status for Service parents (GAMMA)")]
struct Args {
    /// Namespace of the Lease (the controller's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "strait-system")]
    namespace: String,
    /// This replica's identity in the election.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, env = "STRAIT_LEASE_NAME", default_value = "strait-status-controller")]
    lease_name: String,
    /// Require ReferenceGrants for cross-namespace backendRefs (must match the proxies).
    #[arg(long, env = "STRAIT_REQUIRE_REFERENCE_GRANTS", default_value_t = false)]
    require_reference_grants: bool,
    /// Full status pass interval, besides every change.
    #[arg(long, env = "STRAIT_RESYNC_SECONDS", default_value_t = 60)]
    resync_seconds: u64,
    /// ClusterRoleBinding whose subjects to keep equal to the ServiceAccount groups of
    /// the namespaces labelled strait.io/inject=enabled (deploy/ sets strait-proxy).
    /// Empty: leave bindings alone.
    #[arg(long, env = "STRAIT_PROXY_BINDING", default_value = "")]
    proxy_binding: String,
    /// /ready and /live.
    #[arg(long, env = "STRAIT_HEALTH_ADDR", default_value = "0.0.0.0:15021")]
    health_addr: SocketAddr,
    #[arg(long, env = "STRAIT_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if args.resync_seconds == 0 {
        anyhow::bail!("--resync-seconds must be greater than zero");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", args.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(strait_log::stderr_colour())
        .with_writer(std::io::stderr)
        .init();
    let identity = match args.identity.clone() {
        Some(i) if !i.is_empty() => i,
        _ => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("strait-controller-{}", std::process::id())),
    };
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args, identity))
}

async fn run(args: Args, identity: String) -> anyhow::Result<()> {
    let client =
        kube::Client::try_default().await.context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let health = tokio::net::TcpListener::bind(args.health_addr)
        .await
        .with_context(|| format!("binding {}", args.health_addr))?;
    let elector = LeaderElector::new(
        client.clone(),
        LeaseConfig {
            namespace: args.namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        },
    );
    let leader = elector.subscribe();
    tokio::spawn(elector.run());
    let controller = strait_controller::StatusController::new(
        client.clone(),
        strait_routing::CompileOptions { require_reference_grants: args.require_reference_grants },
    );
    let keeper = (!args.proxy_binding.is_empty())
        .then(|| strait_controller::proxy_binding::ProxyBindingKeeper::new(client, args.proxy_binding.clone()));
    if let Some(keeper) = keeper.clone() {
        tokio::spawn(keeper.run(leader.clone(), Duration::from_secs(args.resync_seconds)));
    }
    let ready = controller.clone();
    let router = axum::Router::new()
        .route(
            "/ready",
            axum::routing::get(move || {
                let ready = ready.clone();
                let keeper = keeper.clone();
                async move {
                    // Ready once every watch has listed, leader or not: a standby
                    // replica is ready to take over.
                    if ready.synced() && keeper.as_ref().is_none_or(|k| k.synced()) {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "syncing\n")
                    }
                }
            }),
        )
        .route("/live", axum::routing::get(|| async { "live\n" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(health, router).await {
            tracing::error!(error = %e, "health server failed");
        }
    });
    tracing::info!(
        %identity,
        lease = %args.lease_name,
        namespace = %args.namespace,
        proxy_binding = %args.proxy_binding,
        "strait-controller starting"
    );
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        _ = controller.run(leader, Duration::from_secs(args.resync_seconds)) => {}
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        r = tokio::signal::ctrl_c() => { r.context("signal handler")?; }
    }
    Ok(())
}
