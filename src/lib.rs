//! proglog: a distributed commit log.
//!
//! - [`storage`]: the synchronous storage core (segments, index, recovery).
//! - [`log`]: the storage as actix actors: a LogActor per partition, a
//!   SegmentActor per segment, under supervisors.
//! - [`membership`]: SWIM gossip (foca) as a MembershipActor: who is in the cluster.

pub mod log;
pub mod membership;
pub mod storage;
