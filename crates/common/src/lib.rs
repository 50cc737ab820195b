//! What every rankmesh service stands on.
//!
//! # Layout
//! - [`config`]: typed, layered configuration (defaults, TOML file, `RANKMESH__*` env).
//! - [`telemetry`]: logs, OTLP traces and the Prometheus recorder.
//! - [`etcd`]: the shared etcd client and member health-checking.
//! - [`discovery`]: registering instances on a lease and following a service's
//!   endpoints (etcd watch, or a static list).
//! - [`election`]: leader election with fenced writes.
//! - [`server`]: the serving scaffold (health, reflection, admin port, overload guard,
//!   graceful shutdown).
//! - [`service`]: the shared `main` of service binaries and their config shape.

pub mod config;
pub mod discovery;
pub mod election;
pub mod etcd;
pub mod server;
pub mod service;
pub mod telemetry;
