//! The wasmtime engine and linker shared by every policy, the epoch ticker
//! that enforces deadlines, and compiling a policy source into something
//! ready to instantiate (cached by content, so a reload or a swap back to a
//! file seen before costs no compilation).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, OptLevel};

use super::bindings::{PolicyWorld, PolicyWorldPre};
use super::host_impl::HostState;
use super::sandbox::Ticker;
use super::{LoadError, builtin, describe};
use crate::config::PolicySource;

/// Compiled components kept for reuse, by content digest.
const CACHE_ENTRIES: usize = 32;

/// Recently compiled components by content digest, most recent last.
type CompileCache = Mutex<VecDeque<([u8; 32], PolicyWorldPre<HostState>)>>;

/// How the engine runs policies.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Enforce per-call deadlines with epoch interruption. Off only to
    /// measure what the deadline machinery costs.
    pub deadlines: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { deadlines: true }
    }
}

/// [`PolicyEngine`] compiles policies. One per process: compiled code is
/// tied to its engine.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    ticker: Option<Ticker>,
    cache: Arc<CompileCache>,
}

/// A compiled policy, ready to instantiate any number of times.
#[derive(Clone)]
pub struct Compiled {
    /// Where it came from.
    pub source: PolicySource,
    /// Size of the component in bytes.
    pub size: usize,
    /// SHA-256 of the component, hex.
    pub digest: String,
    pub(crate) pre: PolicyWorldPre<HostState>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("source", &self.source)
            .field("size", &self.size)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PolicyEngine {
    /// An engine with deadlines enforced.
    pub fn new() -> Result<Self, wasmtime::Error> {
        PolicyEngine::with_options(EngineOptions::default())
    }

    /// An engine with the policy host functions linked in, and nothing else:
    /// no WASI, so a policy has no files, network, clock or environment
    /// beyond what `host.wit` offers.
    pub fn with_options(options: EngineOptions) -> Result<Self, wasmtime::Error> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.cranelift_opt_level(OptLevel::Speed);
        config.parallel_compilation(true);
        config.epoch_interruption(options.deadlines);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        PolicyWorld::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        let ticker =
            if options.deadlines {
                Some(Ticker::start(engine.clone()).map_err(|e| {
                    wasmtime::format_err!("cannot start the epoch ticker thread: {e}")
                })?)
            } else {
                None
            };
        Ok(PolicyEngine {
            engine,
            linker: Arc::new(linker),
            ticker,
            cache: Arc::default(),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The ticker, when deadlines are enforced.
    pub(crate) fn ticker(&self) -> Option<&Ticker> {
        self.ticker.as_ref()
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
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let compiled = |pre| Compiled {
            source: source.clone(),
            size: bytes.len(),
            digest: hex(&digest),
            pre,
        };
        if let Some(pre) = self.cached(&digest) {
            return Ok(compiled(pre));
        }
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
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.pop_front();
        }
        cache.push_back((digest, pre.clone()));
        Ok(compiled(pre))
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<PolicyWorldPre<HostState>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let i = cache.iter().position(|(d, _)| d == digest)?;
        // Most recently used last.
        let entry = cache.remove(i)?;
        let pre = entry.1.clone();
        cache.push_back(entry);
        Some(pre)
    }
}
