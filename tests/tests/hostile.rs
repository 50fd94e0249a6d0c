//! Hostile input against the proxy's outbound listener (file mode, routed to a
//! demo backend): HTTP/2 floods, broken and oversized header blocks, a peer that
//! never reads, slowloris, a lying gRPC length prefix, too many streams — plus the
//! admin endpoint's loopback-only rule.
//!
//! During every attack a well-behaved tonic client on *another* connection makes
//! unary calls and must see no failure; the proxy's VmRSS is sampled before,
//! during and after and must stay bounded. Each test prints what the proxy
//! answered (GOAWAY code, RST_STREAM codes, status) and a `FIGURES` line.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_e2e::hostile::{
    self, Background, RawH2, RssSampler, Seen, figures, flag, frame, grpc_probe_message, grpc_request_block, kind,
    note, ping, rst_stream, settings,
};
use strait_e2e::kube_mode::{TestNet, skip_unless_root};
use strait_e2e::{Mesh, NS, ProxyProcess, authority, free_addrs, http1_get, proxy_bin, services_yaml};
use tokio::net::TcpStream;

const MAX_GROWTH_KIB: u64 = 64 * 1024;
const UNARY: &str = "/strait.test.v1.Echo/Unary";
const SERVER_STREAM: &str = "/strait.test.v1.Echo/ServerStream";

fn auth() -> String {
    authority("echo-service", NS)
}

/// The proxy under attack, a backend behind it, and the well-behaved client.
struct Target {
    _mesh: Mesh,
    proxy: ProxyProcess,
    rss: RssSampler,
    baseline_kib: u64,
    background: Background,
}

impl Target {
    async fn start(extra_args: &[&str]) -> Result<Self> {
        let mut mesh = Mesh::new()?;
        mesh.write("services.yaml", &services_yaml(NS, &["echo-service"]))?;
        mesh.spawn(NS, "echo-service", "echo-1").await?;
        mesh.write_endpoints()?;
        let proxy = mesh.start_proxy(NS, extra_args).await?;
        let channel = proxy.channel(&auth()).await?;
        // Warm up (upstream connection, allocator), then take the baseline.
        let mut client = strait_demo::pb::echo_v1::echo_client::EchoClient::new(channel.clone());
        for _ in 0..20 {
            client.unary(strait_e2e::probe("warm")).await?;
        }
        let rss = RssSampler::start(proxy.pid().context("no pid")?);
        let baseline_kib = rss.now_kib();
        rss.reset_peak();
        let background = Background::start(channel, 2, Duration::from_millis(5), 20_000);
        Ok(Target { _mesh: mesh, proxy, rss, baseline_kib, background })
    }

    fn outbound(&self) -> SocketAddr {
        self.proxy.outbound_addr()
    }

    /// Stops the well-behaved client, prints the figures and asserts: no failed
    /// call on the other connection, RSS growth bounded, proxy still alive.
    async fn finish(mut self, test: &str, faults: u64, attack_requests: u64, answer: &str) -> Result<()> {
        // A little traffic after the attack, too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let during_peak = self.rss.peak_kib();
        let (sent, failed, errors) = self.background.stop().await;
        let after = self.rss.now_kib();
        let growth = during_peak.saturating_sub(self.baseline_kib);
        figures(
            test,
            faults,
            sent as u64 + attack_requests,
            failed as u64,
            during_peak,
            &format!(
                "proxy answered: {answer}; RSS before {:.1} MiB / peak {:.1} MiB / after {:.1} MiB; well-behaved client \
                 on another connection: {sent} calls, {failed} failed",
                self.baseline_kib as f64 / 1024.0,
                during_peak as f64 / 1024.0,
                after as f64 / 1024.0
            ),
        );
        ensure!(self.proxy.try_exit_status()?.is_none(), "proxy died; log:\n{}", self.proxy.log_tail(20));
        ensure!(sent >= 20, "the well-behaved client made only {sent} calls");
        ensure!(failed == 0, "{failed} of {sent} well-behaved calls failed during the attack: {errors:?}");
        ensure!(growth < MAX_GROWTH_KIB, "RSS grew by {growth} KiB during the attack");
        Ok(())
    }
}

fn headers_frame(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
    frame(kind::HEADERS, flags, stream, block)
}

fn answer(seen: &Seen) -> String {
    seen.describe()
}

