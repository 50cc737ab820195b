//! The embedded backend: one redb file.
//!
//! Every write is one transaction committed with `Durability::Immediate` (fsync)
//! before it is acknowledged. Concurrent `record_events` calls are group-committed:
//! the batcher gathers what arrived while the previous commit was running into one
//! transaction, so one fsync acknowledges many events.
//!
//! After an I/O error (a full disk), redb refuses every later write until the file
//! is closed and opened again; [`Handle`] does that, so a disk that frees up does not
//! leave the store read-only until a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rankmesh_common::batcher::{BatchConfig, BatchError, Batcher};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::api::{FeatureStore, Recorded, StoreError};
use crate::domain::{Event, Item, UserProfile};

const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const POPULARITY: TableDefinition<&str, f64> = TableDefinition::new("popularity");

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(e.to_string())
}

/// The open database, reopened when an I/O error has poisoned it.
struct Handle {
    path: PathBuf,
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
    fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            path: path.to_owned(),
            db: RwLock::new(Some(Arc::new(Database::create(path).map_err(backend)?))),
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
        let db = Database::create(&self.path).map_err(backend)?;
        tracing::warn!(path = %self.path.display(), "reopened the feature store after an I/O error");
        *slot = Some(Arc::new(db));
        Ok(())
    }
}

/// What redb says once an I/O error has poisoned a handle (and what our errors
/// say about it).
const POISONED: &str = "Previous I/O error occurred";

/// The redb backend. Cheap to clone.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Handle>,
    events: Batcher<Event, Recorded>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the database file. Must run inside a Tokio runtime.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let db = Arc::new(Handle::open(path)?);
        // Create the tables so reads never meet a missing table.
        db.write(|db| {
            let txn = db.begin_write().map_err(backend)?;
            for t in [ITEMS, EVENTS, USERS] {
                txn.open_table(t).map_err(backend)?;
            }
            txn.open_table(POPULARITY).map_err(backend)?;
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
        Ok(Self { db, events })
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

/// Stores `items` in one transaction (replacing the whole catalog with `replace`).
fn put_items(db: &Database, items: &[Item], replace: bool) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    {
        if replace {
            txn.delete_table(ITEMS).map_err(backend)?;
        }
        let mut table = txn.open_table(ITEMS).map_err(backend)?;
        for item in items {
            table
                .insert(item.id.as_str(), encode(item)?.as_slice())
                .map_err(backend)?;
        }
    }
    txn.commit().map_err(backend)
}

impl FeatureStore for RedbStore {
    async fn put_items(&self, items: Vec<Item>, replace: bool) -> Result<(), StoreError> {
        let handle = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || handle.write(|db| put_items(db, &items, replace)))
            .await
            .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
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
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(ITEMS).map_err(backend)?;
            let range = if after.is_empty() {
                table.range::<&str>(..).map_err(backend)?
            } else {
                table
                    .range::<&str>((
                        std::ops::Bound::Excluded(after.as_str()),
                        std::ops::Bound::Unbounded,
                    ))
                    .map_err(backend)?
            };
            range
                .take(limit)
                .map(|entry| {
                    let (_, v) = entry.map_err(backend)?;
                    decode(v.value())
                })
                .collect()
        })
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
    async fn contract_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RedbStore::open(&dir.path().join("f.redb")).expect("open");
        contract::events_are_idempotent_and_build_profiles(&s).await;
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.redb");
        {
            let s = RedbStore::open(&path).expect("open");
            s.put_items(vec![contract::item("a", "X")], false)
                .await
                .expect("put");
            s.record_events(vec![contract::event(
                "e",
                "u",
                "a",
                crate::domain::EventKind::Cart,
                1,
            )])
            .await
            .expect("record");
        }
        // The batcher task holds a clone of the database until it notices; wait.
        let mut attempts = 0;
        let s = loop {
            match RedbStore::open(&path) {
                Ok(s) => break s,
                Err(e) if attempts > 250 => panic!("reopen failed: {e}"),
                Err(_) => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(
            s.user_profile("u")
                .await
                .expect("profile")
                .map(|p| p.events),
            Some(1)
        );
    }
}
