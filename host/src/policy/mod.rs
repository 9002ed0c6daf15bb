//! Backend selection: policies compiled to Wasm components, and the native
//! fallback.
//!
//! The Wasm boundary lives only in this module. The rest of the proxy sees
//! the [`Policy`] trait: a request view and the live backend states in, a
//! [`Decision`] out. [`WasmPolicy`] runs a component (one instance per worker
//! thread, no lock on the request path); [`RoundRobin`] is the native
//! fallback used when a policy fails.

mod api;
mod bindings;
pub mod builtin;
mod engine;
mod health;
mod host_impl;
mod limits;
mod native;
mod plugin;
mod sandbox;
pub mod shared;
mod wasi;

pub use api::{
    BackendState, CookieSpec, Decision, LoadError, Policy, PolicyFailure, PolicyStatus,
    RequestView, SameSite,
};
pub use engine::{Compiled, EngineOptions, PolicyEngine};
pub use health::{PROBE_INTERVAL, WINDOW};
pub use host_impl::{find_cookie, monotonic_ns, request_host};
pub use limits::{Requested, SECTION as LIMITS_SECTION, Source as LimitSource};
pub use native::RoundRobin;
pub use plugin::WasmPolicy;
pub use sandbox::TICK;
pub use shared::{SharedState, StateRegistry};
