//! HTTPS upstreams: certificates are verified by default; a registry's own CA (`ca_file`) or
//! `insecure = true` is what lets an upstream signed by a private CA through — nothing else.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use manta_conformance::server::MantaServer;
use manta_conformance::upstream_fixtures::{free_port, random_bytes, sha256_digest};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl (Debian: apt-get install openssl)");
    assert!(st.success(), "openssl {args:?} failed");
}

/// A private CA and a server certificate it signed for 127.0.0.1: (ca.pem, cert.pem, key.pem).
fn private_ca(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=manta-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
        ],
        dir,
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
        dir,
    );
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// Debian's docker-registry serving TLS on a free port.
fn tls_registry(dir: &Path, cert: &Path, key: &Path) -> (Killed, u16) {
    let port = free_port().unwrap();
    let cfg = dir.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {}\n    key: {}\n",
            dir.join("storage").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (Debian: apt-get install docker-registry)");
    (Killed(child), port)
}

async fn push(c: &reqwest::Client, base: &str, repo: &str, data: &[u8]) -> String {
    let d = sha256_digest(data);
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let r = c
        .put(format!("{loc}{sep}digest={d}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    d
}

fn manta_with(dir: &Path, name: &str, port: u16, registry_lines: &str) -> MantaServer {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[upstream]\ntimeout_secs = 5\n[upstream.aliases]\nsec = \"https://127.0.0.1:{port}\"\n\
             [upstream.registries.\"127.0.0.1:{port}\"]\n{registry_lines}"
        ),
    )
    .unwrap();
    MantaServer::start_in(&dir.join(name), &["--config", cfg.to_str().unwrap()]).unwrap()
}

#[tokio::test]
async fn https_upstreams_are_verified_unless_configured_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(tmp.path());
    let (_registry, port) = tls_registry(tmp.path(), &cert, &key);
    let base = format!("https://127.0.0.1:{port}");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = trusting.get(format!("{base}/v2/")).send().await {
        assert!(
            Instant::now() < deadline,
            "the TLS registry did not come up: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = random_bytes(100_000);
    let (dc, dl) = (
        push(&trusting, &base, "tls/app", config).await,
        push(&trusting, &base, "tls/app", &layer).await,
    );
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": dl, "size": layer.len()}]
    }))
    .unwrap();
    let r = trusting
        .put(format!("{base}/v2/tls/app/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let c = reqwest::Client::new();
    // Default: the self-signed certificate is refused, with an OCI error, and nothing cached.
    let strict = manta_with(tmp.path(), "strict", port, "");
    let r = c
        .get(format!("{}/v2/sec/tls/app/manifests/v1", strict.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502, "an unverifiable upstream was trusted");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["errors"][0]["code"].is_string());
    // The registry's CA, or insecure = true, lets it through; the bytes are the upstream's.
    for (name, lines) in [
        (
            "with-ca",
            format!("ca_file = {:?}\n", ca.display().to_string()),
        ),
        ("insecure", "insecure = true\n".to_string()),
    ] {
        let m = manta_with(tmp.path(), name, port, &lines);
        let r = c
            .get(format!("{}/v2/sec/tls/app/manifests/v1", m.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}: {}", r.text().await.unwrap());
        assert_eq!(r.bytes().await.unwrap().as_ref(), &manifest[..], "{name}");
        let r = c
            .get(format!("{}/v2/sec/tls/app/blobs/{dl}", m.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert!(
            r.bytes().await.unwrap().as_ref() == &layer[..],
            "{name}: layer bytes differ"
        );
    }
}
