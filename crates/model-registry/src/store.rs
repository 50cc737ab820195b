//! Where the registry keeps things: encrypted blobs in an object store (a local
//! directory by default; S3-compatible stores plug into the same `ObjectStore`
//! trait), and versions and stage assignments in etcd under `/rankmesh/models/`.
//!
//! etcd layout:
//! - `/rankmesh/models/<name>/next_version`: the version counter (compare-and-swap);
//! - `/rankmesh/models/<name>/versions/<version:020>/<variant>`: the signed manifest
//!   (create-only: a published version never changes);
//! - `/rankmesh/models/<name>/stage`: production, canary + percent, the previous
//!   production versions (for rollback) and the history of why stages changed;
//! - `/rankmesh/registry/current_key`: the master key id new data keys are
//!   wrapped under, once a RotateKey recorded it (the id, never the key).

use std::sync::Arc;

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions as ObjGet, GetRange, ObjectStore, PutOptions, PutPayload};
use rankmesh_common::etcd::{Etcd, EtcdError};
use serde::{Deserialize, Serialize};

pub use rankmesh_artifact::manifest::{Manifest, SidecarEntry, Tensor};

/// Root of the model keyspace.
pub const MODELS_PREFIX: &str = "/rankmesh/models/";

/// The id of the master key that wraps new data keys, once a rotation set it.
pub const CURRENT_KEY: &str = "/rankmesh/registry/current_key";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("object store: {0}")]
    Blob(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("corrupt record {key}: {message}")]
    Corrupt { key: String, message: String },
}

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        Self::Etcd(EtcdError::Client(e))
    }
}

/// Stage assignment of one model name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stages {
    /// 0 = none.
    pub production: u64,
    /// 0 = no canary.
    pub canary: u64,
    pub canary_percent: u32,
    /// When the current canary started (ms since the Unix epoch; 0: none).
    #[serde(default)]
    pub canary_since_ms: i64,
    /// Earlier production versions, most recent last (rollback pops from here).
    pub previous: Vec<u64>,
    /// Why stages changed, oldest first (capped).
    pub history: Vec<StageEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEvent {
    pub at_ms: i64,
    pub description: String,
}

/// History entries kept per model.
const HISTORY: usize = 100;

impl Stages {
    pub fn record(&mut self, at_ms: i64, description: impl Into<String>) {
        self.history.push(StageEvent {
            at_ms,
            description: description.into(),
        });
        let excess = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..excess);
    }

    /// Makes `version` production; the one it replaces is what a rollback restores.
    /// A canary of `version` ends: it has been promoted.
    pub fn promote(&mut self, at_ms: i64, version: u64, reason: &str) {
        if self.production != 0 && self.production != version {
            self.previous.push(self.production);
        }
        self.production = version;
        if self.canary == version {
            self.end_canary();
        }
        self.record(at_ms, format!("production -> v{version}: {reason}"));
    }

    /// Sends `percent` of traffic to `version`; its start time is kept when only the
    /// share of a running canary changes (rollout's soak time counts from the start).
    pub fn start_canary(
        &mut self,
        at_ms: i64,
        version: u64,
        percent: u32,
        reason: &str,
    ) -> Result<(), StoreError> {
        if self.production == version {
            return Err(StoreError::Conflict(format!(
                "v{version} is already in production"
            )));
        }
        if self.canary != version {
            self.canary_since_ms = at_ms;
        }
        self.canary = version;
        self.canary_percent = percent;
        self.record(
            at_ms,
            format!("canary -> v{version} at {percent}%: {reason}"),
        );
        Ok(())
    }

    /// Undoes the latest step: a running canary ends (production stays), else
    /// production goes back to the version before it. `name` is for the error.
    pub fn roll_back(&mut self, at_ms: i64, name: &str, reason: &str) -> Result<(), StoreError> {
        let canary = self.end_canary();
        if canary != 0 {
            self.record(at_ms, format!("canary v{canary} rolled back: {reason}"));
            return Ok(());
        }
        let Some(prev) = self.previous.pop() else {
            return Err(StoreError::Conflict(format!(
                "{name} has no canary and no previous production version"
            )));
        };
        let from = std::mem::replace(&mut self.production, prev);
        self.record(at_ms, format!("rollback v{from} -> v{prev}: {reason}"));
        Ok(())
    }

    /// Ends the running canary, if any: its version (0: there was none).
    fn end_canary(&mut self) -> u64 {
        self.canary_percent = 0;
        self.canary_since_ms = 0;
        std::mem::take(&mut self.canary)
    }
}

