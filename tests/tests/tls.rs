//! Mutual TLS between real processes: a feature service started with its mesh
//! certificate (`server.tls.ca`, `.cert`, `.key`) answers an SDK client holding a
//! certificate from the same CA, over TLS 1.3; a plaintext client and a client from
//! another CA get no answer. Certificates reissued over the same files, server's
//! and client's, under load: no call fails, and new connections are shown the
//! new certificate without a restart.

use std::time::Duration;

use rankmesh_client::{FeatureClient, Resolver};
use rankmesh_tests::eventually;
use rankmesh_tests::process::ServiceProcess;
use rankmesh_tls::client::ClientTls;
use rankmesh_tls::{Ca, Identity, TlsFiles, Validity};

const HOUR: Duration = Duration::from_secs(3600);

fn issue(ca: &Ca, role: &str, name: &str, dir: &std::path::Path) -> TlsFiles {
    let id = Identity::new(role, name).expect("identity");
    ca.issue_to(&id, Validity::from_now(HOUR), &[], dir)
        .expect("issue")
}

fn client(addr: &str, files: &TlsFiles) -> FeatureClient {
    let tls = ClientTls::new(files).expect("client tls");
    let resolver = Resolver::fixed("feature", &[addr.to_owned()]).with_tls(tls);
    FeatureClient::new(resolver, Duration::from_secs(2))
}

/// A feature service serving with `server`'s files, its store under `dir`.
fn spawn_feature(server: &TlsFiles, dir: &std::path::Path) -> ServiceProcess {
    let store = dir.join("f.redb").display().to_string();
    let path = |p: &std::path::Path| p.display().to_string();
    let (ca, cert, key) = (path(&server.ca), path(&server.cert), path(&server.key));
    ServiceProcess::spawn(
        "rankmesh-feature",
        "feature-0",
        &[],
        &[
            ("RANKMESH__STORE__PATH", &store),
            ("RANKMESH__SERVER__TLS__CA", &ca),
            ("RANKMESH__SERVER__TLS__CERT", &cert),
            ("RANKMESH__SERVER__TLS__KEY", &key),
        ],
    )
}

#[tokio::test]
async fn a_service_answers_mesh_clients_over_mutual_tls_and_no_one_else() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::init(&dir.path().join("ca")).expect("ca");
    let server = issue(&ca, "feature", "feature-0", &dir.path().join("feature"));
    let feature = spawn_feature(&server, dir.path());

    // An operator of this mesh (ScanItems is an operator's and the embedding
    // service's read): answered (the empty catalog, once it is up).
    let web = issue(&ca, "operator", "web", &dir.path().join("web"));
    let shop = client(&feature.grpc_addr, &web);
    let items = eventually(Duration::from_secs(30), "a TLS answer", || {
        let shop = shop.clone();
        async move { shop.scan_all_items(100).await.ok() }
    })
    .await;
    assert!(items.is_empty());

    // Plaintext: the server wants a TLS handshake first.
    assert!(
        !rankmesh_tests::process::feature_answers_plaintext(&feature.grpc_addr).await,
        "a plaintext call was answered"
    );

    // A certificate from another CA (that trusts this mesh's CA).
    let other = Ca::init(&dir.path().join("other-ca")).expect("other ca");
    let mut stranger = issue(&other, "operator", "web", &dir.path().join("stranger"));
    stranger.ca = server.ca.clone();
    let err = client(&feature.grpc_addr, &stranger)
        .scan_all_items(100)
        .await
        .expect_err("a foreign CA's client is refused");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
}

