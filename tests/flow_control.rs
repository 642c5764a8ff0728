//! A slow consumer is held back by `-> stream` flow control: the server does
//! not read ahead of it, so its memory stays bounded whatever the log size.

mod support;

use std::time::Duration;

use futures::StreamExt;
use proglog::client::Client;
use support::Server;

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn connect(server: &Server) -> Client {
    let ep = server.endpoint();
    match &ep.tls {
        Some(tls) => {
            let config = proglog::auth::tls::client_config(&tls.ca, &tls.cert, &tls.key).unwrap();
            Client::connect_tls(ep.addr, "localhost", config)
                .await
                .unwrap()
        }
        None => Client::connect(ep.addr).await.unwrap(),
    }
}

#[actix_rt::test]
async fn a_stalled_consumer_does_not_make_the_server_buffer_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = connect(&server).await;
    // 128 MiB of records.
    const BATCH: usize = 4096;
    const BATCHES: usize = 128;
    let values: Vec<Vec<u8>> = (0..BATCH).map(|i| vec![(i % 251) as u8; 256]).collect();
    for _ in 0..BATCHES {
        client.produce_batch(&values).await.unwrap();
    }
    let total = (BATCH * BATCHES) as u64;
    let before = rss_kib(server.child.id());

    let mut stream = client.consume_stream("", 0);
    assert_eq!(
        stream.next().await.unwrap().unwrap().offset,
        0,
        "the stream is flowing"
    );
    // The consumer now stops reading. Watch the server for a second: with
    // flow control it sends one window (4 MiB) and waits.
    let mut peak = before;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_kib(server.child.id()));
    }
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 48,
        "server RSS grew by {grown_mib} MiB for a stalled consumer of a 128 MiB log"
    );

    // Resuming delivers everything, in order.
    let mut next = 1;
    while next < total {
        let record = stream.next().await.unwrap().unwrap();
        assert_eq!(record.offset, next);
        next += 1;
    }
}
