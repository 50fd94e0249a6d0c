//! Listeners: accept connections, serve HTTP/2 with explicit limits, close idle
//! connections, drain on shutdown.
use crate::body::ProxyBody;
use crate::config::H2Limits;
use crate::h2io::{BodyPipe, ConnectionError, H2Body, KeepAlive};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// The HTTP/2 server settings of every listener, from the explicit limits.
pub fn h2_builder(limits: &H2Limits) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(limits.max_local_error_reset_streams))
        .max_send_buffer_size(limits.max_send_buf_size)
        .initial_window_size(limits.initial_stream_window_size)
        .initial_connection_window_size(limits.initial_connection_window_size);
    builder
}

/// The open connections of a listener: told to drain together, and waited for.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<ConnectionsInner>,
}

struct ConnectionsInner {
    draining: watch::Sender<bool>,
    open: AtomicUsize,
    all_closed: Notify,
}

/// Held by a connection's task while the connection is open.
pub struct ConnectionGuard {
    inner: Arc<ConnectionsInner>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.inner.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.all_closed.notify_waiters();
        }
    }
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            inner: Arc::new(ConnectionsInner {
                draining: watch::channel(false).0,
                open: AtomicUsize::new(0),
                all_closed: Notify::new(),
            }),
        }
    }
}

