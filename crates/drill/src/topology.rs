//! What a drill runs against, as the engine sees it: faults go in through it, and
//! after the load it says what the faults left behind. The local processes and
//! the compose stack are its two implementations.

use std::path::Path;
use std::time::Duration;

use rankmesh_client::{FeatureClient, Resolver};

use crate::report::{Injected, Rejoined};
use crate::scenario::Fault;

/// A running mesh a drill can break; started by its module's `start`.
pub(crate) trait Topology: Sized {
    /// The ranking replicas, as a storefront finds them.
    fn ranking(&self) -> Resolver;

    /// The feature service, where the drill can record events (and read back
    /// whether they were kept); None where the topology does not reach it.
    fn feature(&self) -> Option<FeatureClient>;

    /// Injects one fault, `at_s` seconds into the load; what it did goes into the
    /// report. Held faults end by themselves after their duration.
    async fn inject(&self, f: &Fault, at_s: f64) -> anyhow::Result<Injected>;

    /// For a canary fault: seconds from the fault until the registry recorded the
    /// canary's rollback, if it did (and where this topology can tell).
    async fn canary_rolled_back(&self, forbidden_model: &str, fault_at_ms: i64) -> Option<f64>;

    /// Whether every instance not `killed` is registered in discovery again,
    /// waiting up to `wait`.
    async fn rejoined(&self, killed: &[&str], wait: Duration) -> Rejoined;

    /// Stops everything the topology started, whatever state the faults left it
    /// in; the services' logs go to `logs`.
    async fn tear_down(self, logs: &Path);
}
