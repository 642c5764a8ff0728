//! The schema's typed `Error`: what a domain error is on the wire, written
//! by the server and read by the client (neither side's internals needed).

use crate::log_capnp::error;

/// A domain error as the wire carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    OffsetOutOfRange {
        offset: u64,
        lowest: u64,
        next: u64,
    },
    UnknownPartition(String),
    RecordTooLarge {
        size: u64,
        max: u64,
    },
    PermissionDenied {
        subject: String,
        action: String,
        object: String,
    },
    Corruption,
    Unavailable,
    InvalidArgument,
    DiskFull,
    ReadOnly,
    Indeterminate,
    RecordsLost {
        from: u64,
        to: u64,
    },
    /// Not appended (`acks=all`): too few live holders.
    NotEnoughReplicas {
        live: u32,
        required: u32,
    },
    /// Appended on the leader (`acks=all`), not confirmed by enough holders
    /// in time: resending may duplicate.
    ReplicationTimeout,
    /// Not done: a per-client limit was reached; retry once some end.
    Overloaded,
}

impl WireError {
    /// The kind as the schema spells it (`offsetOutOfRange`, `unknownPartition`,
    /// ...): the `outcome` label of `proglog_rpc_calls_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::OffsetOutOfRange { .. } => "offsetOutOfRange",
            WireError::UnknownPartition(_) => "unknownPartition",
            WireError::RecordTooLarge { .. } => "recordTooLarge",
            WireError::PermissionDenied { .. } => "permissionDenied",
            WireError::Corruption => "corruption",
            WireError::Unavailable => "unavailable",
            WireError::InvalidArgument => "invalidArgument",
            WireError::DiskFull => "diskFull",
            WireError::ReadOnly => "readOnly",
            WireError::Indeterminate => "indeterminate",
            WireError::RecordsLost { .. } => "recordsLost",
            WireError::NotEnoughReplicas { .. } => "notEnoughReplicas",
            WireError::ReplicationTimeout => "replicationTimeout",
            WireError::Overloaded => "overloaded",
        }
    }

    /// For a failed produce: true when the records may have been appended
    /// (sending them again may duplicate them); false when they certainly
    /// were not.
    pub fn maybe_appended(&self) -> bool {
        matches!(
            self,
            WireError::Indeterminate | WireError::ReplicationTimeout
        )
    }
}

/// Fills a schema `Error` builder.
pub fn write_error(mut builder: error::Builder<'_>, kind: &WireError, message: &str) {
    builder.set_message(message);
    let mut k = builder.init_kind();
    match kind {
        WireError::OffsetOutOfRange {
            offset,
            lowest,
            next,
        } => {
            let mut r = k.init_offset_out_of_range();
            r.set_offset(*offset);
            r.set_lowest(*lowest);
            r.set_next(*next);
        }
        WireError::UnknownPartition(id) => k.set_unknown_partition(id),
        WireError::RecordTooLarge { size, max } => {
            let mut r = k.init_record_too_large();
            r.set_size(*size);
            r.set_max(*max);
        }
        WireError::PermissionDenied {
            subject,
            action,
            object,
        } => {
            let mut r = k.init_permission_denied();
            r.set_subject(subject);
            r.set_action(action);
            r.set_object(object);
        }
        WireError::Corruption => k.set_corruption(()),
        WireError::Unavailable => k.set_unavailable(()),
        WireError::InvalidArgument => k.set_invalid_argument(()),
        WireError::DiskFull => k.set_disk_full(()),
        WireError::ReadOnly => k.set_read_only(()),
        WireError::Indeterminate => k.set_indeterminate(()),
        WireError::RecordsLost { from, to } => {
            let mut r = k.init_records_lost();
            r.set_from(*from);
            r.set_to(*to);
        }
        WireError::NotEnoughReplicas { live, required } => {
            let mut r = k.init_not_enough_replicas();
            r.set_live(*live);
            r.set_required(*required);
        }
        WireError::ReplicationTimeout => k.set_replication_timeout(()),
        WireError::Overloaded => k.set_overloaded(()),
    }
}

/// Reads a schema `Error` back (for the client library).
pub fn read_error(reader: error::Reader<'_>) -> capnp::Result<(WireError, String)> {
    use error::kind::Which;
    let message = reader.get_message()?.to_string().unwrap_or_default();
    let kind = match reader.get_kind().which()? {
        Which::OffsetOutOfRange(r) => {
            let r = r?;
            WireError::OffsetOutOfRange {
                offset: r.get_offset(),
                lowest: r.get_lowest(),
                next: r.get_next(),
            }
        }
        Which::UnknownPartition(id) => {
            WireError::UnknownPartition(id?.to_string().unwrap_or_default())
        }
        Which::RecordTooLarge(r) => {
            let r = r?;
            WireError::RecordTooLarge {
                size: r.get_size(),
                max: r.get_max(),
            }
        }
        Which::PermissionDenied(r) => {
            let r = r?;
            let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> capnp::Result<String> {
                Ok(t?.to_string().unwrap_or_default())
            };
            WireError::PermissionDenied {
                subject: text(r.get_subject())?,
                action: text(r.get_action())?,
                object: text(r.get_object())?,
            }
        }
        Which::Corruption(()) => WireError::Corruption,
        Which::Unavailable(()) => WireError::Unavailable,
        Which::InvalidArgument(()) => WireError::InvalidArgument,
        Which::DiskFull(()) => WireError::DiskFull,
        Which::ReadOnly(()) => WireError::ReadOnly,
        Which::Indeterminate(()) => WireError::Indeterminate,
        Which::RecordsLost(r) => {
            let r = r?;
            WireError::RecordsLost {
                from: r.get_from(),
                to: r.get_to(),
            }
        }
        Which::NotEnoughReplicas(r) => {
            let r = r?;
            WireError::NotEnoughReplicas {
                live: r.get_live(),
                required: r.get_required(),
            }
        }
        Which::ReplicationTimeout(()) => WireError::ReplicationTimeout,
        Which::Overloaded(()) => WireError::Overloaded,
    };
    Ok((kind, message))
}
