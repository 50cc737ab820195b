//! Model files into a registry: one upload ([`publish`]), a stage change
//! ([`promote`]), what production serves now ([`production`]), and the default
//! models a local mesh serves ([`publish_defaults`]).

use std::path::{Path, PathBuf};

use rankmesh_client::{Deadline, RegistryClient};
use rankmesh_launcher::{ENCODER_MODEL, RANKER_MODEL};
use rankmesh_proto::pb::registry::v1 as pb;

use crate::error::ProvisionError;

/// Bytes per streamed chunk of an upload (the registry takes up to 4 MiB).
const CHUNK: usize = 1 << 20;

/// One artifact to upload.
#[derive(Debug)]
pub struct Upload<'a> {
    pub name: &'a str,
    pub file: &'a Path,
    /// Input and output names the artifact must have (checked by the registry in
    /// ONNX Runtime).
    pub inputs: &'a [String],
    pub outputs: &'a [String],
    pub metadata: Vec<(String, String)>,
    /// Extra files (e.g. tokenizer.json), stored encrypted under their file names.
    pub sidecars: &'a [PathBuf],
    /// Have the registry make and check the INT8 variant too.
    pub quantize_int8: bool,
}

/// Uploads an artifact (the next version of its name, or with metadata
/// `variant=int8, parent_version=N` the INT8 variant of version N); returns the
/// manifest the registry stored.
pub async fn publish(
    registry: &RegistryClient,
    up: &Upload<'_>,
) -> Result<pb::ModelManifest, ProvisionError> {
    let bytes = std::fs::read(up.file).map_err(ProvisionError::read(up.file))?;
    let mut sidecars = Vec::new();
    for path in up.sidecars {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                ProvisionError::Invalid(format!("sidecar {}: no file name", path.display()))
            })?
            .to_owned();
        let data = std::fs::read(path).map_err(ProvisionError::read(path))?;
        sidecars.push(pb::Sidecar { name, data });
    }
    let mut msgs = vec![header(up, &sidecars)];
    msgs.extend(sidecars.into_iter().map(|s| pb::PublishModelRequest {
        part: Some(pb::publish_model_request::Part::Sidecar(s)),
    }));
    msgs.extend(bytes.chunks(CHUNK).map(|c| pb::PublishModelRequest {
        part: Some(pb::publish_model_request::Part::Chunk(c.to_vec())),
    }));
    registry
        .publish(msgs, Deadline::Default)
        .await
        .map_err(ProvisionError::rpc("PublishModel"))?
        .manifest
        .ok_or_else(|| ProvisionError::Invalid("PublishModel answered no manifest".into()))
}

/// The first message of an upload: name, signature, metadata, sidecar names.
fn header(up: &Upload<'_>, sidecars: &[pb::Sidecar]) -> pb::PublishModelRequest {
    let spec = |names: &[String]| {
        names
            .iter()
            .map(|n| pb::TensorSpec {
                name: n.clone(),
                dtype: String::new(),
                shape: vec![],
            })
            .collect()
    };
    pb::PublishModelRequest {
        part: Some(pb::publish_model_request::Part::Header(pb::PublishHeader {
            name: up.name.to_owned(),
            signature: Some(pb::ModelSignature {
                inputs: spec(up.inputs),
                outputs: spec(up.outputs),
            }),
            metadata: up.metadata.iter().cloned().collect(),
            quantize_int8: up.quantize_int8,
            sidecar_names: sidecars.iter().map(|s| s.name.clone()).collect(),
        })),
    }
}

