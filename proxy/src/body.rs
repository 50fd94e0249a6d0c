//! Body wrappers: pass frames through without buffering while observing what metrics
//! and mirroring need.
use crate::grpc::{self, MessageCounter};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the proxy forwards or produces.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request body as a listener hands it over: hyper's (HTTP/1) or an HTTP/2 stream's.
pub trait CallerBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static {}
impl<T> CallerBody for T
where
    T: Body<Data = Bytes> + Send + Sync + 'static,
    T::Error: Into<BoxError>,
{
}

pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    UnsyncBoxBody::new(http_body_util::BodyExt::map_err(body, Into::into))
}

pub fn empty() -> ProxyBody {
    ProxyBody::default()
}

/// How a response stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// grpc-status from trailers (or from trailers-only headers).
    pub grpc_status: Option<u32>,
    pub response_messages: u32,
    /// False when the stream was dropped (cancelled) or failed before its end.
    pub completed: bool,
}

pub type OnComplete = Box<dyn FnOnce(Outcome) + Send>;

pin_project_lite::pin_project! {
    /// Response body that reports its [`Outcome`] exactly once: at end of stream, on
    /// error, or when dropped early (the caller cancelled).
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        counter: MessageCounter,
        grpc_status: Option<u32>,
        on_complete: Option<OnComplete>,
        // gRPC response: an upstream failure mid-stream ends the stream with
        // grpc-status UNAVAILABLE trailers instead of a reset (which clients read as
        // INTERNAL), since the backend connection, not the call, failed.
        grpc: bool,
        finished: bool,
        // Set when the proxy refused a request message: the upstream stream was reset
        // for that, so the caller gets RESOURCE_EXHAUSTED rather than UNAVAILABLE.
        refused: Option<RefusedMessage>,
    }
    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_complete.take() {
                f(Outcome { grpc_status: *this.grpc_status, response_messages: this.counter.messages, completed: false });
            }
        }
    }
}

impl<B> ObservedBody<B> {
    /// `headers_status` is the grpc-status of a trailers-only response, if any.
    pub fn new(inner: B, headers_status: Option<u32>, on_complete: OnComplete) -> Self {
        ObservedBody {
            inner,
            counter: MessageCounter::default(),
            grpc_status: headers_status,
            on_complete: Some(on_complete),
            grpc: false,
            finished: false,
            refused: None,
        }
    }

    /// Reports a request message the proxy refused (see [`RequestBody::limit_messages`]).
    pub fn refused_request(mut self, refused: RefusedMessage) -> Self {
        self.refused = Some(refused);
        self
    }

    /// Marks the response as gRPC (see the `grpc` field).
    pub fn grpc(mut self, grpc: bool) -> Self {
        self.grpc = grpc;
        self
    }
}

