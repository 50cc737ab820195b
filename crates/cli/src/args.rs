//! Arguments several subcommands share: where the mesh is (etcd, or one replica's
//! address), where the local mesh keeps its state, `KEY=VALUE` pairs, and how the
//! project's offline Python tooling is run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use rankmesh_common::config::EtcdConfig;
use rankmesh_common::discovery::Resolver;
use rankmesh_common::etcd::Etcd;

/// One script of the project's offline tooling (`scripts/`), run by the venv's
/// Python that scripts/setup creates.
#[derive(Debug, Clone)]
pub(crate) struct PythonTool {
    pub(crate) python: PathBuf,
    pub(crate) script: PathBuf,
}

impl PythonTool {
    /// `python`, else `$RANKMESH_VENV/bin/python` (`.rankmesh/env` sets it), else
    /// `.venv/bin/python`; `script` as given.
    pub(crate) fn new(python: Option<PathBuf>, script: PathBuf) -> Self {
        let python = python.unwrap_or_else(|| match std::env::var_os("RANKMESH_VENV") {
            Some(venv) => PathBuf::from(venv).join("bin/python"),
            None => PathBuf::from(".venv/bin/python"),
        });
        Self { python, script }
    }

    /// The interpreter with the script as its first argument.
    pub(crate) fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.python);
        cmd.arg(&self.script);
        cmd
    }

    /// What failed when it could not start, and how to fix that.
    pub(crate) fn not_started(&self) -> String {
        format!(
            "run {} {} (scripts/setup creates the venv)",
            self.python.display(),
            self.script.display()
        )
    }
}

/// Installs meshctl's client identity (mutual TLS): `RANKMESH_TLS_CA`,
/// `RANKMESH_TLS_CERT` and `RANKMESH_TLS_KEY` when set, else the operator's of
/// the local mesh in `state_dir` (by default `$RANKMESH_STATE_DIR`, else
/// `.rankmesh/run`) when it runs TLS; none (plaintext) otherwise, replacing what
/// was installed before.
///
/// The same identity is meshctl's client certificate towards etcd, and the local
/// mesh's etcd is where `--etcd` points when it is not given.
pub(crate) fn install_identity(state_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let var = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let state = state_dir.map(std::path::Path::to_owned).unwrap_or_else(|| {
        var("RANKMESH_STATE_DIR").unwrap_or_else(|| PathBuf::from(".rankmesh/run"))
    });
    let mesh = rankmesh_launcher::read_state(&state).ok().flatten();
    let local_etcd = mesh.as_ref().map(|m| m.etcd.clone());
    if let (Some(ca), Some(cert), Some(key)) = (
        var("RANKMESH_TLS_CA"),
        var("RANKMESH_TLS_CERT"),
        var("RANKMESH_TLS_KEY"),
    ) {
        let files = rankmesh_tls::TlsFiles { ca, cert, key };
        let tls = rankmesh_tls::client::ClientTls::new(&files)
            .with_context(|| format!("meshctl's TLS identity ({})", files.cert.display()))?;
        rankmesh_tls::client::install(tls);
        remember(Some(files), local_etcd);
        return Ok(());
    }
    let Some(files) = mesh.and_then(|s| s.client_tls) else {
        rankmesh_tls::client::uninstall();
        remember(None, local_etcd);
        return Ok(());
    };
    // A mesh left behind may have lost its files: say so, and go on without.
    match rankmesh_tls::client::ClientTls::new(&files) {
        Ok(tls) => {
            rankmesh_tls::client::install(tls);
            remember(Some(files), local_etcd);
        }
        Err(e) => {
            rankmesh_tls::client::uninstall();
            remember(None, local_etcd);
            eprintln!("warning: the local mesh's TLS identity: {e}; calling in plaintext");
        }
    }
    Ok(())
}

/// What [`install_identity`] found: the identity's files (for etcd, which takes
/// files, not a built config) and the local mesh's etcd endpoints.
#[derive(Debug, Clone, Default)]
struct Installed {
    files: Option<rankmesh_tls::TlsFiles>,
    local_etcd: Option<String>,
}

