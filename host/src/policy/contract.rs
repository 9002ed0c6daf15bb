//! The two contracts a policy component may target, behind one face: what
//! is looked up when a component is compiled ([`Bound`]: 0.1's world, or
//! 0.2's exports, `observer` and `membership` each optional), a live
//! instance's exports ([`Exports`]), and the calls into them.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Component, InstancePre, Linker, Resource};

use super::api::{BackendState, Decision, Observed};
use super::bindings::v02::exports::switchyard::policy::{membership, observer, selector};
use super::bindings::v02::switchyard::policy::types as t02;
use super::bindings::{PolicyWorld, PolicyWorldPre, types as t01};
use super::host_impl::HostState;
use super::host_v02;
use crate::config::BackendConfig;

/// The export a 0.2 component is recognised by.
const SELECTOR_V02: &str = "switchyard:policy/selector@0.2.0";
const SELECTOR_V01: &str = "switchyard:policy/selector@0.1.0";

/// A compiled component bound to the contract it targets.
#[derive(Clone)]
pub enum Bound {
    /// `switchyard:policy@0.1.0`.
    V01(PolicyWorldPre<HostState>),
    /// `switchyard:policy@0.2.0`.
    V02(Box<V02Pre>),
}

/// A 0.2 component's exports, found before instantiation.
#[derive(Clone)]
pub struct V02Pre {
    pre: InstancePre<HostState>,
    selector: selector::GuestIndices,
    observer: Option<observer::GuestIndices>,
    membership: Option<membership::GuestIndices>,
}

impl Bound {
    /// Binds `component` through `linker`: 0.2 if it exports 0.2's
    /// selector, else 0.1. The error says what does not fit.
    pub fn new(linker: &Linker<HostState>, component: &Component) -> wasmtime::Result<Bound> {
        let pre = linker.instantiate_pre(component)?;
        let exports_v02 = component.get_export_index(None, SELECTOR_V02).is_some();
        if exports_v02 {
            return Ok(Bound::V02(Box::new(V02Pre {
                selector: selector::GuestIndices::new(&pre)?,
                observer: observer::GuestIndices::new(&pre).ok(),
                membership: membership::GuestIndices::new(&pre).ok(),
                pre,
            })));
        }
        if component.get_export_index(None, SELECTOR_V01).is_none() {
            wasmtime::bail!("it exports neither {SELECTOR_V02} nor {SELECTOR_V01}");
        }
        Ok(Bound::V01(PolicyWorldPre::new(pre)?))
    }

    /// `"0.1"` or `"0.2"`.
    pub fn contract(&self) -> &'static str {
        match self {
            Bound::V01(_) => "0.1",
            Bound::V02(_) => "0.2",
        }
    }

    /// The optional 0.2 exports present.
    pub fn exports(&self) -> Vec<&'static str> {
        match self {
            Bound::V01(_) => Vec::new(),
            Bound::V02(p) => [
                p.observer.as_ref().map(|_| "observer"),
                p.membership.as_ref().map(|_| "membership"),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }

    /// Whether it exports `observer`.
    pub fn observes(&self) -> bool {
        matches!(self, Bound::V02(p) if p.observer.is_some())
    }

    /// Whether it exports `membership`.
    pub fn updates(&self) -> bool {
        matches!(self, Bound::V02(p) if p.membership.is_some())
    }

    /// The engine it was compiled for.
    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            Bound::V01(p) => p.engine(),
            Bound::V02(p) => p.pre.engine(),
        }
    }

    /// A new instance in `store`.
    pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Exports> {
        match self {
            Bound::V01(p) => Ok(Exports::V01(p.instantiate(store)?)),
            Bound::V02(p) => {
                let instance = p.pre.instantiate(&mut *store)?;
                Ok(Exports::V02(Box::new(V02Exports {
                    selector: p.selector.load(&mut *store, &instance)?,
                    observer: match &p.observer {
                        Some(o) => Some(o.load(&mut *store, &instance)?),
                        None => None,
                    },
                    membership: match &p.membership {
                        Some(m) => Some(m.load(&mut *store, &instance)?),
                        None => None,
                    },
                })))
            }
        }
    }
}

