//! A slow consumer is held back by `-> stream` flow control: the server does
//! not read ahead of it, so its memory stays bounded whatever the log size.
//! A client that pipelines reads and never reads the answers cannot make
//! the server hold more than its connection's outbox, and is closed.

mod support;

use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use proglog::client::Client;
use support::Server;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// How far above `before` (KiB) the server's RSS peaks over `watch`,
/// sampled every 100 ms, in MiB.
async fn peak_growth_mib(server: &Server, before: u64, watch: Duration) -> u64 {
    let mut peak = before;
    for _ in 0..watch.as_millis() / 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_kib(server.child.id()));
    }
    peak.saturating_sub(before) / 1024
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

/// A stream whose reads never complete: its client sends calls and never
/// reads an answer.
struct NeverRead<S>(S);

impl<S: Unpin> AsyncRead for NeverRead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NeverRead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A client on a connection that never reads (after the TLS handshake, if any).
async fn connect_never_reading(server: &Server) -> Client {
    let ep = server.endpoint();
    let tcp = tokio::net::TcpStream::connect(ep.addr).await.unwrap();
    match &ep.tls {
        Some(tls) => {
            let config = proglog::auth::tls::client_config(&tls.ca, &tls.cert, &tls.key).unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .unwrap();
            Client::over(NeverRead(stream), Default::default())
        }
        None => Client::over(NeverRead(tcp), Default::default()),
    }
}

/// Writes `batches` batches of 64 records of 4,000 bytes (64 fit in one
/// 256 KiB answer); each value is its offset's bytes, repeated.
async fn fill(client: &Client, batches: u64) {
    for b in 0..batches {
        let values: Vec<Vec<u8>> = (0..64).map(|i| value_of(b * 64 + i)).collect();
        client.produce_batch(&values).await.unwrap();
    }
}

fn value_of(offset: u64) -> Vec<u8> {
    offset.to_le_bytes().repeat(500)
}

/// The node's open RPC connections, from its metrics.
async fn open_connections(server: &Server) -> f64 {
    let page = support::http_get_async(server.http, "/metrics")
        .await
        .unwrap();
    page.body
        .lines()
        .find_map(|l| l.strip_prefix("proglog_rpc_open_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
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
    let grown_mib = peak_growth_mib(&server, before, Duration::from_secs(1)).await;
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

/// `n` reads of up to 64 records from offset 0, pipelined on `client`.
fn pipeline_reads(client: &std::rc::Rc<Client>, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::task::spawn_local(async move {
                let _ = client.consume_batch("", 0, 64, 0).await;
            })
        })
        .collect()
}

/// Waits (at most 40 s) until the node has closed every connection but
/// the test's own client.
async fn await_closed(server: &Server) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while open_connections(server).await > 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection that reads nothing was never closed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// 4,000 pipelined reads of 256 KiB each (about 1 GB of answers, for about
/// 400 KB of requests) and 64 consume streams from a client that never
/// reads: before the outbox, the node held 1.2 GB for the reads and
/// 438 MiB for the streams (a 4 MiB window each). Now it holds the
/// connection's outbox (4 MiB) and closes the connection once its answers
/// have not moved for the first-message allowance (10 s, checked every
/// 10 s); other clients are served meanwhile, and the memory is given back.
#[actix_rt::test]
async fn a_client_that_never_reads_its_answers_holds_one_outbox_and_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = connect(&server).await;
    fill(&client, 16).await;
    let before = rss_kib(server.child.id());

    let hostile = std::rc::Rc::new(connect_never_reading(&server).await);
    let calls = pipeline_reads(&hostile, 4000);
    let streams: Vec<_> = (0..64).map(|_| hostile.consume_stream("", 0)).collect();
    let grown_mib = peak_growth_mib(&server, before, Duration::from_secs(2)).await;
    assert!(
        grown_mib < 64,
        "server RSS grew by {grown_mib} MiB for a client that reads none of its answers"
    );
    // Others are served meanwhile.
    let records = client.consume_batch("", 64, 64, 0).await.unwrap();
    assert_eq!(records.len(), 64);
    assert_eq!(records.get(0), Some((64, &value_of(64)[..])));

    await_closed(&server).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // What it held is given back (the node purges a second after a close).
    while rss_kib(server.child.id()) > before + (16 << 10) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection's memory was not given back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop((calls, streams));
}

/// Calls waiting for room in their connection's outbox are charged to the
/// node's budget (4 KiB each): 40,000 pipelined reads (about 4 MB sent)
/// from a client that reads nothing stop the node's reads once a 16 MiB
/// budget is spent, instead of growing the node by 150 MiB of waiting
/// calls; the connection is closed and the memory given back.
#[actix_rt::test]
async fn pipelined_calls_that_wait_cost_the_node_no_more_than_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let options = support::ServeOptions {
        extra_args: vec!["--max-inflight-bytes".into(), (16 << 20).to_string()],
        ..Default::default()
    };
    let server = Server::start_with(dir.path(), &options);
    let client = connect(&server).await;
    fill(&client, 16).await;
    let before = rss_kib(server.child.id());

    let hostile = std::rc::Rc::new(connect_never_reading(&server).await);
    let calls = pipeline_reads(&hostile, 40_000);
    let grown_mib = peak_growth_mib(&server, before, Duration::from_secs(3)).await;
    assert!(
        grown_mib < 40,
        "server RSS grew by {grown_mib} MiB for 40,000 waiting calls under a 16 MiB budget"
    );
    await_closed(&server).await;
    drop(calls);
}

/// A client that does read its answers gets every one of many pipelined
/// reads, in full, although they wait for room in its connection's outbox
/// (2,000 answers of 256 KiB, 500 MB, against an outbox of 4 MiB).
#[actix_rt::test]
async fn pipelined_reads_past_the_outbox_are_all_answered_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = connect(&server).await;
    fill(&client, 32).await;
    let reads = (0..2000u64).map(|i| {
        let from = (i * 7) % (32 * 64 - 64);
        let client = &client;
        async move { (from, client.consume_batch("", from, 64, 0).await.unwrap()) }
    });
    let answers = futures::future::join_all(reads).await;
    for (from, records) in answers {
        assert_eq!(records.len(), 64);
        for (i, (offset, value)) in records.iter().enumerate() {
            assert_eq!(offset, from + i as u64);
            assert_eq!(value, value_of(from + i as u64));
        }
    }
}
