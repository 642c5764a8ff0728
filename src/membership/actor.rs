//! `MembershipActor`: the actix face of the gossip task.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::identity::{NodeId, now_millis};
use super::stats::Counters;
use super::task::{self, Control, TaskParams};
use super::{
    Crash, GetLocal, GetMembers, GetStats, GossipStats, Leave, Member, MembershipConfig,
    MembershipError, MembershipEvent, Subscribe, TapOutgoing,
};
use crate::supervision::{self, ChildSpec, InjectPanic, Parent, Work};

/// How long to wait before retrying to bind the gossip socket after a
/// restart found it busy.
const REBIND_RETRY: Duration = Duration::from_secs(1);

/// Where the node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    /// Gossiping (or rejoining after a restart).
    Running,
    /// Left gracefully; stays idle.
    Left,
    /// Killed by `Crash`; stays idle.
    Crashed,
}

/// Owns the node's gossip task and fans its membership changes out to
/// subscribers. Supervised (`crate::supervision`): a panic in one of its
/// handlers, or its gossip task failing (a panic in the task, at a foca
/// timer or a datagram, or a socket error), restarts it. The restart keeps
/// the bound gossip port, subscribers, counters and the last known peers
/// (they live in this struct), and reopens the gossip: a new task under a
/// newer incarnation rejoins through the seeds and every known peer, then
/// hands subscribers a fresh snapshot. Past its budget it escalates to the
/// Agent.
pub struct MembershipActor {
    config: MembershipConfig,
    /// This node's current identity (renewed on restart and rejoin).
    identity: NodeId,
    /// The bound gossip address, reused on restart.
    local_addr: SocketAddr,
    /// The socket bound by `start`, handed to the first task.
    socket: Option<std::net::UdpSocket>,
    /// Incremented per task, so reports of a dead task are ignored.
    generation: u64,
    state: RunState,
    control: Option<mpsc::UnboundedSender<Control>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Live peers by name.
    members: BTreeMap<String, Member>,
    subscribers: Vec<Recipient<MembershipEvent>>,
    stats: Rc<Counters>,
    /// Whether the next task starts after a failure and must resync.
    restarted: bool,
}

impl MembershipActor {
    /// Validates `config`, binds the gossip socket (so that a busy port is
    /// an error here, not a log line later) and starts the actor under a
    /// supervisor with no parent. Must be called from within an actix System.
    pub fn start(config: MembershipConfig) -> Result<Addr<Self>, MembershipError> {
        Self::start_under(config, None)
    }

    /// [`MembershipActor::start`], escalating to `parent` when the restart
    /// budget is spent.
    pub fn start_under(
        config: MembershipConfig,
        parent: Option<Parent>,
    ) -> Result<Addr<Self>, MembershipError> {
        config.validate()?;
        let socket = bind(config.bind_addr)?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| MembershipError::Bind {
                addr: config.bind_addr,
                source,
            })?;
        if config.cluster_key.is_none() {
            tracing::warn!(
                node = %config.node_name,
                "gossip is unauthenticated: set a cluster key so strangers cannot join"
            );
        }
        let identity = NodeId {
            name: config.node_name.clone(),
            rpc_addr: config.rpc_addr,
            gossip_addr: config.advertise_addr.unwrap_or(local_addr),
            incarnation: config.incarnation.unwrap_or_else(now_millis),
            partition: config.partition.clone(),
        };
        let spec = ChildSpec::new("membership").parent(parent);
        Ok(supervision::start(
            spec,
            Self {
                config,
                identity,
                local_addr,
                socket: Some(socket),
                generation: 0,
                state: RunState::Running,
                control: None,
                task: None,
                members: BTreeMap::new(),
                subscribers: Vec::new(),
                stats: Rc::default(),
                restarted: false,
            },
        ))
    }

    /// Starts a gossip task for the current generation.
    fn spawn_task(&mut self, ctx: &mut Context<Self>) {
        if self.state != RunState::Running || self.task.is_some() {
            return;
        }
        let socket = match self.socket.take() {
            Some(socket) => socket,
            None => match bind(self.local_addr) {
                Ok(socket) => socket,
                Err(error) => {
                    tracing::error!(%error, "cannot rebind gossip socket; retrying");
                    ctx.run_later(REBIND_RETRY, |act, ctx| act.spawn_task(ctx));
                    return;
                }
            },
        };
        // Rejoin through the seeds and every peer known before a restart.
        let mut join_targets = self.config.seeds.clone();
        join_targets.extend(self.members.values().map(|m| m.gossip_addr));
        join_targets.retain(|addr| *addr != self.identity.gossip_addr);
        join_targets.sort();
        join_targets.dedup();

        let (tx, rx) = mpsc::unbounded_channel();
        let params = TaskParams {
            generation: self.generation,
            identity: self.identity.clone(),
            socket,
            config: self.config.clone(),
            join_targets,
            resync: self.restarted,
            stats: self.stats.clone(),
            actor: ctx.address().downgrade(),
            control: rx,
        };
        self.control = Some(tx);
        self.task = Some(actix::spawn(task::run(params)));
        tracing::info!(
            node = %self.identity.name,
            gossip = %self.identity.gossip_addr,
            incarnation = self.identity.incarnation,
            "gossip started"
        );
    }

    /// Stops the current task without any goodbye.
    fn kill_task(&mut self) {
        self.control = None;
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Sends `event` to every live subscriber, forgetting dead ones.
    fn publish(&mut self, event: MembershipEvent) {
        self.subscribers.retain(|s| s.connected());
        for subscriber in &self.subscribers {
            subscriber.do_send(event.clone());
        }
    }

    fn snapshot(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }
}

