//! A run of consecutive records read with a single copy.

/// Consecutive records read from a log. The frames were copied once, from the
/// store into `buf`; records are slices of it, so handing a batch to a
/// stream costs no further copy per record.
#[derive(Debug, Default, Clone)]
pub struct RecordBatch {
    pub(crate) buf: Vec<u8>,
    /// (offset, start in `buf`, length) of each record.
    records: Vec<(u64, usize, usize)>,
    /// The log's committed end when the batch was read (0: not known).
    committed_end: u64,
}

impl RecordBatch {
    /// A batch of `buf`'s records, each (offset, start in `buf`, length).
    pub(crate) fn from_parts(buf: Vec<u8>, records: Vec<(u64, usize, usize)>) -> RecordBatch {
        RecordBatch {
            buf,
            records,
            committed_end: 0,
        }
    }

    /// Notes the log's committed end at the time of the read.
    pub fn with_committed_end(mut self, end: u64) -> RecordBatch {
        self.committed_end = end;
        self
    }

    /// The log's committed end when the batch was read, as far as known:
    /// at least the end of this batch.
    pub fn committed_end(&self) -> u64 {
        self.committed_end.max(self.next_offset().unwrap_or(0))
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Offset of the first record, if any.
    pub fn first_offset(&self) -> Option<u64> {
        self.records.first().map(|r| r.0)
    }

    /// Offset after the last record, if any: where the next read continues.
    pub fn next_offset(&self) -> Option<u64> {
        self.records.last().map(|r| r.0 + 1)
    }

    /// The records' frames as stored (headers included, each checked when
    /// read): what a leader sends a replica.
    pub fn frames(&self) -> &[u8] {
        &self.buf
    }

    /// Sum of the records' lengths.
    pub fn payload_bytes(&self) -> usize {
        self.records.iter().map(|r| r.2).sum()
    }

    /// Record `i` as (offset, bytes).
    pub fn get(&self, i: usize) -> Option<(u64, &[u8])> {
        self.records
            .get(i)
            .map(|&(o, s, l)| (o, &self.buf[s..s + l]))
    }

    /// The records in offset order, as (offset, bytes).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u64, &[u8])> + '_ {
        self.records
            .iter()
            .map(|&(o, s, l)| (o, &self.buf[s..s + l]))
    }
}
