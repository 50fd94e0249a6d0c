//! HTTP/2 frame headers followed through a byte stream without decoding it: what the
//! socket wrappers below `h2` ([`crate::flood_guard`], [`crate::read_turns`]) need to
//! know about the frames passing through them.

pub const PREFACE_LEN: usize = 24;
pub const FRAME_HEADER_LEN: usize = 9;
pub const TYPE_DATA: u8 = 0x0;
pub const TYPE_HEADERS: u8 = 0x1;
pub const TYPE_SETTINGS: u8 = 0x4;
pub const TYPE_PING: u8 = 0x6;
/// On DATA and HEADERS frames: the sender's last frame on the stream.
pub const FLAG_END_STREAM: u8 = 0x1;

/// Where a byte stream is in the HTTP/2 framing.
#[derive(Debug, Default)]
pub struct FrameCursor {
    /// Bytes of the client preface still to skip (inbound only).
    preface_left: usize,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: usize,
}

impl FrameCursor {
    /// A cursor for what a server reads: the client preface comes first.
    pub fn after_preface() -> Self {
        FrameCursor { preface_left: PREFACE_LEN, ..FrameCursor::default() }
    }

    /// Feeds bytes; calls `on_header` for each complete frame header. Payloads are
    /// skipped, so the cost follows the number of frames, not of bytes.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(&[u8; FRAME_HEADER_LEN])) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == FRAME_HEADER_LEN {
                    self.header_len = 0;
                    let h = self.header;
                    self.payload_left = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    on_header(&h);
                }
            }
        }
    }

    pub fn at_frame_boundary(&self) -> bool {
        self.preface_left == 0 && self.header_len == 0 && self.payload_left == 0
    }
}

/// Whether a frame header ends its stream for the side that sent it.
pub fn ends_stream(header: &[u8; FRAME_HEADER_LEN]) -> bool {
    matches!(header[3], TYPE_DATA | TYPE_HEADERS) && header[4] & FLAG_END_STREAM != 0
}

/// A frame as bytes (tests of the socket wrappers).
#[cfg(test)]
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("test payloads are small");
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_finds_headers_across_split_reads() {
        let mut c = FrameCursor::after_preface();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(TYPE_SETTINGS, 0, 0, &[0; 6]));
        bytes.extend(frame(TYPE_HEADERS, 0x4, 5, &[1, 2, 3]));
        bytes.extend(frame(TYPE_PING, 0, 0, &[0; 8]));
        let mut seen = Vec::new();
        for chunk in bytes.chunks(5) {
            c.feed(chunk, |h| seen.push((h[3], h[8])));
        }
        assert_eq!(seen, vec![(TYPE_SETTINGS, 0), (TYPE_HEADERS, 5), (TYPE_PING, 0)]);
        assert!(c.at_frame_boundary());
    }

    #[test]
    fn only_data_and_headers_with_end_stream_end_a_stream() {
        let header =
            |kind, flags| -> [u8; FRAME_HEADER_LEN] { frame(kind, flags, 1, &[]).try_into().expect("nine bytes") };
        assert!(ends_stream(&header(TYPE_DATA, FLAG_END_STREAM)));
        assert!(ends_stream(&header(TYPE_HEADERS, FLAG_END_STREAM | 0x4)));
        assert!(!ends_stream(&header(TYPE_HEADERS, 0x4)), "headers that leave the stream open");
        assert!(!ends_stream(&header(TYPE_DATA, 0)));
        // SETTINGS and PING use the same bit for ACK.
        assert!(!ends_stream(&header(TYPE_SETTINGS, 0x1)));
        assert!(!ends_stream(&header(TYPE_PING, 0x1)));
    }
}
