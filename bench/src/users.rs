//! The clients users run, on the same content as the lean reader: `curl` (one stream, and many
//! at once) and containerd's `ctr images pull` of a large single-layer image (fetch, verify,
//! unpack with the native snapshotter). A figure that holds only for a client of our own is
//! not the figure.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use reqwest::Url;
use sha2::{Digest as _, Sha256};

use crate::client::Transfer;
use crate::content::BlobFile;

/// `curl -s -o /dev/null` of `url`, which must deliver `size` bytes; timed by curl itself from
/// the start of the connection to the last byte (`time_total`).
pub fn curl_get(url: &Url, size: u64) -> anyhow::Result<Transfer> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-S",
            "-f",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
        ])
        .arg(url.as_str())
        .output()
        .context("run curl (apt-get install curl)")?;
    ensure!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let got: u64 = parts.next().context("curl printed no size")?.parse()?;
    let secs: f64 = parts.next().context("curl printed no time")?.parse()?;
    ensure!(got == size, "curl {url}: {got} bytes of {size}");
    Ok(Transfer {
        bytes: got,
        elapsed: Duration::from_secs_f64(secs),
    })
}

/// `n` curl processes at once; aggregate bytes over the wall time from the first start to the
/// last exit.
pub async fn curl_concurrently(url: &Url, size: u64, n: usize) -> anyhow::Result<Transfer> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let url = url.clone();
        tasks.spawn_blocking(move || curl_get(&url, size));
    }
    let mut bytes = 0;
    while let Some(r) = tasks.join_next().await {
        bytes += r.context("a curl task panicked")??.bytes;
    }
    Ok(Transfer {
        bytes,
        elapsed: start.elapsed(),
    })
}

/// A tar layer holding `src` as one file (`model.bin`): what an image of a model's weights is.
pub fn write_tar_layer(src: &BlobFile, path: &Path) -> anyhow::Result<BlobFile> {
    let prefix = manta_hub::forms::tar_prefix("model.bin", src.size)?;
    let suffix = manta_hub::forms::tar_suffix_len(src.size);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut h = Sha256::new();
    {
        let mut put = |b: &[u8]| -> anyhow::Result<()> {
            h.update(b);
            out.write_all(b)?;
            Ok(())
        };
        put(&prefix)?;
        let mut f = std::fs::File::open(&src.path)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            put(&buf[..n])?;
        }
        put(&vec![0u8; suffix as usize])?;
    }
    out.flush()?;
    Ok(BlobFile {
        path: path.to_path_buf(),
        size: prefix.len() as u64 + src.size + suffix,
        digest: format!("sha256:{}", hex::encode(h.finalize())),
    })
}

/// The config of an image whose one uncompressed layer is `layer` (its diff ID is its digest).
pub fn image_config(layer: &BlobFile) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }))
    .unwrap_or_default()
}

/// `ctr images pull --plain-http --snapshotter native <reference>` into namespace `ns` (its
/// content store is its own, so the pull downloads everything); the time it took. The image is
/// then removed with its content and snapshot (`images rm --sync`).
pub fn ctr_pull(
    ctrd: &manta_conformance::containerd::Containerd,
    ns: &str,
    reference: &str,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    ctrd.run_ctr(
        ns,
        &[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "native",
            reference,
        ],
    )?;
    let took = start.elapsed();
    ctrd.run_ctr(ns, &["images", "rm", "--sync", reference])?;
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tar_layer_holds_the_blob_as_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let blob = crate::content::write_blob(&dir.path().join("b"), 10_000, 1).unwrap();
        let tar = write_tar_layer(&blob, &dir.path().join("t")).unwrap();
        let bytes = std::fs::read(&tar.path).unwrap();
        assert_eq!(bytes.len() as u64, tar.size);
        assert_eq!(tar.size % 512, 0);
        assert_eq!(crate::content::sha256_digest(&bytes), tar.digest);
        let out = Command::new("tar")
            .arg("-tvf")
            .arg(&tar.path)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            listing.contains("10000") && listing.contains("model.bin"),
            "{listing}"
        );
    }
}
