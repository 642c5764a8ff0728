//! Metrics and health over HTTP: `/healthz`, `/readyz` and `/metrics`
//! (Prometheus text that moves with traffic), through the binary and in
//! process.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;

use proglog::agent::Agent;
use proglog::client::Client;
use proglog::config::{NodeConfig, ServeArgs};
use proglog::telemetry::{HttpServer, Telemetry};
use support::{CLIENT_TIMEOUT, HttpResponse, ServeOptions, Server, client, http_get, run};

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `{a="x",b="y"} rest` → labels and what follows the `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Checks `text` is the Prometheus text format (0.0.4): `# HELP` and
/// `# TYPE` lines well formed, every sample `name{labels} value` with a
/// float value and belonging to a declared family. Returns the samples.
fn parse_prometheus_text(text: &str) -> Vec<Sample> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| -> ! { panic!("line {}: {why}: {line:?}\n{text}", n + 1) };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("HELP") => {
                    let name = parts.next().unwrap_or_else(|| fail("HELP without a name"));
                    if !is_metric_name(name) {
                        fail("bad HELP name");
                    }
                }
                Some("TYPE") => {
                    let name = parts.next().unwrap_or_else(|| fail("TYPE without a name"));
                    let kind = parts.next().unwrap_or_else(|| fail("TYPE without a type"));
                    if !is_metric_name(name) {
                        fail("bad TYPE name");
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        fail("unknown type");
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        fail("TYPE twice");
                    }
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| fail("no value"));
        let name = &line[..name_end];
        if !is_metric_name(name) {
            fail("bad metric name");
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).unwrap_or_else(|e| fail(&e))
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value: f64 = fields
            .next()
            .unwrap_or_else(|| fail("no value"))
            .parse()
            .unwrap_or_else(|_| fail("value is not a float"));
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().unwrap_or_else(|_| fail("bad timestamp"));
        }
        if fields.next().is_some() {
            fail("trailing fields");
        }
        let family_ok = types.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .and_then(|family| types.get(family))
                    .is_some_and(|kind| kind == "histogram" || kind == "summary")
            });
        if !family_ok {
            fail("sample of no declared family");
        }
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            fail("bucket without le");
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    assert!(!samples.is_empty(), "no samples:\n{text}");
    samples
}

/// The value of `name` with (at least) these labels; 0 when absent (a
/// labelled series appears once first counted).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} is ambiguous: {matching:?}"
    );
    matching.first().map_or(0.0, |s| s.value)
}

fn scrape(http: SocketAddr) -> Vec<Sample> {
    let response = http_get(http, "/metrics").expect("GET /metrics");
    assert_eq!(response.status, 200, "{response:?}");
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse_prometheus_text(&response.body)
}

