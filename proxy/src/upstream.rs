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
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
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

/// Keep-alive of an upstream connection: PING every `interval` while `in_use` says
/// requests are in flight; no answer within `timeout` closes the connection.
pub struct KeepAlive<F> {
    pub interval: Duration,
    pub timeout: Duration,
    pub in_use: F,
}

/// Runs the connection's I/O until it ends; spawned once per connection.
pub fn spawn_connection<T, F>(
    mut conn: h2::client::Connection<T, Bytes>,
    sender: SendRequest<Bytes>,
    keep_alive: KeepAlive<F>,
    addr: std::net::SocketAddr,
) -> UpstreamConnection
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> bool + Send + Sync + 'static,
{
    let closed = Arc::new(AtomicBool::new(false));
    let closed_by_task = closed.clone();
    let mut pings = conn.ping_pong();
    tokio::spawn(async move {
        let ended = async {
            let Some(pings) = pings.as_mut() else {
                return (&mut conn).await.map_err(|e| e.to_string());
            };
            loop {
                tokio::select! {
                    r = &mut conn => return r.map_err(|e| e.to_string()),
                    _ = tokio::time::sleep(keep_alive.interval) => {}
                }
                if !(keep_alive.in_use)() {
                    continue;
                }
                let ping = tokio::time::timeout(keep_alive.timeout, pings.ping(h2::Ping::opaque()));
                tokio::select! {
                    r = &mut conn => return r.map_err(|e| e.to_string()),
                    answered = ping => match answered {
                        Ok(Ok(_pong)) => {}
                        Ok(Err(e)) => return Err(format!("keep-alive ping: {e}")),
                        Err(_) => return Err(format!("no keep-alive answer within {:?}", keep_alive.timeout)),
                    },
                }
            }
        };
        let result = ended.await;
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

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2); `h2` refuses a message carrying them, so
/// they are dropped as hyper does (`te: trailers` is allowed in requests only).
/// Messages read by the proxy's own HTTP/2 connections never carry them (`h2` refuses
/// those on receipt too), only a route's header filter can add one, so one scan finds
/// nothing and nothing is removed on the hot path.
pub fn strip_connection_headers(headers: &mut HeaderMap, request: bool) {
    use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
    let forbidden = |name: &http::HeaderName, value: &http::HeaderValue| {
        *name == CONNECTION
            || *name == TRANSFER_ENCODING
            || *name == UPGRADE
            || (*name == TE && (!request || value != "trailers"))
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
    };
    if !headers.iter().any(|(name, value)| forbidden(name, value)) {
        return;
    }
    if let Some(listed) = headers.remove(CONNECTION)
        && let Ok(listed) = listed.to_str()
    {
        for name in listed.split(',') {
            headers.remove(name.trim());
        }
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
    if headers.get(TE).is_some_and(|te| !request || te != "trailers") {
        headers.remove(TE);
    }
}

/// Copies a body onto an HTTP/2 stream (a request upstream, a response to the client),
/// honouring the stream's flow control: one frame is pulled from the source only once
/// the peer grants capacity. A failing source resets the stream with `on_error`.
pub struct BodyPipe {
    body: ProxyBody,
    stream: SendStream<Bytes>,
    on_error: Reason,
}

impl BodyPipe {
    pub fn new(body: ProxyBody, stream: SendStream<Bytes>, on_error: Reason) -> Self {
        BodyPipe { body, stream, on_error }
    }
}

impl Future for BodyPipe {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            // Capacity first: pulling a frame the upstream cannot take yet would buffer it.
            this.stream.reserve_capacity(1);
            if this.stream.capacity() == 0 {
                loop {
                    match this.stream.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => continue,
                        Poll::Ready(Some(Ok(_))) => break,
                        // The stream was reset or the connection failed.
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => {
                            return match this.stream.poll_reset(cx) {
                                Poll::Ready(_) => Poll::Ready(()),
                                Poll::Pending => Poll::Pending,
                            };
                        }
                    }
                }
            }
            let frame = match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    // Waiting on the caller; stop early if the upstream resets the stream.
                    return match this.stream.poll_reset(cx) {
                        Poll::Ready(_) => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    };
                }
            };
            match frame {
                None => {
                    let _ = this.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "body failed; resetting the stream");
                    this.stream.send_reset(this.on_error);
                    return Poll::Ready(());
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let last = this.body.is_end_stream();
                        if data.is_empty() && !last {
                            continue;
                        }
                        if this.stream.send_data(data, last).is_err() || last {
                            return Poll::Ready(());
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = this.stream.send_trailers(trailers);
                        }
                        return Poll::Ready(());
                    }
                },
            }
        }
    }
}

/// A body read from an HTTP/2 stream (a request from a client, a response from an
/// upstream); received bytes are released to the stream's flow control as they are
/// handed on.
pub struct H2Body {
    recv: RecvStream,
    data_done: bool,
    finished: bool,
}

impl H2Body {
    pub fn new(recv: RecvStream) -> Self {
        H2Body { recv, data_done: false, finished: false }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // RST_STREAM(NO_ERROR) ends a body early without failing it (RFC 9113 §8.1).
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => {
                    this.finished = true;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        let trailers = ready!(this.recv.poll_trailers(cx));
        this.finished = true;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    async fn client(window: u32) -> UpstreamConnection {
        let (a, b) = tokio::io::duplex(1 << 20);
        tokio::spawn(echo_server(b, window));
        let (sender, conn) = h2::client::handshake(a).await.expect("client handshake");
        let keep_alive =
            KeepAlive { interval: Duration::from_secs(60), timeout: Duration::from_secs(5), in_use: || false };
        spawn_connection(conn, sender, keep_alive, "127.0.0.1:1".parse().expect("addr"))
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
        let (sender, conn) = h2::client::handshake(a).await.expect("client handshake");
        let keep_alive =
            KeepAlive { interval: Duration::from_secs(60), timeout: Duration::from_secs(5), in_use: || false };
        let upstream = spawn_connection(conn, sender, keep_alive, "127.0.0.1:1".parse().expect("addr"));
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

    #[test]
    fn connection_specific_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", http::HeaderValue::from_static("x-hop, keep-alive"));
        h.insert("x-hop", http::HeaderValue::from_static("1"));
        h.insert("keep-alive", http::HeaderValue::from_static("5"));
        h.insert("te", http::HeaderValue::from_static("gzip"));
        h.insert("content-type", http::HeaderValue::from_static("application/grpc"));
        strip_connection_headers(&mut h, true);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = HeaderMap::new();
        h.insert("te", http::HeaderValue::from_static("trailers"));
        strip_connection_headers(&mut h, true);
        assert!(h.contains_key("te"), "te: trailers is what gRPC needs");
        strip_connection_headers(&mut h, false);
        assert!(!h.contains_key("te"), "no te in responses");
    }
}
