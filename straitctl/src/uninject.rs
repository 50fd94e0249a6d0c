//! `straitctl uninject`: undoes `straitctl inject` / the webhook's mutation, using what
//! the `strait.io/status` annotation records.
//!
//! The injection adds, and only adds: the `strait-init` init container, the
//! `strait-proxy` container (an init container in native mode, the first container in
//! classic mode), the status annotation, and in classic mode a
//! `kubectl.kubernetes.io/default-container` annotation, which the status lists under
//! `addedAnnotations` when the injection (not the user) set it. Removing exactly those
//! restores the original. A list or map the injection created and that is empty again
//! is removed, so `initContainers: []` and `annotations: {}` come back absent (the same
//! object to the API server).
use serde_json::Value;
use strait_inject::{DEFAULT_CONTAINER_ANNOTATION, INIT_CONTAINER, PROXY_CONTAINER, STATUS_ANNOTATION};
use strait_injector::cli::template_pointer;

#[derive(Debug, thiserror::Error)]
pub enum UninjectError {
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("document {index} ({kind} {name}): {message}")]
    Document { index: usize, kind: String, name: String, message: String },
}

/// Uninjects every pod (template) in `input`. Returns the output YAML and notes
/// (`kind/name: message`) about documents left alone. Other kinds pass through.
pub fn uninject_manifests(input: &str) -> Result<(String, Vec<String>), UninjectError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(input).map_err(|e| UninjectError::Yaml(e.to_string()))?;
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (index, mut doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_owned();
        let err = |message: String| UninjectError::Document { index, kind: kind.clone(), name: name.clone(), message };
        if let Some(ptr) = template_pointer(&kind) {
            let template = doc.pointer_mut(ptr).ok_or_else(|| err("has no pod template".into()))?;
            match uninject_template(template).map_err(err)? {
                Outcome::Uninjected { notes: n } => notes.extend(n.into_iter().map(|m| format!("{kind}/{name}: {m}"))),
                Outcome::NotInjected => notes.push(format!("{kind}/{name}: not injected, left unchanged")),
            }
        }
        out.push(serde_saphyr::to_string(&doc).map_err(|e| err(format!("cannot write YAML: {e}")))?);
    }
    Ok((out.join("---\n"), notes))
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Uninjected { notes: Vec<String> },
    NotInjected,
}

/// Uninjects one pod or pod template (`{metadata, spec}`) in place.
pub fn uninject_template(template: &mut Value) -> Result<Outcome, String> {
    let Some(raw) = template.pointer("/metadata/annotations").and_then(|a| a.get(STATUS_ANNOTATION)) else {
        return Ok(Outcome::NotInjected);
    };
    let raw = raw.as_str().ok_or_else(|| format!("annotation {STATUS_ANNOTATION} is not a string"))?;
    let status: Value =
        serde_json::from_str(raw).map_err(|e| format!("annotation {STATUS_ANNOTATION} is not JSON: {e}"))?;
    let mut notes = Vec::new();
    let mut remove_annotations = vec![STATUS_ANNOTATION.to_owned()];
    // A recorded skip added nothing but the annotation.
    if status.get("skipped").is_none() {
        match status.get("addedAnnotations").and_then(Value::as_array) {
            Some(added) => remove_annotations.extend(added.iter().filter_map(Value::as_str).map(str::to_owned)),
            None => {
                let has_default = template
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
                    .is_some();
                if has_default {
                    // Injected by a version that did not record it: it cannot be told
                    // from one the user set, so it stays.
                    notes.push(format!(
                        "kept annotation {DEFAULT_CONTAINER_ANNOTATION}: the injection that added \
                         {STATUS_ANNOTATION} did not record whether it set it"
                    ));
                }
            }
        }
        if let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut) {
            for key in ["initContainers", "containers"] {
                let emptied = match spec.get_mut(key).and_then(Value::as_array_mut) {
                    Some(list) => {
                        list.retain(|c| {
                            let name = c.get("name").and_then(Value::as_str);
                            name != Some(INIT_CONTAINER) && name != Some(PROXY_CONTAINER)
                        });
                        list.is_empty()
                    }
                    None => false,
                };
                // Only initContainers can have been created by the injection; an empty
                // `containers` is the user's (invalid) pod and stays as it was.
                if emptied && key == "initContainers" {
                    spec.remove(key);
                }
            }
        }
    }
    if let Some(meta) = template.get_mut("metadata").and_then(Value::as_object_mut) {
        let emptied = match meta.get_mut("annotations").and_then(Value::as_object_mut) {
            Some(annotations) => {
                for k in &remove_annotations {
                    annotations.remove(k);
                }
                annotations.is_empty()
            }
            None => false,
        };
        if emptied {
            meta.remove("annotations");
        }
    }
    Ok(Outcome::Uninjected { notes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_inject::InjectConfig;
    use strait_injector::cli::inject_manifests;

    fn parse(yaml: &str) -> Vec<Value> {
        serde_saphyr::from_multiple(yaml).expect("YAML parses")
    }

    /// inject, check it injected, uninject, compare with the input.
    fn round_trip(input: &str, cfg: &InjectConfig) {
        let (injected, _) = inject_manifests(input, "app", cfg).expect("inject");
        assert_ne!(parse(&injected), parse(input), "inject changed nothing:\n{input}");
        assert!(injected.contains(STATUS_ANNOTATION));
        let (restored, notes) = uninject_manifests(&injected).expect("uninject");
        assert_eq!(parse(&restored), parse(input), "notes: {notes:?}\ninjected:\n{injected}");
    }

    fn classic() -> InjectConfig {
        InjectConfig { native_sidecars: false, ..InjectConfig::default() }
    }

    fn native() -> InjectConfig {
        InjectConfig { native_sidecars: true, ..InjectConfig::default() }
    }

    /// The seed Deployments (shape of deploy/demo: labels, ports, probes, no annotations).
    const SEED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: user-service, namespace: app, labels: {app: user-service}}
spec:
  replicas: 2
  selector: {matchLabels: {app: user-service}}
  template:
    metadata: {labels: {app: user-service, role: reader}}
    spec:
      containers:
        - name: backend
          image: strait-demo:dev
          args: [backend, --name, user-reader]
          ports: [{name: grpc, containerPort: 50051}]
          readinessProbe: {grpc: {port: 50051}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: user-service, namespace: app}
spec: {selector: {app: user-service}, ports: [{name: grpc, port: 50051}]}
"#;

    /// A pod with everything the injection touches already present.
    const BUSY_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: busy
  annotations: {team: payments, kubectl.kubernetes.io/default-container: app}
  labels: {app: busy}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 1000, fsGroup: 2000}
  initContainers:
    - name: migrate
      image: migrate:1
      securityContext: {allowPrivilegeEscalation: false}
    - name: warm
      image: warm:1
  containers:
    - name: sidecar-log
      image: log:1
    - name: app
      image: app:1
      securityContext: {readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
      volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, emptyDir: {}}]
