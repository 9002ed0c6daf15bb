//! The TOML configuration: what the file says, checked into strict types.
//!
//! Two layers, as in Sozu: `File*` structs mirror the file (serde, kebab-case
//! keys, unknown keys refused, spans kept for error messages), and
//! [`Config::load`] turns them into the runtime [`Config`] with defaults
//! filled in, addresses resolved and cross-references (routes → upstreams)
//! checked. Every error names the file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

/// Connect timeout to a backend when the upstream sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for a backend's response headers when the upstream sets none.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle pooled connection to a backend is kept.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Failures within `fail-timeout` that mark a backend down (nginx `max_fails`).
pub const DEFAULT_MAX_FAILS: u32 = 1;
/// How long a failed backend stays down, and the window failures are counted
/// in (nginx `fail_timeout`).
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections kept per backend (nginx `keepalive`).
pub const DEFAULT_KEEPALIVE: usize = 64;
/// How long in-flight requests may run after SIGTERM before the process exits.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) a client may send.
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 64 * 1024;
/// Most header fields in a request.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Most open client connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// How long a client connection may sit idle, or take to send a request head.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra attempts on other backends after a failed one: by default every
/// backend may be tried, as nginx does.
pub const DEFAULT_RETRIES: u32 = u32::MAX;
/// Time budget for all attempts of one request, retries included.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one policy decision may run before it is interrupted.
pub const DEFAULT_POLICY_TIMEOUT: Duration = Duration::from_millis(1);
/// Linear memory one policy instance may use.
pub const DEFAULT_POLICY_MEMORY: u64 = 4 * 1024 * 1024;
/// Consecutive failures after which a policy is reported unhealthy.
pub const DEFAULT_POLICY_MAX_FAILURES: u32 = 5;

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but something in it is wrong.
    #[error("{}: {message}", location(file, *line, *column))]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// 1-based line, 0 when the error has no position.
        line: usize,
        /// 1-based column, 0 when unknown.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

fn location(file: &Path, line: usize, column: usize) -> String {
    match (line, column) {
        (0, _) => file.display().to_string(),
        (l, 0) => format!("{}:{l}", file.display()),
        (l, c) => format!("{}:{l}:{c}", file.display()),
    }
}

/// Where something was written: the file and the byte span in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The config file ("<demo>" for the built-in demo).
    pub file: PathBuf,
    /// 1-based line, 0 if unknown.
    pub line: usize,
    /// 1-based column, 0 if unknown.
    pub column: usize,
}

impl Origin {
    /// An error at this place.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            message: message.into(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&location(&self.file, self.line, self.column))
    }
}

/// Turns byte spans into [`Origin`]s for one source text.
struct Locator<'a> {
    file: &'a Path,
    src: &'a str,
}

