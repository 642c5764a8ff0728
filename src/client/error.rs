//! Client errors: the schema's typed domain errors, plus transport failures.

use crate::wire::errors::{WireError, read_error};
use crate::wire::schema::error;

/// What a call can fail with. Domain errors mirror the schema's `Error`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("offset {offset} is out of range: the partition holds [{lowest}, {next})")]
    OffsetOutOfRange { offset: u64, lowest: u64, next: u64 },
    #[error("unknown partition {0:?}")]
    UnknownPartition(String),
    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { size: u64, max: u64 },
    #[error("permission denied: {subject} may not {action} {object}")]
    PermissionDenied {
        subject: String,
        action: String,
        object: String,
    },
    #[error("corrupt record on the server: {0}")]
    Corruption(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Not appended: the server's disk is full; retry later.
    #[error("disk full on the server (not appended): {0}")]
    DiskFull(String),
    /// Not appended: the partition's durable data is damaged; reads work.
    #[error("partition is read-only (not appended): {0}")]
    ReadOnly(String),
    /// Maybe appended: a write failed after the records reached the file;
    /// sending them again may duplicate them.
    #[error("outcome unknown (maybe appended): {0}")]
    Indeterminate(String),
    /// Offsets `[from, to)` will never be served; read on from `to`.
    #[error("records [{from}, {to}) are lost: {message}")]
    RecordsLost { from: u64, to: u64, message: String },
    /// Not appended (`acks=all`): fewer live holders of the partition than
    /// `min-insync-replicas`; retry when more nodes are up.
    #[error("not enough replicas (not appended): {live} live holders, {required} required")]
    NotEnoughReplicas { live: u32, required: u32 },
    /// Appended on the leader (`acks=all`) but not confirmed by enough
    /// holders in time; it may still be replicated: resending may duplicate.
    #[error("replication timed out (appended on the leader, maybe not replicated): {0}")]
    ReplicationTimeout(String),
    /// Not done: a per-client limit of the server was reached (streams
    /// open on one connection, writes of one produce stream); retry once
    /// some end.
    #[error("overloaded (not done): {0}")]
    Overloaded(String),
    /// The RPC itself failed (connection lost, protocol error).
    #[error("rpc: {0}")]
    Rpc(#[from] capnp::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// TLS set-up failed (bad certificate files, handshake refused).
    #[error("tls: {0}")]
    Tls(String),
}

impl From<capnp::NotInSchema> for ClientError {
    fn from(e: capnp::NotInSchema) -> Self {
        ClientError::Rpc(e.into())
    }
}

impl ClientError {
    pub(crate) fn from_wire(e: error::Reader<'_>) -> Result<ClientError, ClientError> {
        let (kind, message) = read_error(e)?;
        Ok(match kind {
            WireError::OffsetOutOfRange {
                offset,
                lowest,
                next,
            } => ClientError::OffsetOutOfRange {
                offset,
                lowest,
                next,
            },
            WireError::UnknownPartition(id) => ClientError::UnknownPartition(id),
            WireError::RecordTooLarge { size, max } => ClientError::RecordTooLarge { size, max },
            WireError::PermissionDenied {
                subject,
                action,
                object,
            } => ClientError::PermissionDenied {
                subject,
                action,
                object,
            },
            WireError::Corruption => ClientError::Corruption(message),
            WireError::Unavailable => ClientError::Unavailable(message),
            WireError::InvalidArgument => ClientError::InvalidArgument(message),
            WireError::DiskFull => ClientError::DiskFull(message),
            WireError::ReadOnly => ClientError::ReadOnly(message),
            WireError::Indeterminate => ClientError::Indeterminate(message),
            WireError::RecordsLost { from, to } => ClientError::RecordsLost { from, to, message },
            WireError::NotEnoughReplicas { live, required } => {
                ClientError::NotEnoughReplicas { live, required }
            }
            WireError::ReplicationTimeout => ClientError::ReplicationTimeout(message),
            WireError::Overloaded => ClientError::Overloaded(message),
        })
    }

    /// For a failed produce: true when the records may have been appended,
    /// so sending them again may duplicate them. Transport failures are
    /// "maybe" too: the request may have reached the server.
    pub fn maybe_appended(&self) -> bool {
        matches!(
            self,
            ClientError::Indeterminate(_)
                | ClientError::ReplicationTimeout(_)
                | ClientError::Rpc(_)
                | ClientError::Io(_)
        )
    }
}
