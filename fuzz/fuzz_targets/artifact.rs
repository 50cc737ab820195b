//! A model artifact as a replica receives it: a signed manifest (arbitrary JSON and
//! signature bytes) is verified before it is parsed, and arbitrary ciphertext with
//! an arbitrary envelope is refused unless every hash and tag checks; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rankmesh_artifact::envelope::{self, MasterKeys, Sealed};

fuzz_target!(|data: &[u8]| {
    let key = ed25519_key();
    // A signature is 64 bytes; the rest is the signed manifest.
    if data.len() >= 64 {
        let (signature, signed) = data.split_at(64);
        assert!(
            rankmesh_artifact::fetch::verify_manifest(&key, signed, signature).is_err(),
            "no forged signature verifies"
        );
    }
    // An envelope from the first line (JSON), the ciphertext after it.
    let (head, ciphertext) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(sealed) = serde_json::from_slice::<Sealed>(head) {
        let _ = envelope::open(&keys(), "encoder/1/fp32", &sealed, ciphertext);
    }
    if let Ok(text) = std::str::from_utf8(head) {
        let _ = envelope::decode_hex(text);
    }
});

fn keys() -> MasterKeys {
    let map = [("k1".to_owned(), "11".repeat(32))].into_iter().collect();
    MasterKeys::from_hex(&map, "k1").expect("a valid key")
}

fn ed25519_key() -> ed25519_dalek::VerifyingKey {
    ed25519_dalek::SigningKey::from_bytes(&[0x22; 32]).verifying_key()
}
