//! The registry's storage boundary: ordered key-value trees over one of two
//! backends.
//!
//! - **sled** (the default): an embedded database in the data directory,
//!   for a single bootstrap node and the devnet. No server needed.
//! - **PostgreSQL** (`--database postgres://…`): one database shared by
//!   several bootstrap nodes, so they serve one registry. Each tree is a
//!   table `(key bytea primary key, value bytea)`, created by the
//!   migrations in `bootstrap/migrations/`.
//!
//! Everything above this module (the registry's records, indexes, replay
//! store and transparency log) is written against [`Tree`], whose
//! operations mean the same on both backends: single-key writes are atomic,
//! [`Tree::compare_and_swap`] is the one conditional write (the replay store
//! relies on it across nodes), and scans come back in key order. The transparency log's append, which must be serialised
//! across every node writing the log, has a backend-specific path
//! ([`Database::append_log`]).
//!
//! The store's calls are synchronous, as sled's are: PostgreSQL requests run
//! on a small pool of dedicated connection threads, and the calling thread
//! waits for the answer (a loopback or LAN round trip).

pub mod postgres;

use std::sync::Arc;

use agentmesh_node::trust::transparency::{complete_subtrees, leaf_hash, Hash};
use sled::Transactional;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled failed.
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    /// PostgreSQL failed or could not be reached.
    #[error("postgres: {0}")]
    Postgres(String),
    /// A background task failed.
    #[error("task: {0}")]
    Task(String),
    /// The system random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// A stored value does not decode.
    #[error("corrupt value in {tree}: {message}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// What failed.
        message: String,
    },
}

/// The trees of the registry, by name. The sled tree of each is named as
/// here; its PostgreSQL table is `registry_<name>` with `/` and `-` made
/// `_` (see the migrations).
pub const TREES: &[&str] = &[
    "agents",
    "caps",
    "prekeys",
    "receipts",
    "receipts_by",
    "feedback",
    "rated_by",
    "revocations",
    "orgs",
    "org_keys",
    "seen",
    "meta",
    "translog/leaves",
    "translog/nodes",
    "translog/by-hash",
];

/// The PostgreSQL table of tree `name` (one of [`TREES`]).
pub fn table_of(name: &str) -> Option<&'static str> {
    const TABLES: &[&str] = &[
        "registry_agents",
        "registry_caps",
        "registry_prekeys",
        "registry_receipts",
        "registry_receipts_by",
        "registry_feedback",
        "registry_rated_by",
        "registry_revocations",
        "registry_orgs",
        "registry_org_keys",
        "registry_seen",
        "registry_meta",
        "registry_translog_leaves",
        "registry_translog_nodes",
        "registry_translog_by_hash",
    ];
    TREES.iter().position(|t| *t == name).map(|i| TABLES[i])
}

/// Where the registry keeps its data.
#[derive(Debug, Clone)]
pub enum Database {
    /// An embedded sled database.
    Sled(sled::Db),
    /// A PostgreSQL database, possibly shared with other bootstrap nodes.
    Postgres(Arc<postgres::PgPool>),
}

/// Key of the transparency log's size in its `nodes` tree.
pub const LOG_SIZE_KEY: &[u8] = b"size";

/// Key of a subtree hash in the log's `nodes` tree.
pub fn log_node_key(level: u32, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level as u8;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn decode_size(v: Option<&[u8]>) -> Result<u64, StoreError> {
    match v {
        None => Ok(0),
        Some(v) => v
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                tree: "translog/nodes",
                message: "size".into(),
            }),
    }
}

fn decode_hash(v: Option<&[u8]>) -> Result<Hash, StoreError> {
    v.and_then(|v| v.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt {
            tree: "translog/nodes",
            message: "missing or short subtree hash".into(),
        })
}

