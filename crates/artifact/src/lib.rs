//! Model artifacts as a replica consumes them, without the registry server.
//!
//! Owns:
//! - [`envelope`]: envelope encryption (AES-256-GCM under a fresh data key wrapped
//!   by a named master key) and ed25519 manifest signatures;
//! - [`manifest`]: the signed manifest of a published artifact;
//! - [`fetch`]: the [`Fetcher`](fetch::Fetcher), which fetches ciphertexts from the
//!   registry over the SDK (resuming broken streams), verifies and decrypts them in
//!   memory, and caches ciphertexts (never plaintext) on disk;
//! - [`follow`]: the one follow loop embedding and ranking replicas run to keep
//!   what they serve in line with the registry's stages.
//!
//! Must not import: the registry server (`rankmesh-model-registry`), its stores
//! (object_store, etcd) or any service crate. The registry depends on this crate
//! (it seals and signs with [`envelope`]); replicas depend on it, not on the registry.

pub mod envelope;
pub mod fetch;
pub mod follow;
pub mod manifest;