// ---------------------------------------------------------------------------
// Rapid reset (CVE-2023-44487)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood() -> Result<()> {
    let t = Target::start(&[]).await?;
    let mut conn = RawH2::connect(t.outbound(), &[], true).await?;
    conn.handshake().await?;
    let block = grpc_request_block(&auth(), UNARY, &[]);
    let mut stream = 1u32;
    let mut opened = 0u64;
    let started = Instant::now();
    'flood: for _batch in 0..50 {
        let mut buf = Vec::new();
        for _ in 0..200 {
            buf.extend_from_slice(&headers_frame(stream, &block, false));
            buf.extend_from_slice(&rst_stream(stream, hostile::CANCEL));
            stream += 2;
        }
        if !conn.send(&buf).await? {
            break 'flood;
        }
        opened += 200;
        if conn.seen().goaway.is_some() || started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let seen = conn.wait_for(Duration::from_secs(2), |s| s.closed).await;
    note(&format!("rapid reset: {opened} HEADERS+RST_STREAM pairs written; {}", answer(&seen)));
    ensure!(
        seen.goaway_code() == Some(hostile::ENHANCE_YOUR_CALM) || !seen.closed,
        "connection closed without ENHANCE_YOUR_CALM: {}",
        answer(&seen)
    );
    t.finish("hostile_rapid_reset", opened, opened, &answer(&seen)).await
}

// ---------------------------------------------------------------------------
// Peer-provoked resets (malformed requests the server must reset)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_provoked_reset_flood() -> Result<()> {
    let t = Target::start(&[]).await?;
    let mut conn = RawH2::connect(t.outbound(), &[], true).await?;
    conn.handshake().await?;
    // A connection-specific header makes the request malformed: the server resets
    // the stream (PROTOCOL_ERROR) — a reset the peer provoked.
    let bad = grpc_request_block(&auth(), UNARY, &[("connection", "keep-alive")]);
    let mut stream = 1u32;
    let mut sent = 0u64;
    for _batch in 0..10 {
        let mut buf = Vec::new();
        for _ in 0..50 {
            buf.extend_from_slice(&headers_frame(stream, &bad, true));
            stream += 2;
        }
        if !conn.send(&buf).await? {
            break;
        }
        sent += 50;
        if conn.wait_for(Duration::from_millis(20), |s| s.goaway.is_some()).await.goaway.is_some() {
            break;
        }
    }
    let seen = conn.wait_for(Duration::from_secs(3), |s| s.goaway.is_some() && s.closed).await;
    note(&format!("peer-provoked resets: {sent} malformed requests; {}", answer(&seen)));
    ensure!(
        seen.goaway_code() == Some(hostile::ENHANCE_YOUR_CALM),
        "expected GOAWAY ENHANCE_YOUR_CALM after --max-local-error-reset-streams (256): {}",
        answer(&seen)
    );
    let resets: usize = seen.rst_by_code.values().sum();
    ensure!((200..=300).contains(&resets), "{resets} resets before the GOAWAY (limit 256)");
    t.finish("hostile_peer_provoked_resets", sent, sent, &answer(&seen)).await
}

// ---------------------------------------------------------------------------
// CONTINUATION flood
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood() -> Result<()> {
    let t = Target::start(&[]).await?;
    let block = grpc_request_block(&auth(), UNARY, &[]);
    let mut answers = Vec::new();
    let mut frames_sent = 0u64;
    // (a) endless empty CONTINUATION frames; (b) CONTINUATION frames full of headers.
    let mut full = Vec::new();
    while full.len() < 16_000 {
        hostile::hpack_literal(&mut full, b"x-a", b"b");
    }
    for (label, payload) in [("empty", Vec::new()), ("16 KB of headers each", full)] {
        let mut conn = RawH2::connect(t.outbound(), &[], true).await?;
        conn.handshake().await?;
        conn.send(&frame(kind::HEADERS, 0, 1, &block)).await?;
        let started = Instant::now();
        let mut n = 0u64;
        while n < 100_000 && started.elapsed() < Duration::from_secs(10) {
            let mut buf = Vec::new();
            for _ in 0..(if payload.is_empty() { 1000 } else { 16 }) {
                buf.extend_from_slice(&frame(kind::CONTINUATION, 0, 1, &payload));
                n += 1;
            }
            if !conn.send(&buf).await? || conn.seen().closed {
                break;
            }
        }
        frames_sent += n;
        let seen = conn.wait_for(Duration::from_secs(3), |s| s.closed).await;
        note(&format!("CONTINUATION flood ({label}): {n} frames written; {}", answer(&seen)));
        ensure!(seen.closed || conn.write_failed(), "connection not closed: {}", answer(&seen));
        ensure!(seen.headers == 0, "a never-ending header block was answered: {}", answer(&seen));
        answers.push(format!("{label}: {}", answer(&seen)));
    }
    t.finish("hostile_continuation_flood", frames_sent, 2, &answers.join(" | ")).await
}

