//! Push workflow, blob cases added to the suite after v1.1: zero-byte and `{}` blobs, sha512
//! digests, a digest that does not match, and cancelling an upload.

use anyhow::ensure;
use reqwest::Method;

use super::fixtures::{self, sha256_digest, sha512_digest, TestBlob, EMPTY_BLOB_DIGEST};
use super::push::put_digest;
use super::report::{skip, Runner};
use super::Ctx;

pub(crate) async fn run(ctx: &Ctx<'_>, r: &mut Runner) {
    let fx = &ctx.fx;
    let c = &ctx.client;
    r.case(
        "PUT upload of a zero-byte blob should yield a 201 Response",
        async {
            let resp = ctx.upload_blob(&[], EMPTY_BLOB_DIGEST).await?;
            resp.expect_status(&[201])?;
            resp.require_header("Location").map(drop)
        },
    )
    .await;
    r.case(
        "GET request to the zero-byte blob should yield 200 with an empty body",
        async {
            let resp = ctx
                .simple(Method::GET, &c.blob_path(EMPTY_BLOB_DIGEST))
                .await?;
            resp.expect_status(&[200])?;
            resp.expect_body(&[], "a zero-byte blob")
        },
    )
    .await;
    r.case(
        "PUT upload of the `{}` blob should yield a 201 Response",
        async {
            let resp = ctx
                .upload_blob(&fx.empty_json.content, &fx.empty_json.digest)
                .await?;
            resp.expect_status(&[201])?;
            resp.require_header("Location").map(drop)
        },
    )
    .await;
    r.case(
        "HEAD request to the `{}` blob should yield 200 with Content-Length 2",
        async {
            let resp = ctx
                .simple(Method::HEAD, &c.blob_path(&fx.empty_json.digest))
                .await?;
            resp.expect_status(&[200])?;
            resp.expect_header("Content-Length", "2")
        },
    )
    .await;
    let sha512_blob = fixtures::pseudo_random(64, fx.seed.wrapping_add(5));
    let sha512 = sha512_digest(&sha512_blob);
    r.case(
        "POST with digest-algorithm=sha512 and PUT with a sha512 digest should yield 201",
        async {
            let post = c
                .send(
                    c.request(Method::POST, &c.uploads_path())?
                        .query(&[("digest-algorithm", "sha512")]),
                )
                .await?;
            post.expect_status(&[202])?;
            let loc = post.relative_location()?;
            let resp = put_digest(ctx, &loc, &sha512, sha512_blob.clone()).await?;
            resp.expect_status(&[201])?;
            resp.require_header("Location").map(drop)
        },
    )
    .await;
    r.case(
        "GET request to the sha512 blob should yield 200 with its content",
        async {
            let resp = ctx.simple(Method::GET, &c.blob_path(&sha512)).await?;
            resp.expect_status(&[200])?;
            resp.expect_header_if_present("Docker-Content-Digest", &sha512)?;
            resp.expect_body(&sha512_blob, "the blob pushed")
        },
    )
    .await;
    let bad = TestBlob::new(fixtures::pseudo_random(33, fx.seed.wrapping_add(6)));
    let claimed = sha256_digest(format!("not the content {}", fx.seed).as_bytes());
    r.case(
        "PUT with a digest that does not match the content should yield 400 DIGEST_INVALID",
        async {
            let resp = ctx.upload_blob(&bad.content, &claimed).await?;
            resp.expect_status(&[400])?;
            let codes = resp.error_codes()?;
            ensure!(
                codes.iter().any(|c| c == "DIGEST_INVALID"),
                "{}: error codes {codes:?}, expected DIGEST_INVALID",
                resp.what()
            );
            Ok(())
        },
    )
    .await;
    r.case(
        "A blob rejected for its digest should not exist afterwards",
        async {
            for digest in [&claimed, &bad.digest] {
                ctx.simple(Method::HEAD, &c.blob_path(digest))
                    .await?
                    .expect_status(&[404])?;
            }
            Ok(())
        },
    )
    .await;
    let mut cancelled = None;
    r.case(
        "DELETE request to an upload session should cancel it with 204",
        async {
            let post = ctx.simple(Method::POST, &c.uploads_path()).await?;
            post.expect_status(&[202])?;
            let loc = post.relative_location()?;
            ctx.simple(Method::DELETE, &loc)
                .await?
                .expect_status(&[204])?;
            cancelled = Some(loc);
            Ok(())
        },
    )
    .await;
    r.case(
        "GET request to a cancelled upload session should yield 404",
        async {
            let loc = cancelled
                .as_deref()
                .ok_or_else(|| skip("the upload was not cancelled"))?;
            ctx.simple(Method::GET, loc).await?.expect_status(&[404])
        },
    )
    .await;
}
