//! The embedded backend: one redb file.
//!
//! Every write is one transaction committed with `Durability::Immediate` (fsync)
//! before it is acknowledged. A catalog import is staged in a table of its own
//! (`staging:<n>`), a batch per short transaction written without fsync (nothing
//! acknowledges it), and committed in one durable transaction: a replace renames
//! the staging table over `items`, an upsert copies it in. redb spills a large
//! transaction's pages to the file past its cache, so neither holds the catalog in
//! memory. Concurrent `record_events` calls are group-committed:
//! the batcher gathers what arrived while the previous commit was running into one
//! transaction, so one fsync acknowledges many events.
//!
//! After an I/O error (a full disk), redb refuses every later write until the file
//! is closed and opened again; [`Handle`] does that, so a disk that frees up does not
//! leave the store read-only until a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rankmesh_common::batcher::{BatchConfig, BatchError, Batcher};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle,
};

use super::api::{FeatureStore, ImportId, Recorded, StoreError};
use crate::domain::{Event, Item, UserProfile};

const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const POPULARITY: TableDefinition<&str, f64> = TableDefinition::new("popularity");

/// Staged imports' tables are named this and a number.
const STAGING_PREFIX: &str = "staging:";

/// A staged import's table (same layout as `items`).
fn staging(import: &ImportId) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(&import.0)
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(e.to_string())
}

/// The open database, reopened when an I/O error has poisoned it.
struct Handle {
    path: PathBuf,
    /// redb's cache (reads and the write buffer), in bytes.
    cache_bytes: usize,
    /// None only while a reopen failed; the next use tries again.
    db: RwLock<Option<Arc<Database>>>,
    /// When the last reopen ran: at most one a second while the disk stays full
    /// (each failed write poisons the handle again).
    reopened: std::sync::Mutex<Option<Instant>>,
}

/// Free space a reopen waits for.
const MIN_FREE_TO_REOPEN: u64 = 4 << 20;

/// How long a reopen waits for the reads still holding the old handle.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

impl Handle {
    fn open(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        Ok(Self {
            path: path.to_owned(),
            cache_bytes,
            db: RwLock::new(Some(Arc::new(create(path, cache_bytes)?))),
            reopened: std::sync::Mutex::new(None),
        })
    }

    /// The database, for a read or a write.
    fn get(&self) -> Result<Arc<Database>, StoreError> {
        let current = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match current {
            Some(db) => Ok(db),
            None => {
                self.reopen(None)?;
                self.get()
            }
        }
    }

