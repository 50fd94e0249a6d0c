//! Hostile method names (issue 21, item 1): a peer that can reach a meshed pod's
//! inbound port sends thousands of calls whose `:path` is tens of kilobytes. Every
//! path used to become a metric label value, copied into several series and into
//! every `/metrics` scrape and never freed: 2,000 calls with 30 KB paths pushed the
//! sidecar past its memory limit. The proxy's VmRSS before and after and the size of
//! a scrape must stay bounded; each run prints a `FIGURES` line.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_e2e::hostile::{RssSampler, figures};
use strait_e2e::{Mesh, NS, ProxyProcess, services_yaml};
use tokio::net::TcpStream;

/// Calls with distinct oversized paths, as in the issue.
const HOSTILE_CALLS: usize = 2000;
/// Bytes of each hostile path: under the proxy's 32 KiB header list limit.
const HOSTILE_PATH_LEN: usize = 30_000;
/// Calls in flight at once on the attacking connection.
const CONCURRENCY: usize = 16;
/// Growth of the proxy's RSS the attack may cause. Before the fix it was over 300 MiB
/// (each path was kept about six times); after it, the table holds at most 128 KiB of
/// names and the rest is allocator noise from decoding the header blocks.
const MAX_GROWTH_KIB: u64 = 32 * 1024;
/// A whole `/metrics` page after the attack. Before the fix a scrape rendered every
/// path into about twenty lines each (over a gigabyte for this attack).
const MAX_SCRAPE_BYTES: usize = 1024 * 1024;

/// A gRPC call to `path` with one empty message; returns the HTTP status.
async fn call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    authority: &str,
    path: &str,
) -> Result<u16> {
    let req = http::Request::post(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    // Read to the end so the stream (and its metrics) completes.
    let _ = resp.into_body().collect().await;
    Ok(status)
}

async fn h2_client(addr: SocketAddr) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_reset_streams(1024)
        .handshake(TokioIo::new(tcp))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// `GET /metrics`: its size and text.
async fn scrape_size(proxy: &ProxyProcess) -> Result<(usize, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match proxy.admin_get("/metrics").await {
            Ok((200, body)) => return Ok((body.len(), body)),
            Ok((code, body)) => bail!("GET /metrics: HTTP {code}: {body}"),
            Err(e) if Instant::now() >= deadline => return Err(e.context("GET /metrics")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_method_names_keep_memory_and_scrapes_bounded() -> Result<()> {
    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["echo-service"]))?;
    let app = mesh.spawn(NS, "echo-service", "app").await?;
    mesh.write_endpoints()?;
    let proxy = mesh.start_proxy(NS, &["--inbound-app-addr", &app.to_string()]).await?;
    let pid = proxy.pid().context("no pid")?;
    let inbound = proxy.inbound_addr();
    let authority = "app.example:80";

    // Warm up: a real method, which keeps its own label values.
    let mut sender = h2_client(inbound).await?;
    for _ in 0..50 {
        call(&mut sender, authority, "/strait.test.v1.Echo/Unary").await?;
    }
    let (baseline_scrape, _) = scrape_size(&proxy).await?;
    let rss = RssSampler::start(pid);
    let before = rss.now_kib();
    rss.reset_peak();

    let started = Instant::now();
    let mut answered = 0usize;
    let mut failed = Vec::new();
    let mut next = 0usize;
    while next < HOSTILE_CALLS {
        let batch: Vec<_> = (next..(next + CONCURRENCY).min(HOSTILE_CALLS))
            .map(|i| {
                // Distinct per call, so each would have been a new label value.
                let prefix = format!("/x{i:05}.Svc/");
                let path = format!("{prefix}{}", "A".repeat(HOSTILE_PATH_LEN - prefix.len()));
                let mut sender = sender.clone();
                tokio::spawn(async move { call(&mut sender, authority, &path).await })
            })
            .collect();
        next += batch.len();
        for task in batch {
            match task.await? {
                Ok(_) => answered += 1,
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        ensure!(started.elapsed() < Duration::from_secs(240), "attack took too long: {next} calls sent");
        ensure!(proxy.pid().is_some(), "proxy exited during the attack; log:\n{}", proxy.log_tail(20));
    }
    let peak = rss.peak_kib();
    let after = rss.now_kib();
    let growth = after.saturating_sub(before);
    // Checked before scraping: the unbounded table made a scrape of this state a
    // gigabyte-sized string.
    ensure!(
        growth < MAX_GROWTH_KIB,
        "RSS grew by {growth} KiB ({:.1} MiB -> {:.1} MiB) after {HOSTILE_CALLS} calls with long paths",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    let (scrape, text) = scrape_size(&proxy).await?;
    figures(
        "oversized_method_names",
        HOSTILE_CALLS as u64,
        HOSTILE_CALLS as u64,
        failed.len() as u64,
        peak,
        &format!(
            "{HOSTILE_CALLS} calls with {HOSTILE_PATH_LEN}-byte paths; RSS before {:.1} MiB / peak {:.1} MiB / after \
             {:.1} MiB; /metrics {baseline_scrape} bytes before, {scrape} bytes after",
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            after as f64 / 1024.0
        ),
    );
    ensure!(
        failed.is_empty(),
        "{} attack calls got no HTTP answer: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    ensure!(answered == HOSTILE_CALLS);
    ensure!(scrape < MAX_SCRAPE_BYTES, "/metrics is {scrape} bytes after the attack");
    ensure!(!text.contains("AAAAAAAAAAAAAAAA"), "a hostile path became a label value");
    let metrics = strait_e2e::Metrics::parse(&text)?;
    let other = metrics.sum("grpc_server_started_total", &[("grpc_service", "other"), ("grpc_method", "other")]);
    ensure!(other >= HOSTILE_CALLS as f64, "the hostile calls are counted as `other`: {other}");
    let real =
        metrics.sum("grpc_server_started_total", &[("grpc_service", "strait.test.v1.Echo"), ("grpc_method", "Unary")]);
    ensure!(real == 50.0, "a real method keeps its own labels: {real}");
    // The proxy still serves.
    let status = call(&mut h2_client(inbound).await?, authority, "/strait.test.v1.Echo/Unary").await?;
    ensure!(status == 200, "a call after the attack: HTTP {status}");
    Ok(())
}
