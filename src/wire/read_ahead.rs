//! A read-ahead buffer beneath TLS.
//!
//! rustls asks its socket for at most 4 KiB at a time, so a 16 KiB TLS
//! record took four or five `recvfrom` calls where plain TCP takes one
//! (counted with `perf stat`: 5.0 per 16 KiB range-read answer on the
//! client, against 1.0 in plain TCP; BENCHMARKS.md, "Tenth session").
//! [`ReadAhead`] answers such a small read by taking whatever the socket
//! holds, up to [`READ_AHEAD_BYTES`], in one call, and hands it out from
//! memory. A larger read (rustls asking for the rest of a record, in bulk
//! transfers) goes straight to the socket: copying bulk through a second
//! buffer cost about what the calls it saved did. Writes pass through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes taken from the socket in one call at most: two full TLS records
/// (16 KiB of plaintext each, plus their headers and tags).
pub const READ_AHEAD_BYTES: usize = 32 << 10;

/// Reads of at most this many bytes are served through the buffer (rustls
/// asks for 4 KiB when its own buffer has drained).
pub const SMALL_READ_BYTES: usize = 4 << 10;

/// A stream whose reads are served from a buffer filled by one large read.
/// The buffer is allocated on the first read that needs it and kept (a
/// fixed [`READ_AHEAD_BYTES`] per connection).
pub struct ReadAhead<S> {
    inner: S,
    buf: Box<[u8]>,
    /// What is left to hand out: `buf[start..end]`.
    start: usize,
    end: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buf: Box::default(),
            start: 0,
            end: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            if out.remaining() > SMALL_READ_BYTES {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = vec![0; READ_AHEAD_BYTES].into_boxed_slice();
            }
            let mut fill = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut fill) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            (this.start, this.end) = (0, fill.filled().len());
            if this.end == 0 {
                return Poll::Ready(Ok(())); // end of stream
            }
        }
        let n = out.remaining().min(this.end - this.start);
        out.put_slice(&this.buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A socket holding `data`, counting the reads made of it, handing out
    /// at most `chunk` bytes per read.
    struct CountingSocket {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
        reads: usize,
    }

    impl AsyncRead for CountingSocket {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.reads += 1;
            let n = out
                .remaining()
                .min(this.chunk)
                .min(this.data.len() - this.at);
            out.put_slice(&this.data[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(()))
        }
    }

    fn socket(len: usize, chunk: usize) -> CountingSocket {
        CountingSocket {
            data: (0..len).map(|i| (i * 7 % 251) as u8).collect(),
            at: 0,
            chunk,
            reads: 0,
        }
    }

    #[tokio::test]
    async fn small_reads_of_a_large_arrival_take_one_socket_read() {
        let mut s = ReadAhead::new(socket(20_000, usize::MAX));
        let mut got = Vec::new();
        let mut piece = [0u8; 4096];
        while got.len() < 20_000 {
            let n = s.read(&mut piece).await.unwrap();
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, s.get_ref().data);
        assert_eq!(
            s.inner.reads, 1,
            "5 reads of 4 KiB served by one socket read"
        );
    }

    #[tokio::test]
    async fn every_byte_arrives_once_in_order_across_buffer_refills() {
        let len = 3 * READ_AHEAD_BYTES + 123;
        let mut s = ReadAhead::new(socket(len, 10_000));
        let mut got = Vec::new();
        let mut piece = [0u8; 4000];
        loop {
            let n = s.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, s.get_ref().data);
    }

    #[tokio::test]
    async fn a_read_of_the_small_size_is_read_ahead_and_one_byte_more_is_not() {
        let mut s = ReadAhead::new(socket(100_000, usize::MAX));
        let mut small = vec![0u8; SMALL_READ_BYTES];
        assert_eq!(s.read(&mut small).await.unwrap(), SMALL_READ_BYTES);
        assert_eq!(
            s.end, READ_AHEAD_BYTES,
            "the socket read took a whole buffer's worth"
        );
        assert_eq!(&small[..], &s.get_ref().data[..SMALL_READ_BYTES]);

        let mut s = ReadAhead::new(socket(100_000, usize::MAX));
        let mut larger = vec![0u8; SMALL_READ_BYTES + 1];
        assert_eq!(s.read(&mut larger).await.unwrap(), SMALL_READ_BYTES + 1);
        assert!(
            s.buf.is_empty(),
            "no buffer allocated for a reader that does not need one"
        );
        assert_eq!(&larger[..], &s.get_ref().data[..SMALL_READ_BYTES + 1]);
    }

    #[tokio::test]
    async fn a_large_read_after_a_small_one_takes_the_buffered_bytes_first() {
        let mut s = ReadAhead::new(socket(100_000, usize::MAX));
        let mut small = vec![0u8; 100];
        s.read_exact(&mut small).await.unwrap();
        let mut large = vec![0u8; 60_000];
        s.read_exact(&mut large).await.unwrap();
        let got: Vec<u8> = small.into_iter().chain(large).collect();
        assert_eq!(&got[..], &s.get_ref().data[..60_100]);
    }

    #[tokio::test]
    async fn end_of_stream_reads_as_zero_bytes() {
        let mut s = ReadAhead::new(socket(10, usize::MAX));
        let mut piece = [0u8; 64];
        assert_eq!(s.read(&mut piece).await.unwrap(), 10);
        assert_eq!(s.read(&mut piece).await.unwrap(), 0);
    }
}
