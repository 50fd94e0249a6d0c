//! The RBAC of `deploy/` as a cluster admin applies it, against a real etcd +
//! kube-apiserver (`strait-testenv`): the controller runs under the ServiceAccount its
//! permissions are bound to, holds exactly what it uses, and — running with that
//! ServiceAccount's token — keeps the sidecars' ClusterRoleBinding in step with the
//! `strait.io/inject=enabled` namespace label, so labelling a namespace is the only
//! step for its sidecars to read the mesh's objects.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use strait_e2e::injector::{SYSTEM_NS, apply_deploy, kubectl_as, kubectl_json, kubectl_ok, kustomize, namespace};
use strait_e2e::kube_mode::{Cluster, ControllerProcess};

/// How long the controller may take to update the binding before the test gives up:
/// a deadline for a condition (usually well under a second), not a sleep.
const CHANGE_DEADLINE: Duration = Duration::from_secs(30);

fn find_deployment_with_container<'a>(docs: &'a [Value], container: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment")
        .filter(|d| {
            d.pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| c["name"] == container))
        })
        .collect()
}

/// `kubectl auth can-i <args> --as=<user>` as admin: true for "yes", false for "no".
fn can_i(cluster: &Cluster, user: &str, args: &[&str]) -> Result<bool> {
    cluster.can_i(user, args)
}

