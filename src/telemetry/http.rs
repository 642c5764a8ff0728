//! A minimal HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`.
//!
//! Enough for Prometheus and kubelet probes, nothing more: `GET` (and
//! `HEAD`) only, one request per connection (`Connection: close`), a request
//! head of at most 8 KiB read within 5 s, at most 64 connections at once.
//! Runs as tasks on the actix System thread, next to the actors it reports on.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::supervision::{self, ChildSpec, Failpoints, InjectPanic, Parent, Work, panic_message};

use super::{CONTENT_TYPE, Telemetry};

/// Largest request head (request line and headers) accepted.
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
                serve_connection(tcp, &telemetry).await
            };
            // A temporary child: a panic closes this connection only.
            if let Err(panic) = AssertUnwindSafe(serve).catch_unwind().await {
                tracing::error!(%peer, panic = %panic_message(&*panic), "HTTP connection task panicked: connection closed");
            }
            open.set(open.get() - 1);
        });
    }
}

/// An answer.
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            reason,
            content_type: TEXT,
            body: body.into(),
            allow: false,
        }
    }
}

async fn serve_connection(mut tcp: TcpStream, telemetry: &Telemetry) {
    let (response, head_only) = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut tcp)).await
    {
        Err(_) => (
            Response::text(408, "Request Timeout", "request timeout\n"),
            false,
        ),
        Ok(Err(None)) => return, // closed before a request
        Ok(Err(Some(response))) => (response, false),
        Ok(Ok(head)) => match parse_request_line(&head) {
            Ok((method, path)) => (route(path, telemetry).await, method == "HEAD"),
            Err(response) => (response, false),
        },
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len()
    );
    if response.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    let write = async {
        tcp.write_all(out.as_bytes()).await?;
        tcp.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(error = %e, "HTTP response not delivered");
    }
}

/// Reads up to the blank line ending the head. `Err(None)`: the client
/// closed without a request; `Err(Some(..))`: the answer to a bad one.
async fn read_head(tcp: &mut TcpStream) -> Result<Vec<u8>, Option<Response>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(if head.is_empty() {
                None
            } else {
                Some(Response::text(400, "Bad Request", "incomplete request\n"))
            });
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head[searched_from..]) {
            head.truncate(searched_from + end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(Some(Response::text(
                431,
                "Request Header Fields Too Large",
                "request head too large\n",
            )));
        }
    }
}

/// Where the head's terminating blank line (`\r\n\r\n` or `\n\n`) ends.
fn head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|i| {
        let rest = &bytes[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// `GET /path?query HTTP/1.1` → (`GET`, `/path`).
fn parse_request_line(head: &[u8]) -> Result<(&str, &str), Response> {
    let bad = || Response::text(400, "Bad Request", "bad request\n");
    let line = head.split(|&b| b == b'\n').next().ok_or_else(bad)?;
    let line = std::str::from_utf8(line).map_err(|_| bad())?.trim_end();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Response::text(
            505,
            "HTTP Version Not Supported",
            "HTTP/1.x only\n",
        ));
    }
    if method != "GET" && method != "HEAD" {
        return Err(Response {
            allow: true,
            ..Response::text(405, "Method Not Allowed", "GET or HEAD only\n")
        });
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Ok((method, path))
}

async fn route(path: &str, telemetry: &Telemetry) -> Response {
    match path {
        "/healthz" => Response::text(200, "OK", "ok\n"),
        "/readyz" => match telemetry.check_ready().await {
            Ok(()) => Response::text(200, "OK", "ready\n"),
            Err(why) => Response::text(503, "Service Unavailable", format!("not ready: {why}\n")),
        },
        "/metrics" => match telemetry.render_metrics().await {
            Some(body) => Response {
                content_type: CONTENT_TYPE,
                ..Response::text(200, "OK", body)
            },
            None => Response::text(404, "Not Found", "metrics are disabled (--no-metrics)\n"),
        },
        _ => Response::text(
            404,
            "Not Found",
            "not found: try /metrics, /healthz, /readyz\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn request_lines_are_checked() {
        let ok = parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\n").map_err(|r| r.status);
        assert_eq!(ok, Ok(("GET", "/metrics")));
        let status = |line: &[u8]| parse_request_line(line).err().map(|r| r.status);
        assert_eq!(status(b"POST /metrics HTTP/1.1\r\n"), Some(405));
        assert_eq!(status(b"GET /metrics HTTP/2.0\r\n"), Some(505));
        assert_eq!(status(b"GET\r\n"), Some(400));
        assert_eq!(status(b"\xff\xfe /x HTTP/1.1\r\n"), Some(400));
    }
}