// ---------------------------------------------------------------------------
// HPACK bomb and oversized header lists
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_bomb_and_oversized_headers() -> Result<()> {
    let t = Target::start(&[]).await?;
    let mut answers = Vec::new();

    // (a) HPACK bomb: one 4,000-byte header into the dynamic table, then 3,000
    // one-byte references to it: 12 MB decoded from a 7 KB block.
    let mut bomb = grpc_request_block(&auth(), UNARY, &[]);
    hostile::hpack_literal_indexed(&mut bomb, b"x-bomb", &[b'a'; 4000]);
    bomb.extend(std::iter::repeat_n(0xbe_u8, 3000)); // indexed, dynamic entry 62
    // (b) one 64 KiB header (HEADERS + CONTINUATIONs).
    let huge = grpc_request_block(&auth(), UNARY, &[("x-huge", &"h".repeat(64 * 1024))]);
    // (c) 3,000 small headers (~75 KB).
    let many_names: Vec<(String, String)> = (0..3000).map(|i| (format!("x-h-{i:04}"), "v".repeat(12))).collect();
    let many_refs: Vec<(&str, &str)> = many_names.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let many = grpc_request_block(&auth(), UNARY, &many_refs);

    for (label, block) in [("HPACK bomb", bomb), ("one 64 KiB header", huge), ("3000 small headers", many)] {
        let mut conn = RawH2::connect(t.outbound(), &[], true).await?;
        conn.handshake().await?;
        // Split into ≤ 16 KiB frames (the default SETTINGS_MAX_FRAME_SIZE).
        let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
        let mut buf = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let (k, f) = if i == 0 { (kind::HEADERS, flag::END_STREAM) } else { (kind::CONTINUATION, 0) };
            buf.extend_from_slice(&frame(k, f | if last { flag::END_HEADERS } else { 0 }, 1, c));
        }
        conn.send(&buf).await?;
        let seen = conn
            .wait_for(Duration::from_secs(3), |s| {
                s.goaway.is_some() || s.rst_by_code.values().sum::<usize>() > 0 || s.closed
            })
            .await;
        // Give a 431 + RST pair time to arrive together.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = if seen.closed { seen } else { conn.seen() };
        note(&format!("{label}: {} bytes of header block; {}", block.len(), answer(&seen)));
        let refused = seen.status_431 > 0 || seen.rst_by_code.values().sum::<usize>() > 0 || seen.goaway.is_some();
        ensure!(refused, "{label}: not refused: {}", answer(&seen));
        ensure!(seen.data_bytes == 0, "{label}: the request was served: {}", answer(&seen));
        answers.push(format!("{label}: {}", answer(&seen)));
    }
    t.finish("hostile_hpack_bomb_oversized_headers", 3, 3, &answers.join(" | ")).await
}

