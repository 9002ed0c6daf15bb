//! `[upstreams.NAME]`: the backends of a group, its policy and the policy's
//! sandbox, the timeouts and limits toward its backends, passive and active
//! health.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::check::{Checker, Origin};
use super::dns::{DnsBackends, DnsSource, dns_refresh};
use super::file::{FileBackend, FileHealthCheck, FileUpstream};
use super::policy::{PolicySource, to_policy};
use super::state::SharedStateMode;
use super::values::{duration, flatten, is_authority, parse_status_range, resolve, size};

/// Connect timeout to a backend when the upstream sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for a backend's response headers once the request has been
/// sent (nginx `proxy_read_timeout` covers this too).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest gap between two reads from a backend (nginx `proxy_read_timeout`).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest gap between two successful writes to a client (nginx
/// `send_timeout`).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// An upgraded connection with no traffic either way for this long is closed.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long an idle pooled connection to a backend is kept.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Failures within `fail-timeout` that mark a backend down (nginx `max_fails`).
pub const DEFAULT_MAX_FAILS: u32 = 1;
/// How long a failed backend stays down, and the window failures are counted
/// in (nginx `fail_timeout`).
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections kept per backend (nginx `keepalive`).
pub const DEFAULT_KEEPALIVE: usize = 64;
/// Most TCP connections open to one backend (nginx `max_conns`, which is
/// unlimited by default; a cap keeps a flood of client requests from
/// becoming a flood of backend connections).
pub const DEFAULT_MAX_CONNECTIONS_PER_BACKEND: usize = 512;
/// Extra attempts on other backends after a failed one: by default every
/// backend may be tried, as nginx does.
pub const DEFAULT_RETRIES: u32 = u32::MAX;
/// Time budget for all attempts of one request, retries included.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one policy decision may run before it is interrupted.
pub const DEFAULT_POLICY_TIMEOUT: Duration = Duration::from_millis(1);
/// Linear memory one policy instance may use.
pub const DEFAULT_POLICY_MEMORY: u64 = 4 * 1024 * 1024;
/// The most memory a component may ask for in its `switchyard-limits`.
pub const DEFAULT_POLICY_MEMORY_MAX: u64 = 256 * 1024 * 1024;
/// The longest timeout a component may ask for in its `switchyard-limits`.
pub const DEFAULT_POLICY_TIMEOUT_MAX: Duration = Duration::from_millis(50);
/// Consecutive failures after which a policy is reported unhealthy.
pub const DEFAULT_POLICY_MAX_FAILURES: u32 = 5;

/// One upstream group.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Its name, as in `[upstreams.NAME]`.
    pub name: String,
    /// The selection policy.
    pub policy: PolicySource,
    /// `sha256 = ...` of the table form: the SHA-256 (hex) the policy's
    /// component must have; checked on the bytes compiled, at every load.
    pub policy_sha256: Option<String>,
    /// Where `policy = ...` was written, for errors found when loading it.
    pub policy_origin: Origin,
    /// `policy-config`, flattened for the policy (see `selector.wit`).
    pub policy_config: Vec<(String, String)>,
    /// The backends, in configuration order: the `address` entries, and
    /// what the `dns` and `srv` entries found when the group was built.
    pub backends: Vec<BackendConfig>,
    /// The `dns` and `srv` entries, looked up again every `dns_refresh`.
    pub dns: Vec<DnsBackends>,
    /// Time between two lookups of the DNS entries (a shorter TTL wins).
    pub dns_refresh: Duration,
    /// Timeout for a TCP connect to a backend (and for waiting for a
    /// connection slot when the backend is at `max-connections-per-backend`).
    pub connect_timeout: Duration,
    /// Timeout for a backend's response headers once the request (body
    /// included) has been sent.
    pub response_timeout: Duration,
    /// Longest the proxy waits on a backend's I/O once it has the response
    /// headers (or while the backend should be reading the request body).
    pub read_timeout: Duration,
    /// Longest gap between two successful writes to the client.
    pub send_timeout: Duration,
    /// Idle time after which an upgraded (WebSocket) connection is closed.
    pub tunnel_idle_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Idle pooled connections kept per backend.
    pub keepalive: usize,
    /// Most TCP connections open to one backend.
    pub max_connections_per_backend: usize,
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
    /// The proxy's zone (`[server] zone`), handed to the policy.
    pub zone: Option<String>,
    /// A candidate policy run beside the live one, if configured.
    pub shadow: Option<ShadowConfig>,
    /// Where the policy's counters and key-value store live
    /// (`shared-state`).
    pub shared_state: SharedStateMode,
}

