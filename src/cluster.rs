//! The cluster as this node sees it: itself and the peers membership
//! reports. Kept up to date by the agent, read by the RPC front
//! (`getServers`) and by telemetry (membership metrics).

/// A node of the cluster as `getServers` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub name: String,
    pub rpc_addr: String,
    pub alive: bool,
    /// The partition it leads.
    pub partition: String,
}

/// What the RPC front knows about the cluster: itself, and the peers that
/// membership reports (kept up to date by the agent).
#[derive(Debug, Default)]
pub struct ClusterView {
    pub local: Option<ServerInfo>,
    pub peers: Vec<ServerInfo>,
    /// Partitions this node's replicators keep in step now (a replica not
    /// in here is a copy it no longer pulls, kept until retention).
    pub following: std::collections::BTreeSet<String>,
    /// Each replicated partition's committed end at its leader, as this
    /// node's replicator last saw it (a replica's lag is this minus its end).
    pub leader_ends: std::collections::BTreeMap<String, u64>,
}
