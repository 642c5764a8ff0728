//! The node's configuration: one type, four layers.
//!
//! defaults < TOML file (`--config`) < `PROGLOG_*` environment < flags.
//! [`ServeArgs`] is what the command line, the environment and the file can
//! say (every field optional); [`NodeConfig::resolve`] merges the layers,
//! checks every value and names the setting when one is wrong.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::storage::{LogConfig, Retention, SyncPolicy};

/// Settings of `proglog serve`. Flags and `PROGLOG_*` variables come from
/// clap; the same fields, kebab-case, can be set in the TOML file.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of these settings (flags and environment win over it).
    #[arg(long, env = "PROGLOG_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Serve plain TCP without TLS or authorization. For development only:
    /// anyone who can reach the port can read and write every partition.
    #[arg(long, env = "PROGLOG_INSECURE")]
    #[serde(default)]
    pub insecure: bool,
    /// CA certificate (PEM) that client certificates must be signed by
    /// [default: with no TLS files set, a development CA made in <data-dir>/tls].
    #[arg(long, env = "PROGLOG_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Where the development certificates are made and found when no TLS
    /// files are set: nodes started with the same directory share one CA
    /// and trust each other (a cluster on one machine) [default: <data-dir>/tls].
    #[arg(long, env = "PROGLOG_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// This node's certificate (PEM), presented to clients and peers.
    #[arg(long, env = "PROGLOG_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "PROGLOG_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// casbin model file [default: <data-dir>/acl/model.conf].
    #[arg(long, env = "PROGLOG_ACL_MODEL")]
    pub acl_model: Option<PathBuf>,
    /// casbin policy file [default: <data-dir>/acl/policy.csv].
    #[arg(long, env = "PROGLOG_ACL_POLICY")]
    pub acl_policy: Option<PathBuf>,
    /// Directory for node.toml and the partitions [default: ./proglog-data].
    #[arg(long, env = "PROGLOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Unique name of this node in the cluster [default: the host name].
    #[arg(long, env = "PROGLOG_NODE_NAME")]
    pub node_name: Option<String>,
    /// Address the RPC server listens on [default: 127.0.0.1:8400].
    #[arg(long, env = "PROGLOG_RPC_ADDR")]
    pub rpc_addr: Option<SocketAddr>,
    /// RPC address announced to peers, if not the listen address.
    #[arg(long, env = "PROGLOG_ADVERTISE_RPC_ADDR")]
    pub advertise_rpc_addr: Option<SocketAddr>,
    /// UDP address for SWIM gossip [default: 127.0.0.1:8401].
    #[arg(long, env = "PROGLOG_GOSSIP_ADDR")]
    pub gossip_addr: Option<SocketAddr>,
    /// Gossip addresses of nodes to join, comma-separated, as `ip:port` or
    /// `host:port` (a name is looked up again at every join attempt, so a
    /// peer whose name does not resolve yet is found once it does)
    /// [default: none, a cluster of one].
    #[arg(long, env = "PROGLOG_JOIN", value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// File holding the shared gossip key (at least 16 bytes) [default: none: unauthenticated gossip].
    #[arg(long, env = "PROGLOG_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// always | never | interval | interval:<ms> [default: interval:1000].
    #[arg(long, env = "PROGLOG_SYNC")]
    pub sync: Option<String>,
    /// Largest record accepted, bytes [default: 1048576].
    #[arg(long, env = "PROGLOG_MAX_RECORD_BYTES")]
    pub max_record_bytes: Option<u32>,
    /// Segment store size before rolling, bytes [default: 134217728].
    #[arg(long, env = "PROGLOG_MAX_SEGMENT_BYTES")]
    pub max_segment_bytes: Option<u64>,
    /// Segment index size before rolling, bytes [default: 10485760].
    #[arg(long, env = "PROGLOG_MAX_INDEX_BYTES")]
    pub max_index_bytes: Option<u64>,
    /// Delete old segments while a partition is larger, bytes [default: keep all].
    #[arg(long, env = "PROGLOG_RETENTION_BYTES")]
    pub retention_bytes: Option<u64>,
    /// Delete segments older than this many seconds [default: keep all].
    #[arg(long, env = "PROGLOG_RETENTION_SECONDS")]
    pub retention_seconds: Option<u64>,
    /// Refuse produce (typed disk-full error) while the data directory's file
    /// system has less free space than this, bytes; 0 turns the floor off
    /// [default: 67108864].
    #[arg(long, env = "PROGLOG_MIN_FREE_BYTES")]
    pub min_free_bytes: Option<u64>,
    /// Most client connections at once [default: 1024].
    #[arg(long, env = "PROGLOG_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Copies of each partition in the cluster, its leader's included: each
    /// partition is replicated by the N-1 live members ranked first by
    /// rendezvous hashing [default: 3].
    #[arg(long, env = "PROGLOG_REPLICATION_FACTOR")]
    pub replication_factor: Option<usize>,
    /// Holders of a partition, its leader included, that must have
    /// committed a record before an `acks=all` produce is answered; fewer
    /// live holders refuse it at once [default: 2].
    #[arg(long, env = "PROGLOG_MIN_INSYNC_REPLICAS")]
    pub min_insync_replicas: Option<usize>,
    /// Longest wait, in milliseconds, for `min-insync-replicas` holders to
    /// confirm an `acks=all` produce; past it the answer is a timeout (the
    /// record is on the leader and may still be replicated) [default: 5000].
    #[arg(long, env = "PROGLOG_ACK_TIMEOUT_MS")]
    pub ack_timeout_ms: Option<u64>,
    /// Largest RPC message accepted, bytes (a message's segments; one
    /// word more closes the connection) [default: 67108864].
    #[arg(long, env = "PROGLOG_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Bytes in flight across all connections (messages being received,
    /// produce calls being served, answers of reads not yet sent); past it
    /// the node stops reading from sockets, and reads wait, until some are
    /// done [default: 268435456].
    #[arg(long, env = "PROGLOG_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<usize>,
    /// Close a connection with no message and no call or stream in
    /// progress for this many seconds (a following consumer is never
    /// idle) [default: 300].
    #[arg(long, env = "PROGLOG_IDLE_TIMEOUT")]
    pub idle_timeout: Option<u64>,
    /// The longest the RPC thread polls its sockets after a reply before
    /// sleeping, so the next request is read without a wake-up: its window
    /// adapts to the idle times it sees, up to this many microseconds; at
    /// most 1000; 0: off [default: 200].
    #[arg(long, env = "PROGLOG_BUSY_POLL_US")]
    pub busy_poll_us: Option<u64>,
    /// Most connections one identity (certificate CN; `anonymous` without
    /// TLS) may hold at once [default: half of max-connections].
    #[arg(long, env = "PROGLOG_MAX_CONNECTIONS_PER_IDENTITY")]
    pub max_connections_per_identity: Option<usize>,
    /// Address of the HTTP server for /metrics, /healthz and /readyz [default: 127.0.0.1:8402].
    #[arg(long, env = "PROGLOG_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Turn metrics off: nothing is counted and /metrics answers 404
    /// (/healthz and /readyz stay) [default: metrics on].
    #[arg(long, env = "PROGLOG_NO_METRICS")]
    #[serde(default)]
    pub no_metrics: bool,
}

