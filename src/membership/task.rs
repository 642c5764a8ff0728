//! The gossip task: one foca instance, its UDP socket and its timers.
//!
//! A single task selects over the socket, a `DelayQueue` of foca timers, a
//! control channel from the actor and the join timer. After every call into
//! foca it drains the runtime: datagrams are sealed and sent, timers queued,
//! and membership notifications turned into a per-name view whose changes
//! are reported to the actor. Timers that fall due together are handed to
//! foca in its own order (`Timer: Ord`), as its docs ask.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix::WeakAddr;
use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use foca_rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::time::DelayQueue;

use super::actor::{MembershipActor, Report, ReportKind};
use super::auth::{OpenError, PacketAuth};
use super::identity::NodeId;
use super::leave::{self, LeaveNotices, LeftLives};
use super::stats::{Counters, bump};
use super::{DownReason, Member, MembershipConfig, MembershipError, MembershipEvent};

/// Receive buffer size: the largest UDP datagram, so that an oversized one
/// is seen whole (and dropped) rather than silently truncated by the OS.
const RECV_BUF: usize = 65_536;

/// What the actor can ask of the task.
pub(crate) enum Control {
    /// Leave gracefully, answer, then end the task.
    Leave(oneshot::Sender<Result<(), MembershipError>>),
    /// Panic now (test support for supervision).
    Panic,
    /// Panic at the next foca timer (test support for supervision).
    PanicAtTimer,
    /// Copy every sent datagram to this channel (test support).
    Tap(mpsc::UnboundedSender<(SocketAddr, Bytes)>),
}

/// Everything a task needs, handed over by the actor.
pub(crate) struct TaskParams {
    /// Tags reports so the actor ignores those of a previous task.
    pub generation: u64,
    /// Identity to gossip under.
    pub identity: NodeId,
    /// Bound socket, still in std form (bound synchronously by the actor).
    pub socket: std::net::UdpSocket,
    /// Settings.
    pub config: MembershipConfig,
    /// Gossip addresses to announce to until someone answers.
    pub join_targets: Vec<SocketAddr>,
    /// After a restart: report one `Snapshot` once rejoined instead of
    /// per-peer events.
    pub resync: bool,
    /// Shared counters.
    pub stats: Rc<Counters>,
    /// Where to report; weak so the task does not keep the actor alive.
    pub actor: WeakAddr<MembershipActor>,
    /// Requests from the actor; closed when the actor is gone.
    pub control: mpsc::UnboundedReceiver<Control>,
}

type SwimNode = Foca<NodeId, PostcardCodec, StdRng, LeaveNotices>;

/// Reports the task's end to the actor, even when it ends by panicking or
/// by being aborted: a failure the actor must answer with a restart.
struct ExitGuard {
    actor: WeakAddr<MembershipActor>,
    generation: u64,
    /// Set when the task ends on purpose (leave, actor gone).
    clean: bool,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if let Some(actor) = self.actor.upgrade() {
            actor.do_send(Report {
                generation: self.generation,
                kind: ReportKind::Exited {
                    failed: !self.clean,
                },
            });
        }
    }
}

/// Runs the gossip loop until the actor goes away or the node leaves.
pub(crate) async fn run(params: TaskParams) {
    let mut guard = ExitGuard {
        actor: params.actor.clone(),
        generation: params.generation,
        clean: false,
    };
    let socket = match UdpSocket::from_std(params.socket) {
        Ok(socket) => socket,
        Err(error) => {
            tracing::error!(%error, "cannot register gossip socket with the runtime");
            return;
        }
    };
    let left = LeftLives::default();
    let foca = Foca::with_custom_broadcast(
        params.identity.clone(),
        params.config.foca_config(),
        foca_rand::make_rng::<StdRng>(),
        PostcardCodec,
        LeaveNotices { left: left.clone() },
    );
    let now = Instant::now();
    let mut gossip = Gossip {
        foca,
        runtime: AccumulatingRuntime::new(),
        timers: DelayQueue::new(),
        auth: PacketAuth::new(params.config.cluster_key.as_deref()),
        socket,
        seal_buf: Vec::with_capacity(params.config.max_packet_size),
        stats: params.stats,
        tap: None,
        left,
        view: BTreeMap::new(),
        resync_until: params.resync.then(|| now + params.config.resync_timeout),
        actor: params.actor,
        generation: params.generation,
        join_targets: params.join_targets,
        join_at: None,
        backoff: params.config.join_backoff_initial,
        config: params.config,
        panic_at_timer: false,
    };
    if gossip.join_targets.is_empty() && gossip.config.seed_names.is_empty() {
        // Nobody to join: a cluster of one has its (empty) view already.
        gossip.publish_view();
    } else {
        gossip.join_at = Some(now);
    }
    let clean = gossip.run(params.control).await;
    guard.clean = clean;
}

