//! Reading a config: the file parsed, every section converted and
//! checked, cross-references resolved, into one [`Config`].

use std::path::{Path, PathBuf};

use super::check::{Checker, ConfigError, ConfigErrors, Locator};
use super::file;
use super::routes::{self, RouteConfig};
use super::server::{AccessLogConfig, AdminConfig, ClientLimits, ListenerConfig};
use super::state::{StateConfig, to_shared_state};
use super::upstream::UpstreamConfig;

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
    /// Where precompiled policies and policies pulled from registries are
    /// kept, if anywhere.
    pub cache_dir: Option<PathBuf>,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace: std::time::Duration,
    /// Reload when the config file or a policy file changes.
    pub watch: bool,
    /// Give back the binary's pages start-up used once serving (see
    /// `control::startup_pages`).
    pub release_startup_pages: bool,
    /// The proxy's zone, for zone-aware policies.
    pub zone: Option<String>,
    /// The DNS server `dns` and `srv` backends are looked up with (UDP,
    /// then TCP); `None`: the system's (`/etc/resolv.conf`).
    pub resolver: Option<std::net::SocketAddr>,
    /// The admin API, if enabled.
    pub admin: Option<AdminConfig>,
    /// `[state]`: the Redis shared by upstreams with `shared-state =
    /// "redis"`, if configured.
    pub state: Option<StateConfig>,
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
    let state = raw
        .state
        .as_ref()
        .and_then(|s| s.get_ref().to_state(c, &base, s.span()));
    let upstreams: Vec<UpstreamConfig> = raw
        .upstreams
        .iter()
        .filter_map(|(name, up)| {
            let mut config = up.get_ref().to_upstream(c, &base, name)?;
            let key = format!("upstreams.{name}");
            let shared = &up.get_ref().shared_state;
            config.shared_state = to_shared_state(c, &key, shared, state.as_ref());
            Some(config)
        })
        .map(|mut up| {
            up.policy.allow_plain_http(&server.insecure_registries);
            if let Some(shadow) = &mut up.shadow {
                shadow.policy.allow_plain_http(&server.insecure_registries);
            }
            UpstreamConfig {
                zone: server.zone.clone(),
                ..up
            }
        })
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
        release_startup_pages: server.release_startup_pages,
        zone: server.zone.clone(),
        resolver: server.resolver,
        admin,
        state,
        upstreams,
        routes,
    }
}
