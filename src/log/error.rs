//! Errors of the actor layer.

use crate::storage::StorageError;

/// What a LogActor answers when it cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The storage core refused or failed (out of range, too large, corrupt, I/O).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The actor serving this request failed and is being restarted, or went
    /// away; the request was not carried out (an append was not acknowledged).
    #[error("partition {partition} is unavailable: {reason}")]
    Unavailable { partition: String, reason: String },
    /// The partition failed repeatedly and is no longer restarted; it needs
    /// an operator. Reads of its healthy segments may still work.
    #[error("partition {partition} has failed: {reason}")]
    PartitionFailed { partition: String, reason: String },
    /// No partition with that id on this node.
    #[error("unknown partition {0:?}")]
    UnknownPartition(String),
    /// The partition was closed (node shutting down).
    #[error("partition {0} is closed")]
    Closed(String),
}

impl LogError {
    pub(crate) fn unavailable(partition: &str, reason: impl Into<String>) -> LogError {
        LogError::Unavailable {
            partition: partition.to_string(),
            reason: reason.into(),
        }
    }
}
