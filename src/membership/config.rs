//! Settings of the membership layer and their translation into foca's.

use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use super::MembershipError;
use super::auth::ENVELOPE_OVERHEAD;

/// How a node finds, watches and authenticates the rest of the cluster.
///
/// The failure-detection settings are tuned for a LAN or loopback: a node
/// that dies without leaving is reported `Failed` after roughly
/// `probe wait + probe_period + suspect_to_down_after`, where the probe wait
/// is at most `probe_period × (members - 1)` for one given observer but is
/// short in practice because every member probes. With the defaults
/// (300 ms / 100 ms / 900 ms) that is 1.2–1.8 s on a 3-node loopback
/// cluster, well inside the 3 s bound the tests assert.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// Name of this node, unique in the cluster; peers key their view by it
    /// and a restart under the same name is reported as a newer incarnation.
    /// Default: `"proglog-node"`.
    pub node_name: String,
    /// UDP address the gossip socket binds to; port 0 picks a free port.
    /// Default: `127.0.0.1:8401`.
    pub bind_addr: SocketAddr,
    /// Gossip address announced to peers, for when the bind address is not
    /// reachable as such (for example `0.0.0.0`); `None` uses the bound
    /// address. Default: `None`.
    pub advertise_addr: Option<SocketAddr>,
    /// RPC (TCP) address peers should dial to replicate from this node.
    /// Default: `127.0.0.1:8400`.
    pub rpc_addr: SocketAddr,
    /// Gossip addresses of existing members to join through; empty starts a
    /// cluster of one. A seed must be given by the address it advertises.
    /// Default: empty.
    pub seeds: Vec<SocketAddr>,
    /// Seeds given as `host:port`: looked up again at every join attempt,
    /// so a peer whose name does not resolve yet (a pod not scheduled, a
    /// container not started) is found once it does. Default: empty.
    pub seed_names: Vec<String>,
    /// Shared cluster key: when set, every packet carries an HMAC-SHA256 tag
    /// and packets without a valid tag are dropped. At least 16 bytes.
    /// Default: `None` (gossip is unauthenticated; a warning is logged).
    pub cluster_key: Option<Vec<u8>>,
    /// How often this node probes one random member. Default: 300 ms.
    pub probe_period: Duration,
    /// How long to wait for a direct probe reply before asking other
    /// members to probe indirectly; must be below `probe_period`.
    /// Default: 100 ms.
    pub probe_rtt: Duration,
    /// How long a suspected member has to refute the suspicion before it is
    /// declared down (reported as `Failed`). Default: 900 ms.
    pub suspect_to_down_after: Duration,
    /// How many members are asked to probe indirectly, and how many receive
    /// a graceful leave directly. Default: 3.
    pub num_indirect_probes: usize,
    /// How often cluster updates are pushed to 3 random members on top of
    /// those piggybacked on probes. Default: 200 ms.
    pub gossip_interval: Duration,
    /// First wait before re-announcing to the seeds when nobody answered;
    /// it doubles up to `join_backoff_max`. Default: 200 ms.
    pub join_backoff_initial: Duration,
    /// Longest wait between two join attempts. Default: 5 s.
    pub join_backoff_max: Duration,
    /// How long a restarted actor waits to rejoin before it hands its
    /// subscribers a fresh snapshot anyway. Default: 3 s.
    pub resync_timeout: Duration,
    /// Largest UDP datagram sent or accepted, authentication tag included;
    /// larger datagrams are dropped as malformed. Default: 1400 bytes.
    pub max_packet_size: usize,
    /// Incarnation of this node's identity; a restart must use a larger one
    /// to be preferred over its previous life. `None` uses the wall clock in
    /// milliseconds since the Unix epoch. Default: `None`.
    pub incarnation: Option<u64>,
    /// The id of the partition this node leads, gossiped to peers (they
    /// replicate it and name it in `getServers`). Default: empty.
    pub partition: String,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            node_name: "proglog-node".to_owned(),
            bind_addr: SocketAddr::from(([127, 0, 0, 1], 8401)),
            advertise_addr: None,
            rpc_addr: SocketAddr::from(([127, 0, 0, 1], 8400)),
            seeds: Vec::new(),
            seed_names: Vec::new(),
            cluster_key: None,
            probe_period: Duration::from_millis(300),
            probe_rtt: Duration::from_millis(100),
            suspect_to_down_after: Duration::from_millis(900),
            num_indirect_probes: 3,
            gossip_interval: Duration::from_millis(200),
            join_backoff_initial: Duration::from_millis(200),
            join_backoff_max: Duration::from_secs(5),
            resync_timeout: Duration::from_secs(3),
            max_packet_size: 1400,
            incarnation: None,
            partition: String::new(),
        }
    }
}

/// Smallest cluster key accepted: shorter keys are guessable.
pub const MIN_KEY_LEN: usize = 16;
/// Longest node name accepted: the name travels in every packet header.
pub const MAX_NAME_LEN: usize = 128;

impl MembershipConfig {
    /// Rejects settings foca would panic on or that make no sense.
    pub fn validate(&self) -> Result<(), MembershipError> {
        let bad = |why: &str| Err(MembershipError::Config(why.to_owned()));
        if self.node_name.is_empty() || self.node_name.len() > MAX_NAME_LEN {
            return bad("node_name must be 1..=128 bytes");
        }
        if self.probe_rtt.is_zero() || self.probe_period.is_zero() {
            return bad("probe_period and probe_rtt must be non-zero");
        }
        if self.probe_rtt >= self.probe_period {
            return bad("probe_rtt must be smaller than probe_period");
        }
        if self.suspect_to_down_after.is_zero() || self.gossip_interval.is_zero() {
            return bad("suspect_to_down_after and gossip_interval must be non-zero");
        }
        if self.num_indirect_probes == 0 {
            return bad("num_indirect_probes must be at least 1");
        }
        if self.join_backoff_initial.is_zero() || self.join_backoff_max < self.join_backoff_initial
        {
            return bad("join backoff must be non-zero and initial <= max");
        }
        if !(512..=65_000).contains(&self.max_packet_size) {
            return bad("max_packet_size must be within 512..=65000");
        }
        if let Some(key) = &self.cluster_key
            && key.len() < MIN_KEY_LEN
        {
            return bad("cluster_key must be at least 16 bytes");
        }
        Ok(())
    }

    /// The foca protocol settings derived from this configuration.
    pub(crate) fn foca_config(&self) -> foca::Config {
        let three = NonZeroUsize::MIN.saturating_add(2);
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: NonZeroUsize::new(self.num_indirect_probes).unwrap_or(three),
            max_transmissions: NonZeroU8::MIN.saturating_add(7),
            suspect_to_down_after: self.suspect_to_down_after,
            remove_down_after: Some(Duration::from_secs(24 * 3600)),
            max_packet_size: NonZeroUsize::new(
                self.max_packet_size.saturating_sub(ENVELOPE_OVERHEAD),
            )
            .unwrap_or(NonZeroUsize::MIN),
            // A member wrongly declared down learns it and rejoins under a
            // renewed identity instead of staying invisible.
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(10),
                num_members: NonZeroUsize::MIN,
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(30),
                num_members: NonZeroUsize::MIN,
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_interval,
                num_members: three,
            }),
        }
    }
}
