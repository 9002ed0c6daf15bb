//! Shared harness for the end-to-end tests: real backends on loopback, the
//! real `switchyard` binary with a real config file, real HTTP clients.
//!
//! - [`Backend`]: an HTTP/1.1 and h2c server on 127.0.0.1 that answers
//!   with its name, records what it received, and can be stopped and
//!   restarted on the same port. `/delay/MS` answers after MS milliseconds;
//!   `/echo` streams the request body back; `/sha256` answers the SHA-256 of
//!   the request body; `/bytes/N` streams N bytes of [`pattern`];
//!   `/trailers` answers with a `grpc-status: 0` trailer. It can be made
//!   slow ([`Backend::set_delay`]) and counts the requests it is handling
//!   at once ([`Backend::most_in_flight`]).
//! - [`Proxy`]: the binary started with a TOML config in a temp dir, killed
//!   on drop; its log is kept for assertions.
//! - [`client`] / [`get`]: a keep-alive HTTP client that treats any status as
//!   a response.
//! - [`LatencyLoad`] / [`run_clients`]: keep-alive clients that record each
//!   request's latency, status and answering backend; [`LatencyStats`],
//!   [`percentile`], [`mean`], [`per_backend`] and [`share_of`] summarise
//!   them.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

/// The path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// The policy cache every proxy of this test run shares (so a Python or
/// JavaScript policy is compiled once per run, not once per test).
pub fn shared_cache() -> PathBuf {
    std::env::temp_dir().join(format!("switchyard-e2e-cache-{}", std::process::id()))
}

/// The binary under test, with the run's policy cache.
pub fn sy() -> Command {
    let mut c = Command::new(BIN);
    c.env("SWITCHYARD_CACHE_DIR", shared_cache());
    c
}

/// `switchyard check --config path`, run to completion.
pub fn check_config(path: &Path) -> std::process::Output {
    sy().args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run switchyard check")
}

/// Runs `switchyard check` on `config` (after `prepare` adds files next to
/// it); returns (success, stdout + stderr, config path).
pub fn check_with(config: &str, prepare: impl FnOnce(&TempDir)) -> (bool, String, String) {
    let dir = TempDir::new("check");
    prepare(&dir);
    let path = dir.write("switchyard.toml", config);
    let out = check_config(&path);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, path.display().to_string())
}

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime")
});

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: BTreeMap<String, String>,
}

/// Byte `i` of the deterministic test pattern.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 7) as u8
}

/// A body of `len` pattern bytes, produced as it is read.
pub struct PatternReader {
    pub pos: u64,
    pub len: u64,
}

impl std::io::Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.len - self.pos).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(self.pos + i as u64);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A test backend: see the module docs.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicU64>,
    open: Arc<OpenConns>,
    /// Requests being answered at once (from arrival to the response head).
    in_flight: Arc<OpenConns>,
    script: Arc<Mutex<Script>>,
    stop: Option<watch::Sender<bool>>,
}

/// How a backend answers the paths without a meaning of their own.
#[derive(Clone)]
pub struct Script {
    pub status: u16,
    /// Added to every response.
    pub headers: Vec<(String, String)>,
    /// How long every response (any path) waits before it is answered.
    pub delay: Duration,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            status: 200,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }
}

/// Connections open at once: now, the most so far, and how many ended.
#[derive(Default)]
pub struct OpenConns {
    now: AtomicU64,
    most: AtomicU64,
    ended: AtomicU64,
}

/// Counts one open connection (or request in flight) until dropped.
struct OpenGuard(Arc<OpenConns>);

