//! Authorization by identity: which callers may call each RPC. Over mutual TLS
//! every call carries the caller's certificate identity
//! (`spiffe://rankmesh/<role>/<name>`); [`RULES`] names, per RPC, the roles that
//! may call it, and [`AuthorizeLayer`] refuses the rest: a connection whose
//! certificate names no mesh identity with UNAUTHENTICATED, a role not in the
//! rule (or an RPC without one) with PERMISSION_DENIED. Each refusal is logged
//! with the caller and counted in `rankmesh_rpc_refused_total{method, role, code}`.
//! A plaintext server (`server.tls.insecure`, or no TLS files) has no identities
//! to check and authorizes nothing: it says so at start.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use rankmesh_tls::PeerInfo;
use tower::{Layer, Service};

/// Storefront backends: search, recommend, embed, record what shoppers do.
pub const STOREFRONT: &str = "storefront";
/// People who load catalogs and rebuild indexes (no model writes).
pub const OPERATOR: &str = "operator";
/// People who publish, promote, roll back models and rotate keys; anything.
pub const ADMIN: &str = "admin";
/// The mesh's own services, each calling the others with its own identity.
pub const RANKING: &str = "ranking";
pub const EMBEDDING: &str = "embedding";
pub const FEATURE: &str = "feature";
pub const REGISTRY: &str = "registry";

/// One RPC and the roles that may call it.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The gRPC path: `/package.Service/Method`.
    pub method: &'static str,
    pub roles: &'static [&'static str],
}

