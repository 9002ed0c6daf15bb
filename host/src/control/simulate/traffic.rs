//! The requests of a simulation: Poisson arrivals from Zipf-distributed
//! clients, or the requests of a JSON access log at their recorded times;
//! and the request head a policy sees for each.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use http::Method;

use super::scenario::{KeyIn, Scenario};
use crate::policy::RequestView;

/// One request to simulate.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When, from the start.
    pub at: Duration,
    /// The client (its cookie jar, its key).
    pub key: u32,
    /// The client's address.
    pub ip: IpAddr,
    /// Method.
    pub method: Method,
    /// `Host`, when the log has it (else the scenario's).
    pub host: Option<String>,
    /// Path and query, when the log has it (else the scenario's).
    pub target: Option<String>,
}

/// The address of client `key`: 10.x.y.z.
fn client_ip(key: u32) -> IpAddr {
    let [_, a, b, c] = key.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(10, a, b, c))
}

/// Poisson arrivals at `rate` for `duration`, clients drawn by Zipf.
pub fn synthetic(s: &Scenario) -> Vec<Arrival> {
    let mut rng = fastrand::Rng::with_seed(s.seed);
    // Cumulative Zipf weights of the keys, most popular first.
    let mut cdf = Vec::with_capacity(s.keys as usize);
    let mut total = 0.0;
    for k in 0..s.keys {
        total += 1.0 / f64::from(k + 1).powf(s.zipf);
        cdf.push(total);
    }
    let mut out = Vec::with_capacity((s.rate * s.duration.as_secs_f64()) as usize + 16);
    let mut t = 0.0;
    let end = s.duration.as_secs_f64();
    loop {
        t += -(1.0 - rng.f64()).ln() / s.rate;
        if t >= end {
            break;
        }
        let u = rng.f64() * total;
        let key = cdf.partition_point(|&c| c < u).min(cdf.len() - 1) as u32;
        out.push(Arrival {
            at: Duration::from_secs_f64(t),
            key,
            ip: client_ip(key),
            method: Method::GET,
            host: None,
            target: None,
        });
    }
    out
}

/// The requests of a JSON access log (the proxy's `format = "json"`):
/// their times, clients, methods, hosts and paths.
pub fn replay(file: &Path) -> anyhow::Result<Vec<Arrival>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut keys: HashMap<IpAddr, u32> = HashMap::new();
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |why: String| anyhow::anyhow!("{}:{}: {why}", file.display(), n + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let field = |name: &str| v.get(name).and_then(|x| x.as_str());
        let time = field("time").ok_or_else(|| at("no \"time\"".into()))?;
        let time: SystemTime =
            humantime::parse_rfc3339_weak(time).map_err(|e| at(format!("time {time:?}: {e}")))?;
        let ip: IpAddr = field("client")
            .unwrap_or("0.0.0.0")
            .parse()
            .map_err(|e| at(format!("client: {e}")))?;
        let method = Method::from_bytes(field("method").unwrap_or("GET").as_bytes())
            .map_err(|e| at(format!("method: {e}")))?;
        let next = keys.len() as u32;
        let key = *keys.entry(ip).or_insert(next);
        rows.push((
            time,
            Arrival {
                at: Duration::ZERO,
                key,
                ip,
                method,
                host: field("host").map(str::to_string),
                target: field("target").map(str::to_string),
            },
        ));
    }
    anyhow::ensure!(!rows.is_empty(), "{}: no requests", file.display());
    rows.sort_by_key(|(t, _)| *t);
    let first = rows[0].0;
    Ok(rows
        .into_iter()
        .map(|(t, mut a)| {
            a.at = t.duration_since(first).unwrap_or_default();
            a
        })
        .collect())
}

/// The request head a policy sees for `a`, with the client's cookies.
pub fn request(a: &Arrival, s: &Scenario, cookies: Option<&Vec<(String, String)>>) -> RequestView {
    let key_in = KeyIn::parse(&s.key).unwrap_or(KeyIn::ClientIp);
    let user = format!("user-{}", a.key);
    let mut target = a.target.clone().unwrap_or_else(|| s.path.clone());
    if let KeyIn::Query(name) = &key_in {
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str(&format!("{name}={user}"));
    }
    let mut b = http::Request::builder()
        .method(a.method.clone())
        .uri(target.as_str())
        .header(http::header::HOST, a.host.as_deref().unwrap_or(&s.host));
    if let KeyIn::Header(name) = &key_in {
        b = b.header(name.as_str(), user.as_str());
    }
    let mut jar: Vec<String> = cookies
        .into_iter()
        .flatten()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if let KeyIn::Cookie(name) = &key_in
        && !cookies.is_some_and(|c| c.iter().any(|(n, _)| n == name))
    {
        jar.push(format!("{name}={user}"));
    }
    if !jar.is_empty() {
        b = b.header(http::header::COOKIE, jar.join("; "));
    }
    let parts = match b.body(()) {
        Ok(r) => r.into_parts().0,
        // A target from a log that is not a valid URI: the scenario's path.
        Err(_) => http::Request::new(()).into_parts().0,
    };
    RequestView {
        parts,
        client_ip: a.ip,
        https: false,
        attempt: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(extra: &str) -> Scenario {
        toml::from_str(&format!("duration = \"10s\"\nrate = 200\n{extra}")).unwrap()
    }

    #[test]
    fn arrivals_are_poisson_and_repeatable() {
        let s = scenario("keys = 100\n");
        let a = synthetic(&s);
        let b = synthetic(&s);
        // 2000 expected; a Poisson count is within 4 sigma (~180).
        assert!((1800..2200).contains(&a.len()), "{}", a.len());
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.at == y.at && x.key == y.key)
        );
        // Zipf: the first key is the most common by far.
        let first = a.iter().filter(|x| x.key == 0).count();
        let tenth = a.iter().filter(|x| x.key == 9).count();
        assert!(first > 4 * tenth.max(1), "{first} vs {tenth}");
    }

    #[test]
    fn the_key_goes_where_the_scenario_says() {
        let a = Arrival {
            at: Duration::ZERO,
            key: 7,
            ip: client_ip(7),
            method: Method::GET,
            host: None,
            target: None,
        };
        let v = request(&a, &scenario("key = \"query:u\"\n"), None);
        assert_eq!(v.parts.uri, "/?u=user-7");
        assert_eq!(v.client_ip, "10.0.0.7".parse::<IpAddr>().unwrap());
        let v = request(&a, &scenario("key = \"header:X-User\"\n"), None);
        assert_eq!(v.parts.headers["x-user"], "user-7");
        let jar = vec![("srv".to_string(), "b".to_string())];
        let v = request(&a, &scenario("key = \"cookie:sid\"\n"), Some(&jar));
        assert_eq!(v.parts.headers["cookie"], "srv=b; sid=user-7");
    }
}
