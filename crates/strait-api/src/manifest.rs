//! Parsing of ordinary Kubernetes manifests (multi-document YAML, `kind: List`)
//! into the resources the routing model reads.
use crate::{GrpcRoute, MeshService, ReferenceGrant};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The resources of one or more manifest files.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub services: Vec<MeshService>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub reference_grants: Vec<ReferenceGrant>,
    /// `apiVersion/kind` of documents that were skipped because Strait does not read them
    /// (Deployments, Gateways, ...). Not an error: manifests mix kinds.
    pub skipped: Vec<String>,
}

impl Resources {
    pub fn extend(&mut self, other: Resources) {
        self.services.extend(other.services);
        self.endpoint_slices.extend(other.endpoint_slices);
        self.grpc_routes.extend(other.grpc_routes);
        self.reference_grants.extend(other.reference_grants);
        self.skipped.extend(other.skipped);
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("document {index}: {message}")]
    Document { index: usize, message: String },
    #[error("document {index} ({kind} {name}): {message}")]
    Resource { index: usize, kind: String, name: String, message: String },
}

/// Parses every document of `text`. Objects without `metadata.namespace` are placed in
/// `default_namespace`, as `kubectl apply -n` would. Any invalid document fails the whole
/// text, so a caller keeping per-file state never applies half a file.
pub fn parse_manifests(text: &str, default_namespace: &str) -> Result<Resources, ManifestError> {
    let mut out = Resources::default();
    let mut index = 0;
    // Chunk by chunk: the untyped documents of a whole 10,000-Service file took ~30 MiB
    // at once; one chunk's worth is dropped before the next is parsed.
    for chunk in chunks(text) {
        let parsed: Vec<Value> = serde_saphyr::from_multiple(chunk).map_err(|e| ManifestError::Yaml(e.to_string()))?;
        for doc in parsed {
            add_document(&mut out, index, doc, default_namespace)?;
            index += 1;
        }
    }
    Ok(out)
}

/// serde-saphyr's budget caps one parse at 1,024 documents (a defence against
/// separator storms), less than a cluster's worth of Services dumped into one file, so
/// long files are parsed in chunks of at most 1,000 documents, split at column-0 `---`
/// lines (which end any block scalar, so a split never falls inside a value).
fn chunks(text: &str) -> Vec<&str> {
    const DOCS_PER_CHUNK: usize = 1000;
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let is_separator = line.starts_with("---") && line[3..].chars().next().is_none_or(|c| c.is_whitespace());
        if is_separator {
            seen += 1;
            if seen == DOCS_PER_CHUNK {
                out.push(&text[start..offset]);
                start = offset;
                seen = 0;
            }
        }
        offset += line.len();
    }
    out.push(&text[start..]);
    out
}

