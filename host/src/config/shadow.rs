//! `shadow-policy`, `shadow-sample` and `shadow-policy-config` of an
//! upstream: a candidate policy asked beside the live one, for comparison.

use std::path::Path;

use super::check::Checker;
use super::file::FileUpstream;
use super::upstream::{PolicySource, ShadowConfig};
use super::values::flatten;

/// A policy reference as written (`shadow-policy`): a built-in name,
/// `native:round-robin`, or a component file relative to `base`.
fn reference(text: &str, base: &Path) -> Result<PolicySource, String> {
    let text = text.trim();
    if text.is_empty() {
        Err("give a built-in policy name or the path of a .wasm component".into())
    } else if let Some(native) = text.strip_prefix("native:") {
        if native == "round-robin" {
            Ok(PolicySource::Native(native.to_string()))
        } else {
            Err("the only native policy is native:round-robin".into())
        }
    } else if text.contains('/') || text.contains('\\') || text.ends_with(".wasm") {
        Ok(PolicySource::File(base.join(text)))
    } else {
        Ok(PolicySource::Builtin(text.to_string()))
    }
}

impl FileUpstream {
    /// The checked shadow settings, if `shadow-policy` is set.
    pub(super) fn shadow(
        &self,
        c: &mut Checker<'_>,
        base: &Path,
        key: &str,
    ) -> Option<ShadowConfig> {
        let Some(text) = &self.shadow_policy else {
            if let Some(s) = &self.shadow_sample {
                c.push(
                    c.loc()
                        .error(s, format!("{key}.shadow-sample: there is no shadow-policy")),
                );
            }
            if let Some(t) = &self.shadow_policy_config {
                c.push(c.loc().error(
                    t,
                    format!("{key}.shadow-policy-config: there is no shadow-policy"),
                ));
            }
            return None;
        };
        let policy = match reference(text.get_ref(), base) {
            Ok(p) => p,
            Err(e) => {
                c.push(c.loc().error(text, format!("{key}.shadow-policy: {e}")));
                return None;
            }
        };
        let sample = match &self.shadow_sample {
            None => 1.0,
            Some(s) if *s.get_ref() > 0.0 && *s.get_ref() <= 1.0 => *s.get_ref(),
            Some(s) => {
                c.push(c.loc().error(
                    s,
                    format!(
                        "{key}.shadow-sample: give a share above 0 and at most 1, not {}",
                        s.get_ref()
                    ),
                ));
                return None;
            }
        };
        let mut policy_config = Vec::new();
        if let Some(t) = &self.shadow_policy_config {
            flatten("", t.get_ref(), &mut policy_config);
            policy_config.sort();
        }
        Some(ShadowConfig {
            policy,
            origin: c.loc().origin(text.span()),
            sample,
            policy_config,
        })
    }
}
