//! Write a Switchyard load-balancing policy in Rust.
//!
//! A policy is a WebAssembly component that the proxy calls once per
//! attempt to choose a backend (a retry calls it again, with the backends
//! already tried marked unhealthy). `wit/` at the top of the repository is
//! the complete contract, `switchyard:policy@0.2.0`; its `world.wit` says
//! what the limits are and what a failure does. This crate hides the
//! generated bindings: implement [`Policy`] for a type and name it in
//! [`export_policy!`]; implement [`Adaptive`] too and use
//! [`export_adaptive_policy!`] to see the outcome of every attempt and keep
//! state across membership changes.
//!
//! ```ignore
//! use switchyard_policy_sdk::{export_policy, Backend, BackendHealth, Config, Decision, Policy, Request};
//!
//! struct First;
//!
//! impl Policy for First {
//!     fn configure(config: &Config, _backends: &[Backend]) -> Result<Self, String> {
//!         config.expect_keys(&[])?;
//!         Ok(First)
//!     }
//!     fn select(&mut self, _req: &Request, health: &[BackendHealth]) -> Result<Decision, String> {
//!         switchyard_policy_sdk::first_healthy(health)
//!             .map(Decision::to)
//!             .ok_or_else(|| "no healthy backend".to_string())
//!     }
//! }
//!
//! export_policy!(First);
//! ```
//!
//! Build it for `wasm32-unknown-unknown` and turn the core module into a
//! component with `switchyard policy componentize` (or `wasm-tools
//! component new`); the result imports nothing but the proxy's own
//! interfaces. `switchyard policy new --lang rust NAME` sets all of that up.
//!
//! # What is here
//!
//! - [`Policy`], [`Adaptive`], [`export_policy!`] and
//!   [`export_adaptive_policy!`]: the policy itself.
//! - [`Request`]: the request being decided; [`Decision`]: the answer, with
//!   a cookie, ranked fallbacks and a reason.
//! - [`Config`]: the `policy-config` table, with typed reads and a check
//!   for unknown keys.
//! - Choosing: [`nth_healthy`] and [`nth_where`] (round-robin over healthy
//!   backends, or any subset, from a shared [`Counter`]),
//!   [`WeightedSchedule`] (nginx's smooth weighted round-robin),
//!   [`ConsistentHash`] (weighted rendezvous hashing of a key such as the
//!   client address), [`p2c`] (power of two choices), [`ranked_by`]
//!   (fallbacks in order of a cost), [`Ewma`] (a moving average with time
//!   decay, plain or peak), [`Maglev`] (Maglev consistent hashing),
//!   [`weighted_random`], [`healthy_mask`] and [`first_healthy`].
//! - [`Steering`]: what every built-in adds to its own choice, from
//!   `policy-config`: outlier ejection (`eject-after`), zone preference
//!   (`prefer-zone`) and slow start (`slow-start`).
//! - Sticky sessions: [`CookieRouter`] (cookie values every proxy agrees
//!   on) and [`CookieSpec`] (the cookie's name and attributes from
//!   `policy-config`).
//! - Host state and services: [`Counter`], [`kv_get`], [`kv_set`],
//!   [`kv_delete`], [`load`] and [`loads`] (backends' in-flight requests and
//!   latency),
//!   [`random_u64`], [`now_ns`], [`zone`], [`watch_response_header`],
//!   [`log`].
//! - [`testing`]: a test double of the proxy, so `cargo test` runs a
//!   policy's `select` and `observe` natively.
//!
//! # Instances and state
//!
//! The proxy runs one instance of the policy per worker thread and may
//! replace an instance at any time (after a trap, on a hot swap, on a
//! reload); each new instance gets its own [`Policy::configure`]. Keep in
//! `self` only what `configure` (and `observe`) can rebuild; put what must
//! be shared or survive in a [`Counter`] or the key-value store, which the
//! proxy keeps per upstream group, in memory: nothing survives a restart of
//! the proxy or crosses to another proxy process. `configure` must be
//! deterministic (every instance must agree), and a dry run before a policy
//! goes into service calls it and `select` on a copy of the counters and an
//! empty key-value store, whose writes are thrown away.
//!
//! # Limits and failure
//!
//! Each call runs under a deadline (default 1 ms) and each instance under a
//! memory cap (default 4 MiB); a config or the component itself
//! (`switchyard policy limits`) may ask for more. A policy cannot fail a
//! request: an `Err`, a trap, a timeout or an unhealthy or out-of-range
//! answer sends the request through the proxy's round-robin fallback and
//! is counted; after repeated failures the policy is skipped, with probes,
//! until it succeeds again.

