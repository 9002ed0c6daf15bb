//! A loaded policy: a compiled component configured for one upstream group,
//! with one live instance per worker thread.
//!
//! Instances are created lazily on each thread from the pre-instantiated
//! component and reused for every request on that thread, so the request
//! path takes no lock. An instance that traps is dropped and the next
//! request on that thread gets a fresh one.

use std::cell::RefCell;
use std::sync::Arc;

use thread_local::ThreadLocal;
use wasmtime::Store;
use wasmtime::component::Resource;

use super::bindings::{PolicyWorld, types};
use super::engine::Compiled;
use super::host_impl::HostState;
use super::shared::SharedState;
use super::{BackendState, Decision, LoadError, Policy, PolicyFailure, RequestView, describe};
use crate::config::BackendConfig;

/// A component policy configured for one upstream group.
pub struct WasmPolicy {
    compiled: Compiled,
    name: String,
    label: Arc<str>,
    shared: Arc<SharedState>,
    config: Vec<(String, String)>,
    backends: Vec<types::Backend>,
    instances: ThreadLocal<RefCell<Option<Live>>>,
}

/// One instance, owned by one thread.
struct Live {
    store: Store<HostState>,
    world: PolicyWorld,
    /// Reused buffer for the per-request backend states.
    scratch: Vec<types::BackendState>,
}

impl WasmPolicy {
    /// Configures `compiled` for an upstream group and checks, on a first
    /// instance, that it instantiates and accepts its configuration.
    pub fn load(
        compiled: Compiled,
        upstream: &str,
        config: &[(String, String)],
        backends: &[BackendConfig],
        shared: Arc<SharedState>,
    ) -> Result<WasmPolicy, LoadError> {
        let name = compiled.source.to_string();
        let policy = WasmPolicy {
            label: format!("{upstream}/{name}").into(),
            name,
            compiled,
            shared,
            config: config.to_vec(),
            backends: backends
                .iter()
                .map(|b| types::Backend {
                    name: b.name.clone(),
                    address: b.address.clone(),
                    weight: b.weight,
                })
                .collect(),
            instances: ThreadLocal::new(),
        };
        policy.instantiate()?;
        Ok(policy)
    }

    /// Where the policy came from.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    fn instantiate(&self) -> Result<Live, LoadError> {
        let what = || self.name.clone();
        let mut store = Store::new(
            self.compiled.pre.engine(),
            HostState::new(self.shared.clone(), self.label.clone()),
        );
        let world = self
            .compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| LoadError::Trap {
                what: what(),
                reason: describe(&e),
            })?;
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
}

impl Policy for WasmPolicy {
    fn select(
        &self,
        req: &mut RequestView,
        states: &[BackendState],
    ) -> Result<Decision, PolicyFailure> {
        let cell = self.instances.get_or(|| RefCell::new(None));
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return Err(PolicyFailure::Unavailable(
                "re-entered on one thread".into(),
            ));
        };
        let live = match &mut *slot {
            Some(live) => live,
            empty => empty.insert(
                self.instantiate()
                    .map_err(|e| PolicyFailure::Unavailable(e.to_string()))?,
            ),
        };
        live.scratch.clear();
        live.scratch
            .extend(states.iter().map(|s| types::BackendState {
                healthy: s.healthy,
                in_flight: s.in_flight,
                latency_ewma_us: s.latency_ewma_us,
            }));
        std::mem::swap(&mut live.store.data_mut().request, req);
        let result = live.world.switchyard_policy_selector().call_select(
            &mut live.store,
            Resource::new_borrow(0),
            &live.scratch,
        );
        std::mem::swap(&mut live.store.data_mut().request, req);
        match result {
            Err(trap) => {
                // A trapped instance cannot be entered again.
                *slot = None;
                Err(PolicyFailure::Trap(describe(&trap)))
            }
            Ok(Err(message)) => Err(PolicyFailure::Error(message)),
            Ok(Ok(decision)) => check(decision, states),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Accepts a decision only if it names a healthy backend and a valid cookie.
fn check(decision: types::Decision, states: &[BackendState]) -> Result<Decision, PolicyFailure> {
    let index = decision.backend;
    match states.get(index as usize) {
        None => return Err(PolicyFailure::OutOfRange(index)),
        Some(s) if !s.healthy => return Err(PolicyFailure::Unhealthy(index)),
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
        assert_eq!(check(d(1), &states), Err(PolicyFailure::Unhealthy(1)));
        assert_eq!(
            check(d(9999), &states),
            Err(PolicyFailure::OutOfRange(9999))
        );
    }
}
