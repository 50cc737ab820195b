//! Fetching one model's artifacts from the registry, safely.
//!
//! A [`Fetcher`] reads a model's stages and manifests, fetches ciphertexts (resuming
//! where a broken stream stopped), verifies the manifest's ed25519 signature and the
//! hashes, and decrypts *in memory*. It caches ciphertexts and signed manifests on
//! disk, never plaintext, so a replica restarted while the registry is down comes up
//! with its last verified model. What to do with the plaintext (build an ONNX
//! session, warm it up, swap it in) is the service's business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use rankmesh_client::registry::FetchedPart;
use rankmesh_client::{Deadline, RegistryClient};
use rankmesh_proto::pb::registry::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::envelope::{self, EnvelopeError, MasterKeys, hex};
use crate::manifest::Manifest;

/// Where a replica's model comes from when the registry manages it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySource {
    /// Model name in the registry; empty: do not follow the registry.
    pub model: String,
    /// Files of the master keys (id -> owner-only file of 64 hex characters)
    /// able to unwrap the data keys; see `rankmesh_common::secret`.
    pub master_key_files: BTreeMap<String, PathBuf>,
    /// The registry's ed25519 public key, 64 hex; manifests must verify against it.
    pub verify_key: String,
    /// Encrypted local cache of the last fetched artifacts.
    pub cache_dir: PathBuf,
    /// How often the stages are checked, milliseconds.
    pub poll_ms: u64,
    /// Variant to prefer: "auto" (INT8 on CPU, FP32 on GPU), "fp32" or "int8". The
    /// other one is used when the preferred one was not published.
    pub variant: String,
}

impl RegistrySource {
    pub fn enabled(&self) -> bool {
        !self.model.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The registry could not be reached or answered an error; retried later.
    #[error("registry: {0}")]
    Registry(String),
    /// Signature, hash or decryption failed: this version is refused, for the
    /// reason given.
    #[error("verification ({reason}): {1}", reason = .0.label())]
    Verify(Refusal, String),
    /// The artifact verified but the service could not load or warm it up.
    #[error("load: {0}")]
    Load(String),
    /// The model loaded but the service could not put it in (e.g. re-embedding
    /// the catalog with a new encoder failed); retried at the next check.
    #[error("swap: {0}")]
    Swap(String),
}

/// Why a replica refused an artifact: each its own label of
/// `rankmesh_model_swap_failures_total`, so an operator sees what was tampered
/// with, not only that something was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The signed bytes are not what the registry hashed when it signed them:
    /// the manifest was altered after signing.
    ManifestAltered,
    /// The signature does not verify over bytes that are as signed: the
    /// signature itself was altered (or the manifest carries no record of them).
    Signature,
    /// Signed by a key that is not the registry's this replica trusts.
    ForeignSigner,
    /// A validly signed manifest of another name.
    WrongModel,
    /// A validly signed manifest of another version or variant than it is
    /// listed as.
    Replayed,
    /// Wrapped under a master key id this replica does not have.
    UnknownKey,
    /// The wrapped data key does not unwrap under its master key.
    DataKey,
    /// The ciphertext is not the one the manifest names (a flipped bit in the
    /// blob, a truncated download).
    CiphertextHash,
    /// The ciphertext does not decrypt under its data key.
    Decrypt,
    /// The plaintext is not the one the manifest names.
    PlaintextHash,
    /// Something the manifest names is missing or malformed.
    Malformed,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::ManifestAltered => "manifest_altered",
            Self::Signature => "signature",
            Self::ForeignSigner => "foreign_signer",
            Self::WrongModel => "wrong_model",
            Self::Replayed => "replayed",
            Self::UnknownKey => "unknown_key",
            Self::DataKey => "data_key",
            Self::CiphertextHash => "ciphertext_hash",
            Self::Decrypt => "decrypt",
            Self::PlaintextHash => "plaintext_hash",
            Self::Malformed => "malformed",
        }
    }

    /// The refusal an envelope error means.
    pub fn of(e: &EnvelopeError) -> Self {
        match e {
            EnvelopeError::UnknownKey(_) => Self::UnknownKey,
            EnvelopeError::CiphertextHash => Self::CiphertextHash,
            EnvelopeError::PlaintextHash => Self::PlaintextHash,
            EnvelopeError::Decrypt => Self::Decrypt,
            EnvelopeError::DataKey(_) => Self::DataKey,
            EnvelopeError::Malformed(_) => Self::Malformed,
            EnvelopeError::Signature(_) => Self::Signature,
        }
    }
}

impl FollowError {
    /// An artifact refused for `e`.
    fn envelope(e: &EnvelopeError, what: &str) -> Self {
        Self::Verify(Refusal::of(e), format!("{what}{e}"))
    }

