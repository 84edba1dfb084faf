//! Pulling an image from its registry into the store: the manifest (an
//! index resolved to the build platform), the config, then the layers the
//! store does not have, several at once, each streamed to disk and checked
//! against its digest before it is stored. The tag is written last, so a
//! pull cut short leaves only verified blobs, which the next pull reuses.

use super::stored::{self, Image};
use super::{ImageError, Vertex};
use crate::compress::Compression;
use crate::progress::human_size;
use crate::registry::{Reference, Registry};
use estiba_cache::oci::{media_type, Descriptor, Index, Manifest, Platform as OciPlatform};
use estiba_cache::{Digest, Store};
use estiba_frontend::Platform;
use std::time::Instant;

/// Layers downloaded at once (docker's default is 3).
const CONCURRENT_DOWNLOADS: usize = 3;

/// The largest config accepted (docker's limit on JSON it reads whole is
/// far above any real config; this only stops a hostile registry).
const MAX_CONFIG: u64 = 8 << 20;

/// Pulls `reference` for `platform` into `store` and tags it there by its
/// full name; returns the stored image.
pub(super) fn pull(
    store: &Store,
    registry: &Registry,
    reference: &Reference,
    platform: &Platform,
    progress: &Vertex<'_>,
) -> Result<Image, ImageError> {
    let name = reference.familiar();
    let top = registry.get_manifest(reference)?;
    let (manifest_bytes, manifest_type, manifest_digest) = if media_type::is_index(&top.media_type)
    {
        let index: Index = serde_json::from_slice(&top.bytes).map_err(|e| ImageError::Corrupt {
            image: name.clone(),
            reason: format!("index: {e}"),
        })?;
        let chosen = choose(&index.manifests, platform).ok_or_else(|| ImageError::NoPlatform {
            image: name.clone(),
            platform: platform.to_string(),
            offered: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(platform_text)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let mut by_digest = reference.clone();
        by_digest.digest = Some(chosen.digest);
        let fetched = registry.get_manifest(&by_digest)?;
        progress.reporter.log(
            progress.id,
            &format!("resolve {reference} to {} for {platform}", chosen.digest),
        );
        (fetched.bytes, fetched.media_type, fetched.digest)
    } else {
        (top.bytes, top.media_type, top.digest)
    };
    progress.reporter.log(
        progress.id,
        &format!("resolve {reference} done: {manifest_digest}"),
    );
    if !media_type::is_manifest(&manifest_type) {
        return Err(ImageError::Corrupt {
            image: name,
            reason: format!(
                "the registry answered with a {manifest_type:?}, not an image manifest"
            ),
        });
    }
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| ImageError::Corrupt {
            image: name.clone(),
            reason: format!("manifest: {e}"),
        })?;
    for layer in &manifest.layers {
        if Compression::from_media_type(&layer.media_type).is_none() {
            return Err(ImageError::Corrupt {
                image: name.clone(),
                reason: format!(
                    "layer {} has media type {:?}, which is no image layer estiba can unpack",
                    layer.digest, layer.media_type
                ),
            });
        }
    }
    if manifest.config.size > MAX_CONFIG {
        return Err(ImageError::Corrupt {
            image: name,
            reason: format!("its config is {} bytes", manifest.config.size),
        });
    }
    if !store.has_blob(&manifest.config.digest) {
        let mut blob = store.blob_writer()?;
        registry.get_blob_unhashed(reference, &manifest.config, &mut blob, &|_| {})?;
        commit_pulled(blob, reference, &manifest.config)?;
    }
    download_layers(store, registry, reference, &manifest.layers, progress)?;
    let (digest, size) = store.put_blob(&manifest_bytes)?;
    if digest != manifest_digest {
        return Err(ImageError::Corrupt {
            image: name,
            reason: format!("its manifest hashes to {digest}, not {manifest_digest}"),
        });
    }
    let descriptor = Descriptor::new(&manifest_type, digest, size);
    // Read back before it is named: a config that does not parse, or whose
    // diff IDs do not fit the layers, never gets a tag.
    let image = stored::read(store, &name, &descriptor)?;
    store.set_tag(&reference.to_string(), &descriptor)?;
    Ok(image)
}

/// Downloads the layers the store does not have yet, a few at once.
fn download_layers(
    store: &Store,
    registry: &Registry,
    reference: &Reference,
    layers: &[Descriptor],
    progress: &Vertex<'_>,
) -> Result<(), ImageError> {
    let mut missing: Vec<&Descriptor> = Vec::new();
    for layer in layers {
        if store.has_blob(&layer.digest) {
            progress.reporter.log(
                progress.id,
                &format!("{} already exists", short(&layer.digest)),
            );
        } else if !missing.iter().any(|m| m.digest == layer.digest) {
            missing.push(layer);
        }
    }
    super::each_concurrently(
        &missing,
        CONCURRENT_DOWNLOADS,
        &reference.familiar(),
        |layer| download(store, registry, reference, layer, progress),
    )
}

fn download(
    store: &Store,
    registry: &Registry,
    reference: &Reference,
    layer: &Descriptor,
    progress: &Vertex<'_>,
) -> Result<(), ImageError> {
    let item = short(&layer.digest);
    let started = Instant::now();
    let mut blob = store.blob_writer()?;
    registry.get_blob_unhashed(reference, layer, &mut blob, &|done| {
        progress
            .reporter
            .transfer(progress.id, &item, done, layer.size);
    })?;
    commit_pulled(blob, reference, layer)?;
    progress.reporter.log(
        progress.id,
        &format!(
            "{item} {} / {} {:.1}s done",
            human_size(layer.size),
            human_size(layer.size),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// Stores a blob the registry sent unhashed (the blob writer hashed it),
/// if it is `desc`'s: a blob with another digest is refused as the
/// registry's, naming the image and the registry, and nothing is stored.
pub(super) fn commit_pulled(
    blob: estiba_cache::BlobWriter,
    reference: &Reference,
    desc: &Descriptor,
) -> Result<(), ImageError> {
    match blob.commit_expect(&desc.digest) {
        Ok(_) => Ok(()),
        Err(estiba_cache::StoreError::DigestMismatch { expected, actual }) => Err(
            crate::registry::RegistryError::blob_digest_mismatch(reference, expected, actual)
                .into(),
        ),
        Err(e) => Err(e.into()),
    }
}

/// `sha256:` and the first 12 hex digits, as BuildKit names a layer.
fn short(digest: &Digest) -> String {
    format!("sha256:{}", &digest.hex()[..12])
}

fn platform_text(p: &OciPlatform) -> String {
    if p.variant.is_empty() {
        format!("{}/{}", p.os, p.architecture)
    } else {
        format!("{}/{}/{}", p.os, p.architecture, p.variant)
    }
}

/// The index entry for `want`, as containerd's platform matcher picks it:
/// the same OS and architecture; the same variant when one is asked for
/// (arm64's `v8` and no variant are the same), else the entry without a
/// variant, else any. Attestation manifests (`unknown/unknown`) never match.
pub(super) fn choose<'d>(entries: &'d [Descriptor], want: &Platform) -> Option<&'d Descriptor> {
    let normal_variant = |arch: &str, variant: &str| -> String {
        match (arch, variant) {
            ("arm64", "v8") => String::new(),
            _ => variant.to_string(),
        }
    };
    let want_variant = normal_variant(&want.architecture, &want.variant);
    let candidates: Vec<(&Descriptor, String)> = entries
        .iter()
        .filter(|d| media_type::is_manifest(&d.media_type) || d.media_type.is_empty())
        .filter_map(|d| {
            let p = d.platform.as_ref()?;
            (p.os == want.os && p.architecture == want.architecture)
                .then(|| (d, normal_variant(&p.architecture, &p.variant)))
        })
        .collect();
    if !want_variant.is_empty() {
        return candidates
            .iter()
            .find(|(_, v)| *v == want_variant)
            .map(|(d, _)| *d);
    }
    candidates
        .iter()
        .find(|(_, v)| v.is_empty())
        .or_else(|| candidates.first())
        .map(|(d, _)| *d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: &str, n: u8) -> Descriptor {
        let mut d = Descriptor::new(media_type::OCI_MANIFEST, Digest::of(&[n]), 1);
        d.platform = Some(OciPlatform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.into(),
            ..OciPlatform::default()
        });
        d
    }

    fn want(text: &str) -> Platform {
        Platform::parse(text).expect("platform")
    }

    #[test]
    fn an_index_resolves_to_the_platforms_manifest() {
        let entries = [
            entry("arm", "v6", 1),
            entry("arm", "v7", 2),
            entry("amd64", "", 3),
            entry("arm64", "v8", 4),
        ];
        let digest = |p: &str| choose(&entries, &want(p)).map(|d| d.digest);
        assert_eq!(digest("linux/amd64"), Some(Digest::of(&[3])));
        assert_eq!(digest("linux/arm/v7"), Some(Digest::of(&[2])));
        assert_eq!(digest("linux/arm/v6"), Some(Digest::of(&[1])));
        assert_eq!(digest("linux/arm64"), Some(Digest::of(&[4])));
        assert_eq!(digest("linux/arm/v5"), None);
        assert_eq!(digest("linux/s390x"), None);
    }

    #[test]
    fn attestations_are_never_chosen() {
        let mut att = entry("unknown", "", 9);
        if let Some(p) = att.platform.as_mut() {
            p.os = "unknown".into();
        }
        let entries = [att, entry("amd64", "", 3)];
        assert_eq!(
            choose(&entries, &want("linux/amd64")).map(|d| d.digest),
            Some(Digest::of(&[3]))
        );
    }
}
