//! `[server]`, `[admin]` and `[access-log]`: listeners, client limits and
//! timeouts, trusted proxies, the admin API and the access log.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::check::{Checker, Origin};
use super::dns::resolver;
use super::file::{FileAccessLog, FileAdmin, FileServer, LogFormat};
use super::values::{default_cache_dir, duration, is_authority, is_token, size};

/// How long in-flight requests may run after SIGTERM before the process exits.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) a client may send.
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 64 * 1024;
/// Most header fields in a request.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Most open client connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// How long a client connection may sit idle (no request in progress), or
/// take to send a request head (nginx `keepalive_timeout`,
/// `client_header_timeout`).
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest gap between two reads of a request body (nginx
/// `client_body_timeout`).
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a TLS client has to complete its handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Limits and timeouts on client connections and requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// Largest request head in bytes (431 beyond it).
    pub max_header_size: usize,
    /// Most header fields (431 beyond it).
    pub max_headers: usize,
    /// Most open connections per listener; at the limit, idle ones are
    /// closed first, then new ones wait in the kernel's queue.
    pub max_connections: usize,
    /// Where `max-connections` was written; `None` when defaulted (a
    /// default that does not fit the file-descriptor limit is lowered, a
    /// written one is refused).
    pub max_connections_origin: Option<Origin>,
    /// A connection with no request in progress for this long is closed;
    /// it also bounds the time to send a request head.
    pub client_idle_timeout: Duration,
    /// Longest gap between two reads of a request body.
    pub client_body_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
}

/// Where and how to write the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// A file to append to; `None` is standard output.
    pub path: Option<PathBuf>,
    /// Line format.
    pub format: LogFormat,
    /// Where `path` was written, for errors opening it.
    pub origin: Origin,
}

/// The admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A file holding the bearer token every request must carry.
    pub token_file: Option<PathBuf>,
    /// Where `token-file` was written.
    pub token_origin: Origin,
    /// Decisions kept per upstream for `GET /decisions` (0: none kept).
    pub decisions: usize,
}

/// Most decisions `[admin] decisions` may keep per upstream.
pub const MAX_DECISIONS: usize = 100_000;

/// What `[server]` gives, before it is spread over [`super::Config`].
pub(super) struct Server {
    pub listeners: Vec<ListenerConfig>,
    pub limits: ClientLimits,
    pub forwarded: bool,
    pub upgrades: Vec<String>,
    pub cache_dir: Option<PathBuf>,
    pub insecure_registries: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_grace: Duration,
    pub watch: bool,
    pub release_startup_pages: bool,
    pub zone: Option<String>,
    pub resolver: Option<SocketAddr>,
}

