//! Cap'n Proto two-party RPC over any byte stream (TCP, or TLS on top):
//! receive limits and the buffered vat network, the same on both ends.

use capnp::message::ReaderOptions;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::twoparty::VatNetwork;

use super::corked::CorkedWriter;
use super::framed::{FramedReader, ReceiveLimits};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// Bytes buffered on the sending side of a connection: the messages of a
/// burst leave in one write (see [`CorkedWriter`]), which cuts the cost per
/// call (and per TLS record).
const IO_BUFFER_BYTES: usize = 64 << 10;

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

/// Builds the vat network of one connection over `stream`.
pub fn vat_network<S>(
    stream: S,
    side: Side,
    limits: ReceiveLimits,
    window_bytes: usize,
) -> VatNetwork<Reader<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // Must run on a local task set (the flusher is a local task), as
    // capnp-rpc itself does.
    let options = reader_options(limits.max_message_bytes);
    let (read, write) = tokio::io::split(stream);
    let mut network = VatNetwork::new(
        FramedReader::new(read.compat(), limits),
        CorkedWriter::new(write.compat_write(), IO_BUFFER_BYTES),
        side,
        options,
    );
    network.set_window_size(window_bytes);
    network
}
