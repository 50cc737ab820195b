//! The signed manifest of a published artifact: what the registry stores in etcd
//! and what a replica verifies before it trusts a byte of the artifact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::Sealed;

/// One input or output of a model's interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
}

/// A published artifact version. Signed: every field but `signature` is covered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: u64,
    /// "fp32" or "int8".
    pub variant: String,
    /// For an INT8 variant, the FP32 version it was made from (0 otherwise).
    pub parent_version: u64,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
    pub metadata: BTreeMap<String, String>,
    pub sealed: Sealed,
    /// Object-store key of the ciphertext.
    pub blob: String,
    pub created_ms: i64,
    /// Extra files (e.g. tokenizer.json), each sealed under its own data key.
    /// Omitted from the JSON when empty, so manifests without sidecars keep the
    /// canonical bytes (and signatures) they were published with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<SidecarEntry>,
    /// Hex ed25519 signature over [`Manifest::canonical`].
    #[serde(default)]
    pub signature: String,
}

/// One sealed sidecar file of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SidecarEntry {
    pub name: String,
    /// Object-store key of the ciphertext.
    pub blob: String,
    pub sealed: Sealed,
}

impl Manifest {
    /// The envelope context (bound into the AEAD) of the artifact or one sidecar.
    pub fn context(&self, sidecar: Option<&str>) -> String {
        let base = format!("{}/{}/{}", self.name, self.version, self.variant);
        match sidecar {
            Some(s) => format!("{base}/{s}"),
            None => base,
        }
    }

    /// The bytes that are signed: the manifest as JSON with the signature emptied.
    /// Field order is fixed by the struct and maps are ordered, so it is canonical.
    pub fn canonical(&self) -> Vec<u8> {
        let unsigned = Self {
            signature: String::new(),
            ..self.clone()
        };
        serde_json::to_vec(&unsigned)
            .expect("a Manifest always serialises: plain fields and string-keyed maps")
    }
}