fn model_key(name: &str, rest: &str) -> String {
    format!("{MODELS_PREFIX}{name}/{rest}")
}

/// Where one variant's manifest of a version is kept.
pub(crate) fn version_key(name: &str, version: u64, variant: &str) -> String {
    model_key(name, &format!("versions/{version:020}/{variant}"))
}

/// Where a model's stages are kept.
pub(crate) fn stage_key(name: &str) -> String {
    model_key(name, "stage")
}

/// The manifest stored at `key`. One that names another version or variant than
/// its key (copied there) is listed under its key, where a stage points, so a
/// replica sees the mismatch and refuses it as replayed.
fn parse_manifest(key: &str, value: &[u8]) -> Result<Manifest, StoreError> {
    let mut m: Manifest = serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })?;
    let listed = key
        .rsplit_once("/versions/")
        .and_then(|(_, rest)| rest.split_once('/'))
        .and_then(|(v, variant)| Some((v.parse::<u64>().ok()?, variant.to_owned())));
    if let Some((version, variant)) = listed
        && (version, variant.as_str()) != (m.version, m.variant.as_str())
    {
        tracing::warn!(
            key,
            signed_version = m.version,
            signed_variant = %m.variant,
            "a manifest is stored under another version's key"
        );
        m.listed_as = Some((version, variant));
    }
    Ok(m)
}

/// Versions and stages in etcd.
#[derive(Debug, Clone)]
pub struct ModelDb {
    etcd: Etcd,
}

impl ModelDb {
    pub fn new(etcd: Etcd) -> Self {
        Self { etcd }
    }