// ---------------------------------------------------------------------------
// SETTINGS and PING floods
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods() -> Result<()> {
    let t = Target::start(&[]).await?;
    let mut answers = Vec::new();
    let mut total = 0u64;
    for label in ["SETTINGS", "PING"] {
        let mut conn = RawH2::connect(t.outbound(), &[], true).await?;
        conn.handshake().await?;
        let started = Instant::now();
        let mut n = 0u64;
        while n < 200_000 && started.elapsed() < Duration::from_secs(5) {
            let mut buf = Vec::new();
            for i in 0..1000u64 {
                match label {
                    "SETTINGS" => buf.extend_from_slice(&settings(&[(0x4, 65_535 + (i % 2) as u32)])),
                    _ => buf.extend_from_slice(&ping(n + i)),
                }
            }
            if !conn.send(&buf).await? {
                break;
            }
            n += 1000;
        }
        let seen = conn.wait_for(Duration::from_secs(1), |s| s.closed).await;
        let acks = if label == "SETTINGS" { seen.settings_acks } else { seen.ping_acks };
        note(&format!(
            "{label} flood: {n} frames written in {:.1?}, {acks} ACKs read; {}",
            started.elapsed(),
            answer(&seen)
        ));
        answers.push(format!("{label} flood of {n}: {acks} ACKs; {}", answer(&seen)));
        total += n;
        // --max-control-frames-per-second (1000): GOAWAY ENHANCE_YOUR_CALM, then close.
        ensure!(
            seen.goaway.as_ref().is_some_and(|g| g.1 == 0xb),
            "{label} flood not answered with GOAWAY ENHANCE_YOUR_CALM: {}",
            answer(&seen)
        );
        ensure!(seen.closed, "{label} flood: connection still open: {}", answer(&seen));
        ensure!(acks <= 1_100, "{label} flood: {acks} ACKs written before the GOAWAY");
    }
    // Pinging at a modest rate is fine: 300 PINGs over 1.5 s stay below the limit.
    let mut calm = RawH2::connect(t.outbound(), &[], true).await?;
    calm.handshake().await?;
    for i in 0..30u64 {
        let burst: Vec<u8> = (0..10).flat_map(|j| ping(i * 10 + j)).collect();
        calm.send(&burst).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = calm.wait_for(Duration::from_millis(500), |s| s.ping_acks >= 300).await;
    ensure!(seen.goaway.is_none() && !seen.closed, "calm pinger refused: {}", answer(&seen));
    t.finish("hostile_settings_ping_floods", total, 0, &answers.join(" | ")).await
}

// ---------------------------------------------------------------------------
// Zero-window reader
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_reader() -> Result<()> {
    const STREAMS: u32 = 50;
    let t = Target::start(&[]).await?;
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: the proxy may send no DATA on any stream.
    let mut conn = RawH2::connect(t.outbound(), &[(0x4, 0)], true).await?;
    conn.handshake().await?;
    // The 50 requests carry ~400 KB of DATA, more than the 65,535-byte connection
    // window a client may assume until the proxy's SETTINGS and WINDOW_UPDATE are in;
    // sent earlier, the proxy rightly answers FLOW_CONTROL_ERROR (a race seen in ~1 of
    // 3 runs). The attack is not reading responses, not overrunning request windows.
    let acked = conn.wait_for(Duration::from_secs(2), |s| s.settings_acks > 0).await;
    ensure!(acked.settings_acks > 0, "no SETTINGS ACK from the proxy: {}", answer(&acked));
    let block = grpc_request_block(&auth(), SERVER_STREAM, &[]);
    // Each stream asks for 4,000 answers of 8 KiB: 32 MB per stream (the request
    // fits one 16 KiB frame).
    let msg = grpc_probe_message(&[b'z'; 8 * 1024], 4000);
    let mut buf = Vec::new();
    for i in 0..STREAMS {
        let id = 1 + 2 * i;
        buf.extend_from_slice(&headers_frame(id, &block, false));
        buf.extend_from_slice(&frame(kind::DATA, flag::END_STREAM, id, &msg));
    }
    conn.send(&buf).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seen = conn.seen();
    note(&format!("zero-window reader: {STREAMS} server streams of 32 MB each, never read; {}", answer(&seen)));
    ensure!(seen.data_bytes == 0, "DATA sent despite a zero window");
    ensure!(!seen.closed && seen.goaway.is_none(), "the attack connection was closed: {}", answer(&seen));
    ensure!(seen.headers as u32 == STREAMS, "response headers of {} of {STREAMS} streams", seen.headers);
    t.finish("hostile_zero_window_reader", 1, u64::from(STREAMS), &answer(&seen)).await
}

// ---------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris() -> Result<()> {
    const EACH: usize = 50;
    const OBSERVE: Duration = Duration::from_secs(5);
    // Keep-alive and the idle timeout shortened so their effect is visible within the test.
    let t =
        Target::start(&["--keep-alive-interval", "1s", "--keep-alive-timeout", "1s", "--idle-timeout", "2s"]).await?;
    // A stream outliving the idle timeout: its connection must stay (no GOAWAY).
    let mut long = RawH2::connect(t.outbound(), &[], true).await?;
    long.handshake().await?;
    let long_block = grpc_request_block(&auth(), SERVER_STREAM, &[]);
    let mut req = headers_frame(1, &long_block, false);
    req.extend(frame(kind::DATA, flag::END_STREAM, 1, &hostile::grpc_probe_message_with_delay(b"long", 12, 500)));
    long.send(&req).await?;
    let block = grpc_request_block(&auth(), UNARY, &[]);
    let mut groups: Vec<(&str, Vec<RawH2>)> = Vec::new();
    // (a) preface + SETTINGS only, PINGs answered; (b) the same, PINGs unanswered;
    // (c) after the handshake a HEADERS frame without END_HEADERS and nothing after
    // (no PING ACK either: inside a header block only CONTINUATION is legal).
    for label in ["preface only, answers PINGs", "preface only, ignores PINGs", "unfinished HEADERS, silent"] {
        let mut conns = Vec::new();
        for _ in 0..EACH {
            let ack = label.contains("answers");
            let mut c = RawH2::connect_opts(t.outbound(), &[], true, ack).await?;
            if label.starts_with("unfinished") {
                c.handshake().await?;
                c.wait_for(Duration::from_secs(2), |s| s.settings_acks > 0).await;
                c.send(&frame(kind::HEADERS, 0, 1, &block[..block.len() / 2])).await?;
            }
            conns.push(c);
        }
        groups.push((label, conns));
    }
    tokio::time::sleep(OBSERVE).await;
    let mut answers = Vec::new();
    for (label, conns) in &groups {
        let closed = conns.iter().filter(|c| c.seen().closed).count();
        let example = conns[0].seen();
        answers.push(format!("{label}: {closed}/{EACH} closed by the proxy within {OBSERVE:?} ({})", answer(&example)));
    }
    for a in &answers {
        note(&format!("slowloris: {a}"));
    }
    note(
        "slowloris: peers that answer PINGs but start no request are closed by the idle timeout (--idle-timeout, \
         10 min by default; 2 s in this test) with GOAWAY; peers that stop answering PINGs by keep-alive \
         (--keep-alive-interval/--keep-alive-timeout, 20 s + 20 s by default; 1 s + 1 s here)",
    );
    for (label, conns) in &groups {
        let closed = conns.iter().filter(|c| c.seen().closed).count();
        ensure!(closed == EACH, "{label}: only {closed}/{EACH} closed within {OBSERVE:?}");
    }
    // 12 answers 500 ms apart: the stream is still open after the 5 s observation.
    let long_seen = long.seen();
    note(&format!("slowloris: a 6 s server stream on its own connection meanwhile: {}", answer(&long_seen)));
    ensure!(long_seen.goaway.is_none() && !long_seen.closed, "open stream's connection closed as idle");
    ensure!(long_seen.data_bytes > 0, "the long stream got no answers");
    let (_, answering) = &groups[0];
    let told = answering.iter().filter(|c| c.seen().goaway.is_some()).count();
    ensure!(told == EACH, "idle peers closed without GOAWAY: {}/{EACH} got one", told);
    t.finish("hostile_slowloris", (3 * EACH) as u64, EACH as u64, &answers.join(" | ")).await
}

