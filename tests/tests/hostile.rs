//! Hostile clients against a live service (the feature service as a real process,
//! plaintext so that a raw HTTP/2 client can speak to it): requests that trickle
//! in a byte at a time, uploads that stall, streams that are opened and never
//! read, and every oversize request. Each must be refused or cut off with a status
//! naming its limit, while the service goes on answering everyone else.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use rankmesh_proto::pb::feature::v1 as pb;
use rankmesh_proto::pb::feature::v1::feature_service_client::FeatureServiceClient;
use rankmesh_tests::catalog::demo_catalog;
use rankmesh_tests::process::ServiceProcess;
use rankmesh_tests::{eventually, http_get};
use tonic::Code;
use tonic::transport::Channel;

/// In-flight calls the service admits; a test that holds them all shows it.
const MAX_CONCURRENCY: usize = 4;
const MAX_STREAMS: usize = 16;
const REQUEST_BODY_TIMEOUT_MS: u64 = 1500;
const UPLOAD_IDLE_TIMEOUT_MS: u64 = 1500;
const UPLOAD_MIN_BYTES_PER_SEC: u64 = 1024;
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

fn spawn(dir: &tempfile::TempDir) -> ServiceProcess {
    let store = dir.path().join("f.redb").display().to_string();
    let concurrency = MAX_CONCURRENCY.to_string();
    let streams = MAX_STREAMS.to_string();
    let body = REQUEST_BODY_TIMEOUT_MS.to_string();
    let idle = UPLOAD_IDLE_TIMEOUT_MS.to_string();
    let rate = UPLOAD_MIN_BYTES_PER_SEC.to_string();
    let message = MAX_MESSAGE_BYTES.to_string();
    let env = [
        ("RANKMESH__SERVER__TLS__INSECURE", "true"),
        ("RANKMESH__STORE__BACKEND", "redb"),
        ("RANKMESH__STORE__PATH", store.as_str()),
        ("RANKMESH__SERVER__MAX_CONCURRENCY", concurrency.as_str()),
        ("RANKMESH__SERVER__MAX_CONCURRENT_STREAMS", streams.as_str()),
        ("RANKMESH__SERVER__REQUEST_BODY_TIMEOUT_MS", body.as_str()),
        ("RANKMESH__SERVER__UPLOAD_IDLE_TIMEOUT_MS", idle.as_str()),
        ("RANKMESH__SERVER__UPLOAD_MIN_BYTES_PER_SEC", rate.as_str()),
        ("RANKMESH__SERVER__MAX_MESSAGE_BYTES", message.as_str()),
    ];
    ServiceProcess::spawn("rankmesh-feature", "feature-hostile", &[], &env)
}

async fn client(p: &ServiceProcess) -> FeatureServiceClient<Channel> {
    let addr = format!("http://{}", p.grpc_addr);
    let ch = eventually(
        Duration::from_secs(30),
        "feature service to accept plaintext connections",
        || {
            let addr = addr.clone();
            async move { Channel::from_shared(addr).ok()?.connect().await.ok() }
        },
    )
    .await;
    FeatureServiceClient::new(ch)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024)
}

/// A catalog upload of `items` in one chunk.
fn upload(items: &[String], replace: bool) -> pb::ImportCatalogChunk {
    pb::ImportCatalogChunk {
        format: pb::CatalogFormat::Jsonl as i32,
        data: items.join("\n").into_bytes(),
        replace,
        last: true,
    }
}

/// `n` items with 1 KiB descriptions: one ScanItems page of them is larger than an
/// HTTP/2 stream's default window, so a client that never reads stalls it.
fn bulky_items(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"bulk-{i:04}","title":"Bulk item {i}","description":"{}","category":"Bulk","price":1.0}}"#,
                "x".repeat(1024)
            )
        })
        .collect()
}

/// The service answers an ordinary call, quickly.
async fn still_serving(c: &mut FeatureServiceClient<Channel>, what: &str) {
    let mut request = tonic::Request::new(pb::GetItemsRequest {
        ids: vec!["hp-1".into()],
    });
    request.set_timeout(Duration::from_secs(5));
    let got = c
        .get_items(request)
        .await
        .unwrap_or_else(|s| panic!("after {what}, an ordinary call failed: {s:?}"))
        .into_inner();
    assert_eq!(got.items.len(), 1, "after {what}");
}

/// An unlabelled metric's value on a Prometheus page.
fn gauge(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        (metric == name).then(|| value.trim().parse().ok())?
    })
}

