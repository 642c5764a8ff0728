//! Records on their way into a segment: a producer's values, or frames a
//! replica copies byte for byte from its leader.
//!
//! A leader sends a replica its stored frames as they are on disk (see
//! [`super::frame`]), so replication neither re-encodes records nor computes
//! a checksum twice: the replica checks each frame's CRC-32C once, here,
//! and writes the same bytes.

use super::frame::{FRAME_HEADER_LEN, FrameHeader, MAX_RECORD_BYTES, first_mismatch};

/// Why bytes sent as frames were refused. Nothing of them is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramesError {
    #[error(
        "frame {index} (offset {expected}) is cut short: {have} bytes left, the frame needs {need}"
    )]
    Truncated {
        index: usize,
        expected: u64,
        have: usize,
        need: u64,
    },
    #[error("frame {index} claims {len} record bytes, more than the format allows")]
    ImpossibleLength { index: usize, len: u32 },
    #[error("frame {index} holds offset {got} where {expected} was expected")]
    Offset {
        index: usize,
        expected: u64,
        got: u64,
    },
    #[error(
        "frame {index} (offset {offset}): checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    Checksum {
        index: usize,
        offset: u64,
        stored: u32,
        computed: u32,
    },
}

/// Byte runs back to back in one buffer, with where each starts: a batch
/// is two allocations whatever its count. What [`Frames`] and [`Values`]
/// hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Runs {
    buf: Vec<u8>,
    /// Where each run starts in `buf`, then the end of the last one.
    bounds: Vec<usize>,
}

impl Runs {
    fn with_capacity(runs: usize, bytes: usize) -> Runs {
        let mut bounds = Vec::with_capacity(runs + 1);
        bounds.push(0);
        Runs {
            buf: Vec::with_capacity(bytes),
            bounds,
        }
    }

    fn push(&mut self, run: &[u8]) {
        self.buf.extend_from_slice(run);
        self.bounds.push(self.buf.len());
    }

    fn len(&self) -> usize {
        self.bounds.len() - 1
    }

    fn get(&self, i: usize) -> &[u8] {
        &self.buf[self.bounds[i]..self.bounds[i + 1]]
    }

    fn run_len(&self, i: usize) -> usize {
        self.bounds[i + 1] - self.bounds[i]
    }

    /// Splits off runs `at..`.
    fn split_off(&mut self, at: usize) -> Runs {
        let start = self.bounds[at];
        let buf = self.buf.split_off(start);
        let bounds = self.bounds[at..].iter().map(|b| b - start).collect();
        self.bounds.truncate(at + 1);
        Runs { buf, bounds }
    }
}

/// Frames checked to be intact, at consecutive offsets from `first`: the
/// only way to build one is [`Frames::check`], so a segment can write
/// them without looking again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames {
    runs: Runs,
    first: u64,
    /// Its buffer goes back to [`recycled_buffer`]'s pool when dropped.
    recycle: bool,
}

/// Buffers of frames given back (see [`Frames::recycled`]), at most
/// [`RECYCLED_BUFFERS`], each of at most [`RECYCLED_BUFFER_BYTES`] (a
/// replication batch, 1 MiB by default, and one record past it): what a
/// node keeps after a catch-up is at most 8 MiB.
static RECYCLED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
const RECYCLED_BUFFERS: usize = 4;
const RECYCLED_BUFFER_BYTES: usize = 2 << 20;

/// An empty buffer, one a dropped [`Frames::recycled`] gave back when
/// there is one: a replica catching up reads its leader's next batch into
/// memory that is mapped and likely still cached, where a new allocation
/// is neither (copying into it was most of the receiving thread's time).
pub fn recycled_buffer() -> Vec<u8> {
    let popped = RECYCLED.lock().ok().and_then(|mut pool| pool.pop());
    let mut buf = popped.unwrap_or_default();
    buf.clear();
    buf
}

