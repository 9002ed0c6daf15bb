//! WASI for the policies that need it, and nothing more.
//!
//! Components built from Python (componentize-py) or JavaScript
//! (componentize-js) import WASI for their language runtime. They get an
//! empty context: no preopened directories (so `open()` fails), no network
//! (every socket address denied, no name lookup), no environment, no
//! arguments, stdin closed. Their stdout and stderr go to the proxy's log,
//! one line per line, tagged with the policy. They do see WASI's clocks and
//! random numbers, which language runtimes need. Policies that import no
//! WASI (Rust, C, WAT) are instantiated without any of it.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::host_impl::HostState;

/// Longest line kept from a policy's output; the rest is cut.
const MAX_LINE: usize = 1024;

/// The context a WASI-importing policy gets (see the module docs).
pub fn context(label: Arc<str>) -> WasiCtx {
    WasiCtx::builder()
        .stdout(LogOutput {
            label: label.clone(),
            stderr: false,
        })
        .stderr(LogOutput {
            label,
            stderr: true,
        })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let label = self.label.clone();
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| context(label)),
            table: &mut self.table,
        }
    }
}

/// A policy's stdout or stderr, written to the log.
#[derive(Clone)]
struct LogOutput {
    label: Arc<str>,
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
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end();
        let policy = &*self.out.label;
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
