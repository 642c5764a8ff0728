//! The storage layer's one error type: callers match on meaning, not strings.

use std::io;
use std::path::PathBuf;

/// Everything the storage core can report. Each variant is something a caller
/// handles differently: retry, reject the request, alert an operator.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system call failed on `path` while doing `op`.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Bytes on disk are not what was written: a checksum, length or offset
    /// does not match. The record at that place is never served.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corruption {
        path: PathBuf,
        position: u64,
        reason: String,
    },

    /// The requested offset is not in the log: below `lowest` (removed by
    /// retention or truncation) or at/after `next` (not written yet).
    #[error("offset {offset} is out of range: the log holds [{lowest}, {next})")]
    OffsetOutOfRange { offset: u64, lowest: u64, next: u64 },

    /// A record larger than the configured maximum was refused.
    #[error("record of {size} bytes exceeds the maximum record size of {max} bytes")]
    RecordTooLarge { size: usize, max: u32 },

    /// A file in a log directory that the log did not create; the log refuses
    /// to guess what it is.
    #[error("unexpected file in log directory: {path}")]
    UnexpectedFile { path: PathBuf },

    /// A segment file written by another (newer or foreign) format.
    #[error("{path} has an unsupported format: {reason}")]
    UnsupportedFormat { path: PathBuf, reason: String },

    /// Another process (or another `Log` in this one) has the directory open.
    #[error("log directory {path} is locked by another process")]
    Locked { path: PathBuf },

    /// The configuration cannot work; the message names the setting.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),

    /// The file system is full (ENOSPC or EDQUOT), or its free space fell
    /// below the configured floor. Nothing of the failed write was kept: the
    /// records were not appended and may be sent again once space returns.
    #[error("disk full: {op} {path}: {reason}")]
    DiskFull {
        op: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// The records `[from, to)` will never be served: lost to a power cut
    /// beyond the recovery point or cut by `proglog repair` (see the
    /// partition's checkpoint). Reading resumes at `to`.
    #[error("records [{from}, {to}) are lost ({cause}); the log resumes at {to}")]
    RecordsLost {
        from: u64,
        to: u64,
        cause: &'static str,
    },

    /// The log was closed, or failed earlier and refuses further writes.
    #[error("log is closed")]
    Closed,
}

/// Result alias of the storage core.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    /// Wraps an OS error of `op` on `path`; a full file system becomes
    /// [`StorageError::DiskFull`], so callers can tell it from a failing disk.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| {
            if is_disk_full(&source) {
                StorageError::DiskFull {
                    op,
                    path,
                    reason: source.to_string(),
                }
            } else {
                StorageError::Io { op, path, source }
            }
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        position: u64,
        reason: impl Into<String>,
    ) -> Self {
        StorageError::Corruption {
            path: path.into(),
            position,
            reason: reason.into(),
        }
    }

    /// True for the errors that mean the data on disk is damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(self, StorageError::Corruption { .. })
    }

    /// True when the file system is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::DiskFull { .. })
    }
}

/// ENOSPC (no space left) or EDQUOT (quota exceeded).
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
