//! Authorization by identity: which callers may call each RPC. Over mutual TLS
//! every call carries the caller's certificate identity
//! (`spiffe://rankmesh/<role>/<name>`); [`RULES`] names, per RPC, the roles that
//! may call it, and [`AuthorizeLayer`] refuses the rest: a connection whose
//! certificate names no mesh identity with UNAUTHENTICATED, a role not in the
//! rule (or an RPC without one) with PERMISSION_DENIED. Each refusal is logged
//! with the caller and counted in `rankmesh_rpc_refused_total{method, role, code}`.
//! A plaintext server (`server.tls.insecure`) has no identities to check and
//! authorizes nothing: it says so at start.
//!
//! A storefront that cannot hold a certificate calls over TLS without one and
//! presents `authorization: Bearer <token>` ([`StorefrontTokens`]): a token the
//! server holds makes it `spiffe://rankmesh/storefront/<name>`, with the
//! storefront role's rights and no others; no token, or another, is
//! UNAUTHENTICATED.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rankmesh_tls::{Identity, PeerInfo};
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

/// The storefront bearer tokens a server accepts from callers without a
/// certificate (`server.tls.storefront_token_files`), read at start.
#[derive(Clone, Default)]
pub struct StorefrontTokens {
    tokens: Arc<Vec<(Identity, String)>>,
}

impl std::fmt::Debug for StorefrontTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The names, never the tokens.
        let names: Vec<String> = self.tokens.iter().map(|(i, _)| i.to_string()).collect();
        f.debug_struct("StorefrontTokens")
            .field("callers", &names)
            .finish()
    }
}

impl StorefrontTokens {
    /// Reads each token file (owner-only; see [`crate::secret`]).
    pub fn load(files: &BTreeMap<String, PathBuf>) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for (name, path) in files {
            let identity = Identity::new(STOREFRONT, name).map_err(|e| format!("{name}: {e}"))?;
            let token = crate::secret::read(path).map_err(|e| format!("{name}: {e}"))?;
            tokens.push((identity, token));
        }
        Ok(Self {
            tokens: Arc::new(tokens),
        })
    }

    /// The storefront whose token `authorization` (`Bearer <token>`) presents.
    /// Every token is compared in full, in constant time, so the answer's timing
    /// says nothing about how much of a guess was right.
    fn caller(&self, authorization: Option<&http::HeaderValue>) -> Option<Identity> {
        let presented = authorization?.to_str().ok()?.strip_prefix("Bearer ")?;
        let mut found = None;
        for (identity, token) in self.tokens.iter() {
            if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                found = Some(identity.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a call is refused, if it is: `peer` (None: no connection info, as in a
/// unit test's bare service, which is let through like plaintext) calling `path`.
pub fn refusal(peer: Option<&PeerInfo>, path: &str) -> Option<tonic::Status> {
    refusal_of(peer, None, path)
}

/// [`refusal`] for a caller whose identity is `peer`'s certificate, else the
/// storefront a bearer token named (`by_token`).
fn refusal_of(
    peer: Option<&PeerInfo>,
    by_token: Option<&Identity>,
    path: &str,
) -> Option<tonic::Status> {
    let peer = peer.filter(|p| p.secure)?;
    let Some(identity) = peer.identity.as_ref().or(by_token) else {
        return Some(tonic::Status::unauthenticated(
            "no mesh identity: present a client certificate naming spiffe://rankmesh/<role>/<name>, or a storefront bearer token",
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
#[derive(Debug, Clone, Default)]
pub struct AuthorizeLayer {
    tokens: StorefrontTokens,
}

impl AuthorizeLayer {
    /// Callers with a certificate, and storefronts with one of `tokens`.
    pub fn new(tokens: StorefrontTokens) -> Self {
        Self { tokens }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    tokens: StorefrontTokens,
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
        // A token counts only where no certificate names the caller.
        let by_token = peer
            .filter(|p| p.secure && p.identity.is_none())
            .and_then(|_| self.tokens.caller(req.headers().get("authorization")));
        let Some(status) = refusal_of(peer, by_token.as_ref(), path) else {
            return Box::pin(self.inner.call(req));
        };
        let identity = peer.and_then(|p| p.identity.as_ref()).or(by_token.as_ref());
        let role = identity.map_or_else(|| "none".to_owned(), |i| i.role.clone());
        let caller = identity.map_or_else(|| "unnamed".to_owned(), ToString::to_string);
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
    fn a_bearer_token_names_its_storefront_only_when_it_matches_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("web");
        std::fs::write(&path, "s3cret-token\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let tokens = StorefrontTokens::load(&[("web".to_owned(), path)].into()).expect("tokens");
        let header = |v: &str| http::HeaderValue::from_str(v).expect("header");
        let web = tokens.caller(Some(&header("Bearer s3cret-token")));
        assert_eq!(
            web.map(|i| i.to_string()).as_deref(),
            Some("spiffe://rankmesh/storefront/web")
        );
        for wrong in [
            "Bearer s3cret-toke",
            "Bearer s3cret-token2",
            "s3cret-token",
            "Basic s3cret-token",
        ] {
            assert!(tokens.caller(Some(&header(wrong))).is_none(), "{wrong}");
        }
        assert!(tokens.caller(None).is_none());
        assert!(
            !format!("{tokens:?}").contains("s3cret"),
            "Debug hides tokens"
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
