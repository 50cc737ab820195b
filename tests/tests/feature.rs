//! The feature service as a real process, the same suite on both backends (redb and
//! a real redis-server): import with per-row errors and all-or-nothing semantics,
//! lexical retrieval with filters, the feature matrix, idempotent durable events,
//! and every acknowledged event surviving kill -9.

use std::time::Duration;

use futures::StreamExt;

use rankmesh_proto::pb::common::v1::Filters;
use rankmesh_proto::pb::feature::v1 as pb;
use rankmesh_proto::pb::feature::v1::feature_service_client::FeatureServiceClient;
use rankmesh_tests::catalog::demo_catalog;
use rankmesh_tests::eventually;
use rankmesh_tests::process::ServiceProcess;
use rankmesh_tests::redis::RedisServer;
use tonic::Code;
use tonic::transport::Channel;

enum Backend {
    Redb(tempfile::TempDir),
    Redis(RedisServer),
}

impl Backend {
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Redb(dir) => vec![
                ("RANKMESH__STORE__BACKEND", "redb".into()),
                (
                    "RANKMESH__STORE__PATH",
                    dir.path().join("f.redb").display().to_string(),
                ),
            ],
            Self::Redis(r) => vec![
                ("RANKMESH__STORE__BACKEND", "redis".into()),
                ("RANKMESH__STORE__REDIS_URL", r.url()),
            ],
        }
    }
}

fn spawn(backend: &Backend, name: &str) -> ServiceProcess {
    let env = backend.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServiceProcess::spawn("rankmesh-feature", name, &[], &env)
}

async fn client(p: &ServiceProcess) -> FeatureServiceClient<Channel> {
    let addr = format!("http://{}", p.grpc_addr);
    let ch = eventually(
        Duration::from_secs(30),
        "feature service to accept connections",
        || {
            let addr = addr.clone();
            async move { rankmesh_tests::tls::channel(&addr).await }
        },
    )
    .await;
    FeatureServiceClient::new(ch)
}

fn chunks(format: pb::CatalogFormat, data: &[u8], replace: bool) -> Vec<pb::ImportCatalogChunk> {
    let n = data.len().div_ceil(97);
    data.chunks(97)
        .enumerate()
        .map(|(i, c)| pb::ImportCatalogChunk {
            format: if i == 0 { format as i32 } else { 0 },
            data: c.to_vec(),
            replace: i == 0 && replace,
            last: i + 1 == n,
        })
        .collect()
}

fn event(id: &str, user: &str, item: &str, t: pb::EventType) -> pb::RecordEventRequest {
    pb::RecordEventRequest {
        event_id: id.into(),
        user_id: user.into(),
        item_id: item.into(),
        r#type: t as i32,
        timestamp_ms: 0,
    }
}

