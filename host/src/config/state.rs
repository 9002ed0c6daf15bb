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

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigErrors};
    use super::*;
    use std::path::Path;

    fn parse(src: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("test.toml"), src)
    }

    fn with(state: &str, shared: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n{state}\n[upstreams.app]\npolicy = \"round-robin\"\nbackends = [{{ name = \"a\", address = \"127.0.0.1:2\" }}]\n{shared}\n"
        )
    }

    #[test]
    fn upstreams_keep_their_state_locally_by_default() {
        let c = parse(&with("[state]\nredis = \"redis://127.0.0.1:6379\"", "")).unwrap();
        assert_eq!(c.upstreams[0].shared_state, SharedStateMode::Local);
    }

    #[test]
    fn shared_state_redis_takes_the_state_section() {
        let c = parse(&with(
            "[state]\nredis = \"redis://127.0.0.1:6379/2\"\ncounter-block = 16\nrefresh = \"250ms\"",
            "shared-state = \"redis\"",
        ))
        .unwrap();
        let SharedStateMode::Redis(s) = &c.upstreams[0].shared_state else {
            panic!("not redis");
        };
        assert_eq!(
            s.redis,
            RedisTarget::Single("redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(s.counter_block, 16);
        assert_eq!(s.refresh, Duration::from_millis(250));
    }

    #[test]
    fn shared_state_redis_without_a_state_section_is_an_error_at_its_line() {
        let err = parse(&with("", "shared-state = \"redis\""))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:7:"), "{err}");
        assert!(err.contains("upstreams.app.shared-state"), "{err}");
        assert!(err.contains("[state]"), "{err}");
    }

    #[test]
    fn bad_state_values_are_refused() {
        for (state, shared, want) in [
            ("[state]\nredis = \"http://x\"", "", "state.redis"),
            ("[state]\nredis = \"redis://x/#insecure\"", "", "database"),
            ("[state]\nredis = \"redis://x:port\"", "", "not a port"),
            ("[state]\nredis = \"redis://:1\"", "", "no host"),
            (
                "[state]\nredis = \"redis://x\"\ncounter-block = 0",
                "",
                "counter-block",
            ),
            (
                "[state]\nredis = \"redis://x\"\nrefresh = \"0s\"",
                "",
                "state.refresh",
            ),
            ("", "shared-state = \"memcached\"", "neither"),
        ] {
            let err = parse(&with(state, shared)).unwrap_err().to_string();
            assert!(err.contains(want), "{state} {shared}: {err}");
        }
    }

    #[test]
    fn rediss_is_tls_and_logs_show_no_password() {
        let c = parse(&with(
            "[state]\nredis = \"rediss://user:secret@redis.internal:6380/1\"",
            "shared-state = \"redis\"",
        ))
        .unwrap();
        let s = c.state.unwrap();
        assert!(s.redis.tls());
        assert_eq!(s.ca, None, "the system's roots");
        assert_eq!(s.redis.to_string(), "redis rediss://redis.internal:6380/1");
    }

    /// A file in a fresh temporary directory, with `text`.
    fn file(name: &str, text: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-state-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn ca_pem() -> String {
        rcgen::generate_simple_self_signed(vec!["redis-ca.test".into()])
            .unwrap()
            .cert
            .pem()
    }

    #[test]
    fn ca_names_the_authorities_of_a_rediss_server() {
        let pem = ca_pem();
        let path = file("ca.pem", pem.as_bytes());
        let c = parse(&with(
            &format!(
                "[state]\nredis = \"rediss://127.0.0.1:6380\"\nca = \"{}\"",
                path.display()
            ),
            "shared-state = \"redis\"",
        ))
        .unwrap();
        let ca = c.state.unwrap().ca.unwrap();
        assert_eq!(ca.path, path);
        assert_eq!(ca.pem, pem.as_bytes());
        // Relative to the config file's directory.
        let dir = path.parent().unwrap();
        let src = with(
            "[state]\nredis = \"rediss://127.0.0.1:6380\"\nca = \"ca.pem\"",
            "",
        );
        let c = Config::parse(&dir.join("sy.toml"), &src).unwrap();
        assert_eq!(c.state.unwrap().ca.unwrap().path, path);
    }

    #[test]
    fn a_missing_or_bad_ca_is_an_error_at_its_line() {
        let garbage = file("garbage.pem", b"not a certificate\n");
        let broken = file(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let good = file("ca.pem", ca_pem().as_bytes());
        for (url, ca, want) in [
            ("rediss://h:1", "/nonexistent/ca.pem".into(), "cannot read"),
            ("rediss://h:1", garbage.clone(), "no CERTIFICATE block"),
            (
                "rediss://h:1",
                broken.clone(),
                "not a usable CA certificate",
            ),
            ("redis://h:1", good.clone(), "only for TLS"),
        ] {
            let src = with(
                &format!("[state]\nredis = \"{url}\"\nca = \"{}\"", ca.display()),
                "",
            );
            let err = parse(&src).unwrap_err().to_string();
            assert!(err.starts_with("test.toml:5:6: state.ca: "), "{err}");
            assert!(err.contains(want), "{ca:?}: {err}");
        }
    }

    #[test]
    fn redis_cluster_lists_its_nodes() {
        let c = parse(&with(
            "[state]\nredis-cluster = [\"redis://127.0.0.1:7000\", \" redis://127.0.0.1:7001 \"]",
            "shared-state = \"redis\"",
        ))
        .unwrap();
        let SharedStateMode::Redis(s) = &c.upstreams[0].shared_state else {
            panic!("not redis");
        };
        assert_eq!(
            s.redis,
            RedisTarget::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ])
        );
        assert!(!s.redis.tls());
        let good = file("ca.pem", ca_pem().as_bytes());
        let c = parse(&with(
            &format!(
                "[state]\nredis-cluster = [\"rediss://a:7000\", \"rediss://b:7000\"]\nca = \"{}\"",
                good.display()
            ),
            "",
        ))
        .unwrap();
        let s = c.state.unwrap();
        assert!(s.redis.tls() && s.ca.is_some());
        assert_eq!(
            s.redis.to_string(),
            "redis cluster rediss://a:7000, rediss://b:7000"
        );
    }

    #[test]
    fn state_names_exactly_one_redis() {
        for (state, want) in [
            (
                "[state]\nredis = \"redis://a:1\"\nredis-cluster = [\"redis://a:1\"]",
                "test.toml:5:17: state: give either redis (one server) or redis-cluster, not both",
            ),
            (
                "[state]\ncounter-block = 8",
                "test.toml:3:1: [state]: give redis = ",
            ),
            (
                "[state]\nredis-cluster = []",
                "test.toml:4:17: state.redis-cluster: give at least one node",
            ),
            (
                "[state]\nredis-cluster = [\"redis://a:1\", \"http://b:1\"]",
                "test.toml:4:33: state.redis-cluster: \"http://b:1\" is not a redis://HOST:PORT",
            ),
            (
                "[state]\nredis-cluster = [\"redis://a:1\", \"rediss://b:1\"]",
                "every node as redis:// or every node as rediss://",
            ),
            (
                "[state]\nredis-cluster = [\"redis://a:1/3\"]",
                "a cluster has database 0 only",
            ),
            ("[state]\nredis = \"memcached://a:1\"", "state.redis: "),
        ] {
            let err = parse(&with(state, "")).unwrap_err().to_string();
            assert!(err.contains(want), "{state}: {err}");
        }
    }
}
