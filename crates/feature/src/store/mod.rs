//! Storage behind one trait, with two backends: [`redb`](RedbStore) (an embedded file,
//! the default) and [`redis`](RedisStore) (shared state across replicas). The same
//! test suite runs against both.
//!
//! Contract every backend keeps:
//! - An import is staged in parts and committed at once: all its items are
//!   visible, or none; staged rows are invisible, and a staging that is aborted, or
//!   left by a crash, is dropped (redb: on the next open; Redis: when it expires).
//! - `record_events` returns only after the events are durable (fsync'd file commit,
//!   or Redis with `appendfsync always`), and is idempotent by event id.

mod api;
mod redb_store;
mod redis_store;

pub use api::{FeatureStore, ImportId, Recorded, StoreError};
pub use redb_store::{DEFAULT_CACHE_BYTES as DEFAULT_REDB_CACHE_BYTES, RedbStore};
pub use redis_store::RedisStore;

use crate::domain::{Event, Item, UserProfile};

/// Either backend, chosen by configuration.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Redb(RedbStore),
    Redis(RedisStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Redb($s) => $e,
            AnyStore::Redis($s) => $e,
        }
    };
}

impl FeatureStore for AnyStore {
    async fn begin_import(&self) -> Result<ImportId, StoreError> {
        dispatch!(self, s => s.begin_import().await)
    }
    async fn stage_items(&self, import: &ImportId, items: Vec<Item>) -> Result<(), StoreError> {
        dispatch!(self, s => s.stage_items(import, items).await)
    }
    async fn staged_items(
        &self,
        import: &ImportId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        dispatch!(self, s => s.staged_items(import, after, limit).await)
    }
    async fn commit_import(&self, import: &ImportId, replace: bool) -> Result<(), StoreError> {
        dispatch!(self, s => s.commit_import(import, replace).await)
    }
    async fn abort_import(&self, import: &ImportId) -> Result<(), StoreError> {
        dispatch!(self, s => s.abort_import(import).await)
    }
    async fn get_items(&self, ids: &[String]) -> Result<Vec<Option<Item>>, StoreError> {
        dispatch!(self, s => s.get_items(ids).await)
    }
    async fn scan_items(&self, after: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        dispatch!(self, s => s.scan_items(after, limit).await)
    }
    async fn record_events(&self, events: Vec<Event>) -> Result<Vec<Recorded>, StoreError> {
        dispatch!(self, s => s.record_events(events).await)
    }
    async fn user_profile(&self, user_id: &str) -> Result<Option<UserProfile>, StoreError> {
        dispatch!(self, s => s.user_profile(user_id).await)
    }
    async fn popularity(&self, ids: &[String]) -> Result<Vec<f64>, StoreError> {
        dispatch!(self, s => s.popularity(ids).await)
    }
    async fn item_count(&self) -> Result<u64, StoreError> {
        dispatch!(self, s => s.item_count().await)
    }
}

#[cfg(test)]
pub(crate) mod contract {
    //! The behaviour every backend must have; each backend's tests call these.

    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::EventKind;

    pub(crate) fn item(id: &str, category: &str) -> Item {
        Item {
            id: id.into(),
            title: format!("title {id}"),
            description: String::new(),
            category: category.into(),
            brand: "Acme".into(),
            price: Some(10.0),
            rating: None,
            review_count: 0,
            attributes: BTreeMap::new(),
        }
    }

    pub(crate) fn event(id: &str, user: &str, item: &str, kind: EventKind, ts: i64) -> Event {
        Event {
            event_id: id.into(),
            user_id: user.into(),
            item_id: item.into(),
            kind,
            timestamp_ms: ts,
        }
    }

