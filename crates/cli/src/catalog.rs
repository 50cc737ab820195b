//! `meshctl catalog import` (stream a catalog file to a feature replica through
//! the SDK) and `meshctl catalog generate` (a synthetic store, [`crate::generate`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rankmesh_client::{Deadline, FeatureClient, Resolver};
use rankmesh_proto::pb::feature::v1 as pb;

use crate::args::{TargetArgs, exit};

/// Bytes per streamed chunk (the service accepts up to 4 MiB).
const CHUNK: usize = 1 << 20;
/// A large catalog streams and indexes for minutes.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Import or generate catalogs.
#[derive(Debug, clap::Args)]
pub(crate) struct CatalogArgs {
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CatalogCommand {
    /// Stream a catalog (JSONL or CSV: id, title, description, category, brand,
    /// price, rating, review_count, attributes) to the feature service. Bad rows are
    /// listed with their line numbers; exits 1 when any row was rejected.
    Import {
        file: PathBuf,
        /// jsonl or csv; taken from the file extension when omitted.
        #[arg(long)]
        format: Option<String>,
        /// Remove items that are not in this file.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Write a deterministic synthetic store: catalog.jsonl, users.jsonl,
    /// events.jsonl, queries.txt and graded labels (labels.csv, -train, -test).
    Generate {
        #[arg(long, default_value_t = 5000)]
        items: usize,
        #[arg(long, default_value_t = 500)]
        users: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) async fn command(a: CatalogArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        CatalogCommand::Import {
            file,
            format,
            replace,
            target,
        } => {
            let addr = target.resolve("feature").await?;
            let clean = import(&addr, &file, format.as_deref(), replace).await?;
            Ok(exit(clean))
        }
        CatalogCommand::Generate {
            items,
            users,
            seed,
            out,
        } => {
            crate::generate::generate(items, users, seed, &out)?;
            println!(
                "wrote {items} items, {users} users, events, queries and labels to {}",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

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
    // One replica: each feature replica keeps its own store.
    let client = FeatureClient::new(
        Resolver::fixed("feature", &[addr.to_owned()]),
        IMPORT_TIMEOUT,
    );
    let started = Instant::now();
    let resp = client
        .import_catalog(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Deadline::Default,
        )
        .await
        .map_err(crate::args::status)?;
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
