//! The handshake, done by rustls through its unbuffered API, which reads
//! from and writes to our buffers: when it ends we know exactly which bytes
//! it consumed, and the traffic keys are handed over to the record layer.

use std::io;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::kernel::KernelConnection;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError, UnbufferedStatus};
use rustls::{ClientConfig, ExtractedSecrets, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::records::{RecordStream, TrafficSecrets};

/// The most handshake bytes held at once (certificate chains included): a
/// peer cannot make the handshake cost more.
const MAX_HANDSHAKE_BYTES: usize = 256 << 10;

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS handshake: {e}"))
}

/// The record layer needs the traffic keys: a configuration made elsewhere
/// than `auth::tls` must allow their extraction.
fn extraction_disabled() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "the rustls configuration must set enable_secret_extraction (auth::tls's configurations do)",
    )
}

/// What the handshake driver needs of a client or server connection.
trait Handshake {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn handshaking(&self) -> bool;
    fn into_kernel(self)
    -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error>;
}

macro_rules! handshake_for {
    ($conn:ty, $data:ty) => {
        impl Handshake for $conn {
            type Data = $data;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, $data> {
                self.process_tls_records(incoming)
            }
            fn handshaking(&self) -> bool {
                self.is_handshaking()
            }
            fn into_kernel(
                self,
            ) -> Result<(ExtractedSecrets, KernelConnection<$data>), rustls::Error> {
                self.dangerous_into_kernel_connection()
            }
        }
    };
}

handshake_for!(
    UnbufferedClientConnection,
    rustls::client::ClientConnectionData
);
handshake_for!(
    UnbufferedServerConnection,
    rustls::server::ServerConnectionData
);

/// The server's side of a handshake over `io`: the connection, and the
/// client's certificate chain.
pub async fn accept<S>(
    mut io: S,
    config: Arc<ServerConfig>,
) -> io::Result<(RecordStream<S>, Vec<CertificateDer<'static>>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !config.enable_secret_extraction {
        return Err(extraction_disabled());
    }
    let mut conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let (leftover, early) = drive(&mut conn, &mut io).await?;
    let peer = conn
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    Ok((established(io, conn, &leftover, early)?, peer))
}

/// The client's side of a handshake over `io` with the server `name`.
pub async fn connect<S>(
    mut io: S,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> io::Result<RecordStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !config.enable_secret_extraction {
        return Err(extraction_disabled());
    }
    let mut conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
    let (leftover, early) = drive(&mut conn, &mut io).await?;
    established(io, conn, &leftover, early)
}

/// Hands the keys of a finished handshake to a record layer.
fn established<C, S>(io: S, conn: C, leftover: &[u8], early: Vec<u8>) -> io::Result<RecordStream<S>>
where
    C: Handshake,
    KernelConnection<C::Data>: Send + 'static,
{
    let (secrets, kernel) = conn.into_kernel().map_err(tls_error)?;
    if kernel.protocol_version() != ProtocolVersion::TLSv1_3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TLS handshake: only TLS 1.3 is supported",
        ));
    }
    let limit = kernel
        .negotiated_cipher_suite()
        .tls13()
        .map(|suite| suite.common.confidentiality_limit)
        .unwrap_or(0);
    let keys: Box<dyn TrafficSecrets> = Box::new(kernel);
    RecordStream::new(io, keys, secrets.tx, secrets.rx, limit, leftover, early)
}

/// Runs the handshake to its end. Returns the bytes received beyond it
/// (records for the record layer) and any application data rustls opened
/// on the way.
async fn drive<C, S>(conn: &mut C, io: &mut S) -> io::Result<(Vec<u8>, Vec<u8>)>
where
    C: Handshake,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut incoming = vec![0u8; 16 << 10];
    let mut filled = 0;
    let mut outgoing = vec![0u8; 16 << 10];
    let mut queued = 0;
    let mut early = Vec::new();
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process(&mut incoming[..filled]);
        let mut read_more = false;
        let mut established = false;
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                incoming.copy_within(discard..filled, 0);
                send_alert(conn, io, &mut incoming[..filled - discard]).await;
                return Err(tls_error(e));
            }
        };
        match state {
            ConnectionState::EncodeTlsData(mut data) => {
                queued += encode(&mut data, &mut outgoing, queued)?;
            }
            ConnectionState::TransmitTlsData(data) => {
                io.write_all(&outgoing[..queued]).await?;
                io.flush().await?;
                queued = 0;
                data.done();
            }
            ConnectionState::BlockedHandshake => read_more = true,
            ConnectionState::WriteTraffic(_) => established = true,
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record.map_err(tls_error)?;
                    discard += record.discard;
                    early.extend_from_slice(record.payload);
                }
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                ));
            }
            _ => return Err(io::Error::other("TLS handshake: unexpected state")),
        }
        incoming.copy_within(discard..filled, 0);
        filled -= discard;
        if established {
            if !conn.handshaking() {
                incoming.truncate(filled);
                return Ok((incoming, early));
            }
            // A server may send before the client's last flight: wait for it.
            read_more = true;
        }
        if read_more {
            if filled == incoming.len() {
                if incoming.len() >= MAX_HANDSHAKE_BYTES {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("TLS handshake over {MAX_HANDSHAKE_BYTES} bytes"),
                    ));
                }
                incoming.resize(incoming.len() * 2, 0);
            }
            let n = io.read(&mut incoming[filled..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the TLS handshake",
                ));
            }
            filled += n;
        }
    }
}

/// After a failed handshake, sends the alert rustls queued (a bad
/// certificate, an unknown CA, no common version), so that the peer learns
/// why; best effort, the handshake fails either way.
async fn send_alert<C, S>(conn: &mut C, io: &mut S, incoming: &mut [u8])
where
    C: Handshake,
    S: AsyncWrite + Unpin,
{
    let mut outgoing = vec![0u8; 64];
    let mut queued = 0;
    // rustls hands out what it queued before it looks at `incoming` again
    // (the bytes it has not discarded, as it requires). An alert is
    // encoded in a step or two; more would be a surprise.
    for _ in 0..4 {
        let status = conn.process(incoming);
        if status.discard != 0 {
            break;
        }
        let Ok(ConnectionState::EncodeTlsData(mut data)) = status.state else {
            break;
        };
        match encode(&mut data, &mut outgoing, queued) {
            Ok(n) => queued += n,
            Err(_) => break,
        }
    }
    if queued > 0 {
        let _ = io.write_all(&outgoing[..queued]).await;
        let _ = io.flush().await;
    }
}

/// Encodes rustls's next handshake record into `outgoing` after its first
/// `queued` bytes, growing it as rustls asks; returns the bytes added.
fn encode<D>(
    data: &mut rustls::unbuffered::EncodeTlsData<'_, D>,
    outgoing: &mut Vec<u8>,
    queued: usize,
) -> io::Result<usize> {
    loop {
        match data.encode(&mut outgoing[queued..]) {
            Ok(n) => return Ok(n),
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                outgoing.resize(queued + required_size, 0);
            }
            Err(e) => return Err(io::Error::other(format!("TLS handshake: {e}"))),
        }
    }
}
