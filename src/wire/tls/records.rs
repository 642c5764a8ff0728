//! The TLS 1.3 record layer of an established connection (RFC 8446 §5):
//! records are sealed from the writer's bytes into the send buffer they
//! leave from, and opened from the receive buffer into the reader's.
//!
//! rustls's own stream reads at most 4 KiB a system call, zero-fills its
//! buffer before each read, and copies every opened record twice (into a
//! new `Vec`, then into the reader's buffer); it seals each record into a
//! new allocation. Here one read takes all the socket holds (up to
//! [`RECEIVE_BYTES`]); a record whose plaintext fits in the reader's buffer
//! is decrypted straight into it, others are opened in place and copied
//! once; a write is encrypted straight from the writer's bytes into the
//! send buffer. With aws-lc-rs each of these is one pass over the bytes
//! (ring's AES-GCM copies, then works in place).

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::ConnectionTrafficSecrets;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::key::{RecordKey, TAG_LEN};

/// The record header: type, legacy version, length.
const HEADER_LEN: usize = 5;
/// The most plaintext a record may carry (2^14).
const MAX_PLAINTEXT: usize = 1 << 14;
/// The largest record body a peer may send: plaintext, content type,
/// padding and tag together (2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Bytes of received records held at once: one read can take a burst of
/// them, and there is always room for a whole record of the largest size.
const RECEIVE_BYTES: usize = (64 << 10) + HEADER_LEN + MAX_CIPHERTEXT;
/// Sealed bytes gathered before they are sent (a flush sends them sooner).
const SEND_AT: usize = 64 << 10;
/// The send buffer: [`SEND_AT`], one more record of the largest size, and
/// room for the key updates and alert that may go with them (it grows if
/// ever short).
const SEND_BYTES: usize = SEND_AT + HEADER_LEN + MAX_PLAINTEXT + 1 + TAG_LEN + 1024;
/// Writes of at least this many bytes are sealed straight from the
/// writer's bytes, in records of up to 2^14; shorter ones are gathered
/// (copied) into one record, so that a burst of small messages does not
/// pay a record (22 bytes, an AEAD call) for each.
const SEAL_DIRECTLY_FROM: usize = 4 << 10;

/// Outer content type of every protected record.
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
/// Handshake message types allowed after the handshake.
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
/// The alert that ends a direction cleanly.
const CLOSE_NOTIFY: u8 = 0;
/// Key updates a peer may send in a row without application data between
/// them (as rustls allows): each costs a key derivation.
const MAX_KEY_UPDATES_IN_A_ROW: u32 = 32;

/// New traffic secrets for a key update, from rustls's kernel connection.
pub trait TrafficSecrets: Send {
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
}

impl<D> TrafficSecrets for rustls::kernel::KernelConnection<D>
where
    rustls::kernel::KernelConnection<D>: Send,
{
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_tx_secret()
    }
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_rx_secret()
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn secrets_error(e: rustls::Error) -> io::Error {
    io::Error::other(format!("TLS key update: {e}"))
}

/// A TLS 1.3 connection after its handshake.
pub struct RecordStream<S> {
    io: S,
    secrets: Box<dyn TrafficSecrets>,
    tx: RecordKey,
    rx: RecordKey,
    /// Records sealed under one key before the next: the cipher's
    /// confidentiality limit, with a margin.
    rekey_after: u64,
    /// The sequence number at which the current key is replaced.
    rekey_at: u64,

    /// Received bytes: `received[start..end]` is not consumed yet; it starts
    /// at a record boundary unless `plaintext` is inside it.
    received: Box<[u8]>,
    start: usize,
    end: usize,
    /// An opened record's plaintext not yet given to the reader.
    plaintext: Range<usize>,
    /// Plaintext that arrived with the last handshake flight, served first.
    early: Vec<u8>,
    /// The peer sent close_notify: reads see the end of the stream.
    peer_closed: bool,
    /// Key updates received since the last application data record.
    key_updates_in_a_row: u32,
    /// Key updates sent and received over the connection's life.
    key_updates: (u64, u64),

    /// Small writes gathered into the next record, not sealed yet.
    staged: Vec<u8>,
    /// Sealed records, `sealed[..sealed_len]`; `sealed[sent..sealed_len]`
    /// has not left yet. Zeroed once: records are sealed over old ones.
    sealed: Box<[u8]>,
    sealed_len: usize,
    sent: usize,
    /// The peer asked for a key update: ours goes before our next record.
    owe_key_update: bool,
    /// close_notify is sealed: nothing more may be written.
    closed: bool,
}

