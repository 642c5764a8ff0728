//! Replication (DESIGN §2): who holds which partition, and the
//! [`ReplicatorActor`] that keeps one replica in step with its leader.
//!
//! - Every node leads one partition, its own, and is its only writer. A
//!   partition is held by its leader and the `replication-factor − 1` live
//!   members ranked first by rendezvous hashing of (partition id, member
//!   name) ([`holders`]): each node computes the same answer from its
//!   membership view, and a member joining or leaving moves only the
//!   replicas it must.
//! - For each peer whose partition this node holds, the Agent runs one
//!   ReplicatorActor. It pulls only that peer's own partition (the peer's
//!   `replicate` refuses any other, so copies never cycle), from the
//!   replica's end. The leader sends its stored frames as they are; the
//!   replica checks each ([`crate::storage::Frames::check`]: length,
//!   CRC-32C, offsets following on; the leader checked them when it read
//!   them) and appends the same bytes at the leader's offsets
//!   ([`crate::log::Append::frames`]): the segment that assigns offsets
//!   refuses any other start, so a replica can have no gap and no
//!   duplicate. A frame at an unexpected offset or with a bad checksum
//!   halts that replication, logged and counted, and is never written.
//! - A replica whose next records its leader's retention has deleted skips
//!   to the leader's lowest offset ([`crate::log::SkipTo`]): the offsets in
//!   between are recorded as lost, never served as data.

mod actor;
mod in_sync;
mod net;

pub use actor::{
    Connector, GetStatus, ReplicatorActor, ReplicatorSetup, ReplicatorStatus, StopReplicating,
};
pub use in_sync::{AckError, InSync};

use sha2::{Digest, Sha256};

/// The rendezvous score of `member` for `partition`: highest ranks first.
fn score(partition: &str, member: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(partition.as_bytes());
    hash.update([0]);
    hash.update(member.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The members that hold `partition`, led by `leader`: the leader first,
/// then the `factor − 1` other members of `members` ranked first by
/// rendezvous hashing (ties broken by name). `members` may include the
/// leader; duplicates are ignored.
pub fn holders<'a>(
    partition: &str,
    leader: &'a str,
    members: impl IntoIterator<Item = &'a str>,
    factor: usize,
) -> Vec<&'a str> {
    let mut others: Vec<&str> = members.into_iter().filter(|m| *m != leader).collect();
    others.sort_unstable();
    others.dedup();
    others.sort_by(|a, b| {
        score(partition, b)
            .cmp(&score(partition, a))
            .then_with(|| a.cmp(b))
    });
    let mut out = vec![leader];
    out.extend(others.into_iter().take(factor.saturating_sub(1)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_is_on_factor_members_its_leader_first() {
        let members = ["a", "b", "c", "d", "e"];
        for leader in members {
            let p = format!("{leader}-00000000000000ff");
            let h = holders(&p, leader, members, 3);
            assert_eq!(h.len(), 3);
            assert_eq!(h[0], leader);
            let mut unique = h.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 3);
        }
        // Fewer members than the factor: everyone holds it.
        assert_eq!(holders("a-1", "a", ["a", "b"], 3), ["a", "b"]);
    }

    #[test]
    fn a_member_leaving_moves_only_the_replicas_it_held() {
        let all = ["a", "b", "c", "d", "e", "f", "g"];
        let mut moved = 0;
        for i in 0..200 {
            let p = format!("p{i}");
            let before = holders(&p, "a", all, 3);
            let after = holders(&p, "a", all.iter().copied().filter(|m| *m != "d"), 3);
            if before.contains(&"d") {
                moved += 1;
                assert_eq!(before.iter().filter(|m| after.contains(m)).count(), 2);
            } else {
                assert_eq!(before, after, "{p}: a replica moved that did not have to");
            }
        }
        assert!(moved > 0);
    }
}
