//! The replication stream: a replica far behind its leader pulls the
//! leader's stored frames over a connection of their own, outside Cap'n
//! Proto messages.
//!
//! In a `replicate` call every batch is built into a Cap'n Proto message on
//! the leader (its frames copied into a zeroed segment) and copied out of
//! one on the replica (read into a zeroed buffer, then copied into the
//! batch): four passes over every byte besides the socket's, about a tenth
//! of both vCPUs during a catch-up (BENCHMARKS.md, Replication). Here the
//! leader writes the batch it read from its store as it is, and the replica
//! reads it straight into the buffer it appends from.
//!
//! It shares the RPC port, its TLS and its limits on connections: the
//! replica's first bytes are [`MAGIC`], which no Cap'n Proto peer sends
//! (read as a segment table, they claim over a billion segments, where
//! capnp allows 512), so the node tells the two apart by them.
//!
//! All integers little-endian. Replica → leader, once: [`MAGIC`], then a
//! [`PullRequest`]; then, as often as it likes, its committed end (`u64`,
//! what `replicated` reports). Leader → replica: messages, each a tag
//! byte and its fields:
//! - `1` batch: first offset `u64`, the leader's committed end `u64`,
//!   length `u32`, then that many bytes of frames back to back, as stored
//!   (`FrameSink` in the schema);
//! - `2` end: the error that ended the stream (the schema's `Error` kind,
//!   then offset, lowest and next `u64`, then a message), the last bytes
//!   sent before the leader closes.
//!
//! The leader authorizes the pull as a `replicate` call (the action
//! `replicate` on the partition, its own only) and bounds it as one: a
//! stream slot, its answers' bytes reserved before they are read, and a
//! replica that stops reading is dropped (see `rpc::service`).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The first bytes of a replication stream.
pub const MAGIC: [u8; 8] = *b"PLGREPL1";

/// Longest partition id or node name a request may carry.
pub const MAX_NAME_BYTES: usize = 255;

/// Largest batch a replica accepts: the leader's batch bound (at most a
/// few MiB) plus one record, with room to spare; a larger length is a
/// broken or hostile leader, and the pull ends before anything is held.
pub const MAX_BATCH_BYTES: u32 = 64 << 20;

/// Longest message in an end.
const MAX_END_MESSAGE_BYTES: usize = 4096;

const TAG_BATCH: u8 = 1;
const TAG_END: u8 = 2;

/// What a replica asks for, after [`MAGIC`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The leader's own partition.
    pub partition: String,
    /// The replica's node name, in the positions it reports.
    pub node: String,
    /// The first offset to send.
    pub from: u64,
    /// Most bytes in one batch (0: the leader's default).
    pub max_batch_bytes: u32,
}

impl PullRequest {
    /// [`MAGIC`] and the request, as the replica sends them. Names longer
    /// than [`MAX_NAME_BYTES`] are refused.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(32 + self.partition.len() + self.node.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.from.to_le_bytes());
        out.extend_from_slice(&self.max_batch_bytes.to_le_bytes());
        for name in [&self.partition, &self.node] {
            let len = u8::try_from(name.len())
                .map_err(|_| invalid(format!("name of {} bytes: at most 255", name.len())))?;
            out.push(len);
            out.extend_from_slice(name.as_bytes());
        }
        Ok(out)
    }

    /// Reads a request whose [`MAGIC`] has been read already.
    pub async fn read(r: &mut (impl AsyncRead + Unpin)) -> io::Result<PullRequest> {
        let from = r.read_u64_le().await?;
        let max_batch_bytes = r.read_u32_le().await?;
        let partition = read_name(r).await?;
        let node = read_name(r).await?;
        Ok(PullRequest {
            partition,
            node,
            from,
            max_batch_bytes,
        })
    }
}

async fn read_name(r: &mut (impl AsyncRead + Unpin)) -> io::Result<String> {
    let len = r.read_u8().await? as usize;
    let mut bytes = vec![0; len];
    r.read_exact(&mut bytes).await?;
    String::from_utf8(bytes).map_err(|_| invalid("a name is not UTF-8".into()))
}

/// Why a leader ended a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEnd {
    /// The schema's error kind (`offsetOutOfRange`, `permissionDenied`, ...).
    pub kind: String,
    /// For `offsetOutOfRange`: the offset asked for, the leader's lowest
    /// and next; else 0.
    pub offset: u64,
    pub lowest: u64,
    pub next: u64,
    pub message: String,
}

/// The header of a batch (its frames follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub first: u64,
    pub committed_end: u64,
    pub len: u32,
}

