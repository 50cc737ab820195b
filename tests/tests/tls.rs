//! Mutual TLS between real processes: a feature service started with its mesh
//! certificate (`server.tls.ca`, `.cert`, `.key`) answers an SDK client holding a
//! certificate from the same CA, over TLS 1.3; a plaintext client, a client from
//! another CA and a client without a certificate get no answer.

use std::time::Duration;

use rankmesh_client::{FeatureClient, Resolver};
use rankmesh_tests::eventually;
use rankmesh_tests::process::ServiceProcess;
use rankmesh_tls::client::ClientTls;
use rankmesh_tls::{Ca, Identity, TlsFiles, Validity};

const HOUR: Duration = Duration::from_secs(3600);

fn issue(ca: &Ca, role: &str, name: &str, dir: &std::path::Path) -> TlsFiles {
    let id = Identity::new(role, name).expect("identity");
    ca.issue_to(&id, Validity::from_now(HOUR), dir)
        .expect("issue")
}

fn client(addr: &str, files: &TlsFiles) -> FeatureClient {
    let tls = ClientTls::new(files).expect("client tls");
    let resolver = Resolver::fixed("feature", &[addr.to_owned()]).with_tls(tls);
    FeatureClient::new(resolver, Duration::from_secs(2))
}

#[tokio::test]
async fn a_service_answers_mesh_clients_over_mutual_tls_and_no_one_else() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::init(&dir.path().join("ca")).expect("ca");
    let server = issue(&ca, "feature", "feature-0", &dir.path().join("feature"));
    let store = dir.path().join("f.redb").display().to_string();
    let (ca_path, cert, key) = (
        server.ca.display().to_string(),
        server.cert.display().to_string(),
        server.key.display().to_string(),
    );
    let feature = ServiceProcess::spawn(
        "rankmesh-feature",
        "feature-0",
        &[],
        &[
            ("RANKMESH__STORE__PATH", &store),
            ("RANKMESH__SERVER__TLS__CA", &ca_path),
            ("RANKMESH__SERVER__TLS__CERT", &cert),
            ("RANKMESH__SERVER__TLS__KEY", &key),
        ],
    );

    // A storefront of this mesh: answered (the empty catalog, once it is up).
    let web = issue(&ca, "storefront", "web", &dir.path().join("web"));
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
    let mut stranger = issue(&other, "storefront", "web", &dir.path().join("stranger"));
    stranger.ca = server.ca.clone();
    let err = client(&feature.grpc_addr, &stranger)
        .scan_all_items(100)
        .await
        .expect_err("a foreign CA's client is refused");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
}
