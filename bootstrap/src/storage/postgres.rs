//! The PostgreSQL backend: a pool of connection threads, the schema
//! migrations, and the key-value and log operations in SQL.
//!
//! Each connection lives on a thread of its own and runs the jobs sent to
//! the pool one at a time, with its prepared statements cached. A
//! connection that broke (the server restarted, the network went away) is
//! dropped, the job's caller gets [`StoreError::Postgres`], and the next
//! job on that thread connects again: requests fail cleanly while the
//! server is away and succeed once it is back.

use std::{
    collections::HashMap,
    sync::{mpsc, Mutex},
    time::Duration,
};

use agentmesh_node::trust::transparency::{complete_subtrees, leaf_hash};
use postgres::{types::ToSql, Client, NoTls, Statement};
use tracing::{debug, warn};

use super::{log_node_key, prefix_end, Entry, StoreError, LOG_SIZE_KEY};

/// Connections a pool opens (one thread each).
pub const DEFAULT_CONNECTIONS: usize = 8;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection idle for longer is checked before it is used again.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The migrations, in order: (version, SQL). Applied once each, under a
/// lock, by the first node that opens the database at a newer version.
pub const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../migrations/0001_registry.sql"))];

/// Advisory lock key serialising migrations.
const MIGRATION_LOCK: i64 = 0x4147_4d45_5348_0001;
/// Advisory lock key serialising transparency log appends.
const LOG_APPEND_LOCK: i64 = 0x4147_4d45_5348_0002;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => StoreError::Postgres(format!("{}: {}", db.code().code(), db.message())),
            None => StoreError::Postgres(e.to_string()),
        }
    }
}

/// One connection and its prepared statements.
pub struct Conn {
    config: postgres::Config,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    last_used: std::time::Instant,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("target", &describe(&self.config))
            .field("connected", &self.client.is_some())
            .field("statements", &self.statements.len())
            .finish()
    }
}

impl Conn {
    /// The connected client, connecting first when there is none or it
    /// broke. A connection idle for over [`IDLE_CHECK`] is checked first
    /// (one empty query): the server may have restarted meanwhile, and a
    /// request is better served on a new connection than failed on a dead
    /// one.
    pub fn client(&mut self) -> Result<&mut Client, StoreError> {
        let idle = self.last_used.elapsed() > IDLE_CHECK;
        self.last_used = std::time::Instant::now();
        let usable = match self.client.as_mut() {
            None => false,
            Some(c) if c.is_closed() => false,
            Some(c) if idle => c.is_valid(CONNECT_TIMEOUT).is_ok(),
            Some(_) => true,
        };
        if !usable {
            self.statements.clear();
            self.client = None;
            let client = self.config.connect(NoTls)?;
            debug!(target: "agentmesh::storage", "postgres connection opened");
            return Ok(self.client.insert(client));
        }
        match self.client.as_mut() {
            Some(c) => Ok(c),
            None => Err(StoreError::Postgres("no connection".into())),
        }
    }

