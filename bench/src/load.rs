//! The load generator: raw HTTP/2 (the `h2` crate) gRPC calls with prebuilt request
//! frames, open loop at a constant rate (latency from the *intended* send time, so a
//! stalled server is charged for the requests it delayed: no coordinated omission) or
//! closed loop with N calls in flight (saturation throughput).
//!
//! Designed for a single-threaded runtime pinned to its own core: one task paces the
//! sends, each call is a task, histograms are plain `Mutex`es (uncontended).
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use h2::client::SendRequest;
use hdrhistogram::Histogram;
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strait_demo::Probe;
use tokio::net::TcpStream;

/// Echo service method paths of the demo backend.
pub const UNARY_PATH: &str = "/strait.test.v1.Echo/Unary";
pub const STREAM_PATH: &str = "/strait.test.v1.Echo/ServerStream";
/// One call may take at most this long before it counts as an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Open loop: calls still in flight this long after the last send count as errors.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Open loop: at most this many calls in flight; beyond it a send counts as an error
/// (its latency would be unbounded) instead of growing memory without limit.
const MAX_IN_FLIGHT: u64 = 20_000;

/// What one call sends and expects.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: &'static str,
    pub path: &'static str,
    /// The gRPC-framed request message (5-byte prefix + protobuf).
    pub frame: Bytes,
    /// Response messages a successful call returns.
    pub messages: u32,
}

impl Workload {
    /// Unary Echo with a `payload_len`-byte payload (the answer echoes it back).
    pub fn unary(name: &'static str, payload_len: usize) -> Self {
        let probe = Probe { payload: "x".repeat(payload_len), ..Probe::default() };
        Workload { name, path: UNARY_PATH, frame: grpc_frame(&probe), messages: 1 }
    }

    /// The benchmark's headline call: unary, ~100 B each way (saturation, the high rate,
    /// warm-ups and probes use it too).
    pub fn unary_100b() -> Self {
        Workload::unary("unary_100B", 100)
    }

    /// ServerStream Echo: `count` answers of `payload_len` bytes each.
    pub fn stream(name: &'static str, payload_len: usize, count: u32) -> Self {
        let probe = Probe { payload: "x".repeat(payload_len), stream_count: count, ..Probe::default() };
        Workload { name, path: STREAM_PATH, frame: grpc_frame(&probe), messages: count }
    }

    /// The benchmark's three calls, in the order its report lists them.
    pub fn all() -> [Workload; 3] {
        [Workload::unary_100b(), Workload::unary("unary_16KiB", 16 * 1024), Workload::stream("stream_10x100B", 100, 10)]
    }

    /// One of [`Workload::all`] by name.
    pub fn by_name(name: &str) -> Option<Workload> {
        Workload::all().into_iter().find(|w| w.name == name)
    }
}

/// gRPC length-prefixed message: flag 0 (uncompressed), u32 big-endian length, bytes.
pub fn grpc_frame(msg: &impl Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Where calls go: a TCP address and the `:authority` to send (a proxy routes on it).
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub authority: String,
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Constant arrival rate (calls per second).
    Open { rate: f64 },
    /// This many calls in flight, each started when the previous one ends.
    Closed { concurrency: usize },
    /// Constant arrival rate per target (calls per second), all targets at once, taking
    /// turns call by call ([`run_open_by_call`]).
    OpenByCall { rate: f64 },
}

/// Result of one run.
pub struct RunResult {
    /// Latency in nanoseconds (open loop: from the intended send time).
    pub latency: Histogram<u64>,
    /// Open loop: how late sends left versus their schedule (ns): validates the pacing.
    pub send_lag: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub first_error: Option<String>,
    /// [`run_open_by_call`] only: the latency (ns) of this target's call in each cycle,
    /// `None` where it failed; empty for the other modes.
    pub per_cycle: Vec<Option<u64>>,
}

