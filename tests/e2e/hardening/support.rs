//! Helpers for the hardening regression tests: scripted raw backends, a raw
//! HTTP/1.1 client, the Python clients of `tests/e2e/py/hardening.py`,
//! policies written in WAT, and short ways to read `/status` and
//! `/metrics`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

// ---------------------------------------------------------------- raw HTTP

/// An HTTP/1.1 message as it crossed the wire: the start line, the header
/// fields in order (repeated ones stay repeated), and the decoded body.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the body was chunked.
    pub chunked: bool,
}

impl Message {
    /// All values of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    /// The status code of a response.
    pub fn status(&self) -> u16 {
        self.start
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The request-target of a request.
    pub fn target(&self) -> &str {
        self.start.split_whitespace().nth(1).unwrap_or("")
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A buffered reader over a socket for HTTP/1.1 framing.
pub struct Wire {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// Why a message could not be read.
#[derive(Debug)]
pub enum WireError {
    /// The peer closed (or reset) the connection; what had arrived.
    Closed(Vec<u8>),
    /// Nothing more within the read timeout.
    TimedOut(Vec<u8>),
    Malformed(String),
}

impl Wire {
    pub fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects to 127.0.0.1:`port` with a read timeout of `timeout`.
    pub fn connect(port: u16, timeout: Duration) -> Wire {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        Wire::new(s)
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn fill(&mut self) -> Result<(), WireError> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(WireError::Closed(self.buf.clone())),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(WireError::TimedOut(self.buf.clone()))
            }
            Err(_) => Err(WireError::Closed(self.buf.clone())),
        }
    }

    fn line(&mut self) -> Result<String, WireError> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    fn exact(&mut self, n: usize) -> Result<Vec<u8>, WireError> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads a message head: start line and header fields.
    pub fn head(&mut self) -> Result<Message, WireError> {
        let start = self.line()?;
        let mut headers = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| WireError::Malformed(format!("header line {line:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(Message {
            start,
            headers,
            ..Message::default()
        })
    }

    /// Reads a body framed as `m`'s headers say. `to_eof`: a response with
    /// neither length nor chunking runs to the end of the connection.
    pub fn body(&mut self, m: &mut Message, to_eof: bool) -> Result<(), WireError> {
        let chunked = m
            .all("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            m.chunked = true;
            loop {
                let size_line = self.line()?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                        .map_err(|_| WireError::Malformed(format!("chunk size {size_line:?}")))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line()?.is_empty() {}
                    return Ok(());
                }
                let data = self.exact(size)?;
                m.body.extend_from_slice(&data);
                self.exact(2)?;
            }
        } else if let Some(len) = m.header("content-length") {
            let n: usize = len
                .parse()
                .map_err(|_| WireError::Malformed(format!("content-length {len:?}")))?;
            m.body = self.exact(n)?;
            Ok(())
        } else if to_eof {
            loop {
                match self.fill() {
                    Ok(()) => {}
                    Err(WireError::Closed(_)) => {
                        m.body = std::mem::take(&mut self.buf);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
        } else {
            Ok(())
        }
    }

    /// Reads one response (skipping nothing: a 1xx is returned as is).
    pub fn response(&mut self) -> Result<Message, WireError> {
        let mut m = self.head()?;
        let status = m.status();
        let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
        if !bodiless {
            self.body(&mut m, true)?;
        }
        Ok(m)
    }

    /// Reads one request.
    pub fn request(&mut self) -> Result<Message, WireError> {
        let mut m = self.head()?;
        self.body(&mut m, false)?;
        Ok(m)
    }

    /// Reads until the peer closes or `limit` passes; returns the bytes
    /// read and whether the connection ended (EOF or reset).
    pub fn drain(&mut self, limit: Duration) -> (u64, bool) {
        let deadline = Instant::now() + limit;
        let mut total = std::mem::take(&mut self.buf).len() as u64;
        let mut chunk = vec![0u8; 256 * 1024];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return (total, true),
                Ok(n) => total += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return (total, true),
            }
        }
        (total, false)
    }
}

/// Sends `request` on a fresh connection and reads one response.
pub fn exchange(port: u16, request: &[u8]) -> Result<Message, WireError> {
    let mut w = Wire::connect(port, Duration::from_secs(10));
    w.send(request).expect("send the request");
    w.response()
}

/// Like [`exchange`], panicking with what arrived if no response did.
pub fn must_exchange(port: u16, request: &[u8]) -> Message {
    exchange(port, request).unwrap_or_else(|e| {
        panic!(
            "no response to {:?}: {e:?}",
            String::from_utf8_lossy(request)
        )
    })
}

/// Whether the connection was closed (EOF or reset) within `limit`.
pub fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

// ------------------------------------------------------------ raw backends

/// What a scripted backend does with one request on a connection.
pub enum Next {
    /// Read the next request on the same connection.
    KeepAlive,
    /// Close the connection.
    Close,
}

type Handler = dyn Fn(&Message, &mut TcpStream, &AtomicBool) -> Next + Send + Sync;

/// An HTTP/1.1 backend on 127.0.0.1 whose answers are written by hand (for
/// what a well-behaved server library would never send). It records every
/// request exactly as received.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub name: String,
    requests: Arc<Mutex<Vec<Message>>>,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RawBackend {
    /// Serves each request with `handler`. The handler gets the stop flag:
    /// a handler that stalls must return once it is set.
    pub fn start(
        name: &str,
        handler: impl Fn(&Message, &mut TcpStream, &AtomicBool) -> Next + Send + Sync + 'static,
    ) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw backend");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (requests, accepted, stop) = (requests.clone(), accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let stream = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let (requests, stop, handler) =
                        (requests.clone(), stop.clone(), handler.clone());
                    std::thread::spawn(move || serve_raw(stream, &requests, &stop, &*handler));
                }
            });
        }
        RawBackend {
            addr,
            name: name.to_string(),
            requests,
            accepted,
            stop,
        }
    }

    /// A backend that answers every request `200` with `body`.
    pub fn ok(name: &str, body: &'static str) -> RawBackend {
        RawBackend::start(name, move |_, s, _| {
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            Next::KeepAlive
        })
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Message> {
        self.requests.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// `{ name = ..., address = ... }` plus `extra` (e.g. `h2 = true`).
    pub fn entry_with(&self, extra: &str) -> String {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        format!(
            "{{ name = \"{}\", address = \"{}\"{extra} }}",
            self.name, self.addr
        )
    }

    pub fn entry(&self) -> String {
        self.entry_with("")
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_raw(
    stream: TcpStream,
    requests: &Mutex<Vec<Message>>,
    stop: &AtomicBool,
    handler: &Handler,
) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut wire = Wire::new(stream);
    loop {
        let req = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match wire.request() {
                Ok(r) => break r,
                Err(WireError::TimedOut(_)) => continue,
                Err(_) => return,
            }
        };
        requests.lock().unwrap().push(req.clone());
        match handler(&req, &mut wire.stream, stop) {
            Next::KeepAlive => {}
            Next::Close => return,
        }
    }
}

/// Waits until `stop` is set (or 60 s pass): a backend that has gone quiet.
pub fn stall(stop: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A listener on 127.0.0.1 that accepts connections and closes each at
/// once, without reading: a backend refusing to talk. Counts connections.
pub struct Closer {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Closer {
    pub fn start() -> Closer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, st) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        drop(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Closer {
            addr,
            accepted,
            stop,
        }
    }

    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ----------------------------------------------------------------- configs

/// `[admin]` on a free port, then `rest`.
pub fn with_admin(rest: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n\n{rest}")
}

/// One upstream `app` over the backend entries `entries` (as written in a
/// config), with `server_extra` under `[server]` and `upstream_extra` under
/// `[upstreams.app]`, and the admin API.
pub fn config(entries: &[String], server_extra: &str, upstream_extra: &str) -> String {
    with_admin(&format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\n{server_extra}\n\n[upstreams.app]\npolicy = \"round-robin\"\nbackends = [\n  {}\n]\n{upstream_extra}\n",
        entries.join(",\n  ")
    ))
}

/// A self-signed certificate for 127.0.0.1 and localhost in `dir`.
pub fn self_signed(dir: &TempDir) {
    let key =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    dir.write("cert.pem", key.cert.pem());
    dir.write("key.pem", key.signing_key.serialize_pem());
}

/// `config` with a TLS listener added beside the plain one.
pub fn add_tls_listener(config: &str) -> String {
    config.replace(
        "listen = \"127.0.0.1:{port}\"",
        "listen = [ \"127.0.0.1:{port}\", { address = \"127.0.0.1:0\", tls = { cert = \"cert.pem\", key = \"key.pem\" } } ]",
    )
}

// ------------------------------------------------------- /status, /metrics

/// The `/status` entry of backend `name` of upstream `app`.
pub fn backend_status(proxy: &Proxy, name: &str) -> serde_json::Value {
    let s = proxy.status();
    s["upstreams"][0]["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no backend {name} in /status: {s}"))
}

/// Whether `/status` reports backend `name` healthy.
pub fn healthy(proxy: &Proxy, name: &str) -> bool {
    backend_status(proxy, name)["healthy"]
        .as_bool()
        .expect("healthy is a bool")
}

/// `switchyard_backend_in_flight` of backend `name` of upstream `app`.
pub fn in_flight(proxy: &Proxy, name: &str) -> f64 {
    proxy.metric(&format!(
        "switchyard_backend_in_flight{{upstream=\"app\",backend=\"{name}\"}}"
    ))
}

/// The sum of `switchyard_policy_failures_total` over every kind.
pub fn policy_failures(proxy: &Proxy) -> f64 {
    proxy
        .metrics()
        .lines()
        .filter(|l| l.starts_with("switchyard_policy_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ------------------------------------------------------------------ Python

/// Runs `tests/e2e/py/hardening.py MODE ARGS...` and parses its JSON line.
pub fn py(args: &[&str]) -> serde_json::Value {
    let out = py_command(args).output().expect("run python3");
    parse_py(args, &out)
}

/// Starts `hardening.py` in the background.
pub fn py_spawn(args: &[&str]) -> Killed {
    Killed(
        py_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3"),
    )
}

/// Waits for a [`py_spawn`]ed client and parses its JSON line.
pub fn py_finish(args: &[&str], mut child: Killed) -> serde_json::Value {
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.0.wait().unwrap();
    let out = std::process::Output {
        status,
        stdout: stdout.into_bytes(),
        stderr: stderr.into_bytes(),
    };
    parse_py(args, &out)
}

fn py_command(args: &[&str]) -> Command {
    let mut c = python();
    c.arg(repo().join("tests/e2e/py/hardening.py")).args(args);
    c
}

fn parse_py(args: &[&str], out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "hardening.py {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// An h2c request spec for `hardening.py h2-request`: the pseudo-headers
/// for `method` `path` on `port`, then `fields` as given.
pub fn h2_request(
    port: u16,
    method: &str,
    path: &str,
    fields: &[(&str, &str)],
    data: &[&str],
) -> serde_json::Value {
    let authority = format!("127.0.0.1:{port}");
    let mut all = vec![
        (":method", method),
        (":scheme", "http"),
        (":authority", authority.as_str()),
        (":path", path),
    ];
    all.extend_from_slice(fields);
    h2_fields(&all, data)
}

/// An h2c request spec with exactly these header fields (pseudo-headers
/// included) and DATA frames.
pub fn h2_fields(fields: &[(&str, &str)], data: &[&str]) -> serde_json::Value {
    let headers: Vec<[&str; 2]> = fields.iter().map(|(k, v)| [*k, *v]).collect();
    let mut r = serde_json::json!({ "headers": headers });
    if !data.is_empty() {
        r["data"] = serde_json::json!(data);
    }
    r
}

/// Sends the requests over one h2c connection; returns the responses.
pub fn h2_send(port: u16, requests: &[serde_json::Value]) -> serde_json::Value {
    let spec = serde_json::json!({ "requests": requests }).to_string();
    py(&["h2-request", &port.to_string(), &spec])
}

// ---------------------------------------------------------------- policies

/// A policy component from a core module in WAT, for the
/// `switchyard:policy/policy@0.1.0` world (in-process, like
/// `tests/e2e/fixtures.rs`).
pub fn component(wat: &str) -> Vec<u8> {
    switchyard_tools::authoring::componentize(wat.as_bytes()).expect("policy component")
}

/// A policy component made by `switchyard policy componentize` (which
/// adapts WASI preview 1 imports) from `wat`, written to `dir/name`.
pub fn componentize_cli(dir: &TempDir, name: &str, wat: &str) {
    let input = dir.write(&format!("{name}.wat"), wat);
    let output = dir.path().join(name);
    let out = sy()
        .args(["policy", "componentize"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .expect("switchyard policy componentize");
    assert!(
        out.status.success(),
        "componentize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A core module for the policy world. `imports` and `funcs` are extra
/// WAT; `configure` and `on_other_path` are function bodies (see below).
///
/// Memory: 64 the `configure` result (zero: ok), 128 the `select` result
/// (tag at +0, backend index at +8), 256 the return area of
/// `request.path`, 512.. strings (`data`), 4096+ a bump heap for the
/// canonical ABI, reset after each call.
///
/// `select` answers backend 0 on `/` (the proxy's dry run) and runs
/// `on_other_path` (which must return the result pointer, 128) on every
/// other path; the request handle is in local `$req` and must be dropped
/// with `(call $drop (local.get $req))` before returning normally.
pub fn policy_module(
    imports: &str,
    data: &str,
    funcs: &str,
    configure: &str,
    on_other_path: &str,
) -> String {
    let realloc = crate::fixtures::BUMP_REALLOC;
    format!(
        r#"(module
  (import "switchyard:policy/types@0.1.0" "[method]request.path" (func $path (param i32 i32)))
  (import "switchyard:policy/types@0.1.0" "[resource-drop]request" (func $drop (param i32)))
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  {data}
  {realloc}
  {funcs}
  (func (export "switchyard:policy/selector@0.1.0#configure") (param i32 i32 i32 i32) (result i32)
    {configure}
    (i32.const 64))
  (func (export "cabi_post_switchyard:policy/selector@0.1.0#configure") (param i32)
    (global.set $heap (i32.const 4096)))
  (func $other (param $req i32) (result i32)
    {on_other_path})
  (func (export "switchyard:policy/selector@0.1.0#select") (param $req i32) (param i32 i32) (result i32)
    (call $path (local.get $req) (i32.const 256))
    (if (i32.gt_u (i32.load (i32.const 260)) (i32.const 1))
      (then (return (call $other (local.get $req)))))
    (call $drop (local.get $req))
    (i32.store8 (i32.const 128) (i32.const 0))
    (i32.store (i32.const 136) (i32.const 0))
    (i32.const 128))
  (func (export "cabi_post_switchyard:policy/selector@0.1.0#select") (param i32)
    (global.set $heap (i32.const 4096)))
)"#
    )
}

/// WAT: drop the request and answer backend 0.
pub const ANSWER_0: &str = "(call $drop (local.get $req))
    (i32.store8 (i32.const 128) (i32.const 0))
    (i32.store (i32.const 136) (i32.const 0))
    (i32.const 128)";

/// WAT: drop the request and answer an error result.
pub const ANSWER_ERROR: &str = "(call $drop (local.get $req))
    (i32.store8 (i32.const 128) (i32.const 1))
    (i32.store (i32.const 136) (i32.const 512))
    (i32.store (i32.const 140) (i32.const 4))
    (i32.const 128)";

/// WAT imports of the host interface used by the policies here.
pub const HOST_IMPORTS: &str = r#"
  (import "switchyard:policy/host@0.1.0" "[constructor]counter" (func $counter_new (param i32 i32) (result i32)))
  (import "switchyard:policy/host@0.1.0" "[method]counter.fetch-add" (func $fetch_add (param i32 i64) (result i64)))
  (import "switchyard:policy/host@0.1.0" "[method]counter.get" (func $counter_get (param i32) (result i64)))
  (import "switchyard:policy/host@0.1.0" "now-ns" (func $now (result i64)))
  (import "switchyard:policy/host@0.1.0" "log" (func $log (param i32 i32 i32)))
"#;

/// WAT: a function `$spin_ms` that busy-waits on the host's clock.
pub const SPIN_FUNC: &str = r#"
  (func $spin_ms (param $ms i64)
    (local $until i64)
    (local.set $until (i64.add (call $now) (i64.mul (local.get $ms) (i64.const 1000000))))
    (loop $l (br_if $l (i64.lt_u (call $now) (local.get $until)))))
"#;

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU time (user + system) `pid` has used, milliseconds.
pub fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 10
}

/// Runs `switchyard check` on `config` written as `switchyard.toml` in a
/// fresh directory (after `prepare`); returns (success, stdout + stderr).
pub fn check(config: &str, prepare: impl FnOnce(&TempDir)) -> (bool, String) {
    let dir = TempDir::new("hardening-check");
    prepare(&dir);
    let path = dir.write("switchyard.toml", config);
    let out = check_config(&path);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Whether `text` has `switchyard.toml:LINE:COL:` for `line` and some
/// column.
pub fn has_location(text: &str, line: usize) -> bool {
    let marker = format!("switchyard.toml:{line}:");
    text.match_indices(&marker).any(|(i, m)| {
        let rest = &text[i + m.len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with(':')
    })
}