"#;

    #[test]
    fn uninject_restores_seed_deployments_exactly() {
        round_trip(SEED, &classic());
        round_trip(SEED, &native());
    }

    #[test]
    fn uninject_restores_pods_with_init_containers_volumes_and_security_contexts() {
        round_trip(BUSY_POD, &classic());
        round_trip(BUSY_POD, &native());
        // Annotation-selected mode and skip lists, on a CronJob.
        let cron = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 0 * * *"
  jobTemplate:
    spec:
      template:
        metadata:
          annotations: {strait.io/native-sidecar: "false", strait.io/skip-outbound-ports: "5432"}
        spec:
          restartPolicy: OnFailure
          containers: [{name: job, image: job:1}]
"#;
        round_trip(cron, &native());
    }

    #[test]
    fn a_default_container_annotation_the_user_set_survives() {
        let (injected, _) = inject_manifests(BUSY_POD, "app", &classic()).expect("inject");
        let (restored, _) = uninject_manifests(&injected).expect("uninject");
        let docs = parse(&restored);
        assert_eq!(
            docs[0].pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container"),
            Some(&"app".into())
        );
        // And one the injection set goes away (SEED has no annotations at all).
        let (injected, _) = inject_manifests(SEED, "app", &classic()).expect("inject");
        assert!(injected.contains(DEFAULT_CONTAINER_ANNOTATION));
        let (restored, _) = uninject_manifests(&injected).expect("uninject");
        assert!(!restored.contains(DEFAULT_CONTAINER_ANNOTATION), "{restored}");
    }

    #[test]
    fn recorded_skips_and_uninjected_manifests() {
        let windows = "apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec:\n  nodeSelector: {kubernetes.io/os: windows}\n  containers: [{name: a, image: a}]\n";
        let (injected, _) = inject_manifests(windows, "app", &classic()).expect("inject");
        assert!(injected.contains("skipped"), "a Windows pod gets a recorded skip: {injected}");
        let (restored, _) = uninject_manifests(&injected).expect("uninject");
        assert_eq!(parse(&restored), parse(windows));
        // Never injected: unchanged, with a note.
        let (same, notes) = uninject_manifests(SEED).expect("uninject");
        assert_eq!(parse(&same), parse(SEED));
        assert_eq!(notes, vec!["Deployment/user-service: not injected, left unchanged".to_owned()]);
    }

    #[test]
    fn old_status_without_added_annotations_keeps_the_default_container_annotation() {
        let (injected, _) = inject_manifests(SEED, "app", &classic()).expect("inject");
        let mut docs = parse(&injected);
        let ann = docs[0].pointer_mut("/spec/template/metadata/annotations").expect("annotations");
        let mut status: Value = serde_json::from_str(ann[STATUS_ANNOTATION].as_str().expect("string")).expect("json");
        status.as_object_mut().expect("object").remove("addedAnnotations");
        ann[STATUS_ANNOTATION] = status.to_string().into();
        let mut template = docs[0].pointer("/spec/template").cloned().expect("template");
        let Outcome::Uninjected { notes } = uninject_template(&mut template).expect("uninject") else {
            panic!("was injected");
        };
        assert!(notes[0].starts_with("kept annotation"), "{notes:?}");
        assert_eq!(template.pointer("/metadata/annotations").map(|a| a.as_object().map(|o| o.len())), Some(Some(1)));
        assert!(template.pointer("/spec/initContainers").is_none());
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(matches!(uninject_manifests("a: ["), Err(UninjectError::Yaml(_))));
        let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {strait.io/status: \"{nope\"}}\nspec: {containers: []}\n";
        let err = uninject_manifests(bad).expect_err("bad status");
        assert!(err.to_string().contains("Pod p") && err.to_string().contains("not JSON"), "{err}");
    }
}
