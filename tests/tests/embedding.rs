//! The embedding service as a real process: Embed and Retrieve answers, every bad
//! input gets a clear error (and the service keeps serving), and a restart loads the
//! index snapshot instead of re-embedding, and a rebuild embeds only what changed.

use std::time::Duration;

use rankmesh_proto::pb::common::v1::Filters;
use rankmesh_proto::pb::embedding::v1 as pb;
use rankmesh_proto::pb::embedding::v1::embedding_service_client::EmbeddingServiceClient;
use rankmesh_tests::catalog::{demo_catalog, models_dir};
use rankmesh_tests::eventually;
use rankmesh_tests::process::ServiceProcess;
use tonic::Code;
use tonic::transport::Channel;

fn spawn(catalog: &str, snapshot: &str) -> ServiceProcess {
    let model_dir = models_dir().join("encoder");
    ServiceProcess::spawn(
        "rankmesh-embedding",
        "embedding-test",
        &[],
        &[
            ("RANKMESH__MODEL__DIR", model_dir.to_str().expect("utf-8")),
            ("RANKMESH__MODEL__VARIANT", "int8"),
            ("RANKMESH__INDEX__CATALOG", catalog),
            ("RANKMESH__INDEX__SNAPSHOT_DIR", snapshot),
        ],
    )
}

async fn client(p: &ServiceProcess) -> EmbeddingServiceClient<Channel> {
    let addr = format!("http://{}", p.grpc_addr);
    let ch = eventually(
        Duration::from_secs(60),
        "embedding service to accept connections",
        || {
            let addr = addr.clone();
            async move { rankmesh_tests::tls::channel(&addr).await }
        },
    )
    .await;
    EmbeddingServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn text_req(text: &str, k: u32, filters: Option<Filters>) -> pb::RetrieveRequest {
    pb::RetrieveRequest {
        query: Some(pb::retrieve_request::Query::Text(text.into())),
        k,
        filters,
    }
}

async fn wait_for_index(c: &mut EmbeddingServiceClient<Channel>) {
    eventually(Duration::from_secs(60), "the initial index build", || {
        let mut c = c.clone();
        async move { c.retrieve(text_req("anything", 1, None)).await.ok() }
    })
    .await;
}

#[tokio::test]
async fn embed_retrieve_filters_errors_and_snapshot_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = demo_catalog();
    let snapshot = dir.path().join("index");
    let mut proc = spawn(
        catalog.to_str().expect("utf-8"),
        snapshot.to_str().expect("utf-8"),
    );
    let mut c = client(&proc).await;

    // Embed: one unit vector per text, in order; the long text is reported truncated.
    let long = "a very long product description with many words ".repeat(60);
    let r = c
        .embed(pb::EmbedRequest {
            texts: vec!["red running shoes".into(), long],
        })
        .await
        .expect("embed")
        .into_inner();
    assert_eq!(r.dim, 384);
    assert_eq!(r.vectors.len(), 2);
    let norm: f32 = r.vectors[0]
        .values
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "unit length, got {norm}");
    assert_eq!(r.truncated, vec![1]);
    let model = r.model.expect("model ref");
    assert_eq!(
        (
            model.name.as_str(),
            model.variant.as_str(),
            model.provider.as_str()
        ),
        ("encoder", "int8", "cpu")
    );

    // Retrieve: topical queries find their items; filters are respected.
    wait_for_index(&mut c).await;
    let top = |r: pb::RetrieveResponse| r.items.into_iter().map(|n| n.item_id).collect::<Vec<_>>();
    let hits = top(c
        .retrieve(text_req("noise cancelling headphones", 3, None))
        .await
        .expect("retrieve")
        .into_inner());
    assert!(hits[0].starts_with("hp-"), "{hits:?}");
    let hits = top(c
        .retrieve(text_req("pan for cooking eggs", 3, None))
        .await
        .expect("retrieve")
        .into_inner());
    assert!(hits[0].starts_with("fp-"), "{hits:?}");
    let kitchen = Filters {
        category_prefix: "home > kitchen".into(),
        ..Filters::default()
    };
    let mut hits = top(c
        .retrieve(text_req("headphones", 10, Some(kitchen)))
        .await
        .expect("retrieve")
        .into_inner());
    hits.sort();
    assert_eq!(
        hits,
        vec!["cm-1", "fp-1", "fp-2", "kn-1"],
        "all kitchen items, nothing else"
    );
    let cheap_acme = Filters {
        max_price: Some(100.0),
        brands: vec!["ACME".into()],
        ..Filters::default()
    };
    let mut hits = top(c
        .retrieve(text_req("audio", 10, Some(cheap_acme)))
        .await
        .expect("retrieve")
        .into_inner());
    hits.sort();
    assert_eq!(hits, vec!["kb-1", "sp-1"]);
    // A user-style vector query works too.
    let v = c
        .embed(pb::EmbedRequest {
            texts: vec!["espresso".into()],
        })
        .await
        .expect("embed")
        .into_inner()
        .vectors
        .remove(0);
    let by_vec = c
        .retrieve(pb::RetrieveRequest {
            query: Some(pb::retrieve_request::Query::Vector(v)),
            k: 1,
            filters: None,
        })
        .await
        .expect("retrieve by vector")
        .into_inner();
    assert_eq!(by_vec.items[0].item_id, "cm-1");

    // Bad input: a clear INVALID_ARGUMENT naming the field, never a crash.
    let bad_embeds: Vec<(Vec<String>, &str)> = vec![
        (vec![], "texts"),
        (vec!["ok".into(), "  ".into()], "texts[1]"),
        (vec!["x".repeat(1 << 20)], "texts[0]"),
        (vec!["word".into(); 10_000], "10000 texts"),
    ];
    for (texts, needle) in bad_embeds {
        let s = c
            .embed(pb::EmbedRequest { texts })
            .await
            .expect_err("rejected");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains(needle), "{needle}: {}", s.message());
    }
    let bad_retrieves = vec![
        (text_req("shoes", 0, None), "k"),
        (text_req("shoes", 1001, None), "k"),
        (
            pb::RetrieveRequest {
                query: None,
                k: 5,
                filters: None,
            },
            "query",
        ),
        (
            pb::RetrieveRequest {
                query: Some(pb::retrieve_request::Query::Vector(pb::Vector {
                    values: vec![0.1; 3],
                })),
                k: 5,
                filters: None,
            },
            "vector",
        ),
        (
            text_req(
                "shoes",
                5,
                Some(Filters {
                    min_price: Some(50.0),
                    max_price: Some(10.0),
                    ..Filters::default()
                }),
            ),
            "filters.max_price",
        ),
        (
            text_req(
                "shoes",
                5,
                Some(Filters {
                    min_price: Some(f64::NAN),
                    ..Filters::default()
                }),
            ),
            "filters.min_price",
        ),
    ];
    for (req, needle) in bad_retrieves {
        let s = c.retrieve(req).await.expect_err("rejected");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains(needle), "{needle}: {}", s.message());
    }
    // Still serving after all of that.
    c.embed(pb::EmbedRequest {
        texts: vec!["still here".into()],
    })
    .await
    .expect("alive");

    // Restart without a catalog: the snapshot alone must serve Retrieve (no re-embed).
    proc.signal("TERM");
    assert_eq!(proc.wait(), Some(0));
    let proc2 = spawn("", snapshot.to_str().expect("utf-8"));
    let mut c2 = client(&proc2).await;
    let hits = top(c2
        .retrieve(text_req("trail running shoes", 2, None))
        .await
        .expect("retrieve after restart")
        .into_inner());
    assert!(hits.iter().all(|h| h.starts_with("rs-")), "{hits:?}");
}

