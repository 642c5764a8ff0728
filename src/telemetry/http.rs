//! The HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`, on
//! hyper's server (parsing, keep-alive, errors: a request that is not
//! HTTP gets `400 Bad Request` and the connection is closed).
//!
//! Enough for Prometheus and kubelet probes: `GET` (and `HEAD`) only, a
//! request head within 5 s (else the connection is closed), a response
//! written within 10 s, at most 64 connections at once, each closed after
//! its answer. Runs as tasks on the actix System thread, next to the actors
//! it reports on.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use futures::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::panic::AssertUnwindSafe;
use tokio::net::{TcpListener, TcpStream};

use crate::supervision::{self, ChildSpec, Failpoints, InjectPanic, Parent, Work, panic_message};

use super::{CONTENT_TYPE, Telemetry};

/// Largest request head (request line and headers) buffered.
const MAX_HEAD_BYTES: usize = 8 << 10;
/// Longest wait for a request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time to write a response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;

const TEXT: &str = "text/plain; charset=utf-8";

/// A running HTTP server: its address and a handle to its actor. Stops
/// accepting when stopped or dropped.
pub struct HttpServer {
    local_addr: SocketAddr,
    front: Addr<HttpFront>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl HttpServer {
    /// Binds `addr` (port 0 picks one) and serves `telemetry` on the
    /// current actix System.
    pub async fn start(addr: SocketAddr, telemetry: Rc<Telemetry>) -> io::Result<HttpServer> {
        Self::start_under(addr, telemetry, None).await
    }

    /// [`HttpServer::start`], the front escalating to `parent` when its
    /// restart budget is spent.
    pub async fn start_under(
        addr: SocketAddr,
        telemetry: Rc<Telemetry>,
        parent: Option<Parent>,
    ) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let front = HttpFront {
            listener: Some(Rc::new(listener)),
            telemetry,
            open: Rc::default(),
            failpoints: Failpoints::default(),
            accepting: None,
        };
        let front = supervision::start(ChildSpec::new("http front").parent(parent), front);
        tracing::info!(%local_addr, "HTTP server (metrics, health) listening");
        Ok(HttpServer { local_addr, front })
    }

    /// Where it listens (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections (requests in progress are answered).
    pub fn stop(&self) {
        self.front.do_send(StopServing);
    }

    /// Test support: where to send [`InjectPanic`] for the front.
    pub fn front(&self) -> Recipient<InjectPanic> {
        self.front.clone().recipient()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops accepting: the listener is closed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct StopServing;

/// The actor that accepts HTTP connections and answers each in its own task.
///
/// Supervision (`crate::supervision`): a panic in its handlers or its accept
/// loop restarts it, keeping the bound listener and the connections open; a
/// connection is a temporary child (a panic while answering closes it, is
/// logged, and nothing else stops). Past its budget it escalates to the Agent.
pub struct HttpFront {
    listener: Option<Rc<TcpListener>>,
    telemetry: Rc<Telemetry>,
    open: Rc<Cell<usize>>,
    failpoints: Failpoints,
    accepting: Option<SpawnHandle>,
}

impl Actor for HttpFront {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(listener) = self.listener.clone() else {
            return;
        };
        let (telemetry, open, failpoints) = (
            self.telemetry.clone(),
            self.open.clone(),
            self.failpoints.clone(),
        );
        let accept = accept_loop(listener, telemetry, open, failpoints);
        self.accepting = Some(ctx.spawn(accept.into_actor(self)));
    }
}

impl Supervised for HttpFront {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        tracing::warn!(listening = self.listener.is_some(), "HTTP front restarting");
    }
}

impl Handler<StopServing> for HttpFront {
    type Result = ();

    fn handle(&mut self, _: StopServing, ctx: &mut Context<Self>) {
        self.listener = None;
        if let Some(accepting) = self.accepting.take() {
            ctx.cancel_future(accepting);
            tracing::debug!("HTTP server stopped accepting");
        }
    }
}

/// Test-only: `Handler` panics here and now; `Completion` at the next
/// accepted connection; `Connection` in the next request answered.
impl Handler<InjectPanic> for HttpFront {
    type Result = ();

    fn handle(&mut self, InjectPanic(work): InjectPanic, _ctx: &mut Context<Self>) {
        self.failpoints.arm(work);
        self.failpoints.hit(Work::Handler);
    }
}

async fn accept_loop(
    listener: Rc<TcpListener>,
    telemetry: Rc<Telemetry>,
    open: Rc<Cell<usize>>,
    failpoints: Failpoints,
) {
    loop {
        let (tcp, peer) = crate::net::accept(&listener, "http").await;
        failpoints.hit(Work::Completion);
        if open.get() >= MAX_CONNECTIONS {
            tracing::debug!(%peer, "HTTP connection limit reached: closing new connection");
            continue;
        }
        open.set(open.get() + 1);
        let (open, telemetry, failpoints) = (open.clone(), telemetry.clone(), failpoints.clone());
        actix_rt::spawn(async move {
            let serve = async {
                failpoints.hit(Work::Connection);
                serve_connection(tcp, telemetry).await
            };
            // A temporary child: a panic closes this connection only.
            if let Err(panic) = AssertUnwindSafe(serve).catch_unwind().await {
                tracing::error!(%peer, panic = %panic_message(&*panic), "HTTP connection task panicked: connection closed");
            }
            open.set(open.get() - 1);
        });
    }
}

type Answer = hyper::Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    answer(status, TEXT, body.into())
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Answer {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn serve_connection(tcp: TcpStream, telemetry: Rc<Telemetry>) {
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let telemetry = telemetry.clone();
        async move { Ok::<_, std::convert::Infallible>(answer_request(&request, &telemetry).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(tcp), service);
    match tokio::time::timeout(READ_TIMEOUT + WRITE_TIMEOUT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection ended"),
        Err(_) => tracing::debug!("HTTP connection too slow: closed"),
    }
}

async fn answer_request(request: &hyper::Request<Incoming>, telemetry: &Telemetry) -> Answer {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    route(request.uri().path(), telemetry).await
}

async fn route(path: &str, telemetry: &Telemetry) -> Answer {
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match telemetry.check_ready().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => match telemetry.render_metrics().await {
            Some(body) => answer(StatusCode::OK, CONTENT_TYPE, body),
            None => text(
                StatusCode::NOT_FOUND,
                "metrics are disabled (--no-metrics)\n",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz\n",
        ),
    }
}
