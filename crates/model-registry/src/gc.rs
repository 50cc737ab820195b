//! Garbage collection: one registry at a time (the leader of the `registry-gc`
//! election) deletes the versions the retention policy no longer keeps, and the
//! blobs no kept manifest names. Every etcd change is fenced on the leader key and
//! made under a compare-and-set of the model's stages, so a deposed leader deletes
//! nothing and a version is never deleted while it is being promoted (SetStage
//! checks, in the same way, that the version it stages still exists). Object-store
//! deletes cannot join an etcd transaction: leadership is checked right before each.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, TxnOp};
use rankmesh_common::election::{ElectionError, Fence};
use serde::{Deserialize, Serialize};

use crate::store::{Blobs, ModelDb, StoreError, stage_key, version_key};

/// The election every registry replica runs for the right to collect garbage.
pub const GC_ROLE: &str = "registry-gc";

/// What the registry keeps; the rest is deleted by the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Newest versions of each model kept, besides whatever is in production or
    /// canary; 0 keeps every version (only blobs no manifest names are collected).
    pub keep_versions: u32,
    /// Seconds between the leader's sweeps.
    pub interval_s: f64,
    /// A blob that no manifest names is deleted only once it is this old: a publish
    /// writes its blobs before its manifest, so this must be longer than the
    /// slowest publish (0 would delete the blobs of one in progress).
    pub orphan_grace_s: f64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            keep_versions: 10,
            interval_s: 300.0,
            orphan_grace_s: 3_600.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Election(#[from] ElectionError),
}

/// One model's versions: each variant's manifest and the blobs it names.
type Versions = BTreeMap<u64, Vec<(String, Vec<String>)>>;

/// What one sweep deleted.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Swept {
    /// `name vN`, per version deleted (all its variants).
    pub versions: Vec<String>,
    /// Object-store keys deleted.
    pub blobs: Vec<String>,
}

/// One sweep: versions first (their manifests), then the blobs nothing names.
pub async fn sweep(
    db: &ModelDb,
    blobs: &Blobs,
    policy: &RetentionConfig,
    fence: &Fence,
    now_ms: i64,
) -> Result<Swept, GcError> {
    let mut swept = Swept::default();
    let mut models: BTreeMap<String, Versions> = BTreeMap::new();
    for m in db.list("").await? {
        let named = std::iter::once(m.blob)
            .chain(m.sidecars.into_iter().map(|s| s.blob))
            .collect();
        models
            .entry(m.name)
            .or_default()
            .entry(m.version)
            .or_default()
            .push((m.variant, named));
    }
    for (name, versions) in &models {
        let (mut stages, rev) = db.stages(name).await?;
        let kept = kept(
            versions.keys().copied(),
            policy.keep_versions,
            &[stages.production, stages.canary],
        );
        let mut doomed: Vec<u64> = versions
            .keys()
            .copied()
            .filter(|v| !kept.contains(v))
            .collect();
        // etcd takes at most 128 operations a transaction (two variants a version
        // and the stages): the oldest 60 now, the rest next sweep.
        doomed.truncate(60);
        if doomed.is_empty() {
            continue;
        }
        let mut ops: Vec<TxnOp> = doomed
            .iter()
            .flat_map(|v| {
                versions[v]
                    .iter()
                    .map(move |(variant, _)| TxnOp::delete(version_key(name, *v, variant), None))
            })
            .collect();
        // A rollback must never land on a deleted version.
        stages.previous.retain(|v| kept.contains(v));
        let list: Vec<String> = doomed.iter().map(|v| format!("v{v}")).collect();
        stages.record(
            now_ms,
            format!(
                "garbage collection removed {} (retention: the newest {} and production, canary)",
                list.join(", "),
                policy.keep_versions
            ),
        );
        let value = serde_json::to_vec(&stages).map_err(|e| StoreError::Blob(e.to_string()))?;
        let key = stage_key(name);
        ops.push(TxnOp::put(key.as_str(), value, None));
        let unchanged = if rev == 0 {
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)
        };
        if fence.txn_if(vec![unchanged], ops).await? {
            tracing::info!(model = %name, removed = %list.join(","), "garbage-collected versions");
            metrics::counter!("rankmesh_registry_gc_deleted_total", "kind" => "version")
                .increment(doomed.len() as u64);
            swept
                .versions
                .extend(doomed.iter().map(|v| format!("{name} v{v}")));
            // Their blobs go now: no grace is owed to a version that was deleted.
            for key in doomed
                .iter()
                .flat_map(|v| &versions[v])
                .flat_map(|(_, b)| b)
            {
                fence.check().await?;
                blobs.delete(key).await?;
                metrics::counter!("rankmesh_registry_gc_deleted_total", "kind" => "blob")
                    .increment(1);
                swept.blobs.push(key.clone());
            }
        } else {
            // Stages changed under us (a promotion, a rollback): next sweep.
            tracing::debug!(model = %name, "stages changed during the sweep; skipped");
        }
    }

    // Orphans: blobs no manifest named when the sweep began (a publish that failed
    // half-way), past the grace a publish in progress needs. Those of the versions
    // deleted above are gone already; one published since is younger than the grace.
    let named: BTreeSet<&String> = models
        .values()
        .flat_map(BTreeMap::values)
        .flatten()
        .flat_map(|(_, blobs)| blobs)
        .collect();
    let grace_ms = (policy.orphan_grace_s * 1e3) as i64;
    for (key, modified_ms) in blobs.list("models").await? {
        if named.contains(&key) || now_ms - modified_ms < grace_ms {
            continue;
        }
        fence.check().await?;
        blobs.delete(&key).await?;
        metrics::counter!("rankmesh_registry_gc_deleted_total", "kind" => "blob").increment(1);
        swept.blobs.push(key);
    }
    if !swept.blobs.is_empty() {
        tracing::info!(blobs = swept.blobs.len(), "garbage-collected blobs");
    }
    Ok(swept)
}

