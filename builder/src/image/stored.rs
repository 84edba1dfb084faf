//! Images in the store: found by name or by ID, read (manifest, config,
//! layers), written (a built image as an OCI manifest), and their layers
//! unpacked into snapshots.
//!
//! Manifests pulled from registries are stored as they came (OCI or docker
//! schema 2, compressed layers), so an image keeps the digest its registry
//! gives it; layers estiba builds are stored uncompressed.

use super::{ImageConfig, ImageError, Manifest};
use crate::layer;
use crate::registry::Reference;
use estiba_cache::{media_type, Descriptor, Digest, DigestReader, Store};
use std::path::PathBuf;

/// A layer of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The stored blob (uncompressed for layers estiba built, as pulled
    /// for others).
    pub descriptor: Descriptor,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
}

impl Layer {
    /// A layer stored uncompressed: its blob's digest is its diff ID.
    pub fn uncompressed(digest: Digest, size: u64) -> Self {
        Layer {
            descriptor: Descriptor::new(media_type::OCI_LAYER_TAR, digest, size),
            diff_id: digest,
        }
    }
}

/// An image in the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// Its manifest's descriptor (the digest is what a registry calls the
    /// image's digest, and what cache keys chain from).
    pub descriptor: Descriptor,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its config.
    pub config: ImageConfig,
    /// Its layers, bottom first.
    pub layers: Vec<Layer>,
}

impl Image {
    /// The image ID, as docker shows it: the config's digest.
    pub fn id(&self) -> Digest {
        self.manifest.config.digest
    }
}

