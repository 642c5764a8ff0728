//! Entry points for the fuzzers in `fuzz/` (cargo fuzz, libFuzzer) and
//! for `tests/fuzz_corpus.rs`, which replays their seed corpora: each takes
//! arbitrary bytes through a path the node runs and must neither panic nor
//! hang. Not part of the API.
//!
//! - [`segment_recovery`]: the bytes as a segment's store file, opened by
//!   the node's recovery (`storage::open_dir`, what a LogActor runs at
//!   start), then every record read back.
//! - [`index_recovery`]: a valid store with the bytes as its index file,
//!   the same way.
//! - [`gossip_datagram`]: the bytes as a gossip datagram, through the
//!   envelope's authentication (with and without a cluster key) and foca's
//!   decoding, as the gossip task receives one.
//! - [`rpc_messages`]: the bytes as what a client sends on a connection,
//!   through the framing, capnp-rpc and the `Log` service over real
//!   partitions.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::storage::{LogConfig, Segment, SyncPolicy, file_name, open_dir};

/// A directory removed when dropped (the fuzzers run millions of inputs).
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("proglog-fuzz-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Small files, no free-space floor, no syncs: many inputs a second.
fn config() -> LogConfig {
    LogConfig {
        max_store_bytes: 1 << 20,
        max_index_bytes: 64 << 10,
        max_record_bytes: 64 << 10,
        min_free_bytes: 0,
        sync: SyncPolicy::Never,
        ..LogConfig::default()
    }
}

/// Opens `dir` as the node does at start and reads every record it
/// reports; errors (corruption, damage) are answers, not failures.
fn open_and_read_all(dir: &Path) {
    let Ok(opened) = open_dir(dir, &config()) else {
        return;
    };
    for segment in &opened.segments {
        read_segment(segment);
    }
}

fn read_segment(segment: &Segment) {
    // Bounded: a damaged header could claim a huge range.
    let end = segment.next().min(segment.base().saturating_add(100_000));
    for offset in segment.base()..end {
        let _ = segment.read(offset);
    }
    let _ = segment.read_batch(segment.base(), end, 1 << 20);
}

/// The bytes as the store file of the segment at base 0.
pub fn segment_recovery(data: &[u8]) {
    let dir = Scratch::new("segment");
    if std::fs::write(dir.0.join(file_name(0, "store")), data).is_ok() {
        open_and_read_all(&dir.0);
    }
}

/// A store of `records` whose index file is replaced by `data`.
pub fn index_recovery(data: &[u8]) {
    let dir = Scratch::new("index");
    if write_valid_log(&dir.0, 20).is_err() {
        return;
    }
    if std::fs::write(dir.0.join(file_name(0, "index")), data).is_ok() {
        open_and_read_all(&dir.0);
    }
}

/// Writes a log of `records` small records into `dir` (closed cleanly).
pub fn write_valid_log(dir: &Path, records: u64) -> Result<(), crate::storage::StorageError> {
    let mut opened = open_dir(dir, &config())?;
    if let Some(segment) = opened.segments.last_mut() {
        for i in 0..records {
            segment.append(format!("record {i}").as_bytes())?;
        }
        segment.sync()?;
    }
    Ok(())
}

/// The bytes as a received gossip datagram.
pub fn gossip_datagram(data: &[u8]) {
    crate::membership::receive_datagram(data);
}

/// Seeds for [`gossip_datagram`]: real datagrams.
pub fn gossip_seeds() -> Vec<Vec<u8>> {
    crate::membership::sample_datagrams()
}

/// Seeds for [`rpc_messages`]: a client's bootstrap followed by calls of
/// each kind that needs no capability of the client's, as frames.
pub fn rpc_seeds() -> Vec<Vec<u8>> {
    use crate::log_capnp::log;
    use capnp::message::Builder;
    use capnp::traits::HasTypeId;
    use capnp_rpc::rpc_capnp::message;

    fn frame(build: impl FnOnce(message::Builder<'_>)) -> Vec<u8> {
        let mut msg = Builder::new_default();
        build(msg.init_root());
        capnp::serialize::write_message_to_words(&msg)
    }
    /// A call of `method` on the bootstrap capability, its parameters set by `params`.
    fn call(
        question: u32,
        method: u16,
        params: impl FnOnce(capnp::any_pointer::Builder<'_>),
    ) -> Vec<u8> {
        frame(|m| {
            let mut call = m.init_call();
            call.set_question_id(question);
            call.set_interface_id(log::Client::TYPE_ID);
            call.set_method_id(method);
            call.reborrow()
                .init_target()
                .init_promised_answer()
                .set_question_id(0);
            let mut payload = call.init_params();
            params(payload.reborrow().get_content());
            payload.init_cap_table(0);
        })
    }
    let bootstrap = frame(|m| m.init_bootstrap().set_question_id(0));
    let finish = |q: u32| {
        frame(|m| {
            let mut f = m.init_finish();
            f.set_question_id(q);
            f.set_release_result_caps(true);
        })
    };
    let produce = call(1, 0, |p| {
        p.init_as::<log::produce_params::Builder>()
            .set_value(b"hello");
    });
    let batch = call(2, 1, |p| {
        let mut b = p.init_as::<log::produce_batch_params::Builder>();
        let mut values = b.reborrow().init_values(3);
        for i in 0..3 {
            values.set(i, format!("value {i}").as_bytes());
        }
    });
    let consume = call(3, 3, |p| {
        let mut c = p.init_as::<log::consume_params::Builder>();
        c.set_partition("");
        c.set_offset(0);
    });
    let consume_batch = call(4, 9, |p| {
        let mut c = p.init_as::<log::consume_batch_params::Builder>();
        c.set_offset(0);
        c.set_max_records(10);
    });
    let servers = call(5, 5, |p| {
        p.init_as::<log::get_servers_params::Builder>();
    });
    let partitions = call(6, 6, |p| {
        p.init_as::<log::list_partitions_params::Builder>();
    });
    let replicated = call(7, 8, |p| {
        let mut r = p.init_as::<log::replicated_params::Builder>();
        r.set_node("peer");
        r.set_committed(1);
    });
    let stream = call(8, 2, |p| {
        p.init_as::<log::produce_stream_params::Builder>();
    });
    let mut all = bootstrap.clone();
    for m in [
        &produce,
        &batch,
        &consume,
        &consume_batch,
        &servers,
        &partitions,
        &replicated,
        &stream,
    ] {
        all.extend_from_slice(m);
    }
    all.extend(finish(1));
    vec![
        all,
        [bootstrap.clone(), produce, consume.clone()].concat(),
        [bootstrap.clone(), batch, consume_batch].concat(),
        [bootstrap, servers, partitions].concat(),
    ]
}

/// The bytes as everything a client sends on one connection, then closes.
/// Returns how many bytes the server answered with.
pub fn rpc_messages(data: &[u8]) -> usize {
    let dir = Scratch::new("rpc");
    let data = data.to_vec();
    let system = actix_rt::System::new();
    system.block_on(async move {
        let Ok(partitions) = crate::log::Partitions::open(&dir.0, "fuzz", config()) else {
            return 0;
        };
        let ctx = Rc::new(crate::rpc::ServiceContext {
            in_sync: Rc::new(crate::replication::InSync::new(1, Duration::from_secs(1))),
            partitions: Rc::new(partitions),
            in_flight: Default::default(),
            cluster: Default::default(),
            authorizer: None,
            max_record_bytes: 64 << 10,
            max_stream_batch_bytes: 64 << 10,
            max_replication_batch_bytes: 64 << 10,
        });
        let (client, server) = tokio::io::duplex(1 << 20);
        let budget = Rc::new(crate::wire::framed::ByteBudget::new(16 << 20));
        let activity = crate::wire::framed::Activity::new();
        let limits = crate::wire::framed::ReceiveLimits::new(1 << 20)
            .with_budget(Some(budget.clone()))
            .with_activity(activity.clone())
            .refuse_promise_resolutions();
        let outbox = crate::wire::outbox::Outbox::new(Some(budget.clone()));
        let network = crate::wire::transport::vat_network(
            server,
            crate::wire::transport::WriteGathering::Buffered,
            capnp_rpc::rpc_twoparty_capnp::Side::Server,
            limits,
            1 << 20,
            Some(outbox.clone()),
            None,
        );
        let service: crate::log_capnp::log::Client = capnp_rpc::new_client(
            crate::rpc::LogService::new(ctx.clone(), "fuzz").with_connection(
                Default::default(),
                Some(budget.clone()),
                Some(outbox),
            ),
        );
        let rpc = capnp_rpc::RpcSystem::new(Box::new(network), Some(service.client));
        let (mut from_server, mut to_server) = tokio::io::split(client);
        // Half the inputs (by length) end as a client hanging up does; the
        // other half as the node ends a connection it times out, with
        // whatever calls are in flight (`Activity::close`).
        let hang_up = data.len().is_multiple_of(2);
        let send = async move {
            use tokio::io::AsyncWriteExt;
            let _ = to_server.write_all(&data).await;
            if hang_up {
                let _ = to_server.shutdown().await;
            } else {
                tokio::time::sleep(Duration::from_millis(2)).await;
                activity.close("fuzz: timed out");
            }
            to_server
        };
        let drain = async move {
            use tokio::io::AsyncReadExt;
            let mut sink = vec![0u8; 64 << 10];
            let mut answered = 0;
            while let Ok(n) = from_server.read(&mut sink).await {
                if n == 0 {
                    break;
                }
                answered += n;
            }
            answered
        };
        // The RPC system finishes on its own in both cases, as in the node.
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            let (to_server, served, answered) = tokio::join!(send, rpc, drain);
            drop((to_server, served));
            answered
        })
        .await
        .unwrap_or(0);
        for id in ctx.partitions.ids() {
            if let Ok(log) = ctx.partitions.get(&id) {
                let _ = log.send(crate::log::Close).await;
            }
        }
        answered
    })
}
