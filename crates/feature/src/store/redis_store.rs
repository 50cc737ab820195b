//! The shared backend: Redis, so several feature replicas serve the same state.
//!
//! Layout (prefix `rm:`): `item:<id>` (item JSON) and the sorted set `items` (ids,
//! for scans); `ev:<id>` (recorded event ids); `pop` (hash item -> weight); per user
//! `user:<id>:recent` (list of JSON, newest first, capped), `user:<id>:cat` and
//! `user:<id>:brand` (hashes of weights) and `user:<id>:n` (event count).
//!
//! An event is applied by one Lua script (check id, look up the item, update every
//! structure), so it is atomic and idempotent. Durability is Redis's: run it with
//! `appendonly yes` and `appendfsync always` for "acknowledged means on disk" (the
//! tests and the compose stack do).

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{FeatureStore, Recorded, StoreError};
use crate::model::{Event, Item, RECENT_EVENTS, Recent, UserProfile};

const PREFIX: &str = "rm:";

/// Applies one event. KEYS: ev, item, recent, cat, brand, count, pop.
/// ARGV: event id marker, item id, recent entry JSON, weight, cap.
/// Returns 1 applied, 0 duplicate, 2 unknown item.
const APPLY_EVENT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local item = redis.call('GET', KEYS[2])
if not item then return 2 end
local decoded = cjson.decode(item)
redis.call('SET', KEYS[1], '1')
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
local w = tonumber(ARGV[4])
if decoded.category and decoded.category ~= '' then
  redis.call('HINCRBYFLOAT', KEYS[4], decoded.category, w)
end
if decoded.brand and decoded.brand ~= '' then
  redis.call('HINCRBYFLOAT', KEYS[5], string.lower(decoded.brand), w)
end
redis.call('INCR', KEYS[6])
redis.call('HINCRBYFLOAT', KEYS[7], ARGV[2], w)
return 1
"#;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn redis_err(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn key(parts: &[&str]) -> String {
    let mut k = String::from(PREFIX);
    k.push_str(&parts.join(":"));
    k
}

/// The Redis backend. Cheap to clone (one multiplexed, auto-reconnecting connection).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    apply: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects lazily to `url` (`redis://host:port/db`); requests fail with
    /// [`StoreError::Unavailable`] while Redis is down and succeed once it is back.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(backend)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(redis_err)?;
        Ok(Self {
            conn,
            apply: redis::Script::new(APPLY_EVENT),
        })
    }
}

fn decode<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Backend(format!("corrupt record: {e}")))
}

/// A user's recent list, category and brand weights, and event count, as read.
type ProfileParts = (
    Vec<String>,
    Vec<(String, f64)>,
    Vec<(String, f64)>,
    Option<u64>,
);

/// Items written per MULTI chunk of a replace; the whole replace is still one
/// transaction (MULTI/EXEC), chunking only bounds the client's buffers.
const PIPELINE_ITEMS: usize = 5_000;

impl FeatureStore for RedisStore {
    async fn put_items(&self, items: Vec<Item>, replace: bool) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic();
        if replace {
            let old: Vec<String> = conn
                .zrange(key(&["items"]), 0, -1)
                .await
                .map_err(redis_err)?;
            for chunk in old.chunks(PIPELINE_ITEMS) {
                let keys: Vec<String> = chunk.iter().map(|id| key(&["item", id])).collect();
                pipe.del(keys).ignore();
            }
            pipe.del(key(&["items"])).ignore();
        }
        for item in &items {
            let json = serde_json::to_string(item).map_err(backend)?;
            pipe.set(key(&["item", &item.id]), json).ignore();
        }
        for chunk in items.chunks(PIPELINE_ITEMS) {
            let members: Vec<(f64, &str)> = chunk.iter().map(|i| (0.0, i.id.as_str())).collect();
            pipe.zadd_multiple(key(&["items"]), &members).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(redis_err)
    }

