//! Dynamic batching for model inference: concurrent callers submit items, and a
//! dispatcher groups them into batches of up to `max_batch` items and runs each batch
//! on a blocking thread, one per free worker (model session).
//!
//! A batch is cut when a worker becomes free and takes everything queued by then, so
//! batches grow with load while an idle service answers a lone request at once.
//! With several workers, a batch may also wait up to `max_wait` to fill while the
//! others are busy.
//!
//! Batching trades a bounded wait for throughput: one model call on 32 rows costs far
//! less than 32 calls on one row. The queue is bounded in items; a submit that would
//! overflow it fails at once with [`BatchError::QueueFull`] (RESOURCE_EXHAUSTED for the
//! caller) instead of growing memory and latency without limit. Jobs whose caller
//! has gone away (deadline passed, request cancelled) are dropped before they run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

/// How batches are formed and run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Most items in one model call.
    pub max_batch: usize,
    /// Longest a batch waits to fill while other batches are running, microseconds.
    /// An idle batcher never waits: a lone request runs at once.
    pub max_wait_us: u64,
    /// Most items queued (not yet running); beyond it submits are refused.
    pub queue_capacity: usize,
    /// Batches run at once (one per model session).
    pub workers: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_wait_us: 2_000,
            queue_capacity: 4_096,
            workers: 1,
        }
    }
}

impl BatchConfig {
    pub fn validate(&self, section: &str) -> Result<(), crate::config::ConfigError> {
        let check = |key: &str, v: usize| {
            if v == 0 {
                Err(crate::config::invalid(
                    &format!("{section}.{key}"),
                    v,
                    "must be >= 1",
                ))
            } else {
                Ok(())
            }
        };
        check("max_batch", self.max_batch)?;
        check("queue_capacity", self.queue_capacity)?;
        check("workers", self.workers)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("batch queue full ({capacity} items queued); retry later")]
    QueueFull { capacity: usize },
    #[error("model call failed: {0}")]
    Model(String),
    #[error("batcher stopped")]
    Stopped,
}

/// Where a job's outputs go.
/// A job's outputs and the size of the batch it ran in.
type Reply<O> = oneshot::Sender<Result<(Vec<O>, usize), BatchError>>;

struct Job<I, O> {
    items: Vec<I>,
    reply: Reply<O>,
}

/// A handle to submit work; cheap to clone. The dispatcher stops when the last
/// handle is dropped.
pub struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<Job<I, O>>,
    queued: Arc<AtomicUsize>,
    config: BatchConfig,
    name: &'static str,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            queued: Arc::clone(&self.queued),
            config: self.config,
            name: self.name,
        }
    }
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish()
    }
}

impl<I, O> Batcher<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    /// Starts a dispatcher; `run` maps a batch of items to as many outputs, in order,
    /// and is called on a blocking thread. `name` labels the metrics.
    pub fn new<F>(name: &'static str, config: BatchConfig, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Result<Vec<O>, String> + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(dispatch(
            name,
            config,
            rx,
            Arc::clone(&queued),
            Arc::new(run),
        ));
        Self {
            tx,
            queued,
            config,
            name,
        }
    }

    /// Items waiting to run.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Submits `items` and waits for their outputs, in order. Larger submissions are
    /// split into `max_batch` chunks that may run in different batches.
    pub async fn submit(&self, items: Vec<I>) -> Result<Vec<O>, BatchError> {
        let n = items.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let cap = self.config.queue_capacity;
        // Reserve queue space for all chunks at once, so a large submit is either
        // accepted whole or refused whole.
        let prev = self.queued.fetch_add(n, Ordering::AcqRel);
        if prev + n > cap {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            metrics::counter!("rankmesh_batch_rejected_total", "batcher" => self.name).increment(1);
            return Err(BatchError::QueueFull { capacity: cap });
        }
        metrics::gauge!("rankmesh_batch_queue_depth", "batcher" => self.name)
            .set(self.queued() as f64);

        let mut waiting = Vec::new();
        let mut items = items;
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(self.config.max_batch));
            let (reply, rx) = oneshot::channel();
            if self.tx.send(Job { items, reply }).is_err() {
                return Err(BatchError::Stopped);
            }
            waiting.push(rx);
            items = rest;
        }
        // A span in the caller's trace: how long the items waited and ran, and the
        // size of the batch they ran in (shared with other requests).
        let span = tracing::info_span!(
            "batch",
            batcher = self.name,
            items = n,
            batch_size = tracing::field::Empty,
        );
        async {
            let mut out = Vec::with_capacity(n);
            let mut batch_size = 0;
            for rx in waiting {
                let (part, size) = rx.await.map_err(|_| BatchError::Stopped)??;
                out.extend(part);
                batch_size = batch_size.max(size);
            }
            tracing::Span::current().record("batch_size", batch_size);
            Ok(out)
        }
        .instrument(span)
        .await
    }
}