/// A live instance's exports.
pub enum Exports {
    /// A 0.1 instance.
    V01(PolicyWorld),
    /// A 0.2 instance.
    V02(Box<V02Exports>),
}

/// A live 0.2 instance's exports.
pub struct V02Exports {
    selector: selector::Guest,
    observer: Option<observer::Guest>,
    membership: Option<membership::Guest>,
}

/// A group's backends as each contract describes them, and the names the
/// outcomes refer to; a new generation on each membership change.
#[derive(Debug)]
pub struct Members {
    /// Bumped by every membership change.
    pub generation: u64,
    /// Backend names, in order.
    pub names: Vec<Arc<str>>,
    v01: Vec<t01::Backend>,
    v02: Vec<t02::Backend>,
}

impl Members {
    /// The backends of a group, as generation `generation`.
    pub fn new(generation: u64, backends: &[BackendConfig]) -> Members {
        Members {
            generation,
            names: backends
                .iter()
                .map(|b| Arc::from(b.name.as_str()))
                .collect(),
            v01: backends
                .iter()
                .map(|b| t01::Backend {
                    name: b.name.clone(),
                    address: b.address.clone(),
                    weight: b.weight,
                })
                .collect(),
            v02: backends
                .iter()
                .map(|b| t02::Backend {
                    name: b.name.clone(),
                    address: b.address.clone(),
                    weight: b.weight,
                    backup: b.backup,
                    tags: b.tags.clone(),
                })
                .collect(),
        }
    }

    /// How many backends.
    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// What a 0.2 instance was last given as `health`, so that `select` gets
/// the list only when it changed.
#[derive(Default)]
pub struct LastHealth(Option<Vec<t02::BackendHealth>>);

impl LastHealth {
    /// Forget it: the next `select` gets the whole list.
    pub fn reset(&mut self) {
        self.0 = None;
    }
}

fn health(s: &BackendState) -> t02::BackendHealth {
    t02::BackendHealth {
        healthy: s.healthy,
        healthy_since_ns: s.healthy_since_ns,
        consecutive_failures: s.consecutive_failures,
    }
}

/// The health list to send: `None` when it equals the last one sent.
fn changed<'a>(
    last: &'a mut LastHealth,
    states: &[BackendState],
) -> Option<&'a [t02::BackendHealth]> {
    let same = last.0.as_ref().is_some_and(|l| {
        l.len() == states.len()
            && l.iter().zip(states).all(|(a, s)| {
                a.healthy == s.healthy
                    && a.healthy_since_ns == s.healthy_since_ns
                    && a.consecutive_failures == s.consecutive_failures
            })
    });
    if same {
        return None;
    }
    let list = last.0.get_or_insert_with(Vec::new);
    list.clear();
    list.extend(states.iter().map(health));
    Some(list)
}

/// What one `select` call came to: the decision, or the policy's error.
pub type Selected = wasmtime::Result<Result<Decision, String>>;