static INSTALLED: std::sync::Mutex<Installed> = std::sync::Mutex::new(Installed {
    files: None,
    local_etcd: None,
});

fn remember(files: Option<rankmesh_tls::TlsFiles>, local_etcd: Option<String>) {
    *INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Installed { files, local_etcd };
}

fn installed() -> Installed {
    INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Where the local mesh keeps its data, logs and process list.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StateArgs {
    #[arg(long, env = "RANKMESH_STATE_DIR", default_value = ".rankmesh/run")]
    pub(crate) state_dir: PathBuf,
}

/// Which replicas to talk to: one explicit address, or every one registered.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TargetArgs {
    /// gRPC address of one replica; every registered replica (through etcd) when
    /// omitted.
    #[arg(long)]
    pub(crate) addr: Option<String>,
    #[command(flatten)]
    pub(crate) etcd: EtcdArgs,
}

impl TargetArgs {
    /// The replicas of `service` for an SDK client: the one at `--addr`, or a
    /// watch on discovery (the client balances over them and fails over), once
    /// it lists at least one.
    pub(crate) async fn resolver(&self, service: &'static str) -> anyhow::Result<Resolver> {
        match &self.addr {
            Some(a) => Ok(Resolver::fixed(service, std::slice::from_ref(a))),
            None => self.etcd.watch(service).await,
        }
    }

    /// One replica's address: `--addr`, or the first registered.
    pub(crate) async fn resolve(&self, service: &str) -> anyhow::Result<String> {
        if let Some(a) = &self.addr {
            return Ok(a.clone());
        }
        let etcd = self.etcd.connect().await?;
        let set = rankmesh_common::discovery::list(&etcd, service).await?;
        set.into_values().next().map(|e| e.grpc).ok_or_else(|| {
            anyhow::anyhow!(
                "no {service} instance registered in etcd ({:?}); is the mesh up?",
                self.etcd.endpoints()
            )
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EtcdArgs {
    /// etcd endpoints, comma-separated; default: the local mesh's (in
    /// RANKMESH_STATE_DIR, else .rankmesh/run), else http://127.0.0.1:2379.
    /// `https://` endpoints are called with meshctl's TLS identity.
    #[arg(long, env = "RANKMESH_ETCD", value_delimiter = ',')]
    pub(crate) etcd: Vec<String>,
}

/// How long a command waits for discovery to list a service.
const DISCOVERY_WAIT: Duration = Duration::from_secs(10);

impl EtcdArgs {
    /// A watch on the registered replicas of `service`, once it lists one.
    pub(crate) async fn watch(&self, service: &'static str) -> anyhow::Result<Resolver> {
        let resolver = Resolver::watch(self.connect().await?, service);
        tokio::time::timeout(DISCOVERY_WAIT, resolver.wait_for(|set| !set.is_empty()))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no {service} instance registered in etcd ({:?}) within {DISCOVERY_WAIT:?}; is the mesh up?",
                    self.endpoints()
                )
            })?;
        Ok(resolver)
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<Etcd> {
        let config = self.config();
        config.validate()?;
        Ok(Etcd::connect(&config).await?)
    }

    /// The endpoints (see `--etcd`), and for `https://` ones meshctl's identity.
    fn config(&self) -> EtcdConfig {
        let installed = installed();
        let endpoints = match (&self.etcd[..], installed.local_etcd) {
            ([], Some(local)) => local.split(',').map(str::to_owned).collect(),
            ([], None) => vec!["http://127.0.0.1:2379".to_owned()],
            (given, _) => given.to_vec(),
        };
        let mut config = EtcdConfig {
            endpoints,
            ..EtcdConfig::default()
        };
        if let Some(files) = installed.files
            && config.endpoints.iter().all(|e| e.starts_with("https://"))
        {
            config.tls = rankmesh_common::config::EtcdTlsConfig::with_identity(files);
        }
        config
    }

    /// The endpoints this command talks to, for messages.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.config().endpoints
    }
}

/// `KEY=VALUE`.
pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// Exit code of a check: success when `ok`.
pub(crate) fn exit(ok: bool) -> std::process::ExitCode {
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// A gRPC status as the command line reports it.
pub(crate) fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}
