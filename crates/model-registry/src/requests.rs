//! Request checks for every ModelRegistry RPC, before etcd or the object store is
//! touched. They are pure functions of the decoded message, so the service calls
//! exactly these and the fuzz target `rpc_requests` runs them on arbitrary bytes.
//!
//! Every string that is stored (stage reasons land in the etcd stage history) or
//! echoed in an error has a length cap here: nothing a caller sends grows etcd or
//! a log line without bound.

use std::collections::{BTreeMap, HashMap};

use rankmesh_proto::pb::registry::v1 as pb;

use rankmesh_common::rpc::clip;

use crate::error::RegistryError;
use crate::store::Tensor;

/// Most metadata entries and bytes per entry (stated in the proto).
pub const MAX_METADATA: usize = 64;
pub const MAX_METADATA_BYTES: usize = 1024;
/// Most sidecar files per artifact.
pub const MAX_SIDECARS: usize = 8;
/// Most tensors a signature declares, per side.
pub const MAX_TENSORS: usize = 64;
/// Longest tensor or dtype name; most dimensions per tensor.
pub const MAX_TENSOR_NAME_BYTES: usize = 256;
pub const MAX_TENSOR_RANK: usize = 16;
/// Longest stage-change reason (kept in the stage history in etcd).
pub const MAX_REASON_BYTES: usize = 512;
/// Longest master key id.
pub const MAX_KEY_ID_BYTES: usize = 64;

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::Invalid(msg.into())
}

/// Model names: `[a-z0-9_-]{1,64}`.
pub fn check_name(name: &str) -> Result<(), RegistryError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "name: {:?} must match [a-z0-9_-]{{1,64}}",
            clip(name)
        )))
    }
}

/// A sidecar's name: a plain file name, `[A-Za-z0-9._-]{1,64}`, no leading dot.
pub fn check_sidecar_name(field: &str, n: &str) -> Result<(), RegistryError> {
    let ok = (1..=64).contains(&n.len())
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field}: {:?} must match [A-Za-z0-9._-]{{1,64}} and not start with a dot",
            clip(n)
        )))
    }
}

/// Sidecar names: a handful of distinct plain file names.
pub fn check_sidecar_names(names: &[String]) -> Result<(), RegistryError> {
    if names.len() > MAX_SIDECARS {
        return Err(invalid(format!("sidecar_names: at most {MAX_SIDECARS}")));
    }
    for (i, n) in names.iter().enumerate() {
        check_sidecar_name("sidecar_names", n)?;
        if names[..i].contains(n) {
            return Err(invalid(format!("sidecar_names: {n:?} is named twice")));
        }
    }
    Ok(())
}

/// Metadata: at most [`MAX_METADATA`] entries of at most [`MAX_METADATA_BYTES`].
pub fn check_metadata(
    metadata: &HashMap<String, String>,
) -> Result<BTreeMap<String, String>, RegistryError> {
    if metadata.len() > MAX_METADATA
        || metadata
            .iter()
            .any(|(k, v)| k.len() + v.len() > MAX_METADATA_BYTES)
    {
        return Err(invalid(format!(
            "metadata: at most {MAX_METADATA} entries of at most {MAX_METADATA_BYTES} bytes"
        )));
    }
    Ok(metadata.clone().into_iter().collect())
}

/// "fp32" or "int8"; empty means "fp32".
pub fn check_variant(variant: &str) -> Result<&str, RegistryError> {
    match variant {
        "" | "fp32" => Ok("fp32"),
        "int8" => Ok("int8"),
        other => Err(invalid(format!(
            "variant: {:?} is not fp32 or int8",
            clip(other)
        ))),
    }
}

fn check_reason(reason: &str) -> Result<(), RegistryError> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(invalid(format!(
            "reason: {} bytes; at most {MAX_REASON_BYTES}",
            reason.len()
        )));
    }
    Ok(())
}

