//! Policies in OCI registries: pulled when a config is loaded (at start
//! and at each reload, never on the request path) and pushed by `switchyard
//! policy push`.
//!
//! An artifact has the CNCF TAG-Runtime layout for Wasm: an image manifest
//! whose config has media type [`CONFIG_MEDIA_TYPE`] and whose one layer,
//! [`LAYER_MEDIA_TYPE`], is the component. A pull checks the manifest's
//! digest (for an `@sha256:` reference) and the layer's, and keeps the
//! component in the cache directory ([`super::oci_cache`]); when the
//! registry cannot be reached, the copy recorded for the same reference is
//! loaded instead, with a warning. Registries are spoken to over HTTPS,
//! over plain HTTP only when `[server] insecure-registries` lists them.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::oci_cache::{OciCache, Record, sha256};
use crate::config::OciReference;

/// The config media type of a Wasm artifact.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The media type of its one layer, the component.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Time allowed to connect to a registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one pull or push, all requests included.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The largest component pulled.
const MAX_COMPONENT: i64 = 256 * 1024 * 1024;

/// Why a pull or push failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The registry could not be reached, or answered with a server error:
    /// a cached copy may stand in.
    #[error("cannot reach {registry} over {scheme}: {reason}{hint}")]
    Unreachable {
        /// `host[:port]`.
        registry: String,
        /// `https` or `http`.
        scheme: &'static str,
        /// What went wrong.
        reason: String,
        /// Over HTTPS, how to speak plain HTTP instead; else empty.
        hint: &'static str,
    },
    /// The registry answered, and the answer is no.
    #[error("the registry refused: {0}")]
    Refused(String),
    /// What the reference names is not a Wasm component artifact.
    #[error(
        "it is not a Wasm component artifact ({0}); publish policies with `switchyard policy push`"
    )]
    NotWasm(String),
    /// A problem on this side.
    #[error("{0}")]
    Local(String),
}

/// How a pull reaches a plain-HTTP registry.
const PULL_HINT: &str =
    " (a registry that speaks plain HTTP must be listed in [server] insecure-registries)";
/// How a push does.
const PUSH_HINT: &str = " (for a registry that speaks plain HTTP, add --insecure)";

/// Pulls the component `reference` names, or loads the copy cached under
/// `cache_dir` when the registry cannot be reached (or, for a digest
/// reference, whenever a copy is cached). Blocking: call it off the
/// request path. The error is a sentence naming the reference.
pub fn pull(reference: &OciReference, cache_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    let name = reference.to_string();
    let cache = cache_dir.map(OciCache::new);
    let cached = |c: &OciCache| {
        let record = c.record(&name)?;
        c.blob(&record.component).map(|bytes| (record, bytes))
    };
    // A digest names content that never changes: a cached copy is it.
    if reference.digest.is_some()
        && let Some((_, bytes)) = cache.as_ref().and_then(cached)
    {
        tracing::debug!("{name}: loaded from the cache");
        return Ok(bytes);
    }
    let started = Instant::now();
    let fetched = run(fetch(reference, cache.as_ref())).and_then(|r| r);
    match fetched {
        Ok((manifest, component, bytes)) => {
            if let Some(c) = &cache {
                keep(c, reference, &manifest, &bytes);
            }
            tracing::info!(
                "pulled {name} (manifest {manifest}, component {component}, {} bytes) in {:.1} ms",
                bytes.len(),
                started.elapsed().as_secs_f64() * 1000.0
            );
            Ok(bytes)
        }
        Err(e @ OciError::Unreachable { .. }) => match cache.as_ref().and_then(cached) {
            Some((record, bytes)) => {
                tracing::warn!(
                    "{name}: {e}; loading the copy pulled at {} (component {}) from the cache",
                    record.pulled_at,
                    record.component
                );
                Ok(bytes)
            }
            None => Err(format!(
                "cannot pull {name}: {e}; and no copy of it is cached{}",
                match &cache {
                    Some(c) => format!(" in {}", c.dir().display()),
                    None => " ([server] cache-dir is off)".to_string(),
                }
            )),
        },
        Err(e) => Err(format!("cannot pull {name}: {e}")),
    }
}

