//! The shared backend: Redis, so several feature replicas serve the same state.
//!
//! Layout (prefix `rm:`): `item:<id>` (item JSON) and the sorted set `items` (ids,
//! for scans); `ev:<id>` (recorded event ids); `pop` (hash item -> weight); per user
//! `user:<id>:recent` (list of JSON, newest first, capped), `user:<id>:cat` and
//! `user:<id>:brand` (hashes of weights) and `user:<id>:n` (event count). A staged
//! import `staging:<n>` (numbered by `import:seq`, so replicas never share one) is
//! `staging:<n>:rows` (hash id -> item JSON), `staging:<n>:ids` (its ids, for
//! scans) and `staging:<n>:open` (a marker); all three expire an hour after the last
//! batch, so an import whose service died leaves nothing for long. Its commit is one
//! Lua script, atomic like every script: Redis runs nothing else meanwhile, for a
//! time that grows with the staging (past `busy-reply-threshold`, 5 s, other
//! clients are answered BUSY until it ends; not measured at scale here).
//!
//! An event is applied by one Lua script (check id, look up the item, update every
//! structure), so it is atomic and idempotent. Durability is Redis's: run it with
//! `appendonly yes` and `appendfsync always` for "acknowledged means on disk" (the
//! tests and the compose stack do).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::api::{FeatureStore, ImportId, Recorded, StoreError};
use crate::domain::{Event, Item, RECENT_EVENTS, Recent, UserProfile};

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

/// Makes a staged import the catalog. KEYS: open marker, staged ids, staged rows,
/// the catalog's ids. ARGV: the item key prefix, "1" to replace. A replace deletes
/// the items the staging lacks; then every staged row is written and the id sets
/// are merged (or the staged one renamed over the catalog's).
const COMMIT_IMPORT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('STAGING no such staged import (committed, aborted or expired)')
end
local prefix = ARGV[1]
local replace = ARGV[2] == '1'
local cursor = '0'
if replace then
  repeat
    local r = redis.call('ZSCAN', KEYS[4], cursor, 'COUNT', 1000)
    cursor = r[1]
    for i = 1, #r[2], 2 do
      if redis.call('HEXISTS', KEYS[3], r[2][i]) == 0 then
        redis.call('DEL', prefix .. r[2][i])
      end
    end
  until cursor == '0'
  redis.call('DEL', KEYS[4])
end
repeat
  local r = redis.call('HSCAN', KEYS[3], cursor, 'COUNT', 1000)
  cursor = r[1]
  for i = 1, #r[2], 2 do
    redis.call('SET', prefix .. r[2][i], r[2][i + 1])
  end
until cursor == '0'
if redis.call('EXISTS', KEYS[2]) == 1 then
  if replace then
    redis.call('RENAME', KEYS[2], KEYS[4])
    redis.call('PERSIST', KEYS[4])
  else
    redis.call('ZUNIONSTORE', KEYS[4], 2, KEYS[4], KEYS[2])
  end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"#;

/// How long a staged import outlives its last batch.
const STAGING_TTL_SECS: i64 = 3600;

/// A staged import's keys: open marker, ids, rows.
fn staging_keys(import: &ImportId) -> [String; 3] {
    ["open", "ids", "rows"].map(|part| format!("{}:{part}", import.0))
}

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

/// How long calls fail fast after Redis failed one; then one call probes.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

/// Fails calls fast while Redis is down. Without it, every call waited on the
/// connection manager's reconnects until its caller's deadline (the redis-down
/// drill: 61 of 240 searches failed at 2 s, the rest answered in 1.6-2 s). After a
/// connection failure calls answer UNAVAILABLE at once for [`BREAKER_COOLDOWN`];
/// then the first call through probes Redis, and the others keep failing fast
/// until it answers.
#[derive(Debug, Clone)]
struct Breaker {
    epoch: Instant,
    /// Milliseconds since `epoch` before which calls fail fast (0: closed).
    open_until_ms: Arc<AtomicU64>,
}

