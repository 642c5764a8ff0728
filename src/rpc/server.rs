//! The RPC front: an [`RpcFront`] actor owns the listener; each connection
//! is one capnp-rpc task on the actix System.
//!
//! Supervision (`crate::supervision`): a panic in the front's handlers or
//! in its accept loop restarts it; the restart keeps the bound listener
//! (same port, connections waiting in the backlog are accepted after it)
//! and the connections already open, and starts accepting again. A
//! connection is a temporary child: a panic while serving one of its calls
//! closes that connection (its client sees a disconnection and reconnects),
//! is logged, and is never restarted; the front and every other connection
//! go on. Past its budget the front escalates to the Agent.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use capnp_rpc::RpcSystem;
use capnp_rpc::rpc_twoparty_capnp::Side;
use futures::FutureExt;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::service::ConnectionState;
use super::service::{LogService, ServiceContext};
use crate::log_capnp::log;
use crate::supervision::{self, ChildSpec, Failpoints, InjectPanic, Parent, Work, panic_message};
use crate::telemetry::Metrics;
use crate::wire::busy_poll::BusyPoll;
use crate::wire::frame_stream;
use crate::wire::framed::{Activity, ByteBudget, ReceiveLimits};
use crate::wire::outbox::Outbox;
use crate::wire::prefixed::Prefixed;
use crate::wire::transport::{WriteGathering, vat_network};

/// Settings of the RPC front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcConfig {
    /// Address to listen on. Default: `127.0.0.1:8400`.
    pub listen: SocketAddr,
    /// Connections served at once; further ones are closed at accept, with a
    /// log line. Default: 1024.
    pub max_connections: usize,
    /// Largest message a client may send; a larger one closes that connection.
    /// Default: 64 MiB.
    pub max_message_bytes: usize,
    /// Flow-control window of each stream the server pushes (consumeStream):
    /// how many bytes may be in flight to a consumer. Default: 4 MiB.
    pub stream_window_bytes: usize,
    /// Bytes in flight across every connection (messages being received,
    /// parameters of calls being served, answers not yet sent: see
    /// [`Outbox`]); past it the server stops reading from sockets, and
    /// reads wait, until some are done. Default: 256 MiB.
    pub max_inflight_bytes: usize,
    /// A connection with no message and no call or stream in progress for
    /// this long is closed. Default: 300 s.
    pub idle_timeout: Duration,
    /// Longest a TLS handshake, and then the first whole message, may take
    /// before the connection is closed. Default: 10 s.
    pub handshake_timeout: Duration,
    /// Connections one identity (certificate CN; `anonymous` without TLS)
    /// may hold at once, so one client cannot take every slot.
    /// Default: half of `max_connections`.
    pub max_connections_per_identity: usize,
    /// The longest window of polling the sockets after a reply before
    /// sleeping; the window adapts below it (see [`crate::wire::busy_poll`]);
    /// zero: off. Default: 200 µs.
    pub busy_poll: Duration,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8400)),
            max_connections: 1024,
            max_message_bytes: 64 << 20,
            stream_window_bytes: 4 << 20,
            max_inflight_bytes: 256 << 20,
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            max_connections_per_identity: 512,
            busy_poll: Duration::from_micros(200),
        }
    }
}

/// Wraps an accepted TCP connection (e.g. in TLS) and names the caller.
/// Without one, connections are plain TCP and the caller is `anonymous`.
pub trait Acceptor: 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static;
    /// Where the stream's outgoing bytes are gathered into large writes.
    const GATHERING: WriteGathering;
    /// Completes the handshake; returns the stream and the caller's identity.
    fn accept(
        &self,
        tcp: TcpStream,
    ) -> impl std::future::Future<Output = io::Result<(Self::Stream, String)>>;
}

/// Plain TCP (`--insecure`).
pub struct PlainAcceptor;

