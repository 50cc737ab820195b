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
    /// Hex SHA-256 of the canonical bytes when signed, and the hex public key
    /// that signed them: not signed themselves (they sit beside the signature),
    /// they let a replica say why it refuses a manifest. Omitted when empty, so
    /// manifests signed before they existed keep their canonical bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signed_sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signer: String,
    /// Where the registry found this manifest (version, variant), when that is
    /// not what it says of itself: a manifest copied under another version's key
    /// is listed there, and the replica refuses it as replayed. Never stored.
    #[serde(skip)]
    pub listed_as: Option<(u64, String)>,
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
            signed_sha256: String::new(),
            signer: String::new(),
            ..self.clone()
        };
        serde_json::to_vec(&unsigned)
            .expect("a Manifest always serialises: plain fields and string-keyed maps")
    }

    /// Signs the canonical bytes with `key`, recording their hash and the signer.
    pub fn sign(&mut self, key: &ed25519_dalek::SigningKey) {
        use sha2::Digest;
        let canonical = self.canonical();
        self.signature = crate::envelope::sign(key, &canonical);
        self.signed_sha256 = crate::envelope::hex(&sha2::Sha256::digest(&canonical));
        self.signer = crate::envelope::hex(key.verifying_key().as_bytes());
    }

    /// The (version, variant) it is listed under: where the registry found it.
    pub fn listing(&self) -> (u64, &str) {
        match &self.listed_as {
            Some((v, variant)) => (*v, variant.as_str()),
            None => (self.version, self.variant.as_str()),
        }
    }
}
