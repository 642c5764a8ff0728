//! The records one `consumeBatch` answered, read in place from its reply.

use capnp::capability::Response;

use super::{ClientError, Record};
use crate::wire::schema::{consumed_batch, log, record};

/// The records one `consumeBatch` answered, in offset order, read in place
/// from the reply: no allocation and no copy per record (the race's range
/// reads spent both on every record before, see BENCHMARKS.md).
/// [`ConsumedBatch::to_records`] copies them out where they must outlive it.
pub struct ConsumedBatch {
    reply: Response<log::consume_batch_results::Owned>,
    len: u32,
}

impl ConsumedBatch {
    /// Takes a reply: its records, each checked readable here so that
    /// reading them later cannot fail, or the error the server answered.
    pub(crate) fn from_reply(
        reply: Response<log::consume_batch_results::Owned>,
    ) -> Result<ConsumedBatch, ClientError> {
        let len = match reply.get()?.get_result()?.which()? {
            consumed_batch::Which::Records(list) => {
                let list = list?;
                for r in list.iter() {
                    r.get_value()?;
                }
                list.len()
            }
            consumed_batch::Which::Error(e) => return Err(ClientError::from_wire(e?)?),
        };
        Ok(ConsumedBatch { reply, len })
    }

    /// The records' list (checked by `from_reply`, so never `None`).
    fn list(&self) -> Option<capnp::struct_list::Reader<'_, record::Owned>> {
        match self.reply.get().ok()?.get_result().ok()?.which().ok()? {
            consumed_batch::Which::Records(list) => list.ok(),
            consumed_batch::Which::Error(_) => None,
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Record `i` as (offset, value).
    pub fn get(&self, i: usize) -> Option<(u64, &[u8])> {
        let i = u32::try_from(i).ok().filter(|&i| i < self.len)?;
        let r = self.list()?.get(i);
        Some((r.get_offset(), r.get_value().ok()?))
    }

    /// The records in offset order, as (offset, value).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let list = self.list();
        (0..self.len).filter_map(move |i| {
            let r = list?.get(i);
            Some((r.get_offset(), r.get_value().ok()?))
        })
    }

    /// Offset of the first record, if any.
    pub fn first_offset(&self) -> Option<u64> {
        self.get(0).map(|(offset, _)| offset)
    }

    /// Offset after the last record, if any: where the next read continues.
    pub fn next_offset(&self) -> Option<u64> {
        let last = self.len.checked_sub(1)?;
        self.get(last as usize).map(|(offset, _)| offset + 1)
    }

    /// The records copied out of the reply.
    pub fn to_records(&self) -> Vec<Record> {
        self.iter()
            .map(|(offset, value)| Record {
                offset,
                value: value.to_vec(),
            })
            .collect()
    }
}

impl std::fmt::Debug for ConsumedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumedBatch")
            .field("len", &self.len)
            .field("first_offset", &self.first_offset())
            .field("next_offset", &self.next_offset())
            .finish()
    }
}