#![warn(missing_docs)]

// The generated bindings name this crate by its public path.
extern crate self as switchyard_policy_sdk;

mod choose;
mod config;
mod hash;
mod maglev;
mod steer;
mod sticky;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod weighted;

pub use choose::{Ewma, p2c, ranked_by};
pub use config::Config;
pub use hash::{ConsistentHash, hash64};
pub use maglev::Maglev;
pub use steer::{
    SLOW_START_KEYS, STEERING_KEYS, Steered, Steering, backend_failed, unit_random, weighted_random,
};
pub use sticky::{CookieRouter, CookieSpec, cookie_token};
pub use weighted::{WeightedSchedule, smooth_weighted_sequence};

/// Generated bindings for the `switchyard:policy/policy` world: the
/// imports every policy uses, and the world's type information (always
/// linked in, so a plain policy's component targets that world).
///
/// Most policies need only the re-exports at the crate root.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../../wit",
        additional_derives: [PartialEq, Eq],
        runtime_path: "switchyard_policy_sdk::__private::wit_bindgen::rt",
    });
}

/// Generated bindings for the `switchyard:policy/adaptive-policy` world:
/// its exports, which both export macros use (a plain policy only
/// `selector`); the imports are [`bindings`]'.
#[allow(missing_docs, clippy::all)]
pub mod adaptive_bindings {
    wit_bindgen::generate!({
        world: "adaptive-policy",
        path: "../../wit",
        with: {
            "switchyard:policy/types@0.2.0": crate::bindings::switchyard::policy::types,
            "switchyard:policy/request@0.2.0": crate::bindings::switchyard::policy::request,
            "switchyard:policy/decision@0.2.0": crate::bindings::switchyard::policy::decision,
            "switchyard:policy/host@0.2.0": crate::bindings::switchyard::policy::host,
        },
        pub_export_macro: true,
        default_bindings_module: "switchyard_policy_sdk::adaptive_bindings",
        runtime_path: "switchyard_policy_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use crate::BackendHealth;
    use std::cell::RefCell;

    std::thread_local! {
        /// The backends' health as last given to `select`.
        pub static HEALTH: RefCell<Vec<BackendHealth>> = const { RefCell::new(Vec::new()) };
    }

    /// Keeps `health` when the proxy sent it (it changed), then runs `f`
    /// with the current list.
    pub fn with_health<T>(
        health: Option<Vec<BackendHealth>>,
        f: impl FnOnce(&[BackendHealth]) -> T,
    ) -> T {
        HEALTH.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(new) = health {
                *h = new;
            }
            f(&h)
        })
    }

    /// Adds a decision's extras through the `decision` imports; its index.
    pub fn answer(d: crate::Decision) -> u32 {
        if let Some(c) = &d.cookie {
            crate::sys::set_cookie(c);
        }
        if !d.fallbacks.is_empty() {
            crate::sys::fallbacks(&d.fallbacks);
        }
        if let Some(r) = &d.reason {
            crate::sys::reason(r);
        }
        d.backend
    }
}

pub use bindings::switchyard::policy::host::LogLevel;
pub use bindings::switchyard::policy::types::{
    AttemptResult, Backend, BackendHealth, BackendLoad, Failure, Outcome, SameSite, SetCookie,
};

/// The request being decided. Its methods ask the proxy, so a policy pays
/// only for what it reads.
#[derive(Debug, Clone, Copy)]
pub struct Request(());

