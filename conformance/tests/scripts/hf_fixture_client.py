"""Drive the real huggingface_hub against the hub fixture (tests/hub_fixture.rs).

Usage: python3 hf_fixture_client.py <config.json> <results.json>, with HF_ENDPOINT and HF_HOME
set by the caller. The config names the repos and the token; the results record what the client
returned (paths, listings) and, for calls that must fail, the exception class it raised. The
Rust test makes every assertion.
"""

import json
import os
import sys

import huggingface_hub
from huggingface_hub import HfApi, hf_hub_download, snapshot_download


def failure(fn):
    """The class name and first line of the exception `fn` raises, or None if it returns."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the class is what is being checked
        return {"class": type(e).__name__, "message": str(e).splitlines()[0] if str(e) else ""}
    return None


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    repo, gated, pr_repo = cfg["repo"], cfg["gated"], cfg["pr_repo"]
    home = os.environ["HF_HOME"]

    def fresh(name):
        return os.path.join(home, "caches", name)

    api = HfApi()
    out = {"version": huggingface_hub.__version__}

    out["snapshot"] = snapshot_download(repo)
    out["single"] = hf_hub_download(repo, "1_Pooling/config.json", cache_dir=fresh("single"))
    out["by_commit"] = hf_hub_download(repo, "config.json", revision=cfg["commit"], cache_dir=fresh("by_commit"))

    out["tree"] = [
        {
            "kind": type(e).__name__,
            "path": e.path,
            "size": getattr(e, "size", None),
            "oid": getattr(e, "blob_id", None) or getattr(e, "tree_id", None),
            "lfs": (
                {"sha256": e.lfs.sha256, "size": e.lfs.size, "pointer_size": e.lfs.pointer_size}
                if getattr(e, "lfs", None) is not None
                else None
            ),
        }
        for e in api.list_repo_tree(repo, recursive=True)
    ]
    out["tree_sub"] = [e.path for e in api.list_repo_tree(repo, path_in_repo="1_Pooling")]
    out["paths_info"] = [e.path for e in api.get_paths_info(repo, ["config.json", "1_Pooling", "missing.txt"])]

    info = api.model_info(repo, files_metadata=True)
    out["info"] = {
        "id": info.id,
        "sha": info.sha,
        "gated": info.gated,
        "siblings": [
            {"path": s.rfilename, "size": s.size, "blob_id": s.blob_id, "lfs_sha256": s.lfs.sha256 if s.lfs else None}
            for s in info.siblings
        ],
    }
    refs = api.list_repo_refs(pr_repo, include_pull_requests=True)
    out["refs"] = {
        "branches": [r.name for r in refs.branches],
        "tags": [r.name for r in refs.tags],
        "pull_requests": [r.name for r in refs.pull_requests],
    }
    out["search"] = [m.id for m in api.list_models(search=repo.split("/")[-1].lower())]
    out["by_author"] = [m.id for m in api.list_models(author=repo.split("/")[0])]

    out["pr"] = hf_hub_download(pr_repo, cfg["pr_file"], revision="refs/pr/1", cache_dir=fresh("pr"))
    out["tag"] = hf_hub_download(pr_repo, cfg["pr_file"], revision="v1.0", cache_dir=fresh("tag"))
    out["main"] = hf_hub_download(pr_repo, cfg["pr_file"], cache_dir=fresh("main"))

    out["gated_info"] = api.model_info(gated).gated
    out["gated_ok"] = snapshot_download(gated, token=cfg["token"], cache_dir=fresh("gated_ok"))

    out["errors"] = {
        "gated_no_token": failure(lambda: hf_hub_download(gated, "config.json", cache_dir=fresh("g1"))),
        "gated_wrong_token": failure(
            lambda: hf_hub_download(gated, "config.json", token="hf_not_approved", cache_dir=fresh("g2"))
        ),
        "gated_snapshot_no_token": failure(lambda: snapshot_download(gated, cache_dir=fresh("g3"))),
        "missing_revision": failure(
            lambda: hf_hub_download(repo, "config.json", revision="no-such-branch", cache_dir=fresh("r1"))
        ),
        "missing_revision_snapshot": failure(
            lambda: snapshot_download(repo, revision="no-such-branch", cache_dir=fresh("r2"))
        ),
        "missing_revision_info": failure(lambda: api.model_info(repo, revision="no-such-branch")),
        "missing_entry": failure(lambda: hf_hub_download(repo, "no-such-file.txt", cache_dir=fresh("e1"))),
        "lowercase_info": failure(lambda: api.model_info(repo.lower())),
        "lowercase_download": failure(lambda: hf_hub_download(repo.lower(), "config.json", cache_dir=fresh("l1"))),
    }

    with open(sys.argv[2], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
