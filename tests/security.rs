//! Mutual TLS and authorization: who may connect, who may do what, and how
//! bad security material is refused.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use proglog::auth::acl::{Acl, DEFAULT_MODEL, DEFAULT_POLICY};
use proglog::auth::certs::{self, Leaf, Pem, Validity};
use proglog::auth::tls::{TlsAcceptor, client_config, client_config_without_cert, server_config};
use proglog::client::{Client, ClientError};
use proglog::cluster::ClusterView;
use proglog::log::Partitions;
use proglog::rpc::{RpcConfig, RpcServer, ServiceContext};
use proglog::storage::frame::FRAME_HEADER_LEN;
use proglog::storage::{Frames, LogConfig};
use proglog::wire::frame_stream;
use tokio::io::AsyncWriteExt;

/// A CA with a server certificate for localhost/127.0.0.1 and clients root and nobody.
struct Pki {
    dir: tempfile::TempDir,
    ca: Pem,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::new_ca("test CA", Validity::days(1)).unwrap();
        certs::write(dir.path(), "ca", &ca).unwrap();
        let server = certs::issue(
            &ca,
            &Leaf::Server {
                hosts: vec!["localhost".into(), "127.0.0.1".into()],
            },
            Validity::days(1),
        )
        .unwrap();
        certs::write(dir.path(), "server", &server).unwrap();
        for cn in ["root", "nobody"] {
            let client = certs::issue(
                &ca,
                &Leaf::Client {
                    common_name: cn.into(),
                },
                Validity::days(1),
            )
            .unwrap();
            certs::write(dir.path(), cn, &client).unwrap();
        }
        std::fs::write(dir.path().join("model.conf"), DEFAULT_MODEL).unwrap();
        std::fs::write(dir.path().join("policy.csv"), DEFAULT_POLICY).unwrap();
        Pki { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client(&self, name: &str) -> std::sync::Arc<rustls::ClientConfig> {
        client_config(
            &self.path("ca.pem"),
            &self.path(&format!("{name}.pem")),
            &self.path(&format!("{name}.key")),
        )
        .unwrap()
    }
}

struct Node {
    server: RpcServer,
    _data: tempfile::TempDir,
}

async fn start_tls_node(pki: &Pki) -> Node {
    start_tls_node_with(pki, RpcConfig::default()).await
}

async fn start_tls_node_with(pki: &Pki, rpc: RpcConfig) -> Node {
    let data = tempfile::tempdir().unwrap();
    let partitions =
        Rc::new(Partitions::open(data.path(), "secure", LogConfig::default()).unwrap());
    let acl = Acl::load(&pki.path("model.conf"), &pki.path("policy.csv"))
        .await
        .unwrap();
    let ctx = Rc::new(ServiceContext {
        in_sync: Rc::new(proglog::replication::InSync::new(
            1,
            std::time::Duration::from_secs(5),
        )),
        partitions,
        in_flight: Default::default(),
        cluster: Rc::new(std::cell::RefCell::new(ClusterView::default())),
        authorizer: Some(Rc::new(acl)),
        max_record_bytes: 1 << 20,
        max_stream_batch_bytes: 256 << 10,
        max_replication_batch_bytes: 1 << 20,
    });
    let tls = server_config(
        &pki.path("ca.pem"),
        &pki.path("server.pem"),
        &pki.path("server.key"),
    )
    .unwrap();
    let rpc = RpcConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..rpc
    };
    let server = RpcServer::start(rpc, ctx, TlsAcceptor::new(tls))
        .await
        .unwrap();
    Node {
        server,
        _data: data,
    }
}

