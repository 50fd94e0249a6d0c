//! Listeners: accept connections, serve HTTP/2 with explicit limits, close idle
//! connections, drain on shutdown.
use crate::config::H2Limits;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// The HTTP/2 server settings of every listener, from the explicit limits.
pub fn h2_builder(limits: &H2Limits) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams)
        .max_send_buf_size(limits.max_send_buf_size)
        .initial_stream_window_size(limits.initial_stream_window_size)
        .initial_connection_window_size(limits.initial_connection_window_size)
        .keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_timeout);
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

/// hyper's server connections, which can be asked to finish gracefully.
pub trait GracefulConnection: Future<Output = Result<(), hyper::Error>> {
    fn start_graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E, B> GracefulConnection for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn start_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> GracefulConnection for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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

/// A response body that keeps its stream counted as in flight until it ends or is
/// dropped (a field next to the body: no allocation per request).
pub struct InFlightBody<B> {
    body: B,
    _in_flight: Option<StreamInFlight>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves one HTTP/2 connection with `handler`, closing it when idle or draining.
pub fn spawn_h2_connection<F, Fut>(limits: &H2Limits, conns: &Connections, tcp: TcpStream, handler: F)
where
    F: Fn(http::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<crate::body::ProxyBody>, std::convert::Infallible>> + Send + 'static,
{
    let idle = IdleClock::new(limits.idle_timeout);
    let clock = idle.clone();
    let service = service_fn(move |req| {
        let in_flight = clock.as_ref().map(IdleClock::stream_started);
        let response = handler(req);
        async move {
            let response = response.await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| InFlightBody { body, _in_flight: in_flight }))
        }
    });
    let io = crate::flood_guard::FloodGuard::new(tcp, limits.max_control_frames_per_second);
    let conn = h2_builder(limits).serve_connection(TokioIo::new(io), service);
    let conns = conns.clone();
    tokio::spawn(async move { conns.run(conn, idle).await });
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
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<crate::body::ProxyBody>, std::convert::Infallible>> + Send + 'static,
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
