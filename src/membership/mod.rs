//! Cluster membership: SWIM gossip over UDP (foca), as an actix actor.
//!
//! - [`MembershipActor`] owns one gossip task on the actix System thread.
//!   That task owns the foca state machine, the UDP socket and foca's
//!   timers, and reports membership changes to the actor, which fans them
//!   out to subscribers as [`MembershipEvent`]s.
//! - `config`: settings and their defaults; `identity`: the identity a
//!   node gossips under (name, RPC and gossip address, incarnation);
//!   `auth`: the HMAC envelope on every datagram; `leave`: how a graceful
//!   leave is told apart from a failure; `task`: the gossip loop.
//!
//! Layout of files follows the rest of proglog: one concern per file, the
//! public messages here.

mod actor;
mod auth;
pub mod config;
mod identity;
mod leave;
mod stats;
mod task;

use std::net::SocketAddr;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

pub use actor::MembershipActor;
pub use config::MembershipConfig;
pub use stats::GossipStats;
pub(crate) use task::{receive_datagram, sample_datagrams};

/// A live member of the cluster as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// The member's configured node name, unique in the cluster.
    pub name: String,
    /// Where to dial its RPC service.
    pub rpc_addr: SocketAddr,
    /// Where it receives gossip.
    pub gossip_addr: SocketAddr,
    /// Which life of the node this is; larger means a later restart.
    pub incarnation: u64,
    /// The id of the partition the member leads.
    pub partition: String,
}

/// Why a peer is no longer a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DownReason {
    /// It announced its departure (graceful `Leave`).
    Left,
    /// It stopped answering probes and the suspicion timed out.
    Failed,
}

/// What subscribers receive. Peers only: this node never appears.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub enum MembershipEvent {
    /// The complete list of live peers; replaces whatever the subscriber
    /// knew. Sent on `Subscribe` and after the actor restarted.
    Snapshot(Vec<Member>),
    /// A peer joined, or a known peer came back with a newer incarnation.
    PeerUp {
        /// The peer's node name.
        name: String,
        /// Where to dial its RPC service.
        rpc_addr: SocketAddr,
        /// Where it receives gossip.
        gossip_addr: SocketAddr,
        /// Which life of the node this is.
        incarnation: u64,
        /// The id of the partition it leads.
        partition: String,
    },
    /// A peer is gone.
    PeerDown {
        /// The peer's node name.
        name: String,
        /// Whether it left or failed.
        reason: DownReason,
    },
}

impl MembershipEvent {
    /// The `PeerUp` event announcing `member`.
    pub fn peer_up(member: &Member) -> Self {
        Self::PeerUp {
            name: member.name.clone(),
            rpc_addr: member.rpc_addr,
            gossip_addr: member.gossip_addr,
            incarnation: member.incarnation,
            partition: member.partition.clone(),
        }
    }
}

/// Errors of the membership layer.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// A setting is out of range; the message says which.
    #[error("invalid membership config: {0}")]
    Config(String),
    /// The gossip socket could not be bound.
    #[error("cannot bind gossip socket {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The node already left or was crashed: nothing to do.
    #[error("membership is not running (left or crashed)")]
    NotRunning,
    /// The gossip task vanished before answering.
    #[error("the gossip task stopped before answering")]
    TaskGone,
    /// Foca refused an operation.
    #[error("gossip protocol error: {0}")]
    Protocol(String),
}

/// Subscribe to membership changes; the subscriber first receives a
/// `Snapshot` of the current peers, then events. Dead recipients are
/// dropped on the next event.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<MembershipEvent>);

/// The current live peers (this node excluded).
#[derive(Message)]
#[rtype(result = "Vec<Member>")]
pub struct GetMembers;

/// This node's own identity as peers see it (actual gossip address and
/// current incarnation).
#[derive(Message)]
#[rtype(result = "Member")]
pub struct GetLocal;

/// Leave the cluster gracefully: peers are told directly and report the
/// node as `PeerDown { reason: Left }`. Resolves once the leave datagrams
/// are on the wire; the actor then stays idle.
#[derive(Message)]
#[rtype(result = "Result<(), MembershipError>")]
pub struct Leave;

/// Packet and drop counters since the actor was started.
#[derive(Message)]
#[rtype(result = "GossipStats")]
pub struct GetStats;

/// Simulates an abrupt death of the node: the gossip task and its socket
/// are dropped without telling anyone, and the actor is not restarted.
/// Peers see `PeerDown { reason: Failed }`. For tests and drills.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

/// Test support: copies every datagram this node sends (sealed, as on the
/// wire) with its destination to the given channel, e.g. to replay them.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct TapOutgoing(pub UnboundedSender<(SocketAddr, Bytes)>);
