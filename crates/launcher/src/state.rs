//! The state file, `<state dir>/mesh.json`: what a mesh runs, with pids and
//! addresses, so a later `meshctl down`, a restart or a drill finds it again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::LaunchError;

/// What `up` started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshState {
    /// etcd's client URLs, comma-separated.
    pub etcd: String,
    pub processes: Vec<Proc>,
    /// The operator's TLS identity for this mesh (`admin/meshctl`); None when it
    /// runs plaintext (`--insecure`).
    #[serde(default)]
    pub client_tls: Option<rankmesh_tls::TlsFiles>,
}

impl MeshState {
    /// An SDK client identity for this mesh, when it runs TLS.
    pub fn client_tls(&self) -> Result<Option<rankmesh_tls::client::ClientTls>, LaunchError> {
        Ok(match &self.client_tls {
            Some(files) => Some(rankmesh_tls::client::ClientTls::new(files)?),
            None => None,
        })
    }

    /// How a client reaches this mesh's etcd: its members, and on a TLS mesh the
    /// operator's identity as the client certificate etcd requires.
    pub fn etcd_config(&self) -> rankmesh_common::config::EtcdConfig {
        let mut config = rankmesh_common::config::EtcdConfig {
            endpoints: self.etcd.split(',').map(str::to_owned).collect(),
            ..Default::default()
        };
        if let Some(files) = &self.client_tls {
            config.tls = rankmesh_common::config::EtcdTlsConfig::with_identity(files.clone());
        }
        config
    }

    /// The gRPC address of the first instance of `service`.
    pub fn grpc_of(&self, service: &str) -> Result<String, LaunchError> {
        self.processes
            .iter()
            .find(|p| p.service == service)
            .map(|p| p.grpc.clone())
            .ok_or_else(|| LaunchError::Invalid(format!("no {service} service in the mesh")))
    }
}

/// One running process of a mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proc {
    /// Instance id (`ranking-0`, `etcd`, ...).
    pub name: String,
    /// Service name in discovery; `etcd`, `redis` or `collector` for the others.
    pub service: String,
    pub pid: u32,
    /// gRPC address (client URL for etcd, `redis://` URL for Redis).
    pub grpc: String,
    /// Admin HTTP address; empty for etcd and Redis.
    pub admin: String,
    pub log: PathBuf,
}

pub(crate) fn state_file(dir: &Path) -> PathBuf {
    dir.join("mesh.json")
}

/// The mesh recorded in `dir`, if any.
pub fn read_state(dir: &Path) -> Result<Option<MeshState>, LaunchError> {
    let path = state_file(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| LaunchError::Parse { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LaunchError::io("read", path)(e)),
    }
}

/// Records `state` in `dir`, whole or not at all (written aside, then renamed).
pub(crate) fn write_state(dir: &Path, state: &MeshState) -> Result<(), LaunchError> {
    let tmp = dir.join("mesh.json.tmp");
    let bytes = serde_json::to_vec_pretty(state).map_err(|source| LaunchError::Parse {
        path: tmp.clone(),
        source,
    })?;
    std::fs::write(&tmp, bytes).map_err(LaunchError::io("write", &tmp))?;
    std::fs::rename(&tmp, state_file(dir)).map_err(LaunchError::io("write", state_file(dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_file_is_no_mesh() {
        let dir = tempfile::tempdir().expect("dir");
        assert!(read_state(dir.path()).expect("read").is_none());
        let state = MeshState {
            etcd: "http://127.0.0.1:2379".into(),
            processes: vec![Proc {
                name: "feature-0".into(),
                service: "feature".into(),
                pid: 42,
                grpc: "127.0.0.1:50055".into(),
                admin: "127.0.0.1:50056".into(),
                log: dir.path().join("logs/feature-0.log"),
            }],
            client_tls: None,
        };
        write_state(dir.path(), &state).expect("write");
        let back = read_state(dir.path()).expect("read").expect("a mesh");
        assert_eq!(back.grpc_of("feature").expect("feature"), "127.0.0.1:50055");
        assert!(back.grpc_of("ranking").is_err());
        std::fs::write(state_file(dir.path()), b"{").expect("write");
        assert!(matches!(
            read_state(dir.path()),
            Err(LaunchError::Parse { .. })
        ));
    }
}
