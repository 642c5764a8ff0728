//! The supervision tree, through a running node (the path `proglog serve`
//! runs): a panic injected at each kind of work of each supervised actor
//! restarts that actor; its clients are served afterwards; no acknowledged
//! record is lost; a follower of a stream resumes (or gets a typed error);
//! a child that spends its budget escalates, and at the root that is a
//! graceful shutdown reported as a failure (non-zero exit for `serve`).
//!
//! The MembershipActor's restarts (and its rejoin) are tested with a real
//! cluster in `membership.rs`; the ReplicatorActor's here, with two nodes.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use proglog::agent::{Agent, GetReplicators, Node, Stopped};
use proglog::client::Client;
use proglog::config::{NodeConfig, ServeArgs};
use proglog::log::{InjectSegmentPanic, Stats};
use proglog::replication::GetStatus;
use proglog::supervision::{InjectPanic, Work};
use support::http_get_async as http_get;

fn config(dir: &std::path::Path, sync: &str) -> NodeConfig {
    let any = || Some("127.0.0.1:0".parse().unwrap());
    NodeConfig::resolve(ServeArgs {
        insecure: true,
        data_dir: Some(dir.to_path_buf()),
        node_name: Some("supervised".into()),
        rpc_addr: any(),
        gossip_addr: any(),
        http_addr: any(),
        sync: Some(sync.into()),
        ..ServeArgs::default()
    })
    .unwrap()
}

fn record(i: u64) -> Vec<u8> {
    format!("record-{i:05}").into_bytes()
}

/// Restarts of the node's own partition (its LogActor and SegmentActors).
async fn restarts(node: &Node) -> u64 {
    let log = node.partitions().own().unwrap().clone();
    log.send(Stats).await.unwrap().restarts
}

/// Waits (at most 10 s) until `done` holds, checking every few ms.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Produces `range`, one record per call; returns what was acknowledged.
async fn produce(client: &Client, range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
    let mut acked = Vec::new();
    for i in range {
        if let Ok(p) = client.produce(&record(i)).await {
            acked.push((p.offset, record(i)));
        }
    }
    acked
}

/// Every acknowledged record reads back byte for byte.
async fn assert_acked_intact(client: &Client, acked: &[(u64, Vec<u8>)]) {
    for (offset, bytes) in acked {
        assert_eq!(
            &client.consume("", *offset).await.unwrap().value,
            bytes,
            "acknowledged offset {offset}"
        );
    }
}

/// A panic at `work` of the partition's actors (SegmentActor when
/// `segment`, else LogActor): restarted, served again, nothing acknowledged
/// lost, and a follower of the stream gets every record after the fault.
async fn partition_actor_survives(segment: bool, work: Work, sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let node = Agent::start(config(dir.path(), sync)).await.unwrap();
    let client = Client::connect(node.rpc_addr()).await.unwrap();
    let mut acked = produce(&client, 0..20).await;
    assert_eq!(acked.len(), 20);
    let follower = Client::connect(node.rpc_addr()).await.unwrap();
    let mut stream = follower.consume_stream("", 0);

    let before = restarts(&node).await;
    let log = node.partitions().own().unwrap().clone();
    if segment {
        log.do_send(InjectSegmentPanic(work));
    } else {
        log.do_send(InjectPanic(work));
    }
    // Completions and timers fire with the work that follows (a sync after
    // an append, the checkpoint timer): keep producing until the restart.
    let mut i = 20;
    eventually("the actor restarted", || {
        let (client, node) = (&client, &node);
        i += 1;
        let at = i;
        async move {
            let _ = client.produce(&record(at)).await;
            restarts(node).await > before
        }
    })
    .await;
    // Served again: appends continue, every acknowledged record is there.
    acked.extend(produce(&client, 1000..1010).await);
    assert!(acked.len() >= 30, "appends are served after the restart");
    assert_acked_intact(&client, &acked).await;
    // The follower sees every record in order, without a gap, up to the
    // last acknowledged one (or a typed error it can resume from).
    let last = acked.iter().map(|(o, _)| *o).max().unwrap();
    let mut next = 0;
    while next <= last {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(r))) => {
                assert_eq!(r.offset, next, "in order, no gap");
                next += 1;
            }
            Ok(Some(Err(e))) => {
                // Typed, and resumable from where it stopped.
                assert!(!e.to_string().is_empty());
                stream = follower.consume_stream("", next);
            }
            Ok(None) => stream = follower.consume_stream("", next),
            Err(_) => panic!("the follower stalled at {next}"),
        }
    }
    node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn segment_actor_restarts_after_a_panic_in_a_handler() {
    partition_actor_survives(true, Work::Handler, "interval:5").await;
}

#[actix_rt::test]
async fn segment_actor_restarts_after_a_panic_in_a_sync_completion() {
    partition_actor_survives(true, Work::Completion, "always").await;
}

