//! `POST /mutate` (AdmissionReview admission.k8s.io/v1 in, JSONPatch out) and
//! `GET /healthz`, served over TLS.
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use std::sync::Arc;
use std::time::Duration;
use strait_inject::{Decision, InjectConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// AdmissionReviews carry one Pod; even large pods stay far below this.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

pub struct Webhook {
    pub config: InjectConfig,
}

pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(webhook)
}

fn bad_request(msg: String) -> Response {
    tracing::warn!(error = %msg, "rejected admission review");
    (StatusCode::BAD_REQUEST, msg).into_response()
}

/// Decodes a review; everything that is not a v1 Pod review is a client error.
pub fn parse_review(body: &[u8]) -> Result<(AdmissionRequest<DynamicObject>, Pod), String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| format!("malformed AdmissionReview: {e}"))?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| "AdmissionReview has no request".to_owned())?;
    let k = &request.kind;
    if !(k.group.is_empty() && k.version == "v1" && k.kind == "Pod") {
        return Err(format!(
            "this webhook mutates v1 Pods; the review is for {}/{} {}",
            if k.group.is_empty() { "core" } else { &k.group },
            k.version,
            k.kind
        ));
    }
    let object = request.object.clone().ok_or_else(|| "the review carries no object".to_owned())?;
    let value = serde_json::to_value(&object).map_err(|e| format!("object is not serialisable: {e}"))?;
    let pod: Pod = serde_json::from_value(value).map_err(|e| format!("object is not a valid Pod: {e}"))?;
    Ok((request, pod))
}

/// The response for a decoded review. A pod Strait does not touch is allowed
/// unchanged. A failure to build or encode the patch **denies** the pod with the
/// reason: the webhooks' `failurePolicy: Fail` promises that a pod the mesh selected
/// is never created unmeshed, and allowing it here would break that promise silently.
pub fn respond(webhook: &Webhook, request: &AdmissionRequest<DynamicObject>, pod: &Pod) -> AdmissionResponse {
    let namespace =
        request.namespace.clone().or_else(|| pod.metadata.namespace.clone()).unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().or_else(|| pod.metadata.generate_name.clone()).unwrap_or_default();
    let response = AdmissionResponse::from(request);
    let deny = |error: String| {
        tracing::error!(%namespace, pod = %name, %error, "injection failed; pod denied");
        let mut r = AdmissionResponse::from(request)
            .deny(format!("strait: the pod cannot be meshed, so it is not admitted: {error}"));
        r.result.code = 500;
        r.result.reason = "InternalError".into();
        r
    };
    match strait_inject::mutate(pod, &namespace, &webhook.config) {
        Ok(Decision::Skip { reason, record: None }) => {
            tracing::debug!(%namespace, pod = %name, %reason, "not injected");
            response
        }
        Ok(Decision::Skip { reason, record: Some(patch) }) => match response.with_patch(patch) {
            Ok(r) => {
                tracing::info!(%namespace, pod = %name, %reason, "not injected; reason recorded on the pod");
                r
            }
            Err(e) => deny(format!("encoding the patch: {e}")),
        },
        Ok(Decision::Inject(injection)) => {
            let warnings = injection.warnings.clone();
            match response.with_patch(injection.patch) {
                Ok(mut r) => {
                    tracing::info!(%namespace, pod = %name, dry_run = request.dry_run, warnings = warnings.len(), "injected");
                    if !warnings.is_empty() {
                        r.warnings = Some(warnings);
                    }
                    r
                }
                Err(e) => deny(format!("encoding the patch: {e}")),
            }
        }
        Err(e) => deny(e.to_string()),
    }
}

async fn mutate(State(webhook): State<Arc<Webhook>>, body: Bytes) -> Response {
    match parse_review(&body) {
        Ok((request, pod)) => Json(review_json(respond(&webhook, &request, &pod))).into_response(),
        Err(msg) => bad_request(msg),
    }
}

