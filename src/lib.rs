//! proglog: a distributed commit log.
//!
//! - [`storage`]: the synchronous storage core (segments, index, recovery).

pub mod storage;
