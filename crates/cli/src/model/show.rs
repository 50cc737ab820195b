//! `meshctl model show`, and the signature status `model list` prints per version:
//! a manifest as a replica will trust it, its signature checked against the
//! registry's public key here, not taken on the registry's word.

use std::path::Path;

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use rankmesh_artifact::envelope::{CIPHER, SIGNATURE_SCHEME};
use rankmesh_artifact::fetch::{verify_key, verify_manifest};
use rankmesh_artifact::manifest::Manifest;
use rankmesh_client::RegistryClient;
use rankmesh_proto::pb::registry::v1 as pb;

use rankmesh_client::Deadline;
use rankmesh_common::server::format_ms;

use crate::args::status;

/// What a version's signature says.
#[derive(Debug)]
pub(super) enum Signature {
    /// Signed by the registry's key, and the registry's unsigned fields agree.
    Valid(Box<Manifest>),
    /// A replica would refuse this version; why.
    Invalid(String),
    /// No public key to check it with.
    Unchecked,
}

impl Signature {
    pub(super) fn word(&self) -> &'static str {
        match self {
            Self::Valid(_) => "valid",
            Self::Invalid(_) => "INVALID",
            Self::Unchecked => "unchecked",
        }
    }
}

/// The registry's public key, to check signatures with.
#[derive(Debug)]
pub(super) struct Verifier {
    key: Option<(VerifyingKey, String)>,
}

impl Verifier {
    /// `given` (hex), else the public half of the local mesh's signing key when
    /// `state_dir` has one (`meshctl up` wrote it), else none: signatures are then
    /// reported unchecked, never valid.
    pub(super) fn new(given: Option<&str>, state_dir: &Path) -> anyhow::Result<Self> {
        let hex = match given {
            Some(h) => Some(h.to_owned()),
            None => match rankmesh_launcher::existing_secrets(state_dir)? {
                Some(s) => Some(rankmesh_launcher::verify_key_hex(&s.signing_key)?),
                None => None,
            },
        };
        let key = match hex {
            Some(h) => Some((
                verify_key(&h).map_err(|e| anyhow::anyhow!("--verify-key: {e}"))?,
                h,
            )),
            None => None,
        };
        Ok(Self { key })
    }

    /// The key's hex, for the report.
    pub(super) fn key_hex(&self) -> Option<&str> {
        self.key.as_ref().map(|(_, h)| h.as_str())
    }

    pub(super) fn check(&self, m: &pb::ModelManifest) -> Signature {
        let Some((key, _)) = &self.key else {
            return Signature::Unchecked;
        };
        let signed = match verify_manifest(key, &m.signed_manifest, &m.signature_ed25519) {
            Ok(s) => s,
            Err(e) => return Signature::Invalid(e),
        };
        let mut differ = Vec::new();
        let mut same = |field: &str, ok: bool| {
            if !ok {
                differ.push(field.to_owned());
            }
        };
        same("name", signed.name == m.name);
        same("version", signed.version == m.version);
        same("variant", signed.variant == m.variant);
        same(
            "sha256",
            signed.sealed.sha256_plaintext == m.sha256_plaintext,
        );
        same(
            "ciphertext sha256",
            signed.sealed.sha256_ciphertext == m.sha256_ciphertext,
        );
        same("size", signed.sealed.size_bytes == m.size_bytes);
        same("key id", signed.sealed.key_id == m.key_id);
        if differ.is_empty() {
            Signature::Valid(Box::new(signed))
        } else {
            Signature::Invalid(format!(
                "the registry's {} differ from the signed manifest",
                differ.join(", ")
            ))
        }
    }
}

/// Prints the manifest of `name` `version` (0: production) in every variant, its
/// signature checked, and the model's stage history.
pub(super) async fn show(
    registry: &RegistryClient,
    name: &str,
    version: u64,
    verifier: &Verifier,
    json: bool,
) -> anyhow::Result<()> {
    let model = summaries(registry, name)
        .await?
        .into_iter()
        .find(|m| m.name == name)
        .with_context(|| format!("no model named {name:?} in the registry"))?;
    let version = match version {
        0 if model.production_version == 0 => {
            anyhow::bail!("{name} has no production version; name the version to show")
        }
        0 => model.production_version,
        v => v,
    };
    let variants: Vec<&pb::ModelManifest> = model
        .versions
        .iter()
        .filter(|m| m.version == version)
        .collect();
    anyhow::ensure!(
        !variants.is_empty(),
        "{name} has no version {version} (meshctl model list {name})"
    );
    let checked: Vec<Signature> = variants.iter().map(|m| verifier.check(m)).collect();
    if json {
        let out = serde_json::json!({
            "name": name,
            "version": version,
            "production_version": model.production_version,
            "canary_version": model.canary_version,
            "canary_percent": model.canary_percent,
            "verify_key": verifier.key_hex(),
            "variants": variants.iter().zip(&checked).map(|(m, s)| variant_json(m, s)).collect::<Vec<_>>(),
            "history": model.history.iter().map(|h| serde_json::json!({ "at_ms": h.at_ms, "description": h.description })).collect::<Vec<_>>(),
        });
        println!("{out:#}");
        return Ok(());
    }
    let stage = variants[0].stage.as_str();
    println!(
        "{name} v{version}{}",
        if stage.is_empty() {
            String::new()
        } else {
            format!(" ({stage})")
        }
    );
    for (m, s) in variants.iter().zip(&checked) {
        print_variant(m, s, verifier);
    }
    println!("  stage history");
    for h in &model.history {
        println!("    {} {}", format_ms(h.at_ms), h.description);
    }
    Ok(())
}

