//! Envelope encryption and manifest signing for model artifacts.
//!
//! Each artifact gets a fresh random 256-bit data key (DEK). The artifact is
//! encrypted with AES-256-GCM under the DEK; the DEK is itself encrypted ("wrapped")
//! under a master key that has an id. Rotating the master key re-wraps every DEK and
//! never touches the (large) ciphertexts. The SHA-256 of both the plaintext and the
//! ciphertext are recorded: the ciphertext hash lets a replica reject a corrupt
//! download before decrypting, the GCM tag rejects any tampering, and the plaintext
//! hash proves the decrypted bytes are the published model.
//!
//! The manifest (name, version, hashes, wrapped key, signature of the interface, ...)
//! is signed with ed25519 over a canonical encoding, so a replica can verify that
//! what it fetched is what the registry published.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The AEAD every artifact and data key is sealed with, as `meshctl model show` names it.
pub const CIPHER: &str = "AES-256-GCM";
/// The manifest signature scheme.
pub const SIGNATURE_SCHEME: &str = "ed25519";

const NONCE_LEN: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("unknown master key id {0:?}")]
    UnknownKey(String),
    #[error("ciphertext SHA-256 mismatch: the artifact is corrupt or incomplete")]
    CiphertextHash,
    #[error("plaintext SHA-256 mismatch after decryption")]
    PlaintextHash,
    #[error("decryption failed: the artifact does not open under its data key (tampered with)")]
    Decrypt,
    #[error(
        "the data key does not unwrap under master key {0:?}: a wrong key of that id, or the wrapped key was tampered with"
    )]
    DataKey(String),
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("manifest signature invalid: {0}")]
    Signature(String),
}

/// Master keys by id. The current id wraps new data keys; old ids stay to unwrap
/// until rotation has re-wrapped everything.
#[derive(Clone)]
pub struct MasterKeys {
    keys: BTreeMap<String, [u8; 32]>,
    current: String,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("MasterKeys")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

impl MasterKeys {
    /// `keys` maps id -> 64 hex characters (32 bytes).
    pub fn from_hex(keys: &BTreeMap<String, String>, current: &str) -> Result<Self, EnvelopeError> {
        let mut out = BTreeMap::new();
        for (id, h) in keys {
            let bytes = decode_hex(h)
                .map_err(|e| EnvelopeError::Malformed(format!("master key {id:?}: {e}")))?;
            let key: [u8; 32] = bytes.try_into().map_err(|_| {
                EnvelopeError::Malformed(format!("master key {id:?}: need 32 bytes (64 hex chars)"))
            })?;
            out.insert(id.clone(), key);
        }
        if !out.contains_key(current) {
            return Err(EnvelopeError::UnknownKey(current.to_owned()));
        }
        Ok(Self {
            keys: out,
            current: current.to_owned(),
        })
    }

    /// Master keys from owner-only files (id -> file of 64 hex characters; see
    /// `rankmesh_common::secret`), `current` wrapping new data keys. Errors name
    /// the file or the key id, never the key.
    pub fn from_files(
        files: &BTreeMap<String, std::path::PathBuf>,
        current: &str,
    ) -> Result<Self, String> {
        let mut hex = BTreeMap::new();
        for (id, path) in files {
            hex.insert(
                id.clone(),
                rankmesh_common::secret::read(path).map_err(|e| e.to_string())?,
            );
        }
        Self::from_hex(&hex, current).map_err(|e| e.to_string())
    }

    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// Makes `id` the key that wraps new (and re-wrapped) data keys.
    pub fn set_current(&mut self, id: &str) -> Result<(), EnvelopeError> {
        if !self.keys.contains_key(id) {
            return Err(EnvelopeError::UnknownKey(id.to_owned()));
        }
        self.current = id.to_owned();
        Ok(())
    }