impl OpenGuard {
    fn new(o: &Arc<OpenConns>) -> OpenGuard {
        let n = o.now.fetch_add(1, Ordering::SeqCst) + 1;
        o.most.fetch_max(n, Ordering::SeqCst);
        OpenGuard(o.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        self.0.ended.fetch_add(1, Ordering::SeqCst);
    }
}

type RespBody = BoxBody<Bytes, hyper::Error>;

fn text(s: String) -> RespBody {
    Full::new(Bytes::from(s))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

impl Backend {
    /// Starts a backend on a free loopback port.
    pub fn start(name: &str) -> Backend {
        Backend::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts a backend on `addr` (port 0: any free port).
    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU64::new(0));
        let open: Arc<OpenConns> = Arc::default();
        let in_flight: Arc<OpenConns> = Arc::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let name_owned = name.to_string();
        let (seen2, accepted2, open2) = (seen.clone(), accepted.clone(), open.clone());
        let in_flight2 = in_flight.clone();
        let script: Arc<Mutex<Script>> = Arc::default();
        let script2 = script.clone();
        let addr = RT.block_on(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            socket.bind(addr).expect("bind backend");
            let listener = socket.listen(1024).expect("listen");
            let local = listener.local_addr().expect("local addr");
            tokio::spawn(serve(
                listener,
                name_owned,
                seen2,
                Counters {
                    accepted: accepted2,
                    open: open2,
                    in_flight: in_flight2,
                },
                script2,
                stop_rx,
            ));
            local
        });
        Backend {
            name: name.to_string(),
            addr,
            seen,
            accepted,
            script,
            open,
            in_flight,
            stop: Some(stop_tx),
        }
    }

    /// Delays every later response (any path) by `d` before answering;
    /// `Duration::ZERO` answers at once again.
    pub fn set_delay(&self, d: Duration) {
        self.script.lock().unwrap().delay = d;
    }

    /// Requests being handled right now (from arrival until the response
    /// head is returned).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.now.load(Ordering::SeqCst)
    }

    /// The most requests that were being handled at once since the start
    /// or the last [`Backend::reset_most_in_flight`].
    pub fn most_in_flight(&self) -> u64 {
        self.in_flight.most.load(Ordering::SeqCst)
    }

    /// Starts counting [`Backend::most_in_flight`] afresh (from the
    /// requests in flight now).
    pub fn reset_most_in_flight(&self) {
        let now = self.in_flight.now.load(Ordering::SeqCst);
        self.in_flight.most.store(now, Ordering::SeqCst);
    }

    /// How many requests were received so far (`seen().len()`, without the
    /// copy).
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Answers every later request with `status` (the body is still the
    /// backend's name).
    pub fn set_status(&self, status: u16) {
        self.script.lock().unwrap().status = status;
    }

    /// Adds (or replaces) a header on every later response.
    pub fn set_header(&self, name: &str, value: &str) {
        let mut s = self.script.lock().unwrap();
        s.headers.retain(|(k, _)| k != name);
        s.headers.push((name.to_string(), value.to_string()));
    }

    /// The most connections that were open at once.
    pub fn most_open(&self) -> u64 {
        self.open.most.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections accepted so far that are closed now.
    pub fn closed(&self) -> u64 {
        self.open.ended.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every open connection, as a killed
    /// process would.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        // Wait until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.addr).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts again on the same port.
    pub fn restart(&mut self) {
        let mut again = Backend::start_on(&self.name, self.addr);
        self.stop = again.stop.take();
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// `"name = ..., address = ..."` for a config's backend list.
    pub fn entry(&self) -> String {
        format!(
            "{{ name = \"{}\", address = \"{}\" }}",
            self.name, self.addr
        )
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
    }
}

/// What a backend's server counts.
struct Counters {
    accepted: Arc<AtomicU64>,
    open: Arc<OpenConns>,
    in_flight: Arc<OpenConns>,
}

async fn serve(
    listener: tokio::net::TcpListener,
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    counters: Counters,
    script: Arc<Mutex<Script>>,
    mut stop: watch::Receiver<bool>,
) {
    let Counters {
        accepted,
        open,
        in_flight,
    } = counters;
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let counted = OpenGuard::new(&open);
        let name = name.clone();
        let seen = seen.clone();
        let script = script.clone();
        let in_flight = in_flight.clone();
        let mut conn_stop = stop.clone();
        tokio::spawn(async move {
            let _counted = counted;
            let service = service_fn(move |req: Request<Incoming>| {
                let name = name.clone();
                let seen = seen.clone();
                let script = script.lock().unwrap().clone();
                let handling = OpenGuard::new(&in_flight);
                async move {
                    let resp = answer(req, &name, &seen, &script).await;
                    drop(handling);
                    Ok::<_, Infallible>(resp)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = conn_stop.changed() => {}
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    seen: &Mutex<Vec<Seen>>,
    script: &Script,
) -> Response<RespBody> {
    let path = req.uri().path().to_string();
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        version: req.version(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
    });
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if !script.delay.is_zero() {
        tokio::time::sleep(script.delay).await;
    }
    let body = if path == "/echo" {
        req.into_body().boxed()
    } else if path == "/sha256" {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        hasher.update(d);
                    }
                }
                Err(_) => break,
            }
        }
        text(hex(&hasher.finalize()))
    } else if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        let chunks = futures_chunks(n);
        http_body_util::StreamBody::new(chunks).boxed()
    } else if path == "/trailers" {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok(hyper::body::Frame::data(Bytes::from(name.to_string()))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        http_body_util::StreamBody::new(tokio_stream_iter(frames)).boxed()
    } else {
        text(name.to_string())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(script.status).expect("status");
    resp.headers_mut()
        .insert("x-backend", name.parse().expect("header value"));
    for (k, v) in &script.headers {
        resp.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            v.parse().expect("header value"),
        );
    }
    resp
}

type Frames = std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, hyper::Error>>;

/// A stream over prepared frames.
fn tokio_stream_iter(
    frames: Vec<Result<hyper::body::Frame<Bytes>, hyper::Error>>,
) -> IterStream<Frames> {
    IterStream(frames.into_iter())
}

/// `n` pattern bytes in 64 KiB frames, generated lazily.
fn futures_chunks(n: u64) -> PatternStream {
    PatternStream { pos: 0, len: n }
}

/// Adapts an iterator to a `Stream`.
pub struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// Pattern bytes as a stream of frames.
pub struct PatternStream {
    pos: u64,
    len: u64,
}

impl futures_core::Stream for PatternStream {
    type Item = Result<hyper::body::Frame<Bytes>, hyper::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.pos >= self.len {
            return std::task::Poll::Ready(None);
        }
        let n = (self.len - self.pos).min(64 * 1024);
        let chunk: Vec<u8> = (self.pos..self.pos + n).map(pattern).collect();
        self.pos += n;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(chunk)))))
    }
}

