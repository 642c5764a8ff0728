//! Cap'n Proto two-party RPC over any byte stream (TCP, or TLS on top):
//! receive limits and the buffered vat network, the same on both ends.

use capnp::message::ReaderOptions;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::twoparty::VatNetwork;

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::busy_poll::BusyPoll;
use super::corked::CorkedWriter;
use super::framed::{FramedReader, ReceiveLimits};
use super::outbox::Outbox;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// Bytes buffered on the sending side of a plain connection: the messages
/// of a burst leave in one write (see [`CorkedWriter`]), which cuts the
/// cost per call.
const IO_BUFFER_BYTES: usize = 64 << 10;

/// Where a connection's outgoing bytes are gathered into large writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteGathering {
    /// In a buffer in front of the stream (a byte stream such as TCP).
    Buffered,
    /// By the stream itself until flushed: the TLS record layer seals
    /// writes into its send buffer, so a buffer in front would only copy
    /// every byte once more.
    ByStream,
}

/// capnp's reader options for messages of at most `max_message_bytes`.
/// The size itself is enforced exactly by [`FramedReader`] before capnp
/// sees a message; traversal counts each word once per visit, so it is
/// left room (it bounds amplification by pointers read twice).
pub fn reader_options(max_message_bytes: usize) -> ReaderOptions {
    let mut options = ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(max_message_bytes.div_ceil(8).saturating_mul(2).max(1)))
        .nesting_limit(64);
    options
}

/// The stream type a vat network reads from.
pub type Reader<S> = FramedReader<tokio_util::compat::Compat<tokio::io::ReadHalf<S>>>;

/// Builds the vat network of one connection over `stream`, its writes
/// gathered as `gathering` says; the bytes it sends are counted out of
/// `outbox`, and `busy_poll` is told when they leave and when bytes arrive.
pub fn vat_network<S>(
    stream: S,
    gathering: WriteGathering,
    side: Side,
    limits: ReceiveLimits,
    window_bytes: usize,
    outbox: Option<Rc<Outbox>>,
    busy_poll: Option<BusyPoll>,
) -> VatNetwork<Reader<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // Must run on a local task set (the flusher is a local task), as
    // capnp-rpc itself does.
    let options = reader_options(limits.max_message_bytes);
    let (read, write) = tokio::io::split(stream);
    let sent = CountedWriter {
        inner: write.compat_write(),
        outbox,
    };
    let mut network = VatNetwork::new(
        FramedReader::new(read.compat(), limits).with_busy_poll(busy_poll.clone()),
        CorkedWriter::new(
            sent,
            match gathering {
                WriteGathering::Buffered => IO_BUFFER_BYTES,
                WriteGathering::ByStream => 0,
            },
            busy_poll,
        ),
        side,
        options,
    );
    network.set_window_size(window_bytes);
    network
}

/// The socket's writer, telling the outbox what has left.
struct CountedWriter<W> {
    inner: W,
    outbox: Option<Rc<Outbox>>,
}

impl<W: futures::io::AsyncWrite + Unpin> futures::io::AsyncWrite for CountedWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(outbox)) = (&written, &self.outbox) {
            outbox.sent(*n);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(outbox)) = (&written, &self.outbox) {
            outbox.sent(*n);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
