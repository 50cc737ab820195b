//! Logs, traces and metrics for a service process.
//!
//! Logs go to stderr through `tracing` (text or JSON, filtered by `log_filter` or
//! `RUST_LOG`). When `otlp_endpoint` is set, spans are also exported over OTLP/gRPC
//! with a parent-based ratio sampler, and W3C trace context is the global propagator
//! so one trace spans every service of a request. Metrics use the `metrics` facade
//! with one process-wide Prometheus recorder that the admin port renders.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Logging and tracing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` (human) or `json` (one object per line).
    pub log_format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub log_filter: String,
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; empty disables export.
    pub otlp_endpoint: String,
    /// Share of root traces sampled, 0.0..=1.0; child spans follow their parent.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(crate::config::invalid(
                "telemetry.sample_ratio",
                self.sample_ratio,
                "must be within 0.0..=1.0",
            ));
        }
        if let Err(e) = EnvFilter::try_new(&self.log_filter) {
            return Err(crate::config::invalid(
                "telemetry.log_filter",
                format!("{:?}", self.log_filter),
                &e.to_string(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Flushes and stops the trace exporter when dropped; keep it alive in `main`.
#[derive(Debug)]
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace exporter shutdown: {e}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs logging (and trace export when configured) for `service`. Must be called
/// inside a Tokio runtime when OTLP export is enabled.
pub fn init(service: &str, config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };

    let (otel, provider) = if config.otlp_endpoint.is_empty() {
        (None, None)
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.otlp_endpoint.clone())
            .build()
            .map_err(|e| TelemetryError::Exporter {
                endpoint: config.otlp_endpoint.clone(),
                message: e.to_string(),
            })?;
        // Export every 500 ms rather than the SDK's 5 s: a trace should be there to
        // look at by the time someone copies its id from a reply.
        let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                opentelemetry_sdk::trace::BatchConfigBuilder::default()
                    .with_scheduled_delay(std::time::Duration::from_millis(500))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service.to_owned())
                    // Trace viewers group spans by process: one per replica.
                    .with_attribute(opentelemetry::KeyValue::new(
                        "service.instance.id",
                        format!("{service}-{}", std::process::id()),
                    ))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("rankmesh");
        opentelemetry::global::set_tracer_provider(provider.clone());
        (
            Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            Some(provider),
        )
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );

    // Install the metrics recorder now, so what services record while starting up
    // (model loaded, provider) is not lost before the admin port first renders.
    prometheus();
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

/// The process-wide Prometheus recorder, installed on first use. Several servers in
/// one process (tests) share it, as they share the `metrics` facade.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Latencies as real histograms (aggregatable across replicas), not the
        // exporter's default per-process summaries.
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be global (a test harness); ours still renders
        // what is recorded through it, which is nothing in that case, but never panics.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
