//! The `ModelRegistry` gRPC API over [`ModelDb`] (etcd) and [`Blobs`] (object store).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use futures::Stream;
use rankmesh_common::onnx::OnnxConfig;
use rankmesh_proto::limits::MAX_CHUNK_BYTES;
use rankmesh_proto::pb::registry::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Status, Streaming};

use crate::envelope::{self, MasterKeys};
use crate::error::RegistryError;
use crate::store::{Blobs, Manifest, ModelDb, SidecarEntry, StoreError, Tensor};

/// Bytes per FetchModel message.
const FETCH_CHUNK: usize = 1 << 20;

/// The registry's state.
pub struct Registry {
    pub db: ModelDb,
    pub blobs: Blobs,
    /// The configured master keys; which one wraps new data keys is the id a
    /// RotateKey recorded in etcd (shared by every registry, kept across
    /// restarts), else the configured `current_key`.
    pub keys: MasterKeys,
    pub signing: SigningKey,
    /// Bearer token for writes; never logged.
    pub admin_token: String,
    pub max_artifact_bytes: u64,
    /// Cap per FetchModel stream (0: none).
    pub fetch_bytes_per_s: u64,
    pub onnx: OnnxConfig,
    /// What makes INT8 variants at publish (`quantize_int8`).
    pub quantizer: crate::quantize::QuantizerConfig,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// A checked publish header: what will be stored, before any bytes arrive.
struct Plan {
    name: String,
    variant: String,
    /// The fp32 version an INT8 variant belongs to.
    parent: Option<Manifest>,
    metadata: BTreeMap<String, String>,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    sidecar_names: Vec<String>,
    /// Make and check the INT8 variant too (`quantize_int8`).
    quantize: bool,
}

/// The first message of an upload, which must be the header.
async fn read_header(
    stream: &mut (impl Stream<Item = Result<pb::PublishModelRequest, Status>> + Unpin),
) -> Result<pb::PublishHeader, RegistryError> {
    match stream.next().await {
        Some(Ok(pb::PublishModelRequest {
            part: Some(pb::publish_model_request::Part::Header(h)),
        })) => Ok(h),
        Some(Ok(_)) => Err(RegistryError::Invalid(
            "header: the first message must be the header".into(),
        )),
        Some(Err(e)) => Err(RegistryError::upload_broken(&e)),
        None => Err(RegistryError::Invalid("header: empty upload".into())),
    }
}

fn to_specs(ts: &[Tensor]) -> Vec<pb::TensorSpec> {
    ts.iter()
        .map(|t| pb::TensorSpec {
            name: t.name.clone(),
            dtype: t.dtype.clone(),
            shape: t.shape.clone(),
        })
        .collect()
}

fn stage_response(s: &crate::store::Stages, revision: i64) -> pb::SetStageResponse {
    pb::SetStageResponse {
        production_version: s.production,
        canary_version: s.canary,
        canary_percent: s.canary_percent,
        revision,
    }
}

/// The proto form of a manifest, with its current stage.
pub fn to_proto(m: &Manifest, stage: &str) -> pb::ModelManifest {
    // Listed where it was found; the signed bytes say what it really is.
    let (version, variant) = m.listing();
    pb::ModelManifest {
        name: m.name.clone(),
        version,
        variant: variant.to_owned(),
        parent_version: m.parent_version,
        signature: Some(pb::ModelSignature {
            inputs: to_specs(&m.inputs),
            outputs: to_specs(&m.outputs),
        }),
        metadata: m.metadata.clone().into_iter().collect(),
        sha256_plaintext: m.sealed.sha256_plaintext.clone(),
        sha256_ciphertext: m.sealed.sha256_ciphertext.clone(),
        size_bytes: m.sealed.size_bytes,
        key_id: m.sealed.key_id.clone(),
        created_ms: m.created_ms,
        signature_ed25519: envelope::decode_hex(&m.signature).unwrap_or_default(),
        stage: stage.to_owned(),
        wrapped_key: m.sealed.wrapped_key.clone(),
        signed_manifest: m.canonical(),
        signed_manifest_sha256: m.signed_sha256.clone(),
        signer: m.signer.clone(),
    }
}

/// Element type names as ort prints them, mapped to the proto's names.
fn dtype_name(t: &ort::value::ValueType) -> (String, Vec<i64>) {
    match t {
        ort::value::ValueType::Tensor { ty, shape, .. } => {
            let name = format!("{ty:?}").to_lowercase();
            (name, shape.iter().copied().collect())
        }
        other => (format!("{other:?}"), Vec::new()),
    }
}

/// Loads the model in ONNX Runtime and checks it has the declared interface.
fn validate(
    model: &[u8],
    inputs: &[Tensor],
    outputs: &[Tensor],
    onnx: &OnnxConfig,
) -> Result<(), String> {
    let (session, _) = rankmesh_common::onnx::build_session(model, onnx)
        .map_err(|e| format!("does not load: {e}"))?;
    let check = |kind: &str,
                 declared: &[Tensor],
                 actual: Vec<(String, (String, Vec<i64>))>|
     -> Result<(), String> {
        for d in declared {
            let Some((_, (dtype, shape))) = actual.iter().find(|(n, _)| n == &d.name) else {
                let names: Vec<&str> = actual.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "{kind} {:?} not in the model (it has {names:?})",
                    d.name
                ));
            };
            if !d.dtype.is_empty() && &d.dtype != dtype {
                return Err(format!(
                    "{kind} {:?}: declared {}, model has {dtype}",
                    d.name, d.dtype
                ));
            }
            if !d.shape.is_empty() {
                let fits = d.shape.len() == shape.len()
                    && d.shape
                        .iter()
                        .zip(shape)
                        .all(|(want, got)| *want == -1 || *got == -1 || want == got);
                if !fits {
                    return Err(format!(
                        "{kind} {:?}: declared shape {:?}, model has {shape:?}",
                        d.name, d.shape
                    ));
                }
            }
        }
        Ok(())
    };
    let ins = session
        .inputs()
        .iter()
        .map(|i| (i.name().to_owned(), dtype_name(i.dtype())))
        .collect();
    let outs = session
        .outputs()
        .iter()
        .map(|o| (o.name().to_owned(), dtype_name(o.dtype())))
        .collect();
    check("input", inputs, ins)?;
    check("output", outputs, outs)
}

