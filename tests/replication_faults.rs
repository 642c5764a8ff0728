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
use proglog::wire::framed::ReceiveLimits;
use proglog::wire::schema::log;
use proglog::wire::transport::vat_network;

/// What the fake leader sends after two good records.
#[derive(Clone, Copy)]
enum Fault {
    /// The third record claims offset 7 instead of 2.
    SkippedOffset,
    /// The third record's bytes do not match its checksum.
    BadChecksum,
}

struct FakeLeader {
    fault: Fault,
}

impl log::Server for FakeLeader {
    async fn replicate(
        self: CapRc<Self>,
        params: log::ReplicateParams,
        _results: log::ReplicateResults,
    ) -> Result<(), capnp::Error> {
        let sink = params.get()?.get_sink()?;
        let mut frames = Vec::new();
        for i in 0..3u64 {
            let value = format!("record-{i}").into_bytes();
            let offset = match (i, self.fault) {
                (2, Fault::SkippedOffset) => 7,
                _ => i,
            };
            let mut header = FrameHeader::new(offset, &value);
            if let (2, Fault::BadChecksum) = (i, self.fault) {
                header.crc ^= 1;
            }
            frames.extend_from_slice(&header.encode());
            frames.extend_from_slice(&value);
        }
        let mut request = sink.write_request();
        {
            let mut p = request.get();
            p.set_first(0);
            p.set_frames(&frames);
            p.set_committed_end(3);
        }
        let _ = request.send().await;
        // Then stay open, as a leader at its end would.
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// Serves one fake leader on a free port.
async fn fake_leader(fault: Fault) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::task::spawn_local(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let network = vat_network(
                tcp,
                Side::Server,
                ReceiveLimits::new(1 << 20),
                1 << 20,
                None,
                None,
            );
            let client: log::Client = capnp_rpc::new_client(FakeLeader { fault });
            tokio::task::spawn_local(RpcSystem::new(Box::new(network), Some(client.client)));
        }
    });
    addr
}

async fn halts_and_writes_nothing_bad(fault: Fault, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let partitions =
        Rc::new(Partitions::open(dir.path(), "follower", LogConfig::default()).unwrap());
    let leader = fake_leader(fault).await;
    let partition = "leader-00000000000000aa";
    let replicator = supervision::start(
        ChildSpec::new("replicator leader"),
        ReplicatorActor::new(ReplicatorSetup {
            peer: "leader".into(),
            rpc_addr: leader,
            partition: partition.into(),
            partitions: partitions.clone(),
            connector: Rc::new(Connector::Plain),
            metrics: None,
            me: "follower".into(),
            cluster: Default::default(),
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        if let Some(reason) = replicator.send(GetStatus).await.unwrap().halted {
            break reason;
        }
        assert!(Instant::now() < deadline, "the replication never halted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(reason.contains(expect), "{reason}");
    let replica = partitions.get(partition).unwrap();
    let stats = replica.send(Stats).await.unwrap();
    // Offsets and checksums are checked as the batch arrives, before any
    // of it is written: none of the batch holding the bad record is.
    assert_eq!(stats.next_offset, 0, "{stats:?}");
    partitions.close_all().await.unwrap();
}

#[actix_rt::test]
async fn a_record_at_an_unexpected_offset_halts_replication_and_is_not_written() {
    halts_and_writes_nothing_bad(Fault::SkippedOffset, "offset 7 where 2 was expected").await;
}

#[actix_rt::test]
async fn a_record_with_a_bad_checksum_halts_replication_and_is_not_written() {
    halts_and_writes_nothing_bad(Fault::BadChecksum, "checksum").await;
}
