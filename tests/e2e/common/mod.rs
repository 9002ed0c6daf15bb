//! Shared harness for the end-to-end tests: real backends on loopback, the
//! real `switchyard` binary with a real config file, real HTTP clients.
//!
//! - [`Backend`]: an HTTP/1.1 server on 127.0.0.1 that answers with its
//!   name, records what it received, and can be stopped and restarted on the
//!   same port. `/delay/MS` answers after MS milliseconds; `/echo` streams
//!   the request body back.
//! - [`Proxy`]: the binary started with a TOML config in a temp dir, killed
//!   on drop; its log is kept for assertions.
//! - [`client`] / [`get`]: a keep-alive HTTP client that treats any status as
//!   a response.

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
    pub headers: BTreeMap<String, String>,
}

/// A test backend: see the module docs.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicU64>,
    stop: Option<watch::Sender<bool>>,
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
        let (stop_tx, stop_rx) = watch::channel(false);
        let name_owned = name.to_string();
        let (seen2, accepted2) = (seen.clone(), accepted.clone());
        let addr = RT.block_on(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            socket.bind(addr).expect("bind backend");
            let listener = socket.listen(1024).expect("listen");
            let local = listener.local_addr().expect("local addr");
            tokio::spawn(serve(listener, name_owned, seen2, accepted2, stop_rx));
            local
        });
        Backend {
            name: name.to_string(),
            addr,
            seen,
            accepted,
            stop: Some(stop_tx),
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
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

async fn serve(
    listener: tokio::net::TcpListener,
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let name = name.clone();
        let seen = seen.clone();
        let mut conn_stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let name = name.clone();
                let seen = seen.clone();
                async move { Ok::<_, Infallible>(answer(req, &name, &seen).await) }
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

async fn answer(req: Request<Incoming>, name: &str, seen: &Mutex<Vec<Seen>>) -> Response<RespBody> {
    let path = req.uri().path().to_string();
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
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
    let body = if path == "/echo" {
        req.into_body().boxed()
    } else {
        text(name.to_string())
    };
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert("x-backend", name.parse().expect("header value"));
    resp
}

/// The running proxy binary.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
    pub config: PathBuf,
    log: PathBuf,
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
        let dir = TempDir::new("proxy");
        prepare(&dir);
        let config_path = dir.write("switchyard.toml", config.replace("{port}", "0"));
        let log = dir.0.join("proxy.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
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
            dir,
            config: config_path,
            log,
        };
        proxy.wait_ready();
        proxy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(port) = listening_port(&self.log()) {
                self.port = port;
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
    let rest = log.split("listening on http://127.0.0.1:").nth(1)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
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