impl Acceptor for PlainAcceptor {
    type Stream = TcpStream;
    const GATHERING: WriteGathering = WriteGathering::Buffered;
    async fn accept(&self, tcp: TcpStream) -> io::Result<(TcpStream, String)> {
        Ok((tcp, "anonymous".to_string()))
    }
}

/// A running RPC front: its address and a handle to the actor. Dropping it
/// does not stop it; call [`RpcServer::stop_accepting`].
pub struct RpcServer {
    local_addr: SocketAddr,
    open: Rc<Cell<usize>>,
    budget: Rc<ByteBudget>,
    stop: Recipient<StopAccepting>,
    inject: Recipient<InjectPanic>,
}

impl RpcServer {
    /// Binds the listener and starts accepting on the current actix System
    /// (capnp-rpc is `!Send`: everything runs on this thread).
    pub async fn start<A: Acceptor>(
        config: RpcConfig,
        ctx: Rc<ServiceContext>,
        acceptor: A,
    ) -> io::Result<RpcServer> {
        Self::start_under(config, ctx, acceptor, None, None).await
    }

    /// [`RpcServer::start`], counting connections and calls in `metrics`,
    /// the front escalating to `parent` when its restart budget is spent.
    pub async fn start_under<A: Acceptor>(
        config: RpcConfig,
        ctx: Rc<ServiceContext>,
        acceptor: A,
        metrics: Option<Arc<Metrics>>,
        parent: Option<Parent>,
    ) -> io::Result<RpcServer> {
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let open = Rc::new(Cell::new(0usize));
        let mut budget = ByteBudget::new(config.max_inflight_bytes);
        if let Some(m) = &metrics {
            budget = budget.shown_in(m.inflight_bytes());
        }
        let budget = Rc::new(budget);
        let busy_poll = BusyPoll::start(config.busy_poll);
        let front = RpcFront {
            listener: Some(Rc::new(listener)),
            connections: Rc::new(Connections {
                config,
                ctx,
                acceptor,
                open: open.clone(),
                per_identity: RefCell::new(HashMap::new()),
                budget: budget.clone(),
                trim_pending: Cell::new(false),
                metrics,
                failpoints: Failpoints::default(),
                busy_poll,
            }),
            accepting: None,
        };
        let addr = supervision::start(ChildSpec::new("rpc front").parent(parent), front);
        tracing::info!(%local_addr, "RPC server listening");
        Ok(RpcServer {
            local_addr,
            open,
            budget,
            stop: addr.clone().recipient(),
            inject: addr.recipient(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// Request bytes in flight now (see [`RpcConfig::max_inflight_bytes`]).
    pub fn inflight_bytes(&self) -> usize {
        self.budget.used()
    }

    /// Stops accepting new connections and closes the listener (open
    /// connections go on).
    pub fn stop_accepting(&self) {
        self.stop.do_send(StopAccepting);
    }

    /// Test support: where to send [`InjectPanic`] for the front.
    pub fn front(&self) -> Recipient<InjectPanic> {
        self.inject.clone()
    }
}

/// Stops accepting: the listener is closed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopAccepting;

/// The actor that accepts RPC connections and starts one task for each.
pub struct RpcFront<A: Acceptor> {
    /// `None` once it stopped accepting.
    listener: Option<Rc<TcpListener>>,
    /// What every connection is served with.
    connections: Rc<Connections<A>>,
    /// The accept loop running in this actor's context.
    accepting: Option<SpawnHandle>,
}

impl<A: Acceptor> Actor for RpcFront<A> {
    type Context = Context<Self>;

    /// Runs the accept loop in this actor's context (at start and after
    /// every restart).
    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(listener) = self.listener.clone() else {
            return;
        };
        let accept = accept_loop(listener, self.connections.clone());
        self.accepting = Some(ctx.spawn(accept.into_actor(self)));
    }
}

impl<A: Acceptor> Supervised for RpcFront<A> {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        tracing::warn!(listening = self.listener.is_some(), "RPC front restarting");
    }
}

impl<A: Acceptor> Handler<StopAccepting> for RpcFront<A> {
    type Result = ();

    fn handle(&mut self, _: StopAccepting, ctx: &mut Context<Self>) {
        if self.listener.take().is_some() {
            tracing::info!("RPC server stopped accepting");
        }
        // Ends the accept loop, the last holder of the listener.
        if let Some(accepting) = self.accepting.take() {
            ctx.cancel_future(accepting);
        }
    }
}

/// Test-only: `Handler` panics here and now; `Completion` at the next
/// accepted connection (in the accept loop); `Connection` in the next call
/// served by any connection.
impl<A: Acceptor> Handler<InjectPanic> for RpcFront<A> {
    type Result = ();

    fn handle(&mut self, InjectPanic(work): InjectPanic, _ctx: &mut Context<Self>) {
        let failpoints = &self.connections.failpoints;
        failpoints.arm(work);
        failpoints.hit(Work::Handler);
    }
}

/// What each connection task is started with.
struct Connections<A> {
    config: RpcConfig,
    ctx: Rc<ServiceContext>,
    acceptor: A,
    open: Rc<Cell<usize>>,
    /// Connections open per identity (those past the handshake).
    per_identity: RefCell<HashMap<String, usize>>,
    /// The node's budget of request bytes in flight.
    budget: Rc<ByteBudget>,
    /// A hand-back of freed memory to the OS is scheduled.
    trim_pending: Cell<bool>,
    metrics: Option<Arc<Metrics>>,
    failpoints: Failpoints,
    /// This thread's poller after replies (`None`: off).
    busy_poll: Option<BusyPoll>,
}

async fn accept_loop<A: Acceptor>(listener: Rc<TcpListener>, conn: Rc<Connections<A>>) {
    loop {
        let (tcp, peer) = crate::net::accept(&listener, "rpc").await;
        conn.failpoints.hit(Work::Completion);
        if conn.open.get() >= conn.config.max_connections {
            tracing::warn!(%peer, limit = conn.config.max_connections, "connection limit reached: closing new connection");
            drop(tcp);
            continue;
        }
        if let Err(e) = crate::wire::socket::tune_rpc_socket(&tcp) {
            tracing::debug!(%peer, error = %e, "cannot set TCP options");
        }
        conn.open.set(conn.open.get() + 1);
        let guard = OpenGuard(conn.open.clone());
        let counted = conn.metrics.as_ref().map(|m| m.connection_opened());
        let serve = serve_connection(tcp, peer, conn.clone());
        let conn = conn.clone();
        actix_rt::spawn(async move {
            let guard = (guard, counted);
            // A temporary child: a panic closes this connection only.
            if let Err(panic) = AssertUnwindSafe(serve).catch_unwind().await {
                tracing::error!(%peer, panic = %panic_message(&*panic), "connection task panicked: connection closed");
            }
            drop(guard);
            Connections::trim_soon(&conn);
        });
    }
}

async fn serve_connection<A: Acceptor>(tcp: TcpStream, peer: SocketAddr, conn: Rc<Connections<A>>) {
    let config = &conn.config;
    let (stream, subject) = match tokio::time::timeout(
        config.handshake_timeout,
        conn.acceptor.accept(tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "handshake failed: closing connection");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, timeout = ?config.handshake_timeout, "no handshake in time: closing connection");
            return;
        }
    };
    let Some(_identity) = IdentitySlot::take(&conn, &subject) else {
        tracing::warn!(%peer, %subject, limit = config.max_connections_per_identity, "connection limit of this identity reached: closing connection");
        return;
    };
    tracing::debug!(%peer, %subject, "client connected");
    // A replica's replication stream or a Cap'n Proto client: told apart
    // by their first 8 bytes (every capnp message has at least 8).
    let mut stream = stream;
    let mut first = [0u8; 8];
    match tokio::time::timeout(config.handshake_timeout, stream.read_exact(&mut first)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "closed before its first message");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, %subject, "no message in time: closing connection");
            return;
        }
    }
    if first == frame_stream::MAGIC {
        let outbox = Outbox::new(Some(conn.budget.clone()));
        let service = LogService::new(conn.ctx.clone(), subject.as_str())
            .with_metrics(conn.metrics.clone())
            .with_failpoints(conn.failpoints.clone())
            .with_connection(
                Rc::new(ConnectionState::default()),
                Some(conn.budget.clone()),
                Some(outbox),
            );
        service
            .serve_frame_stream(stream, config.handshake_timeout)
            .await;
        tracing::debug!(%peer, %subject, "replication stream ended");
        return;
    }
    let stream = Prefixed::new(first, stream);
    let activity = Activity::new();
    let limits = ReceiveLimits::new(config.max_message_bytes)
        .with_budget(Some(conn.budget.clone()))
        .with_activity(activity.clone())
        .refuse_promise_resolutions();
    let outbox = Outbox::new(Some(conn.budget.clone()));
    let network = vat_network(
        stream,
        A::GATHERING,
        Side::Server,
        limits,
        config.stream_window_bytes,
        Some(outbox.clone()),
        conn.busy_poll.clone(),
    );
    let state = Rc::new(ConnectionState::default());
    let service = LogService::new(conn.ctx.clone(), subject.as_str())
        .with_metrics(conn.metrics.clone())
        .with_failpoints(conn.failpoints.clone())
        .with_connection(
            state.clone(),
            Some(conn.budget.clone()),
            Some(outbox.clone()),
        );
    let service: log::Client = capnp_rpc::new_client(service);
    let rpc = RpcSystem::new(Box::new(network), Some(service.client));
    tokio::pin!(rpc);
    // The idle watch is a task of its own, woken only by its timer or by
    // the reader, and it ends the connection by closing the reader. Polled
    // beside `rpc` (in a select, or as a task's handle) it ran on every
    // wake of this task: 1,200 and then 400 instructions per call.
    let _watch = IdleWatch(tokio::task::spawn_local({
        let (activity, state, outbox) = (activity.clone(), state.clone(), outbox.clone());
        let (first, idle) = (config.handshake_timeout, config.idle_timeout);
        async move { activity.close(idle_watch(&activity, &state, &outbox, first, idle).await) }
    }));
    let closed = std::future::poll_fn(|cx| match activity.closed() {
        Some(why) => std::task::Poll::Ready(Some(why)),
        None => rpc.as_mut().poll(cx).map(|ended| {
            match ended {
                Ok(()) => tracing::debug!(%peer, "client disconnected"),
                Err(e) => tracing::info!(%peer, error = %e, "closing connection"),
            }
            None
        }),
    });
    let Some(why) = closed.await else {
        return;
    };
    tracing::info!(%peer, %subject, "{why}: closing connection");
    // capnp-rpc winds the connection down as on a broken one (dropping it
    // while it runs can leak its state); a peer that does not read its
    // answers cannot hold it up for long.
    if tokio::time::timeout(WIND_DOWN, rpc).await.is_err() {
        tracing::warn!(%peer, "connection did not wind down in time: dropped");
    }
}

