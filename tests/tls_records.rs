//! The TLS 1.3 record layer the node and the client run after rustls's
//! handshake (`proglog::wire::tls`), with the node's own configurations
//! (`auth::tls`): against itself, against rustls's own record layer in both
//! roles (key updates included), and against a peer that tampers, sends a
//! record over the limit, or cuts the connection.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use proglog::auth::certs::{self, Leaf, Validity};
use proglog::auth::tls;
use proglog::wire::tls::{RecordStream, accept, connect};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A CA, a node certificate for localhost and a client certificate, as
/// the node's and the client's configurations.
struct Pki {
    _dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::new_ca("test CA", Validity::days(1)).unwrap();
    let node = Leaf::Server {
        hosts: vec!["localhost".into()],
    };
    let node = certs::issue(&ca, &node, Validity::days(1)).unwrap();
    let client = Leaf::Client {
        common_name: "client".into(),
    };
    let client = certs::issue(&ca, &client, Validity::days(1)).unwrap();
    let (ca_pem, _) = certs::write(dir.path(), "ca", &ca).unwrap();
    let (node_pem, node_key) = certs::write(dir.path(), "node", &node).unwrap();
    let (client_pem, client_key) = certs::write(dir.path(), "client", &client).unwrap();
    Pki {
        server: tls::server_config(&ca_pem, &node_pem, &node_key).unwrap(),
        client: tls::client_config(&ca_pem, &client_pem, &client_key).unwrap(),
        _dir: dir,
    }
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// A connected pair of TCP sockets on loopback.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

/// Our client and our server over loopback.
async fn our_pair(pki: &Pki) -> (RecordStream<Tap>, RecordStream<TcpStream>, Tap) {
    let (client, server) = tcp_pair().await;
    let tap = Tap::new(client);
    let (client, server) = tokio::join!(
        connect(tap.clone(), localhost(), pki.client.clone()),
        accept(server, pki.server.clone())
    );
    let (server, chain) = server.unwrap();
    assert!(!chain.is_empty(), "the client's certificate chain");
    (client.unwrap(), server, tap)
}

/// `len` bytes that differ from position to position.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Writes `data` in pieces of the given sizes, in turn, then flushes.
async fn write_in_pieces<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], sizes: &[usize]) {
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at == data.len() {
            break;
        }
        let end = (at + size).min(data.len());
        w.write_all(&data[at..end]).await.unwrap();
        at = end;
    }
    w.flush().await.unwrap();
}

async fn read_exactly<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Vec<u8> {
    let mut got = vec![0u8; len];
    r.read_exact(&mut got).await.unwrap();
    got
}

/// Writes and reads at once, so that neither side's socket buffer fills.
async fn exchange<A, B>(a: &mut A, b: &mut B, a_to_b: &[u8], b_to_a: &[u8])
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let sizes = [1, 17, 16_384, 16_385, 65_536, 70_000, 300];
    let (_, _, from_a, from_b) = tokio::join!(
        write_in_pieces(&mut a_write, a_to_b, &sizes),
        write_in_pieces(&mut b_write, b_to_a, &sizes[2..]),
        read_exactly(&mut b_read, a_to_b.len()),
        read_exactly(&mut a_read, b_to_a.len()),
    );
    assert!(from_a == a_to_b, "bytes from a arrive unchanged");
    assert!(from_b == b_to_a, "bytes from b arrive unchanged");
}

#[tokio::test]
async fn our_client_and_server_carry_bytes_both_ways_and_end_with_close_notify() {
    let pki = pki();
    let (mut client, mut server, _tap) = our_pair(&pki).await;
    let (up, down) = (pattern(3 << 20, 1), pattern(2 << 20, 2));
    exchange(&mut client, &mut server, &up, &down).await;
    // Shutting down sends close_notify: the other side reads a clean end.
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
    // The other direction still works until it is closed too.
    server.write_all(b"after").await.unwrap();
    server.shutdown().await.unwrap();
    let mut tail = Vec::new();
    client.read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, b"after");
}