impl ServeArgs {
    /// Fills every field still empty from `lower`.
    fn or(self, lower: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config.or(lower.config),
            print_config: self.print_config || lower.print_config,
            insecure: self.insecure || lower.insecure,
            tls_ca: self.tls_ca.or(lower.tls_ca),
            tls_dir: self.tls_dir.or(lower.tls_dir),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            acl_model: self.acl_model.or(lower.acl_model),
            acl_policy: self.acl_policy.or(lower.acl_policy),
            data_dir: self.data_dir.or(lower.data_dir),
            node_name: self.node_name.or(lower.node_name),
            rpc_addr: self.rpc_addr.or(lower.rpc_addr),
            advertise_rpc_addr: self.advertise_rpc_addr.or(lower.advertise_rpc_addr),
            gossip_addr: self.gossip_addr.or(lower.gossip_addr),
            join: self.join.or(lower.join),
            cluster_key_file: self.cluster_key_file.or(lower.cluster_key_file),
            sync: self.sync.or(lower.sync),
            max_record_bytes: self.max_record_bytes.or(lower.max_record_bytes),
            max_segment_bytes: self.max_segment_bytes.or(lower.max_segment_bytes),
            max_index_bytes: self.max_index_bytes.or(lower.max_index_bytes),
            retention_bytes: self.retention_bytes.or(lower.retention_bytes),
            retention_seconds: self.retention_seconds.or(lower.retention_seconds),
            min_free_bytes: self.min_free_bytes.or(lower.min_free_bytes),
            max_connections: self.max_connections.or(lower.max_connections),
            replication_factor: self.replication_factor.or(lower.replication_factor),
            min_insync_replicas: self.min_insync_replicas.or(lower.min_insync_replicas),
            ack_timeout_ms: self.ack_timeout_ms.or(lower.ack_timeout_ms),
            max_message_bytes: self.max_message_bytes.or(lower.max_message_bytes),
            max_inflight_bytes: self.max_inflight_bytes.or(lower.max_inflight_bytes),
            idle_timeout: self.idle_timeout.or(lower.idle_timeout),
            busy_poll_us: self.busy_poll_us.or(lower.busy_poll_us),
            max_connections_per_identity: self
                .max_connections_per_identity
                .or(lower.max_connections_per_identity),
            http_addr: self.http_addr.or(lower.http_addr),
            no_metrics: self.no_metrics || lower.no_metrics,
        }
    }
}