/// The server certificate a fresh TLS connection to `addr` is shown.
async fn served_cert(client: &TlsFiles, addr: &str) -> Vec<u8> {
    let tls = ClientTls::new(client).expect("client tls");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let stream = tls
        .connector("feature")
        .expect("connector")
        .handshake(tcp)
        .await
        .expect("handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .to_vec()
}

/// The DER of the (first) certificate in a PEM file.
fn cert_der(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .expect("certificate")
        .to_vec()
}

#[tokio::test]
async fn certificates_rotate_under_load_without_a_failed_call() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::init(&dir.path().join("ca")).expect("ca");
    let server_dir = dir.path().join("feature");
    let server = issue(&ca, "feature", "feature-0", &server_dir);
    let feature = spawn_feature(&server, dir.path());
    let web_dir = dir.path().join("web");
    let web = issue(&ca, "operator", "web", &web_dir);
    let shop = client(&feature.grpc_addr, &web);
    eventually(Duration::from_secs(30), "a TLS answer", || {
        let shop = shop.clone();
        async move { shop.scan_all_items(10).await.ok() }
    })
    .await;
    let first = served_cert(&web, &feature.grpc_addr).await;

    // Calls back to back while the server's certificate is reissued twice and the
    // client's once, over the same files.
    let load = tokio::spawn({
        let shop = shop.clone();
        async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let until = std::time::Instant::now() + Duration::from_secs(6);
            while std::time::Instant::now() < until {
                match shop.scan_all_items(10).await {
                    Ok(_) => ok += 1,
                    Err(s) => failed.push(s.to_string()),
                }
            }
            (ok, failed)
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    issue(&ca, "feature", "feature-0", &server_dir);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    issue(&ca, "operator", "web", &web_dir);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = issue(&ca, "feature", "feature-0", &server_dir);
    let (ok, failed) = load.await.expect("load task");
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        failed.first()
    );
    assert!(ok > 50, "only {ok} calls in 6 s");
    eprintln!("{ok} calls in 6 s across three reissues, none failed");

    // New connections are shown the newest certificate, with no restart.
    let newest = cert_der(&last.cert);
    assert_ne!(newest, first);
    eventually(
        Duration::from_secs(5),
        "the rotated certificate served",
        || {
            let (web, addr, newest) = (&web, &feature.grpc_addr, &newest);
            async move { (served_cert(web, addr).await == *newest).then_some(()) }
        },
    )
    .await;
}

/// A storefront that cannot hold a certificate calls over TLS without one and
/// presents a bearer token the server holds (`server.tls.storefront_token_files`):
/// it is `storefront/web`, with the storefront's rights (GetItems) and no others
/// (GetFeatures: PERMISSION_DENIED); no token, or another, is UNAUTHENTICATED;
/// callers with certificates are served as before.
#[tokio::test]
async fn a_storefront_without_a_certificate_calls_with_a_bearer_token() {
    use rankmesh_proto::pb::feature::v1 as pb;
    let dir = tempfile::tempdir().expect("dir");
    let token = "0f3c9a7e51d24b8e9f06c1a2b3d4e5f6";
    let token_file = dir.path().join("web-token");
    rankmesh_tls::ca::write_private(&token_file, token.as_bytes()).expect("token file");
    let token_path = token_file.display().to_string();
    let feature = ServiceProcess::spawn(
        "rankmesh-feature",
        "feature-tokens",
        &[],
        &[(
            "RANKMESH__SERVER__TLS__STOREFRONT_TOKEN_FILES__WEB",
            &token_path,
        )],
    );
    let kit_ca = rankmesh_tests::tls::kit().operator().ca.clone();
    let no_cert = ClientTls::server_only(&kit_ca).expect("CA only");
    let storefront = |token: Option<&str>| {
        let resolver = Resolver::fixed("feature", std::slice::from_ref(&feature.grpc_addr))
            .with_tls(no_cert.clone());
        let c = FeatureClient::new(resolver, Duration::from_secs(2));
        token.map_or(c.clone(), |t| c.with_token(t))
    };
    let items = || pb::GetItemsRequest {
        ids: vec!["no-such-item".into()],
    };
    let with_token = storefront(Some(token));
    let found = eventually(Duration::from_secs(30), "a token caller answered", || {
        let c = with_token.clone();
        async move { c.get_items(items(), Duration::from_secs(2)).await.ok() }
    })
    .await;
    assert!(found.items.is_empty());

    let refused = |r: Result<pb::GetItemsResponse, tonic::Status>| r.expect_err("refused").code();
    assert_eq!(
        refused(
            storefront(None)
                .get_items(items(), Duration::from_secs(2))
                .await
        ),
        tonic::Code::Unauthenticated,
        "no certificate and no token"
    );
    assert_eq!(
        refused(
            storefront(Some("not-the-token"))
                .get_items(items(), Duration::from_secs(2))
                .await
        ),
        tonic::Code::Unauthenticated,
        "a token the server does not hold"
    );
    let features = with_token
        .get_features(pb::GetFeaturesRequest::default(), Duration::from_secs(2))
        .await
        .expect_err("a storefront may not read feature rows");
    assert_eq!(features.code(), tonic::Code::PermissionDenied, "{features}");
    assert!(features.message().contains("storefront/web"), "{features}");

    // A caller with a certificate (the kit's operator, installed) as before.
    let operator = FeatureClient::new(
        Resolver::fixed("feature", std::slice::from_ref(&feature.grpc_addr)),
        Duration::from_secs(2),
    );
    operator
        .get_items(items(), Duration::from_secs(2))
        .await
        .expect("a certificate holder is served");

    // Each refusal is counted under the caller's role.
    let (_, metrics) = rankmesh_tests::http_get(&feature.admin_addr, "/metrics")
        .await
        .expect("metrics");
    assert!(
        metrics.contains(r#"role="storefront""#) && metrics.contains(r#"role="none""#),
        "{metrics}"
    );
}
