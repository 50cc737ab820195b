//! A real etcd (Debian's `etcd-server`) on free loopback ports, for tests, on
//! mutual TLS as in a deployed mesh: each member holds a certificate of the test
//! binary's CA ([`crate::tls`]) and requires one of every client and peer.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use rankmesh_common::config::{EtcdConfig, EtcdTlsConfig};
use rankmesh_tls::TlsFiles;

/// One etcd process of a test cluster.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    tls: TlsFiles,
    child: Option<Child>,
}

impl Member {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// An etcd cluster of one or more members, each in its own data dir under a temp dir.
/// Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

/// Where the etcd binary is: `$ETCD_BIN`, else `/usr/bin/etcd`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

impl EtcdCluster {
    /// A single-node etcd.
    pub async fn single() -> Self {
        Self::start(1).await
    }

    /// Starts `n` members and waits until every member answers and a leader exists.
    pub async fn start(n: usize) -> Self {
        let bin = etcd_binary();
        assert!(
            bin.exists(),
            "etcd not found at {}; run scripts/setup (installs etcd-server)",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let mut members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                let tls = crate::tls::kit().issue("etcd", &name, &hosts, &dir.path().join("tls"));
                Member {
                    client_url: format!("https://127.0.0.1:{}", crate::free_port()),
                    peer_url: format!("https://127.0.0.1:{}", crate::free_port()),
                    name,
                    tls,
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.child = Some(spawn_member(&bin, dir.path(), m, &initial_cluster));
        }
        let cluster = Self { dir, members };
        cluster.wait_ready(Duration::from_secs(30)).await;
        cluster
    }

    /// Client URLs of all members (dead ones included, as a client would have them).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The data directory root (member logs are at `<dir>/<name>.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How a workload of the mesh reaches this cluster: every member, with the
    /// test binary's operator identity as its client certificate. Tests set the
    /// timings they need on top.
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints(),
            tls: EtcdTlsConfig::with_identity(crate::tls::kit().operator().clone()),
            ..EtcdConfig::default()
        }
    }

    /// A raw etcd client connected to every member.
    pub async fn client(&self) -> Client {
        connect(&self.endpoints())
            .await
            .expect("etcd client (connects lazily)")
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts a killed member on its old ports and data dir, and waits until the
    /// cluster answers again.
    pub async fn restart(&mut self, i: usize) {
        assert!(!self.members[i].is_running(), "member {i} is still running");
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let child = spawn_member(
            &etcd_binary(),
            self.dir.path(),
            &self.members[i],
            &initial_cluster,
        );
        self.members[i].child = Some(child);
        self.wait_ready(Duration::from_secs(30)).await;
    }

    /// Index of the member that currently leads the raft group.
    pub async fn leader_index(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if !m.is_running() {
                continue;
            }
            let Ok(mut c) = connect(std::slice::from_ref(&m.client_url)).await else {
                continue;
            };
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), c.status()).await {
                let me = s.header().map(|h| h.member_id());
                if me.is_some() && me == Some(s.leader()) {
                    return Some(i);
                }
            }
        }
        None
    }

    async fn wait_ready(&self, timeout: Duration) {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.client_url.clone())
            .collect();
        crate::eventually(timeout, "etcd members to answer and elect a leader", || {
            let endpoints = endpoints.clone();
            async move {
                for ep in &endpoints {
                    let mut c = connect(std::slice::from_ref(ep)).await.ok()?;
                    let s = tokio::time::timeout(Duration::from_secs(1), c.status())
                        .await
                        .ok()?
                        .ok()?;
                    if s.leader() == 0 {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }
}

/// A raw client of `endpoints` on mutual TLS with the operator identity.
async fn connect(endpoints: &[String]) -> Result<Client, etcd_client::Error> {
    let files = crate::tls::kit().operator();
    let read = |p: &Path| std::fs::read(p).expect("kit TLS file");
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)))
        .identity(Identity::from_pem(read(&files.cert), read(&files.key)))
        .domain_name(rankmesh_tls::Identity::server_name("etcd"));
    Client::connect(endpoints, Some(ConnectOptions::new().with_tls(tls))).await
}

fn spawn_member(bin: &Path, dir: &Path, m: &Member, initial_cluster: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{}.log", m.name)))
        .expect("etcd log file");
    Command::new(bin)
        .args(["--name", &m.name])
        .arg("--data-dir")
        .arg(dir.join(&m.name))
        .args(["--listen-client-urls", &m.client_url])
        .args(["--advertise-client-urls", &m.client_url])
        .args(["--listen-peer-urls", &m.peer_url])
        .args(["--initial-advertise-peer-urls", &m.peer_url])
        .args(["--initial-cluster", initial_cluster])
        .args(["--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", "rankmesh-test"])
        // Mutual TLS for clients and peers, as `meshctl up` runs its members.
        .args(tls_flags(&m.tls))
        .args([
            "--peer-cert-allowed-hostname",
            &rankmesh_tls::Identity::server_name("etcd"),
        ])
        // Fast raft timing: a lost member leader is replaced in about a second.
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(["--logger", "zap", "--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn etcd")
}

fn tls_flags(files: &TlsFiles) -> Vec<std::ffi::OsString> {
    let mut flags = Vec::new();
    for prefix in ["--", "--peer-"] {
        for (flag, path) in [
            ("cert-file", &files.cert),
            ("key-file", &files.key),
            ("trusted-ca-file", &files.ca),
        ] {
            flags.push(format!("{prefix}{flag}").into());
            flags.push(path.into());
        }
        flags.push(format!("{prefix}client-cert-auth").into());
    }
    flags
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