#[test]
fn healthz_and_readyz_answer_once_the_node_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    // Server::start returns once the `ready` line is printed.
    let mut server = Server::start(dir.path());
    let health = http_get(server.http, "/healthz").unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = http_get(server.http, "/readyz").unwrap();
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(ready.header("connection"), Some("close"));
    assert_eq!(http_get(server.http, "/nope").unwrap().status, 404);
    let (status, _) = server.stop();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    const N: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let part = server.partition.as_str();
    let before = scrape(server.http);
    assert_eq!(
        value(
            &before,
            "proglog_partition_next_offset",
            &[("partition", part)]
        ),
        0.0
    );
    assert_eq!(value(&before, "proglog_membership_members", &[]), 1.0);

    // `produce v1 .. vN` is one produceBatch call of N records.
    let values: Vec<String> = (0..N).map(|i| format!("record-{i:03}")).collect();
    let bytes: usize = values.iter().map(String::len).sum();
    let mut cmd = client("produce", &server.endpoint());
    cmd.args(&values);
    run(cmd, None, CLIENT_TIMEOUT).success();

    let after = scrape(server.http);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let batch_ok = [("method", "produceBatch"), ("outcome", "ok")];
    assert_eq!(delta("proglog_rpc_calls_total", &batch_ok), 1.0);
    assert_eq!(
        delta(
            "proglog_rpc_duration_seconds_count",
            &[("method", "produceBatch")]
        ),
        1.0
    );
    assert_eq!(delta("proglog_records_appended_total", &[]), N as f64);
    assert_eq!(delta("proglog_bytes_appended_total", &[]), bytes as f64);
    assert_eq!(
        value(
            &after,
            "proglog_partition_next_offset",
            &[("partition", part)]
        ),
        N as f64
    );
    assert_eq!(
        value(
            &after,
            "proglog_partition_lowest_offset",
            &[("partition", part)]
        ),
        0.0
    );
    assert_eq!(
        value(&after, "proglog_partition_segments", &[("partition", part)]),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "proglog_partition_restarts_total",
            &[("partition", part)]
        ),
        0.0
    );

    // Reading them back: listPartitions, then a consumeStream of N records.
    let mut cmd = client("consume", &server.endpoint());
    cmd.args(["--from", "0"]);
    let out = run(cmd, None, CLIENT_TIMEOUT).success();
    assert_eq!(out.stdout.lines().count(), N);
    let read = scrape(server.http);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&read, name, labels) - value(&after, name, labels)
    };
    assert_eq!(delta("proglog_records_read_total", &[]), N as f64);
    assert_eq!(delta("proglog_bytes_read_total", &[]), bytes as f64);
    assert_eq!(
        delta(
            "proglog_rpc_calls_total",
            &[("method", "listPartitions"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        value(&read, "proglog_rpc_open_streams", &[("kind", "consume")]),
        0.0,
        "the consumer left: its stream is closed"
    );
}

#[test]
fn no_metrics_turns_metrics_off_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ServeOptions {
        extra_args: vec!["--no-metrics".to_string()],
        ..ServeOptions::default()
    };
    let server = Server::start_with(dir.path(), &opts);
    let metrics = http_get(server.http, "/metrics").unwrap();
    assert_eq!(metrics.status, 404, "{metrics:?}");
    assert!(metrics.body.contains("--no-metrics"), "{metrics:?}");
    assert_eq!(http_get(server.http, "/healthz").unwrap().status, 200);
    assert_eq!(http_get(server.http, "/readyz").unwrap().status, 200);
}

/// `GET path` from a server running on this test's own actix System.
async fn get(addr: SocketAddr, path: &'static str) -> HttpResponse {
    support::http_get_async(addr, path).await.unwrap()
}

#[actix_rt::test]
async fn readyz_is_503_until_start_up_completes() {
    let telemetry = Telemetry::new(true);
    let http = HttpServer::start("127.0.0.1:0".parse().unwrap(), telemetry.clone())
        .await
        .unwrap();
    let addr = http.local_addr();
    let readiness = telemetry.readiness();
    let not_ready = get(addr, "/readyz").await;
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.body, "not ready: partitions not open\n");
    assert_eq!(
        get(addr, "/healthz").await.status,
        200,
        "alive while starting"
    );

    readiness.set_partitions_open(true);
    assert_eq!(
        get(addr, "/readyz").await.body,
        "not ready: RPC not listening\n"
    );
    readiness.set_rpc_listening(true);
    assert_eq!(
        get(addr, "/readyz").await.body,
        "not ready: membership not joined\n"
    );
    readiness.set_membership_joined(true);
    assert_eq!(get(addr, "/readyz").await.body, "not ready: starting\n");
    readiness.set_started(true);
    let ready = get(addr, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    readiness.set_stopping(true);
    let stopping = get(addr, "/readyz").await;
    assert_eq!(
        (stopping.status, stopping.body.as_str()),
        (503, "not ready: shutting down\n")
    );
    assert_eq!(get(addr, "/healthz").await.status, 200);
    // Metrics with nothing attached yet still parse.
    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    parse_prometheus_text(&metrics.body);

    let off = Telemetry::new(false);
    let http_off = HttpServer::start("127.0.0.1:0".parse().unwrap(), off)
        .await
        .unwrap();
    assert_eq!(get(http_off.local_addr(), "/metrics").await.status, 404);
}

/// A node without TLS on free loopback ports, its data in `dir`.
fn loopback_node(dir: &std::path::Path, name: &str) -> ServeArgs {
    let any = || Some("127.0.0.1:0".parse().unwrap());
    ServeArgs {
        insecure: true,
        data_dir: Some(dir.to_path_buf()),
        node_name: Some(name.into()),
        rpc_addr: any(),
        gossip_addr: any(),
        http_addr: any(),
        ..ServeArgs::default()
    }
}

#[actix_rt::test]
async fn an_agent_counts_calls_by_outcome_fsyncs_and_connections() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig::resolve(ServeArgs {
        sync: Some("always".into()),
        max_record_bytes: Some(1024),
        ..loopback_node(dir.path(), "telemetry-node")
    })
    .unwrap();
    let agent = Agent::start(config).await.unwrap();
    let telemetry: Rc<Telemetry> = agent.telemetry().clone();
    assert_eq!(telemetry.readiness().check(), Ok(()));
    assert_eq!(get(agent.http_addr(), "/readyz").await.status, 200);

    let client = Client::connect(agent.rpc_addr()).await.unwrap();
    for v in [&b"a"[..], b"bb", b"ccc"] {
        client.produce(v).await.unwrap();
    }
    assert!(client.produce(&[0u8; 2048]).await.is_err(), "too large");
    assert!(client.consume("", 99).await.is_err(), "out of range");
    assert_eq!(client.consume("", 1).await.unwrap().value, b"bb");

    let samples = parse_prometheus_text(&telemetry.render_metrics().await.unwrap());
    let calls = |method: &str, outcome: &str| {
        value(
            &samples,
            "proglog_rpc_calls_total",
            &[("method", method), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("produce", "ok"), 3.0);
    assert_eq!(calls("produce", "recordTooLarge"), 1.0);
    assert_eq!(calls("consume", "offsetOutOfRange"), 1.0);
    assert_eq!(calls("consume", "ok"), 1.0);
    assert_eq!(value(&samples, "proglog_records_appended_total", &[]), 3.0);
    assert_eq!(value(&samples, "proglog_bytes_appended_total", &[]), 6.0);
    assert_eq!(value(&samples, "proglog_records_read_total", &[]), 1.0);
    assert_eq!(value(&samples, "proglog_rpc_open_connections", &[]), 1.0);
    // Every produce call has ended: nothing in flight (charges were given back).
    assert_eq!(value(&samples, "proglog_rpc_inflight_bytes", &[]), 0.0);
    assert!(
        value(
            &samples,
            "proglog_fsync_duration_seconds_count",
            &[("kind", "sync")]
        ) >= 1.0,
        "sync=always fsyncs every commit"
    );
    assert_eq!(
        value(
            &samples,
            "proglog_rpc_duration_seconds_count",
            &[("method", "produce")]
        ),
        4.0
    );

    drop(client);
    agent.shutdown().await.unwrap();
    assert_eq!(telemetry.readiness().check(), Err("shutting down"));
    let samples = parse_prometheus_text(&telemetry.render_metrics().await.unwrap());
    assert!(
        value(
            &samples,
            "proglog_fsync_duration_seconds_count",
            &[("kind", "seal")]
        ) >= 1.0,
        "closing seals the active segment"
    );
}

/// Sends `bytes` to the HTTP port and reads until the server closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tcp.read_to_end(&mut answer),
    )
    .await
    .expect("the server closes the connection")
    .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[actix_rt::test]
async fn the_http_port_answers_garbage_with_400_and_closes() {
    let http = HttpServer::start("127.0.0.1:0".parse().unwrap(), Telemetry::new(true))
        .await
        .unwrap();
    let addr = http.local_addr();
    let garbage = exchange(addr, &[0xde, 0xad, 0xbe, 0xef, b'\r', b'\n', b'\r', b'\n']).await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");
    // The start of a TLS ClientHello.
    let tls = exchange(
        addr,
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc],
    )
    .await;
    assert!(tls.starts_with("HTTP/1.1 400"), "{tls:?}");
    let post = exchange(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post:?}");
    assert!(
        post.to_ascii_lowercase().contains("allow: get, head"),
        "{post:?}"
    );
    // Silent: closed once the head timeout passes.
    let silent = exchange(addr, b"").await;
    assert!(
        silent.is_empty() || silent.starts_with("HTTP/1.1 408"),
        "{silent:?}"
    );
    let ok = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok\n"),
        "{ok:?}"
    );
}