impl Registry {
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), RegistryError> {
        if self.admin_token.is_empty() {
            return Err(RegistryError::Precondition(
                "writes are disabled: no admin token configured".into(),
            ));
        }
        let Some(v) = req.metadata().get("authorization") else {
            return Err(RegistryError::Unauthenticated(
                "authorization: Bearer <admin token> required".into(),
            ));
        };
        let presented = v
            .to_str()
            .unwrap_or_default()
            .strip_prefix("Bearer ")
            .unwrap_or_default();
        // Constant-time comparison: do not leak the token's prefix through timing.
        let a = presented.as_bytes();
        let b = self.admin_token.as_bytes();
        let same =
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        if same {
            Ok(())
        } else {
            Err(RegistryError::PermissionDenied("wrong admin token".into()))
        }
    }

    fn stage_of(stages: &crate::store::Stages, version: u64) -> &'static str {
        if stages.production == version && version != 0 {
            "production"
        } else if stages.canary == version && version != 0 {
            "canary"
        } else if stages.previous.contains(&version) {
            "previous"
        } else {
            ""
        }
    }

    /// Publishes one artifact; see the proto. Nothing is visible until the signed
    /// manifest is written, last: a failure at any step stores no version.
    pub async fn publish(
        &self,
        mut stream: impl Stream<Item = Result<pb::PublishModelRequest, Status>> + Unpin,
    ) -> Result<pb::PublishModelResponse, RegistryError> {
        let header = read_header(&mut stream).await?;
        let plan = self.plan(header).await?;
        let (model, sidecars) = self.receive(&mut stream, &plan.sidecar_names).await?;
        let model = Arc::new(model);
        self.validate(&model, &plan).await?;
        // Quantized and checked before anything is stored: a variant below its
        // bound refuses the whole upload.
        let int8 = if plan.quantize {
            let tokenizer = sidecars.get("tokenizer.json").map(Vec::as_slice);
            let q = crate::quantize::int8(&self.quantizer, &model, tokenizer).await?;
            let q_model = Arc::new(q.model);
            self.validate(&q_model, &plan).await?;
            Some((q_model, q.metadata, plan.metadata.clone()))
        } else {
            None
        };
        let (name, inputs, outputs, sidecar_names) = (
            plan.name.clone(),
            plan.inputs.clone(),
            plan.outputs.clone(),
            plan.sidecar_names.clone(),
        );
        let manifest = self.seal(plan, &model, &sidecars).await?;
        self.commit(&manifest).await?;
        tracing::info!(name = %manifest.name, version = manifest.version, variant = %manifest.variant, bytes = manifest.sealed.size_bytes, sidecars = manifest.sidecars.len(), "model published");
        if let Some((q_model, figures, mut metadata)) = int8 {
            metadata.extend(figures);
            metadata.insert("variant".into(), "int8".into());
            metadata.insert("parent_version".into(), manifest.version.to_string());
            let plan = Plan {
                name,
                variant: "int8".into(),
                parent: Some(manifest.clone()),
                metadata,
                inputs,
                outputs,
                sidecar_names,
                quantize: false,
            };
            let m = self.seal(plan, &q_model, &sidecars).await?;
            self.commit(&m).await?;
            tracing::info!(name = %m.name, version = m.version, bytes = m.sealed.size_bytes, check = %m.metadata.get("int8_check").map_or("", String::as_str), "int8 variant made and published");
        }
        Ok(pb::PublishModelResponse {
            manifest: Some(to_proto(&manifest, "")),
        })
    }

    /// Checks the header and resolves what it names: the variant, its fp32 parent
    /// (an INT8 variant is stored under its parent's version, so a replica asking
    /// for version N picks the variant its hardware wants) and the interface.
    async fn plan(&self, header: pb::PublishHeader) -> Result<Plan, RegistryError> {
        let crate::requests::Header {
            name,
            variant,
            parent_version,
            metadata,
            mut inputs,
            mut outputs,
            sidecar_names,
            quantize,
        } = crate::requests::validate_publish_header(&header)?;
        let parent = if variant == "int8" {
            Some(
                self.db
                    .manifest(&name, parent_version, "fp32")
                    .await?
                    .ok_or_else(|| {
                        RegistryError::Invalid(format!(
                            "metadata.parent_version: {name} v{parent_version} (fp32) does not exist"
                        ))
                    })?,
            )
        } else {
            None
        };
        if let Some(p) = &parent
            && inputs.is_empty()
            && outputs.is_empty()
        {
            // The variant must serve the same interface as its parent.
            (inputs, outputs) = (p.inputs.clone(), p.outputs.clone());
        }
        Ok(Plan {
            name,
            variant: variant.to_owned(),
            parent,
            metadata,
            inputs,
            outputs,
            sidecar_names,
            quantize,
        })
    }

    /// Loads the artifact in ONNX Runtime and checks it serves the declared
    /// interface.
    async fn validate(&self, model: &Arc<Vec<u8>>, plan: &Plan) -> Result<(), RegistryError> {
        let (m, i, o, onnx) = (
            Arc::clone(model),
            plan.inputs.clone(),
            plan.outputs.clone(),
            self.onnx.clone(),
        );
        tokio::task::spawn_blocking(move || validate(&m, &i, &o, &onnx))
            .await
            .map_err(|e| RegistryError::internal("validating the artifact", e))?
            .map_err(|e| RegistryError::Invalid(format!("artifact: {e}")))
    }

    /// Takes the version number and seals the artifact and its sidecars, each under
    /// a fresh data key, into the object store; returns the signed manifest.
    async fn seal(
        &self,
        plan: Plan,
        model: &[u8],
        sidecars: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Manifest, RegistryError> {
        let version = match &plan.parent {
            Some(p) => p.version,
            None => self.db.next_version(&plan.name).await?,
        };
        let keys = self.sealing_keys().await?;
        let mut manifest = Manifest {
            name: plan.name,
            version,
            variant: plan.variant,
            parent_version: plan.parent.as_ref().map_or(0, |p| p.version),
            inputs: plan.inputs,
            outputs: plan.outputs,
            metadata: plan.metadata,
            sealed: envelope::Sealed::default(),
            blob: String::new(),
            created_ms: rankmesh_common::server::now_ms(),
            sidecars: Vec::new(),
            signature: String::new(),
            signed_sha256: String::new(),
            signer: String::new(),
            listed_as: None,
        };
        let (sealed, blob) = self.seal_and_put(&keys, &manifest, None, model).await?;
        (manifest.sealed, manifest.blob) = (sealed, blob);
        for (sidecar, bytes) in sidecars {
            let (sealed, blob) = self
                .seal_and_put(&keys, &manifest, Some(sidecar), bytes)
                .await?;
            manifest.sidecars.push(SidecarEntry {
                name: sidecar.clone(),
                blob,
                sealed,
            });
        }
        manifest.sign(&self.signing);
        Ok(manifest)
    }

    /// Writes the signed manifest (create-only): from here the version exists.
    async fn commit(&self, manifest: &Manifest) -> Result<(), RegistryError> {
        self.db.put_manifest(manifest).await.map_err(|e| match e {
            StoreError::Conflict(_) if manifest.variant == "int8" => {
                RegistryError::AlreadyExists(format!(
                    "{} v{} already has an int8 variant",
                    manifest.name, manifest.version
                ))
            }
            other => other.into(),
        })
    }

    /// Reads the artifact chunks and the sidecars named in the header.
    async fn receive(
        &self,
        stream: &mut (impl Stream<Item = Result<pb::PublishModelRequest, Status>> + Unpin),
        sidecar_names: &[String],
    ) -> Result<(Vec<u8>, BTreeMap<String, Vec<u8>>), RegistryError> {
        let mut model = Vec::new();
        let mut sidecars = BTreeMap::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|e| RegistryError::upload_broken(&e))?;
            match msg.part {
                Some(pb::publish_model_request::Part::Chunk(c)) => {
                    if c.len() > MAX_CHUNK_BYTES {
                        return Err(RegistryError::TooLarge(format!(
                            "chunk: {} bytes; at most {MAX_CHUNK_BYTES}",
                            c.len()
                        )));
                    }
                    if (model.len() + c.len()) as u64 > self.max_artifact_bytes {
                        return Err(RegistryError::TooLarge(format!(
                            "artifact larger than {} bytes",
                            self.max_artifact_bytes
                        )));
                    }
                    model.extend_from_slice(&c);
                }
                Some(pb::publish_model_request::Part::Sidecar(pb::Sidecar { name, data })) => {
                    if !sidecar_names.contains(&name) {
                        return Err(RegistryError::Invalid(format!(
                            "sidecar: {name:?} is not in the header's sidecar_names"
                        )));
                    }
                    if data.len() > MAX_CHUNK_BYTES {
                        return Err(RegistryError::TooLarge(format!(
                            "sidecar {name:?}: {} bytes; at most {MAX_CHUNK_BYTES}",
                            data.len()
                        )));
                    }
                    if sidecars.insert(name.clone(), data).is_some() {
                        return Err(RegistryError::Invalid(format!(
                            "sidecar: {name:?} sent twice"
                        )));
                    }
                }
                _ => {
                    return Err(RegistryError::Invalid(
                        "chunk: only one header per upload".into(),
                    ));
                }
            }
        }
        if model.is_empty() {
            return Err(RegistryError::Invalid("chunk: no artifact bytes".into()));
        }
        if let Some(missing) = sidecar_names.iter().find(|n| !sidecars.contains_key(*n)) {
            return Err(RegistryError::Invalid(format!(
                "sidecar: {missing:?} was named in the header but not sent"
            )));
        }
        Ok((model, sidecars))
    }

    /// Encrypts `plaintext` under a fresh data key and stores the ciphertext.
    async fn seal_and_put(
        &self,
        keys: &MasterKeys,
        manifest: &Manifest,
        sidecar: Option<&str>,
        plaintext: &[u8],
    ) -> Result<(envelope::Sealed, String), RegistryError> {
        let context = manifest.context(sidecar);
        let (ciphertext, sealed) = envelope::seal(keys, &context, plaintext)?;
        let blob = format!("models/{context}.bin");
        self.blobs.put(&blob, Bytes::from(ciphertext)).await?;
        Ok((sealed, blob))
    }

    pub async fn get(&self, req: pb::GetModelRequest) -> Result<pb::ModelManifest, RegistryError> {
        let pb::GetModelRequest { name, version, .. } = &req;
        let variant = crate::requests::validate_get_model(&req)?;
        let (name, version) = (name.as_str(), *version);
        let (stages, _) = self.db.stages(name).await?;
        let version = if version == 0 {
            stages.production
        } else {
            version
        };
        if version == 0 {
            return Err(RegistryError::NotFound(format!(
                "{name} has no production version"
            )));
        }
        let m = self
            .db
            .manifest(name, version, variant)
            .await?
            .ok_or_else(|| {
                RegistryError::NotFound(format!("{name} v{version} {variant} not found"))
            })?;
        Ok(to_proto(&m, Self::stage_of(&stages, version)))
    }

    pub async fn list(
        &self,
        req: pb::ListModelsRequest,
    ) -> Result<pb::ListModelsResponse, RegistryError> {
        crate::requests::validate_list_models(&req)?;
        let name = req.name.as_str();
        let all = self.db.list(name).await?;
        let mut by_name: BTreeMap<String, Vec<Manifest>> = BTreeMap::new();
        for m in all {
            by_name.entry(m.name.clone()).or_default().push(m);
        }
        let mut models = Vec::new();
        for (name, versions) in by_name {
            let (stages, revision) = self.db.stages(&name).await?;
            models.push(pb::ModelSummary {
                canary_since_ms: stages.canary_since_ms,
                stage_revision: revision,
                versions: versions
                    .iter()
                    .map(|m| to_proto(m, Self::stage_of(&stages, m.version)))
                    .collect(),
                production_version: stages.production,
                canary_version: stages.canary,
                canary_percent: stages.canary_percent,
                history: stages
                    .history
                    .iter()
                    .map(|h| pb::StageEvent {
                        at_ms: h.at_ms,
                        description: h.description.clone(),
                    })
                    .collect(),
                name,
            });
        }
        Ok(pb::ListModelsResponse { models })
    }

    /// Applies `change` (given the time, in ms) to `name`'s stage record at
    /// `expected_revision` (0: whatever is stored) and answers with what was stored.
    async fn change_stages(
        &self,
        name: &str,
        expected_revision: i64,
        mut change: impl FnMut(&mut crate::store::Stages, i64) -> Result<(), StoreError>,
    ) -> Result<pb::SetStageResponse, RegistryError> {
        let now = rankmesh_common::server::now_ms();
        let (s, rev) = self
            .db
            .update_stages(name, expected_revision, |s| change(s, now))
            .await?;
        Ok(stage_response(&s, rev))
    }

    pub async fn set_stage(
        &self,
        req: pb::SetStageRequest,
    ) -> Result<pb::SetStageResponse, RegistryError> {
        let stage = crate::requests::validate_set_stage(&req)?;
        let pb::SetStageRequest {
            name,
            version,
            stage: _,
            percent,
            reason,
            expected_revision,
        } = req;
        if self.db.manifest(&name, version, "fp32").await?.is_none() {
            return Err(RegistryError::NotFound(format!(
                "{name} v{version} not found"
            )));
        }
        self.change_stages(&name, expected_revision, |s, now| match stage {
            pb::Stage::Production => {
                s.promote(now, version, &reason);
                Ok(())
            }
            _ => s.start_canary(now, version, percent, &reason),
        })
        .await
    }

    pub async fn rollback(
        &self,
        req: pb::RollbackRequest,
    ) -> Result<pb::SetStageResponse, RegistryError> {
        crate::requests::validate_rollback(&req)?;
        let (name, reason) = (req.name.as_str(), &req.reason);
        self.change_stages(name, req.expected_revision, |s, now| {
            s.roll_back(now, name, reason)
        })
        .await
    }

    /// The master keys with the current one as etcd records it, so a registry
    /// wraps under the key the last rotation chose even if another registry ran
    /// it, or ran it before this one restarted.
    pub async fn sealing_keys(&self) -> Result<MasterKeys, RegistryError> {
        let mut keys = self.keys.clone();
        if let Some(id) = self.db.current_key().await? {
            keys.set_current(&id).map_err(|_| {
                RegistryError::Precondition(format!(
                    "the current master key {id:?} (recorded by a rotation) is not configured on this replica"
                ))
            })?;
        }
        Ok(keys)
    }

    /// Records `new_key_id` as the current master key in etcd (every registry
    /// seals under it from then on), then re-wraps every data key under it (blobs
    /// untouched), re-signing the manifests.
    pub async fn rotate(
        &self,
        req: pb::RotateKeyRequest,
    ) -> Result<pb::RotateKeyResponse, RegistryError> {
        crate::requests::validate_rotate_key(&req)?;
        let new_key_id = req.new_key_id.as_str();
        let mut keys = self.keys.clone();
        keys.set_current(new_key_id).map_err(|_| {
            RegistryError::Precondition(format!(
                "new_key_id: {new_key_id:?} is not configured on this replica"
            ))
        })?;
        // Recorded first, so a publish on another registry during the re-wrap
        // already seals under the new key; a re-run re-wraps what it missed.
        self.db.set_current_key(new_key_id).await?;
        let mut n = 0;
        for m in self.db.list("").await? {
            // A manifest under another version's key was copied there: it is
            // not re-signed as if it belonged (replicas refuse it as it is).
            if m.sealed.key_id == new_key_id || m.listed_as.is_some() {
                continue;
            }
            let rewrap = |sealed: &envelope::Sealed| envelope::rewrap(&keys, sealed);
            let mut updated = Manifest {
                sealed: rewrap(&m.sealed)?,
                ..m.clone()
            };
            for s in &mut updated.sidecars {
                s.sealed = rewrap(&s.sealed)?;
            }
            updated.sign(&self.signing);
            self.db.replace_manifest(&m, &updated).await?;
            n += 1;
        }
        Ok(pb::RotateKeyResponse { rewrapped: n })
    }
    /// Streams the ciphertext of an artifact (or one sidecar) from `offset`,
    /// paced to `fetch_bytes_per_s`.
    pub async fn fetch(&self, req: pb::FetchModelRequest) -> Result<FetchStream, RegistryError> {
        let variant = crate::requests::validate_fetch_model(&req)?;
        let pb::FetchModelRequest {
            name,
            version,
            offset,
            sidecar,
            ..
        } = req;
        let m = self
            .db
            .manifest(&name, version, variant)
            .await?
            .ok_or_else(|| {
                RegistryError::NotFound(format!("{name} v{version} {variant} not found"))
            })?;
        let blob = if sidecar.is_empty() {
            m.blob.clone()
        } else {
            m.sidecars
                .iter()
                .find(|s| s.name == sidecar)
                .map(|s| s.blob.clone())
                .ok_or_else(|| {
                    RegistryError::NotFound(format!("{name} v{version} has no sidecar {sidecar:?}"))
                })?
        };
        let total = self.blobs.size(&blob).await?;
        if offset > total {
            return Err(RegistryError::OutOfRange(format!(
                "offset: {offset} is beyond the artifact's {total} bytes"
            )));
        }
        let blobs = self.blobs.clone();
        let rate = self.fetch_bytes_per_s;
        let stream = futures::stream::unfold(offset, move |at| {
            let blobs = blobs.clone();
            let key = blob.clone();
            async move {
                if at >= total {
                    return None;
                }
                let len = (total - at).min(FETCH_CHUNK as u64);
                if rate > 0 {
                    // Pace the stream: each chunk waits its share of a second.
                    tokio::time::sleep(std::time::Duration::from_secs_f64(
                        len as f64 / rate as f64,
                    ))
                    .await;
                }
                match blobs.read(&key, at, len).await {
                    Ok(data) => {
                        let next = at + data.len() as u64;
                        Some((
                            Ok(pb::FetchModelResponse {
                                offset: at,
                                data: data.to_vec(),
                                total_bytes: total,
                            }),
                            next,
                        ))
                    }
                    Err(e) => Some((Err(Status::from(RegistryError::from(e))), total)),
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

/// The tonic service: authorizes writes and hands every call to [`Registry`];
/// errors become statuses in one place ([`RegistryError`]'s `From`).
#[derive(Debug, Clone)]
pub struct RegistryApi {
    inner: Arc<Registry>,
}

impl RegistryApi {
    pub fn new(inner: Arc<Registry>) -> Self {
        Self { inner }
    }
}

type FetchStream = Pin<Box<dyn Stream<Item = Result<pb::FetchModelResponse, Status>> + Send>>;

rankmesh_common::grpc_service! {
    impl pb::model_registry_server::ModelRegistry for RegistryApi {
        publish_model(Streaming<pb::PublishModelRequest>) -> pb::PublishModelResponse
            => publish if authorize;
        list_models(pb::ListModelsRequest) -> pb::ListModelsResponse => list;
        get_model(pb::GetModelRequest) -> pb::ModelManifest => get;
        fetch_model(pb::FetchModelRequest) -> FetchStream => fetch;
        set_stage(pb::SetStageRequest) -> pb::SetStageResponse => set_stage if authorize;
        rollback(pb::RollbackRequest) -> pb::SetStageResponse => rollback if authorize;
        rotate_key(pb::RotateKeyRequest) -> pb::RotateKeyResponse => rotate if authorize;
    }
    type FetchModelStream = FetchStream;
}