/// The running proxy binary.
pub struct Proxy {
    child: Child,
    pub port: u16,
    /// The admin API's port, when the config has `[admin] listen = "127.0.0.1:{admin}"`.
    pub admin_port: Option<u16>,
    /// The first TLS listener's port, if any.
    pub tls_port: Option<u16>,
    pub dir: TempDir,
    pub config: PathBuf,
    log: PathBuf,
}

/// How long a proxy may take to start listening, its policies compiled
/// (see [`precompile_interpreted`]).
const START_LIMIT: Duration = Duration::from_secs(30);

/// How long a start that compiles an interpreted policy cold, on purpose,
/// may take: 13 s alone on a 2-core VM of 2026-12-02, over 30 s while the
/// rest of the suite runs beside it.
const COLD_START_LIMIT: Duration = Duration::from_secs(120);

/// A policy file this large is an interpreter with its program (Python,
/// JavaScript: 18-30 MB of Wasm); the Rust, C and WAT ones are under 1 MB.
const INTERPRETED: u64 = 4 << 20;

/// Compiles the interpreted policies `config` names into the run's cache
/// with `switchyard check`, which has no time limit, so that the proxy's
/// start limit measures its start rather than a cold compile (as a deploy
/// would run `check` before `run`). A config with a `cache-dir` of its own
/// is left alone: it is about that cache. What `check` says is not judged
/// here; `run` says it again. One at a time: tests that start proxies on
/// the same policy at once compile it once, the others find it cached.
fn precompile_interpreted(config: &Path, text: &str) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let dir = config.parent().unwrap_or(Path::new("."));
    let interpreted = text
        .split('"')
        .filter(|s| s.ends_with(".wasm"))
        .any(|s| std::fs::metadata(dir.join(s)).is_ok_and(|m| m.len() > INTERPRETED));
    if interpreted && !text.contains("cache-dir") {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        check_config(config);
    }
}

impl Proxy {
    /// Writes `config` (with `{port}` replaced by 0, so the kernel picks a
    /// free port) and starts `switchyard run` on it, waiting until its log
    /// says where it listens.
    pub fn start(config: &str) -> Proxy {
        Proxy::start_with(config, |_| {})
    }

    /// Like [`Proxy::start`], after `prepare` has put files in the dir.
    pub fn start_with(config: &str, prepare: impl FnOnce(&TempDir)) -> Proxy {
        Proxy::launch(config, prepare, START_LIMIT)
    }

