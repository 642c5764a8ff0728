//! The RPC front, in process: the book's server behaviours plus bad input.

use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt;
use proglog::client::{Client, ClientError, ClientOptions};
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
        max_replication_batch_bytes: 1 << 20,
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

/// capnp counts every read of a reply against a traversal limit (twice the
/// client's largest message): a batch read many times must still hold
/// every record, each time.
#[actix_rt::test]
async fn a_consumed_batch_reads_the_same_records_however_often_it_is_read() {
    let node = start_node(RpcConfig::default()).await;
    let tcp = tokio::net::TcpStream::connect(node.server.local_addr())
        .await
        .unwrap();
    let options = proglog::client::ClientOptions {
        max_message_bytes: 64 << 10,
        ..Default::default()
    };
    let client = Client::over(tcp, options);
    let values: Vec<Vec<u8>> = (0..64u32).map(|i| vec![i as u8; 900]).collect();
    client.produce_batch(&values).await.unwrap();
    let batch = client.consume_batch("", 0, 64, 0).await.unwrap();
    assert_eq!(batch.len(), 64);
    for _ in 0..20 {
        let read: Vec<(u64, &[u8])> = batch.iter().collect();
        assert_eq!(read.len(), 64);
        for (i, (offset, value)) in read.into_iter().enumerate() {
            assert_eq!((offset, value), (i as u64, &values[i][..]));
        }
    }
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
    for (i, (offset, value)) in got.iter().enumerate() {
        assert_eq!((offset, value), (10 + i as u64, &values[10 + i][..]));
    }
    // Read in place from the reply, or copied out: the same records.
    assert_eq!(got.iter().count(), 64);
    assert_eq!(
        (got.first_offset(), got.next_offset()),
        (Some(10), Some(74))
    );
    assert_eq!(got.get(63), Some((73, &values[73][..])));
    assert_eq!(got.get(64), None);
    let copied = got.to_records();
    assert_eq!(copied.len(), 64);
    assert_eq!((copied[5].offset, &copied[5].value), (15, &values[15]));
    // The last record, and one past the end (an empty answer, not an error).
    let last = client.consume_batch("", 99, 64, 0).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(
        (last.first_offset(), last.next_offset()),
        (Some(99), Some(100))
    );
    let past = client.consume_batch("", 100, 64, 0).await.unwrap();
    assert!(past.is_empty());
    assert_eq!((past.first_offset(), past.next_offset()), (None, None));
    assert_eq!(past.iter().count(), 0);
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

/// A replica pulls batches of up to the node's replication limit (1 MiB
/// here), four times consumeStream's: full to the frame, never over.
#[actix_rt::test]
async fn replication_batches_fill_up_to_their_own_limit_and_never_past_it() {
    use proglog::storage::frame::FRAME_HEADER_LEN;
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    let value_bytes = 1000;
    let frame_bytes = FRAME_HEADER_LEN + value_bytes;
    let records = 3000u64;
    let values: Vec<Vec<u8>> = (0..records).map(|i| vec![i as u8; value_bytes]).collect();
    for chunk in values.chunks(500) {
        client.produce_batch(chunk).await.unwrap();
    }
    let partition = client.produce(b"last").await.unwrap().partition;
    let limit = 1 << 20;
    let mut stream = client.replicate(&partition, 0);
    let mut next = 0;
    while next < records {
        let batch = stream.next_batch().await.unwrap().unwrap();
        assert_eq!(batch.first, next);
        assert!(
            batch.frames.len() <= limit,
            "{} bytes over the limit",
            batch.frames.len()
        );
        let in_batch = (batch.frames.len() / frame_bytes) as u64;
        if next + in_batch < records {
            assert!(
                batch.frames.len() + frame_bytes > limit,
                "a batch of {} bytes had room for one more frame",
                batch.frames.len()
            );
        }
        next += in_batch;
    }
    assert_eq!(next, records);
}

#[actix_rt::test]
async fn a_batch_larger_than_a_segment_reads_back_record_for_record_across_its_rolls() {
    // Segments of 4 MiB; the batch holds about 4.8 MB, empty values among
    // them, so the node splits it at the rolls (the values' split path).
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    let batch: Vec<Vec<u8>> = (0..72u32)
        .map(|i| match i % 3 {
            0 => Vec::new(),
            1 => vec![i as u8],
            _ => vec![i as u8; 200_000],
        })
        .collect();
    assert_eq!(client.produce_batch(&batch).await.unwrap().offsets, 0..72);
    for (i, value) in batch.iter().enumerate() {
        let record = client.consume("", i as u64).await.unwrap();
        assert_eq!((record.offset, &record.value), (i as u64, value));
    }
    let stores = walk(node.dir.path())
        .filter(|p| p.extension().is_some_and(|e| e == "store"))
        .count();
    assert!(
        stores >= 2,
        "the batch did not cross a roll ({stores} store files)"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> impl Iterator<Item = std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.into_iter()
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

#[actix_rt::test]
async fn after_a_burst_of_calls_the_nodes_poller_stops_and_the_thread_sleeps() {
    a_burst_then_quiet(Duration::from_micros(1000), Duration::ZERO).await;
}

#[actix_rt::test]
async fn after_a_burst_of_calls_the_clients_poller_stops_and_the_thread_sleeps() {
    a_burst_then_quiet(Duration::ZERO, Duration::from_micros(1000)).await;
}

/// One call at a time, 500 of them: each answered soon after it was sent,
/// so the side that polls keeps a polling window open after each (1 ms
/// allowed). Then the thread (node and client share it) must go quiet.
async fn a_burst_then_quiet(node_poll: Duration, client_poll: Duration) {
    let node = start_node(RpcConfig {
        busy_poll: node_poll,
        ..RpcConfig::default()
    })
    .await;
    let options = ClientOptions {
        busy_poll: client_poll,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(node.server.local_addr(), None, options)
        .await
        .unwrap();
    for i in 0..500u64 {
        assert_eq!(client.produce(b"x").await.unwrap().offset, i);
    }
    let before = thread_cpu();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let used = thread_cpu() - before;
    assert!(
        used <= Duration::from_millis(50),
        "the thread used {used:?} of CPU in the 500 ms after the last call"
    );
    assert_eq!(client.produce(b"y").await.unwrap().offset, 500);
}

/// Polls `cond` until it holds (or panics after 10 s): for state the server
/// changes on its own, where no event is exposed to await.
async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

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

/// Whether the server closes `tcp` within 10 s (it may say why first: a
/// capnp Abort message).
/// A bare TCP connection to the node, for tests that speak bytes, not calls.
async fn raw_connect(node: &Node) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(node.server.local_addr())
        .await
        .unwrap()
}

async fn hangs_up(tcp: &mut tokio::net::TcpStream) -> bool {
    let mut said = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(tcp, &mut said),
    )
    .await
    .is_ok()
}

#[actix_rt::test]
async fn garbage_bytes_close_only_that_connection() {
    let node = start_node(RpcConfig::default()).await;
    let good = connect(&node).await;
    good.produce(b"kept").await.unwrap();
    let mut bad = raw_connect(&node).await;
    bad.write_all(&[0xffu8; 64]).await.unwrap();
    assert!(hangs_up(&mut bad).await, "the server hangs up on garbage");
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

/// With room for two connections (of all, or of one identity): a third is
/// closed, the two keep working, and a slot frees when one goes.
async fn two_connections_fit_and_a_third_is_closed(rpc: RpcConfig) {
    let node = start_node(rpc).await;
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
async fn connections_over_the_limit_are_refused_and_the_others_keep_working() {
    two_connections_fit_and_a_third_is_closed(RpcConfig {
        max_connections: 2,
        ..RpcConfig::default()
    })
    .await;
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

// ---- Hardening: what a hostile or careless client can make the server hold.

/// This process's resident memory, bytes (the server runs in it).
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A raw Cap'n Proto RPC peer: hand-made frames on a plain socket.
mod raw {
    use capnp::message::{Builder, HeapAllocator, ReaderOptions};
    use capnp::traits::HasTypeId;
    use capnp_rpc::rpc_capnp::message;
    use proglog::wire::schema::log;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub fn frame(msg: &Builder<HeapAllocator>) -> Vec<u8> {
        capnp::serialize::write_message_to_words(msg)
    }

    /// The body size (segments) of `msg`.
    pub fn body_bytes(msg: &Builder<HeapAllocator>) -> usize {
        frame(msg).len() - 8 * (msg.get_segments_for_output().len() / 2 + 1)
    }

    pub fn bootstrap() -> Builder<HeapAllocator> {
        let mut msg = Builder::new_default();
        msg.init_root::<message::Builder>()
            .init_bootstrap()
            .set_question_id(0);
        msg
    }

    /// Question 1: produceBatch of one value of `value_bytes` on the
    /// bootstrap capability, in one segment.
    pub fn produce_batch(value_bytes: usize) -> Builder<HeapAllocator> {
        let words = value_bytes / 8 + 64;
        let mut msg = Builder::new(HeapAllocator::new().first_segment_words(words as u32));
        let mut call = msg.init_root::<message::Builder>().init_call();
        call.set_question_id(1);
        call.set_interface_id(log::Client::TYPE_ID);
        call.set_method_id(1);
        call.reborrow()
            .init_target()
            .init_promised_answer()
            .set_question_id(0);
        let mut payload = call.init_params();
        let mut params = payload
            .reborrow()
            .get_content()
            .init_as::<log::produce_batch_params::Builder>();
        params
            .reborrow()
            .init_values(1)
            .set(0, &vec![7u8; value_bytes]);
        payload.init_cap_table(0);
        assert_eq!(msg.get_segments_for_output().len(), 1);
        msg
    }

    /// A produceBatch call whose body is exactly `body` bytes.
    pub fn produce_batch_of_size(body: usize) -> Builder<HeapAllocator> {
        let overhead = body_bytes(&produce_batch(0));
        let msg = produce_batch(body - overhead);
        assert_eq!(body_bytes(&msg), body);
        msg
    }

    /// Reads frames until the connection ends; returns the question ids of
    /// the `return`s that carried results (not exceptions).
    pub async fn answered(tcp: &mut TcpStream) -> Vec<u32> {
        let mut answered = Vec::new();
        loop {
            let mut count = [0u8; 4];
            if tcp.read_exact(&mut count).await.is_err() {
                return answered;
            }
            let segments = u32::from_le_bytes(count) as usize + 1;
            let mut table = vec![0u8; (segments / 2 + 1) * 8 - 4];
            tcp.read_exact(&mut table).await.unwrap();
            let words: usize = (0..segments)
                .map(|i| u32::from_le_bytes(table[4 * i..4 * i + 4].try_into().unwrap()) as usize)
                .sum();
            let mut body = vec![0u8; words * 8];
            tcp.read_exact(&mut body).await.unwrap();
            let mut bytes = count.to_vec();
            bytes.extend(table);
            bytes.extend(body);
            let reader = capnp::serialize::read_message(&bytes[..], ReaderOptions::new()).unwrap();
            let m = reader.get_root::<message::Reader>().unwrap();
            if let Ok(message::Which::Return(r)) = m.which() {
                let r = r.unwrap();
                if let Ok(capnp_rpc::rpc_capnp::return_::Which::Results(_)) = r.which() {
                    answered.push(r.get_answer_id());
                    if r.get_answer_id() == 1 {
                        // Seen what the test waits for: hang up.
                        tcp.shutdown().await.unwrap();
                    }
                }
            }
        }
    }

    pub async fn send(tcp: &mut TcpStream, msg: &Builder<HeapAllocator>) {
        tcp.write_all(&frame(msg)).await.unwrap();
    }
}

#[actix_rt::test]
async fn a_message_exactly_at_the_size_limit_is_served_and_one_word_more_closes_the_connection() {
    let limit = 256 << 10;
    let node = start_node(RpcConfig {
        max_message_bytes: limit,
        ..RpcConfig::default()
    })
    .await;
    let mut at = raw_connect(&node).await;
    raw::send(&mut at, &raw::bootstrap()).await;
    raw::send(&mut at, &raw::produce_batch_of_size(limit)).await;
    assert!(
        raw::answered(&mut at).await.contains(&1),
        "a message of exactly max-message-bytes is served"
    );
    let mut over = raw_connect(&node).await;
    raw::send(&mut over, &raw::bootstrap()).await;
    raw::send(&mut over, &raw::produce_batch_of_size(limit + 8)).await;
    assert!(
        !raw::answered(&mut over).await.contains(&1),
        "one word more closes the connection unanswered"
    );
    let client = connect(&node).await;
    let record = client.consume("", 0).await.unwrap();
    assert!(record.value.len() > limit - 1024 && record.value.iter().all(|&b| b == 7));
    assert!(
        matches!(
            client.consume("", 1).await,
            Err(ClientError::OffsetOutOfRange { .. })
        ),
        "the message over the limit appended nothing"
    );
}

/// A frame header claiming a one-segment message of `bytes`.
fn header_claiming(bytes: usize) -> Vec<u8> {
    let mut h = 0u32.to_le_bytes().to_vec();
    h.extend_from_slice(&((bytes / 8) as u32).to_le_bytes());
    h
}

#[actix_rt::test]
async fn headers_claiming_large_messages_cost_the_server_nothing_until_the_bytes_arrive() {
    let node = start_node(RpcConfig::default()).await;
    let before = rss_bytes();
    let mut hostile = Vec::new();
    for _ in 0..50 {
        let mut tcp = raw_connect(&node).await;
        tcp.write_all(&header_claiming(64 << 20)).await.unwrap();
        hostile.push(tcp);
    }
    eventually("all 50 are served", || node.server.open_connections() == 50).await;
    // Every header has been read (a real call gets through after them).
    let client = connect(&node).await;
    client.produce(b"still serving").await.unwrap();
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "50 headers claiming 64 MiB each grew the server by {} MiB",
        grown >> 20
    );
    assert_eq!(node.server.inflight_bytes(), 0);
}

#[actix_rt::test]
async fn past_the_inflight_budget_the_server_stops_reading_and_resumes_when_bytes_are_done() {
    let node = start_node(RpcConfig {
        max_inflight_bytes: 1 << 20,
        max_message_bytes: 16 << 20,
        handshake_timeout: Duration::from_millis(300),
        ..RpcConfig::default()
    })
    .await;
    // Four senders of a 2 MiB message each, all but the last word.
    let mut senders = Vec::new();
    for _ in 0..4 {
        let mut tcp = raw_connect(&node).await;
        tcp.write_all(&header_claiming(2 << 20)).await.unwrap();
        senders.push(tokio::task::spawn_local(async move {
            let body = vec![0u8; (2 << 20) - 8];
            // Blocks once the server stops reading (its buffers are full).
            let _ = tcp.write_all(&body).await;
            tcp
        }));
    }
    // The server holds what it read; it read until the budget was spent,
    // plus at most one read of 64 KiB per connection past it.
    eventually("the budget is spent", || {
        node.server.inflight_bytes() >= 1 << 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = node.server.inflight_bytes();
    assert!(
        held <= (1 << 20) + 4 * (128 << 10),
        "held {held} bytes against a budget of 1 MiB"
    );
    // Closing the senders gives their bytes back, once the server sees the
    // closes: it reads no socket meanwhile, so at the first-message
    // deadline (0.3 s: no whole message came first); then reading resumes.
    for s in senders {
        s.abort();
    }
    eventually("the senders' bytes are given back", || {
        node.server.inflight_bytes() == 0
    })
    .await;
    let client = connect(&node).await;
    assert_eq!(client.produce(b"after").await.unwrap().offset, 0);
}

#[actix_rt::test]
async fn a_connection_without_a_whole_message_in_time_is_closed() {
    let node = start_node(RpcConfig {
        handshake_timeout: Duration::from_millis(300),
        ..RpcConfig::default()
    })
    .await;
    let mut slow = raw_connect(&node).await;
    slow.write_all(&[1, 2, 3]).await.unwrap();
    assert!(
        hangs_up(&mut slow).await,
        "3 garbage bytes are not waited on forever"
    );
}

#[actix_rt::test]
async fn an_idle_connection_is_closed_and_a_following_consumer_is_not() {
    let node = start_node(RpcConfig {
        idle_timeout: Duration::from_millis(300),
        // Far longer than the wait below: the idle timeout, not the first
        // message's deadline, must be what closes it.
        handshake_timeout: Duration::from_secs(60),
        ..RpcConfig::default()
    })
    .await;
    let idle = connect(&node).await;
    idle.produce(b"a").await.unwrap();
    let follower = connect(&node).await;
    let mut stream = follower.consume_stream("", 0);
    assert_eq!(stream.next().await.unwrap().unwrap().value, b"a");
    eventually("the idle connection is closed", || {
        node.server.open_connections() == 1
    })
    .await;
    assert!(idle.produce(b"b").await.is_err());
    // Well past the idle timeout, the follower still gets new records.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let producer = connect(&node).await;
    producer.produce(b"c").await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().value, b"c");
}

#[actix_rt::test]
async fn one_identity_cannot_take_every_connection_slot() {
    // Every plaintext client is `anonymous`.
    two_connections_fit_and_a_third_is_closed(RpcConfig {
        max_connections_per_identity: 2,
        ..RpcConfig::default()
    })
    .await;
}

#[actix_rt::test]
async fn a_connection_holds_at_most_its_limit_of_streams() {
    use proglog::wire::MAX_STREAMS_PER_CONNECTION;
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    client.produce(b"a").await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..MAX_STREAMS_PER_CONNECTION {
        let mut s = client.consume_stream("", 0);
        s.next().await.unwrap().unwrap();
        streams.push(s);
    }
    let mut one_more = client.consume_stream("", 0);
    assert!(
        matches!(one_more.next().await, Some(Err(ClientError::Overloaded(_)))),
        "stream {} is refused, typed",
        MAX_STREAMS_PER_CONNECTION + 1
    );
    streams.pop();
    eventually_async("a stream slot frees up", || async {
        let mut s = client.consume_stream("", 0);
        matches!(s.next().await, Some(Ok(_)))
    })
    .await;
}

#[actix_rt::test]
async fn a_produce_stream_carries_its_limit_of_writes_and_the_client_opens_the_next() {
    use proglog::wire::MAX_WRITES_PER_PRODUCE_STREAM;
    let node = start_node(RpcConfig::default()).await;
    let client = connect(&node).await;
    let batches: Vec<Vec<Vec<u8>>> = (0..MAX_WRITES_PER_PRODUCE_STREAM + 10)
        .map(|i| vec![i.to_string().into_bytes()])
        .collect();
    let outcomes = client.produce_stream(&batches).await.unwrap();
    assert_eq!(outcomes.len(), batches.len());
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(o.as_ref().unwrap().offsets.start, i as u64);
    }
}

#[actix_rt::test]
async fn a_sender_stalled_inside_a_large_message_is_closed_and_its_budget_given_back() {
    let node = start_node(RpcConfig {
        handshake_timeout: Duration::from_millis(300),
        ..RpcConfig::default()
    })
    .await;
    let mut tcp = raw_connect(&node).await;
    // A whole first message, so only the large message's deadline can apply.
    raw::send(&mut tcp, &raw::bootstrap()).await;
    // 1 MiB claimed, half of it sent, then nothing: allowed 0.3 s + 1 s.
    tcp.write_all(&header_claiming(1 << 20)).await.unwrap();
    tcp.write_all(&vec![0u8; 512 << 10]).await.unwrap();
    eventually("the stalled half is held", || {
        node.server.inflight_bytes() > 0
    })
    .await;
    assert!(hangs_up(&mut tcp).await, "the stalled sender is closed");
    eventually("its budget is given back", || {
        node.server.inflight_bytes() == 0
    })
    .await;
}

#[actix_rt::test]
async fn pipelined_produce_calls_are_held_to_the_inflight_budget() {
    let budget = 1 << 20;
    let node = Rc::new(
        start_node(RpcConfig {
            max_inflight_bytes: budget,
            ..RpcConfig::default()
        })
        .await,
    );
    let client = connect(&node).await;
    let value = vec![7u8; 32 << 10];
    // 96 MiB of produce calls sent at once; appends wait in the partition's
    // mailbox while they are served: the budget bounds them (the client's
    // own copies live in this process too, so its RSS says nothing here).
    let most = Rc::new(std::cell::Cell::new(0usize));
    let watch = {
        let (node, most) = (node.clone(), most.clone());
        tokio::task::spawn_local(async move {
            loop {
                most.set(most.get().max(node.server.inflight_bytes()));
                tokio::task::yield_now().await;
            }
        })
    };
    let calls = (0..3_000).map(|_| client.produce(&value));
    let outcomes = futures::future::join_all(calls).await;
    watch.abort();
    assert!(
        outcomes.iter().all(Result::is_ok),
        "backpressure fails no call"
    );
    assert!(
        most.get() <= budget + (512 << 10),
        "{} bytes in flight against a budget of {budget}",
        most.get()
    );
    assert_eq!(node.server.inflight_bytes(), 0, "every charge given back");
}

#[actix_rt::test]
async fn a_replica_that_stops_reading_its_replication_stream_is_closed_and_its_budget_given_back() {
    let node = start_node(RpcConfig {
        handshake_timeout: Duration::from_millis(300),
        ..RpcConfig::default()
    })
    .await;
    let client = connect(&node).await;
    // 8 MiB: more than the sockets' buffers hold between the two ends.
    let batch: Vec<Vec<u8>> = (0..1024).map(|_| vec![7u8; 1024]).collect();
    let mut own = String::new();
    for _ in 0..8 {
        own = client.produce_batch(&batch).await.unwrap().partition;
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(node.server.local_addr()).await.unwrap();
    let request = proglog::wire::frame_stream::PullRequest {
        partition: own,
        node: "replica".into(),
        from: 0,
        max_batch_bytes: 0,
    };
    tcp.write_all(&request.encode().unwrap()).await.unwrap();
    // The replica reads nothing: a batch waits to leave, its bytes held...
    eventually("a batch is held for the replica", || {
        node.server.inflight_bytes() > 0
    })
    .await;
    // ... until the node gives up on it (0.3 s, plus a second per MiB).
    eventually("its budget is given back", || {
        node.server.inflight_bytes() == 0
    })
    .await;
    let mut received = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut received);
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the node closed the stream")
        .unwrap();
    assert!(
        received.len() < 8 << 20,
        "{} bytes: the whole partition was sent",
        received.len()
    );
    // The node serves on.
    assert_eq!(client.consume("", 0).await.unwrap().value, vec![7u8; 1024]);
}