impl Locator<'_> {
    fn origin(&self, span: Range<usize>) -> Origin {
        let upto = &self.src[..span.start.min(self.src.len())];
        let line = upto.matches('\n').count() + 1;
        let column = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Origin {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }

    fn error<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.origin(spanned.span()).error(message)
    }
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    server: FileServer,
    admin: Option<FileAdmin>,
    access_log: Option<Spanned<FileAccessLog>>,
    #[serde(default)]
    upstreams: BTreeMap<String, Spanned<FileUpstream>>,
    #[serde(default)]
    routes: Vec<Spanned<FileRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileServer {
    listen: Spanned<Listen>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    watch: Option<bool>,
    max_header_size: Option<Spanned<String>>,
    max_headers: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    client_idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    forwarded: bool,
    cache_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileAccessLog {
    #[serde(default = "stdout")]
    path: String,
    #[serde(default)]
    format: LogFormat,
}

fn stdout() -> String {
    "-".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileHealthCheck {
    #[serde(default = "health_path")]
    path: Spanned<String>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    expect_status: Option<Spanned<String>>,
    #[serde(default = "one")]
    rise: u32,
    #[serde(default = "one")]
    fall: u32,
    host: Option<String>,
}

fn health_path() -> Spanned<String> {
    Spanned::new(0..0, "/".into())
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileListener {
    address: String,
    tls: Option<FileTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileTls {
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileAdmin {
    listen: Spanned<String>,
    #[serde(default)]
    allow_remote: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileUpstream {
    policy: Spanned<String>,
    backends: Spanned<Vec<Spanned<FileBackend>>>,
    policy_config: Option<Spanned<toml::Table>>,
    connect_timeout: Option<Spanned<String>>,
    response_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    keepalive: Option<Spanned<usize>>,
    max_fails: Option<Spanned<u32>>,
    fail_timeout: Option<Spanned<String>>,
    policy_timeout: Option<Spanned<String>>,
    policy_memory: Option<Spanned<String>>,
    policy_max_failures: Option<Spanned<u32>>,
    retries: Option<u32>,
    retry_timeout: Option<Spanned<String>>,
    health_check: Option<Spanned<FileHealthCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileBackend {
    name: Spanned<String>,
    address: Spanned<String>,
    weight: Option<Spanned<u32>>,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    h2: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileRoute {
    host: Option<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    upstream: Spanned<String>,
    max_body_size: Option<Spanned<String>>,
}

/// `listen = "addr"`, or a list whose entries are addresses or tables
/// `{ address = "...", tls = { cert = "...", key = "..." } }`.
#[derive(Debug)]
struct Listen(Vec<FileListener>);

/// One entry of a `listen` list.
struct ListenEntry(FileListener);

impl<'de> Deserialize<'de> for ListenEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ListenEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address such as \"127.0.0.1:8080\" or a table { address = ..., tls = { cert = ..., key = ... } }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ListenEntry, E> {
                Ok(ListenEntry(FileListener {
                    address: v.to_string(),
                    tls: None,
                }))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ListenEntry, A::Error> {
                FileListener::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ListenEntry)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address such as \"127.0.0.1:8080\" or a list of addresses and listener tables")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Listen, E> {
                ListenEntry::visit(v).map(|e| Listen(vec![e.0]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Listen, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = seq.next_element::<ListenEntry>()? {
                    out.push(e.0);
                }
                Ok(Listen(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl ListenEntry {
    fn visit<E: de::Error>(v: &str) -> Result<ListenEntry, E> {
        Ok(ListenEntry(FileListener {
            address: v.to_string(),
            tls: None,
        }))
    }
}

// ---------------------------------------------------------------------------
// The checked configuration.

/// A checked configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; relative policy paths are resolved against
    /// its directory.
    pub file: PathBuf,
    /// Where to accept clients.
    pub listeners: Vec<ListenerConfig>,
    /// Limits on what clients send.
    pub limits: ClientLimits,
    /// Also send an RFC 7239 `Forwarded` header.
    pub forwarded: bool,
    /// Where the access log goes, if anywhere.
    pub access_log: Option<AccessLogConfig>,
    /// Where precompiled policies are kept, if anywhere.
    pub cache_dir: Option<PathBuf>,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Reload when the config file or a policy file changes.
    pub watch: bool,
    /// The admin API's address, if enabled.
    pub admin: Option<SocketAddr>,
    /// Upstream groups, by name order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes, most specific first.
    pub routes: Vec<RouteConfig>,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// The address (port 0: any free port).
    pub addr: SocketAddr,
    /// Certificate and key files for TLS, absolute paths.
    pub tls: Option<TlsFiles>,
}

/// A TLS listener's PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Where the listener was written, for errors reading them.
    pub origin: Origin,
}

/// Limits on client requests and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Largest request head in bytes (431 beyond it).
    pub max_header_size: usize,
    /// Most header fields (431 beyond it).
    pub max_headers: usize,
    /// Most open connections per listener; more wait to be accepted.
    pub max_connections: usize,
    /// Idle time allowed on a client connection (and to send a request head).
    pub client_idle_timeout: Duration,
}

/// The access log's format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// NCSA common log format plus upstream fields.
    #[default]
    Common,
    /// One JSON object per line.
    Json,
}

/// Where and how to write the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// A file to append to; `None` is standard output.
    pub path: Option<PathBuf>,
    /// Line format.
    pub format: LogFormat,
}

/// Active health checking of an upstream's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// Path requested with `GET`.
    pub path: String,
    /// `Host` header to send; the backend's address if none.
    pub host: Option<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Statuses that count as healthy (inclusive range).
    pub expect: (u16, u16),
    /// Consecutive successes that bring a backend back.
    pub rise: u32,
    /// Consecutive failures that take a backend out.
    pub fall: u32,
}

/// Where a policy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicySource {
    /// One of the policies compiled into the binary, by name.
    Builtin(String),
    /// A component file, path resolved against the config's directory.
    File(PathBuf),
    /// `native:round-robin`: the host's own round-robin, no Wasm at all.
    /// For measuring what the Wasm boundary costs; not a policy to deploy.
    Native(String),
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::Builtin(name) => f.write_str(name),
            PolicySource::File(path) => write!(f, "{}", path.display()),
            PolicySource::Native(name) => write!(f, "native:{name}"),
        }
    }
}

/// One upstream group.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Its name, as in `[upstreams.NAME]`.
    pub name: String,
    /// The selection policy.
    pub policy: PolicySource,
    /// Where `policy = ...` was written, for errors found when loading it.
    pub policy_origin: Origin,
    /// `policy-config`, flattened for the policy (see `selector.wit`).
    pub policy_config: Vec<(String, String)>,
    /// The backends, in configuration order.
    pub backends: Vec<BackendConfig>,
    /// Timeout for a TCP connect to a backend.
    pub connect_timeout: Duration,
    /// Timeout for a backend's response headers once the request is sent.
    pub response_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Idle pooled connections kept per backend.
    pub keepalive: usize,
    /// Failures within `fail_timeout` that mark a backend down (0: never).
    pub max_fails: u32,
    /// How long a backend stays down after `max_fails` failures.
    pub fail_timeout: Duration,
    /// The policy's sandbox.
    pub sandbox: SandboxConfig,
    /// Extra attempts on other backends after a failure.
    pub retries: u32,
    /// Time budget for all attempts of one request.
    pub retry_timeout: Duration,
    /// Active health checks, if configured.
    pub health_check: Option<HealthCheckConfig>,
}

/// Limits on a policy's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Longest a decision may run (epoch deadline).
    pub timeout: Duration,
    /// Most linear memory one instance may have, in bytes.
    pub memory: u64,
    /// Consecutive failures that mark the policy unhealthy.
    pub max_failures: u32,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            timeout: DEFAULT_POLICY_TIMEOUT,
            memory: DEFAULT_POLICY_MEMORY,
            max_failures: DEFAULT_POLICY_MAX_FAILURES,
        }
    }
}

