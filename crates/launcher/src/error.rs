//! Why a mesh could not be started, restarted or stopped.

use std::path::PathBuf;

/// An error the caller's [`RegistryHook`](crate::RegistryHook) returned.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A file or folder of the state directory could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The state file or the secrets file is not what this launcher writes.
    #[error("parse {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A program could not be started at all.
    #[error("start {}: {source} ({hint})", program.display())]
    Start {
        program: PathBuf,
        hint: &'static str,
        source: std::io::Error,
    },
    /// A process started but did not come up: it exited, or never answered.
    #[error("{0}")]
    Startup(String),
    /// The state directory already has a running mesh.
    #[error(
        "a mesh is already running from {} (pids in mesh.json); run `meshctl down` first",
        .0.display()
    )]
    AlreadyRunning(PathBuf),
    /// A request this mesh cannot satisfy (an unknown instance, a bad key).
    #[error("{0}")]
    Invalid(String),
    /// A certificate could not be made or read.
    #[error("TLS: {0}")]
    Tls(#[from] rankmesh_tls::TlsError),
    /// What the caller does once the registry answers failed.
    #[error("after the registry started: {0}")]
    Hook(#[source] BoxError),
}

impl LaunchError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}
