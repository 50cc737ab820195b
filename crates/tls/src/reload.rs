//! A value built from a workload's TLS files and rebuilt when they change, so
//! certificates rotate without a restart. The files are polled (a change is a new
//! modification time or size) and debounced (the new stamp must hold for a moment,
//! so a half-written set is not read); a set that does not build is refused with a
//! log line and a metric, and the old value kept.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::error::TlsError;
use crate::files::TlsFiles;

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(1);
/// How long a new stamp must hold before the files are read.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// The current value; rebuilt in the background while any clone of it lives.
pub struct Reloading<T> {
    current: Arc<ArcSwap<T>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading").finish_non_exhaustive()
    }
}

impl<T> Drop for Reloading<T> {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the value from `files` now (an error if it cannot), then, inside a
    /// tokio runtime, every `poll` looks for changed files and rebuilds. `what`
    /// names the value in logs and metrics (`server`, `client`).
    pub fn start<F>(
        files: TlsFiles,
        what: &'static str,
        poll: Duration,
        build: F,
    ) -> Result<Self, TlsError>
    where
        F: Fn(&TlsFiles) -> Result<T, TlsError> + Send + Sync + 'static,
    {
        let stamp = files.stamp();
        let current = Arc::new(ArcSwap::from_pointee(build(&files)?));
        let task = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let current = current.clone();
            rt.spawn(watch(files, what, poll, stamp, current, build))
        });
        Ok(Self { current, task })
    }

    /// A value that is never rebuilt (built from files nobody rotates in place,
    /// such as a storefront's copy of the mesh CA).
    pub fn fixed(value: T) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(value)),
            task: None,
        }
    }

    /// The value as of the last good set of files.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }
}

async fn watch<T, F>(
    files: TlsFiles,
    what: &'static str,
    poll: Duration,
    mut seen: Option<Vec<(std::time::SystemTime, u64)>>,
    current: Arc<ArcSwap<T>>,
    build: F,
) where
    F: Fn(&TlsFiles) -> Result<T, TlsError>,
{
    loop {
        tokio::time::sleep(poll).await;
        let now = files.stamp();
        if now.is_none() || now == seen {
            continue;
        }
        tokio::time::sleep(DEBOUNCE).await;
        if files.stamp() != now {
            continue; // still being written; look again next time
        }
        seen = now;
        match build(&files) {
            Ok(v) => {
                current.store(Arc::new(v));
                metrics::counter!("rankmesh_tls_reloads_total", "what" => what, "result" => "ok")
                    .increment(1);
                tracing::info!(what, cert = %files.cert.display(), "TLS files changed; reloaded");
            }
            Err(e) => {
                metrics::counter!("rankmesh_tls_reloads_total", "what" => what, "result" => "refused")
                    .increment(1);
                tracing::warn!(what, error = %e, "TLS files changed but were refused; keeping the previous ones");
            }
        }
    }
}
