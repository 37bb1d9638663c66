//! Lets standard gRPC clients use the Unix control socket: rewrites a request's `:authority`
//! that is not a valid URI authority to `localhost` before the HTTP/2 server sees it.
//!
//! grpc-core (Python `grpcio`, Ruby, PHP, C++) sends the socket path, percent-encoded, as the
//! authority of a `unix:` target (`:authority: tmp%2Fsluice%2Fcontrol.sock`). The `http` crate
//! that h2 builds request URIs with rejects `%` in a host, so h2 answers every such request with
//! RST_STREAM(PROTOCOL_ERROR) before tonic sees it, and the client reports "Stream removed".
//! The authority means nothing on a Unix socket (there is one server behind it), so the
//! connection's client-to-server bytes pass through [`Rewriter`], which re-encodes each header
//! block with the offending value replaced. Every other frame passes through untouched.
//!
//! HPACK is stateful per direction: the client's encoder and our decoder share one dynamic
//! table, our encoder and the server's decoder another (both 4,096 bytes, the HTTP/2 default,
//! which the server does not change). So every header block is re-encoded, not only those
//! that needed a change.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 section 3.4), passed through verbatim.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's initial value: every peer accepts frames this large (RFC 9113
/// section 6.5.2), so re-encoded blocks are split at it.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this (after CONTINUATIONs) ends the connection; the server's own
/// limit (h2's default max header list size) is 16 MiB, far above any gRPC request.
const MAX_BLOCK: usize = 1 << 20;
/// What an unusable authority becomes.
const REPLACEMENT: &[u8] = b"localhost";

/// A header block being collected across CONTINUATION frames.
struct Pending {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// Sans-IO: client bytes in, bytes for the server out.
pub struct Rewriter {
    preface_left: usize,
    input: Vec<u8>,
    output: Vec<u8>,
    pending: Option<Pending>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            input: Vec::new(),
            output: Vec::new(),
            pending: None,
            decoder: loona_hpack::Decoder::new(),
            encoder: loona_hpack::Encoder::new(),
            rewritten: 0,
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Rewriter {
    /// Takes bytes read from the client; complete frames become available in [`Self::output`].
    /// An error means the stream is not HTTP/2 this can follow; the connection should end.
    pub fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut bytes = bytes;
        if self.preface_left > 0 {
            let n = self.preface_left.min(bytes.len());
            self.output.extend_from_slice(&bytes[..n]);
            self.preface_left -= n;
            bytes = &bytes[n..];
        }
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        while self.input.len() - at >= FRAME_HEADER {
            let h = &self.input[at..at + FRAME_HEADER];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            if self.input.len() - at < FRAME_HEADER + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let frame = at..at + FRAME_HEADER + len;
            at = frame.end;
            let payload = frame.start + FRAME_HEADER..frame.end;
            match (kind, &self.pending) {
                (CONTINUATION, Some(p)) if p.stream == stream => {
                    let payload = self.input[payload].to_vec();
                    self.continuation(flags, &payload)?;
                }
                // RFC 9113 section 6.10: nothing may interleave with a header block.
                (_, Some(_)) => return Err(bad("HTTP/2 header block interrupted")),
                (HEADERS, None) => {
                    let payload = self.input[payload].to_vec();
                    self.headers(stream, flags, &payload)?;
                }
                (CONTINUATION, None) => return Err(bad("HTTP/2 CONTINUATION without HEADERS")),
                _ => self.output.extend_from_slice(&self.input[frame]),
            }
        }
        self.input.drain(..at);
        Ok(())
    }

    /// Bytes ready for the server; the caller removes what it wrote.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    /// How many authorities were replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    fn headers(&mut self, stream: u32, flags: u8, payload: &[u8]) -> io::Result<()> {
        let mut p = payload;
        let mut pad = 0;
        if flags & PADDED != 0 {
            let (&n, rest) = p
                .split_first()
                .ok_or_else(|| bad("HEADERS without pad length"))?;
            pad = usize::from(n);
            p = rest;
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            let (pr, rest) = p
                .split_first_chunk::<5>()
                .ok_or_else(|| bad("HEADERS shorter than its priority fields"))?;
            priority = Some(*pr);
            p = rest;
        }
        let fragment = p
            .get(
                ..p.len()
                    .checked_sub(pad)
                    .ok_or_else(|| bad("HEADERS padding too long"))?,
            )
            .ok_or_else(|| bad("HEADERS padding too long"))?;
        self.pending = Some(Pending {
            stream,
            flags,
            priority,
            block: fragment.to_vec(),
        });
        if flags & END_HEADERS != 0 {
            self.finish()?;
        }
        Ok(())
    }

