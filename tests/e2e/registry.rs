//! A real OCI registry for the tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on a free 127.0.0.1 port, storing into a temp
//! dir, killed on drop; plus `policy push` through the binary and a raw
//! push of any artifact, for the ones `policy push` would never make.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The registry binary (`apt-get install docker-registry`; `./test.sh`
/// installs it).
const REGISTRY: &str = "docker-registry";

/// `sha256:HEX` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
}

/// A running registry.
pub struct Registry {
    child: Option<Killed>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: TempDir,
}

impl Registry {
    /// Starts a registry and waits until it answers `GET /v2/`.
    pub fn start() -> Registry {
        let found = Command::new(REGISTRY)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{REGISTRY} is not installed: run ./test.sh (or apt-get install docker-registry)"
        );
        let dir = TempDir::new("registry");
        // A free port: taken from the kernel, then handed to the registry
        // (it cannot say which port it got for :0).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.write(
            "config.yml",
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        );
        let mut registry = Registry {
            child: None,
            addr,
            dir,
        };
        registry.spawn(&config);
        registry
    }

    fn spawn(&mut self, config: &Path) {
        let log = std::fs::File::create(self.log_path()).expect("registry log");
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.child = Some(Killed(child));
        let agent = client();
        let url = format!("http://{}/v2/", self.addr);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent.get(&url).call().is_ok_and(|r| r.status() == 200) {
            assert!(
                Instant::now() < deadline,
                "the registry did not answer on {}:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// What the registry logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops it (its port then refuses connections).
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// `oci://127.0.0.1:PORT/` + `path`.
    pub fn reference(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.addr)
    }

    /// Uploads a blob to `repo`; returns its digest.
    fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let agent = client();
        let digest = sha256(bytes);
        let base = format!("http://{}", self.addr);
        let started = agent
            .post(&format!("{base}/v2/{repo}/blobs/uploads/"))
            .send(&[][..])
            .expect("start an upload");
        assert_eq!(started.status().as_u16(), 202);
        let location = started
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .expect("upload location")
            .to_string();
        let location = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let done = agent
            .put(&format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .send(bytes)
            .expect("upload a blob");
        assert_eq!(done.status().as_u16(), 201, "blob upload");
        digest
    }

    /// Pushes an artifact of one layer with the given media types, as any
    /// OCI tool could; returns the manifest's digest.
    pub fn push_raw(
        &self,
        repo_tag: &str,
        config_type: &str,
        layer_type: &str,
        layer: &[u8],
    ) -> String {
        let (repo, tag) = repo_tag.split_once(':').expect("REPO:TAG");
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let config_digest = self.blob(repo, config);
        let layer_digest = self.blob(repo, layer);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": config_type, "digest": config_digest, "size": config.len() },
            "layers": [{ "mediaType": layer_type, "digest": layer_digest, "size": layer.len() }],
        })
        .to_string();
        let resp = client()
            .put(&format!("http://{}/v2/{repo}/manifests/{tag}", self.addr))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .send(manifest.as_bytes())
            .expect("push a manifest");
        assert_eq!(resp.status().as_u16(), 201, "manifest push");
        sha256(manifest.as_bytes())
    }
}

/// What `switchyard policy push` printed.
pub struct Pushed {
    /// `sha256:...` of the manifest.
    pub manifest: String,
    /// `sha256:...` of the component.
    pub component: String,
    /// Everything it printed.
    pub text: String,
}

/// `switchyard policy push FILE REFERENCE --insecure`, which must succeed.
pub fn push(file: &Path, reference: &str) -> Pushed {
    let out = sy()
        .args(["policy", "push"])
        .arg(file)
        .args([reference, "--insecure"])
        .output()
        .expect("run policy push");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "policy push failed:\n{text}");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
            .to_string()
    };
    Pushed {
        manifest: field("manifest "),
        component: field("component "),
        text,
    }
}
