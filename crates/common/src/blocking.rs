//! CPU-bound work off the async runtime, with one way of failing.
//!
//! Every service runs index searches, ONNX sessions and file parsing on tokio's
//! blocking pool. A panic there surfaces as a `JoinError`; these helpers turn it
//! (and the work's own error, for [`try_run`]) into a message, so a caller maps
//! one error once instead of two at every call site.

use std::fmt::Display;

/// The blocking task panicked or was cancelled at shutdown.
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct BlockingError(String);

/// Runs `f` on the blocking pool.
pub async fn run<T, F>(f: F) -> Result<T, BlockingError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlockingError(e.to_string()))
}

/// Runs a fallible `f` on the blocking pool; its error and a panic both come back
/// as a message.
pub async fn try_run<T, E, F>(f: F) -> Result<T, String>
where
    T: Send + 'static,
    E: Display + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    match run(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_and_panics_come_back_as_messages() {
        assert_eq!(try_run(|| Ok::<_, String>(7)).await, Ok(7));
        assert_eq!(
            try_run(|| Err::<u8, _>("bad row 3")).await,
            Err("bad row 3".to_owned())
        );
        let panicked = try_run(|| -> Result<u8, String> { panic!("boom") }).await;
        let message = panicked.expect_err("a panic is an error");
        assert!(message.starts_with("blocking task failed"), "{message}");
    }
}
