//! `strait-injector inject`: the webhook's mutation for people who inject by hand or
//! in CI. Reads manifests (Pods and the pod templates of Deployments, StatefulSets,
//! DaemonSets, ReplicaSets, Jobs, CronJobs), writes them back injected.
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use strait_inject::{Decision, InjectConfig};

#[derive(Debug, thiserror::Error)]
pub enum InjectCliError {
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("document {index} ({kind} {name}): {message}")]
    Document { index: usize, kind: String, name: String, message: String },
}

/// Where a kind keeps its pod template.
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects every pod (template) in `input`. Returns the output YAML and warnings
/// (`kind/name: message`). Documents of other kinds pass through unchanged.
pub fn inject_manifests(
    input: &str,
    default_namespace: &str,
    cfg: &InjectConfig,
) -> Result<(String, Vec<String>), InjectCliError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(input).map_err(|e| InjectCliError::Yaml(e.to_string()))?;
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (index, mut doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_owned();
        let namespace =
            doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(default_namespace).to_owned();
        let err = |message: String| InjectCliError::Document { index, kind: kind.clone(), name: name.clone(), message };
        if let Some(ptr) = template_pointer(&kind) {
            let template = doc.pointer_mut(ptr).ok_or_else(|| err("has no pod template".into()))?;
            let mut pod_value = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": template.get("metadata").cloned().unwrap_or_else(|| serde_json::json!({})),
                "spec": template.get("spec").cloned().unwrap_or_else(|| serde_json::json!({})),
            });
            let pod: Pod =
                serde_json::from_value(pod_value.clone()).map_err(|e| err(format!("invalid pod template: {e}")))?;
            let patch = match strait_inject::mutate(&pod, &namespace, cfg).map_err(|e| err(e.to_string()))? {
                Decision::Skip { reason, record } => {
                    warnings.push(format!("{kind}/{name}: not injected: {reason}"));
                    // Recorded skips (Windows pods) get the status annotation the webhook
                    // would have added, so the output matches what the cluster stores.
                    record
                }
                Decision::Inject(injection) => {
                    warnings.extend(injection.warnings.iter().map(|w| format!("{kind}/{name}: {w}")));
                    Some(injection.patch)
                }
            };
            if let Some(patch) = patch {
                json_patch::patch(&mut pod_value, &patch).map_err(|e| err(format!("patch failed: {e}")))?;
                if let Some(t) = template.as_object_mut() {
                    t.insert("metadata".into(), pod_value.get("metadata").cloned().unwrap_or_default());
                    t.insert("spec".into(), pod_value.get("spec").cloned().unwrap_or_default());
                }
            }
        }
        out.push(serde_saphyr::to_string(&doc).map_err(|e| err(format!("cannot write YAML: {e}")))?);
    }
    Ok((out.join("---\n"), warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: skipme, annotations: {strait.io/inject: disabled}}
spec:
  containers: [{name: a, image: busybox}]
"#;

    #[test]
    fn injects_templates_passes_other_kinds_and_reports_skips() {
        let (out, warnings) = inject_manifests(INPUT, "default", &InjectConfig::default()).expect("inject");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&out).expect("output parses");
        assert_eq!(docs.len(), 3);
        let init =
            docs[0].pointer("/spec/template/spec/initContainers").and_then(Value::as_array).expect("init containers");
        assert!(init.iter().any(|c| c["name"] == "strait-init"));
        assert!(docs[0].pointer("/spec/template/metadata/annotations/strait.io~1status").is_some());
        assert_eq!(docs[1]["kind"], "Service");
        assert!(docs[2].pointer("/spec/initContainers").is_none(), "disabled pod untouched");
        assert!(warnings.iter().any(|w| w.starts_with("Pod/skipme: not injected")));
        // Idempotent: injecting the output again changes nothing.
        let (again, _) = inject_manifests(&out, "default", &InjectConfig::default()).expect("inject again");
        let again: Vec<Value> = serde_saphyr::from_multiple(&again).expect("parses");
        assert_eq!(again, docs);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(matches!(inject_manifests("a: [", "d", &InjectConfig::default()), Err(InjectCliError::Yaml(_))));
        let err = inject_manifests(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n",
            "d",
            &InjectConfig::default(),
        )
        .expect_err("no template");
        assert!(err.to_string().contains("Deployment x"));
    }
}