/// A raw HTTP/2 connection (prior knowledge, no TLS).
async fn h2_connect(addr: &str) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.expect("connection ready")
}

fn grpc_request(addr: &str, method: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{addr}/rankmesh.feature.v1.FeatureService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// A gRPC message's 5-byte prefix announcing `len` bytes.
fn prefix(len: u32) -> Bytes {
    let mut p = vec![0];
    p.extend(len.to_be_bytes());
    Bytes::from(p)
}

/// The grpc-status of a raw response: in its headers (a trailers-only answer) or
/// its trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> (i32, String) {
    let response = response.await.expect("a response");
    let read = |h: &http::HeaderMap| {
        h.get("grpc-status").map(|s| {
            let code = s.to_str().unwrap_or("").parse().unwrap_or(-1);
            let message = h
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .unwrap_or("")
                .to_owned();
            (code, message)
        })
    };
    if let Some(found) = read(response.headers()) {
        return found;
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let _ = data;
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    read(&trailers).expect("a grpc-status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_cut_off_and_others_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proc = spawn(&dir);
    let mut c = client(&proc).await;
    let demo = std::fs::read_to_string(demo_catalog()).expect("demo catalog");
    let demo: Vec<String> = demo.lines().map(str::to_owned).collect();
    let mut catalog = demo.clone();
    catalog.extend(bulky_items(300));
    let r = c
        .import_catalog(futures::stream::iter([upload(&catalog, true)]))
        .await
        .expect("import")
        .into_inner();
    assert_eq!(r.imported, catalog.len() as u64);

    trickled_requests_free_their_slots(&proc.grpc_addr, &proc.admin_addr, &mut c).await;
    stalled_uploads_fail_and_free_the_import(&mut c, &catalog).await;
    unread_streams_hold_nothing_and_are_capped(&proc.grpc_addr, &mut c).await;
    oversize_requests_are_refused_by_name(&mut c).await;
}

/// As many requests as the service admits, each trickled a byte every 100 ms and
/// never finished: while they hold every slot, others are refused at once; at the
/// request deadline they end in DEADLINE_EXCEEDED and the service serves again.
async fn trickled_requests_free_their_slots(
    addr: &str,
    admin_addr: &str,
    c: &mut FeatureServiceClient<Channel>,
) {
    let send = h2_connect(addr).await;
    let started = Instant::now();
    let mut answers = Vec::new();
    let mut tricklers = Vec::new();
    for _ in 0..MAX_CONCURRENCY {
        let mut send = send.clone().ready().await.expect("ready");
        let (response, mut body) = send
            .send_request(grpc_request(addr, "GetItems"), false)
            .expect("send headers");
        answers.push(tokio::spawn(grpc_status(response)));
        tricklers.push(tokio::spawn(async move {
            // A message announcing 4 KiB, sent a byte at a time.
            if body.send_data(prefix(4096), false).is_err() {
                return;
            }
            for _ in 0..4096 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if body.send_data(Bytes::from_static(b"\n"), false).is_err() {
                    return;
                }
            }
        }));
    }
    // The attack is real: once the service counts every slot held (by the
    // tricklers alone: nothing else is in flight), an ordinary call is refused.
    // Waiting on the gauge, not on a refusal: an ordinary call racing the
    // tricklers' headers could take a slot first and turn one trickler away, and
    // the slots would then never all be held.
    let admin = admin_addr.to_owned();
    eventually(
        Duration::from_millis(REQUEST_BODY_TIMEOUT_MS / 2),
        "every slot to be held by a trickling request",
        || {
            let admin = admin.clone();
            async move {
                let (_, metrics) = http_get(&admin, "/metrics").await.ok()?;
                (gauge(&metrics, "rankmesh_inflight_requests") == Some(MAX_CONCURRENCY as f64))
                    .then_some(())
            }
        },
    )
    .await;
    let refused = c
        .get_items(pb::GetItemsRequest {
            ids: vec!["hp-1".into()],
        })
        .await
        .expect_err("an ordinary call while every slot is held");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    for answer in answers {
        let (code, message) = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("a trickled request is answered within its deadline")
            .expect("task");
        assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
        assert!(
            message.contains("request_body_timeout_ms"),
            "the status names the limit: {message}"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(REQUEST_BODY_TIMEOUT_MS),
        "cut off at the deadline, not before: {waited:?}"
    );
    for t in tricklers {
        t.abort();
    }
    still_serving(c, "trickled requests").await;
}

/// An upload that sends its first chunk and then nothing fails with
/// DEADLINE_EXCEEDED once idle too long, and so does one that never stops but
/// trickles a row every 100 ms (well under the minimum rate); each stores nothing
/// and releases the import (one runs at a time: a stalled one used to block every
/// later import, and a trickled one could hold it for ever).
async fn stalled_uploads_fail_and_free_the_import(
    c: &mut FeatureServiceClient<Channel>,
    catalog: &[String],
) {
    let first = pb::ImportCatalogChunk {
        format: pb::CatalogFormat::Jsonl as i32,
        data: br#"{"id":"stalled-1","title":"Never stored"}"#.to_vec(),
        replace: true,
        last: false,
    };
    let stalled = futures::stream::iter([first]).chain(futures::stream::pending());
    cut_off_upload(c, stalled, "a stalled upload", "upload_idle_timeout_ms").await;

    // About 60 bytes (a row and its framing) every 100 ms: 600 a second, under
    // the 1024 asked for.
    let trickled = futures::stream::unfold(0u32, |i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let chunk = pb::ImportCatalogChunk {
            format: pb::CatalogFormat::Jsonl as i32,
            data: format!("{{\"id\":\"trickle-{i}\",\"title\":\"Never stored\"}}\n").into_bytes(),
            replace: false,
            last: false,
        };
        Some((chunk, i + 1))
    });
    cut_off_upload(c, trickled, "a trickled upload", "upload_min_bytes_per_sec").await;

    let r = tokio::time::timeout(
        Duration::from_secs(30),
        c.import_catalog(futures::stream::iter([upload(catalog, true)])),
    )
    .await
    .expect("the next import is not blocked")
    .expect("the next import succeeds")
    .into_inner();
    assert_eq!(r.imported, catalog.len() as u64);
    let got = c
        .get_items(pb::GetItemsRequest {
            ids: vec!["stalled-1".into(), "trickle-0".into()],
        })
        .await
        .expect("get")
        .into_inner();
    assert!(
        got.items.is_empty(),
        "the stalled and trickled uploads stored nothing"
    );
}

/// Sends `chunks` as an ImportCatalog that must be cut off: DEADLINE_EXCEEDED
/// naming `key`, not before the upload window ran out.
async fn cut_off_upload(
    c: &mut FeatureServiceClient<Channel>,
    chunks: impl futures::Stream<Item = pb::ImportCatalogChunk> + Send + 'static,
    what: &str,
    key: &str,
) {
    let started = Instant::now();
    let s = tokio::time::timeout(Duration::from_secs(15), c.import_catalog(chunks))
        .await
        .unwrap_or_else(|_| panic!("{what} is answered"))
        .expect_err(&format!("{what} fails"));
    assert_eq!(s.code(), Code::DeadlineExceeded, "{what}: {s:?}");
    assert!(s.message().contains(key), "{what}: {s:?}");
    assert!(started.elapsed() >= Duration::from_millis(UPLOAD_IDLE_TIMEOUT_MS));
}

/// Streams opened and never read: each is stalled by flow control, holds no
/// in-flight slot, and a connection gets at most `max_concurrent_streams` of them.
async fn unread_streams_hold_nothing_and_are_capped(
    addr: &str,
    c: &mut FeatureServiceClient<Channel>,
) {
    let mut send = h2_connect(addr).await;
    // The server's SETTINGS arrive after the handshake: wait for them, so the
    // limit below is the server's and not h2's unbounded start.
    let settings = send.clone();
    eventually(Duration::from_secs(5), "the server's SETTINGS", || {
        let limit = settings.current_max_send_streams();
        async move { (limit == MAX_STREAMS).then_some(()) }
    })
    .await;
    let mut unread = Vec::new();
    let request = prost_message(&pb::ScanItemsRequest {
        after_id: String::new(),
        page_size: 1000,
    });
    for _ in 0..MAX_STREAMS {
        send = send.ready().await.expect("ready");
        let (response, mut body) = send
            .send_request(grpc_request(addr, "ScanItems"), false)
            .expect("send");
        body.send_data(request.clone(), true)
            .expect("send the request");
        unread.push((response, body));
    }
    // The server advertises its stream limit (SETTINGS_MAX_CONCURRENT_STREAMS):
    // a client may not open more on one connection, and h2 refuses a stream past it.
    assert_eq!(send.current_max_send_streams(), MAX_STREAMS);
    // One more is held back until one of these ends: none answers.
    let (held_back, mut body) = send
        .clone()
        .ready()
        .await
        .expect("ready")
        .send_request(grpc_request(addr, "ScanItems"), false)
        .expect("queued");
    body.send_data(request.clone(), true).expect("queued");
    let answered = tokio::time::timeout(Duration::from_millis(500), held_back).await;
    assert!(answered.is_err(), "a stream past the limit is not served");
    // Those streams are stalled, not in flight: every slot is free for others,
    // as many at once as the service admits.
    let calls = (0..MAX_CONCURRENCY).map(|_| {
        let mut c = c.clone();
        async move { still_serving(&mut c, "streams left unread").await }
    });
    futures::future::join_all(calls).await;
    let mut scan = c
        .scan_items(pb::ScanItemsRequest {
            after_id: String::new(),
            page_size: 1000,
        })
        .await
        .expect("scan")
        .into_inner();
    let mut n = 0;
    while let Some(page) = scan.next().await {
        n += page.expect("page").items.len();
    }
    assert!(n > 300, "a reading client gets the whole catalog: {n}");
    drop(unread);
    drop(send);
}

fn prost_message(m: &impl prost::Message) -> Bytes {
    let body = m.encode_to_vec();
    let mut framed = prefix(body.len() as u32).to_vec();
    framed.extend(body);
    Bytes::from(framed)
}

/// Every oversize request, one after another: each refused with a status naming
/// its limit, and an ordinary call answered after each.
async fn oversize_requests_are_refused_by_name(c: &mut FeatureServiceClient<Channel>) {
    use rankmesh_proto::limits::{MAX_CANDIDATES, MAX_CHUNK_BYTES, MAX_ID_BYTES, MAX_QUERY_BYTES};
    let long_id = "i".repeat(MAX_ID_BYTES + 1);
    let many_ids: Vec<String> = (0..=MAX_CANDIDATES).map(|i| format!("p{i}")).collect();
    let query = "drill ".repeat(MAX_QUERY_BYTES / 6 + 1);

    let s = c
        .get_items(pb::GetItemsRequest {
            ids: vec!["x".repeat(MAX_MESSAGE_BYTES)],
        })
        .await
        .expect_err("a message over the limit");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("server.max_message_bytes"), "{s:?}");
    still_serving(c, "a message over the limit").await;

    let chunk = pb::ImportCatalogChunk {
        format: pb::CatalogFormat::Jsonl as i32,
        data: vec![b' '; MAX_CHUNK_BYTES + 1],
        replace: false,
        last: true,
    };
    let s = c
        .import_catalog(futures::stream::iter([chunk]))
        .await
        .expect_err("a chunk over the limit");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains(&MAX_CHUNK_BYTES.to_string()), "{s:?}");
    still_serving(c, "an upload chunk over the limit").await;

    // An upload message over the server's message limit: refused at its prefix,
    // with the same code as any other request.
    let chunk = pb::ImportCatalogChunk {
        format: pb::CatalogFormat::Jsonl as i32,
        data: vec![b' '; MAX_MESSAGE_BYTES + 1],
        replace: false,
        last: true,
    };
    let s = c
        .import_catalog(futures::stream::iter([chunk]))
        .await
        .expect_err("an upload message over the limit");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("server.max_message_bytes"), "{s:?}");
    still_serving(c, "an upload message over the limit").await;

    let cases: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "ids[0]",
            c.get_items(pb::GetItemsRequest {
                ids: vec![long_id.clone()],
            })
            .await
            .map(drop),
        ),
        (
            "candidate_ids",
            c.get_features(pb::GetFeaturesRequest {
                candidate_ids: many_ids.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "query",
            c.lexical_candidates(pb::LexicalCandidatesRequest {
                query: query.clone(),
                k: 10,
                filters: None,
            })
            .await
            .map(drop),
        ),
        (
            "k",
            c.lexical_candidates(pb::LexicalCandidatesRequest {
                query: "drill".into(),
                k: 1001,
                filters: None,
            })
            .await
            .map(drop),
        ),
        (
            "page_size",
            c.scan_items(pb::ScanItemsRequest {
                after_id: String::new(),
                page_size: MAX_CANDIDATES + 1,
            })
            .await
            .map(drop),
        ),
        (
            "user_id",
            c.get_user_profile(pb::GetUserProfileRequest {
                user_id: long_id.clone(),
            })
            .await
            .map(drop),
        ),
    ];
    for (field, result) in cases {
        let s = result.expect_err(field);
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
        assert!(s.message().contains(field), "names {field}: {s:?}");
        still_serving(c, field).await;
    }
}
