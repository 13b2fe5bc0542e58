//! An image pull the way containerd does it, minus unpacking: the manifest by tag, then every
//! blob it references (config and layers), a few at a time, each read to the end and its sha256
//! checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use reqwest::{Client, StatusCode, Url};

use crate::content::MANIFEST_MEDIA_TYPE;

/// Concurrent blob GETs per pull (containerd's default `max_concurrent_downloads` is 3).
pub const BLOB_CONCURRENCY: usize = 3;

/// What a pull read: manifest and blob bytes, and the wall time from the manifest request to the
/// last byte of the last blob.
#[derive(Clone, Copy, Debug)]
pub struct Pulled {
    pub bytes: u64,
    pub blobs: usize,
    pub elapsed: Duration,
}

#[derive(Debug, PartialEq)]
struct Descriptor {
    digest: String,
    size: u64,
}

/// Config first, then the layers, as the manifest lists them.
fn descriptors(manifest: &[u8]) -> anyhow::Result<Vec<Descriptor>> {
    let v: serde_json::Value = serde_json::from_slice(manifest).context("manifest is not JSON")?;
    let one = |d: &serde_json::Value| -> anyhow::Result<Descriptor> {
        Ok(Descriptor {
            digest: d["digest"]
                .as_str()
                .context("descriptor without digest")?
                .to_owned(),
            size: d["size"].as_u64().context("descriptor without size")?,
        })
    };
    let mut out = vec![one(&v["config"])?];
    for l in v["layers"].as_array().context("manifest without layers")? {
        out.push(one(l)?);
    }
    Ok(out)
}

/// Pulls `<base>/v2/<repo>/manifests/<tag>` and its blobs; the manifest must have the digest
/// `manifest_digest` (the one pushed upstream) and every blob its descriptor's digest and size.
pub async fn pull(
    client: &Client,
    base: &Url,
    repo: &str,
    tag: &str,
    manifest_digest: &str,
) -> anyhow::Result<Pulled> {
    let start = Instant::now();
    let url = base.join(&format!("/v2/{repo}/manifests/{tag}"))?;
    let resp = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, MANIFEST_MEDIA_TYPE)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    if status != StatusCode::OK {
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("GET {url}: unexpected {status}; body {body:?}");
    }
    let header_digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let manifest = resp.bytes().await.with_context(|| format!("GET {url}"))?;
    let got = crate::content::sha256_digest(&manifest);
    ensure!(
        got == manifest_digest,
        "GET {url}: manifest digest {got}, expected {manifest_digest}"
    );
    ensure!(
        header_digest
            .as_deref()
            .is_none_or(|d| d == manifest_digest),
        "GET {url}: Docker-Content-Digest {header_digest:?}, expected {manifest_digest}"
    );
    let descs = descriptors(&manifest)?;
    let blobs = descs.len();
    let mut bytes = manifest.len() as u64;

    let permits = Arc::new(tokio::sync::Semaphore::new(BLOB_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for d in descs {
        let url = base.join(&format!("/v2/{repo}/blobs/{}", d.digest))?;
        let permit = permits.clone().acquire_owned().await?;
        tasks.spawn_blocking(move || {
            let _permit = permit;
            crate::rawget::get_verify(&url, d.size, &d.digest)
        });
        // Reap finished blobs as we go, so the first error ends the pull early.
        while let Some(r) = tasks.try_join_next() {
            bytes += r.context("a blob reader panicked")??.bytes;
        }
    }
    while let Some(r) = tasks.join_next().await {
        bytes += r.context("a blob reader panicked")??.bytes;
    }
    Ok(Pulled {
        bytes,
        blobs,
        elapsed: start.elapsed(),
    })
}

/// `n` pulls at once; the wall time is from the start to the end of the slowest.
pub async fn pull_concurrently(
    client: &Client,
    base: &Url,
    repo: &str,
    tag: &str,
    manifest_digest: &str,
    n: usize,
) -> anyhow::Result<Pulled> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, base) = (client.clone(), base.clone());
        let (repo, tag, md) = (repo.to_owned(), tag.to_owned(), manifest_digest.to_owned());
        tasks.spawn(async move { pull(&client, &base, &repo, &tag, &md).await });
    }
    let (mut bytes, mut blobs) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let p = r.context("a pull panicked")??;
        bytes += p.bytes;
        blobs += p.blobs;
    }
    Ok(Pulled {
        bytes,
        blobs,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_then_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = crate::content::write_blob(&dir.path().join("a"), 10, 1).expect("a");
        let b = crate::content::write_blob(&dir.path().join("b"), 20, 2).expect("b");
        let config = crate::content::config_bytes();
        let m = crate::content::image_manifest_bytes(&config, &[a.clone(), b.clone()])
            .expect("manifest");
        let d = descriptors(&m).expect("descriptors");
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].digest, crate::content::sha256_digest(&config));
        assert_eq!(d[0].size, config.len() as u64);
        assert_eq!(
            d[1],
            Descriptor {
                digest: a.digest,
                size: 10
            }
        );
        assert_eq!(d[2].size, 20);
    }
}
