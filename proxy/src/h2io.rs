//! HTTP/2 pieces both sides of a hop use: reading a body from a stream ([`H2Body`]),
//! writing one to a stream with flow control ([`BodyPipe`]), the headers HTTP/2 forbids,
//! and keep-alive PINGs ([`KeepAlive`]) for the listeners' and the upstream
//! connections.
use crate::body::ProxyBody;
use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Instant;

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
/// honouring the stream's flow control: after the first frame, a frame is pulled from
/// the source only once the peer grants capacity. A failing source resets the stream
/// with `on_error`.
pub struct BodyPipe {
    body: ProxyBody,
    stream: SendStream<Bytes>,
    on_error: Reason,
    /// The first frame is handed to h2 without waiting for capacity. h2 assigns a new
    /// upstream stream none until its connection task opens the stream, and that task
    /// flushes as it goes: waiting would send the HEADERS in one write and the first
    /// DATA frame in a second, waking the upstream twice per unary call. h2 holds the
    /// frame until capacity arrives and sends it in the same write as the HEADERS.
    /// Later frames wait for capacity, so at most one frame is ever held ahead, as when
    /// one capacity unit admitted a whole frame.
    first_frame: bool,
}

impl BodyPipe {
    pub fn new(body: ProxyBody, stream: SendStream<Bytes>, on_error: Reason) -> Self {
        BodyPipe { body, stream, on_error, first_frame: true }
    }

    /// Resets the stream with the pipe's error reason (the copy is abandoned).
    pub fn reset(&mut self) {
        self.stream.send_reset(self.on_error);
    }
}

impl Future for BodyPipe {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            // Capacity first: pulling a frame the upstream cannot take yet would buffer it.
            if !this.first_frame {
                this.stream.reserve_capacity(1);
                while this.stream.capacity() == 0 {
                    match this.stream.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        // The stream was reset or the connection failed.
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => return this.stream.poll_reset(cx).map(|_| ()),
                    }
                }
            }
            let frame = match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(f) => f,
                // Waiting on the caller; stop early if the upstream resets the stream.
                Poll::Pending => return this.stream.poll_reset(cx).map(|_| ()),
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
                        this.first_frame = false;
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

/// Why a served or upstream HTTP/2 connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    H2(#[from] h2::Error),
    #[error("no answer to a keep-alive PING within {0:?}")]
    KeepAliveTimeout(Duration),
}

/// Keep-alive PINGs on one connection: every `interval` while `in_use()` says so, a PING
/// is sent; no answer within `timeout` ends the connection. Polled beside the
/// connection by the task that drives it.
pub struct KeepAlive<F> {
    pings: h2::PingPong,
    interval: Duration,
    timeout: Duration,
    in_use: F,
    timer: Pin<Box<tokio::time::Sleep>>,
    awaiting_pong: bool,
}

impl<F: Fn() -> bool> KeepAlive<F> {
    /// `None` when `interval` is zero (keep-alive off) or the PING handle was taken.
    pub fn new(pings: Option<h2::PingPong>, interval: Duration, timeout: Duration, in_use: F) -> Option<Self> {
        let pings = pings.filter(|_| !interval.is_zero())?;
        let timer = Box::pin(tokio::time::sleep(interval));
        Some(KeepAlive { pings, interval, timeout, in_use, timer, awaiting_pong: false })
    }

    /// Pending while the peer keeps answering; Ready with the reason once it has not.
    pub fn poll_failed(&mut self, cx: &mut Context<'_>) -> Poll<ConnectionError> {
        loop {
            if self.awaiting_pong {
                match self.pings.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.awaiting_pong = false;
                        self.timer.as_mut().reset(Instant::now() + self.interval);
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(e.into()),
                    Poll::Pending => {}
                }
                ready!(self.timer.as_mut().poll(cx));
                return Poll::Ready(ConnectionError::KeepAliveTimeout(self.timeout));
            }
            ready!(self.timer.as_mut().poll(cx));
            if !(self.in_use)() {
                self.timer.as_mut().reset(Instant::now() + self.interval);
                continue;
            }
            if let Err(e) = self.pings.send_ping(h2::Ping::opaque()) {
                return Poll::Ready(e.into());
            }
            self.awaiting_pong = true;
            self.timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }
}

/// Polls an optional keep-alive beside its connection: Pending when keep-alive is off.
pub fn poll_keep_alive<F: Fn() -> bool>(
    keep_alive: &mut Option<KeepAlive<F>>,
    cx: &mut Context<'_>,
) -> Poll<ConnectionError> {
    keep_alive.as_mut().map_or(Poll::Pending, |k| k.poll_failed(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

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
