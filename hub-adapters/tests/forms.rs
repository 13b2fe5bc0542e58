//! The two OCI forms: the JSON a client reads, and tar recipes read back by real tar readers.
#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use manta_hub::forms::{
    image_form, parse_platform, platform_of_host, raw_form, raw_media_type, raw_media_type_sized,
    sha256_digest, tar_prefix, tar_suffix_len, FormError, ImageLayer, ModelMeta, Platform, RawFile,
};
use serde_json::{json, Value};

fn meta() -> ModelMeta {
    ModelMeta {
        repo: "Qwen/Qwen2.5-0.5B-Instruct".to_owned(),
        commit: "7ae557604adf67be50417f59c2c2f167def9a775".to_owned(),
    }
}

fn file(path: &str, content: &[u8]) -> RawFile {
    RawFile {
        path: path.to_owned(),
        size: content.len() as u64,
        digest: sha256_digest(content),
    }
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

/// A whole layer as the registry streams it.
fn layer_tar(path: &str, content: &[u8]) -> Vec<u8> {
    let mut tar = tar_prefix(path, content.len() as u64).unwrap();
    tar.extend_from_slice(content);
    tar.resize(tar.len() + tar_suffix_len(content.len() as u64) as usize, 0);
    tar
}

mod forms_raw {
    use super::*;

    fn files() -> Vec<RawFile> {
        vec![
            file("model.safetensors", b"weights"),
            file("README.md", b"# hi"),
            file("1_Pooling/config.json", b"{}"),
            file("config.json", b"{\"a\":1}"),
        ]
    }

    #[test]
    fn manifest_is_a_modelpack_manifest() {
        let form = raw_form(&meta(), &files()).unwrap();
        assert_eq!(
            form.manifest.media_type,
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(form.manifest.digest, sha256_digest(&form.manifest.bytes));
        assert_eq!(form.config.digest, sha256_digest(&form.config.bytes));
        assert_eq!(
            form.config.media_type,
            "application/vnd.cncf.model.config.v1+json"
        );

        let m = json(&form.manifest.bytes);
        assert_eq!(
            keys(&m),
            [
                "artifactType",
                "config",
                "layers",
                "mediaType",
                "schemaVersion"
            ]
        );
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(
            m["artifactType"],
            "application/vnd.cncf.model.manifest.v1+json"
        );
        assert_eq!(
            m["config"],
            json!({
                "mediaType": "application/vnd.cncf.model.config.v1+json",
                "digest": form.config.digest,
                "size": form.config.bytes.len(),
            })
        );

        let layers = m["layers"].as_array().unwrap();
        let paths: Vec<&str> = layers
            .iter()
            .map(|l| {
                l["annotations"]["org.cncf.model.filepath"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            paths,
            [
                "1_Pooling/config.json",
                "README.md",
                "config.json",
                "model.safetensors"
            ]
        );
        let weights = &layers[3];
        assert_eq!(
            weights["mediaType"],
            "application/vnd.cncf.model.weight.v1.raw"
        );
        assert_eq!(weights["digest"], sha256_digest(b"weights"));
        assert_eq!(weights["size"], 7);
        assert_eq!(
            weights["annotations"]["org.opencontainers.image.title"],
            "model.safetensors"
        );
        assert_eq!(
            layers[0]["mediaType"],
            "application/vnd.cncf.model.weight.config.v1.raw"
        );
        assert_eq!(
            layers[0]["annotations"]["org.opencontainers.image.title"],
            "1_Pooling/config.json"
        );
        assert_eq!(
            layers[1]["mediaType"],
            "application/vnd.cncf.model.doc.v1.raw"
        );

        let meta: Value = serde_json::from_str(
            layers[0]["annotations"]["org.cncf.model.file.metadata+json"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            meta,
            json!({"name": "config.json", "mode": 420, "uid": 0, "gid": 0, "size": 2,
                   "mtime": "0001-01-01T00:00:00Z", "typeflag": 48})
        );

        // oci-spec reads it as a manifest.
        let parsed: oci_spec::image::ImageManifest =
            serde_json::from_slice(&form.manifest.bytes).unwrap();
        assert_eq!(parsed.layers().len(), 4);
        assert_eq!(parsed.config().size(), form.config.bytes.len() as u64);
    }

    #[test]
    fn config_follows_the_model_spec_schema() {
        let form = raw_form(&meta(), &files()).unwrap();
        let c = json(&form.config.bytes);
        // schema/config-schema.json: additionalProperties false at every level.
        assert_eq!(keys(&c), ["config", "descriptor", "modelfs"]);
        assert_eq!(
            c["descriptor"],
            json!({"name": "Qwen/Qwen2.5-0.5B-Instruct",
                   "revision": "7ae557604adf67be50417f59c2c2f167def9a775"})
        );
        assert_eq!(c["config"], json!({"format": "safetensors"}));
        let sorted = [
            "1_Pooling/config.json",
            "README.md",
            "config.json",
            "model.safetensors",
        ];
        let by_path = files();
        let diff_ids: Vec<&str> = sorted
            .iter()
            .map(|p| {
                by_path
                    .iter()
                    .find(|f| f.path == *p)
                    .unwrap()
                    .digest
                    .as_str()
            })
            .collect();
        assert_eq!(c["modelfs"], json!({"type": "layers", "diffIds": diff_ids}));
        // Compact, no trailing newline.
        assert!(!form.config.bytes.ends_with(b"\n"));
        assert!(!form.config.bytes.contains(&b' '));
    }

    #[test]
    fn format_is_left_out_when_no_weights_are_recognised() {
        let form = raw_form(&meta(), &[file("model.bin", b"x"), file("a.json", b"{}")]).unwrap();
        assert_eq!(json(&form.config.bytes)["config"], json!({}));
        let form = raw_form(&meta(), &[file("q4.gguf", b"x")]).unwrap();
        assert_eq!(
            json(&form.config.bytes)["config"],
            json!({"format": "gguf"})
        );
    }

    #[test]
    fn same_files_in_any_order_give_the_same_bytes() {
        let a = raw_form(&meta(), &files()).unwrap();
        let mut reversed = files();
        reversed.reverse();
        let b = raw_form(&meta(), &reversed).unwrap();
        assert_eq!(a.manifest, b.manifest);
        assert_eq!(a.config, b.config);
        let other = ModelMeta {
            commit: "0".repeat(40),
            ..meta()
        };
        assert_ne!(
            raw_form(&other, &files()).unwrap().config.digest,
            a.config.digest
        );
    }

    #[test]
    fn bad_paths_and_digests_are_refused() {
        for path in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "dir/",
            "a\\b",
            "a\0b",
        ] {
            let err = raw_form(&meta(), &[file(path, b"x")]).unwrap_err();
            assert!(matches!(err, FormError::Path(p) if p == path), "{path:?}");
        }
        let dup = raw_form(&meta(), &[file("a", b"x"), file("a", b"y")]).unwrap_err();
        assert!(matches!(dup, FormError::Path(p) if p == "a"));
        for digest in [
            "sha256:abc",
            "md5:00",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            let f = RawFile {
                path: "a".to_owned(),
                size: 1,
                digest: digest.to_owned(),
            };
            assert!(matches!(raw_form(&meta(), &[f]), Err(FormError::Digest(_))));
        }
    }

    #[test]
    fn media_types_by_file_name() {
        let cases = [
            ("model-00001-of-00002.safetensors", "weight"),
            ("pytorch_model.bin", "weight"),
            ("onnx/model.onnx", "weight"),
            ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "weight"),
            ("tf_model.h5", "weight"),
            ("flax_model.msgpack", "weight"),
            ("variables/variables.data-00000-of-00001", "weight"),
            ("config.json", "weight.config"),
            ("generation_config.json", "weight.config"),
            ("model.safetensors.index.json", "weight.config"),
            ("tokenizer.json", "weight.config"),
            ("tokenizer.model", "weight.config"),
            ("tokenizer.model.v3", "weight.config"),
            ("spiece.model", "weight.config"),
            ("vocab.txt", "weight.config"),
            ("merges.txt", "weight.config"),
            ("qwen.tiktoken", "weight.config"),
            ("special_tokens_map.json", "weight.config"),
            ("README.md", "doc"),
            ("LICENSE", "doc"),
            ("LICENSE.txt", "doc"),
            ("notes.txt", "doc"),
            ("paper.pdf", "doc"),
            ("assets/logo.PNG", "doc"),
            ("modeling_qwen.py", "code"),
            ("tokenization_qwen.py", "code"),
            ("run.sh", "code"),
            ("demo.ipynb", "code"),
            ("requirements.txt", "code"),
            ("data/train.parquet", "dataset"),
            ("eval.jsonl", "dataset"),
            ("table.csv", "dataset"),
            (".gitattributes", "doc"),
            ("sample.wav", "doc"),
        ];
        for (path, kind) in cases {
            let want = format!("application/vnd.cncf.model.{kind}.v1.raw");
            assert_eq!(raw_media_type(path), want, "{path}");
        }
        // An unrecognised file is weights when large (modctl's 128 MiB rule), never when known.
        let big = 200 * 1024 * 1024;
        assert_eq!(
            raw_media_type_sized("model.nemo2", big),
            "application/vnd.cncf.model.weight.v1.raw"
        );
        assert_eq!(
            raw_media_type_sized("model.nemo2", 10),
            "application/vnd.cncf.model.doc.v1.raw"
        );
        assert_eq!(
            raw_media_type_sized("huge.csv", big),
            "application/vnd.cncf.model.dataset.v1.raw"
        );
    }

    #[test]
    fn sha256_digest_is_prefixed_lowercase_hex() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

mod forms_image {
    use super::*;

    fn layers() -> Vec<ImageLayer> {
        ["config.json", "model.safetensors"]
            .iter()
            .map(|p| {
                let tar = layer_tar(p, p.as_bytes());
                ImageLayer {
                    digest: sha256_digest(&tar),
                    size: tar.len() as u64,
                }
            })
            .collect()
    }

    fn amd64() -> Platform {
        parse_platform("linux/amd64").unwrap()
    }

    #[test]
    fn one_platform_gives_a_plain_image_manifest() {
        let form = image_form(&meta(), &layers(), &[amd64()]).unwrap();
        assert_eq!(form.manifests, std::slice::from_ref(&form.top));
        assert_eq!(form.configs.len(), 1);
        let config = &form.configs[0];
        assert_eq!(
            config.media_type,
            "application/vnd.oci.image.config.v1+json"
        );
        assert_eq!(config.digest, sha256_digest(&config.bytes));
        let diff_ids: Vec<String> = layers().into_iter().map(|l| l.digest).collect();
        assert_eq!(
            json(&config.bytes),
            json!({"architecture": "amd64", "os": "linux", "config": {},
                   "rootfs": {"type": "layers", "diff_ids": diff_ids}})
        );
        assert!(config
            .bytes
            .starts_with(br#"{"architecture":"amd64","os":"linux","config":{}"#));

        let m = json(&form.top.bytes);
        assert_eq!(
            form.top.media_type,
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            keys(&m),
            ["config", "layers", "mediaType", "schemaVersion"],
            "no artifactType"
        );
        assert_eq!(
            m["config"],
            json!({"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.digest, "size": config.bytes.len()})
        );
        let want: Vec<Value> = layers()
            .iter()
            .map(|l| {
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                       "digest": l.digest, "size": l.size})
            })
            .collect();
        assert_eq!(m["layers"], Value::Array(want));

        let parsed: oci_spec::image::ImageManifest =
            serde_json::from_slice(&form.top.bytes).unwrap();
        assert!(parsed.artifact_type().is_none());
        let parsed: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(&config.bytes).unwrap();
        assert_eq!(parsed.rootfs().diff_ids().len(), 2);
        assert_eq!(parsed.architecture(), &oci_spec::image::Arch::Amd64);
    }

    #[test]
    fn several_platforms_give_an_index_in_a_fixed_order() {
        let arm = parse_platform("linux/arm64/v8").unwrap();
        let form = image_form(&meta(), &layers(), &[arm.clone(), amd64(), arm.clone()]).unwrap();
        let again = image_form(&meta(), &layers(), &[amd64(), arm]).unwrap();
        assert_eq!(form.top, again.top);
        assert_eq!(form.manifests.len(), 2);
        assert_eq!(
            form.top.media_type,
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(form.top.digest, sha256_digest(&form.top.bytes));
        let index = json(&form.top.bytes);
        assert_eq!(
            index,
            json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [
                     {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "digest": form.manifests[0].digest, "size": form.manifests[0].bytes.len(),
                      "platform": {"architecture": "amd64", "os": "linux"}},
                     {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "digest": form.manifests[1].digest, "size": form.manifests[1].bytes.len(),
                      "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}]})
        );
        assert_eq!(json(&form.configs[1].bytes)["variant"], "v8");
        let m1 = json(&form.manifests[1].bytes);
        assert_eq!(m1["config"]["digest"], form.configs[1].digest.as_str());
        let parsed: oci_spec::image::ImageIndex = serde_json::from_slice(&form.top.bytes).unwrap();
        assert_eq!(parsed.manifests().len(), 2);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            image_form(&meta(), &layers(), &[]),
            Err(FormError::NoPlatform)
        ));
        let bad = ImageLayer {
            digest: "sha256:xyz".to_owned(),
            size: 1,
        };
        assert!(matches!(
            image_form(&meta(), &[bad], &[amd64()]),
            Err(FormError::Digest(_))
        ));
    }

    #[test]
    fn platforms_parse_and_normalise() {
        let p = |os: &str, arch: &str, v: Option<&str>| Platform {
            os: os.to_owned(),
            architecture: arch.to_owned(),
            variant: v.map(str::to_owned),
        };
        assert_eq!(
            parse_platform("linux/amd64").unwrap(),
            p("linux", "amd64", None)
        );
        assert_eq!(
            parse_platform("linux/arm64/v8").unwrap(),
            p("linux", "arm64", Some("v8"))
        );
        assert_eq!(
            parse_platform("Linux/x86_64").unwrap(),
            p("linux", "amd64", None)
        );
        assert_eq!(
            parse_platform("linux/aarch64").unwrap(),
            p("linux", "arm64", None)
        );
        assert_eq!(
            parse_platform("linux/arm").unwrap(),
            p("linux", "arm", Some("v7"))
        );
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/am d64",
        ] {
            assert!(
                matches!(parse_platform(bad), Err(FormError::Platform(_))),
                "{bad:?}"
            );
        }
        let host = platform_of_host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host, p("linux", "amd64", None));
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host, p("linux", "arm64", None));
        }
    }
}

mod forms_tar {
    use super::*;
    use std::io::Read;
    use std::process::Command;

    /// Entries as the tar crate reads them: (path, type, mode, mtime, uid, gid, content).
    fn read_with_tar_crate(tar: &[u8]) -> Vec<(String, tar::EntryType, u32, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(h.username().unwrap(), Some(""));
            let (kind, mode, size) = (h.entry_type(), h.mode().unwrap(), entry.size());
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            out.push((path, kind, mode, size, content));
        }
        out
    }

    fn cases() -> Vec<(String, Vec<u8>)> {
        let splittable = format!(
            "{}/{}/{}.safetensors",
            "a".repeat(60),
            "b".repeat(60),
            "c".repeat(16)
        );
        let one_component = format!("{}.json", "n".repeat(145));
        let long_last = format!("dir/{}.bin", "l".repeat(120));
        vec![
            ("config.json".to_owned(), b"{\"hidden_size\": 896}".to_vec()),
            ("a/b/c/deep.txt".to_owned(), b"deep".to_vec()),
            (splittable, vec![7u8; 513]),
            (one_component, b"x".to_vec()),
            (long_last, vec![1u8; 512]),
            ("模型/权重.bin".to_owned(), "中文".as_bytes().to_vec()),
            ("empty/zero".to_owned(), Vec::new()),
        ]
    }

    #[test]
    fn suffix_pads_to_a_block_then_two_zero_blocks() {
        assert_eq!(tar_suffix_len(0), 1024);
        assert_eq!(tar_suffix_len(1), 511 + 1024);
        assert_eq!(tar_suffix_len(512), 1024);
        assert_eq!(tar_suffix_len(8 << 30), 1024);
        for (path, content) in cases() {
            let tar = layer_tar(&path, &content);
            assert_eq!(tar.len() % 512, 0, "{path}");
            assert_eq!(&tar[tar.len() - 1024..], &[0u8; 1024][..]);
        }
    }

    #[test]
    fn tar_crate_reads_each_layer_back() {
        for (path, content) in cases() {
            let tar = layer_tar(&path, &content);
            let entries = read_with_tar_crate(&tar);
            let parts: Vec<&str> = path.split('/').collect();
            assert_eq!(entries.len(), parts.len(), "{path}");
            for (i, (name, kind, mode, size, _)) in entries[..parts.len() - 1].iter().enumerate() {
                assert_eq!(name, &format!("{}/", parts[..=i].join("/")));
                assert_eq!((*kind, *mode, *size), (tar::EntryType::Directory, 0o755, 0));
            }
            let (name, kind, mode, size, data) = entries.last().unwrap();
            assert_eq!(name, &path);
            assert_eq!(
                (*kind, *mode, *size),
                (tar::EntryType::Regular, 0o644, content.len() as u64)
            );
            assert_eq!(data, &content);
        }
    }

    #[test]
    fn gnu_tar_lists_and_extracts_each_layer() {
        let dir = tempfile::tempdir().unwrap();
        for (i, (path, content)) in cases().into_iter().enumerate() {
            let file = dir.path().join(format!("layer{i}.tar"));
            std::fs::write(&file, layer_tar(&path, &content)).unwrap();
            let out = dir.path().join(format!("out{i}"));
            std::fs::create_dir(&out).unwrap();
            let list = Command::new("tar")
                .arg("-tvf")
                .arg(&file)
                .env("LC_ALL", "C.UTF-8")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&list.stderr);
            assert!(
                list.status.success() && stderr.is_empty(),
                "{path}: {stderr}"
            );
            let listing = String::from_utf8(list.stdout).unwrap();
            let last = listing.lines().last().unwrap();
            assert!(last.starts_with("-rw-r--r-- 0/0"), "{last}");
            assert!(last.contains(" 1970-01-01 00:00 "), "{last}");
            assert!(last.ends_with(&path), "{last}");
            if path.contains('/') {
                assert!(
                    listing
                        .lines()
                        .next()
                        .unwrap()
                        .starts_with("drwxr-xr-x 0/0"),
                    "{listing}"
                );
            }
            let x = Command::new("tar")
                .arg("-xf")
                .arg(&file)
                .arg("-C")
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                x.status.success() && x.stderr.is_empty(),
                "{path}: {}",
                String::from_utf8_lossy(&x.stderr)
            );
            let extracted = out.join(&path);
            assert_eq!(std::fs::read(&extracted).unwrap(), content, "{path}");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&extracted).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "{path}");
        }
    }

    #[test]
    fn layers_concatenate_into_one_tree() {
        // What an image volume shows: the layers applied in order.
        let dir = tempfile::tempdir().unwrap();
        for (i, (path, content)) in cases().into_iter().enumerate() {
            let file = dir.path().join(format!("layer{i}.tar"));
            std::fs::write(&file, layer_tar(&path, &content)).unwrap();
            let x = Command::new("tar")
                .arg("-xf")
                .arg(&file)
                .arg("-C")
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(x.status.success());
        }
        for (path, content) in cases() {
            assert_eq!(std::fs::read(dir.path().join(&path)).unwrap(), content);
        }
    }

    #[test]
    fn sizes_from_8_gib_up_get_a_pax_size() {
        for size in [(8u64 << 30) - 1, 8 << 30, 20 << 30] {
            let prefix = tar_prefix("shards/big.safetensors", size).unwrap();
            let pax = prefix.windows(5).any(|w| w == b"size=");
            assert_eq!(pax, size >= 8 << 30, "{size}");
            // Headers only: the tar crate yields the entry without reading its content.
            let mut archive = tar::Archive::new(&prefix[..]);
            let mut entries = archive.entries().unwrap();
            let dir = entries.next().unwrap().unwrap();
            assert_eq!(dir.path_bytes().as_ref(), b"shards/");
            let big = entries.next().unwrap().unwrap();
            assert_eq!(big.path_bytes().as_ref(), b"shards/big.safetensors");
            assert_eq!(big.size(), size);
            assert_eq!(big.header().entry_type(), tar::EntryType::Regular);
        }
    }

    #[test]
    fn gnu_tar_reads_an_8_gib_header() {
        // A sparse file: the prefix, 8 GiB of holes, the suffix.
        let size = 8u64 << 30;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.tar");
        let prefix = tar_prefix("big.safetensors", size).unwrap();
        std::fs::write(&file, &prefix).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(prefix.len() as u64 + size + tar_suffix_len(size))
            .unwrap();
        let list = Command::new("tar")
            .arg("--seek")
            .arg("-tvf")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&list.stderr);
        assert!(list.status.success() && stderr.is_empty(), "{stderr}");
        let listing = String::from_utf8(list.stdout).unwrap();
        assert!(listing.contains(" 8589934592 "), "{listing}");
        assert!(
            listing.trim_end().ends_with(" big.safetensors"),
            "{listing}"
        );
    }

    #[test]
    fn prefixes_are_deterministic_and_validated() {
        for (path, content) in cases() {
            let n = content.len() as u64;
            assert_eq!(tar_prefix(&path, n).unwrap(), tar_prefix(&path, n).unwrap());
        }
        for path in [
            "", "/abs", "a//b", "a/./b", "../x", "a/..", "dir/", "a\\b", "a\0b",
        ] {
            assert!(
                matches!(tar_prefix(path, 1), Err(FormError::Path(p)) if p == path),
                "{path:?}"
            );
        }
    }
}