/// The idle watch's task, stopped with its connection.
struct IdleWatch(tokio::task::JoinHandle<()>);

impl Drop for IdleWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Longest a closed connection may take to wind down.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// Slowest a large message (one charged to the budget) may arrive, after
/// the first-message allowance: a sender that stalls inside one would hold
/// its share of `--max-inflight-bytes` until the idle timeout.
pub const MIN_LARGE_MESSAGE_BYTES_PER_SEC: usize = 1 << 20;

/// Resolves when the connection should be closed for want of traffic: no
/// whole message within `first` of opening (however large the one
/// arriving: a client starts with its small bootstrap); a large message
/// (over 64 KiB) still arriving `first` plus a second per MiB after it
/// began; or no
/// message for `idle` while no call or stream of its own is in progress (a
/// following consumer is not idle).
///
/// Also when answers wait to be sent and none has left for `first`: a peer
/// that stopped reading holds them, and their share of the budget, no
/// longer than that (checked at least every `first`).
async fn idle_watch(
    activity: &Activity,
    state: &ConnectionState,
    outbox: &Outbox,
    first: Duration,
    idle: Duration,
) -> &'static str {
    let opened = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        let due = if activity.messages() == 0 {
            // A client's first message is its bootstrap, a small one.
            (opened + first, "no message in time")
        } else if let Some((since, len)) = activity.large_message() {
            // While a large message arrives only its own deadline counts.
            let allowed = first
                + Duration::from_secs_f64(len as f64 / MIN_LARGE_MESSAGE_BYTES_PER_SEC as f64);
            (
                tokio::time::Instant::from_std(since) + allowed,
                "a large message arriving too slowly",
            )
        } else {
            let last = tokio::time::Instant::from_std(activity.last_message());
            match state.busy() {
                0 => (last + idle, "idle"),
                // Busy: look again a whole timeout later.
                _ => (now.max(last) + idle, "idle"),
            }
        };
        if due.0 <= now && (due.1 != "idle" || state.busy() == 0) {
            return due.1;
        }
        if let Some(since) = outbox.stalled_since()
            && tokio::time::Instant::from_std(since) + first <= now
        {
            return "not reading its answers";
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due.0.max(now).min(now + first)) => {}
            _ = activity.changed() => {}
        }
    }
}