/// One backend of an upstream group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Unique name within the group.
    pub name: String,
    /// The address as written (`host:port`).
    pub address: String,
    /// The address resolved at load time.
    pub socket_addr: SocketAddr,
    /// Weight, at least 1.
    pub weight: u32,
    /// Used only when no other backend is healthy.
    pub backup: bool,
    /// Speak HTTP/2 (prior knowledge, cleartext) to it.
    pub h2: bool,
}

/// How a route matches a request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this host (lower case, no port).
    Exact(String),
    /// `*.example.com`: any subdomain of this suffix (stored as `.example.com`).
    Suffix(String),
}

/// A route: which requests go to which upstream.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Host condition.
    pub host: HostMatch,
    /// Path prefix; matches whole segments (`/api` matches `/api` and
    /// `/api/x`, not `/apix`), or any continuation if it ends with `/`.
    pub path_prefix: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Largest request body accepted (413 beyond it).
    pub max_body_size: Option<u64>,
}

impl Config {
    /// Reads, parses and checks a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Config::parse(file, &src)
    }

    /// Parses and checks configuration text that came from `file`.
    pub fn parse(file: &Path, src: &str) -> Result<Config, ConfigError> {
        let loc = Locator { file, src };
        let raw: FileConfig = toml::from_str(src).map_err(|e| {
            let origin = e.span().map(|s| loc.origin(s)).unwrap_or_else(|| Origin {
                file: file.to_path_buf(),
                ..Origin::default()
            });
            origin.error(e.message().trim().to_string())
        })?;
        build(&loc, raw)
    }
}

fn duration(
    loc: &Locator<'_>,
    key: &str,
    v: &Option<Spanned<String>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s.get_ref().trim()).map_err(|e| {
            loc.error(
                s,
                format!(
                    "{key}: {:?} is not a duration like \"3s\" or \"500ms\" ({e})",
                    s.get_ref()
                ),
            )
        }),
    }
}

fn size(loc: &Locator<'_>, key: &str, v: &Spanned<String>) -> Result<u64, ConfigError> {
    v.get_ref()
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| {
            loc.error(
                v,
                format!(
                    "{key}: {:?} is not a size like \"64KiB\" or \"10MiB\" ({e})",
                    v.get_ref()
                ),
            )
        })
}

