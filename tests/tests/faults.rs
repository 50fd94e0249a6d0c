//! Fault injection with real processes: backends SIGKILLed mid-stream and
//! restarted, routes rewritten every 100 ms for a minute under load, a kube-mode
//! watch that ends in 410 Gone, a rolling replacement of every endpoint, the
//! sidecar SIGTERMed under load, and the retry budget against dead endpoints.
//!
//! Every test prints a `FIGURES` line (faults injected, requests sent, requests
//! failed, proxy VmRSS peak). Assertions are on counts, not tight timings: other
//! CPU-heavy work (benchmarks) may run on the same machine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use strait_demo::pb::echo_v1::echo_client::EchoClient;
use strait_e2e::hostile::{
    self, Background, DemoServer, Ep, RawH2, RssSampler, count_log_lines, endpoint_slices_with_conditions, figures,
    note, weighted_route_yaml,
};
use strait_e2e::kube_mode::{CallEvent, NetBackend, TestNet, Traffic, deploy_dir, skip_unless_root};
use strait_e2e::{
    DeadPorts, Mesh, NS, Probe, ProxyProcess, authority, endpoint_slice_yaml, free_addrs, probe, services_yaml,
    spawn_backend, wait_for,
};
use strait_testenv::{TestEnv, TestEnvOptions};
use tokio::net::TcpStream;
use tonic::transport::Channel;

async fn echo_once(client: &mut EchoClient<Channel>, payload: &str) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(probe(payload));
    req.set_timeout(Duration::from_secs(5));
    client.unary(req).await.map(|r| r.into_inner().backend)
}

fn pid_of(proxy: &ProxyProcess) -> Result<u32> {
    proxy.pid().context("proxy has no pid")
}

