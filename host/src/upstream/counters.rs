//! The counters an upstream group and its backends update on the request
//! path: handles resolved once when the group is built, so counting is one
//! relaxed atomic add. The registry that names and exports them lives in
//! `control::metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::{MetricType, TypedMetric};

use super::outcome::FailureKind;
use crate::policy::PolicyFailure;

/// Upper bounds of the decision-latency buckets, in nanoseconds.
const LATENCY_BOUNDS_NS: [u64; 14] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// [`LatencyHistogram`] is a lock-free histogram of durations (the
/// `prometheus-client` one takes a lock per observation).
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram(Arc<HistogramInner>);

#[derive(Debug, Default)]
struct HistogramInner {
    /// One per bound, plus +Inf.
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        let i = LATENCY_BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        let inner = &*self.0;
        inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        inner.count.fetch_add(1, Ordering::Relaxed);
        inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.0;
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_NS
            .iter()
            .map(|&b| b as f64 / 1e9)
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.buckets.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        // The count is taken from the buckets read just now, so the two agree
        // even while observations race with the scrape.
        let count = buckets.iter().map(|(_, c)| c).sum();
        encoder.encode_histogram::<NoLabelSet>(
            inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Status classes, in the order of a [`ByClass`].
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of `status`'s class in a [`ByClass`].
pub fn class(status: StatusCode) -> usize {
    (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1
}

/// Responses by status class.
#[derive(Debug, Clone, Default)]
pub struct ByClass(pub [Counter; 5]);

impl ByClass {
    /// Counts one response.
    pub fn count(&self, status: StatusCode) {
        self.0[class(status)].inc();
    }
}

/// Handles for one upstream group.
#[derive(Debug, Clone, Default)]
pub struct UpstreamMetrics {
    /// Decisions the policy made.
    pub decisions: Counter,
    /// Policy failures, by [`PolicyFailure::kind_index`].
    pub failures: [Counter; PolicyFailure::KINDS.len()],
    /// Time spent in the policy per decision.
    pub decision_seconds: LatencyHistogram,
    /// Responses the proxy wrote itself (no backend answered).
    pub unanswered: ByClass,
    /// Hot swaps that took effect.
    pub swaps: Counter,
    /// Hot swaps refused.
    pub failed_swaps: Counter,
    /// Requests that found every backend at `max-connections-per-backend`.
    pub busy: Counter,
    /// Attempts sent to a backend the policy ranked, without asking it
    /// again.
    pub ranked: Counter,
}

/// Handles for an upstream's shadow policy.
#[derive(Debug, Clone, Default)]
pub struct ShadowMetrics {
    /// Answers that chose the backend the request went to.
    pub agree: Counter,
    /// Answers that chose another.
    pub disagree: Counter,
    /// Calls that failed.
    pub failures: Counter,
    /// Its choices, by backend index.
    pub backends: Vec<Counter>,
}

impl UpstreamMetrics {
    /// Counts a policy failure.
    pub fn failure(&self, f: &PolicyFailure) {
        self.failures[f.kind_index()].inc();
    }
}

/// Handles for one backend.
#[derive(Debug, Clone, Default)]
pub struct BackendMetrics {
    /// Responses by status class.
    pub responses: ByClass,
    /// Attempts that failed, by [`FailureKind::index`].
    pub failures: [Counter; FailureKind::ALL.len()],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_index_their_counters() {
        assert_eq!(class(StatusCode::OK), 1);
        assert_eq!(class(StatusCode::NOT_FOUND), 3);
        assert_eq!(class(StatusCode::BAD_GATEWAY), 4);
        assert_eq!(class(StatusCode::SWITCHING_PROTOCOLS), 0);
    }
}