    fn get(&self, id: &str) -> Result<&[u8; 32], EnvelopeError> {
        self.keys
            .get(id)
            .ok_or_else(|| EnvelopeError::UnknownKey(id.to_owned()))
    }
}

/// What is stored next to the ciphertext (part of the signed manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Master key id that wraps the data key.
    pub key_id: String,
    /// nonce || AES-GCM(master, DEK) || tag, hex.
    pub wrapped_key: String,
    pub sha256_plaintext: String,
    pub sha256_ciphertext: String,
    pub size_bytes: u64,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    rand::random()
}

fn seal_with(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let nonce = random_bytes::<NONCE_LEN>();
    let mut out = nonce.to_vec();
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| {
            EnvelopeError::Malformed("encryption failed (input beyond AES-GCM limits)".into())
        })?;
    out.extend(ct);
    Ok(out)
}

fn open_with(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(EnvelopeError::Malformed(
            "too short for nonce and tag".into(),
        ));
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| EnvelopeError::Decrypt)
}

/// Encrypts `plaintext` under a fresh data key wrapped by the current master key.
/// `context` (e.g. "encoder/3/fp32") is bound as associated data, so a ciphertext
/// cannot be passed off as another artifact.
pub fn seal(
    keys: &MasterKeys,
    context: &str,
    plaintext: &[u8],
) -> Result<(Vec<u8>, Sealed), EnvelopeError> {
    let dek = random_bytes::<32>();
    let ciphertext = seal_with(&dek, plaintext, context.as_bytes())?;
    let master = keys.get(&keys.current)?;
    let wrapped = seal_with(master, &dek, keys.current.as_bytes())?;
    let sealed = Sealed {
        key_id: keys.current.clone(),
        wrapped_key: hex(&wrapped),
        sha256_plaintext: hex(&Sha256::digest(plaintext)),
        sha256_ciphertext: hex(&Sha256::digest(&ciphertext)),
        size_bytes: plaintext.len() as u64,
    };
    Ok((ciphertext, sealed))
}

/// Verifies and decrypts. Checks the ciphertext hash first (cheap, and names a
/// corrupt download as such), then the GCM tag, then the plaintext hash.
pub fn open(
    keys: &MasterKeys,
    context: &str,
    sealed: &Sealed,
    ciphertext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if hex(&Sha256::digest(ciphertext)) != sealed.sha256_ciphertext {
        return Err(EnvelopeError::CiphertextHash);
    }
    let master = keys.get(&sealed.key_id)?;
    let wrapped = decode_hex(&sealed.wrapped_key).map_err(EnvelopeError::Malformed)?;
    let dek: [u8; 32] = open_with(master, &wrapped, sealed.key_id.as_bytes())
        .map_err(|_| EnvelopeError::DataKey(sealed.key_id.clone()))?
        .try_into()
        .map_err(|_| EnvelopeError::Malformed("data key is not 32 bytes".into()))?;
    let plaintext = open_with(&dek, ciphertext, context.as_bytes())?;
    if hex(&Sha256::digest(&plaintext)) != sealed.sha256_plaintext {
        return Err(EnvelopeError::PlaintextHash);
    }
    Ok(plaintext)
}

/// Re-wraps the data key under the current master key; the ciphertext is untouched.
pub fn rewrap(keys: &MasterKeys, sealed: &Sealed) -> Result<Sealed, EnvelopeError> {
    let old = keys.get(&sealed.key_id)?;
    let wrapped = decode_hex(&sealed.wrapped_key).map_err(EnvelopeError::Malformed)?;
    let dek = open_with(old, &wrapped, sealed.key_id.as_bytes())
        .map_err(|_| EnvelopeError::DataKey(sealed.key_id.clone()))?;
    let master = keys.get(&keys.current)?;
    Ok(Sealed {
        key_id: keys.current.clone(),
        wrapped_key: hex(&seal_with(master, &dek, keys.current.as_bytes())?),
        ..sealed.clone()
    })
}

/// Signs canonical bytes (callers serialise manifests with sorted keys).
pub fn sign(key: &SigningKey, canonical: &[u8]) -> String {
    hex(&key.sign(canonical).to_bytes())
}

