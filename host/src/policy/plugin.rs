//! A loaded policy: a compiled component configured for one upstream group,
//! with one live instance per worker thread, run under the sandbox.
//!
//! Instances are created lazily on each thread from the pre-instantiated
//! component and reused for every request on that thread, so the request
//! path takes no lock. Every call has a deadline and every instance a
//! memory cap. An instance that traps (including running out of time or
//! memory) is dropped and the next request on that thread gets a fresh one.
//! After `max-failures` consecutive failures the policy is reported
//! unhealthy: requests then go to the fallback without calling it, except
//! one probe every [`PROBE_INTERVAL`], and the first success heals it.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use thread_local::ThreadLocal;
use wasmtime::component::Resource;
use wasmtime::{Store, Trap};

use super::bindings::{PolicyWorld, types};
use super::engine::{Compiled, PolicyEngine};
use super::host_impl::{HostState, monotonic_ns};
use super::sandbox::{Ticker, deadline_ticks};
use super::shared::SharedState;
use super::{
    BackendState, Decision, LoadError, Policy, PolicyFailure, PolicyStatus, RequestView, describe,
};
use crate::config::{SandboxConfig, UpstreamConfig};

/// How often an unhealthy policy is tried again.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Time allowed to instantiate an instance and run its `configure`.
const LOAD_DEADLINE: Duration = Duration::from_secs(2);

/// A component policy configured for one upstream group.
pub struct WasmPolicy {
    compiled: Compiled,
    name: String,
    label: Arc<str>,
    shared: Arc<SharedState>,
    config: Vec<(String, String)>,
    backends: Vec<types::Backend>,
    sandbox: SandboxConfig,
    ticker: Option<Ticker>,
    call_ticks: u64,
    loaded_at: SystemTime,
    instances: ThreadLocal<RefCell<Option<Live>>>,
    health: Health,
}

/// Consecutive failures and the unhealthy state.
#[derive(Debug, Default)]
struct Health {
    consecutive: AtomicU32,
    unhealthy: AtomicBool,
    next_probe_ns: AtomicU64,
}

/// One instance, owned by one thread.
struct Live {
    store: Store<HostState>,
    world: PolicyWorld,
    /// Reused buffer for the per-request backend states.
    scratch: Vec<types::BackendState>,
}

impl WasmPolicy {
    /// Configures `compiled` for an upstream group and proves it on a first
    /// instance: it must instantiate, accept its configuration, and answer
    /// a dry-run `select` for a plain `GET /` with `states` (the live
    /// backend states) with a usable decision. The dry run sees a copy of
    /// the group's counters, so it moves no round-robin position.
    pub fn load(
        engine: &PolicyEngine,
        compiled: Compiled,
        upstream: &UpstreamConfig,
        shared: Arc<SharedState>,
        states: &[BackendState],
    ) -> Result<WasmPolicy, LoadError> {
        let name = compiled.source.to_string();
        let sandbox = upstream.sandbox;
        let policy = WasmPolicy {
            label: format!("{}/{name}", upstream.name).into(),
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
            ticker: engine.ticker().cloned(),
            call_ticks: deadline_ticks(sandbox.timeout),
            loaded_at: SystemTime::now(),
            instances: ThreadLocal::new(),
            health: Health::default(),
        };
        let scratch = Arc::new(policy.shared.snapshot());
        let mut live = policy.instantiate(scratch)?;
        let mut req = RequestView::placeholder();
        req.parts.uri = http::Uri::from_static("/");
        let what = || policy.name.clone();
        // A first call may be slow (fresh memory, lazy initialisation): the
        // dry run checks the answer, not the speed.
        match policy.call(&mut live, &mut req, states, deadline_ticks(LOAD_DEADLINE)) {
            Ok(_) => Ok(policy),
            Err(failure) => Err(LoadError::DryRun {
                what: what(),
                reason: failure.to_string(),
            }),
        }
    }

