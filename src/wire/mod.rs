//! The wire contract shared by the server and the client library: the Rust
//! generated from `schema/log.capnp` (reachable here as [`schema`]), the
//! typed domain errors ([`errors`]) and the transport ([`transport`]:
//! framing limits, buffered two-party vat network). It depends on nothing
//! else of the node, so the client does not either.

pub mod corked;
pub mod errors;
pub mod transport;

pub use crate::log_capnp as schema;

/// A schema `Text` field as a `String`; invalid UTF-8 is an error.
pub fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> capnp::Result<String> {
    t?.to_string()
        .map_err(|e| capnp::Error::failed(format!("invalid UTF-8: {e}")))
}
