//! Demo gRPC backends and helpers for Strait.
//!
//! Every backend serves *all* demo services (`user.v1.UserService`,
//! `order.v1.OrderService`, `recommendation.v1.RecommendationService`,
//! `payment.v1.PaymentService`) plus the `strait.test.v1.Echo` test service.
//! Each method answers with the backend's name, the gRPC service/method that
//! was called, the request metadata it received and the echoed payload, so a
//! caller going through the proxy can tell exactly where (and how) a request
//! was routed.
//!
//! The library also provides [`channel_via_proxy`] (dial a proxy but address a
//! mesh Service by `:authority`) and [`endpoint_slice_yaml`] (EndpointSlices
//! for the proxy's local file-based mode).

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};

/// Generated protobuf/gRPC code.
///
/// Modules mirror the protobuf package hierarchy because prost emits
/// cross-package references as relative `super::` paths. Short aliases
/// (`user_v1`, `order_v1`, ...) are provided for convenience.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]

    pub mod strait {
        pub mod demo {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/strait.demo.v1.rs"));
            }
        }
        pub mod test {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/strait.test.v1.rs"));
            }
        }
    }
    pub mod user {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/user.v1.rs"));
        }
    }
    pub mod order {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/order.v1.rs"));
        }
    }
    pub mod recommendation {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/recommendation.v1.rs"));
        }
    }
    pub mod payment {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/payment.v1.rs"));
        }
    }

    pub use order::v1 as order_v1;
    pub use payment::v1 as payment_v1;
    pub use recommendation::v1 as recommendation_v1;
    pub use strait::demo::v1 as common_v1;
    pub use strait::test::v1 as echo_v1;
    pub use user::v1 as user_v1;
}

pub use pb::common_v1::{Answer, Probe};

use pb::echo_v1::echo_server::{Echo, EchoServer};
use pb::order_v1::order_service_server::{OrderService, OrderServiceServer};
use pb::payment_v1::payment_service_server::{PaymentService, PaymentServiceServer};
use pb::recommendation_v1::recommendation_service_server::{RecommendationService, RecommendationServiceServer};
use pb::user_v1::user_service_server::{UserService, UserServiceServer};

/// Key under which the backend reports the request's `:authority` in
/// [`Answer::headers`]. Pseudo-headers never show up in gRPC metadata, but
/// the authority is exactly what a mesh proxy routes on, so tests need it.
pub const AUTHORITY_KEY: &str = ":authority";
/// Key under which the backend reports the request's `:path`.
pub const PATH_KEY: &str = ":path";

/// Errors from managing a spawned backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The gRPC server failed while serving.
    #[error("backend server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server task panicked or was cancelled.
    #[error("backend task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Boxed stream of answers used for all streaming responses.
pub type AnswerStream = Pin<Box<dyn Stream<Item = Result<Answer, Status>> + Send + 'static>>;

/// Request target captured by a tower layer before tonic drops the URI.
#[derive(Clone, Debug)]
struct RequestTarget {
    authority: Option<String>,
    path: String,
}

fn record_request_target(mut req: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    // HTTP/2 carries the authority in the URI; fall back to Host for safety.
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned));
    let path = req.uri().path().to_owned();
    req.extensions_mut().insert(RequestTarget { authority, path });
    req
}

/// What the backend observed about a request: metadata plus pseudo-headers.
fn seen_headers<T>(req: &Request<T>) -> HashMap<String, String> {
    let mut headers = HashMap::new();
    for entry in req.metadata().iter() {
        // Binary (-bin) metadata is skipped on purpose: Answer.headers is a
        // string map and the demo only routes/modifies ASCII headers.
        if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry
            && let Ok(v) = value.to_str()
        {
            headers
                .entry(key.as_str().to_owned())
                .and_modify(|existing: &mut String| {
                    existing.push_str(", ");
                    existing.push_str(v);
                })
                .or_insert_with(|| v.to_owned());
        }
    }
    if let Some(target) = req.extensions().get::<RequestTarget>() {
        if let Some(authority) = &target.authority {
            headers.insert(AUTHORITY_KEY.to_owned(), authority.clone());
        }
        headers.insert(PATH_KEY.to_owned(), target.path.clone());
    }
    headers
}

async fn delay(ms: u32) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
    }
}

fn failure(probe: &Probe) -> Option<Status> {
    (probe.fail_code != 0).then(|| Status::new(Code::from_i32(probe.fail_code), probe.fail_message.clone()))
}

/// The single implementation behind every demo service.
#[derive(Clone, Debug)]
struct DemoBackend {
    name: Arc<str>,
}