/// The AdmissionReview to send back, with `response.patch` base64-encoded as the
/// admission.k8s.io/v1 API documents it. kube-core serialises the bytes as a JSON
/// number array (kube-rs/kube#1781), which the API server happens to accept; other
/// consumers of reviews (audit, proxies, tests) expect the documented form.
pub fn review_json(response: AdmissionResponse) -> serde_json::Value {
    use base64::Engine;
    let mut value = serde_json::to_value(response.into_review()).unwrap_or_default();
    if let Some(patch) = value.pointer_mut("/response/patch")
        && let Some(bytes) =
            patch.as_array().map(|a| a.iter().filter_map(|b| b.as_u64().map(|b| b as u8)).collect::<Vec<u8>>())
    {
        *patch = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    value
}

/// Serves `router` over TLS until `shutdown` flips; in-flight requests finish.
pub async fn serve_tls(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let service = TowerToHyperService::new(router.clone());
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // A client that never finishes the handshake must not hold a task forever.
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(kind: serde_json::Value, object: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": kind, "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "operation": "CREATE", "namespace": "app", "userInfo": {}, "object": object}
        }))
        .expect("json")
    }

    #[test]
    fn patch_is_base64_and_uid_is_echoed() {
        use base64::Engine;
        let body = review(
            serde_json::json!({"group": "", "version": "v1", "kind": "Pod"}),
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x"}]}}),
        );
        let (req, pod) = parse_review(&body).expect("parses");
        let out = review_json(respond(&Webhook { config: InjectConfig::default() }, &req, &pod));
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let b64 = out["response"]["patch"].as_str().expect("patch is a base64 string");
        let patch: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).expect("base64"))
                .expect("json");
        assert!(patch.as_array().is_some_and(|ops| !ops.is_empty()));
    }

    /// `failurePolicy: Fail` promises a meshed pod is never created unmeshed, so a
    /// mutation that fails inside the webhook must deny the pod, saying why.
    #[test]
    fn mutation_error_denies_the_pod_with_the_reason() {
        let body = review(
            serde_json::json!({"group": "", "version": "v1", "kind": "Pod"}),
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x"}]}}),
        );
        let (req, pod) = parse_review(&body).expect("parses");
        // A configuration `main` would refuse; here it makes `mutate` fail for every pod.
        let config = InjectConfig { proxy_image: "not an image!".into(), ..InjectConfig::default() };
        let out = review_json(respond(&Webhook { config }, &req, &pod));
        assert_eq!(out["response"]["uid"], "u-1", "{out:#}");
        assert_eq!(out["response"]["allowed"], false, "a pod the mesh cannot inject must not be admitted: {out:#}");
        assert!(out["response"].get("patch").is_none_or(serde_json::Value::is_null), "{out:#}");
        let message = out["response"]["status"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("strait") && message.contains("proxy image"), "message says why: {out:#}");
        assert_eq!(out["response"]["status"]["code"], 500, "{out:#}");
    }

    /// A pod the mutation decides to skip is still admitted, unchanged.
    #[test]
    fn skipped_pods_are_allowed_without_a_patch() {
        let body = review(
            serde_json::json!({"group": "", "version": "v1", "kind": "Pod"}),
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"strait.io/inject": "disabled"}},
                               "spec": {"containers": [{"name": "a", "image": "x"}]}}),
        );
        let (req, pod) = parse_review(&body).expect("parses");
        let out = review_json(respond(&Webhook { config: InjectConfig::default() }, &req, &pod));
        assert_eq!(out["response"]["allowed"], true, "{out:#}");
        assert!(out["response"].get("patch").is_none_or(serde_json::Value::is_null), "{out:#}");
    }

    #[test]
    fn wrong_kind_and_malformed_reviews_are_client_errors() {
        let deploy =
            review(serde_json::json!({"group": "apps", "version": "v1", "kind": "Deployment"}), serde_json::json!({}));
        assert!(parse_review(&deploy).expect_err("wrong kind").contains("apps/v1 Deployment"));
        assert!(parse_review(b"{not json").expect_err("malformed").starts_with("malformed AdmissionReview"));
        let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert!(parse_review(no_request).is_err());
    }
}
