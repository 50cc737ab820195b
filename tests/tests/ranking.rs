//! The whole request path with real processes: etcd, feature, embedding, registry and
//! ranking started by `meshctl up --detach` on loopback with the demo catalog.
//! Searches find relevant items, bad input is answered with the field at fault,
//! purchases steer Recommend, and losing a dependency degrades instead of failing.

use std::time::Duration;

use rankmesh_proto::pb::common::v1::Filters;
use rankmesh_proto::pb::feature::v1 as feat;
use rankmesh_proto::pb::ranking::v1 as pb;
use rankmesh_proto::pb::ranking::v1::ranking_service_client::RankingServiceClient;
use rankmesh_tests::mesh::LocalMesh;
use tonic::Code;
use tonic::transport::Channel;

fn up() -> LocalMesh {
    LocalMesh::up(1, &[])
}

async fn client(addr: &str) -> RankingServiceClient<Channel> {
    RankingServiceClient::new(rankmesh_tests::tls::channel(addr).await.expect("connect"))
}

fn search(q: &str, user: &str, k: u32, filters: Option<Filters>) -> pb::SearchRequest {
    pb::SearchRequest {
        query: q.into(),
        user_id: user.into(),
        k,
        filters,
        routing_key: String::new(),
        explain: false,
    }
}

fn ids(items: &[pb::RankedItem]) -> Vec<&str> {
    items.iter().map(|i| i.item_id.as_str()).collect()
}

#[tokio::test]
async fn search_recommend_bad_input_and_degradation() {
    let mesh = up();
    let mut c = client(&mesh.grpc("ranking")).await;

    // Relevant results with display fields, model versions and timings.
    let r = c
        .search(search("noise cancelling headphones", "", 5, None))
        .await
        .expect("search")
        .into_inner();
    let top = ids(&r.items);
    assert!(top[0].starts_with("hp-"), "{top:?}");
    assert_eq!(r.items[0].category, "Electronics > Audio > Headphones");
    // Each model names the variant and the execution provider that ran it (a CPU
    // build here: the GPU path is tests/gpu_fallback.rs).
    let ran: Vec<(&str, &str, &str)> = r
        .models
        .iter()
        .map(|m| (m.name.as_str(), m.variant.as_str(), m.provider.as_str()))
        .collect();
    assert!(ran.contains(&("encoder", "int8", "cpu")), "{ran:?}");
    assert!(
        ran.iter().any(|m| m.0 == "ranker" && m.2 == "cpu"),
        "{ran:?}"
    );
    assert_eq!(r.trace_id.len(), 32);
    assert!(r.stage_ms.contains_key("retrieve") && r.stage_ms.contains_key("total"));
    // A category's own term puts items of that category in the top 5.
    let r = c
        .search(search("kitchen", "", 5, None))
        .await
        .expect("search")
        .into_inner();
    let kitchen = r
        .items
        .iter()
        .filter(|i| i.category.starts_with("Home > Kitchen"))
        .count();
    assert!(kitchen >= 3, "{:?}", ids(&r.items));
    // Filters hold.
    let f = Filters {
        category_prefix: "Sports".into(),
        max_price: Some(120.0),
        ..Filters::default()
    };
    let r = c
        .search(search("shoes", "", 10, Some(f)))
        .await
        .expect("search")
        .into_inner();
    assert!(!r.items.is_empty());
    assert!(
        r.items
            .iter()
            .all(|i| i.category.starts_with("Sports") && i.price.unwrap_or(0.0) <= 120.0)
    );

    // Bad input: INVALID_ARGUMENT naming the field.
    let long = "x".repeat(2000);
    let bad_min = Filters {
        min_price: Some(-1.0),
        ..Filters::default()
    };
    for (req, field) in [
        (search("  ", "", 5, None), "query"),
        (search(&long, "", 5, None), "query"),
        (search("shoes", "", 0, None), "k"),
        (search("shoes", "", 101, None), "k"),
        (search("shoes", "bad user", 5, None), "user_id"),
        (search("shoes", "", 5, Some(bad_min)), "filters.min_price"),
    ] {
        let s = c.search(req).await.expect_err("invalid");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().starts_with(field), "{field}: {}", s.message());
    }

    // Recommend: an unknown user gets a cold-start answer; purchases steer it.
    let rec = |user: &str| pb::RecommendRequest {
        user_id: user.into(),
        k: 3,
        filters: None,
        routing_key: String::new(),
    };
    let r = c
        .recommend(rec("newcomer"))
        .await
        .expect("recommend")
        .into_inner();
    assert!(
        r.degraded.iter().any(|d| d == "cold_start"),
        "{:?}",
        r.degraded
    );
    assert_eq!(r.items.len(), 3);
    let mut fc = feat::feature_service_client::FeatureServiceClient::new(
        rankmesh_tests::tls::channel(&mesh.grpc("feature"))
            .await
            .expect("connect"),
    );
    for (i, item) in ["fp-1", "fp-2", "kn-1"].iter().enumerate() {
        fc.record_event(feat::RecordEventRequest {
            event_id: format!("cook-{i}"),
            user_id: "cook".into(),
            item_id: (*item).into(),
            r#type: feat::EventType::Purchase as i32,
            timestamp_ms: 0,
        })
        .await
        .expect("record");
    }
    let r = c
        .recommend(rec("cook"))
        .await
        .expect("recommend")
        .into_inner();
    assert!(!r.degraded.iter().any(|d| d == "cold_start"));
    let home = r
        .items
        .iter()
        .filter(|i| i.category.starts_with("Home > Kitchen"))
        .count();
    assert!(
        home >= 2,
        "a kitchen shopper gets kitchen items: {:?}",
        ids(&r.items)
    );
    let s = c.recommend(rec("")).await.expect_err("no user");
    assert_eq!(s.code(), Code::InvalidArgument);

    // Losing the feature service: dense-only answers, degraded says so.
    mesh.kill("feature");
    let r = c
        .search(search("noise cancelling headphones", "", 5, None))
        .await
        .expect("still answers")
        .into_inner();
    assert!(
        r.degraded.iter().any(|d| d == "lexical"),
        "{:?}",
        r.degraded
    );
    assert!(
        r.degraded.iter().any(|d| d == "features"),
        "{:?}",
        r.degraded
    );
    assert!(r.items[0].item_id.starts_with("hp-"), "{:?}", ids(&r.items));
    // And without embedding too: no candidates at all is a fast, clear UNAVAILABLE.
    mesh.kill("embedding");
    let started = std::time::Instant::now();
    let s = c
        .search(search("headphones", "", 5, None))
        .await
        .expect_err("nothing left");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}
