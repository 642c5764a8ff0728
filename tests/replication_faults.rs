//! A replicator fed a bad stream by a test double of the leader: a frame
//! at an unexpected offset, or whose bytes do not match its CRC-32C, halts
//! that replication (reported) and is never written, nor is anything of the
//! batch that carried it.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp::capability::Rc as CapRc;
use capnp_rpc::RpcSystem;
use capnp_rpc::rpc_twoparty_capnp::Side;
use proglog::log::{Partitions, Stats};
use proglog::replication::{Connector, GetStatus, ReplicatorActor, ReplicatorSetup};
use proglog::storage::LogConfig;
use proglog::storage::frame::FrameHeader;
use proglog::supervision::{self, ChildSpec};
use proglog::wire::frame_stream;
use proglog::wire::framed::ReceiveLimits;
use proglog::wire::prefixed::Prefixed;
use proglog::wire::schema::log;
use proglog::wire::transport::{WriteGathering, vat_network};
use tokio::io::AsyncReadExt;

/// What the fake leader sends after two good records.
#[derive(Clone, Copy)]
enum Fault {
    /// The third record claims offset 7 instead of 2.
    SkippedOffset,
    /// The third record's bytes do not match its checksum.
    BadChecksum,
}

/// How the fake leader behaves.
#[derive(Clone, Copy)]
enum Script {
    /// Records 0, 1 and a bad third, its end 3: the replica is near its
    /// leader's end, and pulls over a `replicate` call on its node's thread.
    Near(Fault),
    /// Records 0 and 1 over `replicate`, its end far ahead: the replica
    /// moves its network side to the replication thread and pulls over a
    /// replication stream, which is served with `stream` (records 2 and 3,
    /// the first bad when there is a fault, and its end 4), or refused at
    /// its first bytes as a node that predates them does (`None`): then
    /// `replicate` serves them. Near its end again, the replica pulls over
    /// `replicate`: records 4 and 5, its end 6.
    Far { stream: Option<Option<Fault>> },
}

/// A leader's end far ahead of the replica.
const FAR_END: u64 = 1_000_000;

/// `count` frames from offset `from`, the first with `fault` if any.
fn frames(from: u64, count: u64, fault: Option<Fault>) -> Vec<u8> {
    let mut frames = Vec::new();
    for offset in from..from + count {
        let value = format!("record-{offset}").into_bytes();
        let claimed = match fault {
            Some(Fault::SkippedOffset) if offset == from => 7,
            _ => offset,
        };
        let mut header = FrameHeader::new(claimed, &value);
        if let (Some(Fault::BadChecksum), true) = (fault, offset == from) {
            header.crc ^= 1;
        }
        frames.extend_from_slice(&header.encode());
        frames.extend_from_slice(&value);
    }
    frames
}

struct FakeLeader {
    script: Script,
}

impl log::Server for FakeLeader {
    async fn replicate(
        self: CapRc<Self>,
        params: log::ReplicateParams,
        _results: log::ReplicateResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let (sink, from) = (params.get_sink()?, params.get_offset());
        let (first, frames, end) = match self.script {
            Script::Near(fault) => {
                let mut all = frames(0, 2, None);
                all.extend_from_slice(&frames(2, 1, Some(fault)));
                (0, all, 3)
            }
            // Far behind at first; then at the end of what it sends.
            Script::Far { .. } if from == 0 => (from, frames(from, 2, None), FAR_END),
            Script::Far { .. } => (from, frames(from, 2, None), from + 2),
        };
        let mut request = sink.write_request();
        {
            let mut p = request.get();
            p.set_first(first);
            p.set_frames(&frames);
            p.set_committed_end(end);
        }
        let _ = request.send().await;
        // Then stay open, as a leader at its end would.
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// The fake leader's end of a replication stream: two records from where
/// the replica asks, the first with `fault` if any; then it stays open.
async fn serve_stream(mut tcp: tokio::net::TcpStream, fault: Option<Fault>) {
    let request = frame_stream::PullRequest::read(&mut tcp).await.unwrap();
    let batch = frames(request.from, 2, fault);
    let end = request.from + 2;
    frame_stream::write_batch(&mut tcp, request.from, end, &batch)
        .await
        .unwrap();
    // Then it takes the replica's positions, as a leader does.
    let mut position = [0u8; 8];
    while tcp.read_exact(&mut position).await.is_ok() {
        REPORTED.set(u64::from_le_bytes(position));
    }
}

thread_local! {
    /// The last position a replica reported over its stream (each test
    /// runs its fake leader on its own thread).
    static REPORTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Serves one fake leader on a free port.
async fn fake_leader(script: Script) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::task::spawn_local(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let serve_capnp = move |tcp: Box<dyn Stream>| {
                let network = vat_network(
                    tcp,
                    WriteGathering::Buffered,
                    Side::Server,
                    ReceiveLimits::new(1 << 20),
                    1 << 20,
                    None,
                    None,
                );
                let client: log::Client = capnp_rpc::new_client(FakeLeader { script });
                tokio::task::spawn_local(RpcSystem::new(Box::new(network), Some(client.client)));
            };
            let Script::Far {
                stream: Some(fault),
            } = script
            else {
                // A node without replication streams: its Cap'n Proto
                // framing refuses their first bytes (an Abort, then it
                // closes).
                serve_capnp(Box::new(tcp));
                continue;
            };
            tokio::task::spawn_local(async move {
                let mut first = [0u8; 8];
                tcp.read_exact(&mut first).await.unwrap();
                if first == frame_stream::MAGIC {
                    serve_stream(tcp, fault).await;
                } else {
                    serve_capnp(Box::new(Prefixed::new(first, tcp)));
                }
            });
        }
    });
    addr
}

