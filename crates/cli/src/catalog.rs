//! `meshctl catalog import`: streams a catalog file to the feature service.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use rankmesh_proto::pb::feature::v1 as pb;

/// Bytes per streamed chunk (the service accepts up to 4 MiB).
const CHUNK: usize = 1 << 20;

/// Streams `path` and prints what was imported and why rows were rejected. Returns
/// whether every row was imported.
pub(crate) async fn import(
    addr: &str,
    path: &Path,
    format: Option<&str>,
    replace: bool,
) -> anyhow::Result<bool> {
    let format = match format.map(str::to_ascii_lowercase).as_deref() {
        Some("jsonl") => pb::CatalogFormat::Jsonl,
        Some("csv") => pb::CatalogFormat::Csv,
        Some(other) => anyhow::bail!("--format {other}: expected jsonl or csv"),
        None => match path
            .to_str()
            .map(|p| p.trim_end_matches(".gz"))
            .and_then(|p| Path::new(p).extension())
            .and_then(|e| e.to_str())
        {
            Some("csv") => pb::CatalogFormat::Csv,
            Some("jsonl" | "ndjson" | "json") => pb::CatalogFormat::Jsonl,
            _ => anyhow::bail!(
                "cannot tell the format of {}; pass --format jsonl|csv",
                path.display()
            ),
        },
    };
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    // `.gz` is read through gunzip.
    let mut file = crate::eval::open_maybe_gz(path)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportCatalogChunk>(4);
    // Read on a blocking thread so a large file streams without loading it whole.
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
    let channel = rankmesh_client::connect(addr, Duration::from_secs(3600)).await?;
    let mut client = pb::feature_service_client::FeatureServiceClient::new(channel)
        .max_encoding_message_size(8 << 20);
    let started = Instant::now();
    let resp = client
        .import_catalog(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    reader.await??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "imported {} items, rejected {} rows ({:.1} MB in {secs:.1} s, {:.0} items/s)",
        resp.imported,
        resp.rejected,
        size as f64 / 1e6,
        resp.imported as f64 / secs.max(1e-9)
    );
    for e in resp.errors.iter().take(20) {
        println!("  line {}: {}", e.line, e.reason);
    }
    if resp.rejected as usize > 20 {
        println!("  ... and {} more", resp.rejected as usize - 20);
    }
    Ok(resp.rejected == 0)
}