impl Connections {
    pub fn track(&self) -> ConnectionGuard {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard { inner: self.inner.clone() }
    }

    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Tells every connection to finish (GOAWAY) and waits until all have closed.
    pub async fn drain(&self) {
        self.inner.draining.send_replace(true);
        loop {
            let closed = self.inner.all_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Serves one connection until it ends: graceful shutdown when the listener drains,
    /// or (with `idle`) when no request has started on it for that long.
    pub async fn run<C: GracefulConnection>(&self, conn: C, idle: Option<IdleClock>) {
        let _guard = self.track();
        let mut draining = self.inner.draining.subscribe();
        tokio::pin!(conn);
        let mut shutting_down = false;
        let idle_deadline = async {
            match &idle {
                Some(clock) => clock.expired().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(idle_deadline);
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with error");
                    }
                    return;
                }
                _ = draining.wait_for(|d| *d), if !shutting_down => {
                    conn.as_mut().start_graceful_shutdown();
                    shutting_down = true;
                }
                _ = &mut idle_deadline, if !shutting_down => {
                    tracing::debug!(idle = ?idle.as_ref().map(IdleClock::timeout), "connection idle; closing");
                    metrics::counter!("strait_idle_connections_closed_total").increment(1);
                    conn.as_mut().start_graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }
}

/// Server connections that can be asked to finish gracefully (GOAWAY, streams in
/// flight complete).
pub trait GracefulConnection: Future<Output = Result<(), Self::Failure>> {
    type Failure: std::fmt::Display;
    fn start_graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulConnection for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Failure = hyper::Error;
    fn start_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Whether a connection is idle: no stream open, and none started or finished for
/// `timeout`.
#[derive(Clone)]
pub struct IdleClock {
    state: Arc<IdleState>,
}

struct IdleState {
    opened: Instant,
    /// Milliseconds after `opened` of the last stream start or end.
    last_activity_ms: AtomicU64,
    in_flight: AtomicUsize,
    timeout: Duration,
}

/// Held by a stream's response body: the connection is not idle while it exists.
pub struct StreamInFlight {
    state: Arc<IdleState>,
}

impl IdleState {
    fn touch(&self) {
        self.last_activity_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for StreamInFlight {
    fn drop(&mut self) {
        self.state.touch();
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl IdleClock {
    /// `None` when idle closing is off (`--idle-timeout 0`).
    pub fn new(timeout: Duration) -> Option<IdleClock> {
        (!timeout.is_zero()).then(|| IdleClock {
            state: Arc::new(IdleState {
                opened: Instant::now(),
                last_activity_ms: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                timeout,
            }),
        })
    }

    pub fn stream_started(&self) -> StreamInFlight {
        // No clock read here: while a stream is open the connection is not idle, and
        // the stream's end records the time.
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        StreamInFlight { state: self.state.clone() }
    }

    fn timeout(&self) -> Duration {
        self.state.timeout
    }

    /// Resolves once the connection has been idle for `timeout`. Sleeps until the
    /// earliest possible expiry instead of ticking: about one timer wake per period.
    async fn expired(&self) {
        let s = &self.state;
        loop {
            if s.in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(s.timeout).await;
                continue;
            }
            let deadline = s.opened + Duration::from_millis(s.last_activity_ms.load(Ordering::Relaxed)) + s.timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// What a listener's handler answers a request with.
pub type Handled = Result<Response<ProxyBody>, std::convert::Infallible>;

/// One HTTP/2 connection served with the `h2` crate: each request stream runs as its
/// own task (the handler's future, then the response body copied out); keep-alive
/// PINGs find peers that vanished without closing.
struct ServedH2<T, F> {
    conn: h2::server::Connection<T, Bytes>,
    handler: F,
    idle: Option<IdleClock>,
    /// A listener pings every peer, busy or not: `in_use` is always true.
    keep_alive: Option<KeepAlive<fn() -> bool>>,
}

impl<T, F, Fut> Future for ServedH2<T, F>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: Fn(Request<H2Body>) -> Fut + Unpin,
    Fut: Future<Output = Handled> + Send + 'static,
{
    type Output = Result<(), ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match this.conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let in_flight = this.idle.as_ref().map(IdleClock::stream_started);
                    let response = (this.handler)(req.map(H2Body::new));
                    tokio::spawn(serve_stream(response, respond, in_flight));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        crate::h2io::poll_keep_alive(&mut this.keep_alive, cx).map(Err)
    }
}

impl<T, F, Fut> GracefulConnection for ServedH2<T, F>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: Fn(Request<H2Body>) -> Fut + Unpin,
    Fut: Future<Output = Handled> + Send + 'static,
{
    type Failure = ConnectionError;
    fn start_graceful_shutdown(mut self: Pin<&mut Self>) {
        self.conn.graceful_shutdown();
    }
}

/// One request stream: the handler's response, then its body copied to the client.
/// A client reset (RST_STREAM) before the response drops the handler's future, and with
/// it the call upstream. `_in_flight` keeps the connection from counting as idle.
async fn serve_stream<Fut>(
    response: Fut,
    mut respond: h2::server::SendResponse<Bytes>,
    _in_flight: Option<StreamInFlight>,
) where
    Fut: Future<Output = Handled>,
{
    let mut response = std::pin::pin!(response);
    let response = std::future::poll_fn(|cx| {
        if respond.poll_reset(cx).is_ready() {
            return Poll::Ready(None);
        }
        response.as_mut().poll(cx).map(Some)
    })
    .await;
    let Some(Ok(response)) = response else {
        return;
    };
    let (mut parts, body) = response.into_parts();
    crate::h2io::strip_connection_headers(&mut parts.headers, false);
    let end_of_stream = body.is_end_stream();
    match respond.send_response(Response::from_parts(parts, ()), end_of_stream) {
        Ok(stream) if !end_of_stream => BodyPipe::new(body, stream, h2::Reason::INTERNAL_ERROR).await,
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "response not sent"),
    }
}

/// Serves one HTTP/2 connection with `handler`, closing it when idle or draining.
pub fn spawn_h2_connection<F, Fut>(limits: &H2Limits, conns: &Connections, tcp: TcpStream, handler: F)
where
    F: Fn(Request<H2Body>) -> Fut + Send + Sync + Unpin + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let idle = IdleClock::new(limits.idle_timeout);
    let io = crate::flood_guard::FloodGuard::new(tcp, limits.max_control_frames_per_second);
    let builder = h2_builder(limits);
    let conns = conns.clone();
    let (interval, timeout) = (limits.keep_alive_interval, limits.keep_alive_timeout);
    tokio::spawn(async move {
        let mut conn = match builder.handshake::<_, Bytes>(io).await {
            Ok(c) => c,
            Err(error) => {
                tracing::debug!(%error, "HTTP/2 handshake failed");
                return;
            }
        };
        let always: fn() -> bool = || true;
        let keep_alive = KeepAlive::new(conn.ping_pong(), interval, timeout, always);
        let served = ServedH2 { conn, handler, idle: idle.clone(), keep_alive };
        conns.run(served, idle).await
    });
}

/// Serves h2c on `listener` until `shutdown` flips, then sends GOAWAY on every
/// connection and waits up to `drain` for in-flight streams.
pub async fn serve_h2<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: H2Limits,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    F: Fn(Request<H2Body>) -> Fut + Clone + Send + Sync + Unpin + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let conns = Connections::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                tracing::trace!(listener = name, %peer, "accepted");
                spawn_h2_connection(&limits, &conns, tcp, handler.clone());
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tracing::info!(listener = name, ?drain, "draining connections");
    match tokio::time::timeout(drain, conns.drain()).await {
        Ok(()) => tracing::info!(listener = name, "all connections drained"),
        Err(_) => tracing::warn!(listener = name, open = conns.open(), "drain timeout; closing remaining connections"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_clock_expires_only_after_a_quiet_period() {
        let timeout = Duration::from_millis(200);
        let clock = IdleClock::new(timeout).expect("enabled");
        assert!(IdleClock::new(Duration::ZERO).is_none(), "0 disables");
        tokio::time::sleep(Duration::from_millis(120)).await;
        drop(clock.stream_started());
        let started = Instant::now();
        clock.expired().await;
        // Expiry counts from the stream at 120 ms, not from the connection's opening.
        assert!(started.elapsed() >= timeout - Duration::from_millis(2), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_long_stream_keeps_its_connection() {
        let timeout = Duration::from_millis(100);
        let clock = IdleClock::new(timeout).expect("enabled");
        let stream = clock.stream_started();
        // Three idle periods with the stream open: not idle.
        let early = tokio::time::timeout(timeout * 3, clock.expired()).await;
        assert!(early.is_err(), "expired while a stream was open");
        let ended = Instant::now();
        drop(stream);
        tokio::time::timeout(timeout * 4, clock.expired()).await.expect("idle after the stream ended");
        assert!(ended.elapsed() >= timeout - Duration::from_millis(2), "{:?}", ended.elapsed());
    }

    fn keep_alive_limits() -> H2Limits {
        use clap::Parser;
        let args = ["x", "--config-dir", "/tmp", "--keep-alive-interval", "50ms", "--keep-alive-timeout", "100ms"];
        crate::config::Args::parse_from(args).h2
    }

    async fn serve_one(conns: &Connections) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns = conns.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            spawn_h2_connection(&keep_alive_limits(), &conns, tcp, |_req| async {
                Ok(Response::new(crate::body::empty()))
            });
        });
        addr
    }

    #[tokio::test]
    async fn unanswered_keep_alive_pings_close_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let conns = Connections::default();
        let addr = serve_one(&conns).await;
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        // Client preface and an empty SETTINGS frame, then silence: PINGs go unanswered.
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
        tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.expect("settings");
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a peer that never answers PINGs is disconnected");
        // One interval (50 ms) to the PING, one timeout (100 ms) waiting for its answer.
        assert!(started.elapsed() >= Duration::from_millis(140), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn answered_keep_alive_pings_keep_the_connection() {
        let conns = Connections::default();
        let addr = serve_one(&conns).await;
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = h2::client::handshake(tcp).await.expect("handshake");
        tokio::spawn(conn);
        // Ten keep-alive periods: the h2 client answers every PING.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut sender = sender.ready().await.expect("connection still open");
        let req = Request::builder().uri("http://test/pkg.S/M").body(()).expect("request");
        let (response, _) = sender.send_request(req, true).expect("stream opened");
        let response = response.await.expect("response");
        assert_eq!(response.status(), http::StatusCode::OK);
    }

    #[tokio::test]
    async fn drain_waits_for_every_tracked_connection() {
        let conns = Connections::default();
        let guard = conns.track();
        let waiter = tokio::spawn({
            let conns = conns.clone();
            async move { conns.drain().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "drained with a connection open");
        drop(guard);
        tokio::time::timeout(Duration::from_secs(2), waiter).await.expect("drained").expect("task");
        assert_eq!(conns.open(), 0);
    }
}
