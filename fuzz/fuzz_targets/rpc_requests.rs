//! Every RPC's request as a service receives it: the first byte picks the RPC, the
//! rest is decoded as its request message, then the service's own request check
//! runs (the same function the handler calls before any backend or storage is
//! touched). Never a panic: a message either fails to decode, is refused with a
//! typed error, or is accepted, and what is accepted keeps the limits the protos
//! state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rankmesh_proto::limits::{
    MAX_BATCH_TEXTS, MAX_CANDIDATES, MAX_ID_BYTES, MAX_QUERY_BYTES, MAX_RANKING_K, MAX_RETRIEVE_K,
};
use rankmesh_proto::pb::{embedding, feature, ranking, registry};

/// The wall clock a RecordEvent is checked against (2026-12-01), fixed so that a
/// crash reproduces.
const NOW_MS: i64 = 1_796_083_200_000;

/// The RPCs, in the order the selector byte picks them.
const RPCS: u8 = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % RPCS {
        0 => ranking_search(body),
        1 => ranking_recommend(body),
        2 => ranking_featurize(body),
        3 => embedding_embed(body),
        4 => embedding_retrieve(body),
        5 => embedding_build_index(body),
        6 => feature_get_features(body),
        7 => feature_lexical_candidates(body),
        8 => feature_record_event(body),
        9 => feature_import_header(body),
        10 => feature_get_items(body),
        11 => feature_scan_items(body),
        12 => feature_user_profile(body),
        13 => registry_publish(body),
        14 => registry_stage(body),
        _ => registry_reads(body),
    }
});

fn decode<M: Message + Default>(body: &[u8]) -> Option<M> {
    M::decode(body).ok()
}

fn ranking_search(body: &[u8]) {
    let Some(req) = decode::<ranking::v1::SearchRequest>(body) else {
        return;
    };
    if let Ok(v) = rankmesh_ranking::search::validate_search(&req) {
        assert_eq!(v.query, v.query.trim(), "the query is trimmed");
        assert!(!v.query.is_empty() && v.query.len() <= MAX_QUERY_BYTES);
        assert!((1..=MAX_RANKING_K as usize).contains(&v.k));
    }
}

fn ranking_recommend(body: &[u8]) {
    let Some(req) = decode::<ranking::v1::RecommendRequest>(body) else {
        return;
    };
    if let Ok(k) = rankmesh_ranking::search::validate_recommend(&req) {
        assert!((1..=MAX_RANKING_K as usize).contains(&k));
        assert!(!req.user_id.is_empty() && req.user_id.len() <= MAX_ID_BYTES);
    }
}

fn ranking_featurize(body: &[u8]) {
    let Some(req) = decode::<ranking::v1::SearchRequest>(body) else {
        return;
    };
    if let Ok((query, _)) = rankmesh_ranking::search::validate_featurize(&req) {
        assert!(!query.is_empty() && query.len() <= MAX_QUERY_BYTES);
    }
}

fn embedding_embed(body: &[u8]) {
    let Some(req) = decode::<embedding::v1::EmbedRequest>(body) else {
        return;
    };
    if rankmesh_embedding::service::validate_embed(&req).is_ok() {
        assert!((1..=MAX_BATCH_TEXTS).contains(&req.texts.len()));
        assert!(req.texts.iter().all(|t| !t.trim().is_empty()));
    }
}

fn embedding_retrieve(body: &[u8]) {
    let Some(req) = decode::<embedding::v1::RetrieveRequest>(body) else {
        return;
    };
    if let Ok((k, _)) = rankmesh_embedding::service::validate_retrieve(&req) {
        assert!((1..=MAX_RETRIEVE_K as usize).contains(&k));
        if let Some(embedding::v1::retrieve_request::Query::Vector(v)) = &req.query {
            assert!(v.values.iter().all(|x| x.is_finite()));
        }
    }
}

fn embedding_build_index(body: &[u8]) {
    let Some(req) = decode::<embedding::v1::BuildIndexRequest>(body) else {
        return;
    };
    let _ = rankmesh_embedding::service::validate_build_index(&req);
}