/// How long one seed name may take to resolve before the join goes on
/// without it.
const SEED_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The state of one gossip task.
struct Gossip {
    foca: SwimNode,
    runtime: AccumulatingRuntime<NodeId>,
    /// Foca's timers, delivered in this task so their order is kept.
    timers: DelayQueue<Timer<NodeId>>,
    auth: PacketAuth,
    socket: UdpSocket,
    /// Reused buffer for sealing outgoing datagrams.
    seal_buf: Vec<u8>,
    stats: Rc<Counters>,
    tap: Option<mpsc::UnboundedSender<(SocketAddr, Bytes)>>,
    /// Lives that announced a graceful leave (filled by foca's handler).
    left: LeftLives,
    /// Live peers by name, as last reported to the actor.
    view: BTreeMap<String, Member>,
    /// While `Some`, the task is rejoining after a restart and holds its
    /// report back until it has peers again or this deadline passes.
    resync_until: Option<Instant>,
    actor: WeakAddr<MembershipActor>,
    generation: u64,
    join_targets: Vec<SocketAddr>,
    /// When to announce next, while the node has no peers.
    join_at: Option<Instant>,
    backoff: Duration,
    config: MembershipConfig,
    /// Test support: panic at the next timer.
    panic_at_timer: bool,
}

impl Gossip {
    /// The select loop; returns whether it ended on purpose.
    async fn run(&mut self, mut control: mpsc::UnboundedReceiver<Control>) -> bool {
        let mut recv_buf = vec![0u8; RECV_BUF];
        loop {
            let join_at = self.join_at;
            let resync_until = self.resync_until;
            tokio::select! {
                ctl = control.recv() => match ctl {
                    None => return true,
                    Some(Control::Leave(reply)) => {
                        let result = self.leave().await;
                        // The caller may have given up waiting: nothing to do.
                        let _ = reply.send(result);
                        return true;
                    }
                    Some(Control::Panic) => panic!("injected panic in the gossip task"),
                    Some(Control::PanicAtTimer) => self.panic_at_timer = true,
                    Some(Control::Tap(tx)) => self.tap = Some(tx),
                },
                Some(first) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)),
                    if !self.timers.is_empty() => {
                    self.on_timers(first.into_inner()).await;
                }
                received = self.socket.recv_from(&mut recv_buf) => match received {
                    Ok((len, _from)) => self.on_datagram(&recv_buf[..len]).await,
                    Err(error) => {
                        // ICMP errors from earlier sends surface here on some
                        // platforms; they say nothing about this packet.
                        tracing::debug!(%error, "gossip recv error");
                    }
                },
                () = sleep_until_opt(join_at) => self.try_join().await,
                () = sleep_until_opt(resync_until) => {
                    self.resync_until = Some(Instant::now());
                    self.publish_view();
                }
            }
        }
    }

    /// Hands every timer due now to foca, in foca's order.
    async fn on_timers(&mut self, first: Timer<NodeId>) {
        if std::mem::take(&mut self.panic_at_timer) {
            panic!("injected panic at a gossip timer");
        }
        let mut due = vec![first];
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(next)) = self.timers.poll_expired(&mut cx) {
            due.push(next.into_inner());
        }
        due.sort();
        for timer in due {
            if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                tracing::warn!(%error, "foca timer error");
            }
        }
        self.drain().await;
    }

    /// Authenticates one datagram and feeds it to foca.
    async fn on_datagram(&mut self, datagram: &[u8]) {
        bump(&self.stats.packets_in, 1);
        bump(&self.stats.bytes_in, datagram.len() as u64);
        if datagram.len() > self.config.max_packet_size {
            bump(&self.stats.dropped_malformed, 1);
            return;
        }
        let packet = match self.auth.open(datagram) {
            Ok(packet) => packet,
            Err(OpenError::BadAuth) => {
                bump(&self.stats.dropped_bad_auth, 1);
                tracing::debug!(len = datagram.len(), "dropped datagram: bad auth");
                return;
            }
            Err(OpenError::Malformed) => {
                bump(&self.stats.dropped_malformed, 1);
                return;
            }
        };
        if let Err(error) = self.foca.handle_data(packet, &mut self.runtime) {
            // Everything foca rejects from the wire is garbage, forged or
            // stale; its state is unaffected.
            bump(&self.stats.dropped_malformed, 1);
            tracing::debug!(%error, "dropped datagram: rejected by foca");
        }
        self.drain().await;
    }

    /// Announces to every join target while nobody has answered yet.
    async fn try_join(&mut self) {
        if self.foca.num_members() > 0 {
            self.join_at = None;
            self.backoff = self.config.join_backoff_initial;
            return;
        }
        let mut targets = self.join_targets.clone();
        targets.extend(self.resolve_seed_names().await);
        targets.sort();
        targets.dedup();
        tracing::debug!(?targets, backoff = ?self.backoff, "announcing");
        for target in targets {
            if let Err(error) = self.foca.announce(NodeId::seed(target), &mut self.runtime) {
                tracing::warn!(%error, "announce failed");
            }
        }
        self.join_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.config.join_backoff_max);
        self.drain().await;
    }

    /// The addresses the `host:port` seeds resolve to now, without this
    /// node's own; a name that does not resolve (yet) is skipped.
    async fn resolve_seed_names(&self) -> Vec<SocketAddr> {
        let me = self.foca.identity().gossip_addr;
        let mut found = Vec::new();
        for name in &self.config.seed_names {
            match tokio::time::timeout(SEED_LOOKUP_TIMEOUT, tokio::net::lookup_host(name.as_str()))
                .await
            {
                Ok(Ok(addrs)) => found.extend(addrs.filter(|a| *a != me)),
                Ok(Err(error)) => tracing::debug!(seed = %name, %error, "seed does not resolve"),
                Err(_) => tracing::debug!(seed = %name, "seed lookup timed out"),
            }
        }
        found
    }

    /// Queues a leave notice, leaves, and puts the datagrams on the wire.
    async fn leave(&mut self) -> Result<(), MembershipError> {
        let notice = leave::encode(self.foca.identity());
        self.foca
            .add_broadcast(&notice)
            .map_err(|e| MembershipError::Protocol(e.to_string()))?;
        self.foca
            .leave_cluster(&mut self.runtime)
            .map_err(|e| MembershipError::Protocol(e.to_string()))?;
        self.drain().await;
        Ok(())
    }

    /// Acts on everything foca asked for during the last call.
    async fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.auth.seal(&data, &mut self.seal_buf);
            match self.socket.send_to(&self.seal_buf, to.gossip_addr).await {
                Ok(n) => {
                    bump(&self.stats.packets_out, 1);
                    bump(&self.stats.bytes_out, n as u64);
                }
                Err(error) => {
                    bump(&self.stats.send_errors, 1);
                    tracing::debug!(%error, to = %to.gossip_addr, "gossip send failed");
                }
            }
            if let Some(tap) = &self.tap {
                let _ = tap.send((to.gossip_addr, Bytes::copy_from_slice(&self.seal_buf)));
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timers.insert(timer, after);
        }
        let mut changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(_)
                | OwnedNotification::MemberDown(_)
                | OwnedNotification::Rename(_, _)
                | OwnedNotification::Active => changed = true,
                OwnedNotification::Idle => {
                    changed = true;
                    if !self.join_targets.is_empty() || !self.config.seed_names.is_empty() {
                        tracing::info!("no live peers left; trying the seeds again");
                        self.backoff = self.config.join_backoff_initial;
                        self.join_at = Some(Instant::now() + self.backoff);
                    }
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(
                        incarnation = id.incarnation,
                        "declared down by peers; rejoined"
                    );
                    self.report(ReportKind::Renewed(id));
                }
                OwnedNotification::Defunct => {
                    tracing::info!("gossip identity is down (left the cluster)");
                }
                // Only reachable if some crate enables foca's
                // `unstable-notifications` feature.
                #[allow(unreachable_patterns)]
                other => tracing::trace!(?other, "foca notification"),
            }
        }
        if changed {
            self.publish_view();
        }
    }

    /// Recomputes the per-name view and reports what changed.
    fn publish_view(&mut self) {
        let mut now: BTreeMap<String, Member> = BTreeMap::new();
        for member in self.foca.iter_members() {
            let id = member.id();
            let newer = now
                .get(&id.name)
                .is_none_or(|known| known.incarnation < id.incarnation);
            if newer {
                now.insert(id.name.clone(), id.to_member());
            }
        }
        if let Some(until) = self.resync_until {
            if now.is_empty() && Instant::now() < until {
                return;
            }
            self.resync_until = None;
            self.report(ReportKind::Snapshot(now.values().cloned().collect()));
            self.view = now;
            return;
        }
        let mut events = Vec::new();
        for (name, old) in &self.view {
            if !now.contains_key(name) {
                let reason = if leave::has_left(&self.left, old.gossip_addr, old.incarnation) {
                    DownReason::Left
                } else {
                    DownReason::Failed
                };
                events.push(MembershipEvent::PeerDown {
                    name: name.clone(),
                    reason,
                });
            }
        }
        for (name, member) in &now {
            if self.view.get(name) != Some(member) {
                events.push(MembershipEvent::peer_up(member));
            }
        }
        self.view = now;
        if !events.is_empty() {
            self.report(ReportKind::Events(events));
        }
    }

    fn report(&self, kind: ReportKind) {
        if let Some(actor) = self.actor.upgrade() {
            actor.do_send(Report {
                generation: self.generation,
                kind,
            });
        }
    }
}

