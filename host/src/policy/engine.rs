//! The wasmtime engine and linkers shared by every policy (the engine is the
//! process's one deadline-enforcing engine, [`super::cpu_clock`]), and
//! compiling a policy source into something ready to instantiate.
//!
//! Compiled code is cached twice, both keyed by the component's SHA-256:
//! in memory (a reload or a swap back to a file seen before costs nothing)
//! and, when a cache directory is set, on disk as wasmtime's precompiled
//! form (a Python or JavaScript policy takes ~10 s to compile, and loads in
//! milliseconds from there). A disk entry is also keyed by the engine's
//! compatibility hash and carries an xxh3 checksum, so a corrupt, truncated
//! or foreign file is ignored and rebuilt, never loaded. The directory must
//! be writable by the proxy alone: what is in it is run as native code.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, OptLevel};

use super::api::{LoadError, describe};
use super::bindings::{PolicyWorld, v02};
use super::builtin;
use super::contract::Bound;
use super::host_impl::HostState;
use super::limits::Requested;
use crate::config::PolicySource;

/// Compiled components kept in memory, by content digest.
const CACHE_ENTRIES: usize = 32;

/// Recently compiled components by content digest, most recent last.
type CompileCache = Mutex<VecDeque<([u8; 32], Bound, bool)>>;

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
    /// The policy host functions and nothing else.
    linker: Arc<Linker<HostState>>,
    /// The same plus an empty WASI, for components that import WASI.
    wasi_linker: Arc<Linker<HostState>>,
    /// Calls run under deadlines (the engine has epoch interruption).
    deadlines: bool,
    cache: Arc<CompileCache>,
    disk: Arc<Mutex<Option<PathBuf>>>,
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
    /// Whether it imports WASI (interpreted guests do).
    pub wasi: bool,
    /// The limits it states it needs.
    pub requested: Requested,
    pub(crate) pre: Bound,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("source", &self.source)
            .field("size", &self.size)
            .field("digest", &self.digest)
            .field("contract", &self.pre.contract())
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

    /// An engine with the policy host functions linked in.
    pub fn with_options(options: EngineOptions) -> Result<Self, wasmtime::Error> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.cranelift_opt_level(OptLevel::Speed);
        config.parallel_compilation(true);
        config.epoch_interruption(options.deadlines);
        let engine = if options.deadlines {
            super::cpu_clock::deadline_engine(|| Engine::new(&config))?
        } else {
            Engine::new(&config)?
        };
        let mut linker = Linker::new(&engine);
        // Both contracts' imports: a component binds to the one it targets.
        PolicyWorld::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        v02::AdaptivePolicy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        let mut wasi_linker = linker.clone();
        wasmtime_wasi::p2::add_to_linker_sync(&mut wasi_linker)?;
        super::wasi::forbid_blocking(&mut wasi_linker)?;
        Ok(PolicyEngine {
            engine,
            linker: Arc::new(linker),
            wasi_linker: Arc::new(wasi_linker),
            deadlines: options.deadlines,
            cache: Arc::default(),
            disk: Arc::default(),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether calls run under deadlines.
    pub(crate) fn deadlines(&self) -> bool {
        self.deadlines
    }

    /// Where precompiled components are kept (`None`: nowhere).
    pub fn set_cache_dir(&self, dir: Option<PathBuf>) {
        *self.disk.lock().unwrap_or_else(|p| p.into_inner()) = dir;
    }

    /// The directory precompiled components are kept in, if any.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads (for files) and compiles a policy, and checks that it fits the
    /// world. Blocking and CPU-heavy: keep it off the request path.
    pub fn compile(&self, source: &PolicySource) -> Result<Compiled, LoadError> {
        self.compile_pinned(source, None)
    }

    /// Like [`PolicyEngine::compile`], refusing a component whose SHA-256
    /// (hex) is not `sha256`. An `oci://` source is not read here: pull it
    /// and use [`PolicyEngine::compile_bytes`].
    pub fn compile_pinned(
        &self,
        source: &PolicySource,
        sha256: Option<&str>,
    ) -> Result<Compiled, LoadError> {
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
            PolicySource::Native(_) | PolicySource::Oci(_) => {
                return Err(LoadError::NotWasm(what));
            }
        };
        self.compile_bytes(source.clone(), &bytes, sha256)
    }

    /// Compiles component bytes that came from `source`; when `sha256` is
    /// given, they must have that SHA-256 (hex), or they are refused before
    /// anything else is done with them.
    pub fn compile_bytes(
        &self,
        source: PolicySource,
        bytes: &[u8],
        sha256: Option<&str>,
    ) -> Result<Compiled, LoadError> {
        let what = source.to_string();
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(pinned) = sha256
            && !pinned.eq_ignore_ascii_case(&hex(&digest))
        {
            return Err(LoadError::Digest {
                what,
                pinned: pinned.to_ascii_lowercase(),
                actual: hex(&digest),
            });
        }
        let compiled = |pre, wasi| Compiled {
            source: source.clone(),
            size: bytes.len(),
            digest: hex(&digest),
            wasi,
            requested: Requested::of(bytes),
            pre,
        };
        if let Some((pre, wasi)) = self.cached(&digest) {
            return Ok(compiled(pre, wasi));
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::NotWasm(what));
        }
        if bytes[6..8] == [0, 0] {
            return Err(LoadError::CoreModule(what));
        }
        let component = self.component(&what, &digest, bytes)?;
        let wants_wasi = component
            .component_type()
            .imports(&self.engine)
            .any(|(name, _)| name.starts_with("wasi:"));
        let linker = if wants_wasi {
            &self.wasi_linker
        } else {
            &self.linker
        };
        let pre = Bound::new(linker, &component).map_err(|e| LoadError::World {
            what: what.clone(),
            reason: describe(&e),
        })?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.pop_front();
        }
        cache.push_back((digest, pre.clone(), wants_wasi));
        Ok(compiled(pre, wants_wasi))
    }

    /// The component from the disk cache, or compiled (and then cached).
    fn component(
        &self,
        what: &str,
        digest: &[u8; 32],
        bytes: &[u8],
    ) -> Result<Component, LoadError> {
        let dir = self.disk.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let entry = dir.as_ref().map(|d| self.cache_path(d, digest));
        if let Some(path) = &entry
            && let Some(c) = self.load_precompiled(path)
        {
            return Ok(c);
        }
        let started = Instant::now();
        let component =
            Component::from_binary(&self.engine, bytes).map_err(|e| LoadError::Compile {
                what: what.to_string(),
                reason: describe(&e),
            })?;
        tracing::debug!("{what}: compiled in {:?}", started.elapsed());
        if let Some(path) = &entry {
            self.store_precompiled(path, &component);
        }
        Ok(component)
    }

    fn cache_path(&self, dir: &Path, digest: &[u8; 32]) -> PathBuf {
        let mut h = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        dir.join(format!("{}-{:016x}.cwasm", hex(digest), h.finish()))
    }

    /// A precompiled component from `path`, if it exists, matches its
    /// checksum and suits this engine.
    fn load_precompiled(&self, path: &Path) -> Option<Component> {
        let started = Instant::now();
        let file = std::fs::File::open(path).ok()?;
        // SAFETY: cache files are only ever replaced by rename, never
        // written in place, so the mapped bytes cannot change under us.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let sum = std::fs::read_to_string(path.with_extension("xxh3")).ok()?;
        if sum.trim() != format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&map)) {
            tracing::warn!("ignoring corrupt policy cache entry {}", path.display());
            return None;
        }
        drop(map);
        // SAFETY: the file was written by `store_precompiled` with the
        // checksum just verified, into a directory only this proxy writes;
        // wasmtime itself refuses artifacts of another version or
        // configuration. Mapping it avoids copying tens of megabytes.
        match unsafe { Component::deserialize_file(&self.engine, path) } {
            Ok(c) => {
                tracing::debug!(
                    "{}: loaded from the cache in {:?}",
                    path.display(),
                    started.elapsed()
                );
                Some(c)
            }
            Err(e) => {
                tracing::warn!(
                    "ignoring policy cache entry {}: {}",
                    path.display(),
                    describe(&e)
                );
                None
            }
        }
    }

    /// Writes a precompiled component, atomically; failures only cost the
    /// next start a compilation.
    fn store_precompiled(&self, path: &Path, component: &Component) {
        let write = || -> std::io::Result<()> {
            let bytes = component
                .serialize()
                .map_err(|e| std::io::Error::other(describe(&e)))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, &bytes)?;
            std::fs::write(
                path.with_extension("xxh3"),
                format!("{:032x}\n", xxhash_rust::xxh3::xxh3_128(&bytes)),
            )?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(
                "cannot write the policy cache entry {}: {e}",
                path.display()
            );
        }
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<(Bound, bool)> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let i = cache.iter().position(|(d, _, _)| d == digest)?;
        // Most recently used last.
        let entry = cache.remove(i)?;
        let hit = (entry.1.clone(), entry.2);
        cache.push_back(entry);
        Some(hit)
    }
}
