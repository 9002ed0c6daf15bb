//! Loading a policy: a compiled component configured for one group and
//! proved by a dry run before it serves; a membership update (the same
//! instances for other backends) and a fresh load of the same component.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use crossbeam_queue::ArrayQueue;
use thread_local::ThreadLocal;

use super::{FIRST_LOAD_DEADLINE, Inner, SPARES, WasmPolicy};
use crate::config::UpstreamConfig;
use crate::policy::api::{BackendState, LoadError, PolicyFailure, RequestView, describe};
use crate::policy::contract::Members;
use crate::policy::engine::{Compiled, PolicyEngine};
use crate::policy::health::Health;
use crate::policy::host_impl::LogLimiter;
use crate::policy::limits::{self, effective};
use crate::policy::outcomes::OutcomeLog;
use crate::policy::shared::SharedState;

impl WasmPolicy {
    /// Configures `compiled` for an upstream group and proves it: a first
    /// instance must instantiate, accept its configuration and answer a
    /// dry-run `select` for a plain `GET /` with `states` (the live backend
    /// states) twice, the second time within `policy-timeout`; then
    /// instances for `workers` threads (and a spare) must each instantiate
    /// and configure within `policy-timeout`, as they will at run time. The
    /// dry run sees a copy of the group's counters, so it moves no
    /// round-robin position.
    pub fn load(
        engine: &PolicyEngine,
        compiled: Compiled,
        upstream: &UpstreamConfig,
        shared: Arc<SharedState>,
        states: &[BackendState],
        workers: usize,
    ) -> Result<WasmPolicy, LoadError> {
        WasmPolicy::load_on(
            engine.deadlines(),
            compiled,
            upstream,
            shared,
            states,
            workers,
        )
    }

    fn load_on(
        deadlines: bool,
        compiled: Compiled,
        upstream: &UpstreamConfig,
        shared: Arc<SharedState>,
        states: &[BackendState],
        workers: usize,
    ) -> Result<WasmPolicy, LoadError> {
        let name = compiled.source.to_string();
        let interpreted = limits::interpreted(compiled.wasi, compiled.size);
        let limits = effective(upstream.sandbox, compiled.requested, interpreted);
        let sandbox = limits.sandbox;
        let label: Arc<str> = format!("{}/{name}", upstream.name).into();
        let observes = compiled.pre.observes();
        let inner = Arc::new(Inner {
            logs: Arc::new(LogLimiter::new(label.clone())),
            label,
            name,
            compiled,
            shared,
            config: upstream.policy_config.clone(),
            first: Arc::new(Members::new(1, &upstream.backends)),
            next_generation: AtomicU64::new(2),
            zone: upstream.zone.as_deref().map(Arc::from),
            outcomes: observes.then(OutcomeLog::default),
            watched: std::sync::OnceLock::new(),
            ignores_outcomes: std::sync::OnceLock::new(),
            sandbox,
            limits,
            deadlines,
            loaded_at: SystemTime::now(),
            instances: ThreadLocal::new(),
            spares: ArrayQueue::new(workers.max(1) + SPARES),
            refilling: AtomicBool::new(false),
            next_refill_ns: AtomicU64::new(0),
            health: Health::new(sandbox.max_failures),
        });
        inner.dry_run(states, &inner.first)?;
        while !inner.spares.is_full() {
            let live = inner.instantiate(inner.shared.clone(), sandbox.timeout)?;
            let _ = inner.spares.push(live);
        }
        Ok(WasmPolicy {
            members: inner.first.clone(),
            inner,
        })
    }

    /// Whether this policy can take `upstream` (the same group with
    /// other backends) by a membership update rather than a new load:
    /// it exports `membership` and nothing else it was configured with
    /// changed.
    pub fn can_update_to(&self, upstream: &UpstreamConfig) -> bool {
        let i = &self.inner;
        i.compiled.pre.updates()
            && i.config == upstream.policy_config
            && i.sandbox
                == effective(upstream.sandbox, i.compiled.requested, i.interpreted()).sandbox
            && i.zone.as_deref() == upstream.zone.as_deref()
    }

    /// The same policy and instances for `upstream`'s backends: one
    /// instance is updated and dry-run against `states` first; the others
    /// are updated before their next call. Requests still using `self`
    /// from then on go to the fallback.
    pub fn update_to(
        &self,
        upstream: &UpstreamConfig,
        states: &[BackendState],
    ) -> Result<WasmPolicy, LoadError> {
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let members = Arc::new(Members::new(generation, &upstream.backends));
        self.inner.dry_run(states, &members)?;
        Ok(WasmPolicy {
            inner: self.inner.clone(),
            members,
        })
    }

    /// The same component and configuration loaded anew (fresh
    /// instances, proved by a dry run) for `upstream`, on the same shared
    /// state.
    pub fn reload(
        &self,
        upstream: &UpstreamConfig,
        states: &[BackendState],
    ) -> Result<WasmPolicy, LoadError> {
        let i = &self.inner;
        let workers = i.spares.capacity() - SPARES;
        let (compiled, shared) = (i.compiled.clone(), i.shared.clone());
        WasmPolicy::load_on(i.deadlines, compiled, upstream, shared, states, workers)
    }

    /// Where the policy came from.
    pub fn compiled(&self) -> &Compiled {
        &self.inner.compiled
    }
}

impl Inner {
    /// Proves the policy on a fresh instance: two `select`s for a plain
    /// `GET /` with `states`, the second within the deadline, for
    /// `members` (after an `update` to them, when they are not the first).
    fn dry_run(&self, states: &[BackendState], members: &Members) -> Result<(), LoadError> {
        let mut live = self.instantiate(Arc::new(self.shared.snapshot()), FIRST_LOAD_DEADLINE)?;
        let what = || self.name.clone();
        let _ = self
            .ignores_outcomes
            .set(live.store.data().v02.ignores_outcomes);
        let _ = self.watched.set(
            live.store
                .data()
                .v02
                .watch
                .iter()
                .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
        );
        if live.generation != members.generation {
            self.set_deadline(&mut live.store, FIRST_LOAD_DEADLINE);
            let refused = |reason| LoadError::DryRun {
                what: what(),
                reason,
            };
            match live.exports.update(&mut live.store, members) {
                Ok(Ok(())) => live.generation = members.generation,
                Ok(Err(why)) => return Err(refused(format!("update refused: {why}"))),
                Err(e) => return Err(refused(format!("update trapped: {}", describe(&e)))),
            }
        }
        // No backend yet (a DNS entry that found none): `select` is proven
        // when some arrive, by the membership update or load that brings them.
        if states.is_empty() {
            return Ok(());
        }
        let mut req = RequestView::placeholder();
        req.parts.uri = http::Uri::from_static("/");
        req.attempt = 1;
        for (second, limit) in [(false, FIRST_LOAD_DEADLINE), (true, self.sandbox.timeout)] {
            if let Err(failure) = self.call(&mut live, members, &req, states, limit) {
                let reason = match failure {
                    PolicyFailure::Timeout if second => format!(
                        "ran past policy-timeout ({:?}) on its second call",
                        self.sandbox.timeout
                    ),
                    f => f.to_string(),
                };
                return Err(LoadError::DryRun {
                    what: what(),
                    reason,
                });
            }
        }
        Ok(())
    }
}
