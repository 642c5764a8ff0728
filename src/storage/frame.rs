//! The on-disk byte layout: file headers, record frames and index entries.
//!
//! ```text
//! store file:  [magic "PLGS" | version u16 | reserved u16] frame*
//! frame:       [length u32 | crc32c u32 | offset u64] record bytes
//! index file:  [magic "PLGI" | version u16 | flags u16] entry*
//! entry:       [offset - base u32 | frame position in store u64]
//! ```
//! All integers are little-endian. The CRC32C covers the length, the offset
//! and the record bytes, so a frame moved, cut or bit-flipped is detected.

/// Bytes of a store or index file header.
pub const FILE_HEADER_LEN: usize = 8;
/// Bytes of a frame header that precedes every record in a store file.
pub const FRAME_HEADER_LEN: usize = 16;
/// Bytes of one index entry.
pub const INDEX_ENTRY_LEN: usize = 12;

/// Largest record the format admits (1 GiB). Recovery judges a frame by this
/// format fact, never by today's `max_record_bytes` setting: lowering the
/// setting must not make records written under the old one look invalid.
pub const MAX_RECORD_BYTES: u32 = 1 << 30;

/// Current on-disk format version of both files.
pub const FORMAT_VERSION: u16 = 1;
pub(crate) const STORE_MAGIC: [u8; 4] = *b"PLGS";
pub(crate) const INDEX_MAGIC: [u8; 4] = *b"PLGI";
/// Index header flag: the file was closed cleanly, its length is exactly its
/// entries and they match the store, so opening it needs no scan.
pub(crate) const INDEX_FLAG_CLEAN: u16 = 1;

/// Builds a file header.
pub(crate) fn file_header(magic: [u8; 4], flags: u16) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..4].copy_from_slice(&magic);
    h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&flags.to_le_bytes());
    h
}

/// Checks a file header; returns its flags or a reason it is not ours.
pub(crate) fn parse_file_header(bytes: &[u8], magic: [u8; 4]) -> Result<u16, String> {
    if bytes.len() < FILE_HEADER_LEN {
        return Err(format!(
            "file is {} bytes, shorter than its header",
            bytes.len()
        ));
    }
    if bytes[0..4] != magic {
        return Err(format!(
            "bad magic {:?}, expected {:?}",
            String::from_utf8_lossy(&bytes[0..4]),
            String::from_utf8_lossy(&magic)
        ));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this build reads version {FORMAT_VERSION}"
        ));
    }
    Ok(u16::from_le_bytes([bytes[6], bytes[7]]))
}

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Length of the record bytes that follow the header.
    pub len: u32,
    /// CRC32C of length, offset and record bytes.
    pub crc: u32,
    /// The record's offset in the log.
    pub offset: u64,
}

impl FrameHeader {
    /// Frame header for `record` at `offset`, checksum included.
    pub fn new(offset: u64, record: &[u8]) -> FrameHeader {
        let len = record.len() as u32;
        FrameHeader {
            len,
            crc: checksum(len, offset, record),
            offset,
        }
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..8].copy_from_slice(&self.crc.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    /// Decodes the first [`FRAME_HEADER_LEN`] bytes of `b` (caller checks the length).
    pub fn decode(b: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            crc: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            offset: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }

    /// Whether the length field is possible at all under the format.
    pub fn len_is_possible(&self) -> bool {
        self.len <= MAX_RECORD_BYTES
    }

    /// Bytes the whole frame occupies in the store.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + self.len as u64
    }

    /// True when `record` is the record this header was written for.
    pub fn matches(&self, record: &[u8]) -> bool {
        record.len() == self.len as usize && checksum(self.len, self.offset, record) == self.crc
    }
}

/// CRC-32C (Castagnoli) over a frame's fields: length, offset, record.
///
/// Records under [`SMALL_RECORD_BYTES`] go through the CPU's `crc32`
/// instruction one 8-byte word at a time, where the CPU has it (SSE 4.2):
/// for them the libraries' set-up costs more than the sum itself (256 B:
/// 19 ns against 37 ns with `crc-fast` in the same criterion run on an AMD
/// EPYC host, 64 B: 4.7 against 21.8 ns; BENCHMARKS.md, "CRC-32C of small
/// records"). Longer records go to `crc-fast`, which folds with carry-less
/// multiplication (PCLMULQDQ, VPCLMULQDQ where the CPU has it): 2.6x the
/// rate of the `crc32` instruction on 4 KiB records (BENCHMARKS.md,
/// "CRC-32C").
pub fn checksum(len: u32, offset: u64, record: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if record.len() < SMALL_RECORD_BYTES && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2, checked just above.
        return unsafe { checksum_sse42(len, offset, record) };
    }
    checksum_folded(len, offset, record)
}

