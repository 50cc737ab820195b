//! TLS between real sockets on loopback: a client with a mesh certificate reaches
//! the service it meant and is named to it; a client from another CA, an expired
//! certificate, or a server of another role is refused; a server's certificate
//! rotated on disk is served from the next connection on, and a broken one is
//! refused while the last good one goes on.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use rankmesh_tls::client::ClientTls;
use rankmesh_tls::{Acceptor, Ca, ClientCerts, Identity, MeshIo, TlsFiles, Validity, server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::Service;

const HOUR: Duration = Duration::from_secs(3600);

fn issue(ca: &Ca, role: &str, name: &str, validity: Validity, dir: &Path) -> TlsFiles {
    let id = Identity::new(role, name).expect("identity");
    ca.issue_to(&id, validity, &[], dir).expect("issue")
}

/// A server that answers each connection with the caller's identity (or "none").
async fn echo_server(acceptor: Acceptor) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut incoming = Box::pin(server::incoming(listener, Some(Arc::new(acceptor))));
    tokio::spawn(async move {
        while let Some(Ok(mut io)) = incoming.next().await {
            tokio::spawn(async move {
                let who = io
                    .peer()
                    .identity
                    .as_ref()
                    .map_or("none".to_owned(), Identity::uri);
                let mut hello = [0u8; 5];
                if io.read_exact(&mut hello).await.is_ok() {
                    let _ = io.write_all(who.as_bytes()).await;
                    let _ = io.shutdown().await;
                }
                drop::<MeshIo>(io);
            });
        }
    });
    addr
}

/// Says hello as `client` to the `role` server at `addr` (`*`: whatever role the
/// server's certificate names); what it answered, or the error.
async fn call(client: &TlsFiles, role: &str, addr: &str) -> Result<(String, Vec<u8>), String> {
    let tls = ClientTls::new(client).map_err(|e| e.to_string())?;
    let mut connector = if role == "*" {
        tls.connector_any()
    } else {
        tls.connector(role).map_err(|e| e.to_string())?
    };
    let uri: http::Uri = format!("http://{addr}").parse().expect("uri");
    let io = connector.call(uri).await.map_err(|e| e.to_string())?;
    let mut stream = io.into_inner();
    let server_cert = stream.get_ref().1.peer_certificates().expect("server cert")[0].to_vec();
    stream
        .write_all(b"hello")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    if answer.is_empty() {
        return Err("closed without an answer".into());
    }
    Ok((answer, server_cert))
}

/// The certificate file of a CA other than the mesh's.
fn other_ca_cert(dir: &Path) -> std::path::PathBuf {
    Ca::init(dir).expect("another ca");
    dir.join(rankmesh_tls::ca::CA_CERT)
}

#[tokio::test]
async fn mutual_tls_names_the_caller_and_refuses_strangers() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::init(&dir.path().join("ca")).expect("ca");
    let valid = Validity::from_now(HOUR);
    let server = issue(
        &ca,
        "ranking",
        "ranking-1",
        valid,
        &dir.path().join("server"),
    );
    let addr = echo_server(Acceptor::new(&server).expect("acceptor")).await;

    let web = issue(&ca, "storefront", "web", valid, &dir.path().join("web"));
    let (who, _) = call(&web, "ranking", &addr)
        .await
        .expect("a mesh client is served");
    assert_eq!(who, "spiffe://rankmesh/storefront/web");

    // A certificate from another CA.
    let other = Ca::init(&dir.path().join("other-ca")).expect("other ca");
    let mut stranger = issue(
        &other,
        "storefront",
        "web",
        valid,
        &dir.path().join("stranger"),
    );
    stranger.ca = server.ca.clone(); // it trusts the mesh, the mesh does not trust it
    assert!(
        call(&stranger, "ranking", &addr).await.is_err(),
        "a foreign CA's client is refused"
    );

    // An expired certificate from the mesh CA.
    let past = Validity {
        not_before: SystemTime::now() - 2 * HOUR,
        not_after: SystemTime::now() - HOUR,
    };
    let expired = issue(&ca, "storefront", "old", past, &dir.path().join("expired"));
    assert!(
        call(&expired, "ranking", &addr).await.is_err(),
        "an expired client is refused"
    );

    // A probe of a bare address takes a server of any role, of this mesh only.
    let (who, _) = call(&web, "*", &addr).await.expect("any role of the mesh");
    assert_eq!(who, "spiffe://rankmesh/storefront/web");
    let mut distrustful = web.clone();
    distrustful.ca = other_ca_cert(&dir.path().join("third-ca"));
    assert!(
        call(&distrustful, "*", &addr).await.is_err(),
        "a server of another CA is refused"
    );

    // The server is a ranking replica, not the registry the client meant.
    let err = call(&web, "registry", &addr)
        .await
        .expect_err("wrong service");
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn a_rotated_server_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::init(&dir.path().join("ca")).expect("ca");
    let valid = Validity::from_now(HOUR);
    let server_dir = dir.path().join("server");
    let server = issue(&ca, "ranking", "ranking-1", valid, &server_dir);
    let acceptor = Acceptor::with_poll(&server, ClientCerts::Required, Duration::from_millis(50))
        .expect("acceptor");
    let addr = echo_server(acceptor).await;
    let web = issue(&ca, "storefront", "web", valid, &dir.path().join("web"));
    let (_, first) = call(&web, "ranking", &addr).await.expect("first call");

    issue(&ca, "ranking", "ranking-1", valid, &server_dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    let rotated = loop {
        let (_, cert) = call(&web, "ranking", &addr)
            .await
            .expect("call during rotation");
        if cert != first {
            break cert;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // A broken certificate file is refused; the last good one goes on.
    std::fs::write(&server.cert, "not a certificate").expect("break the file");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, still) = call(&web, "ranking", &addr)
        .await
        .expect("served after a bad file");
    assert_eq!(still, rotated);
}
