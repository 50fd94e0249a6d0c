//! Upstream HTTP/2 connections, one multiplexed connection per endpoint, and the
//! load-aware endpoint choice: power of two choices over (EWMA latency x outstanding
//! requests).
//!
//! linkerd2-proxy uses a *peak* EWMA (a slower sample replaces the estimate at once).
//! Measured here with sequential callers, one scheduling hiccup then starved a healthy
//! replica for tens of seconds (343 vs 16 calls over two equal replicas), so Strait
//! uses a time-weighted EWMA with a 1 s horizon: sustained slowness moves traffic
//! within about a second, single spikes do not, and outstanding requests still
//! dominate under concurrency.
use crate::config::{H2Limits, MAX_H2_WINDOW};
use crate::upstream::{KeepAliveSettings, UpstreamConnection};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use foldhash::HashMap;
use h2::client::SendRequest;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::read_turns::ReadTurns;
use strait_routing::EndpointSet;

/// The receive window of a whole upstream connection: the protocol maximum.
const UPSTREAM_CONNECTION_WINDOW: u32 = MAX_H2_WINDOW;
/// Responses an upstream connection hands to `h2` before the streams they complete,
/// and the client connections those write to, run (see `read_turns`). With 64 calls
/// in flight on one connection, 8 and 16 measured the same (+20% closed-loop calls/s
/// over reading whole bursts), 4 a little less, 32 less again; 16 yields half as often
/// as 8.
const UPSTREAM_ENDS_PER_TURN: usize = 16;

/// Horizon of the latency estimate.
const EWMA_DECAY: Duration = Duration::from_secs(1);
/// Costs closer than this ratio count as equal and the pick between them is random:
/// latency noise between equally good endpoints must not pin sequential traffic to one
/// of them, while a difference of one outstanding request (2x) still decides.
const EQUAL_COST_RATIO: f64 = 1.25;
/// Connection attempts per request while some endpoint is known to work, and the
/// least a request makes when endpoints time out (see [`Pool::pick_attempt`]).
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// How long an endpoint that no routing table names (the pod's application behind a
/// transparent inbound redirect, a passthrough destination) keeps its connection and
/// latency state after its last request: configuration changes must not close the
/// connections in use, yet addresses used once must not accumulate forever.
pub const UNROUTED_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Handshake { addr: SocketAddr, source: h2::Error },
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    pub h2: H2Limits,
}

/// One endpoint: its connection and load statistics. Statistics outlive routing
/// changes because the pool is keyed by address, not by route.
pub struct Upstream {
    pub addr: SocketAddr,
    connection: ArcSwapOption<UpstreamConnection>,
    connecting: tokio::sync::Mutex<()>,
    pending: AtomicU32,
    /// EWMA round trip in nanoseconds; 0 = no sample yet.
    ewma_ns: AtomicU64,
    last_sample_ns: AtomicU64,
    consecutive_failures: AtomicU32,
    unhealthy_until_ns: AtomicU64,
    samples: AtomicU32,
    /// A request started since the last [`Pool::retain`] sweep (a flag, not a clock
    /// read, on the request path).
    used: AtomicBool,
    /// When a sweep last found the endpoint in use (or its creation): the start of its
    /// idle period, in [`Pool`] epoch nanoseconds.
    last_seen_in_use_ns: AtomicU64,
}

pub struct Pool {
    upstreams: RwLock<HashMap<SocketAddr, Arc<Upstream>>>,
    config: ClientConfig,
    epoch: Instant,
}

