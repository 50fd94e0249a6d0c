//! Kubernetes mode end to end: the real `strait-proxy` (no `--config-dir`) and
//! `strait-controller` against a real etcd + kube-apiserver (`strait-testenv`), with
//! objects applied by kubectl and kube-rs, the sidecar and the controller running
//! with ServiceAccount tokens under the least-privilege RBAC of `deploy/base`.
//!
//! Backends listen on the root-side address of a veth the test creates (the API
//! server refuses loopback addresses in EndpointSlices), so the traffic tests need
//! root and print `SKIPPED:` without it. The status and readiness tests send no
//! traffic and run unprivileged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use strait_demo::pb::order_v1::order_service_client::OrderServiceClient;
use strait_demo::pb::payment_v1::payment_service_client::PaymentServiceClient;
use strait_demo::pb::recommendation_v1::recommendation_service_client::RecommendationServiceClient;
use strait_demo::pb::user_v1::user_service_client::UserServiceClient;
use strait_e2e::kube_mode::{
    CONTROLLER_NAME, CallEvent, Cluster, ControllerProcess, NetBackend, TestNet, Traffic, condition, percentile,
    skip_unless_root, status_entry,
};
use strait_e2e::{NS, ProxyProcess, SEED_BACKENDS, Tally, authority, probe};
use tonic::Request;
use tonic::metadata::MetadataValue;

const SIDECAR_SA: &str = "system:serviceaccount:app:default";
const CONTROLLER_SA: &str = "system:serviceaccount:strait-system:strait-controller";
const GRPCROUTES: &str = "grpcroutes.gateway.networking.k8s.io";
/// How long a change may take to reach the data plane before a test gives up: a
/// deadline for a condition, far above the usual ~100 ms, so a machine busy with other
/// work does not fail the test (the delays are printed, not asserted).
const CHANGE_DEADLINE: Duration = Duration::from_secs(30);

/// The example manifests in the API server, one backend per example backend
/// Service plus `order-service` (the canary route's parent: its *own* endpoints,
/// used only when no route applies), and a kube-mode sidecar in namespace `app`.
/// Fields drop in order: proxy, backends, control plane, network.
struct Seeded {
    proxy: ProxyProcess,
    backends: Vec<NetBackend>,
    cluster: Cluster,
    net: TestNet,
}

impl Seeded {
    async fn start(test: &str) -> Result<Option<Seeded>> {
        if !skip_unless_root(test) {
            return Ok(None);
        }
        let net = TestNet::create().context("creating the test network (netns + veth)")?;
        let cluster = Cluster::start().await?;
        cluster.apply_examples()?;
        let mut backends = Vec::new();
        for name in SEED_BACKENDS.iter().copied().chain(["order-service"]) {
            let backend = NetBackend::spawn(net.addr(), name).await?;
            cluster.put_endpoints(NS, name, &[backend.addr()]).await?;
            backends.push(backend);
        }
        let kubeconfig = cluster.sidecar_kubeconfig(NS).await?;
        let proxy = ProxyProcess::start_kube(&kubeconfig, NS, &[]).await?;
        Ok(Some(Seeded { proxy, backends, cluster, net }))
    }

    async fn spawn_backend(&mut self, name: &str) -> Result<SocketAddr> {
        let b = NetBackend::spawn(self.net.addr(), name).await?;
        let addr = b.addr();
        self.backends.push(b);
        Ok(addr)
    }

    async fn order_client(&self) -> Result<OrderServiceClient<tonic::transport::Channel>> {
        Ok(OrderServiceClient::new(self.proxy.channel(&authority("order-service", NS)).await?))
    }