    /// Label for `rankmesh_model_swap_failures_total`: `registry`, `load`,
    /// `swap`, or why verification refused it ([`Refusal::label`]).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Registry(_) => "registry",
            Self::Verify(r, _) => r.label(),
            Self::Load(_) => "load",
            Self::Swap(_) => "swap",
        }
    }
}

/// Ciphertexts of one artifact and its sidecars, as fetched or cached.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The signed manifest bytes and their signature, exactly as published.
    pub signed_manifest: Vec<u8>,
    pub signature: Vec<u8>,
    pub manifest: Manifest,
    pub model: Vec<u8>,
    pub sidecars: BTreeMap<String, Vec<u8>>,
}

/// A verified, decrypted artifact. Lives in memory only.
pub struct Opened {
    pub manifest: Manifest,
    pub model: Vec<u8>,
    pub sidecars: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("variant", &self.manifest.variant)
            .finish_non_exhaustive()
    }
}

/// Fetches, verifies, decrypts and caches one model's artifacts.
pub struct Fetcher {
    registry: RegistryClient,
    keys: MasterKeys,
    verify_key: VerifyingKey,
    source: RegistrySource,
    /// Ciphertext bytes received, and fetches resumed after a broken stream.
    received: AtomicU64,
    resumes: AtomicU64,
    /// (version, variant) pairs that failed verification or loading.
    refused: std::sync::Mutex<std::collections::HashSet<(u64, String)>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
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

/// Checks the registry's ed25519 `signature` over the signed manifest bytes and
/// parses them: the one way a manifest is read outside the registry (replicas before
/// fetching, `meshctl model show`). The fields of a `ModelManifest` outside
/// `signed_manifest` are not signed; trust what this returns instead.
pub fn verify_manifest(
    key: &VerifyingKey,
    signed: &[u8],
    signature: &[u8],
) -> Result<Manifest, String> {
    envelope::verify(key, signed, &hex(signature)).map_err(|e| e.to_string())?;
    serde_json::from_slice(signed).map_err(|e| format!("manifest: {e}"))
}

/// How long one artifact is retried (resuming each time) before giving up until
/// the next poll.
const FETCH_PATIENCE: Duration = Duration::from_secs(30);

impl Fetcher {
    /// Checks keys and the verify key; errors name the config field.
    pub fn new(source: RegistrySource, registry: RegistryClient) -> Result<Self, String> {
        let first = source
            .master_key_files
            .keys()
            .next()
            .cloned()
            .unwrap_or_default();
        let keys = MasterKeys::from_files(&source.master_key_files, &first)
            .map_err(|e| format!("master_key_files: {e}"))?;
        let verify_key = verify_key(&source.verify_key).map_err(|e| format!("verify_key: {e}"))?;
        Ok(Self {
            registry,
            keys,
            verify_key,
            source,
            received: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            refused: std::sync::Mutex::default(),
        })
    }

    /// Ciphertext bytes received so far (all fetches).
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Fetches that continued from an offset after a broken stream or a failed call.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }

    pub fn source(&self) -> &RegistrySource {
        &self.source
    }

    /// The model's stages and versions; `None` when it was never published.
    pub async fn summary(&self) -> Result<Option<pb::ModelSummary>, FollowError> {
        self.registry
            .model(&self.source.model, Deadline::Default)
            .await
            .map_err(|s| FollowError::Registry(s.message().to_owned()))
    }

