//! TLS termination: a listener's certificate and key, read from PEM files
//! into a rustls server config that offers HTTP/2 and HTTP/1.1 by ALPN.
//! Files are read when a config is loaded, so a reload picks up renewed
//! certificates.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, TlsFiles};

/// Reads `files` and builds the server config, or an error located at the
/// listener that names the file and what is wrong with it.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, ConfigError> {
    let at = |what: String| files.origin.error(format!("server.listen: {what}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| at(format!("certificate {}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(at(format!(
            "certificate {}: no CERTIFICATE block in it",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| at(format!("key {}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| at(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            at(format!(
                "{} and {} do not make a usable certificate: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
