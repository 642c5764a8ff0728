//! Cap'n Proto two-party RPC over any byte stream (TCP, or TLS on top):
//! receive limits and the buffered vat network, the same on both ends.

use capnp::message::ReaderOptions;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::twoparty::VatNetwork;
use futures::io::BufReader;

use super::corked::CorkedWriter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// Bytes buffered on each side of a connection: the messages of a burst
/// leave in one write (see [`CorkedWriter`]), which cuts the cost per call
/// (and per TLS record).
const IO_BUFFER_BYTES: usize = 64 << 10;

/// Receive limits for a connection.
pub fn reader_options(max_message_bytes: usize) -> ReaderOptions {
    let mut options = ReaderOptions::new();
    // A word is 8 bytes; traversal counts each word once per visit, so leave room.
    options
        .traversal_limit_in_words(Some(max_message_bytes / 8 * 2))
        .nesting_limit(64);
    options
}

/// Builds the vat network of one connection over `stream`.
pub fn vat_network<S>(
    stream: S,
    side: Side,
    options: ReaderOptions,
    window_bytes: usize,
) -> VatNetwork<BufReader<tokio_util::compat::Compat<tokio::io::ReadHalf<S>>>>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // Must run on a local task set (the flusher is a local task), as
    // capnp-rpc itself does.
    let (read, write) = tokio::io::split(stream);
    let mut network = VatNetwork::new(
        BufReader::with_capacity(IO_BUFFER_BYTES, read.compat()),
        CorkedWriter::new(write.compat_write(), IO_BUFFER_BYTES),
        side,
        options,
    );
    network.set_window_size(window_bytes);
    network
}