impl Exports {
    /// `configure` with the group's config and backends.
    pub fn configure(
        &self,
        store: &mut Store<HostState>,
        config: &Vec<(String, String)>,
        members: &Members,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Exports::V01(w) => {
                w.switchyard_policy_selector()
                    .call_configure(store, config, &members.v01)
            }
            Exports::V02(e) => {
                store.data_mut().v02.configuring = true;
                let r = e.selector.call_configure(&mut *store, config, &members.v02);
                store.data_mut().v02.configuring = false;
                r
            }
        }
    }

    /// `select` for the request lent to `store`, with the backends'
    /// `states`; `scratch` and `last` are the instance's buffers.
    pub fn select(
        &self,
        store: &mut Store<HostState>,
        states: &[BackendState],
        scratch: &mut Vec<t01::BackendState>,
        last: &mut LastHealth,
    ) -> Selected {
        match self {
            Exports::V01(w) => {
                scratch.clear();
                scratch.extend(states.iter().map(|s| t01::BackendState {
                    healthy: s.healthy,
                    in_flight: s.in_flight,
                    latency_ewma_us: s.latency_ewma_us,
                }));
                let answer = w.switchyard_policy_selector().call_select(
                    &mut *store,
                    Resource::new_borrow(0),
                    scratch,
                )?;
                Ok(answer.map(|d| Decision {
                    backend: d.backend,
                    set_cookie: d.set_cookie.map(|c| Box::new(cookie_v01(c))),
                    ..Decision::default()
                }))
            }
            Exports::V02(e) => {
                let data = store.data_mut();
                data.v02.loads.clear();
                data.v02
                    .loads
                    .extend(states.iter().map(|s| (s.in_flight, s.latency_ewma_us)));
                data.v02.in_select = true;
                let health = changed(last, states);
                let answer = e.selector.call_select(&mut *store, health);
                let data = store.data_mut();
                data.v02.in_select = false;
                let effects = std::mem::take(&mut data.v02.effects);
                if answer.is_err() {
                    // A trap: whatever it was given is suspect.
                    last.reset();
                }
                Ok(answer?.map(|backend| Decision {
                    backend,
                    set_cookie: effects.cookie,
                    fallbacks: effects.fallbacks,
                    reason: effects.reason,
                }))
            }
        }
    }

    /// `observe` with `outcomes`, if the instance observes.
    pub fn observe(
        &self,
        store: &mut Store<HostState>,
        outcomes: &[t02::Outcome],
    ) -> wasmtime::Result<()> {
        match self {
            Exports::V02(e) => match &e.observer {
                Some(o) if !outcomes.is_empty() => o.call_observe(store, outcomes),
                _ => Ok(()),
            },
            Exports::V01(_) => Ok(()),
        }
    }

    /// `update` with the new members; `Ok(Err)` when the instance cannot
    /// (or does not export `membership`).
    pub fn update(
        &self,
        store: &mut Store<HostState>,
        members: &Members,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Exports::V02(e) => match &e.membership {
                Some(m) => m.call_update(store, &members.v02),
                None => Ok(Err("it does not export membership".into())),
            },
            Exports::V01(_) => Ok(Err("a 0.1 policy has no membership updates".into())),
        }
    }
}

fn cookie_v01(c: t01::SetCookie) -> super::api::CookieSpec {
    host_v02::cookie_spec(t02::SetCookie {
        name: c.name,
        value: c.value,
        path: c.path,
        domain: None,
        max_age: c.max_age,
        http_only: c.http_only,
        secure: c.secure,
        same_site: c.same_site.map(|s| match s {
            t01::SameSite::Strict => t02::SameSite::Strict,
            t01::SameSite::Lax => t02::SameSite::Lax,
            t01::SameSite::None => t02::SameSite::None,
        }),
    })
}

/// An outcome as a 0.2 instance is told it: `None` when its backend is
/// not (any more) one of `members`.
pub fn outcome_for(o: &Observed, members: &Members) -> Option<t02::Outcome> {
    use super::api::AttemptFailure as F;
    let backend = members.names.iter().position(|n| *n == o.backend)? as u32;
    let result = match (o.failure, o.status) {
        (Some(f), _) => t02::AttemptResult::Failed(match f {
            F::ConnectFailed => t02::Failure::ConnectFailed,
            F::ConnectTimeout => t02::Failure::ConnectTimeout,
            F::ConnectionLost => t02::Failure::ConnectionLost,
            F::ResponseTimeout => t02::Failure::ResponseTimeout,
            F::ReadTimeout => t02::Failure::ReadTimeout,
            F::BodyBroken => t02::Failure::BodyBroken,
            F::Protocol => t02::Failure::Protocol,
            F::Busy => t02::Failure::Busy,
            F::TooLarge => t02::Failure::TooLarge,
            F::ClientGone => t02::Failure::ClientGone,
        }),
        (None, Some(status)) => t02::AttemptResult::Response(status),
        (None, None) => t02::AttemptResult::Failed(t02::Failure::ConnectionLost),
    };
    Some(t02::Outcome {
        backend,
        attempt: o.attempt,
        result,
        headers_us: o.headers_us,
        body_us: o.body_us,
        ended_ns: o.ended_ns,
        headers: o.headers.clone(),
    })
}