#[tokio::test]
async fn our_server_talks_with_rustls_clients_and_follows_their_key_updates() {
    let pki = pki();
    let (client, server) = tcp_pair().await;
    let connector = tokio_rustls::TlsConnector::from(pki.client.clone());
    let (client, server) = tokio::join!(
        connector.connect(localhost(), client),
        accept(server, pki.server.clone())
    );
    let (mut client, mut server) = (client.unwrap(), server.unwrap().0);
    exchange(
        &mut client,
        &mut server,
        &pattern(1 << 20, 3),
        &pattern(1 << 20, 4),
    )
    .await;
    // rustls's key update asks for ours in return: both directions move on.
    for round in 0..3u8 {
        client.get_mut().1.refresh_traffic_keys().unwrap();
        exchange(
            &mut client,
            &mut server,
            &pattern(100_000, round),
            &pattern(90_000, round + 10),
        )
        .await;
    }
    // Each of rustls's updates asked for one of ours in return, sent at the
    // latest before our next data.
    server.write_all(b"last").await.unwrap();
    server.flush().await.unwrap();
    assert_eq!(read_exactly(&mut client, 4).await, b"last");
    assert_eq!(server.key_updates(), (3, 3));
    server.shutdown().await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
}

#[tokio::test]
async fn our_client_talks_with_a_rustls_server_across_our_own_key_updates() {
    let pki = pki();
    let (client, server) = tcp_pair().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
    let (client, server) = tokio::join!(
        connect(client, localhost(), pki.client.clone()),
        acceptor.accept(server)
    );
    let (mut client, mut server) = (client.unwrap(), server.unwrap());
    // A new key every 3 records: about 200 updates over 2 MiB.
    client.rekey_every(3);
    exchange(
        &mut client,
        &mut server,
        &pattern(2 << 20, 5),
        &pattern(1 << 20, 6),
    )
    .await;
    // And rustls's own update of its sending key, while ours keep coming.
    server.get_mut().1.refresh_traffic_keys().unwrap();
    exchange(
        &mut client,
        &mut server,
        &pattern(300_000, 7),
        &pattern(300_000, 8),
    )
    .await;
    let (sent, received) = client.key_updates();
    // At least one per three full records (2.3 MiB is over 140 of them).
    assert!(sent >= 47, "{sent} key updates sent");
    assert!(received >= 1, "rustls's update was followed");
}

#[tokio::test]
async fn a_tampered_record_is_refused_and_never_served() {
    let pki = pki();
    let (mut client, mut server, tap) = our_pair(&pki).await;
    client.write_all(b"intact").await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(read_exactly(&mut server, 6).await, b"intact");
    // A good record, then a tampered one, likely read in one go: the good
    // one is handed over, the bad one fails this read and every later one.
    client.write_all(b"before").await.unwrap();
    client.flush().await.unwrap();
    tap.set(Mode::FlipLastByte);
    client.write_all(b"tampered").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let n = server.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"before");
    for _ in 0..2 {
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("bad_record_mac"), "{err}");
    }
}

/// What our server makes of a raw record header announcing `len` bytes
/// (followed by that many garbage bytes).
async fn server_reading_a_record_of(len: usize) -> io::Error {
    let pki = pki();
    let (mut client, mut server, tap) = our_pair(&pki).await;
    let mut raw = vec![23, 3, 3, (len >> 8) as u8, len as u8];
    raw.resize(5 + len, 0xAB);
    tap.set(Mode::Replace(raw));
    client.write_all(b"x").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 64];
    server.read(&mut buf).await.unwrap_err()
}

#[tokio::test]
async fn a_record_over_the_size_limit_is_refused_and_one_at_the_limit_is_opened() {
    // 2^14 + 256 bytes is the largest record body allowed: it is read whole
    // and opened (and fails authentication, being garbage).
    let at_limit = server_reading_a_record_of((1 << 14) + 256).await;
    assert_eq!(at_limit.kind(), io::ErrorKind::InvalidData);
    assert!(
        at_limit.to_string().contains("bad_record_mac"),
        "{at_limit}"
    );
    // One byte more is refused from its header, before it is buffered.
    let over = server_reading_a_record_of((1 << 14) + 257).await;
    assert_eq!(over.kind(), io::ErrorKind::InvalidData);
    assert!(over.to_string().contains("record_overflow"), "{over}");
}

#[tokio::test]
async fn a_connection_cut_inside_a_record_or_without_close_notify_is_an_error() {
    let pki = pki();
    let (mut client, mut server, tap) = our_pair(&pki).await;
    tap.set(Mode::Replace(vec![23, 3, 3, 0, 100, 1, 2, 3]));
    client.write_all(b"x").await.unwrap();
    client.flush().await.unwrap();
    tap.shutdown_raw().await;
    let mut buf = [0u8; 64];
    let err = server.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    assert!(err.to_string().contains("inside a TLS record"), "{err}");

    let (_client, mut server, tap) = our_pair(&pki).await;
    tap.shutdown_raw().await;
    let err = server.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    assert!(err.to_string().contains("close_notify"), "{err}");
}

