//! Graceful shutdown: SIGTERM stops accepting, lets in-flight streams finish
//! and exits 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use strait_demo::pb::echo_v1::echo_client::EchoClient;
use strait_e2e::{Mesh, NS, Probe, authority, probe, services_yaml};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_and_exits_zero() -> Result<()> {
    const CALLS: usize = 20;
    // 10 s per stream: long enough that none ends before the listener closes, even
    // on a busy machine; the drain timeout leaves them far more than that.
    const MESSAGES: u32 = 100;
    const DELAY_MS: u32 = 100;
    const PATIENCE: Duration = Duration::from_secs(30);

    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["stream-service"]))?;
    mesh.spawn(NS, "stream-service", "stream-1").await?;
    mesh.write_endpoints()?;
    let mut proxy = mesh.start_proxy(NS, &["--drain-timeout", "120s"]).await?;

    // Two client connections, ten streams each.
    let channels = [
        proxy.channel(&authority("stream-service", NS)).await?,
        proxy.channel(&authority("stream-service", NS)).await?,
    ];
    let started = Instant::now();
    // Streams that have received their first message.
    let streaming = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for i in 0..CALLS {
        let mut client = EchoClient::new(channels[i % 2].clone());
        let streaming = streaming.clone();
        calls.push(tokio::spawn(async move {
            let req = Probe { stream_count: MESSAGES, delay_ms: DELAY_MS, ..probe(&format!("call-{i}")) };
            let mut stream = client.server_stream(req).await?.into_inner();
            let mut seqs = Vec::new();
            while let Some(a) = stream.message().await? {
                if seqs.is_empty() {
                    streaming.fetch_add(1, Ordering::Relaxed);
                }
                if a.payload != format!("call-{i}") {
                    bail!("call {i}: wrong payload {:?}", a.payload);
                }
                seqs.push(a.seq);
            }
            anyhow::Ok(seqs)
        }));
    }

    // SIGTERM once every stream is under way.
    while streaming.load(Ordering::Relaxed) < CALLS {
        if let Some(i) = calls.iter().position(|c| c.is_finished()) {
            bail!("call {i} ended before every stream had started");
        }
        ensure!(started.elapsed() < PATIENCE, "only {} of {CALLS} streams started", streaming.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(calls.iter().all(|c| !c.is_finished()), "calls must still be in flight at SIGTERM");
    let sigterm_at = Instant::now();
    proxy.sigterm()?;

    // New connections are refused while the old streams are still draining.
    let outbound = proxy.outbound_addr();
    let refused_at = loop {
        match TcpStream::connect(outbound).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break Instant::now(),
            // A connection caught in the accept queue while the listener
            // closes is reset; keep polling until connects are refused.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => bail!("unexpected connect error: {e}"),
            Ok(_) => {}
        }
        // The listener must close while the streams are still running (they last
        // 10 s), not after they ended.
        if calls.iter().any(|c| c.is_finished()) || sigterm_at.elapsed() > PATIENCE {
            bail!("outbound listener still accepting {:?} after SIGTERM", sigterm_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(proxy.try_exit_status()?.is_none(), "proxy must still be draining when it refuses new connections");
    let in_flight = calls.iter().filter(|c| !c.is_finished()).count();
    println!(
        "new connections refused {:?} after SIGTERM, {in_flight} streams still in flight",
        refused_at - sigterm_at
    );
    assert_eq!(in_flight, CALLS, "streams still running when the listener closed");

    let expected: Vec<u32> = (0..MESSAGES).collect();
    for (i, call) in calls.into_iter().enumerate() {
        let seqs = call.await?.map_err(|e| anyhow::anyhow!("call {i} failed during drain: {e:#}"))?;
        assert_eq!(seqs, expected, "call {i} lost messages");
    }
    let status = proxy.wait_exit().await?;
    println!("all {CALLS} streams completed after {:?}; proxy exited with {status}", started.elapsed());
    assert!(status.success(), "proxy exit status {status}; stderr tail:\n{}", proxy.log_tail(20));
    assert_eq!(status.code(), Some(0));
    Ok(())
}

/// The drain timeout bounds shutdown: a stream longer than it is cut off, the
/// caller sees the stream fail (not end as if complete), and the proxy still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_shutdown() -> Result<()> {
    // 600 messages x 100 ms = 60 s, against a 500 ms drain timeout.
    const MESSAGES: u32 = 600;
    const STREAM_LASTS: Duration = Duration::from_secs(60);
    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["stream-service"]))?;
    mesh.spawn(NS, "stream-service", "stream-1").await?;
    mesh.write_endpoints()?;
    let mut proxy = mesh.start_proxy(NS, &["--drain-timeout", "500ms"]).await?;
    let mut client = EchoClient::new(proxy.channel(&authority("stream-service", NS)).await?);
    let mut stream =
        client.server_stream(Probe { stream_count: MESSAGES, delay_ms: 100, ..probe("long") }).await?.into_inner();
    assert!(stream.message().await?.is_some());
    let signalled = Instant::now();
    proxy.sigterm()?;
    let status = proxy.wait_exit().await?;
    let took = signalled.elapsed();
    println!("exited {took:?} after SIGTERM with {status}");
    assert!(status.success(), "{status}");
    // Not a timing window: the bound is half the stream's length, so only a proxy
    // that waited for the stream instead of its 500 ms drain timeout fails it.
    assert!(took < STREAM_LASTS / 2, "shutdown took {took:?} despite --drain-timeout 500ms");
    // The stream was cut: the caller reads an error, never a clean end.
    let mut received = 1;
    let end = tokio::time::timeout(STREAM_LASTS, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => received += 1,
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    })
    .await
    .context("the stream neither failed nor ended after the proxy exited")?;
    println!("cut stream after {received} of {MESSAGES} messages: {end:?}");
    match end {
        Ok(()) => {
            bail!("a stream cut by the drain timeout ended as if complete after {received} of {MESSAGES} messages")
        }
        Err(status) => assert_ne!(status.code(), tonic::Code::Ok, "{status:?}"),
    }
    assert!(received < MESSAGES, "all {MESSAGES} messages arrived despite the cut");
    Ok(())
}