/// Bytes of an encoded [`BatchHeader`], tag included.
pub const BATCH_HEADER_BYTES: usize = 21;

impl BatchHeader {
    pub fn encode(&self) -> [u8; BATCH_HEADER_BYTES] {
        let mut out = [0; BATCH_HEADER_BYTES];
        out[0] = TAG_BATCH;
        out[1..9].copy_from_slice(&self.first.to_le_bytes());
        out[9..17].copy_from_slice(&self.committed_end.to_le_bytes());
        out[17..21].copy_from_slice(&self.len.to_le_bytes());
        out
    }
}

impl StreamEnd {
    pub fn encode(&self) -> Vec<u8> {
        let kind = &self.kind.as_bytes()[..self.kind.len().min(MAX_NAME_BYTES)];
        let message = truncated(&self.message, MAX_END_MESSAGE_BYTES);
        let mut out = Vec::with_capacity(30 + kind.len() + message.len());
        out.push(TAG_END);
        out.push(kind.len() as u8);
        out.extend_from_slice(kind);
        for n in [self.offset, self.lowest, self.next] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&(message.len() as u16).to_le_bytes());
        out.extend_from_slice(message.as_bytes());
        out
    }
}

/// Whether a leader's answer may start with `byte`. A node that predates
/// replication streams answers their first bytes as a broken Cap'n Proto
/// message: with an `Abort` message (whose first byte, its segment count
/// less one, is 0), or by closing.
pub fn starts_a_message(byte: u8) -> bool {
    matches!(byte, TAG_BATCH | TAG_END)
}

/// What a leader sent next.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A batch and its frames (not checked here).
    Batch {
        header: BatchHeader,
        frames: Vec<u8>,
    },
    /// The stream ended with this error.
    End(StreamEnd),
}

/// Reads the leader's next message. A batch's frames are read into `buf`
/// (cleared first; a buffer of an earlier batch is still mapped and
/// likely cached, where a new one is not); with `zero_free` (the stream
/// writes every byte it reports, as a TCP socket does) it is not zeroed
/// first. A batch over [`MAX_BATCH_BYTES`] or an unknown tag is an error
/// before anything is held for it.
pub async fn read_message(
    r: &mut (impl AsyncRead + Unpin),
    zero_free: bool,
    buf: Vec<u8>,
) -> io::Result<Message> {
    match r.read_u8().await? {
        TAG_BATCH => {
            let first = r.read_u64_le().await?;
            let committed_end = r.read_u64_le().await?;
            let len = r.read_u32_le().await?;
            if len > MAX_BATCH_BYTES {
                return Err(invalid(format!(
                    "the leader sent a batch of {len} bytes: at most {MAX_BATCH_BYTES}"
                )));
            }
            let frames = read_exactly(r, len as usize, zero_free, buf).await?;
            Ok(Message::Batch {
                header: BatchHeader {
                    first,
                    committed_end,
                    len,
                },
                frames,
            })
        }
        TAG_END => {
            let kind = read_name(r).await?;
            let offset = r.read_u64_le().await?;
            let lowest = r.read_u64_le().await?;
            let next = r.read_u64_le().await?;
            let len = r.read_u16_le().await? as usize;
            if len > MAX_END_MESSAGE_BYTES {
                return Err(invalid(format!("an end message of {len} bytes")));
            }
            let mut message = vec![0; len];
            r.read_exact(&mut message).await?;
            Ok(Message::End(StreamEnd {
                kind,
                offset,
                lowest,
                next,
                message: String::from_utf8_lossy(&message).into_owned(),
            }))
        }
        tag => Err(invalid(format!(
            "the leader sent a message of unknown kind {tag}"
        ))),
    }
}

