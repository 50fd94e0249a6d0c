//! Control-frame flood defence below hyper (CVE-2019-9512 PING flood, CVE-2019-9515
//! SETTINGS flood).
//!
//! h2 answers every PING and SETTINGS frame. It keeps only one pending ACK, so a flood
//! costs no memory, but it costs a write per frame and lets one peer keep the proxy
//! busy for as long as it likes. h2 exposes no limit, so this wrapper around the
//! connection's socket follows the frame headers of both directions (9 bytes per
//! frame; payloads are skipped, not read twice) and counts the peer's PINGs and
//! SETTINGS. Past `limit_per_second` of either in one second, it writes GOAWAY
//! ENHANCE_YOUR_CALM at the next frame boundary of the proxy's own output and ends
//! the connection. As in grpc-go's keepalive enforcement, the PING count restarts
//! whenever the proxy sends HEADERS or DATA: a client measuring bandwidth (BDP pings)
//! pings for every burst of data it receives, a flood comes with no traffic at all.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::frames::{FRAME_HEADER_LEN, FrameCursor, TYPE_DATA, TYPE_HEADERS, TYPE_PING, TYPE_SETTINGS};

const FLAG_ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Counts one kind of frame per one-second window. The window opens at the first frame
/// counted, so a reset (on every HEADERS or DATA the proxy sends) costs no clock read.
#[derive(Debug, Default)]
struct RateWindow {
    started: Option<Instant>,
    count: u32,
}

impl RateWindow {
    fn reset(&mut self) {
        self.started = None;
        self.count = 0;
    }

    /// Counts one frame; true when more than `limit` arrived within the current second.
    fn hit(&mut self, limit: u32) -> bool {
        let now = Instant::now();
        match self.started {
            Some(started) if now.duration_since(started) < Duration::from_secs(1) => {}
            _ => {
                self.started = Some(now);
                self.count = 0;
            }
        }
        self.count += 1;
        self.count > limit
    }
}

/// A server-side HTTP/2 connection's socket, watched for control-frame floods.
pub struct FloodGuard<T> {
    inner: T,
    limit_per_second: u32,
    inbound: FrameCursor,
    outbound: FrameCursor,
    pings: RateWindow,
    settings: RateWindow,
    last_client_stream: u32,
    /// GOAWAY bytes and how many are written, once a flood is seen.
    goaway: Option<([u8; FRAME_HEADER_LEN + 8], usize)>,
}

impl<T> FloodGuard<T> {
    pub fn new(inner: T, limit_per_second: u32) -> Self {
        FloodGuard {
            inner,
            limit_per_second,
            inbound: FrameCursor::after_preface(),
            outbound: FrameCursor::default(),
            pings: RateWindow::default(),
            settings: RateWindow::default(),
            last_client_stream: 0,
            goaway: None,
        }
    }