// ---------------------------------------------------------------------------
// A gRPC length prefix claiming 4 GiB
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_length_prefix_of_4_gib() -> Result<()> {
    let t = Target::start(&[]).await?;
    let tcp = TcpStream::connect(t.outbound()).await?;
    type Chunks = tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, StreamBody<Chunks>>(TokioExecutor::new(), TokioIo::new(tcp))
            .await?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = http::Request::post(format!("http://{}{UNARY}", auth()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)))?;
    // The prefix claims 0xFFFFFFFF bytes; then up to 64 MiB of filler, 64 KiB at a time.
    let feeder = tokio::spawn(async move {
        let mut first = vec![0u8, 0xff, 0xff, 0xff, 0xff];
        first.extend_from_slice(&[0u8; 64 * 1024]);
        let mut sent = first.len();
        if tx.send(Ok(Frame::data(Bytes::from(first)))).await.is_err() {
            return sent;
        }
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        for _ in 0..1024 {
            match tokio::time::timeout(Duration::from_secs(2), tx.send(Ok(Frame::data(chunk.clone())))).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        sent
    });
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .context("no response within 10 s")??;
    let http_status = resp.status();
    let mut grpc_status = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut grpc_message = resp.headers().get("grpc-message").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if grpc_status.is_none() {
        let mut body = resp.into_body();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(f) = body.frame().await {
                let f = f?;
                if let Some(tr) = f.trailers_ref() {
                    grpc_status = tr.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    grpc_message = tr.get("grpc-message").and_then(|v| v.to_str().ok()).map(str::to_owned);
                }
            }
            anyhow::Ok(())
        })
        .await;
        if read.is_err() {
            bail!("response body did not end within 10 s");
        }
    }
    let took = started.elapsed();
    feeder.abort();
    let status = format!("HTTP {http_status}, grpc-status {grpc_status:?} ({grpc_message:?}) after {took:.1?}");
    note(&format!("4 GiB length prefix: {status}"));
    let code: i32 = grpc_status.as_deref().unwrap_or("-1").parse().unwrap_or(-1);
    ensure!(code > 0, "no error status: {status}");
    ensure!(took < Duration::from_secs(5), "error took {took:?}");
    t.finish("hostile_grpc_4gib_prefix", 1, 1, &status).await
}

