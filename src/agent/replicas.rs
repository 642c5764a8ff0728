//! The Agent's replicators: one per peer whose partition this node holds,
//! started, replaced and stopped as membership changes (DESIGN §2).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::Agent;
use crate::log::Partitions;
use crate::membership::{DownReason, MembershipEvent};
use crate::replication::{Connector, ReplicatorActor, ReplicatorSetup, StopReplicating, holders};
use crate::supervision::{self, ChildSpec};
use crate::telemetry::Metrics;

/// How long a replicator that spent its restart budget rests before the
/// Agent starts it again.
pub(super) const REPLICATOR_REST: Duration = Duration::from_secs(30);

/// What the Agent needs to run replicators; given once partitions are open.
pub struct Replication {
    /// This node's name.
    pub me: String,
    /// Copies of each partition, the leader's included.
    pub factor: usize,
    pub partitions: Rc<Partitions>,
    pub connector: Rc<Connector>,
    pub metrics: Option<Arc<Metrics>>,
    /// `acks=all` state of the own partition: its live followers are set here.
    pub in_sync: Rc<crate::replication::InSync>,
    /// Where replicators note their leaders' ends (`listPartitions` lag).
    pub cluster: Rc<std::cell::RefCell<crate::cluster::ClusterView>>,
}

/// A peer as membership last told.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    rpc_addr: SocketAddr,
    partition: String,
    /// Down (failed or left) when false.
    alive: bool,
    /// It left gracefully: nothing is pulled from it any more. A peer down
    /// by failure keeps its replicator, which retries until it returns.
    left: bool,
}

impl Peer {
    fn up(rpc_addr: SocketAddr, partition: String) -> Peer {
        Peer {
            rpc_addr,
            partition,
            alive: true,
            left: false,
        }
    }
}

/// A running replicator and what it pulls.
pub(super) struct Running {
    partition: String,
    rpc_addr: SocketAddr,
    addr: Addr<ReplicatorActor>,
}

/// The replicators running now, by peer name.
#[derive(Message)]
#[rtype(result = "Vec<(String, Addr<ReplicatorActor>)>")]
pub struct GetReplicators;

impl Handler<GetReplicators> for Agent {
    type Result = MessageResult<GetReplicators>;

    fn handle(&mut self, _: GetReplicators, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.replicators
                .iter()
                .map(|(peer, run)| (peer.clone(), run.addr.clone()))
                .collect(),
        )
    }
}

/// Stops every replicator for good (shutdown): the replicas stay on disk.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct StopReplication;

impl Handler<StopReplication> for Agent {
    type Result = ();

    fn handle(&mut self, _: StopReplication, _ctx: &mut Context<Self>) {
        self.replication_stopped = true;
        for (_, run) in std::mem::take(&mut self.replicators) {
            run.addr.do_send(StopReplicating);
        }
    }
}

/// Brings the replicators in line with membership (sent once the
/// replication settings are in place).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Reconcile;

impl Handler<Reconcile> for Agent {
    type Result = ();

    fn handle(&mut self, _: Reconcile, ctx: &mut Context<Self>) {
        self.reconcile(ctx);
    }
}

impl Agent {
    /// Records what a membership event says of peers (for replication).
    pub(super) fn track(&mut self, event: &MembershipEvent) {
        match event {
            MembershipEvent::Snapshot(members) => {
                self.peers = members
                    .iter()
                    .map(|m| (m.name.clone(), Peer::up(m.rpc_addr, m.partition.clone())))
                    .collect();
            }
            MembershipEvent::PeerUp {
                name,
                rpc_addr,
                partition,
                ..
            } => {
                let peer = Peer::up(*rpc_addr, partition.clone());
                self.peers.insert(name.clone(), peer);
            }
            MembershipEvent::PeerDown { name, reason } => {
                if let Some(p) = self.peers.get_mut(name) {
                    p.alive = false;
                    p.left = *reason == DownReason::Left;
                }
            }
        }
    }

