"""Drive the real ModelScope SDK (modelscope_hub) against the hub fixture's ModelScope routes.

Usage: python3 ms_fixture_client.py <endpoint> <repo> <gated repo> <out dir> <results.json>.
The results record what the SDK returned and, for calls that must fail, the exception class; the
Rust test (tests/hub_fixture.rs) makes every assertion.
"""

import json
import os
import sys

from modelscope_hub import HubApi


def failure(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the class is what is being checked
        return {"class": type(e).__name__, "message": str(e).splitlines()[0] if str(e) else ""}
    return None


def main():
    endpoint, repo, gated, out_dir, results = sys.argv[1:6]
    api = HubApi(endpoint=endpoint)
    out = {
        "revisions": api.list_repo_revisions(repo, "model"),
        "files": [
            {"path": f.path, "type": f.type, "size": f.size, "sha256": f.sha256}
            for f in api.list_repo_files(repo, "model", revision="master")
        ],
        "snapshot": str(api.download_repo(repo, "model", local_dir=os.path.join(out_dir, "snapshot"))),
        "single": str(
            api.download_file(repo, "model", "1_Pooling/config.json", local_dir=os.path.join(out_dir, "single"))
        ),
        "errors": {
            "missing_file": failure(
                lambda: api.download_file(repo, "model", "no-such-file.txt", local_dir=os.path.join(out_dir, "e1"))
            ),
            "missing_revision": failure(
                lambda: api.download_file(
                    repo, "model", "config.json", revision="no-such-branch", local_dir=os.path.join(out_dir, "e2")
                )
            ),
            "gated": failure(
                lambda: api.download_file(gated, "model", "config.json", local_dir=os.path.join(out_dir, "e3"))
            ),
        },
    }
    with open(results, "w") as f:
        json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
