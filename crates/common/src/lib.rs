//! What every rankmesh service stands on.
//!
//! # Layout
//! - [`batcher`]: dynamic batching of model calls across concurrent requests.
//! - [`admission`]: a concurrency limit that follows latency, for a service's edge.
//! - `onnx` (feature `onnx`): ONNX Runtime loading, sessions and session pools.
//! - [`config`]: typed, layered configuration (defaults, TOML file, `RANKMESH__*` env).
//! - [`secret`]: keys and tokens read from owner-only files the config names.
//! - [`telemetry`]: logs, OTLP traces and the Prometheus recorder.
//! - [`observe`]: per-RPC spans and metrics on servers, trace-context propagation.
//! - [`rpc`]: the error handlers answer with, one mapping onto gRPC codes.
//! - [`blocking`]: CPU-bound work on the blocking pool, with one way of failing.
//! - [`catalog`]: the catalog item, its limits and validation.
//! - [`relevance`]: NDCG over graded judgments (one definition for every report).
//! - [`filters`]: validated catalog filters (category, price, brand).
//! - [`fnv`]: FNV-1a, a hash that is the same on every machine and run.
//! - [`etcd`]: the shared etcd client and member health-checking.
//! - [`discovery`]: registering instances on a lease and following a service's
//!   endpoints (etcd watch, or a static list).
//! - [`election`]: leader election with fenced writes.
//! - [`server`]: the serving scaffold (health, reflection, admin port, overload guard,
//!   graceful shutdown).
//! - [`scaffold`]: the shared `main` of the service binaries (config, telemetry,
//!   bind, serve until a signal) and the config shape every service has.
//!
//! Owns what every process shares and nothing service-specific. Must not import
//! the SDK, the artifact crate or any service crate.

pub mod admission;
pub mod authz;
pub mod batcher;
pub mod blocking;
pub mod catalog;
pub mod config;
pub mod discovery;
pub mod election;
pub mod etcd;
pub mod filters;
pub mod fnv;
pub mod observe;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod relevance;
pub mod request_body;
pub mod rpc;
pub mod scaffold;
pub mod secret;
pub mod server;
pub mod telemetry;
