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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileBackend {
    name: Spanned<String>,
    address: Spanned<String>,
    weight: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileRoute {
    host: Option<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    upstream: Spanned<String>,
}

/// `listen = "addr"` or `listen = ["addr", ...]`.
#[derive(Debug)]
struct Listen(Vec<String>);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address such as \"127.0.0.1:8080\" or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Listen, E> {
                Ok(Listen(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Listen, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Listen(out))
            }
        }
        d.deserialize_any(V)
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
    /// Addresses to accept clients on.
    pub listeners: Vec<SocketAddr>,
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

/// Where a policy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicySource {
    /// One of the policies compiled into the binary, by name.
    Builtin(String),
    /// A component file, path resolved against the config's directory.
    File(PathBuf),
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::Builtin(name) => f.write_str(name),
            PolicySource::File(path) => write!(f, "{}", path.display()),
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

fn build(loc: &Locator<'_>, raw: FileConfig) -> Result<Config, ConfigError> {
    let mut listeners = Vec::new();
    if raw.server.listen.get_ref().0.is_empty() {
        return Err(loc.error(
            &raw.server.listen,
            "server.listen: give at least one address",
        ));
    }
    for addr in &raw.server.listen.get_ref().0 {
        let parsed: SocketAddr = addr.parse().map_err(|_| {
            loc.error(
                &raw.server.listen,
                format!("server.listen: {addr:?} is not an IP address and port such as \"127.0.0.1:8080\""),
            )
        })?;
        // Port 0 (any free port) may appear more than once.
        if parsed.port() != 0 && listeners.contains(&parsed) {
            return Err(loc.error(
                &raw.server.listen,
                format!("server.listen: {addr} is listed twice"),
            ));
        }
        listeners.push(parsed);
    }

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
            if addr.port() != 0 && listeners.contains(&addr) {
                return Err(loc.error(
                    &a.listen,
                    format!("admin.listen: {addr} is also a proxy listener"),
                ));
            }
            Some(addr)
        }
    };

    // Absolute, so that policy paths (relative to the config's directory)
    // stay right whatever the working directory does later, and file-watch
    // events can be matched against them. Errors keep the path as given.
    let absolute = std::path::absolute(loc.file).unwrap_or_else(|_| loc.file.to_path_buf());
    let base = absolute.parent().unwrap_or(Path::new("/"));
    let mut upstreams = Vec::new();
    for (name, up) in &raw.upstreams {
        upstreams.push(build_upstream(loc, base, name, up)?);
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
        routes.push(RouteConfig {
            host,
            path_prefix,
            upstream,
        });
    }
    if routes.is_empty() && upstreams.len() == 1 {
        routes.push(RouteConfig {
            host: HostMatch::Any,
            path_prefix: "/".into(),
            upstream: 0,
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
        });
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
                    let bytes = m
                        .get_ref()
                        .trim()
                        .parse::<bytesize::ByteSize>()
                        .map_err(|e| {
                            loc.error(
                                m,
                                format!(
                                    "{key}.policy-memory: {:?} is not a size like \"4MiB\" ({e})",
                                    m.get_ref()
                                ),
                            )
                        })?;
                    if bytes.as_u64() < 64 * 1024 {
                        return Err(loc.error(
                            m,
                            format!("{key}.policy-memory: at least 64KiB (one Wasm page)"),
                        ));
                    }
                    bytes.as_u64()
                }
            },
            max_failures: up
                .policy_max_failures
                .as_ref()
                .map_or(DEFAULT_POLICY_MAX_FAILURES, |m| *m.get_ref())
                .max(1),
        },
    })
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
            ["127.0.0.1:18080".parse::<SocketAddr>().unwrap()]
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
    fn bad_durations_are_refused_with_the_key() {
        let src = ISSUE_EXAMPLE.replace(
            "policy = \"weighted\"",
            "policy = \"weighted\"\nconnect-timeout = \"soon\"",
        );
        let err = parse(&src).unwrap_err().to_string();
        assert!(err.contains("upstreams.app.connect-timeout"), "{err}");
    }
}
