//! The RPC front, in process: the book's server behaviours plus bad input.

use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt;
use proglog::client::{Client, ClientError};
use proglog::cluster::ClusterView;
use proglog::log::Partitions;
use proglog::rpc::{PlainAcceptor, RpcConfig, RpcServer, ServiceContext};
use proglog::storage::LogConfig;
use tokio::io::AsyncWriteExt;

struct Node {
    server: RpcServer,
    dir: tempfile::TempDir,
}

async fn start_node(rpc: RpcConfig) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_store_bytes: 4 << 20,
        ..LogConfig::default()
    };
    let partitions = Rc::new(Partitions::open(dir.path(), "node-t", config).unwrap());
    let ctx = Rc::new(ServiceContext {
        in_sync: Rc::new(proglog::replication::InSync::new(
            1,
            std::time::Duration::from_secs(5),
        )),
        partitions,
        in_flight: Default::default(),
        cluster: Rc::new(std::cell::RefCell::new(ClusterView::default())),
        authorizer: None,
        max_record_bytes: 1 << 20,
        max_stream_batch_bytes: 256 << 10,
    });
    let rpc = RpcConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..rpc
    };
    let server = RpcServer::start(rpc, ctx, PlainAcceptor).await.unwrap();
    Node { server, dir }
}

async fn connect(node: &Node) -> Client {
    Client::connect(node.server.local_addr()).await.unwrap()
}

#[actix_rt::test]
async fn produce_then_consume_returns_the_same_record() {
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    let produced = client.produce(b"hello world").await.unwrap();
    assert_eq!(produced.offset, 0);
    assert!(produced.partition.starts_with("node-t-"));
    assert_eq!(client.consume("", 0).await.unwrap().value, b"hello world");
    assert_eq!(
        client.consume(&produced.partition, 0).await.unwrap().value,
        b"hello world"
    );
}

#[actix_rt::test]
async fn consume_batch_returns_consecutive_records_up_to_its_limits() {
    use proglog::client::ClientError;
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    let values: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_be_bytes().to_vec()).collect();
    client.produce_batch(&values).await.unwrap();
    let got = client.consume_batch("", 10, 64, 0).await.unwrap();
    assert_eq!(got.len(), 64, "exactly maxRecords");
    for (i, r) in got.iter().enumerate() {
        assert_eq!((r.offset, &r.value), (10 + i as u64, &values[10 + i]));
    }
    // The last record, and one past the end (an empty answer, not an error).
    let last = client.consume_batch("", 99, 64, 0).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].offset, 99);
    assert!(
        client
            .consume_batch("", 100, 64, 0)
            .await
            .unwrap()
            .is_empty()
    );
    match client.consume_batch("", 101, 64, 0).await {
        Err(ClientError::OffsetOutOfRange { offset, next, .. }) => {
            assert_eq!((offset, next), (101, 100))
        }
        other => panic!("expected offsetOutOfRange, got {other:?}"),
    }
    // A byte limit smaller than one record still returns that record.
    let one = client.consume_batch("", 0, 0, 1).await.unwrap();
    assert_eq!(one.len(), 1);
    // No count limit: as many as fit the server's batch size.
    assert_eq!(client.consume_batch("", 0, 0, 0).await.unwrap().len(), 100);
    // The offset the server sent comes back with a single consume too.
    assert_eq!(client.consume("", 42).await.unwrap().offset, 42);
}