/// The versions kept: the newest `keep` (all when 0) and every one in `staged`.
fn kept(versions: impl Iterator<Item = u64>, keep: u32, staged: &[u64]) -> BTreeSet<u64> {
    let all: BTreeSet<u64> = versions.collect();
    let mut kept: BTreeSet<u64> = if keep == 0 {
        all.clone()
    } else {
        all.iter().rev().take(keep as usize).copied().collect()
    };
    kept.extend(staged.iter().copied().filter(|v| all.contains(v)));
    kept
}

/// The leader's loop: a sweep every `interval_s` until the future is dropped (when
/// leadership is lost or the registry stops). A sweep that fails is logged and
/// retried at the next interval; one that finds leadership gone ends the loop.
pub async fn run(db: ModelDb, blobs: Blobs, policy: RetentionConfig, fence: Fence) {
    let period = Duration::from_secs_f64(policy.interval_s.max(0.05));
    loop {
        match sweep(
            &db,
            &blobs,
            &policy,
            &fence,
            rankmesh_common::server::now_ms(),
        )
        .await
        {
            Ok(_) => {}
            Err(GcError::Election(ElectionError::NotLeader)) => {
                tracing::warn!("no longer the garbage-collection leader; stopping");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "garbage collection sweep failed"),
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Manifest;
    use bytes::Bytes;
    use rankmesh_artifact::envelope::Sealed;
    use rankmesh_common::config::EtcdConfig;
    use rankmesh_common::election::Candidate;
    use rankmesh_common::etcd::Etcd;
    use rankmesh_tests::etcd::EtcdCluster;

    fn manifest(version: u64) -> Manifest {
        Manifest {
            name: "m".into(),
            version,
            variant: "fp32".into(),
            parent_version: 0,
            inputs: vec![],
            outputs: vec![],
            metadata: Default::default(),
            sealed: Sealed {
                key_id: "k".into(),
                wrapped_key: String::new(),
                sha256_plaintext: String::new(),
                sha256_ciphertext: String::new(),
                size_bytes: 1,
            },
            blob: format!("models/m/{version}/fp32.bin"),
            created_ms: 1,
            sidecars: vec![],
            signature: String::new(),
            signed_sha256: String::new(),
            signer: String::new(),
            listed_as: None,
        }
    }

    async fn versions(db: &ModelDb) -> Vec<u64> {
        db.list("m")
            .await
            .expect("list")
            .iter()
            .map(|m| m.version)
            .collect()
    }

    /// A deposed leader's sweep deletes nothing, not even a blob; the leader's
    /// keeps the newest version and production, and removes what no manifest names.
    #[tokio::test]
    async fn only_the_current_leader_collects() {
        let cluster = EtcdCluster::single().await;
        let etcd = Etcd::connect(&EtcdConfig {
            lease_ttl_s: 2,
            ..cluster.config()
        })
        .await
        .expect("etcd");
        let db = ModelDb::new(etcd.clone());
        let dir = tempfile::tempdir().expect("tmp");
        let blobs = Blobs::local(dir.path()).expect("blobs");
        for v in 1..=4 {
            db.put_manifest(&manifest(v)).await.expect("manifest");
            blobs
                .put(&format!("models/m/{v}/fp32.bin"), Bytes::from_static(b"x"))
                .await
                .expect("blob");
        }
        blobs
            .put("models/stray/1/fp32.bin", Bytes::from_static(b"y"))
            .await
            .expect("orphan");
        db.update_stages("m", 0, |s| {
            s.promote(1, 2, "test");
            Ok(())
        })
        .await
        .expect("production v2");
        let policy = RetentionConfig {
            keep_versions: 1,
            interval_s: 1.0,
            orphan_grace_s: 3_600.0,
        };

        let a = Candidate::new(etcd.clone(), GC_ROLE, "a").campaign().await;
        let stale = a.fence();
        a.resign().await.expect("resign");
        let b = Candidate::new(etcd.clone(), GC_ROLE, "b").campaign().await;
        let now = rankmesh_common::server::now_ms();
        let err = sweep(&db, &blobs, &policy, &stale, now)
            .await
            .expect_err("deposed");
        assert!(
            matches!(err, GcError::Election(ElectionError::NotLeader)),
            "{err}"
        );
        assert_eq!(versions(&db).await, [1, 2, 3, 4]);
        assert_eq!(blobs.list("models").await.expect("list").len(), 5);

        let swept = sweep(&db, &blobs, &policy, &b.fence(), now)
            .await
            .expect("sweep");
        assert_eq!(swept.versions, ["m v1", "m v3"]);
        assert_eq!(
            versions(&db).await,
            [2, 4],
            "production and the newest stay"
        );
        let mut left: Vec<String> = blobs
            .list("models")
            .await
            .expect("list")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        left.sort();
        // The collected versions' blobs go at once; a fresh orphan (a publish still
        // writing, for all we know) waits for its grace.
        assert_eq!(
            left,
            [
                "models/m/2/fp32.bin",
                "models/m/4/fp32.bin",
                "models/stray/1/fp32.bin"
            ]
        );
        assert_eq!(swept.blobs, ["models/m/1/fp32.bin", "models/m/3/fp32.bin"]);
        let (stages, _) = db.stages("m").await.expect("stages");
        assert!(stages.previous.is_empty());
        assert!(
            stages
                .history
                .last()
                .is_some_and(|h| h.description.contains("removed v1, v3")),
            "{:?}",
            stages.history
        );
        // Nothing is promoted that garbage collection took.
        let err = db
            .update_stages("m", 0, |s| {
                s.promote(11, 3, "too late");
                Ok(())
            })
            .await
            .expect_err("v3 is gone");
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        // A second sweep finds nothing more.
        assert_eq!(
            sweep(&db, &blobs, &policy, &b.fence(), now)
                .await
                .expect("sweep"),
            Swept::default()
        );
    }

    #[test]
    fn keeps_the_newest_and_whatever_is_staged() {
        let v = || [1, 2, 3, 4, 5].into_iter();
        assert_eq!(kept(v(), 2, &[0, 0]), [4, 5].into());
        assert_eq!(kept(v(), 2, &[1, 3]), [1, 3, 4, 5].into());
        assert_eq!(kept(v(), 0, &[0, 0]), [1, 2, 3, 4, 5].into());
        // A staged version that is not there keeps nothing extra.
        assert_eq!(kept(v(), 1, &[9, 0]), [5].into());
    }
}
