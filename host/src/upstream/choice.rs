//! A decision checked: the backend states a policy is shown
//! ([`states`]), and its answer accepted only if usable ([`validate`]),
//! as a [`Choice`].

use std::sync::Arc;

use smallvec::SmallVec;

use super::backend::Backend;
use super::cookie;
use super::trace::Trace;
use crate::policy::{BackendState, Decision, PolicyFailure};

/// The backend chosen for a request.
#[derive(Debug)]
pub struct Choice {
    /// Index into [`Upstream::backends`].
    pub backend: usize,
    /// A `Set-Cookie` value the policy asked for.
    pub set_cookie: Option<http::HeaderValue>,
    /// Set when the policy failed and the fallback chose.
    pub fallback: Option<PolicyFailure>,
    /// More backends the policy ranked, best first, to try before asking
    /// it again (in range; health is checked when one is used).
    pub ranked: SmallVec<[usize; 4]>,
    /// The policy's reason for the choice, if it gave one.
    pub reason: Option<String>,
    /// The decision's trace, when the group keeps them.
    pub trace: Option<Arc<Trace>>,
}

/// The live states a policy sees for a request that has already failed on
/// the backends in `tried`. Backups are offered only when no primary is
/// healthy. When nothing untried is healthy, all untried backends are
/// offered ("panic mode", as nginx does when every server is marked
/// failed). None is healthy only when everything has been tried.
pub fn states(backends: &[Backend], tried: &[usize]) -> SmallVec<[BackendState; 8]> {
    let now = crate::policy::monotonic_ns();
    let mut states: SmallVec<[BackendState; 8]> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| BackendState {
            healthy: !tried.contains(&i) && b.stats.healthy(now),
            in_flight: b.stats.in_flight(),
            latency_ewma_us: b.stats.latency_ewma_us(),
            healthy_since_ns: b.stats.healthy_since(now),
            consecutive_failures: b.stats.consecutive_failures(),
        })
        .collect();
    let primary_up = backends
        .iter()
        .zip(&states)
        .any(|(b, s)| s.healthy && !b.backup);
    for (b, s) in backends.iter().zip(states.iter_mut()) {
        if b.backup && primary_up {
            s.healthy = false;
        }
    }
    if !states.iter().any(|s| s.healthy) {
        for (i, s) in states.iter_mut().enumerate() {
            s.healthy = !tried.contains(&i);
        }
    }
    states
}

/// Accepts a decision only if it names a healthy backend and a valid
/// cookie; ranked fallbacks out of range are dropped.
pub(super) fn validate(
    decision: Decision,
    states: &[BackendState],
) -> Result<Choice, PolicyFailure> {
    let index = decision.backend;
    match states.get(index as usize) {
        None => return Err(PolicyFailure::OutOfRange(index)),
        Some(s) if !s.healthy => return Err(PolicyFailure::UnhealthyChoice(index)),
        Some(_) => {}
    }
    let set_cookie = decision
        .set_cookie
        .map(|c| cookie::render(*c))
        .transpose()?;
    Ok(Choice {
        backend: index as usize,
        set_cookie,
        fallback: None,
        ranked: decision
            .fallbacks
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| i < states.len() && i != index as usize)
            .collect(),
        reason: decision.reason,
        trace: None,
    })
}
