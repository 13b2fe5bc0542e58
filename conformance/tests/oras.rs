//! oras-py (the `oras` Python package) against a fresh `manta serve`: push an artifact of three
//! files with a custom `artifactType`, pull it back by tag and by digest, attach two referrers
//! (one through oras-py's high-level `push(subject=…)`, one with its own `artifactType`) and
//! discover them through `GET /v2/<name>/referrers/<digest>`, with and without `?artifactType=`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use common::{
    assert_trees_equal, http, random_bytes, read_tree, require_tool, run, sha256_digest,
    with_registry, Entry, Registry,
};
use serde_json::{json, Value};

const ARTIFACT_TYPE: &str = "application/vnd.manta.test.v1";
const SIGNATURE_TYPE: &str = "application/vnd.manta.test.signature.v1";
const SBOM_CONFIG_TYPE: &str = "application/vnd.manta.test.sbom.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/oras_e2e.py")
}

/// Run one step of the oras-py driver and return its JSON result.
fn oras_step(
    reg: &Registry,
    step: &str,
    target: &str,
    args: &[&str],
    out_dir: &Path,
) -> Result<Value> {
    require_tool("python3", "install Python 3 and `pip install oras`");
    let id = sha256_digest(format!("{step}{target}{args:?}").as_bytes());
    let out = out_dir.join(format!("result-{}.json", &id["sha256:".len()..]));
    run(Command::new("python3")
        .arg(script())
        .arg(step)
        .args(["--registry", reg.addr(), "--target", target])
        .arg("--out")
        .arg(&out)
        .args(args))
    .with_context(|| format!("oras-py step `{step}` on {target}"))?;
    let text = std::fs::read_to_string(&out)?;
    serde_json::from_str(&text).with_context(|| format!("result of `{step}`: {text}"))
}

/// A pushed manifest as the registry must have stored it.
struct Pushed {
    digest: String,
    size: u64,
    body: Vec<u8>,
    headers: Value,
}