/// Keeps a pulled component and what `reference` resolved to, under its
/// name and under its manifest's digest (so that a digest reference finds
/// it too); a failure costs only the cached copy.
fn keep(cache: &OciCache, reference: &OciReference, manifest: &str, bytes: &[u8]) {
    let name = reference.to_string();
    let by_digest = OciReference {
        tag: None,
        digest: Some(manifest.to_string()),
        ..reference.clone()
    };
    let kept = cache.put_blob(bytes).and_then(|component| {
        for name in [name.clone(), by_digest.to_string()] {
            cache.put_record(&Record {
                reference: name,
                manifest: manifest.to_string(),
                component: component.clone(),
                pulled_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            })?;
        }
        Ok(())
    });
    if let Err(e) = kept {
        tracing::warn!(
            "cannot keep {name} in {}: {e}; a restart will need the registry",
            cache.dir().display()
        );
    }
}

/// The manifest's digest, the component's, and the component.
async fn fetch(
    reference: &OciReference,
    cache: Option<&OciCache>,
) -> Result<(String, String, Vec<u8>), OciError> {
    let (client, image) = connect(reference)?;
    let error = |e| classify(reference, e, PULL_HINT);
    let (manifest, manifest_digest) = client
        .pull_manifest(&image, &RegistryAuth::Anonymous)
        .await
        .map_err(error)?;
    let OciManifest::Image(manifest) = manifest else {
        return Err(OciError::NotWasm(
            "it is an image index (several platforms), not one manifest".into(),
        ));
    };
    let layer = wasm_layer(&manifest)?;
    if let Some(bytes) = cache.and_then(|c| c.blob(&layer.digest)) {
        return Ok((manifest_digest, layer.digest.clone(), bytes));
    }
    let mut bytes = Vec::new();
    client
        .pull_blob(&image, layer, &mut bytes)
        .await
        .map_err(error)?;
    if sha256(&bytes) != layer.digest {
        return Err(OciError::Refused(format!(
            "the component does not match its digest {}",
            layer.digest
        )));
    }
    Ok((manifest_digest, layer.digest.clone(), bytes))
}

/// The component's layer, if the manifest has the Wasm artifact layout.
fn wasm_layer(manifest: &OciImageManifest) -> Result<&OciDescriptor, OciError> {
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(OciError::NotWasm(format!(
            "config media type {:?}, not {CONFIG_MEDIA_TYPE:?}",
            manifest.config.media_type
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(OciError::NotWasm(format!(
            "{} layers, not one",
            manifest.layers.len()
        )));
    };
    if layer.media_type != LAYER_MEDIA_TYPE {
        return Err(OciError::NotWasm(format!(
            "layer media type {:?}, not {LAYER_MEDIA_TYPE:?}",
            layer.media_type
        )));
    }
    if !(0..=MAX_COMPONENT).contains(&layer.size) {
        return Err(OciError::NotWasm(format!(
            "a component of {} bytes (at most {MAX_COMPONENT})",
            layer.size
        )));
    }
    Ok(layer)
}

/// A client for `reference`'s registry and the reference in its terms.
fn connect(reference: &OciReference) -> Result<(Client, Reference), OciError> {
    // reqwest is built without a crypto provider: use ring, as the
    // listeners do (an error means one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol: if reference.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(TIMEOUT),
        platform_resolver: None,
        ..ClientConfig::default()
    };
    let client = Client::try_from(config)
        .map_err(|e| OciError::Local(format!("cannot set up a registry client: {e}")))?;
    let (registry, repository) = (reference.registry.clone(), reference.repository.clone());
    let image = match (&reference.tag, &reference.digest) {
        (_, Some(d)) => Reference::with_digest(registry, repository, d.clone()),
        (Some(t), None) => Reference::with_tag(registry, repository, t.clone()),
        (None, None) => Reference::with_tag(registry, repository, "latest".into()),
    };
    Ok((client, image))
}

/// Sorts a client error into unreachable (a cached copy may stand in) or
/// refused.
fn classify(reference: &OciReference, e: OciDistributionError, hint: &'static str) -> OciError {
    let unreachable = |reason: String| OciError::Unreachable {
        registry: reference.registry.clone(),
        scheme: if reference.plain_http {
            "http"
        } else {
            "https"
        },
        reason,
        hint: if reference.plain_http { "" } else { hint },
    };
    match e {
        OciDistributionError::RequestError(e) => unreachable(chain(&e)),
        OciDistributionError::ServerError { code, message, .. } if code >= 500 || code == 429 => {
            unreachable(format!("HTTP {code}: {}", message.trim()))
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => {
            OciError::Refused("it asks for credentials; Switchyard pulls anonymously".into())
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let said: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| match e.message.trim() {
                    "" => format!("{:?}", e.code),
                    m => m.to_string(),
                })
                .collect();
            OciError::Refused(said.join("; "))
        }
        OciDistributionError::ServerError { code, message, .. } => {
            OciError::Refused(format!("HTTP {code}: {}", message.trim()))
        }
        other => OciError::Refused(other.to_string()),
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Runs `fut` to completion on a thread of its own with its own small
/// runtime, within [`TIMEOUT`]: loads run on threads that may or may not be
/// inside the proxy's runtime, and must not block its workers either way.
fn run<T: Send>(fut: impl Future<Output = T> + Send) -> Result<T, OciError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    OciError::Local(format!("cannot start a runtime for the pull: {e}"))
                })?;
            // The timer is made inside the runtime that drives it.
            rt.block_on(async { tokio::time::timeout(TIMEOUT, fut).await })
                .map_err(|_| OciError::Local(format!("gave up after {TIMEOUT:?}")))
        })
        .join()
        .unwrap_or_else(|_| Err(OciError::Local("the registry client panicked".into())))
    })
}

