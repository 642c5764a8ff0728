//! Membership over real UDP sockets on loopback: several nodes in one actix
//! System, each on a free port.

// The only line that names the crate (becomes `proglog::membership`).
use proglog::membership;
use proglog::supervision::{InjectPanic, Work};

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use membership::{
    Crash, DownReason, GetLocal, GetMembers, GetStats, GossipStats, Leave, Member, MembershipActor,
    MembershipConfig, MembershipEvent, Subscribe, TapOutgoing,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::timeout;

/// Upper bound for anything that is not itself the property under test.
const GENEROUS: Duration = Duration::from_secs(10);
/// What the issue asks of a graceful leave.
const LEAVE_BOUND: Duration = Duration::from_secs(1);
/// Failure-detection bound of the default settings, plus scheduling slack
/// for a loaded 2-core machine.
const FAILURE_BOUND: Duration = Duration::from_millis(3000);
const FAILURE_MARGIN: Duration = Duration::from_millis(500);
/// How long "nothing happens" is watched for.
const QUIET: Duration = Duration::from_secs(2);
const KEY: &[u8] = b"proglog-test-cluster-key";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Forwards membership events into a channel the test can await.
struct Collector(UnboundedSender<MembershipEvent>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<MembershipEvent> for Collector {
    type Result = ();
    fn handle(&mut self, event: MembershipEvent, _ctx: &mut Self::Context) {
        let _ = self.0.send(event);
    }
}

/// One running node and the events it reports.
struct Node {
    name: String,
    addr: Addr<MembershipActor>,
    events: UnboundedReceiver<MembershipEvent>,
    local: Member,
}

fn config(
    name: &str,
    bind: SocketAddr,
    seeds: &[SocketAddr],
    key: Option<&[u8]>,
) -> MembershipConfig {
    MembershipConfig {
        node_name: name.to_owned(),
        bind_addr: bind,
        rpc_addr: SocketAddr::from(([127, 0, 0, 1], 18400)),
        seeds: seeds.to_vec(),
        cluster_key: key.map(<[u8]>::to_vec),
        ..MembershipConfig::default()
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Starts a node and subscribes to it, consuming the initial snapshot.
async fn start(cfg: MembershipConfig) -> Node {
    let name = cfg.node_name.clone();
    let addr = MembershipActor::start(cfg).expect("start membership");
    let (tx, mut events) = unbounded_channel();
    addr.send(Subscribe(Collector(tx).start().recipient()))
        .await
        .expect("subscribe");
    match timeout(GENEROUS, events.recv()).await {
        Ok(Some(MembershipEvent::Snapshot(_))) => {}
        other => panic!("{name}: expected an initial snapshot, got {other:?}"),
    }
    let local = addr.send(GetLocal).await.expect("local");
    Node {
        name,
        addr,
        events,
        local,
    }
}

/// Starts `names[0]` as the seed and the rest joining through it.
async fn cluster(names: &[&str], key: Option<&[u8]>) -> Vec<Node> {
    let seed = start(config(names[0], any_port(), &[], key)).await;
    let seeds = [seed.local.gossip_addr];
    let mut nodes = vec![seed];
    for name in &names[1..] {
        nodes.push(start(config(name, any_port(), &seeds, key)).await);
    }
    for i in 0..nodes.len() {
        let others: Vec<String> = nodes
            .iter()
            .filter(|n| n.name != nodes[i].name)
            .map(|n| n.name.clone())
            .collect();
        wait_all_up(&mut nodes[i], &others).await;
    }
    nodes
}

/// Waits for the first event matching `pred`, failing after `within`.
async fn expect_event(
    node: &mut Node,
    within: Duration,
    what: &str,
    mut pred: impl FnMut(&MembershipEvent) -> bool,
) -> MembershipEvent {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, node.events.recv()).await {
            Ok(Some(event)) if pred(&event) => return event,
            Ok(Some(_)) => continue,
            Ok(None) => panic!(
                "{}: event channel closed while waiting for {what}",
                node.name
            ),
            Err(_) => panic!("{}: no {what} within {within:?}", node.name),
        }
    }
}

/// Fails if any event matching `pred` arrives within `window`.
async fn expect_none(
    node: &mut Node,
    window: Duration,
    what: &str,
    mut pred: impl FnMut(&MembershipEvent) -> bool,
) {
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, node.events.recv()).await {
        assert!(!pred(&event), "{}: unexpected {what}: {event:?}", node.name);
    }
}

async fn wait_all_up(node: &mut Node, names: &[String]) {
    let mut missing: HashSet<String> = names.iter().cloned().collect();
    while !missing.is_empty() {
        let event = expect_event(node, GENEROUS, "PeerUp", |e| {
            matches!(e, MembershipEvent::PeerUp { .. })
        })
        .await;
        if let MembershipEvent::PeerUp { name, .. } = event {
            missing.remove(&name);
        }
    }
}

fn is_up(event: &MembershipEvent, who: &str) -> bool {
    matches!(event, MembershipEvent::PeerUp { name, .. } if name == who)
}

fn is_down(event: &MembershipEvent, who: &str) -> bool {
    matches!(event, MembershipEvent::PeerDown { name, .. } if name == who)
}

fn is_membership_change(event: &MembershipEvent) -> bool {
    matches!(
        event,
        MembershipEvent::PeerUp { .. } | MembershipEvent::PeerDown { .. }
    )
}

async fn members(node: &Node) -> Vec<String> {
    let mut names: Vec<String> = node
        .addr
        .send(GetMembers)
        .await
        .expect("members")
        .into_iter()
        .map(|m| m.name)
        .collect();
    names.sort();
    names
}

async fn stats(node: &Node) -> GossipStats {
    node.addr.send(GetStats).await.expect("stats")
}

/// Collects what `node` sends for `window` (a wire tap, to replay later).
async fn capture(node: &Node, window: Duration) -> Vec<(SocketAddr, Bytes)> {
    let (tx, mut rx) = unbounded_channel();
    node.addr.send(TapOutgoing(tx)).await.expect("tap");
    let deadline = tokio::time::Instant::now() + window;
    let mut packets = Vec::new();
    while let Ok(Some(packet)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        packets.push(packet);
    }
    packets
}

/// A small deterministic generator for junk packets.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Sends `packets` in small bursts, waiting for the receiver to count each
/// burst, so that the kernel's socket buffer never overflows and every
/// datagram is accounted for.
async fn send_paced(from: &UdpSocket, node: &Node, to: SocketAddr, packets: &[Vec<u8>]) {
    for burst in packets.chunks(20) {
        let seen = stats(node).await.packets_in;
        for packet in burst {
            from.send_to(packet, to).await.unwrap();
        }
        let deadline = Instant::now() + GENEROUS;
        while stats(node).await.packets_in < seen + burst.len() as u64 {
            assert!(Instant::now() < deadline, "receiver stalled");
            tokio::task::yield_now().await;
        }
    }
}

#[actix_rt::test]
async fn three_members_join_through_one_seed_and_see_each_other() {
    init_tracing();
    let nodes = cluster(&["a", "b", "c"], Some(KEY)).await;
    assert_eq!(members(&nodes[0]).await, ["b", "c"]);
    assert_eq!(members(&nodes[1]).await, ["a", "c"]);
    assert_eq!(members(&nodes[2]).await, ["a", "b"]);
    let listed = nodes[0].addr.send(GetMembers).await.unwrap();
    let b = listed.iter().find(|m| m.name == "b").unwrap();
    assert_eq!(b, &nodes[1].local, "peers see the advertised identity");
}

#[actix_rt::test]
async fn a_seed_given_by_host_name_is_looked_up_and_one_that_does_not_resolve_is_skipped() {
    let mut a = start(config("a", any_port(), &[], None)).await;
    let port = a.local.gossip_addr.port();
    let mut cfg = config("b", any_port(), &[], None);
    cfg.seed_names = vec![
        "no-such-node.invalid:8401".to_string(),
        format!("localhost:{port}"),
    ];
    let mut b = start(cfg).await;
    wait_all_up(&mut b, &["a".to_string()]).await;
    wait_all_up(&mut a, &["b".to_string()]).await;
}

#[actix_rt::test]
async fn graceful_leave_is_reported_as_left_within_one_second() {
    init_tracing();
    let mut nodes = cluster(&["a", "b", "c"], Some(KEY)).await;
    let leaving = nodes.pop().unwrap();
    leaving.addr.send(Leave).await.unwrap().expect("leave");
    let left_at = Instant::now();
    for node in &mut nodes {
        let event = expect_event(node, LEAVE_BOUND, "PeerDown(c)", |e| is_down(e, "c")).await;
        assert_eq!(
            event,
            MembershipEvent::PeerDown {
                name: "c".into(),
                reason: DownReason::Left
            }
        );
    }
    assert!(left_at.elapsed() <= LEAVE_BOUND);
    assert_eq!(members(&nodes[0]).await, ["b"]);
    assert_eq!(members(&nodes[1]).await, ["a"]);
    assert!(members(&leaving).await.is_empty());
    assert!(
        leaving.addr.send(Leave).await.unwrap().is_err(),
        "leaving twice is an error"
    );
}

#[actix_rt::test]
async fn killed_member_is_reported_failed_then_rejoins_with_newer_incarnation() {
    init_tracing();
    let mut nodes = cluster(&["a", "b", "c"], Some(KEY)).await;
    let victim = nodes.pop().unwrap();
    let seed = nodes[0].local.gossip_addr;
    victim.addr.send(Crash).await.unwrap();
    let killed_at = Instant::now();
    for node in &mut nodes {
        let event = expect_event(node, FAILURE_BOUND + FAILURE_MARGIN, "PeerDown(c)", |e| {
            is_down(e, "c")
        })
        .await;
        assert_eq!(
            event,
            MembershipEvent::PeerDown {
                name: "c".into(),
                reason: DownReason::Failed
            }
        );
        eprintln!("{} saw c failed after {:?}", node.name, killed_at.elapsed());
    }

    // Same name, same port: a restart of the process.
    let reborn = start(config("c", victim.local.gossip_addr, &[seed], Some(KEY))).await;
    assert!(reborn.local.incarnation > victim.local.incarnation);
    for node in &mut nodes {
        let event = expect_event(node, GENEROUS, "PeerUp(c)", |e| is_up(e, "c")).await;
        let MembershipEvent::PeerUp { incarnation, .. } = event else {
            unreachable!()
        };
        assert_eq!(incarnation, reborn.local.incarnation);
    }
    assert_eq!(members(&nodes[0]).await, ["b", "c"]);
}

#[actix_rt::test]
async fn member_with_wrong_key_is_never_admitted() {
    init_tracing();
    let mut nodes = cluster(&["a", "b"], Some(KEY)).await;
    let seeds: Vec<SocketAddr> = nodes.iter().map(|n| n.local.gossip_addr).collect();
    let mut intruder = start(config(
        "mallory",
        any_port(),
        &seeds,
        Some(b"not-the-cluster-key"),
    ))
    .await;
    let unkeyed = start(config("eve", any_port(), &seeds, None)).await;

    // Long enough for a join (~ms), several join retries and a full
    // failure-detection cycle.
    expect_none(
        &mut nodes[0],
        QUIET,
        "membership change",
        is_membership_change,
    )
    .await;
    expect_none(
        &mut nodes[1],
        Duration::ZERO,
        "membership change",
        is_membership_change,
    )
    .await;
    expect_none(
        &mut intruder,
        Duration::ZERO,
        "membership change",
        is_membership_change,
    )
    .await;
    assert_eq!(members(&nodes[0]).await, ["b"]);
    assert_eq!(members(&nodes[1]).await, ["a"]);
    assert!(members(&intruder).await.is_empty());
    assert!(members(&unkeyed).await.is_empty());

    let rejected: u64 = {
        let mut sum = 0;
        for node in &nodes {
            sum += stats(node).await.dropped_bad_auth;
        }
        sum
    };
    assert!(
        rejected >= 4,
        "both strangers' announces counted, got {rejected}"
    );
    assert!(stats(&intruder).await.packets_out > 0);
}

#[actix_rt::test]
async fn junk_flood_changes_nothing_and_is_counted() {
    init_tracing();
    // Keyed cluster: every junk datagram must be dropped and counted.
    let mut nodes = cluster(&["a", "b"], Some(KEY)).await;
    let target = nodes[0].local.gossip_addr;
    let genuine = capture(&nodes[1], Duration::from_millis(600)).await;
    assert!(!genuine.is_empty());
    let before = stats(&nodes[0]).await;

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut junk: Vec<Vec<u8>> = Vec::new();
    for i in 0..300 {
        let len = (rng.next() % 1500) as usize;
        junk.push(rng.bytes(len));
        let (_, real) = &genuine[i % genuine.len()];
        let cut = (rng.next() as usize) % real.len();
        junk.push(real[..cut].to_vec()); // truncated
        let mut flipped = real.to_vec();
        let at = (rng.next() as usize) % flipped.len();
        flipped[at] ^= 1 << (rng.next() % 8); // one bit flipped
        junk.push(flipped);
    }
    junk.push(vec![0xA2; 2_000]); // oversized
    junk.push(vec![0xA1; 60_000]); // oversized, plain version byte
    junk.push(Vec::new()); // empty
    let flood = UdpSocket::bind(any_port()).await.unwrap();
    send_paced(&flood, &nodes[0], target, &junk).await;

    expect_none(
        &mut nodes[0],
        QUIET,
        "membership change",
        is_membership_change,
    )
    .await;
    expect_none(
        &mut nodes[1],
        Duration::ZERO,
        "membership change",
        is_membership_change,
    )
    .await;
    assert_eq!(members(&nodes[0]).await, ["b"]);
    let after = stats(&nodes[0]).await;
    let dropped = (after.dropped_bad_auth - before.dropped_bad_auth)
        + (after.dropped_malformed - before.dropped_malformed);
    assert_eq!(
        dropped,
        junk.len() as u64,
        "every junk datagram dropped: {after:?}"
    );
    assert!(after.dropped_malformed - before.dropped_malformed >= 3);

    // Unkeyed cluster: junk reaches foca's decoder, which must refuse it.
    let mut open = cluster(&["x", "y"], None).await;
    let target = open[0].local.gossip_addr;
    let before = stats(&open[0]).await;
    let junk: Vec<Vec<u8>> = (0..500)
        .map(|_| {
            let len = 1 + (rng.next() % 1400) as usize;
            let mut packet = rng.bytes(len);
            packet[0] = 0xA1; // the plain version byte, so foca sees the rest
            packet
        })
        .collect();
    send_paced(&flood, &open[0], target, &junk).await;
    expect_none(
        &mut open[0],
        QUIET,
        "membership change",
        is_membership_change,
    )
    .await;
    expect_none(
        &mut open[1],
        Duration::ZERO,
        "membership change",
        is_membership_change,
    )
    .await;
    assert_eq!(members(&open[0]).await, ["y"]);
    let after = stats(&open[0]).await;
    assert!(
        after.dropped_malformed - before.dropped_malformed >= 450,
        "junk refused by the decoder: {after:?}"
    );
}

#[actix_rt::test]
async fn replayed_packets_neither_resurrect_a_left_member_nor_kill_a_live_one() {
    init_tracing();
    let mut nodes = cluster(&["a", "b", "c"], Some(KEY)).await;
    let c = nodes.pop().unwrap();
    let seed = nodes[0].local.gossip_addr;

    // Record c's datagrams, its leave included.
    let (tx, mut tap) = unbounded_channel();
    c.addr.send(TapOutgoing(tx)).await.unwrap();
    let b_old = capture(&nodes[1], Duration::from_millis(600)).await;
    c.addr.send(Leave).await.unwrap().expect("leave");
    let mut c_old = Vec::new();
    while let Ok(Some(packet)) = timeout(Duration::from_millis(100), tap.recv()).await {
        c_old.push(packet);
    }
    assert!(c_old.len() > 2, "captured c's alive and leave datagrams");
    for node in &mut nodes {
        expect_event(node, LEAVE_BOUND, "PeerDown(c)", |e| is_down(e, "c")).await;
    }

    let replayer = UdpSocket::bind(any_port()).await.unwrap();
    let replay = |packets: Vec<(SocketAddr, Bytes)>| {
        let replayer = &replayer;
        async move {
            for (dst, packet) in packets {
                replayer.send_to(&packet, dst).await.unwrap();
            }
        }
    };

    // 1. A member that left stays gone, and old news about b changes nothing.
    replay(c_old.clone()).await;
    replay(b_old.clone()).await;
    for node in &mut nodes {
        expect_none(node, QUIET / 2, "membership change", is_membership_change).await;
    }
    assert_eq!(members(&nodes[0]).await, ["b"]);

    // 2. c comes back; replaying its old leave must not take the new life down.
    let reborn = start(config("c", c.local.gossip_addr, &[seed], Some(KEY))).await;
    for node in &mut nodes {
        expect_event(node, GENEROUS, "PeerUp(c)", |e| is_up(e, "c")).await;
    }
    replay(c_old).await;
    replay(b_old).await;
    for node in &mut nodes {
        expect_none(node, QUIET, "membership change", is_membership_change).await;
    }
    let listed = nodes[0].addr.send(GetMembers).await.unwrap();
    let seen_c = listed
        .iter()
        .find(|m| m.name == "c")
        .expect("c is a member");
    assert_eq!(seen_c.incarnation, reborn.local.incarnation);
    assert_eq!(members(&nodes[1]).await, ["a", "c"]);
}

#[actix_rt::test]
async fn a_panic_in_a_handler_restarts_membership_which_rejoins() {
    restart_sends_fresh_snapshot_and_node_stays_member(Work::Handler).await;
}

#[actix_rt::test]
async fn a_panic_in_the_gossip_task_restarts_membership_which_rejoins() {
    restart_sends_fresh_snapshot_and_node_stays_member(Work::Completion).await;
}

#[actix_rt::test]
async fn a_panic_at_a_gossip_timer_restarts_membership_which_rejoins() {
    restart_sends_fresh_snapshot_and_node_stays_member(Work::Timer).await;
}

/// A panic at `work` restarts the MembershipActor: it rejoins under a newer
/// incarnation, hands its subscribers a fresh snapshot, and stays a member.
async fn restart_sends_fresh_snapshot_and_node_stays_member(work: Work) {
    init_tracing();
    let mut nodes = cluster(&["a", "b", "c"], Some(KEY)).await;
    let before = nodes[1].local.incarnation;
    nodes[1].addr.do_send(InjectPanic(work));

    let event = expect_event(&mut nodes[1], GENEROUS, "fresh Snapshot", |e| {
        matches!(e, MembershipEvent::Snapshot(_))
    })
    .await;
    let MembershipEvent::Snapshot(peers) = event else {
        unreachable!()
    };
    let mut names: Vec<&str> = peers.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "c"], "rejoined with the full view");

    let after = nodes[1].addr.send(GetLocal).await.unwrap();
    assert!(
        after.incarnation > before,
        "restart took a newer incarnation"
    );
    for i in [0, 2] {
        let event = expect_event(&mut nodes[i], GENEROUS, "PeerUp(b)", |e| is_up(e, "b")).await;
        let MembershipEvent::PeerUp { incarnation, .. } = event else {
            unreachable!()
        };
        assert_eq!(incarnation, after.incarnation);
    }
    // Still a member everywhere, and still gossiping.
    expect_none(&mut nodes[0], QUIET, "PeerDown(b)", |e| is_down(e, "b")).await;
    assert_eq!(members(&nodes[0]).await, ["b", "c"]);
    assert_eq!(members(&nodes[1]).await, ["a", "c"]);
}
