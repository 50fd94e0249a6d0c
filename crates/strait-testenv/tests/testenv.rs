//! The real control plane: etcd + kube-apiserver built from tools/ (the first run builds
//! them, a few minutes), Gateway API CRDs, RBAC, restart with data kept.

use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DynamicObject, ObjectMeta, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use strait_testenv::{TestEnv, TestEnvOptions, client_from_kubeconfig};

const NS: &str = "testenv-check";

fn kubectl_ok(env: &TestEnv, args: &[&str]) -> String {
    let out = env.kubectl().args(args).output().expect("running kubectl");
    assert!(out.status.success(), "kubectl {args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_control_plane() {
    let started = Instant::now();
    let mut env = TestEnv::start(TestEnvOptions::default()).await.expect("test env starts");
    eprintln!("testenv: started in {:.2?} at {} ({})", started.elapsed(), env.server_url(), env.dir().display());

    // kubectl through the admin kubeconfig.
    assert_eq!(kubectl_ok(&env, &["get", "--raw", "/readyz"]).trim(), "ok");
    let crd = kubectl_ok(&env, &["get", "crd", "grpcroutes.gateway.networking.k8s.io", "-o", "name"]);
    assert_eq!(crd.trim(), "customresourcedefinition.apiextensions.k8s.io/grpcroutes.gateway.networking.k8s.io");
    let version = kubectl_ok(&env, &["version", "-o", "json"]);
    assert!(version.contains("\"gitVersion\": \"v1.36.3\""), "server version: {version}");

    // kube-rs: a namespace and a Service, ClusterIP allocated from 10.96.0.0/16.
    let client = env.client().await.expect("admin client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace { metadata: ObjectMeta { name: Some(NS.into()), ..Default::default() }, ..Default::default() };
    namespaces.create(&PostParams::default(), &ns).await.expect("create namespace");
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "user-service"},
        "spec": {"selector": {"app": "user"}, "ports": [{"name": "grpc", "port": 50051, "appProtocol": "kubernetes.io/h2c"}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.expect("create Service");
    let read = services.get("user-service").await.expect("read Service back");
    let cluster_ip = read.spec.as_ref().and_then(|s| s.cluster_ip.clone()).expect("ClusterIP allocated");
    assert!(cluster_ip.starts_with("10.96."), "ClusterIP {cluster_ip}");

    // The GRPCRoute CRD validates and stores a GAMMA route (parentRef: Service).
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "GRPCRoute");
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &ApiResource::from_gvk_with_plural(&gvk, "grpcroutes"));
    let route: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "user-split", "namespace": NS},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "user-service", "port": 50051}],
            "rules": [{"matches": [{"method": {"service": "user.v1.UserService", "method": "GetUser"}}],
                       "backendRefs": [{"name": "user-service", "port": 50051}]}]
        }
    }))
    .unwrap();
    routes.create(&PostParams::default(), &route).await.expect("create GRPCRoute");
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "bad", "namespace": NS},
        "spec": {"rules": [{"matches": [{"method": {"type": "Exact"}}]}]}
    }))
    .unwrap();
    let err = routes
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("CRD validation (CEL) rejects a method match without service or method");
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 422), "{err}");

    // Pods can be created without a controller-manager (ServiceAccount admission is off).
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "user-0", "labels": {"app": "user"}},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/user:1"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.expect("create Pod");

    // RBAC: a ServiceAccount without bindings may not list Services.
    let token = env.service_account_token(NS, "no-rbac").await.expect("TokenRequest");
    let sa_kubeconfig = env.kubeconfig_for_token(&token).expect("token kubeconfig");
    let sa_client = client_from_kubeconfig(&sa_kubeconfig).await.expect("token client");
    let err = Api::<Service>::namespaced(sa_client, NS).list(&Default::default()).await.expect_err("403 expected");
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err}");
    let whoami = std::process::Command::new(std::env::var("STRAIT_KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg("--kubeconfig")
        .arg(&sa_kubeconfig)
        .args(["auth", "can-i", "list", "services", "-n", NS])
        .output()
        .expect("kubectl auth can-i");
    assert_eq!(String::from_utf8_lossy(&whoami.stdout).trim(), "no");

    // Restart kube-apiserver: same port and certs, data kept in etcd.
    let restart = Instant::now();
    env.stop_apiserver().await.expect("stop");
    assert!(services.get("user-service").await.is_err(), "apiserver should be down");
    env.start_apiserver().await.expect("restart");
    eprintln!("testenv: kube-apiserver restarted in {:.2?}", restart.elapsed());
    let again = services.get("user-service").await.expect("Service survives an apiserver restart");
    assert_eq!(again.spec.and_then(|s| s.cluster_ip).as_deref(), Some(cluster_ip.as_str()));
    assert!(routes.get("user-split").await.is_ok(), "GRPCRoute survives the restart");

    let dir = env.dir().to_path_buf();
    drop(env);
    if std::env::var("STRAIT_TESTENV_KEEP").as_deref() != Ok("1") {
        assert!(!dir.exists(), "env dir removed on drop");
    }
}