/// What `policy push` published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// `sha256:HEX` of the manifest: `oci://REGISTRY/REPO@` this names it.
    pub manifest: String,
    /// `sha256:HEX` of the component: what `sha256 = ...` pins.
    pub component: String,
}

/// Publishes `component` (already checked to be a policy) at `reference`,
/// which must name a tag. Blocking.
pub fn push(component: &[u8], reference: &OciReference) -> Result<Pushed, OciError> {
    if reference.digest.is_some() {
        return Err(OciError::Local(format!(
            "{reference}: push to a tag (REPO:TAG); the digest is the registry's to compute"
        )));
    }
    run(upload(component, reference)).and_then(|r| r)
}

async fn upload(component: &[u8], reference: &OciReference) -> Result<Pushed, OciError> {
    let (client, image) = connect(reference)?;
    let error = |e| classify(reference, e, PUSH_HINT);
    let component_digest = sha256(component);
    let (exports, imports) = interfaces(component);
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [component_digest],
        "component": { "exports": exports, "imports": imports, "target": null },
    });
    let config = Config::new(
        serde_json::to_vec(&config).map_err(|e| OciError::Local(e.to_string()))?,
        CONFIG_MEDIA_TYPE.to_string(),
        None,
    );
    let layer = ImageLayer::new(component.to_vec(), LAYER_MEDIA_TYPE.to_string(), None);
    let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
    manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
    let body = serde_json::to_vec(&manifest).map_err(|e| OciError::Local(e.to_string()))?;
    client
        .store_auth_if_needed(image.resolve_registry(), &RegistryAuth::Anonymous)
        .await;
    client
        .push_blob(&image, layer.data, &component_digest)
        .await
        .map_err(error)?;
    client
        .push_blob(&image, config.data, &manifest.config.digest)
        .await
        .map_err(error)?;
    client
        .push_manifest_raw(
            &image,
            body.clone(),
            http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
        )
        .await
        .map_err(error)?;
    Ok(Pushed {
        manifest: sha256(&body),
        component: component_digest,
    })
}

/// The names a component exports and imports, for its artifact's config.
fn interfaces(component: &[u8]) -> (Vec<String>, Vec<String>) {
    use wasmparser::{Parser, Payload};
    let (mut exports, mut imports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        match payload {
            Ok(Payload::ModuleSection { .. } | Payload::ComponentSection { .. }) => depth += 1,
            Ok(Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(Payload::ComponentExportSection(s)) if depth == 0 => {
                exports.extend(s.into_iter().flatten().map(|e| e.name.name.to_string()));
            }
            Ok(Payload::ComponentImportSection(s)) if depth == 0 => {
                imports.extend(s.into_iter().flatten().map(|i| i.name.name.to_string()));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (exports, imports)
}
