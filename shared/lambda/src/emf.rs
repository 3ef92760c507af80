//! The functions' figures ([`opscore_core::metrics`]) in CloudWatch embedded metric format (EMF):
//! JSON lines on stdout, which CloudWatch Logs turns into metrics of namespace [`NAMESPACE`]
//! without an API call (docs/operations.md).
//!
//! The collector is `metrics_cloudwatch_embedded`, installed as the process's global recorder of
//! the `metrics` facade (the core records there by default). It keeps the figures of one
//! invocation and [`flush`] writes them after it: one JSON line per dimension set (workflow,
//! reason, write), counters as the invocation's deltas, latencies as the list of values.

use metrics_cloudwatch_embedded::Collector;

/// The CloudWatch namespace of every Ops-Core metric (template.yaml's alarms and dashboard name it).
pub const NAMESPACE: &str = "OpsCore";

/// Installs the EMF collector as the global recorder and tells it every metric's unit. Once per
/// process, at cold start.
pub fn install() -> Result<&'static Collector, crate::LambdaError> {
    let collector = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(NAMESPACE)
        .init()?;
    metrics::with_recorder(opscore_core::metrics::describe);
    Ok(collector)
}

/// Writes what this invocation recorded as EMF lines to `out` and starts afresh (the counters
/// restart from zero: CloudWatch sums the lines).
pub fn flush_to(collector: &Collector, out: impl std::io::Write) {
    if let Err(e) = collector.flush(out) {
        tracing::warn!(error = %e, "could not write the invocation's metrics");
    }
}

/// [`flush_to`] stdout, where Lambda's log lines go: called once per invocation, after it.
pub fn flush(collector: &Collector) {
    flush_to(collector, std::io::stdout().lock());
}

/// `service` (an HTTP function's router) with the metrics flushed after each response.
pub fn flush_after_each<S, Request>(
    service: S,
    collector: &'static Collector,
) -> tower::util::MapResponse<S, impl FnOnce(S::Response) -> S::Response + Clone>
where
    S: tower::Service<Request>,
{
    tower::util::MapResponse::new(service, move |response| {
        flush(collector);
        response
    })
}
