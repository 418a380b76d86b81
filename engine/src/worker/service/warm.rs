//! The warm-up a worker starts beside its registration: the plugin template's dependencies
//! compiled before the first job of an owner arrives.

use super::metrics::{BuildLabels, WorkerMetrics};
use crate::owner::Owner;
use crate::worker::builder::{BuildEvent, Builder, Warmed};

/// Compiles the plugin template's dependencies for `owner` ([`Builder::warm`]), logging cargo's
/// lines like a job's build and counting the outcome.
pub(super) async fn warm(builder: Builder, owner: Owner, metrics: WorkerMetrics) {
    let started = std::time::Instant::now();
    tracing::info!(%owner, "compiling the plugin template's dependencies in the background");
    let progress = |event: BuildEvent<'_>| {
        if let BuildEvent::Line(line) = event {
            tracing::info!(target: "kiln::build", "{line}");
        }
    };
    let outcome = match builder.warm(&owner, &progress).await {
        Ok(Warmed::Built) => {
            tracing::info!(%owner, elapsed = ?started.elapsed(), "plugin template's dependencies compiled");
            "built"
        }
        Ok(Warmed::AlreadyWarm) => {
            tracing::info!(%owner, "plugin template's dependencies compiled already");
            "already"
        }
        Err(error) => {
            tracing::warn!(%owner, "cannot compile the plugin template's dependencies ahead of jobs: {error}");
            "failed"
        }
    };
    metrics.warm_builds.get_or_create(&BuildLabels { outcome }).inc();
}
