//! The wire contract shared by the server and the client library: the Rust
//! generated from `schema/log.capnp` (reachable here as [`schema`]), the
//! typed domain errors ([`errors`]) and the transport ([`transport`]:
//! framing limits, buffered two-party vat network; [`tls`]: mutual TLS 1.3
//! with our own record layer). It depends on nothing else of the node, so
//! the client does not either.

pub mod busy_poll;
pub mod corked;
pub mod errors;
pub mod frame_stream;
pub mod framed;
pub mod outbox;
pub mod prefixed;
pub mod socket;
pub mod tls;
pub mod transport;

pub use crate::log_capnp as schema;

/// Streams one connection may hold open at once (produce sinks, consume
/// and replication streams); one more is refused with `overloaded`.
pub const MAX_STREAMS_PER_CONNECTION: usize = 64;

/// Writes one produce stream may carry before `finish` (the server keeps
/// each one's outcome for `finish`); one more fails the stream with
/// `overloaded`. The client opens a new stream before reaching it.
pub const MAX_WRITES_PER_PRODUCE_STREAM: usize = 4096;

/// A schema `Text` field as a `String`; invalid UTF-8 is an error.
pub fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> capnp::Result<String> {
    t?.to_string()
        .map_err(|e| capnp::Error::failed(format!("invalid UTF-8: {e}")))
}
