//! The file as written: serde mirrors of the TOML, kebab-case keys,
//! unknown keys refused, spans kept for error messages. Nothing here is
//! checked beyond its TOML type; `to_*` methods in the sibling modules turn
//! these into the runtime types.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

use super::state::FileState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileConfig {
    pub server: FileServer,
    pub admin: Option<FileAdmin>,
    pub access_log: Option<Spanned<FileAccessLog>>,
    pub state: Option<Spanned<FileState>>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<FileUpstream>>,
    #[serde(default)]
    pub routes: Vec<Spanned<FileRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileServer {
    pub listen: Spanned<Listen>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub watch: Option<bool>,
    pub release_startup_pages: Option<bool>,
    pub max_header_size: Option<Spanned<String>>,
    pub max_headers: Option<Spanned<usize>>,
    pub max_connections: Option<Spanned<usize>>,
    pub client_idle_timeout: Option<Spanned<String>>,
    pub client_body_timeout: Option<Spanned<String>>,
    pub tls_handshake_timeout: Option<Spanned<String>>,
    pub upgrades: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub forwarded: bool,
    pub cache_dir: Option<String>,
    #[serde(default)]
    pub insecure_registries: Vec<Spanned<String>>,
    pub zone: Option<Spanned<String>>,
    pub resolver: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileAccessLog {
    #[serde(default = "stdout")]
    pub path: Spanned<String>,
    #[serde(default)]
    pub format: LogFormat,
}

fn stdout() -> Spanned<String> {
    Spanned::new(0..0, "-".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileHealthCheck {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<String>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
    pub host: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileListener {
    pub address: String,
    pub tls: Option<FileTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileAdmin {
    pub listen: Spanned<String>,
    #[serde(default)]
    pub allow_remote: bool,
    pub token_file: Option<Spanned<String>>,
    pub decisions: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileUpstream {
    pub policy: Spanned<FilePolicy>,
    pub backends: Spanned<Vec<Spanned<FileBackend>>>,
    pub policy_config: Option<Spanned<toml::Table>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub read_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    pub tunnel_idle_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub keepalive: Option<Spanned<usize>>,
    pub max_connections_per_backend: Option<Spanned<usize>>,
    pub max_fails: Option<Spanned<u32>>,
    pub fail_timeout: Option<Spanned<String>>,
    pub policy_timeout: Option<Spanned<String>>,
    pub policy_timeout_max: Option<Spanned<String>>,
    pub policy_memory: Option<Spanned<String>>,
    pub policy_memory_max: Option<Spanned<String>>,
    pub policy_max_failures: Option<Spanned<u32>>,
    pub retries: Option<u32>,
    pub retry_timeout: Option<Spanned<String>>,
    pub health_check: Option<Spanned<FileHealthCheck>>,
    pub shadow_policy: Option<Spanned<FilePolicy>>,
    pub shadow_sample: Option<Spanned<f64>>,
    pub shadow_policy_config: Option<Spanned<toml::Table>>,
    pub dns_refresh: Option<Spanned<String>>,
    pub shared_state: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileBackend {
    pub name: Spanned<String>,
    pub address: Option<Spanned<String>>,
    /// `host:port` whose A and AAAA records are the backends.
    pub dns: Option<Spanned<String>>,
    /// An SRV name whose records are the backends.
    pub srv: Option<Spanned<String>>,
    pub weight: Option<Spanned<u32>>,
    #[serde(default)]
    pub backup: bool,
    #[serde(default)]
    pub h2: bool,
    pub tags: Option<Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileRoute {
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub upstream: Spanned<String>,
    pub max_body_size: Option<Spanned<String>>,
}

/// `policy = "name, path or oci://reference"`, or a table `{ path = "...",
/// sha256 = "..." }` or `{ oci = "oci://...", sha256 = "..." }`.
#[derive(Debug)]
pub(super) enum FilePolicy {
    Text(String),
    Table(FilePolicyTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FilePolicyTable {
    pub path: Option<String>,
    pub oci: Option<String>,
    pub sha256: Option<String>,
}

impl<'de> Deserialize<'de> for FilePolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FilePolicy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a built-in policy name, a .wasm path, an oci:// reference, or a table { path = ..., sha256 = ... } or { oci = ..., sha256 = ... }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FilePolicy, E> {
                Ok(FilePolicy::Text(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<FilePolicy, A::Error> {
                FilePolicyTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(FilePolicy::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// `listen = "addr"`, or a list whose entries are addresses or tables
/// `{ address = "...", tls = { cert = "...", key = "..." } }`.
#[derive(Debug)]
pub(super) struct Listen(pub Vec<FileListener>);

fn plain(address: &str) -> FileListener {
    FileListener {
        address: address.to_string(),
        tls: None,
    }
}

/// One entry of a `listen` list.
struct ListenEntry(FileListener);

impl<'de> Deserialize<'de> for ListenEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ListenEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address such as \"127.0.0.1:8080\" or a table { address = ..., tls = { cert = ..., key = ... } }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ListenEntry, E> {
                Ok(ListenEntry(plain(v)))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ListenEntry, A::Error> {
                FileListener::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ListenEntry)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address such as \"127.0.0.1:8080\" or a list of addresses and listener tables")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Listen, E> {
                Ok(Listen(vec![plain(v)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Listen, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = seq.next_element::<ListenEntry>()? {
                    out.push(e.0);
                }
                Ok(Listen(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The access log's format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// NCSA common log format plus upstream fields.
    #[default]
    Common,
    /// One JSON object per line.
    Json,
}