impl Drop for Frames {
    fn drop(&mut self) {
        let capacity = self.runs.buf.capacity();
        if !self.recycle || capacity == 0 || capacity > RECYCLED_BUFFER_BYTES {
            return;
        }
        if let Ok(mut pool) = RECYCLED.lock()
            && pool.len() < RECYCLED_BUFFERS
        {
            pool.push(std::mem::take(&mut self.runs.buf));
        }
    }
}

impl Frames {
    /// Checks `buf` as whole frames at offsets `first`, `first + 1`, …:
    /// each length possible and within `buf`, each offset the next, each
    /// CRC-32C right.
    pub fn check(buf: Vec<u8>, first: u64) -> Result<Frames, FramesError> {
        let mut bounds = vec![0];
        let mut cursor = 0usize;
        let mut expected = first;
        // Lengths and offsets first, then the checksums of the frames
        // before any fault; the first frame at fault, in order, is the
        // one reported.
        let mut fault = None;
        while cursor < buf.len() {
            let index = bounds.len() - 1;
            let rest = &buf[cursor..];
            let Some(head) = rest.first_chunk::<FRAME_HEADER_LEN>() else {
                fault = Some(FramesError::Truncated {
                    index,
                    expected,
                    have: rest.len(),
                    need: FRAME_HEADER_LEN as u64,
                });
                break;
            };
            let header = FrameHeader::decode(head);
            if header.len > MAX_RECORD_BYTES {
                fault = Some(FramesError::ImpossibleLength {
                    index,
                    len: header.len,
                });
                break;
            }
            if header.offset != expected {
                fault = Some(FramesError::Offset {
                    index,
                    expected,
                    got: header.offset,
                });
                break;
            }
            if (rest.len() as u64) < header.frame_len() {
                fault = Some(FramesError::Truncated {
                    index,
                    expected,
                    have: rest.len(),
                    need: header.frame_len(),
                });
                break;
            }
            cursor += header.frame_len() as usize;
            bounds.push(cursor);
            expected += 1;
        }
        if let Some(index) = first_mismatch(&buf, bounds.len() - 1, |i| bounds[i]) {
            let start = bounds[index];
            let head = buf[start..]
                .first_chunk::<FRAME_HEADER_LEN>()
                .map(FrameHeader::decode);
            if let Some(header) = head {
                let record = &buf[start + FRAME_HEADER_LEN..start + header.frame_len() as usize];
                let offset = first + index as u64;
                return Err(FramesError::Checksum {
                    index,
                    offset,
                    stored: header.crc,
                    computed: super::frame::checksum(header.len, offset, record),
                });
            }
        }
        if let Some(fault) = fault {
            return Err(fault);
        }
        Ok(Frames {
            runs: Runs { buf, bounds },
            first,
            recycle: false,
        })
    }

    /// Gives its buffer back to [`recycled_buffer`]'s pool when dropped.
    pub fn recycled(mut self) -> Frames {
        self.recycle = true;
        self
    }

    /// Offset of the first frame.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frame `i`, header included.
    pub fn frame(&self, i: usize) -> &[u8] {
        self.runs.get(i)
    }

    /// Length of record `i` (its frame without the header).
    pub fn record_len(&self, i: usize) -> usize {
        self.runs.run_len(i) - FRAME_HEADER_LEN
    }

    /// All frames, back to back.
    pub fn as_bytes(&self) -> &[u8] {
        &self.runs.buf
    }

    /// Where frame `i` starts in [`Frames::as_bytes`].
    pub fn start(&self, i: usize) -> usize {
        self.runs.bounds[i]
    }

    /// Bytes of all frames, headers included.
    pub fn bytes(&self) -> usize {
        self.runs.buf.len()
    }

    /// Splits off frames `at..` (a batch that a roll divides).
    pub fn split_off(&mut self, at: usize) -> Frames {
        Frames {
            runs: self.runs.split_off(at),
            first: self.first + at as u64,
            recycle: false,
        }
    }
}

