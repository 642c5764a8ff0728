//! The RPC listener: one capnp-rpc task per connection on the actix System.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use capnp_rpc::RpcSystem;
use capnp_rpc::rpc_twoparty_capnp::Side;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::service::{LogService, ServiceContext};
use crate::log_capnp::log;
use crate::telemetry::Metrics;
use crate::wire::transport::{reader_options, vat_network};

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
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8400)),
            max_connections: 1024,
            max_message_bytes: 64 << 20,
            stream_window_bytes: 4 << 20,
        }
    }
}

/// Wraps an accepted TCP connection (e.g. in TLS) and names the caller.
/// Without one, connections are plain TCP and the caller is `anonymous`.
pub trait Acceptor: 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static;
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
    async fn accept(&self, tcp: TcpStream) -> io::Result<(TcpStream, String)> {
        Ok((tcp, "anonymous".to_string()))
    }
}

/// A running RPC server. Dropping it does not stop it; call [`RpcServer::stop_accepting`].
pub struct RpcServer {
    local_addr: SocketAddr,
    open: Rc<Cell<usize>>,
    stop: watch::Sender<bool>,
}

impl RpcServer {
    /// Binds the listener and starts accepting on the current actix System
    /// (capnp-rpc is `!Send`: everything runs on this thread).
    pub async fn start<A: Acceptor>(
        config: RpcConfig,
        ctx: Rc<ServiceContext>,
        acceptor: A,
    ) -> io::Result<RpcServer> {
        Self::start_instrumented(config, ctx, acceptor, None).await
    }

    /// [`RpcServer::start`], counting connections and calls in `metrics`.
    pub async fn start_instrumented<A: Acceptor>(
        config: RpcConfig,
        ctx: Rc<ServiceContext>,
        acceptor: A,
        metrics: Option<Arc<Metrics>>,
    ) -> io::Result<RpcServer> {
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let open = Rc::new(Cell::new(0usize));
        let (stop, stopped) = watch::channel(false);
        let acceptor = Rc::new(acceptor);
        actix_rt::spawn(accept_loop(
            listener,
            config,
            ctx,
            acceptor,
            open.clone(),
            stopped,
            metrics,
        ));
        tracing::info!(%local_addr, "RPC server listening");
        Ok(RpcServer {
            local_addr,
            open,
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// Stops accepting new connections (open ones go on).
    pub fn stop_accepting(&self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop<A: Acceptor>(
    listener: TcpListener,
    config: RpcConfig,
    ctx: Rc<ServiceContext>,
    acceptor: Rc<A>,
    open: Rc<Cell<usize>>,
    mut stopped: watch::Receiver<bool>,
    metrics: Option<Arc<Metrics>>,
) {
    while let Some((tcp, peer)) = crate::net::accept_or_stop(&listener, &mut stopped, "rpc").await {
        if open.get() >= config.max_connections {
            tracing::warn!(%peer, limit = config.max_connections, "connection limit reached: closing new connection");
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        open.set(open.get() + 1);
        let guard = OpenGuard(open.clone());
        let counted = metrics.as_ref().map(|m| m.connection_opened());
        let (ctx, acceptor, config) = (ctx.clone(), acceptor.clone(), config.clone());
        let metrics = metrics.clone();
        actix_rt::spawn(async move {
            let _guard = (guard, counted);
            let (stream, subject) = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "handshake failed: closing connection");
                    return;
                }
            };
            tracing::debug!(%peer, %subject, "client connected");
            let network = vat_network(
                stream,
                Side::Server,
                reader_options(config.max_message_bytes),
                config.stream_window_bytes,
            );
            let service: log::Client =
                capnp_rpc::new_client(LogService::new(ctx, subject.as_str()).with_metrics(metrics));
            let rpc = RpcSystem::new(Box::new(network), Some(service.client));
            match rpc.await {
                Ok(()) => tracing::debug!(%peer, "client disconnected"),
                Err(e) => tracing::info!(%peer, error = %e, "closing connection"),
            }
        });
    }
    tracing::info!("RPC server stopped accepting");
}

/// Counts a connection as open until dropped.
struct OpenGuard(Rc<Cell<usize>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}