    /// Runs the write `f`; when redb refuses it because of an earlier I/O error,
    /// reopens the file and runs `f` once more (an uncommitted transaction left
    /// nothing behind, so it is safe to redo).
    fn write<T>(&self, f: impl Fn(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let db = self.get()?;
        match f(&db) {
            Err(StoreError::Unavailable(m)) if m.contains(POISONED) => {
                // Reopening needs room (redb may repair the file on open); while the
                // disk is still full, keep the old handle, which still serves reads.
                let free = self.free_bytes();
                if free < MIN_FREE_TO_REOPEN {
                    return Err(StoreError::Full(format!(
                        "{free} bytes free next to {}; writes resume once there is room",
                        self.path.display()
                    )));
                }
                self.reopen(Some(db))?;
                f(&*self.get()?)
            }
            other => other,
        }
    }

    /// Space left on the file system of the database (0 when it cannot be read).
    fn free_bytes(&self) -> u64 {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        nix::sys::statvfs::statvfs(dir)
            .map(|s| s.blocks_available() * s.fragment_size())
            .unwrap_or(0)
    }

    /// Closes `failed` (once nothing else holds it) and opens the file again; a no-op
    /// when another writer reopened it first, or a reopen ran less than a second ago.
    fn reopen(&self, failed: Option<Arc<Database>>) -> Result<(), StoreError> {
        let mut slot = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = match (&*slot, &failed) {
            (Some(current), Some(failed)) => Arc::ptr_eq(current, failed),
            (None, _) => true,
            (Some(_), None) => false,
        };
        if !stale {
            return Ok(());
        }
        {
            let mut last = self
                .reopened
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) && slot.is_some() {
                return Err(StoreError::Unavailable(format!(
                    "{POISONED}: reopened less than a second ago"
                )));
            }
            *last = Some(Instant::now());
        }
        drop(failed);
        // redb locks its file: the old handle must be gone before it opens again.
        let deadline = Instant::now() + REOPEN_WAIT;
        while slot.as_ref().is_some_and(|db| Arc::strong_count(db) > 1) {
            if Instant::now() > deadline {
                return Err(StoreError::Unavailable(format!(
                    "{POISONED}: reads still hold the database"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        *slot = None;
        let db = create(&self.path, self.cache_bytes)?;
        tracing::warn!(path = %self.path.display(), "reopened the feature store after an I/O error");
        *slot = Some(Arc::new(db));
        Ok(())
    }
}

fn create(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(backend)
}

/// redb's own default cache: 1 GiB.
pub const DEFAULT_CACHE_BYTES: usize = 1 << 30;

/// What redb says once an I/O error has poisoned a handle (and what our errors
/// say about it).
const POISONED: &str = "Previous I/O error occurred";

/// The redb backend. Cheap to clone.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Handle>,
    events: Batcher<Event, Recorded>,
    /// The number of the next staged import.
    next_import: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the database file. Must run inside a Tokio runtime.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database file with a cache of `cache_bytes`: what the
    /// store holds in memory besides the rows in flight, however large the file.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let db = Arc::new(Handle::open(path, cache_bytes)?);
        // Create the tables so reads never meet a missing table, and drop the
        // stagings of imports a crash or kill left behind.
        db.write(|db| {
            let txn = db.begin_write().map_err(backend)?;
            for t in [ITEMS, EVENTS, USERS] {
                txn.open_table(t).map_err(backend)?;
            }
            txn.open_table(POPULARITY).map_err(backend)?;
            let stale: Vec<ImportId> = txn
                .list_tables()
                .map_err(backend)?
                .map(|t| t.name().to_owned())
                .filter(|name| name.starts_with(STAGING_PREFIX))
                .map(ImportId)
                .collect();
            for import in &stale {
                txn.delete_table(staging(import)).map_err(backend)?;
            }
            if !stale.is_empty() {
                tracing::info!(count = stale.len(), "dropped unfinished imports' staging");
            }
            txn.commit().map_err(backend)
        })?;

        let writer = Arc::clone(&db);
        let events = Batcher::new(
            "redb_events",
            BatchConfig {
                max_batch: 512,
                max_wait_us: 0,
                queue_capacity: 65_536,
                workers: 1,
            },
            move |batch: Vec<Event>| {
                writer
                    .write(|db| apply_events(db, &batch))
                    .map_err(|e| e.to_string())
            },
        );
        Ok(Self {
            db,
            events,
            next_import: Arc::new(AtomicU64::new(0)),
        })
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl Fn(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let handle = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || handle.write(f))
            .await
            .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let handle = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&*handle.get()?))
            .await
            .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Backend(format!("corrupt record: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(backend)
}

/// One transaction for a batch of events, applied in order.
fn apply_events(db: &Database, batch: &[Event]) -> Result<Vec<Recorded>, StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut events = txn.open_table(EVENTS).map_err(backend)?;
        let items = txn.open_table(ITEMS).map_err(backend)?;
        let mut users = txn.open_table(USERS).map_err(backend)?;
        let mut pop = txn.open_table(POPULARITY).map_err(backend)?;
        for ev in batch {
            if events.get(ev.event_id.as_str()).map_err(backend)?.is_some() {
                out.push(Recorded::Duplicate);
                continue;
            }
            let item: Item = match items.get(ev.item_id.as_str()).map_err(backend)? {
                Some(bytes) => decode(bytes.value())?,
                None => {
                    out.push(Recorded::UnknownItem);
                    continue;
                }
            };
            let mut profile: UserProfile = match users.get(ev.user_id.as_str()).map_err(backend)? {
                Some(bytes) => decode(bytes.value())?,
                None => UserProfile::default(),
            };
            profile.apply(ev, &item.category, &item.brand);
            users
                .insert(ev.user_id.as_str(), encode(&profile)?.as_slice())
                .map_err(backend)?;
            let current = pop
                .get(ev.item_id.as_str())
                .map_err(backend)?
                .map_or(0.0, |v| v.value());
            pop.insert(ev.item_id.as_str(), current + ev.kind.weight())
                .map_err(backend)?;
            events
                .insert(ev.event_id.as_str(), encode(ev)?.as_slice())
                .map_err(backend)?;
            out.push(Recorded::Applied);
        }
    }
    // Immediate durability is redb's default: commit returns after fsync.
    txn.commit().map_err(backend)?;
    Ok(out)
}

/// A write transaction for a staging: not fsync'd, since nothing is acknowledged
/// until the import commits (durably, which makes these durable too).
fn staging_txn(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::None).map_err(backend)?;
    Ok(txn)
}

/// Fails unless `import`'s staging table exists: `open_table` would create an
/// empty one, and a staging whose unsynced batches a reopen (after an I/O error)
/// lost must fail its import, not commit what came after.
fn staging_exists(txn: &redb::WriteTransaction, import: &ImportId) -> Result<(), StoreError> {
    if txn
        .list_tables()
        .map_err(backend)?
        .any(|t| t.name() == import.0)
    {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "import {import}: no such staging (committed, aborted, or lost to a reopen)"
        )))
    }
}

