//! How a call on a policy instance ended: what a wasmtime error means as a
//! [`PolicyFailure`], and which failures leave the instance unusable.

use wasmtime::Trap;

use super::api::{Decision, PolicyFailure, describe};

/// Whether a call left its instance unusable (a trapped instance cannot be
/// entered again).
pub fn dead(result: &Result<Decision, PolicyFailure>) -> bool {
    matches!(
        result,
        Err(PolicyFailure::Trap(_)
            | PolicyFailure::Timeout
            | PolicyFailure::Memory(_)
            | PolicyFailure::Stale(_))
    )
}

/// The message a caught panic carried.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Names what went wrong in a failed call.
pub fn classify(err: &wasmtime::Error, memory_exceeded: bool) -> PolicyFailure {
    if memory_exceeded {
        PolicyFailure::Memory(describe(err))
    } else if matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        PolicyFailure::Timeout
    } else {
        PolicyFailure::Trap(describe(err))
    }
}

/// Why instantiating or configuring an instance within `limit` failed.
pub fn setup_failure(err: &wasmtime::Error, limit: std::time::Duration) -> String {
    if matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        format!("ran past its time limit ({limit:?}) while instantiating or in configure")
    } else {
        describe(err)
    }
}
