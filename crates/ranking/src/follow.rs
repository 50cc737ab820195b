//! Follows the ranker's production version in the model registry and hot-swaps it.
//!
//! Every `poll_ms` the follower asks the registry (found through discovery) for the
//! production manifest. When the version changes it fetches the ciphertext (resuming
//! from where a broken stream stopped), verifies the manifest's ed25519 signature and
//! the hashes, unwraps the data key and decrypts *in memory*, loads and warms up a
//! session, and swaps it in atomically: requests in flight finish on the old ranker.
//! Any failure keeps the last good ranker serving. The ciphertext and manifest are
//! cached on disk (never the plaintext), so a restart while the registry is down
//! still comes up with the last model.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ed25519_dalek::VerifyingKey;
use rankmesh_client::upstream::Upstream;
use rankmesh_common::batcher::{BatchConfig, Batcher};
use rankmesh_common::onnx::OnnxConfig;
use rankmesh_model_registry::envelope::{self, MasterKeys, Sealed};
use rankmesh_model_registry::store::Manifest;
use rankmesh_proto::pb::registry::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::ranker::Ranker;
use crate::search::LoadedRanker;

/// Where the ranker comes from when it is managed by the registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySource {
    /// Model name in the registry; empty: do not follow the registry.
    pub model: String,
    /// Master keys (id -> 64 hex) able to unwrap the data keys.
    pub master_keys: BTreeMap<String, String>,
    /// The registry's ed25519 public key, 64 hex; manifests must verify against it.
    pub verify_key: String,
    /// Encrypted local cache of the last fetched artifact.
    pub cache_dir: PathBuf,
    /// How often the production version is checked, milliseconds.
    pub poll_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("registry: {0}")]
    Registry(String),
    #[error("verification: {0}")]
    Verify(String),
    #[error("ranker: {0}")]
    Load(String),
}

/// Everything a follower needs.
pub struct Follower {
    pub registry: Upstream,
    pub source: RegistrySource,
    pub keys: MasterKeys,
    pub verify_key: VerifyingKey,
    pub onnx: OnnxConfig,
    pub batch: BatchConfig,
    pub slot: Arc<ArcSwapOption<LoadedRanker>>,
    /// A production version that failed verification: not fetched again until the
    /// registry points at another one (a corrupt artifact stays corrupt).
    pub refused: std::sync::Mutex<Option<u64>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("model", &self.source.model)
            .finish_non_exhaustive()
    }
}