/// Limits on a policy's instances. A limit the config does not set is
/// taken from what the component states it needs, up to the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Longest a call into the policy may run (epoch deadline).
    pub timeout: Duration,
    /// `policy-timeout` was written in the config.
    pub timeout_set: bool,
    /// The most a component may ask for as its timeout.
    pub timeout_max: Duration,
    /// Most linear memory one instance may have, in bytes.
    pub memory: u64,
    /// `policy-memory` was written in the config.
    pub memory_set: bool,
    /// The most a component may ask for as its memory.
    pub memory_max: u64,
    /// Consecutive failures that mark the policy unhealthy.
    pub max_failures: u32,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            timeout: DEFAULT_POLICY_TIMEOUT,
            timeout_set: false,
            timeout_max: DEFAULT_POLICY_TIMEOUT_MAX,
            memory: DEFAULT_POLICY_MEMORY,
            memory_set: false,
            memory_max: DEFAULT_POLICY_MEMORY_MAX,
            max_failures: DEFAULT_POLICY_MAX_FAILURES,
        }
    }
}

/// `shadow-policy`: a candidate policy asked after the live one, for
/// comparison only; it never routes a request.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// The candidate.
    pub policy: PolicySource,
    /// The SHA-256 its component must have (`{ ..., sha256 = "..." }`).
    pub sha256: Option<String>,
    /// Where `shadow-policy` was written.
    pub origin: Origin,
    /// Share of requests it is asked about (`shadow-sample`, 0 < s <= 1).
    pub sample: f64,
    /// `shadow-policy-config`, flattened.
    pub policy_config: Vec<(String, String)>,
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
    /// `tags = { zone = "eu-1" }`, sorted by key, values as text: handed
    /// to the policy.
    pub tags: Vec<(String, String)>,
    /// The `dns` or `srv` entry that found it, if one did.
    pub dns: Option<DnsSource>,
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

/// A count that must be at least 1, or `default` when absent.
fn at_least_one(c: &mut Checker<'_>, key: &str, v: &Option<Spanned<u32>>, default: u32) -> u32 {
    match v {
        None => default,
        Some(n) if *n.get_ref() == 0 => {
            c.push(c.loc().error(n, format!("{key}: must be at least 1")));
            default
        }
        Some(n) => *n.get_ref(),
    }
}

