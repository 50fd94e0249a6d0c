//! `straitctl check`: is the cluster ready for Strait? Each problem comes with the
//! command that fixes it.
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ListParams};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use strait_inject::{INJECT_KEY, STATUS_ANNOTATION};

pub const GRPCROUTE_CRD: &str = "grpcroutes.gateway.networking.k8s.io";
pub const WEBHOOK_CONFIG: &str = "strait-injector";
const CRD_FIX: &str =
    "kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.5.1/standard-install.yaml";

/// One check's outcome: `fix` is set when it is a problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub text: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(text: String) -> Self {
        Finding { text, fix: None }
    }
    fn problem(text: String, fix: String) -> Self {
        Finding { text, fix: Some(fix) }
    }
    pub fn is_problem(&self) -> bool {
        self.fix.is_some()
    }
}

/// Runs every check; an API error fails that check only (as a problem).
pub async fn check(client: &Client) -> Vec<Finding> {
    let mut out = vec![crd(client).await, webhook(client).await];
    out.extend(unmeshed_pods(client).await);
    out
}

async fn crd(client: &Client) -> Finding {
    match Api::<CustomResourceDefinition>::all(client.clone()).get_opt(GRPCROUTE_CRD).await {
        Err(e) => Finding::problem(format!("CRD {GRPCROUTE_CRD}: cannot read it: {e}"), CRD_FIX.into()),
        Ok(None) => Finding::problem(format!("CRD {GRPCROUTE_CRD} is not installed"), CRD_FIX.into()),
        Ok(Some(crd)) => {
            let served: Vec<String> = crd.spec.versions.iter().filter(|v| v.served).map(|v| v.name.clone()).collect();
            if served.is_empty() {
                Finding::problem(format!("CRD {GRPCROUTE_CRD} serves no version"), CRD_FIX.into())
            } else {
                Finding::ok(format!("CRD {GRPCROUTE_CRD} serves {}", served.join(", ")))
            }
        }
    }
}

async fn webhook(client: &Client) -> Finding {
    let install = "kubectl apply -k deploy/   (from the Strait repository)".to_owned();
    let restart =
        "kubectl -n strait-system rollout restart deployment/strait-injector   (it writes the caBundle at start)";
    match Api::<MutatingWebhookConfiguration>::all(client.clone()).get_opt(WEBHOOK_CONFIG).await {
        Err(e) => Finding::problem(format!("webhook configuration {WEBHOOK_CONFIG}: cannot read it: {e}"), install),
        Ok(None) => Finding::problem(format!("webhook configuration {WEBHOOK_CONFIG} is not installed"), install),
        Ok(Some(cfg)) => {
            let hooks = cfg.webhooks.unwrap_or_default();
            if hooks.is_empty() {
                return Finding::problem(format!("webhook configuration {WEBHOOK_CONFIG} has no webhooks"), install);
            }
            for hook in &hooks {
                let bundle = hook.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice());
                if let Err(why) = ca_bundle_certificates(bundle) {
                    return Finding::problem(
                        format!("webhook {} in {WEBHOOK_CONFIG}: caBundle {why}", hook.name),
                        restart.into(),
                    );
                }
            }
            Finding::ok(format!("webhook configuration {WEBHOOK_CONFIG}: {} webhook(s) with a CA bundle", hooks.len()))
        }
    }
}

/// How many PEM certificates a caBundle holds, or why it is unusable.
pub fn ca_bundle_certificates(bundle: Option<&[u8]>) -> Result<usize, String> {
    let bundle = bundle.filter(|b| !b.is_empty()).ok_or("is empty")?;
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(bundle) {
        cert.map_err(|e| format!("does not parse as PEM: {e}"))?;
        n += 1;
    }
    if n == 0 { Err("holds no PEM certificate".into()) } else { Ok(n) }
}

