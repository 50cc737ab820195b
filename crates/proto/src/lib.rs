//! The rankmesh v1 gRPC API: generated messages, clients and servers for every
//! service, plus the encoded descriptor set that `grpc.reflection` serves.
//!
//! The `.proto` sources live in `proto/rankmesh/<area>/v1/`; they are the contract
//! (field meanings, limits, error codes). This crate only mounts what `build.rs`
//! generates from them, re-exported as [`pb`].
//!
//! Owns: the wire contract and its limits. Must not import any rankmesh crate.

/// Generated code, one module per proto package.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
    #![allow(clippy::all, clippy::pedantic)]

    /// `pub mod <package> { pub mod v1 { <the code generated for rankmesh.<package>.v1> } }`
    macro_rules! packages {
        ($($package:ident),+) => {$(
            pub mod $package {
                #[rustfmt::skip]
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/rankmesh.", stringify!($package), ".v1.rs"));
                }
            }
        )+};
    }
    packages!(common, feature, embedding, ranking, registry);
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

    /// Every limit by name, as the protos' comments cite them (checked by a test).
    pub const ALL: &[(&str, u64)] = &[
        ("MAX_QUERY_BYTES", MAX_QUERY_BYTES as u64),
        ("MAX_RANKING_K", MAX_RANKING_K as u64),
        ("MAX_CANDIDATES", MAX_CANDIDATES as u64),
        ("MAX_BATCH_TEXTS", MAX_BATCH_TEXTS as u64),
        ("MAX_TEXT_BYTES", MAX_TEXT_BYTES as u64),
        ("MAX_RETRIEVE_K", MAX_RETRIEVE_K as u64),
        ("MAX_ID_BYTES", MAX_ID_BYTES as u64),
        ("MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES as u64),
        ("MAX_CHUNK_BYTES", MAX_CHUNK_BYTES as u64),
    ];
}

/// The comment protoc kept for the element at `path` of `file` (see
/// `google.protobuf.SourceCodeInfo`: e.g. `[4, m, 2, f]` is field `f` of message
/// `m`), leading and trailing together; empty when there is none.
pub fn comment_at(file: &prost_types::FileDescriptorProto, path: &[i32]) -> String {
    file.source_code_info
        .iter()
        .flat_map(|i| &i.location)
        .filter(|l| l.path == path)
        .map(|l| format!("{}{}", l.leading_comments(), l.trailing_comments()))
        .collect()
}

/// The comment on field `field` of message `message` in `file_name` (as in the
/// descriptor set, e.g. "rankmesh/ranking/v1/ranking.proto").
pub fn field_comment(file_name: &str, message: &str, field: &str) -> Option<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).ok()?;
    let file = set.file.iter().find(|f| f.name() == file_name)?;
    let (m, msg) = file
        .message_type
        .iter()
        .enumerate()
        .find(|(_, m)| m.name() == message)?;
    let (f, _) = msg
        .field
        .iter()
        .enumerate()
        .find(|(_, f)| f.name() == field)?;
    Some(comment_at(file, &[4, m as i32, 2, f as i32]))
}

/// The gRPC paths (`/rankmesh.feature.v1.FeatureService/ImportCatalog`) of every
/// method whose request is a stream: servers time their request bodies by the gap
/// between messages there, and by the whole body everywhere else.
pub fn client_streaming_methods() -> Vec<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    let mut paths = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in service.method.iter().filter(|m| m.client_streaming()) {
                paths.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn the_uploads_are_the_client_streaming_methods() {
        assert_eq!(
            super::client_streaming_methods(),
            [
                "/rankmesh.feature.v1.FeatureService/ImportCatalog",
                "/rankmesh.registry.v1.ModelRegistry/PublishModel",
            ]
        );
    }

    /// Every `(MAX_...)` a proto comment cites is a real limit, and the number
    /// written before it is that limit's value.
    #[test]
    fn limits_cited_in_proto_comments_match_the_code() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("build.rs writes a valid descriptor set");
        let mut cited = 0;
        for file in &set.file {
            let info = file
                .source_code_info
                .as_ref()
                .expect("protoc keeps comments");
            let text: String = info
                .location
                .iter()
                .flat_map(|l| {
                    l.leading_detached_comments
                        .iter()
                        .map(String::as_str)
                        .chain([l.leading_comments(), l.trailing_comments()])
                })
                .collect::<Vec<_>>()
                .join("\n");
            for line in text.lines() {
                let Some(open) = line.find("(MAX_") else {
                    continue;
                };
                let name = &line[open + 1..open + line[open..].find(')').expect("closed")];
                let value = super::limits::ALL
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("{}: {name} is not in limits::ALL", file.name()))
                    .1;
                // The largest number written before the name (in MiB or KiB when
                // so marked): "1..=1024 bytes", "at most 16 MiB".
                let before = &line[..open];
                let mut written = None::<u64>;
                let mut rest = before;
                while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
                    let digits_end = rest[start..]
                        .find(|c: char| !c.is_ascii_digit())
                        .map_or(rest.len(), |e| start + e);
                    let n: u64 = rest[start..digits_end].parse().expect("digits");
                    let after = rest[digits_end..].trim_start();
                    let scale = if after.starts_with("MiB") {
                        1 << 20
                    } else if after.starts_with("KiB") {
                        1 << 10
                    } else {
                        1
                    };
                    written = Some(written.unwrap_or(0).max(n * scale));
                    rest = &rest[digits_end..];
                }
                let written = written.unwrap_or_else(|| {
                    panic!("{}: no number before {name}: {line:?}", file.name())
                });
                assert_eq!(written, value, "{}: {line:?}", file.name());
                cited += 1;
            }
        }
        assert!(cited >= 8, "only {cited} limits cited; the scan is broken");
    }

    #[test]
    fn field_comments_are_found() {
        let c = super::field_comment(
            "rankmesh/ranking/v1/ranking.proto",
            "SearchRequest",
            "routing_key",
        )
        .expect("field exists");
        assert!(c.contains("sticky canary"), "{c:?}");
    }

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