/// A byte stream the fake leader serves Cap'n Proto on.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Stream for T {}

/// Starts a replicator of the fake leader's partition into a fresh replica.
async fn replicate_from(
    script: Script,
) -> (
    tempfile::TempDir,
    Rc<Partitions>,
    actix::Addr<ReplicatorActor>,
) {
    let dir = tempfile::tempdir().unwrap();
    let partitions =
        Rc::new(Partitions::open(dir.path(), "follower", LogConfig::default()).unwrap());
    let leader = fake_leader(script).await;
    let replicator = supervision::start(
        ChildSpec::new("replicator leader"),
        ReplicatorActor::new(ReplicatorSetup {
            peer: "leader".into(),
            rpc_addr: leader,
            partition: PARTITION.into(),
            partitions: partitions.clone(),
            connector: Rc::new(Connector::Plain),
            metrics: None,
            me: "follower".into(),
            cluster: Default::default(),
        }),
    );
    (dir, partitions, replicator)
}

const PARTITION: &str = "leader-00000000000000aa";

async fn halts_and_writes_nothing_bad(script: Script, expect: &str, written: u64) {
    let (_dir, partitions, replicator) = replicate_from(script).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        if let Some(reason) = replicator.send(GetStatus).await.unwrap().halted {
            break reason;
        }
        assert!(Instant::now() < deadline, "the replication never halted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(reason.contains(expect), "{reason}");
    let replica = partitions.get(PARTITION).unwrap();
    let stats = replica.send(Stats).await.unwrap();
    // Offsets and checksums are checked as the batch arrives, before any
    // of it is written: none of the batch holding the bad record is.
    assert_eq!(stats.next_offset, written, "{stats:?}");
    partitions.close_all().await.unwrap();
}

#[actix_rt::test]
async fn a_record_at_an_unexpected_offset_halts_replication_and_is_not_written() {
    let script = Script::Near(Fault::SkippedOffset);
    halts_and_writes_nothing_bad(script, "offset 7 where 2 was expected", 0).await;
}

#[actix_rt::test]
async fn a_record_with_a_bad_checksum_halts_replication_and_is_not_written() {
    halts_and_writes_nothing_bad(Script::Near(Fault::BadChecksum), "checksum", 0).await;
}

#[actix_rt::test]
async fn far_behind_a_record_streamed_at_an_unexpected_offset_halts_and_is_not_written() {
    // The two records over `replicate` are written; the stream's batch,
    // whose first record claims offset 7, is not.
    let script = Script::Far {
        stream: Some(Some(Fault::SkippedOffset)),
    };
    halts_and_writes_nothing_bad(script, "offset 7 where 2 was expected", 2).await;
}

#[actix_rt::test]
async fn far_behind_a_record_streamed_with_a_bad_checksum_halts_and_is_not_written() {
    let script = Script::Far {
        stream: Some(Some(Fault::BadChecksum)),
    };
    halts_and_writes_nothing_bad(script, "checksum", 2).await;
}

#[actix_rt::test]
async fn far_behind_a_replica_streams_its_leaders_records_and_reports_its_position() {
    let (_dir, partitions, replicator) = replicate_from(Script::Far { stream: Some(None) }).await;
    wait_for_next_offset(&partitions, 6).await;
    assert_eq!(replicator.send(GetStatus).await.unwrap().halted, None);
    // Caught up at 4, it said so on the stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    while REPORTED.get() != 4 {
        assert!(Instant::now() < deadline, "reported {}", REPORTED.get());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    partitions.close_all().await.unwrap();
}

#[actix_rt::test]
async fn a_leader_without_replication_streams_is_pulled_over_replicate_instead() {
    // Its framing closes the stream at its first bytes; the replica pulls
    // the same records over a `replicate` call on the replication thread.
    let (_dir, partitions, replicator) = replicate_from(Script::Far { stream: None }).await;
    wait_for_next_offset(&partitions, 6).await;
    assert_eq!(replicator.send(GetStatus).await.unwrap().halted, None);
    partitions.close_all().await.unwrap();
}

/// Waits until the replica ends at `next` (and checks it goes no further).
async fn wait_for_next_offset(partitions: &Partitions, next: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Ok(replica) = partitions.get(PARTITION) else {
            assert!(Instant::now() < deadline, "the replica was never opened");
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let stats = replica.send(Stats).await.unwrap();
        assert!(stats.next_offset <= next, "{stats:?}");
        if stats.next_offset == next {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica stopped at {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