#[actix_rt::test]
async fn segment_actor_restarts_after_a_panic_in_its_sync_timer() {
    partition_actor_survives(true, Work::Timer, "interval:5").await;
}

#[actix_rt::test]
async fn log_actor_restarts_after_a_panic_in_a_handler() {
    partition_actor_survives(false, Work::Handler, "interval:5").await;
}

#[actix_rt::test]
async fn log_actor_restarts_after_a_panic_in_a_checkpoint_completion() {
    partition_actor_survives(false, Work::Completion, "always").await;
}

#[actix_rt::test]
async fn log_actor_restarts_after_a_panic_in_its_checkpoint_timer() {
    partition_actor_survives(false, Work::Timer, "interval:5").await;
}

#[actix_rt::test]
async fn rpc_front_survives_panics_in_its_handler_accept_loop_and_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = Agent::start(config(dir.path(), "interval:5"))
        .await
        .unwrap();
    let front = node.rpc().front();
    let steady = Client::connect(node.rpc_addr()).await.unwrap();
    let mut acked = produce(&steady, 0..5).await;

    // A handler panic: the front restarts; connections open go on, new ones are accepted.
    front.do_send(InjectPanic(Work::Handler));
    acked.extend(produce(&steady, 5..10).await);
    let fresh = Client::connect(node.rpc_addr()).await.unwrap();
    acked.extend(produce(&fresh, 10..15).await);

    // A panic in the accept loop: the connection it was accepting is lost
    // (its client sees an error); the listener is kept and accepts again.
    front.send(InjectPanic(Work::Completion)).await.unwrap();
    let victim = Client::connect(node.rpc_addr()).await;
    if let Ok(victim) = victim {
        assert!(
            victim.produce(b"lost").await.is_err(),
            "its connection was closed"
        );
    }
    let after = Client::connect(node.rpc_addr()).await.unwrap();
    acked.extend(produce(&after, 15..20).await);

    // A panic in a call: that connection is closed, no other is touched.
    front.send(InjectPanic(Work::Connection)).await.unwrap();
    let doomed = Client::connect(node.rpc_addr()).await.unwrap();
    let err = doomed.produce(b"doomed").await.unwrap_err();
    assert!(format!("{err:?}").contains("Disconnected"), "{err:?}");
    assert!(doomed.produce(b"again").await.is_err(), "closed for good");
    acked.extend(produce(&steady, 20..25).await);
    acked.extend(produce(&after, 25..30).await);
    assert_eq!(acked.len(), 30, "every other call was served");
    assert_acked_intact(&steady, &acked).await;
    node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn http_front_survives_panics_in_its_handler_accept_loop_and_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = Agent::start(config(dir.path(), "interval:5"))
        .await
        .unwrap();
    let front = node.http().front();
    let addr = node.http_addr();
    let healthz = move || async move { http_get(addr, "/healthz").await.map(|r| r.status) };
    assert_eq!(healthz().await.unwrap(), 200);
    front.do_send(InjectPanic(Work::Handler));
    assert_eq!(healthz().await.unwrap(), 200, "after a handler panic");
    front.send(InjectPanic(Work::Completion)).await.unwrap();
    assert!(
        healthz().await.is_err(),
        "the connection being accepted is lost"
    );
    assert_eq!(healthz().await.unwrap(), 200, "after an accept-loop panic");
    front.send(InjectPanic(Work::Connection)).await.unwrap();
    assert!(
        healthz().await.is_err(),
        "the panicking connection is closed"
    );
    assert_eq!(healthz().await.unwrap(), 200, "after a connection panic");
    node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn agent_restarts_after_a_panic_and_keeps_its_children_and_cluster_view() {
    let dir = tempfile::tempdir().unwrap();
    let node = Agent::start(config(dir.path(), "interval:5"))
        .await
        .unwrap();
    let client = Client::connect(node.rpc_addr()).await.unwrap();
    let acked = produce(&client, 0..5).await;
    node.agent().do_send(InjectPanic(Work::Handler));
    // The root's mailbox is served again (a message answered after the panic).
    node.agent()
        .send(InjectPanic(Work::Timer))
        .await
        .expect("the agent was restarted");
    let servers = client.servers().await.unwrap();
    assert!(servers.iter().any(|s| s.is_local), "cluster view kept");
    assert_acked_intact(&client, &acked).await;
    assert_eq!(produce(&client, 5..10).await.len(), 5);
    node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn a_spent_budget_escalates_to_the_root_which_shuts_the_node_down_as_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let node = Agent::start(config(dir.path(), "always")).await.unwrap();
    let client = Client::connect(node.rpc_addr()).await.unwrap();
    let acked = produce(&client, 0..20).await;
    assert_eq!(acked.len(), 20);
    let log = node.partitions().own().unwrap().clone();
    let http = node.http_addr();
    // Four LogActor failures within a minute: past its budget of three.
    for _ in 0..4 {
        log.do_send(InjectPanic(Work::Handler));
    }
    let ran = node.run_until(std::future::pending()).await.unwrap();
    let Stopped::Escalated(reason) = ran else {
        panic!("expected an escalation, got {ran:?}");
    };
    assert!(reason.contains("restart budget spent"), "{reason}");
    // Shut down gracefully: the HTTP front is gone with the node.
    assert!(http_get(http, "/healthz").await.is_err());
    drop(client);

    // What the orchestrator does next: start it again. Every acknowledged
    // record is there and the node serves.
    let node = Agent::start(config(dir.path(), "always")).await.unwrap();
    let client = Client::connect(node.rpc_addr()).await.unwrap();
    assert_acked_intact(&client, &acked).await;
    assert_eq!(produce(&client, 20..25).await.len(), 5);
    node.shutdown().await.unwrap();
}