// ---------------------------------------------------------------------------
// 1. Backend SIGKILLed mid-stream; restarted on the same port
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_sigkill_mid_stream_fails_fast_and_traffic_moves() -> Result<()> {
    let mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["kill-service"]))?;
    let addrs = free_addrs(2)?;
    let mut a = DemoServer::start("kill-a", addrs[0]).await?;
    let mut b = DemoServer::start("kill-b", addrs[1]).await?;
    mesh.write("endpoints.yaml", &endpoint_slice_yaml(NS, "kill-service", "grpc", &addrs))?;
    let proxy = mesh.start_proxy(NS, &["--log-level", "info,strait_proxy::proxy=debug"]).await?;
    let rss = RssSampler::start(pid_of(&proxy)?);
    let channel = proxy.channel(&authority("kill-service", NS)).await?;
    let mut client = EchoClient::new(channel.clone());
    let mut sent = 0u64;
    let mut failed = 0u64;

    // Warm up: pooled connections to both replicas.
    let mut warm = BTreeMap::<String, usize>::new();
    for i in 0..40 {
        sent += 1;
        match echo_once(&mut client, &format!("warm-{i}")).await {
            Ok(b) => *warm.entry(b).or_default() += 1,
            Err(s) => bail!("warm-up call failed: {s:?}"),
        }
    }

    // A long server stream (10,000 x 20 ms); kill whichever replica serves it.
    sent += 1;
    let mut stream =
        client.server_stream(Probe { stream_count: 10_000, delay_ms: 20, ..probe("long") }).await?.into_inner();
    let first = stream.message().await?.context("long stream: no first message")?;
    let (victim, survivor) = if first.backend == "kill-a" { (&mut a, "kill-b") } else { (&mut b, "kill-a") };
    ensure!(first.backend == victim.name(), "stream served by {}", first.backend);
    let victim_addr = victim.addr();
    let victim_name = victim.name().to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed_at = Instant::now();
    victim.sigkill().await?;

    // The stream ends with an error status (no hang; the deadline is generous).
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut n = 1;
        loop {
            match stream.message().await {
                Ok(Some(_)) => n += 1,
                Ok(None) => break (n, None),
                Err(s) => break (n, Some(s)),
            }
        }
    })
    .await;
    let (messages, status) = ended.map_err(|_| anyhow::anyhow!("stream hung > 30 s after its backend was killed"))?;
    let stream_end_after = killed_at.elapsed();
    let status = status.context("the stream ended OK although its backend was SIGKILLed")?;
    failed += 1; // the killed stream, expected
    note(&format!(
        "sigkill: stream served by {victim_name} ended after {messages} messages, {stream_end_after:.1?} after the kill, \
         with {:?}: {:?}",
        status.code(),
        status.message()
    ));

    // Unary calls right after the kill all succeed, on the survivor.
    let mut after_kill = BTreeMap::<String, usize>::new();
    let mut unary_failed = Vec::new();
    let unary_started = Instant::now();
    for i in 0..300 {
        sent += 1;
        match echo_once(&mut client, &format!("after-{i}")).await {
            Ok(b) => *after_kill.entry(b).or_default() += 1,
            Err(s) => {
                failed += 1;
                unary_failed.push(format!("{:?}: {}", s.code(), s.message()));
            }
        }
    }
    let unary_took = unary_started.elapsed();
    // (The log may carry ANSI colour codes between field names and values.)
    let needle = victim_addr.to_string();
    let connect_failures = std::fs::read_to_string(proxy.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("connect failed; endpoint backed off") && l.contains(&needle))
        .count();
    note(&format!(
        "sigkill: 300 unary calls in {unary_took:.1?} after the kill: {after_kill:?}, failed {}; connection attempts \
         to the dead endpoint meanwhile: {connect_failures}",
        unary_failed.len()
    ));
    ensure!(unary_failed.is_empty(), "calls failed after the kill: {:?}", &unary_failed[..unary_failed.len().min(5)]);
    ensure!(after_kill.keys().all(|b| b == survivor), "answers from the dead replica? {after_kill:?}");
    // Without backoff about half of 300 calls would try the dead endpoint first.
    ensure!(
        connect_failures <= 25,
        "the refused endpoint was tried {connect_failures} times in {unary_took:?}: not taken out of rotation"
    );

    // Restart a server on the same port: it gets traffic again once its backoff
    // (at most 10 s) ends; the deadline is generous.
    let restarted = DemoServer::start("kill-restarted", victim_addr).await?;
    let restart_at = Instant::now();
    let mut back_after = None;
    while restart_at.elapsed() < Duration::from_secs(60) {
        sent += 1;
        match echo_once(&mut client, "probe-restart").await {
            Ok(b) if b == restarted.name() => {
                back_after = Some(restart_at.elapsed());
                break;
            }
            Ok(_) => {}
            Err(s) => bail!("call failed while waiting for the restarted replica: {s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back_after = back_after.context("restarted replica got no traffic within 60 s")?;
    let errors = proxy.metrics().await?.sum_by("strait_proxy_errors_total", "reason", |_| true);
    figures(
        "backend_sigkill",
        2,
        sent,
        failed,
        rss.peak_kib(),
        &format!(
            "killed stream ended {:?} after {stream_end_after:.1?}; restarted replica served again after \
             {back_after:.1?}; dead-endpoint connect attempts {connect_failures}; strait_proxy_errors_total {errors:?}",
            status.code()
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Route rewritten every 100 ms for 60 s under constant load
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_churn_every_100ms_for_60s_under_load() -> Result<()> {
    // The churn lasts at least RUN and at least REWRITES rewrites, and until MIN_CALLS
    // calls were made (counts, however busy the machine is); GIVE_UP only bounds a hang.
    const RUN: Duration = Duration::from_secs(60);
    const REWRITES: usize = 600;
    const MIN_CALLS: usize = 6_000;
    const GIVE_UP: Duration = Duration::from_secs(600);
    const WEIGHT_A: u32 = 70;
    const WEIGHT_B: u32 = 30;
    // 4 workers x one call per 20 ms = 200 calls/s at most.
    const WORKERS: usize = 4;
    const PACE: Duration = Duration::from_millis(20);
    const MAX_CALLS: usize = 20_000;
    // 5 standard deviations of a 70/30 split over MIN_CALLS calls.
    const TOLERANCE: f64 = 0.03;

    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["churn", "churn-a", "churn-b"]))?;
    mesh.spawn(NS, "churn-a", "churn-a").await?;
    mesh.spawn(NS, "churn-b", "churn-b").await?;
    mesh.write_endpoints()?;
    let route = |version: usize| {
        weighted_route_yaml(
            NS,
            "churn-route",
            "churn",
            &[("churn-a", WEIGHT_A), ("churn-b", WEIGHT_B)],
            &version.to_string(),
        )
    };
    mesh.write("route.yaml", &route(0))?;
    let proxy = mesh.start_proxy(NS, &["--config-poll", "50ms"]).await?;
    let rss = RssSampler::start(pid_of(&proxy)?);
    let generation_before = proxy.metrics().await?.sum("strait_config_generation", &[]);
    let channel = proxy.channel(&authority("churn", NS)).await?;

    // Load: per call, the backend and the x-route-version the response carried.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<(String, String), String>>();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (stop, calls, tx) = (stop.clone(), calls.clone(), tx.clone());
        let mut client = EchoClient::new(channel.clone());
        workers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PACE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if calls.fetch_add(1, Ordering::Relaxed) >= MAX_CALLS {
                    break;
                }
                let mut req = tonic::Request::new(probe(&format!("churn-{w}")));
                req.set_timeout(Duration::from_secs(5));
                let r = match client.unary(req).await {
                    Ok(resp) => {
                        let version = resp
                            .metadata()
                            .get("x-route-version")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("none")
                            .to_owned();
                        Ok((resp.into_inner().backend, version))
                    }
                    Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                };
                let _ = tx.send(r);
            }
        }));
    }
    drop(tx);

    // Churn: a new route version every 100 ms (atomic rename), weights constant.
    let started = Instant::now();
    let mut rewrites = 0usize;
    while started.elapsed() < RUN || rewrites < REWRITES || calls.load(Ordering::Relaxed) < MIN_CALLS {
        ensure!(
            started.elapsed() < GIVE_UP && calls.load(Ordering::Relaxed) < MAX_CALLS,
            "{} calls and {rewrites} rewrites in {:.1?}",
            calls.load(Ordering::Relaxed),
            started.elapsed()
        );
        rewrites += 1;
        mesh.write("route.yaml", &route(rewrites))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let mut per_backend = BTreeMap::<String, usize>::new();
    let mut versions = BTreeSet::<String>::new();
    let mut errors = Vec::new();
    while let Some(r) = rx.recv().await {
        match r {
            Ok((b, v)) => {
                *per_backend.entry(b).or_default() += 1;
                versions.insert(v);
            }
            Err(e) => errors.push(e),
        }
    }
    let generation_after = proxy.metrics().await?.sum("strait_config_generation", &[]);
    let ok: usize = per_backend.values().sum();
    let sent = ok + errors.len();
    let share_a = per_backend.get("churn-a").copied().unwrap_or(0) as f64 / ok.max(1) as f64;
    let expected_a = f64::from(WEIGHT_A) / f64::from(WEIGHT_A + WEIGHT_B);
    figures(
        "route_churn_60s",
        rewrites as u64,
        sent as u64,
        errors.len() as u64,
        rss.peak_kib(),
        &format!(
            "{rewrites} route rewrites in {:.1?}, config generations applied {}, distinct route versions seen by \
             callers {}; per backend {per_backend:?}: churn-a share {:.2}% (configured {:.0}%, tolerance ±{:.0} pts)",
            started.elapsed(),
            generation_after - generation_before,
            versions.len(),
            share_a * 100.0,
            expected_a * 100.0,
            TOLERANCE * 100.0
        ),
    );
    ensure!(errors.is_empty(), "{} failed calls, first: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    ensure!(sent >= MIN_CALLS, "{sent} calls");
    ensure!((share_a - expected_a).abs() <= TOLERANCE, "split drifted: churn-a {share_a:.4} vs {expected_a}");
    // The rewrites really took effect while traffic ran (polled every 50 ms).
    ensure!(generation_after - generation_before >= 100.0, "only {} reloads", generation_after - generation_before);
    ensure!(versions.len() >= 50, "callers saw only {} route versions", versions.len());
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Kubernetes mode: a watch ending in 410 Gone
// ---------------------------------------------------------------------------

async fn apply_slice(client: &kube::Client, service: &str, addr: SocketAddr) -> Result<()> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let name = format!("{service}-e2e");
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": addr.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}],
    });
    api.patch(&name, &PatchParams::apply("strait-e2e").force(), &Patch::Apply(&slice))
        .await
        .with_context(|| format!("applying EndpointSlice {name}"))?;
    Ok(())
}

