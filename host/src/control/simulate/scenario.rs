//! The scenario file of `switchyard simulate`: how much traffic, from how
//! many clients, against backends that behave how, and what changes when.
//!
//! ```toml
//! duration = "60s"   # simulated time
//! rate = 500         # requests per second, Poisson arrivals
//! seed = 1
//! keys = 1000        # distinct clients, Zipf-distributed
//! [backends.a]       # names from the upstream in the config
//! latency = "20ms"   # median; p99 = "80ms" makes it log-normal
//! errors = 0.0       # share of 503 answers
//! capacity = 0       # concurrent requests before latency grows
//! [[events]]
//! at = "20s"
//! backend = "b"
//! latency = "200ms"  # or errors = 1.0, or down = true, or up = true
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// A scenario as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Scenario {
    /// Simulated time.
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    /// Requests per second (Poisson arrivals).
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Seed of every random draw: the same seed gives the same run.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Distinct clients.
    #[serde(default = "default_keys")]
    pub keys: u32,
    /// Exponent of the clients' Zipf distribution (0: uniform).
    #[serde(default = "default_zipf")]
    pub zipf: f64,
    /// How a client's key is sent: `client-ip` (always set),
    /// `header:NAME`, `cookie:NAME` or `query:NAME`.
    #[serde(default = "default_key")]
    pub key: String,
    /// The request's `Host`.
    #[serde(default = "default_host")]
    pub host: String,
    /// The request's path.
    #[serde(default = "default_path")]
    pub path: String,
    /// Width of the windows shares are reported over.
    #[serde(default = "default_window", deserialize_with = "duration")]
    pub window: Duration,
    /// How each backend behaves at the start, by name; a backend not
    /// named behaves as `[defaults]`.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendModel>,
    /// How backends not named in `[backends]` behave.
    #[serde(default)]
    pub defaults: BackendModel,
    /// Changes during the run.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// How a simulated backend answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackendModel {
    /// Median time to answer.
    #[serde(default = "default_latency", deserialize_with = "duration")]
    pub latency: Duration,
    /// 99th percentile (log-normal between the two); default: 2× the
    /// median.
    #[serde(default, deserialize_with = "some_duration")]
    pub p99: Option<Duration>,
    /// Share of requests answered `503`.
    #[serde(default)]
    pub errors: f64,
    /// How fast a `503` comes back.
    #[serde(default = "default_error_latency", deserialize_with = "duration")]
    pub error_latency: Duration,
    /// Requests it serves at once before latency grows in proportion
    /// (0: no limit).
    #[serde(default)]
    pub capacity: u32,
    /// Refuses connections.
    #[serde(default)]
    pub down: bool,
}

impl Default for BackendModel {
    fn default() -> BackendModel {
        BackendModel {
            latency: default_latency(),
            p99: None,
            errors: 0.0,
            error_latency: default_error_latency(),
            capacity: 0,
            down: false,
        }
    }
}

/// A change to one backend at a simulated time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Event {
    /// When, from the start.
    #[serde(deserialize_with = "duration")]
    pub at: Duration,
    /// Which backend.
    pub backend: String,
    /// New median latency.
    #[serde(default, deserialize_with = "some_duration")]
    pub latency: Option<Duration>,
    /// New 99th percentile.
    #[serde(default, deserialize_with = "some_duration")]
    pub p99: Option<Duration>,
    /// New share of `503` answers.
    pub errors: Option<f64>,
    /// New capacity.
    pub capacity: Option<u32>,
    /// Starts refusing connections.
    #[serde(default)]
    pub down: bool,
    /// Takes connections again.
    #[serde(default)]
    pub up: bool,
}

impl Event {
    /// What it changes, in a few words: `b latency 200ms`.
    pub fn describe(&self) -> String {
        let mut parts = vec![self.backend.clone()];
        if let Some(l) = self.latency {
            parts.push(format!("latency {}", humantime::format_duration(l)));
        }
        if let Some(p) = self.p99 {
            parts.push(format!("p99 {}", humantime::format_duration(p)));
        }
        if let Some(e) = self.errors {
            parts.push(format!("errors {e}"));
        }
        if let Some(c) = self.capacity {
            parts.push(format!("capacity {c}"));
        }
        if self.down {
            parts.push("down".into());
        }
        if self.up {
            parts.push("up".into());
        }
        parts.join(" ")
    }

    /// Applies the change to `model`.
    pub fn apply(&self, model: &mut BackendModel) {
        if let Some(l) = self.latency {
            model.latency = l;
            // A new median without a new p99 keeps the spread's ratio.
            if self.p99.is_none() {
                model.p99 = None;
            }
        }
        if let Some(p) = self.p99 {
            model.p99 = Some(p);
        }
        if let Some(e) = self.errors {
            model.errors = e;
        }
        if let Some(c) = self.capacity {
            model.capacity = c;
        }
        if self.down {
            model.down = true;
        }
        if self.up {
            model.down = false;
        }
    }
}

/// Why a scenario cannot be run.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct ScenarioError {
    file: String,
    reason: String,
}

