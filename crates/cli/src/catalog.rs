//! `meshctl catalog import` (stream a catalog file to a feature replica through
//! the SDK) and `meshctl catalog generate` (a synthetic store, [`crate::generate`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use rankmesh_client::{FeatureClient, Resolver};

use crate::args::{TargetArgs, exit};

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
    let format = rankmesh_provision::catalog::format_of(path, format)?;
    // One replica: each feature replica keeps its own store.
    let client = FeatureClient::new(
        Resolver::fixed("feature", &[addr.to_owned()]),
        IMPORT_TIMEOUT,
    );
    let imported = rankmesh_provision::catalog::import_file(&client, path, format, replace).await?;
    print_imported(&imported);
    Ok(imported.response.rejected == 0)
}

/// What an import did, as meshctl says it: counts, rate, the first rejected rows.
pub(crate) fn print_imported(i: &rankmesh_provision::Imported) {
    let (resp, secs) = (&i.response, i.elapsed.as_secs_f64());
    println!(
        "imported {} items, rejected {} rows ({:.1} MB in {secs:.1} s, {:.0} items/s)",
        resp.imported,
        resp.rejected,
        i.file_bytes as f64 / 1e6,
        resp.imported as f64 / secs.max(1e-9)
    );
    for e in resp.errors.iter().take(20) {
        println!("  line {}: {}", e.line, e.reason);
    }
    if resp.rejected as usize > 20 {
        println!("  ... and {} more", resp.rejected as usize - 20);
    }
}
