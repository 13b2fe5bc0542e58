//! Workflow 2: push (02_push_test.go), plus zero-byte, `{}` and sha512 blobs, digest mismatch,
//! upload cancel and the chunked-upload `Range` checks added later.

use anyhow::{ensure, Context, Result};
use reqwest::Method;
use serde_json::json;

use super::client::{relative, uploads_path_in};
use super::fixtures::{
    self, ChunkedBlob, TestBlob, ARTIFACT_TYPE_INDEX, EMPTY_JSON_DIGEST, EMPTY_LAYER_TAG,
    INDEX_TYPE, MANIFEST_TYPE, NONEXISTENT_MANIFEST, TEST_TAG,
};
use super::report::{skip, Runner};
use super::{Ctx, Report, Resp, Workflow};

#[derive(Default)]
struct Pushed {
    empty_json: bool,
    empty_layer: bool,
    config_type: bool,
    artifact_type: bool,
}

pub(crate) async fn run(ctx: &Ctx<'_>) -> Report {
    let fx = &ctx.fx;
    let c = &ctx.client;
    let mut r = Runner::new(Workflow::Push);
    let mut last: Option<Resp> = None;
    let mut prev: Option<Resp> = None;
    let mut pushed = Pushed::default();
    let mut chunked = fx.chunked.clone();

    r.section("Setup");
    r.case("Upload empty JSON blob needed for further tests", async {
        ensure!(
            fx.empty_json.digest == EMPTY_JSON_DIGEST,
            "unexpected digest of the empty JSON blob"
        );
        ctx.upload_blob(&fx.empty_json.content, &fx.empty_json.digest)
            .await?
            .expect_2xx()?;
        pushed.empty_json = true;
        Ok(())
    })
    .await;
    r.case("Upload blobs needed for further tests", async {
        ctx.upload_blob(&fx.ref_blob_a.content, &fx.ref_blob_a.digest)
            .await?
            .expect_2xx()?;
        // The dangling-subject artifact below has this blob as its layer.
        ctx.upload_blob(&fx.ref_blob_b.content, &fx.ref_blob_b.digest)
            .await?
            .expect_2xx()
    })
    .await;

    r.section("Blob Upload Streamed");
    r.case(
        "PATCH request with blob in body should yield 202 response",
        async {
            let post = ctx.simple(Method::POST, &c.uploads_path()).await?;
            let loc = post.relative_location()?;
            let patch = c
                .request(Method::PATCH, &loc)?
                .header("Content-Type", "application/octet-stream")
                .body(fx.blob_a.content.clone());
            let resp = c.send(patch).await?;
            resp.expect_status(&[202])?;
            last = Some(resp);
            Ok(())
        },
    )
    .await;
    r.case(
        "PUT request to session URL with digest should yield 201 response",
        async {
            let loc = previous(&last)?.relative_location()?;
            let resp = put_digest(ctx, &loc, &fx.blob_a.digest, Vec::new()).await?;
            resp.expect_status(&[201])?;
            resp.require_header("Location").map(drop)
        },
    )
    .await;

    r.section("Blob Upload Monolithic");
    r.case(
        "GET nonexistent blob should result in 404 response",
        async {
            ctx.simple(Method::GET, &c.blob_path(&fx.dummy_digest))
                .await?
                .expect_status(&[404])
        },
    )
    .await;
    r.case(
        "POST request with digest and blob should yield a 201 or 202",
        async {
            let req = c
                .request(Method::POST, &c.uploads_path())?
                .query(&[("digest", &fx.configs[1].digest)])
                .header("Content-Type", "application/octet-stream")
                .body(fx.configs[1].content.clone());
            let resp = c.send(req).await?;
            resp.require_header("Location")?;
            resp.expect_status(&[201, 202])?;
            last = Some(resp);
            Ok(())
        },
    )
    .await;
    r.case(
        "GET request to blob URL from prior request should yield 200 or 404 based on response code",
        async {
            let accepted = previous(&last)?.status == 202;
            let resp = ctx
                .simple(Method::GET, &c.blob_path(&fx.configs[1].digest))
                .await?;
            resp.expect_status(if accepted { &[404] } else { &[200] })
        },
    )
    .await;
    r.case("POST request should yield a session ID", async {
        let resp = ctx.simple(Method::POST, &c.uploads_path()).await?;
        resp.expect_status(&[202])?;
        last = Some(resp);
        Ok(())
    })
    .await;
    r.case("PUT upload of a blob should yield a 201 Response", async {
        let loc = previous(&last)?.relative_location()?;
        let resp = put_digest(
            ctx,
            &loc,
            &fx.configs[1].digest,
            fx.configs[1].content.clone(),
        )
        .await?;
        resp.require_header("Location")?;
        resp.expect_status(&[201])
    })
    .await;
    r.case(
        "GET request to existing blob should yield 200 response",
        async {
            ctx.simple(Method::GET, &c.blob_path(&fx.configs[1].digest))
                .await?
                .expect_status(&[200])
        },
    )
    .await;
    r.case(
        "PUT upload of a layer blob should yield a 201 Response",
        async {
            let resp = ctx.upload_blob(&fx.layer.content, &fx.layer.digest).await?;
            resp.require_header("Location")?;
            resp.expect_status(&[201])
        },
    )
    .await;
    r.case(
        "GET request to existing layer should yield 200 response",
        async {
            ctx.simple(Method::GET, &c.blob_path(&fx.layer.digest))
                .await?
                .expect_status(&[200])
        },
    )
    .await;
    super::push_blobs::run(ctx, &mut r).await;

    r.section("Blob Upload Chunked");
    r.case("Out-of-order blob upload should return 416", async {
        let post = c
            .send(
                c.request(Method::POST, &c.uploads_path())?
                    .header("Content-Length", "0"),
            )
            .await?;
        let loc = post.relative_location()?;
        if let Some(min) = post.header("OCI-Chunk-Min-Length") {
            let min: usize = min
                .trim()
                .parse()
                .context("OCI-Chunk-Min-Length is not a number")?;
            if min > chunked.chunk1().len() {
                chunked = ChunkedBlob::new(min * 2 - 2, fx.seed.wrapping_add(2));
            }
        }
        patch_chunk(ctx, &loc, chunked.chunk2(), &chunked.chunk2_range())
            .await?
            .expect_status(&[416])
    })
    .await;
    r.case("PATCH request with first chunk should return 202", async {
        let post = c
            .send(
                c.request(Method::POST, &c.uploads_path())?
                    .header("Content-Length", "0"),
            )
            .await?;
        let loc = post.relative_location()?;
        prev = Some(post);
        let resp = patch_chunk(ctx, &loc, chunked.chunk1(), &chunked.chunk1_range()).await?;
        resp.expect_status(&[202])?;
        resp.expect_header("Range", &chunked.chunk1_range())?;
        last = Some(resp);
        Ok(())
    })
    .await;
    r.case("Retry previous blob chunk should return 416", async {
        let loc = previous(&prev)?.relative_location()?;
        patch_chunk(ctx, &loc, chunked.chunk1(), &chunked.chunk1_range())
            .await?
            .expect_status(&[416])
    })
    .await;
    r.case(
        "Get on stale blob upload should return 204 with a range and location",
        async {
            let loc = previous(&prev)?.relative_location()?;
            let resp = ctx.simple(Method::GET, &loc).await?;
            resp.expect_status(&[204])?;
            resp.require_header("Location")?;
            resp.expect_header("Range", &chunked.chunk1_range())?;
            last = Some(resp);
            Ok(())
        },
    )
    .await;
    r.case("PATCH request with second chunk should return 202", async {
        let loc = previous(&last)?.relative_location()?;
        let resp = patch_chunk(ctx, &loc, chunked.chunk2(), &chunked.chunk2_range()).await?;
        resp.expect_status(&[202])?;
        resp.expect_header("Range", &format!("0-{}", chunked.blob.len() - 1))?;
        resp.require_header("Location")?;
        last = Some(resp);
        Ok(())
    })
    .await;
    r.case("PUT request with digest should return 201", async {
        let loc = previous(&last)?.relative_location()?;
        let resp = put_digest(ctx, &loc, &chunked.blob.digest, Vec::new()).await?;
        resp.expect_status(&[201])?;
        resp.require_header("Location").map(drop)
    })
    .await;

    r.section("Cross-Repository Blob Mount");
    let cross = ctx.cross.as_str();
    let mut mount: Option<Resp> = None;
    r.case(
        "Cross-mounting of a blob without the from argument should yield session id",
        async {
            let req = c
                .request(Method::POST, &uploads_path_in(cross))?
                .query(&[("mount", &fx.dummy_digest)]);
            let resp = c.send(req).await?;
            resp.expect_status(&[202])?;
            resp.require_header("Location").map(drop)
        },
    )
    .await;
    r.case(
        "POST request to mount another repository's blob should return 201 or 202",
        async {
            let req = c
                .request(Method::POST, &uploads_path_in(cross))?
                .query(&[("mount", fx.blob_a.digest.as_str()), ("from", c.name())]);
            let resp = c.send(req).await?;
            resp.expect_status(&[201, 202])?;
            mount = Some(resp);
            Ok(())
        },
    )
    .await;
    let mount_status = mount.as_ref().map(|m| m.status);
    r.case(
        "GET request to test digest within cross-mount namespace should return 200",
        async {
            let m = mount
                .as_ref()
                .filter(|m| m.status == 201)
                .ok_or_else(|| skip("the mount did not answer 201"))?;
            let loc = m.relative_location()?;
            let expected = format!("/v2/{cross}/blobs/{}", fx.blob_a.digest);
            ensure!(
                loc == expected,
                "{}: Location is {loc:?}, expected {expected:?}",
                m.what()
            );
            ctx.simple(Method::GET, &loc).await?.expect_status(&[200])
        },
    )
    .await;
    r.case(
        "Cross-mounting of nonexistent blob should yield session id",
        async {
            let m = mount
                .as_ref()
                .filter(|m| m.status == 202)
                .ok_or_else(|| skip("the mount did not answer 202"))?;
            let loc = m.relative_location()?;
            let prefix = format!("/v2/{cross}/blobs/uploads/");
            ensure!(
                loc.starts_with(&prefix),
                "{}: Location {loc:?} does not start with {prefix:?}",
                m.what()
            );
            Ok(())
        },
    )
    .await;
    for enabled in [true, false] {
        let (label, want) = if enabled {
            ("enabled", 201)
        } else {
            ("disabled", 202)
        };
        r.case(
            &format!("Cross-mounting without from, and automatic content discovery {label} should return a {want}"),
            async {
                let auto = ctx.cfg.automatic_crossmount.ok_or_else(|| skip("OCI_AUTOMATIC_CROSSMOUNT not set"))?;
                if mount_status != Some(201) || auto != enabled {
                    return Err(skip("does not apply"));
                }
                let req = c.request(Method::POST, &uploads_path_in(cross))?.query(&[("mount", &fx.blob_a.digest)]);
                c.send(req).await?.expect_status(&[want])
            },
        )
        .await;
    }

    r.section("Manifest Upload");
    r.case("GET nonexistent manifest should return 404", async {
        ctx.fetch_manifest(Method::GET, NONEXISTENT_MANIFEST)
            .await?
            .expect_status(&[404])
    })
    .await;
    r.case("PUT should accept a manifest upload", async {
        for i in 0..4 {
            let resp = ctx
                .put_manifest(&format!("test{i}"), MANIFEST_TYPE, &fx.manifests[1].content)
                .await?;
            resp.require_header("Location")?;
            resp.expect_status(&[201])?;
        }
        Ok(())
    })
    .await;
    r.case(
        "Registry should accept a manifest upload with no layers",
        async {
            let resp = ctx
                .put_manifest(
                    EMPTY_LAYER_TAG,
                    MANIFEST_TYPE,
                    &fx.empty_layer_manifest.content,
                )
                .await?;
            if resp.status != 201 {
                return Err(skip(format!(
                    "WARNING: image manifest with no layers is not supported ({})",
                    resp.summary()
                )));
            }
            resp.require_header("Location")?;
            pushed.empty_layer = true;
            Ok(())
        },
    )
    .await;
    r.case("GET manifest without mediaType and with unknown fields should return the exact bytes pushed", async {
        if !pushed.empty_layer {
            return Err(skip("the manifest with no layers was not accepted"));
        }
        let resp = ctx.fetch_manifest(Method::GET, EMPTY_LAYER_TAG).await?;
        resp.expect_status(&[200])?;
        resp.expect_header_if_present("Docker-Content-Digest", &fx.empty_layer_manifest.digest)?;
        resp.expect_body(&fx.empty_layer_manifest.content, "the manifest bytes pushed")
    })
    .await;
    r.case(
        "GET request to manifest URL (digest) should yield 200 response",
        async {
            ctx.fetch_manifest(Method::GET, &fx.manifests[1].digest)
                .await?
                .expect_status(&[200])
        },
    )
    .await;
    r.case("Registry should accept a manifest upload with custom config/mediaType (as artifact type) [OCI-Image v1.1]", async {
        let m = &fx.push_config_type;
        ctx.put_manifest(&m.digest, MANIFEST_TYPE, &m.content).await?.expect_2xx()?;
        pushed.config_type = true;
        Ok(())
    })
    .await;
    r.case(
        "Registry should accept a manifest upload with custom artifactType [OCI-Image v1.1]",
        async {
            let m = &fx.push_artifact_type;
            ctx.put_manifest(&m.digest, MANIFEST_TYPE, &m.content)
                .await?
                .expect_2xx()?;
            pushed.artifact_type = true;
            Ok(())
        },
    )
    .await;
    let mut index: Option<TestBlob> = None;
    r.case(
        "Registry should accept a manifest upload with image index",
        async {
            ctx.upload_blob(&fx.configs[0].content, &fx.configs[0].digest)
                .await?
                .expect_2xx()?;
            ctx.put_manifest(TEST_TAG, MANIFEST_TYPE, &fx.manifests[0].content)
                .await?
                .expect_2xx()?;
            let idx = index_of(fx.manifests[0].descriptor(MANIFEST_TYPE))?;
            ctx.put_manifest(&idx.digest, INDEX_TYPE, &idx.content)
                .await?
                .expect_2xx()?;
            index = Some(idx);
            Ok(())
        },
    )
    .await;
    r.case(
        "Registry should accept a manifest upload with nested image index [OCI-Image v1.1]",
        async {
            let inner = index
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the image index was not pushed"))?;
            let outer = index_of(inner.descriptor(INDEX_TYPE))?;
            ctx.put_manifest(&outer.digest, INDEX_TYPE, &outer.content)
                .await?
                .expect_2xx()
        },
    )
    .await;
    r.case("Dangling subject [OCI-Image v1.1]", async {
        let m = &fx.refs_c_layer;
        let resp = ctx.put_manifest(&m.digest, MANIFEST_TYPE, &m.content).await?;
        resp.expect_2xx()?;
        let subject = resp.header("OCI-Subject").unwrap_or_default();
        ensure!(
            is_digest_like(subject),
            "{}: PUT manifest with subject does not return an OCI-Subject header with the subject digest (got {subject:?})",
            resp.what()
        );
        Ok(())
    })
    .await;

    r.section("Teardown");
    let before = ctx.cfg.delete_manifest_before_blobs;
    if before {
        delete_manifests(ctx, &mut r, &pushed).await;
    }
    r.case("Delete config blob created in tests", async {
        ctx.delete_expect(&c.blob_path(&fx.configs[1].digest), &[404, 405])
            .await
    })
    .await;
    r.case("Delete layer blob created in setup", async {
        ctx.delete_expect(&c.blob_path(&fx.layer.digest), &[404, 405])
            .await?;
        if pushed.empty_json {
            ctx.delete_expect(&c.blob_path(&fx.empty_json.digest), &[404, 405])
                .await?;
        }
        Ok(())
    })
    .await;
    if !before {
        delete_manifests(ctx, &mut r, &pushed).await;
    }
    r.finish()
}

