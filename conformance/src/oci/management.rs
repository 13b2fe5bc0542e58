//! Workflow 4: content management (04_management_test.go): deleting tags, manifests and blobs.

use anyhow::ensure;
use reqwest::Method;

use super::fixtures::{MANIFEST_TYPE, TEST_TAG};
use super::report::{skip, Runner};
use super::{Ctx, Report, Resp, Workflow};

pub(crate) async fn run(ctx: &Ctx<'_>) -> Report {
    let fx = &ctx.fx;
    let c = &ctx.client;
    let mut r = Runner::new(Workflow::ContentManagement);
    let tag_to_delete = TEST_TAG;
    let mut num_tags: Option<usize> = None;
    let mut blob_delete_allowed = true;

    r.section("Setup");
    r.case("Populate registry with test config blob", async {
        ctx.upload_blob(&fx.configs[3].content, &fx.configs[3].digest)
            .await?
            .expect_2xx()
    })
    .await;
    r.case("Populate registry with test layer", async {
        ctx.upload_blob(&fx.layer.content, &fx.layer.digest)
            .await?
            .expect_2xx()
    })
    .await;
    r.case("Populate registry with test tag", async {
        ctx.put_manifest(tag_to_delete, MANIFEST_TYPE, &fx.manifests[3].content)
            .await?
            .expect_2xx()
    })
    .await;
    r.case(
        "Check how many tags there are before anything gets deleted",
        async {
            num_tags = Some(tag_count(&ctx.simple(Method::GET, &c.tags_path()).await?)?);
            Ok(())
        },
    )
    .await;

    r.section("Manifest delete");
    r.case("DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)", async {
        let resp = ctx.simple(Method::DELETE, &c.manifest_path(tag_to_delete)).await?;
        resp.expect_status(&[400, 202, 405])?;
        if resp.status == 400 {
            let codes = resp.error_codes()?;
            ensure!(codes.first().map(String::as_str) == Some("UNSUPPORTED"), "{}: error codes {codes:?}, expected UNSUPPORTED", resp.what());
        }
        Ok(())
    })
    .await;
    r.case(
        "DELETE request to manifest (digest) should yield 202 response unless already deleted",
        async {
            ctx.simple(Method::DELETE, &c.manifest_path(&fx.manifests[3].digest))
                .await?
                .expect_status(&[202, 404])
        },
    )
    .await;
    r.case("GET request to deleted manifest URL should yield 404 response, unless delete is disallowed", async {
        ctx.fetch_manifest(Method::GET, &fx.manifests[3].digest).await?.expect_status(&[404, 200])
    })
    .await;
    r.case(
        "GET request to tags list should reflect manifest deletion",
        async {
            let before = num_tags
                .ok_or_else(|| anyhow::anyhow!("the tag count before deletion is unknown"))?;
            let after = tag_count(&ctx.simple(Method::GET, &c.tags_path()).await?)?;
            ensure!(
                after < before,
                "{after} tags after the deletion, {before} before"
            );
            Ok(())
        },
    )
    .await;

    r.section("Blob delete");
    r.case(
        "DELETE request to blob URL should yield 202 response",
        async {
            ctx.simple(Method::DELETE, &c.blob_path(&fx.configs[3].digest))
                .await?
                .expect_status(&[202, 404, 405])?;
            let resp = ctx
                .simple(Method::DELETE, &c.blob_path(&fx.layer.digest))
                .await?;
            resp.expect_status(&[202, 404, 405])?;
            if resp.status == 405 {
                blob_delete_allowed = false;
            }
            Ok(())
        },
    )
    .await;
    r.case(
        "GET request to deleted blob URL should yield 404 response",
        async {
            if !blob_delete_allowed {
                return Err(skip("blob deletion is not allowed (405)"));
            }
            ctx.simple(Method::GET, &c.blob_path(&fx.configs[3].digest))
                .await?
                .expect_status(&[404])
        },
    )
    .await;
    r.finish()
}

/// 200 and the number of tags listed; a tag list may have `"tags": null` when the repository is empty.
fn tag_count(resp: &Resp) -> anyhow::Result<usize> {
    resp.expect_status(&[200])?;
    let v: serde_json::Value = resp.json()?;
    Ok(v.get("tags").and_then(|t| t.as_array()).map_or(0, Vec::len))
}
