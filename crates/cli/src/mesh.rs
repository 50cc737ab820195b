//! meshctl's local mesh: the launcher's processes (`rankmesh-launcher`) plus what
//! they serve: the default models published into its registry before the replicas
//! that fetch them start, and a catalog loaded into it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rankmesh_launcher::{
    ENCODER_MODEL, MeshState, Quantizer, RANKER_MODEL, RegistryHook, RegistryReady, UpOptions,
};

/// What a local mesh serves.
#[derive(Debug, Clone)]
pub(crate) struct Serve {
    /// Exported models (`encoder/` inside), as scripts/setup writes them.
    pub(crate) models: PathBuf,
    /// A trained ranker folder to publish and make production, if any.
    pub(crate) ranker: Option<PathBuf>,
    /// A catalog loaded into the feature service and indexed, if any.
    pub(crate) catalog: Option<PathBuf>,
}

/// Starts the mesh of `opts` serving `serve`: the default models are published
/// once its registry answers, the catalog loaded once every service is ready. On
/// any failure, stops what was started.
pub(crate) async fn up(opts: &UpOptions, serve: &Serve) -> anyhow::Result<MeshState> {
    let (models, ranker) = (serve.models.clone(), serve.ranker.clone());
    let publish: RegistryHook = Box::new(move |r: RegistryReady| {
        Box::pin(async move {
            publish_defaults(&r.addr, &r.admin_token, &models, ranker.as_deref())
                .await
                .map_err(Into::into)
        })
    });
    let mesh = rankmesh_launcher::up(opts, Some(publish)).await?;
    if let Some(file) = &serve.catalog
        && let Err(e) = load_catalog(&mesh, file).await
    {
        rankmesh_launcher::stop(&mesh, Duration::from_secs(10)).await;
        rankmesh_launcher::down(&opts.state_dir).await.ok();
        return Err(e.context("loading the catalog into the mesh"));
    }
    Ok(mesh)
}

/// Imports `file` into the mesh's feature service (features, lexical search) and
/// rebuilds the embedding index from it.
pub(crate) async fn load_catalog(mesh: &MeshState, file: &Path) -> anyhow::Result<()> {
    crate::catalog::import(&mesh.grpc_of("feature")?, file, None, true).await?;
    crate::embed::build_index(&mesh.grpc_of("embedding")?).await
}

/// The venv's Python and `scripts/quantize_model.py` of the checkout whose
/// `models/` the mesh serves, when both are there: the registry's INT8 quantizer.
pub(crate) fn quantizer(models: &Path) -> Option<Quantizer> {
    let root = std::fs::canonicalize(models).ok()?.parent()?.to_owned();
    let tool = crate::args::PythonTool::new(None, root.join("scripts/quantize_model.py"));
    let python = if tool.python.is_absolute() {
        tool.python
    } else {
        root.join(tool.python)
    };
    (python.exists() && tool.script.exists()).then_some(Quantizer {
        python,
        script: tool.script,
    })
}

/// Publishes the encoder (FP32, its INT8 variant and tokenizer) from `models` and,
/// if given, the ranker in `ranker`, and makes both production (unless they already
/// are): what `meshctl up` and `meshctl bootstrap` serve.
pub(crate) async fn publish_defaults(
    registry: &str,
    token: &str,
    models: &Path,
    ranker: Option<&Path>,
) -> anyhow::Result<()> {
    let encoder = models.join("encoder");
    publish_default(
        registry,
        token,
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
    .context("publishing the encoder (run scripts/setup to export it)")?;
    if let Some(dir) = ranker {
        publish_default(
            registry,
            token,
            &DefaultModel {
                name: RANKER_MODEL,
                fp32: dir.join("model.onnx"),
                int8: None,
                sidecars: vec![],
                inputs: vec!["features".into()],
                outputs: vec!["score".into()],
            },
        )
        .await
        .context("publishing the ranker")?;
    }
    Ok(())
}

/// A model `meshctl up` serves from the registry.
struct DefaultModel {
    name: &'static str,
    fp32: PathBuf,
    /// Published as the INT8 variant of the same version (replicas on CPU pick it).
    int8: Option<PathBuf>,
    sidecars: Vec<PathBuf>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// Publishes a default model and makes it production, unless production already
/// is this exact file (a restarted mesh keeps its registry in the state directory).
async fn publish_default(registry: &str, token: &str, d: &DefaultModel) -> anyhow::Result<()> {
    use sha2::Digest;
    let registry = &crate::model::registry_at(registry, Some(token));
    let bytes = std::fs::read(&d.fp32).with_context(|| format!("read {}", d.fp32.display()))?;
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let current = crate::model::production(registry, d.name).await?;
    if current
        .as_ref()
        .is_some_and(|m| m.sha256_plaintext == digest)
    {
        return Ok(());
    }
    let mut up = crate::model::Upload {
        name: d.name,
        file: &d.fp32,
        inputs: &d.inputs,
        outputs: &d.outputs,
        metadata: vec![("source".into(), d.fp32.display().to_string())],
        sidecars: &d.sidecars,
        quantize_int8: false,
    };
    let m = crate::model::publish(registry, &up).await?;
    if let Some(int8) = &d.int8 {
        up.file = int8;
        up.metadata = vec![
            ("source".into(), int8.display().to_string()),
            ("variant".into(), "int8".into()),
            ("parent_version".into(), m.version.to_string()),
        ];
        crate::model::publish(registry, &up).await?;
    }
    crate::model::promote(
        registry,
        d.name,
        m.version,
        None,
        &format!("meshctl up: {}", d.fp32.display()),
    )
    .await
}