    /// Like [`Proxy::start`] for a test whose point is that the proxy
    /// compiles an interpreted policy cold as it starts.
    pub fn start_cold(config: &str) -> Proxy {
        Proxy::launch(config, |_| {}, COLD_START_LIMIT)
    }

    fn launch(config: &str, prepare: impl FnOnce(&TempDir), limit: Duration) -> Proxy {
        let dir = TempDir::new("proxy");
        prepare(&dir);
        let wants_admin = config.contains("{admin}");
        let config_path = dir.write(
            "switchyard.toml",
            config.replace("{port}", "0").replace("{admin}", "0"),
        );
        precompile_interpreted(&config_path, config);
        let log = dir.0.join("proxy.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = sy()
            .args(["run", "--config"])
            .arg(&config_path)
            .env("SWITCHYARD_LOG", "info,switchyard=debug")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start switchyard");
        let mut proxy = Proxy {
            child,
            port: 0,
            admin_port: None,
            tls_port: None,
            dir,
            config: config_path,
            log,
        };
        proxy.wait_ready(wants_admin, limit);
        proxy
    }

    fn wait_ready(&mut self, wants_admin: bool, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            let admin = port_after(&log, "admin API on http://127.0.0.1:");
            if let Some(port) = listening_port(&log)
                && (!wants_admin || admin.is_some())
            {
                self.port = port;
                self.admin_port = admin;
                self.tls_port = port_after(&log, "listening on https://127.0.0.1:");
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "switchyard exited with {status} before listening:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "switchyard did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `https://127.0.0.1:TLS_PORT` + `path`.
    pub fn https_url(&self, path: &str) -> String {
        format!(
            "https://127.0.0.1:{}{path}",
            self.tls_port.expect("no TLS listener")
        )
    }

    /// `http://127.0.0.1:ADMIN_PORT` + `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}{path}",
            self.admin_port.expect("config has no [admin]")
        )
    }

    /// The admin API's `/metrics` text.
    pub fn metrics(&self) -> String {
        get(&client(), &self.admin_url("/metrics")).body
    }

    /// The value of one metric line, e.g.
    /// `switchyard_policy_failures_total{upstream="app",kind="trap"}`; 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The admin API's `/status` document.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&get(&client(), &self.admin_url("/status")).body).expect("status JSON")
    }

