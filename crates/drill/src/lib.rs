//! Disaster-recovery drills: what a scenario file says (topology, open-loop load,
//! fault timeline, SLO), the TCP fault proxy that delays, drops or cuts an
//! instance's links, the verdict of a run against its SLO with its JSON and
//! self-contained HTML report, and the record of the last runs that the README's
//! drill table is rendered from.
//!
//! # Layout
//! - [`scenario`]: scenario files, parsed and checked field by field.
//! - [`netfault`]: the fault proxy (delay, jitter, loss, partition).
//! - [`report`]: judging a run against its SLO; the report, as JSON, text and HTML.
//! - [`results`]: the recorded runs (`deploy/drills/last-run.json`) and their table.
//!
//! The engine that runs a scenario (starting its topology, injecting its faults,
//! driving the load) is still meshctl's (`crates/cli/src/drill`), moving here next.
//!
//! Owns what a drill is and how it is judged and reported. Must not import a
//! service crate; it reaches a mesh only through the SDK and its processes.

pub mod error;
pub mod netfault;
pub mod report;
pub mod results;
pub mod scenario;

pub use error::DrillError;