impl Request {
    /// The request `select` is deciding (each call reads it afresh).
    pub fn current() -> Request {
        Request(())
    }
    /// The method, upper case: `GET`, `POST`...
    pub fn method(&self) -> String {
        sys::method()
    }
    /// The path, without the query string, as sent.
    pub fn path(&self) -> String {
        sys::path()
    }
    /// The query string without `?`.
    pub fn query(&self) -> Option<String> {
        sys::query()
    }
    /// The host the client asked for, without port.
    pub fn host(&self) -> Option<String> {
        sys::host_name()
    }
    /// `http` or `https`.
    pub fn scheme(&self) -> String {
        sys::scheme()
    }
    /// The client's address (after trusted `X-Forwarded-For`).
    pub fn client_ip(&self) -> String {
        sys::client_ip()
    }
    /// A header's values joined with `, `, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<String> {
        sys::header(name)
    }
    /// A cookie by exact name.
    pub fn cookie(&self, name: &str) -> Option<String> {
        sys::cookie(name)
    }
    /// 1 for a first attempt, 2 for the first retry...
    pub fn attempt(&self) -> u32 {
        sys::attempt()
    }
}

/// A policy's answer: a backend index, and optionally a cookie to set,
/// backends to try next if it cannot be reached, and a short reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the chosen backend (healthy).
    pub backend: u32,
    /// A cookie for the response.
    pub cookie: Option<SetCookie>,
    /// More backends, best first, for the proxy to try before asking again.
    pub fallbacks: Vec<u32>,
    /// Why, in a few words, for the operator.
    pub reason: Option<String>,
}

impl Decision {
    /// A decision for backend `index` with nothing else.
    pub fn to(index: usize) -> Self {
        Decision {
            backend: index as u32,
            cookie: None,
            fallbacks: Vec::new(),
            reason: None,
        }
    }

    /// With a cookie on the response.
    pub fn with_cookie(mut self, cookie: SetCookie) -> Self {
        self.cookie = Some(cookie);
        self
    }

    /// With backends to try next, best first.
    pub fn with_fallbacks(mut self, fallbacks: impl IntoIterator<Item = usize>) -> Self {
        self.fallbacks = fallbacks.into_iter().map(|i| i as u32).collect();
        self
    }

    /// With a reason.
    pub fn because(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_string());
        self
    }
}

/// A load-balancing policy: the one trait a policy author implements.
///
/// The proxy creates an instance per worker thread (and replaces instances
/// at will), calls [`Policy::configure`] once per instance, then
/// [`Policy::select`] once per attempt. State that must be shared between
/// instances or survive a hot swap belongs in a [`Counter`] or the
/// key-value store ([`kv_get`], [`kv_set`]), not in `self`.
pub trait Policy: Sized + 'static {
    /// Checks the upstream's `policy-config` and builds the policy.
    ///
    /// `backends` is the upstream group in configuration order; `select`
    /// answers with indices into it. An `Err` refuses the configuration and
    /// its message is shown to the operator as is.
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String>;

    /// Chooses a backend for `req`. `health[i]` is the health of the
    /// `i`-th backend; at least one is healthy ([`load`] tells a backend's
    /// in-flight requests and latency). An `Err` makes the proxy use its
    /// fallback for this request.
    fn select(&mut self, req: &Request, health: &[BackendHealth]) -> Result<Decision, String>;
}

/// A policy that learns: it sees the outcome of every attempt of its
/// upstream group, and may keep its state when the group's backends
/// change.
pub trait Adaptive: Policy {
    /// The outcomes of attempts that ended since the last call, oldest
    /// first (`outcome.backend` indexes the current backends). Runs just
    /// before a `select`, under the same deadline: keep it short.
    fn observe(&mut self, outcomes: &[Outcome]);

    /// The group's backends changed (a reload): from now on indices refer
    /// to `backends`. Keep what is known about backends by name. The
    /// default refuses, and the proxy configures a fresh instance instead.
    fn update(&mut self, backends: &[Backend]) -> Result<(), String> {
        let _ = backends;
        Err("this policy is configured anew when its backends change".into())
    }
}

