//! Replication between real `proglog serve` processes on loopback: every
//! node leads its own partition, and its peers' ReplicatorActors copy it
//! at identical offsets, byte for byte, with nothing duplicated or cycled.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proglog::client::{Client, PartitionInfo};
use support::{ServeOptions, Server};

const NODES: [&str; 3] = ["repl-a", "repl-b", "repl-c"];

fn start(name: &str, dir: &std::path::Path, join: Option<&Server>, extra: &[&str]) -> Server {
    let mut extra_args = vec!["--insecure".to_string()];
    if let Some(seed) = join {
        extra_args.extend(["--join".to_string(), seed.gossip.to_string()]);
    }
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    Server::start_with(
        dir,
        &ServeOptions {
            node_name: Some(name.to_string()),
            extra_args,
            ..ServeOptions::default()
        },
    )
}

fn record(node: &str, i: u64) -> Vec<u8> {
    format!("{node}:{i:06}:{}", "x".repeat((i % 97) as usize)).into_bytes()
}

/// Runs `f` on a fresh actix System (the client is `!Send`).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

async fn partitions(server: &Server) -> Vec<PartitionInfo> {
    let client = Client::connect(server.rpc).await.unwrap();
    client.partitions().await.unwrap()
}

/// Every record of `partition` on `server`, from 0 to `next`.
async fn read_all(server: &Server, partition: &str, next: u64) -> Vec<Vec<u8>> {
    let client = Client::connect(server.rpc).await.unwrap();
    let mut stream = client.consume_stream(partition, 0);
    let mut out = Vec::new();
    while (out.len() as u64) < next {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.next_batch())
            .await
            .expect("records arrive")
            .expect("stream open")
            .expect("no error");
        for r in batch {
            assert_eq!(r.offset, out.len() as u64, "in order, no gap");
            out.push(r.value);
        }
    }
    out.truncate(next as usize);
    out
}

/// Waits (at most 60 s) until every server holds `expected` partitions
/// (id → next offset) exactly.
fn wait_replicated(servers: &[&Server], expected: &BTreeMap<String, u64>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: Vec<BTreeMap<String, u64>> = servers
            .iter()
            .map(|s| {
                block_on(partitions(s))
                    .into_iter()
                    .map(|p| (p.id, p.next_offset))
                    .collect()
            })
            .collect();
        if seen.iter().all(|s| s == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not replicated in time: expected {expected:?} everywhere, saw {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_nodes_hold_every_partition_byte_identical_to_its_leader() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(NODES[0], dirs[0].path(), None, &[]);
    let b = start(NODES[1], dirs[1].path(), Some(&a), &[]);
    let c = start(NODES[2], dirs[2].path(), Some(&a), &[]);
    let servers = [&a, &b, &c];

    // Produce to each node at once: batches and single records.
    const PER_NODE: u64 = 3_000;
    std::thread::scope(|scope| {
        for (rpc, name) in servers.iter().map(|s| s.rpc).zip(NODES) {
            scope.spawn(move || {
                block_on(async {
                    let client = Client::connect(rpc).await.unwrap();
                    let mut i = 0;
                    while i < PER_NODE {
                        if i % 3 == 0 {
                            client.produce(&record(name, i)).await.unwrap();
                            i += 1;
                        } else {
                            let batch: Vec<Vec<u8>> = (i..(i + 50).min(PER_NODE))
                                .map(|j| record(name, j))
                                .collect();
                            i += batch.len() as u64;
                            client.produce_batch(&batch).await.unwrap();
                        }
                    }
                })
            });
        }
    });

    let expected: BTreeMap<String, u64> = servers
        .iter()
        .map(|s| (s.partition.clone(), PER_NODE))
        .collect();
    wait_replicated(&servers, &expected);

    // Record for record, every replica is the leader's.
    for (leader, name) in servers.iter().zip(NODES) {
        let original = block_on(read_all(leader, &leader.partition, PER_NODE));
        assert_eq!(original.len() as u64, PER_NODE);
        for (i, value) in original.iter().enumerate() {
            assert_eq!(value, &record(name, i as u64), "leader {name} offset {i}");
        }
        for replica in servers.iter().filter(|s| s.partition != leader.partition) {
            let copy = block_on(read_all(replica, &leader.partition, PER_NODE));
            assert!(copy == original, "replica of {name} differs");
        }
    }
    // Roles: each node leads exactly its own partition.
    for server in servers {
        for p in block_on(partitions(server)) {
            assert_eq!(p.is_leader, p.id == server.partition, "{p:?}");
        }
    }
    // Nothing cycles: after a quiet moment, the counts have not moved.
    std::thread::sleep(Duration::from_millis(500));
    wait_replicated(&servers, &expected);
}

#[test]
fn a_killed_follower_catches_up_from_where_its_replica_ended() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(NODES[0], dirs[0].path(), None, &[]);
    let b = start(NODES[1], dirs[1].path(), Some(&a), &[]);
    let produce = |from: u64, to: u64| {
        block_on(async {
            let client = Client::connect(a.rpc).await.unwrap();
            let batch: Vec<Vec<u8>> = (from..to).map(|i| record("a", i)).collect();
            for chunk in batch.chunks(100) {
                client.produce_batch(chunk).await.unwrap();
            }
        })
    };
    produce(0, 2_000);
    let expected: BTreeMap<String, u64> = [(a.partition.clone(), 2_000), (b.partition.clone(), 0)]
        .into_iter()
        .collect();
    wait_replicated(&[&a, &b], &expected);

    // SIGKILL the follower while the leader keeps taking records.
    b.child.sigkill();
    drop(b);
    produce(2_000, 4_000);
    let b = start(NODES[1], dirs[1].path(), Some(&a), &[]);
    let expected: BTreeMap<String, u64> = [(a.partition.clone(), 4_000), (b.partition.clone(), 0)]
        .into_iter()
        .collect();
    wait_replicated(&[&a, &b], &expected);
    let log = b.log();
    // It resumed from its replica's end, not from 0: the replicated count
    // after the restart is only what it missed.
    let metrics = support::http_get(b.http, "/metrics").unwrap().body;
    let copied: f64 = metrics
        .lines()
        .find(|l| l.starts_with("proglog_replicated_records_total") && l.contains(&a.partition))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no replicated count in {metrics}\n{log}"));
    assert!(
        copied <= 2_000.0,
        "copied {copied} records after the restart, not only the missing ones"
    );
    let copy = block_on(read_all(&b, &a.partition, 4_000));
    for (i, value) in copy.iter().enumerate() {
        assert_eq!(value, &record("a", i as u64), "offset {i}");
    }
}