/// `len` bytes into `out`, cleared first.
async fn read_exactly(
    r: &mut (impl AsyncRead + Unpin),
    len: usize,
    zero_free: bool,
    mut out: Vec<u8>,
) -> io::Result<Vec<u8>> {
    out.clear();
    if !zero_free {
        out.resize(len, 0);
        r.read_exact(&mut out).await?;
        return Ok(out);
    }
    out.reserve_exact(len);
    while out.len() < len {
        let want = (len - out.len()) as u64;
        if (&mut *r).take(want).read_buf(&mut out).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(out)
}

/// Writes one batch: its header, then its frames as they are.
pub async fn write_batch(
    w: &mut (impl AsyncWrite + Unpin),
    first: u64,
    committed_end: u64,
    frames: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(frames.len())
        .ok()
        .filter(|len| *len <= MAX_BATCH_BYTES)
        .ok_or_else(|| invalid(format!("a batch of {} bytes", frames.len())))?;
    let header = BatchHeader {
        first,
        committed_end,
        len,
    };
    w.write_all(&header.encode()).await?;
    w.write_all(frames).await?;
    w.flush().await
}

fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capnp_answer_does_not_start_a_message() {
        // A capnp message opens with its segment count less one: 0 for
        // the one-segment Abort a capnp peer sends before closing.
        assert!(!starts_a_message(0));
        assert!(starts_a_message(
            BatchHeader {
                first: 0,
                committed_end: 0,
                len: 0
            }
            .encode()[0]
        ));
        assert!(starts_a_message(
            StreamEnd {
                kind: String::new(),
                offset: 0,
                lowest: 0,
                next: 0,
                message: String::new()
            }
            .encode()[0]
        ));
    }

    #[test]
    fn magic_is_no_capnp_segment_table() {
        // Read as capnp's first word: segment count − 1, little-endian.
        let segments = u32::from_le_bytes(MAGIC[..4].try_into().unwrap()) as u64 + 1;
        assert!(segments > 512, "{segments}");
    }

    #[tokio::test]
    async fn a_request_reads_back_as_sent() {
        let request = PullRequest {
            partition: "a-00000000000000ff".into(),
            node: "b".into(),
            from: 1 << 40,
            max_batch_bytes: 1 << 20,
        };
        let bytes = request.encode().unwrap();
        assert_eq!(bytes[..8], MAGIC);
        let mut r = &bytes[8..];
        assert_eq!(PullRequest::read(&mut r).await.unwrap(), request);
        assert!(r.is_empty());
    }

    #[test]
    fn a_name_of_255_bytes_is_sent_and_256_refused() {
        let mut request = PullRequest {
            partition: "p".repeat(255),
            node: "n".into(),
            from: 0,
            max_batch_bytes: 0,
        };
        assert!(request.encode().is_ok());
        request.partition.push('p');
        assert!(request.encode().is_err());
    }

    #[tokio::test]
    async fn batches_and_an_end_read_back_as_written_zeroed_or_not() {
        let mut bytes = Vec::new();
        write_batch(&mut bytes, 7, 9, b"frames!").await.unwrap();
        write_batch(&mut bytes, 9, 9, b"").await.unwrap();
        let end = StreamEnd {
            kind: "offsetOutOfRange".into(),
            offset: 3,
            lowest: 5,
            next: 9,
            message: "gone".into(),
        };
        bytes.extend_from_slice(&end.encode());
        for zero_free in [false, true] {
            let mut r = &bytes[..];
            let first = read_message(&mut r, zero_free, Vec::new()).await.unwrap();
            assert_eq!(
                first,
                Message::Batch {
                    header: BatchHeader {
                        first: 7,
                        committed_end: 9,
                        len: 7
                    },
                    frames: b"frames!".to_vec(),
                }
            );
            assert!(matches!(
                read_message(&mut r, zero_free, Vec::new()).await.unwrap(),
                Message::Batch {
                    header: BatchHeader { len: 0, .. },
                    ..
                }
            ));
            assert_eq!(
                read_message(&mut r, zero_free, Vec::new()).await.unwrap(),
                Message::End(end.clone())
            );
            let eof = read_message(&mut r, zero_free, Vec::new())
                .await
                .unwrap_err();
            assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
        }
    }

    #[tokio::test]
    async fn a_batch_at_the_limit_is_read_and_one_byte_more_refused_before_its_body() {
        // The limit itself: a header claiming MAX_BATCH_BYTES, then a cut
        // body, fails only for want of bytes.
        let at = BatchHeader {
            first: 0,
            committed_end: 0,
            len: MAX_BATCH_BYTES,
        }
        .encode();
        let err = read_message(&mut &at[..], true, Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let over = BatchHeader {
            first: 0,
            committed_end: 0,
            len: MAX_BATCH_BYTES + 1,
        }
        .encode();
        let err = read_message(&mut &over[..], true, Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn a_cut_batch_or_an_unknown_tag_is_an_error() {
        let mut bytes = Vec::new();
        write_batch(&mut bytes, 0, 1, b"abcdef").await.unwrap();
        bytes.truncate(bytes.len() - 1);
        for zero_free in [false, true] {
            let err = read_message(&mut &bytes[..], zero_free, b"stale".to_vec())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        }
        let err = read_message(&mut &[9u8][..], true, Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