    fn inspect_inbound(&mut self, bytes: &[u8]) {
        let (limit, pings, settings, last) =
            (self.limit_per_second, &mut self.pings, &mut self.settings, &mut self.last_client_stream);
        let mut flood = false;
        self.inbound.feed(bytes, |h| {
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            match (h[3], h[4] & FLAG_ACK != 0) {
                (TYPE_HEADERS, _) => *last = (*last).max(stream),
                (TYPE_PING, false) => flood |= pings.hit(limit),
                (TYPE_SETTINGS, false) => flood |= settings.hit(limit),
                _ => {}
            }
        });
        if flood && self.goaway.is_none() {
            tracing::warn!(limit_per_second = limit, "HTTP/2 control-frame flood: GOAWAY ENHANCE_YOUR_CALM");
            metrics::counter!("strait_h2_floods_total").increment(1);
            let mut frame = [0u8; FRAME_HEADER_LEN + 8];
            frame[2] = 8; // payload length
            frame[3] = 0x7; // GOAWAY, stream 0
            frame[9..13].copy_from_slice(&self.last_client_stream.to_be_bytes());
            frame[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
            self.goaway = Some((frame, 0));
        }
    }

    fn flood_error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, "HTTP/2 control-frame flood")
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> FloodGuard<T> {
    /// Writes what is left of the GOAWAY; Ready(Ok) once all of it is out.
    fn poll_write_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((frame, written)) = self.goaway.as_mut()
            && *written < frame.len()
        {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &frame[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Before a write: once a flood was seen and our output is between frames, the
    /// GOAWAY goes out and the write fails instead.
    fn poll_goaway_instead_of_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.goaway.is_some() && self.outbound.at_frame_boundary() {
            return self.poll_end(cx);
        }
        Poll::Ready(Ok(()))
    }

    /// Follows bytes that reached the socket: our DATA or HEADERS makes the peer's
    /// next PINGs legitimate (BDP probes answer our data).
    fn wrote(&mut self, bytes: &[u8]) {
        let pings = &mut self.pings;
        self.outbound.feed(bytes, |h| {
            if matches!(h[3], TYPE_DATA | TYPE_HEADERS) {
                pings.reset();
            }
        });
    }

    /// After a flood: GOAWAY if our output is between frames, then the error that makes
    /// the connection close.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.outbound.at_frame_boundary() {
            ready!(self.poll_write_goaway(cx))?;
        }
        Poll::Ready(Err(Self::flood_error()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for FloodGuard<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.goaway.is_some() {
            return this.poll_end(cx);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.inspect_inbound(&buf.filled()[before..]);
        if this.goaway.is_some() {
            // The frames that tripped the limit are dropped with the connection.
            buf.set_filled(before);
            return this.poll_end(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FloodGuard<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_goaway_instead_of_write(cx))?;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.wrote(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Vectored writes pass through: h2 chains a large DATA payload behind the buffer
    // holding frame headers, and without writev each part took a syscall of its own.
    // Every byte written still passes the frame cursor, slice by slice.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_goaway_instead_of_write(cx))?;
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let mut unfed = n;
        for buf in bufs {
            if unfed == 0 {
                break;
            }
            let written = unfed.min(buf.len());
            this.wrote(&buf[..written]);
            unfed -= written;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{PREFACE_LEN, frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn rate_window_counts_to_its_limit_and_a_reset_starts_it_again() {
        let mut window = RateWindow::default();
        assert!((0..5).all(|_| !window.hit(5)), "five frames are within a limit of five");
        assert!(window.hit(5), "the sixth within the second is over it");
        window.reset();
        assert!(!window.hit(5), "after a reset the count starts again");
    }

    #[tokio::test]
    async fn ping_flood_gets_goaway_enhance_your_calm() {
        let (proxy_side, mut peer) = tokio::io::duplex(1 << 20);
        let mut guard = FloodGuard::new(proxy_side, 100);
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(TYPE_HEADERS, 0x4, 7, &[]));
        for _ in 0..100 {
            input.extend(frame(TYPE_PING, 0, 0, &[0; 8]));
            input.extend(frame(TYPE_PING, FLAG_ACK, 0, &[0; 8])); // ACKs do not count
        }
        peer.write_all(&input).await.expect("write");
        let mut sink = vec![0u8; input.len()];
        let mut got = 0;
        while got < input.len() {
            got += guard.read(&mut sink[got..]).await.expect("within the limit");
        }
        peer.write_all(&frame(TYPE_PING, 0, 0, &[0; 8])).await.expect("write");
        let err = guard.read(&mut sink).await.expect_err("flood");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        let mut goaway = [0u8; 17];
        peer.read_exact(&mut goaway).await.expect("GOAWAY written");
        assert_eq!(goaway[3], 0x7);
        assert_eq!(u32::from_be_bytes(goaway[9..13].try_into().expect("4")), 7, "last stream");
        assert_eq!(u32::from_be_bytes(goaway[13..17].try_into().expect("4")), ENHANCE_YOUR_CALM);
    }

    #[tokio::test]
    async fn pings_between_our_data_frames_are_not_a_flood() {
        let (proxy_side, mut peer) = tokio::io::duplex(1 << 20);
        let mut guard = FloodGuard::new(proxy_side, 10);
        peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
        let mut sink = [0u8; 64];
        let mut got = 0;
        while got < PREFACE_LEN {
            got += guard.read(&mut sink).await.expect("preface");
        }
        for _ in 0..50 {
            // A streaming response: we send DATA, the client answers with a BDP ping.
            guard.write_all(&frame(TYPE_DATA, 0, 1, &[1; 100])).await.expect("data");
            for _ in 0..5 {
                peer.write_all(&frame(TYPE_PING, 0, 0, &[0; 8])).await.expect("ping");
            }
            let mut got = 0;
            while got < 5 * 17 {
                got += guard.read(&mut sink).await.expect("not a flood");
            }
        }
    }

    #[tokio::test]
    async fn vectored_writes_reach_the_socket_whole_and_pass_the_cursor() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (mut peer, _) = listener.accept().await.expect("accept");
        let mut guard = FloodGuard::new(client, 10);
        assert!(guard.is_write_vectored(), "a TCP socket takes writev");
        // Two frames cut across three slices, as h2 hands them over: headers and a
        // small frame in one buffer, a DATA payload in another.
        let mut headers = frame(TYPE_HEADERS, 0x4, 1, &[7; 20]);
        let data = frame(TYPE_DATA, 0x1, 1, &[5; 3000]);
        headers.extend_from_slice(&data[..9]);
        let slices = [io::IoSlice::new(&headers[..12]), io::IoSlice::new(&headers[12..]), io::IoSlice::new(&data[9..])];
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let written = guard.write_vectored(&slices).await.expect("writev");
        assert_eq!(written, total, "one write carried every slice");
        assert!(guard.outbound.at_frame_boundary(), "the cursor followed both frames");
        let mut out = vec![0u8; total];
        peer.read_exact(&mut out).await.expect("read");
        assert_eq!(&out[..29], &headers[..29]);
        assert_eq!(&out[29..], &data[..]);
    }

    #[tokio::test]
    async fn goaway_waits_for_the_end_of_a_frame_being_written() {
        let (proxy_side, mut peer) = tokio::io::duplex(1 << 20);
        let mut guard = FloodGuard::new(proxy_side, 1);
        // Our side is mid-frame: header and half the payload of a DATA frame written.
        let data = frame(0x0, 0, 1, &[9; 10]);
        guard.write_all(&data[..14]).await.expect("partial frame");
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(TYPE_SETTINGS, 0, 0, &[]));
        input.extend(frame(TYPE_SETTINGS, 0, 0, &[]));
        peer.write_all(&input).await.expect("write");
        let mut sink = [0u8; 64];
        assert!(guard.read(&mut sink).await.is_err(), "flood ends the connection");
        // The rest of the DATA frame still goes out, then the GOAWAY.
        guard.write_all(&data[14..]).await.expect("frame completed");
        assert!(guard.write(&[0u8; 9]).await.is_err(), "nothing after the GOAWAY");
        let mut out = vec![0u8; data.len() + 17];
        peer.read_exact(&mut out).await.expect("frame + GOAWAY");
        assert_eq!(&out[..data.len()], &data[..]);
        assert_eq!(out[data.len() + 3], 0x7);
    }
}