/// Records shorter than this are summed word by word with the `crc32`
/// instruction; from here on `crc-fast`'s folding is as fast or faster
/// (1 KiB: 114-118 ns either way; 2 KiB: 234-240 ns against 185-194 ns;
/// BENCHMARKS.md, "CRC-32C of small records").
pub const SMALL_RECORD_BYTES: usize = 1024;

/// [`checksum`] through `crc-fast`, whatever the record's size (also the
/// reference the small-record path is tested and measured against).
pub fn checksum_folded(len: u32, offset: u64, record: &[u8]) -> u32 {
    let mut head = [0u8; 12];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..].copy_from_slice(&offset.to_le_bytes());
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    crc.update(&head);
    crc.update(record);
    // A CRC-32's state fits in 32 bits; the digest carries it in a u64.
    crc.finalize() as u32
}

/// [`checksum`] with the SSE 4.2 `crc32` instruction: the same CRC-32C
/// (reflected, initial and final value all ones), fed the length, the
/// offset, then the record 8 bytes at a time and its last bytes one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn checksum_sse42(len: u32, offset: u64, record: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u32, _mm_crc32_u64};
    let mut state = u64::from(_mm_crc32_u32(!0, len));
    state = _mm_crc32_u64(state, offset);
    let (words, tail) = record.as_chunks::<8>();
    for word in words {
        state = _mm_crc32_u64(state, u64::from_le_bytes(*word));
    }
    // The instruction's 64-bit form leaves the 32-bit state zero-extended.
    let mut state = state as u32;
    for &byte in tail {
        state = _mm_crc32_u8(state, byte);
    }
    !state
}

/// Checks the frames of `buf` that start at `start(0)`, `start(1)`, …,
/// `start(count − 1)` (each header within `buf`, its length already
/// checked against it) against their headers' CRC-32C: the index of the
/// first that does not match. What a leader checks when it reads a batch,
/// and a replica again on receipt, once lengths and offsets are walked.
/// (Summing four small records at a time, interleaved, measured no
/// faster: BENCHMARKS.md, Replication, "Fifteenth session".)
pub fn first_mismatch(buf: &[u8], count: usize, start: impl Fn(usize) -> usize) -> Option<usize> {
    (0..count).find(|&i| {
        let at = start(i);
        let Some(head) = buf
            .get(at..)
            .and_then(|b| b.first_chunk::<FRAME_HEADER_LEN>())
        else {
            return true;
        };
        let header = FrameHeader::decode(head);
        let end = at + FRAME_HEADER_LEN + header.len as usize;
        buf.get(at + FRAME_HEADER_LEN..end)
            .is_none_or(|record| !header.matches(record))
    })
}

/// Encodes an index entry.
pub(crate) fn encode_entry(relative: u32, position: u64) -> [u8; INDEX_ENTRY_LEN] {
    let mut e = [0u8; INDEX_ENTRY_LEN];
    e[0..4].copy_from_slice(&relative.to_le_bytes());
    e[4..12].copy_from_slice(&position.to_le_bytes());
    e
}

