//! `[state]` and an upstream's `shared-state`: where the counters and the
//! key-value store of a group's policies live. `"local"` (the default)
//! keeps them in the process; `"redis"` shares them with every proxy that
//! names the same Redis (`redis`: one server, `rediss://` for TLS, with an
//! optional `ca`; or `redis-cluster`: a Redis Cluster's nodes), through a
//! local copy synchronised in the background (see `policy::fleet`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use toml::Spanned;

use super::check::Checker;
use super::values::duration;

/// Values a proxy reserves in Redis at once for one counter (one
/// `INCRBY`): the proxy hands them out locally, so counters cost one Redis
/// round trip per this many `counter-add`s, and two proxies' sequences
/// interleave in runs of this length.
pub const DEFAULT_COUNTER_BLOCK: u64 = 64;
/// How often a proxy looks for key-value changes made by other proxies.
pub const DEFAULT_STATE_REFRESH: Duration = Duration::from_millis(100);
/// The largest `counter-block`.
const MAX_COUNTER_BLOCK: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileState {
    pub redis: Option<Spanned<String>>,
    pub redis_cluster: Option<Spanned<Vec<Spanned<String>>>>,
    pub ca: Option<Spanned<String>>,
    pub counter_block: Option<Spanned<u64>>,
    pub refresh: Option<Spanned<String>>,
}

/// `[state]`: the Redis that upstreams with `shared-state = "redis"` share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// `redis = "redis://HOST:PORT"` or `redis-cluster = [...]`.
    pub redis: RedisTarget,
    /// `ca = "FILE"`: the certificate authorities a `rediss://` server's
    /// certificate is verified against instead of the system's roots.
    pub ca: Option<CaFile>,
    /// Values reserved per `INCRBY` (`counter-block`, default
    /// [`DEFAULT_COUNTER_BLOCK`]).
    pub counter_block: u64,
    /// Interval of the key-value refresh (`refresh`, default
    /// [`DEFAULT_STATE_REFRESH`]); also the retry interval while Redis is
    /// unreachable.
    pub refresh: Duration,
}

/// Which Redis holds the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a replicated primary): `redis = "redis://HOST:PORT"`
    /// (optionally with `user:password@` and a `/DB` number), as written;
    /// `rediss://` for TLS.
    Single(String),
    /// A Redis Cluster: `redis-cluster = [...]`, the nodes to start from
    /// (the client learns the others from them), as written.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Whether the connections use TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        match self {
            RedisTarget::Single(url) => url.starts_with("rediss://"),
            RedisTarget::Cluster(urls) => urls.iter().all(|u| u.starts_with("rediss://")),
        }
    }
}

/// The addresses without any `user:password@`, for logs.
impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Single(url) => write!(f, "redis {}", redact(url)),
            RedisTarget::Cluster(urls) => {
                let urls: Vec<String> = urls.iter().map(|u| redact(u)).collect();
                write!(f, "redis cluster {}", urls.join(", "))
            }
        }
    }
}

fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// `[state] ca`: PEM certificates read when the config is loaded (so a
/// reload picks up a renewed file).
#[derive(Clone, PartialEq, Eq)]
pub struct CaFile {
    /// The file, absolute.
    pub path: PathBuf,
    /// Its contents: one or more `CERTIFICATE` blocks, checked.
    pub pem: Vec<u8>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile").field("path", &self.path).finish()
    }
}

/// Where one upstream's policy state lives (`shared-state`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SharedStateMode {
    /// In this process only (`"local"`, the default).
    #[default]
    Local,
    /// In Redis, shared by every proxy that uses it (`"redis"`).
    Redis(StateConfig),
}

