//! The model registry: versioned, encrypted, signed model artifacts in an object
//! store, with versions and stages in etcd.
//!
//! # Layout
//! - [`store`]: versions and stages in etcd; encrypted blobs in an object store.
//! - [`service`]: the gRPC API (publish with validation in ONNX Runtime, fetch with
//!   resume, stages, rollback, key rotation; writes need the admin token).
//! - [`quantize`]: INT8 variants made at publish by the project's quantizer and
//!   checked against their FP32 parent.
//! - [`gc`]: the retention policy, applied by the one replica that leads the
//!   `registry-gc` election, fenced on its leader key.
//! - [`error`]: the one error type every RPC answers through.
//!
//! Sealing and signing come from `rankmesh-artifact` ([`envelope`]), which is also
//! what replicas use to fetch, verify and decrypt: a replica never links this crate.
//! Must not import: any service crate (ranking, embedding, feature).

pub use rankmesh_artifact::envelope;

pub mod error;
pub mod gc;
pub mod quantize;
pub mod requests;
pub mod service;
pub mod store;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rankmesh_common::config::{ConfigError, invalid};
use rankmesh_common::election::{Candidate, lead_forever};
use rankmesh_common::onnx::OnnxConfig;
use rankmesh_common::scaffold::{ScaffoldError, connect_etcd};
use rankmesh_common::secret;
use rankmesh_common::server::{Listeners, Readiness, ServiceInfo, instance_id, serve};
use rankmesh_proto::pb::registry::v1::model_registry_server::ModelRegistryServer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::envelope::MasterKeys;
use crate::gc::RetentionConfig;
use crate::quantize::QuantizerConfig;
use crate::service::{Registry, RegistryApi};
use crate::store::{Blobs, ModelDb};

/// Its name in discovery and metrics, and the gRPC service it serves.
pub const INFO: ServiceInfo = ServiceInfo::new("registry", &["rankmesh.registry.v1.ModelRegistry"]);

rankmesh_common::service_config! {
    /// Configuration of the model registry.
    pub struct Config {
        /// Storage, keys and the admin token.
        pub registry: RegistryConfig,
        /// ONNX Runtime, to validate artifacts at publish.
        pub onnx: OnnxConfig,
    }
}

/// Storage, keys and the admin token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Where blobs live: "local" (`blob_dir`) or "s3" (`s3.*`).
    pub store: String,
    /// Folder of the local object store.
    pub blob_dir: PathBuf,
    /// The S3-compatible bucket when `store = "s3"`.
    pub s3: S3Config,
    /// File holding the bearer token for writes (Publish, SetStage, Rollback,
    /// RotateKey); none disables writes. Secrets come from owner-only files,
    /// never from config values or the environment (`rankmesh_common::secret`).
    pub admin_token_file: PathBuf,
    /// Files of the master keys by id, 64 hex characters each.
    pub master_key_files: BTreeMap<String, PathBuf>,
    /// The key id that wraps new data keys until a RotateKey records another one
    /// in etcd, which every registry then uses.
    pub current_key: String,
    /// File holding the ed25519 signing seed, 64 hex characters.
    pub signing_key_file: PathBuf,
    /// Largest artifact accepted, bytes.
    pub max_artifact_bytes: u64,
    /// Cap on each FetchModel stream, bytes per second (0: none), so a fleet of
    /// replicas fetching a new version at once does not saturate the network.
    pub fetch_bytes_per_s: u64,
    /// Which versions and blobs are kept; the elected replica deletes the rest.
    pub retention: RetentionConfig,
    /// What makes INT8 variants at publish (`quantize_int8`); none by default.
    pub quantizer: QuantizerConfig,
}

/// An S3-compatible bucket. Credentials: `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY` in the environment (kept out of config files).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Endpoint URL of a non-AWS service (MinIO, Ceph, ...); empty for AWS.
    pub endpoint: String,
    pub region: String,
    /// Allow a plain-HTTP endpoint (local test servers only).
    pub allow_http: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            store: "local".into(),
            s3: S3Config::default(),
            blob_dir: PathBuf::from(".rankmesh/registry/blobs"),
            admin_token_file: PathBuf::new(),
            master_key_files: BTreeMap::new(),
            current_key: String::new(),
            signing_key_file: PathBuf::new(),
            max_artifact_bytes: 2 << 30,
            fetch_bytes_per_s: 0,
            retention: RetentionConfig::default(),
            quantizer: QuantizerConfig::default(),
        }
    }
}

impl Config {
    fn validate_service(&self) -> Result<(), ConfigError> {
        self.onnx.validate("onnx")?;
        if !self.etcd.enabled() {
            return Err(invalid(
                "etcd.endpoints",
                "[]",
                "the registry keeps versions in etcd: configure it",
            ));
        }
        let r = &self.registry;
        match r.store.as_str() {
            "local" => {}
            "s3" if r.s3.bucket.is_empty() => {
                return Err(invalid(
                    "registry.s3.bucket",
                    "\"\"",
                    "store = \"s3\" needs a bucket",
                ));
            }
            "s3" => {}
            other => {
                return Err(invalid(
                    "registry.store",
                    other,
                    "must be \"local\" or \"s3\"",
                ));
            }
        }
        if r.master_key_files.is_empty() {
            return Err(invalid(
                "registry.master_key_files",
                "{}",
                "at least one master key is required",
            ));
        }
        r.secrets()?;
        let q = &r.quantizer;
        if !(q.min_cosine > 0.0 && q.min_cosine <= 1.0) {
            return Err(invalid(
                "registry.quantizer.min_cosine",
                q.min_cosine.to_string(),
                "must be within (0, 1]",
            ));
        }
        if !(q.min_correlation > -1.0 && q.min_correlation <= 1.0) {
            return Err(invalid(
                "registry.quantizer.min_correlation",
                q.min_correlation.to_string(),
                "must be within (-1, 1]",
            ));
        }
        if !q.python.as_os_str().is_empty() && q.script.as_os_str().is_empty() {
            return Err(invalid(
                "registry.quantizer.script",
                "\"\"",
                "a quantizer python needs its script (scripts/quantize_model.py)",
            ));
        }
        let g = &r.retention;
        if !(g.interval_s.is_finite() && g.interval_s > 0.0) {
            return Err(invalid(
                "registry.retention.interval_s",
                g.interval_s.to_string(),
                "must be > 0",
            ));
        }
        if !(g.orphan_grace_s.is_finite() && g.orphan_grace_s >= 0.0) {
            return Err(invalid(
                "registry.retention.orphan_grace_s",
                g.orphan_grace_s.to_string(),
                "must be >= 0",
            ));
        }
        Ok(())
    }
}