    /// Rewrites the config file as `config` (ports as at start), sends
    /// SIGHUP and waits until a generation that read it serves; returns
    /// the generation serving then. (The file watcher may see the write
    /// too and reload once more, before or after the signal's reload.)
    pub fn reload(&self, config: &str) -> u64 {
        let generation = self.status()["generation"].as_u64().unwrap_or(0) + 1;
        std::fs::write(
            &self.config,
            config.replace("{port}", "0").replace("{admin}", "0"),
        )
        .unwrap();
        self.signal("HUP");
        assert!(
            wait_for(Duration::from_secs(20), || self.status()["generation"]
                .as_u64()
                .is_some_and(|g| g >= generation)),
            "reload to generation {generation} not seen:\n{}",
            self.log()
        );
        self.status()["generation"].as_u64().unwrap_or(generation)
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Everything the proxy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port in the first "listening on http://127.0.0.1:PORT" log line.
pub fn listening_port(log: &str) -> Option<u16> {
    port_after(log, "listening on http://127.0.0.1:")
}

fn port_after(log: &str, marker: &str) -> Option<u16> {
    let rest = log.split(marker).nth(1)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Keep-alive clients sending `GET` in a loop until stopped, recording
/// every non-2xx answer and connection error.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    outcomes: Arc<Mutex<(usize, Vec<String>)>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients, each on its own connection, against `url`.
    pub fn start(url: &str, clients: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new((0usize, Vec::new())));
        let threads = (0..clients)
            .map(|_| {
                let (stop, outcomes, url) = (stop.clone(), outcomes.clone(), url.to_string());
                std::thread::spawn(move || {
                    let agent = client();
                    while !stop.load(Ordering::Relaxed) {
                        let failure = match agent.get(&url).call() {
                            Ok(r) if r.status().is_success() => None,
                            Ok(r) => Some(format!("status {}", r.status())),
                            Err(e) => Some(format!("error {e}")),
                        };
                        let mut o = outcomes.lock().unwrap();
                        o.0 += 1;
                        o.1.extend(failure);
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            threads,
        }
    }

    /// Requests answered or failed so far.
    pub fn sent(&self) -> usize {
        self.outcomes.lock().unwrap().0
    }

    /// Stops the clients; returns (requests sent, failures).
    pub fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.outcomes.lock().unwrap().clone()
    }
}

/// One request sent by a [`LatencyLoad`].
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, counted from the start of the load.
    pub at: Duration,
    /// From sending the request to having read the whole response.
    pub latency: Duration,
    /// The backend that answered (its `x-backend` header, else the body);
    /// empty when there was no response.
    pub backend: String,
    /// The response status; 0 when there was no response.
    pub status: u16,
}

/// The headers a [`LatencyLoad`] client sends with a request, given the
/// client's number and the request's number on that client.
pub type HeadersFn = dyn Fn(usize, u64) -> Vec<(String, String)> + Send + Sync;

/// For [`LatencyLoad::start`] and [`run_clients`]: no extra headers.
pub fn no_headers(_client: usize, _request: u64) -> Vec<(String, String)> {
    Vec::new()
}

/// Keep-alive clients sending `GET` in a loop until stopped, each on its
/// own connection, recording every request as a [`Sample`].
pub struct LatencyLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LatencyLoad {
    /// Starts `clients` clients against `url`; `headers` gives each
    /// request's extra headers.
    pub fn start(
        url: &str,
        clients: usize,
        headers: impl Fn(usize, u64) -> Vec<(String, String)> + Send + Sync + 'static,
    ) -> LatencyLoad {
        LatencyLoad::start_paced(url, clients, Duration::ZERO, headers)
    }

    /// Like [`LatencyLoad::start`], each client pausing `pause` after each
    /// request (a lighter load, for tests that count shares, not speed).
    pub fn start_paced(
        url: &str,
        clients: usize,
        pause: Duration,
        headers: impl Fn(usize, u64) -> Vec<(String, String)> + Send + Sync + 'static,
    ) -> LatencyLoad {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let headers: Arc<HeadersFn> = Arc::new(headers);
        let started = Instant::now();
        let threads = (0..clients)
            .map(|client_no| {
                let (stop, samples, headers, url) = (
                    stop.clone(),
                    samples.clone(),
                    headers.clone(),
                    url.to_string(),
                );
                std::thread::spawn(move || {
                    let agent = client();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let mut req = agent.get(&url);
                        for (k, v) in headers(client_no, n) {
                            req = req.header(k, v);
                        }
                        n += 1;
                        let sent = Instant::now();
                        let (status, backend) = match req.call() {
                            Ok(mut r) => {
                                let status = r.status().as_u16();
                                let header = r
                                    .headers()
                                    .get("x-backend")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                let body = r.body_mut().read_to_string().unwrap_or_default();
                                (status, header.unwrap_or(body))
                            }
                            Err(_) => (0, String::new()),
                        };
                        let sample = Sample {
                            at: sent - started,
                            latency: sent.elapsed(),
                            backend,
                            status,
                        };
                        samples.lock().unwrap().push(sample);
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                })
            })
            .collect();
        LatencyLoad {
            stop,
            started,
            samples,
            threads,
        }
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Requests completed (answered or failed) so far.
    pub fn sent(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// The requests completed so far.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Stops the clients (each finishes the request it is on); returns
    /// every request's sample.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// Runs `clients` keep-alive clients against `url` for `duration`; every
/// request's sample.
pub fn run_clients(
    url: &str,
    clients: usize,
    duration: Duration,
    headers: impl Fn(usize, u64) -> Vec<(String, String)> + Send + Sync + 'static,
) -> Vec<Sample> {
    let load = LatencyLoad::start(url, clients, headers);
    std::thread::sleep(duration);
    load.stop()
}

/// The `p`-th percentile (0–100, nearest rank) of `latencies`; zero if
/// there are none.
pub fn percentile(latencies: &[Duration], p: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The mean of `latencies`; zero if there are none.
pub fn mean(latencies: &[Duration]) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.iter().sum::<Duration>() / latencies.len() as u32
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A summary of the latencies of some samples.
#[derive(Debug, Clone, Copy)]
pub struct LatencyStats {
    pub n: usize,
    pub mean: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl LatencyStats {
    pub fn of(samples: &[Sample]) -> LatencyStats {
        let l: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        LatencyStats {
            n: l.len(),
            mean: mean(&l),
            p50: percentile(&l, 50.0),
            p90: percentile(&l, 90.0),
            p99: percentile(&l, 99.0),
            max: percentile(&l, 100.0),
        }
    }
}

impl std::fmt::Display for LatencyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n {}, mean {:.1} ms, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.n,
            ms(self.mean),
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// How many of `samples` each backend answered (failed requests under "").
pub fn per_backend(samples: &[Sample]) -> BTreeMap<String, usize> {
    tally(samples.iter().map(|s| s.backend.as_str()))
}

/// The fraction of `samples` that `backend` answered (0 if there are none).
pub fn share_of(samples: &[Sample], backend: &str) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().filter(|s| s.backend == backend).count() as f64 / samples.len() as f64
}

/// `python3` of the project's environment (`.venv/`, made by `./test.sh`)
/// if there is one, else the one on `PATH`, with the environment's tools
/// (componentize-py) first on `PATH` for what it runs.
pub fn python() -> Command {
    tool("python3")
}

/// `program` from the project's Python environment if it has one, else
/// from `PATH`; either way with that environment first on the child's
/// `PATH` (the policy templates' build scripts run componentize-py).
pub fn tool(program: &str) -> Command {
    let venv = repo().join(".venv/bin");
    let local = venv.join(program);
    let mut c = Command::new(if local.exists() {
        local.into_os_string()
    } else {
        program.into()
    });
    if venv.is_dir() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![venv];
        dirs.extend(std::env::split_paths(&path));
        if let Ok(joined) = std::env::join_paths(dirs) {
            c.env("PATH", joined);
        }
    }
    c
}

/// Fails the test with instructions if a Python module is missing.
pub fn require_python(module: &str) {
    let ok = python()
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 cannot import {module}: run ./test.sh, which sets up .venv with tests/requirements.txt"
    );
}

/// The repository's top directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A child process killed on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `limit` for `cond`, polling; whether it came true.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes the built-in policies to `dir` (`NAME.wasm`) and returns their bytes
/// by name.
pub fn builtin_policies(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let out = sy()
        .args(["policies", "--export"])
        .arg(dir)
        .output()
        .expect("policies --export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ["round-robin", "weighted", "sticky-session"]
        .iter()
        .map(|n| {
            let bytes = std::fs::read(dir.join(format!("{n}.wasm"))).expect("exported policy");
            (n.to_string(), bytes)
        })
        .collect()
}

/// A keep-alive HTTP client that returns any status as a response.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// A response reduced to what the tests look at.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn reduce(mut resp: http::Response<ureq::Body>) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let mut body = String::new();
    resp.body_mut()
        .as_reader()
        .read_to_string(&mut body)
        .expect("read body");
    Reply {
        status,
        headers,
        body,
    }
}

/// GET `url` with `agent`, plus extra headers.
pub fn get_with(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    reduce(req.call().unwrap_or_else(|e| panic!("GET {url}: {e}")))
}

/// GET `url` with `agent`.
pub fn get(agent: &ureq::Agent, url: &str) -> Reply {
    get_with(agent, url, &[])
}

/// POST `body` to `url`.
pub fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Reply {
    reduce(
        agent
            .post(url)
            .send(body)
            .unwrap_or_else(|e| panic!("POST {url}: {e}")),
    )
}

/// How many times each body occurs in `replies`.
pub fn tally<'a>(bodies: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for b in bodies {
        *out.entry(b.to_string()).or_default() += 1;
    }
    out
}

/// A config with one upstream `app` of `backends` under `policy`.
pub fn one_upstream(policy: &str, backends: &[&Backend], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.entry()).collect();
    format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\n\n[upstreams.app]\npolicy = \"{policy}\"\nbackends = [\n  {}\n]\n{extra}\n",
        list.join(",\n  ")
    )
}

/// How `n` requests to `proxy`'s `/` spread, by the body (the backend's
/// name) each got.
pub fn split(proxy: &Proxy, n: usize) -> BTreeMap<String, usize> {
    let agent = client();
    let bodies: Vec<String> = (0..n).map(|_| get(&agent, &proxy.url("/")).body).collect();
    tally(bodies.iter().map(String::as_str))
}

/// What 70 requests give under `weighted` with weights 5, 1, 1 on a, b, c.
pub fn weighted_split() -> BTreeMap<String, usize> {
    [("a", 50), ("b", 10), ("c", 10)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect()
}