fn build(loc: &Locator<'_>, raw: FileConfig) -> Result<Config, ConfigError> {
    // Absolute, so that relative paths in the file (policies, certificates)
    // stay right whatever the working directory does later, and file-watch
    // events can be matched against them. Errors keep the path as given.
    let absolute = std::path::absolute(loc.file).unwrap_or_else(|_| loc.file.to_path_buf());
    let base = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();

    let mut listeners: Vec<ListenerConfig> = Vec::new();
    let listen = &raw.server.listen;
    if listen.get_ref().0.is_empty() {
        return Err(loc.error(listen, "server.listen: give at least one address"));
    }
    for entry in &listen.get_ref().0 {
        let addr = &entry.address;
        let parsed: SocketAddr = addr.parse().map_err(|_| {
            loc.error(
                listen,
                format!("server.listen: {addr:?} is not an IP address and port such as \"127.0.0.1:8080\""),
            )
        })?;
        // Port 0 (any free port) may appear more than once.
        if parsed.port() != 0 && listeners.iter().any(|l| l.addr == parsed) {
            return Err(loc.error(listen, format!("server.listen: {addr} is listed twice")));
        }
        let tls = entry.tls.as_ref().map(|t| TlsFiles {
            cert: base.join(&t.cert),
            key: base.join(&t.key),
            origin: loc.origin(listen.span()),
        });
        listeners.push(ListenerConfig { addr: parsed, tls });
    }
    let limits = ClientLimits {
        max_header_size: match &raw.server.max_header_size {
            None => DEFAULT_MAX_HEADER_SIZE,
            Some(v) => {
                let n = size(loc, "server.max-header-size", v)?;
                if !(8 * 1024..=16 * 1024 * 1024).contains(&n) {
                    return Err(loc.error(v, "server.max-header-size: between 8KiB and 16MiB"));
                }
                n
            }
        } as usize,
        max_headers: raw
            .server
            .max_headers
            .as_ref()
            .map_or(DEFAULT_MAX_HEADERS, |v| *v.get_ref()),
        max_connections: match &raw.server.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(v) if *v.get_ref() == 0 => {
                return Err(loc.error(v, "server.max-connections: must be at least 1"));
            }
            Some(v) => *v.get_ref(),
        },
        client_idle_timeout: duration(
            loc,
            "server.client-idle-timeout",
            &raw.server.client_idle_timeout,
            DEFAULT_CLIENT_IDLE_TIMEOUT,
        )?,
    };
    let access_log = raw.access_log.as_ref().map(|a| {
        let a = a.get_ref();
        AccessLogConfig {
            path: (a.path != "-").then(|| base.join(&a.path)),
            format: a.format,
        }
    });

    let mut trusted_proxies = Vec::new();
    for t in &raw.server.trusted_proxies {
        let net = t
            .get_ref()
            .parse::<IpNet>()
            .or_else(|_| t.get_ref().parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                loc.error(
                    t,
                    format!(
                        "server.trusted-proxies: {:?} is not an IP address or CIDR range",
                        t.get_ref()
                    ),
                )
            })?;
        trusted_proxies.push(net);
    }
    let shutdown_grace = duration(
        loc,
        "server.shutdown-grace",
        &raw.server.shutdown_grace,
        DEFAULT_SHUTDOWN_GRACE,
    )?;
    let admin = match &raw.admin {
        None => None,
        Some(a) => {
            let addr: SocketAddr = a.listen.get_ref().parse().map_err(|_| {
                loc.error(&a.listen, format!("admin.listen: {:?} is not an IP address and port such as \"127.0.0.1:9901\"", a.listen.get_ref()))
            })?;
            if !addr.ip().is_loopback() && !a.allow_remote {
                return Err(loc.error(
                    &a.listen,
                    format!("admin.listen: {addr} is not a loopback address; the admin API can reload the proxy, so set allow-remote = true if you really mean it"),
                ));
            }
            if addr.port() != 0 && listeners.iter().any(|l| l.addr == addr) {
                return Err(loc.error(
                    &a.listen,
                    format!("admin.listen: {addr} is also a proxy listener"),
                ));
            }
            Some(addr)
        }
    };

    let mut upstreams = Vec::new();
    for (name, up) in &raw.upstreams {
        upstreams.push(build_upstream(loc, &base, name, up)?);
    }

    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let r = r.get_ref();
        let key = format!("routes[{i}]");
        let target = r.upstream.get_ref();
        let upstream = upstreams
            .iter()
            .position(|u| &u.name == target)
            .ok_or_else(|| {
                let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                loc.error(
                    &r.upstream,
                    format!(
                        "{key}.upstream: no upstream named {target:?} (defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?;
        let host = match &r.host {
            None => HostMatch::Any,
            Some(h) => parse_host(h.get_ref()).ok_or_else(|| loc.error(h, format!("{key}.host: {:?} is not a host name such as \"example.com\" or \"*.example.com\"", h.get_ref())))?,
        };
        let path_prefix = match &r.path_prefix {
            None => "/".to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                return Err(loc.error(
                    p,
                    format!("{key}.path-prefix: {:?} must start with \"/\"", p.get_ref()),
                ));
            }
        };
        let max_body_size = r
            .max_body_size
            .as_ref()
            .map(|v| size(loc, &format!("{key}.max-body-size"), v))
            .transpose()?;
        routes.push(RouteConfig {
            host,
            path_prefix,
            upstream,
            max_body_size,
        });
    }
    if routes.is_empty() && upstreams.len() == 1 {
        routes.push(RouteConfig {
            host: HostMatch::Any,
            path_prefix: "/".into(),
            upstream: 0,
            max_body_size: None,
        });
    } else if routes.is_empty() && !upstreams.is_empty() {
        return Err(Origin { file: loc.file.to_path_buf(), ..Origin::default() }.error(
            "routes: with more than one upstream, add [[routes]] entries saying which requests go where",
        ));
    }
    // Most specific first: exact hosts, then wildcard hosts (longer suffix
    // first), then any host; within each, longer prefixes first. The sort is
    // stable, so equal routes keep their file order.
    routes.sort_by_key(|r| {
        let host_rank = match &r.host {
            HostMatch::Exact(_) => (0, 0),
            HostMatch::Suffix(s) => (1, usize::MAX - s.len()),
            HostMatch::Any => (2, 0),
        };
        (host_rank, usize::MAX - r.path_prefix.len())
    });

    Ok(Config {
        file: absolute.clone(),
        listeners,
        limits,
        forwarded: raw.server.forwarded,
        cache_dir: match raw.server.cache_dir.as_deref() {
            Some("off") | Some("") => None,
            Some(dir) => Some(base.join(dir)),
            None => default_cache_dir(),
        },
        access_log,
        trusted_proxies,
        shutdown_grace,
        watch: raw.server.watch.unwrap_or(true),
        admin,
        upstreams,
        routes,
    })
}

fn parse_host(h: &str) -> Option<HostMatch> {
    let h = h.trim().to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if let Some(rest) = h.strip_prefix("*.") {
        valid(rest).then(|| HostMatch::Suffix(format!(".{rest}")))
    } else if h == "*" {
        Some(HostMatch::Any)
    } else {
        valid(&h).then_some(HostMatch::Exact(h))
    }
}

fn build_upstream(
    loc: &Locator<'_>,
    base: &Path,
    name: &str,
    spanned: &Spanned<FileUpstream>,
) -> Result<UpstreamConfig, ConfigError> {
    let up = spanned.get_ref();
    let key = format!("upstreams.{name}");
    let policy_text = up.policy.get_ref().trim();
    let policy = if policy_text.is_empty() {
        return Err(loc.error(
            &up.policy,
            format!("{key}.policy: give a built-in policy name or the path of a .wasm component"),
        ));
    } else if let Some(native) = policy_text.strip_prefix("native:") {
        if native != "round-robin" {
            return Err(loc.error(
                &up.policy,
                format!("{key}.policy: the only native policy is native:round-robin"),
            ));
        }
        PolicySource::Native(native.to_string())
    } else if policy_text.contains('/')
        || policy_text.contains('\\')
        || policy_text.ends_with(".wasm")
    {
        PolicySource::File(base.join(policy_text))
    } else {
        PolicySource::Builtin(policy_text.to_string())
    };

    let mut backends: Vec<BackendConfig> = Vec::new();
    if up.backends.get_ref().is_empty() {
        return Err(loc.error(
            &up.backends,
            format!("{key}.backends: an upstream needs at least one backend"),
        ));
    }
    for (i, b) in up.backends.get_ref().iter().enumerate() {
        let b = b.get_ref();
        let bkey = format!("{key}.backends[{i}]");
        let bname = b.name.get_ref();
        if bname.is_empty() {
            return Err(loc.error(&b.name, format!("{bkey}.name: must not be empty")));
        }
        if backends.iter().any(|o| &o.name == bname) {
            return Err(loc.error(
                &b.name,
                format!("{bkey}.name: {bname:?} is used twice in this upstream"),
            ));
        }
        let address = b.address.get_ref().trim().to_string();
        let socket_addr = resolve(&address)
            .map_err(|why| loc.error(&b.address, format!("{bkey}.address: {why}")))?;
        let weight = match &b.weight {
            None => 1,
            Some(w) if *w.get_ref() == 0 => {
                return Err(loc.error(w, format!("{bkey}.weight: must be at least 1")));
            }
            Some(w) => *w.get_ref(),
        };
        backends.push(BackendConfig {
            name: bname.clone(),
            address,
            socket_addr,
            weight,
            backup: b.backup,
            h2: b.h2,
        });
    }
    if backends.iter().all(|b| b.backup) {
        return Err(loc.error(
            &up.backends,
            format!("{key}.backends: every backend is a backup; at least one must not be"),
        ));
    }

    let policy_config = match &up.policy_config {
        None => Vec::new(),
        Some(t) => {
            let mut out = Vec::new();
            flatten("", t.get_ref(), &mut out);
            out.sort();
            out
        }
    };

    Ok(UpstreamConfig {
        name: name.to_string(),
        policy,
        policy_origin: loc.origin(up.policy.span()),
        policy_config,
        backends,
        connect_timeout: duration(
            loc,
            &format!("{key}.connect-timeout"),
            &up.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?,
        response_timeout: duration(
            loc,
            &format!("{key}.response-timeout"),
            &up.response_timeout,
            DEFAULT_RESPONSE_TIMEOUT,
        )?,
        idle_timeout: duration(
            loc,
            &format!("{key}.idle-timeout"),
            &up.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
        )?,
        keepalive: up
            .keepalive
            .as_ref()
            .map_or(DEFAULT_KEEPALIVE, |k| *k.get_ref()),
        max_fails: up
            .max_fails
            .as_ref()
            .map_or(DEFAULT_MAX_FAILS, |m| *m.get_ref()),
        fail_timeout: duration(
            loc,
            &format!("{key}.fail-timeout"),
            &up.fail_timeout,
            DEFAULT_FAIL_TIMEOUT,
        )?,
        sandbox: SandboxConfig {
            timeout: {
                let t = duration(
                    loc,
                    &format!("{key}.policy-timeout"),
                    &up.policy_timeout,
                    DEFAULT_POLICY_TIMEOUT,
                )?;
                if t.is_zero() || t > Duration::from_secs(10) {
                    let at = up
                        .policy_timeout
                        .as_ref()
                        .map(|s| s.span())
                        .unwrap_or_default();
                    return Err(loc.origin(at).error(format!(
                        "{key}.policy-timeout: must be above 0 and at most 10s"
                    )));
                }
                t
            },
            memory: match &up.policy_memory {
                None => DEFAULT_POLICY_MEMORY,
                Some(m) => {
                    let bytes = size(loc, &format!("{key}.policy-memory"), m)?;
                    if bytes < 64 * 1024 {
                        return Err(loc.error(
                            m,
                            format!("{key}.policy-memory: at least 64KiB (one Wasm page)"),
                        ));
                    }
                    bytes
                }
            },
            max_failures: up
                .policy_max_failures
                .as_ref()
                .map_or(DEFAULT_POLICY_MAX_FAILURES, |m| *m.get_ref())
                .max(1),
        },
        retries: up.retries.unwrap_or(DEFAULT_RETRIES),
        retry_timeout: duration(
            loc,
            &format!("{key}.retry-timeout"),
            &up.retry_timeout,
            DEFAULT_RETRY_TIMEOUT,
        )?,
        health_check: up
            .health_check
            .as_ref()
            .map(|h| health_check(loc, &key, h))
            .transpose()?,
    })
}

fn health_check(
    loc: &Locator<'_>,
    key: &str,
    spanned: &Spanned<FileHealthCheck>,
) -> Result<HealthCheckConfig, ConfigError> {
    let h = spanned.get_ref();
    let key = format!("{key}.health-check");
    if !h.path.get_ref().starts_with('/') {
        return Err(loc.error(&h.path, format!("{key}.path: must start with \"/\"")));
    }
    let interval = duration(
        loc,
        &format!("{key}.interval"),
        &h.interval,
        Duration::from_secs(5),
    )?;
    let timeout = duration(
        loc,
        &format!("{key}.timeout"),
        &h.timeout,
        Duration::from_secs(2),
    )?;
    if interval.is_zero() || timeout.is_zero() {
        return Err(loc.error(
            spanned,
            format!("{key}: interval and timeout must be above 0"),
        ));
    }
    let expect = match &h.expect_status {
        None => (200, 399),
        Some(e) => parse_status_range(e.get_ref()).ok_or_else(|| {
            loc.error(
                e,
                format!(
                    "{key}.expect-status: {:?} is not a status (\"200\"), a range (\"200-299\") or a class (\"2xx\")",
                    e.get_ref()
                ),
            )
        })?,
    };
    if h.rise == 0 || h.fall == 0 {
        return Err(loc.error(spanned, format!("{key}: rise and fall must be at least 1")));
    }
    Ok(HealthCheckConfig {
        path: h.path.get_ref().clone(),
        host: h.host.clone(),
        interval,
        timeout,
        expect,
        rise: h.rise,
        fall: h.fall,
    })
}

/// `"200"`, `"200-299"` or `"2xx"` as an inclusive range.
fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let s = s.trim();
    let valid = |c: u16| (100..=599).contains(&c);
    if let Some(class) = s.strip_suffix("xx") {
        let c: u16 = class.parse().ok()?;
        return (1..=5).contains(&c).then_some((c * 100, c * 100 + 99));
    }
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let c = s.parse().ok()?;
            (c, c)
        }
    };
    (valid(lo) && valid(hi) && lo <= hi).then_some((lo, hi))
}