/// The controller's container runs in its own Deployment under a ServiceAccount that
/// holds what the controller uses (in base and in every overlay), and the injector's
/// pods no longer carry it (their readiness, hence the webhook's endpoints, do not
/// depend on the controller). Fails on the old deploy/: the controller container ran
/// in the injector pod under `strait-injector`, which may list nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_runs_under_the_service_account_that_holds_its_permissions() -> Result<()> {
    let mut service_accounts = Vec::new();
    for variant in ["", "overlays/cert-manager", "overlays/failure-policy-ignore"] {
        let docs = kustomize(variant)?;
        let found = find_deployment_with_container(&docs, "strait-controller");
        assert_eq!(found.len(), 1, "deploy/{variant}: one Deployment runs strait-controller: {found:#?}");
        let deployment = found[0];
        let containers: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(containers, ["strait-controller"], "deploy/{variant}: the controller's pod runs only it");
        let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .context("the controller Deployment names no serviceAccountName")?
            .to_owned();
        let injectors = find_deployment_with_container(&docs, "strait-injector");
        assert_eq!(injectors.len(), 1, "deploy/{variant}: one injector Deployment");
        assert_ne!(injectors[0]["metadata"]["name"], deployment["metadata"]["name"], "deploy/{variant}");
        service_accounts.push(sa);
    }
    service_accounts.dedup();
    assert_eq!(service_accounts, ["strait-controller"], "the controller's ServiceAccount in every variant");

    let cluster = Cluster::start().await?;
    apply_deploy(cluster.env())?;
    let user = format!("system:serviceaccount:{SYSTEM_NS}:{}", service_accounts[0]);
    let allowed: &[&[&str]] = &[
        // Route status.
        &["list", "services", "--all-namespaces"],
        &["watch", "services", "--all-namespaces"],
        &["list", "grpcroutes.gateway.networking.k8s.io", "--all-namespaces"],
        &["watch", "grpcroutes.gateway.networking.k8s.io", "--all-namespaces"],
        &["list", "referencegrants.gateway.networking.k8s.io", "--all-namespaces"],
        &["watch", "referencegrants.gateway.networking.k8s.io", "--all-namespaces"],
        &["patch", "grpcroutes.gateway.networking.k8s.io", "--subresource=status", "-n", "app"],
        // The election Lease.
        &["get", "leases.coordination.k8s.io/strait-status-controller", "-n", SYSTEM_NS],
        &["create", "leases.coordination.k8s.io", "-n", SYSTEM_NS],
        &["update", "leases.coordination.k8s.io/strait-status-controller", "-n", SYSTEM_NS],
        // The sidecars' binding.
        &["list", "namespaces"],
        &["watch", "namespaces"],
        &["get", "clusterrolebindings.rbac.authorization.k8s.io/strait-proxy"],
        &["patch", "clusterrolebindings.rbac.authorization.k8s.io/strait-proxy"],
        &["bind", "clusterroles.rbac.authorization.k8s.io/strait-proxy"],
    ];
    let denied: &[&[&str]] = &[
        &["get", "secrets", "-n", SYSTEM_NS],
        &["list", "secrets", "--all-namespaces"],
        &["list", "pods", "--all-namespaces"],
        &["list", "endpointslices.discovery.k8s.io", "--all-namespaces"],
        &["update", "grpcroutes.gateway.networking.k8s.io", "-n", "app"],
        &["create", "leases.coordination.k8s.io", "-n", "default"],
        &["update", "namespaces/app"],
        &["patch", "namespaces/app"],
        &["create", "namespaces"],
        &["patch", "clusterrolebindings.rbac.authorization.k8s.io/strait-controller"],
        &["patch", "clusterrolebindings.rbac.authorization.k8s.io/cluster-admin"],
        &["list", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["delete", "clusterrolebindings.rbac.authorization.k8s.io/strait-proxy"],
        &["update", "clusterrolebindings.rbac.authorization.k8s.io/strait-proxy"],
        &["bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin"],
        &["bind", "clusterroles.rbac.authorization.k8s.io/strait-controller"],
        &["escalate", "clusterroles.rbac.authorization.k8s.io/strait-proxy"],
        &["patch", "clusterroles.rbac.authorization.k8s.io/strait-proxy"],
        &["create", "rolebindings.rbac.authorization.k8s.io", "-n", "app"],
    ];
    let mut wrong = Vec::new();
    for (args, expected) in allowed.iter().map(|a| (a, true)).chain(denied.iter().map(|a| (a, false))) {
        if can_i(&cluster, &user, args)? != expected {
            wrong.push(format!("can-i {} should be {}", args.join(" "), if expected { "yes" } else { "no" }));
        }
    }
    assert!(wrong.is_empty(), "RBAC of {user}:\n{}", wrong.join("\n"));

    // `bind` on strait-proxy is what lets it set the subjects (it does not hold the
    // sidecars' EndpointSlice reads): with its own token the write passes; without
    // that rule RBAC's escalation check refuses it.
    let kubeconfig = cluster.token_kubeconfig(SYSTEM_NS, &service_accounts[0]).await?;
    let set_subjects = |group: &str| {
        let patch = format!(
            r#"{{"subjects":[{{"apiGroup":"rbac.authorization.k8s.io","kind":"Group","name":"system:serviceaccounts:{group}"}}]}}"#
        );
        kubectl_as(&kubeconfig, &["patch", "clusterrolebinding", "strait-proxy", "--type=merge", "-p", &patch], None)
    };
    let out = set_subjects("team-a")?;
    assert!(out.success, "the controller sets the binding's subjects: {out:?}");
    let role = kubectl_json(cluster.env(), &["get", "clusterrole", "strait-controller"])?;
    let bind_rule = role["rules"]
        .as_array()
        .and_then(|rules| rules.iter().position(|r| r["verbs"] == serde_json::json!(["bind"])))
        .context("no bind rule in ClusterRole strait-controller")?;
    let remove = format!(r#"[{{"op":"remove","path":"/rules/{bind_rule}"}}]"#);
    kubectl_ok(cluster.env(), &["patch", "clusterrole", "strait-controller", "--type=json", "-p", &remove], None)?;
    let started = Instant::now();
    loop {
        let out = set_subjects("team-b")?;
        if !out.success && out.stderr.contains("attempting to grant RBAC permissions not currently held") {
            break;
        }
        assert!(
            started.elapsed() < CHANGE_DEADLINE,
            "without bind the write must be refused as an escalation: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Runs `kubectl` with `kubeconfig` (a sidecar ServiceAccount's token) reading what a
/// sidecar reads; Ok(true) when all three reads succeed, Ok(false) when the API server
/// refuses (Forbidden), an error otherwise.
fn sidecar_can_read(kubeconfig: &Path, namespace: &str) -> Result<bool> {
    let out = kubectl_as(
        kubeconfig,
        &[
            "get",
            "services,endpointslices.discovery.k8s.io,grpcroutes.gateway.networking.k8s.io",
            "-n",
            namespace,
            "-o",
            "name",
        ],
        None,
    )?;
    if out.success {
        return Ok(true);
    }
    if out.stderr.contains("Forbidden") || out.stderr.contains("forbidden") {
        return Ok(false);
    }
    bail!("kubectl get as the sidecar: {}", out.stderr)
}

/// Polls `sidecar_can_read` until it answers `want` or the deadline passes.
async fn wait_sidecar_access(kubeconfig: &Path, namespace: &str, want: bool, what: &str) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if sidecar_can_read(kubeconfig, namespace)? == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > CHANGE_DEADLINE {
            bail!("{what}: sidecar read access still {} after {CHANGE_DEADLINE:?}", !want);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn binding_groups(cluster: &Cluster) -> Result<Vec<String>> {
    let binding = kubectl_json(cluster.env(), &["get", "clusterrolebinding", "strait-proxy"])?;
    Ok(binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{}/{}", s["kind"].as_str().unwrap_or_default(), s["name"].as_str().unwrap_or_default()))
        .collect())
}

/// The controller, run with the strait-controller ServiceAccount's own token and the
/// arguments of deploy/'s Deployment: a brand-new namespace labelled
/// `strait.io/inject=enabled` gets its ServiceAccounts read access to services,
/// EndpointSlices and GRPCRoutes; removing the label takes it away; an unlabelled
/// namespace never gets it. Fails on the old deploy/: the binding named only
/// `system:serviceaccounts:app`, and nothing kept it in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelling_a_namespace_is_the_only_step_for_its_sidecars() -> Result<()> {
    let cluster = Cluster::start().await?;
    apply_deploy(cluster.env())?;
    let docs = kustomize("")?;
    let deployment = find_deployment_with_container(&docs, "strait-controller");
    let container = deployment
        .first()
        .and_then(|d| d["spec"]["template"]["spec"]["containers"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["name"] == "strait-controller"))
        .context("no strait-controller container in deploy/")?;
    let args: Vec<String> =
        container["args"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_owned)).collect();
    let sa = deployment[0]["spec"]["template"]["spec"]["serviceAccountName"].as_str().unwrap_or("default");
    let controller_kubeconfig = cluster.token_kubeconfig(SYSTEM_NS, sa).await?;
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start(&controller_kubeconfig, &arg_refs).await?;

    // An unlabelled namespace and a labelled one, both brand new.
    namespace(cluster.env(), "plain", &[])?;
    let plain_sidecar = cluster.token_kubeconfig("plain", "default").await?;
    namespace(cluster.env(), "team-a", &[("strait.io/inject", "enabled")])?;
    let sidecar = cluster.token_kubeconfig("team-a", "default").await?;
    let took = wait_sidecar_access(&sidecar, "team-a", true, "after labelling team-a")
        .await
        .with_context(|| format!("controller log:\n{}", controller.log_tail(30)))?;
    eprintln!("labelled team-a: its sidecar may read after {took:.1?}");
    // Cluster-wide reads (a sidecar routes to Services of every namespace).
    assert!(sidecar_can_read(&sidecar, "plain")?, "team-a's sidecar reads other namespaces' Services too");
    assert!(!sidecar_can_read(&plain_sidecar, "plain")?, "an unlabelled namespace's ServiceAccount reads nothing");
    assert_eq!(binding_groups(&cluster)?, ["Group/system:serviceaccounts:team-a"]);
    // Nothing else: no Secrets, no Pods, no writes.
    for forbidden in [
        &["get", "secrets", "-n", "team-a"] as &[&str],
        &["get", "pods", "-n", "team-a"],
        &["create", "service", "clusterip", "x", "--tcp=80:80", "-n", "team-a"],
    ] {
        let out = kubectl_as(&sidecar, forbidden, None)?;
        assert!(!out.success && out.stderr.contains("forbidden"), "kubectl {forbidden:?} as team-a's sidecar: {out:?}");
    }

    // Unlabel: access goes away.
    kubectl_ok(cluster.env(), &["label", "namespace", "team-a", "strait.io/inject-"], None)?;
    let took = wait_sidecar_access(&sidecar, "team-a", false, "after unlabelling team-a")
        .await
        .with_context(|| format!("controller log:\n{}", controller.log_tail(30)))?;
    eprintln!("unlabelled team-a: its sidecar refused after {took:.1?}");
    assert!(binding_groups(&cluster)?.is_empty(), "no labelled namespace, no subjects");

    // Re-applying deploy/ (an upgrade) keeps the subjects the controller manages.
    namespace(cluster.env(), "team-b", &[("strait.io/inject", "enabled")])?;
    let sidecar_b = cluster.token_kubeconfig("team-b", "default").await?;
    wait_sidecar_access(&sidecar_b, "team-b", true, "after labelling team-b").await?;
    apply_deploy(cluster.env())?;
    assert_eq!(binding_groups(&cluster)?, ["Group/system:serviceaccounts:team-b"], "after re-applying deploy/");
    drop(controller);
    Ok(())
}