    /// Where the policy came from.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    fn status_now(&self) -> PolicyStatus {
        PolicyStatus {
            source: self.name.clone(),
            file: matches!(self.compiled.source, crate::config::PolicySource::File(_)),
            digest: self.compiled.digest.clone(),
            size: self.compiled.size,
            loaded_at: self.loaded_at,
            healthy: !self.health.unhealthy.load(Ordering::Relaxed),
            consecutive_failures: self.health.consecutive.load(Ordering::Relaxed),
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

    fn instantiate(&self, shared: Arc<SharedState>) -> Result<Live, LoadError> {
        catch_unwind(AssertUnwindSafe(|| self.instantiate_inner(shared))).unwrap_or_else(|panic| {
            Err(LoadError::Trap {
                what: self.name.clone(),
                reason: format!("a host function panicked: {}", panic_message(&panic)),
            })
        })
    }

    fn instantiate_inner(&self, shared: Arc<SharedState>) -> Result<Live, LoadError> {
        let what = || self.name.clone();
        let mut store = Store::new(
            self.compiled.pre.engine(),
            HostState::new(shared, self.label.clone(), self.sandbox.memory),
        );
        store.limiter(|s| s as &mut dyn wasmtime::ResourceLimiter);
        if self.ticker.is_some() {
            store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().deadline.on_deadline()));
        }
        self.set_deadline(&mut store, deadline_ticks(LOAD_DEADLINE));
        let world = self
            .compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| LoadError::Trap {
                what: what(),
                reason: describe(&e),
            })?;
        self.set_deadline(&mut store, deadline_ticks(LOAD_DEADLINE));
        world
            .switchyard_policy_selector()
            .call_configure(&mut store, &self.config, &self.backends)
            .map_err(|e| LoadError::Trap {
                what: what(),
                reason: describe(&e),
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
            Ok(Ok(Ok(decision))) => check(decision, states),
        }
    }

    /// Whether this request should skip an unhealthy policy. One caller
    /// per probe interval gets to try it.
    fn skip(&self) -> bool {
        if !self.health.unhealthy.load(Ordering::Relaxed) {
            return false;
        }
        let now = monotonic_ns();
        let next = self.health.next_probe_ns.load(Ordering::Relaxed);
        now < next
            || self
                .health
                .next_probe_ns
                .compare_exchange(
                    next,
                    now + PROBE_INTERVAL.as_nanos() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
    }

    fn record(&self, result: &Result<Decision, PolicyFailure>) {
        match result {
            Ok(_) => {
                if self.health.consecutive.load(Ordering::Relaxed) != 0 {
                    self.health.consecutive.store(0, Ordering::Relaxed);
                    if self.health.unhealthy.swap(false, Ordering::Relaxed) {
                        tracing::info!(policy = %self.label, "policy is healthy again");
                    }
                }
            }
            Err(failure) => {
                let n = self.health.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= self.sandbox.max_failures
                    && !self.health.unhealthy.swap(true, Ordering::Relaxed)
                {
                    self.health.next_probe_ns.store(
                        monotonic_ns() + PROBE_INTERVAL.as_nanos() as u64,
                        Ordering::Relaxed,
                    );
                    tracing::warn!(
                        policy = %self.label,
                        "policy unhealthy after {n} consecutive failures (last: {failure}); \
                         requests use the fallback, the policy is retried every {PROBE_INTERVAL:?}"
                    );
                }
            }
        }
    }
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

impl Policy for WasmPolicy {
    fn select(
        &self,
        req: &mut RequestView,
        states: &[BackendState],
    ) -> Result<Decision, PolicyFailure> {
        // WASI's synchronous host functions block on Tokio, which a runtime
        // worker may not do: step out of the worker for policies that
        // import WASI (their instantiation too).
        if self.compiled.wasi && on_runtime_worker() {
            tokio::task::block_in_place(|| self.select_here(req, states))
        } else {
            self.select_here(req, states)
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn status(&self) -> PolicyStatus {
        self.status_now()
    }
}

impl WasmPolicy {
    fn select_here(
        &self,
        req: &mut RequestView,
        states: &[BackendState],
    ) -> Result<Decision, PolicyFailure> {
        if self.skip() {
            return Err(PolicyFailure::Skipped);
        }
        let cell = self.instances.get_or(|| RefCell::new(None));
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return Err(PolicyFailure::Unavailable(
                "re-entered on one thread".into(),
            ));
        };
        let live = match &mut *slot {
            Some(live) => live,
            empty => match self.instantiate(self.shared.clone()) {
                Ok(live) => empty.insert(live),
                Err(e) => {
                    let failure = PolicyFailure::Unavailable(e.to_string());
                    self.record(&Err(failure.clone()));
                    return Err(failure);
                }
            },
        };
        let result = self.call(live, req, states, self.call_ticks);
        if let Err(PolicyFailure::Trap(_) | PolicyFailure::Timeout | PolicyFailure::Memory(_)) =
            &result
        {
            // A trapped instance cannot be entered again.
            *slot = None;
        }
        self.record(&result);
        result
    }
}

/// Accepts a decision only if it names a healthy backend and a valid cookie.
fn check(decision: types::Decision, states: &[BackendState]) -> Result<Decision, PolicyFailure> {
    let index = decision.backend;
    match states.get(index as usize) {
        None => return Err(PolicyFailure::OutOfRange(index)),
        Some(s) if !s.healthy => return Err(PolicyFailure::UnhealthyChoice(index)),
        Some(_) => {}
    }
    let set_cookie = decision.set_cookie.map(render_cookie).transpose()?;
    Ok(Decision {
        backend: index as usize,
        set_cookie,
    })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 6265 cookie-octet: visible ASCII except `"`, `,`, `;`, `\`.
fn is_cookie_value(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

fn render_cookie(c: types::SetCookie) -> Result<http::HeaderValue, PolicyFailure> {
    if !is_token(&c.name) {
        return Err(PolicyFailure::BadCookie(format!("name {:?}", c.name)));
    }
    if !is_cookie_value(&c.value) {
        return Err(PolicyFailure::BadCookie(format!("value {:?}", c.value)));
    }
    let path = c.path.as_deref().unwrap_or("/");
    if path
        .bytes()
        .any(|b| b == b';' || !(0x20..0x7f).contains(&b))
    {
        return Err(PolicyFailure::BadCookie(format!("path {path:?}")));
    }
    let mut out = format!("{}={}; Path={path}", c.name, c.value);
    if let Some(age) = c.max_age {
        out.push_str(&format!("; Max-Age={age}"));
    }
    if c.http_only {
        out.push_str("; HttpOnly");
    }
    if c.secure {
        out.push_str("; Secure");
    }
    match c.same_site {
        Some(types::SameSite::Strict) => out.push_str("; SameSite=Strict"),
        Some(types::SameSite::Lax) => out.push_str("; SameSite=Lax"),
        Some(types::SameSite::None) => out.push_str("; SameSite=None"),
        None => {}
    }
    http::HeaderValue::from_str(&out).map_err(|_| PolicyFailure::BadCookie(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie(name: &str, value: &str) -> types::SetCookie {
        types::SetCookie {
            name: name.into(),
            value: value.into(),
            path: None,
            max_age: None,
            http_only: true,
            secure: false,
            same_site: Some(types::SameSite::Lax),
        }
    }

    fn state(healthy: bool) -> BackendState {
        BackendState {
            healthy,
            in_flight: 0,
            latency_ewma_us: 0,
        }
    }

    #[test]
    fn cookies_render_with_their_attributes() {
        let mut c = cookie("sy-backend", "abc123");
        c.max_age = Some(60);
        c.secure = true;
        let v = render_cookie(c).unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            "sy-backend=abc123; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax"
        );
    }

    #[test]
    fn cookies_that_could_inject_attributes_are_refused() {
        assert!(render_cookie(cookie("a b", "x")).is_err());
        assert!(render_cookie(cookie("a", "x; Domain=evil")).is_err());
        let mut c = cookie("a", "x");
        c.path = Some("/; Secure".into());
        assert!(render_cookie(c).is_err());
    }

    #[test]
    fn decisions_must_name_a_healthy_backend_in_range() {
        let states = [state(true), state(false)];
        let d = |backend| types::Decision {
            backend,
            set_cookie: None,
        };
        assert_eq!(check(d(0), &states).unwrap().backend, 0);
        assert_eq!(check(d(1), &states), Err(PolicyFailure::UnhealthyChoice(1)));
        assert_eq!(
            check(d(9999), &states),
            Err(PolicyFailure::OutOfRange(9999))
        );
    }
}
