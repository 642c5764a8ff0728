//! Membership numbers on loopback, in one process (one actix System thread
//! running every node): time to full membership, failure-detection time at
//! the default settings, and steady-state gossip traffic per member.
//!
//! Run: `cargo bench --bench membership` (plain `main`, no harness).

// The only line that names the crate (becomes `proglog::membership`).
use proglog::membership;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use membership::{
    Crash, DownReason, GetLocal, GetStats, GossipStats, Leave, MembershipActor, MembershipConfig,
    MembershipEvent, Subscribe,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

const KEY: &[u8] = b"proglog-bench-cluster-key";
const GIVE_UP: Duration = Duration::from_secs(30);

/// Forwards a node's events, tagged with the node's index.
struct Tagged(usize, UnboundedSender<(usize, Instant, MembershipEvent)>);

impl Actor for Tagged {
    type Context = Context<Self>;
}

impl Handler<MembershipEvent> for Tagged {
    type Result = ();
    fn handle(&mut self, event: MembershipEvent, _ctx: &mut Self::Context) {
        let _ = self.1.send((self.0, Instant::now(), event));
    }
}

struct Cluster {
    nodes: Vec<Addr<MembershipActor>>,
    events: UnboundedReceiver<(usize, Instant, MembershipEvent)>,
}

fn config(i: usize, seeds: &[SocketAddr]) -> MembershipConfig {
    MembershipConfig {
        node_name: format!("n{i}"),
        bind_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        seeds: seeds.to_vec(),
        cluster_key: Some(KEY.to_vec()),
        ..MembershipConfig::default()
    }
}

/// Starts `n` nodes, all joining through the first, and waits until every
/// node sees every other; returns the cluster and the time that took.
async fn full_cluster(n: usize) -> (Cluster, Duration) {
    let (tx, events) = unbounded_channel();
    let t0 = Instant::now();
    let seed = MembershipActor::start(config(0, &[])).expect("start seed");
    let seed_addr = seed.send(GetLocal).await.expect("local").gossip_addr;
    let mut nodes = vec![seed];
    for i in 1..n {
        nodes.push(MembershipActor::start(config(i, &[seed_addr])).expect("start node"));
    }
    for (i, node) in nodes.iter().enumerate() {
        node.do_send(Subscribe(Tagged(i, tx.clone()).start().recipient()));
    }
    let mut cluster = Cluster { nodes, events };
    let mut seen: Vec<HashSet<String>> = vec![HashSet::new(); n];
    while seen.iter().any(|s| s.len() < n - 1) {
        let (i, _, event) = next(&mut cluster).await;
        match event {
            MembershipEvent::PeerUp { name, .. } => {
                seen[i].insert(name);
            }
            MembershipEvent::Snapshot(members) => {
                seen[i] = members.into_iter().map(|m| m.name).collect();
            }
            MembershipEvent::PeerDown { name, .. } => {
                seen[i].remove(&name);
            }
        }
    }
    (cluster, t0.elapsed())
}

async fn next(cluster: &mut Cluster) -> (usize, Instant, MembershipEvent) {
    match tokio::time::timeout(GIVE_UP, cluster.events.recv()).await {
        Ok(Some(event)) => event,
        _ => panic!("no membership event within {GIVE_UP:?}"),
    }
}

async fn teardown(cluster: Cluster) {
    for node in &cluster.nodes {
        let _ = node.send(Crash).await;
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Crashes the last node and returns (first, last) survivor detection times.
async fn failure_detection(n: usize) -> (Duration, Duration) {
    let (mut cluster, _) = full_cluster(n).await;
    // Let the cluster settle into steady state first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while cluster.events.try_recv().is_ok() {}
    let victim = cluster.nodes.len() - 1;
    let victim_name = format!("n{victim}");
    let killed = Instant::now();
    cluster.nodes[victim].send(Crash).await.expect("crash");
    let mut reported: HashMap<usize, Duration> = HashMap::new();
    while reported.len() < n - 1 {
        let (i, at, event) = next(&mut cluster).await;
        if let MembershipEvent::PeerDown { name, reason } = event
            && name == victim_name
        {
            assert_eq!(reason, DownReason::Failed);
            reported.insert(i, at - killed);
        }
    }
    teardown(cluster).await;
    let first = reported.values().min().copied().unwrap_or_default();
    let last = reported.values().max().copied().unwrap_or_default();
    (first, last)
}

/// Makes the last node leave; returns the time until every survivor saw
/// it go, and how many of them reported it as `Left` (not `Failed`).
async fn leave_propagation(n: usize) -> (Duration, usize) {
    let (mut cluster, _) = full_cluster(n).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    while cluster.events.try_recv().is_ok() {}
    let leaver = cluster.nodes.len() - 1;
    let leaver_name = format!("n{leaver}");
    let t = Instant::now();
    cluster.nodes[leaver]
        .send(Leave)
        .await
        .expect("mailbox")
        .expect("leave");
    let mut reasons: HashMap<usize, DownReason> = HashMap::new();
    let mut last = Duration::ZERO;
    while reasons.len() < n - 1 {
        let (i, at, event) = next(&mut cluster).await;
        if let MembershipEvent::PeerDown { name, reason } = event
            && name == leaver_name
        {
            reasons.insert(i, reason);
            last = last.max(at - t);
        }
    }
    teardown(cluster).await;
    let left = reasons.values().filter(|r| **r == DownReason::Left).count();
    (last, left)
}

async fn totals(cluster: &Cluster) -> GossipStats {
    let mut sum = GossipStats::default();
    for node in &cluster.nodes {
        let s = node.send(GetStats).await.expect("stats");
        sum.packets_in += s.packets_in;
        sum.packets_out += s.packets_out;
        sum.bytes_in += s.bytes_in;
        sum.bytes_out += s.bytes_out;
    }
    sum
}

/// Per-member packets/s and bytes/s sent, averaged over `window`.
async fn steady_state(n: usize, window: Duration) -> (f64, f64) {
    let (cluster, _) = full_cluster(n).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = totals(&cluster).await;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let after = totals(&cluster).await;
    let secs = t.elapsed().as_secs_f64();
    teardown(cluster).await;
    let per = |a: u64, b: u64| (a - b) as f64 / secs / n as f64;
    (
        per(after.packets_out, before.packets_out),
        per(after.bytes_out, before.bytes_out),
    )
}

fn main() {
    let system = actix_rt::System::new();
    system.block_on(async {
        let d = MembershipConfig::default();
        println!(
            "settings: probe_period {:?}, probe_rtt {:?}, suspect_to_down_after {:?}, \
             gossip_interval {:?}, HMAC-SHA256 on",
            d.probe_period, d.probe_rtt, d.suspect_to_down_after, d.gossip_interval
        );

        for (n, runs) in [(3usize, 5usize), (16, 3)] {
            let mut times = Vec::new();
            for _ in 0..runs {
                let (cluster, took) = full_cluster(n).await;
                times.push(took);
                teardown(cluster).await;
            }
            println!(
                "full membership, {n:>2} members: median {} (runs: {})",
                ms(median(times.clone())),
                times.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")
            );
        }

        for n in [3usize, 16] {
            let mut firsts = Vec::new();
            let mut lasts = Vec::new();
            for _ in 0..5 {
                let (first, last) = failure_detection(n).await;
                firsts.push(first);
                lasts.push(last);
            }
            println!(
                "failure detection, {n:>2} members (crash -> PeerDown Failed): \
                 median first observer {}, median last observer {} (last per run: {})",
                ms(median(firsts)),
                ms(median(lasts.clone())),
                lasts.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")
            );
        }

        for n in [3usize, 16] {
            let mut lasts = Vec::new();
            let mut left = 0;
            for _ in 0..5 {
                let (last, l) = leave_propagation(n).await;
                lasts.push(last);
                left += l;
            }
            println!(
                "graceful leave, {n:>2} members: median last observer {} \
                 ({left}/{} reports said Left)",
                ms(median(lasts)),
                5 * (n - 1)
            );
        }

        for n in [3usize, 16] {
            let (pps, bps) = steady_state(n, Duration::from_secs(10)).await;
            println!(
                "steady state, {n:>2} members, 10 s: {pps:.1} packets/s and {bps:.0} bytes/s \
                 sent per member (received is the same on average)"
            );
        }
    });
}
