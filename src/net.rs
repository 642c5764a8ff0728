//! Small networking helpers shared by the node's listeners (RPC, HTTP).

/// Accepts the next connection, or `None` once `stopped` changes. Accept
/// errors (out of file descriptors and the like) back off exponentially,
/// from 5 ms to 1 s, instead of spinning. `what` names the listener in logs.
pub(crate) async fn accept_or_stop(
    listener: &tokio::net::TcpListener,
    stopped: &mut tokio::sync::watch::Receiver<bool>,
    what: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    use std::time::Duration;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return None,
        };
        match accepted {
            Ok(a) => return Some(a),
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, listener = what, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
