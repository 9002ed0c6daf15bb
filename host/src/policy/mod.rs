//! Backend selection: policies compiled to Wasm components, and the native
//! fallback.
//!
//! The Wasm boundary lives only in this module. The rest of the proxy sees
//! the [`Policy`] trait: a request view and the live backend states in, a
//! [`Decision`] out, and the outcome of each attempt back ([`Observed`]).
//! [`WasmPolicy`] runs a component of either contract, 0.1 or 0.2 (one
//! instance per worker thread, no lock on the request path);
//! [`RoundRobin`] is the native fallback used when a policy fails.

mod api;
mod bindings;
pub mod builtin;
mod contract;
mod counter;
mod cpu_clock;
mod engine;
mod fleet;
mod health;
mod host_impl;
mod host_v01;
mod host_v02;
mod kv;
mod limits;
mod link;
mod native;
mod outcomes;
mod plugin;
mod sandbox;
pub mod shared;
mod verdict;
mod wasi;

pub use api::{
    AttemptFailure, BackendState, CookieSpec, Decision, LoadError, Observed, Policy, PolicyFailure,
    PolicyStatus, RequestView, SameSite,
};
pub use cpu_clock::TICK;
pub use engine::{Compiled, EngineOptions, PolicyEngine};
pub use health::{PROBE_INTERVAL, WINDOW};
pub use host_impl::{
    find_cookie, joined as joined_header, monotonic_ns, request_host, set_virtual_ns,
    use_virtual_clock,
};
pub use limits::{Requested, SECTION as LIMITS_SECTION, Source as LimitSource};
pub use native::RoundRobin;
pub use plugin::WasmPolicy;
pub use shared::{SharedState, StateRegistry};