impl Breaker {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            open_until_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go to Redis now (closed, or this call is the probe).
    fn admit(&self) -> Result<(), StoreError> {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Ok(());
        }
        let now = self.now_ms();
        let probe_until = now + BREAKER_COOLDOWN.as_millis() as u64;
        // Past the cooldown, exactly one caller wins the right to probe.
        if now >= until
            && self
                .open_until_ms
                .compare_exchange(until, probe_until, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Ok(());
        }
        Err(StoreError::Unavailable(
            "redis is down (failing fast; one call a second probes it)".into(),
        ))
    }

    /// Records a call's outcome: a connection failure opens the breaker, any
    /// answer from Redis closes it.
    fn record<T>(&self, r: Result<T, redis::RedisError>) -> Result<T, StoreError> {
        match r {
            Ok(v) => {
                self.open_until_ms.store(0, Ordering::Release);
                Ok(v)
            }
            Err(e) => {
                let err = redis_err(e);
                if matches!(err, StoreError::Unavailable(_)) {
                    let until = self.now_ms() + BREAKER_COOLDOWN.as_millis() as u64;
                    self.open_until_ms.store(until.max(1), Ordering::Release);
                }
                Err(err)
            }
        }
    }
}

/// A Redis reply, seen by the breaker on its way to the caller.
trait Observed<T> {
    fn observed(self, breaker: &Breaker) -> Result<T, StoreError>;
}

impl<T> Observed<T> for redis::RedisResult<T> {
    fn observed(self, breaker: &Breaker) -> Result<T, StoreError> {
        breaker.record(self)
    }
}

