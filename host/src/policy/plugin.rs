//! A loaded policy: a compiled component configured for one upstream group,
//! with one live instance per worker thread, run under the sandbox.
//!
//! Instances are made off the request path: at load (one per worker
//! thread, plus a spare) and by a background task whenever the spares run
//! low. A thread takes a spare the first time it needs one, then reuses it
//! for every request on that thread, so the request path takes no lock and
//! never waits for an instantiation; a thread that finds no spare sends
//! that request through the fallback and asks for more. An instance that
//! traps (including running out of time or memory) is dropped and the
//! thread takes a spare next time.
//!
//! Its health is kept by [`super::health`]; loading it, proving it by a
//! dry run and handing it new backends are in [`load`].

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crossbeam_queue::ArrayQueue;
use thread_local::ThreadLocal;
use wasmtime::Store;

use super::api::{
    BackendState, Decision, LoadError, Observed, Policy, PolicyFailure, PolicyStatus, RequestView,
};
use super::bindings::types;
use super::contract::{Exports, LastHealth, Members};
use super::engine::Compiled;
use super::health::{Health, Record};
use super::host_impl::{HostState, LogLimiter, monotonic_ns};
use super::limits::{self, Effective};
use super::outcomes::{OutcomeLog, Reader};
use super::shared::SharedState;
use super::verdict::{classify, dead, panic_message, setup_failure};
use super::wasi::on_runtime_worker;
use crate::config::{SandboxConfig, UpstreamConfig};

mod load;

/// Time allowed for the first instance of a load: instantiation,
/// `configure` and a first `select`, which may be slow (fresh memory, lazy
/// initialisation). Every later instance gets `policy-timeout`.
const FIRST_LOAD_DEADLINE: Duration = Duration::from_secs(2);

/// Spare instances kept ready once every worker thread has one.
const SPARES: usize = 1;

/// After a failed background instantiation, wait this long before the next.
const REFILL_BACKOFF: Duration = Duration::from_millis(250);

/// A component policy configured for one upstream group, for one
/// generation of its backends (a membership update makes another
/// `WasmPolicy` on the same instances, which each follow the members of
/// the request they decide).
pub struct WasmPolicy {
    inner: Arc<Inner>,
    members: Arc<Members>,
}

struct Inner {
    compiled: Compiled,
    name: String,
    label: Arc<str>,
    shared: Arc<SharedState>,
    config: Vec<(String, String)>,
    /// The backends new instances are configured with (generation 1).
    first: Arc<Members>,
    /// The generation the next membership update gets.
    next_generation: AtomicU64,
    zone: Option<Arc<str>>,
    /// Outcomes for instances to observe, if the policy observes.
    outcomes: Option<OutcomeLog>,
    /// Response headers the policy watches (set by the dry run).
    watched: std::sync::OnceLock<Vec<http::HeaderName>>,
    /// Whether this configuration said it needs no outcomes
    /// (`ignore-outcomes` in the dry run's `configure`).
    ignores_outcomes: std::sync::OnceLock<bool>,
    sandbox: SandboxConfig,
    limits: Effective,
    /// Calls run under deadlines.
    deadlines: bool,
    loaded_at: SystemTime,
    instances: ThreadLocal<RefCell<Slot>>,
    spares: ArrayQueue<Live>,
    refilling: AtomicBool,
    next_refill_ns: AtomicU64,
    health: Health,
    logs: Arc<LogLimiter>,
}

/// One thread's instance and its recent record.
#[derive(Default)]
struct Slot {
    live: Option<Live>,
    record: Record,
}

/// One instance.
struct Live {
    store: Store<HostState>,
    exports: Exports,
    /// Reused buffer for a 0.1 instance's per-request backend states.
    scratch: Vec<types::BackendState>,
    /// What a 0.2 instance was last told of the backends' health.
    last: LastHealth,
    /// The membership generation it was configured or updated for.
    generation: u64,
    /// What it has been told of the group's outcomes.
    outcomes: Reader,
}

impl Inner {
    /// The group's outcomes, when the policy observes them (exports
    /// `observer` and its configuration did not decline them).
    fn outcome_log(&self) -> Option<&OutcomeLog> {
        match self.ignores_outcomes.get() {
            Some(true) => None,
            _ => self.outcomes.as_ref(),
        }
    }

    fn interpreted(&self) -> bool {
        limits::interpreted(self.compiled.wasi, self.compiled.size)
    }

    /// Arms the deadline for the next guest call: `limit` of CPU time.
    fn set_deadline(&self, store: &mut Store<HostState>, limit: Duration) {
        if self.deadlines {
            let epochs = store.data_mut().deadline.arm(limit);
            store.set_epoch_deadline(epochs);
        }
    }

