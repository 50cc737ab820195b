//! The embedded backend: one redb file.
//!
//! Every write is one transaction committed with `Durability::Immediate` (fsync)
//! before it is acknowledged. Concurrent `record_events` calls are group-committed:
//! the batcher gathers what arrived while the previous commit was running into one
//! transaction, so one fsync acknowledges many events.

use std::path::Path;
use std::sync::Arc;

use rankmesh_common::batcher::{BatchConfig, BatchError, Batcher};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{FeatureStore, Recorded, StoreError};
use crate::model::{Event, Item, UserProfile};

const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const POPULARITY: TableDefinition<&str, f64> = TableDefinition::new("popularity");

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The redb backend. Cheap to clone.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
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
        let db = Arc::new(Database::create(path).map_err(backend)?);
        // Create the tables so reads never meet a missing table.
        let txn = db.begin_write().map_err(backend)?;
        for t in [ITEMS, EVENTS, USERS] {
            txn.open_table(t).map_err(backend)?;
        }
        txn.open_table(POPULARITY).map_err(backend)?;
        txn.commit().map_err(backend)?;

        let writer = Arc::clone(&db);
        let events = Batcher::new(
            "redb_events",
            BatchConfig {
                max_batch: 512,
                max_wait_us: 0,
                queue_capacity: 65_536,
                workers: 1,
            },
            move |batch: Vec<Event>| apply_events(&writer, &batch).map_err(|e| e.to_string()),
        );
        Ok(Self { db, events })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
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

impl FeatureStore for RedbStore {
    async fn put_items(&self, items: Vec<Item>, replace: bool) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                if replace {
                    txn.delete_table(ITEMS).map_err(backend)?;
                }
                let mut table = txn.open_table(ITEMS).map_err(backend)?;
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
                crate::model::EventKind::Cart,
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
