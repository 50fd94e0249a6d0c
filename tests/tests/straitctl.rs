//! `straitctl check` and `straitctl version` against a real etcd + kube-apiserver
//! (`strait-testenv`), run as the user runs them: the built binary with KUBECONFIG.
//! `straitctl routes` needs a kubelet for its port-forward; here its HTTP exchange and
//! rendering run against a real strait-proxy's admin endpoint over TCP instead.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use strait_e2e::{ProxyProcess, examples_dir, target_bin};
use strait_testenv::{TestEnv, TestEnvOptions, install_manifests, tools};
use straitctl::cluster::{ClusterError, admin_body, http_get};
use straitctl::routes_view::{render_query, render_routes};

fn straitctl(kubeconfig: &Path, args: &[&str]) -> Result<(i32, String)> {
    let bin = target_bin("straitctl", "STRAITCTL_BIN")?;
    let out: Output = std::process::Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("straitctl {args:?} -> {:?}\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), stdout))
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: namespace.map(Into::into), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_each_problem_with_its_fix_and_passes_once_fixed() -> Result<()> {
    let env = TestEnv::start(TestEnvOptions { install_gateway_crds: false, ..Default::default() }).await?;
    let client = env.client().await?;
    let kubeconfig = env.kubeconfig_path();

    // A meshed namespace with a pod the webhook never saw.
    let labels = BTreeMap::from([("strait.io/inject".to_string(), "enabled".to_string())]);
    let ns = Namespace { metadata: ObjectMeta { labels: Some(labels), ..meta("meshed", None) }, ..Default::default() };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    // No controller-manager here: the ServiceAccount admission needs "default" to exist.
    let sa = ServiceAccount { metadata: meta("default", Some("meshed")), ..Default::default() };
    Api::<ServiceAccount>::namespaced(client.clone(), "meshed").create(&PostParams::default(), &sa).await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bare", "namespace": "meshed"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))?;
    let pods = Api::<Pod>::namespaced(client.clone(), "meshed");
    pods.create(&PostParams::default(), &pod).await?;

    let (code, out) = straitctl(kubeconfig, &["check"])?;
    ensure!(code == 1, "problems exit 1, got {code}");
    for want in [
        "PROBLEM  CRD grpcroutes.gateway.networking.k8s.io is not installed\n         fix: kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/",
        "PROBLEM  webhook configuration strait-injector is not installed\n         fix: kubectl apply -k deploy/",
        "PROBLEM  namespace meshed: pod bare has no Strait sidecar (strait.io/status missing)\n         fix: kubectl -n meshed delete pod bare",
    ] {
        ensure!(out.contains(want), "missing {want:?}");
    }

    // Fix them one by one: CRDs, a webhook with an empty caBundle (still a problem),
    // then with the cluster's CA, and the pod injected.
    install_manifests(&client, &tools::gateway_crd_dir()?).await?;
    let webhook: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "strait-injector"},
        "webhooks": [{
            "name": "namespace.inject.strait.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"service": {"name": "strait-injector", "namespace": "strait-system", "path": "/mutate"}},
        }],
    }))?;
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    webhooks.create(&PostParams::default(), &webhook).await?;
    let (code, out) = straitctl(kubeconfig, &["check"])?;
    ensure!(code == 1, "still problems, got {code}");
    ensure!(out.contains("ok       CRD grpcroutes.gateway.networking.k8s.io serves v1"), "CRD check passes");
    ensure!(
        out.contains("PROBLEM  webhook namespace.inject.strait.io in strait-injector: caBundle is empty\n         fix: kubectl -n strait-system rollout restart deployment/strait-injector"),
        "empty caBundle reported"
    );

    let ca = std::fs::read(env.ca_cert_path())?;
    let ca_b64 = base64_encode(&ca);
    let patch = json!({"webhooks": [{"name": "namespace.inject.strait.io", "clientConfig": {"caBundle": ca_b64}}]});
    // Strategic merge by webhook name.
    webhooks.patch("strait-injector", &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    let status = json!({"metadata": {"annotations": {"strait.io/status": "{\"version\":\"test\"}"}}});
    pods.patch("bare", &PatchParams::default(), &Patch::Merge(&status)).await?;
    let (code, out) = straitctl(kubeconfig, &["check"])?;
    ensure!(code == 0, "all fixed: exit 0, got {code}");
    ensure!(!out.contains("PROBLEM"), "no problems left");
    ensure!(
        out.contains("ok       webhook configuration strait-injector: 1 webhook(s) with a CA bundle"),
        "webhook ok"
    );
    ensure!(out.contains("ok       namespace meshed: all 1 pod(s) meshed or opted out"), "pods ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn version_shows_control_plane_images_and_never_fails_on_an_unreachable_cluster() -> Result<()> {
    let env = TestEnv::start(TestEnvOptions { install_gateway_crds: false, ..Default::default() }).await?;
    let client = env.client().await?;
    let kubeconfig = env.kubeconfig_path();
    let (code, out) = straitctl(kubeconfig, &["version"])?;
    ensure!(code == 0);
    ensure!(out.starts_with(&format!("straitctl: {}\n", env!("CARGO_PKG_VERSION"))), "client version first");
    ensure!(
        out.contains("strait-injector: not installed (no Deployment strait-system/strait-injector)"),
        "not installed"
    );

    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &Namespace { metadata: meta("strait-system", None), ..Default::default() })
        .await?;
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "strait-injector", "namespace": "strait-system"},
        "spec": {
            "selector": {"matchLabels": {"app": "strait-injector"}},
            "template": {
                "metadata": {"labels": {"app": "strait-injector"}},
                "spec": {"containers": [{"name": "injector", "image": "ghcr.io/strait/injector:v9.8.7"}]},
            },
        },
    }))?;
    Api::<Deployment>::namespaced(client.clone(), "strait-system").create(&PostParams::default(), &deploy).await?;
    let (code, out) = straitctl(kubeconfig, &["version"])?;
    ensure!(code == 0);
    ensure!(out.contains("strait-injector: ghcr.io/strait/injector:v9.8.7\n"), "injector image shown");
    ensure!(out.contains("strait-controller: not installed"), "controller not installed");

    // A kubeconfig whose server refuses connections, and none at all: still exit 0.
    let dir = tempfile::tempdir()?;
    let dead = dir.path().join("dead.kubeconfig");
    let text = std::fs::read_to_string(kubeconfig)?;
    let server = env.server_url();
    std::fs::write(&dead, text.replace(&server, "https://127.0.0.1:1"))?;
    let (code, out) = straitctl(&dead, &["version"])?;
    ensure!(code == 0, "unreachable cluster is not a failure, got {code}");
    ensure!(out.contains("strait-injector: unknown ("), "says it could not ask");
    let (code, out) = straitctl(&dir.path().join("missing"), &["version"])?;
    ensure!(code == 0, "no kubeconfig is not a failure, got {code}");
    ensure!(out.contains("cluster: not reachable ("), "says so");
    Ok(())
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What `straitctl routes` does once the port-forward stream is open, on a TCP
/// connection to a file-mode proxy's admin listener: the request, the answer's
/// parsing, the table, and a 400 turned into an error carrying the proxy's message.
#[tokio::test(flavor = "multi_thread")]
async fn routes_exchange_and_table_against_a_real_proxy_admin_endpoint() -> Result<()> {
    let proxy = ProxyProcess::start(&examples_dir(), "app", &[]).await?;
    let admin = proxy.admin_addr();
    let dump: serde_json::Value = serde_json::from_slice(&get(admin, "/routes").await??)?;
    let table = render_routes(&dump);
    eprintln!("{table}");
    let canary = table.lines().find(|l| l.starts_with("app/order-service ")).context("order-service row")?;
    ensure!(canary.contains("app/canary-route#0") && canary.contains("w=90") && canary.contains("w=10"), "{canary}");

    let answer = get(admin, "/routes/query?authority=order-service:50051&path=/order.v1.OrderService/Get").await??;
    let text = render_query(&serde_json::from_slice(&answer)?);
    ensure!(text.contains("result:       ROUTED\nrule:         app/canary-route#0"), "{text}");

    match get(admin, "/routes/query?path=/x").await? {
        Err(ClusterError::Http { status: 400, body }) => ensure!(body.contains("authority is required"), "{body}"),
        other => anyhow::bail!("expected a 400, got {other:?}"),
    }
    Ok(())
}

/// One `straitctl routes` exchange over TCP: the admin body, or the non-200 error.
async fn get(admin: std::net::SocketAddr, path: &str) -> Result<Result<Vec<u8>, ClusterError>> {
    let mut tcp = tokio::net::TcpStream::connect(admin).await?;
    let raw = http_get(&mut tcp, path).await.map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    Ok(admin_body(&raw))
}
