//! Replication between real `proglog serve` processes on loopback, with
//! mutual TLS on (the nodes share a development CA through `--tls-dir`):
//! every node leads its own partition, and its peers' ReplicatorActors copy
//! it at identical offsets, byte for byte, with nothing duplicated or cycled.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proglog::client::{Client, PartitionInfo};
use support::{ServeOptions, Server};

const NODES: [&str; 3] = ["repl-a", "repl-b", "repl-c"];

/// Starts a node with mutual TLS: every node of a test keeps its data in
/// `<root>/<node>` and shares the development CA in `<root>/tls` (made by
/// the first), so they trust each other; the ACL grants them `replicate`.
fn start(name: &str, dir: &std::path::Path, join: Option<&Server>, extra: &[&str]) -> Server {
    let tls = dir.parent().unwrap().join("tls");
    let mut extra_args = vec!["--tls-dir".to_string(), tls.display().to_string()];
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

/// Three nodes of `NODES` under `root` (the first the seed of the others),
/// each seeing all three alive; returns their data directories too.
fn three_nodes(root: &std::path::Path) -> (Vec<std::path::PathBuf>, Server, Server, Server) {
    let dirs: Vec<std::path::PathBuf> = (0..3).map(|i| root.join(format!("n{i}"))).collect();
    let a = start(NODES[0], &dirs[0], None, &[]);
    let b = start(NODES[1], &dirs[1], Some(&a), &[]);
    let c = start(NODES[2], &dirs[2], Some(&a), &[]);
    wait_alive(&a, 3);
    (dirs, a, b, c)
}

/// A client of `server`, as `root`, over mutual TLS with the shared CA.
async fn connect(server: &Server) -> Client {
    connect_at(server.rpc, &server.data_dir).await
}

async fn connect_at(rpc: std::net::SocketAddr, data_dir: &std::path::Path) -> Client {
    let tls = data_dir.parent().unwrap().join("tls");
    let config = proglog::auth::tls::client_config(
        &tls.join("ca.pem"),
        &tls.join("root.pem"),
        &tls.join("root.key"),
    )
    .unwrap();
    Client::connect_tls(rpc, "127.0.0.1", config).await.unwrap()
}

/// Runs `f` on a fresh actix System (the client is `!Send`).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

async fn partitions(server: &Server) -> Vec<PartitionInfo> {
    let client = connect(server).await;
    client.partitions().await.unwrap()
}

/// Every record of `partition` on `server`, from 0 to `next`.
async fn read_all(server: &Server, partition: &str, next: u64) -> Vec<Vec<u8>> {
    read_range(server, partition, 0, next).await
}

/// Every record of `partition` on `server` from `from` to `next`, checked
/// to come in order with no gap.
async fn read_range(server: &Server, partition: &str, from: u64, next: u64) -> Vec<Vec<u8>> {
    let client = connect(server).await;
    let mut stream = client.consume_stream(partition, from);
    let mut out = Vec::new();
    while from + (out.len() as u64) < next {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.next_batch())
            .await
            .expect("records arrive")
            .expect("stream open")
            .expect("no error");
        for r in batch {
            assert_eq!(r.offset, from + out.len() as u64, "in order, no gap");
            out.push(r.value);
        }
    }
    out.truncate((next - from) as usize);
    out
}

