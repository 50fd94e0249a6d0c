//! The client side of a hop: requests sent on upstream HTTP/2 connections through the
//! `h2` crate directly.
//!
//! hyper's HTTP/2 client hands every request to the connection's task over a channel and
//! spawns two tasks per request (one awaiting the response, one copying the request
//! body), then answers over a oneshot; callgrind put that at ~11% of the instructions of
//! a proxied call. Here the calling task opens the stream itself, copies the request
//! body inline while it waits for the response headers, and only a request body still
//! streaming when the response starts (client or bidi streaming) gets a task of its own.
use crate::body::ProxyBody;
use crate::h2io::{BodyPipe, ConnectionError, H2Body, KeepAlive, poll_keep_alive, strip_connection_headers};
use bytes::Bytes;
use h2::Reason;
use h2::client::SendRequest;
use http::{Request, Response};
use http_body::Body;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

/// One upstream HTTP/2 connection as the pool holds it: the handle to open streams and
/// whether the connection's task has ended (set by that task, read per request).
pub struct UpstreamConnection {
    pub sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl UpstreamConnection {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Keep-alive settings of an upstream connection: PING every `interval` while `in_use`
/// says requests are in flight; no answer within `timeout` closes the connection.
pub struct KeepAliveSettings<F> {
    pub interval: Duration,
    pub timeout: Duration,
    pub in_use: F,
}

/// Runs the connection's I/O until it ends; spawned once per connection.
pub fn spawn_connection<T, F>(
    mut conn: h2::client::Connection<T, Bytes>,
    sender: SendRequest<Bytes>,
    settings: KeepAliveSettings<F>,
    addr: std::net::SocketAddr,
) -> UpstreamConnection
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> bool + Send + Sync + 'static,
{
    let closed = Arc::new(AtomicBool::new(false));
    let closed_by_task = closed.clone();
    let mut keep_alive = KeepAlive::new(conn.ping_pong(), settings.interval, settings.timeout, settings.in_use);
    tokio::spawn(async move {
        let result = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut conn).poll(cx) {
                return Poll::Ready(r.map_err(ConnectionError::from));
            }
            poll_keep_alive(&mut keep_alive, cx).map(Err)
        })
        .await;
        closed_by_task.store(true, Ordering::Release);
        match result {
            Ok(()) => tracing::debug!(%addr, "upstream connection closed"),
            Err(error) => tracing::debug!(%addr, %error, "upstream connection ended"),
        }
    });
    UpstreamConnection { sender, closed }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// The connection could not take a new stream; nothing was sent, the request is
    /// returned whole and may go elsewhere.
    /// (Boxed: the rare case must not make every call's result larger.)
    Unsent { req: Box<Request<ProxyBody>>, error: h2::Error },
    /// The stream was opened; the upstream may have seen the request.
    Failed(h2::Error),
}

/// Sends `req` on `sender` and waits for the response headers, copying the request
/// body meanwhile.
pub async fn send_request(sender: SendRequest<Bytes>, req: Request<ProxyBody>) -> Result<Response<H2Body>, SendError> {
    let mut sender = match sender.ready().await {
        Ok(s) => s,
        Err(error) => return Err(SendError::Unsent { req: Box::new(req), error }),
    };
    let (mut parts, body) = req.into_parts();
    strip_connection_headers(&mut parts.headers, true);
    let end_of_stream = body.is_end_stream();
    let (mut response, stream) =
        sender.send_request(Request::from_parts(parts, ()), end_of_stream).map_err(SendError::Failed)?;
    let mut pipe = (!end_of_stream).then(|| BodyPipe::new(body, stream, Reason::CANCEL));
    let head = std::future::poll_fn(|cx| {
        if let Some(p) = pipe.as_mut()
            && Pin::new(p).poll(cx).is_ready()
        {
            pipe = None;
        }
        Pin::new(&mut response).poll(cx)
    })
    .await;
    if let Some(p) = pipe {
        // A streaming request body outlives the response headers.
        tokio::spawn(p);
    }
    let head = head.map_err(SendError::Failed)?;
    Ok(head.map(H2Body::new))
}

/// Why a mirrored request did not complete.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("mirror did not complete within {0:?}; its stream was reset")]
    Deadline(Duration),
    #[error("mirror stream failed: {0}")]
    H2(#[from] h2::Error),
}

