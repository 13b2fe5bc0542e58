//! Workflow 3: content discovery (03_discovery_test.go): tag listing and the referrers API, plus
//! the sorting, `last`-exclusive and `Link` pagination checks added later.

use anyhow::{bail, ensure, Context, Result};
use reqwest::Method;
use serde_json::Value;

use super::client::relative;
use super::fixtures::{
    TestBlob, ANNOTATION_KEY, ARTIFACT_TYPE_A, EMPTY_JSON_DIGEST, INDEX_TYPE, MANIFEST_TYPE,
    TEST_TAG,
};
use super::report::Runner;
use super::{Ctx, Report, Resp, Workflow};

const FILTER_ARTIFACT_TYPE: &str = "artifactType";

pub(crate) async fn run(ctx: &Ctx<'_>) -> Report {
    let fx = &ctx.fx;
    let c = &ctx.client;
    let mut r = Runner::new(Workflow::ContentDiscovery);
    let mut tag_list: Vec<String> = Vec::new();
    let mut num_tags = 4usize;

    r.section("Setup");
    r.case("Populate registry with test blob", async {
        ctx.upload_blob(&fx.configs[2].content, &fx.configs[2].digest)
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
    r.case("Populate registry with test tags", async {
        for i in 0..num_tags {
            ctx.put_manifest(&format!("test{i}"), MANIFEST_TYPE, &fx.manifests[2].content)
                .await?
                .expect_2xx()?;
        }
        tag_list = tags_of(&ctx.simple(Method::GET, &c.tags_path()).await?);
        Ok(())
    })
    .await;
    r.case("References setup: empty JSON blob", async {
        ensure!(
            fx.empty_json.digest == EMPTY_JSON_DIGEST,
            "unexpected digest of the empty JSON blob"
        );
        ctx.upload_blob(&fx.empty_json.content, &fx.empty_json.digest)
            .await?
            .expect_2xx()
    })
    .await;
    r.case(
        "References setup: reference blob pushed before the subject",
        async {
            ctx.upload_blob(&fx.ref_blob_a.content, &fx.ref_blob_a.digest)
                .await?
                .expect_2xx()
        },
    )
    .await;
    let subject4 = fx.manifests[4].digest.as_str();
    let referrers_before: [(&str, &TestBlob, &str); 3] = [
        (
            "artifact A with config.mediaType = artifactType",
            &fx.refs_a_config,
            MANIFEST_TYPE,
        ),
        (
            "artifact A with artifactType and an empty config",
            &fx.refs_a_layer,
            MANIFEST_TYPE,
        ),
        ("index artifact", &fx.refs_index, INDEX_TYPE),
    ];
    for (label, m, media_type) in referrers_before {
        r.case(
            &format!("References setup: {label}, before its subject, answers OCI-Subject"),
            async { put_referrer(ctx, m, media_type, subject4).await },
        )
        .await;
    }
    r.case(
        "References setup: subject image (config, layer, manifest[4] tagged)",
        async {
            ctx.upload_blob(&fx.configs[4].content, &fx.configs[4].digest)
                .await?
                .expect_2xx()?;
            ctx.upload_blob(&fx.layer.content, &fx.layer.digest)
                .await?
                .expect_2xx()?;
            ctx.put_manifest(TEST_TAG, MANIFEST_TYPE, &fx.manifests[4].content)
                .await?
                .expect_2xx()
        },
    )
    .await;
    r.case(
        "References setup: reference blob pushed after the subject",
        async {
            ctx.upload_blob(&fx.ref_blob_b.content, &fx.ref_blob_b.digest)
                .await?
                .expect_2xx()
        },
    )
    .await;
    let referrers_after: [(&str, &TestBlob, &str); 3] = [
        (
            "artifact B with config.mediaType = artifactType",
            &fx.refs_b_config,
            subject4,
        ),
        (
            "artifact B with artifactType and an empty config",
            &fx.refs_b_layer,
            subject4,
        ),
        (
            "artifact C about a subject that does not exist",
            &fx.refs_c_layer,
            &fx.manifests[3].digest,
        ),
    ];
    for (label, m, subject) in referrers_after {
        r.case(
            &format!("References setup: {label}, answers OCI-Subject"),
            async { put_referrer(ctx, m, MANIFEST_TYPE, subject).await },
        )
        .await;
    }

    r.section("Test content discovery endpoints (listing tags)");
    r.case(
        "GET request to list tags should yield 200 response",
        async {
            let resp = ctx.simple(Method::GET, &c.tags_path()).await?;
            resp.expect_status(&[200])?;
            tag_list = tags_of(&resp);
            num_tags = tag_list.len();
            Ok(())
        },
    )
    .await;
    r.case("Tags should be listed in lexical order", async {
        let resp = ctx.simple(Method::GET, &c.tags_path()).await?;
        resp.expect_status(&[200])?;
        let tags = tags_of(&resp);
        let mut sorted = tags.clone();
        sorted.sort();
        ensure!(
            tags == sorted,
            "{}: tags are not sorted: {tags:?}",
            resp.what()
        );
        Ok(())
    })
    .await;
    let num_results = num_tags / 2;
    let mut all = tag_list.clone();
    all.sort();
    r.case(
        "GET number of tags should be limitable by `n` query parameter",
        async {
            let resp = list(ctx, num_results, None).await?;
            resp.expect_status(&[200])?;
            let tags = tags_of(&resp);
            ensure!(
                tags.len() == num_results,
                "{}: {} tags returned for n={num_results}: {tags:?}",
                resp.what(),
                tags.len()
            );
            Ok(())
        },
    )
    .await;
    r.case("GET start of tag is set by `last` query parameter", async {
        let first = tags_of(&list(ctx, num_results, None).await?);
        let last = first
            .get(num_results.wrapping_sub(1))
            .context("the first page has fewer tags than n")?;
        let resp = list(ctx, num_results, Some(last)).await?;
        resp.expect_status(&[200])?;
        ensure!(
            first.len() <= num_results,
            "{}: more than n tags",
            resp.what()
        );
        Ok(())
    })
    .await;
    r.case(
        "GET with `last` should list only the tags after it (exclusive), in order",
        async {
            let last = all
                .get(num_results.wrapping_sub(1))
                .context("fewer than two tags to page through")?;
            let resp = list(ctx, num_results, Some(last)).await?;
            resp.expect_status(&[200])?;
            let tags = tags_of(&resp);
            let expected: Vec<String> = all
                .iter()
                .skip(num_results)
                .take(num_results)
                .cloned()
                .collect();
            ensure!(
                tags == expected,
                "{}: got {tags:?}, expected {expected:?}",
                resp.what()
            );
            Ok(())
        },
    )
    .await;
    r.case(
        "GET with `n` should answer a Link header to the next page while tags remain",
        async {
            let resp = list(ctx, num_results, None).await?;
            resp.expect_status(&[200])?;
            let link = resp.require_header("Link")?;
            let next = link_next(link)
                .with_context(|| format!("{}: malformed Link header {link:?}", resp.what()))?;
            let expected_last = all
                .get(num_results.wrapping_sub(1))
                .context("fewer than two tags to page through")?;
            let (path, query) = next.split_once('?').unwrap_or((next.as_str(), ""));
            ensure!(
                path == c.tags_path(),
                "{}: Link points at {path:?}, expected {:?}",
                resp.what(),
                c.tags_path()
            );
            ensure!(
                query
                    .split('&')
                    .any(|kv| kv == format!("last={expected_last}")),
                "{}: Link {link:?} does not carry last={expected_last}",
                resp.what()
            );
            let page = ctx.simple(Method::GET, &next).await?;
            page.expect_status(&[200])?;
            let tags = tags_of(&page);
            let expected: Vec<String> = all
                .iter()
                .skip(num_results)
                .take(num_results)
                .cloned()
                .collect();
            ensure!(
                tags == expected,
                "{}: next page is {tags:?}, expected {expected:?}",
                page.what()
            );
            Ok(())
        },
    )
    .await;

    r.case(
        "GET with n=0 should return an empty tag list without a Link header",
        async {
            let resp = list(ctx, 0, None).await?;
            resp.expect_status(&[200])?;
            let tags = tags_of(&resp);
            ensure!(tags.is_empty(), "{}: n=0 returned {tags:?}", resp.what());
            ensure!(
                resp.header("Link").is_none(),
                "{}: n=0 answered a Link header",
                resp.what()
            );
            Ok(())
        },
    )
    .await;

    r.section("Test content discovery endpoints (listing references)");
    r.case(
        "GET request to nonexistent blob should result in empty 200 response",
        async {
            let index = referrers(ctx, &fx.dummy_digest, None).await?.1;
            ensure!(
                index.is_empty(),
                "expected no referrers, got {}",
                index.len()
            );
            Ok(())
        },
    )
    .await;
    r.case("GET request to existing blob should yield 200", async {
        let index = referrers(ctx, subject4, None).await?.1;
        ensure!(
            index.len() == 5,
            "expected 5 referrers, got {}: {index:?}",
            index.len()
        );
        ensure!(
            digest(&index[0]) != digest(&index[1]),
            "the first two referrers have the same digest"
        );
        check_annotations(ctx, &index)
    })
    .await;
    r.case(
        "GET request to existing blob with filter should yield 200",
        async {
            let (resp, index) = referrers(ctx, subject4, Some(ARTIFACT_TYPE_A)).await?;
            match resp.header("OCI-Filters-Applied") {
                Some(f) if !f.is_empty() => {
                    ensure!(
                        index.len() == 2,
                        "expected 2 referrers of type A, got {}: {index:?}",
                        index.len()
                    );
                    resp.expect_header("OCI-Filters-Applied", FILTER_ARTIFACT_TYPE)?;
                }
                _ => ensure!(
                    index.len() == 5,
                    "no filter applied: expected 5 referrers, got {}",
                    index.len()
                ),
            }
            check_annotations(ctx, &index)
        },
    )
    .await;
    r.case(
        "GET request with artifactType filter should answer OCI-Filters-Applied and only that type",
        async {
            let (resp, index) = referrers(ctx, subject4, Some(ARTIFACT_TYPE_A)).await?;
            resp.expect_header("OCI-Filters-Applied", FILTER_ARTIFACT_TYPE)?;
            ensure!(
                index.len() == 2,
                "expected 2 referrers of type A, got {}",
                index.len()
            );
            for m in &index {
                ensure!(
                    m.get("artifactType").and_then(Value::as_str) == Some(ARTIFACT_TYPE_A),
                    "referrer of another type: {m}"
                );
            }
            Ok(())
        },
    )
    .await;
    r.case(
        "Referrers should carry artifactType from the manifest, else from config.mediaType",
        async {
            let index = referrers(ctx, subject4, None).await?.1;
            ensure!(!index.is_empty(), "no referrers listed");
            for m in &index {
                let d = digest(m);
                let expected = fx
                    .artifact_types
                    .get(d)
                    .with_context(|| format!("unexpected referrer {d}"))?;
                let got = m
                    .get("artifactType")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                ensure!(
                    got == expected,
                    "referrer {d}: artifactType {got:?}, expected {expected:?}"
                );
            }
            Ok(())
        },
    )
    .await;
    r.case("GET request to missing manifest should yield 200", async {
        let index = referrers(ctx, &fx.manifests[3].digest, None).await?.1;
        ensure!(
            index.len() == 1,
            "expected 1 referrer, got {}: {index:?}",
            index.len()
        );
        ensure!(
            digest(&index[0]) == fx.refs_c_layer.digest,
            "unexpected referrer {}",
            digest(&index[0])
        );
        Ok(())
    })
    .await;

    r.section("Teardown");
    let before = ctx.cfg.delete_manifest_before_blobs;
    if before {
        delete_manifests(ctx, &mut r).await;
    }
    r.case("Delete config blob created in tests", async {
        ctx.delete_expect(&c.blob_path(&fx.configs[2].digest), &[405])
            .await
    })
    .await;
    r.case("Delete layer blob created in setup", async {
        ctx.delete_expect(&c.blob_path(&fx.layer.digest), &[405])
            .await
    })
    .await;
    if !before {
        delete_manifests(ctx, &mut r).await;
    }
    r.case("References teardown", async {
        let refs = [
            &fx.refs_index,
            &fx.refs_a_config,
            &fx.refs_a_layer,
            &fx.manifests[4],
            &fx.refs_b_config,
            &fx.refs_b_layer,
        ];
        if before {
            for m in refs {
                ctx.delete_expect(&c.manifest_path(&m.digest), &[404, 405])
                    .await?;
            }
        }
        for b in [
            &fx.configs[4],
            &fx.ref_blob_a,
            &fx.ref_blob_b,
            &fx.empty_json,
        ] {
            ctx.delete_expect(&c.blob_path(&b.digest), &[404, 405])
                .await?;
        }
        if !before {
            for m in refs {
                ctx.delete_expect(&c.manifest_path(&m.digest), &[404, 405])
                    .await?;
            }
        }
        Ok(())
    })
    .await;
    r.finish()
}

async fn delete_manifests(ctx: &Ctx<'_>, r: &mut Runner) {
    let fx = &ctx.fx;
    r.case("Delete created manifest & associated tags", async {
        let refs = [
            fx.refs_index.digest.as_str(),
            &fx.manifests[2].digest,
            &fx.manifests[4].digest,
            &fx.refs_a_config.digest,
            &fx.refs_a_layer.digest,
            TEST_TAG,
            &fx.refs_b_config.digest,
            &fx.refs_b_layer.digest,
            &fx.refs_c_layer.digest,
        ];
        for reference in refs {
            ctx.delete_expect(&ctx.client.manifest_path(reference), &[404, 405])
                .await?;
        }
        Ok(())
    })
    .await;
}

/// PUT a referrer by digest: 2xx and `OCI-Subject: <subject>`.
async fn put_referrer(ctx: &Ctx<'_>, m: &TestBlob, media_type: &str, subject: &str) -> Result<()> {
    let resp = ctx.put_manifest(&m.digest, media_type, &m.content).await?;
    resp.expect_2xx()?;
    resp.expect_header("OCI-Subject", subject)
}

/// `GET /v2/<name>/tags/list?n=&last=`
async fn list(ctx: &Ctx<'_>, n: usize, last: Option<&str>) -> Result<Resp> {
    let c = &ctx.client;
    let mut req = c
        .request(Method::GET, &c.tags_path())?
        .query(&[("n", n.to_string())]);
    if let Some(last) = last {
        req = req.query(&[("last", last)]);
    }
    c.send(req).await
}

/// The tags of a tag list (empty when the body is not one), as the Go suite's `getTagList`.
fn tags_of(resp: &Resp) -> Vec<String> {
    resp.json::<Value>()
        .ok()
        .and_then(|v| v.get("tags").and_then(Value::as_array).cloned())
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The target of `<...>; rel="next"`, as path and query.
fn link_next(link: &str) -> Result<String> {
    for part in link.split(',') {
        let part = part.trim();
        let Some(rest) = part.strip_prefix('<') else {
            continue;
        };
        let Some((target, params)) = rest.split_once('>') else {
            continue;
        };
        if params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"))
        {
            return Ok(relative(target));
        }
    }
    bail!("no rel=\"next\" link")
}

/// GET the referrers of `digest`: 200, the image index media type, and its `manifests`.
async fn referrers(
    ctx: &Ctx<'_>,
    digest: &str,
    artifact_type: Option<&str>,
) -> Result<(Resp, Vec<Value>)> {
    let c = &ctx.client;
    let mut req = c.request(Method::GET, &c.referrers_path(digest))?;
    if let Some(t) = artifact_type {
        req = req.query(&[("artifactType", t)]);
    }
    let resp = c.send(req).await?;
    resp.expect_status(&[200])?;
    resp.expect_header("Content-Type", INDEX_TYPE)?;
    let index: Value = resp.json()?;
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok((resp, manifests))
}

fn digest(m: &Value) -> &str {
    m.get("digest").and_then(Value::as_str).unwrap_or_default()
}

/// Each referrer has exactly the one annotation its manifest carries.
fn check_annotations(ctx: &Ctx<'_>, index: &[Value]) -> Result<()> {
    for m in index {
        let d = digest(m);
        let ann = m.get("annotations").and_then(Value::as_object);
        let len = ann.map_or(0, |a| a.len());
        ensure!(len == 1, "referrer {d}: {len} annotations, expected 1");
        let got = ann
            .and_then(|a| a.get(ANNOTATION_KEY))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let expected = ctx
            .fx
            .annotation_values
            .get(d)
            .map(String::as_str)
            .unwrap_or_default();
        ensure!(
            got == expected,
            "referrer {d}: annotation {got:?}, expected {expected:?}"
        );
    }
    Ok(())
}
