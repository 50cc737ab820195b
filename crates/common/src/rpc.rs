//! The error a handler answers with, mapped onto gRPC codes in one place.
//!
//! Every service used to define its own enum with the same variants and the same
//! `From<_> for Status`; they now share [`RpcError`]. Each variant names the code a
//! caller sees, so a handler says what went wrong in the caller's terms, and
//! [`RpcError::Internal`] is the one whose text stays in the server log: callers
//! get a generic message, never a path, a backend error or a panic.

use tonic::Status;

/// Whether `path` is a health check or reflection call: the infrastructure every
/// server answers whatever its load, and to any identity of the mesh.
pub fn is_health_or_reflection(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

use crate::batcher::BatchError;

/// A failed RPC, by the gRPC code it answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// A request field the caller must fix; the message names the field.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    /// The server is not in a state to answer (e.g. no index built yet).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A conflicting operation is running; retry after it ends.
    #[error("{0}")]
    Aborted(String),
    /// Over a size limit or a queue's capacity.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency is down; another replica or a retry may succeed.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug or a backend failure: logged, answered with a generic message.
    #[error("{0}")]
    Internal(String),
}

/// An `INVALID_ARGUMENT` naming the request field at fault.
pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> RpcError {
    RpcError::InvalidArgument {
        field: field.into(),
        message: message.into(),
    }
}

/// Whether a text field may be left blank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blank {
    Allowed,
    Refused,
}

/// Checks a caller's text field: at most `max_bytes`, and not blank where
/// [`Blank::Refused`].
pub fn check_text(field: &str, text: &str, max_bytes: usize, blank: Blank) -> Result<(), RpcError> {
    if blank == Blank::Refused && text.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if text.len() > max_bytes {
        return Err(invalid(
            field,
            format!("{} bytes; at most {max_bytes}", text.len()),
        ));
    }
    Ok(())
}

/// The caller's deadline: its `grpc-timeout` header ("250m", "1S", "500000u", ...),
/// when it sent one that parses.
pub fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    })
}

/// Most bytes of a caller's value an error message quotes.
pub const QUOTE_BYTES: usize = 80;

/// At most [`QUOTE_BYTES`] of a caller's string (cut at a character boundary), for
/// an error message: a refused megabyte-long value must not come back whole in the
/// reply or in a log line.
pub fn clip(s: &str) -> &str {
    let mut end = s.len().min(QUOTE_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Runs a fallible `f` on the blocking pool; its error (or a panic) is ours:
/// [`RpcError::Internal`].
pub async fn blocking<T, E, F>(f: F) -> Result<T, RpcError>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    crate::blocking::try_run(f)
        .await
        .map_err(RpcError::Internal)
}

/// Checks a count the caller asked for (`k`, a page size): within `1..=max`.
pub fn check_count(field: &str, n: u32, max: u32) -> Result<usize, RpcError> {
    if n == 0 || n > max {
        return Err(invalid(field, format!("must be within 1..={max}, got {n}")));
    }
    Ok(n as usize)
}

/// A filter the caller wrote wrongly names its field.
impl From<crate::filters::FilterError> for RpcError {
    fn from(e: crate::filters::FilterError) -> Self {
        invalid(e.field, e.message)
    }
}

impl From<RpcError> for Status {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            RpcError::NotFound(m) => Status::not_found(m),
            RpcError::FailedPrecondition(m) => Status::failed_precondition(m),
            RpcError::Aborted(m) => Status::aborted(m),
            RpcError::ResourceExhausted(m) => Status::resource_exhausted(m),
            RpcError::Unavailable(m) => Status::unavailable(m),
            RpcError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            RpcError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error; see the service log")
            }
        }
    }
}

/// A full batch queue is the caller's cue to back off; a failed or stopped model is
/// ours.
impl From<BatchError> for RpcError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::QueueFull { .. } => Self::ResourceExhausted(e.to_string()),
            BatchError::Model(m) => Self::Internal(m),
            BatchError::Stopped => Self::Internal("model batcher stopped".into()),
        }
    }
}

/// Implements a generated tonic service trait for an `Api { inner }` wrapper whose
/// unary (or client-streaming) methods all do the same thing: hand the decoded
/// request to a method of `self.inner` and answer with what it returns (its error
/// converted to a `Status`). Written once here, so each service lists its methods
/// and keeps hand-written bodies only for the methods that do more.
///
/// ```text
/// rankmesh_common::grpc_service! {
///     impl<S: FeatureStore> pb::feature_service_server::FeatureService for FeatureApi<S> {
///         get_features(pb::GetFeaturesRequest) -> pb::GetFeaturesResponse => get_features;
///         // `if authorize` first calls `self.inner.authorize(&request)?`.
///         set_stage(pb::SetStageRequest) -> pb::SetStageResponse => set_stage if authorize;
///         // `with deadline` also passes `self.inner.deadline(&request)` (read from
///         // the request's metadata before it is taken apart).
///         search(pb::SearchRequest) -> pb::SearchResponse => search with deadline;
///     }
///     // Any further items of the impl, as written by hand:
///     type ScanItemsStream = ItemStream;
///     async fn scan_items(&self, ...) -> ... { ... }
/// }
/// ```
#[macro_export]
macro_rules! grpc_service {
    (
        impl $(<$($generic:ident : $bound:path),+>)? $($service:ident)::+ for $api:ty {
            $(
                $method:ident($request:ty) -> $response:ty
                    => $inner:ident $(if $guard:ident)? $(with $context:ident)?;
            )*
        }
        $($item:tt)*
    ) => {
        #[::tonic::async_trait]
        impl $(<$($generic: $bound),+>)? $($service)::+ for $api {
            $(
                async fn $method(
                    &self,
                    request: ::tonic::Request<$request>,
                ) -> ::std::result::Result<::tonic::Response<$response>, ::tonic::Status> {
                    $( self.inner.$guard(&request)?; )?
                    $( let $context = self.inner.$context(&request); )?
                    let answer = self.inner.$inner(request.into_inner() $(, $context)?).await?;
                    ::std::result::Result::Ok(::tonic::Response::new(answer))
                }
            )*
            $($item)*
        }
    };
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn internal_text_stays_in_the_log() {
        let status = Status::from(RpcError::Internal("open /var/lib/x: EACCES".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("/var/lib/x"), "{status:?}");
    }

    #[test]
    fn errors_the_caller_fixes_keep_their_message() {
        let status = Status::from(invalid("k", "must be within 1..=100, got 0"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "k: must be within 1..=100, got 0");
        let full = RpcError::from(BatchError::QueueFull { capacity: 8 });
        assert_eq!(Status::from(full).code(), Code::ResourceExhausted);
    }

    #[test]
    fn parses_grpc_timeout_units() {
        use std::time::Duration;
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        m.insert("grpc-timeout", "250m".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(250)));
        m.insert("grpc-timeout", "2S".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(2)));
        m.insert("grpc-timeout", "x".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&m), None);
    }
}