/// Decodes an index entry (caller passes exactly [`INDEX_ENTRY_LEN`] bytes).
pub(crate) fn decode_entry(e: &[u8]) -> (u32, u64) {
    let mut rel = [0u8; 4];
    rel.copy_from_slice(&e[0..4]);
    let mut pos = [0u8; 8];
    pos.copy_from_slice(&e[4..12]);
    (u32::from_le_bytes(rel), u64::from_le_bytes(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_check_finds_the_first_mismatch_wherever_it_is() {
        // Lengths around the word size and the small-record bound, so both
        // checksum paths (the `crc32` instruction and crc-fast) and every
        // mix of whole words and tail bytes are checked.
        let lens = [0usize, 1, 7, 8, 9, 15, 16, 63, 256, 1023, 1024, 2000];
        let records: Vec<Vec<u8>> = (0..40)
            .map(|i| {
                let len = lens[i % lens.len()];
                (0..len).map(|b| (b * 31 + i * 7) as u8).collect()
            })
            .collect();
        let headers: Vec<FrameHeader> = records
            .iter()
            .enumerate()
            .map(|(i, r)| FrameHeader::new(1000 + i as u64, r))
            .collect();
        // Frames back to back, as a batch holds them; where each starts.
        let check = |headers: &[FrameHeader], records: &[Vec<u8>]| {
            let (mut buf, mut starts) = (Vec::new(), Vec::new());
            for (h, r) in headers.iter().zip(records) {
                starts.push(buf.len());
                buf.extend_from_slice(&h.encode());
                buf.extend_from_slice(r);
            }
            first_mismatch(&buf, starts.len(), |i| starts[i])
        };
        assert_eq!(check(&headers, &records), None);
        for bad in 0..records.len() {
            let mut hs = headers.clone();
            hs[bad].crc ^= 1 << (bad % 32);
            assert_eq!(check(&hs, &records), Some(bad), "crc of frame {bad}");
            let mut rs = records.clone();
            if let Some(b) = rs[bad].last_mut() {
                *b ^= 0x80;
                assert_eq!(check(&headers, &rs), Some(bad), "byte of frame {bad}");
            }
        }
    }

    #[test]
    fn frame_header_round_trips_and_detects_flips() {
        let h = FrameHeader::new(42, b"hello");
        let decoded = FrameHeader::decode(&h.encode());
        assert_eq!(decoded, h);
        assert!(decoded.matches(b"hello"));
        assert!(!decoded.matches(b"hellp"));
        assert!(!decoded.matches(b"hell"));
        let moved = FrameHeader { offset: 43, ..h };
        assert!(!moved.matches(b"hello"));
    }

    /// The checksum is CRC-32C over length, offset and record, little-endian:
    /// values computed with the `crc32c` crate the store used before, so
    /// frames written by earlier builds still check.
    #[test]
    fn checksum_is_crc32c_of_length_offset_and_record_as_stored_before() {
        assert_eq!(crc_fast::crc32_iscsi(b"123456789"), 0xe306_9283);
        assert_eq!(checksum(9, 0, b"123456789"), 0xf3e0_0834);
        let big: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(checksum(4096, 1 << 40, &big), 0x3216_9737);
        assert_eq!(checksum(0, u64::MAX, b""), 0xef2f_4c10);
    }

    /// The small-record path gives crc-fast's value for every length it
    /// takes (each tail of 0-7 bytes, the boundary and one past it), on
    /// any offset and content.
    #[test]
    fn small_records_sum_as_the_folded_path_does() {
        let bytes: Vec<u8> = (0..SMALL_RECORD_BYTES as u32 + 1)
            .map(|i| (i * 131 + 7) as u8)
            .collect();
        for len in (0..=64).chain([255, 256, 257, SMALL_RECORD_BYTES - 1, SMALL_RECORD_BYTES]) {
            let record = &bytes[..len];
            for offset in [0, 1, 0x0102_0304_0506_0708, u64::MAX] {
                assert_eq!(
                    checksum(len as u32, offset, record),
                    checksum_folded(len as u32, offset, record),
                    "record of {len} bytes at offset {offset}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_record_sums_as_the_folded_path_does(
            record in proptest::collection::vec(proptest::num::u8::ANY, 0..2 * SMALL_RECORD_BYTES),
            offset in proptest::num::u64::ANY,
            len in proptest::num::u32::ANY,
        ) {
            proptest::prop_assert_eq!(checksum(len, offset, &record), checksum_folded(len, offset, &record));
        }
    }

    #[test]
    fn file_header_rejects_foreign_and_future_files() {
        let ok = file_header(STORE_MAGIC, 0);
        assert_eq!(parse_file_header(&ok, STORE_MAGIC), Ok(0));
        assert!(parse_file_header(&ok, INDEX_MAGIC).is_err());
        let mut future = ok;
        future[4] = 9;
        assert!(
            parse_file_header(&future, STORE_MAGIC)
                .unwrap_err()
                .contains("version 9")
        );
        assert!(parse_file_header(&ok[..3], STORE_MAGIC).is_err());
    }
}
