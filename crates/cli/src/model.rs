//! `meshctl model`: publish, list, promote, roll back and rotate keys in the registry.
//! Writes take the admin token from `--token`, `RANKMESH_ADMIN_TOKEN`, or the local
//! mesh's secrets file.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rankmesh_proto::pb::registry::v1 as pb;
use tonic::transport::Channel;

fn authed<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the token must be ASCII")?,
    );
    Ok(r)
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

async fn client(
    addr: &str,
) -> anyhow::Result<pb::model_registry_client::ModelRegistryClient<Channel>> {
    Ok(pb::model_registry_client::ModelRegistryClient::new(
        rankmesh_client::connect(addr, Duration::from_secs(600)).await?,
    )
    .max_decoding_message_size(8 << 20))
}

/// Uploads `file` as the next version of `name`; `inputs`/`outputs` are the names the
/// artifact must have (checked by the registry in ONNX Runtime).
pub(crate) async fn publish(
    addr: &str,
    token: &str,
    name: &str,
    file: &Path,
    inputs: &[String],
    outputs: &[String],
    metadata: &[(String, String)],
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
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
    let mut msgs = vec![pb::PublishModelRequest {
        part: Some(pb::publish_model_request::Part::Header(pb::PublishHeader {
            name: name.to_owned(),
            signature: Some(pb::ModelSignature {
                inputs: spec(inputs),
                outputs: spec(outputs),
            }),
            metadata: metadata.iter().cloned().collect(),
            quantize_int8: false,
            sidecar_names: vec![],
        })),
    }];
    msgs.extend(bytes.chunks(1 << 20).map(|c| pb::PublishModelRequest {
        part: Some(pb::publish_model_request::Part::Chunk(c.to_vec())),
    }));
    let m = client(addr)
        .await?
        .publish_model(authed(futures::stream::iter(msgs), token)?)
        .await
        .map_err(status)?
        .into_inner()
        .manifest
        .context("no manifest in the reply")?;
    println!(
        "published {} v{} ({}, {} bytes, sha256 {}, key {})",
        m.name, m.version, m.variant, m.size_bytes, m.sha256_plaintext, m.key_id
    );
    Ok(())
}

pub(crate) async fn list(addr: &str, name: &str, json: bool) -> anyhow::Result<()> {
    let r = client(addr)
        .await?
        .list_models(pb::ListModelsRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(status)?
        .into_inner();
    if json {
        let out: Vec<_> = r
            .models
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name, "production": m.production_version, "canary": m.canary_version,
                    "canary_percent": m.canary_percent,
                    "versions": m.versions.iter().map(|v| serde_json::json!({
                        "version": v.version, "variant": v.variant, "size_bytes": v.size_bytes,
                        "stage": v.stage, "key_id": v.key_id, "created_ms": v.created_ms,
                    })).collect::<Vec<_>>(),
                    "history": m.history.iter().map(|h| serde_json::json!({ "at_ms": h.at_ms, "description": h.description })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(out));
        return Ok(());
    }
    for m in &r.models {
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
                "  v{:<4} {:<5} {:>12} bytes  key {:<8} {}",
                v.version, v.variant, v.size_bytes, v.key_id, v.stage
            );
        }
        for h in m.history.iter().rev().take(5) {
            println!("  {} {}", h.at_ms, h.description);
        }
    }
    Ok(())
}

pub(crate) async fn promote(
    addr: &str,
    token: &str,
    name: &str,
    version: u64,
    canary: Option<u32>,
    reason: &str,
) -> anyhow::Result<()> {
    let (stage, percent) = match canary {
        Some(p) => (pb::Stage::Canary, p),
        None => (pb::Stage::Production, 0),
    };
    let r = client(addr)
        .await?
        .set_stage(authed(
            pb::SetStageRequest {
                name: name.to_owned(),
                version,
                stage: stage as i32,
                percent,
                reason: reason.to_owned(),
                expected_revision: 0,
            },
            token,
        )?)
        .await
        .map_err(status)?
        .into_inner();
    println!(
        "{name}: production v{}, canary v{} at {}%",
        r.production_version, r.canary_version, r.canary_percent
    );
    Ok(())
}

pub(crate) async fn rollback(
    addr: &str,
    token: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let r = client(addr)
        .await?
        .rollback(authed(
            pb::RollbackRequest {
                name: name.to_owned(),
                reason: reason.to_owned(),
            },
            token,
        )?)
        .await
        .map_err(status)?
        .into_inner();
    println!("{name}: production is now v{}", r.production_version);
    Ok(())
}

pub(crate) async fn rotate(addr: &str, token: &str, key_id: &str) -> anyhow::Result<()> {
    let r = client(addr)
        .await?
        .rotate_key(authed(
            pb::RotateKeyRequest {
                new_key_id: key_id.to_owned(),
            },
            token,
        )?)
        .await
        .map_err(status)?
        .into_inner();
    println!("re-wrapped {} data keys under {key_id}", r.rewrapped);
    Ok(())
}
