//! Harness for the fault-injection (`tests/faults.rs`) and hostile-input
//! (`tests/hostile.rs`) tests.
//!
//! - [`RssSampler`]: samples a process's `VmRSS` from `/proc/<pid>/status` on a
//!   background thread and keeps the peak.
//! - [`figures`]: the one-line summary every test prints (stdout *and* the stderr
//!   handle, because libtest captures the output of passing tests).
//! - [`RawH2`]: a hand-written HTTP/2 client over TCP that writes whatever frames a
//!   test asks for (floods, broken header blocks, zero windows) and records what the
//!   server answered (GOAWAY code, RST_STREAM codes, HEADERS, EOF).
//! - [`Background`]: a well-behaved tonic client running unary calls on its own
//!   connection throughout an attack, counting sent and failed calls.
//! - [`DemoServer`]: the `strait-demo-server` binary as a child process that can be
//!   SIGKILLed and restarted on the same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use strait_demo::pb::echo_v1::echo_client::EchoClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::{probe, target_bin};

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

/// `VmRSS` of process `pid` in KiB (None once it is gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples `VmRSS` of a process every 10 ms until dropped; keeps the peak.
pub struct RssSampler {
    pid: u32,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match rss_kib(pid) {
                    Some(kib) => {
                        p.fetch_max(kib, Ordering::Relaxed);
                    }
                    None => return,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler { pid, peak, stop, thread: Some(thread) }
    }