    fn continuation(&mut self, flags: u8, payload: &[u8]) -> io::Result<()> {
        let p = self.pending.as_mut().expect("checked by the caller");
        if p.block.len() + payload.len() > MAX_BLOCK {
            return Err(bad("HTTP/2 header block over 1 MiB"));
        }
        p.block.extend_from_slice(payload);
        if flags & END_HEADERS != 0 {
            self.finish()?;
        }
        Ok(())
    }

    /// Decodes the collected block, replaces an unusable `:authority`, re-encodes and frames it.
    fn finish(&mut self) -> io::Result<()> {
        let p = self.pending.take().expect("a block is pending");
        let mut headers = self
            .decoder
            .decode(&p.block)
            .map_err(|e| bad(format!("HPACK: {e:?}")))?;
        for (name, value) in &mut headers {
            if name == b":authority" && http::uri::Authority::try_from(&value[..]).is_err() {
                *value = REPLACEMENT.to_vec();
                self.rewritten += 1;
            }
        }
        let block = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut prefix: &[u8] = &[];
        let pr;
        if let Some(x) = p.priority {
            pr = x;
            prefix = &pr;
        }
        let first_room = MAX_FRAME - prefix.len();
        let (first, mut rest) = block.split_at(first_room.min(block.len()));
        let mut flags = p.flags & (END_STREAM | PRIORITY);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame(HEADERS, flags, p.stream, &[prefix, first]);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(MAX_FRAME.min(rest.len()));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.frame(CONTINUATION, flags, p.stream, &[chunk]);
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.output
            .extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        self.output.push(kind);
        self.output.push(flags);
        self.output.extend_from_slice(&stream.to_be_bytes());
        for p in parts {
            self.output.extend_from_slice(p);
        }
    }
}

/// A server-side connection whose client-to-server bytes go through a [`Rewriter`].
pub struct FixAuthority<S> {
    io: S,
    rw: Rewriter,
    /// Bytes of `rw.output()` already handed to the reader.
    read: usize,
    logged: bool,
}

