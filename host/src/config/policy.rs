//! `policy = ...` of an upstream: a built-in name, `native:round-robin`, a
//! component file or an `oci://` reference; in the table form
//! (`{ path = "x.wasm", sha256 = "..." }`, `{ oci = "oci://...", sha256 =
//! "..." }`) a file or reference pinned to the SHA-256 of its component.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::check::Checker;
use super::file::FilePolicy;
use super::oci::{OciReference, parse_sha256};

/// Where a policy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicySource {
    /// One of the policies compiled into the binary, by name.
    Builtin(String),
    /// A component file, path resolved against the config's directory.
    File(PathBuf),
    /// `native:round-robin`: the host's own round-robin, no Wasm at all.
    /// For measuring what the Wasm boundary costs; not a policy to deploy.
    Native(String),
    /// A component in an OCI registry, pulled when the config is loaded.
    Oci(OciReference),
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::Builtin(name) => f.write_str(name),
            PolicySource::File(path) => write!(f, "{}", path.display()),
            PolicySource::Native(name) => write!(f, "native:{name}"),
            PolicySource::Oci(r) => r.fmt(f),
        }
    }
}

impl PolicySource {
    /// Marks a reference to one of `registries` as spoken to over plain
    /// HTTP (`[server] insecure-registries`).
    pub(super) fn allow_plain_http(&mut self, registries: &[String]) {
        if let PolicySource::Oci(r) = self {
            r.plain_http = registries.contains(&r.registry);
        }
    }
}

/// The policy's source and the SHA-256 (hex) its component must have, or
/// `None` with the problem noted; `key` names it (`upstreams.NAME.policy`).
pub(super) fn to_policy(
    c: &mut Checker<'_>,
    base: &Path,
    key: &str,
    v: &Spanned<FilePolicy>,
) -> Option<(PolicySource, Option<String>)> {
    let fail = |c: &mut Checker<'_>, why: String| {
        c.push(c.loc().error(v, format!("{key}{why}")));
        None
    };
    let table = match v.get_ref() {
        FilePolicy::Text(text) => {
            return match from_text(base, text.trim()) {
                Ok(source) => Some((source, None)),
                Err(why) => fail(c, format!(": {why}")),
            };
        }
        FilePolicy::Table(t) => t,
    };
    let sha256 = match &table.sha256 {
        None => None,
        Some(s) => match parse_sha256(s) {
            Some(hex) => Some(hex),
            None => {
                return fail(
                    c,
                    format!(
                        ".sha256: {s:?} is not a SHA-256 (64 hex digits, optionally after \"sha256:\")"
                    ),
                );
            }
        },
    };
    let source = match (&table.path, &table.oci) {
        (Some(p), None) if p.trim().starts_with("oci://") => {
            return fail(
                c,
                ".path: an oci:// reference goes in `oci = ...`, not `path`".into(),
            );
        }
        (Some(p), None) if !p.trim().is_empty() => PolicySource::File(base.join(p.trim())),
        (None, Some(r)) => match OciReference::parse(r) {
            Ok(r) => PolicySource::Oci(r),
            Err(why) => return fail(c, format!(".oci: {why}")),
        },
        (Some(_), Some(_)) => return fail(c, ": give either `path` or `oci`, not both".into()),
        _ => {
            return fail(
                c,
                ": give `path = \"x.wasm\"` or `oci = \"oci://REGISTRY/REPO:TAG\"`".into(),
            );
        }
    };
    Some((source, sha256))
}

/// `policy = "..."`: a name, a path or a reference.
fn from_text(base: &Path, text: &str) -> Result<PolicySource, String> {
    if text.is_empty() {
        Err(
            "give a built-in policy name, the path of a .wasm component or an oci:// reference"
                .into(),
        )
    } else if text.starts_with("oci://") {
        OciReference::parse(text).map(PolicySource::Oci)
    } else if let Some(native) = text.strip_prefix("native:") {
        if native != "round-robin" {
            return Err("the only native policy is native:round-robin".into());
        }
        Ok(PolicySource::Native(native.to_string()))
    } else if text.contains('/') || text.contains('\\') || text.ends_with(".wasm") {
        Ok(PolicySource::File(base.join(text)))
    } else {
        Ok(PolicySource::Builtin(text.to_string()))
    }
}