fn print_variant(m: &pb::ModelManifest, s: &Signature, verifier: &Verifier) {
    println!("  variant {}", m.variant);
    if m.parent_version != 0 {
        println!("    made from   v{} fp32", m.parent_version);
    }
    println!("    created     {} UTC", format_ms(m.created_ms));
    println!("    size        {} bytes", m.size_bytes);
    println!("    sha256      {}", m.sha256_plaintext);
    println!(
        "    encrypted   {CIPHER}, data key wrapped under master key {:?}",
        m.key_id
    );
    println!("    ciphertext  sha256 {}", m.sha256_ciphertext);
    let by = verifier
        .key_hex()
        .unwrap_or("no key: pass --verify-key HEX");
    match s {
        Signature::Valid(_) => println!("    signature   {SIGNATURE_SCHEME}, valid (key {by})"),
        Signature::Invalid(why) => {
            println!("    signature   {SIGNATURE_SCHEME}, INVALID (key {by}): {why}")
        }
        Signature::Unchecked => println!("    signature   {SIGNATURE_SCHEME}, unchecked ({by})"),
    }
    if let Signature::Valid(signed) = s {
        let tensors = |ts: &[rankmesh_artifact::manifest::Tensor]| {
            ts.iter()
                .map(|t| {
                    if t.dtype.is_empty() {
                        t.name.clone()
                    } else {
                        format!("{} {}{:?}", t.name, t.dtype, t.shape)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("    inputs      {}", tensors(&signed.inputs));
        println!("    outputs     {}", tensors(&signed.outputs));
        println!("    blob        {}", signed.blob);
        for sc in &signed.sidecars {
            println!(
                "    sidecar     {} ({} bytes, sha256 {})",
                sc.name, sc.sealed.size_bytes, sc.sealed.sha256_plaintext
            );
        }
    }
    let mut meta: Vec<_> = m.metadata.iter().collect();
    meta.sort();
    for (k, v) in meta {
        println!("    meta        {k}={v}");
    }
}

fn variant_json(m: &pb::ModelManifest, s: &Signature) -> serde_json::Value {
    let mut v = serde_json::json!({
        "variant": m.variant,
        "parent_version": m.parent_version,
        "stage": m.stage,
        "created_ms": m.created_ms,
        "size_bytes": m.size_bytes,
        "sha256": m.sha256_plaintext,
        "sha256_ciphertext": m.sha256_ciphertext,
        "cipher": CIPHER,
        "key_id": m.key_id,
        "signature_scheme": SIGNATURE_SCHEME,
        "signature": s.word(),
        "metadata": m.metadata,
    });
    match s {
        Signature::Valid(signed) => {
            v["blob"] = signed.blob.clone().into();
            v["inputs"] = serde_json::json!(signed.inputs);
            v["outputs"] = serde_json::json!(signed.outputs);
            v["sidecars"] = signed
                .sidecars
                .iter()
                .map(|s| serde_json::json!({ "name": s.name, "size_bytes": s.sealed.size_bytes, "sha256": s.sealed.sha256_plaintext }))
                .collect();
        }
        Signature::Invalid(why) => v["signature_error"] = why.clone().into(),
        Signature::Unchecked => {}
    }
    v
}

/// Every model's versions and stages (`name` empty), or just `name`'s.
pub(super) async fn summaries(
    registry: &RegistryClient,
    name: &str,
) -> anyhow::Result<Vec<pb::ModelSummary>> {
    let req = pb::ListModelsRequest {
        name: name.to_owned(),
    };
    let r = registry
        .list_models(req, Deadline::Default)
        .await
        .map_err(status)?;
    Ok(r.models)
}
