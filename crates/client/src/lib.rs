//! The rankmesh client SDK, used by storefront backends and by rankmesh services
//! themselves.
//!
//! One stack under every typed client ([`RankingClient`], [`FeatureClient`],
//! [`EmbeddingClient`], [`RegistryClient`]):
//! - endpoints from discovery (an etcd watch, or a static list) through
//!   [`rankmesh_common::discovery::Resolver`];
//! - [`balance::Balanced`]: p2c over peak-EWMA, replicas that fail or hang ejected
//!   and probed back (never the last one in rotation), a fast UNAVAILABLE when
//!   discovery lists none;
//! - [`upstream::Upstream`]: retries on UNAVAILABLE within a retry budget, and for
//!   reads a hedge to another replica after the observed p95;
//! - [`rpc::Core`]: a deadline per call, sent as `grpc-timeout`, and the rule per
//!   RPC of whether it may be repeated (RecordEvent only with its event id).
//!
//! Plus one-off helpers: [`connect`], [`health`] and [`ready`].
//!
//! Must not import any service crate or the artifact crate: storefronts link it
//! alone (proto, common).

pub mod balance;
pub mod embedding;
pub mod feature;
pub mod ranking;
pub mod registry;
pub mod rpc;
pub mod upstream;

pub use embedding::EmbeddingClient;
pub use feature::FeatureClient;
pub use ranking::RankingClient;
pub use registry::RegistryClient;
pub use rpc::Deadline;

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

pub use rankmesh_common::discovery::{Endpoint as ServiceEndpoint, Resolver};
pub use rankmesh_proto::pb;
pub use tonic_health::pb::health_check_response::ServingStatus;

/// Default time to establish a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("{endpoint}: {status}")]
    Rpc {
        endpoint: String,
        status: tonic::Status,
    },
    #[error("{endpoint}: no answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("{endpoint}: {message}")]
    Http { endpoint: String, message: String },
}

/// Normalises `host:port` to `http://host:port`.
pub fn uri_of(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// Connects to one endpoint with a connect timeout and a per-request deadline
/// (sent as `grpc-timeout`, so the server can give up too); over TLS with the
/// process's installed identity when it has one (the server may be of any role of
/// the mesh: this is for probes of a bare address).
pub async fn connect(addr: &str, request_timeout: Duration) -> Result<Channel, ClientError> {
    let endpoint = uri_of(addr);
    let builder = Endpoint::from_shared(endpoint.clone())
        .map_err(|source| ClientError::InvalidEndpoint {
            endpoint: endpoint.clone(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(request_timeout)
        .tcp_nodelay(true);
    let connected = match rankmesh_tls::client::installed() {
        Some(tls) => builder.connect_with_connector(tls.connector_any()).await,
        None => builder.connect().await,
    };
    connected.map_err(|source| ClientError::Connect { endpoint, source })
}

/// Asks `addr` for its `grpc.health.v1` status of `service` ("" for the whole server).
pub async fn health(
    addr: &str,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, ClientError> {
    let endpoint = uri_of(addr);
    let check = async {
        let channel = connect(addr, timeout).await?;
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|status| ClientError::Rpc {
                endpoint: endpoint.clone(),
                status,
            })?;
        Ok(resp.into_inner().status())
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout { endpoint, timeout }),
    }
}

/// Asks a replica's admin port whether it is ready (`GET /ready` answers 200): the
/// service is up *and* its own conditions hold (model loaded, index built, ...).
pub async fn ready(admin_addr: &str, timeout: Duration) -> Result<bool, ClientError> {
    match http_get(admin_addr, "/ready", timeout).await {
        Ok((status, _)) => Ok(status == 200),
        Err(e @ ClientError::Timeout { .. }) => Err(e),
        // Refused, reset, garbled: not ready (yet).
        Err(_) => Ok(false),
    }
}

/// A minimal HTTP/1.1 GET of `path` on `addr` (admin ports, the local trace
/// collector: loopback peers, no client library needed): status and body.
pub async fn http_get(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = addr
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(&host).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = match tokio::time::timeout(timeout, ask).await {
        Ok(r) => r.map_err(|e| ClientError::Http {
            endpoint: host.clone(),
            message: e.to_string(),
        })?,
        Err(_) => {
            return Err(ClientError::Timeout {
                endpoint: host,
                timeout,
            });
        }
    };
    let malformed = |what: &str| ClientError::Http {
        endpoint: host.clone(),
        message: format!("malformed HTTP answer: {what}"),
    };
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("no status"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"), "abcdef");
    }

    #[test]
    fn uri_of_adds_scheme_once() {
        assert_eq!(uri_of("127.0.0.1:1"), "http://127.0.0.1:1");
        assert_eq!(uri_of("https://a:1"), "https://a:1");
    }

    #[tokio::test]
    async fn health_of_closed_port_is_a_clear_error() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let err = health(&format!("127.0.0.1:{port}"), "", Duration::from_secs(2))
            .await
            .expect_err("nothing listens there");
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    }
}
