//! The compose stack as Docker sees it: one compose project on chosen host ports,
//! its containers killed, stopped, started, paused, taken off its network and put
//! back, and discovery read through etcdctl inside an etcd member.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::Command;

/// Every long-running service of the stack (the bootstrap job runs once).
pub(crate) const SERVICES: &[&str] = &[
    "etcd-1",
    "etcd-2",
    "etcd-3",
    "redis",
    "collector",
    "registry-1",
    "registry-2",
    "feature-1",
    "feature-2",
    "embedding-1",
    "embedding-2",
    "ranking-1",
    "ranking-2",
    "ranking-3",
];

/// Longest wait for the stack to come up (the embedding replicas index the catalog).
const STARTUP: Duration = Duration::from_secs(600);

/// One compose project on chosen host ports.
pub(crate) struct Stack {
    program: Vec<String>,
    project: String,
    dir: PathBuf,
    /// Ranking replicas 1-3, then the trace UI.
    ports: [u16; 4],
}

impl Stack {
    /// The stack described in `dir` (`deploy/compose`), as project `project`, its
    /// ranking replicas on `base_port`..`base_port + 2` and the trace UI on the next.
    pub(crate) async fn new(dir: &Path, project: &str, base_port: u16) -> anyhow::Result<Self> {
        let dir = dir.to_owned();
        anyhow::ensure!(
            dir.join(".env").exists(),
            "{} is missing: run scripts/images first (it builds the images and writes it)",
            dir.join(".env").display()
        );
        anyhow::ensure!(
            dir.join("tls/ca.pem").exists(),
            "{} is missing: run scripts/images first (it issues the stack's certificates)",
            dir.join("tls/ca.pem").display()
        );
        // `docker compose` (v2) where there is one, else `docker-compose` (v1).
        let v2 = Command::new("docker")
            .args(["compose", "version"])
            .output()
            .await
            .is_ok_and(|o| o.status.success());
        let program = if v2 {
            vec!["docker".into(), "compose".into()]
        } else {
            vec!["docker-compose".into()]
        };
        Ok(Self {
            program,
            project: project.to_owned(),
            dir,
            ports: [base_port, base_port + 1, base_port + 2, base_port + 3],
        })
    }

    fn compose(&self) -> Command {
        let mut c = Command::new(&self.program[0]);
        c.args(&self.program[1..])
            .arg("--env-file")
            .arg(self.dir.join(".env"))
            .arg("-f")
            .arg(self.dir.join("docker-compose.yml"))
            .args(["-p", &self.project])
            .env("RANKMESH_RANKING_PORT_1", self.ports[0].to_string())
            .env("RANKMESH_RANKING_PORT_2", self.ports[1].to_string())
            .env("RANKMESH_RANKING_PORT_3", self.ports[2].to_string())
            .env("RANKMESH_TRACE_UI_PORT", self.ports[3].to_string());
        c
    }

    async fn compose_run(&self, args: &[&str]) -> anyhow::Result<String> {
        output(
            self.compose().args(args),
            &format!("compose {}", args.join(" ")),
        )
        .await
    }

    /// The operator identity scripts/images issued for calling the stack from
    /// the host.
    pub(crate) fn operator_tls(&self) -> anyhow::Result<rankmesh_tls::client::ClientTls> {
        let tls = self.dir.join("tls");
        let operator = rankmesh_tls::Identity::new("admin", "meshctl")?;
        let files = rankmesh_tls::TlsFiles::in_dir(&tls, &operator);
        rankmesh_tls::client::ClientTls::new(&files)
            .with_context(|| format!("the stack's operator identity in {}", tls.display()))
    }

