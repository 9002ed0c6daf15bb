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
//! Its health is kept by [`super::health`].

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crossbeam_queue::ArrayQueue;
use thread_local::ThreadLocal;
use wasmtime::component::Resource;
use wasmtime::{Store, Trap};

use super::api::{
    BackendState, CookieSpec, Decision, LoadError, Policy, PolicyFailure, PolicyStatus,
    RequestView, SameSite, describe,
};
use super::bindings::{PolicyWorld, types};
use super::engine::{Compiled, PolicyEngine};
use super::health::{Health, Record};
use super::host_impl::{HostState, LogLimiter, monotonic_ns};
use super::limits::{self, Effective, effective};
use super::sandbox::{Ticker, deadline_ticks};
use super::shared::SharedState;
use crate::config::{SandboxConfig, UpstreamConfig};

/// Time allowed for the first instance of a load: instantiation,
/// `configure` and a first `select`, which may be slow (fresh memory, lazy
/// initialisation). Every later instance gets `policy-timeout`.
const FIRST_LOAD_DEADLINE: Duration = Duration::from_secs(2);

/// Spare instances kept ready once every worker thread has one.
const SPARES: usize = 1;

/// After a failed background instantiation, wait this long before the next.
const REFILL_BACKOFF: Duration = Duration::from_millis(250);

/// A component policy configured for one upstream group.
pub struct WasmPolicy {
    inner: Arc<Inner>,
}

struct Inner {
    compiled: Compiled,
    name: String,
    label: Arc<str>,
    shared: Arc<SharedState>,
    config: Vec<(String, String)>,
    backends: Vec<types::Backend>,
    sandbox: SandboxConfig,
    limits: Effective,
    ticker: Option<Ticker>,
    call_ticks: u64,
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
    world: PolicyWorld,
    /// Reused buffer for the per-request backend states.
    scratch: Vec<types::BackendState>,
}

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
        let name = compiled.source.to_string();
        let interpreted = limits::interpreted(compiled.wasi, compiled.size);
        let limits = effective(upstream.sandbox, compiled.requested, interpreted);
        let sandbox = limits.sandbox;
        let label: Arc<str> = format!("{}/{name}", upstream.name).into();
        let inner = Arc::new(Inner {
            logs: Arc::new(LogLimiter::new(label.clone())),
            label,
            name,
            compiled,
            shared,
            config: upstream.policy_config.clone(),
            backends: upstream
                .backends
                .iter()
                .map(|b| types::Backend {
                    name: b.name.clone(),
                    address: b.address.clone(),
                    weight: b.weight,
                })
                .collect(),
            sandbox,
            limits,
            ticker: engine.ticker().cloned(),
            call_ticks: deadline_ticks(sandbox.timeout),
            loaded_at: SystemTime::now(),
            instances: ThreadLocal::new(),
            spares: ArrayQueue::new(workers.max(1) + SPARES),
            refilling: AtomicBool::new(false),
            next_refill_ns: AtomicU64::new(0),
            health: Health::new(sandbox.max_failures),
        });
        inner.dry_run(states)?;
        while !inner.spares.is_full() {
            let live = inner.instantiate(inner.shared.clone(), sandbox.timeout)?;
            let _ = inner.spares.push(live);
        }
        Ok(WasmPolicy { inner })
    }

    /// Where the policy came from.
    pub fn compiled(&self) -> &Compiled {
        &self.inner.compiled
    }
}

impl Inner {
    fn dry_run(&self, states: &[BackendState]) -> Result<(), LoadError> {
        let first = deadline_ticks(FIRST_LOAD_DEADLINE);
        let mut live = self.instantiate(Arc::new(self.shared.snapshot()), FIRST_LOAD_DEADLINE)?;
        let mut req = RequestView::placeholder();
        req.parts.uri = http::Uri::from_static("/");
        let what = || self.name.clone();
        for ticks in [first, self.call_ticks] {
            if let Err(failure) = self.call(&mut live, &mut req, states, ticks) {
                let reason = match failure {
                    PolicyFailure::Timeout if ticks == self.call_ticks => format!(
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

    fn status_now(&self) -> PolicyStatus {
        PolicyStatus {
            source: self.name.clone(),
            file: matches!(self.compiled.source, crate::config::PolicySource::File(_)),
            digest: self.compiled.digest.clone(),
            size: self.compiled.size,
            loaded_at: self.loaded_at,
            healthy: self.health.healthy(),
            consecutive_failures: self.health.consecutive(),
            memory: (self.sandbox.memory, self.limits.memory_from),
            timeout: (self.sandbox.timeout, self.limits.timeout_from),
        }
    }

    /// Arms the deadline for the next guest call: `ticks` epochs from now.
    fn set_deadline(&self, store: &mut Store<HostState>, ticks: u64) {
        if let Some(t) = &self.ticker {
            t.enter();
            store.data_mut().deadline.reset();
            store.set_epoch_deadline(ticks);
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
        let ticks = deadline_ticks(limit);
        let timed_out = |e: &wasmtime::Error| {
            if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                format!("ran past its time limit ({limit:?}) while instantiating or in configure")
            } else {
                describe(e)
            }
        };
        let mut store = Store::new(
            self.compiled.pre.engine(),
            HostState::new(
                shared,
                self.label.clone(),
                self.sandbox.memory,
                self.logs.clone(),
            ),
        );
        store.limiter(|s| s as &mut dyn wasmtime::ResourceLimiter);
        if self.ticker.is_some() {
            store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().deadline.on_deadline()));
        }
        self.set_deadline(&mut store, ticks);
        let world = self
            .compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| LoadError::Trap {
                what: what(),
                reason: timed_out(&e),
            })?;
        self.set_deadline(&mut store, ticks);
        world
            .switchyard_policy_selector()
            .call_configure(&mut store, &self.config, &self.backends)
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
            world,
            scratch: Vec::with_capacity(self.backends.len()),
        })
    }