impl FileState {
    /// The checked `[state]` (written at `at`), or `None` after an error.
    pub(super) fn to_state(
        &self,
        c: &mut Checker<'_>,
        base: &Path,
        at: Range<usize>,
    ) -> Option<StateConfig> {
        let counter_block = match &self.counter_block {
            None => DEFAULT_COUNTER_BLOCK,
            Some(n) if (1..=MAX_COUNTER_BLOCK).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                c.push(c.loc().error(
                    n,
                    format!("state.counter-block: give 1 to {MAX_COUNTER_BLOCK}"),
                ));
                DEFAULT_COUNTER_BLOCK
            }
        };
        let r = duration(
            c.loc(),
            "state.refresh",
            &self.refresh,
            DEFAULT_STATE_REFRESH,
            true,
        );
        let refresh = c.or(r, DEFAULT_STATE_REFRESH);
        let redis = self.target(c, at)?;
        let ca = match &self.ca {
            None => None,
            Some(ca) if !redis.tls() => {
                c.push(c.loc().error(
                    ca,
                    "state.ca: only for TLS connections (rediss://HOST:PORT); this Redis is plain redis://",
                ));
                return None;
            }
            Some(ca) => match read_ca(&base.join(ca.get_ref())) {
                Ok(file) => Some(file),
                Err(why) => {
                    c.push(c.loc().error(ca, format!("state.ca: {why}")));
                    return None;
                }
            },
        };
        Some(StateConfig {
            redis,
            ca,
            counter_block,
            refresh,
        })
    }

    /// `redis` or `redis-cluster`, exactly one of them.
    fn target(&self, c: &mut Checker<'_>, at: Range<usize>) -> Option<RedisTarget> {
        match (&self.redis, &self.redis_cluster) {
            (None, None) => {
                c.push(c.loc().origin(at).error(
                    "[state]: give redis = \"redis://HOST:PORT\" or redis-cluster = [\"redis://HOST:PORT\", ...]",
                ));
                None
            }
            (Some(_), Some(list)) => {
                c.push(c.loc().error(
                    list,
                    "state: give either redis (one server) or redis-cluster, not both",
                ));
                None
            }
            (Some(url), None) => match check_redis_url(url.get_ref()) {
                Ok(_) => Some(RedisTarget::Single(url.get_ref().trim().to_string())),
                Err(why) => {
                    c.push(c.loc().error(url, format!("state.redis: {why}")));
                    None
                }
            },
            (None, Some(list)) => cluster(c, list),
        }
    }
}

/// `redis-cluster = [...]`: at least one node, all `redis://` or all
/// `rediss://`, database 0.
fn cluster(c: &mut Checker<'_>, list: &Spanned<Vec<Spanned<String>>>) -> Option<RedisTarget> {
    if list.get_ref().is_empty() {
        c.push(c.loc().error(
            list,
            "state.redis-cluster: give at least one node, such as [\"redis://10.0.0.5:7000\"]",
        ));
        return None;
    }
    let mut urls = Vec::new();
    let mut ok = true;
    for url in list.get_ref() {
        let why = match check_redis_url(url.get_ref()) {
            Ok(parts) if parts.db.is_some_and(|db| db != 0) => {
                "a cluster has database 0 only".to_string()
            }
            Ok(_) => {
                urls.push(url.get_ref().trim().to_string());
                continue;
            }
            Err(why) => why,
        };
        c.push(c.loc().error(url, format!("state.redis-cluster: {why}")));
        ok = false;
    }
    let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    if ok && tls != 0 && tls != urls.len() {
        c.push(c.loc().error(
            list,
            "state.redis-cluster: give every node as redis:// or every node as rediss://, not both",
        ));
        ok = false;
    }
    ok.then_some(RedisTarget::Cluster(urls))
}

/// Reads and checks a CA file: one or more PEM certificates.
fn read_ca(path: &Path) -> Result<CaFile, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{shown}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{shown}: not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{shown}: no CERTIFICATE block in it"));
    }
    Ok(CaFile {
        path: path.to_path_buf(),
        pem,
    })
}

/// `shared-state = "local" | "redis"` of upstream `key`, given `[state]`.
pub(super) fn to_shared_state(
    c: &mut Checker<'_>,
    key: &str,
    v: &Option<Spanned<String>>,
    state: Option<&StateConfig>,
) -> SharedStateMode {
    let Some(v) = v else {
        return SharedStateMode::Local;
    };
    match (v.get_ref().as_str(), state) {
        ("local", _) => SharedStateMode::Local,
        ("redis", Some(s)) => SharedStateMode::Redis(s.clone()),
        ("redis", None) => {
            c.push(c.loc().error(
                v,
                format!(
                    "{key}.shared-state: \"redis\" needs a [state] section with redis = \"redis://HOST:PORT\" (or redis-cluster = [...])"
                ),
            ));
            SharedStateMode::Local
        }
        (other, _) => {
            c.push(c.loc().error(
                v,
                format!("{key}.shared-state: {other:?} is neither \"local\" nor \"redis\""),
            ));
            SharedStateMode::Local
        }
    }
}

/// What a checked Redis address says beyond its host and port.
struct UrlParts {
    /// The `/DB` number, if given.
    db: Option<u32>,
}

/// `redis[s]://[USER[:PASSWORD]@]HOST[:PORT][/DB]`.
fn check_redis_url(url: &str) -> Result<UrlParts, String> {
    let url = url.trim();
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Err(format!(
            "{url:?} is not a redis://HOST:PORT (or rediss://HOST:PORT, TLS) address"
        ));
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, port)) => (host, port.strip_prefix(':')),
            None => return Err(format!("{url:?}: unclosed [")),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{url:?}: {port:?} is not a port"));
    }
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    let db = match db {
        "" => None,
        db => Some(
            db.parse::<u32>()
                .map_err(|_| format!("{url:?}: {db:?} is not a database number"))?,
        ),
    };
    Ok(UrlParts { db })
}