/// Verifies a hex signature over canonical bytes.
pub fn verify(
    key: &VerifyingKey,
    canonical: &[u8],
    signature_hex: &str,
) -> Result<(), EnvelopeError> {
    let bytes = decode_hex(signature_hex).map_err(EnvelopeError::Signature)?;
    let sig = Signature::from_slice(&bytes).map_err(|e| EnvelopeError::Signature(e.to_string()))?;
    key.verify(canonical, &sig)
        .map_err(|_| EnvelopeError::Signature("does not match the manifest".into()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex to bytes; the error says where it is not hex.
pub fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hex characters".into());
    }
    // By bytes, not by `&str` slices: a multi-byte character would put a slice
    // boundary inside it and panic on input such as "aé0".
    let digit = |b: u8| (b as char).to_digit(16);
    s.as_bytes()
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok((hi * 16 + lo) as u8),
            _ => Err(format!("not hex at {}", 2 * i)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(current: &str) -> MasterKeys {
        let m: BTreeMap<String, String> = [
            ("k1".to_owned(), "11".repeat(32)),
            ("k2".to_owned(), "22".repeat(32)),
        ]
        .into();
        MasterKeys::from_hex(&m, current).expect("keys")
    }

    #[test]
    fn hex_decoding_refuses_non_ascii_without_panicking() {
        assert_eq!(decode_hex("00ff10"), Ok(vec![0, 255, 16]));
        assert_eq!(decode_hex("aé0"), Err("not hex at 0".to_owned()));
        assert_eq!(decode_hex("0aé"), Err("not hex at 2".to_owned()));
        assert!(decode_hex("abc").is_err());
        assert!(
            decode_hex("+1").is_err(),
            "from_str_radix would take a sign"
        );
    }

    #[test]
    fn seal_open_roundtrip_and_fresh_keys() {
        let k = keys("k1");
        let model = b"onnx bytes".repeat(1000);
        let (ct, s) = seal(&k, "ranker/1/fp32", &model).expect("seal");
        assert_ne!(ct[NONCE_LEN..NONCE_LEN + 32], model[..32], "encrypted");
        assert_eq!(open(&k, "ranker/1/fp32", &s, &ct).expect("open"), model);
        let (ct2, s2) = seal(&k, "ranker/1/fp32", &model).expect("seal");
        assert_ne!(ct, ct2, "a fresh data key and nonce every time");
        assert_ne!(s.wrapped_key, s2.wrapped_key);
    }

    #[test]
    fn one_flipped_bit_is_refused_with_a_reason() {
        let k = keys("k1");
        let (mut ct, s) = seal(&k, "m/1/fp32", b"model").expect("seal");
        ct[NONCE_LEN + 2] ^= 0x01;
        assert_eq!(
            open(&k, "m/1/fp32", &s, &ct),
            Err(EnvelopeError::CiphertextHash)
        );
        // Even with the hash "fixed" by an attacker, the GCM tag refuses it.
        let forged = Sealed {
            sha256_ciphertext: hex(&Sha256::digest(&ct)),
            ..s
        };
        assert_eq!(
            open(&k, "m/1/fp32", &forged, &ct),
            Err(EnvelopeError::Decrypt)
        );
    }

    #[test]
    fn master_keys_come_from_files_and_errors_do_not_show_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, v: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, v).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            p
        };
        let (k1, bad) = (
            write("k1", &"ab".repeat(32)),
            write("bad", "not-hex-secret"),
        );
        let keys =
            MasterKeys::from_files(&[("k1".to_owned(), k1.clone())].into(), "k1").expect("keys");
        assert_eq!(keys.current_id(), "k1");
        let e = MasterKeys::from_files(&[("k1".to_owned(), bad)].into(), "k1").expect_err("hex");
        assert!(!e.contains("not-hex-secret"), "{e}");
        assert!(MasterKeys::from_files(&[("k1".to_owned(), k1)].into(), "k2").is_err());
    }

    #[test]
    fn wrong_master_key_and_wrong_context_are_refused() {
        let (ct, s) = seal(&keys("k1"), "m/1/fp32", b"model").expect("seal");
        let other: BTreeMap<String, String> = [("k1".to_owned(), "33".repeat(32))].into();
        let wrong = MasterKeys::from_hex(&other, "k1").expect("keys");
        assert_eq!(
            open(&wrong, "m/1/fp32", &s, &ct),
            Err(EnvelopeError::DataKey("k1".into()))
        );
        // A flipped bit in the wrapped data key: it no longer unwraps.
        let mut wrapped = decode_hex(&s.wrapped_key).expect("hex");
        wrapped[NONCE_LEN] ^= 1;
        let tampered = Sealed {
            wrapped_key: hex(&wrapped),
            ..s.clone()
        };
        assert_eq!(
            open(&keys("k1"), "m/1/fp32", &tampered, &ct),
            Err(EnvelopeError::DataKey("k1".into()))
        );
        assert_eq!(
            open(&keys("k1"), "m/2/fp32", &s, &ct),
            Err(EnvelopeError::Decrypt)
        );
        let only_k2: BTreeMap<String, String> = [("k2".to_owned(), "22".repeat(32))].into();
        let missing = MasterKeys::from_hex(&only_k2, "k2").expect("keys");
        assert_eq!(
            open(&missing, "m/1/fp32", &s, &ct),
            Err(EnvelopeError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn rotation_rewraps_without_touching_the_blob() {
        let (ct, s) = seal(&keys("k1"), "m/1/fp32", b"model").expect("seal");
        let rotated = rewrap(&keys("k2"), &s).expect("rewrap");
        assert_eq!(rotated.key_id, "k2");
        assert_eq!(rotated.sha256_ciphertext, s.sha256_ciphertext);
        let only_k2: BTreeMap<String, String> = [("k2".to_owned(), "22".repeat(32))].into();
        let k2 = MasterKeys::from_hex(&only_k2, "k2").expect("keys");
        assert_eq!(
            open(&k2, "m/1/fp32", &rotated, &ct).expect("open"),
            b"model"
        );
    }

    #[test]
    fn signatures_detect_any_change() {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let vk = sk.verifying_key();
        let manifest = br#"{"name":"ranker","version":1}"#;
        let sig = sign(&sk, manifest);
        verify(&vk, manifest, &sig).expect("valid");
        assert!(verify(&vk, br#"{"name":"ranker","version":2}"#, &sig).is_err());
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(verify(&other, manifest, &sig).is_err());
    }

    #[test]
    fn debug_never_prints_keys() {
        let s = format!("{:?}", keys("k1"));
        assert!(!s.contains("1111"), "{s}");
    }

    mod properties {
        //! Sealing whatever bytes under whatever context opens to exactly them, and
        //! only under that context; any one byte changed anywhere is refused.
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn roundtrip_binds_the_context_and_refuses_any_change(
                plaintext in prop::collection::vec(any::<u8>(), 0..2048),
                context in "[a-z]{1,8}/[0-9]{1,3}/(fp32|int8)",
                flip in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let k = keys("k1");
                let (ct, s) = seal(&k, &context, &plaintext).expect("seal");
                prop_assert_eq!(open(&k, &context, &s, &ct).expect("open"), plaintext.clone());
                // Rotated: still opens, under the new master key.
                let rotated = rewrap(&keys("k2"), &s).expect("rewrap");
                prop_assert_eq!(rotated.key_id.as_str(), "k2");
                prop_assert_eq!(open(&keys("k2"), &context, &rotated, &ct).expect("open"), plaintext);
                // Another artifact's context: refused, even with the right hashes.
                let other = format!("{context}x");
                prop_assert!(open(&k, &other, &s, &ct).is_err());
                // One bit flipped in the ciphertext: refused.
                let mut bad = ct.clone();
                let i = flip.index(bad.len());
                bad[i] ^= 1 << bit;
                prop_assert!(open(&k, &context, &s, &bad).is_err());
                // The same flip with the hash updated to match: the tag refuses it.
                let forged = Sealed { sha256_ciphertext: hex(&Sha256::digest(&bad)), ..s.clone() };
                prop_assert_eq!(open(&k, &context, &forged, &bad), Err(EnvelopeError::Decrypt));
            }
        }
    }
}