    /// The ranking replicas as the host reaches them.
    pub(crate) fn ranking_addrs(&self) -> Vec<String> {
        self.ports[..3]
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// Starts the stack and waits until the bootstrap job has published the models
    /// and loaded the catalog, and every service reports healthy.
    pub(crate) async fn up(&self) -> anyhow::Result<()> {
        self.compose_run(&["up", "-d"]).await?;
        let deadline = Instant::now() + STARTUP;
        let bootstrap = self.container("bootstrap").await?;
        loop {
            let state = inspect(&bootstrap, "{{.State.Status}} {{.State.ExitCode}}").await?;
            if state == "exited 0" {
                break;
            }
            anyhow::ensure!(
                !state.starts_with("exited"),
                "the bootstrap job failed ({state}); see `{} -p {} logs bootstrap`",
                self.program.join(" "),
                self.project
            );
            anyhow::ensure!(
                Instant::now() < deadline,
                "bootstrap not done in {STARTUP:?}"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        for service in SERVICES {
            let id = self.container(service).await?;
            loop {
                let health = inspect(&id, "{{.State.Health.Status}}").await?;
                if health == "healthy" {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{service} is {health} after {STARTUP:?}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Ok(())
    }

    /// Stops the stack and removes its containers, network and volumes.
    pub(crate) async fn down(&self) {
        // A paused container cannot be stopped; a disconnected one is removed anyway.
        for service in SERVICES {
            if let Ok(id) = self.container(service).await {
                let _ = output(Command::new("docker").args(["unpause", &id]), "unpause").await;
            }
        }
        let _ = self
            .compose_run(&["down", "-v", "--remove-orphans", "-t", "5"])
            .await;
    }

    /// Every container's log, into `path`.
    pub(crate) async fn save_logs(&self, path: &Path) {
        if let Ok(text) = self.compose_run(&["logs", "--no-color"]).await {
            let _ = std::fs::write(path, text);
        }
    }

    /// The container id of `service`.
    pub(crate) async fn container(&self, service: &str) -> anyhow::Result<String> {
        let id = self
            .compose_run(&["ps", "-q", service])
            .await?
            .trim()
            .to_owned();
        anyhow::ensure!(
            !id.is_empty(),
            "no container for {service:?} in the stack ({})",
            SERVICES.join(", ")
        );
        Ok(id)
    }

    async fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        output(
            Command::new("docker").args(args),
            &format!("docker {}", args.join(" ")),
        )
        .await
    }

    pub(crate) async fn kill(&self, service: &str) -> anyhow::Result<()> {
        let id = self.container(service).await?;
        self.docker(&["kill", "-s", "KILL", &id]).await.map(drop)
    }

    /// SIGTERM, then SIGKILL after the service's drain timeout: a graceful stop.
    pub(crate) async fn stop(&self, service: &str) -> anyhow::Result<()> {
        let id = self.container(service).await?;
        self.docker(&["stop", "-t", "15", &id]).await.map(drop)
    }

    /// Starts a killed container again (same container: same volumes and config).
    pub(crate) async fn start(&self, service: &str) -> anyhow::Result<()> {
        let id = self.container(service).await?;
        self.docker(&["start", &id]).await.map(drop)
    }

    pub(crate) async fn pause(&self, service: &str) -> anyhow::Result<()> {
        let id = self.container(service).await?;
        self.docker(&["pause", &id]).await.map(drop)
    }

    pub(crate) async fn unpause(&self, service: &str) -> anyhow::Result<()> {
        let id = self.container(service).await?;
        self.docker(&["unpause", &id]).await.map(drop)
    }

    /// Disconnects `service` from the stack's network; returns what `reconnect`
    /// needs to put it back.
    pub(crate) async fn disconnect(&self, service: &str) -> anyhow::Result<Detached> {
        let id = self.container(service).await?;
        let networks = inspect(
            &id,
            "{{range $name, $n := .NetworkSettings.Networks}}{{$name}} {{end}}",
        )
        .await?;
        let network = networks
            .split_whitespace()
            .next()
            .with_context(|| format!("{service} is on no network"))?
            .to_owned();
        self.docker(&["network", "disconnect", &network, &id])
            .await?;
        Ok(Detached {
            id,
            network,
            alias: service.to_owned(),
        })
    }

    /// Connects a disconnected container again, under its service name, so the
    /// others find it as before.
    pub(crate) async fn reconnect(&self, d: &Detached) -> anyhow::Result<()> {
        self.docker(&["network", "connect", "--alias", &d.alias, &d.network, &d.id])
            .await
            .map(drop)
    }

    /// Runs etcdctl in the first etcd member that answers.
    async fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut last = None;
        for member in ["etcd-1", "etcd-2", "etcd-3"] {
            let Ok(id) = self.container(member).await else {
                continue;
            };
            let mut argv = vec![
                "exec",
                id.as_str(),
                "/usr/local/bin/etcdctl",
                "--command-timeout=3s",
            ];
            argv.extend_from_slice(args);
            match self.docker(&argv).await {
                Ok(out) => return Ok(out),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd member in the stack")))
    }

    /// The etcd member (service name) that leads now.
    pub(crate) async fn etcd_leader(&self) -> anyhow::Result<String> {
        for member in ["etcd-1", "etcd-2", "etcd-3"] {
            let Ok(id) = self.container(member).await else {
                continue;
            };
            let Ok(out) = self
                .docker(&[
                    "exec",
                    &id,
                    "/usr/local/bin/etcdctl",
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                ])
                .await
            else {
                continue;
            };
            let status: serde_json::Value = serde_json::from_str(&out)
                .with_context(|| format!("etcdctl endpoint status: {out}"))?;
            let s = &status[0]["Status"];
            if s["header"]["member_id"].is_u64() && s["header"]["member_id"] == s["leader"] {
                return Ok(member.to_owned());
            }
        }
        anyhow::bail!("no etcd member says it leads")
    }

    /// The instances registered in discovery for `service` (`ranking`, ...).
    pub(crate) async fn registered(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let prefix = rankmesh_common::discovery::service_prefix(service);
        let out = self
            .etcdctl(&["get", "--prefix", "--keys-only", &prefix])
            .await?;
        Ok(out
            .lines()
            .filter_map(|k| k.strip_prefix(prefix.as_str()))
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

/// A container taken off its network by a partition.
pub(crate) struct Detached {
    id: String,
    network: String,
    alias: String,
}

async fn inspect(container: &str, format: &str) -> anyhow::Result<String> {
    output(
        Command::new("docker").args(["inspect", "-f", format, container]),
        "docker inspect",
    )
    .await
    .map(|s| s.trim().to_owned())
}

/// Runs `cmd`; its stdout, or an error with its stderr.
async fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("{what}: cannot run it (is Docker installed?)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
