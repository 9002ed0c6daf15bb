//! Write a Switchyard load-balancing policy in Rust.
//!
//! A policy is a WebAssembly component that the proxy calls once per
//! attempt to choose a backend (a retry calls it again, with the backends
//! already tried marked unhealthy). `wit/` at the top of the repository is
//! the complete contract; its `world.wit` says what the limits are and
//! what a failure does. This crate hides the generated bindings: implement [`Policy`]
//! for a type and name it in [`export_policy!`].
//!
//! ```ignore
//! use switchyard_policy_sdk::{export_policy, Backend, BackendState, Config, Decision, Policy, Request};
//!
//! struct First;
//!
//! impl Policy for First {
//!     fn configure(config: &Config, _backends: &[Backend]) -> Result<Self, String> {
//!         config.expect_keys(&[])?;
//!         Ok(First)
//!     }
//!     fn select(&mut self, _req: &Request, backends: &[BackendState]) -> Result<Decision, String> {
//!         switchyard_policy_sdk::first_healthy(backends)
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
//! - [`Policy`] and [`export_policy!`]: the policy itself.
//! - [`Config`]: the `policy-config` table, with typed reads and a check
//!   for unknown keys.
//! - Choosing: [`nth_healthy`] and [`nth_where`] (round-robin over healthy
//!   backends, or any subset, from a shared [`Counter`]),
//!   [`WeightedSchedule`] (nginx's smooth weighted round-robin),
//!   [`ConsistentHash`] (weighted rendezvous hashing of a key such as the
//!   client address), [`healthy_mask`] and [`first_healthy`].
//! - Sticky sessions: [`CookieRouter`] (cookie values every proxy agrees
//!   on) and [`CookieSpec`] (the cookie's name and attributes from
//!   `policy-config`).
//! - Host state and services: [`Counter`], [`kv_get`], [`kv_set`],
//!   [`kv_delete`], [`random_u64`], [`now_ns`], [`log`].
//!
//! # Instances and state
//!
//! The proxy runs one instance of the policy per worker thread and may
//! replace an instance at any time (after a trap, on a hot swap, on a
//! reload); each new instance gets its own [`Policy::configure`]. Keep in
//! `self` only what `configure` can rebuild; put what must be shared or
//! survive in a [`Counter`] or the key-value store, which the proxy keeps
//! per upstream group, in memory: nothing survives a restart of the proxy
//! or crosses to another proxy process. `configure` must be deterministic
//! (every instance must agree), and a dry run before a policy goes into
//! service calls it and `select` on a copy of the counters and an empty
//! key-value store, whose writes are thrown away.
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

mod config;
mod hash;
mod sticky;
mod weighted;

pub use config::Config;
pub use hash::{ConsistentHash, hash64};
pub use sticky::{CookieRouter, CookieSpec, cookie_token};
pub use weighted::{WeightedSchedule, smooth_weighted_sequence};

/// Generated bindings for the `switchyard:policy` world.
///
/// Most policies need only the re-exports at the crate root.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "switchyard_policy_sdk::bindings",
        runtime_path: "switchyard_policy_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

pub use bindings::switchyard::policy::host::{
    Counter, LogLevel, kv_delete, kv_get, kv_set, log, now_ns, random_u64,
};
pub use bindings::switchyard::policy::types::{
    Backend, BackendState, Decision, Request, SameSite, SetCookie,
};

/// A load-balancing policy: the one trait a policy author implements.
///
/// The proxy creates an instance per worker thread (and replaces instances
/// at will), calls [`Policy::configure`] once per instance, then
/// [`Policy::select`] once per request. State that must be shared between
/// instances or survive a hot swap belongs in a [`Counter`] or the key-value
/// store ([`kv_get`], [`kv_set`]), not in `self`.
pub trait Policy: Sized + 'static {
    /// Checks the upstream's `policy-config` and builds the policy.
    ///
    /// `backends` is the upstream group in configuration order; `select`
    /// answers with indices into it. An `Err` refuses the configuration and
    /// its message is shown to the operator as is.
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String>;

    /// Chooses a backend for `req`. `backends[i]` is the live state of the
    /// `i`-th configured backend; at least one is healthy. An `Err` makes the
    /// proxy use its fallback for this request.
    fn select(&mut self, req: &Request, backends: &[BackendState]) -> Result<Decision, String>;
}

impl Decision {
    /// A decision for backend `index` with no response effects.
    pub fn to(index: usize) -> Self {
        Decision {
            backend: index as u32,
            set_cookie: None,
        }
    }
}

/// Index of the `n`-th healthy backend, counting modulo the number of
/// healthy ones: round-robin over healthy backends when `n` is a shared
/// counter. `None` when none is healthy.
pub fn nth_healthy(backends: &[BackendState], n: u64) -> Option<usize> {
    nth_where(backends, n, |_, b| b.healthy)
}

/// Index of the `n`-th backend (modulo their number) for which `keep(i,
/// state)` holds: round-robin over any subset. `None` when none does.
pub fn nth_where(
    backends: &[BackendState],
    n: u64,
    keep: impl Fn(usize, &BackendState) -> bool,
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
pub fn first_healthy(backends: &[BackendState]) -> Option<usize> {
    backends.iter().position(|b| b.healthy)
}

/// Bit mask of healthy backends (bit `i` for backend `i`), or `None` when the
/// group has more than 64 backends.
pub fn healthy_mask(backends: &[BackendState]) -> Option<u64> {
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

/// Makes a type that implements [`Policy`] the component's exported policy.
///
/// Use it once per crate, at the top level: `export_policy!(MyPolicy);`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[doc(hidden)]
        struct __SwitchyardPolicyExport;

        ::std::thread_local! {
            static __SWITCHYARD_POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        impl $crate::bindings::exports::switchyard::policy::selector::Guest
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
                req: &$crate::Request,
                backends: ::std::vec::Vec<$crate::BackendState>,
            ) -> ::std::result::Result<$crate::Decision, ::std::string::String> {
                __SWITCHYARD_POLICY.with(|slot| match slot.borrow_mut().as_mut() {
                    Some(policy) => $crate::Policy::select(policy, req, &backends),
                    None => Err("select called before configure".to_string()),
                })
            }
        }

        $crate::bindings::export!(__SwitchyardPolicyExport);
    };
}

/// Backend snapshots for the unit tests of every module.
#[cfg(test)]
pub(crate) fn test_states(healthy: &[bool]) -> Vec<BackendState> {
    healthy
        .iter()
        .map(|&healthy| BackendState {
            healthy,
            in_flight: 0,
            latency_ewma_us: 0,
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
