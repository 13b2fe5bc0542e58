//! The HTTP client side: monolithic uploads, manifest push, and blob reads that only count
//! bytes (or, once per server outside any timing, verify the digest).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Body, Client, StatusCode, Url};
use sha2::{Digest as _, Sha256};

use crate::content::{BlobFile, MANIFEST_MEDIA_TYPE};

/// Bytes moved in some time.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Transfer {
    /// Decimal megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Describes a response that was not what the benchmark expected, with its body.
async fn unexpected(what: &str, resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let headers = format!("{:?}", resp.headers());
    let body = resp.text().await.unwrap_or_default();
    anyhow::anyhow!("{what}: unexpected {status}; headers {headers}; body {body:?}")
}

/// `POST /v2/<repo>/blobs/uploads/` and the absolute URL of the session from `Location`.
async fn start_upload(client: &Client, base: &Url, repo: &str) -> anyhow::Result<Url> {
    let url = base.join(&format!("/v2/{repo}/blobs/uploads/"))?;
    let resp = client
        .post(url.clone())
        .header(CONTENT_LENGTH, 0)
        .send()
        .await?;
    if resp.status() != StatusCode::ACCEPTED {
        return Err(unexpected(&format!("POST {url}"), resp).await);
    }
    let loc = resp
        .headers()
        .get(LOCATION)
        .context("upload session without Location")?
        .to_str()?;
    Ok(url.join(loc)?)
}

/// Appends `digest=<d>` to an upload session URL (keeping docker-registry's `_state`).
fn with_digest(mut session: Url, digest: &str) -> Url {
    session.query_pairs_mut().append_pair("digest", digest);
    session
}

async fn finish_upload(
    client: &Client,
    session: Url,
    digest: &str,
    len: u64,
    body: Body,
) -> anyhow::Result<()> {
    let url = with_digest(session, digest);
    let resp = client
        .put(url.clone())
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, len)
        .body(body)
        .send()
        .await?;
    if resp.status() != StatusCode::CREATED {
        return Err(unexpected(&format!("PUT {url} ({len} bytes)"), resp).await);
    }
    Ok(())
}

/// Monolithic upload of a small in-memory blob (POST, then PUT with the whole body).
pub async fn upload_bytes(
    client: &Client,
    base: &Url,
    repo: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<()> {
    let digest = crate::content::sha256_digest(&bytes);
    let session = start_upload(client, base, repo).await?;
    let len = bytes.len() as u64;
    finish_upload(client, session, &digest, len, Body::from(bytes)).await
}

/// Monolithic upload of `blob`, streamed from its file; timed from the POST to the 201.
pub async fn upload_file(
    client: &Client,
    base: &Url,
    repo: &str,
    blob: &BlobFile,
) -> anyhow::Result<Transfer> {
    let file = tokio::fs::File::open(&blob.path)
        .await
        .with_context(|| format!("open {}", blob.path.display()))?;
    let start = Instant::now();
    let session = start_upload(client, base, repo).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    finish_upload(
        client,
        session,
        &blob.digest,
        blob.size,
        Body::wrap_stream(stream),
    )
    .await?;
    Ok(Transfer {
        bytes: blob.size,
        elapsed: start.elapsed(),
    })
}

/// `PUT /v2/<repo>/manifests/<tag>`.
pub async fn put_manifest(
    client: &Client,
    base: &Url,
    repo: &str,
    tag: &str,
    manifest: Vec<u8>,
) -> anyhow::Result<()> {
    let url = base.join(&format!("/v2/{repo}/manifests/{tag}"))?;
    let resp = client
        .put(url.clone())
        .header(CONTENT_TYPE, MANIFEST_MEDIA_TYPE)
        .body(manifest)
        .send()
        .await?;
    if resp.status() != StatusCode::CREATED {
        return Err(unexpected(&format!("PUT {url}"), resp).await);
    }
    Ok(())
}

/// `GET /v2/<repo>/manifests/<tag>` and checks the exact bytes and `Docker-Content-Digest`.
pub async fn check_manifest(
    client: &Client,
    base: &Url,
    repo: &str,
    tag: &str,
    expected: &[u8],
) -> anyhow::Result<()> {
    let url = base.join(&format!("/v2/{repo}/manifests/{tag}"))?;
    let resp = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, MANIFEST_MEDIA_TYPE)
        .send()
        .await?;
    if resp.status() != StatusCode::OK {
        return Err(unexpected(&format!("GET {url}"), resp).await);
    }
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.bytes().await?;
    ensure!(
        body == expected,
        "GET {url}: manifest bytes differ from those pushed"
    );
    let want = crate::content::sha256_digest(expected);
    ensure!(
        digest.as_deref() == Some(want.as_str()),
        "GET {url}: Docker-Content-Digest {digest:?}, expected {want}"
    );
    Ok(())
}

