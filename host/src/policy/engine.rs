//! The wasmtime engine and linker shared by every policy, and compiling a
//! policy source into something ready to instantiate.

use std::sync::Arc;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, OptLevel};

use super::bindings::{PolicyWorld, PolicyWorldPre};
use super::host_impl::HostState;
use super::{LoadError, builtin, describe};
use crate::config::PolicySource;

/// [`PolicyEngine`] compiles policies. One per process: compiled code is
/// tied to its engine.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
}

/// A compiled policy, ready to instantiate any number of times.
#[derive(Clone)]
pub struct Compiled {
    /// Where it came from.
    pub source: PolicySource,
    /// Size of the component in bytes.
    pub size: usize,
    pub(crate) pre: PolicyWorldPre<HostState>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("source", &self.source)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// An engine with the policy host functions linked in, and nothing else:
    /// no WASI, so a policy has no files, network, clock or environment
    /// beyond what `host.wit` offers.
    pub fn new() -> Result<Self, wasmtime::Error> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.cranelift_opt_level(OptLevel::Speed);
        config.parallel_compilation(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        PolicyWorld::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        Ok(PolicyEngine {
            engine,
            linker: Arc::new(linker),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads (for files) and compiles a policy, and checks that it fits the
    /// world. Blocking and CPU-heavy: keep it off the request path.
    pub fn compile(&self, source: &PolicySource) -> Result<Compiled, LoadError> {
        let what = source.to_string();
        let bytes: std::borrow::Cow<'static, [u8]> = match source {
            PolicySource::Builtin(name) => match builtin::get(name) {
                Some(b) => b.wasm.into(),
                None => return Err(LoadError::UnknownBuiltin { name: name.clone() }),
            },
            PolicySource::File(path) => std::fs::read(path)
                .map_err(|source| LoadError::Read {
                    path: what.clone(),
                    source,
                })?
                .into(),
        };
        self.compile_bytes(source.clone(), &bytes)
    }

    /// Compiles component bytes that came from `source`.
    pub fn compile_bytes(&self, source: PolicySource, bytes: &[u8]) -> Result<Compiled, LoadError> {
        let what = source.to_string();
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::NotWasm(what));
        }
        if bytes[6..8] == [0, 0] {
            return Err(LoadError::CoreModule(what));
        }
        let component =
            Component::from_binary(&self.engine, bytes).map_err(|e| LoadError::Compile {
                what: what.clone(),
                reason: describe(&e),
            })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(PolicyWorldPre::new)
            .map_err(|e| LoadError::World {
                what: what.clone(),
                reason: describe(&e),
            })?;
        Ok(Compiled {
            source,
            size: bytes.len(),
            pre,
        })
    }
}