async fn suite(backend: Backend) {
    let mut proc = spawn(&backend, "feature-a");
    let mut c = client(&proc).await;

    // Import the demo catalog in small chunks (rows span chunks).
    let demo = std::fs::read(demo_catalog()).expect("demo catalog");
    let r = c
        .import_catalog(futures::stream::iter(chunks(
            pb::CatalogFormat::Jsonl,
            &demo,
            true,
        )))
        .await
        .expect("import")
        .into_inner();
    assert_eq!((r.imported, r.rejected), (20, 0));

    // CSV with bad rows: good rows land, bad ones are reported by line.
    let csv = "id,title,category,price\nx1,Extra pan,Home > Kitchen > Cookware,12\nx2,,Home,3\nx3,Bad price,Home,abc\n";
    let r = c
        .import_catalog(futures::stream::iter(chunks(
            pb::CatalogFormat::Csv,
            csv.as_bytes(),
            false,
        )))
        .await
        .expect("import")
        .into_inner();
    assert_eq!((r.imported, r.rejected), (1, 2));
    let lines: Vec<u64> = r.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![3, 4]);
    assert!(r.errors[0].reason.starts_with("title"), "{:?}", r.errors);

    // Uploads that never send their last chunk import nothing: one cut off mid-way,
    // and one whose client closed the stream cleanly but early.
    let partial = || pb::ImportCatalogChunk {
        format: pb::CatalogFormat::Jsonl as i32,
        data: b"{\"id\":\"z1\",\"title\":\"Never\"}\n".to_vec(),
        replace: true,
        last: false,
    };
    let upload = futures::stream::iter(vec![partial()]).chain(futures::stream::pending());
    let mut c2 = c.clone();
    let call = tokio::spawn(async move { c2.import_catalog(upload).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    call.abort();
    let _ = call.await;
    let s = c
        .import_catalog(futures::stream::iter(vec![partial()]))
        .await
        .expect_err("no last chunk");
    assert_eq!(s.code(), Code::Aborted, "{s:?}");
    let items = c
        .get_items(pb::GetItemsRequest {
            ids: vec!["z1".into(), "hp-1".into()],
        })
        .await
        .expect("get items")
        .into_inner();
    assert_eq!(
        items.unknown_ids,
        vec!["z1"],
        "nothing from the broken uploads"
    );
    assert_eq!(items.items.len(), 1, "the catalog was not replaced");
    // Nor anything staged: each broken upload's staging is dropped (on Redis, where
    // it can be looked at while the service runs; redb's are unit-tested).
    if let Backend::Redis(r) = &backend {
        eventually(Duration::from_secs(10), "stagings dropped", || async {
            staging_keys(r).is_empty().then_some(())
        })
        .await;
    }

    // Lexical retrieval (wait for the index to follow the import).
    let lex = |q: &str, filters: Option<Filters>| pb::LexicalCandidatesRequest {
        query: q.into(),
        k: 5,
        filters,
    };
    let hits = c
        .lexical_candidates(lex("noise cancelling headphones", None))
        .await
        .expect("lexical")
        .into_inner();
    assert_eq!(hits.items[0].item_id, "hp-1");
    let kitchen = Filters {
        category_prefix: "Home > Kitchen".into(),
        ..Filters::default()
    };
    let hits = c
        .lexical_candidates(lex("pan", Some(kitchen)))
        .await
        .expect("lexical")
        .into_inner();
    let ids: Vec<&str> = hits.items.iter().map(|i| i.item_id.as_str()).collect();
    assert!(
        ids.contains(&"fp-1")
            && ids.contains(&"x1")
            && ids
                .iter()
                .all(|i| ["fp-1", "fp-2", "x1", "kn-1", "cm-1"].contains(i)),
        "{ids:?}"
    );
    for (req, field) in [
        (lex("", None), "query"),
        (
            pb::LexicalCandidatesRequest {
                k: 0,
                ..lex("pan", None)
            },
            "k",
        ),
    ] {
        let s = c.lexical_candidates(req).await.expect_err("invalid");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with(field), "{}", s.message());
    }

    // Features: cold start, unknown ids, schema.
    let feats = |user: &str, with_display: bool| pb::GetFeaturesRequest {
        user_id: user.into(),
        query: "running shoes".into(),
        candidate_ids: vec!["rs-1".into(), "nope".into(), "fp-1".into(), "rs-1".into()],
        with_display,
    };
    let f = c
        .get_features(feats("u1", true))
        .await
        .expect("features")
        .into_inner();
    let schema = f.schema.expect("schema");
    assert_eq!((schema.name.as_str(), schema.version), ("rankmesh.ltr", 2));
    assert_eq!(f.item_ids, vec!["rs-1", "fp-1"]);
    assert_eq!(f.unknown_item_ids, vec!["nope"]);
    assert!(f.cold_start_user);
    assert_eq!(f.values.len(), 2 * schema.columns.len());
    // Display fields, asked for: one per row, in row order.
    let display: Vec<(&str, &str, Option<f64>)> = f
        .display
        .iter()
        .map(|d| (d.title.as_str(), d.brand.as_str(), d.price))
        .collect();
    assert_eq!(display.len(), 2, "{display:?}");
    assert_eq!(
        display[0],
        (
            "Men's running shoes, lightweight mesh",
            "Stride",
            Some(119.0)
        )
    );
    assert_eq!(f.display[0].category, "Sports > Footwear > Running");
    let col = |name: &str| {
        schema
            .columns
            .iter()
            .position(|c| c == name)
            .expect("column")
    };
    let n = schema.columns.len();
    assert!(
        f.values[col("bm25")] > f.values[n + col("bm25")],
        "running shoes match rs-1 better"
    );

    // Events: acknowledged, idempotent, visible to the next GetFeatures.
    let r = c
        .record_event(event("ev-1", "u1", "rs-1", pb::EventType::Purchase))
        .await
        .expect("record")
        .into_inner();
    assert!(!r.duplicate);
    let r = c
        .record_event(event("ev-1", "u1", "rs-1", pb::EventType::Purchase))
        .await
        .expect("retry")
        .into_inner();
    assert!(r.duplicate, "a retried event is counted once");
    let f = c
        .get_features(feats("u1", false))
        .await
        .expect("features")
        .into_inner();
    assert!(!f.cold_start_user);
    assert!(f.display.is_empty(), "display fields only when asked");
    assert_eq!(f.values[col("user_bought")], 1.0);
    assert_eq!(f.values[col("user_category_affinity")], 1.0);
    assert_eq!(f.values[n + col("user_bought")], 0.0);
    let p = c
        .get_user_profile(pb::GetUserProfileRequest {
            user_id: "u1".into(),
        })
        .await
        .expect("profile")
        .into_inner();
    assert_eq!(
        p.recent_item_ids,
        vec!["rs-1"],
        "the retry did not double count"
    );
    let s = c
        .record_event(event("ev-2", "u1", "no-such-item", pb::EventType::View))
        .await
        .expect_err("unknown item");
    assert_eq!(s.code(), Code::NotFound);
    let s = c
        .record_event(event("ev-3", "u1", "rs-1", pb::EventType::Unspecified))
        .await
        .expect_err("bad type");
    assert_eq!(
        (s.code(), s.message().starts_with("type")),
        (Code::InvalidArgument, true)
    );

    // Durability: a burst of acknowledged events, then kill -9 at once.
    let mut acked = Vec::new();
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let e = event(
                    &format!("burst-{i}"),
                    &format!("bu{}", i % 20),
                    "hp-2",
                    pb::EventType::View,
                );
                c.record_event(e).await.map(|_| i)
            })
        })
        .collect();
    for call in calls {
        if let Ok(Ok(i)) = call.await {
            acked.push(i);
        }
    }
    assert_eq!(acked.len(), 200, "every event acknowledged");
    proc.kill();
    let proc2 = spawn(&backend, "feature-b");
    let mut c = client(&proc2).await;
    for i in &acked {
        let e = event(
            &format!("burst-{i}"),
            &format!("bu{}", i % 20),
            "hp-2",
            pb::EventType::View,
        );
        let r = eventually(Duration::from_secs(10), "the restarted service", || {
            let mut c = c.clone();
            let e = e.clone();
            async move { c.record_event(e).await.ok() }
        })
        .await
        .into_inner();
        assert!(r.duplicate, "acknowledged event burst-{i} was lost");
    }
    let p = c
        .get_user_profile(pb::GetUserProfileRequest {
            user_id: "bu3".into(),
        })
        .await
        .expect("profile")
        .into_inner();
    assert_eq!(
        p.recent_item_ids.len(),
        10,
        "each of 20 users got 10 events"
    );

    // A catalog of several batches (2,000 rows each) is staged in parts and
    // committed, and indexed, whole.
    let rows = 5_000u64;
    let bulk: String = (0..rows)
        .map(|i| {
            format!(
                "{{\"id\":\"bulk-{i:05}\",\"title\":\"Bulk widget {i}\",\"category\":\"Tools\"}}\n"
            )
        })
        .collect();
    let r = c
        .import_catalog(futures::stream::iter(chunks(
            pb::CatalogFormat::Jsonl,
            bulk.as_bytes(),
            false,
        )))
        .await
        .expect("import")
        .into_inner();
    assert_eq!((r.imported, r.rejected), (rows, 0));
    let items = c
        .get_items(pb::GetItemsRequest {
            ids: vec!["bulk-00000".into(), "bulk-04999".into(), "hp-1".into()],
        })
        .await
        .expect("get items")
        .into_inner();
    assert!(items.unknown_ids.is_empty(), "{:?}", items.unknown_ids);
    let hits = c
        .lexical_candidates(pb::LexicalCandidatesRequest {
            query: "widget 4999".into(),
            k: 1,
            filters: None,
        })
        .await
        .expect("lexical")
        .into_inner();
    assert_eq!(
        hits.items[0].item_id, "bulk-04999",
        "the last batch is indexed"
    );
    if let Backend::Redis(r) = &backend {
        assert!(staging_keys(r).is_empty(), "a committed staging is gone");
    }
}

/// The staged-import keys left in Redis.
fn staging_keys(r: &RedisServer) -> Vec<String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &r.url(), "--scan", "--pattern", "rm:staging:*"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn feature_service_on_redb() {
    suite(Backend::Redb(tempfile::tempdir().expect("tempdir"))).await;
}

#[tokio::test]
async fn feature_service_on_redis() {
    suite(Backend::Redis(RedisServer::start().await)).await;
}