/// A full BuildIndex embeds only what changed: nothing over the catalog it was
/// built from (the index is kept), one item when one title changes, and still
/// nothing after a restart from the snapshot (the text fingerprints are kept with
/// it). Listed ids are embedded whether or not their text changed.
#[tokio::test]
async fn a_rebuild_embeds_only_the_items_whose_text_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("catalog.jsonl");
    let original = std::fs::read_to_string(demo_catalog()).expect("demo catalog");
    std::fs::write(&catalog, &original).expect("write catalog");
    let snapshot = dir.path().join("index");
    let paths = (
        catalog.to_str().expect("utf-8"),
        snapshot.to_str().expect("utf-8"),
    );
    let n = original.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    let build = |c: &EmbeddingServiceClient<Channel>, ids: &[&str]| {
        let mut c = c.clone();
        let item_ids = ids.iter().map(|i| (*i).to_owned()).collect();
        async move {
            let r = c
                .build_index(pb::BuildIndexRequest { item_ids })
                .await
                .expect("build index")
                .into_inner();
            (r.indexed, r.embedded)
        }
    };

    let mut proc = spawn(paths.0, paths.1);
    let mut c = client(&proc).await;
    wait_for_index(&mut c).await;
    assert_eq!(build(&c, &[]).await, (n, 0), "unchanged catalog");

    // One title changes: that item alone is embedded, and found by its new text.
    let edited = original.replace(
        "Wireless noise cancelling over-ear headphones",
        "Cast iron dutch oven with enamel lid",
    );
    assert_ne!(edited, original);
    std::fs::write(&catalog, &edited).expect("edit catalog");
    assert_eq!(build(&c, &[]).await, (n, 1), "one title changed");
    let hits = c
        .retrieve(text_req("cast iron dutch oven with enamel lid", 1, None))
        .await
        .expect("retrieve")
        .into_inner();
    assert_eq!(hits.items[0].item_id, "hp-1", "{hits:?}");

    // A restart loads the snapshot: still nothing to embed.
    proc.signal("TERM");
    assert_eq!(proc.wait(), Some(0));
    let proc = spawn(paths.0, paths.1);
    let c = client(&proc).await;
    eventually(Duration::from_secs(60), "the snapshot to load", || {
        let mut c = c.clone();
        async move { c.retrieve(text_req("anything", 1, None)).await.ok() }
    })
    .await;
    assert_eq!(build(&c, &[]).await, (n, 0), "after a restart");
    // Listed ids are re-embedded on request.
    assert_eq!(build(&c, &["hp-2"]).await, (n, 1), "one listed id");
}