/// Binds a non-blocking std UDP socket (a tokio socket needs a runtime
/// context, which `start` may not have yet).
fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket, MembershipError> {
    let wrap = |source| MembershipError::Bind { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(wrap)?;
    socket.set_nonblocking(true).map_err(wrap)?;
    Ok(socket)
}

impl Actor for MembershipActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.spawn_task(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.kill_task();
    }
}

impl Supervised for MembershipActor {
    /// Called by the Supervisor after a failure: the next task runs under a
    /// newer incarnation (the old one may still be alive in peers' views)
    /// and hands subscribers a fresh snapshot once it has rejoined.
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        if self.state != RunState::Running {
            return;
        }
        self.kill_task();
        self.generation += 1;
        self.identity = self.identity.next_life();
        self.restarted = true;
        tracing::warn!(
            node = %self.identity.name,
            incarnation = self.identity.incarnation,
            "membership actor restarting"
        );
    }
}

/// What the gossip task tells the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Report {
    /// The task's generation; stale reports are ignored.
    pub generation: u64,
    pub kind: ReportKind,
}

pub(crate) enum ReportKind {
    /// Peers came up or went down.
    Events(Vec<MembershipEvent>),
    /// The full view after a restart.
    Snapshot(Vec<Member>),
    /// Foca renewed the identity after being declared down.
    Renewed(NodeId),
    /// The task ended; `failed` unless it ended on purpose.
    Exited { failed: bool },
}

impl Handler<Report> for MembershipActor {
    type Result = ();

    fn handle(&mut self, report: Report, ctx: &mut Self::Context) {
        if report.generation != self.generation || self.state != RunState::Running {
            return;
        }
        match report.kind {
            ReportKind::Events(events) => {
                for event in events {
                    match &event {
                        MembershipEvent::PeerUp {
                            name,
                            rpc_addr,
                            gossip_addr,
                            incarnation,
                            partition,
                        } => {
                            let member = Member {
                                name: name.clone(),
                                rpc_addr: *rpc_addr,
                                gossip_addr: *gossip_addr,
                                incarnation: *incarnation,
                                partition: partition.clone(),
                            };
                            self.members.insert(name.clone(), member);
                        }
                        MembershipEvent::PeerDown { name, .. } => {
                            self.members.remove(name);
                        }
                        MembershipEvent::Snapshot(_) => {}
                    }
                    self.publish(event);
                }
            }
            ReportKind::Snapshot(members) => {
                self.members = members
                    .iter()
                    .map(|m| (m.name.clone(), m.clone()))
                    .collect();
                self.publish(MembershipEvent::Snapshot(members));
            }
            ReportKind::Renewed(identity) => self.identity = identity,
            ReportKind::Exited { failed } => {
                self.task = None;
                self.control = None;
                if failed {
                    tracing::error!(node = %self.identity.name, "gossip task failed");
                    // The Supervisor turns this stop into `restarting`.
                    ctx.stop();
                }
            }
        }
    }
}

impl Handler<Subscribe> for MembershipActor {
    type Result = ();

    fn handle(&mut self, Subscribe(subscriber): Subscribe, _ctx: &mut Self::Context) {
        subscriber.do_send(MembershipEvent::Snapshot(self.snapshot()));
        self.subscribers.push(subscriber);
    }
}

impl Handler<GetMembers> for MembershipActor {
    type Result = MessageResult<GetMembers>;

    fn handle(&mut self, _msg: GetMembers, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

impl Handler<GetLocal> for MembershipActor {
    type Result = MessageResult<GetLocal>;

    fn handle(&mut self, _msg: GetLocal, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.identity.to_member())
    }
}

impl Handler<GetStats> for MembershipActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _msg: GetStats, _ctx: &mut Self::Context) -> Self::Result {
        let stats: GossipStats = self.stats.snapshot();
        MessageResult(stats)
    }
}

impl Handler<Leave> for MembershipActor {
    type Result = ResponseFuture<Result<(), MembershipError>>;

    fn handle(&mut self, _msg: Leave, _ctx: &mut Self::Context) -> Self::Result {
        let control = match (self.state, self.control.take()) {
            (RunState::Running, Some(control)) => control,
            _ => return Box::pin(async { Err(MembershipError::NotRunning) }),
        };
        self.state = RunState::Left;
        self.members.clear();
        let (tx, rx) = oneshot::channel();
        let sent = control.send(Control::Leave(tx)).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(MembershipError::TaskGone);
            }
            rx.await.map_err(|_| MembershipError::TaskGone)?
        })
    }
}

impl Handler<Crash> for MembershipActor {
    type Result = ();

    fn handle(&mut self, _msg: Crash, _ctx: &mut Self::Context) {
        tracing::warn!(node = %self.identity.name, "crash requested: dropping gossip silently");
        self.state = RunState::Crashed;
        self.members.clear();
        self.kill_task();
    }
}

/// Test-only: `Handler` panics here and now; `Completion` makes the gossip
/// task panic (its end is this actor's completion); `Timer` makes it panic
/// at its next foca timer.
impl Handler<InjectPanic> for MembershipActor {
    type Result = ();

    fn handle(&mut self, InjectPanic(work): InjectPanic, _ctx: &mut Self::Context) {
        let control = match work {
            Work::Handler => panic!("injected panic (Handler)"),
            Work::Completion => Control::Panic,
            Work::Timer => Control::PanicAtTimer,
            Work::Connection => return,
        };
        if let Some(tx) = &self.control {
            let _ = tx.send(control);
        }
    }
}

impl Handler<TapOutgoing> for MembershipActor {
    type Result = ();

    fn handle(&mut self, TapOutgoing(tx): TapOutgoing, _ctx: &mut Self::Context) {
        if let Some(control) = &self.control {
            let _ = control.send(Control::Tap(tx));
        }
    }
}
