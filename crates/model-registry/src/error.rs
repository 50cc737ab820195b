//! The registry's one error type, and the one place it becomes a gRPC status.
//!
//! What a caller can act on (a field it got wrong, a version that does not exist, a
//! stage change that conflicts) is answered with its message. What it cannot (the
//! control plane or object store failing, a corrupt record, a bug) is logged here
//! with its source and answered with a generic message, so no backend's error text
//! (hosts, paths, keys) reaches a client.

use rankmesh_artifact::envelope::EnvelopeError;
use tonic::Status;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A request field is wrong; the message starts with the field's name.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is well formed but the registry's state refuses it (a
    /// conflicting stage change, writes disabled, an unconfigured key).
    #[error("{0}")]
    Precondition(String),
    /// An upload over a size limit.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller's upload stream broke; nothing was stored.
    #[error("{0}")]
    Aborted(String),
    /// The upload sent nothing for the server's idle limit; nothing was stored.
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A failure inside the registry (a panicked blocking task, ...).
    #[error("{context}: {message}")]
    Internal {
        context: &'static str,
        message: String,
    },
}

impl RegistryError {
    /// An upload whose stream failed: the server's own limits on it (idle too
    /// long, a message over the size limit) keep their codes; anything else broke
    /// the stream.
    pub fn upload_broken(e: &tonic::Status) -> Self {
        match e.code() {
            tonic::Code::DeadlineExceeded => Self::DeadlineExceeded(e.message().to_owned()),
            tonic::Code::ResourceExhausted => Self::TooLarge(e.message().to_owned()),
            _ => Self::Aborted(format!(
                "upload interrupted: {}; nothing stored",
                e.message()
            )),
        }
    }

    pub fn internal(context: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Internal {
            context,
            message: e.to_string(),
        }
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(m) => Status::invalid_argument(m),
            RegistryError::NotFound(m) => Status::not_found(m),
            RegistryError::AlreadyExists(m) => Status::already_exists(m),
            RegistryError::Precondition(m) => Status::failed_precondition(m),
            RegistryError::TooLarge(m) => Status::resource_exhausted(m),
            RegistryError::OutOfRange(m) => Status::out_of_range(m),
            RegistryError::Unauthenticated(m) => Status::unauthenticated(m),
            RegistryError::PermissionDenied(m) => Status::permission_denied(m),
            RegistryError::Aborted(m) => Status::aborted(m),
            RegistryError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            RegistryError::Store(e) => match e {
                StoreError::NotFound(m) => Status::not_found(m),
                StoreError::Conflict(m) => Status::failed_precondition(m),
                StoreError::Etcd(e) => {
                    tracing::warn!(error = %e, "control plane call failed");
                    Status::unavailable("the registry's control plane is unavailable; retry")
                }
                StoreError::Blob(m) => {
                    tracing::warn!(error = %m, "object store call failed");
                    Status::unavailable("the registry's object store is unavailable; retry")
                }
                StoreError::Corrupt { key, message } => {
                    tracing::error!(key, message, "corrupt registry record");
                    Status::internal("corrupt registry record; see the registry log")
                }
            },
            RegistryError::Envelope(EnvelopeError::UnknownKey(k)) => {
                Status::failed_precondition(format!("key {k:?} is not configured"))
            }
            RegistryError::Envelope(e) => {
                tracing::error!(error = %e, "envelope operation failed");
                Status::internal("encryption failed; see the registry log")
            }
            RegistryError::Internal { context, message } => {
                tracing::error!(context, error = %message, "registry internal error");
                Status::internal("internal error; see the registry log")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn backend_text_never_reaches_the_caller() {
        let cases = [
            (
                RegistryError::Store(StoreError::Blob("s3://secret-bucket/path".into())),
                Code::Unavailable,
            ),
            (
                RegistryError::Store(StoreError::Corrupt {
                    key: "/rankmesh/models/x".into(),
                    message: "bad json at 3".into(),
                }),
                Code::Internal,
            ),
            (
                RegistryError::Envelope(EnvelopeError::Malformed("nonce 3 bytes".into())),
                Code::Internal,
            ),
            (
                RegistryError::internal("validate", "thread panicked at src/x.rs"),
                Code::Internal,
            ),
        ];
        for (e, code) in cases {
            let s = Status::from(e);
            assert_eq!(s.code(), code);
            for leak in ["secret-bucket", "bad json", "nonce", "src/x.rs"] {
                assert!(!s.message().contains(leak), "{leak} in {:?}", s.message());
            }
        }
    }

    #[test]
    fn what_the_caller_can_fix_is_said() {
        let s = Status::from(RegistryError::Invalid("name: \"A\" must match".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("name:"));
        let s = Status::from(RegistryError::Envelope(EnvelopeError::UnknownKey(
            "k9".into(),
        )));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("k9"));
        let s = Status::from(RegistryError::Store(StoreError::Conflict(
            "v2 is already in production".into(),
        )));
        assert_eq!(s.code(), Code::FailedPrecondition);
    }
}
