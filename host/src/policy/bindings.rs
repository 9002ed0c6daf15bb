//! The one place `bindgen!` runs: Rust types for the two contracts,
//! `wit/0.1/` (`switchyard:policy@0.1.0`) and `wit/` (`@0.2.0`).
//!
//! 0.1's resources map onto host marker types; 0.2 has none. Every import
//! may trap (a policy that abuses a host call is stopped, not obeyed).

/// Host side of the 0.1 `request` resource: the data lives in the store
/// (see `host_impl`), the handle only names it.
pub struct RequestRes;

/// Host side of a 0.1 `counter` resource: an entry of the store's table.
pub type CounterRes = crate::policy::counter::Counter;

/// Contract 0.1.
pub mod v01 {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit/0.1",
        imports: { default: trappable },
        with: {
            "switchyard:policy/types.request": crate::policy::bindings::RequestRes,
            "switchyard:policy/host.counter": crate::policy::bindings::CounterRes,
        },
    });
}

/// Contract 0.2. Bound as its larger world; each export is looked up on
/// its own, since `observer` and `membership` are optional.
pub mod v02 {
    wasmtime::component::bindgen!({
        world: "adaptive-policy",
        path: "../wit",
        imports: { default: trappable },
    });
}

pub use v01::Policy as PolicyWorld;
pub use v01::PolicyPre as PolicyWorldPre;
pub use v01::switchyard::policy::{host, types};
