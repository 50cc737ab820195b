//! The rankmesh v1 gRPC API: generated messages, clients and servers for every
//! service, plus the encoded descriptor set that `grpc.reflection` serves.
//!
//! The `.proto` sources live in `proto/rankmesh/<area>/v1/`; they are the contract
//! (field meanings, limits, error codes). This crate only mounts what `build.rs`
//! generates from them, re-exported as [`pb`].

/// Generated code, one module per proto package.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
    #![allow(clippy::all, clippy::pedantic)]

    pub mod common {
        #[rustfmt::skip]
        pub mod v1 { tonic::include_proto!("rankmesh.common.v1"); }
    }
    pub mod feature {
        #[rustfmt::skip]
        pub mod v1 { tonic::include_proto!("rankmesh.feature.v1"); }
    }
    pub mod embedding {
        #[rustfmt::skip]
        pub mod v1 { tonic::include_proto!("rankmesh.embedding.v1"); }
    }
    pub mod ranking {
        #[rustfmt::skip]
        pub mod v1 { tonic::include_proto!("rankmesh.ranking.v1"); }
    }
    pub mod registry {
        #[rustfmt::skip]
        pub mod v1 { tonic::include_proto!("rankmesh.registry.v1"); }
    }
}

/// The encoded `FileDescriptorSet` of every rankmesh proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rankmesh_descriptor.bin"));

/// Limits stated in the proto comments, shared by servers (to enforce) and clients
/// (to validate early). Changing one is an API change: update the proto comment too.
pub mod limits {
    /// Longest accepted query, in bytes after trimming.
    pub const MAX_QUERY_BYTES: usize = 1024;
    /// Largest `k` for Search and Recommend.
    pub const MAX_RANKING_K: u32 = 100;
    /// Most candidates per retrieval source, and most ids per feature request.
    pub const MAX_CANDIDATES: u32 = 1000;
    /// Most texts in one Embed call.
    pub const MAX_BATCH_TEXTS: usize = 256;
    /// Longest text accepted by Embed, in bytes.
    pub const MAX_TEXT_BYTES: usize = 16 * 1024;
    /// Largest `k` for Retrieve and LexicalCandidates.
    pub const MAX_RETRIEVE_K: u32 = 1000;
    /// Longest user, item or event id, in bytes.
    pub const MAX_ID_BYTES: usize = 128;
    /// Largest decoded gRPC message a service accepts, unless its own proto says less.
    pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
    /// Largest chunk in a streamed upload (catalog import, model publish).
    pub const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_names_every_service() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("build.rs writes a valid descriptor set");
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                let pkg = f.package().to_owned();
                f.service.iter().map(move |s| format!("{pkg}.{}", s.name()))
            })
            .collect();
        for want in [
            "rankmesh.feature.v1.FeatureService",
            "rankmesh.embedding.v1.EmbeddingService",
            "rankmesh.ranking.v1.RankingService",
            "rankmesh.registry.v1.ModelRegistry",
        ] {
            assert!(
                services.iter().any(|s| s == want),
                "{want} missing from {services:?}"
            );
        }
    }
}
