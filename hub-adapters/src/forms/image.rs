//! The image form: per-platform image configs and manifests, and an index over several.

use super::*;

// ---- image form ----

/// A layer of the image form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLayer {
    /// `sha256:<hex>` of the whole tar (= its diff_id: uncompressed).
    pub digest: String,
    /// Tar size: prefix + content + suffix.
    pub size: u64,
}

/// An OS/architecture the image form is offered for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// The image form: `top` is what the tag names — the manifest when one platform is asked for,
/// else an index of one manifest per platform. `manifests` are the per-platform manifests
/// (just `top` when there is one), `configs` their image configs.
#[derive(Clone, Debug)]
pub struct ImageForm {
    pub top: Blob,
    pub manifests: Vec<Blob>,
    pub configs: Vec<Blob>,
}

/// Build the image form from the layers in file-path order.
///
/// Platforms are sorted (os, architecture, variant) and deduplicated first, so the same set in
/// any order gives the same index; `manifests[i]` and `configs[i]` follow that order. Each
/// config is `{architecture, os, [variant], config: {}, rootfs: {type: layers, diff_ids}}`;
/// each manifest has no `artifactType` and un-annotated `…layer.v1.tar` layers. `meta` does not
/// enter the bytes: the image is identified by its layers alone.
pub fn image_form(
    meta: &ModelMeta,
    layers: &[ImageLayer],
    platforms: &[Platform],
) -> Result<ImageForm, FormError> {
    let _ = meta;
    if platforms.is_empty() {
        return Err(FormError::NoPlatform);
    }
    for l in layers {
        validate_digest(&l.digest)?;
    }
    let mut platforms: Vec<&Platform> = platforms.iter().collect();
    for p in &platforms {
        validate_platform(p)?;
    }
    platforms.sort_by(|a, b| {
        (&a.os, &a.architecture, &a.variant).cmp(&(&b.os, &b.architecture, &b.variant))
    });
    platforms.dedup();

    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let mut manifests = Vec::with_capacity(platforms.len());
    let mut configs = Vec::with_capacity(platforms.len());
    for p in &platforms {
        let config = ImageConfigJson {
            architecture: &p.architecture,
            os: &p.os,
            variant: p.variant.as_deref(),
            config: EmptyJson {},
            rootfs: RootFsJson {
                kind: "layers",
                diff_ids: diff_ids.clone(),
            },
        };
        let config = Blob::new(OCI_CONFIG, to_json(&config)?);
        let manifest = ManifestJson {
            schema_version: 2,
            media_type: OCI_MANIFEST,
            artifact_type: None,
            config: DescriptorJson {
                media_type: OCI_CONFIG,
                digest: &config.digest,
                size: config.bytes.len() as u64,
                annotations: None,
                platform: None,
            },
            layers: layers
                .iter()
                .map(|l| DescriptorJson {
                    media_type: OCI_LAYER_TAR,
                    digest: &l.digest,
                    size: l.size,
                    annotations: None,
                    platform: None,
                })
                .collect(),
        };
        manifests.push(Blob::new(OCI_MANIFEST, to_json(&manifest)?));
        configs.push(config);
    }

    let top = if manifests.len() == 1 {
        manifests[0].clone()
    } else {
        let index = IndexJson {
            schema_version: 2,
            media_type: OCI_INDEX,
            manifests: manifests
                .iter()
                .zip(&platforms)
                .map(|(m, p)| DescriptorJson {
                    media_type: OCI_MANIFEST,
                    digest: &m.digest,
                    size: m.bytes.len() as u64,
                    annotations: None,
                    platform: Some(PlatformJson {
                        architecture: &p.architecture,
                        os: &p.os,
                        variant: p.variant.as_deref(),
                    }),
                })
                .collect(),
        };
        Blob::new(OCI_INDEX, to_json(&index)?)
    };
    Ok(ImageForm {
        top,
        manifests,
        configs,
    })
}

/// This host as an image platform: `linux` and Go's name for the CPU (`amd64`, `arm64`,
/// `arm/v7`, …).
pub fn platform_of_host() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", None),
        "arm" => ("arm", Some("v7")),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "loongarch64" => ("loong64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        "mips" if cfg!(target_endian = "little") => ("mipsle", None),
        other => (other, None), // riscv64, s390x, mips, mips64: the same in Go
    };
    Platform {
        os: "linux".to_owned(),
        architecture: architecture.to_owned(),
        variant: variant.map(str::to_owned),
    }
}

/// `os/architecture[/variant]` (`linux/amd64`, `linux/arm64/v8`), lowercased. Rust/uname names
/// `x86_64` and `aarch64` become `amd64` and `arm64`; a bare `arm` becomes `arm/v7`
/// (containerd's default).
pub fn parse_platform(s: &str) -> Result<Platform, FormError> {
    let lower = s.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('/').collect();
    let (os, arch, variant) = match parts.as_slice() {
        [os, arch] => (*os, *arch, None),
        [os, arch, variant] => (*os, *arch, Some(*variant)),
        _ => return Err(FormError::Platform(s.to_owned())),
    };
    let arch = match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let variant = match (arch, variant) {
        ("arm", None) => Some("v7"),
        (_, v) => v,
    };
    let platform = Platform {
        os: os.to_owned(),
        architecture: arch.to_owned(),
        variant: variant.map(str::to_owned),
    };
    validate_platform(&platform).map_err(|_| FormError::Platform(s.to_owned()))?;
    Ok(platform)
}

fn validate_platform(p: &Platform) -> Result<(), FormError> {
    let part_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    };
    if part_ok(&p.os) && part_ok(&p.architecture) && p.variant.as_deref().is_none_or(part_ok) {
        Ok(())
    } else {
        let variant = p
            .variant
            .as_deref()
            .map(|v| format!("/{v}"))
            .unwrap_or_default();
        Err(FormError::Platform(format!(
            "{}/{}{variant}",
            p.os, p.architecture
        )))
    }
}