const fn rule(method: &'static str, roles: &'static [&'static str]) -> Rule {
    Rule { method, roles }
}

/// Everyone who serves shoppers or operates the mesh.
const SHOPPERS: &[&str] = &[STOREFRONT, OPERATOR, ADMIN];
/// Reads a model replica or an operator makes of the registry.
const MODEL_READERS: &[&str] = &[RANKING, EMBEDDING, FEATURE, REGISTRY, OPERATOR, ADMIN];

/// Who may call what. One row per RPC; a method missing here is refused.
pub const RULES: &[Rule] = &[
    rule("/rankmesh.ranking.v1.RankingService/Search", SHOPPERS),
    rule("/rankmesh.ranking.v1.RankingService/Recommend", SHOPPERS),
    rule(
        "/rankmesh.ranking.v1.RankingService/Featurize",
        &[OPERATOR, ADMIN],
    ),
    rule(
        "/rankmesh.embedding.v1.EmbeddingService/Embed",
        &[STOREFRONT, RANKING, OPERATOR, ADMIN],
    ),
    rule(
        "/rankmesh.embedding.v1.EmbeddingService/Retrieve",
        &[STOREFRONT, RANKING, OPERATOR, ADMIN],
    ),
    rule(
        "/rankmesh.embedding.v1.EmbeddingService/BuildIndex",
        &[OPERATOR, ADMIN],
    ),
    rule(
        "/rankmesh.feature.v1.FeatureService/GetFeatures",
        &[RANKING, OPERATOR, ADMIN],
    ),
    rule(
        "/rankmesh.feature.v1.FeatureService/LexicalCandidates",
        &[RANKING, OPERATOR, ADMIN],
    ),
    rule(
        "/rankmesh.feature.v1.FeatureService/GetItems",
        &[RANKING, EMBEDDING, STOREFRONT, OPERATOR, ADMIN],
    ),
    rule(
        "/rankmesh.feature.v1.FeatureService/GetUserProfile",
        &[RANKING, OPERATOR, ADMIN],
    ),
    rule(
        "/rankmesh.feature.v1.FeatureService/ScanItems",
        &[EMBEDDING, OPERATOR, ADMIN],
    ),
    rule(
        "/rankmesh.feature.v1.FeatureService/RecordEvent",
        &[STOREFRONT, RANKING, OPERATOR, ADMIN],
    ),
    rule(
        "/rankmesh.feature.v1.FeatureService/ImportCatalog",
        &[OPERATOR, ADMIN],
    ),
    rule(
        "/rankmesh.registry.v1.ModelRegistry/ListModels",
        MODEL_READERS,
    ),
    rule(
        "/rankmesh.registry.v1.ModelRegistry/GetModel",
        MODEL_READERS,
    ),
    rule(
        "/rankmesh.registry.v1.ModelRegistry/FetchModel",
        MODEL_READERS,
    ),
    rule("/rankmesh.registry.v1.ModelRegistry/PublishModel", &[ADMIN]),
    // The elected rollout leader (a ranking replica) promotes and rolls back
    // canaries by the rollout policy; nothing else but an admin changes stages.
    rule(
        "/rankmesh.registry.v1.ModelRegistry/SetStage",
        &[RANKING, ADMIN],
    ),
    rule(
        "/rankmesh.registry.v1.ModelRegistry/Rollback",
        &[RANKING, ADMIN],
    ),
    rule("/rankmesh.registry.v1.ModelRegistry/RotateKey", &[ADMIN]),
];

/// The rules as the README's table: one row per RPC, the roles that may call it.
pub fn markdown() -> String {
    let mut out = String::from("| RPC | who may call it |\n| --- | --- |\n");
    for r in RULES {
        let method = r.method.trim_start_matches("/rankmesh.");
        out.push_str(&format!("| `{method}` | {} |\n", r.roles.join(", ")));
    }
    out
}

/// Why a call is refused, if it is: `peer` (None: no connection info, as in a
/// unit test's bare service, which is let through like plaintext) calling `path`.
pub fn refusal(peer: Option<&PeerInfo>, path: &str) -> Option<tonic::Status> {
    let peer = peer.filter(|p| p.secure)?;
    let Some(identity) = &peer.identity else {
        return Some(tonic::Status::unauthenticated(
            "the client certificate names no spiffe://rankmesh/<role>/<name> identity",
        ));
    };
    if crate::rpc::is_health_or_reflection(path) {
        return None;
    }
    match RULES.iter().find(|r| r.method == path) {
        None => Some(tonic::Status::permission_denied(format!(
            "no rule lets anyone call {path}"
        ))),
        Some(r) if r.roles.contains(&identity.role.as_str()) => None,
        Some(r) => Some(tonic::Status::permission_denied(format!(
            "{identity} may not call {path} (allowed: {})",
            r.roles.join(", ")
        ))),
    }
}

/// Refuses calls [`RULES`] does not allow, before they reach the service.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorizeLayer;

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for Authorize<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let peer = req.extensions().get::<PeerInfo>();
        let Some(status) = refusal(peer, path) else {
            return Box::pin(self.inner.call(req));
        };
        let role = peer
            .and_then(|p| p.identity.as_ref())
            .map_or_else(|| "none".to_owned(), |i| i.role.clone());
        let caller = peer
            .and_then(|p| p.identity.as_ref())
            .map_or_else(|| "unnamed".to_owned(), ToString::to_string);
        let remote = peer
            .and_then(|p| p.remote_addr)
            .map_or_else(String::new, |a| a.to_string());
        tracing::warn!(method = path, %caller, %remote, code = ?status.code(), "call refused");
        metrics::counter!(
            "rankmesh_rpc_refused_total",
            "method" => path.to_owned(),
            "role" => role,
            "code" => format!("{:?}", status.code()),
        )
        .increment(1);
        Box::pin(async move { Ok(status.into_http()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rankmesh_tls::Identity;

    fn peer(role: Option<&str>) -> PeerInfo {
        PeerInfo {
            remote_addr: None,
            secure: true,
            identity: role.map(|r| Identity::new(r, "x").expect("identity")),
        }
    }

    #[test]
    fn each_rule_admits_its_roles_and_refuses_the_rest() {
        let roles = [
            STOREFRONT, OPERATOR, ADMIN, RANKING, EMBEDDING, FEATURE, REGISTRY, "intruder",
        ];
        for r in RULES {
            assert!(
                r.roles.contains(&ADMIN),
                "{}: admin may call anything",
                r.method
            );
            for role in roles {
                let refused = refusal(Some(&peer(Some(role))), r.method);
                assert_eq!(
                    refused.is_none(),
                    r.roles.contains(&role),
                    "{role} -> {}",
                    r.method
                );
                if let Some(s) = refused {
                    assert_eq!(s.code(), tonic::Code::PermissionDenied);
                }
            }
        }
        // No credential: UNAUTHENTICATED; an unknown method: refused; health: open.
        let none = refusal(Some(&peer(None)), RULES[0].method).expect("refused");
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        assert!(refusal(Some(&peer(Some(ADMIN))), "/x.Y/Z").is_some());
        assert!(
            refusal(
                Some(&peer(Some(STOREFRONT))),
                "/grpc.health.v1.Health/Check"
            )
            .is_none()
        );
        // A plaintext connection carries nothing to check.
        let plain = PeerInfo {
            secure: false,
            ..peer(None)
        };
        assert!(
            refusal(
                Some(&plain),
                "/rankmesh.registry.v1.ModelRegistry/RotateKey"
            )
            .is_none()
        );
    }

    #[test]
    fn the_readme_shows_the_rules_as_they_are() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(&markdown()),
            "README.md's authorization table differs from authz::RULES; it should read:\n{}",
            markdown()
        );
    }

    #[test]
    fn every_rpc_in_the_protos_has_a_rule() {
        let protos = concat!(
            include_str!("../../../proto/rankmesh/ranking/v1/ranking.proto"),
            include_str!("../../../proto/rankmesh/embedding/v1/embedding.proto"),
            include_str!("../../../proto/rankmesh/feature/v1/feature.proto"),
            include_str!("../../../proto/rankmesh/registry/v1/registry.proto"),
        );
        for line in protos.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("rpc ") else {
                continue;
            };
            let method = rest.split('(').next().unwrap_or_default().trim();
            assert!(
                RULES
                    .iter()
                    .any(|r| r.method.ends_with(&format!("/{method}"))),
                "rpc {method} has no rule"
            );
        }
    }
}
