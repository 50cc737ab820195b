//! `meshctl model`: publish, list, show, promote, roll back and rotate keys in the
//! registry. Writes take the admin token from `--token`, `RANKMESH_ADMIN_TOKEN`, or
//! the local mesh's secrets file; signatures are checked with `--verify-key` or the
//! local mesh's public key.

mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rankmesh_client::{Deadline, RegistryClient};
use rankmesh_common::server::format_ms;
use rankmesh_proto::pb::registry::v1 as pb;

use crate::args::{StateArgs, TargetArgs, parse_kv, status};
use show::{Verifier, show, summaries};

pub(crate) use rankmesh_provision::{registry, registry_at};

pub(crate) use rankmesh_provision::models::Upload;

/// Uploads an artifact (the next version of its name, or with metadata
/// `variant=int8, parent_version=N` the INT8 variant of version N) and says what
/// the registry stored.
pub(crate) async fn publish(
    registry: &RegistryClient,
    up: &Upload<'_>,
) -> anyhow::Result<pb::ModelManifest> {
    let m = rankmesh_provision::models::publish(registry, up).await?;
    print_published(&m);
    if up.quantize_int8 {
        // The registry made the INT8 variant with it: say what its check measured.
        let req = pb::GetModelRequest {
            name: m.name.clone(),
            version: m.version,
            variant: "int8".into(),
        };
        let v = registry
            .get_model(req, Deadline::Default)
            .await
            .map_err(status)
            .context("the INT8 variant the registry made")?;
        println!(
            "published {} v{} (int8, {} bytes): {}",
            v.name,
            v.version,
            v.size_bytes,
            v.metadata.get("int8_check").map_or("", String::as_str)
        );
    }
    Ok(m)
}

/// One published manifest, as meshctl says it.
pub(crate) fn print_published(m: &pb::ModelManifest) {
    println!(
        "published {} v{} ({}, {} bytes, sha256 {}, key {})",
        m.name, m.version, m.variant, m.size_bytes, m.sha256_plaintext, m.key_id
    );
}

async fn list(
    registry: &RegistryClient,
    name: &str,
    verifier: &Verifier,
    json: bool,
) -> anyhow::Result<()> {
    let models = summaries(registry, name).await?;
    if json {
        let out: Vec<_> = models
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name, "production": m.production_version, "canary": m.canary_version,
                    "canary_percent": m.canary_percent, "canary_since_ms": m.canary_since_ms,
                    "versions": m.versions.iter().map(|v| serde_json::json!({
                        "version": v.version, "variant": v.variant, "size_bytes": v.size_bytes,
                        "stage": v.stage, "key_id": v.key_id, "created_ms": v.created_ms,
                        "cipher": rankmesh_artifact::envelope::CIPHER, "signature": verifier.check(v).word(),
                        "metadata": v.metadata,
                    })).collect::<Vec<_>>(),
                    "history": m.history.iter().map(|h| serde_json::json!({ "at_ms": h.at_ms, "description": h.description })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(out));
        return Ok(());
    }
    for m in &models {
        println!(
            "{}: production v{}, canary {}",
            m.name,
            m.production_version,
            if m.canary_version == 0 {
                "none".to_owned()
            } else {
                format!("v{} at {}%", m.canary_version, m.canary_percent)
            }
        );
        for v in &m.versions {
            println!(
                "  v{:<4} {:<5} {:>12} bytes  {} key {:<8} signature {:<9} {}",
                v.version,
                v.variant,
                v.size_bytes,
                rankmesh_artifact::envelope::CIPHER,
                v.key_id,
                verifier.check(v).word(),
                v.stage
            );
            // Training figures (meshctl ranker train) say what a ranker is worth.
            let dev: Vec<String> = v
                .metadata
                .iter()
                .filter(|(k, _)| k.starts_with("dev_") || *k == "algo")
                .map(|(k, val)| format!("{k}={val}"))
                .collect();
            if !dev.is_empty() {
                let mut dev = dev;
                dev.sort();
                println!("        {}", dev.join(" "));
            }
        }
        for h in m.history.iter().rev().take(5) {
            println!("  {} {}", format_ms(h.at_ms), h.description);
        }
    }
    Ok(())
}

pub(crate) async fn promote(
    registry: &RegistryClient,
    name: &str,
    version: u64,
    canary: Option<u32>,
    reason: &str,
) -> anyhow::Result<()> {
    let r = rankmesh_provision::models::promote(registry, name, version, canary, reason).await?;
    print_stages(name, &r);
    Ok(())
}

/// The stages of `name` as the registry stored them after a SetStage or Rollback.
fn print_stages(name: &str, r: &pb::SetStageResponse) {
    let canary = match r.canary_version {
        0 => "none".to_owned(),
        v => format!("v{v} at {}%", r.canary_percent),
    };
    println!(
        "{name}: production v{}, canary {canary}",
        r.production_version
    );
}

pub(crate) async fn rollback(
    registry: &RegistryClient,
    name: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let req = pb::RollbackRequest {
        name: name.to_owned(),
        reason: reason.to_owned(),
        expected_revision: 0,
    };
    let r = registry
        .rollback(req, Deadline::Default)
        .await
        .map_err(status)?;
    print_stages(name, &r);
    Ok(())
}