/// The declared interface, capped so a header cannot carry megabytes of names.
fn tensors(side: &str, specs: &[pb::TensorSpec]) -> Result<Vec<Tensor>, RegistryError> {
    if specs.len() > MAX_TENSORS {
        return Err(invalid(format!(
            "signature.{side}: {} tensors; at most {MAX_TENSORS}",
            specs.len()
        )));
    }
    specs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.name.is_empty()
                || t.name.len() > MAX_TENSOR_NAME_BYTES
                || t.dtype.len() > MAX_TENSOR_NAME_BYTES
            {
                return Err(invalid(format!(
                    "signature.{side}[{i}]: name must be 1..={MAX_TENSOR_NAME_BYTES} bytes, \
                     dtype at most {MAX_TENSOR_NAME_BYTES}"
                )));
            }
            if t.shape.len() > MAX_TENSOR_RANK || t.shape.iter().any(|&d| d < -1) {
                return Err(invalid(format!(
                    "signature.{side}[{i}].shape: at most {MAX_TENSOR_RANK} dimensions, \
                     each >= 0 or -1 (dynamic)"
                )));
            }
            Ok(Tensor {
                name: t.name.clone(),
                dtype: t.dtype.clone(),
                shape: t.shape.clone(),
            })
        })
        .collect()
}

/// What a valid publish header asks to store, before the parent (for an INT8
/// variant) is looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub name: String,
    pub variant: &'static str,
    /// The fp32 version an INT8 variant belongs to (0 for fp32).
    pub parent_version: u64,
    pub metadata: BTreeMap<String, String>,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
    pub sidecar_names: Vec<String>,
    /// Make and check the INT8 variant too (`quantize_int8`).
    pub quantize: bool,
}

/// Checks a PublishModel header.
pub fn validate_publish_header(h: &pb::PublishHeader) -> Result<Header, RegistryError> {
    check_name(&h.name)?;
    check_sidecar_names(&h.sidecar_names)?;
    let metadata = check_metadata(&h.metadata)?;
    let variant = match metadata.get("variant").map(String::as_str) {
        None | Some("fp32") => "fp32",
        Some("int8") => "int8",
        Some(other) => {
            return Err(invalid(format!(
                "metadata.variant: {:?} is not fp32 or int8",
                clip(other)
            )));
        }
    };
    if h.quantize_int8 && variant != "fp32" {
        return Err(invalid(
            "quantize_int8: the upload must be the fp32 artifact",
        ));
    }
    let parent_version: u64 = match metadata.get("parent_version") {
        Some(v) => v.parse().map_err(|_| {
            invalid(format!(
                "metadata.parent_version: {:?} is not a number",
                clip(v)
            ))
        })?,
        None => 0,
    };
    if variant == "int8" && parent_version == 0 {
        return Err(invalid(
            "metadata.parent_version: an int8 variant names its fp32 parent version",
        ));
    }
    let signature = h.signature.clone().unwrap_or_default();
    Ok(Header {
        name: h.name.clone(),
        variant,
        parent_version: if variant == "int8" { parent_version } else { 0 },
        metadata,
        inputs: tensors("inputs", &signature.inputs)?,
        outputs: tensors("outputs", &signature.outputs)?,
        sidecar_names: h.sidecar_names.clone(),
        quantize: h.quantize_int8,
    })
}

/// Checks a GetModel request; answers the variant ("fp32" when empty).
pub fn validate_get_model(req: &pb::GetModelRequest) -> Result<&'static str, RegistryError> {
    check_name(&req.name)?;
    check_variant(&req.variant).map(static_variant)
}

/// Checks a ListModels request (an empty name lists every model).
pub fn validate_list_models(req: &pb::ListModelsRequest) -> Result<(), RegistryError> {
    if req.name.is_empty() {
        Ok(())
    } else {
        check_name(&req.name)
    }
}

/// Checks a FetchModel request; answers the variant ("fp32" when empty).
pub fn validate_fetch_model(req: &pb::FetchModelRequest) -> Result<&'static str, RegistryError> {
    check_name(&req.name)?;
    if !req.sidecar.is_empty() {
        check_sidecar_name("sidecar", &req.sidecar)?;
    }
    check_variant(&req.variant).map(static_variant)
}

