//! Cap'n Proto two-party RPC over any byte stream (TCP now, TLS on top).

use capnp::message::ReaderOptions;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::twoparty::VatNetwork;
use futures::io::{BufReader, BufWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// Bytes buffered on each side of a connection: batching small RPC messages
/// into one write halves the cost per call (and per TLS record).
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
    let (read, write) = tokio::io::split(stream);
    let mut network = VatNetwork::new(
        BufReader::with_capacity(IO_BUFFER_BYTES, read.compat()),
        BufWriter::with_capacity(IO_BUFFER_BYTES, write.compat_write()),
        side,
        options,
    );
    network.set_window_size(window_bytes);
    network
}

/// Accepts the next connection, or `None` once `stopped` changes. Accept
/// errors (out of file descriptors and the like) back off exponentially,
/// from 5 ms to 1 s, instead of spinning. `what` names the listener in logs.
pub(crate) async fn accept_or_stop(
    listener: &tokio::net::TcpListener,
    stopped: &mut tokio::sync::watch::Receiver<bool>,
    what: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    use std::time::Duration;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return None,
        };
        match accepted {
            Ok(a) => return Some(a),
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, listener = what, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
