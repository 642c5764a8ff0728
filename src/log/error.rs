//! Errors of the actor layer.

use crate::storage::StorageError;

/// What a LogActor answers when it cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The storage core refused or failed (out of range, too large, corrupt,
    /// disk full, records lost, I/O).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The actor serving this request failed and is being restarted, or an
    /// earlier append it had queued failed: the request was not carried out
    /// (an append was not appended; sending it again is safe).
    #[error("partition {partition} is unavailable: {reason}")]
    Unavailable { partition: String, reason: String },
    /// An append whose outcome is unknown: its bytes may have reached the
    /// file before the write, the `fdatasync` or the actor failed. It may be
    /// served after recovery; sending it again may duplicate it.
    #[error("partition {partition}: append may or may not have been written: {reason}")]
    Indeterminate { partition: String, reason: String },
    /// Durable data of the partition is damaged: it serves what is intact and
    /// refuses writes until an operator runs `proglog repair`.
    #[error("partition {partition} is read-only: {reason}")]
    ReadOnly { partition: String, reason: String },
    /// A replica's append named another offset than the next one: nothing
    /// was written (replication of that partition stops, reported).
    #[error(
        "partition {partition}: replica append at offset {got}, but the next offset is {expected}"
    )]
    OffsetMismatch {
        partition: String,
        expected: u64,
        got: u64,
    },
    /// No partition with that id on this node.
    #[error("unknown partition {0:?}")]
    UnknownPartition(String),
    /// The partition was closed (node shutting down).
    #[error("partition {0} is closed")]
    Closed(String),
}

/// Whether a failed append may have been written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Certainly not appended: sending it again cannot duplicate it.
    No,
    /// Maybe appended: sending it again may duplicate it.
    Maybe,
}

impl LogError {
    pub(crate) fn unavailable(partition: &str, reason: impl Into<String>) -> LogError {
        LogError::Unavailable {
            partition: partition.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn indeterminate(partition: &str, reason: impl Into<String>) -> LogError {
        LogError::Indeterminate {
            partition: partition.to_string(),
            reason: reason.into(),
        }
    }

    /// For a failed append: whether its records may have been written.
    pub fn appended(&self) -> Appended {
        match self {
            LogError::Indeterminate { .. } => Appended::Maybe,
            // Write failures after bytes may have reached the file are
            // turned into `Indeterminate` where they happen; any other
            // error refused the append before it was written.
            _ => Appended::No,
        }
    }
}