fn feature_get_features(body: &[u8]) {
    let Some(req) = decode::<feature::v1::GetFeaturesRequest>(body) else {
        return;
    };
    if let Ok(ids) = rankmesh_feature::service::validate_get_features(&req) {
        assert!(!ids.is_empty() && ids.len() <= MAX_CANDIDATES as usize);
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "duplicates are dropped");
        assert!(ids.iter().all(|id| req.candidate_ids.contains(id)));
    }
}

fn feature_lexical_candidates(body: &[u8]) {
    let Some(req) = decode::<feature::v1::LexicalCandidatesRequest>(body) else {
        return;
    };
    if let Ok((k, _)) = rankmesh_feature::service::validate_lexical_candidates(&req) {
        assert!((1..=MAX_RETRIEVE_K as usize).contains(&k));
    }
}

fn feature_record_event(body: &[u8]) {
    let Some(req) = decode::<feature::v1::RecordEventRequest>(body) else {
        return;
    };
    if let Ok(event) = rankmesh_feature::service::validate_record_event(&req, NOW_MS) {
        assert!(event.timestamp_ms >= 0, "no event before the epoch");
        assert!(event.timestamp_ms <= NOW_MS + 3_600_000, "none far ahead");
    }
}

fn feature_import_header(body: &[u8]) {
    let Some(req) = decode::<feature::v1::ImportCatalogChunk>(body) else {
        return;
    };
    let _ = rankmesh_feature::service::validate_import_header(&req);
}

fn feature_get_items(body: &[u8]) {
    let Some(req) = decode::<feature::v1::GetItemsRequest>(body) else {
        return;
    };
    if rankmesh_feature::service::validate_get_items(&req).is_ok() {
        assert!(req.ids.len() <= MAX_CANDIDATES as usize);
    }
}

fn feature_scan_items(body: &[u8]) {
    let Some(req) = decode::<feature::v1::ScanItemsRequest>(body) else {
        return;
    };
    if let Ok(page) = rankmesh_feature::service::validate_scan_items(&req) {
        assert!((1..=MAX_CANDIDATES as usize).contains(&page));
    }
}

fn feature_user_profile(body: &[u8]) {
    let Some(req) = decode::<feature::v1::GetUserProfileRequest>(body) else {
        return;
    };
    let _ = rankmesh_feature::service::validate_user_profile(&req);
}

fn registry_publish(body: &[u8]) {
    let Some(req) = decode::<registry::v1::PublishModelRequest>(body) else {
        return;
    };
    if let Some(registry::v1::publish_model_request::Part::Header(h)) = &req.part {
        if let Ok(header) = rankmesh_model_registry::requests::validate_publish_header(h) {
            assert!(header.variant == "fp32" || header.variant == "int8");
            assert_eq!(header.variant == "int8", header.parent_version != 0);
        }
    }
}

fn registry_stage(body: &[u8]) {
    let (Some(set), Some(rollback)) = (
        decode::<registry::v1::SetStageRequest>(body),
        decode::<registry::v1::RollbackRequest>(body),
    ) else {
        return;
    };
    if let Ok(stage) = rankmesh_model_registry::requests::validate_set_stage(&set) {
        assert_ne!(stage, registry::v1::Stage::Unspecified);
        if stage == registry::v1::Stage::Canary {
            assert!((1..=50).contains(&set.percent));
        }
    }
    let _ = rankmesh_model_registry::requests::validate_rollback(&rollback);
}

fn registry_reads(body: &[u8]) {
    use rankmesh_model_registry::requests as r;
    if let Some(req) = decode::<registry::v1::GetModelRequest>(body) {
        let _ = r::validate_get_model(&req);
    }
    if let Some(req) = decode::<registry::v1::ListModelsRequest>(body) {
        let _ = r::validate_list_models(&req);
    }
    if let Some(req) = decode::<registry::v1::FetchModelRequest>(body) {
        let _ = r::validate_fetch_model(&req);
    }
    if let Some(req) = decode::<registry::v1::RotateKeyRequest>(body) {
        let _ = r::validate_rotate_key(&req);
    }
}
