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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

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
}
