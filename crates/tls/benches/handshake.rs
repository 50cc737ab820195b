//! What a new mutual-TLS connection costs, and what session resumption saves, in
//! one run, side by side:
//!
//!   cargo bench -p rankmesh-tls --bench handshake
//!
//! A server on loopback with the mesh's server config (TLS 1.3, client
//! certificate required); each connection is TCP connect, the handshake, and one
//! byte each way (so the client reads the server's session tickets, as a real
//! first request would). Three ways, alternated each round so machine noise falls
//! on all alike:
//! - `tcp`: the same exchange in plaintext (the floor);
//! - `full`: a full TLS 1.3 handshake every time (resumption disabled): ECDHE,
//!   certificates and their chains checked both ways;
//! - `resumed`: the SDK's config, which keeps tickets: a PSK (with ECDHE)
//!   handshake that skips both certificate checks.
//!
//! Reports p50/p99 per way and the ratios, and counts the resumed handshakes (a
//! `resumed` run that did not resume is reported, not hidden).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rankmesh_tls::server::{ClientCerts, server_config};
use rankmesh_tls::{Ca, Identity, Validity, client::client_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROUNDS: usize = 5;
const PER_ROUND: usize = 200;

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Tcp,
    Full,
    Resumed,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Full => "full",
            Self::Resumed => "resumed",
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::init(&dir.path().join("ca")).expect("ca");
    let issue = |role: &str, name: &str| {
        let id = Identity::new(role, name).expect("identity");
        ca.issue_to(
            &id,
            Validity::from_now(Duration::from_secs(3600)),
            &[],
            &dir.path().join(role),
        )
        .expect("issue")
    };
    let server_files = issue("feature", "bench");
    let client_files = issue("operator", "bench");
    let server = server_config(server_files.load().expect("load"), ClientCerts::Required)
        .expect("server config");
    let tls_addr = serve(Some(Arc::new(server))).await;
    let tcp_addr = serve(None).await;

    let resuming = Arc::new(client_config(client_files.load().expect("load")).expect("config"));
    let mut no_resumption = client_config(client_files.load().expect("load")).expect("config");
    no_resumption.resumption = rustls::client::Resumption::disabled();
    let no_resumption = Arc::new(no_resumption);
    // One connection first, so `resumed` starts with a ticket.
    let _ = connect(&resuming, tls_addr).await;

    let mut times: Vec<(Way, Vec<Duration>)> = [Way::Tcp, Way::Full, Way::Resumed]
        .into_iter()
        .map(|w| (w, Vec::new()))
        .collect();
    let mut resumed = 0;
    for _ in 0..ROUNDS {
        for (way, samples) in &mut times {
            for _ in 0..PER_ROUND {
                let start = Instant::now();
                match way {
                    Way::Tcp => plain(tcp_addr).await,
                    Way::Full => {
                        connect(&no_resumption, tls_addr).await;
                    }
                    Way::Resumed => {
                        resumed += usize::from(connect(&resuming, tls_addr).await);
                    }
                }
                samples.push(start.elapsed());
            }
        }
    }
    let mut p50 = std::collections::BTreeMap::new();
    for (way, samples) in &mut times {
        samples.sort();
        let q = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
        println!(
            "{:<8} {} connections: p50 {:>8.1} us, p99 {:>8.1} us",
            way.name(),
            samples.len(),
            q(0.5).as_secs_f64() * 1e6,
            q(0.99).as_secs_f64() * 1e6
        );
        p50.insert(way.name(), q(0.5).as_secs_f64());
    }
    println!("resumed handshakes: {resumed} of {}", ROUNDS * PER_ROUND);
    println!(
        "p50 ratios: full/tcp {:.2}x, resumed/tcp {:.2}x, resumed/full {:.2}x",
        p50["full"] / p50["tcp"],
        p50["resumed"] / p50["tcp"],
        p50["resumed"] / p50["full"]
    );
}

/// Accepts connections (TLS with `config`, else plaintext) and echoes one byte.
async fn serve(config: Option<Arc<rustls::ServerConfig>>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let config = config.clone();
            tokio::spawn(async move {
                match config {
                    Some(c) => {
                        if let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(c).accept(tcp).await {
                            echo(&mut tls).await;
                        }
                    }
                    None => {
                        let mut tcp = tcp;
                        echo(&mut tcp).await;
                    }
                }
            });
        }
    });
    addr
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) {
    let mut b = [0u8; 1];
    if s.read_exact(&mut b).await.is_ok() {
        let _ = s.write_all(&b).await;
        let _ = s.flush().await;
    }
}

/// One TLS connection and one byte each way; whether it resumed a session.
async fn connect(config: &Arc<rustls::ClientConfig>, addr: std::net::SocketAddr) -> bool {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let name =
        rustls::pki_types::ServerName::try_from(Identity::server_name("feature")).expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .expect("handshake");
    exchange(&mut tls).await;
    tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

async fn plain(addr: std::net::SocketAddr) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    exchange(&mut tcp).await;
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(b"x").await.expect("write");
    s.flush().await.expect("flush");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("read");
}