    fn prepared(&mut self, sql: String) -> Result<Statement, StoreError> {
        // First the connection (a new one forgets the old statements).
        self.client()?;
        if let Some(s) = self.statements.get(&sql) {
            return Ok(s.clone());
        }
        let s = self.client()?.prepare(&sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    /// Runs `sql` (prepared once per connection) and returns its rows.
    pub fn query(
        &mut self,
        sql: String,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let s = self.prepared(sql)?;
        Ok(self.client()?.query(&s, params)?)
    }

    /// Runs `sql` (prepared once per connection) and returns the number of
    /// rows it changed.
    pub fn execute(
        &mut self,
        sql: String,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let s = self.prepared(sql)?;
        Ok(self.client()?.execute(&s, params)?)
    }
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// A pool of connections to one PostgreSQL database.
pub struct PgPool {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    target: String,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// `host:port/dbname` of `config`, without user or password (for logs).
fn describe(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or_default())
}

impl PgPool {
    /// Opens `connections` connections to `url` (each on its own thread)
    /// and checks that the server answers.
    pub fn connect(url: &str, connections: usize) -> Result<Self, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Postgres(format!("invalid database URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("agentmesh-bootstrap");
        let target = describe(&config);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..connections.max(1) {
            let rx = rx.clone();
            let mut conn = Conn {
                config: config.clone(),
                client: None,
                statements: HashMap::new(),
                last_used: std::time::Instant::now(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("agentmesh-pg-{i}"))
                .spawn(move || loop {
                    let job = {
                        let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                        rx.recv()
                    };
                    let Ok(job) = job else { break };
                    let run = std::panic::AssertUnwindSafe(|| job(&mut conn));
                    if std::panic::catch_unwind(run).is_err() {
                        warn!(target: "agentmesh::storage", "a database job panicked");
                        conn.client = None;
                    }
                })
                .map_err(|e| StoreError::Task(e.to_string()))?;
            threads.push(handle);
        }
        let pool = Self {
            jobs: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
            target,
        };
        pool.run(|c| {
            c.client()?.simple_query("SELECT 1")?;
            Ok(())
        })?;
        Ok(pool)
    }

    /// `host:port/dbname` of the server (no credentials).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `f` on a connection of the pool and waits for its answer. A
    /// failed job leaves its connection to be checked (and reopened if it
    /// broke) by the next one.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.as_ref()
                .ok_or_else(|| StoreError::Postgres("the pool is closed".into()))?
                .send(job)
                .map_err(|_| StoreError::Postgres("the pool is closed".into()))?;
        }
        let wait = || {
            rx.recv()
                .map_err(|_| StoreError::Postgres("the connection thread stopped".into()))
        };
        // On a multi-threaded runtime the worker hands its other tasks over
        // while it waits, so many requests can wait on the database at once.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)?
            }
            _ => wait()?,
        }
    }

    /// Brings the schema up to date: applies, in one transaction under a
    /// lock, each migration of [`MIGRATIONS`] not applied yet.
    pub fn migrate(&self) -> Result<(), StoreError> {
        self.run(|c| {
            let client = c.client()?;
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS registry_schema_migrations (
                     version integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )?;
            for (version, sql) in MIGRATIONS {
                let done = tx
                    .query_opt(
                        "SELECT 1 FROM registry_schema_migrations WHERE version = $1",
                        &[version],
                    )?
                    .is_some();
                if !done {
                    tx.batch_execute(sql)?;
                    tx.execute(
                        "INSERT INTO registry_schema_migrations (version) VALUES ($1)",
                        &[version],
                    )?;
                    debug!(target: "agentmesh::storage", version, "migration applied");
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub(super) fn get(
        &self,
        table: &'static str,
        key: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(move |c| {
            let rows = c.query(format!("SELECT value FROM {table} WHERE key = $1"), &[&key])?;
            Ok(rows.first().map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    pub(super) fn put(
        &self,
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.run(move |c| {
            c.execute(
                format!(
                    "INSERT INTO {table} (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                ),
                &[&key, &value],
            )?;
            Ok(())
        })
    }

    pub(super) fn delete(&self, table: &'static str, key: Vec<u8>) -> Result<(), StoreError> {
        self.run(move |c| {
            c.execute(format!("DELETE FROM {table} WHERE key = $1"), &[&key])?;
            Ok(())
        })
    }

    pub(super) fn compare_and_swap(
        &self,
        table: &'static str,
        key: Vec<u8>,
        old: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        self.run(move |c| {
            let changed = match (old, new) {
                (None, Some(new)) => c.execute(
                    format!(
                        "INSERT INTO {table} (key, value) VALUES ($1, $2) \
                         ON CONFLICT (key) DO NOTHING"
                    ),
                    &[&key, &new],
                )?,
                (Some(old), Some(new)) => c.execute(
                    format!("UPDATE {table} SET value = $3 WHERE key = $1 AND value = $2"),
                    &[&key, &old, &new],
                )?,
                (Some(old), None) => c.execute(
                    format!("DELETE FROM {table} WHERE key = $1 AND value = $2"),
                    &[&key, &old],
                )?,
                (None, None) => {
                    let rows = c.query(format!("SELECT 1 FROM {table} WHERE key = $1"), &[&key])?;
                    u64::from(rows.is_empty())
                }
            };
            Ok(changed == 1)
        })
    }

    pub(super) fn scan(
        &self,
        table: &'static str,
        prefix: Vec<u8>,
    ) -> Result<Vec<Entry>, StoreError> {
        self.run(move |c| {
            let rows = match prefix_end(&prefix) {
                _ if prefix.is_empty() => {
                    c.query(format!("SELECT key, value FROM {table} ORDER BY key"), &[])?
                }
                Some(end) => c.query(
                    format!(
                        "SELECT key, value FROM {table} WHERE key >= $1 AND key < $2 ORDER BY key"
                    ),
                    &[&prefix, &end],
                )?,
                None => c.query(
                    format!("SELECT key, value FROM {table} WHERE key >= $1 ORDER BY key"),
                    &[&prefix],
                )?,
            };
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                .collect())
        })
    }

    pub(super) fn count(&self, table: &'static str) -> Result<usize, StoreError> {
        self.run(move |c| {
            let rows = c.query(format!("SELECT count(*) FROM {table}"), &[])?;
            let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    pub(super) fn generation(&self) -> Result<u64, StoreError> {
        self.run(|c| {
            let rows = c.query("SELECT n FROM registry_generation WHERE id = 1".into(), &[])?;
            let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
            Ok(n as u64)
        })
    }

    pub(super) fn bump_generation(&self) -> Result<(), StoreError> {
        self.run(|c| {
            c.execute(
                "UPDATE registry_generation SET n = n + 1 WHERE id = 1".into(),
                &[],
            )?;
            Ok(())
        })
    }

    pub(super) fn append_log(&self, data: Vec<u8>) -> Result<u64, StoreError> {
        self.run(move |c| {
            // Prepared once per connection, outside the lock.
            let lock = c.prepared("SELECT pg_advisory_xact_lock($1)".into())?;
            let read = c.prepared(
                "SELECT key, value FROM registry_translog_nodes WHERE key = ANY($1)".into(),
            )?;
            let leaf_and_hash = c.prepared(
                "WITH leaf AS (INSERT INTO registry_translog_leaves (key, value) VALUES ($1, $2)) \
                 INSERT INTO registry_translog_by_hash (key, value) VALUES ($3, $1) \
                 ON CONFLICT (key) DO NOTHING"
                    .into(),
            )?;
            let nodes = c.prepared(
                "INSERT INTO registry_translog_nodes (key, value) \
                 SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                    .into(),
            )?;
            let client = c.client()?;
            let mut tx = client.transaction()?;
            // One sequence across every node: appends wait for each other
            // here, and the size read below is the one this append extends.
            tx.execute(&lock, &[&LOG_APPEND_LOCK])?;
            let size = tx.query(&read, &[&vec![LOG_SIZE_KEY.to_vec()]])?;
            let index = super::decode_size(size.first().map(|r| r.get::<_, &[u8]>(1)))?;
            // The left siblings the new leaf completes, known from its index
            // alone: read in one query.
            let mut wanted = Vec::new();
            let mut i = index;
            let mut level = 0u32;
            while i & 1 == 1 {
                wanted.push(log_node_key(level, i - 1).to_vec());
                level += 1;
                i >>= 1;
            }
            let known: HashMap<Vec<u8>, Vec<u8>> = if wanted.is_empty() {
                HashMap::new()
            } else {
                tx.query(&read, &[&wanted])?
                    .iter()
                    .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                    .collect()
            };
            let leaf = leaf_hash(&data);
            let hashes = complete_subtrees(index, leaf, |level, i| {
                super::decode_hash(known.get(&log_node_key(level, i)[..]).map(Vec::as_slice))
            })?;
            let index_bytes = index.to_be_bytes().to_vec();
            tx.execute(&leaf_and_hash, &[&index_bytes, &data, &leaf.to_vec()])?;
            let (mut keys, mut values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = hashes
                .iter()
                .map(|(level, h)| (log_node_key(*level, index >> level).to_vec(), h.to_vec()))
                .unzip();
            keys.push(LOG_SIZE_KEY.to_vec());
            values.push((index + 1).to_be_bytes().to_vec());
            tx.execute(&nodes, &[&keys, &values])?;
            tx.commit()?;
            Ok(index)
        })
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        // Closing the queue ends every connection thread after its job.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}
