//! Reads planned where the segment lives (the index lookups, on the
//! SegmentActor's thread) and carried out where it suits: at once when the
//! bytes are in the page cache, else on the blocking pool, so a cold read
//! never stalls the thread that serves RPC, gossip and the other partitions.
//! A plan covers committed records only, which are always in the file (never
//! in the write buffer), so it can be carried out by any thread.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::batch::RecordBatch;
use super::disk;
use super::error::{Result, StorageError};
use super::frame::{FRAME_HEADER_LEN, FrameHeader, first_mismatch};
use super::store::check_frame;

/// One record, or a run of consecutive records, to read from a store file.
#[derive(Debug, Clone)]
pub struct PlannedRead {
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
    /// Where the first frame starts, and how many bytes to read.
    pub(crate) position: u64,
    pub(crate) len: usize,
    /// Offset of the first record.
    pub(crate) first: u64,
    /// Records at or past this offset are not returned (batch reads).
    pub(crate) until: u64,
}

impl PlannedRead {
    /// The bytes, if `cached_only` is false or they are all in the page cache.
    fn bytes(&self, cached_only: bool) -> Result<Option<Vec<u8>>> {
        disk::read_exact(&self.file, &self.path, self.len, self.position, cached_only)
            .map_err(StorageError::io("read", &self.path))
    }

    /// Reads one record now if it is in the page cache (`None`: it is not).
    pub fn record_if_cached(&self) -> Option<Result<Vec<u8>>> {
        self.bytes(true)
            .transpose()
            .map(|b| b.and_then(|b| self.record(b)))
    }

    /// Reads one record, waiting for the disk if need be.
    pub fn record(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let mut bytes = bytes;
        let header = check_frame(&self.path, self.position, &bytes, self.first)?;
        bytes.copy_within(FRAME_HEADER_LEN.., 0);
        bytes.truncate(header.len as usize);
        Ok(bytes)
    }

    /// Reads one record from the disk (for the blocking pool).
    pub fn record_from_disk(&self) -> Result<Vec<u8>> {
        let bytes = self.bytes(false)?.unwrap_or_default();
        self.record(bytes)
    }

    /// Reads the batch now if it is in the page cache (`None`: it is not).
    pub fn batch_if_cached(&self) -> Option<Result<RecordBatch>> {
        self.bytes(true)
            .transpose()
            .map(|b| b.and_then(|b| self.batch(b)))
    }

    /// Reads the batch from the disk (for the blocking pool).
    pub fn batch_from_disk(&self) -> Result<RecordBatch> {
        let bytes = self.bytes(false)?.unwrap_or_default();
        self.batch(bytes)
    }

    /// Checks the frames in `bytes` (lengths and offsets, then checksums):
    /// a corrupt record ends the batch before it, or is the error if it is
    /// the first.
    fn batch(&self, bytes: Vec<u8>) -> Result<RecordBatch> {
        // (offset, start of the record, its length) of each frame walked.
        let mut records = Vec::new();
        let mut cursor = 0usize;
        let mut expected = self.first;
        // The first frame whose length or offset is wrong, and why.
        let mut fault = None;
        while expected < self.until {
            let Some(head) = bytes[cursor..].first_chunk::<FRAME_HEADER_LEN>() else {
                break;
            };
            let header = FrameHeader::decode(head);
            let end = cursor + header.frame_len() as usize;
            if end > bytes.len() {
                fault = Some((records.len(), "frame length disagrees with the index"));
                break;
            }
            if header.offset != expected {
                fault = Some((records.len(), "checksum or offset mismatch"));
                break;
            }
            records.push((expected, cursor + FRAME_HEADER_LEN, header.len as usize));
            expected += 1;
            cursor = end;
        }
        let bad_sum = first_mismatch(&bytes, records.len(), |i| records[i].1 - FRAME_HEADER_LEN);
        let fault = match bad_sum {
            Some(index) => Some((index, "checksum or offset mismatch")),
            None => fault,
        };
        if let Some((index, reason)) = fault {
            if index == 0 {
                return Err(StorageError::corruption(
                    &self.path,
                    self.position,
                    format!("record {}: {reason}", self.first),
                ));
            }
            records.truncate(index);
        }
        let end = records.last().map_or(0, |&(_, start, len)| start + len);
        let mut bytes = bytes;
        bytes.truncate(end);
        Ok(RecordBatch::from_parts(bytes, records))
    }
}
