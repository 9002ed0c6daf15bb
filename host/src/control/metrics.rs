//! Prometheus metrics, served by the admin API at `/metrics`.
//!
//! Counters and histograms live in a registry that outlives config reloads
//! (a reload never resets them). The request path never looks a metric up:
//! each upstream and backend holds handles resolved when it is built, so
//! counting is one relaxed atomic add. Gauges (backend health, in-flight,
//! policy health) are read from the running config at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::policy::{PolicyFailure, StateRegistry};
use crate::proxy::Runtime;
use crate::upstream::FailureKind;
use crate::upstream::counters::{
    BackendMetrics, ByClass, CLASSES, LatencyHistogram, ShadowMetrics, UpstreamMetrics,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    upstream: String,
    backend: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyMetricLabels {
    upstream: String,
    name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    upstream: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    upstream: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    upstream: String,
    backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgreeLabels {
    upstream: String,
    agree: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    upstream: String,
    backend: String,
    kind: String,
}

/// `switchyard_dns_resolutions_total`, registered.
fn dns_family(registry: &mut Registry) -> Family<ResultLabels, Counter> {
    let dns = Family::<ResultLabels, Counter>::default();
    registry.register(
        "dns_resolutions",
        "Lookups of an upstream's dns and srv entries, by result (ok; empty: no address; failed: no answer, the addresses found last stay)",
        dns.clone(),
    );
    dns
}

/// [`Metrics`] is the process's metric registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    decisions: Family<UpstreamLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    swaps: Family<ResultLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    decision_seconds: Family<UpstreamLabels, LatencyHistogram>,
    attempt_failures: Family<AttemptLabels, Counter>,
    busy: Family<UpstreamLabels, Counter>,
    ranked: Family<UpstreamLabels, Counter>,
    shadow_decisions: Family<AgreeLabels, Counter>,
    shadow_backends: Family<BackendLabels, Counter>,
    shadow_failures: Family<UpstreamLabels, Counter>,
    dns: Family<ResultLabels, Counter>,
    /// Requests no route matched (or refused before routing).
    pub unrouted: ByClass,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// An empty registry with every metric described.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchyard");
        let requests = Family::<RequestLabels, Counter>::default();
        let decisions = Family::<UpstreamLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let swaps = Family::<ResultLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let decision_seconds = Family::<UpstreamLabels, LatencyHistogram>::default();
        let attempt_failures = Family::<AttemptLabels, Counter>::default();
        let busy = Family::<UpstreamLabels, Counter>::default();
        let ranked = Family::<UpstreamLabels, Counter>::default();
        let shadow_decisions = Family::<AgreeLabels, Counter>::default();
        let shadow_backends = Family::<BackendLabels, Counter>::default();
        let shadow_failures = Family::<UpstreamLabels, Counter>::default();
        let dns = dns_family(&mut registry);
        registry.register(
            "shadow_decisions",
            "Decisions a shadow policy answered, by whether it chose the backend the request went to",
            shadow_decisions.clone(),
        );
        registry.register(
            "shadow_backend",
            "Backends a shadow policy chose",
            shadow_backends.clone(),
        );
        registry.register(
            "shadow_failures",
            "Calls to a shadow policy that failed (trap, deadline, bad answer); no request is affected",
            shadow_failures.clone(),
        );
        registry.register(
            "ranked_attempts",
            "Attempts sent to a backend the policy ranked as a fallback, without calling it again",
            ranked.clone(),
        );
        registry.register(
            "backend_failures",
            "Attempts on a backend that did not end in a complete response, by kind (too_large, busy and client_gone do not count against the backend's health)",
            attempt_failures.clone(),
        );
        registry.register(
            "upstream_busy",
            "Requests refused with 503 because every backend tried was at max-connections-per-backend",
            busy.clone(),
        );
        registry.register(
            "requests",
            "Responses sent to clients, by upstream, backend (empty when the proxy answered itself) and status class",
            requests.clone(),
        );
        registry.register(
            "policy_decisions",
            "Backend choices made by the upstream's policy",
            decisions.clone(),
        );
        registry.register(
            "policy_failures",
            "Requests the policy failed on (the fallback chose instead), by kind",
            failures.clone(),
        );
        registry.register(
            "policy_swaps",
            "Policy hot swaps, by result (ok or failed)",
            swaps.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (ok or failed)",
            reloads.clone(),
        );
        registry.register(
            "policy_decision_seconds",
            "Time spent in the policy per decision",
            decision_seconds.clone(),
        );
        let unrouted = ByClass(std::array::from_fn(|i| {
            requests.get_or_create_owned(&RequestLabels {
                upstream: String::new(),
                backend: String::new(),
                code: CLASSES[i].into(),
            })
        }));
        Metrics {
            registry,
            requests,
            decisions,
            failures,
            swaps,
            reloads,
            decision_seconds,
            attempt_failures,
            busy,
            ranked,
            shadow_decisions,
            shadow_backends,
            shadow_failures,
            dns,
            unrouted,
        }
    }

    fn by_class(&self, upstream: &str, backend: &str) -> ByClass {
        ByClass(std::array::from_fn(|i| {
            self.requests.get_or_create_owned(&RequestLabels {
                upstream: upstream.into(),
                backend: backend.into(),
                code: CLASSES[i].into(),
            })
        }))
    }

    /// Handles for upstream `name` (the same ones across reloads).
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let up = UpstreamLabels {
            upstream: name.into(),
        };
        let result = |r: &str| ResultLabels {
            upstream: name.into(),
            result: r.into(),
        };
        UpstreamMetrics {
            decisions: self.decisions.get_or_create_owned(&up),
            failures: std::array::from_fn(|i| {
                self.failures.get_or_create_owned(&FailureLabels {
                    upstream: name.into(),
                    kind: PolicyFailure::KINDS[i].into(),
                })
            }),
            decision_seconds: self.decision_seconds.get_or_create_owned(&up),
            unanswered: self.by_class(name, ""),
            swaps: self.swaps.get_or_create_owned(&result("ok")),
            failed_swaps: self.swaps.get_or_create_owned(&result("failed")),
            busy: self.busy.get_or_create_owned(&up),
            ranked: self.ranked.get_or_create_owned(&up),
        }
    }

    /// Handles for `upstream`'s shadow policy, over `backends`.
    pub fn shadow(&self, upstream: &str, backends: &[&str]) -> ShadowMetrics {
        let agree = |a: &str| AgreeLabels {
            upstream: upstream.into(),
            agree: a.into(),
        };
        ShadowMetrics {
            agree: self.shadow_decisions.get_or_create_owned(&agree("true")),
            disagree: self.shadow_decisions.get_or_create_owned(&agree("false")),
            failures: self.shadow_failures.get_or_create_owned(&UpstreamLabels {
                upstream: upstream.into(),
            }),
            backends: backends
                .iter()
                .map(|b| {
                    self.shadow_backends.get_or_create_owned(&BackendLabels {
                        upstream: upstream.into(),
                        backend: (*b).into(),
                    })
                })
                .collect(),
        }
    }

    /// Handles for backend `backend` of `upstream`.
    pub fn backend(&self, upstream: &str, backend: &str) -> BackendMetrics {
        BackendMetrics {
            responses: self.by_class(upstream, backend),
            failures: std::array::from_fn(|i| {
                self.attempt_failures.get_or_create_owned(&AttemptLabels {
                    upstream: upstream.into(),
                    backend: backend.into(),
                    kind: FailureKind::ALL[i].label().into(),
                })
            }),
        }
    }

    /// Counts a lookup of one of `upstream`'s DNS entries: `ok`, `empty`
    /// or `failed`.
    pub fn dns(&self, upstream: &str, result: &str) {
        self.dns
            .get_or_create(&ResultLabels {
                upstream: upstream.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts a config reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    /// The Prometheus text exposition of everything, with gauges read
    /// from `runtime` and the policies' `metric/` counters from `states`.
    pub fn render(&self, runtime: &Runtime, states: &StateRegistry) -> String {
        let mut gauges = Registry::with_prefix("switchyard");
        let up = Family::<BackendLabels, Gauge>::default();
        let in_flight = Family::<BackendLabels, Gauge>::default();
        let policy_healthy = Family::<UpstreamLabels, Gauge>::default();
        let policy_metrics = Family::<PolicyMetricLabels, Counter>::default();
        let now = crate::upstream::now_ns();
        for u in &runtime.upstreams {
            for b in &u.backends {
                let l = BackendLabels {
                    upstream: u.name.clone(),
                    backend: b.name.to_string(),
                };
                up.get_or_create(&l).set(i64::from(b.stats.healthy(now)));
                in_flight
                    .get_or_create(&l)
                    .set(i64::from(b.stats.in_flight()));
            }
            policy_healthy
                .get_or_create(&UpstreamLabels {
                    upstream: u.name.clone(),
                })
                .set(i64::from(u.policy().status().healthy));
            let state = states.peek(&u.name);
            for (name, value) in state.map(|s| s.metric_counters()).unwrap_or_default() {
                policy_metrics
                    .get_or_create(&PolicyMetricLabels {
                        upstream: u.name.clone(),
                        name,
                    })
                    .inc_by(value);
            }
        }
        gauges.register("backend_up", "1 if passive health allows the backend", up);
        gauges.register(
            "backend_in_flight",
            "Requests in flight to the backend",
            in_flight,
        );
        gauges.register(
            "policy_healthy",
            "0 after max-failures consecutive policy failures",
            policy_healthy,
        );
        gauges.register(
            "policy_metric",
            "Events a policy counts in a metric/ counter (e.g. ejections)",
            policy_metrics,
        );
        if let Some((redis_up, errors)) = states.redis_status() {
            let g = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
            g.set(i64::from(redis_up));
            gauges.register(
                "state_redis_up",
                "1 while Redis answers (shared-state = \"redis\"); 0: policy state runs on local values",
                g,
            );
            let c = Counter::<u64>::default();
            c.inc_by(errors);
            gauges.register(
                "state_redis_errors",
                "Failed exchanges with Redis (shared-state = \"redis\")",
                c,
            );
        }
        let generation = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        generation.set(runtime.generation as i64);
        gauges.register(
            "config_generation",
            "Configurations loaded since start (1 is the first)",
            generation,
        );
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &gauges);
        out.push_str("# EOF\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use std::time::Duration;

    #[test]
    fn handles_resolved_twice_count_into_one_series() {
        let m = Metrics::new();
        m.upstream("app").decisions.inc();
        m.upstream("app").decisions.inc();
        m.backend("app", "a").responses.count(StatusCode::OK);
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &m.registry).unwrap();
        assert!(
            out.contains("switchyard_policy_decisions_total{upstream=\"app\"} 2"),
            "{out}"
        );
        assert!(
            out.contains(
                "switchyard_requests_total{upstream=\"app\",backend=\"a\",code=\"2xx\"} 1"
            ),
            "{out}"
        );
    }

    #[test]
    fn histograms_put_observations_in_their_buckets() {
        let m = Metrics::new();
        let h = m.upstream("app").decision_seconds;
        h.observe(Duration::from_nanos(400));
        h.observe(Duration::from_millis(50));
        assert_eq!(h.count(), 2);
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &m.registry).unwrap();
        assert!(
            out.contains(
                "switchyard_policy_decision_seconds_bucket{le=\"5e-7\",upstream=\"app\"} 1"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "switchyard_policy_decision_seconds_bucket{le=\"+Inf\",upstream=\"app\"} 2"
            ),
            "{out}"
        );
    }
}