async fn connect(
    node: &Node,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<Client, ClientError> {
    Client::connect_tls(node.server.local_addr(), "localhost", config).await
}

#[actix_rt::test]
async fn root_may_produce_and_consume_and_nobody_is_denied_both() {
    let pki = Pki::new();
    let node = start_tls_node(&pki).await;
    let root = connect(&node, pki.client("root")).await.unwrap();
    let produced = root.produce(b"secret").await.unwrap();
    assert_eq!(
        root.consume("", produced.offset).await.unwrap().value,
        b"secret"
    );

    let nobody = connect(&node, pki.client("nobody")).await.unwrap();
    match nobody.produce(b"x").await {
        Err(ClientError::PermissionDenied {
            subject,
            action,
            object,
        }) => {
            assert_eq!((subject.as_str(), action.as_str()), ("nobody", "produce"));
            assert_eq!(object, produced.partition);
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    match nobody.consume("", 0).await {
        Err(ClientError::PermissionDenied {
            subject, action, ..
        }) => assert_eq!((subject.as_str(), action.as_str()), ("nobody", "consume")),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    match nobody.consume_batch("", 0, 10, 0).await {
        Err(ClientError::PermissionDenied {
            subject, action, ..
        }) => assert_eq!((subject.as_str(), action.as_str()), ("nobody", "consume")),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    use futures::StreamExt;
    let mut stream = nobody.consume_stream("", 0);
    assert!(matches!(
        stream.next().await,
        Some(Err(ClientError::PermissionDenied { .. }))
    ));
    // Authorization comes before the lookup: a denied caller cannot tell a
    // partition that exists from one that does not.
    match nobody.consume("no-such-partition", 0).await {
        Err(ClientError::PermissionDenied { object, .. }) => {
            assert_eq!(object, "no-such-partition")
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert!(matches!(
        root.consume("no-such-partition", 0).await,
        Err(ClientError::UnknownPartition(_))
    ));
}

/// Records of every size around the TLS record and send-buffer boundaries
/// go to the node and back whole, by every path: single calls and the
/// batching producer many in flight (small messages gathered into shared
/// records, large ones sealed from the message), one range read, and the
/// follow stream.
#[actix_rt::test]
async fn records_of_any_size_cross_mutual_tls_whole_by_every_path() {
    use futures::StreamExt;
    let pki = Pki::new();
    let node = start_tls_node(&pki).await;
    let root = connect(&node, pki.client("root")).await.unwrap();
    let sizes = [
        0, 1, 100, 4095, 4096, 4097, 16383, 16384, 16385, 65535, 65536, 65537, 200_000,
    ];
    let value = |i: usize, len: usize| -> Vec<u8> {
        (0..len)
            .map(|j| (i * 131 + j * 7 + j / 251) as u8)
            .collect()
    };
    let mut expected = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let v = value(i, len);
        let produced = root.produce(&v).await.unwrap();
        assert_eq!(produced.offset, expected.len() as u64);
        expected.push(v);
    }
    let producer = root.producer(Default::default());
    let sends: Vec<_> = (0..300)
        .map(|i| {
            let v = value(1000 + i, sizes[i % sizes.len()]);
            expected.push(v.clone());
            producer.send(v)
        })
        .collect();
    let offsets = futures::future::try_join_all(sends).await.unwrap();
    assert_eq!(offsets[0], sizes.len() as u64);
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1));

    for (offset, v) in expected.iter().enumerate() {
        let got = root.consume("", offset as u64).await.unwrap();
        assert_eq!((got.offset, got.value.len()), (offset as u64, v.len()));
        assert!(got.value == *v, "record {offset} over a single consume");
    }
    let mut next = 0u64;
    while (next as usize) < expected.len() {
        let batch = root.consume_batch("", next, 64, 0).await.unwrap();
        assert!(!batch.is_empty(), "a range from {next}");
        for (offset, v) in batch.iter() {
            assert_eq!(offset, next);
            assert!(v == expected[offset as usize], "record {offset} in a range");
            next += 1;
        }
    }
    let mut stream = root.consume_stream("", 0);
    for (offset, v) in expected.iter().enumerate() {
        let got = stream.next().await.unwrap().unwrap();
        assert_eq!(got.offset, offset as u64);
        assert!(got.value == *v, "record {offset} in the stream");
    }
}

#[actix_rt::test]
async fn a_tls_handshake_that_does_not_come_in_time_closes_the_connection() {
    let pki = Pki::new();
    let node = start_tls_node_with(
        &pki,
        RpcConfig {
            handshake_timeout: std::time::Duration::from_millis(300),
            ..RpcConfig::default()
        },
    )
    .await;
    let mut silent = tokio::net::TcpStream::connect(node.server.local_addr())
        .await
        .unwrap();
    let mut said = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut said),
    )
    .await;
    assert!(
        closed.is_ok(),
        "a silent TLS client is not waited on forever"
    );
    // A real client still gets in.
    let root = connect(&node, pki.client("root")).await.unwrap();
    root.produce(b"x").await.unwrap();
}

#[actix_rt::test]
async fn listing_servers_and_partitions_needs_the_describe_grant() {
    let pki = Pki::new();
    let node = start_tls_node(&pki).await;
    let root = connect(&node, pki.client("root")).await.unwrap();
    assert_eq!(root.partitions().await.unwrap().len(), 1);
    root.servers().await.unwrap();
    let nobody = connect(&node, pki.client("nobody")).await.unwrap();
    for denied in [
        nobody.partitions().await.map(|_| ()),
        nobody.servers().await.map(|_| ()),
    ] {
        match denied {
            Err(ClientError::PermissionDenied {
                subject,
                action,
                object,
            }) => assert_eq!(
                (subject.as_str(), action.as_str(), object.as_str()),
                ("nobody", "describe", "cluster")
            ),
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
    }
}

/// Under TLS 1.3 a refused client may see the handshake succeed; the
/// server's alert surfaces on the first call. Either way no call succeeds.
async fn assert_cannot_call(
    node: &Node,
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: &str,
) {
    match Client::connect_tls(node.server.local_addr(), server_name, config).await {
        Err(ClientError::Tls(_)) => {}
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(client) => {
            let result = client.produce(b"should not land").await;
            assert!(
                matches!(result, Err(ClientError::Rpc(_))),
                "the call must fail, got {result:?}"
            );
        }
    }
}

#[actix_rt::test]
async fn a_client_without_a_certificate_cannot_call() {
    let pki = Pki::new();
    let node = start_tls_node(&pki).await;
    assert_cannot_call(
        &node,
        client_config_without_cert(&pki.path("ca.pem")).unwrap(),
        "localhost",
    )
    .await;
}

#[actix_rt::test]
async fn a_certificate_from_another_ca_cannot_call() {
    let pki = Pki::new();
    let node = start_tls_node(&pki).await;
    let other_ca = certs::new_ca("other CA", Validity::days(1)).unwrap();
    let stranger = certs::issue(
        &other_ca,
        &Leaf::Client {
            common_name: "root".into(),
        },
        Validity::days(1),
    )
    .unwrap();
    certs::write(pki.dir.path(), "stranger", &stranger).unwrap();
    // It trusts the real CA (so the server is accepted) but presents a foreign certificate.
    let config = client_config(
        &pki.path("ca.pem"),
        &pki.path("stranger.pem"),
        &pki.path("stranger.key"),
    )
    .unwrap();
    assert_cannot_call(&node, config, "localhost").await;
}

#[actix_rt::test]
async fn an_expired_certificate_cannot_call() {
    let pki = Pki::new();
    let node = start_tls_node(&pki).await;
    let now = time::OffsetDateTime::now_utc();
    let past = Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    };
    let expired = certs::issue(
        &pki.ca,
        &Leaf::Client {
            common_name: "root".into(),
        },
        past,
    )
    .unwrap();
    certs::write(pki.dir.path(), "expired", &expired).unwrap();
    assert_cannot_call(&node, pki.client("expired"), "localhost").await;
}

#[actix_rt::test]
async fn a_server_certificate_for_another_name_is_refused_by_the_client() {
    let pki = Pki::new();
    let node = start_tls_node(&pki).await;
    match Client::connect_tls(
        node.server.local_addr(),
        "db.example.com",
        pki.client("root"),
    )
    .await
    {
        Err(ClientError::Tls(message)) => assert!(message.contains("db.example.com"), "{message}"),
        other => panic!("expected a TLS error, got {:?}", other.map(|_| "connected")),
    }
}

fn expect_file_error(result: Result<impl Sized, proglog::auth::AuthError>, path: &Path) -> String {
    match result {
        Err(proglog::auth::AuthError::File { path: p, problem }) => {
            assert_eq!(p, path);
            problem
        }
        Err(other) => panic!("expected an error naming {path:?}, got {other}"),
        Ok(_) => panic!("expected an error naming {path:?}"),
    }
}

#[test]
fn malformed_or_mismatched_tls_files_are_refused_naming_the_file() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    expect_file_error(
        server_config(&pki.path("ca.pem"), &garbage, &pki.path("server.key")),
        &garbage,
    );
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    expect_file_error(
        server_config(&pki.path("ca.pem"), &empty, &pki.path("server.key")),
        &empty,
    );
    let missing = pki.path("missing.pem");
    expect_file_error(
        server_config(&missing, &pki.path("server.pem"), &pki.path("server.key")),
        &missing,
    );
    // root's key with the server's certificate.
    let problem = expect_file_error(
        server_config(
            &pki.path("ca.pem"),
            &pki.path("server.pem"),
            &pki.path("root.key"),
        ),
        &pki.path("root.key"),
    );
    assert!(problem.contains("does not match"), "{problem}");
}

#[actix_rt::test]
async fn a_missing_policy_file_is_refused_naming_it() {
    let pki = Pki::new();
    let missing = pki.path("no-policy.csv");
    let result = Acl::load(&pki.path("model.conf"), &missing)
        .await
        .map(|_| ());
    expect_file_error(result, &missing);
}

#[test]
fn the_node_refuses_to_start_on_bad_tls_material() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "this is not PEM").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_proglog"))
        .args([
            "serve",
            "--rpc-addr",
            "127.0.0.1:0",
            "--gossip-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--tls-ca")
        .arg(pki.path("ca.pem"))
        .arg("--tls-cert")
        .arg(&garbage)
        .arg("--tls-key")
        .arg(pki.path("server.key"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&garbage.display().to_string()),
        "stderr names the file: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// What the first `replicate` stream of `client` yields.
async fn first_replicated(client: &Client, partition: &str) -> Result<Vec<u8>, ClientError> {
    let mut stream = client.replicate(partition, 0);
    match tokio::time::timeout(std::time::Duration::from_secs(5), stream.next_batch()).await {
        Ok(Some(Ok(batch))) => {
            // The leader's stored frames: [length | crc32c | offset] bytes.
            let frames = Frames::check(batch.frames, batch.first).expect("intact frames");
            Ok(frames.frame(0)[FRAME_HEADER_LEN..].to_vec())
        }
        Ok(Some(Err(e))) => Err(e),
        Ok(None) => panic!("the stream ended without a record or an error"),
        Err(_) => panic!("no answer"),
    }
}

/// A TLS node whose own partition holds one record, `to copy`; a client
/// of `root`; the partition's id.
async fn node_holding_one_record(pki: &Pki) -> (Node, Client, String) {
    let node = start_tls_node(pki).await;
    let root = connect(&node, pki.client("root")).await.unwrap();
    root.produce(b"to copy").await.unwrap();
    let own = root
        .partitions()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.is_leader)
        .unwrap()
        .id;
    (node, root, own)
}

/// What a peer presents: the node certificate (CN proglog-node).
fn node_certificate(pki: &Pki) -> std::sync::Arc<rustls::ClientConfig> {
    client_config(
        &pki.path("ca.pem"),
        &pki.path("server.pem"),
        &pki.path("server.key"),
    )
    .unwrap()
}

#[actix_rt::test]
async fn a_node_certificate_may_replicate_and_a_client_without_the_grant_may_not() {
    let pki = Pki::new();
    let (node, _root, own) = node_holding_one_record(&pki).await;
    // A peer presents its node certificate (CN proglog-node): granted.
    let peer = connect(&node, node_certificate(&pki)).await.unwrap();
    assert_eq!(first_replicated(&peer, &own).await.unwrap(), b"to copy");
    // `nobody` has no `replicate` grant.
    let nobody = connect(&node, pki.client("nobody")).await.unwrap();
    match first_replicated(&nobody, &own).await {
        Err(ClientError::PermissionDenied { action, .. }) => assert_eq!(action, "replicate"),
        other => panic!("expected permission denied, got {other:?}"),
    }
}

/// The first message a replication stream (`wire::frame_stream`) of the
/// identity in `config` gets for `partition`.
async fn first_streamed(
    node: &Node,
    config: std::sync::Arc<rustls::ClientConfig>,
    partition: &str,
) -> frame_stream::Message {
    let tcp = tokio::net::TcpStream::connect(node.server.local_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let request = frame_stream::PullRequest {
        partition: partition.into(),
        node: "peer".into(),
        from: 0,
        max_batch_bytes: 0,
    };
    tls.write_all(&request.encode().unwrap()).await.unwrap();
    let read = frame_stream::read_message(&mut tls, false, Vec::new());
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .expect("an answer")
        .expect("a whole message")
}

#[actix_rt::test]
async fn a_replication_stream_is_authorized_as_replicate_and_pulls_only_the_own_partition() {
    let pki = Pki::new();
    let (node, root, own) = node_holding_one_record(&pki).await;
    // The node certificate gets the stored frames, checked on receipt.
    match first_streamed(&node, node_certificate(&pki), &own).await {
        frame_stream::Message::Batch { header, frames } => {
            assert_eq!((header.first, header.committed_end), (0, 1));
            let frames = Frames::check(frames, 0).expect("intact frames");
            assert_eq!(&frames.frame(0)[FRAME_HEADER_LEN..], b"to copy");
        }
        other => panic!("expected a batch, got {other:?}"),
    }
    // `nobody` has no `replicate` grant: the stream ends with the denial.
    match first_streamed(&node, pki.client("nobody"), &own).await {
        frame_stream::Message::End(end) => {
            assert_eq!(end.kind, "permissionDenied", "{end:?}");
            assert!(end.message.contains("replicate"), "{end:?}");
        }
        other => panic!("expected permission denied, got {other:?}"),
    }
    // Only the node's own partition: never a replica it holds.
    match first_streamed(
        &node,
        node_certificate(&pki),
        "someone-else-0000000000000001",
    )
    .await
    {
        frame_stream::Message::End(end) => assert_eq!(end.kind, "unknownPartition", "{end:?}"),
        other => panic!("expected unknown partition, got {other:?}"),
    }
    // The connection serves Cap'n Proto as before for everyone else.
    assert_eq!(root.consume(&own, 0).await.unwrap().value, b"to copy");
}