/// Running pods in `strait.io/inject=enabled` namespaces without the status
/// annotation: created before the namespace was labelled, or while the webhook was down.
async fn unmeshed_pods(client: &Client) -> Vec<Finding> {
    let label = format!("{INJECT_KEY}=enabled");
    let namespaces = match Api::<Namespace>::all(client.clone()).list(&ListParams::default().labels(&label)).await {
        Err(e) => {
            return vec![Finding::problem(
                format!("cannot list namespaces: {e}"),
                "check your access: kubectl auth can-i list namespaces".into(),
            )];
        }
        Ok(list) => list.items,
    };
    if namespaces.is_empty() {
        return vec![Finding::ok(format!(
            "no namespace is labelled {label} (mesh one: kubectl label namespace NAME {label})"
        ))];
    }
    let mut out = Vec::new();
    for ns in namespaces {
        let Some(name) = ns.metadata.name else { continue };
        let pods = match Api::<Pod>::namespaced(client.clone(), &name).list(&ListParams::default()).await {
            Err(e) => {
                out.push(Finding::problem(
                    format!("namespace {name}: cannot list pods: {e}"),
                    format!("kubectl auth can-i list pods -n {name}"),
                ));
                continue;
            }
            Ok(list) => list.items,
        };
        let unmeshed: Vec<&Pod> = pods.iter().filter(|p| needs_sidecar(p)).collect();
        if unmeshed.is_empty() {
            out.push(Finding::ok(format!("namespace {name}: all {} pod(s) meshed or opted out", pods.len())));
        }
        for pod in unmeshed {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            out.push(Finding::problem(
                format!("namespace {name}: pod {pod_name} has no Strait sidecar ({STATUS_ANNOTATION} missing)"),
                recreate_command(&name, pod),
            ));
        }
    }
    out
}

/// A live pod that neither carries the status annotation nor opted out.
pub fn needs_sidecar(pod: &Pod) -> bool {
    let meta = &pod.metadata;
    let opted_out = [&meta.labels, &meta.annotations]
        .iter()
        .any(|m| m.as_ref().and_then(|m| m.get(INJECT_KEY)).is_some_and(|v| v == "disabled"));
    let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    let annotated = meta.annotations.as_ref().is_some_and(|a| a.contains_key(STATUS_ANNOTATION));
    !annotated && !opted_out && !finished && meta.deletion_timestamp.is_none()
}

/// Recreating the pod injects it: restart its Deployment (owner ReplicaSet
/// `<deployment>-<hash>`), StatefulSet or DaemonSet, else delete a bare pod.
pub fn recreate_command(namespace: &str, pod: &Pod) -> String {
    let owner = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    match owner.map(|o| (o.kind.as_str(), o.name.as_str())) {
        Some(("ReplicaSet", rs)) => match rs.rsplit_once('-') {
            Some((deploy, _hash)) => format!("kubectl -n {namespace} rollout restart deployment/{deploy}"),
            None => format!("kubectl -n {namespace} delete pod {pod_name}"),
        },
        Some(("StatefulSet", n)) => format!("kubectl -n {namespace} rollout restart statefulset/{n}"),
        Some(("DaemonSet", n)) => format!("kubectl -n {namespace} rollout restart daemonset/{n}"),
        _ => format!("kubectl -n {namespace} delete pod {pod_name}   (recreate it from its manifest)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    #[test]
    fn ca_bundles_must_hold_pem_certificates() {
        let cert = rcgen::generate_simple_self_signed(vec!["strait-injector.strait-system.svc".into()]).expect("cert");
        let pem = cert.cert.pem();
        assert_eq!(ca_bundle_certificates(Some(pem.as_bytes())), Ok(1));
        assert_eq!(ca_bundle_certificates(Some(format!("{pem}{pem}").as_bytes())), Ok(2));
        assert_eq!(ca_bundle_certificates(None), Err("is empty".into()));
        assert_eq!(ca_bundle_certificates(Some(b"")), Err("is empty".into()));
        assert_eq!(ca_bundle_certificates(Some(b"not a certificate")), Err("holds no PEM certificate".into()));
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(ca_bundle_certificates(Some(broken.as_bytes())).expect_err("broken").starts_with("does not parse"));
    }

    fn pod(name: &str, annotations: &[(&str, &str)], owner: Option<(&str, &str)>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(annotations.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()),
                owner_references: owner.map(|(kind, n)| {
                    vec![OwnerReference {
                        kind: kind.into(),
                        name: n.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn unmeshed_pods_and_their_fixes() {
        assert!(needs_sidecar(&pod("a", &[], None)));
        assert!(!needs_sidecar(&pod("a", &[(STATUS_ANNOTATION, "{}")], None)));
        assert!(!needs_sidecar(&pod("a", &[(INJECT_KEY, "disabled")], None)));
        assert_eq!(
            recreate_command("app", &pod("web-5d9f7-abcde", &[], Some(("ReplicaSet", "web-5d9f7")))),
            "kubectl -n app rollout restart deployment/web"
        );
        assert_eq!(
            recreate_command("app", &pod("db-0", &[], Some(("StatefulSet", "db")))),
            "kubectl -n app rollout restart statefulset/db"
        );
        assert!(recreate_command("app", &pod("bare", &[], None)).starts_with("kubectl -n app delete pod bare"));
    }
}
