//! The policies compiled into the binary (built from `plugins/` by
//! `build.rs`), so a config can name them without any file on disk.

/// Names of the built-in policies, as a config's `policy = "..."` uses them.
pub const NAMES: &[&str] = &[
    "round-robin",
    "weighted",
    "sticky-session",
    "least-request",
    "peak-ewma",
    "consistent-hash",
];

/// One built-in policy.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Its name.
    pub name: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// The component, as a `.wasm` file would hold it.
    pub wasm: &'static [u8],
}

/// All built-in policies.
pub const ALL: &[Builtin] = &[
    Builtin {
        name: "round-robin",
        summary: "each request to the next healthy backend in turn; weights ignored",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/round-robin.wasm")),
    },
    Builtin {
        name: "weighted",
        summary: "smooth weighted round-robin as nginx does it (weights 5,1,1: a a b a c a a)",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/weighted.wasm")),
    },
    Builtin {
        name: "sticky-session",
        summary: "a cookie keeps each client on one backend; new clients weighted round-robin",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/sticky-session.wasm")),
    },
    Builtin {
        name: "least-request",
        summary: "the fewer requests in flight of two backends drawn at random (weights bias it)",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/least-request.wasm")),
    },
    Builtin {
        name: "peak-ewma",
        summary: "two at random, the lower latency x in-flight; failures count as slow (Finagle)",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/peak-ewma.wasm")),
    },
    Builtin {
        name: "consistent-hash",
        summary: "a key (header, cookie, client address, path) keeps its backend; Maglev table",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/consistent-hash.wasm")),
    },
];

/// The built-in policy called `name`.
pub fn get(name: &str) -> Option<&'static Builtin> {
    ALL.iter().find(|b| b.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_a_component() {
        assert_eq!(ALL.iter().map(|b| b.name).collect::<Vec<_>>(), NAMES);
        for b in ALL {
            // Component binaries start with \0asm and layer 1.
            assert_eq!(&b.wasm[..4], b"\0asm", "{}", b.name);
            assert_eq!(&b.wasm[6..8], &[1, 0], "{}", b.name);
        }
    }
}