fn add_document(out: &mut Resources, index: usize, doc: Value, default_namespace: &str) -> Result<(), ManifestError> {
    let obj = match doc {
        // Empty documents (`---` at the end of a file) are normal.
        Value::Null => return Ok(()),
        Value::Object(obj) => obj,
        other => {
            return Err(ManifestError::Document {
                index,
                message: format!("expected a mapping, found {}", json_type(&other)),
            });
        }
    };
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    if api_version.is_empty() || kind.is_empty() {
        return Err(ManifestError::Document { index, message: "apiVersion and kind are required".into() });
    }
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let is_list = kind == "List" || (kind.ends_with("List") && obj.get("items").is_some());
    if is_list {
        // `kind: List` (what `kubectl get -o yaml` prints) carries items.
        let mut obj = obj;
        let items = match obj.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            None | Some(Value::Null) => Vec::new(),
            Some(other) => {
                return Err(ManifestError::Document {
                    index,
                    message: format!("List items must be a sequence, found {}", json_type(&other)),
                });
            }
        };
        for item in items {
            add_document(out, index, item, default_namespace)?;
        }
        return Ok(());
    }
    let obj = Value::Object(obj);
    match (group, kind.as_str()) {
        ("", "Service") => {
            let svc: Service = decode(index, &kind, obj, default_namespace)?;
            // decode() has checked the name, so this always yields a Service.
            out.services.extend(MeshService::from_owned(svc));
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            out.endpoint_slices.push(decode(index, &kind, obj, default_namespace)?)
        }
        ("gateway.networking.k8s.io", "GRPCRoute") => {
            out.grpc_routes.push(decode(index, &kind, obj, default_namespace)?)
        }
        ("gateway.networking.k8s.io", "ReferenceGrant") => {
            out.reference_grants.push(decode(index, &kind, obj, default_namespace)?)
        }
        _ => out.skipped.push(format!("{api_version}/{kind}")),
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(
    index: usize,
    kind: &str,
    mut obj: Value,
    default_namespace: &str,
) -> Result<T, ManifestError> {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    if name.is_empty() {
        return Err(ManifestError::Resource {
            index,
            kind: kind.into(),
            name: "<unnamed>".into(),
            message: "metadata.name is required".into(),
        });
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let has_ns = meta.get("namespace").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
        if !has_ns {
            meta.insert("namespace".into(), Value::String(default_namespace.into()));
        }
    }
    serde_json::from_value(obj).map_err(|e| ManifestError::Resource {
        index,
        kind: kind.into(),
        name,
        message: e.to_string(),
    })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: user-service
spec:
  ports:
    - name: grpc
      port: 50051
      targetPort: grpc
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: r
  namespace: other
spec:
  parentRefs:
    - {group: "", kind: Service, name: user-service, port: 50051}
  rules:
    - matches:
        - method: {service: user.v1.UserService, method: GetUser, type: Prefix}
      filters:
        - type: URLRewrite
      backendRefs:
        - {name: reader, port: 50051, weight: 3}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: user-service-abc
  labels: {kubernetes.io/service-name: user-service}
addressType: IPv4
endpoints:
  - addresses: ["10.0.0.1"]
    conditions: {ready: true}
ports:
  - {name: grpc, port: 8080, protocol: TCP}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: g, namespace: backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: app}]
  to: [{group: "", kind: Service}]
---
"#;

    #[test]
    fn mixed_documents_parse_and_unknown_kinds_are_skipped() {
        let r = parse_manifests(MIXED, "app").expect("parses");
        assert_eq!(r.services.len(), 1);
        assert_eq!(r.services[0].namespace, "app");
        assert_eq!(r.grpc_routes.len(), 1);
        let route = &r.grpc_routes[0];
        assert_eq!(route.metadata.namespace.as_deref(), Some("other"));
        // Unsupported enum values survive parsing so the routing model can report them.
        let m = route.spec.rules[0].matches[0].method.as_ref().expect("method");
        assert_eq!(m.match_type.as_deref(), Some("Prefix"));
        assert_eq!(route.spec.rules[0].filters[0].filter_type, "URLRewrite");
        assert_eq!(route.spec.rules[0].backend_refs[0].weight, Some(3));
        assert_eq!(r.endpoint_slices.len(), 1);
        assert_eq!(r.reference_grants.len(), 1);
        assert_eq!(r.skipped, vec!["apps/v1/Deployment".to_string()]);
    }

    #[test]
    fn list_kind_is_expanded() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n";
        let r = parse_manifests(text, "default").expect("parses");
        assert_eq!(r.services.len(), 2);
    }

    #[test]
    fn bad_input_gives_clear_errors_not_panics() {
        let cases: &[(&str, &str)] = &[
            ("a: [unclosed", "invalid YAML"),
            ("- just\n- a list\n", "expected a mapping"),
            ("kind: Service\n", "apiVersion and kind are required"),
            ("apiVersion: v1\nkind: Service\nmetadata: {}\n", "metadata.name is required"),
            ("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: notanumber}]}\n", "Service x"),
            (
                "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: r}\nspec: {rules: 7}\n",
                "GRPCRoute r",
            ),
        ];
        for (text, want) in cases {
            let err = parse_manifests(text, "ns").expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: error {err:?} should contain {want:?}");
        }
    }

    #[test]
    fn files_with_thousands_of_documents_parse() {
        let text: String = (0..3000)
            .map(|i| {
                format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec: {{ports: [{{port: 80}}]}}\n---\n"
                )
            })
            .collect();
        assert_eq!(parse_manifests(&text, "ns").expect("parses").services.len(), 3000);
    }

    #[test]
    fn empty_text_is_empty_resources() {
        let r = parse_manifests("", "ns").expect("empty is fine");
        assert!(r.services.is_empty() && r.grpc_routes.is_empty());
        let r = parse_manifests("---\n---\n", "ns").expect("empty docs are fine");
        assert!(r.services.is_empty());
    }
}
