//! Graceful shutdown: SIGTERM stops accepting, lets in-flight streams finish
//! and exits 0.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use strait_demo::pb::echo_v1::echo_client::EchoClient;
use strait_e2e::{Mesh, NS, Probe, authority, probe, services_yaml};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_and_exits_zero() -> Result<()> {
    const CALLS: usize = 20;
    const MESSAGES: u32 = 20;
    const DELAY_MS: u32 = 100;

    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["stream-service"]))?;
    mesh.spawn(NS, "stream-service", "stream-1").await?;
    mesh.write_endpoints()?;
    let mut proxy = mesh.start_proxy(NS, &["--drain-timeout", "10s"]).await?;

    // Two client connections, ten streams each.
    let channels = [
        proxy.channel(&authority("stream-service", NS)).await?,
        proxy.channel(&authority("stream-service", NS)).await?,
    ];
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..CALLS {
        let mut client = EchoClient::new(channels[i % 2].clone());
        calls.push(tokio::spawn(async move {
            let req = Probe { stream_count: MESSAGES, delay_ms: DELAY_MS, ..probe(&format!("call-{i}")) };
            let mut stream = client.server_stream(req).await?.into_inner();
            let mut seqs = Vec::new();
            while let Some(a) = stream.message().await? {
                if a.payload != format!("call-{i}") {
                    bail!("call {i}: wrong payload {:?}", a.payload);
                }
                seqs.push(a.seq);
            }
            anyhow::Ok(seqs)
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(calls.iter().all(|c| !c.is_finished()), "calls must still be in flight at SIGTERM");
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
        if started.elapsed() > Duration::from_millis(1500) {
            bail!(
                "outbound listener still accepting {:?} after SIGTERM",
                started.elapsed() - Duration::from_millis(300)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(proxy.try_exit_status()?.is_none(), "proxy must still be draining when it refuses new connections");
    let in_flight = calls.iter().filter(|c| !c.is_finished()).count();
    println!("new connections refused {:?} after start, {in_flight} streams still in flight", refused_at - started);
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

/// The drain timeout bounds shutdown: a stream longer than it is cut off and
/// the proxy still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_shutdown() -> Result<()> {
    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["stream-service"]))?;
    mesh.spawn(NS, "stream-service", "stream-1").await?;
    mesh.write_endpoints()?;
    let mut proxy = mesh.start_proxy(NS, &["--drain-timeout", "500ms"]).await?;
    let mut client = EchoClient::new(proxy.channel(&authority("stream-service", NS)).await?);
    // 100 messages x 100 ms = 10 s, far beyond the 500 ms drain timeout.
    let mut stream =
        client.server_stream(Probe { stream_count: 100, delay_ms: 100, ..probe("long") }).await?.into_inner();
    assert!(stream.message().await?.is_some());
    let signalled = Instant::now();
    proxy.sigterm()?;
    let status = proxy.wait_exit().await?;
    let took = signalled.elapsed();
    println!("exited {took:?} after SIGTERM with {status}");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?} despite --drain-timeout 500ms");
    // The stream did not complete normally.
    let mut n = 1;
    let ended_ok = loop {
        match stream.message().await {
            Ok(Some(_)) => n += 1,
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    assert!(!(ended_ok && n == 100), "a 10 s stream cannot complete within a 500 ms drain");
    Ok(())
}