/// A shared 64-bit counter of the upstream group (see `host.wit`): every
/// instance that opens the same name shares the number.
#[derive(Debug, Clone, Copy)]
pub struct Counter(u32);

impl Counter {
    /// Opens (creating at 0) the group's counter `name`. Open counters in
    /// `configure` and keep them.
    pub fn new(name: &str) -> Counter {
        Counter(sys::counter(name))
    }
    /// Adds `delta`; the value from before.
    pub fn fetch_add(&self, delta: u64) -> u64 {
        sys::counter_add(self.0, delta)
    }
    /// The value.
    pub fn get(&self) -> u64 {
        sys::counter_get(self.0)
    }
    /// Replaces the value.
    pub fn set(&self, value: u64) {
        sys::counter_set(self.0, value)
    }
}

/// Backend `index`'s in-flight requests and latency average now.
pub fn load(index: usize) -> BackendLoad {
    sys::load(index as u32)
}

/// Every backend's load, in index order (one call to the proxy).
pub fn loads() -> Vec<BackendLoad> {
    sys::loads()
}

/// A value from the group's key-value store.
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    sys::kv_get(key)
}

/// Stores a value in the group's key-value store (see `host.wit` for the
/// limits).
pub fn kv_set(key: &str, value: &[u8]) -> Result<(), String> {
    sys::kv_set(key, value)
}

/// Removes a key; whether it was there.
pub fn kv_delete(key: &str) -> bool {
    sys::kv_delete(key)
}

/// A random number (fast, not cryptographic).
pub fn random_u64() -> u64 {
    sys::random_u64()
}

/// Monotonic nanoseconds since the proxy started.
pub fn now_ns() -> u64 {
    sys::now_ns()
}

/// The proxy's zone (`[server] zone`), if configured.
pub fn zone() -> Option<String> {
    sys::zone()
}

/// Asks for response header `name` in every [`Outcome`] (call it in
/// `configure`; at most 16).
pub fn watch_response_header(name: &str) {
    sys::watch_response_header(name)
}

/// Tells the proxy this configuration does not need [`Adaptive::observe`]
/// calls (call it in `configure`): no outcomes are kept or delivered.
pub fn ignore_outcomes() {
    sys::ignore_outcomes()
}

/// A line in the proxy's log (rate-limited).
pub fn log(level: LogLevel, message: &str) {
    sys::log(level, message)
}

/// Index of the `n`-th healthy backend, counting modulo the number of
/// healthy ones: round-robin over healthy backends when `n` is a shared
/// counter. `None` when none is healthy.
pub fn nth_healthy(backends: &[BackendHealth], n: u64) -> Option<usize> {
    nth_where(backends, n, |_, b| b.healthy)
}

/// Index of the `n`-th backend (modulo their number) for which `keep(i,
/// state)` holds: round-robin over any subset. `None` when none does.
pub fn nth_where(
    backends: &[BackendHealth],
    n: u64,
    keep: impl Fn(usize, &BackendHealth) -> bool,
) -> Option<usize> {
    let count = backends
        .iter()
        .enumerate()
        .filter(|(i, b)| keep(*i, b))
        .count() as u64;
    if count == 0 {
        return None;
    }
    backends
        .iter()
        .enumerate()
        .filter(|(i, b)| keep(*i, b))
        .nth((n % count) as usize)
        .map(|(i, _)| i)
}

/// Index of the first healthy backend, if any.
pub fn first_healthy(backends: &[BackendHealth]) -> Option<usize> {
    backends.iter().position(|b| b.healthy)
}

/// Bit mask of healthy backends (bit `i` for backend `i`), or `None` when the
/// group has more than 64 backends.
pub fn healthy_mask(backends: &[BackendHealth]) -> Option<u64> {
    if backends.len() > 64 {
        return None;
    }
    Some(
        backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.healthy)
            .fold(0u64, |m, (i, _)| m | (1 << i)),
    )
}

