//! A catalog file into a mesh: streamed to one feature replica ([`import_file`]),
//! read as it goes so a large file never sits in memory whole, then indexed for
//! dense retrieval ([`build_index`]).

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use rankmesh_client::{Deadline, EmbeddingClient, FeatureClient};
use rankmesh_proto::pb::embedding::v1 as emb;
use rankmesh_proto::pb::feature::v1 as pb;

use crate::error::ProvisionError;

/// Bytes per streamed chunk (the service accepts up to 4 MiB).
const CHUNK: usize = 1 << 20;

/// What one import did.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The feature service's answer: counts, and why rows were rejected.
    pub response: pb::ImportCatalogResponse,
    /// Size of the file as stored (compressed, for `.gz`).
    pub file_bytes: u64,
    pub elapsed: Duration,
}

/// The format `format` names (`jsonl`, `csv`), or else the one the file's
/// extension says (`.gz` looked through).
pub fn format_of(path: &Path, format: Option<&str>) -> Result<pb::CatalogFormat, ProvisionError> {
    match format.map(str::to_ascii_lowercase).as_deref() {
        Some("jsonl") => Ok(pb::CatalogFormat::Jsonl),
        Some("csv") => Ok(pb::CatalogFormat::Csv),
        Some(other) => Err(ProvisionError::Invalid(format!(
            "--format {other}: expected jsonl or csv"
        ))),
        None => match path
            .to_str()
            .map(|p| p.trim_end_matches(".gz"))
            .and_then(|p| Path::new(p).extension())
            .and_then(|e| e.to_str())
        {
            Some("csv") => Ok(pb::CatalogFormat::Csv),
            Some("jsonl" | "ndjson" | "json") => Ok(pb::CatalogFormat::Jsonl),
            _ => Err(ProvisionError::Invalid(format!(
                "cannot tell the format of {}; pass --format jsonl|csv",
                path.display()
            ))),
        },
    }
}

/// `path` opened for reading, through gunzip when it ends in `.gz`.
pub fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read + Send>, ProvisionError> {
    let f = std::fs::File::open(path).map_err(ProvisionError::read(path))?;
    let buffered = std::io::BufReader::new(f);
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    })
}

/// Streams `path` to the feature replica `client` reaches (each keeps its own
/// store: give it one replica), with `replace` dropping items not in the file.
pub async fn import_file(
    client: &FeatureClient,
    path: &Path,
    format: pb::CatalogFormat,
    replace: bool,
) -> Result<Imported, ProvisionError> {
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut file = open_maybe_gz(path)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportCatalogChunk>(4);
    // Read on a blocking thread, a chunk ahead of the upload at most.
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = file.read(&mut buf)?;
            buf.truncate(n);
            // An empty read is the end: say so, or the service discards the upload.
            let chunk = pb::ImportCatalogChunk {
                format: if first { format as i32 } else { 0 },
                data: buf,
                replace: first && replace,
                last: n == 0,
            };
            first = false;
            if tx.blocking_send(chunk).is_err() || n == 0 {
                return Ok(());
            }
        }
    });
    let started = Instant::now();
    let response = client
        .import_catalog(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Deadline::Default,
        )
        .await
        .map_err(ProvisionError::rpc("ImportCatalog"))?;
    reader
        .await
        .map_err(|e| ProvisionError::Invalid(format!("the catalog reader stopped: {e}")))?
        .map_err(ProvisionError::read(path))?;
    Ok(Imported {
        response,
        file_bytes,
        elapsed: started.elapsed(),
    })
}

/// Rebuilds the dense index of the embedding replica `client` reaches from every
/// item in the catalog.
pub async fn build_index(
    client: &EmbeddingClient,
) -> Result<emb::BuildIndexResponse, ProvisionError> {
    let req = emb::BuildIndexRequest {
        item_ids: Vec::new(),
    };
    client
        .build_index(req, Deadline::Default)
        .await
        .map_err(ProvisionError::rpc("BuildIndex"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_flag_or_extension() {
        let f = |p: &str, flag: Option<&str>| format_of(Path::new(p), flag).ok();
        assert_eq!(f("a.jsonl", None), Some(pb::CatalogFormat::Jsonl));
        assert_eq!(f("a.csv.gz", None), Some(pb::CatalogFormat::Csv));
        assert_eq!(f("a.ndjson.gz", None), Some(pb::CatalogFormat::Jsonl));
        assert_eq!(f("a.txt", Some("CSV")), Some(pb::CatalogFormat::Csv));
        assert_eq!(f("a.txt", None), None);
        assert_eq!(f("a.jsonl", Some("xml")), None);
    }

    #[test]
    fn gzip_is_read_through() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.jsonl.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).expect("create"),
            flate2::Compression::fast(),
        );
        gz.write_all(b"{\"id\":\"a\"}\n").expect("write");
        gz.finish().expect("finish");
        let mut text = String::new();
        open_maybe_gz(&path)
            .expect("open")
            .read_to_string(&mut text)
            .expect("gunzip");
        assert_eq!(text, "{\"id\":\"a\"}\n");
    }
}