type RunFn<I, O> = Arc<dyn Fn(Vec<I>) -> Result<Vec<O>, String> + Send + Sync>;

async fn dispatch<I, O>(
    name: &'static str,
    config: BatchConfig,
    mut rx: mpsc::UnboundedReceiver<Job<I, O>>,
    queued: Arc<AtomicUsize>,
    run: RunFn<I, O>,
) where
    I: Send + 'static,
    O: Send + 'static,
{
    let total = config.workers.max(1);
    let workers = Arc::new(Semaphore::new(total));
    let max_wait = Duration::from_micros(config.max_wait_us);
    // A job that did not fit the previous batch starts the next one.
    let mut carry: Option<Job<I, O>> = None;
    loop {
        // A batch is formed only once a worker (session) is free, so it takes in
        // everything that queued while all workers were busy: under load, batches
        // grow by themselves, and an idle system runs a lone request at once.
        let Ok(permit) = Arc::clone(&workers).acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        // Waiting for more only pays when other batches are running (so more
        // requests are surely arriving); otherwise it is pure added latency.
        let others_busy = workers.available_permits() + 1 < total;
        let deadline = tokio::time::Instant::now()
            + if others_busy {
                max_wait
            } else {
                Duration::ZERO
            };
        let mut batch = vec![first];
        let mut count = batch[0].items.len();
        while count < config.max_batch {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if others_busy => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .unwrap_or_default()
                }
                Err(mpsc::error::TryRecvError::Empty) => None,
            };
            let Some(job) = next else { break };
            if count + job.items.len() > config.max_batch {
                carry = Some(job);
                break;
            }
            count += job.items.len();
            batch.push(job);
        }

        tokio::spawn(run_batch(
            name,
            batch,
            count,
            Arc::clone(&queued),
            Arc::clone(&run),
            permit,
        ));
    }
}

/// Runs one batch on the blocking pool and answers each job with its own outputs,
/// in order; jobs whose callers gave up are skipped. The worker permit is held
/// until the model has run.
async fn run_batch<I, O>(
    name: &'static str,
    batch: Vec<Job<I, O>>,
    count: usize,
    queued: Arc<AtomicUsize>,
    run: RunFn<I, O>,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    I: Send + 'static,
    O: Send + 'static,
{
    let mut items = Vec::with_capacity(count);
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        let n = job.items.len();
        queued.fetch_sub(n, Ordering::AcqRel);
        // The caller gave up (deadline, cancellation): skip its work.
        if job.reply.is_closed() {
            continue;
        }
        items.extend(job.items);
        replies.push((n, job.reply));
    }
    metrics::gauge!("rankmesh_batch_queue_depth", "batcher" => name)
        .set(queued.load(Ordering::Relaxed) as f64);
    if replies.is_empty() {
        return;
    }
    metrics::histogram!("rankmesh_batch_size", "batcher" => name).record(items.len() as f64);
    let result = tokio::task::spawn_blocking(move || run(items)).await;
    drop(permit);
    let outputs = match result {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return fail(replies, BatchError::Model(e)),
        Err(e) => {
            return fail(
                replies,
                BatchError::Model(format!("inference task panicked: {e}")),
            );
        }
    };
    let expected: usize = replies.iter().map(|(n, _)| n).sum();
    if outputs.len() != expected {
        let e = format!(
            "model returned {} outputs for {expected} inputs",
            outputs.len()
        );
        return fail(replies, BatchError::Model(e));
    }
    let mut outputs = outputs.into_iter();
    for (n, reply) in replies {
        let _ = reply.send(Ok((outputs.by_ref().take(n).collect(), expected)));
    }
}

