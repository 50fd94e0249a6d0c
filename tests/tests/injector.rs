//! The injector end to end, against a real etcd + kube-apiserver (`strait-testenv`):
//! `kubectl apply -k deploy/` and its overlays, the real `strait-injector serve
//! --bootstrap-certs` binary as the webhook the API server calls (running with its
//! ServiceAccount's token under the RBAC of `deploy/`), its HTTP contract over TLS,
//! that RBAC itself, and the `strait-injector inject` CLI.
//!
//! No controller-manager, scheduler or kubelet runs: pods are stored, never started,
//! and the injector Deployment creates no pods, which is all these tests need.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use strait_e2e::injector::{
    INJECTOR_USER, InjectorProcess, SYSTEM_NS, TLS_SECRET, WEBHOOK_CONFIG, apply_deploy, injector_bin,
    injector_serve_command, kubectl, kubectl_as, kubectl_json, kubectl_ok, kustomize, namespace, self_signed_pair,
    start_env,
};
use strait_testenv::TestEnv;

const STATUS: &str = "strait.io/status";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A Pod with one `app` container.
fn pod(ns: &str, name: &str, labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "3600"]}]},
    })
}

/// `kubectl apply` of `object`; returns kubectl's stderr (warnings).
fn apply(env: &TestEnv, object: &Value) -> Result<String> {
    Ok(kubectl_ok(env, &["apply", "-f", "-"], Some(&object.to_string()))?.stderr)
}

fn get_pod(env: &TestEnv, ns: &str, name: &str) -> Result<Value> {
    kubectl_json(env, &["get", "pod", "-n", ns, name])
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect()
}

/// The parsed `strait.io/status` annotation, if any.
fn status_of(pod: &Value) -> Option<Value> {
    let raw = pod.pointer("/metadata/annotations")?.get(STATUS)?.as_str()?;
    Some(serde_json::from_str(raw).unwrap_or(Value::Null))
}

/// Native-sidecar injection: `strait-init` first, `strait-proxy` right after it with
/// restartPolicy Always, the app container untouched, the status annotation set.
fn assert_injected_native(pod: &Value, what: &str) -> Value {
    let init = &pod["spec"]["initContainers"];
    assert_eq!(names(init), ["strait-init", "strait-proxy"], "{what}: init containers of {pod:#}");
    assert_eq!(init[1]["restartPolicy"], "Always", "{what}: strait-proxy is a native sidecar");
    assert_eq!(names(&pod["spec"]["containers"]), ["app"], "{what}: app containers");
    let status = status_of(pod).unwrap_or_else(|| panic!("{what}: no {STATUS} annotation on {pod:#}"));
    assert_eq!(status["mode"], "native", "{what}: status {status}");
    status
}

fn assert_not_injected(pod: &Value, what: &str) {
    let all: Vec<&str> =
        names(&pod["spec"]["initContainers"]).into_iter().chain(names(&pod["spec"]["containers"])).collect();
    assert_eq!(all, ["app"], "{what}: expected only the app container in {pod:#}");
    assert!(status_of(pod).is_none(), "{what}: unexpected {STATUS} annotation");
}

/// Not injected, and the status annotation records why (`skipped`, naming `want`).
fn assert_skipped_recorded(pod: &Value, what: &str, want: &str) {
    let all: Vec<&str> =
        names(&pod["spec"]["initContainers"]).into_iter().chain(names(&pod["spec"]["containers"])).collect();
    assert_eq!(all, ["app"], "{what}: expected only the app container in {pod:#}");
    let status = status_of(pod).unwrap_or_else(|| panic!("{what}: no {STATUS} annotation on {pod:#}"));
    let skipped = status["skipped"].as_str().unwrap_or_default();
    assert!(skipped.contains(want), "{what}: status {status} should record a skip naming {want:?}");
    assert!(status.get("mode").is_none(), "{what}: status {status}");
}

