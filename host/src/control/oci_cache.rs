//! Pulled policies on disk, under `CACHE-DIR/oci/`: each component by its
//! SHA-256 (`blobs/sha256/HEX`), and for each reference a record of what it
//! last resolved to (`refs/KEY.json`: the reference, its manifest's digest,
//! its component's digest), so that a restart loads a tag's policy while
//! the registry is down, and a digest reference never needs the registry
//! once pulled. Files are written under a temporary name and renamed; a
//! component is checked against its digest whenever it is read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// [`Record`] is what one reference resolved to when it was last pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The reference, `oci://REGISTRY/REPO:TAG` or `...@sha256:...`.
    pub reference: String,
    /// `sha256:HEX` of its manifest.
    pub manifest: String,
    /// `sha256:HEX` of its component (the one layer).
    pub component: String,
    /// When it was pulled (RFC 3339).
    pub pulled_at: String,
}

/// [`OciCache`] is the `oci/` folder of a cache directory.
#[derive(Debug, Clone)]
pub struct OciCache {
    dir: PathBuf,
}

/// `sha256:HEX` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl OciCache {
    /// The cache under `cache_dir/oci` (created when first written).
    pub fn new(cache_dir: &Path) -> OciCache {
        OciCache {
            dir: cache_dir.join("oci"),
        }
    }

    /// Where it is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        let ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| self.dir.join("blobs/sha256").join(hex.to_ascii_lowercase()))
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        // Named by a hash of the reference: any reference, one flat folder.
        let key = sha256(reference.as_bytes());
        self.dir.join("refs").join(format!("{}.json", &key[7..39]))
    }

    /// The component with `digest`, if it is cached and intact.
    pub fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let bytes = std::fs::read(&path).ok()?;
        if sha256(&bytes) != digest {
            tracing::warn!(
                "ignoring {}: its contents do not match its digest",
                path.display()
            );
            return None;
        }
        Some(bytes)
    }

    /// Keeps a component under its digest; returns the digest.
    pub fn put_blob(&self, bytes: &[u8]) -> std::io::Result<String> {
        let digest = sha256(bytes);
        if let Some(path) = self.blob_path(&digest)
            && !path.exists()
        {
            write_atomically(&path, bytes)?;
        }
        Ok(digest)
    }

    /// What `reference` resolved to when last pulled, if recorded.
    pub fn record(&self, reference: &str) -> Option<Record> {
        let text = std::fs::read(self.record_path(reference)).ok()?;
        let record: Record = serde_json::from_slice(&text).ok()?;
        (record.reference == reference).then_some(record)
    }

    /// Records what a reference resolved to.
    pub fn put_record(&self, record: &Record) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_atomically(&self.record_path(&record.reference), &text)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchyard-oci-cache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_component_comes_back_only_while_it_matches_its_digest() {
        let dir = temp("blob");
        let cache = OciCache::new(&dir);
        let digest = cache.put_blob(b"\0asm component").unwrap();
        assert_eq!(
            cache.blob(&digest).as_deref(),
            Some(&b"\0asm component"[..])
        );
        let path = cache.blob_path(&digest).unwrap();
        std::fs::write(&path, b"tampered").unwrap();
        assert_eq!(cache.blob(&digest), None);
        assert_eq!(cache.blob("sha256:../../etc/passwd"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_is_found_by_its_reference_alone() {
        let dir = temp("record");
        let cache = OciCache::new(&dir);
        let record = Record {
            reference: "oci://127.0.0.1:5000/p/w:v1".into(),
            manifest: sha256(b"m"),
            component: sha256(b"c"),
            pulled_at: "2026-01-01T00:00:00Z".into(),
        };
        cache.put_record(&record).unwrap();
        assert_eq!(cache.record("oci://127.0.0.1:5000/p/w:v1"), Some(record));
        assert_eq!(cache.record("oci://127.0.0.1:5000/p/w:v2"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
