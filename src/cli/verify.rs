//! `proglog verify`: a checker for a running cluster, in the manner of
//! Jepsen's and Kafka's verifiable clients.
//!
//! For `--duration` seconds it produces unique values with `acks=all`
//! through the cluster-aware client (several writers, small batches) and
//! follows every partition; then it waits for every holder of every
//! partition to agree on the end and checks, over the offsets this run
//! wrote:
//! - every acknowledged record is at its offset, with its value, on every
//!   holder of its partition (else it counts as **lost**);
//! - every holder is record for record identical to the partition's leader
//!   (or, with the leader gone, to the first holder);
//! - offsets are contiguous, on every holder and in every followed stream;
//! - no value is in the log twice, except values whose produce had an
//!   unknown outcome (`indeterminate`, `replicationTimeout`, a lost
//!   connection or a call timeout): the client never resends, so those are
//!   counted, not failures; a value whose produce was refused (typed "not
//!   appended") must not be in the log at all.
//!
//! Prints one JSON line of counts and a one-line verdict; exits 1 on any
//! violation.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use proglog::client::{Acks, Client, ClientError, ClusterClient};

use super::client::ConnectArgs;
use super::{BoxError, outln};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The nodes' RPC addresses, comma-separated: produces and follows go
    /// through the cluster, checks ask every one of them.
    #[command(flatten)]
    connect: ConnectArgs,
    /// Seconds to produce for.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Largest batch a writer sends (sizes vary from 1 to this).
    #[arg(long, default_value_t = 4)]
    max_batch: usize,
    /// Seconds one produce may take before its outcome counts as unknown.
    #[arg(long, default_value_t = 10)]
    call_timeout: u64,
    /// Seconds the holders may take to agree once producing stops.
    #[arg(long, default_value_t = 120)]
    settle_timeout: u64,
    /// Tag put in every value of this run [default: random].
    #[arg(long)]
    run: Option<String>,
}

/// A partition's records as one holder has them: (offset, value).
type HolderCopy = Vec<(u64, Vec<u8>)>;

/// What the writers learnt.
#[derive(Default)]
struct Outcomes {
    /// (partition, offset, value) of every acknowledged record.
    acked: Vec<(String, u64, Vec<u8>)>,
    /// Values of produces whose outcome is unknown.
    indeterminate: HashSet<Vec<u8>>,
    /// Values of produces refused as not appended.
    refused: HashSet<Vec<u8>>,
    /// Error kinds seen, with counts.
    errors: BTreeMap<String, u64>,
}

/// The verdict's counts.
#[derive(Default, serde::Serialize)]
struct Report {
    run: String,
    acknowledged: u64,
    lost: u64,
    indeterminate: u64,
    indeterminate_appended: u64,
    duplicates: u64,
    duplicates_of_indeterminate: u64,
    refused: u64,
    refused_but_appended: u64,
    divergent: u64,
    gaps: u64,
    follow_violations: u64,
    followed: u64,
    partitions: usize,
    holders_checked: usize,
    max_replica_lag: u64,
    settle_ms: u64,
    errors: BTreeMap<String, u64>,
    violations: Vec<String>,
}

impl Report {
    fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(what);
        }
    }

    fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.refused_but_appended == 0
            && self.divergent == 0
            && self.gaps == 0
            && self.follow_violations == 0
            && self.violations.is_empty()
    }
}

pub fn run(args: Args) -> Result<(), BoxError> {
    let report = super::block_on(check(args))?;
    let verdict = format!(
        "acknowledged={} lost={} duplicates={} (of indeterminate: {}) indeterminate={} \
         refused={} divergent={} gaps={} followed={} partitions={} max_lag={} settle={}ms",
        report.acknowledged,
        report.lost,
        report.duplicates,
        report.duplicates_of_indeterminate,
        report.indeterminate,
        report.refused,
        report.divergent,
        report.gaps,
        report.followed,
        report.partitions,
        report.max_replica_lag,
        report.settle_ms,
    );
    let ok = report.ok();
    // The exit status is the verdict, whatever became of the output: a
    // failed check is reported even if the report's reader went away.
    let printed = print_report(&report, ok, &verdict);
    if ok {
        return printed;
    }
    for v in &report.violations {
        eprintln!("verify: violation: {v}");
    }
    Err("the cluster broke a guarantee (see the violations above)".into())
}