    /// The peers as `getServers` reports them.
    pub(super) fn peers_view(&self) -> Vec<crate::cluster::ServerInfo> {
        self.peers
            .iter()
            .map(|(name, p)| crate::cluster::ServerInfo {
                name: name.clone(),
                rpc_addr: p.rpc_addr.to_string(),
                alive: p.alive,
                partition: p.partition.clone(),
            })
            .collect()
    }

    /// Starts, replaces or stops replicators so that exactly the peers
    /// whose partition this node holds have one. Holders are computed over
    /// the live members (and the leader itself, alive or not: a failed
    /// leader's holders keep retrying until it returns).
    pub(super) fn reconcile(&mut self, ctx: &mut Context<Self>) {
        let replication = self.replication.clone();
        let Some(r) = replication.get() else {
            return;
        };
        if self.replication_stopped {
            return;
        }
        let live: Vec<&str> = self
            .peers
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(n, _)| n.as_str())
            .chain([r.me.as_str()])
            .collect();
        // Who holds this node's own partition, for `acks=all`.
        let own = r.partitions.own_id();
        let followers = holders(own, &r.me, live.iter().copied(), r.factor);
        r.in_sync.set_followers(
            followers
                .into_iter()
                .filter(|f| *f != r.me)
                .map(str::to_string),
        );
        let mut wanted: BTreeMap<String, Peer> = BTreeMap::new();
        for (name, peer) in &self.peers {
            if peer.left || peer.partition.is_empty() || peer.partition == r.partitions.own_id() {
                continue;
            }
            let members = live.iter().copied().chain([name.as_str()]);
            if holders(&peer.partition, name, members, r.factor).contains(&r.me.as_str()) {
                wanted.insert(name.clone(), peer.clone());
            }
        }
        let stale: Vec<String> = self
            .replicators
            .iter()
            .filter(|(name, run)| {
                wanted
                    .get(*name)
                    .is_none_or(|p| p.partition != run.partition || p.rpc_addr != run.rpc_addr)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(run) = self.replicators.remove(&name) {
                tracing::info!(peer = %name, partition = %run.partition, "stopping replication (the replica stays on disk, readable)");
                run.addr.do_send(StopReplicating);
            }
        }
        for (name, peer) in wanted {
            if self.replicators.contains_key(&name) || self.resting.contains(&name) {
                continue;
            }
            let setup = ReplicatorSetup {
                peer: name.clone(),
                rpc_addr: peer.rpc_addr,
                partition: peer.partition.clone(),
                partitions: r.partitions.clone(),
                connector: r.connector.clone(),
                metrics: r.metrics.clone(),
                me: r.me.clone(),
                cluster: r.cluster.clone(),
            };
            let spec = ChildSpec::new(format!("replicator {name}"))
                .parent(Some(supervision::parent(&ctx.address())));
            let addr = supervision::start(spec, ReplicatorActor::new(setup));
            self.replicators.insert(
                name,
                Running {
                    partition: peer.partition,
                    rpc_addr: peer.rpc_addr,
                    addr,
                },
            );
        }
        self.publish_following();
    }

    /// Publishes which partitions are pulled now (for `listPartitions`).
    fn publish_following(&self) {
        self.view.borrow_mut().following = self
            .replicators
            .values()
            .map(|run| run.partition.clone())
            .collect();
    }

    /// A replicator spent its restart budget: it rests, then starts again.
    /// Its failure stays its own: the node goes on serving.
    pub(super) fn replicator_escalated(
        &mut self,
        peer: &str,
        reason: &str,
        ctx: &mut Context<Self>,
    ) {
        tracing::error!(%peer, %reason, ?REPLICATOR_REST, "replicator keeps failing: resting before it starts again");
        self.replicators.remove(peer);
        self.publish_following();
        self.resting.insert(peer.to_string());
        let peer = peer.to_string();
        ctx.run_later(REPLICATOR_REST, move |act, ctx| {
            act.resting.remove(&peer);
            act.reconcile(ctx);
        });
    }
}
