//! The TOML configuration: what the file says, checked into strict types.
//!
//! Two layers, as in Sozu: [`file`] mirrors the file (serde, kebab-case
//! keys, unknown keys refused, spans kept), and the `to_*` conversions in
//! [`server`], [`upstream`] and [`routes`] turn it into the runtime
//! [`Config`] with defaults filled in, addresses resolved and
//! cross-references checked. Every problem is reported, each with its file,
//! line, column and key; this module imports nothing from the rest of the
//! crate.

mod file;
mod routes;
mod server;
mod upstream;
pub mod values;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

pub use routes::{HostMatch, RouteConfig};
pub use server::{
    AccessLogConfig, AdminConfig, ClientLimits, DEFAULT_CLIENT_BODY_TIMEOUT,
    DEFAULT_CLIENT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS, DEFAULT_SHUTDOWN_GRACE, DEFAULT_TLS_HANDSHAKE_TIMEOUT, ListenerConfig,
    LogFormat, TlsFiles,
};
pub use upstream::{
    BackendConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FAIL_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEEPALIVE, DEFAULT_MAX_CONNECTIONS_PER_BACKEND, DEFAULT_MAX_FAILS,
    DEFAULT_POLICY_MAX_FAILURES, DEFAULT_POLICY_MEMORY, DEFAULT_POLICY_TIMEOUT,
    DEFAULT_READ_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, DEFAULT_RETRIES, DEFAULT_RETRY_TIMEOUT,
    DEFAULT_SEND_TIMEOUT, DEFAULT_TUNNEL_IDLE_TIMEOUT, HealthCheckConfig, PolicySource,
    SandboxConfig, UpstreamConfig,
};

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

/// Every problem found in one configuration, in file order; shown one per
/// line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

fn location(file: &Path, line: usize, column: usize) -> String {
    match (line, column) {
        (0, _) => file.display().to_string(),
        (l, 0) => format!("{}:{l}", file.display()),
        (l, c) => format!("{}:{l}:{c}", file.display()),
    }
}

/// Where something was written: the file and the position in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The config file ("(demo)" for the built-in demo).
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
pub(crate) struct Locator<'a> {
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

    /// An error about the file as a whole.
    fn whole(&self, message: impl Into<String>) -> ConfigError {
        Origin {
            file: self.file.to_path_buf(),
            ..Origin::default()
        }
        .error(message)
    }
}

/// Collects problems while a config is checked, so that one run reports
/// them all.
pub(crate) struct Checker<'a> {
    loc: Locator<'a>,
    errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    /// The value of `r`, or `fallback` after noting its error.
    fn or<T>(&mut self, r: Result<T, ConfigError>, fallback: T) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                self.errors.push(e);
                fallback
            }
        }
    }

    /// Notes a problem.
    fn push(&mut self, e: ConfigError) {
        self.errors.push(e);
    }

    fn loc(&self) -> &Locator<'a> {
        &self.loc
    }
}

/// A checked configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, absolute; relative paths in it are resolved
    /// against its directory.
    pub file: PathBuf,
    /// Where to accept clients.
    pub listeners: Vec<ListenerConfig>,
    /// Limits and timeouts on what clients send.
    pub limits: ClientLimits,
    /// Also send an RFC 7239 `Forwarded` header.
    pub forwarded: bool,
    /// `Upgrade` protocols tunnelled to backends (lower case).
    pub upgrades: Vec<String>,
    /// Where the access log goes, if anywhere.
    pub access_log: Option<AccessLogConfig>,
    /// Where precompiled policies are kept, if anywhere.
    pub cache_dir: Option<PathBuf>,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace: std::time::Duration,
    /// Reload when the config file or a policy file changes.
    pub watch: bool,
    /// The admin API, if enabled.
    pub admin: Option<AdminConfig>,
    /// Upstream groups, by name order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes, most specific first.
    pub routes: Vec<RouteConfig>,
}

impl Config {
    /// Reads, parses and checks a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        let src = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Config::parse(file, &src)
    }

    /// Parses and checks configuration text that came from `file`.
    pub fn parse(file: &Path, src: &str) -> Result<Config, ConfigErrors> {
        let loc = Locator { file, src };
        let raw: file::FileConfig = toml::from_str(src).map_err(|e| {
            let origin = e
                .span()
                .map(|s| loc.origin(s))
                .unwrap_or_else(|| loc.whole("").into_origin());
            origin.error(e.message().trim().to_string())
        })?;
        let mut checker = Checker {
            loc,
            errors: Vec::new(),
        };
        let config = build(&mut checker, raw);
        if checker.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(checker.errors))
        }
    }
}

impl ConfigError {
    fn into_origin(self) -> Origin {
        match self {
            ConfigError::Invalid {
                file, line, column, ..
            } => Origin { file, line, column },
            ConfigError::Read { file, .. } => Origin {
                file,
                ..Origin::default()
            },
        }
    }
}

fn build(c: &mut Checker<'_>, raw: file::FileConfig) -> Config {
    // Absolute, so that relative paths in the file (policies, certificates)
    // stay right whatever the working directory does later, and file-watch
    // events can be matched against them. Errors keep the path as given.
    let absolute = std::path::absolute(c.loc.file).unwrap_or_else(|_| c.loc.file.to_path_buf());
    let base = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();

    let server = raw.server.to_server(c, &base);
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| a.to_admin(c, &base, &server.listeners));
    let access_log = raw
        .access_log
        .as_ref()
        .map(|a| a.get_ref().to_access_log(c, &base, a.span()));
    let upstreams: Vec<UpstreamConfig> = raw
        .upstreams
        .iter()
        .filter_map(|(name, up)| up.get_ref().to_upstream(c, &base, name))
        .collect();
    let names: Vec<&str> = raw.upstreams.keys().map(String::as_str).collect();
    let routes = routes::to_routes(c, &raw.routes, &names, &upstreams);

    Config {
        file: absolute,
        listeners: server.listeners,
        limits: server.limits,
        forwarded: server.forwarded,
        upgrades: server.upgrades,
        cache_dir: server.cache_dir,
        access_log,
        trusted_proxies: server.trusted_proxies,
        shutdown_grace: server.shutdown_grace,
        watch: server.watch,
        admin,
        upstreams,
        routes,
    }
}

#[cfg(test)]
mod tests;
