//! Scale: a real API server (strait-testenv) with many Services, EndpointSlices and
//! GRPCRoutes; the proxy in Kubernetes mode: start-up sync time, RSS, and the time from
//! a GRPCRoute patch to the proxy's data plane (its admin `/routes/query`).
use crate::procs::{self, Proc};
use crate::report;
use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use strait_testenv::{TestEnv, TestEnvOptions};

#[derive(Clone, Debug)]
pub struct ScaleOpts {
    /// The strait-proxy measured.
    pub proxy_bin: PathBuf,
    pub out_dir: PathBuf,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub routes: usize,
    pub namespaces: usize,
    pub parallelism: usize,
    pub changes: usize,
    pub create_timeout: Duration,
}

fn grpcroute_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "GRPCRoute"),
        "grpcroutes",
    )
}

fn ns_of(o: &ScaleOpts, i: usize) -> String {
    format!("scale-{}", i % o.namespaces)
}

fn service(o: &ScaleOpts, i: usize) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": ns_of(o, i)},
        "spec": {"ports": [{"name": "grpc", "port": 50051, "targetPort": 8080, "appProtocol": "kubernetes.io/grpc"}]}
    }))?)
}

fn slice(o: &ScaleOpts, i: usize) -> Result<EndpointSlice> {
    // Never dialled: the API server rejects loopback endpoints, and nothing sends traffic
    // to these Services (the proxy's admin query is used instead).
    let endpoints: Vec<Value> = (0..o.endpoints_per_service)
        .map(|j| {
            let idx = i * o.endpoints_per_service + j;
            let ip = format!("10.{}.{}.{}", 200 + (idx >> 16), (idx >> 8) & 255, (idx & 255).max(1));
            json!({"addresses": [ip], "conditions": {"ready": true}})
        })
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-0"), "namespace": ns_of(o, i),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))?)
}

fn route_spec(i: usize, target: usize) -> Value {
    json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": format!("svc-{i}"), "port": 50051}],
        "rules": [
            {"matches": [{"method": {"service": "strait.test.v1.Echo", "method": "Unary"}}],
             "backendRefs": [{"name": format!("svc-{target}"), "port": 50051}]},
            {"backendRefs": [{"name": format!("svc-{i}"), "port": 50051}]}
        ]
    })
}

fn route(o: &ScaleOpts, i: usize) -> Result<DynamicObject> {
    let mut obj = DynamicObject::new(&format!("route-{i}"), &grpcroute_resource()).within(&ns_of(o, i));
    obj.data = json!({"spec": route_spec(i, i + o.routes)});
    Ok(obj)
}

async fn create_all<K, F>(what: &str, n: usize, par: usize, make: F) -> Result<usize>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    F: Fn(usize) -> Result<(Api<K>, K)>,
{
    let pp = PostParams::default();
    let results: Vec<Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let made = make(i);
            let pp = pp.clone();
            async move {
                let (api, obj) = made?;
                for attempt in 0..5u32 {
                    match tokio::time::timeout(Duration::from_secs(30), api.create(&pp, &obj)).await {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(kube::Error::Api(e))) if e.code == 409 => return Ok(()),
                        Ok(Err(e)) if attempt < 4 => {
                            backoff(attempt, &e.to_string()).await;
                        }
                        Ok(Err(e)) => return Err(anyhow!(e)),
                        Err(_) if attempt < 4 => backoff(attempt, "timeout").await,
                        Err(_) => bail!("create timed out"),
                    }
                }
                bail!("create failed")
            }
        })
        .buffer_unordered(par)
        .collect()
        .await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(e) = failed.first() {
        bail!("{} of {n} {what} failed to create, e.g. {e:#}", failed.len());
    }
    Ok(n)
}

async fn backoff(attempt: u32, _why: &str) {
    tokio::time::sleep(Duration::from_millis(200 * (1 << attempt))).await;
}

