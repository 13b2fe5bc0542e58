//! Workflow 1: pull (01_pull_test.go), plus blob Range requests and the manifest headers and
//! byte-for-byte checks added later.

use anyhow::{ensure, Result};
use reqwest::Method;

use super::fixtures::{
    ERROR_CODES, INVALID_MANIFEST, MANIFEST_TYPE, NONEXISTENT_MANIFEST, TEST_TAG,
};
use super::report::Runner;
use super::{Ctx, Report, Resp, Workflow};

pub(crate) async fn run(ctx: &Ctx<'_>) -> Report {
    let fx = &ctx.fx;
    let c = &ctx.client;
    let mut r = Runner::new(Workflow::Pull);
    let tag = TEST_TAG;

    r.section("Setup");
    for (i, config) in fx.configs.iter().take(2).enumerate() {
        r.case(
            &format!("Populate registry with test blob (config[{i}])"),
            async {
                ctx.upload_blob(&config.content, &config.digest)
                    .await?
                    .expect_2xx()
            },
        )
        .await;
    }
    r.case("Populate registry with test layer", async {
        ctx.upload_blob(&fx.layer.content, &fx.layer.digest)
            .await?
            .expect_2xx()
    })
    .await;
    r.case(
        "Populate registry with test manifest (manifest[0] by tag)",
        async {
            ctx.put_manifest(tag, MANIFEST_TYPE, &fx.manifests[0].content)
                .await?
                .expect_2xx()
        },
    )
    .await;
    r.case(
        "Populate registry with test manifest (manifest[1] by digest)",
        async {
            ctx.put_manifest(
                &fx.manifests[1].digest,
                MANIFEST_TYPE,
                &fx.manifests[1].content,
            )
            .await?
            .expect_2xx()
        },
    )
    .await;

    r.section("Pull blobs");
    r.case(
        "HEAD request to nonexistent blob should result in 404 response",
        async {
            ctx.simple(Method::HEAD, &c.blob_path(&fx.dummy_digest))
                .await?
                .expect_status(&[404])
        },
    )
    .await;
    r.case("HEAD request to existing blob should yield 200", async {
        let resp = ctx
            .simple(Method::HEAD, &c.blob_path(&fx.configs[0].digest))
            .await?;
        resp.expect_status(&[200])?;
        resp.expect_header_if_present("Docker-Content-Digest", &fx.configs[0].digest)
    })
    .await;
    r.case(
        "HEAD request to existing blob should carry Content-Length and Docker-Content-Digest",
        async {
            let resp = ctx
                .simple(Method::HEAD, &c.blob_path(&fx.configs[0].digest))
                .await?;
            resp.expect_status(&[200])?;
            resp.expect_header("Content-Length", &fx.configs[0].len().to_string())?;
            resp.expect_header("Docker-Content-Digest", &fx.configs[0].digest)
        },
    )
    .await;
    r.case(
        "GET nonexistent blob should result in 404 response",
        async {
            ctx.simple(Method::GET, &c.blob_path(&fx.dummy_digest))
                .await?
                .expect_status(&[404])
        },
    )
    .await;
    r.case("GET request to existing blob URL should yield 200", async {
        let resp = ctx
            .simple(Method::GET, &c.blob_path(&fx.configs[0].digest))
            .await?;
        resp.expect_status(&[200])?;
        resp.expect_body(&fx.configs[0].content, "the blob pushed")
    })
    .await;

    r.section("Pull blobs with Range");
    let total = fx.layer.len();
    let ranges: [(&str, String, usize, usize); 4] = [
        ("bytes=a-b", "bytes=0-9".to_string(), 0, 9),
        ("bytes=a-", "bytes=10-".to_string(), 10, total - 1),
        ("bytes=-n", "bytes=-10".to_string(), total - 10, total - 1),
        (
            "an end past the size is clipped",
            format!("bytes=5-{}", total + 100),
            5,
            total - 1,
        ),
    ];
    for (label, range, start, end) in ranges {
        r.case(
            &format!("GET blob with Range {range} ({label}) should yield 206 with Content-Range"),
            async {
                let resp = ranged(ctx, &range).await?;
                resp.expect_status(&[206])?;
                resp.expect_header("Content-Range", &format!("bytes {start}-{end}/{total}"))?;
                resp.expect_body(
                    &fx.layer.content[start..=end],
                    &format!("bytes {start}-{end} of the blob"),
                )
            },
        )
        .await;
    }
    let past = format!("bytes={}-", total + 10);
    r.case(
        &format!("GET blob with Range {past} (start past the size) should yield 416"),
        async { ranged(ctx, &past).await?.expect_status(&[416]) },
    )
    .await;
    r.case(
        "GET blob with Range bytes=500-0 (end before start) should yield 416",
        async { ranged(ctx, "bytes=500-0").await?.expect_status(&[416]) },
    )
    .await;

    r.section("Pull manifests");
    r.case(
        "HEAD request to nonexistent manifest should return 404",
        async {
            ctx.fetch_manifest(Method::HEAD, NONEXISTENT_MANIFEST)
                .await?
                .expect_status(&[404])
        },
    )
    .await;
    for i in 0..2 {
        r.case(
            &format!("HEAD request to manifest[{i}] path (digest) should yield 200 response"),
            async {
                let resp = ctx
                    .fetch_manifest(Method::HEAD, &fx.manifests[i].digest)
                    .await?;
                resp.expect_status(&[200])?;
                resp.expect_header_if_present("Docker-Content-Digest", &fx.manifests[i].digest)
            },
        )
        .await;
    }
    r.case(
        "HEAD request to manifest path (tag) should yield 200 response",
        async {
            let resp = ctx.fetch_manifest(Method::HEAD, tag).await?;
            resp.expect_status(&[200])?;
            resp.expect_header_if_present("Docker-Content-Digest", &fx.manifests[0].digest)
        },
    )
    .await;
    r.case("HEAD request to manifest should carry Content-Type, Content-Length and Docker-Content-Digest", async {
        let resp = ctx.fetch_manifest(Method::HEAD, tag).await?;
        resp.expect_status(&[200])?;
        resp.expect_header("Content-Type", MANIFEST_TYPE)?;
        resp.expect_header("Content-Length", &fx.manifests[0].len().to_string())?;
        resp.expect_header("Docker-Content-Digest", &fx.manifests[0].digest)
    })
    .await;
    r.case("GET nonexistent manifest should return 404", async {
        ctx.fetch_manifest(Method::GET, NONEXISTENT_MANIFEST)
            .await?
            .expect_status(&[404])
    })
    .await;
    for i in 0..2 {
        r.case(
            &format!("GET request to manifest[{i}] path (digest) should yield 200 response"),
            async {
                ctx.fetch_manifest(Method::GET, &fx.manifests[i].digest)
                    .await?
                    .expect_status(&[200])
            },
        )
        .await;
    }
    r.case(
        "GET request to manifest path (tag) should yield 200 response",
        async {
            ctx.fetch_manifest(Method::GET, tag)
                .await?
                .expect_status(&[200])
        },
    )
    .await;
    r.case("GET manifest should return the exact bytes pushed, with Content-Type and Docker-Content-Digest", async {
        let resp = ctx.fetch_manifest(Method::GET, &fx.manifests[1].digest).await?;
        resp.expect_status(&[200])?;
        resp.expect_header("Content-Type", MANIFEST_TYPE)?;
        resp.expect_header("Docker-Content-Digest", &fx.manifests[1].digest)?;
        resp.expect_body(&fx.manifests[1].content, "the manifest bytes pushed (unknown fields and `data` kept)")
    })
    .await;

    r.section("Error codes");
    r.case(
        "400 response body should contain OCI-conforming JSON message",
        async {
            let req = c
                .request(Method::GET, &c.manifest_path("sha256:totallywrong"))?
                .header("Content-Type", MANIFEST_TYPE)
                .body(INVALID_MANIFEST.to_vec());
            let resp = c.send(req).await?;
            resp.expect_status(&[400, 404])?;
            if resp.status == 400 {
                let codes = resp.error_codes()?;
                ensure!(!codes.is_empty(), "{}: empty errors array", resp.what());
                ensure!(
                    ERROR_CODES.contains(&codes[0].as_str()),
                    "{}: unknown error code {:?}",
                    resp.what(),
                    codes[0]
                );
            }
            Ok(())
        },
    )
    .await;

    r.section("Teardown");
    if ctx.cfg.delete_manifest_before_blobs {
        delete_manifests(ctx, &mut r).await;
    }
    for (i, config) in fx.configs.iter().take(2).enumerate() {
        r.case(
            &format!("Delete config[{i}] blob created in setup"),
            async {
                ctx.delete_expect(&c.blob_path(&config.digest), &[404, 405])
                    .await
            },
        )
        .await;
    }
    r.case("Delete layer blob created in setup", async {
        ctx.delete_expect(&c.blob_path(&fx.layer.digest), &[404, 405])
            .await
    })
    .await;
    if !ctx.cfg.delete_manifest_before_blobs {
        delete_manifests(ctx, &mut r).await;
    }
    r.finish()
}

async fn ranged(ctx: &Ctx<'_>, range: &str) -> Result<Resp> {
    let c = &ctx.client;
    c.send(
        c.request(Method::GET, &c.blob_path(&ctx.fx.layer.digest))?
            .header("Range", range),
    )
    .await
}

async fn delete_manifests(ctx: &Ctx<'_>, r: &mut Runner) {
    for (i, m) in ctx.fx.manifests.iter().take(2).enumerate() {
        r.case(&format!("Delete manifest[{i}] created in setup"), async {
            ctx.delete_expect(&ctx.client.manifest_path(&m.digest), &[405])
                .await
        })
        .await;
    }
}
