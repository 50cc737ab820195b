//! What every backend implements: the [`FeatureStore`] trait, its errors and the
//! outcome of a recorded event. Apart from `store`'s root, which picks a backend, so
//! the backends depend on this and the root on them, never both ways.

use std::future::Future;

use crate::domain::{Event, Item, UserProfile};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Backend(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The store's disk is full: writes are refused until space returns; reads go on.
    #[error("storage full: {0}")]
    Full(String),
}

impl StoreError {
    /// A backend failure, told apart when it is the disk being full: redb reports
    /// ENOSPC only in its messages (its error types do not keep the io::Error kind
    /// through every layer), and the OS's text for it is fixed.
    pub fn backend(message: String) -> Self {
        if message.contains("No space left on device")
            || message.contains("os error 28")
            || message.starts_with("storage full:")
        {
            Self::Full(message)
        } else if message.contains("Previous I/O error occurred") {
            // redb after an I/O error: the handle must be reopened (RedbStore does).
            Self::Unavailable(message)
        } else {
            Self::Backend(message)
        }
    }
}

/// What happened to one recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// New, applied and durable.
    Applied,
    /// This event id was recorded before; nothing changed.
    Duplicate,
    /// The item is not in the catalog; nothing changed.
    UnknownItem,
}

/// A catalog import being staged: its rows are stored, but not part of the catalog
/// until it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportId(pub(crate) String);

impl std::fmt::Display for ImportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The feature service's storage. Cheap to clone (a handle).
pub trait FeatureStore: Clone + Send + Sync + 'static {
    /// Starts a staged import. Its rows arrive in parts ([`Self::stage_items`]) and
    /// become the catalog at once ([`Self::commit_import`]), so an import of any size
    /// is written in bounded pieces and still commits or rolls back whole.
    fn begin_import(&self) -> impl Future<Output = Result<ImportId, StoreError>> + Send;

    /// Stores rows of a staged import, invisible to readers; a later row with the
    /// same id wins.
    fn stage_items(
        &self,
        import: &ImportId,
        items: Vec<Item>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` staged rows with ids after `after`, in id order.
    fn staged_items(
        &self,
        import: &ImportId,
        after: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Item>, StoreError>> + Send;

    /// Makes the staged rows the catalog (`replace`: nothing else remains) or
    /// upserts them into it, atomically, and drops the staging.
    fn commit_import(
        &self,
        import: &ImportId,
        replace: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Drops a staged import; the catalog is untouched. Dropping one that is gone
    /// is not an error.
    fn abort_import(
        &self,
        import: &ImportId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Upserts `items` atomically; with `replace`, items not in `items` are removed.
    /// One staged import, for rows already in memory.
    fn put_items(
        &self,
        items: Vec<Item>,
        replace: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let import = self.begin_import().await?;
            let done = async {
                self.stage_items(&import, items).await?;
                self.commit_import(&import, replace).await
            }
            .await;
            if done.is_err()
                && let Err(e) = self.abort_import(&import).await
            {
                tracing::warn!(%import, error = %e, "dropping a failed import's staging failed");
            }
            done
        }
    }

    /// Items by id, in order; `None` for unknown ids.
    fn get_items(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Item>>, StoreError>> + Send;

    /// Up to `limit` items with ids after `after`, in id order.
    fn scan_items(
        &self,
        after: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Item>, StoreError>> + Send;

    /// Records events in order, durably, each at most once.
    fn record_events(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<Recorded>, StoreError>> + Send;

    /// A user's profile; `None` for a user with no events.
    fn user_profile(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<UserProfile>, StoreError>> + Send;

    /// Summed event weight per item, in order (0 for items without events).
    fn popularity(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<f64>, StoreError>> + Send;

    /// Number of items in the catalog.
    fn item_count(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
