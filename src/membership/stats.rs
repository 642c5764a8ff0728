//! Packet counters shared by the gossip task and the actor.

use std::cell::Cell;

/// Live counters, updated by the gossip task and read by the actor; both
/// run on the same thread, so plain cells suffice. They survive restarts.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Datagrams received, whatever became of them.
    pub packets_in: Cell<u64>,
    /// Datagrams sent successfully.
    pub packets_out: Cell<u64>,
    /// Bytes received, envelope included.
    pub bytes_in: Cell<u64>,
    /// Bytes sent, envelope included.
    pub bytes_out: Cell<u64>,
    /// Datagrams dropped for a missing or wrong authentication tag.
    pub dropped_bad_auth: Cell<u64>,
    /// Datagrams dropped as garbage, truncated or oversized.
    pub dropped_malformed: Cell<u64>,
    /// Sends the socket refused.
    pub send_errors: Cell<u64>,
}

/// Adds `n` to a counter without ever overflowing.
pub(crate) fn bump(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().saturating_add(n));
}

/// A copy of the gossip counters at one instant (see `GetStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Datagrams received, whatever became of them.
    pub packets_in: u64,
    /// Datagrams sent successfully.
    pub packets_out: u64,
    /// Bytes received, envelope included.
    pub bytes_in: u64,
    /// Bytes sent, envelope included.
    pub bytes_out: u64,
    /// Datagrams dropped for a missing or wrong authentication tag.
    pub dropped_bad_auth: u64,
    /// Datagrams dropped as garbage, truncated or oversized.
    pub dropped_malformed: u64,
    /// Sends the socket refused.
    pub send_errors: u64,
}

impl Counters {
    /// Reads every counter.
    pub fn snapshot(&self) -> GossipStats {
        GossipStats {
            packets_in: self.packets_in.get(),
            packets_out: self.packets_out.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            dropped_bad_auth: self.dropped_bad_auth.get(),
            dropped_malformed: self.dropped_malformed.get(),
            send_errors: self.send_errors.get(),
        }
    }
}
