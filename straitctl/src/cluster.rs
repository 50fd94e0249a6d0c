//! What straitctl asks the API server: a pod's admin endpoint through a port-forward,
//! the pod behind `deploy/NAME`, and the versions of Strait's control plane.
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use kube::api::{Api, ListParams};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The sidecar's admin listener, inside the pod (loopback only).
pub const ADMIN_PORT: u16 = 15000;
/// Strait's own namespace and Deployments, as deploy/ installs them.
pub const SYSTEM_NAMESPACE: &str = "strait-system";
pub const CONTROL_PLANE: [&str; 2] = ["strait-injector", "strait-controller"];
/// A route dump of a large mesh is a few MiB; anything past this is not one.
const MAX_RESPONSE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Target(String),
    #[error("the admin endpoint answered {status}: {body}")]
    Http { status: u16, body: String },
    #[error("malformed HTTP response from the admin endpoint: {0}")]
    Malformed(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// `pod-name`, `pod/NAME` or `deploy/NAME` (`deployment/…`, `deployments/…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pod(String),
    Deployment(String),
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s.split_once('/').unwrap_or(("pod", s));
        if name.is_empty() || name.contains('/') {
            return Err(format!("{s:?}: expected POD, pod/NAME or deploy/NAME"));
        }
        match kind {
            "pod" | "pods" | "po" => Ok(Target::Pod(name.into())),
            "deploy" | "deployment" | "deployments" => Ok(Target::Deployment(name.into())),
            other => Err(format!("{s:?}: kind {other:?} is not supported (use a pod name or deploy/NAME)")),
        }
    }
}

/// A label selector as the list API takes it (`a=b,c in (d,e),!f`).
pub fn selector_string(selector: &LabelSelector) -> Result<String, String> {
    let mut parts: Vec<String> = selector.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            op => return Err(format!("unknown selector operator {op:?}")),
        });
    }
    if parts.is_empty() {
        // An empty selector selects everything; a Deployment never has one.
        return Err("the Deployment's selector is empty".into());
    }
    Ok(parts.join(","))
}

/// The pod to ask: Running and not being deleted, Ready ones first, then by name
/// (so repeated calls pick the same pod).
pub fn pick_pod(pods: &[Pod]) -> Option<&Pod> {
    let ready = |p: &Pod| {
        p.status.iter().flat_map(|s| s.conditions.iter().flatten()).any(|c| c.type_ == "Ready" && c.status == "True")
    };
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .min_by_key(|p| (!ready(p), p.metadata.name.clone()))
}

/// The name of the pod `target` designates in `namespace`.
pub async fn resolve_pod(client: &Client, namespace: &str, target: &Target) -> Result<String, ClusterError> {
    match target {
        Target::Pod(name) => Ok(name.clone()),
        Target::Deployment(name) => {
            let deploy = Api::<Deployment>::namespaced(client.clone(), namespace).get(name).await?;
            let selector = deploy
                .spec
                .as_ref()
                .map(|s| &s.selector)
                .ok_or_else(|| ClusterError::Target(format!("deployment {namespace}/{name} has no spec")))?;
            let selector = selector_string(selector)
                .map_err(|e| ClusterError::Target(format!("deployment {namespace}/{name}: {e}")))?;
            let pods = Api::<Pod>::namespaced(client.clone(), namespace)
                .list(&ListParams::default().labels(&selector))
                .await?;
            pick_pod(&pods.items).and_then(|p| p.metadata.name.clone()).ok_or_else(|| {
                ClusterError::Target(format!(
                    "deployment {namespace}/{name} has no running pod (selector {selector}, {} pods)",
                    pods.items.len()
                ))
            })
        }
    }
}

/// `GET path` on the pod's admin port, through a port-forward via the API server.
/// Returns the body of a 200 answer.
pub async fn admin_get(
    client: &Client,
    namespace: &str,
    pod: &str,
    path_and_query: &str,
) -> Result<Vec<u8>, ClusterError> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let mut forwarder = pods.portforward(pod, &[ADMIN_PORT]).await?;
    let mut stream = forwarder
        .take_stream(ADMIN_PORT)
        .ok_or_else(|| ClusterError::Target(format!("port-forward to {namespace}/{pod} gave no stream")))?;
    let answer = http_get(&mut stream, path_and_query).await.map_err(|(what, source)| ClusterError::Io {
        what: format!("port-forward to {namespace}/{pod}:{ADMIN_PORT}: {what}"),
        source,
    });
    drop(stream);
    forwarder.abort();
    admin_body(&answer?)
}

/// The body of the admin endpoint's answer `raw`, or an error carrying its status and
/// message when it is not 200 (the endpoint explains bad queries in the body).
pub fn admin_body(raw: &[u8]) -> Result<Vec<u8>, ClusterError> {
    let (status, body) = parse_http_response(raw)?;
    if status != 200 {
        return Err(ClusterError::Http { status, body: String::from_utf8_lossy(&body).trim().to_owned() });
    }
    Ok(body)
}

/// One HTTP/1.0 GET over `stream` (the port-forward's, or a TCP connection), read to
/// the end (at most 64 MiB). HTTP/1.0: the server then ends the body by closing,
/// never with chunked encoding. Errors say which step failed.
pub async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    path_and_query: &str,
) -> Result<Vec<u8>, (&'static str, std::io::Error)> {
    let request = format!("GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1:{ADMIN_PORT}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| ("sending the request", e))?;
    let mut response = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut response).await.map_err(|e| ("reading the answer", e))?;
    Ok(response)
}

