//! Small networking helpers shared by the node's listeners (RPC, HTTP).

/// Accepts the next connection. Accept errors (out of file descriptors and
/// the like) back off exponentially, from 5 ms to 1 s, instead of spinning.
/// `what` names the listener in logs. Stopping is the caller's: it drops
/// this future (the listener's actor cancels its accept loop).
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    use std::time::Duration;
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok(a) => return a,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, listener = what, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
