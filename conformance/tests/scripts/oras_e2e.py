#!/usr/bin/env python3
"""Drive oras-py (the `oras` PyPI package) against a registry over plain HTTP.

Called by conformance/tests/oras.rs, one step per invocation; each step writes a JSON result to
--out. The Rust test makes every assertion about the registry's behaviour; this script fails
(exit 1) only when oras-py itself reports an error or the registry answers with a status oras-py
tolerates but the spec does not.

Steps:
  push      files (paths relative to --workdir) as one artifact with a custom artifactType,
            built from oras-py's building blocks (NewLayer, upload_blob, upload_manifest);
            optional --subject makes it a referrer.
  push-oras files with oras-py's high-level Registry.push() (titles from an annotation file,
            a config with its own media type, manifest annotations, optional --subject).
  pull      Registry.pull() into --outdir, plus Registry.get_tags().
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile

try:
    import oras.provider  # first: importing oras.decorator alone hits a circular import
    import oras.decorator
    import oras.defaults
    import oras.oci
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"oras-py is not importable ({e}); install it with `pip install oras`")

# oras-py retries any request that raised or answered 500, sleeping 3 s, 5 s, 11 s, ... in
# between. Record retries instead of sleeping: a retry means the registry failed a request, and
# the step fails at the end with the retried errors shown on stderr.
RETRIES = []


class _NoSleep:
    @staticmethod
    def sleep(seconds):
        RETRIES.append(seconds)


oras.decorator.time = _NoSleep

TITLE = oras.defaults.annotation_title
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
MANIFEST_MEDIA_TYPE = oras.defaults.default_manifest_media_type
CHUNK = 1024 * 1024


def fail(msg):
    sys.exit(f"oras_e2e.py: {msg}")


def response_info(r):
    """What the Rust side needs to know about a manifest PUT."""
    body = r.request.body if r.request is not None else None
    if isinstance(body, str):
        body = body.encode()
    return {
        "status": r.status_code,
        "headers": {k.lower(): v for k, v in r.headers.items()},
        # Exactly the bytes requests sent (its own json.dumps of the manifest).
        "sent_body": body.decode() if body is not None else None,
        "sent_digest": "sha256:" + hashlib.sha256(body).hexdigest() if body is not None else None,
        "sent_size": len(body) if body is not None else None,
    }


def check_blob_upload(r, what):
    # upload_blob answers a synthetic 200 without a request when HEAD found the blob already.
    if r.request is None:
        if r.status_code != 200:
            fail(f"upload of {what}: unexpected synthetic status {r.status_code}")
        return
    if r.status_code != 201:
        fail(f"upload of {what}: {r.request.method} {r.request.url} answered {r.status_code}, want 201: {r.text}")


def subject_from(args):
    if not args.subject_digest:
        return None
    return oras.oci.Subject(
        mediaType=args.subject_media_type, digest=args.subject_digest, size=int(args.subject_size)
    )


def registry(args):
    return oras.provider.Registry(hostname=args.registry, insecure=True)


def step_push(args):
    reg = registry(args)
    container = reg.get_container(args.target)
    layers = []
    for rel in args.files:
        path = os.path.join(args.workdir, rel)
        layer = oras.oci.NewLayer(path, media_type=args.layer_media_type)
        layer["annotations"] = {TITLE: rel}
        chunked = layer["size"] > CHUNK
        r = reg.upload_blob(path, container, layer, do_chunked=chunked, chunk_size=CHUNK)
        check_blob_upload(r, rel)
        layers.append(layer)

    config = {"mediaType": EMPTY_MEDIA_TYPE, "digest": oras.defaults.blank_config_hash, "size": 2}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "empty.json")
        with open(cfg, "w") as f:
            f.write("{}")
        check_blob_upload(reg.upload_blob(cfg, container, config), "empty config")

    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": args.artifact_type,
        "config": config,
        "layers": layers,
    }
    subject = subject_from(args)
    if subject is not None:
        manifest["subject"] = subject.__dict__
    if args.annotations:
        manifest["annotations"] = json.loads(args.annotations)
    r = reg.upload_manifest(manifest, container)
    return {"manifest": manifest, "put": response_info(r)}


def step_push_oras(args):
    reg = registry(args)
    os.chdir(args.workdir)  # Registry.push() wants files relative to the working directory
    # push() titles each layer with the file's basename; an annotation file puts the relative
    # path back, the way oras-py users keep subfolders.
    with tempfile.TemporaryDirectory() as tmp:
        annotation_file = os.path.join(tmp, "annotations.json")
        with open(annotation_file, "w") as f:
            json.dump({rel: {TITLE: rel} for rel in args.files}, f)
        manifest_config = None
        if args.config_file:
            manifest_config = f"{args.config_file}:{args.config_media_type}"
        r = reg.push(
            target=args.target,
            files=list(args.files),
            annotation_file=annotation_file,
            manifest_config=manifest_config,
            manifest_annotations=json.loads(args.annotations) if args.annotations else None,
            subject=subject_from(args),
            quiet=True,
        )
    return {"put": response_info(r)}


def step_pull(args):
    reg = registry(args)
    files = reg.pull(target=args.target, outdir=args.outdir)
    tags = reg.get_tags(args.target)
    return {"files": sorted(os.path.relpath(p, args.outdir) for p in files), "tags": tags}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=["push", "push-oras", "pull"])
    p.add_argument("--registry", required=True, help="host:port")
    p.add_argument("--target", required=True, help="<name>:<tag> or <name>@<digest>")
    p.add_argument("--out", required=True, help="where to write the JSON result")
    p.add_argument("--workdir")
    p.add_argument("--outdir")
    p.add_argument("--artifact-type")
    p.add_argument("--layer-media-type", default="application/vnd.manta.test.file.v1")
    p.add_argument("--annotations", help="manifest annotations as a JSON object")
    p.add_argument("--config-file")
    p.add_argument("--config-media-type")
    p.add_argument("--subject-digest")
    p.add_argument("--subject-size")
    p.add_argument("--subject-media-type", default=MANIFEST_MEDIA_TYPE)
    p.add_argument("--file", dest="files", action="append", default=[], help="repeatable")
    args = p.parse_args()

    result = {"push": step_push, "push-oras": step_push_oras, "pull": step_pull}[args.step](args)
    result["retries"] = len(RETRIES)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if RETRIES:
        fail(f"oras-py retried {len(RETRIES)} request(s): the registry failed them (see the log above)")


if __name__ == "__main__":
    main()