/// A producer's values, back to back in one buffer: a batch of a thousand
/// records is two allocations, not a thousand and one (BENCHMARKS.md,
/// "Batched produce against the round before the race").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values {
    runs: Runs,
}

impl Default for Values {
    fn default() -> Values {
        Values::with_capacity(0, 0)
    }
}

impl Values {
    /// Room for `records` values of `bytes` in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Values {
        Values {
            runs: Runs::with_capacity(records, bytes),
        }
    }

    /// One value.
    pub fn one(value: &[u8]) -> Values {
        let mut v = Values::with_capacity(1, value.len());
        v.push(value);
        v
    }

    pub fn push(&mut self, value: &[u8]) {
        self.runs.push(value);
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length of value `i`.
    pub fn value_len(&self, i: usize) -> usize {
        self.runs.run_len(i)
    }

    /// Value `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        self.runs.get(i)
    }

    /// The values in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Bytes of all values.
    pub fn bytes(&self) -> usize {
        self.runs.buf.len()
    }

    /// Splits off values `at..`.
    pub fn split_off(&mut self, at: usize) -> Values {
        Values {
            runs: self.runs.split_off(at),
        }
    }
}

impl<V: AsRef<[u8]>> FromIterator<V> for Values {
    fn from_iter<I: IntoIterator<Item = V>>(values: I) -> Values {
        let mut out = Values::default();
        for v in values {
            out.push(v.as_ref());
        }
        out
    }
}

/// What an append writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Records {
    /// Values from a producer; the segment gives them offsets and frames.
    Values(Values),
    /// A replica's copy of its leader's frames, at the leader's offsets.
    Frames(Frames),
}

