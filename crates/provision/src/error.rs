//! Why a mesh could not be given its models or its catalog.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A model, sidecar or catalog file could not be read.
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A call to the mesh was refused or failed.
    #[error("{what}: {:?}: {}", status.code(), status.message())]
    Rpc {
        what: &'static str,
        status: tonic::Status,
    },
    /// What was asked cannot be done as asked (an unknown catalog format, a reply
    /// without what it must hold).
    #[error("{0}")]
    Invalid(String),
    /// A default model could not be published or made production.
    #[error("publishing the {model}{hint}: {source}")]
    Default {
        model: &'static str,
        /// How to fix the usual cause, if there is one.
        hint: &'static str,
        source: Box<ProvisionError>,
    },
    /// The mesh's processes could not be started.
    #[error(transparent)]
    Launch(#[from] rankmesh_launcher::LaunchError),
}

impl ProvisionError {
    pub(crate) fn read(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Read { path, source }
    }

    pub(crate) fn rpc(what: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| Self::Rpc { what, status }
    }
}