    /// Peak RSS seen so far (KiB).
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(self.now_kib())
    }

    /// Current RSS (KiB).
    pub fn now_kib(&self) -> u64 {
        rss_kib(self.pid).unwrap_or(0)
    }

    /// Forgets the peak (e.g. after a warm-up phase).
    pub fn reset_peak(&self) {
        self.peak.store(self.now_kib(), Ordering::Relaxed);
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The figure line
// ---------------------------------------------------------------------------

/// Prints `FIGURES <test>: faults injected N, requests sent N, requests failed N,
/// memory peak X MiB; <extra>` to stdout and straight to the stderr handle.
pub fn figures(test: &str, faults: u64, sent: u64, failed: u64, peak_kib: u64, extra: &str) {
    let line = format!(
        "FIGURES {test}: faults injected {faults}, requests sent {sent}, requests failed {failed}, \
         memory peak {:.1} MiB (proxy VmRSS){}{extra}\n",
        peak_kib as f64 / 1024.0,
        if extra.is_empty() { "" } else { "; " },
    );
    print!("{line}");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

/// A note line, also to both handles.
pub fn note(text: &str) {
    let line = format!("{text}\n");
    print!("{line}");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

// ---------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------

/// `kill -<signal> <pid>`.
pub fn kill(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid}: {status}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// strait-demo-server as a process
// ---------------------------------------------------------------------------

/// A `strait-demo-server --grpc <addr>` child process (killed when dropped).
pub struct DemoServer {
    child: Child,
    addr: SocketAddr,
    name: String,
}

pub fn demo_server_bin() -> Result<PathBuf> {
    target_bin("strait-demo-server", "STRAIT_DEMO_SERVER_BIN")
}

impl DemoServer {
    /// Starts backend `name` on `addr` and waits (≤ 10 s) until it accepts connections.
    pub async fn start(name: &str, addr: SocketAddr) -> Result<Self> {
        let bin = demo_server_bin()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(&bin)
                .args(["--name", name, "--grpc", &addr.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            loop {
                if let Some(status) = child.try_wait()? {
                    // Bind failure (the port is still held, e.g. by a dying process): retry.
                    if Instant::now() > deadline {
                        bail!("strait-demo-server {name} on {addr} exited: {status}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                if TcpStream::connect(addr).await.is_ok() {
                    return Ok(DemoServer { child, addr, name: name.to_owned() });
                }
                if Instant::now() > deadline {
                    bail!("strait-demo-server {name} on {addr} not accepting after 10 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub async fn sigkill(&mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            kill(pid, "KILL")?;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Background traffic on its own connection
// ---------------------------------------------------------------------------

/// A well-behaved tonic client making Echo/Unary calls back to back on one
/// channel (its own TCP connection) from `workers` tasks, until stopped or
/// `max_calls` were made. Every call has a 5 s deadline.
pub struct Background {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    pub fn start(channel: Channel, workers: usize, pace: Duration, max_calls: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|w| {
                let (stop, sent, failed, errors) = (stop.clone(), sent.clone(), failed.clone(), errors.clone());
                let mut client = EchoClient::new(channel.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(pace.max(Duration::from_micros(100)));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let n = sent.fetch_add(1, Ordering::Relaxed);
                        if n >= max_calls {
                            sent.fetch_sub(1, Ordering::Relaxed);
                            break;
                        }
                        let mut req = tonic::Request::new(probe(&format!("bg-{w}-{n}")));
                        req.set_timeout(Duration::from_secs(5));
                        // Bounded on the client side too: a call stalled after its
                        // response headers is not covered by grpc-timeout.
                        let result = match tokio::time::timeout(Duration::from_secs(6), client.unary(req)).await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
                            Err(_) => Err("no answer within 6 s (stalled)".to_owned()),
                        };
                        if let Err(msg) = result {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut e) = errors.lock()
                                && e.len() < 5
                            {
                                e.push(msg);
                            }
                        }
                    }
                })
            })
            .collect();
        Background { stop, sent, failed, errors, tasks }
    }

    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the workers and waits for their last calls: (sent, failed, first errors).
    pub async fn stop(mut self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), errors)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP/2
// ---------------------------------------------------------------------------

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// HTTP/2 error codes by name (for reports).
pub fn reason_name(code: u32) -> &'static str {
    match code {
        0 => "NO_ERROR",
        1 => "PROTOCOL_ERROR",
        2 => "INTERNAL_ERROR",
        3 => "FLOW_CONTROL_ERROR",
        4 => "SETTINGS_TIMEOUT",
        5 => "STREAM_CLOSED",
        6 => "FRAME_SIZE_ERROR",
        7 => "REFUSED_STREAM",
        8 => "CANCEL",
        9 => "COMPRESSION_ERROR",
        10 => "CONNECT_ERROR",
        11 => "ENHANCE_YOUR_CALM",
        12 => "INADEQUATE_SECURITY",
        13 => "HTTP_1_1_REQUIRED",
        _ => "UNKNOWN",
    }
}

pub const NO_ERROR: u32 = 0;
pub const PROTOCOL_ERROR: u32 = 1;
pub const STREAM_CLOSED: u32 = 5;
pub const REFUSED_STREAM: u32 = 7;
pub const CANCEL: u32 = 8;
pub const ENHANCE_YOUR_CALM: u32 = 11;

/// One frame: 9-byte header plus payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < (1 << 24), "frame payload too long");
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with `(id, value)` pairs.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(kind::SETTINGS, 0, 0, &p)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn ping(data: u64) -> Vec<u8> {
    frame(kind::PING, 0, 0, &data.to_be_bytes())
}

pub fn window_update(stream: u32, inc: u32) -> Vec<u8> {
    frame(kind::WINDOW_UPDATE, 0, stream, &inc.to_be_bytes())
}

/// HPACK integer with an `n`-bit prefix; `first` carries the high bits of the first byte.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// HPACK string literal, no Huffman.
pub fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Literal header field without indexing, new name.
pub fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_str(out, name);
    hpack_str(out, value);
}

/// Literal header field *with incremental indexing* (enters the dynamic table), new name.
pub fn hpack_literal_indexed(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x40);
    hpack_str(out, name);
    hpack_str(out, value);
}

/// Header block of a gRPC request: POST, http, `path`, `authority`,
/// `content-type: application/grpc`, `te: trailers`, then `extra`.
pub fn grpc_request_block(authority: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.push(0x83); // :method POST (static 3)
    b.push(0x86); // :scheme http (static 6)
    b.push(0x04); // :path, literal without indexing, name static 4
    hpack_str(&mut b, path.as_bytes());
    b.push(0x01); // :authority, literal without indexing, name static 1
    hpack_str(&mut b, authority.as_bytes());
    hpack_literal(&mut b, b"content-type", b"application/grpc");
    hpack_literal(&mut b, b"te", b"trailers");
    for (n, v) in extra {
        hpack_literal(&mut b, n.as_bytes(), v.as_bytes());
    }
    b
}

/// A length-prefixed gRPC message holding a `strait.demo.v1.Probe`.
pub fn grpc_probe_message(payload: &[u8], stream_count: u32) -> Vec<u8> {
    grpc_probe_message_with_delay(payload, stream_count, 0)
}

/// Protobuf base-128 varint.
fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// [`grpc_probe_message`] asking the backend to wait `delay_ms` before each answer.
pub fn grpc_probe_message_with_delay(payload: &[u8], stream_count: u32, delay_ms: u32) -> Vec<u8> {
    // Probe fields: 1 payload (bytes), 2 stream_count, 3 delay_ms (varints).
    let mut msg = Vec::new();
    if !payload.is_empty() {
        msg.push(0x0a);
        push_varint(&mut msg, payload.len() as u64);
        msg.extend_from_slice(payload);
    }
    for (tag, value) in [(0x10, stream_count), (0x18, delay_ms)] {
        if value > 0 {
            msg.push(tag);
            push_varint(&mut msg, u64::from(value));
        }
    }
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

/// What the server sent on a [`RawH2`] connection.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub frames: usize,
    /// (last stream id, error code, debug data) of the first GOAWAY.
    pub goaway: Option<(u32, u32, String)>,
    pub goaways: usize,
    pub rst_by_code: BTreeMap<u32, usize>,
    /// HEADERS frames (responses and trailers).
    pub headers: usize,
    /// Responses whose block carries `:status 431` (literal or Huffman).
    pub status_431: usize,
    pub data_bytes: u64,
    pub settings: usize,
    pub settings_acks: usize,
    pub pings: usize,
    pub ping_acks: usize,
    /// The server closed the connection (EOF or reset).
    pub closed: bool,
    pub closed_after: Option<Duration>,
    pub read_error: Option<String>,
}

impl Seen {
    pub fn rst(&self, code: u32) -> usize {
        self.rst_by_code.get(&code).copied().unwrap_or(0)
    }

    pub fn goaway_code(&self) -> Option<u32> {
        self.goaway.as_ref().map(|g| g.1)
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        let goaway = match &self.goaway {
            Some((last, code, debug)) => {
                format!("GOAWAY {}({code}) last_stream={last} debug={debug:?}", reason_name(*code))
            }
            None => "no GOAWAY".into(),
        };
        let rst: Vec<String> = self.rst_by_code.iter().map(|(c, n)| format!("{}x{n}", reason_name(*c))).collect();
        format!(
            "{goaway}; RST_STREAM [{}]; HEADERS {} (431: {}); DATA {} B; PING acks {}; SETTINGS {} / acks {}; {}",
            rst.join(", "),
            self.headers,
            self.status_431,
            self.data_bytes,
            self.ping_acks,
            self.settings,
            self.settings_acks,
            match (self.closed, self.closed_after) {
                (true, Some(d)) => format!("connection closed by the proxy after {d:.1?}"),
                (true, None) => "connection closed by the proxy".into(),
                _ => "connection still open".into(),
            }
        )
    }
}

/// A raw HTTP/2 connection: the writer is the test's, a reader task records what
/// the server sends (and ACKs its SETTINGS, so the handshake completes normally).
pub struct RawH2 {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    seen: Arc<Mutex<Seen>>,
    reader: tokio::task::JoinHandle<()>,
    /// Bytes written so far.
    pub written: u64,
    write_failed: bool,
}

impl RawH2 {
    /// Connects, sends the preface and a SETTINGS frame with `settings` (may be
    /// empty). `read` false: the reader stays idle (never reads the socket) — a
    /// peer that does not read at all.
    pub async fn connect(addr: SocketAddr, settings_pairs: &[(u16, u32)], read: bool) -> Result<Self> {
        Self::connect_opts(addr, settings_pairs, read, true).await
    }

    /// Like [`RawH2::connect`]; `ack_pings` false: the server's PINGs go unanswered
    /// (a peer that is gone without closing, as far as keep-alive can tell).
    pub async fn connect_opts(
        addr: SocketAddr,
        settings_pairs: &[(u16, u32)],
        read: bool,
        ack_pings: bool,
    ) -> Result<Self> {
        let tcp = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        let _ = tcp.set_nodelay(true);
        let (mut rd, mut wr) = tcp.into_split();
        // Preface first: the server sends its SETTINGS at once, and the reader's ACK
        // must not overtake the preface.
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&settings(settings_pairs));
        wr.write_all(&hello).await.context("writing the preface")?;
        let writer = Arc::new(tokio::sync::Mutex::new(wr));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (w, s) = (writer.clone(), seen.clone());
        let started = Instant::now();
        let reader = tokio::spawn(async move {
            if !read {
                std::future::pending::<()>().await;
            }
            let mut head = [0u8; 9];
            loop {
                if let Err(e) = rd.read_exact(&mut head).await {
                    if let Ok(mut s) = s.lock() {
                        s.closed = true;
                        s.closed_after = Some(started.elapsed());
                        if e.kind() != std::io::ErrorKind::UnexpectedEof {
                            s.read_error = Some(e.to_string());
                        }
                    }
                    return;
                }
                let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
                let (ty, flags) = (head[3], head[4]);
                let mut payload = vec![0u8; len];
                if let Err(e) = rd.read_exact(&mut payload).await {
                    if let Ok(mut s) = s.lock() {
                        s.closed = true;
                        s.closed_after = Some(started.elapsed());
                        s.read_error = Some(e.to_string());
                    }
                    return;
                }
                let mut ack_settings = false;
                let mut ack_ping = None;
                if let Ok(mut s) = s.lock() {
                    s.frames += 1;
                    match ty {
                        kind::DATA => s.data_bytes += len as u64,
                        kind::HEADERS | kind::CONTINUATION => {
                            if ty == kind::HEADERS {
                                s.headers += 1;
                            }
                            let huff_431 = [0x69u8, 0x90, 0xff];
                            if payload.windows(3).any(|w| w == b"431" || w == huff_431) {
                                s.status_431 += 1;
                            }
                        }
                        kind::RST_STREAM if len >= 4 => {
                            let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                            *s.rst_by_code.entry(code).or_default() += 1;
                        }
                        kind::SETTINGS => {
                            if flags & flag::ACK != 0 {
                                s.settings_acks += 1;
                            } else {
                                s.settings += 1;
                                ack_settings = true;
                            }
                        }
                        kind::PING => {
                            if flags & flag::ACK != 0 {
                                s.ping_acks += 1;
                            } else {
                                s.pings += 1;
                                if ack_pings {
                                    ack_ping = Some(payload.clone());
                                }
                            }
                        }
                        kind::GOAWAY if len >= 8 => {
                            s.goaways += 1;
                            if s.goaway.is_none() {
                                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                                let debug = String::from_utf8_lossy(&payload[8..]).into_owned();
                                s.goaway = Some((last & 0x7fff_ffff, code, debug));
                            }
                        }
                        _ => {}
                    }
                }
                if ack_settings {
                    let mut w = w.lock().await;
                    let _ = w.write_all(&frame(kind::SETTINGS, flag::ACK, 0, &[])).await;
                }
                if let Some(data) = ack_ping {
                    let mut w = w.lock().await;
                    let _ = w.write_all(&frame(kind::PING, flag::ACK, 0, &data)).await;
                }
            }
        });
        Ok(RawH2 { writer, seen, reader, written: hello.len() as u64, write_failed: false })
    }

    /// Writes `bytes`; false (and remembered) once the server has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<bool> {
        if self.write_failed {
            return Ok(false);
        }
        let mut w = self.writer.lock().await;
        match tokio::time::timeout(Duration::from_secs(5), w.write_all(bytes)).await {
            Ok(Ok(())) => {
                self.written += bytes.len() as u64;
                Ok(true)
            }
            Ok(Err(_)) => {
                self.write_failed = true;
                Ok(false)
            }
            // The server stopped reading (flow control / backpressure): report as not sent.
            Err(_) => Ok(false),
        }
    }

    /// Whether a write failed (the server closed or reset the connection).
    pub fn write_failed(&self) -> bool {
        self.write_failed
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits up to `timeout` for `cond` on what was seen; returns the last snapshot.
    pub async fn wait_for(&self, timeout: Duration, cond: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.seen();
            if cond(&s) || Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the server sent its SETTINGS (handshake done).
    pub async fn handshake(&self) -> Result<()> {
        let s = self.wait_for(Duration::from_secs(5), |s| s.settings > 0 || s.closed).await;
        if s.settings == 0 {
            bail!("no SETTINGS from the server: {}", s.describe());
        }
        Ok(())
    }
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

// ---------------------------------------------------------------------------
// File-mode configuration helpers
// ---------------------------------------------------------------------------

/// One EndpointSlice endpoint with explicit conditions.
#[derive(Clone, Debug)]
pub struct Ep {
    pub addr: SocketAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Ep {
    pub fn ready(addr: SocketAddr) -> Self {
        Ep { addr, ready: true, serving: true, terminating: false }
    }

    pub fn terminating(addr: SocketAddr) -> Self {
        Ep { addr, ready: false, serving: true, terminating: true }
    }
}

/// EndpointSlices (one per port, port name `grpc`) for Service `namespace/service`
/// with explicit conditions per endpoint.
pub fn endpoint_slices_with_conditions(namespace: &str, service: &str, eps: &[Ep]) -> String {
    let mut by_port: BTreeMap<u16, Vec<&Ep>> = BTreeMap::new();
    for e in eps {
        by_port.entry(e.addr.port()).or_default().push(e);
    }
    let mut out = String::new();
    for (i, (port, eps)) in by_port.into_iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{i}\n  \
             namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\n\
             ports:\n  - name: grpc\n    port: {port}\n    protocol: TCP\nendpoints:\n"
        ));
        for e in eps {
            out.push_str(&format!(
                "  - addresses: [\"{}\"]\n    conditions:\n      ready: {}\n      serving: {}\n      terminating: {}\n",
                e.addr.ip(),
                e.ready,
                e.serving,
                e.terminating
            ));
        }
    }
    out
}

/// A GRPCRoute `name` in `namespace` whose parent is Service `parent` (port 50051),
/// one rule with weighted `backends`, and a `ResponseHeaderModifier` setting
/// `x-route-version: <version>` (so a test can see which generation served a call).
pub fn weighted_route_yaml(
    namespace: &str,
    name: &str,
    parent: &str,
    backends: &[(&str, u32)],
    version: &str,
) -> String {
    let mut refs = String::new();
    for (b, w) in backends {
        refs.push_str(&format!("        - name: {b}\n          port: {}\n          weight: {w}\n", crate::PORT));
    }
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  parentRefs:\n    - group: \"\"\n      kind: Service\n      name: {parent}\n      port: {port}\n  rules:\n    \
         - filters:\n        - type: ResponseHeaderModifier\n          responseHeaderModifier:\n            set:\n              \
         - name: x-route-version\n                value: \"{version}\"\n      backendRefs:\n{refs}",
        port = crate::PORT
    )
}

/// Lines of `path` containing `needle`.
pub fn count_log_lines(path: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers() {
        let mut v = Vec::new();
        hpack_int(&mut v, 0, 5, 10);
        assert_eq!(v, [10]);
        v.clear();
        hpack_int(&mut v, 0, 5, 1337);
        assert_eq!(v, [31, 154, 10]);
        v.clear();
        hpack_int(&mut v, 0x80, 7, 127);
        assert_eq!(v, [0xff, 0]);
    }

    #[test]
    fn probe_message() {
        let m = grpc_probe_message(b"ab", 300);
        assert_eq!(m, [0, 0, 0, 0, 7, 0x0a, 2, b'a', b'b', 0x10, 0xac, 0x02]);
    }
}