    /// A configured instance; instantiation and `configure` each get
    /// `limit`.
    fn instantiate(&self, shared: Arc<SharedState>, limit: Duration) -> Result<Live, LoadError> {
        catch_unwind(AssertUnwindSafe(|| self.instantiate_inner(shared, limit))).unwrap_or_else(
            |panic| {
                Err(LoadError::Trap {
                    what: self.name.clone(),
                    reason: format!("a host function panicked: {}", panic_message(&panic)),
                })
            },
        )
    }

    fn instantiate_inner(
        &self,
        shared: Arc<SharedState>,
        limit: Duration,
    ) -> Result<Live, LoadError> {
        let what = || self.name.clone();
        let timed_out = |e: &wasmtime::Error| setup_failure(e, limit);
        let mut store = Store::new(
            self.compiled.pre.engine(),
            HostState::new(
                shared,
                self.label.clone(),
                self.sandbox.memory,
                self.logs.clone(),
            ),
        );
        store.data_mut().v02.zone = self.zone.clone();
        store.limiter(|s| s as &mut dyn wasmtime::ResourceLimiter);
        if self.deadlines {
            store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().deadline.on_deadline()));
        }
        self.set_deadline(&mut store, limit);
        let exports = self
            .compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| LoadError::Trap {
                what: what(),
                reason: timed_out(&e),
            })?;
        self.set_deadline(&mut store, limit);
        let members = &self.first;
        exports
            .configure(&mut store, &self.config, members)
            .map_err(|e| LoadError::Trap {
                what: what(),
                reason: timed_out(&e),
            })?
            .map_err(|reason| LoadError::Refused {
                what: what(),
                reason,
            })?;
        Ok(Live {
            store,
            exports,
            scratch: Vec::with_capacity(members.len()),
            last: LastHealth::default(),
            generation: members.generation,
            outcomes: Reader::default(),
        })
    }

    /// One call on `live` for the request `req`: first, under the same
    /// deadline, the membership update and the outcomes it has not seen.
    fn call(
        &self,
        live: &mut Live,
        members: &Members,
        req: &RequestView,
        states: &[BackendState],
        limit: Duration,
    ) -> Result<Decision, PolicyFailure> {
        self.set_deadline(&mut live.store, limit);
        let failed =
            |live: &Live, e: &wasmtime::Error| classify(e, live.store.data().memory_exceeded);
        if live.generation != members.generation {
            match live.exports.update(&mut live.store, members) {
                Ok(Ok(())) => {
                    live.generation = members.generation;
                    live.last.reset();
                }
                Ok(Err(why)) => return Err(PolicyFailure::Stale(why)),
                Err(e) => return Err(failed(live, &e)),
            }
        }
        if let Some(log) = self.outcome_log()
            && let Some(batch) = live.outcomes.batch(log, members)
            && let Err(e) = live.exports.observe(&mut live.store, batch)
        {
            return Err(failed(live, &e));
        }
        // SAFETY: the loan ends below, before `req` can be used again; a
        // panic in a host function is caught first.
        unsafe { live.store.data_mut().request.lend(req) };
        let Live {
            store,
            exports,
            scratch,
            last,
            ..
        } = live;
        let result = catch_unwind(AssertUnwindSafe(|| {
            exports.select(store, states, scratch, last)
        }));
        store.data_mut().request.end();
        match result {
            Err(panic) => Err(PolicyFailure::Trap(format!(
                "a host function panicked: {}",
                panic_message(&panic)
            ))),
            Ok(Err(e)) => Err(classify(&e, store.data().memory_exceeded)),
            Ok(Ok(Err(message))) => Err(PolicyFailure::Error(message)),
            Ok(Ok(Ok(d))) => Ok(d),
        }
    }

    /// Spares wanted: one for a thread that loses its instance; for a
    /// pooled (WASI) policy, the whole pool.
    fn target(&self) -> usize {
        if self.compiled.wasi {
            self.spares.capacity()
        } else {
            SPARES
        }
    }

    /// Tops the spares up in the background, unless that is already under
    /// way or recently failed.
    fn refill(self: &Arc<Self>) {
        if self.spares.len() >= self.target() {
            return;
        }
        if monotonic_ns() < self.next_refill_ns.load(Ordering::Relaxed)
            || self.refilling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let inner = self.clone();
        let work = move || {
            while inner.spares.len() < inner.target() {
                match inner.instantiate(inner.shared.clone(), inner.sandbox.timeout) {
                    Ok(live) => {
                        if inner.spares.push(live).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(policy = %inner.label, "cannot make a new instance: {e}");
                        inner
                            .health
                            .failed(&inner.label, &PolicyFailure::Unavailable(e.to_string()));
                        inner.next_refill_ns.store(
                            monotonic_ns() + REFILL_BACKOFF.as_nanos() as u64,
                            Ordering::Relaxed,
                        );
                        break;
                    }
                }
            }
            inner.refilling.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(work);
            }
            Err(_) => work(),
        }
    }

    fn select_here(
        self: &Arc<Self>,
        members: &Members,
        req: &RequestView,
        states: &[BackendState],
    ) -> Result<Decision, PolicyFailure> {
        if self.health.skip() {
            return Err(PolicyFailure::Skipped);
        }
        if self.compiled.wasi {
            return self.select_pooled(members, req, states);
        }
        let cell = self.instances.get_or(|| RefCell::new(Slot::default()));
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return Err(PolicyFailure::Unavailable(
                "re-entered on one thread".into(),
            ));
        };
        let live = match &mut slot.live {
            Some(live) => live,
            empty => match self.spares.pop() {
                Some(live) => {
                    self.refill();
                    empty.insert(live)
                }
                None => {
                    self.refill();
                    return Err(PolicyFailure::Warming);
                }
            },
        };
        let result = self.call(live, members, req, states, self.sandbox.timeout);
        if dead(&result) {
            // A trapped instance cannot be entered again.
            slot.live = None;
            self.refill();
        }
        result
    }

    /// A WASI policy's call runs outside the worker (`block_in_place`), on
    /// whichever thread that leaves it: instances are taken from the shared
    /// pool for the call and put back after, rather than kept per thread.
    fn select_pooled(
        self: &Arc<Self>,
        members: &Members,
        req: &RequestView,
        states: &[BackendState],
    ) -> Result<Decision, PolicyFailure> {
        let Some(mut live) = self.spares.pop() else {
            self.refill();
            return Err(PolicyFailure::Warming);
        };
        let result = self.call(&mut live, members, req, states, self.sandbox.timeout);
        if dead(&result) || self.spares.push(live).is_err() {
            self.refill();
        }
        result
    }
}