fn kubectl(env: &TestEnv, args: &[&str]) -> Result<String> {
    let out = env.kubectl().args(args).output().context("running kubectl")?;
    if !out.status.success() {
        bail!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watch_410_gone_relists_without_failed_requests() -> Result<()> {
    const COMPACTION: Duration = Duration::from_secs(5);
    const CHURN_WRITES: usize = 70;
    if !skip_unless_root("kube_watch_410_gone_relists_without_failed_requests") {
        return Ok(());
    }
    let net = TestNet::create()?;
    let opts = TestEnvOptions {
        extra_apiserver_args: vec![format!("--etcd-compaction-interval={}s", COMPACTION.as_secs())],
        ..TestEnvOptions::default()
    };
    let mut env = TestEnv::start(opts).await.context("starting the test control plane")?;
    let admin = env.client().await?;
    kubectl(&env, &["create", "namespace", NS])?;
    let examples = deploy_dir().join("examples");
    kubectl(
        &env,
        &[
            "apply",
            "-f",
            &examples.join("services.yaml").display().to_string(),
            "-f",
            &examples.join("grpcroutes.yaml").display().to_string(),
            "-f",
            &deploy_dir().join("base").join("proxy-rbac.yaml").display().to_string(),
        ],
    )?;
    // The binding ships without subjects (strait-controller, not run here, fills them
    // in for labelled namespaces).
    let subjects = format!(
        r#"{{"subjects":[{{"apiGroup":"rbac.authorization.k8s.io","kind":"Group","name":"system:serviceaccounts:{NS}"}}]}}"#
    );
    kubectl(&env, &["patch", "clusterrolebinding", "strait-proxy", "--type=merge", "-p", &subjects])?;
    let stable_1 = NetBackend::spawn(net.addr(), "order-service-stable").await?;
    let stable_2 = NetBackend::spawn(net.addr(), "order-service-stable-2").await?;
    let canary = NetBackend::spawn(net.addr(), "order-service-canary").await?;
    apply_slice(&admin, "order-service-stable", stable_1.addr()).await?;
    apply_slice(&admin, "order-service-canary", canary.addr()).await?;
    let token = env.service_account_token(NS, "default").await?;
    let kubeconfig = env.kubeconfig_for_token(&token)?;
    let proxy = ProxyProcess::start_kube(
        &kubeconfig,
        NS,
        &[
            "--log-level",
            "info,strait_kube=debug,kube_runtime=debug,strait_proxy::kube_source=debug",
            // One JSON object a line: the 410 and the relist are read from its fields.
            "--log-format",
            "json",
        ],
    )
    .await?;
    let rss = RssSampler::start(pid_of(&proxy)?);
    let channel = proxy.channel(&authority("order-service", NS)).await?;
    let mut traffic = Traffic::start(channel, 2, Duration::from_millis(8), 20_000);
    let mut events: Vec<CallEvent> = Vec::new();
    let drain = |traffic: &mut Traffic, events: &mut Vec<CallEvent>| {
        while let Ok(e) = traffic.events.try_recv() {
            events.push(e);
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let extra = env.start_extra_apiserver().await?;
    let extra_client = extra.client().await?;

    // Outage of the proxy's API server; meanwhile the endpoints change and many
    // writes go through the second API server, so etcd compacts past every
    // resourceVersion the proxy's watches hold. (The restarted API server's watch
    // cache also starts at the current revision: either way a watch resumed from
    // before the outage is answered 410 Expired. With compaction off and the watch
    // cache disabled no 410 came, and the test failed on that, as it must.)
    env.stop_apiserver().await?;
    let stopped_at = Instant::now();
    apply_slice(&extra_client, "order-service-stable", stable_2.addr()).await?;
    let cms: Api<ConfigMap> = Api::namespaced(extra_client.clone(), NS);
    for i in 0..CHURN_WRITES {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "churn", "namespace": NS},
            "data": {"i": i.to_string()}});
        cms.patch("churn", &PatchParams::apply("strait-e2e").force(), &Patch::Apply(&cm)).await?;
        // Service and GRPCRoute revisions move too (annotations only: routing unchanged).
        if i % 10 == 0 {
            let ann = json!({"metadata": {"annotations": {"strait.io/e2e-churn": i.to_string()}}});
            let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(extra_client.clone(), NS);
            svcs.patch("order-service", &PatchParams::default(), &Patch::Merge(&ann)).await?;
        }
        drain(&mut traffic, &mut events);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Past at least two compaction intervals since the last write the proxy saw.
    while stopped_at.elapsed() < COMPACTION * 3 + Duration::from_secs(1) {
        drain(&mut traffic, &mut events);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during_stable2 =
        events.iter().filter(|e| e.at >= stopped_at && e.result.as_deref() == Ok("order-service-stable-2")).count();
    env.start_apiserver().await?;
    let up_at = Instant::now();
    let outage = up_at - stopped_at;

    // Converges: the new endpoint answers.
    let mut converged = None;
    // A deadline for the condition (watch backoff is at most ~6 s).
    while up_at.elapsed() < Duration::from_secs(60) {
        let Ok(e) = traffic.next(Duration::from_secs(10)).await else { break };
        let hit = e.result.as_deref() == Ok("order-service-stable-2");
        let at = e.at;
        events.push(e);
        if hit {
            converged = Some(at.saturating_duration_since(up_at));
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tail_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    events.extend(traffic.stop().await);
    drop(extra);

    let log = std::fs::read_to_string(proxy.log_path()).unwrap_or_default();
    let watch_log = WatchLog::parse(&log);
    let gone = watch_log.gone();
    let relisted_after_gone: BTreeMap<&str, bool> =
        gone.iter().map(|(line, watch)| (*watch, watch_log.relisted_after(*line, watch))).collect();
    let failed: Vec<&CallEvent> = events.iter().filter(|e| e.result.is_err()).collect();
    let tail: BTreeMap<String, usize> =
        events.iter().filter(|e| e.at >= tail_from).fold(BTreeMap::new(), |mut m, e| {
            *m.entry(format!("{:?}", e.result)).or_default() += 1;
            m
        });
    for (line, watch) in gone.iter().take(4) {
        note(&format!("410: proxy log: watch {watch}: {}", watch_log.error(*line)));
    }
    figures(
        "kube_watch_410_gone",
        1 + CHURN_WRITES as u64,
        events.len() as u64,
        failed.len() as u64,
        rss.peak_kib(),
        &format!(
            "API server down {outage:.1?} with {CHURN_WRITES} writes + an endpoint swap through a second API server \
             (compaction every {COMPACTION:?}); watch errors 410 Gone/Expired in the proxy log: {}; relisted after \
             it, per watch: {relisted_after_gone:?}; new endpoint served {} after restart; last second of traffic: \
             {tail:?}",
            gone.len(),
            converged.map_or_else(|| "NEVER".to_owned(), |d| format!("{d:.1?}")),
        ),
    );
    // The case under test happened: the API server answered a watch with 410 Gone
    // (its resourceVersion compacted away), and the watch relisted after it.
    ensure!(
        !gone.is_empty(),
        "no watch of the proxy got 410 Gone: the test repeated the plain outage case; log tail:\n{}",
        proxy.log_tail(30)
    );
    ensure!(
        relisted_after_gone.values().all(|r| *r),
        "a watch that got 410 Gone never relisted after it: {relisted_after_gone:?}"
    );
    ensure!(failed.is_empty(), "{} failed calls, first: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    ensure!(during_stable2 == 0, "the endpoint swap was seen during the outage");
    converged.with_context(|| format!("never converged on the new endpoint; log tail:\n{}", proxy.log_tail(30)))?;
    ensure!(
        tail.keys().all(|k| k.contains("order-service-stable-2") || k.contains("order-service-canary")),
        "old endpoint still served after convergence: {tail:?}"
    );
    drop(proxy);
    drop((stable_1, stable_2, canary));
    drop(env);
    drop(net);
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Rolling replacement of every endpoint under load
// ---------------------------------------------------------------------------

/// Writes the endpoints file and waits until the proxy has applied it (its config
/// generation moved on); returns when that was seen. Calls that start after it route
/// by the new endpoints.
async fn apply_endpoints(mesh: &Mesh, proxy: &ProxyProcess, service: &str, eps: Vec<Ep>) -> Result<Instant> {
    // A deadline for a condition (the poll is 100 ms), not a measurement.
    const APPLY_DEADLINE: Duration = Duration::from_secs(60);
    let before = proxy.metrics().await?.sum("strait_config_generation", &[]);
    mesh.write("endpoints.yaml", &endpoint_slices_with_conditions(NS, service, &eps))?;
    let written = Instant::now();
    loop {
        if proxy.metrics().await?.sum("strait_config_generation", &[]) > before {
            return Ok(Instant::now());
        }
        ensure!(written.elapsed() < APPLY_DEADLINE, "endpoints of {service} not applied within {APPLY_DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replacement_of_all_endpoints_under_load() -> Result<()> {
    // Traffic between the steps, so each state carries calls (pacing, not a wait for
    // anything: every step waits until the proxy has applied it).
    const STEP: Duration = Duration::from_millis(700);
    const WORKERS: usize = 4;
    // Calls examined after the last step, all of which must reach the new replicas.
    const TAIL: usize = 300;
    let mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["roll-service"]))?;
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(Some(spawn_backend(&format!("roll-old-{i}")).await?));
    }
    let old_addrs: Vec<SocketAddr> = old.iter().flatten().map(|b| b.addr()).collect();
    let mut new_addrs: Vec<SocketAddr> = Vec::new();
    let mut new = Vec::new();
    mesh.write(
        "endpoints.yaml",
        &endpoint_slices_with_conditions(
            NS,
            "roll-service",
            &old_addrs.iter().copied().map(Ep::ready).collect::<Vec<_>>(),
        ),
    )?;
    let proxy = mesh.start_proxy(NS, &["--config-poll", "100ms"]).await?;
    let rss = RssSampler::start(pid_of(&proxy)?);
    let channel = proxy.channel(&authority("roll-service", NS)).await?;
    let mut traffic = Traffic::start(channel, WORKERS, Duration::from_millis(5), 60_000);
    let mut events = Vec::new();
    let drain = |traffic: &mut Traffic, events: &mut Vec<CallEvent>| {
        while let Ok(e) = traffic.events.try_recv() {
            events.push(e);
        }
    };
    tokio::time::sleep(STEP).await;
    // (replica, when the proxy was seen to have applied its terminating mark)
    let mut terminating_applied: Vec<(String, Instant)> = Vec::new();
    for i in 0..3 {
        // Add the new replica, ready.
        let b = spawn_backend(&format!("roll-new-{i}")).await?;
        new_addrs.push(b.addr());
        new.push(b);
        let mut eps: Vec<Ep> = old_addrs[i..].iter().copied().map(Ep::ready).collect();
        eps.extend(new_addrs.iter().copied().map(Ep::ready));
        apply_endpoints(&mesh, &proxy, "roll-service", eps).await?;
        tokio::time::sleep(STEP).await;
        drain(&mut traffic, &mut events);
        // Mark the old one terminating (ready false, serving true).
        let mut eps = vec![Ep::terminating(old_addrs[i])];
        eps.extend(old_addrs[i + 1..].iter().copied().map(Ep::ready));
        eps.extend(new_addrs.iter().copied().map(Ep::ready));
        let applied = apply_endpoints(&mesh, &proxy, "roll-service", eps).await?;
        terminating_applied.push((format!("roll-old-{i}"), applied));
        tokio::time::sleep(STEP).await;
        drain(&mut traffic, &mut events);
        // Remove it, then stop it (gracefully) once the proxy has let it go.
        let mut eps: Vec<Ep> = old_addrs[i + 1..].iter().copied().map(Ep::ready).collect();
        eps.extend(new_addrs.iter().copied().map(Ep::ready));
        apply_endpoints(&mesh, &proxy, "roll-service", eps).await?;
        if let Some(h) = old[i].take() {
            h.shutdown().await?;
        }
        tokio::time::sleep(STEP).await;
        drain(&mut traffic, &mut events);
    }
    // The next TAIL calls to complete (after every step was applied and the old
    // replicas stopped; at most WORKERS of them were in flight before).
    drain(&mut traffic, &mut events);
    let mut tail_events = Vec::new();
    while tail_events.len() < TAIL {
        tail_events.push(traffic.next(Duration::from_secs(30)).await?);
    }
    let tail: BTreeMap<String, usize> = tail_events.iter().skip(WORKERS).fold(BTreeMap::new(), |mut m, e| {
        *m.entry(format!("{:?}", e.result)).or_default() += 1;
        m
    });
    events.extend(tail_events);
    events.extend(traffic.stop().await);

    let failed: Vec<&CallEvent> = events.iter().filter(|e| e.result.is_err()).collect();
    let mut per_backend = BTreeMap::<String, usize>::new();
    for e in &events {
        if let Ok(b) = &e.result {
            *per_backend.entry(b.clone()).or_default() += 1;
        }
    }
    // Calls answered by an old replica that completed after the proxy was seen to
    // have applied its terminating mark: only calls already in flight then, at most
    // one per worker; every call started later goes to a ready replica.
    let late_on_terminating: BTreeMap<&str, usize> = terminating_applied
        .iter()
        .map(|(name, applied)| {
            let late = events.iter().filter(|e| e.at > *applied && e.result.as_deref() == Ok(name)).count();
            (name.as_str(), late)
        })
        .collect();
    figures(
        "rolling_replacement",
        6,
        events.len() as u64,
        failed.len() as u64,
        rss.peak_kib(),
        &format!(
            "per backend {per_backend:?}; last {TAIL} calls {tail:?}; calls to an old replica completed after its \
             terminating mark was applied: {late_on_terminating:?} (at most {WORKERS} in flight)"
        ),
    );
    ensure!(failed.is_empty(), "{} failed calls, first: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    ensure!(tail.keys().all(|k| k.contains("roll-new-")), "traffic not all on the new set at the end: {tail:?}");
    for i in 0..3 {
        ensure!(tail.contains_key(&format!("Ok(\"roll-new-{i}\")")), "roll-new-{i} idle at the end: {tail:?}");
    }
    ensure!(
        late_on_terminating.values().all(|n| *n <= WORKERS),
        "terminating replicas still got calls started after the mark was applied: {late_on_terminating:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Sidecar SIGTERM under load
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_sigterm_under_load_drains_and_exits_zero() -> Result<()> {
    const UNARY_WORKERS: usize = 32;
    const STREAMS: usize = 3;
    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["drain-service"]))?;
    mesh.spawn(NS, "drain-service", "drain-1").await?;
    mesh.spawn(NS, "drain-service", "drain-2").await?;
    mesh.write_endpoints()?;
    let mut proxy = mesh.start_proxy(NS, &["--drain-timeout", "10s"]).await?;
    let rss = RssSampler::start(pid_of(&proxy)?);
    let auth = authority("drain-service", NS);
    // An idle raw connection that reports the GOAWAY it receives.
    let watcher = RawH2::connect(proxy.outbound_addr(), &[], true).await?;
    watcher.handshake().await?;
    let channels = [proxy.channel(&auth).await?, proxy.channel(&auth).await?];

    // Unary workers: 250 ms calls back to back until told to stop starting new ones.
    // `begun` counts calls a worker committed to (before it checks the flag, so that
    // once the flag is set it no longer grows for good).
    let no_new_calls = Arc::new(AtomicBool::new(false));
    let begun = Arc::new(AtomicUsize::new(0));
    let mut unary = Vec::new();
    for w in 0..UNARY_WORKERS {
        let mut client = EchoClient::new(channels[w % 2].clone());
        let (stop, begun) = (no_new_calls.clone(), begun.clone());
        unary.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut errors) = (0usize, 0usize, Vec::new());
            loop {
                begun.fetch_add(1, Ordering::SeqCst);
                if stop.load(Ordering::SeqCst) {
                    begun.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
                let req = Probe { delay_ms: 250, ..probe(&format!("u{w}")) };
                match client.unary(req).await {
                    Ok(_) => ok += 1,
                    Err(s) => {
                        failed += 1;
                        errors.push(format!("{:?}: {}", s.code(), s.message()));
                    }
                }
            }
            (ok, failed, errors)
        }));
    }
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let mut client = EchoClient::new(channels[i % 2].clone());
        streams.push(tokio::spawn(async move {
            let mut s =
                client.server_stream(Probe { stream_count: 25, delay_ms: 100, ..probe("s") }).await?.into_inner();
            let mut n = 0;
            while s.message().await?.is_some() {
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    // Load for a while (pacing: the calls running at the SIGTERM are what matters).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // No call starts after this point; those already running must complete. Wait
    // until the proxy has received every call begun (and the streams), so none is
    // still on its way when the SIGTERM comes.
    no_new_calls.store(true, Ordering::SeqCst);
    let received = wait_for("every begun call to reach the proxy", Duration::from_secs(60), || async {
        let started = proxy.metrics().await?.sum("grpc_client_started_total", &[]);
        let expected = (begun.load(Ordering::SeqCst) + STREAMS) as f64;
        Ok((started >= expected).then_some(started))
    })
    .await?;
    let signalled = Instant::now();
    proxy.sigterm()?;

    // Deadlines for conditions; the drain itself takes ≥ 2.5 s (the streams).
    let goaway = watcher.wait_for(Duration::from_secs(10), |s| s.goaway.is_some()).await;
    // New connections are refused while draining.
    let mut refused_after = None;
    while signalled.elapsed() < Duration::from_secs(10) {
        match TcpStream::connect(proxy.outbound_addr()).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused_after = Some(signalled.elapsed());
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
    for u in unary {
        let (o, f, e) = u.await?;
        ok += o;
        failed += f;
        errors.extend(e);
    }
    let mut stream_msgs = Vec::new();
    for s in streams {
        match s.await? {
            Ok(n) => stream_msgs.push(n),
            Err(e) => {
                failed += 1;
                errors.push(format!("stream: {e:#}"));
            }
        }
    }
    let status = proxy.wait_exit().await?;
    let exited_after = signalled.elapsed();
    figures(
        "sidecar_sigterm",
        1,
        (ok + failed + STREAMS) as u64,
        failed as u64,
        rss.peak_kib(),
        &format!(
            "{received} calls received before SIGTERM; idle connection got {}; new connections refused {:?} after \
             SIGTERM; stream messages {stream_msgs:?}; exit {status} after {exited_after:.1?}",
            goaway.describe(),
            refused_after
        ),
    );
    ensure!(failed == 0, "{failed} calls failed during the drain: {:?}", &errors[..errors.len().min(5)]);
    ensure!(stream_msgs.iter().all(|n| *n == 25), "streams cut short: {stream_msgs:?}");
    ensure!(goaway.goaway_code() == Some(hostile::NO_ERROR), "no GOAWAY(NO_ERROR): {}", goaway.describe());
    ensure!(refused_after.is_some(), "new connections still accepted 10 s after SIGTERM");
    ensure!(status.code() == Some(0), "exit status {status}; log:\n{}", proxy.log_tail(20));
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. Retry budget and cold start among dead endpoints
// ---------------------------------------------------------------------------

/// Makes exactly `calls` Echo/Unary calls from `workers` concurrent callers and waits
/// for all of them: a fixed amount of load, however fast the machine is. Returns
/// (sent, failed, first errors).
async fn fixed_load(channel: Channel, workers: usize, calls: usize) -> Result<(usize, usize, Vec<String>)> {
    // Each call has a 5 s deadline; this only bounds a test that hangs outright.
    const GIVE_UP: Duration = Duration::from_secs(300);
    let load = Background::start(channel, workers, Duration::ZERO, calls);
    let started = Instant::now();
    while load.sent() < calls {
        ensure!(started.elapsed() < GIVE_UP, "only {} of {calls} calls started within {GIVE_UP:?}", load.sent());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Waits for the calls still in flight.
    Ok(load.stop().await)
}

/// Connection attempts that failed and retries the budget denied, from the proxy's
/// log and metrics. Every failed attempt is followed by a budget request unless its
/// call ran out of endpoints, so `failed attempts - denials` bounds the retries the
/// budget granted from above.
struct RetryCounts {
    failed_attempts: usize,
    denied: f64,
    no_endpoint: f64,
}

impl RetryCounts {
    async fn of(proxy: &ProxyProcess) -> Result<Self> {
        let m = proxy.metrics().await?;
        Ok(RetryCounts {
            failed_attempts: count_log_lines(proxy.log_path(), "connect failed; endpoint backed off"),
            denied: m.sum("strait_proxy_errors_total", &[("reason", "retry_budget_exhausted")]) + 0.0,
            no_endpoint: m.sum("strait_proxy_errors_total", &[("reason", "no_endpoint")]) + 0.0,
        })
    }

    fn granted_at_most(&self) -> f64 {
        self.failed_attempts as f64 - self.denied
    }
}

/// A fresh sidecar meets a Service with one live endpoint among 20 that refuse
/// connections: its very first calls are answered (a retry searches the endpoints it
/// has not tried while none is known to work), and under a fixed load afterwards every
/// call is answered with retries within the default budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_sidecar_reaches_the_live_endpoint_among_refusing_ones() -> Result<()> {
    const DEAD: usize = 20;
    const FIRST_CALLS: usize = 8;
    const WORKERS: usize = 16;
    const CALLS: usize = 2_000;
    let mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["cold-service"]))?;
    let live = spawn_backend("cold-live").await?;
    // Ports nobody can listen on while the test runs.
    let dead = DeadPorts::reserve(DEAD)?;
    let mut addrs = dead.addrs.clone();
    addrs.push(live.addr());
    mesh.write("endpoints.yaml", &endpoint_slice_yaml(NS, "cold-service", "grpc", &addrs))?;
    let proxy_started = Instant::now();
    let proxy = mesh.start_proxy(NS, &["--log-level", "info,strait_proxy::proxy=debug"]).await?;
    let rss = RssSampler::start(pid_of(&proxy)?);
    let channel = proxy.channel(&authority("cold-service", NS)).await?;
    // The first calls, one at a time, before any endpoint is known to work.
    let mut client = EchoClient::new(channel.clone());
    let mut first = Vec::new();
    for i in 0..FIRST_CALLS {
        first.push(echo_once(&mut client, &format!("first-{i}")).await);
    }
    let cold = RetryCounts::of(&proxy).await?;
    let first_failed: Vec<String> =
        first.iter().filter_map(|r| r.as_ref().err()).map(|s| format!("{:?}: {}", s.code(), s.message())).collect();
    let (sent, failed, errors) = fixed_load(channel, WORKERS, CALLS).await?;
    let sent = sent + FIRST_CALLS;
    let after = RetryCounts::of(&proxy).await?;
    // The default budget: 20% of the requests of the last 10 s plus 10/s (see
    // budget_bound).
    let windows = budget_windows(proxy_started);
    let bound = budget_bound(0.2, 10.0, sent, windows, WORKERS);
    figures(
        "cold_start",
        DEAD as u64,
        sent as u64,
        (failed + first_failed.len()) as u64,
        rss.peak_kib(),
        &format!(
            "first {FIRST_CALLS} calls: {} failed, {} connect attempts to dead endpoints; then {CALLS} calls: failed connect attempts {} \
             (retries granted ≤ {:.0}, budget bound over {windows} windows {bound:.0}), retry_budget_exhausted {}, no_endpoint {}; first errors {errors:?}",
            first_failed.len(),
            cold.failed_attempts,
            after.failed_attempts,
            after.granted_at_most(),
            after.denied,
            after.no_endpoint,
        ),
    );
    ensure!(first_failed.is_empty(), "a fresh sidecar failed {first_failed:?} of its first {FIRST_CALLS} calls");
    ensure!(failed == 0, "{failed} of {CALLS} calls failed although a live endpoint exists: {errors:?}");
    ensure!(after.granted_at_most() <= bound, "{} retries exceed the budget bound {bound}", after.granted_at_most());
    drop(live);
    Ok(())
}

/// Budget windows (10 s) a proxy started at `started` has lived through: one per started
/// window, plus one for a window straddling the start.
fn budget_windows(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() / 10.0).ceil() + 1.0
}

/// The most retries a budget of `ratio` x the requests of the last 10 s plus
/// `min_per_second` x 10 may grant over `windows` consecutive 10 s blocks of a run of
/// `sent` requests: per block its floor, `ratio` of the requests of that block and the
/// one before (the window slides), and one per concurrent caller (its check and its
/// count are not one atomic step).
fn budget_bound(ratio: f64, min_per_second: f64, sent: usize, windows: f64, callers: usize) -> f64 {
    windows * (min_per_second * 10.0 + callers as f64) + 2.0 * ratio * sent as f64
}

/// One live endpoint among 100 that refuse connections, and a tight budget (10% of
/// requests plus 1/s): a new dead endpoint is drawn first by almost every call until
/// each has failed once, so the calls want far more retries (~1 per call) than the
/// budget grants (~0.1 per call). The budget must deny some, the retries granted must
/// stay under its bound, and a call may fail only when its retry was denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_connect_retries_to_dead_endpoints() -> Result<()> {
    const DEAD: usize = 100;
    const WORKERS: usize = 8;
    const CALLS: usize = 600;
    const RATIO: f64 = 0.1;
    const MIN_PER_SECOND: f64 = 1.0;
    let mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["budget-service"]))?;
    let healthy = spawn_backend("budget-healthy").await?;
    let dead = DeadPorts::reserve(DEAD)?;
    let mut addrs = dead.addrs.clone();
    addrs.push(healthy.addr());
    mesh.write("endpoints.yaml", &endpoint_slice_yaml(NS, "budget-service", "grpc", &addrs))?;
    let proxy_started = Instant::now();
    let proxy = mesh
        .start_proxy(
            NS,
            &[
                "--log-level",
                "info,strait_proxy::proxy=debug",
                "--retry-budget-ratio",
                &RATIO.to_string(),
                "--retry-budget-min-per-second",
                &MIN_PER_SECOND.to_string(),
            ],
        )
        .await?;
    let rss = RssSampler::start(pid_of(&proxy)?);
    let channel = proxy.channel(&authority("budget-service", NS)).await?;
    let (sent, failed, errors) = fixed_load(channel, WORKERS, CALLS).await?;
    let counts = RetryCounts::of(&proxy).await?;
    let granted = counts.granted_at_most();
    let windows = budget_windows(proxy_started);
    let bound = budget_bound(RATIO, MIN_PER_SECOND, sent, windows, WORKERS);
    figures(
        "retry_budget",
        DEAD as u64,
        sent as u64,
        failed as u64,
        rss.peak_kib(),
        &format!(
            "failed connect attempts {}, retries granted ≤ {granted:.0} (budget bound over {windows} \
             windows {bound:.0}), denied by the budget {}, no_endpoint {}; first errors {errors:?}",
            counts.failed_attempts, counts.denied, counts.no_endpoint,
        ),
    );
    ensure!(sent == CALLS, "sent {sent} of {CALLS}");
    ensure!(
        counts.denied > 0.0,
        "the budget denied no retry: it did not limit {} failed connect attempts",
        counts.failed_attempts
    );
    ensure!(granted <= bound, "{granted} retries granted exceed the budget bound {bound}");
    // A call may fail only when the budget denied its retry.
    ensure!(
        failed as f64 <= counts.denied,
        "{failed} of {sent} calls failed but the budget denied only {} retries: {errors:?}",
        counts.denied
    );
    drop(healthy);
    Ok(())
}

/// The proxy's JSON log (`--log-format json`), for what its watches reported.
struct WatchLog {
    lines: Vec<serde_json::Value>,
}

impl WatchLog {
    fn parse(log: &str) -> Self {
        WatchLog { lines: log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect() }
    }

    fn field(&self, line: usize, name: &str) -> &str {
        self.lines[line]["fields"][name].as_str().unwrap_or("")
    }

    fn error(&self, line: usize) -> &str {
        self.field(line, "error")
    }

    /// (line, watch) of each watch error that is the API server's 410 Gone
    /// (`WatchEvent::Error` with reason Expired or Gone: the resourceVersion the
    /// watch resumed from was compacted away).
    fn gone(&self) -> Vec<(usize, &str)> {
        (0..self.lines.len())
            .filter(|&i| {
                let message = self.field(i, "message");
                let error = self.error(i);
                (message == "watch failed; keeping last known state" || message == "watch still failing")
                    && error.starts_with("error returned by apiserver during watch")
                    && (error.ends_with(": Expired") || error.ends_with(": Gone"))
            })
            .map(|i| (i, self.field(i, "watch")))
            .collect()
    }

    /// `watch` completed a list after log line `line`.
    fn relisted_after(&self, line: usize, watch: &str) -> bool {
        (line + 1..self.lines.len())
            .any(|i| self.field(i, "message") == "watch (re)listed" && self.field(i, "watch") == watch)
    }
}