/// Status code and body of an HTTP/1.x response read to its end.
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, Vec<u8>), ClusterError> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        ClusterError::Malformed(format!(
            "no end of headers in {} bytes (is port {ADMIN_PORT} the Strait sidecar?)",
            raw.len()
        ))
    })?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| ClusterError::Malformed("headers are not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| ClusterError::Malformed(format!("status line {status_line:?}")))?;
    let mut body = raw[end + 4..].to_vec();
    let length = lines.filter_map(|l| l.split_once(':')).find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"));
    if let Some((_, v)) = length {
        let n: usize = v.trim().parse().map_err(|_| ClusterError::Malformed(format!("content-length {v:?}")))?;
        if body.len() < n {
            return Err(ClusterError::Malformed(format!("body cut short: {} of {n} bytes", body.len())));
        }
        body.truncate(n);
    }
    Ok((status, body))
}

/// `/routes/query?…` from `authority=..,path=..,header=k:v,namespace=..`.
pub fn query_path(spec: &str) -> Result<String, String> {
    let mut params = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item.split_once('=').ok_or_else(|| format!("{item:?}: expected key=value"))?;
        match key {
            "authority" | "path" | "namespace" => {}
            "header" if value.contains(':') => {}
            "header" => return Err(format!("header {value:?}: expected header=name:value")),
            other => return Err(format!("unknown query key {other:?} (authority, path, header, namespace)")),
        }
        params.push(format!("{key}={}", percent_encode(value)));
    }
    if !params.iter().any(|p| p.starts_with("authority=")) {
        return Err(
            "authority is required, e.g. --query authority=user-service.app:50051,path=/user.v1.UserService/GetUser"
                .into(),
        );
    }
    Ok(format!("/routes/query?{}", params.join("&")))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `straitctl version`'s cluster part: each control-plane Deployment's image(s), or
/// why it could not be read. Never fails: an unreachable cluster is a line of output.
pub async fn control_plane_versions(client: &Client, timeout: Duration) -> BTreeMap<String, String> {
    let api = Api::<Deployment>::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let mut out = BTreeMap::new();
    for name in CONTROL_PLANE {
        let line = match tokio::time::timeout(timeout, api.get_opt(name)).await {
            Err(_) => format!("unknown (no answer within {timeout:?})"),
            Ok(Err(e)) => format!("unknown ({e})"),
            Ok(Ok(None)) => format!("not installed (no Deployment {SYSTEM_NAMESPACE}/{name})"),
            Ok(Ok(Some(d))) => {
                let images: Vec<String> = d
                    .spec
                    .and_then(|s| s.template.spec)
                    .map(|s| s.containers.into_iter().filter_map(|c| c.image).collect())
                    .unwrap_or_default();
                if images.is_empty() { "no image".into() } else { images.join(", ") }
            }
        };
        out.insert(name.to_owned(), line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta, Time};

    #[test]
    fn targets_parse_like_kubectl() {
        assert_eq!("web-1".parse(), Ok(Target::Pod("web-1".into())));
        assert_eq!("pod/web-1".parse(), Ok(Target::Pod("web-1".into())));
        assert_eq!("deploy/web".parse(), Ok(Target::Deployment("web".into())));
        assert_eq!("deployment/web".parse(), Ok(Target::Deployment("web".into())));
        for bad in ["svc/web", "deploy/", "a/b/c", ""] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn selectors_render_for_the_list_api() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement { key: "canary".into(), operator: "DoesNotExist".into(), values: None },
            ]),
        };
        assert_eq!(selector_string(&sel), Ok("app=web,tier in (a,b),!canary".into()));
        assert!(selector_string(&LabelSelector::default()).is_err());
    }

    fn pod(name: &str, phase: &str, ready: bool, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                deletion_timestamp: deleting.then(|| Time(Default::default())),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn picks_a_running_ready_pod() {
        let pods = vec![
            pod("a-pending", "Pending", false, false),
            pod("b-notready", "Running", false, false),
            pod("c-deleting", "Running", true, true),
            pod("d-ready", "Running", true, false),
        ];
        assert_eq!(pick_pod(&pods).and_then(|p| p.metadata.name.as_deref()), Some("d-ready"));
        assert_eq!(pick_pod(&pods[..3]).and_then(|p| p.metadata.name.as_deref()), Some("b-notready"));
        assert!(pick_pod(&pods[..1]).is_none());
    }

    #[test]
    fn http_responses_parse() {
        let (status, body) =
            parse_http_response(b"HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\n{}\n\nextra").expect("parses");
        assert_eq!((status, body.as_slice()), (200, b"{}\n\n".as_slice()));
        let (status, body) = parse_http_response(b"HTTP/1.1 403 Forbidden\r\n\r\nloopback only\n").expect("parses");
        assert_eq!((status, body.as_slice()), (403, b"loopback only\n".as_slice()));
        for bad in [
            &b""[..],
            b"SSH-2.0-OpenSSH\r\n",
            b"HTTP/1.0 abc\r\n\r\n",
            b"HTTP/1.0 200 OK\r\ncontent-length: 10\r\n\r\nab",
        ] {
            assert!(matches!(parse_http_response(bad), Err(ClusterError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(
            query_path("authority=order-service:50051, path=/order.v1.OrderService/Get,header=x-group:a b").as_deref(),
            Ok("/routes/query?authority=order-service:50051&path=/order.v1.OrderService/Get&header=x-group:a%20b")
        );
        assert!(query_path("path=/x").unwrap_err().contains("authority is required"));
        assert!(query_path("authority=a,header=nocolon").unwrap_err().contains("name:value"));
        assert!(query_path("authority=a,method=x").unwrap_err().contains("unknown query key"));
        assert!(query_path("authority").unwrap_err().contains("key=value"));
    }
}
