//! Reads an HTTP/2 connection in turns, so what one burst of frames completes leaves
//! before the rest of the burst is read.
//!
//! `h2` decodes every frame a read returns before its connection task yields, and a
//! read takes all the socket holds. When a backend answers a burst of calls at once
//! (under load it does: calls arrive in bursts and a server answers what it read
//! together), the upstream connection task wakes every stream, the streams hand their
//! responses to the client's connection, and that connection, queued last on the
//! single-threaded runtime, writes them all in one go. The client sees nothing until
//! the proxy has handled the whole burst, then all of it, and its next burst of calls
//! comes back the same way: client and proxy take turns instead of working at the same
//! time, and each waits while the other works. Measured with 64 calls in flight and
//! one connection: the core serving the proxy and the backend idle 25% of the time,
//! against 7% behind HAProxy, which writes as it goes.
//!
//! This wrapper ends a turn once `ends_per_turn` streams have ended in what it handed
//! to `h2` (DATA or HEADERS with END_STREAM: whole responses): the next
//! read answers `Pending` and wakes the task again at once, so the streams that turn
//! completed, and the connection they write to, run before this one reads on. Reads
//! are sized from the bytes a stream end has taken so far, so a read holds about one
//! turn: a burst of small responses is cut into turns, while a large body, whose
//! turns are many bytes long, is read as before. A quiet connection (one call at a
//! time) never fills a turn and never yields. Nothing is dropped or reordered.
use crate::frames::{FrameCursor, ends_stream};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The smallest read: a turn's last stream end must not cost a read of its own.
const MIN_READ: usize = 1024;
/// Reads that would be cut to more than this are not cut: the responses are large,
/// and a turn of them fills `h2`'s buffer anyway.
const MAX_CUT_READ: usize = 16 * 1024;
/// Where the bytes-per-end estimate starts: a small unary gRPC response with its
/// headers and trailers takes ~150 bytes.
const INITIAL_BYTES_PER_END: usize = 256;

/// An I/O object whose reads come in turns of `ends_per_turn` stream ends (see the
/// module documentation). Writes pass through untouched.
#[derive(Debug)]
pub struct ReadTurns<T> {
    inner: T,
    frames: FrameCursor,
    ends_per_turn: usize,
    /// Stream ends handed to `h2` in this turn.
    ends: usize,
    /// Bytes handed to `h2` in this turn.
    bytes: usize,
    /// Bytes per stream end, smoothed over turns: sizes the reads.
    bytes_per_end: usize,
    /// Reads cut to a turn's size land here first (zeroed once, grown to the largest
    /// such read), then are copied into `h2`'s buffer. That buffer's spare room comes
    /// uninitialised on every read, and safe code must zero a slice before reading into
    /// it: zeroing the turn's size each time cost ~7.5k instructions per call at one
    /// call at a time (callgrind), copying what was read costs a few hundred.
    scratch: Vec<u8>,
}

impl<T> ReadTurns<T> {
    /// `ends_per_turn` of 0 is taken as 1.
    pub fn new(inner: T, ends_per_turn: usize) -> Self {
        ReadTurns {
            inner,
            frames: FrameCursor::default(),
            ends_per_turn: ends_per_turn.max(1),
            ends: 0,
            bytes: 0,
            bytes_per_end: INITIAL_BYTES_PER_END,
            scratch: Vec::new(),
        }
    }

    /// Closes the turn: what it took per stream end feeds the estimate.
    fn end_turn(&mut self) {
        if let Some(this_turn) = self.bytes.checked_div(self.ends) {
            self.bytes_per_end = self.bytes_per_end.saturating_mul(3).saturating_add(this_turn) / 4;
        }
        self.ends = 0;
        self.bytes = 0;
    }

    /// The most this read should take: about the bytes of the turn's remaining ends.
    fn read_limit(&self) -> usize {
        let ends_left = self.ends_per_turn.saturating_sub(self.ends).max(1);
        ends_left.saturating_mul(self.bytes_per_end).max(MIN_READ)
    }

    fn handed_over(&mut self, bytes: &[u8]) {
        // Saturating: a stream that never ends (a long download) keeps one turn open.
        self.bytes = self.bytes.saturating_add(bytes.len());
        let ends = &mut self.ends;
        self.frames.feed(bytes, |h| {
            if ends_stream(h) {
                *ends += 1;
            }
        });
    }
}