fn blob_url(base: &Url, repo: &str, blob: &BlobFile) -> anyhow::Result<Url> {
    Ok(base.join(&format!("/v2/{repo}/blobs/{}", blob.digest))?)
}

async fn get_blob(client: &Client, url: &Url) -> anyhow::Result<reqwest::Response> {
    let resp = client.get(url.clone()).send().await?;
    if resp.status() != StatusCode::OK {
        return Err(unexpected(&format!("GET {url}"), resp).await);
    }
    Ok(resp)
}

/// Reads the whole blob, hashing it: proves both servers serve the same bytes (not timed).
pub async fn verify_blob(
    client: &Client,
    base: &Url,
    repo: &str,
    blob: &BlobFile,
) -> anyhow::Result<()> {
    let url = blob_url(base, repo, blob)?;
    let mut stream = get_blob(client, &url).await?.bytes_stream();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("GET {url}: body"))?;
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    ensure!(
        n == blob.size && got == blob.digest,
        "GET {url}: got {n} bytes with digest {got}, expected {} bytes with {}",
        blob.size,
        blob.digest
    );
    Ok(())
}

/// One GET of the blob that only counts bytes (through [`crate::rawget`], so the client costs
/// about as much CPU as `curl -o /dev/null`); timed from connect to the last byte.
pub async fn read_blob(base: &Url, repo: &str, blob: &BlobFile) -> anyhow::Result<Transfer> {
    let url = blob_url(base, repo, blob)?;
    let size = blob.size;
    tokio::task::spawn_blocking(move || crate::rawget::get_count(&url, size))
        .await
        .context("a reader thread panicked")?
}

/// `streams` concurrent GETs of the blob (one connection each); aggregate bytes over the wall
/// time from the first connect to the last byte of the slowest stream.
pub async fn read_blob_concurrently(
    base: &Url,
    repo: &str,
    blob: &BlobFile,
    streams: usize,
) -> anyhow::Result<Transfer> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let (base, repo, blob) = (base.clone(), repo.to_owned(), blob.clone());
        tasks.spawn(async move { read_blob(&base, &repo, &blob).await });
    }
    let mut bytes = 0;
    while let Some(r) = tasks.join_next().await {
        bytes += r.context("a reader task panicked")??.bytes;
    }
    Ok(Transfer {
        bytes,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_appended_to_existing_query() {
        let s =
            Url::parse("http://127.0.0.1:5000/v2/r/blobs/uploads/u?_state=abc%3D").expect("url");
        let u = with_digest(s, "sha256:00");
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:5000/v2/r/blobs/uploads/u?_state=abc%3D&digest=sha256%3A00"
        );
        let base = Url::parse("http://127.0.0.1:1/v2/r/blobs/uploads/").expect("url");
        let rel = base.join("/v2/r/blobs/uploads/x").expect("join");
        assert_eq!(
            with_digest(rel, "sha256:00").as_str(),
            "http://127.0.0.1:1/v2/r/blobs/uploads/x?digest=sha256%3A00"
        );
    }

    #[test]
    fn throughput_is_decimal_megabytes() {
        let t = Transfer {
            bytes: 2_000_000,
            elapsed: Duration::from_secs(2),
        };
        assert!((t.mb_per_s() - 1.0).abs() < 1e-9);
    }
}
