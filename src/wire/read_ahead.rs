//! A read-ahead buffer beneath the client's TLS.
//!
//! rustls asks its socket for 4 KiB when its own buffer has drained, so a
//! 16 KiB answer that had arrived whole took four or five `recvfrom` calls
//! where plain TCP takes one (counted with `perf stat`: 5.0 per 256 B
//! range-read answer on the client, against 1.0 in plain TCP;
//! BENCHMARKS.md, "Tenth session"). [`ReadAhead`] answers the first small
//! read of a burst by taking whatever the socket holds, up to
//! [`READ_AHEAD_BYTES`], in one call, and hands it out from memory. Once
//! that is handed out, reads go straight to the socket until one finds it
//! empty: in a bulk transfer, copying everything through a second buffer
//! cost more than the calls it saved (4 KiB range reads 3 % slower).
//! Writes pass straight through. Only the client library reads through
//! it: the node's bulk is produce requests, received about 7 % slower
//! with it.

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

/// A stream whose first small read of a burst fills a buffer in one large
/// read, and whose other reads go straight through. The buffer is
/// allocated on the first read that needs it and kept (a fixed
/// [`READ_AHEAD_BYTES`] per connection).
pub struct ReadAhead<S> {
    inner: S,
    buf: Box<[u8]>,
    /// What is left to hand out: `buf[start..end]`.
    start: usize,
    end: usize,
    /// A fill took bytes and no read has found the socket empty since:
    /// further reads go straight to it.
    in_burst: bool,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buf: Box::default(),
            start: 0,
            end: 0,
            in_burst: false,
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
            if out.remaining() > SMALL_READ_BYTES || this.in_burst {
                let read = Pin::new(&mut this.inner).poll_read(cx, out);
                if read.is_pending() {
                    this.in_burst = false;
                }
                return read;
            }
            if this.buf.is_empty() {
                this.buf = vec![0; READ_AHEAD_BYTES].into_boxed_slice();
            }
            let mut fill = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut fill) {
                Poll::Ready(Ok(())) => this.in_burst = true,
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
    /// at most `chunk` bytes per read and nothing past `arrived` (a read
    /// there would block).
    struct CountingSocket {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
        arrived: usize,
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
            if this.at == this.arrived && this.at < this.data.len() {
                return Poll::Pending;
            }
            let n = out.remaining().min(this.chunk).min(this.arrived - this.at);
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
            arrived: len,
            reads: 0,
        }
    }

    /// Polls one read of `len` bytes once: `None` if it would block.
    fn poll_once(s: &mut ReadAhead<CountingSocket>, len: usize) -> Option<Vec<u8>> {
        let mut piece = vec![0u8; len];
        let mut out = ReadBuf::new(&mut piece);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match Pin::new(s).poll_read(&mut cx, &mut out) {
            Poll::Ready(Ok(())) => Some(out.filled().to_vec()),
            Poll::Ready(Err(e)) => panic!("read failed: {e}"),
            Poll::Pending => None,
        }
    }

    #[test]
    fn within_a_burst_reads_go_to_the_socket_and_the_next_burst_is_read_ahead() {
        let mut sock = socket(50_000, usize::MAX);
        sock.arrived = 20_000;
        let mut s = ReadAhead::new(sock);
        let mut got = Vec::new();
        let mut read_until = |s: &mut ReadAhead<CountingSocket>, end: usize| {
            while got.len() < end {
                got.extend(poll_once(s, 4096).expect("arrived bytes are ready"));
            }
        };
        read_until(&mut s, 20_000);
        assert_eq!(
            s.inner.reads, 1,
            "the burst's first read took all that had arrived"
        );

        // More arrives before the reader finds the socket empty: the burst
        // goes on, each read straight from the socket.
        s.inner.arrived = 30_000;
        read_until(&mut s, 28_192);
        assert_eq!(s.inner.reads, 3);
        read_until(&mut s, 30_000);
        assert_eq!(
            poll_once(&mut s, 4096),
            None,
            "the socket is empty: the burst ends"
        );
        let reads = s.inner.reads;

        s.inner.arrived = 50_000;
        read_until(&mut s, 50_000);
        assert_eq!(
            s.inner.reads,
            reads + 1,
            "a new burst: one read ahead again"
        );
        assert_eq!(got, s.get_ref().data);
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
    async fn every_byte_arrives_once_in_order() {
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
