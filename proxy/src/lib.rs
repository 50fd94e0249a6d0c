//! Strait's sidecar proxy.
//!
//! The binary (`main.rs`) only parses flags and calls [`run`]. The request path lives
//! in [`proxy`], connection handling in [`server`] and [`pool`], configuration sources
//! in [`file_source`], and the admin endpoint in [`admin`].
// `deny`, not `forbid`: heap.rs holds the one libc call (commented there).
#![deny(unsafe_code)]

pub mod admin;
pub mod body;
pub mod config;
pub mod file_source;
pub mod flood_guard;
pub mod frames;
pub mod grpc;
pub mod h2io;
pub mod heap;
pub mod histogram;
pub mod kube_source;
pub mod listen;
pub mod pool;
pub mod proxy;
pub mod read_turns;
pub mod retry;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod transparent;
pub mod upstream;
pub mod wait_ready;

use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Runs the proxy until SIGTERM/SIGINT, then drains. `args` must be validated.
pub async fn run(args: config::Args) -> anyhow::Result<()> {
    let metrics = telemetry::install().context("installing the metrics recorder")?;
    let shared = state::SharedState::new();
    let compile_options = strait_routing::CompileOptions { require_reference_grants: args.require_reference_grants };
    // Kubernetes mode needs a client config; find it before binding any port.
    let kube = match &args.config_dir {
        Some(_) => None,
        None => {
            let client = kube::Client::try_default().await.context(
                "no --config-dir given, so Kubernetes mode: but no Kubernetes client configuration was found \
                 (in-cluster service account or KUBECONFIG)",
            )?;
            Some(kube_source::KubeSource::new(client, compile_options.clone()))
        }
    };
    let pool = pool::Pool::new(pool::ClientConfig { connect_timeout: args.connect_timeout, h2: args.h2.clone() });
    let proxy = Arc::new(proxy::Proxy {
        shared: shared.clone(),
        demand: kube.clone(),
        pool: pool.clone(),
        methods: telemetry::MethodTable::default(),
        namespace: args.namespace.clone(),
        cluster_domain: args.cluster_domain.clone(),
        inbound_app_addr: args.inbound_app_addr,
        retry_budget: retry::RetryBudget::new(args.retry_budget_ratio, args.retry_budget_min_per_second),
        route_metrics: telemetry::RouteMetricsCache::default(),
        max_grpc_message_bytes: args.max_grpc_message_bytes,
    });

    // Bind everything first so a port conflict fails start-up, not a later request.
    // Outbound, inbound and probe listen on both families (see `listen`).
    let outbound = listen::bind_all("outbound-addr", &args.outbound_addr)?;
    let inbound = listen::bind_all("inbound-addr", &args.inbound_addr)?;
    let admin = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding --admin-addr {}", args.admin_addr))?;
    let probe = if args.probe_addr.is_empty() { Vec::new() } else { listen::bind_all("probe-addr", &args.probe_addr)? };
    tracing::info!(
        outbound = %listen::local_addrs(&outbound), inbound = %listen::local_addrs(&inbound),
        admin = %admin.local_addr()?, probe = %listen::local_addrs(&probe),
        namespace = %args.namespace,
        source = %args.config_dir.as_ref().map_or_else(|| "kubernetes".to_owned(), |d| d.display().to_string()),
        "strait-proxy listening"
    );

    let upkeep_proxy = proxy.clone();
    let on_publish = move || {
        upkeep_proxy.prune_pool();
        upkeep_proxy.route_metrics.clear();
        metrics::gauge!("strait_config_generation").set(upkeep_proxy.shared.load().version as f64);
    };
    match (&args.config_dir, kube) {
        (Some(dir), _) => {
            let source = file_source::FileSource::new(dir.clone(), args.namespace.clone(), compile_options);
            tokio::spawn(file_source::run(source, shared.clone(), args.config_poll, on_publish));
        }
        (None, Some(kube)) => {
            tokio::spawn(kube.run(shared.clone(), args.endpoint_idle_timeout, on_publish));
        }
        (None, None) => anyhow::bail!("no configuration source"),
    }
    // Unrouted destinations are dropped once idle even when no configuration changes.
    let sweep_proxy = proxy.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(pool::UNROUTED_IDLE_TIMEOUT / 5);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            sweep_proxy.prune_pool();
        }
    });
    let admin_state = admin::AdminState { shared: shared.clone(), proxy: proxy.clone(), metrics };
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_router = admin::router(admin_state.clone());
    let mut admin_stop = stop_rx.clone();
    tokio::spawn(async move {
        let service = admin_router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let serve = axum::serve(admin, service).with_graceful_shutdown(async move {
            let _ = admin_stop.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    for probe in probe {
        let router = admin::probe_router(admin_state.clone());
        let mut probe_stop = stop_rx.clone();
        tokio::spawn(async move {
            let serve = axum::serve(probe, router).with_graceful_shutdown(async move {
                let _ = probe_stop.changed().await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "probe server failed");
            }
        });
    }

    // One task per socket; each drains its own connections on shutdown.
    let mut tasks = Vec::new();
    if args.transparent {
        let t = transparent::Transparent::new(
            proxy.clone(),
            args.h2.clone(),
            args.opaque_ports.iter().copied().collect(),
            args.detect_timeout,
        );
        let sides = outbound.into_iter().map(|l| (telemetry::Side::Outbound, l));
        for (side, listener) in sides.chain(inbound.into_iter().map(|l| (telemetry::Side::Inbound, l))) {
            tasks.push(tokio::spawn(t.clone().serve(side, listener, stop_rx.clone(), args.drain_timeout)));
        }
    } else {
        for listener in outbound {
            let out_proxy = proxy.clone();
            tasks.push(tokio::spawn(server::serve_h2(
                "outbound",
                listener,
                args.h2.clone(),
                // Boxed: hyper spawns one task per stream holding this future; a pointer
                // instead of the whole future saves a large memcpy per request.
                move |req| Box::pin(out_proxy.clone().outbound(req)),
                stop_rx.clone(),
                args.drain_timeout,
            )));
        }
        for listener in inbound {
            let in_proxy = proxy.clone();
            tasks.push(tokio::spawn(server::serve_h2(
                "inbound",
                listener,
                args.h2.clone(),
                move |req| Box::pin(in_proxy.clone().inbound(req)),
                stop_rx.clone(),
                args.drain_timeout,
            )));
        }
    }

    shutdown_signal().await?;
    tracing::info!("shutdown signal received: refusing new connections, draining");
    let _ = stop_tx.send(true);
    futures::future::join_all(tasks).await;
    tracing::info!("strait-proxy stopped");
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
