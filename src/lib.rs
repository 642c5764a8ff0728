//! proglog: a distributed commit log.
//!
//! - [`auth`]: mutual TLS, casbin authorization, certificates.
//! - [`agent`]: the Agent, root actor of the supervision tree; boots and
//!   wires a node's actors; [`config`]: its settings.
//! - [`supervision`]: the one mechanism that restarts every actor (panics
//!   anywhere in its work), with restart budgets and escalation.
//! - [`storage`]: the synchronous storage core (segments, index, recovery).
//! - [`log`]: the storage as actix actors: a LogActor per partition, a
//!   SegmentActor per segment.
//! - [`rpc`]: the Cap'n Proto RPC front (`schema/log.capnp`): a listener
//!   actor, one task per connection.
//! - [`wire`]: the wire contract shared by server and client: schema code,
//!   typed wire errors, transport. The client depends on it alone.
//! - [`client`]: the Rust client library.
//! - [`cluster`]: the cluster view (self and peers) the agent keeps.
//! - [`replication`]: who holds which partition (rendezvous hashing) and
//!   the ReplicatorActor that pulls a peer's own partition into a replica.
//! - [`membership`]: SWIM gossip (foca) as a MembershipActor: who is in the cluster.
//! - [`telemetry`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

pub mod agent;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod log;
pub mod membership;
mod net;
pub mod replication;
pub mod rpc;
pub mod storage;
pub mod supervision;
pub mod telemetry;
pub mod wire;

/// Rust generated from `schema/log.capnp` (committed; a test keeps it in sync).
#[path = "../schema/log_capnp.rs"]
#[allow(clippy::all, clippy::pedantic, unused_qualifications, missing_docs)]
#[rustfmt::skip]
pub mod log_capnp;