impl Database {
    /// Opens (or creates) an embedded database in `dir`.
    pub fn open_sled(dir: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Self::Sled(sled::open(dir)?))
    }

    /// Connects to PostgreSQL at `url` (`postgres://user@host/db`) and
    /// brings its schema up to date.
    pub fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let pool = postgres::PgPool::connect(url, postgres::DEFAULT_CONNECTIONS)?;
        pool.migrate()?;
        Ok(Self::Postgres(Arc::new(pool)))
    }

    /// Which backend this is: `sled` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sled(_) => "sled",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Whether other processes may write the same data (then in-memory
    /// caches must check [`Database::generation`]).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// The tree `name` (one of [`TREES`]).
    pub fn tree(&self, name: &'static str) -> Result<Tree, StoreError> {
        match self {
            Self::Sled(db) => Ok(Tree::Sled(db.open_tree(name)?)),
            Self::Postgres(pool) => {
                let table = table_of(name).ok_or_else(|| StoreError::Corrupt {
                    tree: name,
                    message: "no such tree".into(),
                })?;
                Ok(Tree::Postgres {
                    pool: pool.clone(),
                    table,
                })
            }
        }
    }

    /// Makes every write so far durable. PostgreSQL commits are durable
    /// already; sled is flushed on the blocking pool.
    pub async fn flush(&self) -> Result<(), StoreError> {
        match self {
            Self::Sled(db) => {
                // On the blocking pool: concurrent `flush_async` calls were
                // seen to stall the runtime under load.
                let db = db.clone();
                tokio::task::spawn_blocking(move || db.flush())
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))??;
                Ok(())
            }
            Self::Postgres(_) => Ok(()),
        }
    }

    /// The shared write generation: a counter every node bumps after a
    /// write that changes reputation inputs. `None` on sled (one process).
    pub fn generation(&self) -> Result<Option<u64>, StoreError> {
        match self {
            Self::Sled(_) => Ok(None),
            Self::Postgres(pool) => pool.generation().map(Some),
        }
    }

    /// Bumps the shared write generation (nothing on sled).
    pub fn bump_generation(&self) -> Result<(), StoreError> {
        match self {
            Self::Sled(_) => Ok(()),
            Self::Postgres(pool) => pool.bump_generation(),
        }
    }

    /// Appends `data` to the transparency log held in `leaves`, `nodes` and
    /// `by_hash` (trees of this database) and returns its index. The leaf,
    /// the subtree hashes it completes and the new size are written in one
    /// transaction; on PostgreSQL the append holds a lock that serialises
    /// it with every other node's appends, so the log has one sequence.
    pub fn append_log(
        &self,
        leaves: &Tree,
        nodes: &Tree,
        by_hash: &Tree,
        data: &[u8],
    ) -> Result<u64, StoreError> {
        match (self, leaves, nodes, by_hash) {
            (Self::Sled(_), Tree::Sled(leaves), Tree::Sled(nodes), Tree::Sled(by_hash)) => {
                let index = decode_size(nodes.get(LOG_SIZE_KEY)?.as_deref())?;
                let leaf = leaf_hash(data);
                let hashes = complete_subtrees(index, leaf, |level, i| {
                    decode_hash(nodes.get(log_node_key(level, i))?.as_deref())
                })?;
                (leaves, nodes, by_hash)
                    .transaction(|(leaves, nodes, by_hash)| {
                        leaves.insert(&index.to_be_bytes(), data)?;
                        for (level, h) in &hashes {
                            nodes.insert(&log_node_key(*level, index >> level), &h[..])?;
                        }
                        if by_hash.get(leaf)?.is_none() {
                            by_hash.insert(&leaf, &index.to_be_bytes())?;
                        }
                        nodes.insert(LOG_SIZE_KEY, &(index + 1).to_be_bytes())?;
                        Ok(())
                    })
                    .map_err(|e: sled::transaction::TransactionError<()>| match e {
                        sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
                        sled::transaction::TransactionError::Abort(()) => StoreError::Corrupt {
                            tree: "translog",
                            message: "transaction aborted".into(),
                        },
                    })?;
                Ok(index)
            }
            (Self::Postgres(pool), _, _, _) => pool.append_log(data.to_vec()),
            _ => Err(StoreError::Corrupt {
                tree: "translog",
                message: "log trees of another database".into(),
            }),
        }
    }
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One ordered key-value tree (a sled tree or a PostgreSQL table). Cheap
/// to clone.
#[derive(Debug, Clone)]
pub enum Tree {
    /// A sled tree.
    Sled(sled::Tree),
    /// A PostgreSQL table.
    Postgres {
        /// The connection pool.
        pool: Arc<postgres::PgPool>,
        /// The table.
        table: &'static str,
    },
}

/// The smallest byte string greater than every string starting with
/// `prefix`, or `None` when there is none (empty or all `0xff`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Tree {
    /// The value under `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::Sled(t) => Ok(t.get(key)?.map(|v| v.to_vec())),
            Self::Postgres { pool, table } => pool.get(table, key.as_ref().to_vec()),
        }
    }

    /// Whether `key` holds a value.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        match self {
            Self::Sled(t) => Ok(t.contains_key(key)?),
            Self::Postgres { .. } => Ok(self.get(key)?.is_some()),
        }
    }

    /// Sets `key` to `value`.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), StoreError> {
        match self {
            Self::Sled(t) => {
                t.insert(key.as_ref(), value.as_ref())?;
                Ok(())
            }
            Self::Postgres { pool, table } => {
                pool.put(table, key.as_ref().to_vec(), value.as_ref().to_vec())
            }
        }
    }

    /// Removes `key`.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), StoreError> {
        match self {
            Self::Sled(t) => {
                t.remove(key)?;
                Ok(())
            }
            Self::Postgres { pool, table } => pool.delete(table, key.as_ref().to_vec()),
        }
    }

    /// Sets `key` to `new` (`None`: removes it) if it holds `old` (`None`:
    /// nothing); true when it did. Atomic across every node sharing the
    /// database.
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Sled(t) => Ok(t.compare_and_swap(key, old, new)?.is_ok()),
            Self::Postgres { pool, table } => pool.compare_and_swap(
                table,
                key.as_ref().to_vec(),
                old.map(<[u8]>::to_vec),
                new.map(<[u8]>::to_vec),
            ),
        }
    }

    /// Replaces the value of `key` by `f(old)` atomically (retrying when
    /// another writer got there first); returns the value `f` was given
    /// the last time, when it succeeded.
    pub fn fetch_and_update(
        &self,
        key: impl AsRef<[u8]>,
        mut f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.as_ref();
        loop {
            let old = self.get(key)?;
            let new = f(old.as_deref());
            if self.compare_and_swap(key, old.as_deref(), new.as_deref())? {
                return Ok(old);
            }
        }
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Vec<Entry>, StoreError> {
        match self {
            Self::Sled(t) => t
                .scan_prefix(prefix)
                .map(|item| {
                    let (k, v) = item?;
                    Ok((k.to_vec(), v.to_vec()))
                })
                .collect(),
            Self::Postgres { pool, table } => pool.scan(table, prefix.as_ref().to_vec()),
        }
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        self.scan_prefix([])
    }

    /// Number of entries.
    pub fn len(&self) -> Result<usize, StoreError> {
        match self {
            Self::Sled(t) => Ok(t.len()),
            Self::Postgres { pool, table } => pool.count(table),
        }
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_string_after_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[]), None);
    }

    #[test]
    fn every_tree_has_a_table() {
        for t in TREES {
            assert!(table_of(t).is_some(), "{t}");
        }
        assert_eq!(
            table_of("translog/by-hash"),
            Some("registry_translog_by_hash")
        );
        assert_eq!(table_of("nope"), None);
    }
}