/// One of an identity's connection slots, given back when dropped.
struct IdentitySlot<'a, A> {
    conn: &'a Connections<A>,
    subject: String,
}

impl<'a, A> IdentitySlot<'a, A> {
    fn take(conn: &'a Connections<A>, subject: &str) -> Option<IdentitySlot<'a, A>> {
        let mut counts = conn.per_identity.borrow_mut();
        let n = counts.entry(subject.to_string()).or_insert(0);
        if *n >= conn.config.max_connections_per_identity {
            return None;
        }
        *n += 1;
        Some(IdentitySlot {
            conn,
            subject: subject.to_string(),
        })
    }
}

impl<A> Drop for IdentitySlot<'_, A> {
    fn drop(&mut self) {
        let mut counts = self.conn.per_identity.borrow_mut();
        if let Some(n) = counts.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.subject);
            }
        }
    }
}

/// What hands freed memory back to the OS, if not glibc's `malloc_trim`:
/// set once by a program whose global allocator is another one.
static RELEASE_FREE_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Makes `release` what runs a second after connections close, instead of
/// glibc's `malloc_trim` (the `proglog` binary, on jemalloc, purges its
/// arenas). Only the first call counts.
pub fn set_free_memory_release(release: fn()) {
    let _ = RELEASE_FREE_MEMORY.set(release);
}

impl<A: 'static> Connections<A> {
    /// Hands memory freed by closed connections back to the OS, a second
    /// after a close (at most once a second): allocators keep freed pages
    /// otherwise, so the node's RSS would stay at its peak of connections.
    /// glibc's `malloc_trim` unless [`set_free_memory_release`] named
    /// another way; nothing off glibc otherwise.
    fn trim_soon(this: &Rc<Self>) {
        if this.trim_pending.replace(true) {
            return;
        }
        let conn = this.clone();
        actix_rt::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            conn.trim_pending.set(false);
            if let Some(release) = RELEASE_FREE_MEMORY.get() {
                release();
                return;
            }
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only returns free pages of malloc's arenas.
            unsafe {
                libc::malloc_trim(0);
            }
        });
    }
}

/// Counts a connection as open until dropped.
struct OpenGuard(Rc<Cell<usize>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}