    /// One `select` on `live`, with the request lent to the store.
    fn call(
        &self,
        live: &mut Live,
        req: &mut RequestView,
        states: &[BackendState],
        ticks: u64,
    ) -> Result<Decision, PolicyFailure> {
        live.scratch.clear();
        live.scratch
            .extend(states.iter().map(|s| types::BackendState {
                healthy: s.healthy,
                in_flight: s.in_flight,
                latency_ewma_us: s.latency_ewma_us,
            }));
        self.set_deadline(&mut live.store, ticks);
        std::mem::swap(&mut live.store.data_mut().request, req);
        let Live {
            store,
            world,
            scratch,
        } = live;
        let call = || {
            world.switchyard_policy_selector().call_select(
                &mut *store,
                Resource::new_borrow(0),
                scratch,
            )
        };
        // A panic in a host function must not lose the request head lent
        // to the store.
        let result = catch_unwind(AssertUnwindSafe(call));
        std::mem::swap(&mut store.data_mut().request, req);
        match result {
            Err(panic) => Err(PolicyFailure::Trap(format!(
                "a host function panicked: {}",
                panic_message(&panic)
            ))),
            Ok(Err(e)) => Err(classify(&e, store.data().memory_exceeded)),
            Ok(Ok(Err(message))) => Err(PolicyFailure::Error(message)),
            Ok(Ok(Ok(d))) => Ok(Decision {
                backend: d.backend,
                set_cookie: d.set_cookie.map(cookie_spec),
            }),
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
        req: &mut RequestView,
        states: &[BackendState],
    ) -> Result<Decision, PolicyFailure> {
        if self.health.skip() {
            return Err(PolicyFailure::Skipped);
        }
        if self.compiled.wasi {
            return self.select_pooled(req, states);
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
        let result = self.call(live, req, states, self.call_ticks);
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
        req: &mut RequestView,
        states: &[BackendState],
    ) -> Result<Decision, PolicyFailure> {
        let Some(mut live) = self.spares.pop() else {
            self.refill();
            return Err(PolicyFailure::Warming);
        };
        let result = self.call(&mut live, req, states, self.call_ticks);
        if dead(&result) || self.spares.push(live).is_err() {
            self.refill();
        }
        result
    }
}

/// Whether a call left its instance unusable (a trapped instance cannot be
/// entered again).
fn dead(result: &Result<Decision, PolicyFailure>) -> bool {
    matches!(
        result,
        Err(PolicyFailure::Trap(_) | PolicyFailure::Timeout | PolicyFailure::Memory(_))
    )
}

/// Whether this thread is a worker of a multi-threaded Tokio runtime, the
/// only place `block_in_place` may (and must) be used.
fn on_runtime_worker() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Names what went wrong in a failed call.
fn classify(err: &wasmtime::Error, memory_exceeded: bool) -> PolicyFailure {
    if memory_exceeded {
        PolicyFailure::Memory(describe(err))
    } else if matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        PolicyFailure::Timeout
    } else {
        PolicyFailure::Trap(describe(err))
    }
}

fn cookie_spec(c: types::SetCookie) -> CookieSpec {
    CookieSpec {
        name: c.name,
        value: c.value,
        path: c.path,
        max_age: c.max_age,
        http_only: c.http_only,
        secure: c.secure,
        same_site: c.same_site.map(|s| match s {
            types::SameSite::Strict => SameSite::Strict,
            types::SameSite::Lax => SameSite::Lax,
            types::SameSite::None => SameSite::None,
        }),
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
            tokio::task::block_in_place(|| self.inner.select_here(req, states))
        } else {
            self.inner.select_here(req, states)
        }
    }

    fn settle(&self, verdict: Result<(), &PolicyFailure>) {
        let cell = self
            .inner
            .instances
            .get_or(|| RefCell::new(Slot::default()));
        match cell.try_borrow_mut() {
            Ok(mut slot) => self
                .inner
                .health
                .settle(&self.inner.label, &mut slot.record, verdict),
            Err(_) => self
                .inner
                .health
                .settle(&self.inner.label, &mut Record::default(), verdict),
        }
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn status(&self) -> PolicyStatus {
        self.inner.status_now()
    }
}