/// What the registry's secret files hold, read and checked.
struct Secrets {
    admin_token: String,
    keys: MasterKeys,
    signing: SigningKey,
}

impl RegistryConfig {
    /// Reads the secret files; errors name the field and the file, never a value.
    fn secrets(&self) -> Result<Secrets, ConfigError> {
        let file = |field: &str, path: &std::path::Path, e: String| {
            invalid(field, path.display().to_string(), &e)
        };
        let keys = MasterKeys::from_files(&self.master_key_files, &self.current_key)
            .map_err(|e| invalid("registry.master_key_files", "(not shown)", &e))?;
        let seed = secret::read(&self.signing_key_file).map_err(|e| {
            file(
                "registry.signing_key_file",
                &self.signing_key_file,
                e.to_string(),
            )
        })?;
        let signing = signing_key(&seed)
            .map_err(|e| file("registry.signing_key_file", &self.signing_key_file, e))?;
        let admin_token = secret::read_optional(&self.admin_token_file).map_err(|e| {
            file(
                "registry.admin_token_file",
                &self.admin_token_file,
                e.to_string(),
            )
        })?;
        Ok(Secrets {
            admin_token,
            keys,
            signing,
        })
    }
}

fn signing_key(hex: &str) -> Result<SigningKey, String> {
    let seed: [u8; 32] = envelope::decode_hex(hex)?
        .try_into()
        .map_err(|_| "need 32 bytes (64 hex characters)".to_owned())?;
    Ok(SigningKey::from_bytes(&seed))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Scaffold(#[from] ScaffoldError),
    #[error("registry: {0}")]
    Setup(String),
}

/// Serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let etcd = connect_etcd(&config.etcd)
        .await?
        .ok_or_else(|| Error::Setup("etcd is required".into()))?;
    let r = &config.registry;
    let secrets = r.secrets().map_err(|e| Error::Setup(e.to_string()))?;
    let blobs = match r.store.as_str() {
        "s3" => Blobs::s3(&r.s3.bucket, &r.s3.endpoint, &r.s3.region, r.s3.allow_http),
        _ => Blobs::local(&r.blob_dir),
    }
    .map_err(|e| Error::Setup(e.to_string()))?;
    let registry = Arc::new(Registry {
        db: ModelDb::new(etcd.clone()),
        blobs: blobs.clone(),
        keys: secrets.keys,
        signing: secrets.signing,
        admin_token: secrets.admin_token,
        max_artifact_bytes: r.max_artifact_bytes,
        fetch_bytes_per_s: r.fetch_bytes_per_s,
        onnx: config.onnx.clone(),
        quantizer: r.quantizer.clone(),
    });
    // A rotation recorded a key this replica lacks: it could not seal, so it
    // says so now rather than at the first publish.
    let sealing = registry
        .sealing_keys()
        .await
        .map_err(|e| Error::Setup(e.to_string()))?;
    tracing::info!(current_key = sealing.current_id(), "master keys loaded");
    // Artifacts move in chunks, so no message is larger than one chunk and its
    // header: the server's request guard refuses anything larger, naming the limit.
    let mut server_config = config.server.clone();
    server_config.max_message_bytes = server_config
        .max_message_bytes
        .min(rankmesh_proto::limits::MAX_CHUNK_BYTES + 1024);
    let routes = rankmesh_common::limited_routes!(
        ModelRegistryServer::new(RegistryApi::new(registry)),
        server_config.max_message_bytes
    );
    // Every replica campaigns; the leader applies the retention policy.
    let grpc_addr = listeners.grpc_addr().map_err(ScaffoldError::Serve)?;
    let identity = instance_id(&config.server, grpc_addr);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (leading_tx, _leading_rx) = watch::channel(false);
    let gc = {
        let (db, policy) = (ModelDb::new(etcd.clone()), r.retention.clone());
        tokio::spawn(lead_forever(
            Candidate::new(etcd.clone(), gc::GC_ROLE, &identity),
            leading_tx,
            stop_rx,
            move |leadership| {
                tracing::info!(fence = leadership.revision(), "leading garbage collection");
                gc::run(
                    db.clone(),
                    blobs.clone(),
                    policy.clone(),
                    leadership.fence(),
                )
            },
        ))
    };
    let readiness = Readiness::default();
    let served = serve(
        INFO,
        &server_config,
        Some(etcd),
        readiness,
        routes,
        listeners,
        async {
            shutdown.await;
            // Hand garbage collection over first, so the next leader starts now.
            stop_tx.send_replace(true);
        },
    )
    .await;
    let _ = gc.await;
    served.map_err(ScaffoldError::from)?;
    Ok(())
}