#[tokio::test]
async fn a_tls_1_2_client_is_refused_by_the_node_configuration() {
    let pki = pki();
    let provider = pki.client.crypto_provider().clone();
    let roots = {
        // The same trust and identity, limited to TLS 1.2.
        let ca = pki._dir.path().join("ca.pem");
        let mut roots = rustls::RootCertStore::empty();
        for cert in tls::load_certs(&ca).unwrap() {
            roots.add(cert).unwrap();
        }
        roots
    };
    let certs = tls::load_certs(&pki._dir.path().join("client.pem")).unwrap();
    let key = tls::load_key(&pki._dir.path().join("client.key")).unwrap();
    let tls12 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let (client, server) = tcp_pair().await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls12));
    let (client, server) = tokio::join!(
        connector.connect(localhost(), client),
        accept(server, pki.server.clone())
    );
    assert!(client.is_err());
    let err = server.err().expect("the server refuses TLS 1.2");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

#[tokio::test]
async fn a_refused_client_certificate_reaches_the_client_as_the_servers_alert() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let other_ca = certs::new_ca("other CA", Validity::days(1)).unwrap();
    let client = Leaf::Client {
        common_name: "stranger".into(),
    };
    let stranger = certs::issue(&other_ca, &client, Validity::days(1)).unwrap();
    let (cert, key) = certs::write(dir.path(), "stranger", &stranger).unwrap();
    let config = tls::client_config(&pki._dir.path().join("ca.pem"), &cert, &key).unwrap();
    let (client, server) = tcp_pair().await;
    let (client, server) = tokio::join!(
        connect(client, localhost(), config),
        accept(server, pki.server.clone())
    );
    let refused = server.err().expect("the server refuses the certificate");
    assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
    // Under TLS 1.3 the client's side may finish first; either way the
    // server's alert says why.
    let err = match client {
        Err(e) => e,
        Ok(mut client) => client.read(&mut [0u8; 16]).await.unwrap_err(),
    };
    assert!(err.to_string().contains("alert"), "{err}");
}

#[tokio::test]
async fn a_configuration_that_keeps_the_keys_is_refused_with_a_clear_error() {
    let pki = pki();
    let mut config = (*pki.client).clone();
    config.enable_secret_extraction = false;
    let (client, _server) = tcp_pair().await;
    let err = connect(client, localhost(), Arc::new(config))
        .await
        .err()
        .expect("refused before any byte is sent");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("enable_secret_extraction"),
        "{err}"
    );
}

/// What the tap does to the next write that reaches it.
#[derive(Clone)]
enum Mode {
    Pass,
    /// Flip the last byte of the next write (a record's tag).
    FlipLastByte,
    /// Send these bytes instead of the next write.
    Replace(Vec<u8>),
}

/// A client socket whose writes the test can tamper with after the handshake.
#[derive(Clone)]
struct Tap {
    socket: Arc<Mutex<TcpStream>>,
    mode: Arc<Mutex<Mode>>,
}

impl Tap {
    fn new(socket: TcpStream) -> Tap {
        Tap {
            socket: Arc::new(Mutex::new(socket)),
            mode: Arc::new(Mutex::new(Mode::Pass)),
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Closes the socket's sending side without a close_notify.
    async fn shutdown_raw(&self) {
        std::future::poll_fn(|cx| Pin::new(&mut *self.socket.lock().unwrap()).poll_shutdown(cx))
            .await
            .unwrap();
    }
}

impl AsyncRead for Tap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.socket.lock().unwrap()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mode = std::mem::replace(&mut *self.mode.lock().unwrap(), Mode::Pass);
        let mut socket = self.socket.lock().unwrap();
        let bytes = match mode {
            Mode::Pass => return Pin::new(&mut *socket).poll_write(cx, buf),
            Mode::FlipLastByte => {
                let mut bytes = buf.to_vec();
                if let Some(last) = bytes.last_mut() {
                    *last ^= 1;
                }
                bytes
            }
            Mode::Replace(bytes) => bytes,
        };
        // Test writes are small: the socket takes them whole.
        let mut at = 0;
        while at < bytes.len() {
            match Pin::new(&mut *socket).poll_write(cx, &bytes[at..]) {
                Poll::Ready(Ok(n)) => at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => std::thread::yield_now(),
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.socket.lock().unwrap()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.socket.lock().unwrap()).poll_shutdown(cx)
    }
}