/// Reads the image whose manifest `descriptor` names; `name` is what errors
/// call it.
pub fn read(store: &Store, name: &str, descriptor: &Descriptor) -> Result<Image, ImageError> {
    let corrupt = |reason: String| ImageError::Corrupt {
        image: name.to_string(),
        reason,
    };
    let manifest: Manifest = serde_json::from_slice(&store.read_blob(&descriptor.digest)?)
        .map_err(|e| corrupt(format!("manifest: {e}")))?;
    let config: ImageConfig = serde_json::from_slice(&store.read_blob(&manifest.config.digest)?)
        .map_err(|e| corrupt(format!("config: {e}")))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(corrupt(format!(
            "{} layers but {} diff ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (descriptor, diff) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let diff_id = diff
            .parse::<Digest>()
            .map_err(|e| corrupt(format!("diff id {diff}: {e}")))?;
        layers.push(Layer {
            descriptor: descriptor.clone(),
            diff_id,
        });
    }
    Ok(Image {
        descriptor: descriptor.clone(),
        manifest,
        config,
        layers,
    })
}

/// The image tagged `reference` in the store, if any.
pub(super) fn by_name(store: &Store, reference: &Reference) -> Result<Option<Image>, ImageError> {
    match store.tag(&reference.to_string())? {
        Some(desc) => Ok(Some(read(store, &reference.familiar(), &desc)?)),
        None => Ok(None),
    }
}

/// Whether `text` can only be an image ID (`sha256:` and hex, or 64 hex
/// digits), as docker decides before it tries names.
fn is_full_id(text: &str) -> bool {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    (text.starts_with("sha256:") || hex.len() == 64) && is_hex(hex)
}

fn is_hex(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Finds an image by name or by ID, as `docker inspect` does: a full ID
/// (`sha256:…` or 64 hex digits) is an ID; anything else is first a name,
/// then, if it is hex, a prefix of exactly one image's ID. Returns the name
/// it was found by (`None` when found by ID) and the image.
pub fn find(store: &Store, text: &str) -> Result<(Option<Reference>, Image), ImageError> {
    if !is_full_id(text) {
        let reference = Reference::parse(text)?;
        if let Some(image) = by_name(store, &reference)? {
            return Ok((Some(reference), image));
        }
        if !is_hex(text) {
            return Err(ImageError::NotFound(reference.familiar()));
        }
    }
    let prefix = text.strip_prefix("sha256:").unwrap_or(text);
    let mut found: Vec<Image> = Vec::new();
    let named = store.tags()?.into_iter();
    let unnamed = store
        .unnamed()?
        .into_iter()
        .map(|d| (d.digest.to_string(), d));
    for (name, desc) in named.chain(unnamed) {
        let image = read(store, &name, &desc)?;
        if image.id().hex().starts_with(prefix) {
            found.push(image);
        }
    }
    let mut ids: Vec<Digest> = found.iter().map(Image::id).collect();
    ids.sort();
    ids.dedup();
    match ids.len() {
        0 => Err(ImageError::NotFound(text.to_string())),
        1 => Ok((None, found.swap_remove(0))),
        _ => Err(ImageError::AmbiguousId {
            prefix: text.to_string(),
            count: ids.len(),
        }),
    }
}

/// Stores a config (its bytes as they are, so the image ID is kept) and an
/// OCI manifest naming it and `layers`; returns the manifest's descriptor.
pub fn store_manifest(
    store: &Store,
    config: &[u8],
    layers: Vec<Descriptor>,
) -> Result<Descriptor, ImageError> {
    let (config_digest, config_size) = store.put_blob(config)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.to_string()),
        artifact_type: None,
        config: Descriptor::new(media_type::OCI_CONFIG, config_digest, config_size),
        layers,
        annotations: Default::default(),
    };
    let manifest_json = serde_json::to_vec(&manifest).map_err(ImageError::Encode)?;
    let (digest, size) = store.put_blob(&manifest_json)?;
    Ok(Descriptor::new(media_type::OCI_MANIFEST, digest, size))
}

/// Stores a config and layers as an image; returns the manifest's descriptor.
pub fn store_image(
    store: &Store,
    config: &ImageConfig,
    layers: &[Layer],
) -> Result<Descriptor, ImageError> {
    let config_json = serde_json::to_vec(config).map_err(ImageError::Encode)?;
    let layers = layers.iter().map(|l| l.descriptor.clone()).collect();
    store_manifest(store, &config_json, layers)
}

/// The unpacked snapshot of a layer, made from its blob the first time.
///
/// Snapshots are found by diff ID, so one made from a blob whose content is
/// not its diff ID would stand in for another image's layer: the unpacked
/// stream of a compressed blob is hashed and the snapshot is kept only if it
/// matches.
pub fn snapshot(store: &Store, l: &Layer) -> Result<PathBuf, ImageError> {
    if let Some(dir) = store.snapshot(&l.diff_id) {
        return Ok(dir);
    }
    let corrupt = |reason: String| ImageError::Corrupt {
        image: format!("layer {}", l.descriptor.digest),
        reason,
    };
    let builder = store.snapshot_builder(&l.diff_id)?;
    let blob = store.open_blob(&l.descriptor.digest)?;
    if l.descriptor.digest == l.diff_id {
        // The blob is the layer tar itself, named by the diff ID and checked
        // against its name when stored: nothing more to verify (most layers
        // estiba builds), and its files' bytes go straight from it.
        layer::unpack_layer_file(blob, builder.path(), &snapshot_unpack_options())?;
        return Ok(builder.commit()?);
    }
    let reader = crate::compress::decompressing_reader(Box::new(std::io::BufReader::new(blob)))
        .map_err(|e| corrupt(e.to_string()))?;
    let mut hashed = DigestReader::new(reader);
    layer::unpack_layer(&mut hashed, builder.path(), &snapshot_unpack_options())?;
    let (diff_id, _) = hashed
        .finish()
        .map_err(|e| corrupt(format!("cannot read it: {e}")))?;
    if diff_id != l.diff_id {
        return Err(corrupt(format!(
            "its content is {diff_id}, but the image's config says {}",
            l.diff_id
        )));
    }
    Ok(builder.commit()?)
}

/// Unpacks into the empty directory `dir`, on another thread, the layer
/// tar `write` writes into the pipe it is given, as it is written: `dir`
/// ends in the form of a snapshot ([`snapshot`] makes the same tree from
/// the stored blob). Returns what `write` returned and how unpacking went;
/// a failed `write` leaves `dir` incomplete.
pub fn unpack_while_writing<T, E: From<ImageError>>(
    dir: &std::path::Path,
    write: impl FnOnce(std::io::BufWriter<std::fs::File>) -> Result<T, E>,
) -> Result<(T, Result<(), ImageError>), E> {
    // Close-on-exec: a RUN starting on another thread must not inherit the
    // write end, or the unpacker would wait for that step to end.
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
        E::from(ImageError::Layer(layer::LayerError::Fs {
            action: "make a pipe to unpack into",
            path: dir.to_path_buf(),
            source: e.into(),
        }))
    })?;
    std::thread::scope(|scope| {
        let unpacker = scope.spawn(move || -> Result<(), ImageError> {
            let reader = std::io::BufReader::new(std::fs::File::from(read_end));
            layer::unpack_layer(reader, dir, &snapshot_unpack_options())?;
            Ok(())
        });
        // `write` drops the pipe's end when done: the unpacker sees the end.
        let written = write(std::io::BufWriter::with_capacity(
            1 << 16,
            std::fs::File::from(write_end),
        ));
        let unpacked = unpacker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written.map(|t| (t, unpacked))
    })
}

/// Snapshots are kept with whiteouts in the form overlayfs reads, so a RUN
/// step mounts them as lower dirs as they are. Making 0/0 devices and
/// `trusted.*` xattrs needs root; without it (no RUN is possible then) the
/// OCI form stays, which [`LayeredTree`] reads as well.
fn snapshot_whiteouts() -> layer::WhiteoutMode {
    if nix::unistd::geteuid().is_root() {
        layer::WhiteoutMode::Overlay
    } else {
        layer::WhiteoutMode::Keep
    }
}

/// How a layer is unpacked into its snapshot (`fsck --full` unpacks it
/// again the same way to compare).
pub(crate) fn snapshot_unpack_options() -> layer::UnpackOptions {
    layer::UnpackOptions {
        whiteouts: snapshot_whiteouts(),
        ..layer::UnpackOptions::default()
    }
}

/// Whether a step's upper dir is kept as its snapshot as overlayfs left
/// it ([`crate::layer::write_upper_layer`]), rather than in OCI whiteout
/// form (see [`snapshot_whiteouts`]).
pub(crate) fn snapshots_in_overlay_form() -> bool {
    snapshot_whiteouts() == layer::WhiteoutMode::Overlay
}
