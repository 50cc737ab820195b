//! What every typed client shares: one [`Upstream`] (balanced, retried within
//! budget, hedged), a default timeout, and the rule per RPC of how it may be
//! repeated.
//!
//! Each RPC is one of three kinds, chosen by what a repeat would do:
//! - **read** (hedged and retried): repeating it changes nothing, and it is on
//!   someone's latency path;
//! - **idempotent** (retried, not hedged): a write that is safe to repeat (a
//!   compare-and-set on a revision, an event carrying its idempotency key);
//! - **once**: neither; a failure is the caller's to handle.
//!
//! Every attempt carries what is left of the call's deadline as `grpc-timeout`, so
//! the server stops working when the caller has stopped waiting, and the call as a
//! whole (retries and hedges included) ends at the deadline with
//! DEADLINE_EXCEEDED.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balance::Balanced;
use crate::upstream::{Upstream, UpstreamConfig};
use rankmesh_common::discovery::Resolver;
use tracing::Instrument;

/// When a call must be over: the client's default timeout, an instant, or a
/// timeout from now (`Duration` converts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deadline {
    #[default]
    Default,
    At(Instant),
}

impl From<Instant> for Deadline {
    fn from(at: Instant) -> Self {
        Self::At(at)
    }
}

impl From<Duration> for Deadline {
    fn from(timeout: Duration) -> Self {
        Self::At(Instant::now() + timeout)
    }
}

/// How an RPC may be repeated (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Idempotent,
    Once,
}

/// The shared core of a typed client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Core {
    upstream: Arc<Upstream>,
    timeout: Duration,
    /// Sent as `authorization` on every call, when set (the registry's writes, a
    /// storefront's bearer token).
    token: Option<Arc<str>>,
}

impl Core {
    pub fn new(
        service: &'static str,
        resolver: Resolver,
        timeout: Duration,
        config: UpstreamConfig,
    ) -> Self {
        Self {
            upstream: Arc::new(Upstream::with_config(service, resolver, config)),
            timeout,
            token: None,
        }
    }

    /// Sends `authorization: <value>` with every call.
    pub fn with_token(mut self, value: &str) -> Self {
        self.token = Some(Arc::from(value));
        self
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn with_bearer(self, token: &str) -> Self {
        self.with_token(&format!("Bearer {token}"))
    }

    /// The timeout of calls made without an explicit deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The stack under this client (for streaming RPCs and metrics).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Runs one unary RPC of `kind` within `deadline`.
    pub async fn unary<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        kind: Kind,
        req: Req,
        deadline: Deadline,
        rpc: F,
    ) -> Result<Resp, tonic::Status>
    where
        Req: Clone,
        F: Fn(Balanced, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let at = self.deadline(deadline);
        let attempt = |ch: Balanced| {
            let call = rpc(ch, self.request(req.clone(), at));
            async move { call.await.map(tonic::Response::into_inner) }
        };
        let call = async {
            match kind {
                Kind::Read => self.upstream.call_hedged(attempt).await,
                Kind::Idempotent => self.upstream.call(attempt).await,
                Kind::Once => self.upstream.call_once(attempt).await,
            }
        };
        self.within(method, kind, at, call).await
    }

    /// Runs one client-streaming RPC (an upload) within `deadline`: one attempt,
    /// never repeated (the stream is consumed by the attempt).
    pub async fn client_stream<S, Resp, F, Fut>(
        &self,
        method: &'static str,
        stream: S,
        deadline: Deadline,
        rpc: F,
    ) -> Result<Resp, tonic::Status>
    where
        F: FnOnce(Balanced, tonic::Request<S>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let at = self.deadline(deadline);
        let request = self.request(stream, at);
        let call = self.upstream.call_once(|ch| {
            let call = rpc(ch, request);
            async move { call.await.map(tonic::Response::into_inner) }
        });
        self.within(method, Kind::Once, at, call).await
    }

    /// `call` as the caller sees it: cut at the deadline, in a span whose children
    /// are its attempts (first, hedge, retries), each server's span under its
    /// attempt.
    async fn within<Resp>(
        &self,
        method: &'static str,
        kind: Kind,
        at: Instant,
        call: impl Future<Output = Result<Resp, tonic::Status>>,
    ) -> Result<Resp, tonic::Status> {
        let span = tracing::info_span!(
            "rpc.client",
            otel.name = %format!("{}/{method}", self.upstream.service()),
            otel.status_code = tracing::field::Empty,
            rpc.service = self.upstream.service(),
            rpc.method = method,
            rpc.kind = ?kind,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let r = match tokio::time::timeout_at(at.into(), call.instrument(span.clone())).await {
            Ok(r) => r,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "{} did not answer within the deadline",
                self.upstream.service()
            ))),
        };
        let code = r
            .as_ref()
            .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
        span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            span.record("otel.status_code", "ERROR");
        }
        r
    }

    /// The instant `deadline` means for this client.
    pub fn deadline(&self, deadline: Deadline) -> Instant {
        match deadline {
            Deadline::Default => Instant::now() + self.timeout,
            Deadline::At(at) => at,
        }
    }

    /// A request carrying what is left of `deadline` as `grpc-timeout` (and the
    /// token, if any).
    pub fn request<T>(&self, msg: T, deadline: Instant) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
        if let Some(token) = &self.token
            && let Ok(v) = token.parse()
        {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }
}

/// Typed methods over a [`Core`]: `kind name(Request) -> Response` per RPC, each
/// taking the request and a [`Deadline`] (`Deadline::Default`, an `Instant` or a
/// `Duration`).
macro_rules! unary_rpcs {
    ($client:ident, $grpc:ident { $( $(#[$doc:meta])* $kind:ident $method:ident($req:ty) -> $resp:ty; )* }) => {
        impl $client {
            $(
                $(#[$doc])*
                pub async fn $method(
                    &self,
                    req: $req,
                    deadline: impl Into<$crate::rpc::Deadline>,
                ) -> Result<$resp, tonic::Status> {
                    self.core
                        .unary(stringify!($method), $crate::rpc::Kind::$kind, req, deadline.into(), |ch, r| async move {
                            $grpc::new(ch)
                                .max_decoding_message_size(rankmesh_proto::limits::MAX_MESSAGE_BYTES)
                                .$method(r)
                                .await
                        })
                        .await
                }
            )*
        }
    };
}
pub(crate) use unary_rpcs;
