//! `shadow-policy`, `shadow-sample` and `shadow-policy-config` of an
//! upstream: a candidate policy asked beside the live one, for comparison.

use std::path::Path;

use super::check::Checker;
use super::file::FileUpstream;
use super::policy::to_policy;
use super::upstream::ShadowConfig;
use super::values::flatten;

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
        let (policy, sha256) = to_policy(c, base, &format!("{key}.shadow-policy"), text)?;
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
            sha256,
            origin: c.loc().origin(text.span()),
            sample,
            policy_config,
        })
    }
}