#[actix_rt::test]
async fn batch_and_stream_produce_give_consecutive_offsets_and_consume_stream_returns_them_in_order()
 {
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    let batch: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(client.produce_batch(&batch).await.unwrap().offsets, 0..100);
    let batches: Vec<Vec<Vec<u8>>> = (0..10u32)
        .map(|b| {
            (0..50u32)
                .map(|i| (100 + b * 50 + i).to_be_bytes().to_vec())
                .collect()
        })
        .collect();
    let outcomes = client.produce_stream(&batches).await.unwrap();
    assert_eq!(outcomes.len(), 10);
    for (b, outcome) in outcomes.into_iter().enumerate() {
        let start = 100 + b as u64 * 50;
        assert_eq!(outcome.unwrap().offsets, start..start + 50);
    }
    let mut stream = client.consume_stream("", 0);
    for expected in 0..600u32 {
        let record = stream.next().await.unwrap().unwrap();
        assert_eq!(record.offset, expected as u64);
        assert_eq!(record.value, expected.to_be_bytes());
    }
}

#[actix_rt::test]
async fn domain_errors_arrive_typed() {
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    client.produce(b"only").await.unwrap();
    match client.consume("", 1).await {
        Err(ClientError::OffsetOutOfRange {
            offset: 1,
            lowest: 0,
            next: 1,
        }) => {}
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    match client.consume("no-such-partition", 0).await {
        Err(ClientError::UnknownPartition(id)) => assert_eq!(id, "no-such-partition"),
        other => panic!("expected UnknownPartition, got {other:?}"),
    }
    match client.produce(&vec![0u8; (1 << 20) + 1]).await {
        Err(ClientError::RecordTooLarge { size, max }) => {
            assert_eq!((size, max), ((1 << 20) + 1, 1 << 20))
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    let mut stream = client.consume_stream("", 5);
    match stream.next().await {
        Some(Err(ClientError::OffsetOutOfRange { offset: 5, .. })) => {}
        other => panic!("expected the stream to end with OffsetOutOfRange, got {other:?}"),
    }
    assert_eq!(
        client.consume("", 0).await.unwrap().value,
        b"only",
        "the connection keeps serving"
    );
}

#[actix_rt::test]
async fn a_following_stream_receives_records_appended_after_it_started() {
    let node = start_node(RpcConfig::default()).await;
    let producer = connect(&node).await;
    let consumer = connect(&node).await;
    producer.produce(b"before").await.unwrap();
    let mut stream = consumer.consume_stream("", 0);
    assert_eq!(stream.next().await.unwrap().unwrap().value, b"before");
    for i in 0..20u8 {
        producer.produce(&[i]).await.unwrap();
        let record = stream.next().await.unwrap().unwrap();
        assert_eq!((record.offset, record.value), (1 + i as u64, vec![i]));
    }
}

/// CPU time of the current thread (server and client share it here).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    Duration::from_millis((f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) * 10)
}

#[actix_rt::test]
async fn an_idle_following_stream_uses_no_cpu() {
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    client.produce(b"x").await.unwrap();
    let mut streams: Vec<_> = (0..50).map(|_| client.consume_stream("", 0)).collect();
    for s in &mut streams {
        s.next().await.unwrap().unwrap();
    }
    let before = thread_cpu();
    let idle = futures::future::select_all(streams.iter_mut().map(|s| s.next()));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), idle)
            .await
            .is_err(),
        "nothing to deliver"
    );
    let used = thread_cpu() - before;
    assert!(
        used <= Duration::from_millis(50),
        "50 idle followers used {used:?} of CPU in 500 ms"
    );
    client.produce(b"y").await.unwrap();
    for s in &mut streams {
        assert_eq!(s.next().await.unwrap().unwrap().value, b"y");
    }
}

/// Polls `cond` until it holds (or panics after 10 s): for state the server
/// changes on its own, where no event is exposed to await.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn garbage_bytes_close_only_that_connection() {
    let node = start_node(RpcConfig::default()).await;
    let good = connect(&node).await;
    good.produce(b"kept").await.unwrap();
    let mut bad = tokio::net::TcpStream::connect(node.server.local_addr())
        .await
        .unwrap();
    bad.write_all(&[0xffu8; 64]).await.unwrap();
    // The server may say why (a capnp Abort message), then it hangs up.
    let mut said = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut bad, &mut said),
    )
    .await;
    assert!(closed.is_ok(), "the server hangs up on garbage");
    assert_eq!(
        good.consume("", 0).await.unwrap().value,
        b"kept",
        "other clients are unaffected"
    );
    eventually("the bad connection is released", || {
        node.server.open_connections() == 1
    })
    .await;
}