    /// Allocates the next version number of `name` (1, 2, ...), safe across
    /// concurrent registry replicas.
    pub async fn next_version(&self, name: &str) -> Result<u64, StoreError> {
        let key = model_key(name, "next_version");
        let mut client = self.etcd.client();
        for _ in 0..32 {
            let resp = self.etcd.timed(client.get(key.as_str(), None)).await?;
            let (current, rev) = match resp.kvs().first() {
                Some(kv) => (
                    std::str::from_utf8(kv.value())
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| StoreError::Corrupt {
                            key: key.clone(),
                            message: "not a number".into(),
                        })?,
                    kv.mod_revision(),
                ),
                None => (0, 0),
            };
            let next = current + 1;
            let cmp = if rev == 0 {
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)
            };
            let txn =
                Txn::new()
                    .when([cmp])
                    .and_then([TxnOp::put(key.as_str(), next.to_string(), None)]);
            if self.etcd.timed(client.txn(txn)).await?.succeeded() {
                return Ok(next);
            }
        }
        Err(StoreError::Conflict(format!(
            "could not allocate a version of {name}: too much contention"
        )))
    }

    /// Stores a manifest; refuses to overwrite an existing version.
    pub async fn put_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        let key = version_key(&m.name, m.version, &m.variant);
        let value = serde_json::to_vec(m).map_err(|e| StoreError::Blob(e.to_string()))?;
        let absent = Compare::create_revision(key.as_str(), CompareOp::Equal, 0);
        self.put_if(&key, absent, value, || {
            format!("{} v{} {} already exists", m.name, m.version, m.variant)
        })
        .await
    }

    /// Writes `value` at `key` in one transaction only while `condition` holds;
    /// otherwise a conflict described by `conflict`.
    async fn put_if(
        &self,
        key: &str,
        condition: Compare,
        value: Vec<u8>,
        conflict: impl FnOnce() -> String,
    ) -> Result<(), StoreError> {
        let txn = Txn::new()
            .when([condition])
            .and_then([TxnOp::put(key, value, None)]);
        let mut client = self.etcd.client();
        if self.etcd.timed(client.txn(txn)).await?.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Conflict(conflict()))
        }
    }

    /// The master key id recorded by the last RotateKey, which every registry
    /// wraps new data keys under (the id only: key material never enters etcd);
    /// `None` before the first rotation, when the configured `current_key` holds.
    pub async fn current_key(&self) -> Result<Option<String>, StoreError> {
        let mut client = self.etcd.client();
        let resp = self.etcd.timed(client.get(CURRENT_KEY, None)).await?;
        resp.kvs()
            .first()
            .map(|kv| {
                std::str::from_utf8(kv.value())
                    .map(str::to_owned)
                    .map_err(|_| StoreError::Corrupt {
                        key: CURRENT_KEY.into(),
                        message: "not UTF-8".into(),
                    })
            })
            .transpose()
    }

    /// Records `id` as the current master key id for every registry.
    pub async fn set_current_key(&self, id: &str) -> Result<(), StoreError> {
        let mut client = self.etcd.client();
        self.etcd.timed(client.put(CURRENT_KEY, id, None)).await?;
        Ok(())
    }

    /// Replaces a manifest (key rotation re-wraps its data key), only if it still is
    /// exactly `old`: concurrent rotations cannot overwrite each other.
    pub async fn replace_manifest(&self, old: &Manifest, new: &Manifest) -> Result<(), StoreError> {
        let key = version_key(&old.name, old.version, &old.variant);
        let old_value = serde_json::to_vec(old).map_err(|e| StoreError::Blob(e.to_string()))?;
        let new_value = serde_json::to_vec(new).map_err(|e| StoreError::Blob(e.to_string()))?;
        let unchanged = Compare::value(key.as_str(), CompareOp::Equal, old_value);
        self.put_if(&key, unchanged, new_value, || {
            format!("{} v{} changed concurrently", old.name, old.version)
        })
        .await
    }

    pub async fn manifest(
        &self,
        name: &str,
        version: u64,
        variant: &str,
    ) -> Result<Option<Manifest>, StoreError> {
        let key = version_key(name, version, variant);
        let mut client = self.etcd.client();
        let resp = self.etcd.timed(client.get(key.as_str(), None)).await?;
        resp.kvs()
            .first()
            .map(|kv| parse_manifest(&key, kv.value()))
            .transpose()
    }

    /// Every manifest of `name` (every model when empty), by name then version.
    pub async fn list(&self, name: &str) -> Result<Vec<Manifest>, StoreError> {
        let prefix = if name.is_empty() {
            MODELS_PREFIX.to_owned()
        } else {
            model_key(name, "versions/")
        };
        let mut client = self.etcd.client();
        let resp = self
            .etcd
            .timed(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())))
            .await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if !key.contains("/versions/") {
                continue;
            }
            out.push(parse_manifest(&key, kv.value())?);
        }
        Ok(out)
    }

    /// Current stages and their etcd mod revision (0 when never set).
    pub async fn stages(&self, name: &str) -> Result<(Stages, i64), StoreError> {
        let key = stage_key(name);
        let mut client = self.etcd.client();
        let resp = self.etcd.timed(client.get(key.as_str(), None)).await?;
        match resp.kvs().first() {
            None => Ok((Stages::default(), 0)),
            Some(kv) => Ok((
                serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
                    key,
                    message: e.to_string(),
                })?,
                kv.mod_revision(),
            )),
        }
    }

    /// Applies `change` to the stages atomically. With `expected_revision` != 0 the
    /// change applies only if nobody changed the stages since that revision;
    /// otherwise concurrent changes are retried on the fresh value.
    pub async fn update_stages<F>(
        &self,
        name: &str,
        expected_revision: i64,
        mut change: F,
    ) -> Result<(Stages, i64), StoreError>
    where
        F: FnMut(&mut Stages) -> Result<(), StoreError>,
    {
        let key = stage_key(name);
        let mut client = self.etcd.client();
        for _ in 0..32 {
            let (mut stages, rev) = self.stages(name).await?;
            if expected_revision != 0 && rev != expected_revision {
                return Err(StoreError::Conflict(format!(
                    "stages of {name} changed (revision {rev}, expected {expected_revision})"
                )));
            }
            change(&mut stages)?;
            let value = serde_json::to_vec(&stages).map_err(|e| StoreError::Blob(e.to_string()))?;
            let cmp = if rev == 0 {
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)
            };
            // The versions staged must still exist: garbage collection deletes
            // versions under the same compare-and-set, so a version is never
            // promoted while it is being deleted.
            let staged: Vec<u64> = [stages.production, stages.canary]
                .into_iter()
                .filter(|v| *v != 0)
                .collect();
            let mut when = vec![cmp];
            when.extend(staged.iter().map(|v| {
                Compare::create_revision(version_key(name, *v, "fp32"), CompareOp::Greater, 0)
            }));
            let txn = Txn::new()
                .when(when)
                .and_then([TxnOp::put(key.as_str(), value, None)]);
            let resp = self.etcd.timed(client.txn(txn)).await?;
            if resp.succeeded() {
                let new_rev = resp.header().map_or(0, |h| h.revision());
                return Ok((stages, new_rev));
            }
            for v in staged {
                if self.manifest(name, v, "fp32").await?.is_none() {
                    return Err(StoreError::NotFound(format!(
                        "{name} v{v} does not exist (any more: garbage collection removed it)"
                    )));
                }
            }
            if expected_revision != 0 {
                return Err(StoreError::Conflict(format!(
                    "stages of {name} changed concurrently"
                )));
            }
        }
        Err(StoreError::Conflict(format!(
            "stages of {name}: too much contention"
        )))
    }
}