/// Makes a staging the catalog (`replace`) or copies it into the catalog, in one
/// durable transaction, and drops it.
fn commit_import(db: &Database, import: &ImportId, replace: bool) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    staging_exists(&txn, import)?;
    if replace {
        txn.delete_table(ITEMS).map_err(backend)?;
        txn.rename_table(staging(import), ITEMS).map_err(backend)?;
    } else {
        {
            let staged = txn.open_table(staging(import)).map_err(backend)?;
            let mut items = txn.open_table(ITEMS).map_err(backend)?;
            for entry in staged.iter().map_err(backend)? {
                let (id, row) = entry.map_err(backend)?;
                items.insert(id.value(), row.value()).map_err(backend)?;
            }
        }
        txn.delete_table(staging(import)).map_err(backend)?;
    }
    txn.commit().map_err(backend)
}

/// Up to `limit` rows of `table` with ids after `after`, in id order.
fn scan(
    db: &Database,
    table: TableDefinition<'_, &'static str, &'static [u8]>,
    after: &str,
    limit: usize,
) -> Result<Vec<Item>, StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let table = txn.open_table(table).map_err(backend)?;
    let range = if after.is_empty() {
        table.range::<&str>(..).map_err(backend)?
    } else {
        table
            .range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .map_err(backend)?
    };
    range
        .take(limit)
        .map(|entry| {
            let (_, v) = entry.map_err(backend)?;
            decode(v.value())
        })
        .collect()
}

impl FeatureStore for RedbStore {
    async fn begin_import(&self) -> Result<ImportId, StoreError> {
        let n = self.next_import.fetch_add(1, Ordering::Relaxed);
        let import = ImportId(format!("{STAGING_PREFIX}{n}"));
        let created = import.clone();
        self.write(move |db| {
            let txn = staging_txn(db)?;
            txn.open_table(staging(&created)).map_err(backend)?;
            txn.commit().map_err(backend)
        })
        .await?;
        Ok(import)
    }

