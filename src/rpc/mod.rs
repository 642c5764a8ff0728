//! The Cap'n Proto RPC front (`schema/log.capnp`).
//!
//! Every connection runs its own capnp-rpc system as a task on the actix
//! System thread (capnp-rpc is `!Send`) and forwards each call to a
//! LogActor by message. Domain errors travel as the schema's typed `Error`;
//! transport faults (garbage bytes, an oversized message) close that one
//! connection with a log line.

pub mod errors;
mod server;
mod service;

pub use server::{
    Acceptor, PlainAcceptor, RpcConfig, RpcFront, RpcServer, StopAccepting, set_free_memory_release,
};
pub use service::{
    ACTION_CONSUME, ACTION_DESCRIBE, ACTION_PRODUCE, ACTION_REPLICATE, Authorizer, ConnectionState,
    InFlight, LogService, OBJECT_CLUSTER, ServiceContext,
};