/// Parses the registry's public key.
pub fn verify_key(hex: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = envelope::decode_hex(hex)?
        .try_into()
        .map_err(|_| "need 32 bytes (64 hex characters)".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Follower {
    fn current_version(&self) -> u64 {
        self.slot.load().as_ref().map_or(0, |r| r.ranker.version())
    }

    /// Runs forever: start from the cache, then follow the registry.
    pub async fn run(self) {
        if let Err(e) = self.load_cached().await {
            tracing::info!(reason = %e, "no usable cached ranker");
        }
        let period = Duration::from_millis(self.source.poll_ms.max(100));
        loop {
            match self.sync().await {
                Ok(Some(v)) => tracing::info!(version = v, "ranker swapped in"),
                Ok(None) => {}
                Err(e) => {
                    let reason = match e {
                        FollowError::Registry(_) => "registry",
                        FollowError::Verify(_) => "verify",
                        FollowError::Load(_) => "load",
                    };
                    metrics::counter!("rankmesh_model_swap_failures_total", "model" => "ranker", "reason" => reason)
                        .increment(1);
                    tracing::warn!(error = %e, serving = self.current_version(), "ranker update failed; keeping the last good one");
                }
            }
            tokio::time::sleep(period).await;
        }
    }

    /// One check: swap in the production version if it is new. Returns the version
    /// swapped in, if any.
    pub async fn sync(&self) -> Result<Option<u64>, FollowError> {
        let name = self.source.model.clone();
        let m = self
            .registry
            .call(|ch| {
                let name = name.clone();
                async move {
                    pb::model_registry_client::ModelRegistryClient::new(ch)
                        .get_model(pb::GetModelRequest { name, version: 0 })
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await;
        let m = match m {
            Ok(m) => m,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(FollowError::Registry(s.message().to_owned())),
        };
        if m.version == self.current_version() {
            return Ok(None);
        }
        let refused = || {
            self.refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if *refused() == Some(m.version) {
            return Ok(None);
        }
        let result = async {
            let manifest = self.verify(&m.signed_manifest, &m.signature_ed25519)?;
            let ciphertext = self.fetch(&manifest).await?;
            self.install(&manifest, &ciphertext).await?;
            Ok::<_, FollowError>((manifest, ciphertext))
        }
        .await;
        let (manifest, ciphertext) = match result {
            Ok(ok) => ok,
            Err(e @ (FollowError::Verify(_) | FollowError::Load(_))) => {
                *refused() = Some(m.version);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.cache(&m.signed_manifest, &m.signature_ed25519, &ciphertext);
        Ok(Some(manifest.version))
    }

    fn verify(&self, signed: &[u8], signature: &[u8]) -> Result<Manifest, FollowError> {
        envelope::verify(&self.verify_key, signed, &hex(signature))
            .map_err(|e| FollowError::Verify(e.to_string()))?;
        serde_json::from_slice(signed).map_err(|e| FollowError::Verify(format!("manifest: {e}")))
    }

    /// The whole ciphertext, resuming after a broken stream.
    async fn fetch(&self, m: &Manifest) -> Result<Vec<u8>, FollowError> {
        let mut data: Vec<u8> = Vec::new();
        for _attempt in 0..8 {
            let offset = data.len() as u64;
            let (name, version, variant) = (m.name.clone(), m.version, m.variant.clone());
            let got = self
                .registry
                .call(|ch| {
                    let req = pb::FetchModelRequest {
                        name: name.clone(),
                        version,
                        variant: variant.clone(),
                        offset,
                    };
                    async move {
                        let mut s = pb::model_registry_client::ModelRegistryClient::new(ch)
                            .max_decoding_message_size(8 << 20)
                            .fetch_model(req)
                            .await?
                            .into_inner();
                        let mut part = Vec::new();
                        let mut total = 0;
                        loop {
                            match s.message().await {
                                Ok(Some(msg)) => {
                                    total = msg.total_bytes;
                                    part.extend(msg.data);
                                }
                                Ok(None) => return Ok((part, total, true)),
                                // Keep what arrived; the next attempt resumes after it.
                                Err(_) => return Ok((part, total, false)),
                            }
                        }
                    }
                })
                .await;
            match got {
                Ok((part, total, complete)) => {
                    data.extend(part);
                    if complete && data.len() as u64 == total {
                        return Ok(data);
                    }
                }
                Err(s) => tracing::warn!(error = %s, "fetch attempt failed; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(FollowError::Registry(format!(
            "could not fetch {} v{}",
            m.name, m.version
        )))
    }

    async fn install(&self, m: &Manifest, ciphertext: &[u8]) -> Result<(), FollowError> {
        let context = format!("{}/{}/{}", m.name, m.version, m.variant);
        let sealed: &Sealed = &m.sealed;
        let plaintext = envelope::open(&self.keys, &context, sealed, ciphertext)
            .map_err(|e| FollowError::Verify(e.to_string()))?;
        let onnx = self.onnx.clone();
        let version = m.version;
        let ranker = tokio::task::spawn_blocking(move || -> Result<Ranker, String> {
            let r = Ranker::from_bytes(&plaintext, version, &onnx).map_err(|e| e.to_string())?;
            // Warm up: the first run allocates; do it before taking traffic.
            let width = r.columns().len();
            r.score(vec![0.0; width * 4])
                .map_err(|e| format!("warm-up: {e}"))?;
            Ok(r)
        })
        .await
        .map_err(|e| FollowError::Load(e.to_string()))?
        .map_err(FollowError::Load)?;
        let ranker = Arc::new(ranker);
        let r = Arc::clone(&ranker);
        let batcher = Batcher::new("ranker", self.batch, move |rows: Vec<Vec<f32>>| {
            r.score(rows.concat()).map_err(|e| e.to_string())
        });
        self.slot
            .store(Some(Arc::new(LoadedRanker { ranker, batcher })));
        metrics::gauge!("rankmesh_model_version", "model" => "ranker").set(version as f64);
        Ok(())
    }

    fn cache(&self, signed: &[u8], signature: &[u8], ciphertext: &[u8]) {
        if self.source.cache_dir.as_os_str().is_empty() {
            return;
        }
        let dir = &self.source.cache_dir;
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            // Ciphertext only: the plaintext model never touches the disk.
            std::fs::write(dir.join("ranker.bin.tmp"), ciphertext)?;
            std::fs::write(dir.join("ranker.manifest.tmp"), signed)?;
            std::fs::write(dir.join("ranker.sig.tmp"), signature)?;
            for f in ["ranker.bin", "ranker.manifest", "ranker.sig"] {
                std::fs::rename(dir.join(format!("{f}.tmp")), dir.join(f))?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "could not cache the ranker");
        }
    }

    async fn load_cached(&self) -> Result<(), FollowError> {
        let dir = &self.source.cache_dir;
        let read = |f: &str| {
            std::fs::read(dir.join(f)).map_err(|e| FollowError::Registry(format!("cache {f}: {e}")))
        };
        let (signed, sig, ct) = (
            read("ranker.manifest")?,
            read("ranker.sig")?,
            read("ranker.bin")?,
        );
        let m = self.verify(&signed, &sig)?;
        self.install(&m, &ct).await?;
        tracing::info!(
            version = m.version,
            "ranker loaded from the local encrypted cache"
        );
        Ok(())
    }
}