impl FileUpstream {
    /// The checked group, or `None` (with its problems noted) when it
    /// cannot be used at all.
    pub(super) fn to_upstream(
        &self,
        c: &mut Checker<'_>,
        base: &Path,
        name: &str,
    ) -> Option<UpstreamConfig> {
        let key = format!("upstreams.{name}");
        let policy = to_policy(c, base, &format!("{key}.policy"), &self.policy);
        let backends = self.backends(c, &key);
        let has_dns = self.backends.get_ref().iter().any(|b| {
            let b = b.get_ref();
            b.dns.is_some() || b.srv.is_some()
        });
        let refresh = dns_refresh(c, &key, &self.dns_refresh, has_dns);
        let t = |c: &mut Checker<'_>, k: &str, v: &Option<Spanned<String>>, d: Duration| {
            let r = duration(c.loc(), &format!("{key}.{k}"), v, d, true);
            c.or(r, d)
        };
        let (policy, policy_sha256) = policy?;
        let (backends, dns) = backends?;
        let up = UpstreamConfig {
            name: name.to_string(),
            policy,
            policy_sha256,
            policy_origin: c.loc().origin(self.policy.span()),
            policy_config: self.policy_config(),
            backends,
            dns,
            dns_refresh: refresh,
            connect_timeout: t(
                c,
                "connect-timeout",
                &self.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            ),
            response_timeout: t(
                c,
                "response-timeout",
                &self.response_timeout,
                DEFAULT_RESPONSE_TIMEOUT,
            ),
            read_timeout: t(c, "read-timeout", &self.read_timeout, DEFAULT_READ_TIMEOUT),
            send_timeout: t(c, "send-timeout", &self.send_timeout, DEFAULT_SEND_TIMEOUT),
            tunnel_idle_timeout: t(
                c,
                "tunnel-idle-timeout",
                &self.tunnel_idle_timeout,
                DEFAULT_TUNNEL_IDLE_TIMEOUT,
            ),
            idle_timeout: t(c, "idle-timeout", &self.idle_timeout, DEFAULT_IDLE_TIMEOUT),
            keepalive: self
                .keepalive
                .as_ref()
                .map_or(DEFAULT_KEEPALIVE, |k| *k.get_ref()),
            max_connections_per_backend: match &self.max_connections_per_backend {
                None => DEFAULT_MAX_CONNECTIONS_PER_BACKEND,
                Some(n) if *n.get_ref() == 0 => {
                    c.push(c.loc().error(
                        n,
                        format!("{key}.max-connections-per-backend: must be at least 1"),
                    ));
                    DEFAULT_MAX_CONNECTIONS_PER_BACKEND
                }
                Some(n) => *n.get_ref(),
            },
            max_fails: self
                .max_fails
                .as_ref()
                .map_or(DEFAULT_MAX_FAILS, |m| *m.get_ref()),
            fail_timeout: t(c, "fail-timeout", &self.fail_timeout, DEFAULT_FAIL_TIMEOUT),
            sandbox: self.sandbox(c, &key),
            retries: self.retries.unwrap_or(DEFAULT_RETRIES),
            retry_timeout: t(
                c,
                "retry-timeout",
                &self.retry_timeout,
                DEFAULT_RETRY_TIMEOUT,
            ),
            health_check: self
                .health_check
                .as_ref()
                .and_then(|h| h.get_ref().to_health_check(c, &key)),
            // Set from `[server]` once both are read.
            zone: None,
            shadow: self.shadow(c, base, &key),
            // Set once `[state]` is read.
            shared_state: SharedStateMode::Local,
        };
        Some(up)
    }

    /// The `address` entries and the `dns`/`srv` ones.
    fn backends(
        &self,
        c: &mut Checker<'_>,
        key: &str,
    ) -> Option<(Vec<BackendConfig>, Vec<DnsBackends>)> {
        let list = self.backends.get_ref();
        if list.is_empty() {
            c.push(c.loc().error(
                &self.backends,
                format!("{key}.backends: an upstream needs at least one backend"),
            ));
            return None;
        }
        let before = c.errors.len();
        let mut backends: Vec<BackendConfig> = Vec::new();
        let mut dns: Vec<DnsBackends> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (i, b) in list.iter().enumerate() {
            let (b, key) = (b.get_ref(), format!("{key}.backends[{i}]"));
            let Some(name) = b.entry_name(c, &key, &names) else {
                continue;
            };
            names.push(name.clone());
            if let Some(why) = b.source_problem() {
                c.push(c.loc().error(&b.name, format!("{key}: {why}")));
            } else if b.address.is_none() {
                dns.extend(b.to_dns(c, &key, name, backends.len()));
            } else if let Some(b) = b.to_backend(c, &key, name) {
                backends.push(b);
            }
        }
        let all_backup = backends.iter().all(|b| b.backup) && dns.iter().all(|d| d.backup);
        if all_backup && !(backends.is_empty() && dns.is_empty()) {
            c.push(c.loc().error(
                &self.backends,
                format!("{key}.backends: every backend is a backup; at least one must not be"),
            ));
        }
        (c.errors.len() == before).then_some((backends, dns))
    }

    fn policy_config(&self) -> Vec<(String, String)> {
        let Some(t) = &self.policy_config else {
            return Vec::new();
        };
        let mut out = Vec::new();
        flatten("", t.get_ref(), &mut out);
        out.sort();
        out
    }

    fn sandbox(&self, c: &mut Checker<'_>, key: &str) -> SandboxConfig {
        let timeout = |c: &mut Checker<'_>, k: &str, v: &Option<Spanned<String>>, d: Duration| {
            let r = duration(c.loc(), &format!("{key}.{k}"), v, d, true);
            match (c.or(r, d), v) {
                (t, Some(s)) if t > Duration::from_secs(10) => {
                    c.push(c.loc().error(s, format!("{key}.{k}: at most 10s")));
                    d
                }
                (t, _) => t,
            }
        };
        let memory = |c: &mut Checker<'_>, k: &str, v: &Option<Spanned<String>>, d: u64| {
            let Some(m) = v else { return d };
            match size(c.loc(), &format!("{key}.{k}"), m) {
                Ok(bytes) if bytes >= 64 * 1024 => bytes,
                Ok(_) => {
                    c.push(
                        c.loc()
                            .error(m, format!("{key}.{k}: at least 64KiB (one Wasm page)")),
                    );
                    d
                }
                Err(e) => {
                    c.push(e);
                    d
                }
            }
        };
        SandboxConfig {
            timeout: timeout(
                c,
                "policy-timeout",
                &self.policy_timeout,
                DEFAULT_POLICY_TIMEOUT,
            ),
            timeout_set: self.policy_timeout.is_some(),
            timeout_max: timeout(
                c,
                "policy-timeout-max",
                &self.policy_timeout_max,
                DEFAULT_POLICY_TIMEOUT_MAX,
            ),
            memory: memory(
                c,
                "policy-memory",
                &self.policy_memory,
                DEFAULT_POLICY_MEMORY,
            ),
            memory_set: self.policy_memory.is_some(),
            memory_max: memory(
                c,
                "policy-memory-max",
                &self.policy_memory_max,
                DEFAULT_POLICY_MEMORY_MAX,
            ),
            max_failures: at_least_one(
                c,
                &format!("{key}.policy-max-failures"),
                &self.policy_max_failures,
                DEFAULT_POLICY_MAX_FAILURES,
            ),
        }
    }
}