    /// The manifest of `version` in the variant this replica should run: the
    /// configured preference, or for "auto" INT8 on CPU and FP32 on GPU; the other
    /// variant when the preferred one was not published.
    pub fn pick<'a>(
        &self,
        summary: &'a pb::ModelSummary,
        version: u64,
        on_gpu: bool,
    ) -> Option<&'a pb::ModelManifest> {
        let preferred = match self.source.variant.as_str() {
            "fp32" => "fp32",
            "int8" => "int8",
            _ if on_gpu => "fp32",
            _ => "int8",
        };
        let of = |variant: &str| {
            summary
                .versions
                .iter()
                .find(|m| m.version == version && m.variant == variant)
        };
        of(preferred).or_else(|| of(if preferred == "fp32" { "int8" } else { "fp32" }))
    }

    /// Fetches, verifies and decrypts `version` in the variant this replica should
    /// run, then hands it to `load` (build a session, warm up). `None` when that
    /// version was refused before: a verification or load failure refuses it for
    /// good (a corrupt artifact stays corrupt), while a registry failure is retried.
    pub async fn obtain<T, F, Fut>(
        &self,
        summary: &pb::ModelSummary,
        version: u64,
        on_gpu: bool,
        load: F,
    ) -> Result<Option<(T, Sealed)>, FollowError>
    where
        F: FnOnce(Opened) -> Fut,
        Fut: std::future::Future<Output = Result<T, FollowError>>,
    {
        let Some(m) = self.pick(summary, version, on_gpu) else {
            return Err(FollowError::Registry(format!("v{version} has no manifest")));
        };
        let key = (version, m.variant.clone());
        let refused = || {
            self.refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if refused().contains(&key) {
            return Ok(None);
        }
        let result = async {
            let sealed = self.fetch(m).await?;
            let opened = self.open(&sealed)?;
            Ok((load(opened).await?, sealed))
        }
        .await;
        match result {
            Ok(ok) => Ok(Some(ok)),
            Err(e @ (FollowError::Verify(..) | FollowError::Load(_))) => {
                refused().insert(key);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Verifies the manifest's signature, and that it is the manifest of the
    /// version and variant the registry lists it as (a validly signed manifest of
    /// another version, replayed, is refused), then fetches every ciphertext it
    /// names.
    pub async fn fetch(&self, m: &pb::ModelManifest) -> Result<Sealed, FollowError> {
        let manifest = self.verify(m)?;
        if (manifest.version, manifest.variant.as_str()) != (m.version, m.variant.as_str()) {
            return Err(FollowError::Verify(
                Refusal::Replayed,
                format!(
                    "replayed manifest: signed for v{} ({}), listed as v{} ({})",
                    manifest.version, manifest.variant, m.version, m.variant
                ),
            ));
        }
        let model = self.fetch_blob(&manifest, "").await?;
        let mut sidecars = BTreeMap::new();
        for s in &manifest.sidecars {
            sidecars.insert(s.name.clone(), self.fetch_blob(&manifest, &s.name).await?);
        }
        Ok(Sealed {
            signed_manifest: m.signed_manifest.clone(),
            signature: m.signature_ed25519.clone(),
            manifest,
            model,
            sidecars,
        })
    }

    /// Checks hashes and decrypts in memory.
    pub fn open(&self, sealed: &Sealed) -> Result<Opened, FollowError> {
        let m = &sealed.manifest;
        let model = envelope::open(&self.keys, &m.context(None), &m.sealed, &sealed.model)
            .map_err(|e| FollowError::envelope(&e, ""))?;
        let mut sidecars = BTreeMap::new();
        for s in &m.sidecars {
            let ct = sealed.sidecars.get(&s.name).ok_or_else(|| {
                FollowError::Verify(Refusal::Malformed, format!("sidecar {:?} missing", s.name))
            })?;
            let pt = envelope::open(&self.keys, &m.context(Some(&s.name)), &s.sealed, ct)
                .map_err(|e| FollowError::envelope(&e, &format!("sidecar {:?}: ", s.name)))?;
            sidecars.insert(s.name.clone(), pt);
        }
        Ok(Opened {
            manifest: m.clone(),
            model,
            sidecars,
        })
    }

    /// Checks the listed manifest's signature and names why it refuses one: a
    /// signer other than the registry's key, bytes altered since they were
    /// signed, a bad signature, another model's manifest.
    fn verify(&self, listed: &pb::ModelManifest) -> Result<Manifest, FollowError> {
        use sha2::Digest;
        let ours = hex(self.verify_key.as_bytes());
        if !listed.signer.is_empty() && listed.signer != ours {
            return Err(FollowError::Verify(
                Refusal::ForeignSigner,
                format!("signed by key {}, not the registry's {ours}", listed.signer),
            ));
        }
        let m = verify_manifest(
            &self.verify_key,
            &listed.signed_manifest,
            &listed.signature_ed25519,
        )
        .map_err(|e| {
            let digest = hex(&sha2::Sha256::digest(&listed.signed_manifest));
            let altered = !listed.signed_manifest_sha256.is_empty()
                && listed.signed_manifest_sha256 != digest;
            if altered {
                FollowError::Verify(
                    Refusal::ManifestAltered,
                    format!("the manifest changed after it was signed ({e})"),
                )
            } else {
                FollowError::Verify(Refusal::Signature, e)
            }
        })?;
        if m.name != self.source.model {
            return Err(FollowError::Verify(
                Refusal::WrongModel,
                format!("manifest is for {:?}, not {:?}", m.name, self.source.model),
            ));
        }
        Ok(m)
    }

    /// One whole ciphertext (the artifact, or the sidecar `sidecar`), resuming
    /// from the last byte received after a broken stream.
    async fn fetch_blob(&self, m: &Manifest, sidecar: &str) -> Result<Vec<u8>, FollowError> {
        let mut data: Vec<u8> = Vec::new();
        let mut last_error = String::new();
        let give_up = tokio::time::Instant::now() + FETCH_PATIENCE;
        let mut attempt = 0u32;
        while attempt == 0 || tokio::time::Instant::now() < give_up {
            attempt += 1;
            if attempt > 1 && !data.is_empty() {
                self.resumes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("rankmesh_model_fetch_resumes_total").increment(1);
            }
            let req = pb::FetchModelRequest {
                name: m.name.clone(),
                version: m.version,
                variant: m.variant.clone(),
                offset: data.len() as u64,
                sidecar: sidecar.to_owned(),
            };
            let counted = |n: usize| {
                self.received.fetch_add(n as u64, Ordering::Relaxed);
            };
            // A broken stream still answers what arrived: the next attempt resumes after it.
            match self.registry.fetch_model(req, &counted).await {
                Ok(FetchedPart {
                    data: part,
                    total,
                    broken,
                }) => {
                    let resumed_at = data.len();
                    data.extend(part);
                    match broken {
                        None if data.len() as u64 == total => {
                            if resumed_at > 0 {
                                tracing::info!(
                                    model = %m.name,
                                    version = m.version,
                                    resumed_at,
                                    "fetch completed after resuming"
                                );
                            }
                            return Ok(data);
                        }
                        None => last_error = format!("stream ended at {} of {total}", data.len()),
                        Some(e) => {
                            last_error = e.message().to_owned();
                            tracing::warn!(received = data.len(), total, error = %e, "fetch broke; resuming");
                        }
                    }
                }
                Err(s) => {
                    last_error = s.message().to_owned();
                    tracing::warn!(error = %s, "fetch attempt failed; retrying");
                }
            }
            // Back off a little more each time (the registry may be restarting).
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
        }
        Err(FollowError::Registry(format!(
            "could not fetch {} v{} {}{}: {last_error}",
            m.name,
            m.version,
            m.variant,
            if sidecar.is_empty() {
                String::new()
            } else {
                format!(" sidecar {sidecar}")
            }
        )))
    }

    fn cache_dir(&self, slot: &str) -> Option<PathBuf> {
        let dir = &self.source.cache_dir;
        (!dir.as_os_str().is_empty()).then(|| dir.join(slot))
    }

    /// Caches the ciphertexts and the signed manifest under `slot` (e.g.
    /// "production"); a failure is logged, not fatal: the model is already serving.
    pub fn cache(&self, slot: &str, sealed: &Sealed) {
        let Some(dir) = self.cache_dir(slot) else {
            return;
        };
        let tmp = dir.with_extension("tmp");
        let old = dir.with_extension("old");
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            // Ciphertext only: the plaintext model never touches the disk.
            std::fs::write(tmp.join("model.bin"), &sealed.model)?;
            for (name, ct) in &sealed.sidecars {
                std::fs::write(tmp.join(format!("sidecar-{name}.bin")), ct)?;
            }
            std::fs::write(tmp.join("manifest.sig"), &sealed.signature)?;
            // Written last: a cache without it is incomplete and ignored.
            std::fs::write(tmp.join("manifest.json"), &sealed.signed_manifest)?;
            let _ = std::fs::remove_dir_all(&old);
            if dir.exists() {
                std::fs::rename(&dir, &old)?;
            }
            std::fs::rename(&tmp, &dir)?;
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, dir = %dir.display(), "could not cache the model");
        }
    }

    /// The cached ciphertexts of `slot`, signature verified (hashes are checked by
    /// [`Fetcher::open`]).
    pub fn load_cached(&self, slot: &str) -> Result<Sealed, FollowError> {
        let dir = self
            .cache_dir(slot)
            .ok_or_else(|| FollowError::Registry("no cache_dir configured".into()))?;
        let read = |f: &Path| {
            std::fs::read(dir.join(f))
                .map_err(|e| FollowError::Registry(format!("cache {}: {e}", f.display())))
        };
        let signed = read(Path::new("manifest.json"))?;
        let signature = read(Path::new("manifest.sig"))?;
        // The cache keeps the signed bytes and the signature only.
        let manifest = self.verify(&pb::ModelManifest {
            signed_manifest: signed.clone(),
            signature_ed25519: signature.clone(),
            ..pb::ModelManifest::default()
        })?;
        let model = read(Path::new("model.bin"))?;
        let mut sidecars = BTreeMap::new();
        for s in &manifest.sidecars {
            sidecars.insert(
                s.name.clone(),
                read(Path::new(&format!("sidecar-{}.bin", s.name)))?,
            );
        }
        Ok(Sealed {
            signed_manifest: signed,
            signature,
            manifest,
            model,
            sidecars,
        })
    }
}