impl RunResult {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 ns .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

/// A pool of HTTP/2 connections to one target.
pub struct Conns {
    senders: Vec<SendRequest<Bytes>>,
    uri_prefix: String,
}

impl Conns {
    pub async fn connect(target: &Target, n: usize) -> Result<Self> {
        let mut senders = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target.addr))
                .await
                .map_err(|_| anyhow!("connect {} timed out", target.addr))?
                .with_context(|| format!("connect {}", target.addr))?;
            tcp.set_nodelay(true)?;
            let (send, conn) = h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(8 << 20)
                .max_concurrent_reset_streams(1000)
                .handshake::<_, Bytes>(tcp)
                .await
                .with_context(|| format!("h2 handshake with {}", target.addr))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            senders.push(send);
        }
        Ok(Conns { senders, uri_prefix: format!("http://{}", target.authority) })
    }

    fn sender(&self, i: u64) -> SendRequest<Bytes> {
        self.senders[(i % self.senders.len() as u64) as usize].clone()
    }
}

/// One gRPC call; Ok when the status is 0 and the expected number of messages arrived.
pub async fn call(send: SendRequest<Bytes>, uri: &str, w: &Workload) -> Result<()> {
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let mut send = send.ready().await?;
    let (resp, mut stream) = send.send_request(req, false)?;
    stream.send_data(w.frame.clone(), true)?;
    let resp = resp.await?;
    if resp.status() != http::StatusCode::OK {
        bail!("HTTP {}", resp.status());
    }
    if let Some(s) = resp.headers().get("grpc-status") {
        // Trailers-only response: an error (a success always carries a message).
        bail!("grpc-status {:?} in headers", s);
    }
    let mut body = resp.into_body();
    let mut bytes = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        bytes += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?.ok_or_else(|| anyhow!("no trailers"))?;
    match trailers.get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"0") => {}
        other => bail!("grpc-status {:?}: {:?}", other, trailers.get("grpc-message")),
    }
    if bytes < 5 * w.messages as usize {
        bail!("short response: {bytes} bytes for {} messages", w.messages);
    }
    Ok(())
}

