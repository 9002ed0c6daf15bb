//! The one place `bindgen!` runs: Rust types for `wit/`.
//!
//! Resources map onto host marker types; every import may trap (a policy
//! that abuses a host call is stopped, not obeyed).

/// Host side of the `request` resource: the data lives in the store (see
/// `host_impl`), the handle only names it.
pub struct RequestRes;

/// Host side of a `counter` resource: an entry of the store's table.
pub type CounterRes = std::sync::Arc<std::sync::atomic::AtomicU64>;

mod generated {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "switchyard:policy/types.request": crate::policy::bindings::RequestRes,
            "switchyard:policy/host.counter": crate::policy::bindings::CounterRes,
        },
    });
}

pub use generated::Policy as PolicyWorld;
pub use generated::PolicyPre as PolicyWorldPre;
pub use generated::switchyard::policy::{host, types};