    async fn get_items(&self, ids: &[String]) -> Result<Vec<Option<Item>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let keys: Vec<String> = ids.iter().map(|id| key(&["item", id])).collect();
        let raw: Vec<Option<String>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        raw.into_iter()
            .map(|r| r.map(|s| decode(&s)).transpose())
            .collect()
    }

    async fn scan_items(&self, after: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        let mut conn = self.conn.clone();
        let min = if after.is_empty() {
            "-".to_owned()
        } else {
            format!("({after}")
        };
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(key(&["items"]))
            .arg(min)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(self.get_items(&ids).await?.into_iter().flatten().collect())
    }

    async fn record_events(&self, events: Vec<Event>) -> Result<Vec<Recorded>, StoreError> {
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(events.len());
        for ev in &events {
            let recent = serde_json::to_string(&Recent {
                item_id: ev.item_id.clone(),
                kind: ev.kind,
                timestamp_ms: ev.timestamp_ms,
            })
            .map_err(backend)?;
            let code: i64 = self
                .apply
                .key(key(&["ev", &ev.event_id]))
                .key(key(&["item", &ev.item_id]))
                .key(key(&["user", &ev.user_id, "recent"]))
                .key(key(&["user", &ev.user_id, "cat"]))
                .key(key(&["user", &ev.user_id, "brand"]))
                .key(key(&["user", &ev.user_id, "n"]))
                .key(key(&["pop"]))
                .arg(&ev.event_id)
                .arg(&ev.item_id)
                .arg(recent)
                .arg(ev.kind.weight())
                .arg(RECENT_EVENTS)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_err)?;
            out.push(match code {
                1 => Recorded::Applied,
                0 => Recorded::Duplicate,
                _ => Recorded::UnknownItem,
            });
        }
        Ok(out)
    }

    async fn user_profile(&self, user_id: &str) -> Result<Option<UserProfile>, StoreError> {
        let mut conn = self.conn.clone();
        let (recent, cat, brand, n): ProfileParts = redis::pipe()
            .lrange(key(&["user", user_id, "recent"]), 0, -1)
            .hgetall(key(&["user", user_id, "cat"]))
            .hgetall(key(&["user", user_id, "brand"]))
            .get(key(&["user", user_id, "n"]))
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let Some(events) = n else { return Ok(None) };
        let mut recent: Vec<Recent> = recent.iter().map(|s| decode(s)).collect::<Result<_, _>>()?;
        recent.sort_by_key(|r| std::cmp::Reverse(r.timestamp_ms));
        Ok(Some(UserProfile {
            recent,
            category_weight: cat.into_iter().collect(),
            brand_weight: brand.into_iter().collect(),
            events,
        }))
    }

    async fn popularity(&self, ids: &[String]) -> Result<Vec<f64>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let raw: Vec<Option<f64>> = redis::cmd("HMGET")
            .arg(key(&["pop"]))
            .arg(ids)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(raw.into_iter().map(|v| v.unwrap_or(0.0)).collect())
    }

    async fn item_count(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        conn.zcard(key(&["items"])).await.map_err(redis_err)
    }
}

#[cfg(test)]
mod tests {
    //! Runs the backend contract against a real redis-server on a free port.

    use super::*;
    use crate::store::contract;
    use rankmesh_tests::redis::RedisServer;

    #[tokio::test]
    async fn contract_items() {
        let r = RedisServer::start().await;
        let s = RedisStore::open(&r.url()).expect("open");
        contract::items_roundtrip_and_replace(&s).await;
    }

    #[tokio::test]
    async fn contract_events() {
        let r = RedisServer::start().await;
        let s = RedisStore::open(&r.url()).expect("open");
        contract::events_are_idempotent_and_build_profiles(&s).await;
    }

    #[tokio::test]
    async fn redis_down_is_unavailable_not_a_hang() {
        let s = RedisStore::open("redis://127.0.0.1:1/").expect("lazy open");
        let r = tokio::time::timeout(Duration::from_secs(15), s.item_count())
            .await
            .expect("answers");
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    }
}