/// The Redis backend. Cheap to clone (one multiplexed, auto-reconnecting connection).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    apply: redis::Script,
    commit: redis::Script,
    breaker: Breaker,
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
            // One reconnect attempt per call: the breaker paces the retries.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(redis_err)?;
        Ok(Self {
            conn,
            apply: redis::Script::new(APPLY_EVENT),
            commit: redis::Script::new(COMMIT_IMPORT),
            breaker: Breaker::new(),
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

/// Ids `after` (exclusive) onwards, at most `limit`, of a sorted set of ids.
async fn ids_after(
    conn: &mut ConnectionManager,
    set: &str,
    after: &str,
    limit: usize,
) -> redis::RedisResult<Vec<String>> {
    let min = if after.is_empty() {
        "-".to_owned()
    } else {
        format!("({after}")
    };
    redis::cmd("ZRANGE")
        .arg(set)
        .arg(min)
        .arg("+")
        .arg("BYLEX")
        .arg("LIMIT")
        .arg(0)
        .arg(limit)
        .query_async(conn)
        .await
}

impl FeatureStore for RedisStore {
    async fn begin_import(&self) -> Result<ImportId, StoreError> {
        self.breaker.admit()?;
        let mut conn = self.conn.clone();
        let n: u64 = conn
            .incr(key(&["import", "seq"]), 1)
            .await
            .observed(&self.breaker)?;
        let import = ImportId(key(&["staging", &n.to_string()]));
        let [open, _, _] = staging_keys(&import);
        let () = conn
            .set_ex(open, 1, STAGING_TTL_SECS as u64)
            .await
            .observed(&self.breaker)?;
        Ok(import)
    }

    async fn stage_items(&self, import: &ImportId, items: Vec<Item>) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        self.breaker.admit()?;
        let mut conn = self.conn.clone();
        let [open, ids, rows] = staging_keys(import);
        let mut fields = Vec::with_capacity(items.len());
        for item in &items {
            fields.push((
                item.id.as_str(),
                serde_json::to_string(item).map_err(backend)?,
            ));
        }
        let members: Vec<(f64, &str)> = items.iter().map(|i| (0.0, i.id.as_str())).collect();
        // EXPIRE does not create: once the marker has expired the commit refuses,
        // whatever later batches write.
        redis::pipe()
            .atomic()
            .hset_multiple(&rows, &fields)
            .ignore()
            .zadd_multiple(&ids, &members)
            .ignore()
            .expire(&rows, STAGING_TTL_SECS)
            .ignore()
            .expire(&ids, STAGING_TTL_SECS)
            .ignore()
            .expire(&open, STAGING_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .observed(&self.breaker)
    }

    async fn staged_items(
        &self,
        import: &ImportId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        self.breaker.admit()?;
        let mut conn = self.conn.clone();
        let [_, ids, rows] = staging_keys(import);
        let ids = ids_after(&mut conn, &ids, after, limit)
            .await
            .observed(&self.breaker)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&rows)
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .observed(&self.breaker)?;
        raw.into_iter().flatten().map(|s| decode(&s)).collect()
    }

    async fn commit_import(&self, import: &ImportId, replace: bool) -> Result<(), StoreError> {
        self.breaker.admit()?;
        let mut conn = self.conn.clone();
        let [open, ids, rows] = staging_keys(import);
        let _: i64 = self
            .commit
            .key(open)
            .key(ids)
            .key(rows)
            .key(key(&["items"]))
            .arg(key(&["item", ""]))
            .arg(if replace { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .observed(&self.breaker)?;
        Ok(())
    }

    async fn abort_import(&self, import: &ImportId) -> Result<(), StoreError> {
        self.breaker.admit()?;
        let mut conn = self.conn.clone();
        // UNLINK: a large staging is freed in the background.
        let _: i64 = redis::cmd("UNLINK")
            .arg(&staging_keys(import))
            .query_async(&mut conn)
            .await
            .observed(&self.breaker)?;
        Ok(())
    }

    async fn get_items(&self, ids: &[String]) -> Result<Vec<Option<Item>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.breaker.admit()?;
        let mut conn = self.conn.clone();
        let keys: Vec<String> = ids.iter().map(|id| key(&["item", id])).collect();
        let raw: Vec<Option<String>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .observed(&self.breaker)?;
        raw.into_iter()
            .map(|r| r.map(|s| decode(&s)).transpose())
            .collect()
    }

    async fn scan_items(&self, after: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        self.breaker.admit()?;
        let mut conn = self.conn.clone();
        let ids = ids_after(&mut conn, &key(&["items"]), after, limit)
            .await
            .observed(&self.breaker)?;
        Ok(self.get_items(&ids).await?.into_iter().flatten().collect())
    }

    async fn record_events(&self, events: Vec<Event>) -> Result<Vec<Recorded>, StoreError> {
        self.breaker.admit()?;
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
                .observed(&self.breaker)?;
            out.push(match code {
                1 => Recorded::Applied,
                0 => Recorded::Duplicate,
                _ => Recorded::UnknownItem,
            });
        }
        Ok(out)
    }

    async fn user_profile(&self, user_id: &str) -> Result<Option<UserProfile>, StoreError> {
        self.breaker.admit()?;
        let mut conn = self.conn.clone();
        let (recent, cat, brand, n): ProfileParts = redis::pipe()
            .lrange(key(&["user", user_id, "recent"]), 0, -1)
            .hgetall(key(&["user", user_id, "cat"]))
            .hgetall(key(&["user", user_id, "brand"]))
            .get(key(&["user", user_id, "n"]))
            .query_async(&mut conn)
            .await
            .observed(&self.breaker)?;
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
        self.breaker.admit()?;
        let mut conn = self.conn.clone();
        let raw: Vec<Option<f64>> = redis::cmd("HMGET")
            .arg(key(&["pop"]))
            .arg(ids)
            .query_async(&mut conn)
            .await
            .observed(&self.breaker)?;
        Ok(raw.into_iter().map(|v| v.unwrap_or(0.0)).collect())
    }

    async fn item_count(&self) -> Result<u64, StoreError> {
        self.breaker.admit()?;
        let mut conn = self.conn.clone();
        conn.zcard(key(&["items"])).await.observed(&self.breaker)
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
    async fn contract_staged_imports() {
        let r = RedisServer::start().await;
        let s = RedisStore::open(&r.url()).expect("open");
        contract::staged_imports_commit_whole_or_not_at_all(&s).await;
    }

    #[tokio::test]
    async fn a_staging_expires_and_then_cannot_commit() {
        let r = RedisServer::start().await;
        let s = RedisStore::open(&r.url()).expect("open");
        let import = s.begin_import().await.expect("begin");
        let item = crate::domain::test_item("a", "Pan", "Home", "Acme", 10.0);
        s.stage_items(&import, vec![item.clone()])
            .await
            .expect("stage");
        let mut conn = s.conn.clone();
        for k in staging_keys(&import) {
            let ttl: i64 = conn.ttl(&k).await.expect("ttl");
            assert!(ttl > 0 && ttl <= STAGING_TTL_SECS, "{k}: {ttl}");
        }
        // The marker expires (as an hour without a batch would make it).
        let _: i64 = conn.del(&staging_keys(&import)[0]).await.expect("del");
        s.stage_items(&import, vec![item]).await.expect("stage");
        let e = s.commit_import(&import, false).await;
        assert!(
            matches!(&e, Err(StoreError::Backend(m)) if m.contains("no such staged import")),
            "{e:?}"
        );
        assert_eq!(s.item_count().await.expect("count"), 0);
        s.abort_import(&import).await.expect("abort");
        let left: Vec<String> = conn.keys("rm:staging:*").await.expect("keys");
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn contract_events() {
        let r = RedisServer::start().await;
        let s = RedisStore::open(&r.url()).expect("open");
        contract::events_are_idempotent_and_build_profiles(&s).await;
    }

    #[test]
    fn the_breaker_fails_fast_after_a_failure_and_lets_one_probe_through() {
        let b = Breaker {
            // Well after its epoch, so "1 ms after the epoch" is in the past.
            epoch: Instant::now() - Duration::from_secs(10),
            open_until_ms: Arc::new(AtomicU64::new(0)),
        };
        assert!(b.admit().is_ok(), "closed");
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            b.record::<()>(Err(refused)),
            Err(StoreError::Unavailable(_))
        ));
        assert!(b.admit().is_err(), "open: fails fast");
        // Past the cooldown one caller probes, the next still fails fast.
        b.open_until_ms.store(1, Ordering::Release);
        assert!(b.admit().is_ok(), "the probe");
        assert!(b.admit().is_err(), "others wait for the probe");
        // The probe's answer closes it.
        assert!(b.record(Ok(())).is_ok());
        assert!(b.admit().is_ok(), "closed again");
    }

    #[tokio::test]
    async fn a_killed_redis_fails_fast_and_is_used_again_once_back() {
        let mut r = RedisServer::start().await;
        let s = RedisStore::open(&r.url()).expect("open");
        let item = crate::domain::test_item("a", "Pan", "Home", "Acme", 10.0);
        s.put_items(vec![item], false).await.expect("put");
        let ids = ["a".to_owned()];
        r.kill();
        assert!(matches!(
            s.get_items(&ids).await,
            Err(StoreError::Unavailable(_))
        ));
        // Open now: the next calls answer at once, without touching the connection.
        let t = Instant::now();
        for _ in 0..10 {
            assert!(matches!(
                s.get_items(&ids).await,
                Err(StoreError::Unavailable(_))
            ));
        }
        assert!(t.elapsed() < BREAKER_COOLDOWN, "{:?}", t.elapsed());
        r.restart();
        // Within a cooldown or two a probe finds it back, and the data with it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match s.get_items(&ids).await {
                Ok(items) => {
                    assert_eq!(items[0].as_ref().map(|i| i.id.as_str()), Some("a"));
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "never back: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