impl<T: AsyncRead + Unpin> ReadTurns<T> {
    fn poll_inner(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_pending() {
            // The socket is drained and the task yields anyway: a new turn starts.
            self.end_turn();
        }
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadTurns<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.ends >= this.ends_per_turn {
            // The turn is over: the tasks it woke run first. Nothing was read, so
            // nothing waits in a buffer; the wake puts this task back in the queue.
            this.end_turn();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let limit = this.read_limit();
        if limit >= buf.remaining() || limit > MAX_CUT_READ {
            // Nothing to cut: read into the caller's buffer directly.
            let before = buf.filled().len();
            ready!(this.poll_inner(cx, buf))?;
            this.handed_over(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        let mut scratch = std::mem::take(&mut this.scratch);
        if scratch.len() < limit {
            scratch.resize(limit, 0);
        }
        let mut cut = ReadBuf::new(&mut scratch[..limit]);
        let polled = this.poll_inner(cx, &mut cut);
        let n = cut.filled().len();
        if let Poll::Ready(Ok(())) = polled {
            buf.put_slice(&scratch[..n]);
            this.handed_over(&scratch[..n]);
        }
        this.scratch = scratch;
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadTurns<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{FLAG_END_STREAM, TYPE_DATA, TYPE_HEADERS, frame};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};
    use tokio::io::AsyncWriteExt;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// `count` responses as a backend sends them: HEADERS, DATA, trailers ending the stream.
    fn responses(count: u32, body: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for k in 0..count {
            let stream = 2 * k + 1;
            bytes.extend(frame(TYPE_HEADERS, 0x4, stream, &[0x88]));
            bytes.extend(frame(TYPE_DATA, 0, stream, &vec![7; body]));
            bytes.extend(frame(TYPE_HEADERS, 0x4 | FLAG_END_STREAM, stream, &[0x40, 0x0b]));
        }
        bytes
    }

    /// Reads once with a buffer as large as `h2`'s; `None` when the read is pending.
    fn read_once(turns: &mut ReadTurns<tokio::io::DuplexStream>, waker: &Waker) -> Option<Vec<u8>> {
        let mut storage = vec![0; 64 * 1024];
        let mut buf = ReadBuf::new(&mut storage);
        match Pin::new(turns).poll_read(&mut Context::from_waker(waker), &mut buf) {
            Poll::Ready(result) => {
                result.expect("read");
                Some(buf.filled().to_vec())
            }
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn a_burst_of_responses_is_read_in_turns_and_nothing_is_lost() {
        let (mut backend, proxy) = tokio::io::duplex(1 << 20);
        let sent = responses(40, 100);
        backend.write_all(&sent).await.expect("write");
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut turns = ReadTurns::new(proxy, 8);

        let mut received = Vec::new();
        let mut yields = 0;
        // Bounded: 40 responses take far fewer reads than this.
        for _ in 0..200 {
            if received.len() == sent.len() {
                break;
            }
            let woken_before = counter.0.load(Ordering::SeqCst);
            match read_once(&mut turns, &waker) {
                Some(bytes) => {
                    assert!(!bytes.is_empty(), "the duplex still holds data");
                    // Sized to about a turn: 8 ends at the first estimate of bytes per end.
                    assert!(bytes.len() <= 8 * INITIAL_BYTES_PER_END, "a read took {}", bytes.len());
                    received.extend(bytes);
                }
                None => {
                    // A turn ended with data still in the socket: the task is woken at
                    // once, or it would wait for bytes that are already there.
                    assert_eq!(counter.0.load(Ordering::SeqCst), woken_before + 1, "a yield wakes the task");
                    yields += 1;
                    tokio::task::yield_now().await;
                }
            }
        }
        assert_eq!(received, sent, "every byte, in order");
        // 40 ends of ~130 bytes: reads of at most 2 KiB, each a turn of 8 or more ends.
        assert!(yields >= 2, "40 responses in turns of 8 ends yielded {yields} times");
    }

    #[tokio::test]
    async fn a_quiet_connection_never_yields() {
        let (mut backend, proxy) = tokio::io::duplex(1 << 20);
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut turns = ReadTurns::new(proxy, 8);
        for _ in 0..20 {
            // One call at a time: each read finds one response, and the socket is then empty.
            let sent = responses(1, 100);
            backend.write_all(&sent).await.expect("write");
            assert_eq!(read_once(&mut turns, &waker), Some(sent));
            let woken_before = counter.0.load(Ordering::SeqCst);
            assert_eq!(read_once(&mut turns, &waker), None, "nothing more to read");
            // Pending because the socket is empty (it wakes the task when data comes),
            // not a yield: a turn of 8 ends was never filled.
            assert_eq!(counter.0.load(Ordering::SeqCst), woken_before, "no yield");
        }
    }

    #[tokio::test]
    async fn large_bodies_are_read_in_large_reads() {
        let (mut backend, proxy) = tokio::io::duplex(1 << 20);
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let mut turns = ReadTurns::new(proxy, 8);
        // 16 KiB responses: the estimate of bytes per stream end grows past the
        // buffer, so reads take what the caller's buffer holds.
        let mut reads = 0;
        for _ in 0..12 {
            let sent = responses(8, 16 * 1024);
            backend.write_all(&sent).await.expect("write");
            let (mut got, mut this_round) = (0, 0);
            for _ in 0..1000 {
                if got == sent.len() {
                    break;
                }
                match read_once(&mut turns, &waker) {
                    Some(bytes) => (got, this_round) = (got + bytes.len(), this_round + 1),
                    // tokio's duplex answers `Pending` once the task's budget is spent,
                    // until the task yields.
                    None => tokio::task::yield_now().await,
                }
            }
            assert_eq!(got, sent.len());
            reads = this_round;
        }
        assert!(turns.bytes_per_end > 12 * 1024, "estimate {}", turns.bytes_per_end);
        // 128 KiB into 64 KiB buffers: three reads, none cut short to a turn's size.
        assert!(reads <= 3, "the last 8 responses took {reads} reads");
        assert!(turns.scratch.len() <= MAX_CUT_READ, "scratch buffer {} bytes", turns.scratch.len());
    }
}
