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

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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

/// A running HTTP server. Stops accepting when stopped or dropped.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks one) and serves `telemetry` on the
    /// current actix System.
    pub async fn start(addr: SocketAddr, telemetry: Rc<Telemetry>) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        actix_rt::spawn(accept_loop(listener, telemetry, stopped));
        tracing::info!(%local_addr, "HTTP server (metrics, health) listening");
        Ok(HttpServer { local_addr, stop })
    }

    /// Where it listens (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections (requests in progress are answered).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    listener: TcpListener,
    telemetry: Rc<Telemetry>,
    mut stopped: watch::Receiver<bool>,
) {
    let open = Rc::new(Cell::new(0usize));
    while let Some((tcp, peer)) = crate::net::accept_or_stop(&listener, &mut stopped, "http").await
    {
        if open.get() >= MAX_CONNECTIONS {
            tracing::debug!(%peer, "HTTP connection limit reached: closing new connection");
            continue;
        }
        open.set(open.get() + 1);
        let (open, telemetry) = (open.clone(), telemetry.clone());
        actix_rt::spawn(async move {
            serve_connection(tcp, &telemetry).await;
            open.set(open.get() - 1);
        });
    }
    tracing::debug!("HTTP server stopped accepting");
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