// ---------------------------------------------------------------------------
// More streams than --max-concurrent-streams
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_max_concurrent_streams() -> Result<()> {
    const LIMIT: u32 = 10;
    const OPEN: u32 = 50;
    let t = Target::start(&["--max-concurrent-streams", "10"]).await?;
    let mut conn = RawH2::connect(t.outbound(), &[], true).await?;
    conn.handshake().await?;
    conn.wait_for(Duration::from_secs(2), |s| s.settings_acks > 0).await;
    let block = grpc_request_block(&auth(), UNARY, &[]);
    let mut buf = Vec::new();
    // Request bodies never end: every accepted stream stays open.
    for i in 0..OPEN {
        buf.extend_from_slice(&headers_frame(1 + 2 * i, &block, false));
    }
    conn.send(&buf).await?;
    let seen =
        conn.wait_for(Duration::from_secs(3), |s| s.rst(hostile::REFUSED_STREAM) >= (OPEN - LIMIT) as usize).await;
    note(&format!("{OPEN} streams opened with --max-concurrent-streams {LIMIT}: {}", answer(&seen)));
    ensure!(
        seen.rst(hostile::REFUSED_STREAM) == (OPEN - LIMIT) as usize,
        "expected {} REFUSED_STREAM: {}",
        OPEN - LIMIT,
        answer(&seen)
    );
    ensure!(seen.goaway.is_none(), "connection closed: {}", answer(&seen));
    t.finish("hostile_max_concurrent_streams", u64::from(OPEN - LIMIT), u64::from(OPEN), &answer(&seen)).await
}

// ---------------------------------------------------------------------------
// Admin endpoint: configuration dumps only over loopback
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_only_on_loopback_probe_listener_limited() -> Result<()> {
    if !skip_unless_root("admin_routes_only_on_loopback_probe_listener_limited") {
        return Ok(());
    }
    let net = TestNet::create()?;
    let mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["echo-service"]))?;
    let ports = free_addrs(4)?;
    let admin_port = ports[2].port();
    let probe = ports[3];
    let log_dir = tempfile::tempdir()?;
    let log = std::fs::File::create(log_dir.path().join("proxy.log"))?;
    let mut child = tokio::process::Command::new(proxy_bin()?)
        .arg("--config-dir")
        .arg(mesh.path())
        .args(["--outbound-addr", &ports[0].to_string(), "--inbound-addr", &ports[1].to_string()])
        .args(["--admin-addr", &format!("0.0.0.0:{admin_port}"), "--probe-addr", &probe.to_string()])
        .args(["--namespace", NS])
        .env_remove("KUBECONFIG")
        .env_remove("STRAIT_CONFIG_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok((200, _)) = http1_get(loopback, "/ready").await {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("proxy exited: {status}");
        }
        ensure!(Instant::now() < deadline, "proxy not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let external = SocketAddr::from((net.addr(), admin_port));
    let mut results = Vec::new();
    let mut check = async |addr: SocketAddr, path: &str, want: u16| -> Result<()> {
        let (code, body) = http1_get(addr, path).await?;
        results.push(format!("{addr}{path} -> {code}"));
        ensure!(code == want, "GET {path} via {addr}: HTTP {code} (want {want}): {}", body.trim());
        Ok(())
    };
    check(external, "/routes", 403).await?;
    check(external, "/routes/query?authority=echo-service.app:50051&path=/a/b", 403).await?;
    check(loopback, "/routes", 200).await?;
    check(external, "/ready", 200).await?;
    for path in ["/ready", "/live", "/metrics"] {
        check(probe, path, 200).await?;
    }
    check(probe, "/routes", 404).await?;
    check(probe, "/routes/query", 404).await?;
    let rss = hostile::rss_kib(child.id().unwrap_or(0)).unwrap_or(0);
    figures("admin_loopback_only", 0, results.len() as u64, 0, rss, &results.join(", "));
    let _ = child.kill().await;
    Ok(())
}