/// The report as a JSON line, then the verdict's line.
fn print_report(report: &Report, ok: bool, verdict: &str) -> Result<(), BoxError> {
    outln!("{}", serde_json::to_string(report)?);
    outln!("verify: {} {verdict}", if ok { "OK" } else { "FAIL" });
    Ok(())
}

/// A tiny deterministic generator for batch sizes (no need for more).
fn next_random(state: &Cell<u64>) -> u64 {
    let mut x = state.get();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    state.set(x);
    x
}

fn error_kind(e: &ClientError) -> String {
    let text = format!("{e:?}");
    text.split(['(', ' ', '{'])
        .next()
        .unwrap_or("Unknown")
        .to_string()
}

async fn check(args: Args) -> Result<Report, BoxError> {
    let addrs: Vec<String> = args
        .connect
        .addr
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let run = args
        .run
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_string());
    let prefix = format!("{run}:").into_bytes();
    let settle_timeout = Duration::from_secs(args.settle_timeout);

    // The cluster, and where every partition stood before this run.
    let cluster = retry(settle_timeout, || async {
        Ok::<_, BoxError>(
            args.connect
                .connect_cluster(&addrs)
                .await?
                .with_acks(Acks::All),
        )
    })
    .await?;
    let start = retry(settle_timeout, || starting_offsets(&args.connect, &addrs)).await?;
    tracing::info!(%run, partitions = start.len(), "verify: producing");

    let outcomes = Rc::new(RefCell::new(Outcomes::default()));
    let max_lag = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let cluster = Rc::new(cluster);

    // Followers: every partition known at the start, from where it stood.
    let followed: Rc<RefCell<HashMap<String, HolderCopy>>> = Rc::default();
    let follow_violations = Rc::new(Cell::new(0u64));
    let mut followers = Vec::new();
    for (partition, offset) in &start {
        followers.push(tokio::task::spawn_local(follow(
            cluster.clone(),
            partition.clone(),
            *offset,
            followed.clone(),
            follow_violations.clone(),
        )));
    }

    // Writers.
    let mut writers = Vec::new();
    for w in 0..args.writers.max(1) {
        let (cluster, outcomes, run) = (cluster.clone(), outcomes.clone(), run.clone());
        let (max_batch, call_timeout) = (
            args.max_batch.max(1),
            Duration::from_secs(args.call_timeout),
        );
        writers.push(tokio::task::spawn_local(async move {
            let random = Cell::new(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let n = 1 + (next_random(&random) % max_batch as u64) as usize;
                let values: Vec<Vec<u8>> = (0..n)
                    .map(|_| {
                        seq += 1;
                        format!("{run}:{w}:{seq}").into_bytes()
                    })
                    .collect();
                match tokio::time::timeout(call_timeout, cluster.produce_batch(&values)).await {
                    Ok(Ok(batch)) => {
                        let mut o = outcomes.borrow_mut();
                        for (offset, value) in batch.offsets.zip(values) {
                            o.acked.push((batch.partition.clone(), offset, value));
                        }
                    }
                    Ok(Err(e)) => {
                        {
                            let mut o = outcomes.borrow_mut();
                            *o.errors.entry(error_kind(&e)).or_default() += 1;
                            if e.maybe_appended() {
                                o.indeterminate.extend(values);
                            } else {
                                o.refused.extend(values);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => {
                        let mut o = outcomes.borrow_mut();
                        *o.errors.entry("CallTimeout".into()).or_default() += 1;
                        o.indeterminate.extend(values);
                    }
                }
            }
        }));
    }

    // Replica lag, as the nodes report it, while producing.
    let sampler = {
        let (connect, addrs, max_lag) = (args.connect.clone(), addrs.clone(), max_lag.clone());
        tokio::task::spawn_local(async move {
            let mut clients: HashMap<String, Client> = HashMap::new();
            loop {
                for addr in &addrs {
                    if !clients.get(addr).is_some_and(Client::is_connected) {
                        match tokio::time::timeout(Duration::from_secs(2), connect.connect_to(addr))
                            .await
                        {
                            Ok(Ok(c)) => {
                                clients.insert(addr.clone(), c);
                            }
                            _ => continue,
                        }
                    }
                    let Some(client) = clients.get(addr) else {
                        continue;
                    };
                    if let Ok(Ok(list)) =
                        tokio::time::timeout(Duration::from_secs(2), client.partitions()).await
                    {
                        for p in list.iter().filter(|p| p.following) {
                            max_lag.set(max_lag.get().max(p.lag));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    for writer in writers {
        let _ = writer.await;
    }
    sampler.abort();
    tracing::info!(%run, "verify: producing stopped; waiting for the holders to agree");

    // Every holder at the same end.
    let settle_started = Instant::now();
    let ends = retry(settle_timeout, || agreed_ends(&args.connect, &addrs)).await?;
    let mut report = Report {
        run: run.clone(),
        settle_ms: settle_started.elapsed().as_millis() as u64,
        max_replica_lag: max_lag.get(),
        partitions: ends.len(),
        ..Report::default()
    };

    // Every holder's copy of what this run wrote, against the reference.
    let mut reference: HashMap<String, HolderCopy> = HashMap::new();
    for (partition, (end, holders, owner)) in &ends {
        let from = start.get(partition).copied().unwrap_or(0).min(*end);
        let mut copies = Vec::new();
        for addr in holders {
            let client = args.connect.connect_to(addr).await?;
            let copy = read_range(&client, partition, from, *end).await?;
            report.holders_checked += 1;
            for (expected, (offset, _)) in (from..).zip(copy.iter()) {
                if *offset != expected {
                    report.gaps += 1;
                    report.violation(format!(
                        "{partition} on {addr}: offset {offset} where {expected} was due"
                    ));
                    break;
                }
            }
            if copy.len() as u64 != end - from {
                report.gaps += 1;
                report.violation(format!(
                    "{partition} on {addr}: {} records in [{from}, {end})",
                    copy.len()
                ));
            }
            copies.push((addr.clone(), copy));
        }
        let lead = copies
            .iter()
            .position(|(addr, _)| Some(addr) == owner.as_ref())
            .unwrap_or(0);
        let Some((lead_addr, lead_copy)) = copies.get(lead).cloned() else {
            continue;
        };
        for (addr, copy) in &copies {
            if copy != &lead_copy {
                report.divergent += 1;
                let at = copy
                    .iter()
                    .zip(lead_copy.iter())
                    .find(|(a, b)| a != b)
                    .map_or(from + copy.len().min(lead_copy.len()) as u64, |(a, _)| a.0);
                report.violation(format!(
                    "{partition}: {addr} differs from {lead_addr} at offset {at}"
                ));
            }
        }
        reference.insert(partition.clone(), lead_copy);
    }

    // Acknowledged records, on every holder (copies equal the reference or
    // were counted as divergent above).
    let outcomes = outcomes.take();
    report.acknowledged = outcomes.acked.len() as u64;
    report.indeterminate = outcomes.indeterminate.len() as u64;
    report.refused = outcomes.refused.len() as u64;
    report.errors = outcomes.errors;
    for (partition, offset, value) in &outcomes.acked {
        let found = reference.get(partition).and_then(|copy| {
            let first = copy.first()?.0;
            copy.get(offset.checked_sub(first)? as usize)
        });
        if found.is_none_or(|(o, v)| o != offset || v != value) {
            report.lost += 1;
            report.violation(format!(
                "acknowledged {} at {partition}/{offset} is not there",
                String::from_utf8_lossy(value)
            ));
        }
    }

    // Each value of this run at most once.
    let mut seen: HashMap<&[u8], u64> = HashMap::new();
    for copy in reference.values() {
        for (_, value) in copy {
            if value.starts_with(&prefix) {
                *seen.entry(value.as_slice()).or_default() += 1;
            }
        }
    }
    for (value, count) in &seen {
        if outcomes.indeterminate.contains(*value) {
            report.indeterminate_appended += 1;
            report.duplicates_of_indeterminate += count - 1;
        } else if *count > 1 {
            report.duplicates += count - 1;
            report.violation(format!(
                "{} is in the log {count} times",
                String::from_utf8_lossy(value)
            ));
        }
        if outcomes.refused.contains(*value) {
            report.refused_but_appended += 1;
            report.violation(format!(
                "{} was refused as not appended, but is in the log",
                String::from_utf8_lossy(value)
            ));
        }
    }

    // Followers: contiguous (checked as they read), and what they read is
    // what the holders have, up to the end (waiting for them to get there).
    let follow_deadline = Instant::now() + Duration::from_secs(30);
    for (partition, copy) in &reference {
        let want = copy.len();
        loop {
            let have = followed.borrow().get(partition).map_or(0, Vec::len);
            if have >= want || Instant::now() > follow_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = followed
            .borrow()
            .get(partition)
            .cloned()
            .unwrap_or_default();
        report.followed += got.len() as u64;
        if start.contains_key(partition) && got.get(..want) != Some(copy.as_slice()) {
            follow_violations.set(follow_violations.get() + 1);
            report.violation(format!(
                "{partition}: the followed stream ({} records) is not the log ({want})",
                got.len()
            ));
        }
    }
    for follower in followers {
        follower.abort();
    }
    report.follow_violations = follow_violations.get();
    Ok(report)
}

/// Follows `partition` from `from` through the cluster client, keeping what
/// arrives and counting offsets out of order.
async fn follow(
    cluster: Rc<ClusterClient>,
    partition: String,
    from: u64,
    followed: Rc<RefCell<HashMap<String, HolderCopy>>>,
    violations: Rc<Cell<u64>>,
) {
    let mut stream = cluster.follow(&partition, from);
    let mut expected = from;
    while let Some(record) = stream.recv().await {
        let Ok(record) = record else { return };
        if record.offset != expected {
            violations.set(violations.get() + 1);
            tracing::error!(%partition, offset = record.offset, expected, "followed stream skipped or repeated");
        }
        expected = record.offset + 1;
        followed
            .borrow_mut()
            .entry(partition.clone())
            .or_default()
            .push((record.offset, record.value));
    }
}

/// Retries `attempt` until it succeeds or `within` has passed.
async fn retry<T, F, Fut>(within: Duration, mut attempt: F) -> Result<T, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BoxError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "verify: retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Each partition's smallest next offset over the nodes holding it.
async fn starting_offsets(
    connect: &ConnectArgs,
    addrs: &[String],
) -> Result<HashMap<String, u64>, BoxError> {
    let mut start: HashMap<String, u64> = HashMap::new();
    for addr in addrs {
        let client = connect.connect_to(addr).await?;
        for p in client.partitions().await? {
            let next = start.entry(p.id).or_insert(p.next_offset);
            *next = (*next).min(p.next_offset);
        }
    }
    Ok(start)
}

/// Once every node answers and every holder of each partition has the same
/// next offset: partition → (end, holders' addresses, leader's address).
async fn agreed_ends(
    connect: &ConnectArgs,
    addrs: &[String],
) -> Result<BTreeMap<String, (u64, Vec<String>, Option<String>)>, BoxError> {
    let mut ends: BTreeMap<String, (u64, Vec<String>, Option<String>)> = BTreeMap::new();
    for addr in addrs {
        let client = connect.connect_to(addr).await?;
        for p in client.partitions().await? {
            let entry = ends
                .entry(p.id.clone())
                .or_insert((p.next_offset, Vec::new(), None));
            if entry.0 != p.next_offset {
                return Err(format!(
                    "{}: holders disagree ({} vs {} on {addr})",
                    p.id, entry.0, p.next_offset
                )
                .into());
            }
            if p.is_leader {
                entry.2 = Some(addr.clone());
            }
            entry.1.push(addr.clone());
        }
    }
    Ok(ends)
}

/// Records [from, end) of `partition` on one node.
async fn read_range(
    client: &Client,
    partition: &str,
    from: u64,
    end: u64,
) -> Result<HolderCopy, BoxError> {
    let mut out = Vec::with_capacity((end - from) as usize);
    let mut next = from;
    while next < end {
        let batch = client
            .consume_batch(partition, next, 1000.min((end - next) as u32), 0)
            .await?;
        let Some(after) = batch.next_offset() else {
            break;
        };
        next = after;
        out.extend(batch.iter().map(|(offset, value)| (offset, value.to_vec())));
    }
    out.truncate((end - from) as usize);
    Ok(out)
}
