"""Drive the real huggingface_hub against Manta's /hf facade (tests/hub_facade.rs).

Usage: python3 hf_facade_client.py <mode> <config.json> <results.json>, with HF_ENDPOINT and
HF_HOME set by the caller (HF_ENDPOINT is the facade, or the hub fixture itself for a reference
listing). The results record what the client returned and, for calls that must fail, the
exception class it raised. The Rust test makes every assertion.

Modes:
  download  snapshot_download(repo), hf_hub_download(repo, cfg["single"]) into a fresh cache, and
            raw HEADs (requests, no redirects) of cfg["head"] resolve URLs with every header seen
  tree      list_repo_tree(repo, recursive=True)
  errors    calls that must fail: missing repo, revision, file
"""

import json
import os
import sys

import requests
from huggingface_hub import HfApi, hf_hub_download, snapshot_download


def failure(fn):
    """The class name and first line of the exception `fn` raises, or None if it returns."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the class is what is being checked
        return {"class": type(e).__name__, "message": str(e).splitlines()[0] if str(e) else ""}
    return None


def tree_entry(e):
    return {
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


def main():
    mode = sys.argv[1]
    with open(sys.argv[2]) as f:
        cfg = json.load(f)
    endpoint = os.environ["HF_ENDPOINT"].rstrip("/")
    home = os.environ["HF_HOME"]
    repo = cfg["repo"]
    out = {}

    def fresh(name):
        return os.path.join(home, "caches", name)

    if mode == "download":
        out["snapshot"] = snapshot_download(repo)
        out["single"] = hf_hub_download(repo, cfg["single"], cache_dir=fresh("single"))
        heads = {}
        for path in cfg["head"]:
            r = requests.head(f"{endpoint}/{repo}/resolve/main/{path}", allow_redirects=False, timeout=120)
            heads[path] = {"status": r.status_code, "headers": {k.lower(): v for k, v in r.headers.items()}}
        out["head"] = heads
    elif mode == "tree":
        out["tree"] = [tree_entry(e) for e in HfApi().list_repo_tree(repo, recursive=True)]
    elif mode == "errors":
        api = HfApi()
        missing_repo, rev, missing_file = cfg["missing_repo"], cfg["missing_revision"], cfg["missing_file"]
        out["errors"] = {
            "missing_repo": failure(lambda: hf_hub_download(missing_repo, "config.json", cache_dir=fresh("a"))),
            "missing_repo_info": failure(lambda: api.model_info(missing_repo)),
            "missing_revision": failure(
                lambda: hf_hub_download(repo, "config.json", revision=rev, cache_dir=fresh("b"))
            ),
            "missing_revision_info": failure(lambda: api.model_info(repo, revision=rev)),
            "missing_entry": failure(lambda: hf_hub_download(repo, missing_file, cache_dir=fresh("c"))),
        }
    else:
        sys.exit(f"unknown mode {mode}")

    with open(sys.argv[3], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
