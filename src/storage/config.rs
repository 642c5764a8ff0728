//! Settings of one log (one partition directory).

use std::time::Duration;

use super::error::{Result, StorageError};
use super::frame::{FILE_HEADER_LEN, FRAME_HEADER_LEN, INDEX_ENTRY_LEN, MAX_RECORD_BYTES};

/// When appended bytes are forced from the page cache to the disk.
///
/// Whatever the policy, an append is handed to the kernel (the group
/// commit's flush) before it is answered, so an answered record survives
/// the crash or SIGKILL of the process. The policy only decides what
/// survives a power loss or kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` before every append / flush returns: a flushed record
    /// survives a power loss. Costs one disk sync per call.
    Always,
    /// `fdatasync` when the last one is older than this interval (checked at
    /// every commit and by the SegmentActor's sync timer): a power loss
    /// loses at most about one interval of flushed records.
    Interval(Duration),
    /// Never sync explicitly (segments are still synced when they are rolled
    /// and closed): the OS writes back dirty pages (typically within 30 s),
    /// and a power loss can lose that much.
    Never,
}

impl Default for SyncPolicy {
    /// `Interval(1s)`, like Redis' `appendfsync everysec`.
    fn default() -> Self {
        SyncPolicy::Interval(Duration::from_secs(1))
    }
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;

    /// Parses `always`, `never`, `interval` (1000 ms) or `interval:<ms>`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "never" => Ok(SyncPolicy::Never),
            "interval" => Ok(SyncPolicy::default()),
            other => match other.strip_prefix("interval:") {
                Some(ms) => ms
                    .trim_end_matches("ms")
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(|ms| SyncPolicy::Interval(Duration::from_millis(ms)))
                    .ok_or_else(|| format!("bad sync interval {ms:?}: expected milliseconds > 0")),
                None => Err(format!(
                    "unknown sync policy {other:?}: expected always, never, interval or interval:<ms>"
                )),
            },
        }
    }
}

impl std::fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncPolicy::Always => f.write_str("always"),
            SyncPolicy::Never => f.write_str("never"),
            SyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// Which old segments may be deleted. The active segment is never deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete the oldest segments while the log is larger than this many bytes.
    /// Default: `None` (no size limit).
    pub max_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this. Default: `None`.
    pub max_age: Option<Duration>,
}

impl Retention {
    /// How many of the oldest segments to delete, given each segment's size
    /// in bytes and last modification, oldest first. The last one is the
    /// active segment and is never counted. Size goes first (delete the oldest
    /// while over the limit), then age (delete while the oldest is too old).
    pub fn segments_to_delete(
        &self,
        segments: &[(u64, std::time::SystemTime)],
        now: std::time::SystemTime,
    ) -> usize {
        let deletable = segments.len().saturating_sub(1);
        let mut n = 0;
        if let Some(max) = self.max_bytes {
            let mut total: u64 = segments.iter().map(|s| s.0).sum();
            while n < deletable && total > max {
                total -= segments[n].0;
                n += 1;
            }
        }
        if let Some(age) = self.max_age {
            while n < deletable && now.duration_since(segments[n].1).unwrap_or_default() > age {
                n += 1;
            }
        }
        n
    }
}

/// Default of [`LogConfig::min_free_bytes`]: 64 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;

/// Settings of one partition's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment's store file is rolled before it would exceed this many bytes
    /// (frames plus the file header). Default: 128 MiB.
    pub max_store_bytes: u64,
    /// A segment's index file is rolled when it holds this many bytes of
    /// 12-byte entries (plus its header). Default: 10 MiB (about 870,000 records).
    pub max_index_bytes: u64,
    /// Offset of the first record of a new, empty log. Default: 0.
    pub initial_offset: u64,
    /// Largest record accepted, in bytes. Default: 1 MiB.
    pub max_record_bytes: u32,
    /// Durability of appends. Default: [`SyncPolicy::Interval`] of 1 s.
    pub sync: SyncPolicy,
    /// Deletion of old segments. Default: keep everything.
    pub retention: Retention,
    /// Appends are refused with a typed disk-full error while the file
    /// system holding the log has less than this many bytes free, so the
    /// node keeps room for its own metadata (checkpoints, index growth,
    /// seals) and never meets ENOSPC in the middle of a write. 0 turns the
    /// floor off. Default: 64 MiB.
    pub min_free_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_store_bytes: 128 << 20,
            max_index_bytes: 10 << 20,
            initial_offset: 0,
            max_record_bytes: 1 << 20,
            sync: SyncPolicy::default(),
            retention: Retention::default(),
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

impl LogConfig {
    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(StorageError::InvalidConfig(msg));
        if self.max_record_bytes == 0 {
            return bad("max_record_bytes must be at least 1".into());
        }
        if self.max_record_bytes > MAX_RECORD_BYTES {
            return bad(format!(
                "max_record_bytes ({}) is above the format's limit of {MAX_RECORD_BYTES} bytes",
                self.max_record_bytes
            ));
        }
        let min_store = (FILE_HEADER_LEN + FRAME_HEADER_LEN) as u64 + self.max_record_bytes as u64;
        if self.max_store_bytes < min_store {
            return bad(format!(
                "max_store_bytes ({}) must hold at least one record of max_record_bytes ({}) plus headers: {} bytes",
                self.max_store_bytes, self.max_record_bytes, min_store
            ));
        }
        let min_index = (FILE_HEADER_LEN + INDEX_ENTRY_LEN) as u64;
        if self.max_index_bytes < min_index {
            return bad(format!(
                "max_index_bytes ({}) must hold at least one entry: {} bytes",
                self.max_index_bytes, min_index
            ));
        }
        // Relative offsets are u32.
        let entries = (self.max_index_bytes - FILE_HEADER_LEN as u64) / INDEX_ENTRY_LEN as u64;
        if entries > u32::MAX as u64 {
            return bad("max_index_bytes is too large: more than 2^32 entries".into());
        }
        if let SyncPolicy::Interval(d) = self.sync
            && d.is_zero()
        {
            return bad("sync interval must be greater than zero".into());
        }
        Ok(())
    }

    /// How many index entries one segment holds.
    pub(crate) fn index_capacity(&self) -> u64 {
        (self.max_index_bytes - FILE_HEADER_LEN as u64) / INDEX_ENTRY_LEN as u64
    }
}