impl<S> RecordStream<S> {
    /// The record layer over `io`, after a handshake that left `leftover`
    /// (records received beyond it) and `early` (plaintext rustls opened).
    pub(super) fn new(
        io: S,
        secrets: Box<dyn TrafficSecrets>,
        (tx_seq, tx): (u64, ConnectionTrafficSecrets),
        (rx_seq, rx): (u64, ConnectionTrafficSecrets),
        confidentiality_limit: u64,
        leftover: &[u8],
        early: Vec<u8>,
    ) -> io::Result<RecordStream<S>> {
        let mut received = vec![0u8; RECEIVE_BYTES.max(leftover.len())].into_boxed_slice();
        received[..leftover.len()].copy_from_slice(leftover);
        Ok(RecordStream {
            io,
            secrets,
            tx: RecordKey::new(&tx, tx_seq)?,
            rx: RecordKey::new(&rx, rx_seq)?,
            // Well before the limit, as rustls itself does.
            rekey_after: confidentiality_limit / 4 * 3,
            rekey_at: tx_seq.saturating_add(confidentiality_limit / 4 * 3),
            received,
            start: 0,
            end: leftover.len(),
            plaintext: 0..0,
            early,
            peer_closed: false,
            key_updates_in_a_row: 0,
            key_updates: (0, 0),
            staged: Vec::new(),
            sealed: vec![0u8; SEND_BYTES].into_boxed_slice(),
            sealed_len: 0,
            sent: 0,
            owe_key_update: false,
            closed: false,
        })
    }

    /// Key updates sent and received so far.
    pub fn key_updates(&self) -> (u64, u64) {
        self.key_updates
    }

    /// Sends under a new key every `records` records (tests of key updates).
    #[doc(hidden)]
    pub fn rekey_every(&mut self, records: u64) {
        self.rekey_after = records;
        self.rekey_at = self.tx.seq() + records;
    }

