//! `meshctl up` and `meshctl down`: the local mesh as processes on loopback (the
//! work is `rankmesh-launcher`'s and [`crate::mesh`]'s; this is the command line
//! around it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::{StateArgs, parse_kv};
use crate::mesh;
use rankmesh_launcher as launcher;

/// Start etcd and every service as local processes on loopback, wait until all
/// are healthy and print the endpoints. Ctrl-C stops everything.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// Number of ranking replicas.
    #[arg(long, default_value_t = 2)]
    ranking_replicas: usize,
    /// Return once healthy, leaving the mesh running (`meshctl down` stops it).
    #[arg(long)]
    detach: bool,
    /// etcd client port (the peer port is the next one).
    #[arg(long, default_value_t = 2379)]
    etcd_port: u16,
    /// First service port: ranking-0 gRPC here, its admin port next, and so on.
    #[arg(long, default_value_t = 50051)]
    base_port: u16,
    /// Exported models (`encoder/` inside), as written by scripts/setup.
    #[arg(long, env = "RANKMESH_MODELS", default_value = "models")]
    models: PathBuf,
    /// Catalog (JSONL, import format) loaded into the feature service and indexed
    /// by the embedding service.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Run ranking without the trained ranker (retrieval order), even when
    /// `<models>/ranker/model.onnx` exists.
    #[arg(long)]
    no_ranker: bool,
    /// Extra KEY=VALUE environment for the ranking replicas (repeatable), e.g.
    /// RANKMESH__ROLLOUT__WINDOW_MS=10000.
    #[arg(long = "ranking-env", value_parser = parse_kv)]
    ranking_env: Vec<(String, String)>,
    /// Extra KEY=VALUE environment for the embedding replicas (repeatable), e.g.
    /// RANKMESH__ONNX__DEVICE=cuda.
    #[arg(long = "embedding-env", value_parser = parse_kv)]
    embedding_env: Vec<(String, String)>,
    /// Port of the embedded trace collector's UI and Jaeger API (the services
    /// export spans to it over OTLP on --otlp-port).
    #[arg(long, default_value_t = 16686)]
    trace_ui_port: u16,
    #[arg(long, default_value_t = 4317)]
    otlp_port: u16,
    /// Share of requests traced (parent-based: a traced request is traced in
    /// every service it reaches).
    #[arg(long, default_value_t = 1.0)]
    trace_sample_ratio: f64,
    /// Start no trace collector and export no spans.
    #[arg(long)]
    no_traces: bool,
    /// etcd members: 1, or 3 (a cluster; member i on --etcd-port + 2i).
    #[arg(long, default_value_t = 1)]
    etcd_members: usize,
    /// Plaintext gRPC everywhere (no certificates). Without it every hop is
    /// mutual TLS with identities from the mesh's own CA (`<state dir>/tls`).
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    state: StateArgs,
}

pub(crate) async fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.etcd_members == 1 || a.etcd_members == 3,
        "--etcd-members must be 1 or 3"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.trace_sample_ratio),
        "--trace-sample-ratio must be within 0.0..=1.0"
    );
    let cwd = std::env::current_dir()?;
    let absolute = |p: PathBuf| if p.is_absolute() { p } else { cwd.join(p) };
    let bin_dir = launcher::own_bin_dir()?;
    let state_dir = a.state.state_dir;
    let serve = mesh::Serve {
        ranker: (!a.no_ranker)
            .then(|| absolute(a.models.join("ranker")))
            .filter(|d| d.join("model.onnx").exists()),
        models: absolute(a.models),
        catalog: a.catalog.map(absolute),
    };
    let opts = launcher::UpOptions {
        state_dir: state_dir.clone(),
        ranking_replicas: a.ranking_replicas,
        etcd_port: a.etcd_port,
        base_port: a.base_port,
        bin_dir,
        follow_ranker: serve.ranker.is_some(),
        quantizer: mesh::quantizer(&serve.models),
        insecure: a.insecure,
        ranking_env: a.ranking_env,
        embedding_env: a.embedding_env,
        etcd_members: a.etcd_members,
        redis_port: None,
        instance_env: Default::default(),
        traces: (!a.no_traces).then_some(launcher::TraceOptions {
            ui_port: a.trace_ui_port,
            otlp_port: a.otlp_port,
            sample_ratio: a.trace_sample_ratio,
        }),
    };
    let mesh = mesh::up(&opts, &serve).await?;
    println!(
        "{:<12} {:<10} {:>8} {:<24} {:<24}",
        "INSTANCE", "SERVICE", "PID", "GRPC", "ADMIN"
    );
    for p in &mesh.processes {
        println!(
            "{:<12} {:<10} {:>8} {:<24} {:<24}",
            p.name, p.service, p.pid, p.grpc, p.admin
        );
    }
    println!(
        "\netcd: {}   logs: {}",
        mesh.etcd,
        state_dir.join("logs").display()
    );
    if a.detach {
        println!("mesh running; stop it with `meshctl down`");
        return Ok(ExitCode::SUCCESS);
    }
    println!("mesh running; Ctrl-C stops it");
    rankmesh_common::server::shutdown_signal().await;
    launcher::stop(&mesh, Duration::from_secs(10)).await;
    launcher::down(&state_dir).await?;
    println!("mesh stopped");
    Ok(ExitCode::SUCCESS)
}

/// Stop a mesh started with `meshctl up --detach`.
#[derive(Debug, clap::Args)]
pub(crate) struct DownArgs {
    #[command(flatten)]
    state: StateArgs,
}

pub(crate) async fn down(a: DownArgs) -> anyhow::Result<ExitCode> {
    let n = launcher::down(&a.state.state_dir).await?;
    println!("stopped {n} running process(es)");
    Ok(ExitCode::SUCCESS)
}
