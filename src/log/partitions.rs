//! The node's identity (`node.toml`) and the registry of its partitions.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use actix::Addr;
use serde::{Deserialize, Serialize};

use super::error::LogError;
use super::log_actor::LogActor;
use super::messages::Close;
use super::observer::Observer;
use crate::storage::{LogConfig, StorageError};
use crate::supervision::Parent;

/// Version of the data-directory layout written to `node.toml`.
pub const DATA_FORMAT_VERSION: u32 = 1;
const NODE_FILE: &str = "node.toml";
const PARTITIONS_DIR: &str = "partitions";

/// Who this node is, persisted in `<data-dir>/node.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node's name (stable across restarts).
    pub name: String,
    /// Random, chosen when the node's partition was created: a node that
    /// loses its data comes back under a new incarnation and a new partition,
    /// so it can never write different records under offsets a peer holds.
    pub incarnation: u64,
    /// The id of the partition this node leads: `<name>-<incarnation as hex>`.
    pub partition: String,
    pub format_version: u32,
}

impl NodeIdentity {
    fn fresh(name: &str) -> NodeIdentity {
        let incarnation = u64::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8]
                .try_into()
                .unwrap_or([1; 8]),
        );
        NodeIdentity {
            name: name.to_string(),
            incarnation,
            partition: format!("{name}-{incarnation:016x}"),
            format_version: DATA_FORMAT_VERSION,
        }
    }

    /// Loads `node.toml` from `data_dir`, or creates a fresh identity (new
    /// incarnation, new partition id) when there is none or when the node's
    /// own partition directory is gone. A name that differs from the one on
    /// disk is refused: the data belongs to another node.
    pub fn load_or_create(data_dir: &Path, name: &str) -> Result<NodeIdentity, StorageError> {
        let path = data_dir.join(NODE_FILE);
        let existing = match std::fs::read_to_string(&path) {
            Ok(text) => Some(
                toml::from_str::<NodeIdentity>(&text)
                    .map_err(|e| StorageError::corruption(&path, 0, e.to_string()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageError::io("read", &path)(e)),
        };
        if let Some(identity) = existing {
            if identity.format_version != DATA_FORMAT_VERSION {
                return Err(StorageError::UnsupportedFormat {
                    path,
                    reason: format!(
                        "data format {}, this build reads {DATA_FORMAT_VERSION}",
                        identity.format_version
                    ),
                });
            }
            if identity.name != name {
                return Err(StorageError::InvalidConfig(format!(
                    "node name {name:?} does not match {:?} recorded in {}",
                    identity.name,
                    path.display()
                )));
            }
            if data_dir
                .join(PARTITIONS_DIR)
                .join(&identity.partition)
                .is_dir()
            {
                return Ok(identity);
            }
            tracing::warn!(partition = %identity.partition, "own partition directory is missing: taking a new incarnation");
        }
        let identity = NodeIdentity::fresh(name);
        write_atomically(
            data_dir,
            &path,
            &toml::to_string(&identity).map_err(|e| StorageError::InvalidConfig(e.to_string()))?,
        )?;
        tracing::info!(node = name, partition = %identity.partition, "new node identity");
        Ok(identity)
    }
}

/// Writes `text` to `path` through a temporary file, rename and directory sync.
fn write_atomically(dir: &Path, path: &Path, text: &str) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).map_err(StorageError::io("create directory", dir))?;
    let tmp = path.with_extension("toml.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(StorageError::io("create", &tmp))?;
    file.write_all(text.as_bytes())
        .map_err(StorageError::io("write", &tmp))?;
    file.sync_all().map_err(StorageError::io("fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(StorageError::io("rename", path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("fsync", dir))
}

/// Every partition held on this node: its own (which it leads) and the
/// replicas of its peers'. Opens them all at start.
pub struct Partitions {
    data_dir: PathBuf,
    identity: NodeIdentity,
    config: LogConfig,
    fsync: Observer,
    /// Where a LogActor that spent its restart budget escalates.
    parent: Option<Parent>,
    /// Grows at run time: a replica is opened when its replication starts.
    logs: RefCell<BTreeMap<String, Addr<LogActor>>>,
}

impl Partitions {
    /// Opens every partition under `<data_dir>/partitions/` and creates the
    /// node's own on first start. Must run inside an actix System: it starts
    /// a LogActor per partition.
    pub fn open(
        data_dir: impl Into<PathBuf>,
        node_name: &str,
        config: LogConfig,
    ) -> Result<Partitions, StorageError> {
        Partitions::open_observed(data_dir, node_name, config, None)
    }

    /// As [`Partitions::open`], every partition reporting its sync and seal
    /// durations to `fsync`.
    pub fn open_observed(
        data_dir: impl Into<PathBuf>,
        node_name: &str,
        config: LogConfig,
        fsync: Observer,
    ) -> Result<Partitions, StorageError> {
        Partitions::open_supervised(data_dir, node_name, config, fsync, None)
    }

    /// As [`Partitions::open_observed`], every LogActor escalating to
    /// `parent` when its restart budget is spent (the Agent).
    pub fn open_supervised(
        data_dir: impl Into<PathBuf>,
        node_name: &str,
        config: LogConfig,
        fsync: Observer,
        parent: Option<Parent>,
    ) -> Result<Partitions, StorageError> {
        let data_dir = data_dir.into();
        let identity = NodeIdentity::load_or_create(&data_dir, node_name)?;
        let root = data_dir.join(PARTITIONS_DIR);
        std::fs::create_dir_all(root.join(&identity.partition))
            .map_err(StorageError::io("create directory", &root))?;
        let mut logs = BTreeMap::new();
        let entries =
            std::fs::read_dir(&root).map_err(StorageError::io("list directory", &root))?;
        for entry in entries {
            let entry = entry.map_err(StorageError::io("list directory", &root))?;
            let path = entry.path();
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                return Err(StorageError::UnexpectedFile { path });
            };
            if !path.is_dir() {
                return Err(StorageError::UnexpectedFile { path });
            }
            let log = LogActor::open(id.clone(), &path, config.clone())?.observed_by(fsync.clone());
            logs.insert(id, log.start_under(parent.clone()));
        }
        Ok(Partitions {
            data_dir,
            identity,
            config,
            fsync,
            parent,
            logs: RefCell::new(logs),
        })
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The id of the partition this node leads.
    pub fn own_id(&self) -> &str {
        &self.identity.partition
    }

    /// The LogActor of the node's own partition.
    pub fn own(&self) -> Result<Addr<LogActor>, LogError> {
        self.get(&self.identity.partition)
    }

    /// The partition id `id` names: the empty id means the node's own.
    pub fn resolve<'a>(&'a self, id: &'a str) -> &'a str {
        if id.is_empty() { self.own_id() } else { id }
    }

    /// The LogActor of partition `id`; the empty id means the node's own.
    pub fn get(&self, id: &str) -> Result<Addr<LogActor>, LogError> {
        let id = self.resolve(id);
        self.logs
            .borrow()
            .get(id)
            .cloned()
            .ok_or_else(|| LogError::UnknownPartition(id.to_string()))
    }

    /// Ids of all partitions held here.
    pub fn ids(&self) -> Vec<String> {
        self.logs.borrow().keys().cloned().collect()
    }

    /// Whether partition `id` is the one this node leads.
    pub fn is_own(&self, id: &str) -> bool {
        id == self.identity.partition
    }

    /// Opens (creating if new) the replica of a peer's partition.
    pub fn open_replica(&self, id: &str) -> Result<Addr<LogActor>, StorageError> {
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return Err(StorageError::InvalidConfig(format!(
                "bad partition id {id:?}"
            )));
        }
        if !self.logs.borrow().contains_key(id) {
            let dir = self.data_dir.join(PARTITIONS_DIR).join(id);
            let log = LogActor::open(id.to_string(), dir, self.config.clone())?
                .observed_by(self.fsync.clone());
            self.logs
                .borrow_mut()
                .insert(id.to_string(), log.start_under(self.parent.clone()));
        }
        self.get(id)
            .map_err(|e| StorageError::InvalidConfig(e.to_string()))
    }

    /// Closes every partition (flush, sync, seal): the next start needs no recovery.
    pub async fn close_all(&self) -> Result<(), LogError> {
        let logs = self.logs.borrow().clone();
        let closes: Vec<_> = logs.values().map(|log| log.send(Close)).collect();
        let mut result = Ok(());
        for (outcome, id) in futures::future::join_all(closes)
            .await
            .into_iter()
            .zip(logs.keys())
        {
            let outcome =
                outcome.unwrap_or_else(|_| Err(LogError::unavailable(id, "log actor went away")));
            if let Err(e) = outcome {
                tracing::error!(partition = %id, error = %e, "closing partition failed");
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}