/// `$SWITCHYARD_CACHE_DIR`, else `$XDG_CACHE_HOME/switchyard/policies`, else
/// `~/.cache/switchyard/policies`.
fn default_cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("SWITCHYARD_CACHE_DIR") {
        return (dir.as_os_str() != "off").then_some(dir);
    }
    env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .map(|c| c.join("switchyard").join("policies"))
}

/// Resolves `host:port` once, at load time (no DNS on the request path).
fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !address.contains(':') {
        return Err(format!("{address:?} needs a port, as in \"{address}:80\""));
    }
    match address.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{address:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {address:?}: {e}")),
    }
}

/// Flattens a TOML table into dotted keys: strings as is, everything else in
/// TOML syntax.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            toml::Value::String(s) => out.push((key, s.clone())),
            other => out.push((key, other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), src)
    }

    const ISSUE_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:18080"

[upstreams.app]
policy = "weighted"            # built-in name, or a path to a .wasm component
backends = [
  { name = "a", address = "127.0.0.1:19001", weight = 5 },
  { name = "b", address = "127.0.0.1:19002" },
  { name = "c", address = "127.0.0.1:19003" },
]
[upstreams.app.policy-config]  # optional, handed to the policy as is
cookie = "sy-backend"

[[routes]]
path-prefix = "/"
upstream = "app"
"#;

    #[test]
    fn the_documented_example_loads() {
        let c = parse(ISSUE_EXAMPLE).unwrap();
        assert_eq!(
            c.listeners,
            [ListenerConfig {
                addr: "127.0.0.1:18080".parse().unwrap(),
                tls: None
            }]
        );
        let app = &c.upstreams[0];
        assert_eq!(app.policy, PolicySource::Builtin("weighted".into()));
        assert_eq!(
            app.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
            [5, 1, 1]
        );
        assert_eq!(
            app.policy_config,
            [("cookie".to_string(), "sy-backend".to_string())]
        );
        assert_eq!(app.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.routes.len(), 1);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\n[upstreams.app\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:3:"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let src = ISSUE_EXAMPLE.replace(
            "policy = \"weighted\"",
            "policy = \"weighted\"\npolicyy = 1",
        );
        let err = parse(&src).unwrap_err().to_string();
        assert!(err.contains("test.toml:7:"), "{err}");
        assert!(err.contains("unknown field `policyy`"), "{err}");
    }

    #[test]
    fn a_route_to_a_missing_upstream_is_refused() {
        let src = ISSUE_EXAMPLE.replace("upstream = \"app\"", "upstream = \"ap\"");
        let err = parse(&src).unwrap_err().to_string();
        assert!(err.contains("test.toml:17:"), "{err}");
        assert!(
            err.contains("no upstream named \"ap\" (defined: app)"),
            "{err}"
        );
    }

    #[test]
    fn zero_weights_and_bad_addresses_are_refused() {
        let err = parse(&ISSUE_EXAMPLE.replace("weight = 5", "weight = 0"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("upstreams.app.backends[0].weight: must be at least 1"),
            "{err}"
        );
        let err = parse(&ISSUE_EXAMPLE.replace("127.0.0.1:19002", "127.0.0.1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstreams.app.backends[1].address"), "{err}");
    }

    #[test]
    fn the_native_round_robin_is_named_and_nothing_else_native_is() {
        let src = ISSUE_EXAMPLE.replace("\"weighted\"", "\"native:round-robin\"");
        let c = parse(&src).unwrap();
        assert_eq!(
            c.upstreams[0].policy,
            PolicySource::Native("round-robin".into())
        );
        assert_eq!(c.upstreams[0].policy.to_string(), "native:round-robin");
        let err = parse(&ISSUE_EXAMPLE.replace("\"weighted\"", "\"native:weighted\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.toml:6:10:"), "{err}");
        assert!(
            err.contains("the only native policy is native:round-robin"),
            "{err}"
        );
    }

    #[test]
    fn policy_paths_are_relative_to_the_config_file() {
        let src = ISSUE_EXAMPLE.replace("\"weighted\"", "\"plugins/my.wasm\"");
        let c = Config::parse(Path::new("/etc/switchyard/main.toml"), &src).unwrap();
        assert_eq!(
            c.upstreams[0].policy,
            PolicySource::File("/etc/switchyard/plugins/my.wasm".into())
        );
    }

    #[test]
    fn policy_config_is_flattened_with_dotted_keys_and_toml_values() {
        let src = ISSUE_EXAMPLE.replace(
            "cookie = \"sy-backend\"",
            "cookie = \"sy\"\nmax-age = 60\nsecure = true\nlist = [\"a\", \"b\"]\n[upstreams.app.policy-config.canary]\nheader = \"x-canary\"",
        );
        let c = parse(&src).unwrap();
        let got: Vec<(&str, &str)> = c.upstreams[0]
            .policy_config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("canary.header", "x-canary"),
                ("cookie", "sy"),
                ("list", "[\"a\", \"b\"]"),
                ("max-age", "60"),
                ("secure", "true")
            ]
        );
    }

    #[test]
    fn listen_takes_a_string_or_a_list() {
        let src = ISSUE_EXAMPLE.replace(
            "listen = \"127.0.0.1:18080\"",
            "listen = [\"127.0.0.1:1\", \"[::1]:2\"]",
        );
        assert_eq!(parse(&src).unwrap().listeners.len(), 2);
        let err = parse(&ISSUE_EXAMPLE.replace("127.0.0.1:18080", "localhost"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listen"), "{err}");
    }

    #[test]
    fn routes_are_ordered_most_specific_first() {
        let src = r#"
[server]
listen = "127.0.0.1:1"
[upstreams.a]
policy = "round-robin"
backends = [{ name = "x", address = "127.0.0.1:2" }]
[upstreams.b]
policy = "round-robin"
backends = [{ name = "x", address = "127.0.0.1:3" }]
[[routes]]
upstream = "a"
[[routes]]
path-prefix = "/api"
upstream = "b"
[[routes]]
host = "*.example.com"
upstream = "b"
[[routes]]
host = "Shop.Example.com"
upstream = "a"
"#;
        let c = parse(src).unwrap();
        let hosts: Vec<_> = c
            .routes
            .iter()
            .map(|r| (r.host.clone(), r.path_prefix.as_str()))
            .collect();
        assert_eq!(
            hosts,
            [
                (HostMatch::Exact("shop.example.com".into()), "/"),
                (HostMatch::Suffix(".example.com".into()), "/"),
                (HostMatch::Any, "/api"),
                (HostMatch::Any, "/"),
            ]
        );
    }

    #[test]
    fn one_upstream_needs_no_routes_but_two_do() {
        let one = ISSUE_EXAMPLE.split("[[routes]]").next().unwrap();
        assert_eq!(parse(one).unwrap().routes.len(), 1);
        let two = format!(
            "{one}\n[upstreams.other]\npolicy = \"round-robin\"\nbackends = [{{ name = \"x\", address = \"127.0.0.1:2\" }}]\n"
        );
        assert!(parse(&two).unwrap_err().to_string().contains("routes:"));
    }

    #[test]
    fn listen_entries_may_be_tls_tables() {
        let src = ISSUE_EXAMPLE.replace(
            "listen = \"127.0.0.1:18080\"",
            "listen = [ \"127.0.0.1:8080\", { address = \"127.0.0.1:8443\", tls = { cert = \"cert.pem\", key = \"key.pem\" } } ]",
        );
        let c = Config::parse(Path::new("/etc/sy/main.toml"), &src).unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].tls, None);
        let tls = c.listeners[1].tls.as_ref().unwrap();
        assert_eq!(tls.cert, Path::new("/etc/sy/cert.pem"));
        assert_eq!(tls.key, Path::new("/etc/sy/key.pem"));
        let bad = ISSUE_EXAMPLE.replace(
            "listen = \"127.0.0.1:18080\"",
            "listen = [{ address = \"127.0.0.1:8443\", tsl = {} }]",
        );
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.contains("unknown field `tsl`"), "{err}");
    }

    #[test]
    fn health_checks_backups_and_limits_parse() {
        let src = ISSUE_EXAMPLE
            .replace(
                "{ name = \"c\", address = \"127.0.0.1:19003\" }",
                "{ name = \"c\", address = \"127.0.0.1:19003\", backup = true, h2 = true }",
            )
            .replace(
                "[upstreams.app.policy-config]",
                "retries = 1\nretry-timeout = \"2s\"\n[upstreams.app.health-check]\npath = \"/healthz\"\ninterval = \"1s\"\nexpect-status = \"2xx\"\nrise = 2\nfall = 3\n[upstreams.app.policy-config]",
            )
            .replace("path-prefix = \"/\"", "path-prefix = \"/\"\nmax-body-size = \"1MiB\"");
        let c = parse(&src).unwrap();
        let up = &c.upstreams[0];
        assert!(up.backends[2].backup && up.backends[2].h2);
        assert_eq!((up.retries, up.retry_timeout), (1, Duration::from_secs(2)));
        let hc = up.health_check.as_ref().unwrap();
        assert_eq!(
            (hc.path.as_str(), hc.expect, hc.rise, hc.fall),
            ("/healthz", (200, 299), 2, 3)
        );
        assert_eq!(c.routes[0].max_body_size, Some(1024 * 1024));
    }

    #[test]
    fn status_ranges_parse() {
        assert_eq!(parse_status_range("200"), Some((200, 200)));
        assert_eq!(parse_status_range("200-399"), Some((200, 399)));
        assert_eq!(parse_status_range("3xx"), Some((300, 399)));
        assert_eq!(parse_status_range("600"), None);
        assert_eq!(parse_status_range("300-200"), None);
    }

    #[test]
    fn bad_durations_are_refused_with_the_key() {
        let src = ISSUE_EXAMPLE.replace(
            "policy = \"weighted\"",
            "policy = \"weighted\"\nconnect-timeout = \"soon\"",
        );
        let err = parse(&src).unwrap_err().to_string();
        assert!(err.contains("upstreams.app.connect-timeout"), "{err}");
    }
}
