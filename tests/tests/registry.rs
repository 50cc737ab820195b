//! The model registry as a real process on a real etcd: writes need the admin token,
//! publish validates the artifact in ONNX Runtime, fetch resumes from an offset and
//! the bytes decrypt and verify to exactly what was published, stages change by
//! compare-and-set with rollback, and key rotation re-wraps without re-encrypting.

use std::collections::BTreeMap;
use std::time::Duration;

use rankmesh_artifact::envelope::{self, MasterKeys, Sealed, hex};
use rankmesh_artifact::fetch::{Fetcher, FollowError, Refusal, RegistrySource};
use rankmesh_artifact::manifest::Manifest;
use rankmesh_client::RegistryClient;
use rankmesh_common::discovery::Resolver;
use rankmesh_proto::pb::registry::v1 as pb;
use rankmesh_proto::pb::registry::v1::model_registry_client::ModelRegistryClient;
use rankmesh_tests::catalog::models_dir;
use rankmesh_tests::etcd::EtcdCluster;
use rankmesh_tests::eventually;
use rankmesh_tests::process::ServiceProcess;
use tonic::Code;
use tonic::transport::Channel;

const TOKEN: &str = "s3cret-admin-token";
const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const SEED: &str = "0707070707070707070707070707070707070707070707070707070707070707";

/// Writes the test's secrets as owner-only files under `dir/secrets` (token, k1,
/// k2, seed), the way services read them, and returns that folder.
fn secret_files(dir: &std::path::Path) -> std::path::PathBuf {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    for (name, value) in [("token", TOKEN), ("k1", K1), ("k2", K2), ("seed", SEED)] {
        rankmesh_tls::ca::write_private(&secrets.join(name), value.as_bytes()).expect("secret");
    }
    secrets
}

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

/// Columns of the default ranker (its declared input is [-1, columns]).
fn ranker_width() -> i64 {
    let schema: serde_json::Value = serde_json::from_slice(
        &std::fs::read(models_dir().join("ranker/schema.json")).expect("ranker schema.json"),
    )
    .expect("schema json");
    schema["columns"].as_array().expect("columns").len() as i64
}

fn upload(model: &[u8], input: &str) -> Vec<pb::PublishModelRequest> {
    let header = pb::PublishHeader {
        name: "ranker".into(),
        signature: Some(pb::ModelSignature {
            inputs: vec![pb::TensorSpec {
                name: input.into(),
                dtype: "float32".into(),
                shape: vec![-1, ranker_width()],
            }],
            outputs: vec![pb::TensorSpec {
                name: "score".into(),
                dtype: String::new(),
                shape: vec![],
            }],
        }),
        metadata: [("trained_by".to_owned(), "test".to_owned())].into(),
        quantize_int8: false,
        sidecar_names: vec![],
    };
    let mut msgs = vec![pb::PublishModelRequest {
        part: Some(pb::publish_model_request::Part::Header(header)),
    }];
    msgs.extend(model.chunks(1000).map(|c| pb::PublishModelRequest {
        part: Some(pb::publish_model_request::Part::Chunk(c.to_vec())),
    }));
    msgs
}

