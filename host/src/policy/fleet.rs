//! The link to Redis behind `shared-state = "redis"`: one background
//! thread per `[state]`, which keeps every shared group's counters and
//! key-value store in step with Redis while policies use local copies.
//! Redis is one server (`redis`, `rediss://` for TLS) or a Redis Cluster
//! (`redis-cluster`); the connection is a [`Link`], and every exchange
//! below is written once, for any [`ConnectionLike`].
//!
//! Each round (on a wake-up from a counter or a write, and every
//! `refresh`) it:
//!
//! 1. writes `counter-set` values (`SET`) and reserves a block ahead for
//!    each counter that has none (`INCRBY` the block; a second `INCRBY`
//!    lifts it above the values this proxy already handed out, when Redis
//!    lost the counter);
//! 2. sends the key-value writes waiting (a script per write: the value in
//!    one hash, the key in a change log scored by a version number);
//! 3. when `refresh` is due, reads the changes since the last version it
//!    saw (or the whole store when it fell behind the log's trimmed part).
//!
//! Keys, for upstream `app`: `switchyard:{app}:c:NAME` (counters),
//! `switchyard:{app}:kv` (hash of the store), `…:kv:version`, `…:kv:log`
//! (sorted set), `…:kv:trimmed`, `…:kv:epoch` (a random id: when it
//! changes or vanishes, Redis lost the store, and each proxy gives it back
//! what it holds). `{app}` is a hash tag: one group, one cluster slot.
//! So every command names keys of one group only (`MGET` of three of
//! them, `HMGET` of one hash), a pipeline holds one group's writes, and
//! the write script declares all four keys it touches, which is what a
//! Redis Cluster needs: each round of a group goes to the node that holds
//! its slot, and groups spread over the nodes.
//!
//! When Redis does not answer, policies go on with local values: counters
//! count on locally, writes wait (bounded, see [`KvStore`]); the failure
//! is logged (once, then every 10 s) and counted, and the next round that
//! succeeds resynchronises.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redis::RedisResult;
use redis::aio::ConnectionLike;
use tokio::sync::Notify;

use super::counter::BlockCounter;
use super::kv::{KvStore, MAX_KV_KEYS, Write};
use super::link::Link;
use crate::config::StateConfig;

/// Longest wait for one Redis command, or to connect.
const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// Entries the change log keeps (older ones are trimmed).
const LOG_CAP: usize = 2 * MAX_KV_KEYS;
/// Changes read per request, and requests per group per round.
const CHANGES_PER_ROUND: usize = 1000;
const PAGES_PER_ROUND: usize = 20;
/// Writes sent per pipeline.
const WRITES_PER_PIPELINE: usize = 500;
/// Interval of the warning while Redis stays unreachable.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One key-value write, atomically: the value, a new version, the key in
/// the change log at that version, the log trimmed to its cap.
/// KEYS: version, hash, log, trimmed; ARGV: key, cap, [value] (none:
/// delete).
const WRITE_SCRIPT: &str = r"
local v = redis.call('INCR', KEYS[1])
if #ARGV >= 3 then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
else redis.call('HDEL', KEYS[2], ARGV[1]) end
redis.call('ZADD', KEYS[3], v, ARGV[1])
local n = redis.call('ZCARD', KEYS[3])
local cap = tonumber(ARGV[2])
if n > cap then
  local old = redis.call('ZRANGE', KEYS[3], n - cap - 1, n - cap - 1, 'WITHSCORES')
  redis.call('SET', KEYS[4], old[2])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, n - cap - 1)
end
return v
";

/// [`Fleet`] is the link to one Redis: its groups, whether it answers,
/// and the failures counted. Its groups hold it; when the last group is
/// dropped (a reload moved every upstream to another `[state]`), so is the
/// link, and its thread ends at its next wake-up.
#[derive(Debug)]
pub struct Fleet {
    config: StateConfig,
    wake: Arc<Notify>,
    groups: Mutex<Vec<Weak<FleetGroup>>>,
    up: AtomicBool,
    /// Failed exchanges, counted with the registry's other links.
    errors: Arc<AtomicU64>,
}