/// How the proxy resets a mirror's stream it abandons. Not CANCEL: tonic servers read
/// a request stream reset with CANCEL as the stream's clean end (tonic 0.14,
/// `codec/decode.rs`) and would commit the truncated request; INTERNAL_ERROR fails
/// the request at every gRPC server.
pub const MIRROR_RESET: Reason = Reason::INTERNAL_ERROR;

/// Sends a mirror's copy of a request and reads its response only to drop it, frame by
/// frame as it arrives (a mirrored server stream holds no more than one frame), all
/// within `deadline`; returns the response bytes discarded. The request body is
/// copied by this same task. A request body that fails (the mirror fell behind, the
/// caller cancelled) resets the stream with [`MIRROR_RESET`], and so does the
/// deadline while the request is still being sent: the mirror never sees a truncated
/// request end cleanly, and the call never outlives `deadline`.
pub async fn send_mirror(
    sender: SendRequest<Bytes>,
    req: Request<ProxyBody>,
    deadline: Duration,
) -> Result<u64, MirrorError> {
    // Outside the exchange so the deadline can reset a stream still being sent.
    let mut pipe: Option<BodyPipe> = None;
    let exchange = async {
        let mut sender = sender.ready().await?;
        let (mut parts, body) = req.into_parts();
        strip_connection_headers(&mut parts.headers, true);
        let end_of_stream = body.is_end_stream();
        let (mut response, stream) = sender.send_request(Request::from_parts(parts, ()), end_of_stream)?;
        pipe = (!end_of_stream).then(|| BodyPipe::new(body, stream, MIRROR_RESET));
        let mut drive_pipe = |cx: &mut std::task::Context<'_>| {
            if let Some(p) = pipe.as_mut()
                && Pin::new(p).poll(cx).is_ready()
            {
                pipe = None;
            }
        };
        let head = std::future::poll_fn(|cx| {
            drive_pipe(cx);
            Pin::new(&mut response).poll(cx)
        })
        .await?;
        let mut body = H2Body::new(head.into_body());
        let mut discarded = 0u64;
        std::future::poll_fn(|cx| {
            loop {
                drive_pipe(cx);
                match std::task::ready!(Pin::new(&mut body).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    Some(Err(e)) => return Poll::Ready(Err(e)),
                    None => return Poll::Ready(Ok(())),
                }
            }
        })
        .await?;
        Ok(discarded)
    };
    let result = tokio::time::timeout(deadline, exchange).await.unwrap_or(Err(MirrorError::Deadline(deadline)));
    if result.is_err()
        && let Some(p) = pipe.as_mut()
    {
        p.reset();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http_body::Frame;
    use http_body_util::BodyExt;

    /// An in-memory HTTP/2 server: echoes the request body, answers with trailers.
    async fn echo_server(io: tokio::io::DuplexStream, window: u32) {
        let mut conn = h2::server::Builder::new()
            .initial_window_size(window)
            .initial_connection_window_size(window)
            .handshake::<_, Bytes>(io)
            .await
            .expect("server handshake");
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                let mut body = req.into_body();
                let mut send = respond.send_response(Response::new(()), false).expect("respond");
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.expect("request data");
                    let _ = body.flow_control().release_capacity(chunk.len());
                    send.send_data(chunk, false).expect("echo");
                }
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                send.send_trailers(trailers).expect("trailers");
            });
        }
    }

    /// An upstream connection over `io`, as the pool spawns one (PINGs never due).
    async fn connect_over<T>(io: T) -> UpstreamConnection
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = h2::client::handshake(io).await.expect("client handshake");
        let keep_alive =
            KeepAliveSettings { interval: Duration::from_secs(60), timeout: Duration::from_secs(5), in_use: || false };
        spawn_connection(conn, sender, keep_alive, "127.0.0.1:1".parse().expect("addr"))
    }

    async fn client(window: u32) -> UpstreamConnection {
        let (a, b) = tokio::io::duplex(1 << 20);
        tokio::spawn(echo_server(b, window));
        connect_over(a).await
    }

    fn request(body: ProxyBody) -> Request<ProxyBody> {
        let mut req = Request::new(body);
        *req.uri_mut() = "http://echo.test/pkg.Echo/Say".parse().expect("uri");
        req.headers_mut().insert("te", http::HeaderValue::from_static("trailers"));
        req.headers_mut().insert("connection", http::HeaderValue::from_static("keep-alive"));
        req
    }

    #[tokio::test]
    async fn body_larger_than_every_window_arrives_whole_with_trailers() {
        let conn = client(65_535).await;
        // 1 MiB in 16 KiB frames through 64 KiB windows: the pipe must wait for capacity.
        let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<Frame<Bytes>, crate::body::BoxError>> =
            payload.chunks(16 * 1024).map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
        let body = crate::body::boxed(http_body_util::StreamBody::new(futures::stream::iter(chunks)));
        let resp = send_request(conn.sender.clone(), request(body)).await.expect("response");
        let collected = resp.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert_eq!(collected.to_bytes().as_ref(), payload.as_slice());
    }

    #[tokio::test]
    async fn a_burst_of_calls_completes_through_read_turns() {
        // The pool's upstream socket: reads in turns of a few stream ends, yielding
        // between them. Every call of a burst must still complete, whole.
        let (a, b) = tokio::io::duplex(1 << 20);
        tokio::spawn(echo_server(b, 65_535));
        let conn = connect_over(crate::read_turns::ReadTurns::new(a, 4)).await;
        let calls = (0..64u8).map(|k| {
            let sender = conn.sender.clone();
            tokio::spawn(async move {
                let payload = Bytes::from(vec![k; 100 + usize::from(k)]);
                let resp =
                    send_request(sender, request(crate::body::boxed(http_body_util::Full::new(payload.clone()))))
                        .await
                        .expect("response");
                let collected = resp.into_body().collect().await.expect("body");
                assert_eq!(
                    collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes()),
                    Some(&b"0"[..])
                );
                assert_eq!(collected.to_bytes(), payload, "call {k}");
            })
        });
        let all = futures::future::join_all(calls);
        for done in tokio::time::timeout(Duration::from_secs(10), all).await.expect("every call completes") {
            done.expect("call");
        }
    }

    /// Records what each write to the connection carried.
    struct WriteLog<T> {
        inner: T,
        writes: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    }

    impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteLog<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteLog<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
            self.writes.lock().expect("log").push(buf[..written].to_vec());
            Poll::Ready(Ok(written))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            // One write of everything offered, as writev would be.
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &all)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// (frame type, stream id) of each whole frame in `bytes`.
    fn frames(bytes: &[u8]) -> Vec<(u8, u32)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 9 {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
            out.push((rest[3], stream));
            rest = &rest[(9 + len).min(rest.len())..];
        }
        out
    }

    #[tokio::test]
    async fn unary_request_leaves_in_one_write() {
        let (a, b) = tokio::io::duplex(1 << 20);
        tokio::spawn(echo_server(b, 65_535));
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let io = WriteLog { inner: a, writes: writes.clone() };
        let upstream = connect_over(io).await;
        let body = crate::body::boxed(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")));
        let resp = send_request(upstream.sender.clone(), request(body)).await.expect("response");
        resp.into_body().collect().await.expect("body");
        let writes = writes.lock().expect("log");
        let with_headers = writes
            .iter()
            .map(|w| frames(w))
            .find(|f| f.contains(&(0x1, 1)))
            .expect("a write carried the request HEADERS");
        // A new stream gets no send capacity until the connection task opens it; the
        // first DATA frame must not wait for that in a write of its own (the upstream
        // would be woken twice for one unary call).
        assert!(with_headers.contains(&(0x0, 1)), "HEADERS and DATA of stream 1 in one write: {with_headers:?}");
    }

    #[tokio::test]
    async fn empty_body_is_sent_as_end_of_stream() {
        let conn = client(65_535).await;
        let resp = send_request(conn.sender.clone(), request(crate::body::empty())).await.expect("response");
        let collected = resp.into_body().collect().await.expect("body");
        assert!(collected.trailers().is_some());
        assert!(collected.to_bytes().is_empty());
    }

    #[tokio::test]
    async fn closed_connection_returns_the_request_unsent() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            // The upstream goes away right after the handshake (a restarted backend).
            let conn = h2::server::handshake(b).await.expect("server handshake");
            drop(conn);
        });
        let upstream = connect_over(a).await;
        server.await.expect("server task");
        for _ in 0..100 {
            if upstream.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(upstream.is_closed(), "the connection task saw the close and ended");
        let body = crate::body::boxed(http_body_util::Full::new(Bytes::from_static(b"kept")));
        let sent = tokio::time::timeout(Duration::from_secs(5), send_request(upstream.sender.clone(), request(body)));
        match sent.await.expect("a dead connection answers at once") {
            Err(SendError::Unsent { req, .. }) => {
                let bytes = req.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(bytes.as_ref(), b"kept", "the unsent request keeps its body for a retry");
            }
            other => panic!("expected Unsent, got {:?}", other.map(|r| r.status())),
        }
    }

    /// How a request body ended at a server: its bytes and clean end, or the reset reason.
    type Arrival = Result<usize, Option<Reason>>;

    /// A server that records how each request body ended and answers with
    /// `response_frames` DATA frames of 16 KiB and trailers (after the request ends) —
    /// or with headers only and never an end, when `response_frames` is None.
    async fn recording_server(
        io: tokio::io::DuplexStream,
        response_frames: Option<usize>,
        arrivals: tokio::sync::mpsc::UnboundedSender<Arrival>,
    ) {
        let mut conn = h2::server::handshake(io).await.expect("server handshake");
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                let mut body = req.into_body();
                let mut send = respond.send_response(Response::new(()), false).expect("respond");
                let mut received = 0;
                let arrival = loop {
                    match body.data().await {
                        Some(Ok(chunk)) => {
                            received += chunk.len();
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        Some(Err(e)) => break Err(e.reason()),
                        None => break Ok(received),
                    }
                };
                let ended = arrival.is_ok();
                let _ = arrivals.send(arrival);
                match response_frames {
                    Some(n) if ended => {
                        for _ in 0..n {
                            send.reserve_capacity(16 * 1024);
                            if std::future::poll_fn(|cx| send.poll_capacity(cx)).await.is_none() {
                                return;
                            }
                            if send.send_data(Bytes::from(vec![7u8; 16 * 1024]), false).is_err() {
                                return;
                            }
                        }
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    }
                    _ => {
                        // Never ends the response; waits for the client to reset it.
                        let _ = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
                    }
                }
            });
        }
    }

    async fn recording_upstream(
        response_frames: Option<usize>,
    ) -> (UpstreamConnection, tokio::sync::mpsc::UnboundedReceiver<Arrival>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(recording_server(b, response_frames, tx));
        (connect_over(a).await, rx)
    }

    #[tokio::test]
    async fn mirror_drains_a_long_response_and_completes() {
        let (conn, mut arrivals) = recording_upstream(Some(200)).await;
        let body = crate::body::boxed(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")));
        let discarded =
            send_mirror(conn.sender.clone(), request(body), Duration::from_secs(10)).await.expect("completes");
        // 3.2 MB through 64 KiB windows: read (and dropped) as it arrived.
        assert_eq!(discarded, 200 * 16 * 1024);
        assert_eq!(arrivals.recv().await, Some(Ok(7)));
    }

    #[tokio::test]
    async fn a_failing_mirror_body_resets_the_stream() {
        let (conn, mut arrivals) = recording_upstream(Some(1)).await;
        let frames: Vec<Result<Frame<Bytes>, crate::body::BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"part of a stream"))), Err("the mirror fell behind".into())];
        let body = crate::body::boxed(http_body_util::StreamBody::new(futures::stream::iter(frames)));
        let sent = send_mirror(conn.sender.clone(), request(body), Duration::from_secs(10)).await;
        assert!(sent.is_err(), "a cut-off mirror does not complete");
        let arrival = tokio::time::timeout(Duration::from_secs(5), arrivals.recv()).await.expect("arrived");
        assert_eq!(arrival, Some(Err(Some(MIRROR_RESET))), "RST_STREAM(INTERNAL_ERROR), never END_STREAM");
    }

    #[tokio::test]
    async fn a_mirror_past_its_deadline_is_reset() {
        // The request streams on (its caller's body is still open); the response never ends.
        let (conn, mut arrivals) = recording_upstream(None).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, crate::body::BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await.expect("queued");
        let body = crate::body::boxed(http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)));
        let sent = send_mirror(conn.sender.clone(), request(body), Duration::from_millis(300)).await;
        assert!(matches!(sent, Err(MirrorError::Deadline(_))), "{sent:?}");
        let arrival = tokio::time::timeout(Duration::from_secs(5), arrivals.recv()).await.expect("arrived");
        assert_eq!(arrival, Some(Err(Some(MIRROR_RESET))));
        drop(tx);
    }
}
