//! `[state]` and an upstream's `shared-state`: where the counters and the
//! key-value store of a group's policies live. `"local"` (the default)
//! keeps them in the process; `"redis"` shares them with every proxy that
//! names the same Redis, through a local copy synchronised in the
//! background (see `policy::fleet`).

use std::time::Duration;

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
    pub counter_block: Option<Spanned<u64>>,
    pub refresh: Option<Spanned<String>>,
}

/// `[state]`: the Redis that upstreams with `shared-state = "redis"` share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// `redis = "redis://HOST:PORT"` (optionally with `user:password@`
    /// and a `/DB` number), as written.
    pub redis: String,
    /// Values reserved per `INCRBY` (`counter-block`, default
    /// [`DEFAULT_COUNTER_BLOCK`]).
    pub counter_block: u64,
    /// Interval of the key-value refresh (`refresh`, default
    /// [`DEFAULT_STATE_REFRESH`]); also the retry interval while Redis is
    /// unreachable.
    pub refresh: Duration,
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
    /// The checked `[state]`, or `None` without `redis`.
    pub(super) fn to_state(&self, c: &mut Checker<'_>) -> Option<StateConfig> {
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
        let url = self.redis.as_ref()?;
        if let Err(why) = check_redis_url(url.get_ref()) {
            c.push(c.loc().error(url, format!("state.redis: {why}")));
            return None;
        }
        Some(StateConfig {
            redis: url.get_ref().trim().to_string(),
            counter_block,
            refresh,
        })
    }
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
                    "{key}.shared-state: \"redis\" needs a [state] section with redis = \"redis://HOST:PORT\""
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

/// `redis://[USER[:PASSWORD]@]HOST[:PORT][/DB]`.
fn check_redis_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    if url.starts_with("rediss://") {
        return Err("TLS to Redis (rediss://) is not supported; use redis://".into());
    }
    let Some(rest) = url.strip_prefix("redis://") else {
        return Err(format!("{url:?} is not a redis://HOST:PORT address"));
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
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(format!("{url:?}: {db:?} is not a database number"));
    }
    Ok(())
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
        assert_eq!(s.redis, "redis://127.0.0.1:6379/2");
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
            ("[state]\nredis = \"rediss://x:1\"", "", "TLS"),
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
}