    async fn stage_items(&self, import: &ImportId, items: Vec<Item>) -> Result<(), StoreError> {
        let import = import.clone();
        self.write(move |db| {
            let txn = staging_txn(db)?;
            staging_exists(&txn, &import)?;
            {
                let mut table = txn.open_table(staging(&import)).map_err(backend)?;
                for item in &items {
                    table
                        .insert(item.id.as_str(), encode(item)?.as_slice())
                        .map_err(backend)?;
                }
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn staged_items(
        &self,
        import: &ImportId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let (import, after) = (import.clone(), after.to_owned());
        self.blocking(move |db| scan(db, staging(&import), &after, limit))
            .await
    }

    async fn commit_import(&self, import: &ImportId, replace: bool) -> Result<(), StoreError> {
        let import = import.clone();
        self.write(move |db| commit_import(db, &import, replace))
            .await
    }

    async fn abort_import(&self, import: &ImportId) -> Result<(), StoreError> {
        let import = import.clone();
        self.write(move |db| {
            let txn = staging_txn(db)?;
            txn.delete_table(staging(&import)).map_err(backend)?;
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn get_items(&self, ids: &[String]) -> Result<Vec<Option<Item>>, StoreError> {
        let ids = ids.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(ITEMS).map_err(backend)?;
            ids.iter()
                .map(|id| match table.get(id.as_str()).map_err(backend)? {
                    Some(v) => decode(v.value()).map(Some),
                    None => Ok(None),
                })
                .collect()
        })
        .await
    }

    async fn scan_items(&self, after: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        let after = after.to_owned();
        self.blocking(move |db| scan(db, ITEMS, &after, limit))
            .await
    }

    async fn record_events(&self, events: Vec<Event>) -> Result<Vec<Recorded>, StoreError> {
        self.events.submit(events).await.map_err(|e| match e {
            BatchError::QueueFull { .. } => StoreError::Unavailable(e.to_string()),
            BatchError::Model(m) => StoreError::backend(m),
            other => StoreError::Backend(other.to_string()),
        })
    }

    async fn user_profile(&self, user_id: &str) -> Result<Option<UserProfile>, StoreError> {
        let user = user_id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(USERS).map_err(backend)?;
            match table.get(user.as_str()).map_err(backend)? {
                Some(v) => decode(v.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn popularity(&self, ids: &[String]) -> Result<Vec<f64>, StoreError> {
        let ids = ids.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(POPULARITY).map_err(backend)?;
            ids.iter()
                .map(|id| {
                    Ok(table
                        .get(id.as_str())
                        .map_err(backend)?
                        .map_or(0.0, |v| v.value()))
                })
                .collect()
        })
        .await
    }

    async fn item_count(&self) -> Result<u64, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(backend)?;
            txn.open_table(ITEMS)
                .map_err(backend)?
                .len()
                .map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract;

    #[tokio::test]
    async fn contract_items() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RedbStore::open(&dir.path().join("f.redb")).expect("open");
        contract::items_roundtrip_and_replace(&s).await;
    }

    #[tokio::test]
    async fn contract_staged_imports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RedbStore::open(&dir.path().join("f.redb")).expect("open");
        contract::staged_imports_commit_whole_or_not_at_all(&s).await;
    }

    fn staging_tables(s: &RedbStore) -> Vec<String> {
        let db = s.db.get().expect("db");
        let txn = db.begin_read().expect("read");
        txn.list_tables()
            .expect("tables")
            .map(|t| t.name().to_owned())
            .filter(|n| n.starts_with(STAGING_PREFIX))
            .collect()
    }

    /// Opens `path` again once the last handle's batcher task has let it go.
    async fn reopen(path: &Path) -> RedbStore {
        let mut attempts = 0;
        loop {
            match RedbStore::open(path) {
                Ok(s) => break s,
                Err(e) if attempts > 250 => panic!("reopen failed: {e}"),
                Err(_) => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }

    #[tokio::test]
    async fn contract_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RedbStore::open(&dir.path().join("f.redb")).expect("open");
        contract::events_are_idempotent_and_build_profiles(&s).await;
    }

    #[tokio::test]
    async fn data_survives_reopen_and_a_staging_left_by_a_crash_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.redb");
        let import = {
            let s = RedbStore::open(&path).expect("open");
            s.put_items(vec![contract::item("a", "X")], false)
                .await
                .expect("put");
            let import = s.begin_import().await.expect("begin");
            s.stage_items(&import, vec![contract::item("b", "Y")])
                .await
                .expect("stage");
            // Durable, and so makes the staging before it durable too.
            s.record_events(vec![contract::event(
                "e",
                "u",
                "a",
                crate::domain::EventKind::Cart,
                1,
            )])
            .await
            .expect("record");
            assert_eq!(staging_tables(&s), std::slice::from_ref(&import.0));
            // Dropped without commit or abort, as a kill would leave it.
            import
        };
        // The batcher task holds a clone of the database until it notices; wait.
        let s = reopen(&path).await;
        assert_eq!(
            s.user_profile("u")
                .await
                .expect("profile")
                .map(|p| p.events),
            Some(1)
        );
        let tables = staging_tables(&s);
        assert!(tables.is_empty(), "{tables:?}");
        assert_eq!(s.item_count().await.expect("count"), 1);
        // Numbering starts again (`put_items` took the first), on a clean slate.
        s.begin_import().await.expect("begin");
        let again = s.begin_import().await.expect("begin");
        assert_eq!(again, import);
        assert!(
            s.staged_items(&again, "", 10)
                .await
                .expect("staged")
                .is_empty()
        );
        s.commit_import(&again, false).await.expect("commit");
        assert_eq!(s.item_count().await.expect("count"), 1);
    }
}