/// Checks every 50 ms until `check` passes (at most 60 s); panics with
/// its last complaint.
fn poll<T>(mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) => assert!(Instant::now() < deadline, "{why}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every server holds `expected` partitions (id → next offset)
/// exactly.
fn wait_replicated(servers: &[&Server], expected: &BTreeMap<String, u64>) {
    poll(|| {
        let seen: Vec<BTreeMap<String, u64>> = servers
            .iter()
            .map(|s| {
                block_on(partitions(s))
                    .into_iter()
                    .map(|p| (p.id, p.next_offset))
                    .collect()
            })
            .collect();
        match seen.iter().all(|s| s == expected) {
            true => Ok(()),
            false => Err(format!(
                "not replicated in time: expected {expected:?} everywhere, saw {seen:?}"
            )),
        }
    })
}

#[test]
fn three_nodes_hold_every_partition_byte_identical_to_its_leader() {
    let root = tempfile::tempdir().unwrap();
    let (_, a, b, c) = three_nodes(root.path());
    let servers = [&a, &b, &c];

    // Produce to each node at once: batches and single records.
    const PER_NODE: u64 = 3_000;
    std::thread::scope(|scope| {
        for ((rpc, dir), name) in servers.iter().map(|s| (s.rpc, &s.data_dir)).zip(NODES) {
            scope.spawn(move || {
                block_on(async {
                    let client = connect_at(rpc, dir).await;
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
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<std::path::PathBuf> = (0..2).map(|i| root.path().join(format!("n{i}"))).collect();
    let a = start(NODES[0], &dirs[0], None, &[]);
    let b = start(NODES[1], &dirs[1], Some(&a), &[]);
    let produce = |from: u64, to: u64| {
        block_on(async {
            let client = connect(&a).await;
            let batch: Vec<Vec<u8>> = (from..to).map(|i| record("a", i)).collect();
            for chunk in batch.chunks(2_000) {
                client.produce_batch(chunk).await.unwrap();
            }
        })
    };
    produce(0, 2_000);
    let expected: BTreeMap<String, u64> = [(a.partition.clone(), 2_000), (b.partition.clone(), 0)]
        .into_iter()
        .collect();
    wait_replicated(&[&a, &b], &expected);

    // SIGKILL the follower while the leader keeps taking records: 100,000
    // more, so far behind that it catches up on the replication thread.
    b.child.sigkill();
    drop(b);
    const END: u64 = 102_000;
    produce(2_000, END);
    let b = start(NODES[1], &dirs[1], Some(&a), &[]);
    let expected: BTreeMap<String, u64> = [(a.partition.clone(), END), (b.partition.clone(), 0)]
        .into_iter()
        .collect();
    wait_replicated(&[&a, &b], &expected);
    let log = b.log();
    assert!(
        log.contains("catching up on the replication thread"),
        "far behind, the network side ran on the replication thread:\n{log}"
    );
    assert!(
        log.contains("pulling over a replication stream") && !log.contains("predates them"),
        "far behind, it pulled over a replication stream, not a replicate call:\n{log}"
    );
    // It resumed from its replica's end, not from 0: the replicated count
    // after the restart is only what it missed.
    let metrics = support::http_get(b.http, "/metrics").unwrap().body;
    let copied: f64 = metrics
        .lines()
        .find(|l| l.starts_with("proglog_replicated_records_total") && l.contains(&a.partition))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no replicated count in {metrics}\n{log}"));
    assert!(
        copied <= (END - 2_000) as f64,
        "copied {copied} records after the restart, not only the missing ones"
    );
    let copy = block_on(read_all(&b, &a.partition, END));
    for (i, value) in copy.iter().enumerate() {
        assert_eq!(value, &record("a", i as u64), "offset {i}");
    }
}

/// Which of `servers` hold `partition` with all `count` records as its
/// leader or a replica they keep in step (not a copy they stopped pulling).
fn holding(servers: &[&Server], partition: &str, count: u64) -> Vec<String> {
    servers
        .iter()
        .filter(|s| {
            block_on(partitions(s)).iter().any(|p| {
                p.id == partition && p.next_offset == count && (p.is_leader || p.following)
            })
        })
        .map(|s| s.partition.clone())
        .collect()
}

/// Waits until `partition` is held, complete and followed, by exactly
/// `copies` of `servers`; returns the holders' own partition ids.
fn wait_copies(servers: &[&Server], partition: &str, count: u64, copies: usize) -> Vec<String> {
    poll(|| {
        let held = holding(servers, partition, count);
        match held.len() == copies {
            true => Ok(held),
            false => Err(format!(
                "{partition}: held by {held:?}, wanted {copies} copies"
            )),
        }
    })
}

#[test]
fn five_nodes_with_factor_three_keep_three_copies_when_a_holder_leaves() {
    let names = ["rf-a", "rf-b", "rf-c", "rf-d", "rf-e"];
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<std::path::PathBuf> = names.iter().map(|n| root.path().join(n)).collect();
    let first = start(names[0], &dirs[0], None, &["--replication-factor", "3"]);
    let mut servers = vec![first];
    for (name, dir) in names.iter().zip(&dirs).skip(1) {
        let s = start(name, dir, Some(&servers[0]), &["--replication-factor", "3"]);
        servers.push(s);
    }
    for s in &servers {
        block_on(async {
            let client = connect(s).await;
            let batch: Vec<Vec<u8>> = (0..100).map(|i| record(&s.partition, i)).collect();
            client.produce_batch(&batch).await.unwrap();
        });
    }
    let all: Vec<&Server> = servers.iter().collect();
    let mut held = BTreeMap::new();
    for s in &servers {
        let holders = wait_copies(&all, &s.partition, 100, 3);
        assert!(holders.contains(&s.partition), "the leader holds its own");
        held.insert(s.partition.clone(), holders);
    }
    // Stop a holder that is not the leader of the first partition.
    let target = servers[0].partition.clone();
    let leaving = held[&target]
        .iter()
        .find(|p| **p != target)
        .unwrap()
        .clone();
    let at = servers.iter().position(|s| s.partition == leaving).unwrap();
    let mut gone = servers.remove(at);
    let (status, _) = gone.stop();
    assert!(status.success());
    let live: Vec<&Server> = servers.iter().collect();
    let holders = wait_copies(&live, &target, 100, 3);
    assert!(!holders.contains(&leaving));
    // The records of the new copy are the leader's.
    let newcomer = servers
        .iter()
        .find(|s| holders.contains(&s.partition) && !held[&target].contains(&s.partition))
        .expect("another member pulls it");
    let copy = block_on(read_all(newcomer, &target, 100));
    for (i, value) in copy.iter().enumerate() {
        assert_eq!(value, &record(&target, i as u64));
    }
}

#[test]
fn a_wiped_node_leads_a_new_partition_and_its_old_one_stays_readable_on_its_peers() {
    let root = tempfile::tempdir().unwrap();
    let (dirs, a, mut b, c) = three_nodes(root.path());
    let old = b.partition.clone();
    block_on(async {
        let client = connect(&b).await;
        let batch: Vec<Vec<u8>> = (0..200).map(|i| record("old-b", i)).collect();
        client.produce_batch(&batch).await.unwrap();
    });
    wait_copies(&[&a, &b, &c], &old, 200, 3);
    let (status, _) = b.stop();
    assert!(status.success());
    drop(b);
    std::fs::remove_dir_all(&dirs[1]).unwrap();
    let b = start(NODES[1], &dirs[1], Some(&a), &[]);
    assert_ne!(b.partition, old, "a wiped node takes a new partition id");
    // The old partition stays whole and readable where it was replicated.
    for peer in [&a, &c] {
        let copy = block_on(read_all(peer, &old, 200));
        for (i, value) in copy.iter().enumerate() {
            assert_eq!(value, &record("old-b", i as u64));
        }
    }
    // And the new one is replicated like any other.
    block_on(async {
        let client = connect(&b).await;
        client.produce(b"new life").await.unwrap();
    });
    wait_copies(&[&a, &b, &c], &b.partition, 1, 3);
}

/// Waits (at most 30 s) until `observer` sees exactly `alive` nodes alive.
fn wait_alive(observer: &Server, alive: usize) {
    block_on(wait_alive_async(observer, alive));
}

async fn wait_alive_async(observer: &Server, alive: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let servers = connect(observer).await.servers().await.unwrap();
        if servers.iter().filter(|s| s.alive).count() == alive {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {alive} alive: {servers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn acks_all_needs_min_insync_live_holders_and_fails_fast_without_them() {
    use proglog::client::{Acks, ClientError};
    let root = tempfile::tempdir().unwrap();
    let (_, a, b, c) = three_nodes(root.path());
    let produce_all = |server: &Server, value: &[u8]| {
        block_on(async {
            let client = connect(server).await.with_acks(Acks::All);
            client.produce(value).await
        })
    };
    // All up: confirmed by the holders; readable on a replica at once.
    let acked = produce_all(&a, b"all up").unwrap();
    let on_a_replica = [&b, &c].iter().any(|replica| {
        block_on(async {
            let client = connect(replica).await;
            client
                .consume(&a.partition, acked.offset)
                .await
                .ok()
                .map(|r| r.value)
        })
        .is_some_and(|v| v == b"all up")
    });
    assert!(on_a_replica, "acks=all answered only once a replica had it");

    // One of three down: two holders remain, min-insync-replicas is 2.
    c.child.sigkill();
    let second = produce_all(&a, b"one down").unwrap();
    wait_alive(&a, 2);
    let third = produce_all(&a, b"one down, noticed").unwrap();
    assert!(third.offset > second.offset);

    // Two of three down (and noticed): refused at once, not appended.
    b.child.sigkill();
    wait_alive(&a, 1);
    let started = Instant::now();
    let err = produce_all(&a, b"two down").unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::NotEnoughReplicas {
                live: 1,
                required: 2
            }
        ),
        "{err:?}"
    );
    assert!(!err.maybe_appended());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "fails fast, no hang"
    );
    let next = block_on(partitions(&a))
        .into_iter()
        .find(|p| p.id == a.partition)
        .unwrap()
        .next_offset;
    assert_eq!(
        next,
        third.offset + 1,
        "the refused record was not appended"
    );
}

#[test]
fn a_record_acked_by_all_is_readable_from_a_replica_after_its_leader_is_killed() {
    use proglog::client::Acks;
    let root = tempfile::tempdir().unwrap();
    let (_, a, b, c) = three_nodes(root.path());
    let acked: Vec<u64> = block_on(async {
        let client = connect(&a).await.with_acks(Acks::All);
        let mut offsets = Vec::new();
        for i in 0..100 {
            offsets.push(client.produce(&record("acked", i)).await.unwrap().offset);
        }
        offsets
    });
    a.child.sigkill();
    // Every acknowledged record is on at least one replica (min-insync 2).
    for (i, offset) in acked.iter().enumerate() {
        let found = [&b, &c].iter().any(|replica| {
            block_on(async {
                let client = connect(replica).await;
                client
                    .consume(&a.partition, *offset)
                    .await
                    .ok()
                    .map(|r| r.value)
            })
            .is_some_and(|v| v == record("acked", i as u64))
        });
        assert!(found, "acked offset {offset} lost with its leader");
    }
}

#[test]
fn the_cluster_client_keeps_producing_and_following_while_a_leader_is_killed_and_restarted() {
    use proglog::client::Dial;
    let root = tempfile::tempdir().unwrap();
    let (dirs, a, b, c) = three_nodes(root.path());
    let tls = root.path().join("tls");
    let dial = Dial::Tls(
        proglog::auth::tls::client_config(
            &tls.join("ca.pem"),
            &tls.join("root.pem"),
            &tls.join("root.key"),
        )
        .unwrap(),
    );
    let seeds: Vec<String> = [&a, &b, &c].iter().map(|s| s.rpc.to_string()).collect();
    let partitions = [
        a.partition.clone(),
        b.partition.clone(),
        c.partition.clone(),
    ];
    let b_gossip = b.gossip;
    let mut a = Some(a);
    block_on(async {
        let cluster = proglog::client::Client::connect_cluster(&seeds, dial)
            .await
            .unwrap();
        let mut follows: Vec<_> = partitions.iter().map(|p| cluster.follow(p, 0)).collect();
        let mut acked: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        let produce = |from: u64, to: u64| {
            let cluster = &cluster;
            let mut out = Vec::new();
            async move {
                for i in from..to {
                    let batch: Vec<Vec<u8>> =
                        (0..5).map(|j| format!("r{i}-{j}").into_bytes()).collect();
                    let produced = cluster.produce_batch(&batch).await.unwrap();
                    for (offset, value) in produced.offsets.zip(batch) {
                        out.push((produced.partition.clone(), offset, value));
                    }
                }
                out
            }
        };
        let mut record = |rows: Vec<(String, u64, Vec<u8>)>| {
            for (p, o, v) in rows {
                acked.entry(p).or_default().push((o, v));
            }
        };
        record(produce(0, 30).await);
        // Kill a leader: produces go to the others; its partition's
        // follower moves to a replica.
        a.take().unwrap().child.sigkill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        record(produce(30, 60).await);
        let a = start(NODES[0], &dirs[0], None, &["--join", &b_gossip.to_string()]);
        assert_eq!(
            a.partition, partitions[0],
            "restarted on its data: same partition"
        );
        wait_alive_async(&a, 3).await;
        cluster.refresh().await.unwrap();
        let third = produce(60, 90).await;
        assert!(
            third.iter().any(|(p, _, _)| *p == partitions[0]),
            "the restarted leader took produces again"
        );
        record(third);
        // Every acknowledged record reaches its partition's follower exactly
        // once, in order, offsets contiguous from 0.
        for (p, follow) in partitions.iter().zip(follows.iter_mut()) {
            let Some(rows) = acked.get(p) else { continue };
            let last = rows.iter().map(|(o, _)| *o).max().unwrap();
            let mut seen = Vec::new();
            while seen.len() as u64 <= last {
                let r = tokio::time::timeout(Duration::from_secs(30), follow.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{p}: follower stalled at {}", seen.len()))
                    .expect("follow open")
                    .expect("no error");
                assert_eq!(r.offset, seen.len() as u64, "{p}: once, in order");
                seen.push(r.value);
            }
            for (offset, value) in rows {
                assert_eq!(&seen[*offset as usize], value, "{p} offset {offset}");
            }
        }
        drop(a);
    });
}

#[test]
fn the_cli_with_several_addresses_produces_and_follows_across_a_killed_and_restarted_node() {
    use support::{ChildGuard, Lines, proglog, run};
    let root = tempfile::tempdir().unwrap();
    let (dirs, a, b, c) = three_nodes(root.path());
    let tls = root.path().join("tls").display().to_string();
    let addrs = |servers: &[&Server]| {
        servers
            .iter()
            .map(|s| s.rpc.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let all = addrs(&[&a, &b, &c]);
    // Follow b's partition through the cluster.
    let mut follow_cmd = proglog();
    follow_cmd.args(["consume", "--follow", "--format", "json", "--tls-dir", &tls]);
    follow_cmd.args(["--partition", &b.partition, "--addr", &all]);
    follow_cmd.stdout(std::process::Stdio::piped());
    let mut follower = ChildGuard::spawn("consume --follow", &mut follow_cmd);
    let lines = Lines::spawn(follower.take_stdout());
    // `proglog produce --json` of `values` through `addr` (one or several).
    let produce = |addr: &str, values: Vec<String>| {
        let mut cmd = proglog();
        cmd.args(["produce", "--json", "--tls-dir", &tls, "--addr", addr]);
        cmd.args(values);
        run(cmd, None, Duration::from_secs(60)).success()
    };
    let produce_to_b = |b: &Server, from: u64| {
        produce(
            &b.rpc.to_string(),
            (from..from + 20).map(|i| format!("b-{i}")).collect(),
        );
    };
    produce_to_b(&b, 0);
    // b dies: the follower moves to a replica of b's partition.
    b.child.sigkill();
    drop(b);
    // Produces through the cluster go on (to the live nodes).
    let out = produce(&all, vec!["still".into(), "serving".into()]);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    // b comes back on its data and takes records again.
    let b = start(NODES[1], &dirs[1], Some(&a), &[]);
    produce_to_b(&b, 20);
    // The follower saw b's 40 records once each, in order.
    for i in 0..40u64 {
        let line = lines
            .next(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no record {i} from the follower: {e:?}"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["offset"], i, "{line}");
        assert_eq!(v["value"], format!("b-{i}"), "{line}");
    }
    follower.sigkill();
    drop((a, c));
}

/// A replica whose leader's retention deleted records it had not copied
/// yet (it was down meanwhile): it keeps what it holds, records the offsets
/// it can never copy as lost (reads there answer `recordsLost`, never
/// data, also after a restart) and goes on at the leader's lowest offset,
/// byte-identical from there. A node joining afresh starts its replica at
/// the leader's lowest offset.
#[test]
fn a_replica_behind_its_leaders_retention_continues_at_the_leaders_lowest_offset() {
    use proglog::client::ClientError;
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<std::path::PathBuf> = (0..3).map(|i| root.path().join(format!("r{i}"))).collect();
    // 64 KiB segments, 256 KiB kept: producing about 1.5 MiB rolls many
    // times and retention deletes the oldest segments at each roll.
    let small = [
        "--max-segment-bytes",
        "65536",
        "--max-record-bytes",
        "4096",
        "--retention-bytes",
        "262144",
    ];
    let a = start("ret-a", &dirs[0], None, &small);
    let mut b = start("ret-b", &dirs[1], Some(&a), &[]);
    let value = |i: u64| format!("{i:08}:{}", "r".repeat(240)).into_bytes();
    let produce = |from: u64, to: u64| {
        block_on(async {
            let client = connect(&a).await;
            for chunk in (from..to).collect::<Vec<_>>().chunks(500) {
                let batch: Vec<Vec<u8>> = chunk.iter().map(|&i| value(i)).collect();
                client.produce_batch(&batch).await.unwrap();
            }
        })
    };
    const COPIED: u64 = 100;
    const RECORDS: u64 = 6_000;
    produce(0, COPIED);
    wait_copies(&[&a, &b], &a.partition, COPIED, 2);
    let (status, _) = b.stop();
    assert!(status.success());
    drop(b);

    produce(COPIED, RECORDS);
    let lowest = block_on(partitions(&a))
        .into_iter()
        .find(|p| p.is_leader)
        .unwrap()
        .lowest_offset;
    assert!(lowest > COPIED, "retention deleted past the replica's end");

    let caught_up = |server: &Server| {
        poll(|| {
            let held = block_on(partitions(server));
            match held.iter().find(|p| p.id == a.partition) {
                Some(p) if p.next_offset == RECORDS && p.following && p.lag == 0 => Ok(p.clone()),
                other => Err(format!("not caught up yet: {other:?}")),
            }
        })
    };
    let check_replica = |server: &Server, kept: bool| {
        block_on(async {
            let client = connect(server).await;
            if kept {
                assert_eq!(
                    client.consume(&a.partition, 0).await.unwrap().value,
                    value(0)
                );
                assert_eq!(
                    client
                        .consume(&a.partition, COPIED - 1)
                        .await
                        .unwrap()
                        .value,
                    value(COPIED - 1)
                );
                // What the leader deleted before it was copied is known lost.
                for offset in [COPIED, lowest - 1] {
                    match client.consume(&a.partition, offset).await {
                        Err(ClientError::RecordsLost { from, to, .. }) => {
                            assert_eq!((from, to), (COPIED, lowest))
                        }
                        other => panic!("offset {offset}: expected recordsLost, got {other:?}"),
                    }
                }
            }
            // From the leader's lowest on, the leader's records, in order.
            let copy = read_range(server, &a.partition, lowest, RECORDS).await;
            for (i, v) in copy.iter().enumerate() {
                assert_eq!(v, &value(lowest + i as u64));
            }
        })
    };

    let mut b = start("ret-b", &dirs[1], Some(&a), &[]);
    let copy = caught_up(&b);
    assert_eq!(
        copy.lowest_offset, 0,
        "the replica keeps what it had: {copy:?}"
    );
    check_replica(&b, true);
    // The gap is durable: after a restart the replica answers the same.
    let (status, _) = b.stop();
    assert!(status.success());
    drop(b);
    let b = start("ret-b", &dirs[1], Some(&a), &[]);
    caught_up(&b);
    check_replica(&b, true);

    // A fresh node's replica starts at the leader's lowest offset.
    let c = start("ret-c", &dirs[2], Some(&a), &[]);
    let copy = caught_up(&c);
    assert_eq!(copy.lowest_offset, lowest, "{copy:?}");
    check_replica(&c, false);
}

/// Pages of `path` in the page cache, and of how many (`mincore` over a
/// read-only mapping, which faults nothing in).
fn resident_pages(path: &std::path::Path) -> (usize, usize) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a read-only mapping only `mincore` looks at; nothing reads it.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let page = 4096;
    let pages = map.len().div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the mapping, as mincore writes.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            vec.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    (vec.iter().filter(|&&b| b & 1 == 1).count(), pages)
}

#[test]
fn a_replica_far_behind_writes_behind_and_its_copy_reads_back_whole_from_disk() {
    // On the disk the build is on (a temporary directory may be tmpfs,
    // which has no writeback and keeps every page).
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dirs: Vec<std::path::PathBuf> = (0..2).map(|i| root.path().join(format!("w{i}"))).collect();
    let a = start("wb-a", &dirs[0], None, &[]);
    // 80 MiB of 1 KiB records before the follower exists: it starts far
    // behind (more than 64 Ki records) and copies them writing behind.
    const RECORDS: u64 = 80_000;
    let value = |i: u64| format!("{i:08}:{}", "w".repeat(1015)).into_bytes();
    block_on(async {
        let client = connect(&a).await;
        for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(1_000) {
            let batch: Vec<Vec<u8>> = chunk.iter().map(|&i| value(i)).collect();
            client.produce_batch(&batch).await.unwrap();
        }
    });
    let b = start("wb-b", &dirs[1], Some(&a), &[]);
    let expected: BTreeMap<String, u64> =
        [(a.partition.clone(), RECORDS), (b.partition.clone(), 0)]
            .into_iter()
            .collect();
    wait_replicated(&[&a, &b], &expected);
    assert!(
        b.log().contains("catching up on the replication thread"),
        "the follower started far behind:\n{}",
        b.log()
    );

    // Most of the copy is on disk and out of the page cache: only about
    // the last 8 MiB written (and what writeback had not finished when its
    // turn came) stays. Without write-behind all 80 MiB would be cached.
    let replica = dirs[1].join("partitions").join(&a.partition);
    let stores: Vec<std::path::PathBuf> = std::fs::read_dir(&replica)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "store"))
        .collect();
    let (resident, pages) = stores
        .iter()
        .map(|p| resident_pages(p))
        .fold((0, 0), |(r, n), (r2, n2)| (r + r2, n + n2));
    assert!(
        pages * 4096 > 64 << 20,
        "the copy is on disk: {pages} pages"
    );
    assert!(
        resident * 2 < pages,
        "{resident} of the copy's {pages} pages are still cached"
    );

    // Read back from the disk, byte for byte the leader's records.
    let copy = block_on(read_all(&b, &a.partition, RECORDS));
    for (i, v) in copy.iter().enumerate() {
        assert_eq!(v, &value(i as u64), "offset {i}");
    }
}
