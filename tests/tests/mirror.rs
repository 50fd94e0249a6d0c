//! Request mirroring (GRPCRoute `RequestMirror`) end to end, file mode on loopback:
//! a real tonic client calls through the proxy, the primary is a demo backend, the
//! shadow is a tonic server in this test that records every call it receives and
//! how its request stream ended.
//!
//! - the shadow receives the whole request, the caller the primary's answer;
//! - a caller that cancels a client stream, and a shadow that falls behind, make the
//!   shadow's stream fail (RST_STREAM), never end cleanly with part of the request
//!   (which a server would commit as a complete, truncated client stream);
//! - a mirrored server stream that never ends is cut off at the mirror deadline.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use strait_demo::pb::echo_v1::echo_client::EchoClient;
use strait_demo::pb::echo_v1::echo_server::{Echo, EchoServer};
use strait_demo::{Answer, AnswerStream, Probe};
use strait_e2e::hostile::grpc_probe_message;
use strait_e2e::{Mesh, NS, ProxyProcess, authority, endpoint_slice_yaml, probe, services_yaml, wait_for};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How one call arrived at the shadow.
#[derive(Clone, Debug, PartialEq)]
enum Arrival {
    /// The request ended cleanly after these messages (payloads).
    Complete { method: &'static str, payloads: Vec<String> },
    /// The request stream failed after this many messages.
    Failed { method: &'static str, received: usize, status: String },
    /// A server stream the shadow was sending was cancelled by the proxy after this
    /// many messages.
    StreamCancelled { sent: u32 },
}

#[derive(Default)]
struct ShadowLog {
    arrivals: Mutex<Vec<Arrival>>,
    /// Messages received so far on open client streams.
    receiving: Mutex<usize>,
}

/// The shadow backend.
#[derive(Clone)]
struct Shadow {
    log: Arc<ShadowLog>,
    /// When set, a client stream stops reading after its first message until notified.
    hold: Option<Arc<Notify>>,
}

impl Shadow {
    fn record(&self, arrival: Arrival) {
        self.log.arrivals.lock().expect("log").push(arrival);
    }
}

fn answer(method: &str, payload: String, seq: u32) -> Answer {
    Answer { backend: "shadow".into(), method: method.into(), payload, seq, ..Answer::default() }
}

#[tonic::async_trait]
impl Echo for Shadow {
    async fn unary(&self, req: Request<Probe>) -> Result<Response<Answer>, Status> {
        let payload = req.into_inner().payload;
        self.record(Arrival::Complete { method: "Unary", payloads: vec![payload.clone()] });
        Ok(Response::new(answer("Unary", payload, 0)))
    }

    type ServerStreamStream = AnswerStream;
    /// Streams until the proxy goes away (at most 60 s).
    async fn server_stream(&self, req: Request<Probe>) -> Result<Response<AnswerStream>, Status> {
        let payload = req.into_inner().payload;
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            for seq in 0..6000u32 {
                if tx.send(Ok(answer("ServerStream", payload.clone(), seq))).await.is_err() {
                    this.record(Arrival::StreamCancelled { sent: seq });
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn client_stream(&self, req: Request<Streaming<Probe>>) -> Result<Response<Answer>, Status> {
        let mut inbound = req.into_inner();
        let mut payloads = Vec::new();
        loop {
            match inbound.message().await {
                Ok(Some(p)) => {
                    payloads.push(p.payload);
                    *self.log.receiving.lock().expect("log") = payloads.len();
                    if payloads.len() == 1
                        && let Some(hold) = &self.hold
                    {
                        hold.notified().await;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    self.record(Arrival::Failed {
                        method: "ClientStream",
                        received: payloads.len(),
                        status: format!("{:?}: {}", status.code(), status.message()),
                    });
                    return Err(status);
                }
            }
        }
        let count = payloads.len() as u32;
        self.record(Arrival::Complete { method: "ClientStream", payloads });
        Ok(Response::new(answer("ClientStream", String::new(), count)))
    }

    type BidiStreamStream = AnswerStream;
    async fn bidi_stream(&self, _req: Request<Streaming<Probe>>) -> Result<Response<AnswerStream>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

/// A proxy whose route for `echo-service` sends to the demo backend `primary` and
/// mirrors every call to the recording shadow.
struct Setup {
    _mesh: Mesh,
    proxy: ProxyProcess,
    log: Arc<ShadowLog>,
    client: EchoClient<tonic::transport::Channel>,
}

const MIRROR_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: mirror-route
  namespace: app
spec:
  parentRefs:
    - group: ""
      kind: Service
      name: echo-service
      port: 50051
  rules:
    - backendRefs:
        - name: primary
          port: 50051
      filters:
        - type: RequestMirror
          requestMirror:
            backendRef:
              name: shadow
              port: 50051
"#;

async fn setup(hold: Option<Arc<Notify>>) -> Result<Setup> {
    let log = Arc::new(ShadowLog::default());
    let shadow = Shadow { log: log.clone(), hold };
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let shadow_addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(shadow))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["echo-service", "primary", "shadow"]))?;
    mesh.spawn(NS, "primary", "primary").await?;
    mesh.write_endpoints()?;
    mesh.write("shadow-endpoints.yaml", &endpoint_slice_yaml(NS, "shadow", "grpc", &[shadow_addr]))?;
    mesh.write("route.yaml", MIRROR_ROUTE)?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    let client = EchoClient::new(proxy.channel(&authority("echo-service", NS)).await?);
    Ok(Setup { _mesh: mesh, proxy, log, client })
}

impl Setup {
    fn arrivals(&self) -> Vec<Arrival> {
        self.log.arrivals.lock().expect("log").clone()
    }

    async fn wait_arrivals(&self, n: usize) -> Result<Vec<Arrival>> {
        wait_for(&format!("{n} calls at the shadow"), Duration::from_secs(30), || async {
            let a = self.arrivals();
            Ok((a.len() >= n).then_some(a))
        })
        .await
        .with_context(|| format!("proxy log:\n{}", self.proxy.log_tail(20)))
    }
}

fn messages(n: usize, size: usize) -> Vec<Probe> {
    (0..n).map(|i| probe(&format!("{i:05}-{}", "x".repeat(size)))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_gets_the_whole_request_and_the_caller_the_primary_answer() -> Result<()> {
    let mut s = setup(None).await?;
    let answer = s.client.unary(probe("hello")).await?.into_inner();
    ensure!(answer.backend == "primary", "the caller gets the primary's answer: {answer:?}");
    ensure!(answer.payload == "hello");

    let sent = messages(20, 100);
    let want: Vec<String> = sent.iter().map(|p| p.payload.clone()).collect();
    let answer = s.client.client_stream(tokio_stream::iter(sent)).await?.into_inner();
    ensure!(answer.backend == "primary" && answer.seq == 20, "primary answered the whole stream: {answer:?}");

    let arrivals = s.wait_arrivals(2).await?;
    ensure!(
        arrivals[0] == Arrival::Complete { method: "Unary", payloads: vec!["hello".into()] },
        "shadow got {:?}",
        arrivals[0]
    );
    ensure!(
        arrivals[1] == Arrival::Complete { method: "ClientStream", payloads: want },
        "the shadow received the whole client stream: {:?}",
        arrivals[1]
    );
    Ok(())
}

type CallerFrame = Result<hyper::body::Frame<Bytes>, std::io::Error>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_client_stream_fails_at_the_mirror_instead_of_ending() -> Result<()> {
    let mut s = setup(None).await?;
    // A caller whose client stream fails after three messages: its HTTP/2 client resets
    // the stream (tonic's own client cannot fail a request stream).
    let tcp = tokio::net::TcpStream::connect(s.proxy.outbound_addr()).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<CallerFrame>(8);
    let req = http::Request::post(format!("http://{}/strait.test.v1.Echo/ClientStream", authority("echo-service", NS)))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(ReceiverStream::new(rx)))?;
    let call = tokio::spawn(async move { sender.send_request(req).await });
    for i in 0..3 {
        let message = grpc_probe_message(format!("m{i}").as_bytes(), 0);
        tx.send(Ok(hyper::body::Frame::data(Bytes::from(message)))).await.context("caller stream")?;
    }
    let log = s.log.clone();
    wait_for("3 messages at the shadow", Duration::from_secs(30), || async {
        Ok((*log.receiving.lock().expect("log") >= 3).then_some(()))
    })
    .await?;
    tx.send(Err(std::io::Error::other("the caller gave up"))).await.context("caller stream")?;
    let _ = call.await;
    let arrivals = s.wait_arrivals(1).await?;
    match &arrivals[0] {
        Arrival::Failed { method: "ClientStream", received: 3, status } => {
            println!("cancelled caller: the shadow saw {status}");
        }
        other => anyhow::bail!(
            "the shadow must see the stream fail, not end with 3 of its messages: {other:?}; proxy log:\n{}",
            s.proxy.log_tail(15)
        ),
    }
    // Still serving.
    let answer = s.client.unary(probe("after")).await?.into_inner();
    ensure!(answer.backend == "primary");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_falls_behind_is_reset_not_truncated() -> Result<()> {
    // The shadow reads one message, then stops reading until the caller's call is done:
    // its flow-control windows fill, then the proxy's copy queue.
    let hold = Arc::new(Notify::new());
    let mut s = setup(Some(hold.clone())).await?;
    const MESSAGES: usize = 400;
    // Padding outside `payload`, which the primary echoes back (within tonic's 4 MB limit).
    let padded =
        (0..MESSAGES).map(|i| Probe { payload: format!("{i},"), fail_message: "x".repeat(20_000), ..Probe::default() });
    let answer = s.client.client_stream(tokio_stream::iter(padded.collect::<Vec<_>>())).await?.into_inner();
    ensure!(
        answer.backend == "primary" && answer.seq == MESSAGES as u32,
        "the caller is not held up by its mirror: {:?} {}",
        answer.backend,
        answer.seq
    );
    hold.notify_one();
    let arrivals = s.wait_arrivals(1).await?;
    match &arrivals[0] {
        Arrival::Failed { method: "ClientStream", received, status } => {
            ensure!(*received < MESSAGES, "{received} messages before the reset");
            println!("shadow fell behind: {received} of {MESSAGES} messages, then {status}");
        }
        Arrival::Complete { payloads, .. } => anyhow::bail!(
            "a mirror that fell behind must be reset, not see a clean end: {} of {MESSAGES} messages",
            payloads.len()
        ),
        other => anyhow::bail!("unexpected: {other:?}"),
    }
    let metrics = s.proxy.metrics().await?;
    ensure!(metrics.sum("strait_mirror_failures_total", &[("reason", "reset")]) >= 1.0, "mirror failure counted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_endless_server_stream_is_cut_off_at_the_deadline() -> Result<()> {
    let mut s = setup(None).await?;
    let started = std::time::Instant::now();
    // The caller's own stream (from the primary) ends after 3 messages.
    let mut stream = s.client.server_stream(Probe { stream_count: 3, ..probe("endless") }).await?.into_inner();
    let mut got = 0;
    while let Some(a) = stream.message().await? {
        ensure!(a.backend == "primary");
        got += 1;
    }
    ensure!(got == 3);
    // The shadow streams on; the proxy drains it and resets it at the mirror deadline.
    let arrivals = wait_for("the shadow's stream to be cancelled", Duration::from_secs(45), || async {
        let a = s.arrivals();
        Ok((!a.is_empty()).then_some(a))
    })
    .await?;
    let waited = started.elapsed();
    match arrivals[0] {
        Arrival::StreamCancelled { sent } => {
            println!("mirrored server stream cut off after {sent} messages, {waited:?} after the call");
            ensure!(sent > 10, "the proxy read (and dropped) the shadow's messages as they came: {sent}");
        }
        ref other => anyhow::bail!("unexpected arrival {other:?}"),
    }
    let metrics = s.proxy.metrics().await?;
    ensure!(metrics.sum("strait_mirror_failures_total", &[("reason", "deadline")]) == 1.0, "deadline counted");
    Ok(())
}
