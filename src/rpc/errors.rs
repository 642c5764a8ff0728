//! The server's side of the wire errors: a log error classified into the
//! schema's typed `Error`.

use crate::log::LogError;
use crate::log_capnp::error;
use crate::storage::StorageError;
use crate::wire::errors::{WireError, write_error};

/// Classifies a log error for the wire; the message goes along for humans.
pub fn classify(e: &LogError) -> WireError {
    match e {
        LogError::Storage(StorageError::OffsetOutOfRange {
            offset,
            lowest,
            next,
        }) => WireError::OffsetOutOfRange {
            offset: *offset,
            lowest: *lowest,
            next: *next,
        },
        LogError::Storage(StorageError::RecordTooLarge { size, max }) => {
            WireError::RecordTooLarge {
                size: *size as u64,
                max: *max as u64,
            }
        }
        LogError::Storage(StorageError::Corruption { .. }) => WireError::Corruption,
        LogError::Storage(StorageError::DiskFull { .. }) => WireError::DiskFull,
        LogError::Storage(StorageError::RecordsLost { from, to, .. }) => WireError::RecordsLost {
            from: *from,
            to: *to,
        },
        LogError::Indeterminate { .. } => WireError::Indeterminate,
        LogError::ReadOnly { .. } => WireError::ReadOnly,
        LogError::UnknownPartition(id) => WireError::UnknownPartition(id.clone()),
        // Never from a client's call: only a replicator appends at an offset.
        LogError::Storage(_)
        | LogError::OffsetMismatch { .. }
        | LogError::Unavailable { .. }
        | LogError::Closed(_) => WireError::Unavailable,
    }
}

/// Fills a schema `Error` builder from a log error.
pub fn write_log_error(builder: error::Builder<'_>, e: &LogError) {
    write_error(builder, &classify(e), &e.to_string());
}
