//! The upstream's `policy-config` table as the policy receives it.

use std::str::FromStr;

/// [`Config`] is the flattened `policy-config` table: dotted keys, string
/// values without quotes, other values in TOML syntax (see `selector.wit`).
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// Wraps the key/value pairs the proxy passed to `configure`.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Config { entries }
    }

    /// The raw value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed as `T`, or `default` when the key is absent.
    /// The error names the key and quotes the value.
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|_| format!("policy-config.{key}: cannot use {raw:?} here")),
        }
    }

    /// The value of `key` parsed as `T`, `None` when absent.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        self.get(key)
            .map(|raw| {
                raw.parse()
                    .map_err(|_| format!("policy-config.{key}: cannot use {raw:?} here"))
            })
            .transpose()
    }

    /// The value of `key` as a duration (`"30s"`, `"250ms"`, `"5m"`,
    /// `"1h"`, `"500us"`) in nanoseconds, or `default` when absent. A
    /// negative value, a bare number or an unknown unit is refused with the
    /// key and the reason.
    pub fn duration_ns(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => {
                parse_duration_ns(raw).map_err(|why| format!("policy-config.{key}: {why}"))
            }
        }
    }

    /// The value of `key` as a share between 0 and 1: `"50%"` or `0.5`.
    pub fn share(&self, key: &str, default: f64) -> Result<f64, String> {
        let Some(raw) = self.get(key) else {
            return Ok(default);
        };
        let value = match raw.strip_suffix('%') {
            Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
            None => raw.parse::<f64>(),
        };
        match value {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
            _ => Err(format!(
                "policy-config.{key}: {raw:?} is not a share between 0% and 100% (\"50%\" or 0.5)"
            )),
        }
    }

    /// The value of `key` as a number within `range`, or `default`.
    pub fn number_in(
        &self,
        key: &str,
        default: f64,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<f64, String> {
        let v: f64 = self.parse_or(key, default)?;
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(format!(
                "policy-config.{key}: {v} is out of range ({} to {})",
                range.start(),
                range.end()
            ))
        }
    }

    /// Refuses any key not in `known`, so that a typo is reported at load
    /// instead of silently ignored.
    pub fn expect_keys(&self, known: &[&str]) -> Result<(), String> {
        match self
            .entries
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((key, _)) if known.is_empty() => Err(format!(
                "policy-config.{key}: this policy takes no policy-config keys"
            )),
            Some((key, _)) => Err(format!(
                "policy-config.{key}: unknown key (known keys: {})",
                known.join(", ")
            )),
        }
    }

    /// Logs a warning (through the proxy's log) for each key not in
    /// `known`, for policies that take no or few keys and may share a
    /// `policy-config` table written for another policy.
    pub fn warn_unknown_keys(&self, policy: &str, known: &[&str]) {
        for (key, _) in self
            .entries
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
        {
            crate::log(
                crate::LogLevel::Warn,
                &format!("policy-config.{key} is not used by {policy}"),
            );
        }
    }

    /// All entries, in the order the proxy gave them (sorted by key).
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }
}

/// Parses `"30s"`, `"250ms"`, `"1.5s"`, `"5m"`, `"1h"`, `"500us"` into
/// nanoseconds.
pub fn parse_duration_ns(raw: &str) -> Result<u64, String> {
    let text = raw.trim();
    if text.starts_with('-') {
        return Err(format!("{raw:?}: a duration cannot be negative"));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{raw:?}: give a unit (\"30s\", \"250ms\", \"5m\")"))?;
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        other => return Err(format!("{raw:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration (\"30s\", \"250ms\", \"5m\")"))?;
    let ns = n * scale;
    if !ns.is_finite() || ns > 1e18 {
        return Err(format!("{raw:?} is too long"));
    }
    Ok(ns as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_config as config;

    #[test]
    fn parse_or_uses_the_default_only_when_the_key_is_absent() {
        let c = config(&[("max-age", "60")]);
        assert_eq!(c.parse_or("max-age", 5u64), Ok(60));
        assert_eq!(c.parse_or("other", 5u64), Ok(5));
    }

    #[test]
    fn parse_errors_name_the_key_and_value() {
        let c = config(&[("max-age", "soon")]);
        let err = c.parse_or("max-age", 0u64).unwrap_err();
        assert!(err.contains("policy-config.max-age"), "{err}");
        assert!(err.contains("\"soon\""), "{err}");
    }

    #[test]
    fn expect_keys_refuses_unknown_keys() {
        let c = config(&[("cookie", "x"), ("cokie", "y")]);
        let err = c.expect_keys(&["cookie"]).unwrap_err();
        assert!(err.contains("policy-config.cokie: unknown key"), "{err}");
        assert!(config(&[]).expect_keys(&[]).is_ok());
        let err = c.expect_keys(&[]).unwrap_err();
        assert!(err.contains("takes no policy-config keys"), "{err}");
    }

    #[test]
    fn durations_need_a_unit_and_cannot_be_negative() {
        assert_eq!(parse_duration_ns("30s"), Ok(30_000_000_000));
        assert_eq!(parse_duration_ns("250ms"), Ok(250_000_000));
        assert_eq!(parse_duration_ns("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_duration_ns("5m"), Ok(300_000_000_000));
        assert!(parse_duration_ns("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration_ns("30").unwrap_err().contains("unit"));
        assert!(parse_duration_ns("3 days").is_err());
        let c = config(&[("eject-for", "-1s")]);
        let err = c.duration_ns("eject-for", 0).unwrap_err();
        assert!(err.starts_with("policy-config.eject-for: "), "{err}");
    }

    #[test]
    fn shares_are_percentages_or_fractions() {
        let c = config(&[("a", "50%"), ("b", "0.25"), ("c", "150%")]);
        assert_eq!(c.share("a", 0.0), Ok(0.5));
        assert_eq!(c.share("b", 0.0), Ok(0.25));
        assert!(c.share("c", 0.0).unwrap_err().contains("policy-config.c"));
        assert_eq!(c.share("d", 0.1), Ok(0.1));
    }
}