pub(crate) async fn rotate(registry: &RegistryClient, key_id: &str) -> anyhow::Result<()> {
    let req = pb::RotateKeyRequest {
        new_key_id: key_id.to_owned(),
    };
    let r = registry
        .rotate_key(req, Deadline::Default)
        .await
        .map_err(status)?;
    println!("re-wrapped {} data keys under {key_id}", r.rewrapped);
    Ok(())
}

/// Model registry: publish, list, promote, roll back, rotate keys.
#[derive(Debug, clap::Args)]
pub(crate) struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
    #[command(flatten)]
    target: TargetArgs,
    /// Admin token for writes; default: RANKMESH_ADMIN_TOKEN, then the local
    /// mesh's secrets file.
    #[arg(long, env = "RANKMESH_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The registry's ed25519 public key (hex) to check manifest signatures with;
    /// default: the local mesh's. Without one, signatures show as unchecked.
    #[arg(long, env = "RANKMESH_VERIFY_KEY")]
    verify_key: Option<String>,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, clap::Subcommand)]
enum ModelCommand {
    /// Upload an ONNX file as the next version of NAME.
    Publish {
        name: String,
        file: PathBuf,
        /// Input names the artifact must have (comma-separated).
        #[arg(long, value_delimiter = ',')]
        inputs: Vec<String>,
        /// Output names the artifact must have (comma-separated).
        #[arg(long, value_delimiter = ',')]
        outputs: Vec<String>,
        /// key=value metadata (repeatable), e.g. variant=int8, parent_version=3.
        #[arg(long = "meta", value_parser = parse_kv)]
        metadata: Vec<(String, String)>,
        /// Extra file shipped with the model, e.g. tokenizer.json (repeatable).
        #[arg(long = "sidecar")]
        sidecars: Vec<PathBuf>,
        /// The INT8 variant of FILE (made offline), stored linked to the new version;
        /// replicas on CPU pick it, replicas on GPU the FP32 file.
        #[arg(long, conflicts_with = "quantize")]
        int8: Option<PathBuf>,
        /// Have the registry make the INT8 variant (dynamic per-channel quantization,
        /// scripts/quantize_model.py) and check it against FILE on a calibration set
        /// (an encoder needs its tokenizer.json as --sidecar); nothing is stored when
        /// it misses the registry's bound.
        #[arg(long, value_parser = ["int8"])]
        quantize: Option<String>,
    },
    /// Versions, stages and stage history; the cipher and signature status of each
    /// version.
    List {
        #[arg(default_value = "")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// One version's manifest in every variant: digests, size, cipher, key id,
    /// signature (checked here) and signing key, interface, sidecars, metadata
    /// (training metrics included), and the model's stage history.
    Show {
        name: String,
        /// Default: the production version.
        version: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Make VERSION production, or a canary with --canary PERCENT.
    Promote {
        name: String,
        version: u64,
        #[arg(long)]
        canary: Option<u32>,
        #[arg(long, default_value = "manual promotion")]
        reason: String,
    },
    /// End the running canary; without one, restore the previous production version.
    Rollback {
        name: String,
        #[arg(long, default_value = "manual rollback")]
        reason: String,
    },
    /// Re-wrap every data key under master key KEY_ID (configured on the registry).
    RotateKey { key_id: String },
}

pub(crate) async fn command(a: ModelArgs) -> anyhow::Result<ExitCode> {
    // The mesh whose token a write takes is the one whose identity it calls with.
    crate::args::install_identity(Some(&a.state.state_dir))?;
    let resolver = a.target.resolver("registry").await?;
    // Reads need no token; a write without one fails here, before any upload.
    let writes = !matches!(
        a.command,
        ModelCommand::List { .. } | ModelCommand::Show { .. }
    );
    let token = if writes {
        Some(rankmesh_launcher::admin_token(
            a.token.as_deref(),
            &a.state.state_dir,
        )?)
    } else {
        None
    };
    let registry = registry(resolver, token.as_deref());
    match a.command {
        ModelCommand::Publish {
            name,
            file,
            inputs,
            outputs,
            metadata,
            sidecars,
            int8,
            quantize,
        } => {
            let mut up = Upload {
                name: &name,
                file: &file,
                inputs: &inputs,
                outputs: &outputs,
                metadata,
                sidecars: &sidecars,
                quantize_int8: quantize.is_some(),
            };
            let m = publish(&registry, &up).await?;
            if let Some(int8) = &int8 {
                up.file = int8;
                up.quantize_int8 = false;
                up.metadata.push(("variant".into(), "int8".into()));
                up.metadata
                    .push(("parent_version".into(), m.version.to_string()));
                publish(&registry, &up).await?;
            }
        }
        ModelCommand::List { name, json } => {
            let verifier = Verifier::new(a.verify_key.as_deref(), &a.state.state_dir)?;
            list(&registry, &name, &verifier, json).await?
        }
        ModelCommand::Show {
            name,
            version,
            json,
        } => {
            let verifier = Verifier::new(a.verify_key.as_deref(), &a.state.state_dir)?;
            show(&registry, &name, version.unwrap_or(0), &verifier, json).await?
        }
        ModelCommand::Promote {
            name,
            version,
            canary,
            reason,
        } => promote(&registry, &name, version, canary, &reason).await?,
        ModelCommand::Rollback { name, reason } => rollback(&registry, &name, &reason).await?,
        ModelCommand::RotateKey { key_id } => rotate(&registry, &key_id).await?,
    }
    Ok(ExitCode::SUCCESS)
}