fn error_trailers(code: grpc::Code, message: &str) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from(code as u8 as u16));
    if let Ok(v) = http::HeaderValue::from_str(&grpc::percent_encode(message)) {
        t.insert("grpc-message", v);
    }
    t
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        let polled = this.inner.poll_frame(cx).map(|o| o.map(|r| r.map_err(Into::<BoxError>::into)));
        if let (Poll::Ready(Some(Err(e))), true, None) = (&polled, *this.grpc, *this.grpc_status) {
            let (code, message) = match this.refused.as_ref().and_then(|r| r.get()) {
                Some(too_large) => (grpc::Code::ResourceExhausted, too_large.to_string()),
                None => (grpc::Code::Unavailable, format!("upstream failed mid-stream: {e}")),
            };
            *this.finished = true;
            *this.grpc_status = Some(code as u32);
            if let Some(f) = this.on_complete.take() {
                f(Outcome {
                    grpc_status: Some(code as u32),
                    response_messages: this.counter.messages,
                    completed: true,
                });
            }
            return Poll::Ready(Some(Ok(Frame::trailers(error_trailers(code, &message)))));
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.counter.observe(data);
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(code) = grpc::status_of(trailers)
                {
                    *this.grpc_status = Some(code);
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = this.on_complete.take() {
                    f(Outcome {
                        grpc_status: *this.grpc_status,
                        response_messages: this.counter.messages,
                        completed: true,
                    });
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.on_complete.take() {
                    f(Outcome {
                        grpc_status: *this.grpc_status,
                        response_messages: this.counter.messages,
                        completed: false,
                    });
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Frames copied to a mirror. Bounded: a slow mirror is cut off, never the caller.
const MIRROR_QUEUE: usize = 64;

/// A gRPC request message whose length prefix claims more than `--max-grpc-message-bytes`.
/// The chunk carrying that prefix is not forwarded: the request body fails with this
/// error, which resets the upstream stream, and the proxy answers RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "gRPC request message of {claimed} bytes exceeds the proxy's limit of {limit} bytes (--max-grpc-message-bytes)"
)]
pub struct MessageTooLarge {
    pub claimed: u32,
    pub limit: u32,
}

/// Set once by a [`RequestBody`] that refused a message; read by whoever answers the caller.
pub type RefusedMessage = Arc<OnceLock<MessageTooLarge>>;

/// What a mirror's copy of a request body receives.
enum MirrorItem {
    Frame(Frame<Bytes>),
    /// The caller's body ended cleanly: the mirror's may too.
    End,
}

/// Why a mirror's request body failed (and its stream is reset, never ended).
#[derive(Debug, thiserror::Error)]
pub enum MirrorAborted {
    #[error("the mirror fell behind (its copy queue of {MIRROR_QUEUE} frames was full): request cut off")]
    FellBehind,
    #[error("the caller's request ended before its end of stream (cancelled or failed)")]
    CallerGone,
}

/// One mirror's end of the copy queue.
struct MirrorSender {
    tx: mpsc::Sender<MirrorItem>,
    /// Set when the queue was full: tells the mirror why its body is cut off.
    fell_behind: Arc<std::sync::atomic::AtomicBool>,
}

pin_project_lite::pin_project! {
    /// Request body that counts gRPC messages and optionally copies frames to mirrors.
    ///
    /// A mirror's copy ends cleanly only when this body was seen to end (its `None`, or
    /// a frame after which it reports its end, as h2 reads a body's last frame): a
    /// mirror that falls behind, a caller that cancels (the body is dropped before
    /// its end) or whose body fails, make the copy fail, so the mirror's stream is
    /// reset instead of ending with END_STREAM (which would commit a truncated client
    /// stream at the shadow backend). Not `is_end_stream` at drop: h2 reports a reset
    /// stream as ended too.
    pub struct RequestBody<B: Body> {
        #[pin]
        inner: B,
        counter: MessageCounter,
        messages: Arc<AtomicU32>,
        // (limit, where a refusal is reported) when message lengths are limited.
        limit: Option<(u32, RefusedMessage)>,
        mirrors: Vec<MirrorSender>,
    }
}

/// Tells every mirror the request is complete; one whose queue has no room for that
/// is cut off instead.
fn end_mirrors(mirrors: &mut Vec<MirrorSender>) {
    for m in mirrors.drain(..) {
        if m.tx.try_send(MirrorItem::End).is_err() {
            m.fell_behind.store(true, Ordering::Relaxed);
        }
    }
}

impl<B: Body> RequestBody<B> {
    pub fn new(inner: B, messages: Arc<AtomicU32>) -> Self {
        RequestBody { inner, counter: MessageCounter::default(), messages, limit: None, mirrors: Vec::new() }
    }

    /// Fails the body (see [`MessageTooLarge`]) at the first message longer than
    /// `limit` bytes, recording the refusal in `refused`. For gRPC bodies only: other
    /// bodies have no length prefixes.
    pub fn limit_messages(mut self, limit: u32, refused: RefusedMessage) -> Self {
        self.counter = MessageCounter::with_limit(limit);
        self.limit = Some((limit, refused));
        self
    }

    /// A body that receives a copy of every frame of this one.
    pub fn add_mirror(&mut self) -> MirrorBody {
        let (tx, rx) = mpsc::channel(MIRROR_QUEUE);
        let fell_behind = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = MirrorSender { tx, fell_behind: fell_behind.clone() };
        if self.inner.is_end_stream() {
            // A request without a body (END_STREAM on its headers): never polled, so the
            // mirror's copy is complete now.
            end_mirrors(&mut vec![sender]);
        } else {
            self.mirrors.push(sender);
        }
        MirrorBody { rx, fell_behind, done: false }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.counter.observe(data);
                this.messages.store(this.counter.messages, Ordering::Relaxed);
                if let (Some(claimed), Some((limit, refused))) = (this.counter.oversized, this.limit.as_ref()) {
                    let too_large = MessageTooLarge { claimed, limit: *limit };
                    let _ = refused.set(too_large);
                    this.mirrors.clear();
                    return Poll::Ready(Some(Err(Box::new(too_large))));
                }
            }
            if !this.mirrors.is_empty() {
                // A full or closed mirror is dropped: its body then fails, and its
                // stream is reset.
                this.mirrors.retain(|m| match m.tx.try_send(MirrorItem::Frame(clone_frame(frame))) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        m.fell_behind.store(true, Ordering::Relaxed);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
                if this.inner.is_end_stream() {
                    end_mirrors(this.mirrors);
                }
            }
        }
        match &polled {
            Poll::Ready(None) => end_mirrors(this.mirrors),
            // The caller's body failed: the mirrors' copies are cut off.
            Poll::Ready(Some(Err(_))) => this.mirrors.clear(),
            _ => {}
        }
        polled.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn clone_frame(f: &Frame<Bytes>) -> Frame<Bytes> {
    match (f.data_ref(), f.trailers_ref()) {
        (Some(d), _) => Frame::data(d.clone()),
        (None, Some(t)) => Frame::trailers(t.clone()),
        (None, None) => Frame::data(Bytes::new()),
    }
}

/// The mirror's copy of a request body: the caller's frames, then either a clean end
/// (the caller's body ended) or an error (anything else), never a premature end.
pub struct MirrorBody {
    rx: mpsc::Receiver<MirrorItem>,
    fell_behind: Arc<std::sync::atomic::AtomicBool>,
    done: bool,
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(MirrorItem::Frame(f)) => Poll::Ready(Some(Ok(f))),
            Some(MirrorItem::End) => {
                self.done = true;
                Poll::Ready(None)
            }
            None => {
                self.done = true;
                let why = if self.fell_behind.load(Ordering::Relaxed) {
                    MirrorAborted::FellBehind
                } else {
                    MirrorAborted::CallerGone
                };
                Poll::Ready(Some(Err(why.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::Mutex;

    fn grpc_frame(len: usize) -> Bytes {
        let mut v = vec![0u8];
        v.extend_from_slice(&(len as u32).to_be_bytes());
        v.extend(std::iter::repeat_n(1u8, len));
        Bytes::from(v)
    }

    type Frames = Vec<Result<Frame<Bytes>, BoxError>>;
    type Outcomes = Arc<Mutex<Vec<Outcome>>>;

    /// An observed body over `frames` and the outcomes it reports.
    fn recorded(frames: Frames) -> (ObservedBody<impl Body<Data = Bytes, Error = BoxError>>, Outcomes) {
        let seen: Outcomes = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let body = ObservedBody::new(
            StreamBody::new(tokio_stream_iter(frames)),
            None,
            Box::new(move |o| s2.lock().expect("lock").push(o)),
        );
        (body, seen)
    }

    #[tokio::test]
    async fn observed_body_reports_status_and_messages_once() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().expect("v"));
        let (body, seen) = recorded(vec![
            Ok(Frame::data(grpc_frame(3))),
            Ok(Frame::data(grpc_frame(10))),
            Ok(Frame::trailers(trailers)),
        ]);
        let collected = body.collect().await.expect("collect");
        assert_eq!(collected.trailers().and_then(grpc::status_of), Some(5));
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen, vec![Outcome { grpc_status: Some(5), response_messages: 2, completed: true }]);
    }

    #[tokio::test]
    async fn upstream_failure_mid_stream_becomes_unavailable_trailers() {
        let (body, seen) = recorded(vec![Ok(Frame::data(grpc_frame(3))), Err("connection reset".into())]);
        let body = body.grpc(true);
        let collected = body.collect().await.expect("ends cleanly");
        let trailers = collected.trailers().expect("trailers");
        assert_eq!(grpc::status_of(trailers), Some(14));
        assert!(trailers["grpc-message"].to_str().expect("ascii").contains("connection reset"));
        assert_eq!(seen.lock().expect("lock")[0].grpc_status, Some(14));
    }

    #[tokio::test]
    async fn dropped_body_reports_cancelled() {
        let (body, seen) = recorded(vec![Ok(Frame::data(grpc_frame(1)))]);
        drop(body);
        assert!(!seen.lock().expect("lock")[0].completed);
    }

    #[tokio::test]
    async fn request_body_counts_and_mirrors() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(grpc_frame(2))), Ok(Frame::data(grpc_frame(4)))];
        let count = Arc::new(AtomicU32::new(0));
        let mut body = RequestBody::new(StreamBody::new(tokio_stream_iter(frames)), count.clone());
        let mirror = body.add_mirror();
        let main = body.collect().await.expect("collect").to_bytes();
        let copy = mirror.collect().await.expect("a complete request ends the mirror's cleanly").to_bytes();
        assert_eq!(main, copy);
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn request_body_refuses_a_message_over_its_limit_before_forwarding_it() {
        let frames: Frames = vec![Ok(Frame::data(grpc_frame(8))), Ok(Frame::data(grpc_frame(9)))];
        let refused = RefusedMessage::default();
        let mut body = RequestBody::new(StreamBody::new(tokio_stream_iter(frames)), Arc::new(AtomicU32::new(0)))
            .limit_messages(8, refused.clone());
        let first = body.frame().await.expect("a frame").expect("first message is within the limit");
        assert_eq!(first.data_ref().map(Bytes::len), Some(13));
        let err = body.frame().await.expect("a result").expect_err("second message is over the limit");
        assert!(err.to_string().contains("9 bytes exceeds the proxy's limit of 8"), "{err}");
        assert_eq!(refused.get(), Some(&MessageTooLarge { claimed: 9, limit: 8 }));
    }

    #[tokio::test]
    async fn refused_request_turns_the_upstream_reset_into_resource_exhausted() {
        let refused = RefusedMessage::default();
        let _ = refused.set(MessageTooLarge { claimed: 9, limit: 8 });
        let (body, seen) = recorded(vec![Ok(Frame::data(grpc_frame(3))), Err("stream reset: CANCEL".into())]);
        let collected = body.grpc(true).refused_request(refused).collect().await.expect("ends cleanly");
        let trailers = collected.trailers().expect("trailers");
        assert_eq!(grpc::status_of(trailers), Some(8));
        assert!(trailers["grpc-message"].to_str().expect("ascii").contains("--max-grpc-message-bytes"));
        assert_eq!(seen.lock().expect("lock")[0].grpc_status, Some(8));
    }

    /// Reads `mirror` to its end: the data it carried and how it ended.
    async fn drain(mut mirror: MirrorBody) -> (Vec<u8>, Result<(), String>) {
        let mut data = Vec::new();
        while let Some(frame) = mirror.frame().await {
            match frame {
                Ok(f) => data.extend_from_slice(f.data_ref().map(|d| d.as_ref()).unwrap_or_default()),
                Err(e) => return (data, Err(e.to_string())),
            }
        }
        (data, Ok(()))
    }

    #[tokio::test]
    async fn unary_body_taken_by_its_last_frame_ends_the_mirror_cleanly() {
        // h2 stops polling a body whose last frame said so (is_end_stream), then drops it.
        let mut body = RequestBody::new(http_body_util::Full::new(grpc_frame(3)), Arc::default());
        let mirror = body.add_mirror();
        let first = body.frame().await.expect("a frame").expect("ok");
        assert!(body.is_end_stream());
        drop(body);
        let (data, end) = drain(mirror).await;
        assert_eq!(data, first.into_data().expect("data").to_vec());
        assert_eq!(end, Ok(()));
    }

    /// A caller's stream as h2 reads it: one frame, then (once `reset`) "ended" as h2
    /// reports a stream the peer reset, without ever yielding its end.
    struct ResetAfterOneFrame {
        frame: Option<Bytes>,
        reset: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Body for ResetAfterOneFrame {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.frame.take() {
                Some(f) => Poll::Ready(Some(Ok(Frame::data(f)))),
                None => Poll::Pending,
            }
        }
        fn is_end_stream(&self) -> bool {
            self.reset.load(Ordering::Relaxed)
        }
    }

    #[tokio::test]
    async fn a_caller_reset_that_h2_reports_as_ended_still_fails_the_mirror() {
        let reset = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let inner = ResetAfterOneFrame { frame: Some(grpc_frame(2)), reset: reset.clone() };
        let mut body = RequestBody::new(inner, Arc::default());
        let mirror = body.add_mirror();
        body.frame().await.expect("frame").expect("ok");
        reset.store(true, Ordering::Relaxed);
        drop(body);
        let (data, end) = drain(mirror).await;
        assert_eq!(data.len(), 7);
        assert!(end.is_err(), "cut off, not ended");
    }

    #[tokio::test]
    async fn a_request_without_body_is_mirrored_complete() {
        let mut body = RequestBody::new(http_body_util::Empty::<Bytes>::new(), Arc::default());
        let mirror = body.add_mirror();
        drop(body);
        assert_eq!(drain(mirror).await, (Vec::new(), Ok(())));
    }

    #[tokio::test]
    async fn a_mirror_that_falls_behind_is_cut_off_with_an_error_not_an_end() {
        let frames: Frames = (0..MIRROR_QUEUE + 10).map(|_| Ok(Frame::data(grpc_frame(1)))).collect();
        let mut body = RequestBody::new(StreamBody::new(tokio_stream_iter(frames)), Arc::default());
        let mirror = body.add_mirror();
        // Nobody reads the mirror while the caller's request streams through.
        let main = body.collect().await.expect("the caller is never held up").to_bytes();
        assert_eq!(main.len(), (MIRROR_QUEUE + 10) * 6);
        let (data, end) = drain(mirror).await;
        assert_eq!(data.len(), MIRROR_QUEUE * 6, "the frames queued before it fell behind");
        let error = end.expect_err("a truncated copy must not end cleanly");
        assert!(error.contains("fell behind"), "{error}");
    }

    #[tokio::test]
    async fn a_cancelled_caller_fails_the_mirror() {
        // Two messages, then the caller goes away mid-stream (its body is dropped).
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let mut body =
            RequestBody::new(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)), Arc::default());
        let mirror = body.add_mirror();
        for _ in 0..2 {
            tx.send(Ok(Frame::data(grpc_frame(2)))).await.expect("send");
            body.frame().await.expect("frame").expect("ok");
        }
        drop(body);
        let (data, end) = drain(mirror).await;
        assert_eq!(data.len(), 14);
        assert!(end.expect_err("cut off").contains("before its end of stream"));
        drop(tx);
    }

    #[tokio::test]
    async fn a_failing_caller_body_fails_the_mirror() {
        let frames: Frames = vec![Ok(Frame::data(grpc_frame(2))), Err("client reset the stream".into())];
        let mut body = RequestBody::new(StreamBody::new(tokio_stream_iter(frames)), Arc::default());
        let mirror = body.add_mirror();
        assert!(body.collect().await.is_err());
        let (data, end) = drain(mirror).await;
        assert_eq!(data.len(), 7);
        assert!(end.is_err());
    }

    fn tokio_stream_iter<T>(items: Vec<T>) -> impl futures_lite_stream::Stream<Item = T> {
        futures_lite_stream::iter(items)
    }

    /// A minimal iterator stream, to avoid a dependency for tests.
    mod futures_lite_stream {
        pub use futures_core_stream::Stream;
        pub fn iter<T>(items: Vec<T>) -> Iter<T> {
            Iter { items: items.into_iter() }
        }
        pub struct Iter<T> {
            items: std::vec::IntoIter<T>,
        }
        impl<T> Unpin for Iter<T> {}
        impl<T> Stream for Iter<T> {
            type Item = T;
            fn poll_next(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<T>> {
                std::task::Poll::Ready(self.items.next())
            }
        }
        mod futures_core_stream {
            pub use tokio_stream::Stream;
        }
    }
}
