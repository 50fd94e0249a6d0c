//! All four gRPC call types, large messages, status trailers, deadlines and
//! cancellation through the proxy's outbound listener.

use std::time::{Duration, Instant};

use anyhow::Result;
use strait_demo::pb::echo_v1::echo_client::EchoClient;
use strait_e2e::{
    CONFIG_CHANGE_TIMEOUT, Mesh, NS, Probe, ProxyProcess, authority, probe, raw_h2, services_yaml, wait_for,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

const ECHO: &str = "echo-service";

/// One Service `echo-service` (no routes: traffic goes to its own endpoints)
/// backed by one demo backend.
async fn echo_mesh() -> Result<(Mesh, ProxyProcess)> {
    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &[ECHO]))?;
    mesh.spawn(NS, ECHO, "echo-1").await?;
    mesh.write_endpoints()?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    Ok((mesh, proxy))
}

async fn echo_client(proxy: &ProxyProcess) -> Result<EchoClient<Channel>> {
    Ok(EchoClient::new(proxy.channel(&authority(ECHO, NS)).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_call_passes_through() -> Result<()> {
    let (_mesh, proxy) = echo_mesh().await?;
    let mut client = echo_client(&proxy).await?;
    let mut req = Request::new(probe("hello"));
    req.metadata_mut().insert("x-custom", "v1".parse()?);
    let answer = client.unary(req).await?.into_inner();
    assert_eq!(answer.backend, "echo-1");
    assert_eq!(answer.method, "Unary");
    assert_eq!(answer.payload, "hello");
    assert_eq!(answer.headers.get("x-custom").map(String::as_str), Some("v1"));
    assert_eq!(answer.headers.get(strait_demo::PATH_KEY).map(String::as_str), Some("/strait.test.v1.Echo/Unary"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_delivers_all_messages_in_order() -> Result<()> {
    let (_mesh, proxy) = echo_mesh().await?;
    let mut client = echo_client(&proxy).await?;
    let mut stream = client.server_stream(Probe { stream_count: 50, ..probe("s") }).await?.into_inner();
    let mut seqs = Vec::new();
    while let Some(a) = stream.message().await? {
        assert_eq!(a.payload, "s");
        seqs.push(a.seq);
    }
    assert_eq!(seqs, (0..50).collect::<Vec<u32>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stream_delivers_all_messages() -> Result<()> {
    let (_mesh, proxy) = echo_mesh().await?;
    let mut client = echo_client(&proxy).await?;
    let input: Vec<Probe> = (0..50).map(|i| probe(&format!("{},", i))).collect();
    let expected: String = (0..50).map(|i| format!("{i},")).collect();
    let answer = client.client_stream(tokio_stream::iter(input)).await?.into_inner();
    assert_eq!(answer.seq, 50, "message count seen by the backend");
    assert_eq!(answer.payload, expected);
    Ok(())
}

/// Each request is sent only after the answer to the previous one arrived:
/// a proxy that buffered whole request or response streams would deadlock
/// here (bounded by a timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_stream_is_interleaved_without_buffering() -> Result<()> {
    let (_mesh, proxy) = echo_mesh().await?;
    let mut client = echo_client(&proxy).await?;
    let (tx, rx) = mpsc::channel(1);
    tx.send(probe("m-0")).await?;
    let mut responses = client.bidi_stream(ReceiverStream::new(rx)).await?.into_inner();
    for i in 0..50u32 {
        let answer = tokio::time::timeout(Duration::from_secs(30), responses.message())
            .await
            .map_err(|_| anyhow::anyhow!("no answer to message {i} within 30 s: the stream is being buffered"))??
            .ok_or_else(|| anyhow::anyhow!("stream ended after {i} answers"))?;
        assert_eq!(answer.seq, i);
        assert_eq!(answer.payload, format!("m-{i}"));
        if i + 1 < 50 {
            tx.send(probe(&format!("m-{}", i + 1))).await?;
        }
    }
    drop(tx);
    assert!(responses.message().await?.is_none(), "stream should end after the client half-closes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_unary_payload_round_trips() -> Result<()> {
    let (_mesh, proxy) = echo_mesh().await?;
    let mut client = echo_client(&proxy).await?;
    let payload: String = (0..1024 * 1024).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let answer = client.unary(probe(&payload)).await?.into_inner();
    assert_eq!(answer.payload.len(), payload.len());
    assert!(answer.payload == payload, "1 MiB payload corrupted in transit");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_in_trailers_propagates() -> Result<()> {
    let (_mesh, proxy) = echo_mesh().await?;
    let mut client = echo_client(&proxy).await?;

    // Unary: trailers-only NOT_FOUND.
    let status = client
        .unary(Probe { fail_code: Code::NotFound as i32, fail_message: "user 42 not found".into(), ..probe("") })
        .await
        .expect_err("backend fails the call");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "user 42 not found");

    // Server stream: messages first, then ABORTED in the trailers.
    let mut stream = client
        .server_stream(Probe {
            stream_count: 3,
            fail_code: Code::Aborted as i32,
            fail_message: "midway".into(),
            ..probe("")
        })
        .await?
        .into_inner();
    for i in 0..3 {
        assert_eq!(stream.message().await?.map(|a| a.seq), Some(i));
    }
    let status = stream.message().await.expect_err("stream ends with ABORTED");
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "midway");
    Ok(())
}

/// `grpc-timeout` is enforced by the proxy. The call goes over a raw HTTP/2
/// transport: tonic's own Channel would expire the deadline client-side and
/// report `Cancelled`, hiding what the proxy answered. The proxy's metrics record
/// the call as `DeadlineExceeded` too: the status is the proxy's, not the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_yields_deadline_exceeded() -> Result<()> {
    // The backend would answer after 60 s; the deadline is 200 ms. The elapsed-time
    // bound below is half the backend's delay, so only a proxy that waited for the
    // backend fails it, however busy the machine.
    const BACKEND_DELAY: Duration = Duration::from_secs(60);
    let (_mesh, proxy) = echo_mesh().await?;
    let mut client = EchoClient::new(raw_h2(proxy.outbound_addr(), &authority(ECHO, NS)).await?);
    let mut req = Request::new(Probe { delay_ms: BACKEND_DELAY.as_millis() as u32, ..probe("slow") });
    req.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let status = client.unary(req).await.expect_err("call must time out");
    let elapsed = started.elapsed();
    println!("grpc-timeout 200ms: {status:?} after {elapsed:?}");
    assert_eq!(status.code(), Code::DeadlineExceeded, "status: {status:?}");
    assert!(status.message().contains("grpc-timeout"), "not the proxy's deadline message: {status:?}");
    assert!(elapsed < BACKEND_DELAY / 2, "deadline answered after {elapsed:?}: the proxy waited for the backend");
    let m = proxy.metrics().await?;
    let labels = [("grpc_method", "Unary"), ("grpc_code", "DeadlineExceeded")];
    assert_eq!(m.sum("grpc_client_handled_total", &labels), 1.0, "the proxy did not record DeadlineExceeded");
    Ok(())
}

/// Dropping a server stream mid-way cancels it: the proxy records the call as
/// `Canceled` and keeps serving the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_server_stream_is_reported_and_proxy_keeps_working() -> Result<()> {
    let (_mesh, proxy) = echo_mesh().await?;
    let mut client = echo_client(&proxy).await?;
    let mut stream = client.server_stream(Probe { stream_count: 100, delay_ms: 20, ..probe("c") }).await?.into_inner();
    for i in 0..3 {
        assert_eq!(stream.message().await?.map(|a| a.seq), Some(i));
    }
    drop(stream);

    let canceled =
        [("grpc_service", "strait.test.v1.Echo"), ("grpc_method", "ServerStream"), ("grpc_code", "Canceled")];
    wait_for("grpc_client_handled_total{grpc_code=\"Canceled\"}", CONFIG_CHANGE_TIMEOUT, || async {
        let m = proxy.metrics().await?;
        Ok((m.sum("grpc_client_handled_total", &canceled) >= 1.0).then_some(()))
    })
    .await?;

    // Same client connection, next calls work.
    let answer = client.unary(probe("after")).await?.into_inner();
    assert_eq!(answer.payload, "after");
    let mut stream = client.server_stream(Probe { stream_count: 5, ..probe("again") }).await?.into_inner();
    let mut n = 0;
    while stream.message().await?.is_some() {
        n += 1;
    }
    assert_eq!(n, 5);
    let m = proxy.metrics().await?;
    assert_eq!(m.sum("grpc_client_handled_total", &canceled), 1.0, "only the dropped stream is Canceled");
    Ok(())
}
