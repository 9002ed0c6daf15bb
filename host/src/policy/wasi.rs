//! WASI for the policies that need it, and nothing more.
//!
//! Components built from Python (componentize-py) or JavaScript
//! (componentize-js) import WASI for their language runtime. They get an
//! empty context: no preopened directories (so `open()` fails), no network
//! (every socket address denied, no name lookup), no environment, no
//! arguments, stdin closed. Their stdout and stderr go to the proxy's log,
//! one line per line, tagged with the policy and rate-limited. They do see
//! WASI's clocks and random numbers, which language runtimes need. Nothing
//! may block: waiting on a pollable (`wasi:io/poll`'s `poll` and
//! `pollable.block`, which a `sleep` or `poll_oneoff` comes down to) traps,
//! since a blocked call would hold a worker thread past any deadline.
//! Policies that import no WASI (Rust, C, WAT) are instantiated without any
//! of it.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::host_impl::{HostState, LogLimiter};

/// Longest line kept from a policy's output; the rest is cut.
const MAX_LINE: usize = 1024;

/// The `wasi:io` version wasmtime-wasi links; the blocking functions are
/// replaced under this name (a unit test checks they really are).
const WASI_IO: &str = "wasi:io/poll@0.2.12";

/// What a blocking call is told.
const NO_BLOCKING: &str = "a policy may not block: wasi:io/poll (sleep, poll_oneoff) is refused";

/// Replaces the blocking functions of `wasi:io/poll` in a linker that has
/// WASI with ones that trap.
pub fn forbid_blocking(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_IO)?;
    poll.func_wrap(
        "poll",
        |_: StoreContextMut<'_, HostState>,
         (_list,): (Vec<Resource<DynPollable>>,)|
         -> wasmtime::Result<(Vec<u32>,)> { wasmtime::bail!(NO_BLOCKING) },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |_: StoreContextMut<'_, HostState>,
         (_p,): (Resource<DynPollable>,)|
         -> wasmtime::Result<()> { wasmtime::bail!(NO_BLOCKING) },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The context a WASI-importing policy gets (see the module docs).
pub fn context(logs: Arc<LogLimiter>) -> WasiCtx {
    WasiCtx::builder()
        .stdout(LogOutput {
            logs: logs.clone(),
            stderr: false,
        })
        .stderr(LogOutput { logs, stderr: true })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let logs = self.logs.clone();
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| context(logs)),
            table: &mut self.table,
        }
    }
}

/// A policy's stdout or stderr, written to the log.
#[derive(Clone)]
struct LogOutput {
    logs: Arc<LogLimiter>,
    stderr: bool,
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger {
            out: self.clone(),
            line: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

/// Buffers output until a newline, then logs the line.
struct LineLogger {
    out: LogOutput,
    line: Vec<u8>,
}

impl LineLogger {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let Some(dropped) = self.out.logs.admit() else {
            self.line.clear();
            return;
        };
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end();
        let policy = self.out.logs.label();
        if dropped > 0 {
            tracing::warn!(target: "switchyard::policy", policy, "{dropped} log lines dropped");
        }
        if self.out.stderr {
            tracing::warn!(target: "switchyard::policy", policy, "stderr: {text}");
        } else {
            tracing::info!(target: "switchyard::policy", policy, "stdout: {text}");
        }
        self.line.clear();
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LineLogger {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        for &b in bytes.iter() {
            if b == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.emit();
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}

/// Whether this thread is a worker of a multi-threaded Tokio runtime, the
/// only place `block_in_place` may (and must) be used.
pub fn on_runtime_worker() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