impl FileServer {
    pub(super) fn to_server(&self, c: &mut Checker<'_>, base: &Path) -> Server {
        let listeners = self.listeners(c, base);
        let timeout = |c: &mut Checker<'_>, key: &str, v, default| {
            let r = duration(c.loc(), &format!("server.{key}"), v, default, true);
            c.or(r, default)
        };
        let limits = ClientLimits {
            max_header_size: self.max_header_size(c),
            max_headers: match &self.max_headers {
                None => DEFAULT_MAX_HEADERS,
                Some(v) if *v.get_ref() == 0 => {
                    c.push(c.loc().error(v, "server.max-headers: must be at least 1"));
                    DEFAULT_MAX_HEADERS
                }
                Some(v) => *v.get_ref(),
            },
            max_connections: match &self.max_connections {
                None => DEFAULT_MAX_CONNECTIONS,
                Some(v) if *v.get_ref() == 0 => {
                    c.push(
                        c.loc()
                            .error(v, "server.max-connections: must be at least 1"),
                    );
                    DEFAULT_MAX_CONNECTIONS
                }
                Some(v) => *v.get_ref(),
            },
            max_connections_origin: self
                .max_connections
                .as_ref()
                .map(|v| c.loc().origin(v.span())),
            client_idle_timeout: timeout(
                c,
                "client-idle-timeout",
                &self.client_idle_timeout,
                DEFAULT_CLIENT_IDLE_TIMEOUT,
            ),
            client_body_timeout: timeout(
                c,
                "client-body-timeout",
                &self.client_body_timeout,
                DEFAULT_CLIENT_BODY_TIMEOUT,
            ),
            tls_handshake_timeout: timeout(
                c,
                "tls-handshake-timeout",
                &self.tls_handshake_timeout,
                DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            ),
        };
        let shutdown_grace = duration(
            c.loc(),
            "server.shutdown-grace",
            &self.shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE,
            false,
        );
        Server {
            listeners,
            limits,
            forwarded: self.forwarded,
            upgrades: self.upgrades(c),
            cache_dir: match self.cache_dir.as_deref() {
                Some("off") | Some("") => None,
                Some(dir) => Some(base.join(dir)),
                None => default_cache_dir(),
            },
            insecure_registries: self.insecure_registries(c),
            trusted_proxies: self.trusted_proxies(c),
            shutdown_grace: c.or(shutdown_grace, DEFAULT_SHUTDOWN_GRACE),
            watch: self.watch.unwrap_or(true),
            release_startup_pages: self.release_startup_pages.unwrap_or(true),
            zone: match &self.zone {
                Some(z) if z.get_ref().trim().is_empty() => {
                    c.push(c.loc().error(z, "server.zone: must not be empty"));
                    None
                }
                z => z.as_ref().map(|z| z.get_ref().trim().to_string()),
            },
            resolver: resolver(c, &self.resolver),
        }
    }

    fn listeners(&self, c: &mut Checker<'_>, base: &Path) -> Vec<ListenerConfig> {
        let listen = &self.listen;
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        if listen.get_ref().0.is_empty() {
            c.push(
                c.loc()
                    .error(listen, "server.listen: give at least one address"),
            );
        }
        for entry in &listen.get_ref().0 {
            let addr = &entry.address;
            let Ok(parsed) = addr.parse::<SocketAddr>() else {
                c.push(c.loc().error(
                    listen,
                    format!("server.listen: {addr:?} is not an IP address and port such as \"127.0.0.1:8080\""),
                ));
                continue;
            };
            // Port 0 (any free port) may appear more than once.
            if parsed.port() != 0 && listeners.iter().any(|l| l.addr == parsed) {
                c.push(
                    c.loc()
                        .error(listen, format!("server.listen: {addr} is listed twice")),
                );
                continue;
            }
            let tls = entry.tls.as_ref().map(|t| TlsFiles {
                cert: base.join(&t.cert),
                key: base.join(&t.key),
                origin: c.loc().origin(listen.span()),
            });
            listeners.push(ListenerConfig { addr: parsed, tls });
        }
        listeners
    }

    fn max_header_size(&self, c: &mut Checker<'_>) -> usize {
        let Some(v) = &self.max_header_size else {
            return DEFAULT_MAX_HEADER_SIZE as usize;
        };
        match size(c.loc(), "server.max-header-size", v) {
            Ok(n) if (8 * 1024..=16 * 1024 * 1024).contains(&n) => n as usize,
            Ok(_) => {
                c.push(
                    c.loc()
                        .error(v, "server.max-header-size: between 8KiB and 16MiB"),
                );
                DEFAULT_MAX_HEADER_SIZE as usize
            }
            Err(e) => {
                c.push(e);
                DEFAULT_MAX_HEADER_SIZE as usize
            }
        }
    }

    fn upgrades(&self, c: &mut Checker<'_>) -> Vec<String> {
        let Some(list) = &self.upgrades else {
            return vec!["websocket".into()];
        };
        let mut out = Vec::new();
        for p in list.get_ref() {
            let name = p.get_ref().trim().to_ascii_lowercase();
            if name == "h2c" {
                c.push(c.loc().error(
                    p,
                    "server.upgrades: h2c cannot be tunnelled (clients speak HTTP/2 to the proxy directly)",
                ));
            } else if !is_token(&name) {
                c.push(c.loc().error(
                    p,
                    format!(
                        "server.upgrades: {:?} is not a protocol name such as \"websocket\"",
                        p.get_ref()
                    ),
                ));
            } else {
                out.push(name);
            }
        }
        out
    }

    /// `insecure-registries`: `host[:port]` of registries spoken to over
    /// plain HTTP.
    fn insecure_registries(&self, c: &mut Checker<'_>) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.insecure_registries {
            let text = r.get_ref().trim();
            if is_authority(text) && !text.contains('/') {
                out.push(text.to_string());
            } else {
                c.push(c.loc().error(
                    r,
                    format!(
                        "server.insecure-registries: {:?} is not a registry host[:port] such as \"127.0.0.1:5000\"",
                        r.get_ref()
                    ),
                ));
            }
        }
        out
    }

    fn trusted_proxies(&self, c: &mut Checker<'_>) -> Vec<IpNet> {
        let mut out = Vec::new();
        for t in &self.trusted_proxies {
            let net = t
                .get_ref()
                .parse::<IpNet>()
                .or_else(|_| t.get_ref().parse::<IpAddr>().map(IpNet::from));
            match net {
                Ok(n) => out.push(n),
                Err(_) => c.push(c.loc().error(
                    t,
                    format!(
                        "server.trusted-proxies: {:?} is not an IP address or CIDR range",
                        t.get_ref()
                    ),
                )),
            }
        }
        out
    }
}