/// Sleeps until `at`, or forever without a deadline.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Fuzzing support (`crate::fuzzing::gossip_datagram`): `data` as a
/// received datagram, through the envelope (no key; and sealed then opened
/// with a key, so foca sees it behind authentication too; and raw against
/// a key) and foca's decoding, as [`Gossip`] receives one.
pub(crate) fn receive_datagram(data: &[u8]) {
    let mut foca = fuzz_node(8401);
    let mut runtime = AccumulatingRuntime::new();
    if let Ok(packet) = PacketAuth::new(None).open(data) {
        let _ = foca.handle_data(packet, &mut runtime);
    }
    let keyed = PacketAuth::new(Some(b"fuzz cluster key"));
    let _ = keyed.open(data);
    let mut sealed = Vec::new();
    keyed.seal(data, &mut sealed);
    if let Ok(packet) = keyed.open(&sealed) {
        let _ = foca.handle_data(packet, &mut runtime);
    }
}

/// A foca node as the gossip task makes one, at 127.0.0.1:`port`.
fn fuzz_node(port: u16) -> SwimNode {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let identity = NodeId {
        name: format!("fuzz-{port}"),
        rpc_addr: addr,
        gossip_addr: addr,
        incarnation: 1,
        partition: format!("fuzz-{port}-1"),
    };
    Foca::with_custom_broadcast(
        identity,
        MembershipConfig::default().foca_config(),
        foca_rand::make_rng::<StdRng>(),
        PostcardCodec,
        LeaveNotices {
            left: LeftLives::default(),
        },
    )
}

/// Seeds for the gossip fuzzer: real datagrams (an announce, and the
/// answer and gossip it draws), enveloped without a key.
pub(crate) fn sample_datagrams() -> Vec<Vec<u8>> {
    let mut a = fuzz_node(8401);
    let mut b = fuzz_node(8411);
    let mut runtime = AccumulatingRuntime::new();
    let mut out = Vec::new();
    let plain = PacketAuth::new(None);
    let _ = a.announce(
        NodeId::seed(SocketAddr::from(([127, 0, 0, 1], 8411))),
        &mut runtime,
    );
    for _ in 0..4 {
        let mut sent = Vec::new();
        while let Some((_, packet)) = runtime.to_send() {
            sent.push(packet);
        }
        if sent.is_empty() {
            break;
        }
        for packet in sent {
            let mut sealed = Vec::new();
            plain.seal(&packet, &mut sealed);
            out.push(sealed);
            let _ = b.handle_data(&packet, &mut runtime);
            std::mem::swap(&mut a, &mut b);
        }
    }
    out
}