fn fail<O>(replies: Vec<(usize, Reply<O>)>, e: BatchError) {
    for (_, reply) in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn concurrent_submits_share_batches_and_keep_order() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let b = Batcher::new(
            "test",
            BatchConfig {
                max_batch: 8,
                max_wait_us: 50_000,
                ..BatchConfig::default()
            },
            move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.len());
                // A model call takes time; requests arriving meanwhile queue up and
                // must share the next batch.
                std::thread::sleep(Duration::from_millis(20));
                Ok(items.into_iter().map(|i| i * 10).collect())
            },
        );
        let calls: Vec<_> = (0..8u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.submit(vec![i, i + 100]).await })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let i = i as u32;
            assert_eq!(
                c.await.expect("task").expect("ok"),
                vec![i * 10, (i + 100) * 10]
            );
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 16);
        assert!(sizes.iter().all(|s| *s <= 8), "{sizes:?}");
        assert!(sizes.len() <= 4, "calls were batched together: {sizes:?}");
    }

    #[tokio::test]
    async fn large_submit_is_split_and_reassembled() {
        let b = Batcher::new(
            "test",
            BatchConfig {
                max_batch: 3,
                ..BatchConfig::default()
            },
            |items: Vec<u32>| Ok(items),
        );
        let out = b.submit((0..10).collect()).await.expect("ok");
        assert_eq!(out, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn full_queue_refuses_at_once() {
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let b = Batcher::new(
            "test",
            BatchConfig {
                max_batch: 4,
                max_wait_us: 0,
                queue_capacity: 4,
                workers: 1,
            },
            move |items: Vec<u32>| {
                let _ = release_rx.lock().expect("lock").recv();
                Ok(items)
            },
        );
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.submit(vec![1, 2, 3, 4]).await }
        });
        // Whatever is running, 4 queued items + 1 more cannot fit.
        let err = loop {
            match tokio::time::timeout(Duration::from_millis(20), b.submit(vec![0; 5])).await {
                Ok(Err(e)) => break e,
                _ => tokio::task::yield_now().await,
            }
        };
        assert!(
            matches!(err, BatchError::QueueFull { capacity: 4 }),
            "{err}"
        );
        release_tx.send(()).expect("release");
        release_tx.send(()).ok();
        assert_eq!(first.await.expect("task").expect("ok"), vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn model_errors_reach_every_caller() {
        let b = Batcher::new(
            "test",
            BatchConfig::default(),
            |_: Vec<u32>| -> Result<Vec<u32>, String> { Err("boom".into()) },
        );
        let err = b.submit(vec![1]).await.expect_err("fails");
        assert!(
            matches!(err, BatchError::Model(ref m) if m == "boom"),
            "{err}"
        );
    }

    mod properties {
        //! Whatever arrives, in whatever sizes and order, and whoever gives up
        //! waiting: every submit that waits gets exactly its own outputs, in order,
        //! and the queue drains to zero.
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]

            #[test]
            fn every_waiting_submit_gets_its_own_outputs_in_order(
                // (items, delay before submitting in ms, cancelled)
                submits in prop::collection::vec((1usize..40, 0u64..3, any::<bool>()), 1..16),
                max_batch in 1usize..16,
                workers in 1usize..3,
            ) {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let b = Batcher::new(
                        "property",
                        BatchConfig {
                            max_batch,
                            max_wait_us: 200,
                            workers,
                            ..BatchConfig::default()
                        },
                        // Each output names its input, so a mix-up shows.
                        |items: Vec<(usize, usize)>| Ok(items.into_iter().map(|(s, i)| s * 1_000 + i).collect()),
                    );
                    let tasks: Vec<_> = submits
                        .iter()
                        .enumerate()
                        .map(|(s, &(n, delay_ms, cancelled))| {
                            let b = b.clone();
                            let task = tokio::spawn(async move {
                                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                                b.submit((0..n).map(|i| (s, i)).collect()).await
                            });
                            if cancelled {
                                task.abort();
                            }
                            (s, n, cancelled, task)
                        })
                        .collect();
                    for (s, n, cancelled, task) in tasks {
                        match task.await {
                            Ok(out) => {
                                let want: Vec<usize> = (0..n).map(|i| s * 1_000 + i).collect();
                                assert_eq!(out.expect("answered"), want, "submit {s}");
                            }
                            Err(e) => assert!(cancelled && e.is_cancelled(), "submit {s}: {e}"),
                        }
                    }
                    // What the cancelled submits queued still ran; nothing is left.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                    while b.queued() > 0 {
                        assert!(std::time::Instant::now() < deadline, "{} items stuck", b.queued());
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                });
            }
        }
    }
}