fn webhooks(mwc: &Value) -> &Vec<Value> {
    mwc["webhooks"].as_array().expect("webhooks")
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

/// `kubectl auth can-i <args> --as=<user>`: true for "yes", false for "no".
fn can_i(env: &TestEnv, user: &str, args: &[&str]) -> Result<bool> {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let as_user = format!("--as={user}");
    all.push(&as_user);
    let out = kubectl(env, &all, None)?;
    match out.stdout.trim() {
        "yes" if out.success => Ok(true),
        "no" if !out.success => Ok(false),
        other => bail!("kubectl {all:?}: unexpected answer {other:?} (stderr: {})", out.stderr),
    }
}

// ---------------------------------------------------------------------------
// 1. deploy/ and its overlays
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_k_deploy_installs_the_injector_and_its_webhook() -> Result<()> {
    let env = start_env().await?;
    let t = Instant::now();
    let out = apply_deploy(&env)?;
    eprintln!("kubectl apply -k deploy/ in {:.1?}:\n{}{}", t.elapsed(), out.stdout, out.stderr);

    let ns = kubectl_json(&env, &["get", "namespace", SYSTEM_NS])?;
    assert_eq!(ns["metadata"]["labels"]["strait.io/inject"], "disabled", "{ns:#}");

    for sa in ["strait-injector", "strait-controller"] {
        kubectl_ok(&env, &["get", "serviceaccount", "-n", SYSTEM_NS, sa], None)?;
    }
    for (kind, name) in [
        ("clusterrole", "strait-injector"),
        ("clusterrolebinding", "strait-injector"),
        ("clusterrole", "strait-controller"),
        ("clusterrolebinding", "strait-controller"),
        ("clusterrole", "strait-proxy"),
        ("clusterrolebinding", "strait-proxy"),
    ] {
        kubectl_ok(&env, &["get", kind, name], None)?;
    }
    for (kind, name) in [
        ("role", "strait-injector-certs"),
        ("rolebinding", "strait-injector-certs"),
        ("role", "strait-controller-lease"),
        ("rolebinding", "strait-controller-lease"),
    ] {
        kubectl_ok(&env, &["get", kind, "-n", SYSTEM_NS, name], None)?;
    }
    let binding = kubectl_json(&env, &["get", "clusterrolebinding", "strait-injector"])?;
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "strait-injector", "namespace": SYSTEM_NS}]),
        "{binding:#}"
    );

    let deployment = kubectl_json(&env, &["get", "deployment", "-n", SYSTEM_NS, "strait-injector"])?;
    assert_eq!(deployment["spec"]["replicas"], 2, "{deployment:#}");
    let pod_spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod_spec["serviceAccountName"], "strait-injector");
    assert_eq!(pod_spec["containers"][0]["args"], json!(["serve", "--bootstrap-certs"]));

    let pdb = kubectl_json(&env, &["get", "poddisruptionbudget", "-n", SYSTEM_NS, "strait-injector"])?;
    assert_eq!(pdb["spec"]["minAvailable"], 1, "{pdb:#}");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"]);

    let service = kubectl_json(&env, &["get", "service", "-n", SYSTEM_NS, "strait-injector"])?;
    assert_eq!(service["spec"]["ports"][0]["port"], 443, "{service:#}");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "webhook");
    assert_eq!(service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"]);

    let mwc = kubectl_json(&env, &["get", "mutatingwebhookconfiguration", WEBHOOK_CONFIG])?;
    let hooks = webhooks(&mwc);
    assert_eq!(hooks.len(), 2, "{mwc:#}");
    for w in hooks {
        let name = w["name"].as_str().unwrap_or_default();
        assert_eq!(w["sideEffects"], "None", "{name}");
        assert_eq!(w["failurePolicy"], "Fail", "{name}");
        let timeout = w["timeoutSeconds"].as_i64().expect("timeoutSeconds");
        assert!((1..=10).contains(&timeout), "{name}: timeoutSeconds {timeout}");
        assert_eq!(w["admissionReviewVersions"], json!(["v1"]), "{name}");
        assert_eq!(
            w["clientConfig"]["service"],
            json!({"name": "strait-injector", "namespace": SYSTEM_NS, "path": "/mutate", "port": 443}),
            "{name}"
        );
        assert_eq!(w["rules"].as_array().map(Vec::len), Some(1), "{name}");
        let rule = &w["rules"][0];
        assert_eq!(rule["operations"], json!(["CREATE"]), "{name}");
        assert_eq!(rule["resources"], json!(["pods"]), "{name}");
        assert_eq!(rule["apiGroups"], json!([""]), "{name}");
    }

    // Applying again changes nothing the server keeps. (`kubectl apply` reports the PDB
    // "configured" every time: its selector's patch strategy is "replace", so client-side
    // apply always sends it. `kubectl diff` and the generation tell the truth.)
    apply_deploy(&env)?;
    let dir = strait_e2e::injector::deploy_dir().display().to_string();
    let diff = kubectl(&env, &["diff", "-k", &dir], None)?;
    assert!(diff.success && diff.stdout.is_empty(), "kubectl diff -k deploy/ after apply: {diff:?}");
    let pdb = kubectl_json(&env, &["get", "poddisruptionbudget", "-n", SYSTEM_NS, "strait-injector"])?;
    assert_eq!(pdb["metadata"]["generation"], 1, "re-applying changed the PDB: {pdb:#}");
    Ok(())
}

