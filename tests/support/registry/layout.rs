//! Tiny test images written as an OCI image layout with plain files (no
//! network, no builder): one image, or a multi-platform index of several,
//! for pushing into the test registry with `skopeo copy oci:DIR:NAME …`.
//! The layout is the shape of an estiba store, so a store root works the
//! same way as a source.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use estiba_cache::oci::{Index, Manifest, Platform};
use estiba_cache::{media_type, Descriptor, Digest, REF_NAME_ANNOTATION};

/// What [`write_image`] wrote.
#[derive(Debug, Clone)]
pub(crate) struct WrittenImage {
    /// The platform asked for, `ARCH` or `ARCH/VARIANT` (`arm/v7`).
    pub(crate) platform: String,
    /// The architecture in its config.
    pub(crate) architecture: String,
    /// The variant in its config, empty if none.
    pub(crate) variant: String,
    /// The manifest's digest (what a registry answers for it).
    pub(crate) manifest: Digest,
    /// The config's digest.
    pub(crate) config: Digest,
    /// The one layer's (gzip) digest.
    pub(crate) layer: Digest,
    /// The manifest's descriptor.
    pub(crate) descriptor: Descriptor,
}

/// What [`write_multi_platform`] wrote.
#[derive(Debug, Clone)]
pub(crate) struct WrittenIndex {
    /// The index's digest.
    pub(crate) index: Digest,
    /// One image per architecture, in the order asked.
    pub(crate) images: Vec<WrittenImage>,
}

impl WrittenIndex {
    /// The image for `platform` (`ARCH` or `ARCH/VARIANT`, as asked).
    pub(crate) fn image(&self, platform: &str) -> Option<&WrittenImage> {
        self.images.iter().find(|i| i.platform == platform)
    }
}

/// Writes `bytes` as a blob of the layout at `dir`; its digest.
fn put_blob(dir: &Path, bytes: &[u8]) -> Result<Digest, String> {
    let digest = Digest::of(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| format!("creating {}: {e}", blobs.display()))?;
    let path = blobs.join(digest.hex());
    std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(digest)
}

fn to_json(value: &impl serde::Serialize) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| format!("encoding JSON: {e}"))
}

/// A gzip layer holding `/hello.txt` with `content`: (gzip bytes, diff ID).
fn layer(content: &[u8]) -> Result<(Vec<u8>, Digest), String> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, "hello.txt", content)
        .map_err(|e| format!("writing a layer tar: {e}"))?;
    let tar = tar
        .into_inner()
        .map_err(|e| format!("finishing a layer tar: {e}"))?;
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar)
        .map_err(|e| format!("compressing a layer: {e}"))?;
    let gz = gz
        .finish()
        .map_err(|e| format!("compressing a layer: {e}"))?;
    Ok((gz, diff_id))
}

/// Writes the blobs of a one-layer linux image for `platform` (`ARCH` or
/// `ARCH/VARIANT`) whose `/hello.txt` holds `content`, without tagging it.
fn image_blobs(dir: &Path, platform: &str, content: &[u8]) -> Result<WrittenImage, String> {
    let (architecture, variant) = platform.split_once('/').unwrap_or((platform, ""));
    let (gz, diff_id) = layer(content)?;
    let layer_digest = put_blob(dir, &gz)?;
    let mut config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
        "history": [{ "created": "2024-01-01T00:00:00Z", "created_by": "estiba test image" }],
    });
    if !variant.is_empty() {
        config["variant"] = serde_json::json!(variant);
    }
    let config_bytes = to_json(&config)?;
    let config_digest = put_blob(dir, &config_bytes)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.to_owned()),
        artifact_type: None,
        config: Descriptor::new(
            media_type::OCI_CONFIG,
            config_digest,
            config_bytes.len() as u64,
        ),
        layers: vec![Descriptor::new(
            media_type::OCI_LAYER_GZIP,
            layer_digest,
            gz.len() as u64,
        )],
        annotations: BTreeMap::new(),
    };
    let manifest_bytes = to_json(&manifest)?;
    let manifest_digest = put_blob(dir, &manifest_bytes)?;
    let mut descriptor = Descriptor::new(
        media_type::OCI_MANIFEST,
        manifest_digest,
        manifest_bytes.len() as u64,
    );
    descriptor.platform = Some(Platform {
        architecture: architecture.to_owned(),
        os: "linux".to_owned(),
        variant: variant.to_owned(),
        ..Platform::default()
    });
    Ok(WrittenImage {
        platform: platform.to_owned(),
        architecture: architecture.to_owned(),
        variant: variant.to_owned(),
        manifest: manifest_digest,
        config: config_digest,
        layer: layer_digest,
        descriptor,
    })
}

/// Adds `descriptor` to the layout's `index.json` under tag `name`
/// (replacing an entry of that name), creating the layout if needed.
fn tag(dir: &Path, name: &str, mut descriptor: Descriptor) -> Result<(), String> {
    let layout = dir.join("oci-layout");
    if !layout.exists() {
        std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(|e| format!("writing {}: {e}", layout.display()))?;
    }
    let index_path = dir.join("index.json");
    let mut index: Index = match std::fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("reading {}: {e}", index_path.display()))?,
        Err(_) => Index {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_owned()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        },
    };
    index
        .manifests
        .retain(|d| d.annotations.get(REF_NAME_ANNOTATION).map(String::as_str) != Some(name));
    descriptor.platform = None;
    descriptor
        .annotations
        .insert(REF_NAME_ANNOTATION.to_owned(), name.to_owned());
    index.manifests.push(descriptor);
    std::fs::write(&index_path, to_json(&index)?)
        .map_err(|e| format!("writing {}: {e}", index_path.display()))
}

/// Writes a one-layer linux image for `platform` (`ARCH` or
/// `ARCH/VARIANT`) into the OCI layout at `dir` (created if needed), tagged
/// `name` (`oci:DIR:NAME`), its `/hello.txt` holding `content`.
pub(crate) fn write_image(
    dir: &Path,
    name: &str,
    platform: &str,
    content: &[u8],
) -> Result<WrittenImage, String> {
    let image = image_blobs(dir, platform, content)?;
    tag(dir, name, image.descriptor.clone())?;
    Ok(image)
}

/// Writes an OCI index of one image per entry of `platforms` (`ARCH` or
/// `ARCH/VARIANT`; each image with its own `/hello.txt`, `hello from
/// PLATFORM`) into the layout at `dir`,
/// tagged `name`: `skopeo copy --all oci:DIR:NAME docker://…` pushes it as
/// a multi-platform image.
pub(crate) fn write_multi_platform(
    dir: &Path,
    name: &str,
    platforms: &[&str],
) -> Result<WrittenIndex, String> {
    let images = platforms
        .iter()
        .map(|p| image_blobs(dir, p, format!("hello from {p}\n").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let index = Index {
        schema_version: 2,
        media_type: Some(media_type::OCI_INDEX.to_owned()),
        manifests: images.iter().map(|i| i.descriptor.clone()).collect(),
        annotations: BTreeMap::new(),
    };
    let bytes = to_json(&index)?;
    let digest = put_blob(dir, &bytes)?;
    tag(
        dir,
        name,
        Descriptor::new(media_type::OCI_INDEX, digest, bytes.len() as u64),
    )?;
    Ok(WrittenIndex {
        index: digest,
        images,
    })
}