/// Decrements the endpoint's outstanding count when the request is done.
pub struct PendingGuard {
    upstream: Arc<Upstream>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.upstream.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(config: ClientConfig) -> Arc<Self> {
        Arc::new(Pool { upstreams: RwLock::new(HashMap::default()), config, epoch: Instant::now() })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn upstream(&self, addr: SocketAddr) -> Arc<Upstream> {
        if let Ok(map) = self.upstreams.read()
            && let Some(u) = map.get(&addr)
        {
            return u.clone();
        }
        let fresh = || {
            Arc::new(Upstream {
                addr,
                connection: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
                pending: AtomicU32::new(0),
                ewma_ns: AtomicU64::new(0),
                last_sample_ns: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                unhealthy_until_ns: AtomicU64::new(0),
                samples: AtomicU32::new(0),
                used: AtomicBool::new(true),
                last_seen_in_use_ns: AtomicU64::new(self.now_ns()),
            })
        };
        match self.upstreams.write() {
            Ok(mut map) => map.entry(addr).or_insert_with(fresh).clone(),
            Err(_) => fresh(),
        }
    }

    /// Drops endpoints (their connection and latency state) that no routing table names
    /// (`live`) and that have been idle — no request started, none outstanding — for
    /// [`UNROUTED_IDLE_TIMEOUT`]. Endpoints of the routing tables are always kept.
    /// Called on every configuration change and periodically, so the pool stays
    /// bounded by the tables plus the destinations used recently.
    pub fn retain(&self, live: &HashSet<SocketAddr>) {
        self.retain_at(live, self.now_ns(), UNROUTED_IDLE_TIMEOUT);
    }

    fn retain_at(&self, live: &HashSet<SocketAddr>, now_ns: u64, idle_timeout: Duration) {
        let Ok(mut map) = self.upstreams.write() else {
            return;
        };
        map.retain(|addr, u| {
            let in_use = u.used.swap(false, Ordering::Relaxed) || u.pending.load(Ordering::Relaxed) > 0;
            if in_use {
                u.last_seen_in_use_ns.store(now_ns, Ordering::Relaxed);
            }
            if live.contains(addr) || in_use {
                return true;
            }
            let idle = now_ns.saturating_sub(u.last_seen_in_use_ns.load(Ordering::Relaxed));
            let keep = u128::from(idle) < idle_timeout.as_nanos();
            if !keep {
                tracing::debug!(%addr, idle_secs = idle / 1_000_000_000, "idle unrouted endpoint dropped from the pool");
            }
            keep
        });
    }

    /// Endpoints the pool holds state (and perhaps a connection) for.
    pub fn endpoint_count(&self) -> usize {
        self.upstreams.read().map(|m| m.len()).unwrap_or(0)
    }

    fn is_healthy(&self, u: &Upstream, now: u64) -> bool {
        u.unhealthy_until_ns.load(Ordering::Relaxed) <= now
    }

    fn cost(&self, u: &Upstream, now: u64) -> f64 {
        let ewma = match u.ewma_ns.load(Ordering::Relaxed) {
            // No sample yet: cheapest, so every new endpoint is tried (and measured).
            0 => 0.0,
            n => {
                // Decay toward zero while idle so a once-slow endpoint is retried.
                let idle = now.saturating_sub(u.last_sample_ns.load(Ordering::Relaxed)) as f64;
                n as f64 * (-idle / EWMA_DECAY.as_nanos() as f64).exp()
            }
        };
        ewma * f64::from(u.pending.load(Ordering::Relaxed) + 1)
    }

    /// Power of two choices: two random endpoints, the cheaper wins. Endpoints in
    /// connect-failure backoff are avoided while any other is available; `exclude`
    /// (an endpoint that just failed) likewise.
    pub fn pick(&self, set: &EndpointSet, exclude: Option<SocketAddr>) -> Option<Arc<Upstream>> {
        let eps = &set.endpoints;
        let now = self.now_ns();
        match eps.len() {
            0 => None,
            1 => {
                let u = self.upstream(eps[0].addr);
                if Some(u.addr) == exclude { None } else { Some(u) }
            }
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ua, ub) = (self.upstream(eps[a].addr), self.upstream(eps[b].addr));
                let usable = |u: &Upstream| Some(u.addr) != exclude && self.is_healthy(u, now);
                let chosen = match (usable(&ua), usable(&ub)) {
                    (true, false) => ua,
                    (false, true) => ub,
                    (true, true) => {
                        let (ca, cb) = (self.cost(&ua, now), self.cost(&ub, now));
                        if ca.max(cb) <= ca.min(cb) * EQUAL_COST_RATIO {
                            if fastrand::bool() { ua } else { ub }
                        } else if ca < cb {
                            ua
                        } else {
                            ub
                        }
                    }
                    (false, false) => {
                        // Both bad: scan for any usable endpoint before giving up on health.
                        let any = eps.iter().map(|e| self.upstream(e.addr)).find(|u| usable(u));
                        match any {
                            Some(u) => u,
                            None => {
                                let fallback = if Some(ua.addr) == exclude { ub } else { ua };
                                if Some(fallback.addr) == exclude {
                                    return None;
                                }
                                fallback
                            }
                        }
                    }
                };
                Some(chosen)
            }
        }
    }

    /// The endpoint for connection attempt `attempt` (0 = the first) of a request that
    /// has so far failed to connect to `tried`; None = give up. A request that never
    /// reached a backend is safe to send elsewhere:
    /// - the first attempt: power of two choices over the whole set ([`Pool::pick`]);
    /// - a retry: an endpoint known to work, not tried by this request, when there is one;
    /// - while none is known to work (a fresh sidecar, or every proven endpoint failed):
    ///   an endpoint this request has not tried and that is not backed off, so a live
    ///   endpoint among many refusing ones is found (three random attempts missed it:
    ///   with 5 of 8 endpoints refusing, 18% of a fresh sidecar's first calls failed);
    ///   the caller bounds this search by its retry budget and connect time;
    /// - up to [`MAX_CONNECT_ATTEMPTS`], when nothing else is left: [`Pool::pick`].
    pub fn pick_attempt(&self, set: &EndpointSet, attempt: usize, tried: &[SocketAddr]) -> Option<Arc<Upstream>> {
        if attempt == 0 {
            return self.pick(set, None);
        }
        // Attempts that end in a graceful GOAWAY are not `tried`: this bounds them.
        if attempt >= MAX_CONNECT_ATTEMPTS + set.endpoints.len() {
            return None;
        }
        if let Some(good) = self.pick_known_good(set, tried) {
            return Some(good);
        }
        if let Some(untried) = self.pick_untried(set, tried) {
            return Some(untried);
        }
        if attempt < MAX_CONNECT_ATTEMPTS {
            return self.pick(set, tried.last().copied());
        }
        None
    }

    /// Power of two choices among the endpoints not `tried` by this request and not
    /// backed off. None when there is none.
    fn pick_untried(&self, set: &EndpointSet, tried: &[SocketAddr]) -> Option<Arc<Upstream>> {
        let now = self.now_ns();
        let untried: Vec<Arc<Upstream>> = set
            .endpoints
            .iter()
            .map(|e| self.upstream(e.addr))
            .filter(|u| !tried.contains(&u.addr) && self.is_healthy(u, now))
            .collect();
        self.cheaper_of_two(untried, now)
    }

    /// How long a request may spend connecting before it stops searching past
    /// [`MAX_CONNECT_ATTEMPTS`]: what that many connect timeouts take, so endpoints that
    /// time out rather than refuse cost a caller no more than three attempts did.
    pub fn connect_search_limit(&self) -> Duration {
        self.config.connect_timeout.saturating_mul(MAX_CONNECT_ATTEMPTS as u32)
    }

    /// For a retry after a failed connection attempt: power of two choices among the
    /// endpoints *known to work* (answered before, no connect failure since, not
    /// backed off, not `tried` by this request), so the retry does not land on another
    /// unproven endpoint — with many dead endpoints whose backoffs expire together,
    /// unmeasured (cost 0) dead ones would otherwise win every draw and a request could
    /// spend all its attempts on them. None when no endpoint is known to work.
    pub fn pick_known_good(&self, set: &EndpointSet, tried: &[SocketAddr]) -> Option<Arc<Upstream>> {
        let now = self.now_ns();
        let good: Vec<Arc<Upstream>> = set
            .endpoints
            .iter()
            .map(|e| self.upstream(e.addr))
            .filter(|u| {
                !tried.contains(&u.addr)
                    && self.is_healthy(u, now)
                    && u.consecutive_failures.load(Ordering::Relaxed) == 0
                    && u.samples.load(Ordering::Relaxed) > 0
            })
            .collect();
        self.cheaper_of_two(good, now)
    }

    /// Power of two choices within `candidates` (already filtered).
    fn cheaper_of_two(&self, candidates: Vec<Arc<Upstream>>, now: u64) -> Option<Arc<Upstream>> {
        match candidates.len() {
            0 => None,
            1 => candidates.into_iter().next(),
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let pick = if self.cost(&candidates[a], now) <= self.cost(&candidates[b], now) { a } else { b };
                Some(candidates[pick].clone())
            }
        }
    }

    pub fn start_request(&self, u: &Arc<Upstream>) -> PendingGuard {
        u.pending.fetch_add(1, Ordering::Relaxed);
        // Read first: a shared cache line is written once per sweep, not per request.
        if !u.used.load(Ordering::Relaxed) {
            u.used.store(true, Ordering::Relaxed);
        }
        PendingGuard { upstream: u.clone() }
    }

    /// Records a latency sample (time to response headers).
    pub fn observe_rtt(&self, u: &Upstream, rtt: Duration) {
        u.consecutive_failures.store(0, Ordering::Relaxed);
        // The first response on a new endpoint carries connection warm-up (SETTINGS
        // exchange, window growth, cold caches); as a peak it would starve the endpoint
        // for many decay periods, so it is not used.
        if u.samples.fetch_add(1, Ordering::Relaxed) == 0 {
            return;
        }
        let now = self.now_ns();
        let sample = rtt.as_nanos() as f64;
        let prev = u.ewma_ns.load(Ordering::Relaxed) as f64;
        let last = u.last_sample_ns.swap(now, Ordering::Relaxed);
        let next = if prev == 0.0 {
            sample
        } else {
            let w = (-(now.saturating_sub(last) as f64) / EWMA_DECAY.as_nanos() as f64).exp();
            prev * w + sample * (1.0 - w)
        };
        u.ewma_ns.store(next.max(1.0) as u64, Ordering::Relaxed);
        u.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Takes an endpoint out of rotation for an exponentially growing backoff.
    pub fn mark_failed(&self, u: &Upstream) {
        let n = u.consecutive_failures.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = MIN_BACKOFF.saturating_mul(1u32 << n.min(10)).min(MAX_BACKOFF);
        u.unhealthy_until_ns.store(self.now_ns() + backoff.as_nanos() as u64, Ordering::Relaxed);
        self.forget_connection(u);
    }

    /// Stops handing out the endpoint's current connection (it failed, or the endpoint
    /// sent GOAWAY); streams already on it finish there, the next request connects anew.
    pub fn forget_connection(&self, u: &Upstream) {
        u.connection.store(None);
    }

    /// The endpoint's HTTP/2 connection if it is up (every request but the first).
    pub fn ready_sender(&self, u: &Upstream) -> Option<SendRequest<Bytes>> {
        u.connection.load().as_ref().filter(|c| !c.is_closed()).map(|c| c.sender.clone())
    }

    /// The endpoint's HTTP/2 connection, established on first use.
    pub async fn sender(&self, u: &Arc<Upstream>) -> Result<SendRequest<Bytes>, ConnectError> {
        if let Some(s) = self.ready_sender(u) {
            return Ok(s);
        }
        let _connecting = u.connecting.lock().await;
        // Another caller may have connected while this one waited for the lock.
        if let Some(s) = self.ready_sender(u) {
            return Ok(s);
        }
        let addr = u.addr;
        let timeout = self.config.connect_timeout;
        let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Ok(Ok(tcp)) => tcp,
        };
        // Small gRPC frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let h2 = &self.config.h2;
        let (sender, conn) = h2::client::Builder::new()
            .initial_window_size(h2.upstream_stream_window_size)
            // Never the binding limit: unread streams hold at most their own window each
            // (see H2Limits::upstream_stream_window_size), and other callers keep flowing.
            .initial_connection_window_size(UPSTREAM_CONNECTION_WINDOW)
            .max_header_list_size(h2.max_header_list_size)
            .max_send_buffer_size(h2.max_send_buf_size)
            .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(h2.max_local_error_reset_streams))
            .enable_push(false)
            .handshake::<_, Bytes>(ReadTurns::new(tcp, UPSTREAM_ENDS_PER_TURN))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        // PINGs only while requests are in flight: an idle pooled connection costs
        // nothing, and a dead one is found by the next request's connect attempt.
        let weak = Arc::downgrade(u);
        let keep_alive = KeepAliveSettings {
            interval: h2.keep_alive_interval,
            timeout: h2.keep_alive_timeout,
            in_use: move || weak.upgrade().is_some_and(|u| u.pending.load(Ordering::Relaxed) > 0),
        };
        let connection = crate::upstream::spawn_connection(conn, sender.clone(), keep_alive, addr);
        u.connection.store(Some(Arc::new(connection)));
        tracing::debug!(%addr, "connected upstream");
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_routing::Endpoint;

    fn set(n: u16) -> EndpointSet {
        EndpointSet {
            endpoints: (0..n)
                .map(|i| Endpoint {
                    addr: SocketAddr::from(([127, 0, 0, 1], 20000 + i)),
                    ready: true,
                    serving: true,
                    terminating: false,
                    target: None,
                })
                .collect(),
        }
    }

    fn pool() -> Arc<Pool> {
        use clap::Parser;
        let args = crate::config::Args::parse_from(["x", "--config-dir", "/tmp"]);
        Pool::new(ClientConfig { connect_timeout: Duration::from_millis(100), h2: args.h2 })
    }

    #[test]
    fn p2c_prefers_less_loaded_and_avoids_failed() {
        let p = pool();
        let s = set(2);
        for e in &s.endpoints {
            for _ in 0..2 {
                p.observe_rtt(&p.upstream(e.addr), Duration::from_millis(1));
            }
        }
        let busy = p.upstream(s.endpoints[0].addr);
        let _guards: Vec<_> = (0..50).map(|_| p.start_request(&busy)).collect();
        for _ in 0..50 {
            assert_eq!(p.pick(&s, None).map(|u| u.addr), Some(s.endpoints[1].addr));
        }
        drop(_guards);
        // A failed endpoint is avoided while another is usable.
        let failed = p.upstream(s.endpoints[1].addr);
        p.mark_failed(&failed);
        for _ in 0..50 {
            assert_eq!(p.pick(&s, None).map(|u| u.addr), Some(s.endpoints[0].addr));
        }
        // Excluding the only healthy one still yields the failed one rather than nothing.
        assert_eq!(p.pick(&s, Some(s.endpoints[0].addr)).map(|u| u.addr), Some(s.endpoints[1].addr));
        assert!(p.pick(&set(0), None).is_none());
        assert!(p.pick(&set(1), Some(set(1).endpoints[0].addr)).is_none());
    }

    #[test]
    fn retry_goes_to_a_known_good_endpoint() {
        let p = pool();
        let s = set(20);
        // Nothing measured yet: no endpoint is known to work.
        assert!(p.pick_known_good(&s, &[]).is_none());
        let good = p.upstream(s.endpoints[7].addr);
        p.observe_rtt(&good, Duration::from_millis(1));
        let failed = p.upstream(s.endpoints[3].addr);
        p.observe_rtt(&failed, Duration::from_millis(1));
        p.mark_failed(&failed);
        for _ in 0..50 {
            assert_eq!(p.pick_known_good(&s, &[]).map(|u| u.addr), Some(good.addr));
        }
        assert!(p.pick_known_good(&s, &[good.addr]).is_none());
    }

    /// One request as `Proxy::forward` makes it, with connects simulated: endpoints in
    /// `refusing` fail to connect (and are backed off), the others answer. Ok(the
    /// endpoint that answered) or Err(connection attempts made).
    fn simulated_call(p: &Pool, s: &EndpointSet, refusing: &HashSet<SocketAddr>) -> Result<SocketAddr, usize> {
        let mut tried = Vec::new();
        while let Some(u) = p.pick_attempt(s, tried.len(), &tried) {
            if !refusing.contains(&u.addr) {
                p.observe_rtt(&u, Duration::from_millis(1));
                return Ok(u.addr);
            }
            p.mark_failed(&u);
            tried.push(u.addr);
        }
        Err(tried.len())
    }

    #[test]
    fn fresh_pool_reaches_a_live_endpoint_among_refusing_ones() {
        // 8 endpoints of which 5 refuse connections, met by 200 fresh sidecars: every
        // one of each sidecar's first 8 calls is answered (3 attempts on unmeasured
        // endpoints failed ~18% of first calls).
        let s = set(8);
        let refusing: HashSet<SocketAddr> = s.endpoints[..5].iter().map(|e| e.addr).collect();
        for sidecar in 0..200 {
            let p = pool();
            for call in 0..8 {
                let r = simulated_call(&p, &s, &refusing);
                assert!(r.is_ok_and(|a| !refusing.contains(&a)), "sidecar {sidecar}, call {call}: {r:?}");
            }
        }
        // One live endpoint among 20 refusing ones.
        let s = set(21);
        let refusing: HashSet<SocketAddr> = s.endpoints[..20].iter().map(|e| e.addr).collect();
        for sidecar in 0..50 {
            let p = pool();
            let r = simulated_call(&p, &s, &refusing);
            assert_eq!(r, Ok(s.endpoints[20].addr), "sidecar {sidecar}");
        }
        // None alive: the request gives up after trying each endpoint at most once.
        let s = set(8);
        let all: HashSet<SocketAddr> = s.endpoints.iter().map(|e| e.addr).collect();
        let r = simulated_call(&pool(), &s, &all);
        assert!(matches!(r, Err(n) if n <= 8), "{r:?}");
    }

    #[test]
    fn p2c_spreads_over_equal_endpoints() {
        let p = pool();
        let s = set(4);
        let mut counts = HashMap::default();
        for _ in 0..4000 {
            let u = p.pick(&s, None).expect("pick");
            *counts.entry(u.addr).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|c| *c > 600), "{counts:?}");
    }

    #[test]
    fn slow_endpoint_gets_less_traffic() {
        let p = pool();
        let s = set(2);
        for _ in 0..2 {
            p.observe_rtt(&p.upstream(s.endpoints[0].addr), Duration::from_millis(50));
            p.observe_rtt(&p.upstream(s.endpoints[1].addr), Duration::from_millis(1));
        }
        let fast = (0..100).filter(|_| p.pick(&s, None).map(|u| u.addr) == Some(s.endpoints[1].addr)).count();
        assert_eq!(fast, 100);
    }

    #[test]
    fn unmeasured_endpoint_is_tried_and_near_equal_costs_share() {
        let p = pool();
        let s = set(2);
        p.observe_rtt(&p.upstream(s.endpoints[0].addr), Duration::from_millis(30));
        p.observe_rtt(&p.upstream(s.endpoints[0].addr), Duration::from_micros(300));
        assert_eq!(p.pick(&s, None).map(|u| u.addr), Some(s.endpoints[1].addr), "unmeasured first");
        p.observe_rtt(&p.upstream(s.endpoints[1].addr), Duration::from_millis(30));
        p.observe_rtt(&p.upstream(s.endpoints[1].addr), Duration::from_micros(320));
        let second = (0..1000).filter(|_| p.pick(&s, None).map(|u| u.addr) == Some(s.endpoints[1].addr)).count();
        assert!((350..650).contains(&second), "near-equal latencies share traffic: {second}/1000");
    }

    #[tokio::test]
    async fn connect_refused_is_an_error() {
        let p = pool();
        // Bind then drop to get a port nobody listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind");
        let u = p.upstream(addr);
        assert!(matches!(p.sender(&u).await, Err(ConnectError::Io { .. })));
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn retain_keeps_unrouted_endpoints_in_use_and_drops_idle_ones() {
        let p = pool();
        let routed = addr(30001);
        let app = addr(30002);
        let passthrough = addr(30003);
        let idle = Duration::from_secs(60);
        let live: HashSet<SocketAddr> = [routed].into_iter().collect();
        let app_u = p.upstream(app);
        for _ in 0..3 {
            p.observe_rtt(&app_u, Duration::from_millis(2));
        }
        let ewma = app_u.ewma_ns.load(Ordering::Relaxed);
        let _r = p.upstream(routed);
        let _pt = p.upstream(passthrough);
        // A configuration change right after use: everything stays, state included.
        let t0 = p.now_ns();
        p.retain_at(&live, t0, idle);
        assert_eq!(p.endpoint_count(), 3);
        assert!(Arc::ptr_eq(&app_u, &p.upstream(app)), "same endpoint, same connection");
        assert_eq!(p.upstream(app).ewma_ns.load(Ordering::Relaxed), ewma, "latency state kept");
        // The app keeps getting requests; the passthrough destination does not.
        let t1 = t0 + idle.as_nanos() as u64 / 2;
        drop(p.start_request(&app_u));
        p.retain_at(&live, t1, idle);
        assert_eq!(p.endpoint_count(), 3, "within the idle timeout nothing is dropped");
        let t2 = t0 + idle.as_nanos() as u64 + 1;
        drop(p.start_request(&app_u));
        p.retain_at(&live, t2, idle);
        assert!(Arc::ptr_eq(&app_u, &p.upstream(app)), "the app, used since the last sweep, is kept");
        let held = p.upstreams.read().expect("map").keys().copied().collect::<HashSet<_>>();
        assert_eq!(held, [routed, app].into_iter().collect(), "the idle passthrough is dropped");
        // An outstanding request (a long stream) keeps an endpoint however long it runs.
        let stream = p.start_request(&app_u);
        for k in 2..6 {
            p.retain_at(&live, t2 + k * idle.as_nanos() as u64, idle);
        }
        assert!(Arc::ptr_eq(&app_u, &p.upstream(app)), "an open stream keeps its endpoint");
        drop(stream);
        // Idle is counted from the last sweep that saw the stream open.
        p.retain_at(&live, t2 + 5 * idle.as_nanos() as u64 + idle.as_nanos() as u64 / 2, idle);
        assert!(p.upstreams.read().expect("map").contains_key(&app), "idle for less than the timeout");
        p.retain_at(&live, t2 + 7 * idle.as_nanos() as u64, idle);
        let held = p.upstreams.read().expect("map").keys().copied().collect::<HashSet<_>>();
        assert_eq!(held, [routed].into_iter().collect(), "routed endpoints always stay; idle ones go");
    }
}
