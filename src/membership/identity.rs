//! The identity a node gossips under.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Member;

/// What foca knows a member by: its name, where to reach it, and an
/// incarnation that orders successive lives of the same node.
///
/// Foca's `Addr` is the gossip address: two identities on one address are
/// two lives of one node, and the one with the larger incarnation wins.
/// Seeds are known only by address, which is why the name cannot be the
/// `Addr` (an announce must match the receiver's `Addr`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct NodeId {
    /// The node's configured name.
    pub name: String,
    /// Where peers dial this node's RPC service.
    pub rpc_addr: SocketAddr,
    /// Where this node receives gossip.
    pub gossip_addr: SocketAddr,
    /// Grows with every restart or rejoin of the node.
    pub incarnation: u64,
    /// The id of the partition the node leads (empty for a seed stand-in).
    pub partition: String,
}

impl NodeId {
    /// A stand-in identity for a seed known only by address: foca accepts
    /// an announce whose destination has the receiver's `Addr`.
    pub fn seed(addr: SocketAddr) -> Self {
        Self {
            name: String::new(),
            rpc_addr: addr,
            gossip_addr: addr,
            incarnation: 0,
            partition: String::new(),
        }
    }

    /// The next life of this node: newer than both its current incarnation
    /// and the clock, so it wins over anything the cluster remembers.
    pub fn next_life(&self) -> Self {
        Self {
            incarnation: now_millis().max(self.incarnation.saturating_add(1)),
            ..self.clone()
        }
    }

    /// The public view of this identity.
    pub fn to_member(&self) -> Member {
        Member {
            name: self.name.clone(),
            rpc_addr: self.rpc_addr,
            gossip_addr: self.gossip_addr,
            incarnation: self.incarnation,
            partition: self.partition.clone(),
        }
    }
}

/// Milliseconds since the Unix epoch: the default first incarnation, so a
/// restarted process is newer than its previous life without stored state.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    /// Opts in to foca's automatic rejoin: a node wrongly declared down
    /// comes back under the next incarnation.
    fn renew(&self) -> Option<Self> {
        self.incarnation.checked_add(1).map(|incarnation| Self {
            incarnation,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Newer incarnation wins; ties are broken by name then RPC address so
    /// that every member decides the same way.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.incarnation, &self.name, self.rpc_addr)
            > (adversary.incarnation, &adversary.name, adversary.rpc_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn id(inc: u64) -> NodeId {
        NodeId {
            name: "a".into(),
            rpc_addr: "127.0.0.1:1".parse().unwrap(),
            gossip_addr: "127.0.0.1:2".parse().unwrap(),
            incarnation: inc,
            partition: "a-1".into(),
        }
    }

    #[test]
    fn renewed_identity_wins_the_address_conflict() {
        let old = id(5);
        let new = old.renew().unwrap();
        assert_eq!(new.incarnation, 6);
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        assert_eq!(old.addr(), new.addr());
    }

    #[test]
    fn next_life_is_newer_even_with_a_future_incarnation() {
        let far = id(u64::MAX - 1);
        assert_eq!(far.next_life().incarnation, u64::MAX);
        assert!(id(1).next_life().incarnation > 1);
    }
}