impl DemoBackend {
    fn answer(
        &self,
        service: &str,
        method: &str,
        headers: HashMap<String, String>,
        payload: String,
        seq: u32,
    ) -> Answer {
        Answer {
            backend: self.name.to_string(),
            service: service.to_owned(),
            method: method.to_owned(),
            headers,
            payload,
            seq,
        }
    }

    async fn unary(&self, service: &str, method: &str, req: Request<Probe>) -> Result<Response<Answer>, Status> {
        let headers = seen_headers(&req);
        let probe = req.into_inner();
        delay(probe.delay_ms).await;
        if let Some(status) = failure(&probe) {
            return Err(status);
        }
        Ok(Response::new(self.answer(service, method, headers, probe.payload, 0)))
    }

    /// Sends `stream_count` answers; with `fail_code` set the stream ends with
    /// that status after the answers (immediately when `stream_count` is 0),
    /// which lets proxy tests cover both trailers-only and mid-stream errors.
    async fn server_stream(
        &self,
        service: &'static str,
        method: &'static str,
        req: Request<Probe>,
    ) -> Result<Response<AnswerStream>, Status> {
        let headers = seen_headers(&req);
        let probe = req.into_inner();
        if probe.stream_count == 0 {
            delay(probe.delay_ms).await;
            if let Some(status) = failure(&probe) {
                return Err(status);
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            for seq in 0..probe.stream_count {
                delay(probe.delay_ms).await;
                let answer = this.answer(service, method, headers.clone(), probe.payload.clone(), seq);
                if tx.send(Ok(answer)).await.is_err() {
                    return; // Client went away; nothing left to do.
                }
            }
            if probe.stream_count > 0
                && let Some(status) = failure(&probe)
            {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn client_stream(
        &self,
        service: &str,
        method: &str,
        req: Request<Streaming<Probe>>,
    ) -> Result<Response<Answer>, Status> {
        let headers = seen_headers(&req);
        let mut inbound = req.into_inner();
        let mut payload = String::new();
        let mut count = 0u32;
        let mut last_delay = 0;
        while let Some(probe) = inbound.message().await? {
            if let Some(status) = failure(&probe) {
                return Err(status);
            }
            payload.push_str(&probe.payload);
            count += 1;
            last_delay = probe.delay_ms;
        }
        delay(last_delay).await;
        Ok(Response::new(self.answer(service, method, headers, payload, count)))
    }

    async fn bidi(
        &self,
        service: &'static str,
        method: &'static str,
        req: Request<Streaming<Probe>>,
    ) -> Result<Response<AnswerStream>, Status> {
        let headers = seen_headers(&req);
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let mut seq = 0u32;
            loop {
                let probe = match inbound.message().await {
                    Ok(Some(probe)) => probe,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                delay(probe.delay_ms).await;
                if let Some(status) = failure(&probe) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let answer = this.answer(service, method, headers.clone(), probe.payload, seq);
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
                seq += 1;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

const USER_SERVICE: &str = "user.v1.UserService";
const ORDER_SERVICE: &str = "order.v1.OrderService";
const RECOMMENDATION_SERVICE: &str = "recommendation.v1.RecommendationService";
const PAYMENT_SERVICE: &str = "payment.v1.PaymentService";
const ECHO_SERVICE: &str = "strait.test.v1.Echo";

#[tonic::async_trait]
impl UserService for DemoBackend {
    async fn get_user(&self, req: Request<Probe>) -> Result<Response<Answer>, Status> {
        self.unary(USER_SERVICE, "GetUser", req).await
    }
    async fn create_user(&self, req: Request<Probe>) -> Result<Response<Answer>, Status> {
        self.unary(USER_SERVICE, "CreateUser", req).await
    }
    async fn update_user(&self, req: Request<Probe>) -> Result<Response<Answer>, Status> {
        self.unary(USER_SERVICE, "UpdateUser", req).await
    }
    async fn delete_user(&self, req: Request<Probe>) -> Result<Response<Answer>, Status> {
        self.unary(USER_SERVICE, "DeleteUser", req).await
    }
    type ListUsersStream = AnswerStream;
    async fn list_users(&self, req: Request<Probe>) -> Result<Response<AnswerStream>, Status> {
        self.server_stream(USER_SERVICE, "ListUsers", req).await
    }
}

#[tonic::async_trait]
impl OrderService for DemoBackend {
    async fn get_order(&self, req: Request<Probe>) -> Result<Response<Answer>, Status> {
        self.unary(ORDER_SERVICE, "GetOrder", req).await
    }
}

#[tonic::async_trait]
impl RecommendationService for DemoBackend {
    async fn recommend(&self, req: Request<Probe>) -> Result<Response<Answer>, Status> {
        self.unary(RECOMMENDATION_SERVICE, "Recommend", req).await
    }
}

#[tonic::async_trait]
impl PaymentService for DemoBackend {
    async fn process_payment(&self, req: Request<Probe>) -> Result<Response<Answer>, Status> {
        self.unary(PAYMENT_SERVICE, "ProcessPayment", req).await
    }
}

#[tonic::async_trait]
impl Echo for DemoBackend {
    async fn unary(&self, req: Request<Probe>) -> Result<Response<Answer>, Status> {
        DemoBackend::unary(self, ECHO_SERVICE, "Unary", req).await
    }
    type ServerStreamStream = AnswerStream;
    async fn server_stream(&self, req: Request<Probe>) -> Result<Response<AnswerStream>, Status> {
        DemoBackend::server_stream(self, ECHO_SERVICE, "ServerStream", req).await
    }
    async fn client_stream(&self, req: Request<Streaming<Probe>>) -> Result<Response<Answer>, Status> {
        DemoBackend::client_stream(self, ECHO_SERVICE, "ClientStream", req).await
    }
    type BidiStreamStream = AnswerStream;
    async fn bidi_stream(&self, req: Request<Streaming<Probe>>) -> Result<Response<AnswerStream>, Status> {
        self.bidi(ECHO_SERVICE, "BidiStream", req).await
    }
}

/// Serves every demo service (and `strait.test.v1.Echo`) as backend `name`
/// on `listener` over cleartext HTTP/2 until `shutdown` resolves, then shuts
/// down gracefully (in-flight calls finish).
pub async fn serve_backend(
    name: String,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let backend = DemoBackend { name: Arc::from(name) };
    let record: fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> = record_request_target;
    Server::builder()
        .layer(tower::util::MapRequestLayer::new(record))
        .add_service(UserServiceServer::new(backend.clone()))
        .add_service(OrderServiceServer::new(backend.clone()))
        .add_service(RecommendationServiceServer::new(backend.clone()))
        .add_service(PaymentServiceServer::new(backend.clone()))
        .add_service(EchoServer::new(backend))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}

/// A backend running on its own task, bound to a loopback port.
///
/// Dropping the handle triggers a graceful shutdown in the background; use
/// [`BackendHandle::shutdown`] to wait for it and observe errors.
#[derive(Debug)]
pub struct BackendHandle {
    name: String,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl BackendHandle {
    /// Address the backend listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Name the backend reports in [`Answer::backend`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops accepting, lets in-flight calls finish and waits for the server.
    pub async fn shutdown(mut self) -> Result<(), BackendError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => Ok(task.await??),
            None => Ok(()),
        }
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        // The server task keeps running until it has drained; we only signal.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Spawns a backend named `name` on `127.0.0.1:0` (an ephemeral port).
/// Must be called inside a Tokio runtime.
pub async fn spawn_backend(name: &str) -> std::io::Result<BackendHandle> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_backend(name.to_owned(), listener, async move {
        // Either an explicit signal or the sender being dropped stops it.
        let _ = stopped.await;
    }));
    Ok(BackendHandle { name: name.to_owned(), addr, stop: Some(stop), task: Some(task) })
}

/// Connects to `proxy_addr` over cleartext HTTP/2 but sends every request
/// with `:authority` = `authority` (e.g. `user-service.app.svc.cluster.local:50051`),
/// which is how a sidecar learns the intended destination Service.
pub async fn channel_via_proxy(proxy_addr: SocketAddr, authority: &str) -> Result<Channel, tonic::transport::Error> {
    // Parsing through Endpoint keeps the error type uniform for callers.
    let origin = Endpoint::from_shared(format!("http://{authority}"))?.uri().clone();
    Endpoint::from_shared(format!("http://{proxy_addr}"))?
        .origin(origin)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Renders discovery.k8s.io/v1 EndpointSlices (multi-document YAML) for the
/// local file-based mode of the proxy.
///
/// Local backends usually share `127.0.0.1` and differ only by port, while an
/// EndpointSlice has a single port list for all its endpoints; so one slice is
/// emitted per distinct (address family, port), named `<service>-<n>`.
/// Returns an empty string when `addrs` is empty.
pub fn endpoint_slice_yaml(namespace: &str, service: &str, port_name: &str, addrs: &[SocketAddr]) -> String {
    // BTreeMap gives deterministic slice order (IPv4 first, then by port).
    let mut groups: BTreeMap<(bool, u16), Vec<String>> = BTreeMap::new();
    for addr in addrs {
        let ips = groups.entry((addr.is_ipv6(), addr.port())).or_default();
        let ip = addr.ip().to_string();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    // JSON string literals are valid YAML scalars, which sidesteps any
    // quoting/escaping concerns for names.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut out = String::new();
    for (n, ((is_v6, port), ips)) in groups.into_iter().enumerate() {
        let family = if is_v6 { "IPv6" } else { "IPv4" };
        out.push_str("---\n");
        out.push_str("apiVersion: discovery.k8s.io/v1\n");
        out.push_str("kind: EndpointSlice\n");
        out.push_str("metadata:\n");
        out.push_str(&format!("  name: {}\n", q(&format!("{service}-{n}"))));
        out.push_str(&format!("  namespace: {}\n", q(namespace)));
        out.push_str("  labels:\n");
        out.push_str(&format!("    kubernetes.io/service-name: {}\n", q(service)));
        out.push_str(&format!("addressType: {family}\n"));
        out.push_str("ports:\n");
        out.push_str(&format!("  - name: {}\n", q(port_name)));
        out.push_str(&format!("    port: {port}\n"));
        out.push_str("    protocol: TCP\n");
        out.push_str("endpoints:\n");
        for ip in ips {
            out.push_str(&format!("  - addresses: [{}]\n", q(&ip)));
            out.push_str("    conditions:\n");
            out.push_str("      ready: true\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::echo_v1::echo_client::EchoClient;
    use pb::order_v1::order_service_client::OrderServiceClient;
    use pb::user_v1::user_service_client::UserServiceClient;

    async fn echo(backend: &BackendHandle) -> EchoClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", backend.addr())).unwrap().connect().await.unwrap();
        EchoClient::new(channel)
    }

    fn probe(payload: &str) -> Probe {
        Probe { payload: payload.to_owned(), ..Probe::default() }
    }

    #[tokio::test]
    async fn unary_answers_with_backend_and_method() {
        let backend = spawn_backend("b-unary").await.unwrap();
        let mut client = echo(&backend).await;
        let answer = client.unary(probe("hi")).await.unwrap().into_inner();
        assert_eq!(answer.backend, "b-unary");
        assert_eq!(answer.service, "strait.test.v1.Echo");
        assert_eq!(answer.method, "Unary");
        assert_eq!(answer.payload, "hi");
        assert_eq!(answer.headers[PATH_KEY], "/strait.test.v1.Echo/Unary");
        drop(client);
        backend.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn server_stream_returns_stream_count_answers() {
        let backend = spawn_backend("b-ss").await.unwrap();
        let mut client = echo(&backend).await;
        let mut stream = client
            .server_stream(Probe { payload: "p".into(), stream_count: 3, delay_ms: 1, ..Probe::default() })
            .await
            .unwrap()
            .into_inner();
        let mut seqs = Vec::new();
        while let Some(a) = stream.message().await.unwrap() {
            assert_eq!(a.method, "ServerStream");
            seqs.push(a.seq);
        }
        assert_eq!(seqs, vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn server_stream_fails_after_answers() {
        let backend = spawn_backend("b-ssf").await.unwrap();
        let mut client = echo(&backend).await;
        let mut stream = client
            .server_stream(Probe {
                stream_count: 2,
                fail_code: Code::Aborted as i32,
                fail_message: "midway".into(),
                ..Probe::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().seq, 0);
        assert_eq!(stream.message().await.unwrap().unwrap().seq, 1);
        let status = stream.message().await.unwrap_err();
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(status.message(), "midway");
    }

    #[tokio::test]
    async fn client_stream_concatenates() {
        let backend = spawn_backend("b-cs").await.unwrap();
        let mut client = echo(&backend).await;
        let input = tokio_stream::iter(vec![probe("a"), probe("b"), probe("c")]);
        let answer = client.client_stream(input).await.unwrap().into_inner();
        assert_eq!(answer.payload, "abc");
        assert_eq!(answer.seq, 3);
        assert_eq!(answer.method, "ClientStream");
    }

    #[tokio::test]
    async fn bidi_answers_each_message() {
        let backend = spawn_backend("b-bidi").await.unwrap();
        let mut client = echo(&backend).await;
        let (tx, rx) = mpsc::channel(4);
        let mut stream = client.bidi_stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
        for (i, word) in ["x", "y"].iter().enumerate() {
            tx.send(probe(word)).await.unwrap();
            let a = stream.message().await.unwrap().unwrap();
            assert_eq!(a.payload, *word);
            assert_eq!(a.seq as usize, i);
            assert_eq!(a.backend, "b-bidi");
        }
        drop(tx);
        assert!(stream.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn fail_code_becomes_status() {
        let backend = spawn_backend("b-fail").await.unwrap();
        let mut client = echo(&backend).await;
        let status = client
            .unary(Probe { fail_code: Code::PermissionDenied as i32, fail_message: "nope".into(), ..Probe::default() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "nope");

        let status = client
            .server_stream(Probe {
                fail_code: Code::Unavailable as i32,
                fail_message: "down".into(),
                ..Probe::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn metadata_is_echoed() {
        let backend = spawn_backend("b-meta").await.unwrap();
        let channel = Endpoint::from_shared(format!("http://{}", backend.addr())).unwrap().connect().await.unwrap();
        let mut client = UserServiceClient::new(channel);
        let mut req = Request::new(probe("u"));
        req.metadata_mut().insert("x-experiment-group", "treatment-a".parse().unwrap());
        req.metadata_mut().insert_bin("trace-bin", tonic::metadata::MetadataValue::from_bytes(b"\x00\x01"));
        let answer = client.create_user(req).await.unwrap().into_inner();
        assert_eq!(answer.service, "user.v1.UserService");
        assert_eq!(answer.method, "CreateUser");
        assert_eq!(answer.headers["x-experiment-group"], "treatment-a");
        assert!(answer.headers.contains_key("content-type"));
        assert!(!answer.headers.contains_key("trace-bin"));
    }

    #[tokio::test]
    async fn channel_via_proxy_sets_authority() {
        let backend = spawn_backend("b-auth").await.unwrap();
        let authority = "order-service.app.svc.cluster.local:50051";
        let channel = channel_via_proxy(backend.addr(), authority).await.unwrap();
        let mut client = OrderServiceClient::new(channel);
        let answer = client.get_order(probe("o")).await.unwrap().into_inner();
        assert_eq!(answer.headers[AUTHORITY_KEY], authority);
        assert_eq!(answer.method, "GetOrder");
        assert_eq!(answer.backend, "b-auth");
    }

    #[test]
    fn endpoint_slice_yaml_one_slice_per_port() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:4001".parse().unwrap(),
            "127.0.0.1:4000".parse().unwrap(),
            "127.0.0.2:4000".parse().unwrap(),
        ];
        let yaml = endpoint_slice_yaml("app", "order-service-stable", "grpc", &addrs);
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
        assert_eq!(docs.len(), 2, "{yaml}");
        for (i, doc) in docs.iter().enumerate() {
            assert_eq!(doc["apiVersion"], "discovery.k8s.io/v1");
            assert_eq!(doc["kind"], "EndpointSlice");
            assert_eq!(doc["metadata"]["name"], format!("order-service-stable-{i}"));
            assert_eq!(doc["metadata"]["namespace"], "app");
            assert_eq!(doc["metadata"]["labels"]["kubernetes.io/service-name"], "order-service-stable");
            assert_eq!(doc["addressType"], "IPv4");
            assert_eq!(doc["ports"][0]["name"], "grpc");
            assert_eq!(doc["ports"][0]["protocol"], "TCP");
            assert_eq!(doc["endpoints"][0]["conditions"]["ready"], true);
        }
        assert_eq!(docs[0]["ports"][0]["port"], 4000);
        assert_eq!(docs[0]["endpoints"][0]["addresses"][0], "127.0.0.1");
        assert_eq!(docs[0]["endpoints"][1]["addresses"][0], "127.0.0.2");
        assert_eq!(docs[1]["ports"][0]["port"], 4001);
        assert_eq!(docs[1]["endpoints"].as_array().unwrap().len(), 1);
        assert_eq!(endpoint_slice_yaml("app", "s", "grpc", &[]), "");
    }
}

/// Failure of [`http1_get`].
#[derive(Debug, thiserror::Error)]
pub enum HttpGetError {
    #[error("GET {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("GET {path}: {source}")]
    Http { path: String, source: hyper::Error },
    #[error("GET {path}: invalid request: {source}")]
    Request { path: String, source: http::Error },
    #[error("GET {0} timed out")]
    Timeout(String),
}

/// A minimal HTTP/1.1 GET (one connection, one request), e.g. for the proxy's admin
/// endpoint: returns the status and the body, within `timeout`.
pub async fn http1_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), HttpGetError> {
    use http_body_util::BodyExt;
    let io = |source| HttpGetError::Io { path: path.to_owned(), source };
    let hyper = |source| HttpGetError::Http { path: path.to_owned(), source };
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(hyper)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|source| HttpGetError::Request { path: path.to_owned(), source })?;
        let resp = sender.send_request(req).await.map_err(hyper)?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(hyper)?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, fetch).await.map_err(|_| HttpGetError::Timeout(path.to_owned()))?
}