/// Two in-process nodes, `b` joined to `a` (each replicates the other).
async fn pair(dirs: &[tempfile::TempDir; 2]) -> (Node, Node) {
    let a = Agent::start(named(dirs[0].path(), "pair-a", None))
        .await
        .unwrap();
    let b = Agent::start(named(dirs[1].path(), "pair-b", Some(a.gossip_addr())))
        .await
        .unwrap();
    (a, b)
}

fn named(dir: &std::path::Path, name: &str, join: Option<std::net::SocketAddr>) -> NodeConfig {
    let any = || Some("127.0.0.1:0".parse().unwrap());
    NodeConfig::resolve(ServeArgs {
        insecure: true,
        data_dir: Some(dir.to_path_buf()),
        node_name: Some(name.into()),
        rpc_addr: any(),
        gossip_addr: any(),
        http_addr: any(),
        join: join.map(|seed| vec![seed.to_string()]),
        ..ServeArgs::default()
    })
    .unwrap()
}

/// `node`'s replicator of `peer`, once it runs.
async fn replicator(node: &Node, peer: &str) -> actix::Addr<proglog::replication::ReplicatorActor> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = node.agent().send(GetReplicators).await.unwrap();
        if let Some((_, addr)) = list.into_iter().find(|(p, _)| p == peer) {
            return addr;
        }
        assert!(Instant::now() < deadline, "no replicator of {peer}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `node` holds `count` records of `partition`.
async fn replicated(node: &Node, partition: &str, count: u64) {
    eventually("replicated", || async move {
        match node.partitions().get(partition) {
            Ok(log) => log.send(Stats).await.unwrap().next_offset == count,
            Err(_) => false,
        }
    })
    .await;
}

async fn replicator_restarts(r: &actix::Addr<proglog::replication::ReplicatorActor>) -> u64 {
    r.send(GetStatus).await.map(|s| s.restarts).unwrap_or(0)
}

#[actix_rt::test]
async fn replicator_restarts_after_panics_in_its_handler_and_its_pull_and_catches_up() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (a, b) = pair(&dirs).await;
    let client = Client::connect(a.rpc_addr()).await.unwrap();
    let own = a.partitions().own_id().to_string();
    assert_eq!(produce(&client, 0..50).await.len(), 50);
    let r = replicator(&b, "pair-a").await;
    replicated(&b, &own, 50).await;

    r.do_send(InjectPanic(Work::Handler));
    eventually("restarted after the handler panic", || {
        let r = r.clone();
        async move { replicator_restarts(&r).await == 1 }
    })
    .await;
    // A panic after the next batch is appended (the pull's completion).
    r.send(InjectPanic(Work::Completion)).await.unwrap();
    assert_eq!(produce(&client, 50..100).await.len(), 50);
    eventually("restarted after the completion panic", || {
        let r = r.clone();
        async move { replicator_restarts(&r).await == 2 }
    })
    .await;
    // It resumes from the replica's end: every record, once, in order.
    assert_eq!(produce(&client, 100..150).await.len(), 50);
    replicated(&b, &own, 150).await;
    let copy = Client::connect(b.rpc_addr()).await.unwrap();
    for i in 0..150 {
        assert_eq!(copy.consume(&own, i).await.unwrap().value, record(i));
    }
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn replicator_restarts_after_a_panic_in_its_backoff_timer_and_the_node_serves_on() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (a, b) = pair(&dirs).await;
    let r = replicator(&b, "pair-a").await;
    r.send(InjectPanic(Work::Timer)).await.unwrap();
    // The leader goes away: the pull waits out a backoff, whose timer panics.
    a.shutdown().await.unwrap();
    eventually("restarted after the timer panic", || {
        let r = r.clone();
        async move { replicator_restarts(&r).await >= 1 }
    })
    .await;
    // The replicator's failure is its own: the node serves its partition.
    let client = Client::connect(b.rpc_addr()).await.unwrap();
    assert_eq!(produce(&client, 0..10).await.len(), 10);
    b.shutdown().await.unwrap();
}
