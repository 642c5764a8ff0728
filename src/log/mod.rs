//! The log as actors (DESIGN §1): a [`LogActor`] per partition owns one
//! SegmentActor per segment, each under a supervisor.
//!
//! - Appends are group-committed: a SegmentActor appends every message of a
//!   mailbox burst to its write buffer, then flushes once and answers them
//!   all. Under `sync=always` the `fdatasync` runs on the blocking pool, so
//!   the actor thread (shared with RPC and other partitions) never waits on
//!   the disk; appends arriving meanwhile gather for the next sync.
//! - Readers see only committed records. A reader at the end of the log sends
//!   [`WaitFor`] and is answered when an append reaches its offset: no timer,
//!   no polling.
//! - A SegmentActor that panics or hits a write error answers the appends in
//!   flight with an error (none of them was acknowledged) and is restarted
//!   by its supervisor (`crate::supervision`), reopening the segment through
//!   the same recovery as after a crash. Past its restart budget (three a
//!   minute) it escalates to its LogActor, which restarts and reopens the
//!   whole partition; past the LogActor's budget, the Agent shuts the node
//!   down with a non-zero exit status.

mod error;
mod log_actor;
mod messages;
mod observer;
mod partitions;
mod segment_actor;
mod session;

pub use error::{Appended, LogError};
pub use log_actor::{
    CHECKPOINT_INTERVAL, DISK_FULL_PROBE_INTERVAL, LogActor, RETENTION_CHECK_INTERVAL,
};
pub use messages::*;
pub use observer::{Observer, SyncObserver};
pub use partitions::{NodeIdentity, Partitions};