impl<S> FixAuthority<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            rw: Rewriter::default(),
            read: 0,
            logged: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let out = this.rw.output();
            if this.read < out.len() {
                let n = (out.len() - this.read).min(buf.remaining());
                buf.put_slice(&out[this.read..this.read + n]);
                this.read += n;
                if this.read == out.len() {
                    out.clear();
                    this.read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    this.rw.push(rb.filled())?;
                    if this.rw.rewritten() > 0 && !this.logged {
                        this.logged = true;
                        tracing::debug!(
                            "control client sent a :authority that is not a host (the socket \
                             path, as grpc-core does); serving it as localhost"
                        );
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for FixAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    /// Parses `out` (after the preface) into frames: (type, stream, decoded header block,
    /// payload of any other frame).
    fn server_view(out: &[u8]) -> Vec<(u8, u32, Headers, Vec<u8>)> {
        let mut dec = loona_hpack::Decoder::new();
        let mut at = PREFACE.len();
        let mut frames = Vec::new();
        let mut block: Option<(u32, Vec<u8>)> = None;
        while at < out.len() {
            let len = (usize::from(out[at]) << 16)
                | (usize::from(out[at + 1]) << 8)
                | usize::from(out[at + 2]);
            let (kind, flags) = (out[at + 3], out[at + 4]);
            let stream = u32::from_be_bytes(out[at + 5..at + 9].try_into().unwrap());
            let payload = out[at + 9..at + 9 + len].to_vec();
            assert!(len <= MAX_FRAME, "frame of {len} bytes");
            at += 9 + len;
            match kind {
                HEADERS | CONTINUATION => {
                    let mut p = &payload[..];
                    if kind == HEADERS && flags & PRIORITY != 0 {
                        p = &p[5..];
                    }
                    let b = block.get_or_insert((stream, Vec::new()));
                    b.1.extend_from_slice(p);
                    if flags & END_HEADERS != 0 {
                        let (s, b) = block.take().unwrap();
                        frames.push((HEADERS, s, dec.decode(&b).unwrap(), Vec::new()));
                    }
                }
                _ => frames.push((kind, stream, Vec::new(), payload)),
            }
        }
        frames
    }

    fn request(enc: &mut loona_hpack::Encoder<'_>, authority: &[u8]) -> Vec<u8> {
        enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/sluice.v1.Control/Ping"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ])
    }

    fn authority_of(h: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &h.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    #[test]
    fn socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let b1 = request(&mut enc, b"tmp%2Fsluice%2Fcontrol.sock");
        input.extend(frame(HEADERS, END_HEADERS, 1, &b1));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
        // The second request reuses the client's dynamic table entries.
        let b2 = request(&mut enc, b"tmp%2Fsluice%2Fcontrol.sock");
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &b2));
        let b3 = request(&mut enc, b"localhost:50051");
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &b3));

        let mut rw = Rewriter::default();
        // Byte by byte: framing must not depend on how reads split the stream.
        for b in &input {
            rw.push(std::slice::from_ref(b)).unwrap();
        }
        let out = rw.output().clone();
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let frames = server_view(&out);
        assert_eq!(frames.len(), 5);
        assert_eq!(frames[0].0, 0x4);
        assert_eq!(authority_of(&frames[1].2), b"localhost");
        assert_eq!(frames[1].2[2].1, b"/sluice.v1.Control/Ping");
        assert_eq!(
            (frames[2].0, frames[2].3.as_slice()),
            (0x0, &b"\0\0\0\0\0"[..])
        );
        assert_eq!(authority_of(&frames[3].2), b"localhost");
        assert_eq!(authority_of(&frames[4].2), b"localhost:50051");
        assert_eq!(rw.rewritten(), 2);
    }

    #[test]
    fn padding_priority_and_continuations_are_understood() {
        let mut enc = loona_hpack::Encoder::new();
        let block = request(&mut enc, b"a%2Fb");
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 1, 16]); // priority: exclusive, dep 1, weight
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 7, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 7, b));
        let mut rw = Rewriter::default();
        rw.push(&input).unwrap();
        let out = rw.output().clone();
        let h = &out[PREFACE.len()..];
        assert_eq!(h[3], HEADERS);
        assert_eq!(h[4], PRIORITY | END_STREAM | END_HEADERS);
        assert_eq!(&h[9..14], &[0x80, 0, 0, 1, 16]);
        let frames = server_view(&out);
        assert_eq!(authority_of(&frames[0].2), b"localhost");
    }

    #[test]
    fn a_block_larger_than_a_frame_is_split() {
        let mut enc = loona_hpack::Encoder::new();
        let big = vec![b'x'; 40_000];
        let block = enc.encode([(&b":authority"[..], &b"p%2Fq"[..]), (b"x-big", &big[..])]);
        let mut input = PREFACE.to_vec();
        for (i, chunk) in block.chunks(MAX_FRAME).enumerate() {
            let last = (i + 1) * MAX_FRAME >= block.len();
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            input.extend(frame(kind, if last { END_HEADERS } else { 0 }, 1, chunk));
        }
        let mut rw = Rewriter::default();
        rw.push(&input).unwrap();
        let out = rw.output().clone();
        let frames = server_view(&out);
        assert_eq!(frames.len(), 1);
        assert_eq!(authority_of(&frames[0].2), b"localhost");
        assert_eq!(frames[0].2[1].1.len(), 40_000);
    }

    #[test]
    fn broken_streams_are_errors_not_panics() {
        let mut rw = Rewriter::default();
        let mut input = PREFACE.to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b"\x82"));
        assert!(rw.push(&input).is_err());

        let mut rw = Rewriter::default();
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, b"\x82"));
        input.extend(frame(0x0, 0, 1, b"data"));
        assert!(rw.push(&input).is_err());

        let mut rw = Rewriter::default();
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82]));
        assert!(rw.push(&input).is_err());

        let mut rw = Rewriter::default();
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ));
        assert!(rw.push(&input).is_err());
    }
}
