//! `consistent-hash`: a request key (a header, a cookie, the client
//! address, the path or a query parameter) always goes to the same backend,
//! by a Maglev table (Envoy's `MAGLEV`).
//!
//! The table is built from the backends' names and weights, so two proxies
//! with the same backends agree without talking, a reload rebuilds the same
//! table, and removing a backend moves little besides its own keys. A key
//! whose backend is unhealthy goes to the next healthy backend in the
//! table. With `bounded-load` (consistent hashing with bounded loads,
//! Mirrokni, Thorup and Zadimoghaddam; HAProxy's `hash-balance-factor`), a
//! backend whose requests in flight would pass `bounded-load` × its weighted
//! share of the group's passes the request on to the next one in the table.
//!
//! `policy-config` keys: `key = "client-ip"` (or `"header:NAME"`,
//! `"cookie:NAME"`, `"path"`, `"query:NAME"`), `fallback = "round-robin"` or
//! `"random"` for requests without the key, `bounded-load` (above 1, e.g.
//! 1.25; off by default), and the common keys for outlier ejection and zone
//! preference (see the SDK's `Steering`).

use switchyard_policy_sdk::{
    Adaptive, Backend, BackendHealth, Config, Counter, Decision, Maglev, Outcome, Policy, Request,
    STEERING_KEYS, Steering, export_adaptive_policy, hash64, ignore_outcomes, loads, nth_healthy,
    random_u64,
};

/// What identifies a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// The client's address.
    ClientIp,
    /// The path.
    Path,
    /// A request header, by name.
    Header(String),
    /// A cookie, by name.
    Cookie(String),
    /// A query parameter, by name.
    Query(String),
}

impl Key {
    /// Parses a `key` value.
    pub fn parse(raw: &str) -> Result<Key, String> {
        let named = |kind: &str, name: &str, make: fn(String) -> Key| {
            if name.is_empty() {
                Err(format!(
                    "policy-config.key: {kind}: needs a name ({kind}:NAME)"
                ))
            } else {
                Ok(make(name.to_string()))
            }
        };
        match raw.split_once(':') {
            None if raw == "client-ip" => Ok(Key::ClientIp),
            None if raw == "path" => Ok(Key::Path),
            Some(("header", n)) => named("header", n, Key::Header),
            Some(("cookie", n)) => named("cookie", n, Key::Cookie),
            Some(("query", n)) => named("query", n, Key::Query),
            _ => Err(format!(
                "policy-config.key: unknown key form {raw:?} (use \"header:NAME\", \
                 \"cookie:NAME\", \"query:NAME\", \"client-ip\" or \"path\")"
            )),
        }
    }

    /// The key's value in `req`, if it has one.
    fn of(&self, req: &Request) -> Option<String> {
        match self {
            Key::ClientIp => Some(req.client_ip()),
            Key::Path => Some(req.path()),
            Key::Header(name) => req.header(name),
            Key::Cookie(name) => req.cookie(name),
            Key::Query(name) => req.query().and_then(|q| query_param(&q, name)),
        }
    }
}

/// The value of parameter `name` in query string `query` (as sent, not
/// percent-decoded).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v.to_string()),
            None if pair == name => Some(String::new()),
            _ => None,
        })
}

/// Maglev hashing of a request key.
pub struct ConsistentHash {
    key: Key,
    random_fallback: bool,
    bounded: Option<f64>,
    table: Maglev,
    weights: Vec<f64>,
    position: Counter,
    loads: Vec<u32>,
    steer: Steering,
}