/// The production manifest of `name`, if it has one.
pub async fn production(
    registry: &RegistryClient,
    name: &str,
) -> Result<Option<pb::ModelManifest>, ProvisionError> {
    let req = pb::GetModelRequest {
        name: name.to_owned(),
        version: 0,
        variant: String::new(),
    };
    match registry.get_model(req, Deadline::Default).await {
        Ok(m) => Ok(Some(m)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(ProvisionError::rpc("GetModel")(s)),
    }
}

/// Makes `version` of `name` production, or with `canary` the canary at that
/// percentage of traffic; returns the stages as the registry stored them.
pub async fn promote(
    registry: &RegistryClient,
    name: &str,
    version: u64,
    canary: Option<u32>,
    reason: &str,
) -> Result<pb::SetStageResponse, ProvisionError> {
    let (stage, percent) = match canary {
        Some(p) => (pb::Stage::Canary, p),
        None => (pb::Stage::Production, 0),
    };
    let req = pb::SetStageRequest {
        name: name.to_owned(),
        version,
        stage: stage as i32,
        percent,
        reason: reason.to_owned(),
        expected_revision: 0,
    };
    registry
        .set_stage(req, Deadline::Default)
        .await
        .map_err(ProvisionError::rpc("SetStage"))
}

/// A model a local mesh serves from its registry.
struct DefaultModel {
    name: &'static str,
    fp32: PathBuf,
    /// Published as the INT8 variant of the same version (replicas on CPU pick it).
    int8: Option<PathBuf>,
    sidecars: Vec<PathBuf>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// Publishes the encoder (FP32, its INT8 variant and tokenizer) from `models` and,
/// if given, the ranker in `ranker`, and makes both production unless production
/// already is that exact file (a restarted mesh keeps its registry). Returns the
/// manifests it published.
pub async fn publish_defaults(
    registry: &RegistryClient,
    models: &Path,
    ranker: Option<&Path>,
) -> Result<Vec<pb::ModelManifest>, ProvisionError> {
    let encoder = models.join("encoder");
    let mut published = publish_default(
        registry,
        &DefaultModel {
            name: ENCODER_MODEL,
            fp32: encoder.join("fp32/model.onnx"),
            int8: Some(encoder.join("int8/model.onnx")),
            sidecars: vec![encoder.join("fp32/tokenizer.json")],
            inputs: ["input_ids", "attention_mask", "token_type_ids"]
                .map(String::from)
                .to_vec(),
            outputs: vec!["sentence_embedding".into()],
        },
    )
    .await
    .map_err(|e| ProvisionError::Default {
        model: "encoder",
        hint: " (run scripts/setup to export it)",
        source: Box::new(e),
    })?;
    if let Some(dir) = ranker {
        let ranker = DefaultModel {
            name: RANKER_MODEL,
            fp32: dir.join("model.onnx"),
            int8: None,
            sidecars: vec![],
            inputs: vec!["features".into()],
            outputs: vec!["score".into()],
        };
        published.extend(publish_default(registry, &ranker).await.map_err(|e| {
            ProvisionError::Default {
                model: "ranker",
                hint: "",
                source: Box::new(e),
            }
        })?);
    }
    Ok(published)
}

/// Publishes one default model (and its INT8 variant) and makes it production,
/// unless production already is this exact file.
async fn publish_default(
    registry: &RegistryClient,
    d: &DefaultModel,
) -> Result<Vec<pb::ModelManifest>, ProvisionError> {
    use sha2::Digest;
    let bytes = std::fs::read(&d.fp32).map_err(ProvisionError::read(&d.fp32))?;
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let current = production(registry, d.name).await?;
    if current.is_some_and(|m| m.sha256_plaintext == digest) {
        return Ok(Vec::new());
    }
    let mut up = Upload {
        name: d.name,
        file: &d.fp32,
        inputs: &d.inputs,
        outputs: &d.outputs,
        metadata: vec![("source".into(), d.fp32.display().to_string())],
        sidecars: &d.sidecars,
        quantize_int8: false,
    };
    let m = publish(registry, &up).await?;
    let mut published = vec![m.clone()];
    if let Some(int8) = &d.int8 {
        up.file = int8;
        up.metadata = vec![
            ("source".into(), int8.display().to_string()),
            ("variant".into(), "int8".into()),
            ("parent_version".into(), m.version.to_string()),
        ];
        published.push(publish(registry, &up).await?);
    }
    let reason = format!("meshctl up: {}", d.fp32.display());
    promote(registry, d.name, m.version, None, &reason).await?;
    Ok(published)
}