async fn fetch(
    c: &mut ModelRegistryClient<Channel>,
    version: u64,
    offset: u64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut s = c
        .fetch_model(pb::FetchModelRequest {
            name: "ranker".into(),
            version,
            variant: String::new(),
            offset,
            sidecar: String::new(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        assert_eq!(m.offset, offset + out.len() as u64);
        out.extend(m.data);
    }
    Ok(out)
}

fn open(m: &pb::ModelManifest, keys: &MasterKeys, ciphertext: &[u8]) -> Vec<u8> {
    let sealed = Sealed {
        key_id: m.key_id.clone(),
        wrapped_key: m.wrapped_key.clone(),
        sha256_plaintext: m.sha256_plaintext.clone(),
        sha256_ciphertext: m.sha256_ciphertext.clone(),
        size_bytes: m.size_bytes,
    };
    envelope::open(
        keys,
        &format!("{}/{}/{}", m.name, m.version, m.variant),
        &sealed,
        ciphertext,
    )
    .expect("decrypts and verifies")
}

#[tokio::test]
async fn publish_fetch_stage_rollback_rotate() {
    let etcd = EtcdCluster::single().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("blobs");
    let secrets = secret_files(dir.path());
    let file = |name: &str| secrets.join(name).display().to_string();
    let proc = ServiceProcess::spawn(
        "rankmesh-model-registry",
        "registry-test",
        &etcd.endpoints(),
        &[
            ("RANKMESH__REGISTRY__ADMIN_TOKEN_FILE", &file("token")),
            ("RANKMESH__REGISTRY__MASTER_KEY_FILES__K1", &file("k1")),
            ("RANKMESH__REGISTRY__MASTER_KEY_FILES__K2", &file("k2")),
            ("RANKMESH__REGISTRY__CURRENT_KEY", "k1"),
            ("RANKMESH__REGISTRY__SIGNING_KEY_FILE", &file("seed")),
            (
                "RANKMESH__REGISTRY__BLOB_DIR",
                blobs.to_str().expect("utf-8"),
            ),
        ],
    );
    let addr = format!("http://{}", proc.grpc_addr);
    let ch = eventually(std::time::Duration::from_secs(20), "registry up", || {
        let addr = addr.clone();
        async move { rankmesh_tests::tls::channel(&addr).await }
    })
    .await;
    let mut c = ModelRegistryClient::new(ch).max_decoding_message_size(8 << 20);
    let model = std::fs::read(models_dir().join("ranker/model.onnx"))
        .expect("trained ranker (scripts/train-ranker)");

    // Writes need the token.
    let s = c
        .publish_model(futures::stream::iter(upload(&model, "features")))
        .await
        .expect_err("no token");
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = c
        .publish_model(authed(
            futures::stream::iter(upload(&model, "features")),
            "wrong",
        ))
        .await
        .expect_err("wrong token");
    assert_eq!(s.code(), Code::PermissionDenied);
    // A declared interface the model does not have is refused, naming it.
    let s = c
        .publish_model(authed(
            futures::stream::iter(upload(&model, "input_ids")),
            TOKEN,
        ))
        .await
        .expect_err("signature mismatch");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("input_ids"), "{}", s.message());

    let v1 = c
        .publish_model(authed(
            futures::stream::iter(upload(&model, "features")),
            TOKEN,
        ))
        .await
        .expect("publish")
        .into_inner()
        .manifest
        .expect("manifest");
    assert_eq!(
        (v1.version, v1.variant.as_str(), v1.size_bytes),
        (1, "fp32", model.len() as u64)
    );
    let v2 = c
        .publish_model(authed(
            futures::stream::iter(upload(&model, "features")),
            TOKEN,
        ))
        .await
        .expect("publish again")
        .into_inner()
        .manifest
        .expect("manifest");
    assert_eq!(v2.version, 2);

    // The stored blob is ciphertext, not the model.
    let stored = std::fs::read(blobs.join("models/ranker/1/fp32.bin")).expect("blob on disk");
    assert!(
        !stored.windows(32).any(|w| w == &model[100..132]),
        "no plaintext model on disk"
    );

    // Fetch, resume from the middle, decrypt, verify hash and signature.
    let whole = fetch(&mut c, 1, 0).await.expect("fetch");
    let tail = fetch(&mut c, 1, 1234).await.expect("resume");
    assert_eq!(&whole[1234..], &tail[..]);
    let m = c
        .get_model(pb::GetModelRequest {
            name: "ranker".into(),
            version: 1,
            variant: String::new(),
        })
        .await
        .expect("get")
        .into_inner();
    let keys =
        MasterKeys::from_hex(&[("k1".to_owned(), K1.to_owned())].into(), "k1").expect("keys");
    assert_eq!(open(&m, &keys, &whole), model);
    let vk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
    let sig_hex: String = m
        .signature_ed25519
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    envelope::verify(&vk, &m.signed_manifest, &sig_hex).expect("signed by the registry");
    let s = fetch(&mut c, 1, u64::MAX / 2)
        .await
        .expect_err("offset beyond");
    assert_eq!(s.code(), Code::OutOfRange);

    // Stages: production, a newer production, rollback, nothing more to roll back.
    let set = |version, stage: pb::Stage, percent| {
        authed(
            pb::SetStageRequest {
                name: "ranker".into(),
                version,
                stage: stage as i32,
                percent,
                reason: "test".into(),
                expected_revision: 0,
            },
            TOKEN,
        )
    };
    c.set_stage(set(1, pb::Stage::Production, 0))
        .await
        .expect("promote v1");
    let s = c
        .set_stage(set(2, pb::Stage::Canary, 0))
        .await
        .expect_err("canary needs a percent");
    assert_eq!(s.code(), Code::InvalidArgument);
    c.set_stage(set(2, pb::Stage::Canary, 10))
        .await
        .expect("canary v2");
    let r = c
        .set_stage(set(2, pb::Stage::Production, 0))
        .await
        .expect("promote v2")
        .into_inner();
    assert_eq!((r.production_version, r.canary_version), (2, 0));
    let prod = c
        .get_model(pb::GetModelRequest {
            name: "ranker".into(),
            version: 0,
            variant: String::new(),
        })
        .await
        .expect("production")
        .into_inner();
    assert_eq!((prod.version, prod.stage.as_str()), (2, "production"));
    let rb = |token: &str| {
        authed(
            pb::RollbackRequest {
                name: "ranker".into(),
                reason: "bad".into(),
                expected_revision: 0,
            },
            token,
        )
    };
    let r = c.rollback(rb(TOKEN)).await.expect("rollback").into_inner();
    assert_eq!(r.production_version, 1);
    let s = c
        .rollback(rb(TOKEN))
        .await
        .expect_err("nothing to roll back to");
    assert_eq!(s.code(), Code::FailedPrecondition);
    let list = c
        .list_models(pb::ListModelsRequest {
            name: "ranker".into(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.models[0].versions.len(), 2);
    assert!(
        list.models[0]
            .history
            .iter()
            .any(|h| h.description.contains("rollback v2 -> v1"))
    );

    // Rotation: data keys re-wrapped under k2; blobs unchanged; k1 no longer needed.
    let before = std::fs::read(blobs.join("models/ranker/1/fp32.bin")).expect("blob");
    let r = c
        .rotate_key(authed(
            pb::RotateKeyRequest {
                new_key_id: "k2".into(),
            },
            TOKEN,
        ))
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(r.rewrapped, 2);
    assert_eq!(
        std::fs::read(blobs.join("models/ranker/1/fp32.bin")).expect("blob"),
        before
    );
    let m = c
        .get_model(pb::GetModelRequest {
            name: "ranker".into(),
            version: 1,
            variant: String::new(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(m.key_id, "k2");
    let only_k2 = MasterKeys::from_hex(&BTreeMap::from([("k2".to_owned(), K2.to_owned())]), "k2")
        .expect("keys");
    assert_eq!(
        open(&m, &only_k2, &fetch(&mut c, 1, 0).await.expect("fetch")),
        model
    );
    let s = c
        .rotate_key(authed(
            pb::RotateKeyRequest {
                new_key_id: "k9".into(),
            },
            TOKEN,
        ))
        .await
        .expect_err("unknown key");
    assert_eq!(s.code(), Code::FailedPrecondition);

    // A ranking replica follows production: v1 now (after the rollback).
    let cache = dir.path().join("ranker-cache");
    let vk_hex = hex(&vk.to_bytes());
    let env = [
        (
            "RANKMESH__RANKER__REGISTRY__MODEL".to_owned(),
            "ranker".to_owned(),
        ),
        (
            "RANKMESH__RANKER__REGISTRY__MASTER_KEY_FILES__K2".to_owned(),
            file("k2"),
        ),
        (
            "RANKMESH__RANKER__REGISTRY__VERIFY_KEY".to_owned(),
            vk_hex.clone(),
        ),
        (
            "RANKMESH__RANKER__REGISTRY__CACHE_DIR".to_owned(),
            cache.display().to_string(),
        ),
        (
            "RANKMESH__RANKER__REGISTRY__POLL_MS".to_owned(),
            "200".to_owned(),
        ),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut ranking = ServiceProcess::spawn(
        "rankmesh-ranking",
        "ranking-follow",
        &etcd.endpoints(),
        &env_ref,
    );
    wait_version(&ranking, 1.0).await;
    // Promote v2: hot swap.
    c.set_stage(set(2, pb::Stage::Production, 0))
        .await
        .expect("promote v2");
    wait_version(&ranking, 2.0).await;
    // A v3 whose blob is corrupted on disk is refused; v2 keeps serving.
    let v3 = c
        .publish_model(authed(
            futures::stream::iter(upload(&model, "features")),
            TOKEN,
        ))
        .await
        .expect("publish v3")
        .into_inner()
        .manifest
        .expect("manifest");
    let path = blobs.join(format!("models/ranker/{}/fp32.bin", v3.version));
    let mut bytes = std::fs::read(&path).expect("blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).expect("corrupt");
    c.set_stage(set(v3.version, pb::Stage::Production, 0))
        .await
        .expect("promote corrupt v3");
    eventually(
        Duration::from_secs(20),
        "the corrupt artifact to be refused",
        || {
            let admin = ranking.admin_addr.clone();
            async move {
                let (_, body) = rankmesh_tests::http_get(&admin, "/metrics").await.ok()?;
                body.contains(
                    r#"rankmesh_model_swap_failures_total{model="ranker",reason="ciphertext_hash"}"#,
                )
                .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        serving(&ranking).await,
        Some(2.0),
        "the last good ranker keeps serving"
    );

    // Registry gone, ranking restarted: it comes back with the cached (encrypted) v2.
    drop(proc);
    ranking.kill();
    let cached = std::fs::read(cache.join("production/model.bin")).expect("cached");
    assert!(
        !cached.windows(32).any(|w| w == &model[100..132]),
        "the cache holds ciphertext only"
    );
    let ranking = ServiceProcess::spawn(
        "rankmesh-ranking",
        "ranking-follow-2",
        &etcd.endpoints(),
        &env_ref,
    );
    wait_version(&ranking, 2.0).await;
}

/// The ranker version a ranking replica reports on its admin port.
async fn serving(ranking: &ServiceProcess) -> Option<f64> {
    let (_, body) = rankmesh_tests::http_get(&ranking.admin_addr, "/metrics")
        .await
        .ok()?;
    body.lines()
        .find(|l| {
            l.starts_with("rankmesh_model_version{")
                && l.contains(r#"model="ranker""#)
                && l.contains(r#"stage="production""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
}

async fn wait_version(ranking: &ServiceProcess, want: f64) {
    eventually(
        Duration::from_secs(20),
        &format!("ranking serves ranker v{want}"),
        || async { serving(ranking).await.filter(|v| *v == want) },
    )
    .await;
}

/// A registry's environment: its secrets as files beside `blobs` (see
/// [`secret_files`]), `blobs` as its store, and `extra` on top.
fn registry_env(
    blobs: &std::path::Path,
    extra: &[(&'static str, &'static str)],
) -> Vec<(String, String)> {
    let secrets = secret_files(blobs.parent().expect("blobs inside a test dir"));
    let file = |name: &str| secrets.join(name).display().to_string();
    let mut env: Vec<(String, String)> = [
        ("RANKMESH__REGISTRY__CURRENT_KEY", "k1"),
        ("RANKMESH__ETCD__LEASE_TTL_S", "2"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    env.extend([
        ("RANKMESH__REGISTRY__ADMIN_TOKEN_FILE".into(), file("token")),
        (
            "RANKMESH__REGISTRY__MASTER_KEY_FILES__K1".into(),
            file("k1"),
        ),
        ("RANKMESH__REGISTRY__SIGNING_KEY_FILE".into(), file("seed")),
        (
            "RANKMESH__REGISTRY__BLOB_DIR".into(),
            blobs.display().to_string(),
        ),
    ]);
    env
}

fn spawn_registry(etcd: &EtcdCluster, instance: &str, env: &[(String, String)]) -> ServiceProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ServiceProcess::spawn("rankmesh-model-registry", instance, &etcd.endpoints(), &env)
}

async fn connect(proc: &ServiceProcess) -> ModelRegistryClient<Channel> {
    let addr = format!("http://{}", proc.grpc_addr);
    let ch = eventually(Duration::from_secs(20), "registry up", || {
        let addr = addr.clone();
        async move { rankmesh_tests::tls::channel(&addr).await }
    })
    .await;
    ModelRegistryClient::new(ch).max_decoding_message_size(8 << 20)
}

/// Publishes `model` as `name` with optional metadata and sidecars (no declared
/// interface: the registry still loads it in ONNX Runtime).
async fn publish(
    c: &mut ModelRegistryClient<Channel>,
    name: &str,
    model: &[u8],
    metadata: &[(&str, &str)],
    sidecars: &[(&str, Vec<u8>)],
) -> Result<pb::ModelManifest, tonic::Status> {
    let header = pb::PublishHeader {
        name: name.into(),
        signature: None,
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        quantize_int8: false,
        sidecar_names: sidecars.iter().map(|(n, _)| (*n).to_owned()).collect(),
    };
    let mut msgs = vec![pb::PublishModelRequest {
        part: Some(pb::publish_model_request::Part::Header(header)),
    }];
    msgs.extend(sidecars.iter().map(|(n, d)| pb::PublishModelRequest {
        part: Some(pb::publish_model_request::Part::Sidecar(pb::Sidecar {
            name: (*n).to_owned(),
            data: d.clone(),
        })),
    }));
    msgs.extend(model.chunks(1 << 20).map(|c| pb::PublishModelRequest {
        part: Some(pb::publish_model_request::Part::Chunk(c.to_vec())),
    }));
    Ok(c.publish_model(authed(futures::stream::iter(msgs), TOKEN))
        .await?
        .into_inner()
        .manifest
        .expect("manifest"))
}

/// A replica's fetcher holding k1 from `secrets` (see [`secret_files`]).
fn fetcher(etcd: &rankmesh_common::etcd::Etcd, model: &str, secrets: &std::path::Path) -> Fetcher {
    let vk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
    Fetcher::new(
        RegistrySource {
            model: model.into(),
            master_key_files: [("k1".to_owned(), secrets.join("k1"))].into(),
            verify_key: hex(&vk.to_bytes()),
            ..RegistrySource::default()
        },
        RegistryClient::new(
            Resolver::watch(etcd.clone(), "registry"),
            Duration::from_secs(5),
        ),
    )
    .expect("fetcher")
}

async fn etcd_client(etcd: &EtcdCluster) -> rankmesh_common::etcd::Etcd {
    rankmesh_common::etcd::Etcd::connect(&rankmesh_common::config::EtcdConfig {
        lease_ttl_s: 2,
        health_check_interval_ms: 200,
        request_timeout_ms: 1_000,
        ..etcd.config()
    })
    .await
    .expect("etcd")
}

/// The encoder (90 MB) is fetched at a capped rate; the registry is killed
/// mid-stream and restarted (new address, found through discovery), and the fetch
/// resumes from the last byte received. The result decrypts to the exact file, with
/// its tokenizer sidecar. An INT8 file is stored as a variant of its FP32 parent and
/// picked on CPU.
#[tokio::test]
async fn fetch_resumes_across_a_registry_restart_and_variants_and_sidecars() {
    let etcd = EtcdCluster::single().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let env = registry_env(
        &dir.path().join("blobs"),
        &[("RANKMESH__REGISTRY__FETCH_BYTES_PER_S", "25000000")],
    );
    let mut registry = spawn_registry(&etcd, "registry-a", &env);
    let mut c = connect(&registry).await;
    let encoder = models_dir().join("encoder");
    let fp32 = std::fs::read(encoder.join("fp32/model.onnx")).expect("encoder (scripts/setup)");
    let int8 = std::fs::read(encoder.join("int8/model.onnx")).expect("int8 encoder");
    let tokenizer = std::fs::read(encoder.join("fp32/tokenizer.json")).expect("tokenizer");

    // Sidecar rules: named in the header and sent, exactly once.
    let s = publish(
        &mut c,
        "encoder",
        &fp32,
        &[],
        &[("../evil", tokenizer.clone())],
    )
    .await
    .expect_err("path-like sidecar name");
    assert_eq!(s.code(), Code::InvalidArgument);
    let v1 = publish(
        &mut c,
        "encoder",
        &fp32,
        &[],
        &[("tokenizer.json", tokenizer.clone())],
    )
    .await
    .expect("publish fp32 with its tokenizer");
    // INT8: needs an existing parent; stored under the parent's version.
    let s = publish(
        &mut c,
        "encoder",
        &int8,
        &[("variant", "int8"), ("parent_version", "9")],
        &[],
    )
    .await
    .expect_err("no such parent");
    assert_eq!(s.code(), Code::InvalidArgument);
    let q = publish(
        &mut c,
        "encoder",
        &int8,
        &[("variant", "int8"), ("parent_version", "1")],
        &[("tokenizer.json", tokenizer.clone())],
    )
    .await
    .expect("publish the int8 variant");
    assert_eq!(
        (q.version, q.variant.as_str(), q.parent_version),
        (v1.version, "int8", 1)
    );

    let client = etcd_client(&etcd).await;
    let f = std::sync::Arc::new(fetcher(&client, "encoder", &secret_files(dir.path())));
    let summary = eventually(Duration::from_secs(10), "the registry in discovery", || {
        let f = std::sync::Arc::clone(&f);
        async move { f.summary().await.ok().flatten() }
    })
    .await;
    let cpu = f.pick(&summary, 1, false).expect("a variant for CPU");
    assert_eq!(cpu.variant, "int8", "INT8 on CPU");
    let gpu = f
        .pick(&summary, 1, true)
        .expect("a variant for GPU")
        .clone();
    assert_eq!(gpu.variant, "fp32", "FP32 on GPU");

    // A validly signed manifest replayed under another listing (v1's FP32 manifest
    // served as its INT8 variant) is refused before anything is fetched.
    let mut replayed = cpu.clone();
    replayed.signed_manifest = gpu.signed_manifest.clone();
    replayed.signature_ed25519 = gpu.signature_ed25519.clone();
    let Err(err) = f.fetch(&replayed).await else {
        panic!("a replayed manifest was accepted");
    };
    assert!(
        matches!(&err, FollowError::Verify(Refusal::Replayed, m) if m.contains("replayed manifest")),
        "{err}"
    );

    // Fetch the FP32 artifact; kill the registry part way through.
    let task = {
        let f = std::sync::Arc::clone(&f);
        tokio::spawn(async move { f.fetch(&gpu).await })
    };
    eventually(Duration::from_secs(30), "part of the artifact", || {
        let f = std::sync::Arc::clone(&f);
        async move { (f.bytes_received() > 20 << 20).then_some(()) }
    })
    .await;
    registry.kill();
    let at_kill = f.bytes_received();
    assert!(at_kill < fp32.len() as u64, "killed mid-fetch");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _registry = spawn_registry(&etcd, "registry-b", &env);
    let sealed = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("fetch finishes")
        .expect("task")
        .expect("fetch succeeds after the restart");
    assert!(f.resumes() >= 1, "the fetch resumed rather than restarted");
    assert!(
        f.bytes_received() < at_kill + fp32.len() as u64 + (4 << 20),
        "bytes before the kill were not fetched again"
    );
    let opened = f.open(&sealed).expect("verifies and decrypts");
    assert_eq!(opened.model, fp32);
    assert_eq!(opened.sidecars.get("tokenizer.json"), Some(&tokenizer));

    // One flipped bit in the sidecar's ciphertext is refused, naming it.
    let mut bad = sealed.clone();
    if let Some(t) = bad.sidecars.get_mut("tokenizer.json") {
        t[10] ^= 1;
    }
    let e = f.open(&bad).expect_err("corrupt sidecar");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    // A replica holding only a wrong master key cannot open it.
    let wrong = Fetcher::new(
        RegistrySource {
            model: "encoder".into(),
            // k2's file under k1's name: the wrong key for what k1 wrapped.
            master_key_files: [("k1".to_owned(), secret_files(dir.path()).join("k2"))].into(),
            verify_key: hex(&ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
                .verifying_key()
                .to_bytes()),
            ..RegistrySource::default()
        },
        RegistryClient::new(
            Resolver::watch(client.clone(), "registry"),
            Duration::from_secs(5),
        ),
    )
    .expect("fetcher");
    let e = wrong.open(&sealed).expect_err("wrong master key");
    assert!(e.to_string().contains("does not unwrap"), "{e}");
}

/// An S3-compatible server (moto's, installed into the venv by scripts/test) on a
/// free loopback port; killed on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venv() -> std::path::PathBuf {
    std::env::var_os("RANKMESH_VENV").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"),
        std::path::PathBuf::from,
    )
}

impl S3Server {
    /// An object's bytes, read with a signed request (boto3, from the venv).
    fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let script = format!(
            "import boto3, sys; sys.stdout.buffer.write(boto3.client('s3', endpoint_url='{}', \
             region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\
             .get_object(Bucket='{bucket}', Key='{key}')['Body'].read())",
            self.endpoint
        );
        let out = std::process::Command::new(venv().join("bin/python"))
            .args(["-c", &script])
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    async fn start() -> Self {
        let venv = venv();
        let bin = venv.join("bin/moto_server");
        assert!(
            bin.exists(),
            "{} missing: scripts/test installs scripts/requirements-test.txt",
            bin.display()
        );
        let port = rankmesh_tests::free_port();
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        // Create the bucket (the registry, like any S3 client, expects it).
        let addr = format!("127.0.0.1:{port}");
        eventually(Duration::from_secs(30), "S3 server up", || {
            let addr = addr.clone();
            async move {
                http(&addr, "PUT", "/models")
                    .await
                    .filter(|(s, _)| *s == 200)
            }
        })
        .await;
        server
    }
}

/// One plain HTTP/1.1 request; (status, body).
async fn http(addr: &str, method: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(&buf[..head_end])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((status, buf[head_end + 4..].to_vec()))
}

/// The same registry code path on an S3-compatible object store: the blob lands in
/// the bucket encrypted, and fetch (ranged reads) decrypts to the exact artifact.
#[tokio::test]
async fn registry_on_an_s3_compatible_store() {
    let etcd = EtcdCluster::single().await;
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = registry_env(
        &dir.path().join("unused"),
        &[
            ("RANKMESH__REGISTRY__STORE", "s3"),
            ("RANKMESH__REGISTRY__S3__BUCKET", "models"),
            ("RANKMESH__REGISTRY__S3__REGION", "us-east-1"),
            ("RANKMESH__REGISTRY__S3__ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    );
    env.push((
        "RANKMESH__REGISTRY__S3__ENDPOINT".into(),
        s3.endpoint.clone(),
    ));
    let registry = spawn_registry(&etcd, "registry-s3", &env);
    let mut c = connect(&registry).await;
    let model = std::fs::read(models_dir().join("ranker/model.onnx")).expect("trained ranker");
    let m = publish(&mut c, "ranker", &model, &[], &[])
        .await
        .expect("publish to S3");

    // The object is in the bucket, and it is ciphertext.
    let stored = s3.get("models", "models/ranker/1/fp32.bin");
    assert_eq!(
        stored.len() as u64,
        m.size_bytes + 12 + 16,
        "nonce + ciphertext + tag"
    );
    assert!(
        !stored.windows(32).any(|w| w == &model[100..132]),
        "no plaintext in the bucket"
    );

    // Fetch through the registry (ranged reads from S3), resumed mid-way, decrypts.
    let whole = fetch(&mut c, 1, 0).await.expect("fetch");
    let tail = fetch(&mut c, 1, 1000).await.expect("resume");
    assert_eq!(&whole[1000..], &tail[..]);
    let keys =
        MasterKeys::from_hex(&[("k1".to_owned(), K1.to_owned())].into(), "k1").expect("keys");
    assert_eq!(open(&m, &keys, &whole), model);
}

/// `meshctl model show` prints what a replica will trust: the signed manifest
/// checked against the registry's public key (valid with the right key, INVALID with
/// another, unchecked with none), with cipher, key id, digests, sidecars, metadata
/// and stage history; `model list` shows the same signature status per version.
#[tokio::test]
async fn meshctl_model_show_checks_the_signature_and_prints_the_manifest() {
    let etcd = EtcdCluster::single().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let proc = spawn_registry(
        &etcd,
        "registry-show",
        &registry_env(&dir.path().join("blobs"), &[]),
    );
    let mut c = connect(&proc).await;
    let model = std::fs::read(models_dir().join("ranker/model.onnx")).expect("default ranker");
    let m = publish(
        &mut c,
        "ranker",
        &model,
        &[("dev_ndcg10", "0.44"), ("algo", "lambdamart")],
        &[("schema.json", b"{\"columns\": []}".to_vec())],
    )
    .await
    .expect("publish");
    let stage = pb::SetStageRequest {
        name: "ranker".into(),
        version: m.version,
        stage: pb::Stage::Production as i32,
        reason: "show test".into(),
        ..Default::default()
    };
    c.set_stage(authed(stage, TOKEN)).await.expect("promote");

    let good = hex(&ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
        .verifying_key()
        .to_bytes());
    let other = hex(&ed25519_dalek::SigningKey::from_bytes(&[8u8; 32])
        .verifying_key()
        .to_bytes());
    let no_state = dir.path().join("no-mesh-here");
    let no_state = no_state.to_str().expect("utf-8 path");
    let endpoint = etcd.endpoints()[0].clone();
    let meshctl = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["model", "--etcd", &endpoint, "--state-dir", no_state];
        all.extend(args);
        serde_json::from_str(&rankmesh_tests::process::meshctl(&all)).expect("JSON")
    };

    // The production version by default, every field of the signed manifest.
    let shown = meshctl(&["--verify-key", &good, "show", "ranker", "--json"]);
    assert_eq!(shown["version"], m.version);
    let v = &shown["variants"][0];
    assert_eq!(v["signature"], "valid", "{shown:#}");
    assert_eq!(v["signature_scheme"], "ed25519");
    assert_eq!(v["cipher"], "AES-256-GCM");
    assert_eq!(v["key_id"], "k1");
    assert_eq!(v["sha256"], m.sha256_plaintext);
    assert_eq!(v["size_bytes"], model.len() as u64);
    assert_eq!(v["stage"], "production");
    assert_eq!(v["metadata"]["dev_ndcg10"], "0.44");
    assert_eq!(v["sidecars"][0]["name"], "schema.json");
    assert_eq!(v["blob"], "models/ranker/1/fp32.bin");
    assert_eq!(shown["verify_key"], good.as_str());
    let history = shown["history"].as_array().expect("history");
    assert!(
        history.iter().any(|h| h["description"]
            .as_str()
            .is_some_and(|d| d.contains("show test"))),
        "{shown:#}"
    );

    // Another key: a replica would refuse it, and show says so.
    let wrong = meshctl(&["--verify-key", &other, "show", "ranker", "1", "--json"]);
    assert_eq!(wrong["variants"][0]["signature"], "INVALID", "{wrong:#}");
    assert!(wrong["variants"][0]["signature_error"].is_string());
    // No key at all (no local mesh): unchecked, never valid.
    let unchecked = meshctl(&["show", "ranker", "1", "--json"]);
    assert_eq!(unchecked["variants"][0]["signature"], "unchecked");

    let listed = meshctl(&["--verify-key", &good, "list", "ranker", "--json"]);
    let versions = &listed[0]["versions"];
    assert_eq!(versions[0]["signature"], "valid", "{listed:#}");
    assert_eq!(versions[0]["cipher"], "AES-256-GCM");

    // A version that is not there is an error naming it.
    let out = rankmesh_tests::process::meshctl_command()
        .args([
            "model",
            "--etcd",
            &etcd.endpoints()[0],
            "show",
            "ranker",
            "9",
        ])
        .output()
        .expect("run meshctl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no version 9"), "{err}");
}

/// Two registries on one etcd and one blob store: exactly one leads garbage
/// collection; it deletes the versions the retention policy drops (keep the newest
/// one, and production) with their blobs, and blobs no manifest names. Killed, its
/// peer takes over and goes on collecting.
#[tokio::test]
async fn garbage_collection_runs_on_the_elected_registry_and_fails_over() {
    let etcd = EtcdCluster::single().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("blobs");
    let env = registry_env(
        &blobs,
        &[
            ("RANKMESH__REGISTRY__RETENTION__KEEP_VERSIONS", "1"),
            ("RANKMESH__REGISTRY__RETENTION__INTERVAL_S", "0.2"),
            // Longer than a publish here takes (its blobs are written before its
            // manifest); the orphan below is made older than that.
            ("RANKMESH__REGISTRY__RETENTION__ORPHAN_GRACE_S", "60"),
        ],
    );
    let mut registries = [
        spawn_registry(&etcd, "registry-a", &env),
        spawn_registry(&etcd, "registry-b", &env),
    ];
    let observer = rankmesh_common::election::Candidate::new(
        etcd_client(&etcd).await,
        // The registry's `gc::GC_ROLE`.
        "registry-gc",
        "observer",
    );
    let leader = eventually(
        Duration::from_secs(20),
        "a garbage-collection leader",
        || {
            let observer = &observer;
            async move { observer.leader().await.ok().flatten() }
        },
    )
    .await;
    let (lead, other) = if leader == "registry-a" {
        (0, 1)
    } else {
        (1, 0)
    };
    assert!(
        ["registry-a", "registry-b"].contains(&leader.as_str()),
        "{leader}"
    );
    // Publish through the one that does not lead: any replica serves writes.
    let mut c = connect(&registries[other]).await;
    let model = std::fs::read(models_dir().join("ranker/model.onnx")).expect("default ranker");
    let publish_next = async |c: &mut ModelRegistryClient<Channel>| {
        publish(c, "ranker", &model, &[], &[])
            .await
            .expect("publish")
            .version
    };
    let v1 = publish_next(&mut c).await;
    promote(&mut c, v1).await;
    let v2 = publish_next(&mut c).await;
    let v3 = publish_next(&mut c).await;
    let stray = blobs.join("models/stray/1/fp32.bin");
    std::fs::create_dir_all(stray.parent().expect("dir")).expect("mkdir");
    std::fs::write(&stray, b"no manifest names me").expect("orphan blob");
    std::fs::File::options()
        .write(true)
        .open(&stray)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)))
        .expect("an hour-old orphan");

    let blob = |v: u64| blobs.join(format!("models/ranker/{v}/fp32.bin"));
    wait_versions(&mut c, &[v1, v3], "v2 collected").await;
    // Blobs go after their manifests, in the same sweep.
    wait_gone(
        &[blob(v2), stray.clone()],
        "v2's blob and the orphan collected",
    )
    .await;
    assert!(blob(v1).exists() && blob(v3).exists());

    // The leader dies; its peer is elected and collects from then on.
    registries[lead].kill();
    let next = eventually(
        Duration::from_secs(20),
        "a new garbage-collection leader",
        || {
            let observer = &observer;
            let leader = &leader;
            async move {
                observer
                    .leader()
                    .await
                    .ok()
                    .flatten()
                    .filter(|l| l != leader)
            }
        },
    )
    .await;
    assert_eq!(next, registries[other].name);
    let v4 = publish_next(&mut c).await;
    let v5 = publish_next(&mut c).await;
    wait_versions(&mut c, &[v1, v5], "v3 and v4 collected by the new leader").await;
    wait_gone(&[blob(v3), blob(v4)], "v3's and v4's blobs collected").await;
    assert!(blob(v1).exists() && blob(v5).exists());
    let history = c
        .list_models(pb::ListModelsRequest {
            name: "ranker".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .models[0]
        .history
        .iter()
        .map(|h| h.description.clone())
        .collect::<Vec<_>>();
    assert!(
        history
            .iter()
            .any(|h| h.contains("garbage collection removed v2")),
        "{history:?}"
    );
}

async fn promote(c: &mut ModelRegistryClient<Channel>, version: u64) {
    let req = pb::SetStageRequest {
        name: "ranker".into(),
        version,
        stage: pb::Stage::Production as i32,
        reason: "gc test".into(),
        ..Default::default()
    };
    c.set_stage(authed(req, TOKEN)).await.expect("promote");
}

/// Waits until none of `paths` exists.
async fn wait_gone(paths: &[std::path::PathBuf], what: &str) {
    eventually(Duration::from_secs(10), what, || {
        let gone = paths.iter().all(|p| !p.exists());
        async move { gone.then_some(()) }
    })
    .await;
}

/// Waits until the registry lists exactly `want` as the ranker's versions.
async fn wait_versions(c: &mut ModelRegistryClient<Channel>, want: &[u64], what: &str) {
    eventually(Duration::from_secs(20), what, || {
        let mut c = c.clone();
        async move {
            let r = c
                .list_models(pb::ListModelsRequest {
                    name: "ranker".into(),
                })
                .await
                .ok()?
                .into_inner();
            let mut have: Vec<u64> = r
                .models
                .first()?
                .versions
                .iter()
                .map(|m| m.version)
                .collect();
            have.dedup();
            (have == want).then_some(())
        }
    })
    .await;
}

/// `meshctl model publish --quantize int8` has the registry make the INT8 variant
/// with the project's quantizer and check it against FP32 before anything is stored:
/// a registry whose bound INT8 cannot reach refuses the upload and stores nothing; at
/// the default bound (mean cosine 0.98) both variants are stored, the INT8 one linked
/// to its parent with the figures in its metadata. The ranker (a tree ensemble:
/// nothing to quantize) passes its score-correlation check exactly. A registry
/// without a quantizer refuses the option, naming what to configure.
#[tokio::test]
async fn publish_quantize_int8_checks_against_fp32_before_storing() {
    let etcd = EtcdCluster::single().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = venv().join("bin/python");
    let script = repo.join("scripts/quantize_model.py");
    let blobs = dir.path().join("blobs");
    let env = |extra: &[(&str, &str)]| {
        let mut env = registry_env(&blobs, &[]);
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    };
    let python = python.to_str().expect("utf-8");
    let script = script.to_str().expect("utf-8");
    let quantizer = [
        ("RANKMESH__REGISTRY__QUANTIZER__PYTHON", python),
        ("RANKMESH__REGISTRY__QUANTIZER__SCRIPT", script),
    ];
    let strict = [
        quantizer[0],
        quantizer[1],
        ("RANKMESH__REGISTRY__QUANTIZER__MIN_COSINE", "0.9999"),
    ];
    let strict = spawn_registry(&etcd, "registry-strict", &env(&strict));
    let normal = spawn_registry(&etcd, "registry-q", &env(&quantizer));
    let bare = spawn_registry(&etcd, "registry-bare", &env(&[]));
    let mut c = connect(&normal).await;
    let _ = (connect(&strict).await, connect(&bare).await);
    let meshctl = |registry: &ServiceProcess, args: &[&str]| {
        rankmesh_tests::process::meshctl_command()
            .args(["model", "--addr", &registry.grpc_addr, "--token", TOKEN])
            .args(args)
            .output()
            .expect("run meshctl")
    };
    let encoder = models_dir().join("encoder/fp32");
    let model = encoder.join("model.onnx");
    let tokenizer = encoder.join("tokenizer.json");
    let (model, tokenizer) = (
        model.to_str().expect("utf-8"),
        tokenizer.to_str().expect("utf-8"),
    );
    let publish = [
        "publish",
        "encoder",
        model,
        "--sidecar",
        tokenizer,
        "--quantize",
        "int8",
    ];

    let refused = meshctl(&strict, &publish);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a bound INT8 cannot reach refuses the upload"
    );
    assert!(
        err.contains("misses its bound") && err.contains("mean cosine") && err.contains("0.9999"),
        "{err}"
    );
    let none = meshctl(&bare, &publish);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success());
    assert!(err.contains("registry.quantizer.python"), "{err}");
    let listed = versions_of(&mut c, "encoder").await;
    assert!(listed.is_empty(), "nothing stored: {listed:?}");

    let out = meshctl(&normal, &publish);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("(int8, ") && printed.contains("mean cosine"),
        "{printed}"
    );
    let versions = versions_of(&mut c, "encoder").await;
    assert_eq!(versions.len(), 2, "{versions:?}");
    let int8 = versions
        .iter()
        .find(|v| v.variant == "int8")
        .expect("int8 variant");
    let fp32 = versions
        .iter()
        .find(|v| v.variant == "fp32")
        .expect("fp32 variant");
    assert_eq!(int8.version, fp32.version);
    assert_eq!(int8.parent_version, fp32.version);
    assert!(int8.size_bytes * 2 < fp32.size_bytes, "INT8 is smaller");
    let cosine: f64 = int8.metadata["int8_mean_cosine"].parse().expect("a number");
    assert!((0.98..=1.0).contains(&cosine), "{cosine}");
    assert!(int8.metadata["int8_check"].contains("at least 0.98"));

    let ranker = models_dir().join("ranker/model.onnx");
    let out = meshctl(
        &normal,
        &[
            "publish",
            "ranker",
            ranker.to_str().expect("utf-8"),
            "--inputs",
            "features",
            "--quantize",
            "int8",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ranker = versions_of(&mut c, "ranker").await;
    let int8 = ranker
        .iter()
        .find(|v| v.variant == "int8")
        .expect("int8 ranker");
    assert_eq!(
        int8.metadata["int8_correlation"], "1.0",
        "{:?}",
        int8.metadata
    );
}

/// The versions (every variant) the registry lists for `name`; empty when none.
async fn versions_of(c: &mut ModelRegistryClient<Channel>, name: &str) -> Vec<pb::ModelManifest> {
    c.list_models(pb::ListModelsRequest { name: name.into() })
        .await
        .expect("list")
        .into_inner()
        .models
        .into_iter()
        .next()
        .map(|m| m.versions)
        .unwrap_or_default()
}

/// Key rotation is durable and shared: RotateKey on one registry records the new
/// key id in etcd (the id only, no key material anywhere in etcd), the second
/// registry and a restarted first one seal under it, and a registry that lacks the
/// recorded key refuses to start rather than publish under a stale one.
#[tokio::test]
async fn key_rotation_is_recorded_in_etcd_and_used_by_every_registry() {
    let etcd = EtcdCluster::single().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("blobs");
    let only_k1 = registry_env(&blobs, &[]);
    let mut both = only_k1.clone();
    both.push((
        "RANKMESH__REGISTRY__MASTER_KEY_FILES__K2".into(),
        dir.path().join("secrets/k2").display().to_string(),
    ));
    let mut a = spawn_registry(&etcd, "registry-a", &both);
    let b = spawn_registry(&etcd, "registry-b", &both);
    let (mut ca, mut cb) = (connect(&a).await, connect(&b).await);
    let model = std::fs::read(models_dir().join("ranker/model.onnx")).expect("default ranker");

    let v1 = publish(&mut ca, "ranker", &model, &[], &[])
        .await
        .expect("v1");
    assert_eq!(
        v1.key_id, "k1",
        "the configured current key before any rotation"
    );
    let r = ca
        .rotate_key(authed(
            pb::RotateKeyRequest {
                new_key_id: "k2".into(),
            },
            TOKEN,
        ))
        .await
        .expect("rotate on a")
        .into_inner();
    assert_eq!(r.rewrapped, 1);

    // b was configured with k1 current and never rotated itself.
    let v2 = publish(&mut cb, "ranker", &model, &[], &[])
        .await
        .expect("v2 on b");
    assert_eq!(
        v2.key_id, "k2",
        "b seals under the key a's rotation recorded"
    );

    // etcd holds the id, and no key material at all.
    let mut client = etcd_client(&etcd).await.client();
    let all = client
        .get("/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("read etcd");
    let mut recorded = None;
    for kv in all.kvs() {
        let value = String::from_utf8_lossy(kv.value());
        for secret in [K1, K2, SEED, TOKEN] {
            assert!(
                !value.contains(secret),
                "a secret in etcd at {}",
                String::from_utf8_lossy(kv.key())
            );
        }
        if kv.key() == b"/rankmesh/registry/current_key" {
            recorded = Some(value.into_owned());
        }
    }
    assert_eq!(recorded.as_deref(), Some("k2"));

    // A restarted a still seals under k2 (its config says k1).
    a.kill();
    let a = spawn_registry(&etcd, "registry-a2", &both);
    let v3 = publish(&mut connect(&a).await, "ranker", &model, &[], &[])
        .await
        .expect("v3 on the restarted a");
    assert_eq!(v3.key_id, "k2");

    // A registry without k2 cannot seal under it: it refuses to start.
    let mut stale = spawn_registry(&etcd, "registry-stale", &only_k1);
    let code = tokio::task::spawn_blocking(move || stale.wait())
        .await
        .expect("wait");
    assert!(
        matches!(code, Some(c) if c != 0),
        "a registry lacking the recorded key exits non-zero, got {code:?}"
    );
}

/// The tamper and replay matrix against a live ranking replica following the
/// registry: each case is a new version, published, then tampered with in the
/// registry's store (the blob, or the manifest record in etcd), then promoted.
/// The replica refuses each for its own reason (a distinct label of
/// `rankmesh_model_swap_failures_total`, the reason in its log) and keeps serving
/// v1 throughout. Cases that need a validly signed manifest (a corrupt wrapped
/// key, an unknown key id) are signed with the registry's own seed, as a
/// registry with a bug or a stolen key would; "another key" signs with another.
#[tokio::test]
async fn every_tampered_or_replayed_artifact_is_refused_for_its_own_reason() {
    let etcd = EtcdCluster::single().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("blobs");
    let registry = spawn_registry(&etcd, "registry-tamper", &registry_env(&blobs, &[]));
    let mut c = connect(&registry).await;
    let model = std::fs::read(models_dir().join("ranker/model.onnx")).expect("default ranker");
    let seed = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let v1 = publish(&mut c, "ranker", &model, &[], &[])
        .await
        .expect("v1");
    promote(&mut c, v1.version).await;
    let secrets = dir.path().join("secrets");
    let env = [
        ("RANKMESH__RANKER__REGISTRY__MODEL", "ranker".to_owned()),
        (
            "RANKMESH__RANKER__REGISTRY__MASTER_KEY_FILES__K1",
            secrets.join("k1").display().to_string(),
        ),
        (
            "RANKMESH__RANKER__REGISTRY__VERIFY_KEY",
            hex(seed.verifying_key().as_bytes()),
        ),
        (
            "RANKMESH__RANKER__REGISTRY__CACHE_DIR",
            dir.path().join("cache").display().to_string(),
        ),
        ("RANKMESH__RANKER__REGISTRY__POLL_MS", "200".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ranking = ServiceProcess::spawn(
        "rankmesh-ranking",
        "ranking-tamper",
        &etcd.endpoints(),
        &env,
    );
    wait_version(&ranking, 1.0).await;

    let mut kv = etcd_client(&etcd).await.client();
    let key = |v: u64| format!("/rankmesh/models/ranker/versions/{v:020}/fp32");
    let v1_record = kv.get(key(1), None).await.expect("v1 record").kvs()[0]
        .value()
        .to_vec();
    type Tamper = Box<dyn Fn(u64, &mut serde_json::Value) -> Option<Vec<u8>>>;
    let resign = |edit: fn(&mut Manifest), by: ed25519_dalek::SigningKey| -> Tamper {
        Box::new(move |_, record| {
            let mut m: Manifest = serde_json::from_value(record.clone()).expect("manifest");
            edit(&mut m);
            m.sign(&by);
            Some(serde_json::to_vec(&m).expect("json"))
        })
    };
    let cases: Vec<(&str, Tamper)> = vec![
        ("ciphertext_hash", {
            let blobs = blobs.clone();
            Box::new(move |v, _| {
                let path = blobs.join(format!("models/ranker/{v}/fp32.bin"));
                let mut bytes = std::fs::read(&path).expect("blob");
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
                std::fs::write(&path, bytes).expect("flip a bit in the blob");
                None
            })
        }),
        (
            "manifest_altered",
            Box::new(|_, record| {
                let t = record["created_ms"].as_i64().expect("created_ms");
                record["created_ms"] = (t ^ 1).into();
                Some(serde_json::to_vec(record).expect("json"))
            }),
        ),
        (
            "signature",
            Box::new(|_, record| {
                let sig = record["signature"].as_str().expect("signature");
                record["signature"] = flip_hex(sig, 10).into();
                Some(serde_json::to_vec(record).expect("json"))
            }),
        ),
        (
            "data_key",
            resign(
                |m| m.sealed.wrapped_key = flip_hex(&m.sealed.wrapped_key, 40),
                seed.clone(),
            ),
        ),
        (
            "unknown_key",
            resign(|m| m.sealed.key_id = "k9".into(), seed.clone()),
        ),
        (
            "foreign_signer",
            resign(|_| {}, ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])),
        ),
        ("replayed", {
            let v1_record = v1_record.clone();
            Box::new(move |_, _| Some(v1_record.clone()))
        }),
    ];
    for (reason, tamper) in &cases {
        let v = publish(&mut c, "ranker", &model, &[], &[])
            .await
            .expect("publish")
            .version;
        let got = kv.get(key(v), None).await.expect("record");
        let mut record: serde_json::Value =
            serde_json::from_slice(got.kvs()[0].value()).expect("record JSON");
        if let Some(bytes) = tamper(v, &mut record) {
            kv.put(key(v), bytes, None).await.expect("tamper");
        }
        promote(&mut c, v).await;
        let metric =
            format!(r#"rankmesh_model_swap_failures_total{{model="ranker",reason="{reason}"}}"#);
        eventually(
            Duration::from_secs(20),
            &format!("v{v} refused as {reason}"),
            || {
                let (admin, metric) = (ranking.admin_addr.clone(), metric.clone());
                async move {
                    let (_, body) = rankmesh_tests::http_get(&admin, "/metrics").await.ok()?;
                    body.contains(&metric).then_some(())
                }
            },
        )
        .await;
        assert_eq!(
            serving(&ranking).await,
            Some(1.0),
            "v1 keeps serving after v{v} was refused as {reason}"
        );
    }
}

/// `s` with the hex digit at `i` changed (one to four bits flipped).
fn flip_hex(s: &str, i: usize) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    chars[i] = if chars[i] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}