/// Checks a SetStage request; answers the stage it sets.
pub fn validate_set_stage(req: &pb::SetStageRequest) -> Result<pb::Stage, RegistryError> {
    check_name(&req.name)?;
    check_reason(&req.reason)?;
    let stage = pb::Stage::try_from(req.stage).unwrap_or(pb::Stage::Unspecified);
    match stage {
        pb::Stage::Unspecified => Err(invalid("stage: PRODUCTION or CANARY")),
        pb::Stage::Canary if !(1..=50).contains(&req.percent) => Err(invalid(format!(
            "percent: canary share must be within 1..=50, got {}",
            req.percent
        ))),
        stage => Ok(stage),
    }
}

/// Checks a Rollback request.
pub fn validate_rollback(req: &pb::RollbackRequest) -> Result<(), RegistryError> {
    check_name(&req.name)?;
    check_reason(&req.reason)
}

/// Checks a RotateKey request's key id (whether it is configured is checked by the
/// registry, against its keys).
pub fn validate_rotate_key(req: &pb::RotateKeyRequest) -> Result<(), RegistryError> {
    let id = &req.new_key_id;
    if id.is_empty() || id.len() > MAX_KEY_ID_BYTES || id.chars().any(char::is_control) {
        return Err(invalid(format!(
            "new_key_id: 1..={MAX_KEY_ID_BYTES} bytes, no control characters"
        )));
    }
    Ok(())
}

fn static_variant(v: &str) -> &'static str {
    if v == "int8" { "int8" } else { "fp32" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str) -> pb::PublishHeader {
        pb::PublishHeader {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn publish_header_caps_every_repeated_field() {
        assert!(validate_publish_header(&header("ranker")).is_ok());
        let mut h = header("ranker");
        h.signature = Some(pb::ModelSignature {
            inputs: vec![
                pb::TensorSpec {
                    name: "x".into(),
                    ..Default::default()
                };
                MAX_TENSORS + 1
            ],
            outputs: vec![],
        });
        let e = validate_publish_header(&h)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("at most 64"), "{e}");
        let mut h = header("ranker");
        h.signature = Some(pb::ModelSignature {
            inputs: vec![pb::TensorSpec {
                name: "x".repeat(MAX_TENSOR_NAME_BYTES + 1),
                ..Default::default()
            }],
            outputs: vec![],
        });
        assert!(validate_publish_header(&h).is_err());
        let mut h = header("ranker");
        h.sidecar_names = vec!["tokenizer.json".into(), "tokenizer.json".into()];
        let e = validate_publish_header(&h)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("named twice"), "{e}");
    }

    #[test]
    fn int8_headers_name_their_parent() {
        let mut h = header("encoder");
        h.metadata.insert("variant".into(), "int8".into());
        assert!(validate_publish_header(&h).is_err());
        h.metadata.insert("parent_version".into(), "3".into());
        let ok = validate_publish_header(&h).expect("accepted");
        assert_eq!((ok.variant, ok.parent_version), ("int8", 3));
        h.quantize_int8 = true;
        assert!(validate_publish_header(&h).is_err());
    }

    #[test]
    fn stored_and_echoed_strings_are_capped() {
        let long = "r".repeat(MAX_REASON_BYTES + 1);
        let e = validate_rollback(&pb::RollbackRequest {
            name: "ranker".into(),
            reason: long.clone(),
            expected_revision: 0,
        })
        .expect_err("refused")
        .to_string();
        assert!(e.contains("at most 512"), "{e}");
        assert!(
            validate_set_stage(&pb::SetStageRequest {
                name: "ranker".into(),
                version: 1,
                stage: pb::Stage::Production as i32,
                reason: long,
                ..Default::default()
            })
            .is_err()
        );
        // A huge bad name is refused with a message of bounded size.
        let e = check_name(&"Ü".repeat(100_000))
            .expect_err("refused")
            .to_string();
        assert!(e.len() < 200, "{}", e.len());
        assert!(
            validate_fetch_model(&pb::FetchModelRequest {
                name: "encoder".into(),
                sidecar: "../etc/passwd".into(),
                ..Default::default()
            })
            .is_err()
        );
        assert!(validate_rotate_key(&pb::RotateKeyRequest::default()).is_err());
        assert_eq!(
            validate_get_model(&pb::GetModelRequest {
                name: "encoder".into(),
                ..Default::default()
            })
            .expect("accepted"),
            "fp32"
        );
    }
}