/// The node's count of `produceBatch` calls answered `ok`.
async fn produce_batch_calls(agent: &proglog::agent::Node) -> f64 {
    let samples = parse_prometheus_text(&agent.telemetry().render_metrics().await.unwrap());
    value(
        &samples,
        "proglog_rpc_calls_total",
        &[("method", "produceBatch"), ("outcome", "ok")],
    )
}

#[actix_rt::test]
async fn a_turn_of_32_kib_or_more_finding_nothing_in_flight_goes_out_as_two_calls_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig::resolve(loopback_node(dir.path(), "split-node")).unwrap();
    let agent = Agent::start(config).await.unwrap();
    let batch_calls = || produce_batch_calls(&agent);
    let client = Client::connect(agent.rpc_addr()).await.unwrap();
    let producer = client.producer(proglog::client::ProducerConfig {
        linger: std::time::Duration::ZERO,
        ..Default::default()
    });
    // Sends records of these sizes in one turn, numbered from `first`;
    // answers their offsets, in the order sent.
    let send_turn = |first: u32, sizes: Vec<usize>| {
        let sent: Vec<_> = sizes
            .into_iter()
            .zip(first..)
            .map(|(size, i)| {
                let mut v = vec![0u8; size];
                v[..4].copy_from_slice(&i.to_be_bytes());
                producer.send(v)
            })
            .collect();
        async move {
            futures::future::join_all(sent)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect::<Vec<u64>>()
        }
    };

    // One byte under 32 KiB in one turn: one call.
    let mut under = vec![4096; 8];
    under[7] -= 1;
    assert_eq!(send_turn(0, under).await, (0..8).collect::<Vec<u64>>());
    assert_eq!(batch_calls().await, 1.0);

    // 32 KiB exactly: two calls of half each, offsets in the order sent.
    assert_eq!(
        send_turn(8, vec![4096; 8]).await,
        (8..16).collect::<Vec<u64>>()
    );
    assert_eq!(batch_calls().await, 3.0);

    // 64 records of 4 KiB: two calls, and every record where it was sent.
    assert_eq!(
        send_turn(16, vec![4096; 64]).await,
        (16..80).collect::<Vec<u64>>()
    );
    assert_eq!(batch_calls().await, 5.0);
    for i in [0u32, 7, 8, 11, 12, 15, 16, 47, 48, 79] {
        let got = client.consume("", u64::from(i)).await.unwrap();
        assert_eq!(got.value[..4], i.to_be_bytes(), "record {i}");
    }
    drop((producer, client));
    agent.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn a_zero_linger_producer_sends_one_call_per_turn_refuses_only_the_record_too_large_and_honours_the_clients_acks()
 {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig::resolve(loopback_node(dir.path(), "producer-node")).unwrap();
    let agent = Agent::start(config).await.unwrap();
    let batch_calls = || produce_batch_calls(&agent);
    let client = Client::connect(agent.rpc_addr()).await.unwrap();
    let zero_linger = proglog::client::ProducerConfig {
        linger: std::time::Duration::ZERO,
        ..Default::default()
    };
    let producer = client.producer(zero_linger.clone());

    // 100 records sent in one turn of the scheduler: one call, in order.
    let sent: Vec<_> = (0..100u32)
        .map(|i| producer.send(i.to_be_bytes().to_vec()))
        .collect();
    let offsets: Vec<u64> = futures::future::join_all(sent)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(offsets, (0..100).collect::<Vec<u64>>());
    assert_eq!(batch_calls().await, 1.0);

    // One record at a time: each goes alone, in a call of its own.
    for i in 100..103u64 {
        assert_eq!(producer.send(b"alone".to_vec()).await.unwrap(), i);
    }
    assert_eq!(batch_calls().await, 4.0);
    assert_eq!(
        client.consume("", 99).await.unwrap().value,
        99u32.to_be_bytes()
    );

    // A record over the producer's limit (the node's, 1 MiB) is refused at
    // once and fails nothing batched with it; one at the limit is appended.
    let at_limit = vec![7u8; 1 << 20];
    let sent = [
        producer.send(b"before".to_vec()),
        producer.send(vec![7u8; (1 << 20) + 1]),
        producer.send(at_limit.clone()),
        producer.send(b"after".to_vec()),
    ];
    let [before, over, limit, after] = futures::future::join_all(sent).await.try_into().unwrap();
    assert!(
        matches!(
            over,
            Err(proglog::client::ClientError::RecordTooLarge {
                size: 1048577,
                max: 1048576
            })
        ),
        "{over:?}"
    );
    assert_eq!(
        (before.unwrap(), limit.unwrap(), after.unwrap()),
        (103, 104, 105)
    );
    assert_eq!(client.consume("", 104).await.unwrap().value, at_limit);

    // The producer asks for the client's acks: a lone node cannot meet
    // acks=all with min-insync-replicas 2, so the record is refused.
    let all = Client::connect(agent.rpc_addr())
        .await
        .unwrap()
        .with_acks(proglog::client::Acks::All);
    let err = all
        .producer(zero_linger)
        .send(b"x".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            proglog::client::ClientError::NotEnoughReplicas {
                live: 1,
                required: 2
            }
        ),
        "{err:?}"
    );
    let partitions = client.partitions().await.unwrap();
    assert_eq!(partitions[0].next_offset, 106, "nothing appended");
    drop((producer, client, all));
    agent.shutdown().await.unwrap();
}
