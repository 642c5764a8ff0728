//! TCP options of RPC sockets, the same on both ends (server and client):
//! no Nagle delay, keepalive, and a bounded connect.

/// How long an RPC socket may be silent before TCP probes the peer, the
/// gap between probes, and how many unanswered probes end it: a peer that
/// vanished without a reset (a killed container, a frozen host, a cut
/// link) is noticed in about 15 s instead of never (a follower waits
/// quietly for records, so nothing else would notice).
pub const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
pub const KEEPALIVE_PROBES: u32 = 5;

/// Sets what every RPC socket gets: no Nagle delay, and TCP keepalive.
pub fn tune_rpc_socket(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive)
}

/// How long a client waits for a TCP connection to be accepted: an address
/// that drops packets (a partitioned node) fails in seconds, not after the
/// kernel's two minutes of SYN retries.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to an RPC address within [`CONNECT_TIMEOUT`], tuned.
pub async fn dial(addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<tokio::net::TcpStream> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {CONNECT_TIMEOUT:?}"),
            )
        })??;
    tune_rpc_socket(&tcp)?;
    Ok(tcp)
}