/// Splits `--join` into literal socket addresses and `host:port` names;
/// a seed without a port, or with a port that is not a number, is refused.
fn split_seeds(seeds: Vec<String>) -> Result<(Vec<SocketAddr>, Vec<String>), ConfigError> {
    let mut addrs = Vec::new();
    let mut names = Vec::new();
    for seed in seeds {
        let seed = seed.trim();
        if seed.is_empty() {
            continue;
        }
        if let Ok(addr) = seed.parse::<SocketAddr>() {
            addrs.push(addr);
            continue;
        }
        match seed.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok() =>
            {
                names.push(seed.to_string());
            }
            _ => {
                return Err(invalid(
                    "join",
                    format!("{seed:?}: expected ip:port or host:port"),
                ));
            }
        }
    }
    Ok((addrs, names))
}

/// A setting that cannot work, named.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// The longest `--busy-poll-us`: a window is meant to catch the next
/// request of a busy connection, not to keep a core spinning.
pub const MAX_BUSY_POLL_US: u64 = 1000;

/// The effective configuration of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeConfig {
    pub insecure: bool,
    /// Explicit TLS material; `None` means development certificates.
    pub tls: Option<TlsFiles>,
    /// Where development certificates are made and found.
    pub tls_dir: PathBuf,
    pub acl_model: PathBuf,
    pub acl_policy: PathBuf,
    pub data_dir: PathBuf,
    pub node_name: String,
    pub rpc_addr: SocketAddr,
    pub advertise_rpc_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    /// Seeds given as IP addresses.
    pub join: Vec<SocketAddr>,
    /// Seeds given as `host:port`, resolved at each join attempt.
    pub join_names: Vec<String>,
    pub cluster_key_file: Option<PathBuf>,
    pub sync: String,
    pub max_record_bytes: u32,
    pub max_segment_bytes: u64,
    pub max_index_bytes: u64,
    pub retention_bytes: Option<u64>,
    pub retention_seconds: Option<u64>,
    pub min_free_bytes: u64,
    pub max_connections: usize,
    pub replication_factor: usize,
    pub min_insync_replicas: usize,
    pub ack_timeout_ms: u64,
    pub max_message_bytes: usize,
    pub max_inflight_bytes: usize,
    /// Seconds.
    pub idle_timeout: u64,
    /// Microseconds; 0: off.
    pub busy_poll_us: u64,
    pub max_connections_per_identity: usize,
    pub http_addr: SocketAddr,
    pub no_metrics: bool,
}

