//! Disaster-recovery drills: what a scenario file says (topology, open-loop load,
//! fault timeline, SLO), the engine that runs one (starts its topology, offers the
//! load through the SDK, injects the faults on schedule), the TCP fault proxy that
//! delays, drops or cuts an instance's links, the verdict of a run against its SLO
//! with its JSON and self-contained HTML report, and the record of the last runs
//! that the README's drill table is rendered from.
//!
//! # Layout
//! - [`scenario`]: scenario files, parsed and checked field by field.
//! - [`options`]: how a drill is run ([`RunOptions`]).
//! - [`engine`]: [`run`] one scenario; the load, the fault timeline, the verdict.
//! - `topology`: the one trait the engine breaks a mesh through; its two
//!   implementations are `local` (processes on loopback, through the launcher) and
//!   `compose` (the compose stack, through Docker).
//! - `faults`: what both topologies share (held faults, impaired links).
//! - [`netfault`]: the fault proxy (delay, jitter, loss, partition).
//! - [`report`]: judging a run against its SLO; the report, as JSON, text and HTML.
//! - [`results`]: the recorded runs (`deploy/drills/last-run.json`) and their table.
//!
//! Owns what a drill is, how it is run, judged and reported. Must not import a
//! service crate or the CLI: it reaches a mesh only through the SDK, the launcher,
//! `rankmesh-provision` and Docker. Scenario files and records are parsed into a
//! typed [`DrillError`]; the engine's own errors are `anyhow` chains for an operator
//! to read (what failed, in which fault, with which command), never branched on.

mod compose;
pub mod engine;
pub mod error;
mod faults;
mod local;
pub mod netfault;
pub mod options;
pub mod report;
pub mod results;
pub mod scenario;
mod topology;

pub use engine::run;
pub use error::DrillError;
pub use options::RunOptions;