/// Makes a type that implements [`Policy`] the component's exported policy
/// (world `switchyard:policy/policy`).
///
/// Use it once per crate, at the top level: `export_policy!(MyPolicy);`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        $crate::__export_selector!($policy);
        $crate::__export_switchyard_policy_selector_0_2_0_cabi!(
            __SwitchyardPolicyExport with_types_in $crate::adaptive_bindings::exports::switchyard::policy::selector
        );
    };
}

/// Makes a type that implements [`Adaptive`] the component's exported
/// policy (world `switchyard:policy/adaptive-policy`: it also observes
/// outcomes and takes membership updates).
#[macro_export]
macro_rules! export_adaptive_policy {
    ($policy:ty) => {
        $crate::__export_selector!($policy);

        impl $crate::adaptive_bindings::exports::switchyard::policy::observer::Guest
            for __SwitchyardPolicyExport
        {
            fn observe(outcomes: ::std::vec::Vec<$crate::Outcome>) {
                __SWITCHYARD_POLICY.with(|slot| {
                    if let Some(policy) = slot.borrow_mut().as_mut() {
                        $crate::Adaptive::observe(policy, &outcomes);
                    }
                })
            }
        }

        impl $crate::adaptive_bindings::exports::switchyard::policy::membership::Guest
            for __SwitchyardPolicyExport
        {
            fn update(
                backends: ::std::vec::Vec<$crate::Backend>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                __SWITCHYARD_POLICY.with(|slot| match slot.borrow_mut().as_mut() {
                    Some(policy) => $crate::Adaptive::update(policy, &backends),
                    None => Err("update called before configure".to_string()),
                })
            }
        }

        $crate::adaptive_bindings::export!(__SwitchyardPolicyExport);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_selector {
    ($policy:ty) => {
        #[doc(hidden)]
        struct __SwitchyardPolicyExport;

        ::std::thread_local! {
            static __SWITCHYARD_POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        impl $crate::adaptive_bindings::exports::switchyard::policy::selector::Guest
            for __SwitchyardPolicyExport
        {
            fn configure(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                backends: ::std::vec::Vec<$crate::Backend>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                let config = $crate::Config::new(config);
                let policy = <$policy as $crate::Policy>::configure(&config, &backends)?;
                __SWITCHYARD_POLICY.with(|slot| *slot.borrow_mut() = Some(policy));
                Ok(())
            }

            fn select(
                health: ::std::option::Option<::std::vec::Vec<$crate::BackendHealth>>,
            ) -> ::std::result::Result<u32, ::std::string::String> {
                $crate::__private::with_health(health, |health| {
                    __SWITCHYARD_POLICY.with(|slot| match slot.borrow_mut().as_mut() {
                        Some(policy) => {
                            $crate::Policy::select(policy, &$crate::Request::current(), health)
                                .map($crate::__private::answer)
                        }
                        None => Err("select called before configure".to_string()),
                    })
                })
            }
        }
    };
}

/// A `policy-config` of `pairs`, for the unit tests of every module.
#[cfg(test)]
pub(crate) fn test_config(pairs: &[(&str, &str)]) -> Config {
    Config::new(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Backend health for the unit tests of every module.
#[cfg(test)]
pub(crate) fn test_states(healthy: &[bool]) -> Vec<BackendHealth> {
    healthy
        .iter()
        .map(|&healthy| BackendHealth {
            healthy,
            healthy_since_ns: 1,
            consecutive_failures: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_states as states;

    #[test]
    fn nth_healthy_cycles_over_healthy_backends_only() {
        let s = states(&[true, false, true, true]);
        let picks: Vec<_> = (0..6).map(|n| nth_healthy(&s, n).unwrap()).collect();
        assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn nth_healthy_is_none_when_nothing_is_healthy() {
        assert_eq!(nth_healthy(&states(&[false, false]), 7), None);
        assert_eq!(nth_healthy(&[], 0), None);
    }

    #[test]
    fn healthy_mask_sets_one_bit_per_healthy_backend() {
        assert_eq!(healthy_mask(&states(&[true, false, true])), Some(0b101));
        assert_eq!(healthy_mask(&states(&[true; 65])), None);
    }
}