#[tokio::test]
async fn kustomize_overlays_change_only_what_they_promise() -> Result<()> {
    let base = kustomize(".")?;
    let ignore = kustomize("overlays/failure-policy-ignore")?;
    let base_mwc = find(&base, "MutatingWebhookConfiguration", WEBHOOK_CONFIG);
    assert!(webhooks(base_mwc).iter().all(|w| w["failurePolicy"] == "Fail"), "base: {base_mwc:#}");

    let ignore_mwc = find(&ignore, "MutatingWebhookConfiguration", WEBHOOK_CONFIG);
    assert_eq!(webhooks(ignore_mwc).len(), 2);
    for w in webhooks(ignore_mwc) {
        assert_eq!(w["failurePolicy"], "Ignore", "{}", w["name"]);
    }
    // Everything else is the base, unchanged.
    let mut normalised = ignore.clone();
    for doc in &mut normalised {
        if doc["kind"] == "MutatingWebhookConfiguration" {
            for w in doc["webhooks"].as_array_mut().into_iter().flatten() {
                w["failurePolicy"] = json!("Fail");
            }
        }
    }
    assert_eq!(normalised, base, "the failure-policy-ignore overlay changes more than failurePolicy");

    // cert-manager: the CA injector annotation, no bootstrap flag, the Secret mounted,
    // and the injector's own write permissions gone.
    let cm = kustomize("overlays/cert-manager")?;
    let cm_mwc = find(&cm, "MutatingWebhookConfiguration", WEBHOOK_CONFIG);
    assert_eq!(cm_mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"], "strait-system/strait-injector-ca");
    let dep = find(&cm, "Deployment", "strait-injector");
    assert_eq!(dep["spec"]["template"]["spec"]["containers"][0]["args"], json!(["serve"]));
    assert_eq!(dep["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"], TLS_SECRET);
    assert_eq!(find(&cm, "ClusterRole", "strait-injector")["rules"], json!([]));
    let cert = find(&cm, "Certificate", "strait-injector");
    assert_eq!(cert["spec"]["secretName"], TLS_SECRET);
    Ok(())
}

/// The cert-manager overlay issues the serving certificate from a CA of its own, and
/// the webhook trusts that CA. With a self-signed serving certificate the caBundle is
/// the serving certificate itself: each renewal (new key) changes the bundle at once
/// while the kubelet updates the mounted Secret up to a minute later, and pod creation
/// fails in between. A CA bundle outlives every serving renewal.
#[tokio::test]
async fn cert_manager_overlay_issues_the_serving_certificate_from_a_ca() -> Result<()> {
    let cm = kustomize("overlays/cert-manager")?;
    let cert_manager: Vec<&Value> =
        cm.iter().filter(|d| d["apiVersion"].as_str().is_some_and(|a| a.starts_with("cert-manager.io/"))).collect();
    for d in &cert_manager {
        assert_eq!(d["apiVersion"], "cert-manager.io/v1", "{d:#}");
        assert_eq!(d["metadata"]["namespace"], SYSTEM_NS, "{d:#}");
    }
    let issuer_of = |cert: &Value| -> Value {
        let r = &cert["spec"]["issuerRef"];
        assert_eq!(r["kind"], "Issuer", "namespaced Issuer expected: {cert:#}");
        assert!(r.get("group").is_none_or(|g| g == "cert-manager.io"), "{cert:#}");
        let name = r["name"].as_str().unwrap_or_default();
        find(&cm, "Issuer", name).clone()
    };
    let hours = |d: &Value| -> u64 {
        let s = d.as_str().unwrap_or_default();
        s.strip_suffix('h').and_then(|h| h.parse().ok()).unwrap_or_else(|| panic!("duration {s:?} is not whole hours"))
    };

    // The webhook's caBundle comes from the CA Certificate, not from the serving one.
    let mwc = find(&cm, "MutatingWebhookConfiguration", WEBHOOK_CONFIG);
    let inject_from = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str().unwrap_or_default();
    let (ns, ca_name) = inject_from.split_once('/').unwrap_or_else(|| panic!("inject-ca-from {inject_from:?}"));
    assert_eq!(ns, SYSTEM_NS);
    let ca = find(&cm, "Certificate", ca_name);
    assert_eq!(ca["spec"]["isCA"], true, "inject-ca-from must name the CA Certificate: {ca:#}");

    // The CA is issued by a selfSigned Issuer.
    let root = issuer_of(ca);
    assert_eq!(root["spec"]["selfSigned"], json!({}), "the CA's issuer: {root:#}");
    // Its key survives renewal, so certificates it signed verify against the renewed CA.
    assert_eq!(ca["spec"]["privateKey"]["rotationPolicy"], "Never", "{ca:#}");

    // The serving certificate (the Secret the Deployment mounts) is issued by a CA
    // Issuer that signs with the CA Certificate's Secret.
    let dep = find(&cm, "Deployment", "strait-injector");
    let mounted = dep["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"].as_str().unwrap_or_default();
    assert_eq!(mounted, TLS_SECRET);
    let serving = cm
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == TLS_SECRET)
        .expect("a Certificate writing the mounted Secret");
    assert_ne!(serving["metadata"]["name"], ca["metadata"]["name"]);
    assert!(serving["spec"]["isCA"] != true, "the serving certificate is not a CA: {serving:#}");
    let ca_issuer = issuer_of(serving);
    assert_eq!(ca_issuer["spec"]["ca"]["secretName"], ca["spec"]["secretName"], "CA Issuer: {ca_issuer:#}");
    assert_ne!(ca["spec"]["secretName"], TLS_SECRET, "the CA's Secret is not the serving one");
    let dns: Vec<&str> =
        serving["spec"]["dnsNames"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(dns.contains(&"strait-injector.strait-system.svc"), "serving names {dns:?}");

    // The CA outlives many serving certificates, and each renews before it expires.
    for c in [ca, serving] {
        assert!(hours(&c["spec"]["renewBefore"]) < hours(&c["spec"]["duration"]), "{c:#}");
    }
    assert!(
        hours(&ca["spec"]["duration"]) >= 10 * hours(&serving["spec"]["duration"]),
        "the CA ({}) should live far longer than the serving certificate ({})",
        ca["spec"]["duration"],
        serving["spec"]["duration"]
    );
    // Exactly the four objects of the chain.
    let mut kinds: Vec<(String, String)> = cert_manager
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. The real webhook, called by the API server
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_calls_the_injector_for_pods() -> Result<()> {
    let env = start_env().await?;
    apply_deploy(&env)?;
    let t = Instant::now();
    let injector = InjectorProcess::start(&env).await?;
    eprintln!("injector bootstrapped and admitting in {:.1?} at {}", t.elapsed(), injector.addr());
    let _log = LogOnFailure(&injector);
    webhook_scenarios(&env).await
}

/// Prints the injector's log when the test panics.
struct LogOnFailure<'a>(&'a InjectorProcess);

impl Drop for LogOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- strait-injector log tail ---\n{}", self.0.log_tail(40));
        }
    }
}

