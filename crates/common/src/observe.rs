//! Per-RPC telemetry, both sides of a call.
//!
//! - **Server** ([`RpcTelemetryLayer`], outermost in every service's stack): each
//!   RPC gets a `rpc.server` span whose parent is the caller's W3C `traceparent`, so
//!   one trace spans every service a request touches; and metrics per RPC:
//!   `rankmesh_rpc_requests_total{rpc_service, method, code}` and the latency
//!   histogram `rankmesh_rpc_duration_seconds{rpc_service, method}`. The gRPC status
//!   is read where it is: in the headers of a trailers-only answer (errors, load
//!   shedding), else in the trailers at the end of the body, so latency runs to the
//!   last byte; a call the client abandons counts as CANCELLED.
//! - **Client** ([`inject`]): the current span's context written into a request's
//!   headers (the SDK's balanced channel calls it for every attempt).
//!
//! Health checks and reflection are counted but not traced: probes every second
//! would drown the traces people look for.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::propagation::{Extractor, Injector};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes the current span's trace context (`traceparent`) into `headers`.
pub fn inject(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers));
    });
}

/// The caller's trace context from `headers` (empty when there is none).
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// `/pkg.Service/Method` -> ("Service", "Method").
fn split_path(path: &str) -> (&str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or("");
    let method = parts.next().unwrap_or("");
    let short = service.rsplit('.').next().unwrap_or(service);
    (short, method)
}

/// Traces and counts every RPC (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTelemetryLayer;

impl<S> Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry { inner }
    }
}

/// The service made by [`RpcTelemetryLayer`].
#[derive(Debug, Clone)]
pub struct RpcTelemetry<S> {
    inner: S,
}

/// What is recorded when an RPC's status is known.
struct Finish {
    rpc_service: String,
    method: String,
    started: Instant,
    span: tracing::Span,
}

impl Finish {
    fn done(self, code: i32) {
        let code_name = format!("{:?}", tonic::Code::from_i32(code));
        metrics::counter!(
            "rankmesh_rpc_requests_total",
            "rpc_service" => self.rpc_service.clone(),
            "method" => self.method.clone(),
            "code" => code_name,
        )
        .increment(1);
        metrics::histogram!(
            "rankmesh_rpc_duration_seconds",
            "rpc_service" => self.rpc_service,
            "method" => self.method,
        )
        .record(self.started.elapsed().as_secs_f64());
        self.span.record("rpc.grpc.status_code", code);
        if code != 0 {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

impl<S, B> Service<http::Request<B>> for RpcTelemetry<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let (rpc_service, method) = split_path(&path);
        let probe = path.starts_with("/grpc.");
        let span = if probe {
            tracing::Span::none()
        } else {
            let span = tracing::info_span!(
                "rpc.server",
                otel.name = %path.trim_start_matches('/'),
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = %rpc_service,
                rpc.method = %method,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            let _ = span.set_parent(extract(req.headers()));
            span
        };
        let finish = Finish {
            rpc_service: rpc_service.to_owned(),
            method: method.to_owned(),
            started: Instant::now(),
            span: span.clone(),
        };
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let resp = fut.await?;
                if let Some(code) = status_of(resp.headers()) {
                    finish.done(code);
                    return Ok(resp);
                }
                Ok(resp.map(|body| {
                    Body::new(Observed {
                        inner: body,
                        finish: Some(finish),
                    })
                }))
            }
            .instrument(span),
        )
    }
}

/// A response body that records the RPC when its trailers (or its end) arrive.
struct Observed {
    inner: Body,
    finish: Option<Finish>,
}

impl Drop for Observed {
    fn drop(&mut self) {
        // Dropped before the end: the client went away.
        if let Some(f) = self.finish.take() {
            f.done(tonic::Code::Cancelled as i32);
        }
    }
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of)
                    && let Some(f) = self.finish.take()
                {
                    f.done(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = self.finish.take() {
                    f.done(tonic::Code::Internal as i32);
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = self.finish.take() {
                    // Ended without trailers: nothing said otherwise.
                    f.done(tonic::Code::Ok as i32);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_short_service_and_method() {
        assert_eq!(
            split_path("/rankmesh.ranking.v1.RankingService/Search"),
            ("RankingService", "Search")
        );
        assert_eq!(split_path("/weird"), ("weird", ""));
    }

    #[test]
    fn trace_context_survives_inject_and_extract() {
        use opentelemetry::trace::TraceContextExt;
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        );
        let cx = extract(&headers);
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(sc.is_remote() && sc.is_sampled());
        let mut out = http::HeaderMap::new();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeaderInjector(&mut out));
        });
        assert_eq!(
            out["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }
}