impl FileBackend {
    /// The entry's name, unless it is empty or one of `earlier`.
    fn entry_name(&self, c: &mut Checker<'_>, key: &str, earlier: &[String]) -> Option<String> {
        let name = self.name.get_ref();
        if name.is_empty() {
            c.push(
                c.loc()
                    .error(&self.name, format!("{key}.name: must not be empty")),
            );
            return None;
        }
        if earlier.contains(name) {
            c.push(c.loc().error(
                &self.name,
                format!("{key}.name: {name:?} is used twice in this upstream"),
            ));
            return None;
        }
        Some(name.clone())
    }

    /// An `address` entry.
    fn to_backend(&self, c: &mut Checker<'_>, key: &str, name: String) -> Option<BackendConfig> {
        let written = self.address.as_ref()?;
        let address = written.get_ref().trim().to_string();
        let socket_addr = match resolve(&address) {
            Ok(a) => a,
            Err(why) => {
                c.push(c.loc().error(written, format!("{key}.address: {why}")));
                return None;
            }
        };
        let weight = at_least_one(c, &format!("{key}.weight"), &self.weight, 1);
        let tags = self.tags(c, key)?;
        Some(BackendConfig {
            name,
            address,
            socket_addr,
            weight,
            backup: self.backup,
            h2: self.h2,
            tags,
            dns: None,
        })
    }

    /// `tags`: a flat table of strings, numbers or booleans.
    pub(super) fn tags(&self, c: &mut Checker<'_>, key: &str) -> Option<Vec<(String, String)>> {
        let Some(table) = &self.tags else {
            return Some(Vec::new());
        };
        let mut tags = Vec::new();
        for (k, v) in table.get_ref() {
            match v {
                toml::Value::String(s) => tags.push((k.clone(), s.clone())),
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    tags.push((k.clone(), v.to_string()))
                }
                _ => {
                    c.push(c.loc().error(
                        table,
                        format!("{key}.tags.{k}: a tag is a string, a number or a boolean"),
                    ));
                    return None;
                }
            }
        }
        tags.sort();
        Some(tags)
    }
}

impl FileHealthCheck {
    fn to_health_check(&self, c: &mut Checker<'_>, key: &str) -> Option<HealthCheckConfig> {
        let key = format!("{key}.health-check");
        let before = c.errors.len();
        let path = match &self.path {
            None => "/".to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                c.push(
                    c.loc()
                        .error(p, format!("{key}.path: must start with \"/\"")),
                );
                "/".to_string()
            }
        };
        let mut t = |k: &str, v: &Option<Spanned<String>>, d: Duration| {
            let r = duration(c.loc(), &format!("{key}.{k}"), v, d, true);
            c.or(r, d)
        };
        let interval = t("interval", &self.interval, Duration::from_secs(5));
        let timeout = t("timeout", &self.timeout, Duration::from_secs(2));
        let expect = match &self.expect_status {
            None => (200, 399),
            Some(e) => parse_status_range(e.get_ref()).unwrap_or_else(|| {
                c.push(c.loc().error(
                    e,
                    format!(
                        "{key}.expect-status: {:?} is not a status (\"200\"), a range (\"200-299\") or a class (\"2xx\")",
                        e.get_ref()
                    ),
                ));
                (200, 399)
            }),
        };
        let host = match &self.host {
            None => None,
            Some(h) if is_authority(h.get_ref()) => Some(h.get_ref().clone()),
            Some(h) => {
                c.push(c.loc().error(
                    h,
                    format!(
                        "{key}.host: {:?} is not a host name, optionally with a port, such as \"app.internal\" or \"app.internal:8080\"",
                        h.get_ref()
                    ),
                ));
                None
            }
        };
        let rise = at_least_one(c, &format!("{key}.rise"), &self.rise, 1);
        let fall = at_least_one(c, &format!("{key}.fall"), &self.fall, 1);
        (c.errors.len() == before).then_some(HealthCheckConfig {
            path,
            host,
            interval,
            timeout,
            expect,
            rise,
            fall,
        })
    }
}