/// Sleeps until `t` with sub-millisecond precision: the tokio timer (1 ms wheel) for
/// most of the wait, then yields (which also polls I/O) for the last stretch.
async fn pace_until(t: Instant) {
    for _ in 0..10_000_000u64 {
        let now = Instant::now();
        if now >= t {
            return;
        }
        let gap = t - now;
        if gap > Duration::from_micros(2500) {
            tokio::time::sleep_until((t - Duration::from_micros(1500)).into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

struct Shared {
    latency: Mutex<Histogram<u64>>,
    /// [`run_open_by_call`]: one slot per cycle.
    per_cycle: Mutex<Vec<Option<u64>>>,
    ok: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    /// `cycles` per-cycle slots (call by call; 0 for the other modes).
    fn new(cycles: usize) -> Arc<Self> {
        Arc::new(Shared {
            latency: Mutex::new(new_hist()),
            per_cycle: Mutex::new(vec![None; cycles]),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            first_error: Mutex::new(None),
        })
    }
    /// One finished call; `latency` is `None` for a call left out of the percentiles.
    /// Returns whether it succeeded.
    fn record(&self, r: Result<()>, latency: Option<Duration>) -> bool {
        match r {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if let (Some(latency), Ok(mut h)) = (latency, self.latency.lock()) {
                    h.saturating_record(latency.as_nanos() as u64);
                }
                true
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = self.first_error.lock()
                    && f.is_none()
                {
                    *f = Some(format!("{e:#}"));
                }
                false
            }
        }
    }
}

async fn timed_call(send: SendRequest<Bytes>, uri: &str, w: &Workload) -> Result<()> {
    match tokio::time::timeout(CALL_TIMEOUT, call(send, uri, w)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("call timed out after {CALL_TIMEOUT:?}")),
    }
}

/// Runs `w` against `target` for `duration` in `mode` over `conns` connections.
pub async fn run(target: &Target, w: &Workload, mode: Mode, duration: Duration, conns: usize) -> Result<RunResult> {
    let mut results = run_turns(std::slice::from_ref(target), w, mode, duration, duration, conns, 0).await?;
    results.pop().ok_or_else(|| anyhow!("no result"))
}

/// Runs `w` in `mode` against several targets taking turns of `slice`, `per_target`
/// each ([`run_open`] or [`run_closed_turns`]), or call by call ([`run_open_by_call`],
/// which shuffles its order from `seed`). One result per target, in order.
pub async fn run_turns(
    targets: &[Target],
    w: &Workload,
    mode: Mode,
    per_target: Duration,
    slice: Duration,
    conns: usize,
    seed: u64,
) -> Result<Vec<RunResult>> {
    match mode {
        Mode::Open { rate } => run_open(targets, w, rate, per_target, slice, conns).await,
        Mode::Closed { concurrency } => run_closed_turns(targets, w, concurrency, per_target, slice, conns).await,
        Mode::OpenByCall { rate } => run_open_by_call(targets, w, rate, per_target, conns, seed).await,
    }
}

/// Open loop at `rate` over several targets in turn, `per_target` of schedule each:
/// consecutive `slice`-long stretches of one constant-rate schedule go to the targets
/// in rotation (one target at a time, so they never compete), and slow drifts of the
/// machine (other tenants, CPU frequency) fall on every target alike instead of on
/// whichever ran during them. One result per target, in order.
pub async fn run_open(
    targets: &[Target],
    w: &Workload,
    rate: f64,
    per_target: Duration,
    slice: Duration,
    conns: usize,
) -> Result<Vec<RunResult>> {
    check_open(rate, targets)?;
    let pools = connect_all(targets, w, conns, 0).await?;
    let n = targets.len() as u64;
    let duration = per_target * n as u32;
    let total = (rate * duration.as_secs_f64()).ceil() as u64;
    let per_slice = ((rate * slice.as_secs_f64()).round() as u64).max(1);
    // Call `i` goes to consecutive turns of `per_slice` calls each. Taking turns leaves
    // each path idle for (n - 1) slices before its turn: its first call meets cold
    // caches, a gap no constant-rate stream has, and at one call in a hundred it would
    // set the p99 by itself. It still counts as a call (and as an error if it fails);
    // its latency is left out.
    let slot = |i: u64| Slot {
        target: ((i / per_slice) % n) as usize,
        warm_up: n > 1 && i.is_multiple_of(per_slice),
        cycle: None,
    };
    let (send_lag, started) = run_schedule(&pools, w, total, 1e9 / rate, duration, slot).await;
    // Each target was called for its share of the whole run.
    Ok(finish(pools, send_lag, |d| d.min(duration + DRAIN_TIMEOUT) / n as u32, started).await)
}

/// Open loop at `rate` calls per second *per target*, every target for all of
/// `per_target`, the targets taking turns call by call: one constant-rate schedule at
/// `rate × targets`, cut into cycles of one call per target in an order shuffled per
/// cycle (from `seed`). A stall of the machine, which lasts milliseconds, then falls on
/// every target's calls alike; with turns of 200 ms ([`run_open`]) it falls on one
/// target's turn and alone sets that target's p99. Every target sees a steady stream,
/// so no call is a warm-up. Each result carries its per-cycle latencies, aligned
/// across targets, for a paired bootstrap (`stats`).
pub async fn run_open_by_call(
    targets: &[Target],
    w: &Workload,
    rate: f64,
    per_target: Duration,
    conns: usize,
    seed: u64,
) -> Result<Vec<RunResult>> {
    check_open(rate, targets)?;
    let n = targets.len();
    let cycles = (rate * per_target.as_secs_f64()).ceil() as usize;
    let pools = connect_all(targets, w, conns, cycles).await?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let orders: Vec<Vec<usize>> = (0..cycles)
        .map(|_| {
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            order
        })
        .collect();
    let slot = |i: u64| {
        let (cycle, k) = (i as usize / n, i as usize % n);
        Slot { target: orders[cycle][k], warm_up: false, cycle: Some(cycle) }
    };
    let total = (cycles * n) as u64;
    let (send_lag, started) = run_schedule(&pools, w, total, 1e9 / (rate * n as f64), per_target, slot).await;
    // Every target was called throughout the run.
    Ok(finish(pools, send_lag, |d| d.min(per_target + DRAIN_TIMEOUT), started).await)
}

fn check_open(rate: f64, targets: &[Target]) -> Result<()> {
    if rate.is_nan() || rate <= 0.0 {
        bail!("rate must be positive");
    }
    if targets.is_empty() {
        bail!("no targets");
    }
    Ok(())
}

/// One target's connections, its request URI and its tally.
type Pool = (Conns, Arc<str>, Arc<Shared>);

/// Connects to every target; `cycles` > 0 gives each tally that many per-cycle slots.
async fn connect_all(targets: &[Target], w: &Workload, conns: usize, cycles: usize) -> Result<Vec<Pool>> {
    let mut pools = Vec::with_capacity(targets.len());
    for target in targets {
        let pool = Conns::connect(target, conns).await?;
        let uri: Arc<str> = format!("{}{}", pool.uri_prefix, w.path).into();
        pools.push((pool, uri, Shared::new(cycles)));
    }
    Ok(pools)
}

/// Where call `i` of an open-loop schedule goes.
#[derive(Clone, Copy)]
struct Slot {
    target: usize,
    /// Counted, but its latency is left out.
    warm_up: bool,
    /// Call by call: the cycle whose per-cycle slot the latency fills.
    cycle: Option<usize>,
}

/// Sends `total` calls `interval_ns` apart, call `i` to `slot(i)`, each its own task;
/// returns the send lag and the schedule's start. If the generator falls seconds behind
/// a schedule of `length`, the calls not sent count as errors of their targets.
async fn run_schedule(
    pools: &[Pool],
    w: &Workload,
    total: u64,
    interval_ns: f64,
    length: Duration,
    slot: impl Fn(u64) -> Slot,
) -> (Histogram<u64>, Instant) {
    let mut send_lag = new_hist();
    let started = Instant::now() + Duration::from_millis(5);
    let hard_end = started + length + Duration::from_secs(2);
    for i in 0..total {
        let Slot { target, warm_up, cycle } = slot(i);
        let (pool, uri, shared) = &pools[target];
        let intended = started + Duration::from_nanos((i as f64 * interval_ns) as u64);
        pace_until(intended).await;
        let now = Instant::now();
        if now > hard_end {
            for k in i..total {
                pools[slot(k).target].2.errors.fetch_add(1, Ordering::Relaxed);
            }
            break;
        }
        send_lag.saturating_record((now - intended).as_nanos() as u64);
        if shared.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            shared.record(Err(anyhow!("more than {MAX_IN_FLIGHT} calls in flight")), None);
            continue;
        }
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let (send, uri, w, shared) = (pool.sender(i), uri.clone(), w.clone(), shared.clone());
        tokio::spawn(async move {
            let r = timed_call(send, &uri, &w).await;
            let latency = intended.elapsed();
            if shared.record(r, (!warm_up).then_some(latency))
                && let Some(cycle) = cycle
                && let Ok(mut v) = shared.per_cycle.lock()
                && let Some(slot) = v.get_mut(cycle)
            {
                *slot = Some(latency.as_nanos() as u64);
            }
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    (send_lag, started)
}

/// Waits for the calls in flight (up to `DRAIN_TIMEOUT`; the rest count as errors) and
/// returns one result per target; `elapsed` turns the run's wall time into a target's.
async fn finish(
    pools: Vec<Pool>,
    send_lag: Histogram<u64>,
    elapsed: impl Fn(Duration) -> Duration,
    started: Instant,
) -> Vec<RunResult> {
    let in_flight = || pools.iter().map(|(_, _, s)| s.in_flight.load(Ordering::Relaxed)).sum::<u64>();
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while in_flight() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = elapsed(started.elapsed());
    pools
        .into_iter()
        .map(|(_, _, shared)| {
            let stuck = shared.in_flight.load(Ordering::Relaxed);
            shared.errors.fetch_add(stuck, Ordering::Relaxed);
            result(&shared, send_lag.clone(), elapsed)
        })
        .collect()
}

fn result(shared: &Shared, send_lag: Histogram<u64>, elapsed: Duration) -> RunResult {
    RunResult {
        per_cycle: shared.per_cycle.lock().map(|v| v.clone()).unwrap_or_default(),
        latency: shared.latency.lock().map(|h| h.clone()).unwrap_or_else(|_| new_hist()),
        send_lag,
        ok: shared.ok.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed,
        first_error: shared.first_error.lock().ok().and_then(|f| f.clone()),
    }
}

/// Closed loop over several targets in turn: `concurrency` calls kept in flight
/// against one target for a `slice`, then against the next, until each has had
/// `per_target`. As with [`run_open`], a slow drift of the machine falls on every target
/// alike instead of on whichever ran during it. A target's throughput is its completed
/// calls over the time of its own turns. One result per target, in order.
pub async fn run_closed_turns(
    targets: &[Target],
    w: &Workload,
    concurrency: usize,
    per_target: Duration,
    slice: Duration,
    conns: usize,
) -> Result<Vec<RunResult>> {
    if targets.is_empty() {
        bail!("no targets");
    }
    if slice.is_zero() || per_target.is_zero() {
        bail!("durations must be positive");
    }
    let mut pools = Vec::with_capacity(targets.len());
    for target in targets {
        let pool = Arc::new(Conns::connect(target, conns).await?);
        let uri: Arc<str> = format!("{}{}", pool.uri_prefix, w.path).into();
        pools.push((pool, uri, Shared::new(0), Duration::ZERO));
    }
    let mut remaining = per_target;
    while !remaining.is_zero() {
        // The last turn is cut to what is left of `per_target`.
        let this_slice = slice.min(remaining);
        remaining -= this_slice;
        for (pool, uri, shared, elapsed) in pools.iter_mut() {
            *elapsed += closed_turn(pool, uri, w, concurrency, this_slice, shared).await;
        }
    }
    Ok(pools.into_iter().map(|(_, _, shared, elapsed)| result(&shared, new_hist(), elapsed)).collect())
}

/// One closed-loop turn: `concurrency` workers each call, wait, call again until
/// `duration` has passed; returns how long the turn took, its last calls included.
async fn closed_turn(
    pool: &Arc<Conns>,
    uri: &Arc<str>,
    w: &Workload,
    concurrency: usize,
    duration: Duration,
    shared: &Arc<Shared>,
) -> Duration {
    let started = Instant::now();
    let end = started + duration;
    let mut workers = Vec::new();
    for k in 0..concurrency.max(1) {
        let (pool, uri, w, shared) = (pool.clone(), uri.clone(), w.clone(), shared.clone());
        workers.push(tokio::spawn(async move {
            let mut i = k as u64;
            // Bounded: at most duration / (1 µs) iterations, and by the clock.
            for _ in 0..(duration.as_micros() as u64).max(1) {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let r = timed_call(pool.sender(i), &uri, &w).await;
                shared.record(r, Some(t.elapsed()));
                i += concurrency as u64;
            }
        }));
    }
    for wk in workers {
        let _ = wk.await;
    }
    started.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn backend() -> Target {
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind")
            .with_nodelay(Some(true));
        let addr = incoming.local_addr().expect("local addr");
        tokio::spawn(crate::backend::serve_incoming(incoming));
        Target { addr, authority: "echo.test:50051".into() }
    }

    #[tokio::test]
    async fn interleaved_run_gives_each_target_its_share_of_one_schedule() {
        let targets = vec![backend().await, backend().await, backend().await];
        let w = Workload::unary_100b();
        let (rate, per_target) = (400.0, Duration::from_millis(500));
        let t0 = Instant::now();
        let results =
            run_open(&targets, &w, rate, per_target, Duration::from_millis(50), 1).await.expect("interleaved run");
        let wall = t0.elapsed();
        assert_eq!(results.len(), 3);
        for r in &results {
            // 400/s × 1.5 s = 600 calls in 20-call turns: 200 each, none lost.
            assert_eq!((r.ok, r.errors), (200, 0), "first error: {:?}", r.first_error);
            // The first call of each of the 10 turns warms the path up, unrecorded.
            assert_eq!(r.latency.len(), 190);
        }
        // One schedule at the given rate, not one per target in parallel or in a row
        // at three times the rate.
        assert!(wall >= Duration::from_millis(1400), "the schedule took {wall:?}");
    }

    #[tokio::test]
    async fn call_by_call_run_gives_every_target_the_rate_and_aligned_cycles() {
        let targets = vec![backend().await, backend().await, backend().await];
        let w = Workload::unary_100b();
        let t0 = Instant::now();
        let results = run_open_by_call(&targets, &w, 100.0, Duration::from_millis(600), 1, 7).await.expect("run");
        let wall = t0.elapsed();
        assert_eq!(results.len(), 3);
        for r in &results {
            // 100/s per target for 0.6 s: 60 calls each, every one recorded (no warm-up).
            assert_eq!((r.ok, r.errors, r.latency.len()), (60, 0, 60), "first error: {:?}", r.first_error);
            // One latency per cycle, the same cycles for every target.
            assert_eq!(r.per_cycle.len(), 60);
            assert!(r.per_cycle.iter().all(Option::is_some));
            assert!((r.throughput() - 100.0).abs() < 15.0, "{} rps", r.throughput());
        }
        // The targets ran at the same time (300 calls/s together), not one after another.
        assert!(wall >= Duration::from_millis(580) && wall < Duration::from_millis(1500), "the run took {wall:?}");
    }

    #[tokio::test]
    async fn call_by_call_run_leaves_failed_cycles_empty() {
        let live = backend().await;
        let w = Workload::unary_100b();
        // A target that answers HTTP/2 but not the Echo service: every call fails.
        let wrong = Workload { path: "/strait.test.v1.Echo/Missing", ..w.clone() };
        let r = run_open_by_call(std::slice::from_ref(&live), &wrong, 50.0, Duration::from_millis(200), 1, 1)
            .await
            .expect("run");
        assert_eq!((r[0].ok, r[0].errors), (0, 10), "{:?}", r[0].first_error);
        assert_eq!(r[0].per_cycle, vec![None; 10]);
    }

    #[tokio::test]
    async fn closed_loop_turns_give_each_target_its_own_time() {
        let targets = vec![backend().await, backend().await];
        let w = Workload::unary_100b();
        let (per_target, slice) = (Duration::from_millis(400), Duration::from_millis(100));
        let t0 = Instant::now();
        let results = run_closed_turns(&targets, &w, 4, per_target, slice, 1).await.expect("closed turns");
        let wall = t0.elapsed();
        assert_eq!(results.len(), 2);
        for r in &results {
            assert!(r.ok > 0 && r.errors == 0, "ok {} errors {}: {:?}", r.ok, r.errors, r.first_error);
            // Throughput is over the target's own turns, not over the whole run.
            assert!(r.elapsed >= per_target && r.elapsed < per_target + Duration::from_millis(300), "{:?}", r.elapsed);
            assert_eq!(r.latency.len(), r.ok);
        }
        // One target at a time: the turns follow each other.
        assert!(wall >= per_target * 2, "the run took {wall:?}");
    }

    #[tokio::test]
    async fn one_target_open_loop_records_every_call() {
        let target = backend().await;
        let w = Workload::unary_100b();
        let d = Duration::from_millis(500);
        let results = run_open(std::slice::from_ref(&target), &w, 200.0, d, d, 1).await.expect("run");
        let r = &results[0];
        // No turns, no idle gaps: no warm-up call is left out.
        assert_eq!((r.ok, r.errors, r.latency.len()), (100, 0, 100), "first error: {:?}", r.first_error);
    }

    #[tokio::test]
    async fn open_loop_rejects_a_rate_that_is_not_positive() {
        let target = Target { addr: "127.0.0.1:9".parse().expect("addr"), authority: "x".into() };
        let w = Workload::unary_100b();
        for rate in [0.0, -1.0, f64::NAN] {
            let err =
                run_open(std::slice::from_ref(&target), &w, rate, Duration::from_secs(1), Duration::from_secs(1), 1)
                    .await
                    .err()
                    .expect("rejected");
            assert!(err.to_string().contains("rate must be positive"), "{err}");
        }
    }
}
