#!/usr/bin/env python3
"""Python clients of the model-hub end-to-end tests (conformance/tests/hub_clients.rs).

One step per invocation, each writing a JSON result to --out. The Rust test makes the assertions.

Steps:
  oras-pull    oras-py's Registry.get_manifest() and Registry.pull() of --target into --outdir,
               over plain HTTP, with oras_e2e.py's retry accounting (a retried request fails the
               step).
  safetensors  open --file with `safetensors.safe_open(path, "np")` and list every tensor: name,
               dtype, shape and the sha256 of its values as numpy loads them.
"""

import argparse
import hashlib
import json
import os
import sys


def step_oras_pull(args):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import oras_e2e  # patches oras-py's retry sleeps into a retry counter

    reg = oras_e2e.registry(args)
    manifest = reg.get_manifest(args.target)
    files = reg.pull(target=args.target, outdir=args.outdir)
    return {
        "manifest": manifest,
        "files": sorted(os.path.relpath(p, args.outdir) for p in files),
        "retries": len(oras_e2e.RETRIES),
    }


def step_safetensors(args):
    try:
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover - environment problem
        sys.exit(f"safetensors is not importable ({e}); pip install safetensors numpy")
    tensors = []
    with safe_open(args.file, "np") as f:
        metadata = f.metadata()
        for name in f.keys():
            t = f.get_tensor(name)
            tensors.append(
                {
                    "name": name,
                    "dtype": str(t.dtype),
                    "shape": list(t.shape),
                    "sha256": hashlib.sha256(t.tobytes()).hexdigest(),
                }
            )
    return {"metadata": metadata, "tensors": tensors, "retries": 0}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=["oras-pull", "safetensors"])
    p.add_argument("--out", required=True, help="where to write the JSON result")
    p.add_argument("--registry", help="host:port")
    p.add_argument("--target", help="<name>:<tag> or <name>@<digest>")
    p.add_argument("--outdir")
    p.add_argument("--file")
    args = p.parse_args()

    result = {"oras-pull": step_oras_pull, "safetensors": step_safetensors}[args.step](args)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if result["retries"]:
        sys.exit(
            f"hub_clients.py: oras-py retried {result['retries']} request(s): "
            "the registry failed them (see the log above)"
        )


if __name__ == "__main__":
    main()