/// Check a manifest PUT made by oras-py: 201, `Docker-Content-Digest` = digest of the bytes sent,
/// and the registry serves those exact bytes back.
fn check_manifest_put(reg: &Registry, name: &str, result: &Value) -> Result<Pushed> {
    let put = &result["put"];
    let status = put["status"].as_u64().context("put status")?;
    let body = put["sent_body"]
        .as_str()
        .context("sent body")?
        .as_bytes()
        .to_vec();
    let digest = sha256_digest(&body);
    ensure!(
        status == 201,
        "manifest PUT answered {status}, want 201; headers {}",
        put["headers"]
    );
    ensure!(
        put["headers"]["docker-content-digest"].as_str() == Some(digest.as_str()),
        "manifest PUT: Docker-Content-Digest {} != digest of the sent bytes {digest}",
        put["headers"]["docker-content-digest"]
    );
    let got = http(
        "GET",
        &format!("{}/v2/{name}/manifests/{digest}", reg.url()),
        &[("Accept", MANIFEST_TYPE)],
        None,
    )?;
    ensure!(got.status == 200, "GET manifest {digest}: {}", got.status);
    ensure!(
        got.body == body,
        "manifest {digest} is not served byte for byte"
    );
    ensure!(
        got.header("content-type").as_deref() == Some(MANIFEST_TYPE),
        "GET manifest {digest}: Content-Type {:?}",
        got.header("content-type")
    );
    Ok(Pushed {
        digest,
        size: body.len() as u64,
        body,
        headers: put["headers"].clone(),
    })
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=…]`, checked for status and content type;
/// returns the entries sorted by digest and the response.
fn referrers(
    reg: &Registry,
    name: &str,
    digest: &str,
    filter: Option<&str>,
) -> Result<(Vec<Value>, common::HttpResponse)> {
    let mut url = format!("{}/v2/{name}/referrers/{digest}", reg.url());
    if let Some(f) = filter {
        // Percent-encoded as clients do (url.Values.Encode): a raw `+` would read as a space.
        url.push_str(&format!("?artifactType={}", query_encode(f)));
    }
    let resp = http("GET", &url, &[], None)?;
    ensure!(
        resp.status == 200,
        "GET {url}: status {}: {}",
        resp.status,
        String::from_utf8_lossy(&resp.body)
    );
    let ct = resp.header("content-type").unwrap_or_default();
    ensure!(
        ct.starts_with(INDEX_TYPE),
        "GET {url}: Content-Type {ct:?}, want {INDEX_TYPE}"
    );
    let index = resp.json()?;
    ensure!(
        index["schemaVersion"] == json!(2),
        "GET {url}: schemaVersion {}",
        index["schemaVersion"]
    );
    ensure!(
        index["mediaType"] == json!(INDEX_TYPE),
        "GET {url}: mediaType {}",
        index["mediaType"]
    );
    let mut entries = index["manifests"]
        .as_array()
        .with_context(|| format!("GET {url}: no manifests array: {index}"))?
        .clone();
    entries.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    Ok((entries, resp))
}

/// Percent-encode a query parameter value (everything but RFC 3986 unreserved characters).
fn query_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The referrers entry a registry must list for `pushed`.
fn expected_entry(pushed: &Pushed, artifact_type: &str) -> Result<Value> {
    let manifest: Value = serde_json::from_slice(&pushed.body)?;
    let mut e = json!({
        "mediaType": MANIFEST_TYPE,
        "digest": pushed.digest,
        "size": pushed.size,
        "artifactType": artifact_type,
    });
    if let Some(a) = manifest
        .get("annotations")
        .filter(|a| a.as_object().is_some_and(|o| !o.is_empty()))
    {
        e["annotations"] = a.clone();
    }
    Ok(e)
}

fn assert_entries(url_desc: &str, got: &[Value], want: &[&Value]) -> Result<()> {
    let mut want: Vec<Value> = want.iter().map(|v| (*v).clone()).collect();
    want.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    // An empty annotations object is the same as none.
    let normalise = |v: &Value| {
        let mut v = v.clone();
        if v.get("annotations")
            .is_some_and(|a| a.as_object().is_some_and(|o| o.is_empty()))
        {
            v.as_object_mut().map(|o| o.remove("annotations"));
        }
        v
    };
    let got: Vec<Value> = got.iter().map(normalise).collect();
    ensure!(
        got == want,
        "{url_desc}: referrers differ\n got: {}\nwant: {}",
        serde_json::to_string_pretty(&got)?,
        serde_json::to_string_pretty(&want)?
    );
    Ok(())
}

#[test]
fn oras_push_pull_and_referrers() {
    with_registry(oras_flow);
}

fn oras_flow(reg: &Registry) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let work = tmp.path().join("work");
    let name = "e2e/oras/artifact";

    // Three files: one small, one in a subfolder, one > 2 MiB of random bytes (pushed by oras-py
    // as a chunked upload: POST, PATCH × 3, PUT).
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("readme.txt", b"manta oras end-to-end test\n".to_vec()),
        (
            "sub/dir/config.json",
            br#"{"model":"tiny","layers":3}"#.to_vec(),
        ),
        ("weights.bin", random_bytes(2 * 1024 * 1024 + 4097)),
    ];
    let mut expected = BTreeMap::new();
    for (rel, bytes) in &files {
        let p = work.join(rel);
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(&p, bytes)?;
    }
    for (rel, bytes) in &files {
        expected.insert(rel.to_string(), Entry::file(bytes, 0o644));
    }
    expected.insert("sub".into(), Entry::Dir);
    expected.insert("sub/dir".into(), Entry::Dir);
    let rels: Vec<&str> = files.iter().map(|(r, _)| *r).collect();
    let workdir = work.to_string_lossy().into_owned();

    // Push.
    let target = format!("{name}:v1");
    let mut args = vec!["--workdir", &workdir, "--artifact-type", ARTIFACT_TYPE];
    for rel in &rels {
        args.extend(["--file", rel]);
    }
    let result = oras_step(reg, "push", &target, &args, tmp.path())?;
    let artifact = check_manifest_put(reg, name, &result)?;
    let manifest: Value = serde_json::from_slice(&artifact.body)?;
    ensure!(
        manifest["artifactType"] == json!(ARTIFACT_TYPE),
        "stored manifest lost its artifactType"
    );
    let layers = manifest["layers"].as_array().context("layers")?;
    for ((rel, bytes), layer) in files.iter().zip(layers) {
        ensure!(
            layer["digest"] == json!(sha256_digest(bytes)),
            "layer for {rel}: {layer}"
        );
        ensure!(
            layer["annotations"]["org.opencontainers.image.title"] == json!(rel),
            "layer title: {layer}"
        );
        // Every blob is there with the right digest and length.
        let url = format!("{}/v2/{name}/blobs/{}", reg.url(), sha256_digest(bytes));
        let head = http("HEAD", &url, &[], None)?;
        ensure!(head.status == 200, "HEAD {url}: {}", head.status);
        ensure!(
            head.header("content-length") == Some(bytes.len().to_string()),
            "HEAD {url}: Content-Length {:?}, want {}",
            head.header("content-length"),
            bytes.len()
        );
    }

    // Pull back by tag and by digest into fresh directories.
    for (i, reference) in [target.clone(), format!("{name}@{}", artifact.digest)]
        .iter()
        .enumerate()
    {
        let outdir = tmp.path().join(format!("pulled-{i}"));
        let outdir_s = outdir.to_string_lossy().into_owned();
        let pulled = oras_step(reg, "pull", reference, &["--outdir", &outdir_s], tmp.path())?;
        let want_files: Vec<&str> = {
            let mut v = rels.clone();
            v.sort();
            v
        };
        ensure!(
            pulled["files"] == json!(want_files),
            "oras-py pulled {} from {reference}",
            pulled["files"]
        );
        assert_trees_equal(
            &expected,
            &read_tree(&outdir)?,
            &format!("oras pull {reference}"),
        )?;
    }

    // Referrer 1: oras-py's own push(subject=…), with a config of its own media type and manifest
    // annotations; no artifactType, so the referrers API must report the config's media type.
    let subject_digest = artifact.digest.clone();
    let subject_size = artifact.size.to_string();
    let sbom_dir = tmp.path().join("sbom");
    std::fs::create_dir_all(&sbom_dir)?;
    std::fs::write(
        sbom_dir.join("sbom.spdx.json"),
        br#"{"spdxVersion":"SPDX-2.3"}"#,
    )?;
    std::fs::write(
        sbom_dir.join("config.json"),
        br#"{"generator":"manta-e2e"}"#,
    )?;
    let sbom_annotations = r#"{"com.manta.test.kind":"sbom","org.opencontainers.image.created":"2024-01-01T00:00:00Z"}"#;
    let sbom_dir_s = sbom_dir.to_string_lossy().into_owned();
    let sbom = oras_step(
        reg,
        "push-oras",
        &format!("{name}:sbom"),
        &[
            "--workdir",
            &sbom_dir_s,
            "--config-file",
            "config.json",
            "--config-media-type",
            SBOM_CONFIG_TYPE,
            "--annotations",
            sbom_annotations,
            "--subject-digest",
            &subject_digest,
            "--subject-size",
            &subject_size,
            "--file",
            "sbom.spdx.json",
        ],
        tmp.path(),
    )?;
    let sbom = check_manifest_put(reg, name, &sbom)?;

    // Referrer 2: built from oras-py's building blocks, with its own artifactType.
    let sig_dir = tmp.path().join("sig");
    std::fs::create_dir_all(&sig_dir)?;
    std::fs::write(sig_dir.join("signature.sig"), random_bytes(512))?;
    let sig_dir_s = sig_dir.to_string_lossy().into_owned();
    let sig = oras_step(
        reg,
        "push",
        &format!("{name}:sig"),
        &[
            "--workdir",
            &sig_dir_s,
            "--artifact-type",
            SIGNATURE_TYPE,
            "--annotations",
            r#"{"com.manta.test.kind":"signature"}"#,
            "--subject-digest",
            &subject_digest,
            "--subject-size",
            &subject_size,
            "--file",
            "signature.sig",
        ],
        tmp.path(),
    )?;
    let sig = check_manifest_put(reg, name, &sig)?;

    for (what, pushed) in [("sbom", &sbom), ("signature", &sig)] {
        ensure!(
            pushed.headers["oci-subject"].as_str() == Some(subject_digest.as_str()),
            "PUT of the {what} referrer: OCI-Subject {}, want {subject_digest}",
            pushed.headers["oci-subject"]
        );
    }

    let sbom_entry = expected_entry(&sbom, SBOM_CONFIG_TYPE)?;
    let sig_entry = expected_entry(&sig, SIGNATURE_TYPE)?;

    // Discovery, unfiltered.
    let (all, _) = referrers(reg, name, &subject_digest, None)?;
    assert_entries("referrers (unfiltered)", &all, &[&sbom_entry, &sig_entry])?;

    // Filtered by each artifact type, and by one nobody uses.
    for (filter, want) in [
        (SIGNATURE_TYPE, vec![&sig_entry]),
        (SBOM_CONFIG_TYPE, vec![&sbom_entry]),
        ("application/vnd.manta.none", vec![]),
    ] {
        let (got, resp) = referrers(reg, name, &subject_digest, Some(filter))?;
        assert_entries(&format!("referrers ?artifactType={filter}"), &got, &want)?;
        ensure!(
            resp.header("oci-filters-applied").as_deref() == Some("artifactType"),
            "referrers ?artifactType={filter}: OCI-Filters-Applied {:?}",
            resp.header("oci-filters-applied")
        );
    }

    // A manifest nobody refers to has an empty (but valid) referrers index.
    let (none, _) = referrers(reg, name, &sig.digest, None)?;
    ensure!(none.is_empty(), "referrers of the signature: {none:?}");

    // Tags through oras-py, lexical order.
    let outdir = tmp.path().join("pulled-sbom");
    let outdir_s = outdir.to_string_lossy().into_owned();
    let pulled = oras_step(
        reg,
        "pull",
        &format!("{name}:sbom"),
        &["--outdir", &outdir_s],
        tmp.path(),
    )?;
    ensure!(
        pulled["files"] == json!(["sbom.spdx.json"]),
        "pulled sbom files: {}",
        pulled["files"]
    );
    ensure!(
        pulled["tags"] == json!(["sbom", "sig", "v1"]),
        "tags: {}",
        pulled["tags"]
    );
    ensure!(
        std::fs::read(outdir.join("sbom.spdx.json"))? == br#"{"spdxVersion":"SPDX-2.3"}"#,
        "sbom bytes differ after pull"
    );
    Ok(())
}