impl Records {
    pub fn len(&self) -> usize {
        match self {
            Records::Values(v) => v.len(),
            Records::Frames(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length of record `i`'s bytes.
    pub fn record_len(&self, i: usize) -> usize {
        match self {
            Records::Values(v) => v.value_len(i),
            Records::Frames(f) => f.record_len(i),
        }
    }

    /// The longest record's length (0 when empty).
    pub fn max_record_len(&self) -> usize {
        (0..self.len())
            .map(|i| self.record_len(i))
            .max()
            .unwrap_or(0)
    }

    /// Bytes the records take in a store, frame headers included.
    pub fn frame_bytes(&self) -> u64 {
        match self {
            Records::Values(v) => (v.len() * FRAME_HEADER_LEN + v.bytes()) as u64,
            Records::Frames(f) => f.bytes() as u64,
        }
    }

    /// Splits off records `at..`.
    pub fn split_off(&mut self, at: usize) -> Records {
        match self {
            Records::Values(v) => Records::Values(v.split_off(at)),
            Records::Frames(f) => Records::Frames(f.split_off(at)),
        }
    }

    /// The offset the first record must get, for frames (a replica's).
    pub fn required_first(&self) -> Option<u64> {
        match self {
            Records::Values(_) => None,
            Records::Frames(f) => Some(f.first()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(first: u64, values: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (i, v) in values.iter().enumerate() {
            buf.extend_from_slice(&FrameHeader::new(first + i as u64, v).encode());
            buf.extend_from_slice(v);
        }
        buf
    }

    #[test]
    fn recycled_frames_give_their_buffer_back_empty_up_to_the_bounds() {
        // The only test that recycles (the pool is the process's).
        let mut big = frames(0, &[b"x"]);
        big.reserve_exact((RECYCLED_BUFFER_BYTES + 1) - big.len());
        let ptrs: Vec<*const u8> = (0..RECYCLED_BUFFERS + 1)
            .map(|i| {
                let mut buf = frames(0, &[b"abc"]);
                buf.reserve_exact(RECYCLED_BUFFER_BYTES - buf.len() - i);
                let ptr = buf.as_ptr();
                drop(Frames::check(buf, 0).unwrap().recycled());
                ptr
            })
            .collect();
        // Over the size bound, or not marked: not kept.
        drop(Frames::check(big, 0).unwrap().recycled());
        drop(Frames::check(frames(0, &[b"y"]), 0).unwrap());
        let back: Vec<Vec<u8>> = (0..RECYCLED_BUFFERS + 1)
            .map(|_| recycled_buffer())
            .collect();
        for (i, buf) in back.iter().enumerate().take(RECYCLED_BUFFERS) {
            assert!(buf.is_empty());
            // Last in, first out; the one past the count bound was dropped.
            assert_eq!(buf.as_ptr(), ptrs[RECYCLED_BUFFERS - 1 - i]);
            assert_eq!(
                buf.capacity(),
                RECYCLED_BUFFER_BYTES - (RECYCLED_BUFFERS - 1 - i)
            );
        }
        assert_eq!(
            back[RECYCLED_BUFFERS].capacity(),
            0,
            "the pool held more than its bound"
        );
    }

    fn value_lens(values: &[&[u8]]) -> Vec<usize> {
        let v: Values = values.iter().collect();
        (0..v.len()).map(|i| v.value_len(i)).collect()
    }

    #[test]
    fn values_keep_each_record_whole_and_in_order_across_a_split() {
        let mut v: Values = [&b"a"[..], b"", b"bcd", b"ef"].into_iter().collect();
        assert_eq!((v.len(), v.bytes()), (4, 6));
        assert_eq!(
            v.iter().collect::<Vec<_>>(),
            [&b"a"[..], b"", b"bcd", b"ef"]
        );
        let tail = v.split_off(2);
        assert_eq!(v.iter().collect::<Vec<_>>(), [&b"a"[..], b""]);
        assert_eq!(tail.iter().collect::<Vec<_>>(), [&b"bcd"[..], b"ef"]);
        assert_eq!(
            Records::Values(tail).frame_bytes(),
            2 * FRAME_HEADER_LEN as u64 + 5
        );
        let mut all = v.clone();
        assert!(all.split_off(2).is_empty() && all == v);
        assert_eq!(Values::one(b"xyz").get(0), b"xyz");
        assert_eq!(value_lens(&[b"ab", b"", b"c"]), [2, 0, 1]);
    }

    #[test]
    fn intact_frames_are_accepted_and_split_at_frame_bounds() {
        let mut f = Frames::check(frames(7, &[b"a", b"bcd", b""]), 7).unwrap();
        assert_eq!((f.first(), f.len()), (7, 3));
        assert_eq!(f.record_len(1), 3);
        assert_eq!(&f.frame(1)[FRAME_HEADER_LEN..], b"bcd");
        let tail = f.split_off(1);
        assert_eq!((f.len(), tail.first(), tail.len()), (1, 8, 2));
        assert_eq!(tail, Frames::check(frames(8, &[b"bcd", b""]), 8).unwrap());
        assert_eq!(f, Frames::check(frames(7, &[b"a"]), 7).unwrap());
    }

    #[test]
    fn a_flipped_bit_a_wrong_offset_or_a_cut_frame_is_refused() {
        let good = frames(0, &[b"hello", b"world"]);
        let mut flipped = good.clone();
        flipped[FRAME_HEADER_LEN + 1] ^= 1;
        assert!(matches!(
            Frames::check(flipped, 0),
            Err(FramesError::Checksum {
                index: 0,
                offset: 0,
                ..
            })
        ));
        assert!(matches!(
            Frames::check(good.clone(), 1),
            Err(FramesError::Offset {
                expected: 1,
                got: 0,
                ..
            })
        ));
        let cut = good[..good.len() - 1].to_vec();
        assert!(matches!(
            Frames::check(cut, 0),
            Err(FramesError::Truncated { index: 1, .. })
        ));
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Frames::check(huge, 0),
            Err(FramesError::ImpossibleLength { index: 0, .. })
        ));
        assert!(Frames::check(Vec::new(), 5).unwrap().is_empty());
    }
}