async fn webhook_scenarios(env: &TestEnv) -> Result<()> {
    // The bootstrap ran as the injector's ServiceAccount: the Secret it created is there.
    let secret = kubectl_json(env, &["get", "secret", "-n", SYSTEM_NS, TLS_SECRET])?;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["labels"]["app.kubernetes.io/part-of"], "strait");

    namespace(env, "meshed", &[("strait.io/inject", "enabled")])?;
    namespace(env, "plain", &[])?;

    // A labelled namespace: injected, native sidecar.
    apply(env, &pod("meshed", "web", json!({"app": "web"}), json!({})))?;
    let web = get_pod(env, "meshed", "web")?;
    let default_status = assert_injected_native(&web, "meshed/web");
    assert_eq!(
        web["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );

    // The pod opts out by label.
    apply(env, &pod("meshed", "optout", json!({"strait.io/inject": "disabled"}), json!({})))?;
    assert_not_injected(&get_pod(env, "meshed", "optout")?, "meshed/optout (label disabled)");

    // Unlabelled namespace: only pods that opt in.
    apply(env, &pod("plain", "optin", json!({"strait.io/inject": "enabled"}), json!({})))?;
    assert_injected_native(&get_pod(env, "plain", "optin")?, "plain/optin (label enabled)");
    apply(env, &pod("plain", "bare", json!({"app": "bare"}), json!({})))?;
    assert_not_injected(&get_pod(env, "plain", "bare")?, "plain/bare");

    // Strait's own namespace is never injected, even if a pod asks.
    apply(env, &pod(SYSTEM_NS, "self", json!({"strait.io/inject": "enabled"}), json!({})))?;
    assert_not_injected(&get_pod(env, SYSTEM_NS, "self")?, "strait-system/self");

    // hostNetwork pods are skipped.
    let mut host = pod("meshed", "hostnet", json!({}), json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    apply(env, &host)?;
    assert_not_injected(&get_pod(env, "meshed", "hostnet")?, "meshed/hostnet");

    // Windows pods: the API server forbids the injected Linux security settings when
    // spec.os.name is windows (an injected pod would be rejected), and a pod pinned to
    // Windows nodes could never start the Linux proxy. Both are created unmeshed, with
    // the reason in the status annotation.
    let mut windows = pod("meshed", "windows", json!({}), json!({}));
    windows["spec"]["os"] = json!({"name": "windows"});
    apply(env, &windows)?;
    let stored = get_pod(env, "meshed", "windows")?;
    assert_skipped_recorded(&stored, "meshed/windows (spec.os.name)", "spec.os.name: windows");
    let mut win_selector = pod("meshed", "windows-selector", json!({}), json!({}));
    win_selector["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "windows"});
    apply(env, &win_selector)?;
    let stored = get_pod(env, "meshed", "windows-selector")?;
    assert_skipped_recorded(&stored, "meshed/windows-selector", "nodeSelector kubernetes.io/os: windows");
    // A Linux pod selecting Linux nodes is meshed as usual.
    let mut linux = pod("meshed", "linux", json!({}), json!({}));
    linux["spec"]["os"] = json!({"name": "linux"});
    linux["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "linux"});
    apply(env, &linux)?;
    assert_injected_native(&get_pod(env, "meshed", "linux")?, "meshed/linux");

    // Classic mode by annotation: the proxy is the first container, gated by postStart.
    apply(env, &pod("meshed", "classic", json!({}), json!({"strait.io/native-sidecar": "false"})))?;
    let classic = get_pod(env, "meshed", "classic")?;
    assert_eq!(names(&classic["spec"]["initContainers"]), ["strait-init"], "{classic:#}");
    assert_eq!(names(&classic["spec"]["containers"]), ["strait-proxy", "app"], "{classic:#}");
    let hook = &classic["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"];
    assert_eq!(hook[0], "strait-proxy", "postStart {hook}");
    assert_eq!(hook[1], "wait-ready", "postStart {hook}");
    assert_eq!(classic["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"], "app");
    assert_eq!(status_of(&classic).map(|s| s["mode"].clone()), Some(json!("classic")));

    // An invalid annotation: injected with the default, and the user is told.
    let warned = apply(env, &pod("meshed", "typo", json!({}), json!({"strait.io/skip-outbound-ports": "abc"})))?;
    let typo = get_pod(env, "meshed", "typo")?;
    let typo_status = assert_injected_native(&typo, "meshed/typo");
    assert_eq!(typo_status["outboundSkip"], default_status["outboundSkip"], "default outbound skip list");
    assert!(
        warned.lines().any(|l| l.starts_with("Warning:") && l.contains("strait.io/skip-outbound-ports")),
        "kubectl printed no admission warning naming the annotation; stderr:\n{warned}"
    );

    // Server-side dry run: the mutation is returned, nothing is stored.
    let dry = pod("meshed", "dryrun", json!({}), json!({}));
    let out = kubectl_ok(env, &["create", "--dry-run=server", "-o", "json", "-f", "-"], Some(&dry.to_string()))?;
    let dry_pod: Value = serde_json::from_str(&out.stdout).context("dry-run output")?;
    assert_injected_native(&dry_pod, "meshed/dryrun (server dry run)");
    let exists = kubectl_ok(env, &["get", "pod", "-n", "meshed", "dryrun", "--ignore-not-found", "-o", "name"], None)?;
    assert_eq!(exists.stdout.trim(), "", "a dry-run pod was stored");

    // Workload templates are not mutated (their pods are, when created).
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "meshed"},
        "spec": {
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]},
            },
        },
    });
    apply(env, &deployment)?;
    let stored = kubectl_json(env, &["get", "deployment", "-n", "meshed", "api"])?;
    assert_not_injected(&stored["spec"]["template"], "meshed/api Deployment template");
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. The webhook's HTTP contract over TLS
// ---------------------------------------------------------------------------

