//! Telling a graceful leave apart from a failure.
//!
//! Foca reports `MemberDown` alike for a member that left and for one whose
//! suspicion timed out. A leaving node therefore first queues a *leave
//! notice* — a foca custom broadcast naming its gossip address and
//! incarnation — and then calls `leave_cluster`. The notice rides in the
//! same datagrams as the down update (custom broadcasts are decoded right
//! after the updates, within the same `handle_data` call) and is forwarded
//! with it, so when a member disappears from the view the gossip task can
//! look up whether that exact life announced its leave.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;

use foca::{BroadcastHandler, Invalidates};

use super::identity::NodeId;

/// First byte of a leave notice, so other broadcast kinds can follow.
const KIND_LEAVE: u8 = b'L';

/// The lives that announced a graceful leave: the largest incarnation per
/// gossip address, which keeps the map bounded by the number of addresses.
pub(crate) type LeftLives = Rc<RefCell<HashMap<SocketAddr, u64>>>;

/// Whether the life `addr`/`incarnation` announced its leave.
pub(crate) fn has_left(left: &LeftLives, addr: SocketAddr, incarnation: u64) -> bool {
    left.borrow().get(&addr) == Some(&incarnation)
}

/// Dissemination key of a leave notice: a later life's notice replaces an
/// earlier one still being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaveKey {
    addr: SocketAddr,
    incarnation: u64,
}

impl Invalidates for LeaveKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.addr == other.addr && self.incarnation >= other.incarnation
    }
}

/// A broadcast item that is not a well-formed leave notice.
#[derive(Debug, thiserror::Error)]
#[error("malformed leave notice")]
pub(crate) struct BadNotice;

/// Foca's broadcast handler: records leave notices into `LeftLives`.
pub(crate) struct LeaveNotices {
    /// Shared with the gossip task, which reads it when a member goes down.
    pub left: LeftLives,
}

impl BroadcastHandler<NodeId> for LeaveNotices {
    type Key = LeaveKey;
    type Error = BadNotice;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<LeaveKey>, BadNotice> {
        let key = decode(data).ok_or(BadNotice)?;
        let mut left = self.left.borrow_mut();
        match left.get(&key.addr) {
            // Old or already known news: do not forward it again.
            Some(&known) if known >= key.incarnation => Ok(None),
            _ => {
                left.insert(key.addr, key.incarnation);
                Ok(Some(key))
            }
        }
    }
}

/// Encodes the leave notice of `id`.
pub(crate) fn encode(id: &NodeId) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + 1 + 16 + 2);
    out.push(KIND_LEAVE);
    out.extend_from_slice(&id.incarnation.to_be_bytes());
    match id.gossip_addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&id.gossip_addr.port().to_be_bytes());
    out
}

/// Decodes a leave notice; `None` for anything else.
fn decode(data: &[u8]) -> Option<LeaveKey> {
    let (&kind, rest) = data.split_first()?;
    if kind != KIND_LEAVE {
        return None;
    }
    let (inc, rest) = rest.split_first_chunk::<8>()?;
    let (&family, rest) = rest.split_first()?;
    let (ip, rest) = match family {
        4 => {
            let (o, rest) = rest.split_first_chunk::<4>()?;
            (IpAddr::V4(Ipv4Addr::from(*o)), rest)
        }
        6 => {
            let (o, rest) = rest.split_first_chunk::<16>()?;
            (IpAddr::V6(Ipv6Addr::from(*o)), rest)
        }
        _ => return None,
    };
    let port: [u8; 2] = rest.try_into().ok()?;
    Some(LeaveKey {
        addr: SocketAddr::new(ip, u16::from_be_bytes(port)),
        incarnation: u64::from_be_bytes(*inc),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_round_trips_and_rejects_garbage() {
        let id = NodeId {
            name: "n".into(),
            rpc_addr: "127.0.0.1:1".parse().unwrap(),
            gossip_addr: "[::1]:8401".parse().unwrap(),
            incarnation: 42,
            partition: "n-1".into(),
        };
        let key = decode(&encode(&id)).unwrap();
        assert_eq!(key.addr, id.gossip_addr);
        assert_eq!(key.incarnation, 42);
        let bytes = encode(&id);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_none());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode(&long).is_none());
    }

    #[test]
    fn only_news_is_forwarded() {
        let mut h = LeaveNotices {
            left: LeftLives::default(),
        };
        let mut id = NodeId::seed("127.0.0.1:9".parse().unwrap());
        id.incarnation = 3;
        assert!(h.receive_item(&encode(&id), None).unwrap().is_some());
        assert!(h.receive_item(&encode(&id), None).unwrap().is_none());
        assert!(has_left(&h.left, id.gossip_addr, 3));
        assert!(!has_left(&h.left, id.gossip_addr, 4));
        assert!(h.receive_item(b"x", None).is_err());
    }
}