/// A node's TLS files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The host's name, for the default node name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "proglog".to_string())
}

impl NodeConfig {
    /// Merges flags/environment (`args`, from clap) over the TOML file over
    /// the defaults, and validates the result.
    pub fn resolve(args: ServeArgs) -> Result<NodeConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<ServeArgs>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => ServeArgs::default(),
        };
        let a = args.or(file);
        let log_defaults = LogConfig::default();
        let rpc_addr = a
            .rpc_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8400)));
        let node_name = a.node_name.unwrap_or_else(host_name);
        if node_name.is_empty()
            || !node_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(invalid(
                "node-name",
                format!("{node_name:?}: use letters, digits, '-', '_' or '.'"),
            ));
        }
        let data_dir = a.data_dir.unwrap_or_else(|| PathBuf::from("proglog-data"));
        let tls = match (a.tls_ca, a.tls_cert, a.tls_key) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca, cert, key }),
            (ca, cert, _) => {
                let missing = if ca.is_none() {
                    "tls-ca"
                } else if cert.is_none() {
                    "tls-cert"
                } else {
                    "tls-key"
                };
                return Err(invalid(missing, "tls-ca, tls-cert and tls-key go together"));
            }
        };
        if a.insecure && tls.is_some() {
            return Err(invalid(
                "insecure",
                "cannot be combined with tls-ca/tls-cert/tls-key",
            ));
        }
        let (join, join_names) = split_seeds(a.join.unwrap_or_default())?;
        let config = NodeConfig {
            insecure: a.insecure,
            tls,
            tls_dir: a.tls_dir.unwrap_or_else(|| data_dir.join("tls")),
            acl_model: a
                .acl_model
                .unwrap_or_else(|| data_dir.join("acl").join("model.conf")),
            acl_policy: a
                .acl_policy
                .unwrap_or_else(|| data_dir.join("acl").join("policy.csv")),
            data_dir,
            node_name,
            rpc_addr,
            advertise_rpc_addr: a.advertise_rpc_addr.unwrap_or(rpc_addr),
            gossip_addr: a
                .gossip_addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8401))),
            join,
            join_names,
            cluster_key_file: a.cluster_key_file,
            sync: a.sync.unwrap_or_else(|| log_defaults.sync.to_string()),
            max_record_bytes: a.max_record_bytes.unwrap_or(log_defaults.max_record_bytes),
            max_segment_bytes: a.max_segment_bytes.unwrap_or(log_defaults.max_store_bytes),
            max_index_bytes: a.max_index_bytes.unwrap_or(log_defaults.max_index_bytes),
            retention_bytes: a.retention_bytes,
            retention_seconds: a.retention_seconds,
            min_free_bytes: a.min_free_bytes.unwrap_or(log_defaults.min_free_bytes),
            max_connections: a.max_connections.unwrap_or(1024),
            replication_factor: a.replication_factor.unwrap_or(3),
            min_insync_replicas: a.min_insync_replicas.unwrap_or(2),
            ack_timeout_ms: a.ack_timeout_ms.unwrap_or(5000),
            max_message_bytes: a.max_message_bytes.unwrap_or(64 << 20),
            max_inflight_bytes: a.max_inflight_bytes.unwrap_or(256 << 20),
            idle_timeout: a.idle_timeout.unwrap_or(300),
            busy_poll_us: a.busy_poll_us.unwrap_or(200),
            max_connections_per_identity: a
                .max_connections_per_identity
                .unwrap_or_else(|| (a.max_connections.unwrap_or(1024) / 2).max(1)),
            http_addr: a
                .http_addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8402))),
            no_metrics: a.no_metrics,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.sync_policy()?;
        self.log_config()?.validate().map_err(|e| {
            let setting = match &e {
                crate::storage::StorageError::InvalidConfig(m) if m.contains("max_index_bytes") => {
                    "max-index-bytes"
                }
                crate::storage::StorageError::InvalidConfig(m)
                    if m.contains("max_record_bytes must") =>
                {
                    "max-record-bytes"
                }
                _ => "max-segment-bytes",
            };
            invalid(setting, e.to_string())
        })?;
        if self.max_connections == 0 {
            return Err(invalid("max-connections", "must be at least 1"));
        }
        if self.replication_factor == 0 {
            return Err(invalid(
                "replication-factor",
                "must be at least 1 (the leader's own copy)",
            ));
        }
        if self.min_insync_replicas == 0 || self.min_insync_replicas > self.replication_factor {
            return Err(invalid(
                "min-insync-replicas",
                format!(
                    "{}: must be between 1 and the replication factor ({})",
                    self.min_insync_replicas, self.replication_factor
                ),
            ));
        }
        if self.ack_timeout_ms == 0 {
            return Err(invalid("ack-timeout-ms", "must be at least 1"));
        }
        if self.max_message_bytes < self.max_record_bytes as usize + 1024 {
            return Err(invalid(
                "max-message-bytes",
                format!(
                    "must exceed max-record-bytes ({}) by at least 1 KiB",
                    self.max_record_bytes
                ),
            ));
        }
        if self.max_inflight_bytes < 1 << 20 {
            return Err(invalid("max-inflight-bytes", "must be at least 1 MiB"));
        }
        if self.idle_timeout == 0 {
            return Err(invalid("idle-timeout", "must be at least 1 second"));
        }
        if self.busy_poll_us > MAX_BUSY_POLL_US {
            return Err(invalid(
                "busy-poll-us",
                format!("must be at most {MAX_BUSY_POLL_US} (microseconds; 0 turns it off)"),
            ));
        }
        if self.max_connections_per_identity == 0 {
            return Err(invalid(
                "max-connections-per-identity",
                "must be at least 1",
            ));
        }
        if self.rpc_addr == self.gossip_addr && self.rpc_addr.port() != 0 {
            return Err(invalid("gossip-addr", "must differ from rpc-addr"));
        }
        if self.http_addr == self.rpc_addr && self.http_addr.port() != 0 {
            return Err(invalid("http-addr", "must differ from rpc-addr"));
        }
        Ok(())
    }

    fn sync_policy(&self) -> Result<SyncPolicy, ConfigError> {
        self.sync.parse().map_err(|e: String| invalid("sync", e))
    }

    /// The storage settings of every partition.
    pub fn log_config(&self) -> Result<LogConfig, ConfigError> {
        Ok(LogConfig {
            max_store_bytes: self.max_segment_bytes,
            max_index_bytes: self.max_index_bytes,
            initial_offset: 0,
            max_record_bytes: self.max_record_bytes,
            sync: self.sync_policy()?,
            retention: Retention {
                max_bytes: self.retention_bytes,
                max_age: self.retention_seconds.map(Duration::from_secs),
            },
            min_free_bytes: self.min_free_bytes,
        })
    }

    /// The configuration as TOML (for `--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let c = NodeConfig::resolve(ServeArgs {
            node_name: Some("n1".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(c.rpc_addr.port(), 8400);
        assert_eq!(c.gossip_addr.port(), 8401);
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8402");
        assert!(!c.no_metrics);
        assert_eq!(c.sync, "interval:1000");
        assert_eq!(c.advertise_rpc_addr, c.rpc_addr);
    }

    #[test]
    fn the_file_fills_what_flags_leave_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "node-name = \"from-file\"\nsync = \"always\"\nmax-connections = 7\n\
             http-addr = \"127.0.0.1:9402\"\nno-metrics = true\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            sync: Some("never".into()),
            ..ServeArgs::default()
        };
        let c = NodeConfig::resolve(args).unwrap();
        assert_eq!(c.node_name, "from-file");
        assert_eq!(c.sync, "never", "a flag wins over the file");
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.http_addr.port(), 9402);
        assert!(c.no_metrics);
    }

    #[test]
    fn seeds_are_addresses_or_host_port_names() {
        let resolve = |seeds: &[&str]| {
            NodeConfig::resolve(ServeArgs {
                node_name: Some("n".into()),
                join: Some(seeds.iter().map(|s| s.to_string()).collect()),
                ..ServeArgs::default()
            })
        };
        let c = resolve(&["10.0.0.1:8401", "[::1]:8401", "node-2.proglog:8401"]).unwrap();
        assert_eq!(c.join.len(), 2);
        assert_eq!(c.join_names, vec!["node-2.proglog:8401".to_string()]);
        for bad in ["node-2", "node-2:", "node-2:http", "::1", ":8401"] {
            let e = resolve(&[bad]).unwrap_err().to_string();
            assert!(e.contains("join") && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_values_name_their_setting() {
        let err = |args: ServeArgs| {
            let node_name = args.node_name.clone().or(Some("n".into()));
            NodeConfig::resolve(ServeArgs { node_name, ..args })
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(ServeArgs {
                sync: Some("sometimes".into()),
                ..ServeArgs::default()
            })
            .contains("sync")
        );
        assert!(
            err(ServeArgs {
                max_connections: Some(0),
                ..ServeArgs::default()
            })
            .contains("max-connections")
        );
        assert!(
            err(ServeArgs {
                max_segment_bytes: Some(10),
                ..ServeArgs::default()
            })
            .contains("max-segment-bytes")
        );
        assert!(
            err(ServeArgs {
                node_name: Some("bad name".into()),
                ..ServeArgs::default()
            })
            .contains("node-name")
        );
        assert!(
            err(ServeArgs {
                http_addr: Some("127.0.0.1:8400".parse().unwrap()),
                ..ServeArgs::default()
            })
            .contains("http-addr")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "no-such-setting = 1\n").unwrap();
        assert!(
            err(ServeArgs {
                config: Some(file),
                ..ServeArgs::default()
            })
            .contains("no-such-setting")
        );
    }

    #[test]
    fn front_limits_are_checked_at_their_boundaries() {
        let resolve = |args: ServeArgs| {
            NodeConfig::resolve(ServeArgs {
                node_name: Some("n".into()),
                ..args
            })
        };
        let inflight = |bytes| {
            resolve(ServeArgs {
                max_inflight_bytes: Some(bytes),
                ..ServeArgs::default()
            })
        };
        assert!(inflight(1 << 20).is_ok());
        let low = inflight((1 << 20) - 1).unwrap_err().to_string();
        assert!(low.contains("max-inflight-bytes"), "{low}");
        let idle = |secs| {
            resolve(ServeArgs {
                idle_timeout: Some(secs),
                ..ServeArgs::default()
            })
        };
        assert!(idle(1).is_ok());
        assert!(idle(0).unwrap_err().to_string().contains("idle-timeout"));
        let busy_poll = |us| {
            resolve(ServeArgs {
                busy_poll_us: Some(us),
                ..ServeArgs::default()
            })
        };
        assert_eq!(busy_poll(0).unwrap().busy_poll_us, 0, "off");
        assert_eq!(busy_poll(1000).unwrap().busy_poll_us, 1000);
        let long = busy_poll(1001).unwrap_err().to_string();
        assert!(long.contains("busy-poll-us"), "{long}");
        let per_identity = |n| {
            resolve(ServeArgs {
                max_connections_per_identity: Some(n),
                ..ServeArgs::default()
            })
        };
        assert!(per_identity(1).is_ok());
        let zero = per_identity(0).unwrap_err().to_string();
        assert!(zero.contains("max-connections-per-identity"), "{zero}");
        // The default is half of max-connections.
        let c = resolve(ServeArgs {
            max_connections: Some(10),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(c.max_connections_per_identity, 5);
    }
}