fn review(uid: &str, kind: Value, resource: Value, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": object["metadata"]["name"],
            "namespace": "meshed",
            "operation": "CREATE",
            "userInfo": {"username": "strait-admin", "groups": ["system:masters"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

/// The JSON Patch of an admission response. The API documents `patch` as base64 (Go
/// `[]byte`); kube-core 4.2 serialises its `Vec<u8>` as an array of numbers
/// (kube-rs/kube#1781), which Go's decoder also accepts for a `[]byte`. Both decode here.
fn decode_patch(patch: &Value) -> Result<Vec<Value>> {
    use base64::Engine;
    let bytes: Vec<u8> = match patch {
        Value::String(b64) => base64::engine::general_purpose::STANDARD.decode(b64)?,
        Value::Array(items) => items
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()).context("patch array of non-bytes"))
            .collect::<Result<_>>()?,
        other => bail!("no patch in the response: {other}"),
    };
    serde_json::from_slice(&bytes).context("the patch is not a JSON array of operations")
}

fn pod_review(uid: &str, pod: Value) -> Value {
    review(
        uid,
        json!({"group": "", "version": "v1", "kind": "Pod"}),
        json!({"group": "", "version": "v1", "resource": "pods"}),
        pod,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_http_contract_over_tls() -> Result<()> {
    let env = start_env().await?;
    apply_deploy(&env)?;
    let injector = InjectorProcess::start(&env).await?;
    let _log = LogOnFailure(&injector);
    let post = |body: Vec<u8>| injector.request("POST", "/mutate", body);

    let (code, body) = injector.request("GET", "/healthz", Vec::new()).await?;
    assert_eq!(code, 200, "healthz: {body:?}");

    // Malformed JSON.
    let (code, body) = post(b"{\"apiVersion\": ".to_vec()).await?;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, 400, "malformed JSON: {text}");
    assert!(text.contains("malformed AdmissionReview"), "message: {text}");

    // A review of a Deployment names the kind it got.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}});
    let r = review(
        "3f2a8c4e-0000-4000-8000-000000000001",
        json!({"group": "apps", "version": "v1", "kind": "Deployment"}),
        json!({"group": "apps", "version": "v1", "resource": "deployments"}),
        deployment,
    );
    let (code, body) = post(serde_json::to_vec(&r)?).await?;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, 400, "Deployment review: {text}");
    assert!(text.contains("apps/v1 Deployment"), "message should name the kind: {text}");

    // No request.
    let (code, body) = post(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec()).await?;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, 400, "review without request: {text}");
    assert!(text.contains("no request"), "message: {text}");

    // Over 4 MiB.
    let mut big = pod("meshed", "big", json!({}), json!({"padding": "x".repeat(4 * 1024 * 1024)}));
    big["metadata"]["labels"] = json!({});
    let (code, _) = post(serde_json::to_vec(&pod_review("3f2a8c4e-0000-4000-8000-000000000002", big))?).await?;
    assert_eq!(code, 413, "a body over 4 MiB");

    // A fresh pod: a JSONPatch, and the uid echoed.
    let uid = "3f2a8c4e-0000-4000-8000-000000000003";
    let (code, body) = post(serde_json::to_vec(&pod_review(uid, pod("meshed", "p", json!({}), json!({}))))?).await?;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let resp: Value = serde_json::from_slice(&body)?;
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1", "{resp:#}");
    assert_eq!(resp["kind"], "AdmissionReview", "{resp:#}");
    assert_eq!(resp["response"]["uid"], uid, "{resp:#}");
    assert_eq!(resp["response"]["allowed"], true, "{resp:#}");
    assert_eq!(resp["response"]["patchType"], "JSONPatch", "{resp:#}");
    let ops = decode_patch(&resp["response"]["patch"])?;
    let paths: Vec<&str> = ops.iter().filter_map(|op| op["path"].as_str()).collect();
    assert!(paths.contains(&"/spec/initContainers"), "patch paths {paths:?}");
    assert!(paths.iter().any(|p| p.starts_with("/metadata/annotations")), "patch paths {paths:?}");

    // An already-injected pod: allowed, no patch, uid echoed.
    let uid = "3f2a8c4e-0000-4000-8000-000000000004";
    let done = pod("meshed", "done", json!({}), json!({STATUS: "{\"version\":\"0.1.0\",\"mode\":\"native\"}"}));
    let (code, body) = post(serde_json::to_vec(&pod_review(uid, done))?).await?;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let resp: Value = serde_json::from_slice(&body)?;
    assert_eq!(resp["response"]["uid"], uid, "{resp:#}");
    assert_eq!(resp["response"]["allowed"], true, "{resp:#}");
    assert!(resp["response"].get("patch").is_none_or(Value::is_null), "no patch expected: {resp:#}");
    assert!(resp["response"].get("patchType").is_none_or(Value::is_null), "no patchType expected: {resp:#}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. The injector's RBAC
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injector_rbac_is_least_privilege() -> Result<()> {
    let env = start_env().await?;
    apply_deploy(&env)?;
    let other_mwc = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "other"}, "webhooks": [],
    });
    apply(&env, &other_mwc)?;
    kubectl_ok(&env, &["create", "secret", "generic", "-n", SYSTEM_NS, "other", "--from-literal=k=v"], None)?;
    kubectl_ok(&env, &["create", "secret", "generic", "-n", "default", TLS_SECRET, "--from-literal=k=v"], None)?;

    let u = INJECTOR_USER;
    let allowed: &[&[&str]] = &[
        &["get", "mutatingwebhookconfigurations/strait-injector"],
        &["patch", "mutatingwebhookconfigurations/strait-injector"],
        &["get", "secrets/strait-injector-tls", "-n", SYSTEM_NS],
        &["create", "secrets", "-n", SYSTEM_NS],
    ];
    let denied: &[&[&str]] = &[
        &["patch", "mutatingwebhookconfigurations/other"],
        &["get", "mutatingwebhookconfigurations/other"],
        &["list", "mutatingwebhookconfigurations"],
        &["create", "mutatingwebhookconfigurations"],
        &["delete", "mutatingwebhookconfigurations/strait-injector"],
        &["update", "mutatingwebhookconfigurations/strait-injector"],
        &["patch", "validatingwebhookconfigurations/strait-injector"],
        &["get", "secrets/other", "-n", SYSTEM_NS],
        &["list", "secrets", "-n", SYSTEM_NS],
        &["update", "secrets/strait-injector-tls", "-n", SYSTEM_NS],
        &["get", "secrets/strait-injector-tls", "-n", "default"],
        &["create", "secrets", "-n", "default"],
        &["list", "pods", "-n", "default"],
        &["list", "pods", "--all-namespaces"],
        &["get", "pods", "-n", SYSTEM_NS],
    ];
    let mut wrong = Vec::new();
    for (args, expected) in allowed.iter().map(|a| (a, true)).chain(denied.iter().map(|a| (a, false))) {
        if can_i(&env, u, args)? != expected {
            wrong.push(format!("can-i {} should be {}", args.join(" "), if expected { "yes" } else { "no" }));
        }
    }
    assert!(wrong.is_empty(), "RBAC of {u}:\n{}", wrong.join("\n"));

    // The same with the ServiceAccount's real token, not impersonation.
    let token = env.service_account_token(SYSTEM_NS, "strait-injector").await?;
    let kubeconfig = env.kubeconfig_for_token(&token)?;
    let as_sa = |args: &[&str]| kubectl_as(&kubeconfig, args, None);
    let got = as_sa(&["get", "mutatingwebhookconfiguration", WEBHOOK_CONFIG, "-o", "name"])?;
    assert!(got.success, "the injector must read its configuration: {}", got.stderr);
    for args in [
        &[
            "patch",
            "mutatingwebhookconfiguration",
            "other",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"x":"y"}}}"#,
        ] as &[&str],
        &["get", "secret", "-n", SYSTEM_NS, "other"],
        &["get", "pods", "-A"],
    ] {
        let out = as_sa(args)?;
        assert!(!out.success && out.stderr.contains("Forbidden"), "kubectl {args:?} as the injector: {out:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. strait-injector inject
// ---------------------------------------------------------------------------

const MANIFESTS: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx:1.27
          ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_cli_output_applies_to_a_real_api_server() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, MANIFESTS)?;
    let out = std::process::Command::new(injector_bin()?)
        .args(["inject", "-f"])
        .arg(&file)
        .env_remove("STRAIT_PROXY_IMAGE")
        .env_remove("STRAIT_INIT_IMAGE")
        .env_remove("STRAIT_NATIVE_SIDECARS")
        .env_remove("POD_NAMESPACE")
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "strait-injector inject failed: {stderr}");

    let input: Vec<Value> = serde_saphyr::from_multiple(MANIFESTS).map_err(|e| anyhow::anyhow!("{e}"))?;
    let output: Vec<Value> =
        serde_saphyr::from_multiple(&stdout).map_err(|e| anyhow::anyhow!("output is not YAML: {e}\n{stdout}"))?;
    assert_eq!(output.len(), 2, "{stdout}");
    let deployment = &output[0];
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let template = &deployment["spec"]["template"];
    assert_eq!(names(&template["spec"]["initContainers"]), ["strait-init", "strait-proxy"], "{stdout}");
    assert_eq!(template["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(names(&template["spec"]["containers"]), ["web"]);
    assert!(status_of(template).is_some(), "template without {STATUS}: {stdout}");
    assert_eq!(output[1], input[1], "the Service must pass through unchanged");

    // Standard input gives the same.
    let mut child = std::process::Command::new(injector_bin()?)
        .args(["inject", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, MANIFESTS.as_bytes())?;
    let from_stdin = child.wait_with_output()?;
    assert!(from_stdin.status.success());
    let from_stdin: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(from_stdin.stdout)?).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(from_stdin, output, "-f - and -f <file> differ");

    // A real API server accepts the output (validation of the injected template,
    // native sidecar included) without storing anything.
    let env = start_env().await?;
    let applied = kubectl_ok(&env, &["apply", "--dry-run=server", "-o", "json", "-f", "-"], Some(&stdout))?;
    let applied: Value = serde_json::from_str(&applied.stdout)?;
    let items = applied["items"].as_array().context("a List of the two objects")?;
    assert_eq!(items.len(), 2, "{applied:#}");
    let served = &items[0]["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(names(served), ["strait-init", "strait-proxy"], "the server dropped init containers");
    assert_eq!(served[1]["restartPolicy"], "Always", "the server dropped the native sidecar's restartPolicy");
    let stored = kubectl_ok(&env, &["get", "deployment,service", "-n", "default", "-o", "name"], None)?;
    assert!(!stored.stdout.contains("web"), "dry run stored objects: {}", stored.stdout);
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. Start-up: a configuration that cannot inject is refused
// ---------------------------------------------------------------------------

/// `failurePolicy: Fail` promises that a selected pod is never created unmeshed. An
/// injector whose settings cannot produce a valid pod must therefore not serve: it
/// exits non-zero, naming the bad setting, before it binds its port.
#[tokio::test]
async fn injector_with_an_invalid_configuration_exits_before_serving() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed_pair(dir.path())?;
    for (flag, value, want) in
        [("--proxy-image", "not an image!", "proxy image \"not an image!\""), ("--init-image", "", "init image \"\"")]
    {
        let addr = strait_e2e::free_addrs(1)?[0];
        let mut child = injector_serve_command(addr, &cert, &key, &[flag, value])?.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let bound = std::net::TcpStream::connect(addr).is_ok();
                child.kill()?;
                let out = child.wait_with_output()?;
                bail!(
                    "{flag} {value:?}: still running after 20 s (port bound: {bound}); stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let stderr = String::from_utf8_lossy(&child.wait_with_output()?.stderr).into_owned();
        assert!(!status.success(), "{flag} {value:?}: exited {status}; stderr:\n{stderr}");
        assert!(stderr.contains(want), "{flag} {value:?}: the reason ({want}) is missing from stderr:\n{stderr}");
        assert!(!stderr.contains("strait-injector serving"), "{flag} {value:?}: it served first:\n{stderr}");
    }

    // The inject CLI refuses the same settings instead of printing manifests.
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, MANIFESTS)?;
    let out = std::process::Command::new(injector_bin()?)
        .args(["inject", "--proxy-image", "not an image!", "-f"])
        .arg(&file)
        .env_remove("STRAIT_PROXY_IMAGE")
        .env_remove("STRAIT_INIT_IMAGE")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "inject with a bad image succeeded: {stderr}");
    assert!(out.stdout.is_empty(), "inject printed manifests: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("proxy image"), "stderr: {stderr}");
    Ok(())
}