impl Policy for WasmPolicy {
    fn select(
        &self,
        req: &mut RequestView,
        states: &[BackendState],
    ) -> Result<Decision, PolicyFailure> {
        // WASI's synchronous host functions block on Tokio, which a runtime
        // worker may not do: step out of the worker for policies that
        // import WASI.
        if self.inner.compiled.wasi && on_runtime_worker() {
            tokio::task::block_in_place(|| self.inner.select_here(&self.members, req, states))
        } else {
            self.inner.select_here(&self.members, req, states)
        }
    }

    fn settle(&self, verdict: Result<(), &PolicyFailure>) {
        let (health, label) = (&self.inner.health, &self.inner.label);
        let cell = self
            .inner
            .instances
            .get_or(|| RefCell::new(Slot::default()));
        match cell.try_borrow_mut() {
            Ok(mut slot) => health.settle(label, &mut slot.record, verdict),
            Err(_) => health.settle(label, &mut Record::default(), verdict),
        }
    }

    fn observes(&self) -> bool {
        self.inner.outcome_log().is_some()
    }

    fn observe(&self, outcome: Observed) {
        if let Some(log) = self.inner.outcome_log() {
            log.push(outcome);
        }
    }

    fn watched_headers(&self) -> &[http::HeaderName] {
        self.inner.watched.get().map_or(&[], Vec::as_slice)
    }

    fn contract(&self) -> &'static str {
        self.inner.compiled.pre.contract()
    }

    fn update_to(
        &self,
        upstream: &UpstreamConfig,
        states: &[BackendState],
    ) -> Option<Result<Box<dyn Policy>, LoadError>> {
        if !self.can_update_to(upstream) {
            return None;
        }
        Some(WasmPolicy::update_to(self, upstream, states).map(|p| Box::new(p) as Box<dyn Policy>))
    }

    fn reloaded(
        &self,
        upstream: &UpstreamConfig,
        states: &[BackendState],
    ) -> Option<Result<Box<dyn Policy>, LoadError>> {
        Some(
            self.reload(upstream, states)
                .map(|p| Box::new(p) as Box<dyn Policy>),
        )
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn status(&self) -> PolicyStatus {
        let i = &self.inner;
        PolicyStatus {
            source: i.name.clone(),
            file: matches!(i.compiled.source, crate::config::PolicySource::File(_)),
            digest: i.compiled.digest.clone(),
            size: i.compiled.size,
            loaded_at: i.loaded_at,
            healthy: i.health.healthy(),
            consecutive_failures: i.health.consecutive(),
            memory: (i.sandbox.memory, i.limits.memory_from),
            timeout: (i.sandbox.timeout, i.limits.timeout_from),
            contract: i.compiled.pre.contract(),
            exports: i.compiled.pre.exports(),
        }
    }
}