impl Policy for ConsistentHash {
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String> {
        config.expect_keys(&[&["key", "fallback", "bounded-load"], STEERING_KEYS].concat())?;
        let key = Key::parse(config.get("key").unwrap_or("client-ip"))?;
        let random_fallback = match config.get("fallback").unwrap_or("round-robin") {
            "round-robin" => false,
            "random" => true,
            other => {
                return Err(format!(
                    "policy-config.fallback: {other:?} is not \"round-robin\" or \"random\""
                ));
            }
        };
        let bounded: Option<f64> = config.parse("bounded-load")?;
        if let Some(b) = bounded
            && !(b > 1.0 && b.is_finite())
        {
            return Err(format!(
                "policy-config.bounded-load: {b} must be more than 1 (1.25 lets a backend \
                 take 25% more than its share of the requests in flight)"
            ));
        }
        let steer = Steering::new(config, backends, false)?;
        if !steer.wants_outcomes() {
            ignore_outcomes();
        }
        Ok(ConsistentHash {
            key,
            random_fallback,
            bounded,
            table: table(backends),
            weights: backends
                .iter()
                .map(|b| f64::from(b.weight.max(1)))
                .collect(),
            position: Counter::new("consistent-hash"),
            loads: Vec::new(),
            steer,
        })
    }

    fn select(&mut self, req: &Request, health: &[BackendHealth]) -> Result<Decision, String> {
        let s = self.steer.steer(health);
        let Some(value) = self.key.of(req) else {
            let n = if self.random_fallback {
                random_u64()
            } else {
                self.position.fetch_add(1)
            };
            return nth_healthy(s.health, n)
                .map(|i| Decision::to(i).because("no key: fallback"))
                .ok_or_else(|| "no healthy backend".to_string());
        };
        let hash = hash64(&[value.as_bytes()]);
        let healthy = |i: usize| s.health.get(i).is_some_and(|h| h.healthy);
        let chosen = match self.bounded {
            None => self.table.walk(hash).find(|&i| healthy(i)),
            Some(factor) => {
                let now = loads();
                self.loads.clear();
                let (mut total, mut weight_sum) = (0.0, 0.0);
                for (i, h) in s.health.iter().enumerate() {
                    let l = match now.get(i) {
                        Some(l) if h.healthy => l.in_flight,
                        _ => 0,
                    };
                    if h.healthy {
                        total += f64::from(l);
                        weight_sum += self.weights.get(i).copied().unwrap_or(1.0);
                    }
                    self.loads.push(l);
                }
                let (loads, weights) = (&self.loads, &self.weights);
                let fits = |i: usize| {
                    let share = weights.get(i).copied().unwrap_or(1.0) / weight_sum;
                    f64::from(loads[i]) + 1.0 <= factor * (total + 1.0) * share
                };
                self.table
                    .walk(hash)
                    .find(|&i| healthy(i) && fits(i))
                    .or_else(|| {
                        // In-flight counts move under us: the least loaded.
                        (0..loads.len())
                            .filter(|&i| healthy(i))
                            .min_by_key(|&i| loads[i])
                    })
            }
        };
        chosen
            .map(Decision::to)
            .ok_or_else(|| "no healthy backend".to_string())
    }
}

fn table(backends: &[Backend]) -> Maglev {
    Maglev::new(backends.iter().map(|b| (b.name.as_str(), b.weight)))
}

impl Adaptive for ConsistentHash {
    fn observe(&mut self, outcomes: &[Outcome]) {
        self.steer.observe(outcomes);
    }

    fn update(&mut self, backends: &[Backend]) -> Result<(), String> {
        self.table = table(backends);
        self.weights = backends
            .iter()
            .map(|b| f64::from(b.weight.max(1)))
            .collect();
        self.steer.update(backends);
        Ok(())
    }
}

export_adaptive_policy!(ConsistentHash);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_forms() {
        assert_eq!(Key::parse("client-ip"), Ok(Key::ClientIp));
        assert_eq!(
            Key::parse("header:x-user"),
            Ok(Key::Header("x-user".into()))
        );
        assert!(
            Key::parse("bogus:x")
                .unwrap_err()
                .contains("unknown key form")
        );
        assert!(Key::parse("header:").unwrap_err().contains("needs a name"));
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("a=1&user=bob", "user").as_deref(), Some("bob"));
        assert_eq!(query_param("a=1", "user"), None);
    }
}