/// Encrypted artifact bytes.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl Blobs {
    /// A local directory (created if missing).
    pub fn local(dir: &std::path::Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Blob(format!("{}: {e}", dir.display())))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| StoreError::Blob(e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
        })
    }

    /// Any object store.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// An S3-compatible bucket. Credentials come from the standard `AWS_*`
    /// environment variables (never from the config file, so they are not printed
    /// with it).
    pub fn s3(
        bucket: &str,
        endpoint: &str,
        region: &str,
        allow_http: bool,
    ) -> Result<Self, StoreError> {
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(allow_http);
        if !region.is_empty() {
            b = b.with_region(region);
        }
        if !endpoint.is_empty() {
            b = b.with_endpoint(endpoint);
        }
        let store = b.build().map_err(|e| StoreError::Blob(e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
        })
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.store
            .put_opts(
                &ObjectPath::from(key),
                PutPayload::from_bytes(bytes),
                PutOptions::default(),
            )
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Blob(e.to_string()))
    }

    /// `len` bytes from `offset` (fewer at the end of the object).
    pub async fn read(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let opts = ObjGet {
            range: Some(GetRange::Bounded(offset..offset + len)),
            ..ObjGet::default()
        };
        let r = self
            .store
            .get_opts(&ObjectPath::from(key), opts)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    StoreError::NotFound(format!("blob {key} not found"))
                }
                other => StoreError::Blob(other.to_string()),
            })?;
        r.bytes().await.map_err(|e| StoreError::Blob(e.to_string()))
    }

    /// Every object under `prefix`: key and last-modified time (ms since the epoch).
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, i64)>, StoreError> {
        use futures::TryStreamExt;
        let prefix = ObjectPath::from(prefix);
        self.store
            .list(Some(&prefix))
            .map_ok(|m| (m.location.to_string(), m.last_modified.timestamp_millis()))
            .try_collect()
            .await
            .map_err(|e| StoreError::Blob(e.to_string()))
    }

    /// Deletes one object; one that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        use object_store::ObjectStoreExt;
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::Blob(e.to_string())),
        }
    }

    pub async fn size(&self, key: &str) -> Result<u64, StoreError> {
        let opts = ObjGet {
            head: true,
            ..ObjGet::default()
        };
        self.store
            .get_opts(&ObjectPath::from(key), opts)
            .await
            .map(|r| r.meta.size)
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    StoreError::NotFound(format!("blob {key} not found"))
                }
                other => StoreError::Blob(other.to_string()),
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use rankmesh_artifact::envelope::Sealed;
    use rankmesh_tests::etcd::EtcdCluster;

    #[test]
    fn stages_promote_canary_and_roll_back_one_step_at_a_time() {
        let mut s = Stages::default();
        s.promote(1, 1, "first");
        s.promote(2, 2, "second");
        s.start_canary(3, 3, 10, "try").expect("canary");
        s.start_canary(4, 3, 20, "widen").expect("wider share");
        assert_eq!((s.canary, s.canary_percent, s.canary_since_ms), (3, 20, 3));
        assert!(matches!(
            s.start_canary(5, 2, 10, "again"),
            Err(StoreError::Conflict(_))
        ));

        // A rollback ends the canary first, and leaves production alone.
        s.roll_back(6, "m", "bad canary").expect("canary rollback");
        assert_eq!(
            (s.production, s.canary, s.canary_percent, s.canary_since_ms),
            (2, 0, 0, 0)
        );
        // Then production steps back, once per earlier version.
        s.roll_back(7, "m", "bad v2").expect("production rollback");
        assert_eq!(s.production, 1);
        assert!(matches!(
            s.roll_back(8, "m", "nothing left"),
            Err(StoreError::Conflict(_))
        ));

        // Promoting the canary's version ends the canary.
        s.start_canary(9, 4, 5, "try v4").expect("canary");
        s.promote(10, 4, "v4 is good");
        assert_eq!(
            (s.production, s.canary, s.previous.clone()),
            (4, 0, vec![1])
        );
        assert_eq!(s.history.len(), 8, "failed steps record nothing");
    }

    async fn db(cluster: &EtcdCluster) -> ModelDb {
        ModelDb::new(Etcd::connect(&cluster.config()).await.expect("etcd"))
    }

    fn manifest(name: &str, version: u64) -> Manifest {
        Manifest {
            name: name.into(),
            version,
            variant: "fp32".into(),
            parent_version: 0,
            inputs: vec![],
            outputs: vec![],
            metadata: BTreeMap::new(),
            sealed: Sealed {
                key_id: "k".into(),
                wrapped_key: String::new(),
                sha256_plaintext: String::new(),
                sha256_ciphertext: String::new(),
                size_bytes: 0,
            },
            blob: format!("{name}/{version}/fp32"),
            created_ms: 1,
            sidecars: vec![],
            signature: String::new(),
            signed_sha256: String::new(),
            signer: String::new(),
            listed_as: None,
        }
    }

    #[tokio::test]
    async fn versions_are_unique_under_concurrency_and_immutable() {
        let cluster = EtcdCluster::single().await;
        let db = db(&cluster).await;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move { db.next_version("ranker").await.expect("version") })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.expect("task"));
        }
        got.sort_unstable();
        assert_eq!(got, (1..=8).collect::<Vec<u64>>());

        db.put_manifest(&manifest("ranker", 1))
            .await
            .expect("first write");
        assert!(matches!(
            db.put_manifest(&manifest("ranker", 1)).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            db.manifest("ranker", 1, "fp32").await.expect("get"),
            Some(manifest("ranker", 1))
        );
        db.put_manifest(&manifest("encoder", 1))
            .await
            .expect("other model");
        assert_eq!(db.list("ranker").await.expect("list").len(), 1);
        assert_eq!(db.list("").await.expect("list all").len(), 2);
    }

    #[tokio::test]
    async fn stage_changes_are_compare_and_set() {
        let cluster = EtcdCluster::single().await;
        let db = db(&cluster).await;
        // Only versions that exist can be staged.
        let missing = db
            .update_stages("ranker", 0, |s| {
                s.production = 1;
                Ok(())
            })
            .await;
        assert!(
            matches!(missing, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
        for v in [1, 2] {
            db.put_manifest(&manifest("ranker", v))
                .await
                .expect("manifest");
        }
        let (s, rev) = db
            .update_stages("ranker", 0, |s| {
                s.production = 1;
                s.record(1, "promote 1");
                Ok(())
            })
            .await
            .expect("set");
        assert_eq!(s.production, 1);
        // A stale expected revision is refused.
        let stale = db.update_stages("ranker", rev - 1, |s| {
            s.production = 2;
            Ok(())
        });
        assert!(matches!(stale.await, Err(StoreError::Conflict(_))));
        let (s, _) = db
            .update_stages("ranker", rev, |s| {
                s.previous.push(s.production);
                s.production = 2;
                Ok(())
            })
            .await
            .expect("cas with the right revision");
        assert_eq!((s.production, s.previous.clone()), (2, vec![1]));
        assert_eq!(db.stages("ranker").await.expect("read").0, s);
    }

    #[tokio::test]
    async fn blobs_roundtrip_with_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = Blobs::local(dir.path()).expect("blobs");
        b.put("m/1/fp32", Bytes::from_static(b"0123456789"))
            .await
            .expect("put");
        assert_eq!(b.size("m/1/fp32").await.expect("size"), 10);
        assert_eq!(&b.read("m/1/fp32", 3, 4).await.expect("read")[..], b"3456");
        assert_eq!(&b.read("m/1/fp32", 8, 100).await.expect("tail")[..], b"89");
        assert!(matches!(
            b.read("nope", 0, 1).await,
            Err(StoreError::NotFound(_))
        ));
    }
}