/// [`FleetGroup`] is one upstream group's state as the Redis task sees it.
#[derive(Debug)]
pub struct FleetGroup {
    prefix: String,
    /// The group's key-value store (its writes queue for Redis).
    pub kv: Arc<KvStore>,
    counters: Mutex<Vec<(String, Arc<BlockCounter>)>>,
    block: u64,
    wake: Arc<Notify>,
    /// The last change-log version applied.
    seen: AtomicU64,
    /// The store's epoch in Redis when last read (0: not yet).
    epoch: AtomicU64,
    /// Writes kept local (too many waiting) already reported.
    drops_reported: AtomicU64,
    /// Keeps the link alive while the group is in use.
    _link: Arc<Fleet>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fleet {
    /// Starts the link to `config.redis` on a thread of its own, counting
    /// its failed exchanges in `errors`. Nothing waits for Redis: until it
    /// answers, the groups run on local values.
    pub fn start(config: &StateConfig, errors: Arc<AtomicU64>) -> Arc<Fleet> {
        let fleet = Arc::new(Fleet {
            config: config.clone(),
            wake: Arc::new(Notify::new()),
            groups: Mutex::default(),
            up: AtomicBool::new(false),
            errors,
        });
        let task = (Arc::downgrade(&fleet), fleet.wake.clone());
        let spawned = std::thread::Builder::new()
            .name("switchyard-state".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(run(task.0, task.1)),
                    Err(e) => tracing::error!("cannot start the Redis state task: {e}"),
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the Redis state thread: {e}");
        }
        fleet
    }

    /// The `[state]` this link serves.
    pub fn config(&self) -> &StateConfig {
        &self.config
    }

    /// Whether the last exchange with Redis succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A new group for `upstream`, synchronised from now on.
    pub fn group(self: &Arc<Self>, upstream: &str) -> Arc<FleetGroup> {
        let group = Arc::new(FleetGroup {
            prefix: format!("switchyard:{{{upstream}}}:"),
            kv: Arc::new(KvStore::shared(self.wake.clone())),
            counters: Mutex::default(),
            block: self.config.counter_block,
            wake: self.wake.clone(),
            seen: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            drops_reported: AtomicU64::new(0),
            _link: self.clone(),
        });
        let mut groups = lock(&self.groups);
        groups.retain(|g| g.strong_count() > 0);
        groups.push(Arc::downgrade(&group));
        drop(groups);
        self.wake.notify_one();
        group
    }

    fn live_groups(&self) -> Vec<Arc<FleetGroup>> {
        lock(&self.groups)
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

impl FleetGroup {
    /// A new counter `name` of this group; a block is reserved for it at
    /// once.
    pub fn counter(&self, name: &str) -> Arc<BlockCounter> {
        let c = Arc::new(BlockCounter::new(self.block, self.wake.clone()));
        lock(&self.counters).push((name.to_string(), c.clone()));
        self.wake.notify_one();
        c
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }
}

/// The task: a round on every wake-up and every `refresh`, until the
/// link is dropped.
async fn run(fleet: Weak<Fleet>, wake: Arc<Notify>) {
    let Some(config) = fleet.upgrade().map(|f| f.config.clone()) else {
        return;
    };
    let mut link = match Link::open(&config, OP_TIMEOUT) {
        Ok(link) => link,
        Err(e) => {
            tracing::error!("{}: {e}; shared policy state stays local", config.redis);
            return;
        }
    };
    let mut health = Health::default();
    let mut refresh_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(refresh_at) => {}
        }
        let Some(fleet) = fleet.upgrade() else {
            tracing::debug!(
                "{}: no upstream uses it any more; link closed",
                config.redis
            );
            return;
        };
        let now = tokio::time::Instant::now();
        let refresh = now >= refresh_at;
        if refresh {
            refresh_at = now + fleet.config.refresh;
        } else if health.down_since.is_some() {
            // While Redis is away, try again on the refresh tick only.
            continue;
        }
        let result = match &mut link {
            Link::One(conn) => rounds(&fleet, conn, refresh).await,
            Link::Cluster(conn) => rounds(&fleet, conn, refresh).await,
        };
        health.note(&fleet, result);
    }
}

/// A round of every live group, up to the first failure.
async fn rounds<C: ConnectionLike>(fleet: &Fleet, conn: &mut C, refresh: bool) -> RedisResult<()> {
    for group in fleet.live_groups() {
        round(conn, &group, refresh).await?;
    }
    Ok(())
}

/// Whether Redis answers, and when it was last said that it does not.
#[derive(Default)]
struct Health {
    down_since: Option<Instant>,
    warned: Option<Instant>,
}

impl Health {
    fn note(&mut self, fleet: &Fleet, result: RedisResult<()>) {
        let redis = &fleet.config.redis;
        match result {
            Ok(()) => {
                fleet.up.store(true, Ordering::Relaxed);
                if let Some(since) = self.down_since.take() {
                    tracing::info!(
                        "{redis} answers again after {:.1} s: shared policy state resynchronised",
                        since.elapsed().as_secs_f64()
                    );
                }
            }
            Err(e) => {
                fleet.up.store(false, Ordering::Relaxed);
                fleet.errors.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                match self.down_since {
                    None => {
                        self.down_since = Some(now);
                        self.warned = Some(now);
                        tracing::warn!(
                            "{redis}: {e}{}; shared policy state served from this proxy's local values until it answers",
                            tls_hint(&e)
                        );
                    }
                    Some(since) if self.warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) => {
                        self.warned = Some(now);
                        tracing::warn!(
                            "{redis} still unreachable after {:.0} s: {e}",
                            since.elapsed().as_secs_f64()
                        );
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// What to check when a TLS handshake refused the server's certificate.
fn tls_hint(e: &redis::RedisError) -> &'static str {
    if e.to_string().contains("certificate") {
        " (the server's certificate must name the host and chain to [state] ca, or without ca to a root the system trusts)"
    } else {
        ""
    }
}

/// One group's round: counters, writes, and (when due) others' changes.
async fn round<C: ConnectionLike>(conn: &mut C, g: &FleetGroup, refresh: bool) -> RedisResult<()> {
    let counters = lock(&g.counters).clone();
    for (name, c) in &counters {
        let key = g.key(&format!("c:{name}"));
        let wants = c.wants();
        if let Some(v) = wants.set
            && let Ok(v) = i64::try_from(v)
            && let Err(e) = redis::cmd("SET")
                .arg(&key)
                .arg(v)
                .exec_async(&mut *conn)
                .await
        {
            c.unwritten(v as u64);
            return Err(e);
        }
        if let Some(floor) = wants.block_above
            && let Some((start, end)) = reserve(conn, &key, wants.block, floor).await?
        {
            c.supply(start, end);
        }
    }
    if refresh {
        catch_up(conn, g).await?;
    }
    flush(conn, g).await
}

/// Reserves `block` values of counter `key`, all at least `floor`.
async fn reserve<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    block: u64,
    floor: u64,
) -> RedisResult<Option<(u64, u64)>> {
    let (Ok(block), Ok(floor)) = (i64::try_from(block), i64::try_from(floor)) else {
        return Ok(None);
    };
    let Some(want_end) = floor.checked_add(block) else {
        return Ok(None);
    };
    let mut end: i64 = redis::cmd("INCRBY")
        .arg(key)
        .arg(block)
        .query_async(&mut *conn)
        .await?;
    if end < want_end {
        // Redis is behind what this proxy handed out (it lost the counter,
        // or a set lowered it): go above.
        let by = (want_end - end).max(block);
        end = redis::cmd("INCRBY")
            .arg(key)
            .arg(by)
            .query_async(&mut *conn)
            .await?;
    }
    Ok(Some(((end - block) as u64, end as u64)))
}

/// Sends the group's waiting key-value writes.
async fn flush<C: ConnectionLike>(conn: &mut C, g: &FleetGroup) -> RedisResult<()> {
    let dropped = g.kv.dropped();
    let reported = g.drops_reported.swap(dropped, Ordering::Relaxed);
    if dropped > reported {
        tracing::warn!(
            "{} key-value writes of {} stayed in this proxy only: too many were waiting for Redis",
            dropped - reported,
            g.prefix
        );
    }
    let writes = g.kv.take_pending();
    let mut rest = writes.as_slice();
    while !rest.is_empty() {
        let (now, later) = rest.split_at(rest.len().min(WRITES_PER_PIPELINE));
        let mut pipe = redis::pipe();
        for (k, v) in now {
            pipe.cmd("EVAL")
                .arg(WRITE_SCRIPT)
                .arg(4)
                .arg(g.key("kv:version"))
                .arg(g.key("kv"))
                .arg(g.key("kv:log"))
                .arg(g.key("kv:trimmed"))
                .arg(k)
                .arg(LOG_CAP);
            if let Some(v) = v {
                pipe.arg(v.as_slice());
            }
            pipe.ignore();
        }
        if let Err(e) = pipe.exec_async(&mut *conn).await {
            g.kv.unsent(rest.to_vec());
            return Err(e);
        }
        rest = later;
    }
    Ok(())
}

/// Brings in other proxies' writes since the version last seen.
async fn catch_up<C: ConnectionLike>(conn: &mut C, g: &FleetGroup) -> RedisResult<()> {
    let (version, trimmed, epoch): (Option<u64>, Option<u64>, Option<u64>) = redis::cmd("MGET")
        .arg(g.key("kv:version"))
        .arg(g.key("kv:trimmed"))
        .arg(g.key("kv:epoch"))
        .query_async(&mut *conn)
        .await?;
    let epoch = match epoch {
        Some(e) => e,
        None => {
            redis::cmd("SET")
                .arg(g.key("kv:epoch"))
                .arg(fastrand::u64(1..))
                .arg("NX")
                .exec_async(&mut *conn)
                .await?;
            redis::cmd("GET")
                .arg(g.key("kv:epoch"))
                .query_async::<Option<u64>>(&mut *conn)
                .await?
                .unwrap_or(0)
        }
    };
    let known = g.epoch.swap(epoch, Ordering::Relaxed);
    if known != epoch {
        if known != 0 {
            // Redis lost the store (restarted without persistence, or
            // flushed): give it back what this proxy holds.
            tracing::info!(
                "redis lost the key-value store of {}: sending back this proxy's {} keys",
                g.prefix,
                g.kv.len()
            );
            g.kv.republish();
        }
        g.seen.store(0, Ordering::Relaxed);
    }
    let (version, trimmed) = (version.unwrap_or(0), trimmed.unwrap_or(0));
    let seen = g.seen.load(Ordering::Relaxed);
    if version <= seen {
        return Ok(());
    }
    if trimmed > seen {
        // Behind the log's trimmed part: read the whole store.
        let flat: Vec<Vec<u8>> = redis::cmd("HGETALL")
            .arg(g.key("kv"))
            .query_async(&mut *conn)
            .await?;
        g.kv.replace(pairs(flat).collect());
        g.seen.store(version, Ordering::Relaxed);
        return Ok(());
    }
    for _ in 0..PAGES_PER_ROUND {
        if read_changes(conn, g).await? < CHANGES_PER_ROUND {
            break;
        }
    }
    Ok(())
}

/// Reads up to [`CHANGES_PER_ROUND`] changes after the version last seen;
/// how many there were.
async fn read_changes<C: ConnectionLike>(conn: &mut C, g: &FleetGroup) -> RedisResult<usize> {
    let seen = g.seen.load(Ordering::Relaxed);
    let flat: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
        .arg(g.key("kv:log"))
        .arg(format!("({seen}"))
        .arg("+inf")
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(CHANGES_PER_ROUND)
        .query_async(&mut *conn)
        .await?;
    let mut keys = Vec::new();
    let mut last = seen;
    for (k, score) in pairs(flat) {
        let score = std::str::from_utf8(&score)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(0, |s| s as u64);
        last = last.max(score);
        keys.push(k);
    }
    if keys.is_empty() {
        return Ok(0);
    }
    let n = keys.len();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
        .arg(g.key("kv"))
        .arg(&keys)
        .query_async(&mut *conn)
        .await?;
    g.kv.apply(keys.into_iter().zip(values).collect::<Vec<Write>>());
    g.seen.store(last, Ordering::Relaxed);
    Ok(n)
}

/// `[k1, v1, k2, v2, …]` as pairs, keys as text (a key that is not UTF-8
/// was not written by a policy, and is skipped).
fn pairs(flat: Vec<Vec<u8>>) -> impl Iterator<Item = (String, Vec<u8>)> {
    let mut it = flat.into_iter();
    std::iter::from_fn(move || Some((it.next()?, it.next()?)))
        .filter_map(|(k, v)| Some((String::from_utf8(k).ok()?, v)))
}
