//! The records one `consumeBatch` answered, read in place from its reply.

use capnp::capability::Response;

use super::{ClientError, Record};
use crate::wire::schema::{consumed_batch, log};

/// Each record's offset and value, pointing into the reply that holds them.
type InPlace<'a> = Vec<(u64, &'a [u8])>;

self_cell::self_cell!(
    /// A reply and its records, read once from it: capnp counts every read
    /// of a message against its traversal limit, so records read again on
    /// each iteration could run past it and fail after the fact.
    struct Reply {
        owner: Response<log::consume_batch_results::Owned>,
        #[covariant]
        dependent: InPlace,
    }
);

/// The records one `consumeBatch` answered, in offset order, read in place
/// from the reply: no allocation and no copy per record (the race's range
/// reads spent both on every record before, see BENCHMARKS.md).
/// [`ConsumedBatch::to_records`] copies them out where they must outlive it.
pub struct ConsumedBatch {
    reply: Reply,
}

impl ConsumedBatch {
    /// Takes a reply: its records, or the error the server answered.
    pub(crate) fn from_reply(
        reply: Response<log::consume_batch_results::Owned>,
    ) -> Result<ConsumedBatch, ClientError> {
        let reply = Reply::try_new(reply, |reply| match reply.get()?.get_result()?.which()? {
            consumed_batch::Which::Records(list) => list?
                .iter()
                .map(|r| Ok((r.get_offset(), r.get_value()?)))
                .collect(),
            consumed_batch::Which::Error(e) => Err(ClientError::from_wire(e?)?),
        })?;
        Ok(ConsumedBatch { reply })
    }

    fn records(&self) -> &[(u64, &[u8])] {
        self.reply.borrow_dependent()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records().len()
    }

    pub fn is_empty(&self) -> bool {
        self.records().is_empty()
    }

    /// Record `i` as (offset, value).
    pub fn get(&self, i: usize) -> Option<(u64, &[u8])> {
        self.records().get(i).copied()
    }

    /// The records in offset order, as (offset, value).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u64, &[u8])> + '_ {
        self.records().iter().copied()
    }

    /// Offset of the first record, if any.
    pub fn first_offset(&self) -> Option<u64> {
        self.records().first().map(|&(offset, _)| offset)
    }

    /// Offset after the last record, if any: where the next read continues.
    pub fn next_offset(&self) -> Option<u64> {
        self.records().last().map(|&(offset, _)| offset + 1)
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
            .field("len", &self.len())
            .field("first_offset", &self.first_offset())
            .field("next_offset", &self.next_offset())
            .finish()
    }
}