fn mentions(body: &str, name: &str) -> bool {
    body.match_indices(name).any(|(i, _)| !body[i + name.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

pub async fn run(o: &ScaleOpts) -> Result<Value> {
    let t_env = Instant::now();
    let env = TestEnv::start(TestEnvOptions::default()).await.context("starting the test control plane")?;
    let env_secs = t_env.elapsed().as_secs_f64();
    eprintln!("== scale: control plane up in {env_secs:.1} s ({})", env.server_url());
    let client = env.client().await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    for k in 0..o.namespaces {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": format!("scale-{k}")}}))?;
        match nss.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let t_create = Instant::now();
    let par = o.parallelism;
    let creation = async {
        let c = client.clone();
        create_all::<Service, _>("Services", o.services, par, |i| {
            Ok((Api::namespaced(c.clone(), &ns_of(o, i)), service(o, i)?))
        })
        .await?;
        eprintln!("   {} Services in {:.1} s", o.services, t_create.elapsed().as_secs_f64());
        create_all::<EndpointSlice, _>("EndpointSlices", o.services, par, |i| {
            Ok((Api::namespaced(c.clone(), &ns_of(o, i)), slice(o, i)?))
        })
        .await?;
        eprintln!("   + {} EndpointSlices in {:.1} s", o.services, t_create.elapsed().as_secs_f64());
        create_routes(o, &client).await?;
        Ok::<(), anyhow::Error>(())
    };
    tokio::time::timeout(o.create_timeout, creation)
        .await
        .map_err(|_| anyhow!("creating objects took longer than {:?}", o.create_timeout))??;
    let create_secs = t_create.elapsed().as_secs_f64();
    let objects = 2 * o.services + o.routes;
    eprintln!("   + {} GRPCRoutes: {objects} objects in {create_secs:.1} s", o.routes);

    // The proxy in Kubernetes mode, admin kubeconfig.
    let a = procs::free_addrs(3)?;
    let log = o.out_dir.join("scale-proxy.log");
    let out = std::fs::File::create(&log)?;
    let mut cmd = std::process::Command::new(&o.proxy_bin);
    cmd.env("KUBECONFIG", env.kubeconfig_path())
        .env_remove("STRAIT_CONFIG_DIR")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("POD_NAMESPACE")
        .args(["--namespace", "scale-0", "--log-level", "info"])
        .args([
            "--outbound-addr",
            &a[0].to_string(),
            "--inbound-addr",
            &a[1].to_string(),
            "--admin-addr",
            &a[2].to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let t_sync = Instant::now();
    let child = cmd.spawn().context("starting strait-proxy (kube mode)")?;
    let mut proxy = Proc { name: "strait-proxy (kube mode)".into(), child, log: log.clone() };
    let pid = proxy.pid();
    let deadline = t_sync + Duration::from_secs(300);
    loop {
        proxy.check_alive()?;
        if let Ok((200, _)) = procs::http_get(a[2], "/ready") {
            break;
        }
        if Instant::now() > deadline {
            bail!("kube-mode proxy not ready after 300 s; log tail:\n{}", proxy.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sync_secs = t_sync.elapsed().as_secs_f64();
    let sync_cpu = procs::cpu_seconds(pid);
    let rss_ready = procs::rss_bytes(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_sync = procs::rss_bytes(pid);
    eprintln!("   proxy ready after {sync_secs:.2} s, RSS {:.1} MiB", rss_sync as f64 / 1048576.0);

    // Route changes: repoint rule 0 of a route to another Service, wait for the proxy.
    let cpu0 = procs::cpu_seconds(pid);
    let mut lat_ms = Vec::new();
    for k in 0..o.changes {
        let i = (k * 37) % o.routes;
        let ns = ns_of(o, i);
        let target = i + 2 * o.routes;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &grpcroute_resource());
        let query = format!(
            "/routes/query?authority=svc-{i}.{ns}.svc.cluster.local:50051&path=/strait.test.v1.Echo/Unary&namespace={ns}"
        );
        let (_, before) = procs::http_get(a[2], &query)?;
        if mentions(&before, &format!("svc-{target}")) {
            bail!("route-{i} already points at svc-{target}");
        }
        let t0 = Instant::now();
        let patch = json!({"spec": route_spec(i, target)});
        api.patch(&format!("route-{i}"), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let mut seen = None;
        for _ in 0..20_000u32 {
            let (code, body) = procs::http_get(a[2], &query)?;
            if code == 200 && mentions(&body, &format!("svc-{target}")) {
                seen = Some(t0.elapsed());
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let d = seen.ok_or_else(|| anyhow!("route-{i} change not visible after 30 s"))?;
        lat_ms.push(d.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let cpu_changes = procs::cpu_seconds(pid) - cpu0;
    let rss_after = procs::rss_bytes(pid);
    let mut sorted = lat_ms.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    drop(proxy);
    Ok(json!({
        "services": o.services,
        "endpoint_slices": o.services,
        "endpoints": o.services * o.endpoints_per_service,
        "grpc_routes": o.routes,
        "namespaces": o.namespaces,
        "create_parallelism": par,
        "control_plane_start_seconds": env_secs,
        "create_seconds": create_secs,
        "create_objects_per_second": objects as f64 / create_secs,
        "sync_seconds": sync_secs,
        "sync_cpu_seconds": sync_cpu,
        "rss_at_ready_bytes": rss_ready,
        "rss_after_sync_bytes": rss_sync,
        "rss_after_changes_bytes": rss_after,
        "changes": o.changes,
        "change_ms": lat_ms,
        "change_p50_ms": report::median(&lat_ms),
        "change_p99_ms": pct(0.99),
        "change_max_ms": sorted.last().copied().unwrap_or(f64::NAN),
        "cpu_ms_per_change": cpu_changes * 1000.0 / o.changes.max(1) as f64,
        "note": "The proxy watches Services, GRPCRoutes and ReferenceGrants cluster-wide, but EndpointSlices only per Service \
                 it sends traffic to (on demand); the benchmark sends no traffic to these Services (their endpoints are not \
                 loopback), so the 50,000 endpoints stay in the API server and the RSS shows Services + routes. Change latency \
                 is measured from before the PATCH to the first /routes/query answer (polled every 2 ms) naming the new backend; \
                 CPU per change includes answering those polls. Not pinned (the API server needs both cores).",
    }))
}

async fn create_routes(o: &ScaleOpts, client: &kube::Client) -> Result<()> {
    let ar = grpcroute_resource();
    let pp = PostParams::default();
    let results: Vec<Result<()>> = futures::stream::iter(0..o.routes)
        .map(|i| {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns_of(o, i), &ar);
            let pp = pp.clone();
            async move {
                let obj = route(o, i)?;
                for attempt in 0..5u32 {
                    match tokio::time::timeout(Duration::from_secs(30), api.create(&pp, &obj)).await {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(kube::Error::Api(e))) if e.code == 409 => return Ok(()),
                        Ok(Err(e)) if attempt == 4 => return Err(anyhow!(e)),
                        _ => backoff(attempt, "retry").await,
                    }
                }
                bail!("route-{i}: create failed")
            }
        })
        .buffer_unordered(o.parallelism)
        .collect()
        .await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(e) = failed.first() {
        bail!("{} of {} GRPCRoutes failed, e.g. {e:#}", failed.len(), o.routes);
    }
    Ok(())
}