#[actix_rt::test]
async fn a_message_over_the_size_limit_closes_that_connection() {
    let node = start_node(RpcConfig {
        max_message_bytes: 64 << 10,
        ..RpcConfig::default()
    })
    .await;
    let big = connect(&node).await;
    let small = connect(&node).await;
    let err = big.produce(&vec![7u8; 200 << 10]).await.unwrap_err();
    assert!(matches!(err, ClientError::Rpc(_)), "{err:?}");
    assert_eq!(small.produce(b"fine").await.unwrap().offset, 0);
}

#[actix_rt::test]
async fn a_client_that_disconnects_mid_stream_frees_its_task() {
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    client.produce(b"a").await.unwrap();
    let mut stream = client.consume_stream("", 0);
    stream.next().await.unwrap().unwrap();
    assert_eq!(node.server.open_connections(), 1);
    drop(stream);
    drop(client);
    eventually("the connection task ends", || {
        node.server.open_connections() == 0
    })
    .await;
}

#[actix_rt::test]
async fn connections_over_the_limit_are_refused_and_the_others_keep_working() {
    let node = start_node(RpcConfig {
        max_connections: 2,
        ..RpcConfig::default()
    })
    .await;
    let a = connect(&node).await;
    let b = connect(&node).await;
    a.produce(b"a").await.unwrap();
    b.produce(b"b").await.unwrap();
    let c = connect(&node).await;
    assert!(
        matches!(c.produce(b"c").await, Err(ClientError::Rpc(_))),
        "the third connection is closed"
    );
    assert_eq!(a.consume("", 1).await.unwrap().value, b"b");
    drop(a);
    eventually("a slot frees up", || node.server.open_connections() == 1).await;
    let d = connect(&node).await;
    assert_eq!(d.produce(b"d").await.unwrap().offset, 2);
}

#[actix_rt::test]
async fn the_batching_producer_keeps_order_and_reports_offsets() {
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    let producer = client.producer(proglog::client::ProducerConfig {
        max_batch_records: 64,
        ..Default::default()
    });
    let futures: Vec<_> = (0..1000u32)
        .map(|i| producer.send(i.to_be_bytes().to_vec()))
        .collect();
    producer.flush().await;
    for (i, f) in futures.into_iter().enumerate() {
        assert_eq!(f.await.unwrap(), i as u64);
    }
    assert_eq!(
        client.consume("", 999).await.unwrap().value,
        999u32.to_be_bytes()
    );
    let partitions = client.partitions().await.unwrap();
    assert_eq!(partitions.len(), 1);
    assert_eq!(
        (
            partitions[0].lowest_offset,
            partitions[0].next_offset,
            partitions[0].is_leader
        ),
        (0, 1000, true)
    );
}

#[actix_rt::test]
async fn a_damaged_record_is_reported_as_corruption_and_never_served() {
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    for value in [b"first".as_slice(), b"second", b"third"] {
        client.produce(value).await.unwrap();
    }
    // Flip one byte of "second" in the store file (frames: 16-byte header + value,
    // after the 8-byte file header).
    let partitions = node.dir.path().join("partitions");
    let partition = std::fs::read_dir(&partitions)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let store = partition.join(format!("{:020}.store", 0));
    let at = 8 + (16 + 5) + 16 + 2;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"X", at as u64).unwrap();

    match client.consume("", 1).await {
        Err(ClientError::Corruption(message)) => assert!(message.contains("checksum"), "{message}"),
        other => panic!("expected Corruption, got {other:?}"),
    }
    assert_eq!(client.consume("", 0).await.unwrap().value, b"first");
    assert_eq!(client.consume("", 2).await.unwrap().value, b"third");
}