async fn delete_manifests(ctx: &Ctx<'_>, r: &mut Runner, pushed: &Pushed) {
    let c = &ctx.client;
    let fx = &ctx.fx;
    r.case("Delete manifest created in tests", async {
        ctx.delete_expect(&c.manifest_path(&fx.manifests[1].digest), &[405])
            .await?;
        if pushed.config_type {
            ctx.delete_expect(&c.manifest_path(&fx.push_config_type.digest), &[405])
                .await?;
        }
        if pushed.artifact_type {
            ctx.delete_expect(&c.manifest_path(&fx.push_artifact_type.digest), &[405])
                .await?;
        }
        if pushed.empty_layer {
            ctx.delete_expect(&c.manifest_path(&fx.empty_layer_manifest.digest), &[405])
                .await?;
        }
        Ok(())
    })
    .await;
}

/// The response a case depends on (the Go suite's `Expect(lastResponse).ToNot(BeNil())`).
fn previous(resp: &Option<Resp>) -> Result<&Resp> {
    resp.as_ref()
        .context("the previous case did not produce a response")
}

/// `PUT <location>?digest=<digest>` with an octet-stream body.
pub(crate) async fn put_digest(
    ctx: &Ctx<'_>,
    loc: &str,
    digest: &str,
    body: Vec<u8>,
) -> Result<Resp> {
    let c = &ctx.client;
    let req = c
        .request(Method::PUT, &relative(loc))?
        .query(&[("digest", digest)])
        .header("Content-Type", "application/octet-stream")
        .body(body);
    c.send(req).await
}

/// `PATCH <location>` with one chunk and its `Content-Range`.
async fn patch_chunk(ctx: &Ctx<'_>, loc: &str, chunk: &[u8], range: &str) -> Result<Resp> {
    let c = &ctx.client;
    let req = c
        .request(Method::PATCH, loc)?
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", range)
        .body(chunk.to_vec());
    c.send(req).await
}

/// An image index with an artifactType, listing one descriptor.
fn index_of(descriptor: serde_json::Value) -> Result<TestBlob> {
    let idx = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "artifactType": ARTIFACT_TYPE_INDEX,
        "manifests": [descriptor],
        "annotations": { fixtures::ANNOTATION_KEY: "test index" },
    });
    Ok(TestBlob::new(serde_json::to_vec_pretty(&idx)?))
}

/// `^[a-z0-9]+:[a-f0-9]+$`. (The Go suite's pattern has `[a-f0-9]` before the colon too, which no
/// `sha256:` digest can match; the algorithm part is read as lower-case alphanumerics here.)
fn is_digest_like(s: &str) -> bool {
    let alg = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    let hex = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    matches!(s.split_once(':'), Some((a, e)) if alg(a) && hex(e))
}