    /// Opens the record at `start`, if whole; `Ok(false)` when more bytes
    /// are needed. Its plaintext goes straight into `reader` when all of it
    /// fits there and it is application data; otherwise it is left in
    /// `plaintext`, or handled here (alerts, key updates).
    fn open_next(&mut self, reader: &mut ReadBuf<'_>) -> io::Result<bool> {
        let available = self.end - self.start;
        if available < HEADER_LEN {
            return Ok(false);
        }
        let header: [u8; HEADER_LEN] = self.received[self.start..self.start + HEADER_LEN]
            .try_into()
            .map_err(|_| invalid("TLS record header"))?;
        if header[0] != APPLICATION_DATA {
            return Err(invalid(format!(
                "unexpected TLS record type {} after the handshake",
                header[0]
            )));
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len > MAX_CIPHERTEXT {
            return Err(invalid(format!(
                "TLS record of {len} bytes, over the limit of {MAX_CIPHERTEXT} (record_overflow)"
            )));
        }
        if len < 1 + TAG_LEN {
            return Err(invalid(format!("TLS record of {len} bytes is too short")));
        }
        if available < HEADER_LEN + len {
            return Ok(false);
        }
        let body = self.start + HEADER_LEN..self.start + HEADER_LEN + len;
        let inner_len = len - TAG_LEN;
        let opened = if reader.remaining() >= inner_len {
            let out = &mut reader.initialize_unfilled_to(inner_len)[..inner_len];
            self.rx
                .open_into(&header, &self.received[body.clone()], out)?;
            self.start = body.end;
            match out.iter().rposition(|&b| b != 0) {
                Some(type_at) if out[type_at] == APPLICATION_DATA && type_at <= MAX_PLAINTEXT => {
                    reader.advance(type_at);
                    self.key_updates_in_a_row = 0;
                    return Ok(true);
                }
                // Not data for the reader: checked and handled below, from
                // where the in-place path leaves a record's plaintext.
                _ => self.received[body.start..body.start + inner_len].copy_from_slice(out),
            }
            inner_len
        } else {
            let opened = self.rx.open(&header, &mut self.received[body.clone()])?;
            self.start = body.end;
            opened
        };
        // The inner content type is the last non-zero byte; zeros after it
        // are padding.
        let inner = &self.received[body.start..body.start + opened];
        let Some(type_at) = inner.iter().rposition(|&b| b != 0) else {
            return Err(invalid("TLS record without a content type"));
        };
        if type_at > MAX_PLAINTEXT {
            return Err(invalid(
                "TLS record plaintext over 2^14 bytes (record_overflow)",
            ));
        }
        let content = body.start..body.start + type_at;
        match inner[type_at] {
            APPLICATION_DATA => {
                self.plaintext = content;
                self.key_updates_in_a_row = 0;
            }
            ALERT => self.alert(content)?,
            HANDSHAKE => self.post_handshake(content)?,
            other => {
                return Err(invalid(format!(
                    "unexpected TLS content type {other} after the handshake"
                )));
            }
        }
        Ok(true)
    }

    fn alert(&mut self, content: Range<usize>) -> io::Result<()> {
        match self.received[content] {
            [_, CLOSE_NOTIFY] => {
                self.peer_closed = true;
                Ok(())
            }
            [_, description] => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!(
                    "peer sent TLS alert {:?}",
                    rustls::AlertDescription::from(description)
                ),
            )),
            _ => Err(invalid("malformed TLS alert")),
        }
    }

    /// Handshake messages after the handshake: a key update (the peer's
    /// next records use its new key) or a session ticket (ignored: these
    /// connections do not resume).
    fn post_handshake(&mut self, content: Range<usize>) -> io::Result<()> {
        let mut at = content.start;
        while at < content.end {
            let rest = &self.received[at..content.end];
            let [kind, a, b, c, ..] = *rest else {
                return Err(invalid("TLS handshake message split across records"));
            };
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if rest.len() < 4 + len {
                return Err(invalid("TLS handshake message split across records"));
            }
            let body = &rest[4..4 + len];
            at += 4 + len;
            match kind {
                KEY_UPDATE => {
                    let request = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(invalid("malformed TLS key update")),
                    };
                    if at != content.end {
                        // A key change falls on a record boundary (RFC 8446 §5.1).
                        return Err(invalid("TLS key update not at the end of its record"));
                    }
                    self.key_updates_in_a_row += 1;
                    if self.key_updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW {
                        return Err(invalid(format!(
                            "over {MAX_KEY_UPDATES_IN_A_ROW} TLS key updates without data between them"
                        )));
                    }
                    let (seq, secrets) = self.secrets.next_rx().map_err(secrets_error)?;
                    self.rx = RecordKey::new(&secrets, seq)?;
                    self.key_updates.1 += 1;
                    self.owe_key_update |= request;
                }
                NEW_SESSION_TICKET => {}
                other => {
                    return Err(invalid(format!(
                        "unexpected TLS handshake message {other} after the handshake"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Appends one sealed record of `content_type` carrying `data`.
    fn seal(&mut self, content_type: u8, data: &[u8]) -> io::Result<()> {
        debug_assert!(data.len() <= MAX_PLAINTEXT);
        let at = self.sealed_len;
        let len = data.len() + 1 + TAG_LEN;
        let end = at + HEADER_LEN + len;
        if end > self.sealed.len() {
            let mut grown = std::mem::take(&mut self.sealed).into_vec();
            grown.resize(end.max(grown.len() + grown.len() / 4), 0);
            self.sealed = grown.into_boxed_slice();
        }
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        self.sealed[at..at + HEADER_LEN].copy_from_slice(&header);
        let out = &mut self.sealed[at + HEADER_LEN..end];
        self.tx.seal_into(&header, data, content_type, out)?;
        self.sealed_len = end;
        Ok(())
    }

    /// Seals `data` as one application data record, after the key update
    /// owed to the peer or due by the key's limit.
    fn seal_data(&mut self, data: &[u8]) -> io::Result<()> {
        if self.owe_key_update || self.tx.seq() >= self.rekey_at {
            self.key_update(false)?;
        }
        self.seal(APPLICATION_DATA, data)
    }

    /// Seals the gathered small writes, if any, as one record.
    fn seal_staged(&mut self) -> io::Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.staged);
        let sealed = self.seal_data(&staged);
        self.staged = staged;
        self.staged.clear();
        sealed
    }

    /// Seals a key update (asking the peer for one when `request`), then
    /// moves to the next key.
    fn key_update(&mut self, request: bool) -> io::Result<()> {
        self.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, request as u8])?;
        let (seq, secrets) = self.secrets.next_tx().map_err(secrets_error)?;
        self.tx = RecordKey::new(&secrets, seq)?;
        self.key_updates.0 += 1;
        self.owe_key_update = false;
        self.rekey_at = seq.saturating_add(self.rekey_after);
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> RecordStream<S> {
    /// Writes out the sealed records; ready once all have left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.sealed_len {
            let unsent = &self.sealed[self.sent..self.sealed_len];
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, unsent))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sealed_len = 0;
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RecordStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early[..n]);
            this.early.drain(..n);
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.plaintext.is_empty() {
                let n = this.plaintext.len().min(buf.remaining());
                let from = this.plaintext.start;
                buf.put_slice(&this.received[from..from + n]);
                this.plaintext.start += n;
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            if this.open_next(buf)? {
                if buf.filled().len() > before {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // Need more bytes: move the partial record to the front when
            // a whole record might not fit after it.
            if this.start == this.end {
                (this.start, this.end) = (0, 0);
            } else if this.received.len() - this.start < HEADER_LEN + MAX_CIPHERTEXT {
                this.received.copy_within(this.start..this.end, 0);
                (this.start, this.end) = (0, this.end - this.start);
            }
            let mut read = ReadBuf::new(&mut this.received[this.end..]);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                let what = if this.start == this.end {
                    "peer closed the connection without a TLS close_notify"
                } else {
                    "connection closed inside a TLS record"
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, what)));
            }
            this.end += n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RecordStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS connection already closed",
            )));
        }
        let mut taken = 0;
        while taken == 0 && !buf.is_empty() {
            if this.sealed_len >= SEND_AT {
                // Full: what is sealed leaves before more is taken.
                ready!(this.poll_send(cx))?;
            }
            while taken < buf.len() && this.sealed_len < SEND_AT {
                let rest = &buf[taken..];
                if rest.len() >= SEAL_DIRECTLY_FROM {
                    this.seal_staged()?;
                    let n = rest.len().min(MAX_PLAINTEXT);
                    this.seal_data(&rest[..n])?;
                    taken += n;
                } else if this.staged.len() + rest.len() > MAX_PLAINTEXT {
                    this.seal_staged()?;
                } else {
                    this.staged.extend_from_slice(rest);
                    taken = buf.len();
                }
            }
        }
        if this.sealed_len >= SEND_AT
            && let Poll::Ready(Err(e)) = this.poll_send(cx)
        {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    /// Seals what is gathered and sends every sealed record.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.seal_staged()?;
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends close_notify, then shuts the socket's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            this.seal_staged()?;
            ready!(this.poll_send(cx))?;
            this.seal(ALERT, &[1, CLOSE_NOTIFY])?;
            this.closed = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rustls::crypto::cipher::{AeadKey, Iv};
    use tokio::io::AsyncReadExt;

    use super::*;

    fn secrets(n: u8) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([n; 32]),
            iv: Iv::from([n; 12]),
        }
    }

    /// Key updates move each direction to the next numbered key.
    struct Numbered {
        tx: u8,
        rx: u8,
    }

    impl TrafficSecrets for Numbered {
        fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
            self.tx += 1;
            Ok((0, secrets(self.tx)))
        }
        fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
            self.rx += 1;
            Ok((0, secrets(self.rx)))
        }
    }

    /// What a peer puts inside one protected record.
    #[derive(Clone, Debug)]
    enum Inner {
        Data(Vec<u8>, usize),
        Alert(u8, u8),
        KeyUpdate(u8),
        Ticket(Vec<u8>),
        /// A handshake message of another type.
        Handshake(u8),
        /// Content of a type with no place after the handshake.
        Other(u8, Vec<u8>),
        /// Nothing but zeros: no content type at all.
        Zeros(usize),
    }

    fn inner() -> impl Strategy<Value = Inner> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            6 => (bytes(), 0..20usize).prop_map(|(d, pad)| Inner::Data(d, pad)),
            1 => (1..3u8, prop_oneof![Just(CLOSE_NOTIFY), any::<u8>()])
                .prop_map(|(l, d)| Inner::Alert(l, d)),
            2 => (0..3u8).prop_map(Inner::KeyUpdate),
            1 => bytes().prop_map(Inner::Ticket),
            1 => any::<u8>()
                .prop_filter("not 4 or 24", |t| *t != NEW_SESSION_TICKET && *t != KEY_UPDATE)
                .prop_map(Inner::Handshake),
            1 => (1..=255u8, bytes())
                .prop_filter("not 21-23", |(t, _)| !(21..=23).contains(t))
                .prop_map(|(t, d)| Inner::Other(t, d)),
            1 => (1..5usize).prop_map(Inner::Zeros),
        ]
    }

    /// What reading the records must give: the application data in order,
    /// up to the first record that ends the stream, and how it ends.
    #[derive(Debug, PartialEq)]
    enum End {
        CloseNotify,
        Error(io::ErrorKind),
        /// The records ran out: the connection ends without close_notify.
        Cut,
    }

    fn expected(records: &[Inner]) -> (Vec<u8>, End) {
        let mut data = Vec::new();
        for r in records {
            match r {
                Inner::Data(d, _) => data.extend_from_slice(d),
                Inner::Alert(_, 0) => return (data, End::CloseNotify),
                Inner::Alert(..) => return (data, End::Error(io::ErrorKind::ConnectionAborted)),
                Inner::KeyUpdate(0 | 1) | Inner::Ticket(_) => {}
                _ => return (data, End::Error(io::ErrorKind::InvalidData)),
            }
        }
        (data, End::Cut)
    }

    /// The peer's bytes for `records`, sealed as the peer would, moving to
    /// its next key after each key update it sends.
    fn sealed(records: &[Inner]) -> Vec<u8> {
        let mut key = RecordKey::new(&secrets(1), 0).unwrap();
        let mut next = 1;
        let mut wire = Vec::new();
        for r in records {
            let mut plain = match r {
                Inner::Data(d, pad) => [d.as_slice(), &[APPLICATION_DATA], &vec![0; *pad]].concat(),
                Inner::Alert(level, desc) => vec![*level, *desc, ALERT],
                Inner::KeyUpdate(req) => vec![KEY_UPDATE, 0, 0, 1, *req, HANDSHAKE],
                Inner::Ticket(t) => {
                    let len = (t.len() as u32).to_be_bytes();
                    [
                        &[NEW_SESSION_TICKET, len[1], len[2], len[3]],
                        t.as_slice(),
                        &[HANDSHAKE],
                    ]
                    .concat()
                }
                Inner::Handshake(kind) => vec![*kind, 0, 0, 0, HANDSHAKE],
                Inner::Other(kind, d) => [d.as_slice(), &[*kind]].concat(),
                Inner::Zeros(n) => vec![0; *n],
            };
            let len = plain.len() + TAG_LEN;
            let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
            let last = plain.pop().unwrap_or(0);
            let mut record = vec![0u8; len];
            key.seal_into(&header, &plain, last, &mut record).unwrap();
            wire.extend_from_slice(&header);
            wire.extend_from_slice(&record);
            if matches!(r, Inner::KeyUpdate(0 | 1)) {
                next += 1;
                key = RecordKey::new(&secrets(next), 0).unwrap();
            }
        }
        wire
    }

    /// Reads everything `wire` gives through a record layer, in reads of
    /// `chunk` bytes at most.
    async fn read_all(wire: Vec<u8>, chunk: usize) -> (Vec<u8>, End) {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        tokio::io::AsyncWriteExt::write_all(&mut peer, &wire)
            .await
            .unwrap();
        drop(peer);
        let mut stream = end_of(ours, 100, 1);
        let mut data = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return (data, End::CloseNotify),
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return (data, End::Cut),
                Err(e) => return (data, End::Error(e.kind())),
            }
        }
    }

    /// A connection's end over `io` sending under `secrets(tx)` and
    /// receiving under `secrets(rx)`; each key update moves to the next.
    fn end_of<S>(io: S, tx: u8, rx: u8) -> RecordStream<S> {
        let keys = Box::new(Numbered { tx, rx });
        let (tx, rx) = ((0, secrets(tx)), (0, secrets(rx)));
        RecordStream::new(io, keys, tx, rx, 1 << 24, &[], Vec::new()).unwrap()
    }

    /// A writing end whose key is `secrets(1)`, as `read_all` expects the
    /// peer's.
    fn writer<S>(io: S) -> RecordStream<S> {
        end_of(io, 1, 100)
    }

    /// The length of each record in `wire`.
    fn record_lengths(wire: &[u8]) -> Vec<usize> {
        let mut lengths = Vec::new();
        let mut at = 0;
        while at + HEADER_LEN <= wire.len() {
            let len = u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize;
            lengths.push(len);
            at += HEADER_LEN + len;
        }
        assert_eq!(at, wire.len(), "whole records");
        lengths
    }

    /// What is on the wire so far, without waiting.
    async fn on_the_wire(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::ZERO, peer.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn small_writes_are_gathered_into_one_record_that_leaves_on_flush() {
        use tokio::io::AsyncWriteExt;
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let mut stream = writer(ours);
        for i in 0..100u8 {
            stream.write_all(&[i; 100]).await.unwrap();
        }
        assert!(
            on_the_wire(&mut peer).await.is_empty(),
            "nothing before the flush"
        );
        stream.flush().await.unwrap();
        let wire = on_the_wire(&mut peer).await;
        assert_eq!(record_lengths(&wire), [10_000 + 1 + TAG_LEN], "one record");
        // Past 2^14 bytes a record is full and the next one starts.
        for _ in 0..20 {
            stream.write_all(&[7; 1000]).await.unwrap();
        }
        stream.flush().await.unwrap();
        let second = on_the_wire(&mut peer).await;
        assert_eq!(record_lengths(&second), [16_000 + 17, 4_000 + 17]);
        let all: Vec<u8> = [wire, second].concat();
        let expected: Vec<u8> = (0..100u8)
            .flat_map(|i| [i; 100])
            .chain(std::iter::repeat_n(7, 20_000))
            .collect();
        assert_eq!(read_all(all, 1 << 16).await, (expected, End::Cut));
    }

    #[tokio::test]
    async fn a_large_write_is_sealed_in_full_records_and_leaves_past_64_kib() {
        use tokio::io::AsyncWriteExt;
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let mut stream = writer(ours);
        stream.write_all(b"table").await.unwrap();
        let large: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        stream.write_all(&large).await.unwrap();
        // 64 KiB and more are sealed: they left without a flush, the gathered
        // small write first, as a record of its own.
        let sent = on_the_wire(&mut peer).await;
        let lengths = record_lengths(&sent);
        assert_eq!(lengths[0], 5 + 17);
        assert!(
            lengths[1..].iter().all(|&l| l == MAX_PLAINTEXT + 17),
            "{lengths:?}"
        );
        assert!(sent.len() >= SEND_AT, "{}", sent.len());
        stream.shutdown().await.unwrap();
        let wire = [sent, on_the_wire(&mut peer).await].concat();
        let expected = [b"table".as_slice(), &large].concat();
        assert_eq!(read_all(wire, 1 << 16).await, (expected, End::CloseNotify));
    }

    proptest! {
        /// Whatever a peer with the keys puts in its records, the reader
        /// hands over exactly the application data before the first record
        /// that ends the stream, ends as that record says, and never panics.
        #[test]
        fn records_are_read_as_the_protocol_says(
            records in proptest::collection::vec(inner(), 0..12),
            chunk in 1..64usize,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = runtime.block_on(read_all(sealed(&records), chunk));
            prop_assert_eq!(got, expected(&records));
        }

        /// Whatever the writes and flushes, with key updates as often as
        /// every `rekey` records, the peer reads exactly the bytes written,
        /// in records of at most 2^14 bytes, ending with close_notify.
        #[test]
        fn writes_of_any_size_reach_the_peer_whole_and_in_order(
            writes in proptest::collection::vec((0..40_000usize, any::<bool>()), 0..12),
            rekey in 1..8u64,
        ) {
            use tokio::io::AsyncWriteExt;
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (wire, written) = runtime.block_on(async {
                let (ours, mut peer) = tokio::io::duplex(4 << 20);
                let mut stream = writer(ours);
                stream.rekey_every(rekey);
                let mut written = Vec::new();
                for (i, (len, flush)) in writes.iter().enumerate() {
                    let bytes: Vec<u8> = (0..*len).map(|j| (i * 31 + j) as u8).collect();
                    stream.write_all(&bytes).await.unwrap();
                    written.extend_from_slice(&bytes);
                    if *flush {
                        stream.flush().await.unwrap();
                    }
                }
                stream.shutdown().await.unwrap();
                drop(stream);
                let mut wire = Vec::new();
                peer.read_to_end(&mut wire).await.unwrap();
                (wire, written)
            });
            for len in record_lengths(&wire) {
                prop_assert!(len <= MAX_PLAINTEXT + 1 + TAG_LEN, "{}", len);
            }
            let got = runtime.block_on(read_all(wire, 1 << 16));
            prop_assert_eq!(got, (written, End::CloseNotify));
        }
    }
}