    pub(crate) async fn items_roundtrip_and_replace(s: &impl FeatureStore) {
        s.put_items(
            vec![item("b", "Home"), item("a", "Books"), item("c", "Home")],
            false,
        )
        .await
        .expect("put");
        let got = s
            .get_items(&["a".into(), "zz".into(), "c".into()])
            .await
            .expect("get");
        assert_eq!(got[0].as_ref().map(|i| i.category.as_str()), Some("Books"));
        assert!(got[1].is_none());
        assert_eq!(s.item_count().await.expect("count"), 3);
        let page = s.scan_items("", 2).await.expect("scan");
        assert_eq!(
            page.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let page = s.scan_items("b", 10).await.expect("scan");
        assert_eq!(
            page.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        // Replace: only the new set remains.
        s.put_items(vec![item("d", "Toys")], true)
            .await
            .expect("replace");
        assert_eq!(s.item_count().await.expect("count"), 1);
        assert!(s.get_items(&["a".into()]).await.expect("get")[0].is_none());
    }

    fn titles(items: &[Option<Item>]) -> Vec<Option<&str>> {
        items
            .iter()
            .map(|i| i.as_ref().map(|i| i.title.as_str()))
            .collect()
    }

    pub(crate) async fn staged_imports_commit_whole_or_not_at_all(s: &impl FeatureStore) {
        s.put_items(vec![item("a", "Old"), item("b", "Old")], true)
            .await
            .expect("put");
        let wanted = ["a".to_owned(), "b".to_owned(), "c".to_owned()];

        // Staged in two parts: nothing shows until the commit; a later row wins.
        let import = s.begin_import().await.expect("begin");
        let mut newer_a = item("a", "New");
        newer_a.title = "title a, newer".into();
        s.stage_items(&import, vec![item("c", "New"), item("a", "New")])
            .await
            .expect("stage");
        s.stage_items(&import, vec![newer_a]).await.expect("stage");
        let before = s.get_items(&wanted).await.expect("get");
        assert_eq!(titles(&before), [Some("title a"), Some("title b"), None]);
        assert_eq!(s.item_count().await.expect("count"), 2);
        let staged = s.staged_items(&import, "", 10).await.expect("staged");
        let staged: Vec<(&str, &str)> = staged
            .iter()
            .map(|i| (i.id.as_str(), i.title.as_str()))
            .collect();
        assert_eq!(staged, [("a", "title a, newer"), ("c", "title c")]);
        let page = s.staged_items(&import, "a", 10).await.expect("staged");
        assert_eq!(page.len(), 1, "after `a`: only `c`");

        // Another import, staged at the same time and aborted: leaves nothing.
        let other = s.begin_import().await.expect("begin");
        assert_ne!(other, import);
        s.stage_items(&other, vec![item("zz", "Gone")])
            .await
            .expect("stage");
        assert!(
            s.staged_items(&import, "", 10)
                .await
                .expect("staged")
                .iter()
                .all(|i| i.id != "zz"),
            "imports do not see each other's rows"
        );
        s.abort_import(&other).await.expect("abort");
        s.abort_import(&other)
            .await
            .expect("aborting twice is fine");

        // Upsert: `b` stays.
        s.commit_import(&import, false).await.expect("commit");
        let after = s.get_items(&wanted).await.expect("get");
        assert_eq!(
            titles(&after),
            [Some("title a, newer"), Some("title b"), Some("title c")]
        );
        assert_eq!(s.item_count().await.expect("count"), 3);
        assert!(s.get_items(&["zz".into()]).await.expect("get")[0].is_none());
        assert!(
            s.commit_import(&import, false).await.is_err(),
            "a staging commits once"
        );

        // Replace: only the staged rows remain, and scans see exactly them.
        let import = s.begin_import().await.expect("begin");
        s.stage_items(&import, vec![item("d", "Toys"), item("b", "Toys")])
            .await
            .expect("stage");
        s.commit_import(&import, true).await.expect("commit");
        let page = s.scan_items("", 10).await.expect("scan");
        assert_eq!(
            page.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["b", "d"]
        );
        assert_eq!(s.item_count().await.expect("count"), 2);

        // A replace with no rows empties the catalog.
        let import = s.begin_import().await.expect("begin");
        s.commit_import(&import, true).await.expect("commit");
        assert_eq!(s.item_count().await.expect("count"), 0);
        assert!(s.scan_items("", 10).await.expect("scan").is_empty());
    }

    pub(crate) async fn events_are_idempotent_and_build_profiles(s: &impl FeatureStore) {
        s.put_items(
            vec![item("p1", "Home > Kitchen"), item("p2", "Books")],
            true,
        )
        .await
        .expect("put");
        let out = s
            .record_events(vec![
                event("e1", "u1", "p1", EventKind::View, 100),
                event("e2", "u1", "p1", EventKind::Purchase, 200),
                event("e1", "u1", "p1", EventKind::View, 100),
                event("e3", "u1", "nope", EventKind::View, 300),
                event("e4", "u1", "p2", EventKind::Cart, 150),
            ])
            .await
            .expect("record");
        assert_eq!(
            out,
            vec![
                Recorded::Applied,
                Recorded::Applied,
                Recorded::Duplicate,
                Recorded::UnknownItem,
                Recorded::Applied
            ]
        );
        // A retry in a later call is still a duplicate.
        let again = s
            .record_events(vec![event("e2", "u1", "p1", EventKind::Purchase, 200)])
            .await
            .expect("record");
        assert_eq!(again, vec![Recorded::Duplicate]);

        let p = s
            .user_profile("u1")
            .await
            .expect("profile")
            .expect("known user");
        assert_eq!(p.events, 3);
        let order: Vec<&str> = p.recent.iter().map(|r| r.item_id.as_str()).collect();
        assert_eq!(order, ["p1", "p2", "p1"], "newest first");
        assert!((p.category_weight["Home > Kitchen"] - 6.0).abs() < 1e-9);
        assert!((p.category_weight["Books"] - 3.0).abs() < 1e-9);
        assert!((p.brand_weight["acme"] - 9.0).abs() < 1e-9);
        assert!(s.user_profile("nobody").await.expect("profile").is_none());
        let pop = s
            .popularity(&["p1".into(), "p2".into(), "zz".into()])
            .await
            .expect("pop");
        assert_eq!(pop, vec![6.0, 3.0, 0.0]);
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn a_full_disk_is_told_apart_from_other_backend_failures() {
        let full = "I/O error: No space left on device (os error 28)";
        assert!(matches!(
            StoreError::backend(full.into()),
            StoreError::Full(_)
        ));
        assert!(matches!(
            StoreError::backend("corrupt page".into()),
            StoreError::Backend(_)
        ));
    }
}