impl Scenario {
    /// Reads and checks a scenario file; `backends` are the upstream's
    /// backend names, which every name in it must be.
    pub fn load(path: &Path, backends: &[&str]) -> Result<Scenario, ScenarioError> {
        let error = |reason: String| ScenarioError {
            file: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let scenario: Scenario = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
        scenario.check(backends).map_err(error)?;
        Ok(scenario)
    }

    fn check(&self, backends: &[&str]) -> Result<(), String> {
        let known = |name: &str, what: &str| {
            if backends.contains(&name) {
                Ok(())
            } else {
                Err(format!(
                    "{what} {name:?} is not a backend of the upstream (backends: {})",
                    backends.join(", ")
                ))
            }
        };
        if self.duration.is_zero() {
            return Err("duration must be more than 0".into());
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err(format!("rate must be more than 0, not {}", self.rate));
        }
        if self.keys == 0 {
            return Err("keys must be at least 1".into());
        }
        if !(self.zipf >= 0.0 && self.zipf.is_finite()) {
            return Err(format!("zipf must be 0 or more, not {}", self.zipf));
        }
        if self.window.is_zero() {
            return Err("window must be more than 0".into());
        }
        KeyIn::parse(&self.key)?;
        for (name, model) in &self.backends {
            known(name, "[backends]")?;
            model.check().map_err(|e| format!("backends.{name}: {e}"))?;
        }
        self.defaults
            .check()
            .map_err(|e| format!("defaults: {e}"))?;
        for (i, e) in self.events.iter().enumerate() {
            known(&e.backend, &format!("events[{i}].backend"))?;
            if e.down && e.up {
                return Err(format!("events[{i}]: down and up at once"));
            }
            if let Some(x) = e.errors
                && !(0.0..=1.0).contains(&x)
            {
                return Err(format!("events[{i}].errors must be within 0..1, not {x}"));
            }
        }
        Ok(())
    }

    /// How backend `name` behaves at the start.
    pub fn model(&self, name: &str) -> BackendModel {
        self.backends
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.defaults.clone())
    }
}

impl BackendModel {
    fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.errors) {
            return Err(format!("errors must be within 0..1, not {}", self.errors));
        }
        if let Some(p) = self.p99
            && p < self.latency
        {
            return Err("p99 is below the median latency".into());
        }
        Ok(())
    }
}

/// Where a client's key goes in its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyIn {
    /// Only the client address (always set from the key).
    ClientIp,
    /// A request header.
    Header(String),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

impl KeyIn {
    /// Reads `client-ip`, `header:NAME`, `cookie:NAME` or `query:NAME`.
    pub fn parse(s: &str) -> Result<KeyIn, String> {
        let named = |rest: &str| {
            if rest.is_empty() {
                Err(format!("key {s:?} names nothing after the colon"))
            } else {
                Ok(rest.to_string())
            }
        };
        match s.split_once(':') {
            None if s == "client-ip" => Ok(KeyIn::ClientIp),
            Some(("header", rest)) => named(rest).map(|n| KeyIn::Header(n.to_ascii_lowercase())),
            Some(("cookie", rest)) => named(rest).map(KeyIn::Cookie),
            Some(("query", rest)) => named(rest).map(KeyIn::Query),
            _ => Err(format!(
                "key {s:?}: give client-ip, header:NAME, cookie:NAME or query:NAME"
            )),
        }
    }
}

fn default_rate() -> f64 {
    100.0
}
fn default_seed() -> u64 {
    1
}
fn default_keys() -> u32 {
    1000
}
fn default_zipf() -> f64 {
    1.0
}
fn default_key() -> String {
    "client-ip".into()
}
fn default_host() -> String {
    "simulated.test".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_latency() -> Duration {
    Duration::from_millis(10)
}
fn default_error_latency() -> Duration {
    Duration::from_millis(1)
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration: {e}")))
}

fn some_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.check(&["a", "b"])?;
        Ok(s)
    }

    #[test]
    fn a_scenario_reads_with_defaults() {
        let s = parse(
            "duration = \"60s\"\nrate = 500\n[backends.a]\nlatency = \"20ms\"\np99 = \"80ms\"\n[[events]]\nat = \"20s\"\nbackend = \"b\"\nlatency = \"200ms\"\n",
        )
        .unwrap();
        assert_eq!(s.duration, Duration::from_secs(60));
        assert_eq!(s.model("a").p99, Some(Duration::from_millis(80)));
        assert_eq!(s.model("b").latency, Duration::from_millis(10));
        let mut b = s.model("b");
        s.events[0].apply(&mut b);
        assert_eq!(b.latency, Duration::from_millis(200));
        assert_eq!(s.keys, 1000);
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse("duration = \"1s\"\n[backends.c]\n").unwrap_err();
        assert!(e.contains("\"c\" is not a backend"), "{e}");
        let e = parse("duration = \"1s\"\nrat = 5\n").unwrap_err();
        assert!(
            e.contains("unknown field `rat`") && e.contains("line 2"),
            "{e}"
        );
        let e = parse("duration = \"soon\"\n").unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
        let e = parse("duration = \"1s\"\nkey = \"body\"\n").unwrap_err();
        assert!(e.contains("client-ip, header:NAME"), "{e}");
        let e = parse("duration = \"1s\"\n[backends.a]\nerrors = 2.0\n").unwrap_err();
        assert!(e.contains("within 0..1"), "{e}");
    }
}
