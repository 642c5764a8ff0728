//! `proglog health`: asks a node's HTTP listener whether it is ready (or
//! live), for container health checks: a `FROM scratch` image has no shell,
//! curl or wget, so the check is the binary itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{BoxError, outln};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node's HTTP address (`--http-addr` of `serve`).
    #[arg(long, env = "PROGLOG_HTTP_ADDR", default_value = "127.0.0.1:8402")]
    http_addr: String,
    /// Ask `/healthz` (the process is alive) instead of `/readyz` (it
    /// serves: storage open, RPC listening, cluster joined).
    #[arg(long)]
    live: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
}

pub fn run(args: Args) -> Result<(), BoxError> {
    let path = if args.live { "/healthz" } else { "/readyz" };
    let timeout = Duration::from_secs(args.timeout.max(1));
    let addr = resolve(&args.http_addr)?;
    let (status, body) =
        get(addr, path, timeout).map_err(|e| format!("{path} on {}: {e}", args.http_addr))?;
    let body = body.trim();
    if status == 200 {
        outln!("{}", if body.is_empty() { "ok" } else { body });
        Ok(())
    } else {
        Err(format!("{path} on {}: HTTP {status}: {body}", args.http_addr).into())
    }
}

/// The first address `addr` names; `0.0.0.0` (a listener on every
/// interface) is asked on loopback.
fn resolve(addr: &str) -> Result<SocketAddr, BoxError> {
    let mut found = addr
        .to_socket_addrs()
        .map_err(|e| format!("bad --http-addr {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--http-addr {addr:?} names no address"))?;
    if found.ip().is_unspecified() {
        found.set_ip(match found {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(found)
}

/// One HTTP/1.1 GET; the status code and the body (at most 64 KiB read).
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(64 << 10).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}