    /// Points `canary-route` (parent order-service) at the single backend Service `backend`.
    async fn set_order_backend(&self, backend: &str) -> Result<()> {
        let patch = json!({"spec": {"rules": [{
            "matches": [{"method": {"service": "order.v1.OrderService"}}],
            "backendRefs": [{"name": backend, "port": 50051}],
        }]}});
        self.cluster.grpcroutes(NS).patch("canary-route", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }
}

async fn get_order(client: &mut OrderServiceClient<tonic::transport::Channel>) -> Result<String, tonic::Code> {
    let mut req = Request::new(probe("probe"));
    req.set_timeout(Duration::from_secs(5));
    client.get_order(req).await.map(|r| r.into_inner().backend).map_err(|s| s.code())
}

/// Calls GetOrder until `accept` holds for a result; returns how long it took.
async fn until_order(
    client: &mut OrderServiceClient<tonic::transport::Channel>,
    what: &str,
    timeout: Duration,
    accept: impl Fn(&Result<String, tonic::Code>) -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < timeout {
        let r = get_order(client).await;
        if accept(&r) {
            return Ok(started.elapsed());
        }
        last = Some(r);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("{what}: not within {timeout:?} (last result: {last:?})")
}

/// Receives traffic events until one completed at/after `since` was answered by
/// `backend`; returns that delay and counts failures into `failed`.
async fn until_answered_by(
    traffic: &mut Traffic,
    backend: &str,
    since: Instant,
    timeout: Duration,
    failed: &mut Vec<CallEvent>,
    total: &mut usize,
) -> Result<Duration> {
    let deadline = since + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = traffic.next(left).await.with_context(|| format!("waiting for {backend} to answer"))?;
        *total += 1;
        match &e.result {
            Err(_) => failed.push(e),
            Ok(b) if b == backend && e.at >= since => return Ok(e.at - since),
            Ok(_) => {}
        }
    }
}

/// Receives events until `n` consecutive answers came from `backend` (the old
/// backend has drained). Failures are collected.
async fn until_consecutive(
    traffic: &mut Traffic,
    backend: &str,
    n: usize,
    failed: &mut Vec<CallEvent>,
    total: &mut usize,
) -> Result<()> {
    let mut run = 0;
    let deadline = Instant::now() + CHANGE_DEADLINE;
    while run < n {
        let e = traffic.next(deadline.saturating_duration_since(Instant::now())).await?;
        *total += 1;
        match &e.result {
            Ok(b) if b == backend => run += 1,
            Ok(_) => run = 0,
            Err(_) => {
                failed.push(e);
                run = 0;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. Routing from the API server
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_mode_routes_the_seed_scenarios() -> Result<()> {
    let Some(mesh) = Seeded::start("kube_mode_routes_the_seed_scenarios").await? else { return Ok(()) };
    let proxy = &mesh.proxy;

    // The sidecar's identity reads exactly what it watches, nothing else.
    let c = &mesh.cluster;
    for (verb, resource) in [
        ("list", "services"),
        ("watch", "services"),
        ("list", "endpointslices.discovery.k8s.io"),
        ("watch", "endpointslices.discovery.k8s.io"),
        ("list", GRPCROUTES),
        ("watch", GRPCROUTES),
        ("list", "referencegrants.gateway.networking.k8s.io"),
    ] {
        assert!(c.can_i(SIDECAR_SA, &[verb, resource, "--all-namespaces"])?, "sidecar SA may not {verb} {resource}");
    }
    for (verb, resource) in [("get", "secrets"), ("list", "pods"), ("update", GRPCROUTES), ("patch", GRPCROUTES)] {
        assert!(!c.can_i(SIDECAR_SA, &[verb, resource, "-n", NS])?, "sidecar SA may {verb} {resource}");
    }
    assert!(!c.can_i(SIDECAR_SA, &["patch", GRPCROUTES, "--subresource=status", "-n", NS])?);

    // Method split.
    let mut users = UserServiceClient::new(proxy.channel(&authority("user-service", NS)).await?);
    let (mut get, mut create, mut list) = (Tally::default(), Tally::default(), Tally::default());
    for i in 0..20 {
        get.record(users.get_user(probe(&format!("get-{i}"))).await.map(|r| r.into_inner()));
        create.record(users.create_user(probe(&format!("create-{i}"))).await.map(|r| r.into_inner()));
    }
    let mut stream = users.list_users(strait_e2e::Probe { stream_count: 3, ..probe("list") }).await?.into_inner();
    while let Some(answer) = stream.message().await? {
        list.record(Ok(answer));
    }
    println!("method split: GetUser {get}; CreateUser {create}; ListUsers {list}");
    assert!(get.only_from("user-service-reader"), "GetUser: {get}");
    assert!(create.only_from("user-service-writer"), "CreateUser: {create}");
    assert!(list.only_from("user-service-reader") && list.total() == 3, "ListUsers: {list}");

    // Header A/B.
    let mut recs = RecommendationServiceClient::new(proxy.channel(&authority("recommendation-service", NS)).await?);
    let (mut treated, mut plain) = (Tally::default(), Tally::default());
    for i in 0..20 {
        let mut req = Request::new(probe(&format!("t-{i}")));
        req.metadata_mut().insert("x-experiment-group", MetadataValue::from_static("treatment-a"));
        treated.record(recs.recommend(req).await.map(|r| r.into_inner()));
        plain.record(recs.recommend(probe(&format!("p-{i}"))).await.map(|r| r.into_inner()));
    }
    println!("header A/B: treatment-a {treated}; no header {plain}");
    assert!(treated.only_from("recommendation-v2"), "with x-experiment-group: treatment-a: {treated}");
    assert!(plain.only_from("recommendation-v1"), "without header: {plain}");

    // Weighted canary 90/10 over 1000 calls (4 concurrent workers).
    const CALLS: usize = 1000;
    let channel = proxy.channel(&authority("order-service", NS)).await?;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut client = OrderServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            for i in 0..CALLS / 4 {
                tally.record(client.get_order(probe(&format!("order-{w}-{i}"))).await.map(|r| r.into_inner()));
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        let part = t.await?;
        part.backends.into_iter().for_each(|(k, v)| *tally.backends.entry(k).or_default() += v);
        part.errors.into_iter().for_each(|(k, v)| *tally.errors.entry(k).or_default() += v);
    }
    let canary = tally.answered_by("order-service-canary");
    let stable = tally.answered_by("order-service-stable");
    // canary ~ Binomial(n = 1000, p = 0.1): mean 100, sd = sqrt(1000 * 0.1 * 0.9) ≈ 9.5.
    // Accept mean ± 4 sd = 62..=138 (6.2%..13.8%): a false failure is ~1 in 15,000,
    // while 80/20 (200) or 95/5 (50) fail.
    println!("canary split over {CALLS} calls: stable {stable}, canary {canary} ({:.1}%)", canary as f64 / 10.0);
    assert!(tally.errors.is_empty(), "errors: {tally}");
    assert_eq!(stable + canary, CALLS, "answers from outside the route (e.g. the parent's own endpoint): {tally}");
    assert!((62..=138).contains(&canary), "canary {canary}/{CALLS} outside 100 ± 4 sd (62..=138): {tally}");

    // Header modifier.
    let mut payments = PaymentServiceClient::new(proxy.channel(&authority("payment-service", NS)).await?);
    for i in 0..5 {
        let a = payments.process_payment(probe(&format!("pay-{i}"))).await?.into_inner();
        assert_eq!(a.backend, "payment-service");
        assert_eq!(a.headers.get("x-request-priority").map(String::as_str), Some("high"), "headers: {:?}", a.headers);
    }

    // The admin dump reflects the API server's objects.
    let routes = proxy.admin_json("/routes").await?;
    let text = routes.to_string();
    for name in ["user-service-route", "ab-test-route", "canary-route", "payment-mesh-route"] {
        assert!(text.contains(name), "/routes lacks {name}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Changes reach the data plane
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_mode_changes_reach_the_data_plane() -> Result<()> {
    let Some(mut mesh) = Seeded::start("kube_mode_changes_reach_the_data_plane").await? else { return Ok(()) };
    const STABLE: &str = "order-service-stable";
    const CANARY: &str = "order-service-canary";

    // Start from a single-backend route, then keep traffic running.
    mesh.set_order_backend(CANARY).await?;
    let mut probe_client = mesh.order_client().await?;
    until_order(&mut probe_client, "canary-only route applied", CHANGE_DEADLINE, |r| r.as_deref() == Ok(CANARY))
        .await?;
    let channel = mesh.proxy.channel(&authority("order-service", NS)).await?;
    let mut traffic = Traffic::start(channel, 4, Duration::from_millis(2), 50_000);
    let (mut failed, mut total) = (Vec::new(), 0usize);
    until_consecutive(&mut traffic, CANARY, 20, &mut failed, &mut total).await?;

    // (a) 20 backend changes with kube-rs, each timed from the patch returning to
    // the first call answered by the new backend.
    let mut delays = Vec::new();
    for i in 0..20 {
        let target = if i % 2 == 0 { STABLE } else { CANARY };
        mesh.set_order_backend(target).await?;
        let t0 = Instant::now();
        let d = until_answered_by(&mut traffic, target, t0, CHANGE_DEADLINE, &mut failed, &mut total).await?;
        delays.push(d);
        until_consecutive(&mut traffic, target, 20, &mut failed, &mut total).await?;
    }
    let (p50, p99, max) =
        (percentile(&mut delays, 50.0), percentile(&mut delays, 99.0), percentile(&mut delays, 100.0));
    // Printed, not asserted: on a machine busy with other work the delays say more
    // about the machine than about the proxy.
    println!("GRPCRoute patch -> data plane (20 changes): p50 {p50:.1?}, p99 {p99:.1?}, max {max:.1?}");

    // (b1) The route now sends to order-service-canary; replace its EndpointSlice's
    // endpoint with another backend, under traffic.
    let replacement = mesh.spawn_backend("order-service-canary-2").await?;
    mesh.cluster.put_endpoints(NS, CANARY, &[replacement]).await?;
    let t0 = Instant::now();
    let d =
        until_answered_by(&mut traffic, "order-service-canary-2", t0, CHANGE_DEADLINE, &mut failed, &mut total).await?;
    until_consecutive(&mut traffic, "order-service-canary-2", 20, &mut failed, &mut total).await?;
    println!("EndpointSlice update -> data plane: {d:.1?}");
    for e in traffic.stop().await {
        total += 1;
        if e.result.is_err() {
            failed.push(e);
        }
    }
    println!("calls under traffic: {total}, failed: {}", failed.len());
    assert!(total > 300, "too little traffic to mean anything: {total}");
    assert!(failed.is_empty(), "{} failed calls, first: {:?}", failed.len(), &failed[..failed.len().min(5)]);

    // (b2) Delete the backend Service: its share is UNAVAILABLE; recreate it: traffic
    // follows back to its (unchanged) EndpointSlice.
    let services: Api<Service> = Api::namespaced(mesh.cluster.client(), NS);
    let spec = services.get(CANARY).await?;
    services.delete(CANARY, &DeleteParams::default()).await?;
    let d = until_order(&mut probe_client, "Service deleted -> UNAVAILABLE", CHANGE_DEADLINE, |r| {
        *r == Err(tonic::Code::Unavailable)
    })
    .await?;
    println!("Service delete -> UNAVAILABLE: {d:.1?}");
    let recreated = Service {
        metadata: kube::api::ObjectMeta { name: Some(CANARY.into()), ..Default::default() },
        spec: spec.spec.map(|s| k8s_openapi::api::core::v1::ServiceSpec { cluster_ip: None, cluster_ips: None, ..s }),
        status: None,
    };
    services.create(&PostParams::default(), &recreated).await?;
    let d = until_order(&mut probe_client, "Service recreated -> answered again", CHANGE_DEADLINE, |r| {
        r.as_deref() == Ok("order-service-canary-2")
    })
    .await?;
    println!("Service recreate -> answered: {d:.1?}");

    // (c) Delete the GRPCRoute with kubectl: the parent Service's own endpoints answer.
    mesh.cluster.kubectl(&["delete", "grpcroute", "canary-route", "-n", NS])?;
    let d = until_order(&mut probe_client, "route deleted -> parent's own endpoints", CHANGE_DEADLINE, |r| {
        r.as_deref() == Ok("order-service")
    })
    .await?;
    println!("GRPCRoute delete -> parent Service's endpoints: {d:.1?}");
    let mut after = Tally::default();
    for _ in 0..20 {
        after.record(probe_client.get_order(probe("after-delete")).await.map(|r| r.into_inner()));
    }
    assert!(after.only_from("order-service"), "after route deletion: {after}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Status via the controller
// ---------------------------------------------------------------------------

const STATUS_ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: valid, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: user-service, port: 50051}]
  rules:
    - matches: [{method: {service: user.v1.UserService, method: GetUser}}]
      backendRefs: [{name: user-service-reader, port: 50051}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: bad-regex, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: recommendation-service, port: 50051}]
  rules:
    - matches: [{method: {type: RegularExpression, service: "(unclosed"}}]
      backendRefs: [{name: recommendation-v1, port: 50051}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: missing-backend, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: order-service, port: 50051}]
  rules:
    - backendRefs: [{name: no-such-service, port: 50051}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: wrong-port, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: payment-service, port: 9999}]
  rules:
    - backendRefs: [{name: payment-service, port: 50051}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: consumer, namespace: client-ns}
spec:
  parentRefs: [{group: "", kind: Service, name: user-service, namespace: app, port: 50051}]
  rules:
    - backendRefs: [{name: user-service-writer, namespace: app, port: 50051}]
"#;

/// (status, reason) of a condition.
type Cond = (&'static str, &'static str);

/// (namespace, route, parent, expected Accepted, expected ResolvedRefs).
const EXPECTED_STATUS: &[(&str, &str, &str, Cond, Cond)] = &[
    ("app", "valid", "user-service", ("True", "Accepted"), ("True", "ResolvedRefs")),
    ("app", "bad-regex", "recommendation-service", ("False", "UnsupportedValue"), ("True", "ResolvedRefs")),
    ("app", "missing-backend", "order-service", ("True", "Accepted"), ("False", "BackendNotFound")),
    ("app", "wrong-port", "payment-service", ("False", "NoMatchingParent"), ("True", "ResolvedRefs")),
    ("client-ns", "consumer", "user-service", ("True", "Accepted"), ("True", "ResolvedRefs")),
];

/// Polls `kubectl get grpcroute -o json` until `check` accepts every route of
/// EXPECTED_STATUS (by its JSON); returns the routes' JSON.
async fn wait_status(
    cluster: &Cluster,
    controller: &ControllerProcess,
    what: &str,
    check: impl Fn(&str, &Value) -> Result<()>,
) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut routes = Vec::new();
        let mut problem = None;
        for (ns, name, ..) in EXPECTED_STATUS {
            let route = cluster.grpcroute_json(ns, name)?;
            if problem.is_none()
                && let Err(e) = check(name, &route)
            {
                problem = Some(format!("{ns}/{name}: {e:#}\nits status: {}", route["status"]));
            }
            routes.push(route);
        }
        match problem {
            None => return Ok(routes),
            Some(p) if Instant::now() > deadline => {
                bail!("{what}: {p}\ncontroller log:\n{}", controller.log_tail(20))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn expect_conditions(name: &str, route: &Value, generation: i64) -> Result<()> {
    let (_, _, parent, accepted, resolved) =
        EXPECTED_STATUS.iter().find(|e| e.1 == name).context("route not in EXPECTED_STATUS")?;
    let entry = status_entry(route, CONTROLLER_NAME, parent).context("no status entry of strait yet")?;
    for (type_, (status, reason)) in [("Accepted", accepted), ("ResolvedRefs", resolved)] {
        let got = condition(entry, type_).with_context(|| format!("no {type_} condition in {entry}"))?;
        ensure!(
            got == (status.to_string(), reason.to_string(), generation),
            "{type_}: got {got:?}, want ({status}, {reason}, observedGeneration {generation})"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_mode_controller_writes_route_status() -> Result<()> {
    let cluster = Cluster::start().await?;
    cluster.ensure_namespace(NS)?;
    cluster.ensure_namespace("client-ns")?;
    let services = strait_e2e::examples_dir().join("services.yaml");
    cluster.kubectl(&["apply", "-f", &services.display().to_string()])?;
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(STATUS_ROUTES))?;

    // Another controller's entry, written before Strait's controller runs.
    let foreign = json!({
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge", "namespace": NS},
        "controllerName": "example.com/other-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "theirs",
                        "observedGeneration": 1, "lastTransitionTime": "2024-01-01T00:00:00Z"}],
    });
    let patch = json!({"status": {"parents": [foreign.clone()]}}).to_string();
    cluster.kubectl(&[
        "patch",
        "grpcroute",
        "valid",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ])?;

    // The controller with its own least-privilege identity.
    let kubeconfig = cluster.controller_kubeconfig().await?;
    assert!(cluster.can_i(CONTROLLER_SA, &["patch", GRPCROUTES, "--subresource=status", "-n", NS])?);
    assert!(cluster.can_i(CONTROLLER_SA, &["list", GRPCROUTES, "--all-namespaces"])?);
    assert!(cluster.can_i(CONTROLLER_SA, &["watch", "services", "--all-namespaces"])?);
    assert!(!cluster.can_i(CONTROLLER_SA, &["update", GRPCROUTES, "-n", NS])?, "controller may update route specs");
    assert!(!cluster.can_i(CONTROLLER_SA, &["patch", GRPCROUTES, "-n", NS])?, "controller may patch route specs");
    assert!(!cluster.can_i(CONTROLLER_SA, &["get", "secrets", "-n", "strait-system"])?, "controller may read secrets");
    let started = Instant::now();
    let controller = ControllerProcess::start(&kubeconfig, &[]).await?;

    let routes = wait_status(&cluster, &controller, "initial status", |name, r| expect_conditions(name, r, 1)).await?;
    println!("controller: all {} route statuses written {:.1?} after start", routes.len(), started.elapsed());
    let valid = &routes[0];
    let kept = valid["status"]["parents"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["controllerName"] == "example.com/other-controller"))
        .context("foreign status entry dropped")?;
    assert_eq!(kept, &foreign, "foreign status entry changed");
    println!("status of app/valid: {}", valid["status"]);

    // A spec change: observedGeneration follows; the foreign entry stays.
    let patch = json!({"spec": {"rules": [{
        "matches": [{"method": {"service": "user.v1.UserService", "method": "GetUser"}},
                    {"method": {"service": "user.v1.UserService", "method": "ListUsers"}}],
        "backendRefs": [{"name": "user-service-reader", "port": 50051}],
    }]}});
    let changed = cluster.grpcroutes(NS).patch("valid", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    assert_eq!(changed.metadata.generation, Some(2));
    let t0 = Instant::now();
    let routes = wait_status(&cluster, &controller, "observedGeneration 2", |name, r| {
        expect_conditions(name, r, if name == "valid" { 2 } else { 1 })
    })
    .await?;
    println!("spec change -> observedGeneration 2 in status: {:.1?}", t0.elapsed());
    let parents = routes[0]["status"]["parents"].as_array().context("parents")?;
    assert!(parents.contains(&foreign), "foreign entry lost after spec change: {parents:#?}");
    assert_eq!(parents.len(), 2, "{parents:#?}");

    // Creating the missing backend Service resolves the reference.
    let svc = strait_e2e::service_yaml(NS, "no-such-service");
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&svc))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let route = cluster.grpcroute_json(NS, "missing-backend")?;
        let entry = status_entry(&route, CONTROLLER_NAME, "order-service").context("entry")?.clone();
        if condition(&entry, "ResolvedRefs").map(|c| (c.0, c.1)) == Some(("True".into(), "ResolvedRefs".into())) {
            break;
        }
        ensure!(Instant::now() < deadline, "ResolvedRefs not True after creating the Service: {entry:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. API server outage
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_mode_api_server_outage_keeps_traffic_flowing() -> Result<()> {
    // The outage lasts at least this long, and until MIN_DURING calls were answered
    // during it (a count, however busy the machine is).
    const OUTAGE: Duration = Duration::from_secs(30);
    const MIN_DURING: usize = 1_000;
    const MAX_CALLS: usize = 60_000;
    // How long after the restart the change may take, however it is observed.
    // Watches reconnect with strait-kube's WatchBackoff (250 ms doubling to 5 s, plus
    // up to 25% jitter), so the next attempt after the restart comes within ~6.25 s.
    // The restarted API server's watch cache starts at the current revision, so that
    // resumed watch is answered 410 Expired, and the relist waits for one more
    // backoff (not reset by an error): ~12.5 s at most (measured 10-11 s); the relist
    // and compile add milliseconds, a busy machine a little more.
    const APPLY_BOUND: Duration = Duration::from_secs(15);
    // Waiting goes on past the bound (to report how late a late change was).
    const APPLY_WAIT: Duration = Duration::from_secs(60);
    let Some(mut mesh) = Seeded::start("kube_mode_api_server_outage_keeps_traffic_flowing").await? else {
        return Ok(());
    };

    // Route to order-service-stable only, so the change made during the outage
    // (to order-service-canary) is visible from its first call.
    mesh.set_order_backend("order-service-stable").await?;
    let mut client = mesh.order_client().await?;
    until_order(&mut client, "stable-only route applied", CHANGE_DEADLINE, |r| {
        r.as_deref() == Ok("order-service-stable")
    })
    .await?;
    // A second kube-apiserver on the same etcd: the change is written through it
    // while the proxy's API server is down.
    let extra = mesh.cluster.env().start_extra_apiserver().await?;
    let extra_routes = Api::<kube::api::DynamicObject>::namespaced_with(
        extra.client().await?,
        NS,
        &strait_e2e::kube_mode::grpcroute_resource(),
    );

    // /ready polled every 100 ms throughout.
    let admin = mesh.proxy.admin_addr();
    let stop_ready = Arc::new(AtomicBool::new(false));
    let (ready_polls, ready_bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ready_task = {
        let (stop, polls, bad) = (stop_ready.clone(), ready_polls.clone(), ready_bad.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                polls.fetch_add(1, Ordering::Relaxed);
                if !matches!(strait_e2e::http1_get(admin, "/ready").await, Ok((200, _))) {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Constant, bounded traffic: 2 workers, one call each per 8 ms (at most ~250/s).
    let window_start = Instant::now();
    let channel = mesh.proxy.channel(&authority("order-service", NS)).await?;
    let mut traffic = Traffic::start(channel, 2, Duration::from_millis(8), MAX_CALLS);
    let mut events: Vec<CallEvent> = Vec::new();
    let collect_until = |traffic: &mut Traffic, events: &mut Vec<CallEvent>| {
        while let Ok(e) = traffic.events.try_recv() {
            events.push(e);
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    mesh.cluster.env_mut().stop_apiserver().await?;
    let stopped_at = Instant::now();
    println!("outage: kube-apiserver stopped");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let patch = json!({"spec": {"rules": [{
        "matches": [{"method": {"service": "order.v1.OrderService"}}],
        "backendRefs": [{"name": "order-service-canary", "port": 50051}],
    }]}});
    extra_routes.patch("canary-route", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    println!("outage: route changed through the second API server {:.1?} into the outage", stopped_at.elapsed());

    let answered_during = |events: &[CallEvent]| events.iter().filter(|e| e.at >= stopped_at).count();
    while stopped_at.elapsed() < OUTAGE || answered_during(&events) < MIN_DURING {
        ensure!(
            traffic.calls() < MAX_CALLS && stopped_at.elapsed() < Duration::from_secs(600),
            "only {} calls answered in {:.1?} of outage",
            answered_during(&events),
            stopped_at.elapsed()
        );
        collect_until(&mut traffic, &mut events);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mesh.cluster.env_mut().start_apiserver().await?;
    let up_at = Instant::now();
    println!("outage: kube-apiserver back after {:.1?}", stopped_at.elapsed());
    collect_until(&mut traffic, &mut events);

    // The change made during the outage reaches the data plane: the first call after
    // the restart answered by the new backend.
    let mut applied = None;
    while applied.is_none() && up_at.elapsed() < APPLY_WAIT {
        let Ok(e) = traffic.next(Duration::from_secs(10)).await else { break };
        if e.at >= up_at && e.result.as_deref() == Ok("order-service-canary") {
            applied = Some(e.at - up_at);
        }
        events.push(e);
    }
    // Some traffic after the change, then stop.
    if applied.is_some() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    events.extend(traffic.stop().await);
    let traffic_took = window_start.elapsed();
    stop_ready.store(true, Ordering::Relaxed);
    ready_task.await?;
    drop(extra);

    let during: Vec<&CallEvent> = events.iter().filter(|e| e.at >= stopped_at && e.at < up_at).collect();
    let during_failed = during.iter().filter(|e| e.result.is_err()).count();
    let during_canary = during.iter().filter(|e| e.result.as_deref() == Ok("order-service-canary")).count();
    let after: Vec<&CallEvent> = events.iter().filter(|e| e.at >= up_at).collect();
    let after_failed = after.iter().filter(|e| e.result.is_err()).count();
    let failed: Vec<&CallEvent> = events.iter().filter(|e| e.result.is_err()).collect();
    println!(
        "outage: {} calls in {:.1?} (during outage {} / failed {during_failed}; after restart {} / failed {after_failed}); \
         /ready polled {} times, non-200 {}",
        events.len(),
        traffic_took,
        during.len(),
        after.len(),
        ready_polls.load(Ordering::Relaxed),
        ready_bad.load(Ordering::Relaxed),
    );
    match applied {
        Some(d) => println!("outage: route change made during the outage reached the data plane {d:.1?} after restart"),
        None => println!("outage: route change made during the outage NOT seen within {APPLY_WAIT:?} after restart"),
    }
    assert!(events.len() <= MAX_CALLS);
    assert!(during.len() >= MIN_DURING, "{} calls during the outage", during.len());
    assert_eq!(during_canary, 0, "the change was seen during the outage although the proxy's API server was down");
    assert!(failed.is_empty(), "{} failed calls, first: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert_eq!(ready_bad.load(Ordering::Relaxed), 0, "/ready was not 200 during/after the outage");
    let applied = applied.with_context(|| {
        format!(
            "the route change made during the outage was not applied within {APPLY_WAIT:?} after restart; proxy log:\n{}",
            mesh.proxy.log_tail(20)
        )
    })?;
    assert!(
        applied <= APPLY_BOUND,
        "the route change made during the outage reached traffic {applied:.1?} after restart (bound {APPLY_BOUND:?})"
    );
    let mut client = mesh.order_client().await?;
    for _ in 0..10 {
        assert_eq!(get_order(&mut client).await.as_deref(), Ok("order-service-canary"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Readiness
// ---------------------------------------------------------------------------

/// `/ready` answers 503 for at least `for_` and at least `answers` times (checked every
/// 100 ms), and nothing else: a proxy whose admin port never answers is not "unready",
/// it is broken.
async fn stays_unready(proxy: &mut ProxyProcess, for_: Duration, answers: usize) -> Result<()> {
    // Only a proxy that never answers takes this long.
    const GIVE_UP: Duration = Duration::from_secs(60);
    let started = Instant::now();
    let mut unready = 0;
    let mut last_error = None;
    while started.elapsed() < for_ || unready < answers {
        if let Some(status) = proxy.try_exit_status()? {
            bail!("proxy exited ({status}):\n{}", proxy.log_tail(20));
        }
        ensure!(
            started.elapsed() < GIVE_UP,
            "/ready answered 503 only {unready} times in {GIVE_UP:?} (last error: {last_error:?}):\n{}",
            proxy.log_tail(20)
        );
        match proxy.admin_get("/ready").await {
            Ok((503, _)) => unready += 1,
            Ok((code, body)) => bail!("/ready answered {code} {body:?} before the proxy could have synced"),
            Err(e) => last_error = Some(format!("{e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_mode_is_ready_only_after_the_initial_sync() -> Result<()> {
    let mut cluster = Cluster::start().await?;
    cluster.ensure_namespace(NS)?;

    // (1) No RBAC yet: the sidecar's ServiceAccount may not list anything.
    let kubeconfig = cluster.token_kubeconfig(NS, "default").await?;
    let mut proxy = ProxyProcess::spawn_kube(&kubeconfig, NS, &[])?;
    stays_unready(&mut proxy, Duration::from_secs(2), 10).await?;
    cluster.grant_sidecar_rbac(NS)?;
    let t0 = Instant::now();
    proxy.wait_ready_within(Duration::from_secs(40)).await?;
    println!("readiness: ready {:.1?} after the RBAC was applied", t0.elapsed());

    // (2) The API server is down when a sidecar starts: not ready until it is back.
    cluster.env_mut().stop_apiserver().await?;
    let mut second = ProxyProcess::spawn_kube(&kubeconfig, NS, &[])?;
    stays_unready(&mut second, Duration::from_secs(2), 10).await?;
    let (code, _) = proxy.admin_get("/ready").await?;
    assert_eq!(code, 200, "an already-synced proxy must stay ready while the API server is down");
    cluster.env_mut().start_apiserver().await?;
    let t0 = Instant::now();
    second.wait_ready_within(Duration::from_secs(40)).await?;
    println!("readiness: ready {:.1?} after the API server came back", t0.elapsed());
    Ok(())
}