impl FileAdmin {
    pub(super) fn to_admin(
        &self,
        c: &mut Checker<'_>,
        base: &Path,
        listeners: &[ListenerConfig],
    ) -> Option<AdminConfig> {
        let Ok(addr) = self.listen.get_ref().parse::<SocketAddr>() else {
            c.push(c.loc().error(
                &self.listen,
                format!(
                    "admin.listen: {:?} is not an IP address and port such as \"127.0.0.1:9901\"",
                    self.listen.get_ref()
                ),
            ));
            return None;
        };
        if !addr.ip().is_loopback() && !self.allow_remote {
            c.push(c.loc().error(
                &self.listen,
                format!("admin.listen: {addr} is not a loopback address; the admin API can reload the proxy, so set allow-remote = true if you really mean it"),
            ));
            return None;
        }
        if addr.port() != 0 && listeners.iter().any(|l| l.addr == addr) {
            c.push(c.loc().error(
                &self.listen,
                format!("admin.listen: {addr} is also a proxy listener"),
            ));
            return None;
        }
        let (token_file, token_origin) = match &self.token_file {
            None => (None, Origin::default()),
            Some(t) => (Some(base.join(t.get_ref())), c.loc().origin(t.span())),
        };
        let decisions = match &self.decisions {
            Some(n) if *n.get_ref() > MAX_DECISIONS => {
                c.push(c.loc().error(
                    n,
                    format!(
                        "admin.decisions: at most {MAX_DECISIONS} decisions are kept per upstream"
                    ),
                ));
                0
            }
            Some(n) => *n.get_ref(),
            None => 0,
        };
        Some(AdminConfig {
            addr,
            token_file,
            token_origin,
            decisions,
        })
    }
}

impl FileAccessLog {
    pub(super) fn to_access_log(
        &self,
        c: &Checker<'_>,
        base: &Path,
        table: std::ops::Range<usize>,
    ) -> AccessLogConfig {
        // A defaulted path has no span of its own: point at the table.
        let span = if self.path.span().is_empty() {
            table
        } else {
            self.path.span()
        };
        AccessLogConfig {
            path: (self.path.get_ref() != "-").then(|| base.join(self.path.get_ref())),
            format: self.format,
            origin: c.loc().origin(span),
        }
    }
}
