//! Image archives: what `docker save` writes and `docker load` reads, and
//! OCI archives (a tar of an OCI image layout), as `estiba save` and
//! `estiba load` need them.
//!
//! Reading ([`read_archive`]) streams the archive once into files in a
//! temporary directory (archives can be gigabytes; no layer is ever held in
//! memory), then checks every digest the archive states: config digests,
//! manifest and blob digests of OCI layouts, and the diff ID of every layer
//! after decompression against its image config. A truncated or corrupt
//! archive is an error naming the entry, never a partial import.
//!
//! Writing ([`write_docker_archive`], [`write_oci_archive`]) takes images as
//! configs plus layer descriptors and fetches the blobs through a
//! [`BlobSource`], checking each against its digest as it is copied. Docker
//! archives are the classic format `docker load` has read since 1.10
//! (`manifest.json`, `<config hex>.json`, `<diff ID hex>/layer.tar`,
//! `repositories`); OCI archives hold an `oci-layout`, an `index.json`
//! naming each tag with `org.opencontainers.image.ref.name`, and blobs as
//! the images describe them (the image layer hands in compressed layers).

use crate::compress::{
    decompressing_reader, media_type, sniff, CompressError, Compression, CountWriter, Detected,
    DigestWriter,
};
use crate::layer::{clean_components, EntryKind, TarError, TarHeader, TarReader, TarWriter};
use estiba_cache::oci::{Descriptor, Index, Manifest};
use estiba_cache::{BackgroundDigestReader, Digest, DigestError, DigestReader, Hasher};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use estiba_cache::media_type::{
    DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST as DOCKER_LIST, OCI_CONFIG, OCI_INDEX,
    OCI_MANIFEST,
};
/// The OCI annotation naming a reference in an image layout.
pub use estiba_cache::REF_NAME_ANNOTATION as REF_NAME;
/// containerd's annotation for the full image name (docker ≥ 25 writes it).
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// JSON documents larger than this are refused rather than read into memory.
const MAX_JSON: u64 = 64 << 20;
/// How deep indexes may nest.
const MAX_INDEX_DEPTH: usize = 8;
/// How many symlinks a name in an archive may go through.
const MAX_LINKS: usize = 16;

/// The two archive formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `docker save` output (`manifest.json`), classic or docker ≥ 25.
    Docker,
    /// A tar of an OCI image layout (`oci-layout`, `index.json`).
    Oci,
}

/// An archive read by [`read_archive`]: its images, whose layer blobs live
/// in a temporary directory removed when this is dropped.
#[derive(Debug)]
pub struct ImageArchive {
    /// Which format it was.
    pub format: ArchiveFormat,
    /// The images, in the order the archive lists them.
    pub images: Vec<ArchiveImage>,
    dir: tempfile::TempDir,
}

impl ImageArchive {
    /// The temporary directory holding the extracted blobs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// One image of an archive, every digest checked.
#[derive(Clone, Debug)]
pub struct ArchiveImage {
    /// The references it is tagged with (`name:tag`, as the archive says).
    pub tags: Vec<String>,
    /// The image manifest bytes, when the archive has one (OCI archives).
    pub manifest: Option<Vec<u8>>,
    /// The digest of `manifest`.
    pub manifest_digest: Option<Digest>,
    /// The image config bytes, exactly as stored.
    pub config: Vec<u8>,
    /// The digest of `config` (the image ID).
    pub config_digest: Digest,
    /// The layers, bottom first.
    pub layers: Vec<ArchiveLayer>,
}

/// A layer blob extracted from an archive.
#[derive(Clone, Debug)]
pub struct ArchiveLayer {
    /// The archive entry it came from.
    pub entry: String,
    /// The file holding the blob, inside [`ImageArchive::dir`].
    pub path: PathBuf,
    /// sha256 of the blob as stored (compressed or not).
    pub digest: Digest,
    /// Size of the blob as stored.
    pub size: u64,
    /// sha256 of the uncompressed tar, checked against the config.
    pub diff_id: Digest,
    /// The media type the manifest gives (OCI archives only).
    pub media_type: Option<String>,
    /// The compression its magic bytes announce.
    pub detected: Detected,
}

impl ArchiveLayer {
    /// Opens the blob as stored.
    pub fn open(&self) -> Result<File, ArchiveError> {
        File::open(&self.path).map_err(|source| ArchiveError::Fs {
            action: "open",
            path: self.path.clone(),
            source,
        })
    }

    /// Opens the blob decompressed: the layer tar.
    pub fn open_tar(&self) -> Result<Box<dyn Read>, ArchiveError> {
        let entry = self.entry.clone();
        decompressing_reader(self.open()?).map_err(|source| ArchiveError::Decompress {
            entry,
            source: compress_io(source),
        })
    }

    /// The media type this blob can be stored under without recompressing
    /// (`None` for bzip2 and xz layers, which OCI has no type for).
    pub fn oci_media_type(&self) -> Option<&'static str> {
        self.detected.compression().map(media_type)
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the archive stream failed, or a header is corrupt.
    #[error("cannot read the archive")]
    Read {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The archive ends without its end-of-archive blocks.
    #[error("the archive is truncated: it ends without an end-of-archive marker")]
    Truncated,
    /// An entry's content ends early.
    #[error("archive entry {entry:?} is truncated: the archive ends inside its {size} bytes")]
    TruncatedEntry {
        /// The entry.
        entry: String,
        /// Bytes declared.
        size: u64,
    },
    /// A header or extension record is malformed.
    #[error("the archive is corrupt at or after entry {near:?}: {reason}")]
    Corrupt {
        /// The entry at or after which it is.
        near: String,
        /// What is wrong.
        reason: String,
    },
    /// An entry path with `..` or a leading `/`.
    #[error("archive entry {entry:?} has an unsafe path: {reason}")]
    UnsafeEntry {
        /// The entry.
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// Neither `manifest.json` nor `index.json`.
    #[error("not an image archive: it has neither manifest.json (docker) nor index.json (OCI)")]
    UnknownFormat,
    /// The archive lists no image.
    #[error("the archive holds no image")]
    NoImages,
    /// An entry the archive refers to is not in it.
    #[error("the archive has no entry {entry:?}")]
    Missing {
        /// The entry.
        entry: String,
    },
    /// A JSON document is malformed.
    #[error("archive entry {entry:?} is not valid")]
    Json {
        /// The entry.
        entry: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON document is too large to be one.
    #[error("archive entry {entry:?} is too large for a JSON document ({size} bytes)")]
    TooLarge {
        /// The entry.
        entry: String,
        /// Its size.
        size: u64,
    },
    /// A digest in the archive is malformed or not sha256.
    #[error("archive entry {entry:?} refers to an invalid digest")]
    BadDigest {
        /// The entry.
        entry: String,
        /// The cause.
        #[source]
        source: DigestError,
    },
    /// An entry's bytes do not have the digest the archive states.
    #[error("archive entry {entry:?} is corrupt: its digest is {actual}, expected {expected}")]
    DigestMismatch {
        /// The entry.
        entry: String,
        /// What the archive states.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// An entry's size is not the one its descriptor states.
    #[error("archive entry {entry:?} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The entry.
        entry: String,
        /// What the descriptor states.
        expected: u64,
        /// The real size.
        actual: u64,
    },
    /// A layer's uncompressed digest is not the config's diff ID.
    #[error("layer {entry:?} has diff ID {actual}, but its image config says {expected}")]
    DiffIdMismatch {
        /// The layer's entry.
        entry: String,
        /// The config's diff ID.
        expected: Digest,
        /// The digest of the uncompressed layer.
        actual: Digest,
    },
    /// Layers and diff IDs do not pair up.
    #[error("image config {entry:?} lists {diff_ids} diff IDs for {layers} layers")]
    LayerCount {
        /// The config (entry or digest).
        entry: String,
        /// Diff IDs in the config.
        diff_ids: usize,
        /// Layers in the manifest.
        layers: usize,
    },
    /// A descriptor's media type is not one this can handle.
    #[error("{entry:?} has unsupported media type {media_type:?}")]
    MediaType {
        /// The entry or blob.
        entry: String,
        /// The media type.
        media_type: String,
    },
    /// A layer cannot be decompressed.
    #[error("cannot decompress layer {entry:?}")]
    Decompress {
        /// The layer's entry or digest.
        entry: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A temporary file operation failed.
    #[error("cannot {action} {path}")]
    Fs {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the archive failed.
    #[error("cannot write the archive")]
    Write {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The blob source failed.
    #[error("cannot read blob {digest}")]
    Blob {
        /// The blob.
        digest: Digest,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A blob from the source is not what its digest names.
    #[error("blob {digest} is corrupt: its content hashes to {actual}")]
    CorruptBlob {
        /// The blob asked for.
        digest: Digest,
        /// What its bytes hash to.
        actual: Digest,
    },
    /// A blob from the source is not the size its descriptor says.
    #[error("blob {digest} is not {expected} bytes")]
    BlobSize {
        /// The blob.
        digest: Digest,
        /// The descriptor's size.
        expected: u64,
    },
    /// An image config handed to a writer is not valid.
    #[error("the config of image {config} is not valid")]
    Config {
        /// The config's digest.
        config: Digest,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

fn compress_io(e: CompressError) -> io::Error {
    match e {
        CompressError::Read { source, .. } | CompressError::Write { source, .. } => source,
        level @ CompressError::Level { .. } => {
            io::Error::new(io::ErrorKind::InvalidInput, level.to_string())
        }
    }
}

// ---------------------------------------------------------------------------
// JSON shapes
// ---------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigDoc {
    rootfs: ConfigRootfs,
}

fn diff_ids_of(config: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    Ok(serde_json::from_slice::<ConfigDoc>(config)?.rootfs.diff_ids)
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// A regular file extracted from the archive.
#[derive(Clone, Debug)]
struct Stored {
    path: PathBuf,
    size: u64,
    digest: Digest,
}

/// The archive's files, by clean relative path.
struct Extracted {
    files: HashMap<String, Stored>,
    /// Symlink path → the path it points to (clean, relative to the root).
    links: HashMap<String, String>,
}

impl Extracted {
    fn lookup(&self, name: &str) -> Option<(&str, &Stored)> {
        let mut key = clean_name(name)?;
        for _ in 0..MAX_LINKS {
            if let Some((k, s)) = self.files.get_key_value(&key) {
                return Some((k.as_str(), s));
            }
            key = self.links.get(&key)?.clone();
        }
        None
    }

    fn get(&self, name: &str) -> Result<(&str, &Stored), ArchiveError> {
        self.lookup(name).ok_or_else(|| ArchiveError::Missing {
            entry: name.to_string(),
        })
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, ArchiveError> {
        let bytes = self.read_small(name)?;
        serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Json {
            entry: name.to_string(),
            source,
        })
    }

    fn read_small(&self, name: &str) -> Result<Vec<u8>, ArchiveError> {
        let (_, stored) = self.get(name)?;
        if stored.size > MAX_JSON {
            return Err(ArchiveError::TooLarge {
                entry: name.to_string(),
                size: stored.size,
            });
        }
        fs::read(&stored.path).map_err(|source| ArchiveError::Fs {
            action: "read",
            path: stored.path.clone(),
            source,
        })
    }
}

/// A path in the archive, cleaned like entry paths; `None` if it escapes.
fn clean_name(name: &str) -> Option<String> {
    let parts = clean_components(name.as_bytes()).ok()?;
    let parts: Vec<&str> = parts
        .iter()
        .map(|p| std::str::from_utf8(p).ok())
        .collect::<Option<_>>()?;
    Some(parts.join("/"))
}

/// Resolves a symlink target lexically against the link's directory,
/// staying inside the archive.
fn resolve_link(link: &str, target: &[u8]) -> Option<String> {
    let target = std::str::from_utf8(target).ok()?;
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let mut p: Vec<&str> = link.split('/').collect();
        p.pop();
        p
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// What a [`TarError`] means for an archive.
fn archive_tar_error(e: TarError) -> ArchiveError {
    match e {
        TarError::Io(source) => ArchiveError::Read { source },
        TarError::Truncated => ArchiveError::Truncated,
        TarError::Corrupt { near, reason } => ArchiveError::Corrupt { near, reason },
    }
}

/// Streams the archive into `dir`: every regular file to its own temp file,
/// hashed on the way.
fn extract(reader: impl Read, dir: &Path) -> Result<Extracted, ArchiveError> {
    let reader = decompressing_reader(reader).map_err(|e| ArchiveError::Read {
        source: compress_io(e),
    })?;
    let mut tar = TarReader::new(reader);
    let mut out = Extracted {
        files: HashMap::new(),
        links: HashMap::new(),
    };
    let mut i = 0u64;
    while let Some(entry) = tar.next_entry().map_err(archive_tar_error)? {
        i += 1;
        let name = lossy(&entry.path);
        let parts = clean_components(&entry.path).map_err(|reason| ArchiveError::UnsafeEntry {
            entry: name.clone(),
            reason,
        })?;
        let key = lossy(&parts.join(&b'/'));
        match entry.flag {
            b'0' | b'\0' | b'7' => {
                let path = dir.join(format!("entry-{i}"));
                let file = File::create(&path).map_err(|source| ArchiveError::Fs {
                    action: "create",
                    path: path.clone(),
                    source,
                })?;
                let mut w = DigestWriter::new(file);
                let read = copy(&mut tar.data(), &mut w).map_err(|e| match e {
                    CopyError::Read(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        ArchiveError::TruncatedEntry {
                            entry: name.clone(),
                            size: entry.size,
                        }
                    }
                    CopyError::Read(source) => ArchiveError::Read { source },
                    CopyError::Write(source) => ArchiveError::Fs {
                        action: "write",
                        path: path.clone(),
                        source,
                    },
                })?;
                if read != entry.size {
                    return Err(ArchiveError::TruncatedEntry {
                        entry: name,
                        size: entry.size,
                    });
                }
                let (_, digest, size) = w.finish();
                out.files.insert(key, Stored { path, size, digest });
            }
            b'2' => {
                if let Some(target) = resolve_link(&key, &entry.link) {
                    out.links.insert(key, target);
                }
            }
            b'1' => {
                let target = clean_name(&lossy(&entry.link));
                match target.as_deref().and_then(|t| out.lookup(t)) {
                    Some((_, s)) => {
                        let s = s.clone();
                        out.files.insert(key, s);
                    }
                    None => {
                        return Err(ArchiveError::Missing {
                            entry: lossy(&entry.link),
                        })
                    }
                }
            }
            _ => {}
        }
    }
    tar.drain()
        .map_err(|source| ArchiveError::Read { source })?;
    Ok(out)
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy(from: &mut impl Read, to: &mut impl Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
    to.flush().map_err(CopyError::Write)?;
    Ok(total)
}

/// Reads a docker or OCI archive (possibly compressed as a whole) from
/// `reader`, extracting its blobs into a new temporary directory under
/// `tmp` and checking every digest; see the module docs.
pub fn read_archive(reader: impl Read, tmp: &Path) -> Result<ImageArchive, ArchiveError> {
    let dir = tempfile::Builder::new()
        .prefix("archive-")
        .tempdir_in(tmp)
        .map_err(|source| ArchiveError::Fs {
            action: "create a temporary directory in",
            path: tmp.to_path_buf(),
            source,
        })?;
    let extracted = extract(reader, dir.path())?;
    let mut reader = ImageReader {
        x: &extracted,
        diff_ids: HashMap::new(),
        walked: HashSet::new(),
    };
    let (format, images) = if extracted.lookup("manifest.json").is_some() {
        (ArchiveFormat::Docker, reader.docker_images()?)
    } else if extracted.lookup("index.json").is_some() {
        (ArchiveFormat::Oci, reader.oci_images()?)
    } else {
        return Err(ArchiveError::UnknownFormat);
    };
    if images.is_empty() {
        return Err(ArchiveError::NoImages);
    }
    Ok(ImageArchive {
        format,
        images,
        dir,
    })
}

struct ImageReader<'a> {
    x: &'a Extracted,
    /// Blob file → (diff ID, detected compression), computed once.
    diff_ids: HashMap<PathBuf, (Digest, Detected)>,
    /// The (blob, names) pairs already walked: walking one again changes
    /// nothing, and an index listing an index many times, nested, would
    /// otherwise make the walk exponential in the depth.
    walked: HashSet<(Digest, Vec<String>)>,
}

/// The digest a `blobs/sha256/<hex>` or `<hex>.json` entry name states.
fn digest_in_name(name: &str) -> Option<Digest> {
    let clean = clean_name(name)?;
    let hex = clean
        .strip_prefix("blobs/sha256/")
        .or_else(|| clean.strip_suffix(".json"))?;
    format!("sha256:{hex}").parse().ok()
}

fn parse_digest(entry: &str, digest: &str) -> Result<Digest, ArchiveError> {
    digest.parse().map_err(|source| ArchiveError::BadDigest {
        entry: entry.to_string(),
        source,
    })
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

impl ImageReader<'_> {
    fn docker_images(&mut self) -> Result<Vec<ArchiveImage>, ArchiveError> {
        let entries: Vec<DockerManifestEntry> = self.x.read_json("manifest.json")?;
        let mut images = Vec::new();
        for e in entries {
            let (config_entry, stored) = self.x.get(&e.config)?;
            if let Some(expected) = digest_in_name(&e.config) {
                check_digest(config_entry, expected, stored.digest)?;
            }
            let config_digest = stored.digest;
            let config = self.x.read_small(&e.config)?;
            let diff_ids = self.config_diff_ids(config_entry, &config, e.layers.len())?;
            let mut layers = Vec::new();
            for (name, diff_id) in e.layers.iter().zip(diff_ids) {
                let (entry, stored) = self.x.get(name)?;
                if let Some(expected) = digest_in_name(name) {
                    check_digest(entry, expected, stored.digest)?;
                }
                layers.push(self.layer(entry, stored, diff_id, None)?);
            }
            images.push(ArchiveImage {
                tags: e.repo_tags.unwrap_or_default(),
                manifest: None,
                manifest_digest: None,
                config,
                config_digest,
                layers,
            });
        }
        Ok(images)
    }

    fn config_diff_ids(
        &self,
        entry: &str,
        config: &[u8],
        layers: usize,
    ) -> Result<Vec<Digest>, ArchiveError> {
        let diff_ids = diff_ids_of(config).map_err(|source| ArchiveError::Json {
            entry: entry.to_string(),
            source,
        })?;
        if diff_ids.len() != layers {
            return Err(ArchiveError::LayerCount {
                entry: entry.to_string(),
                diff_ids: diff_ids.len(),
                layers,
            });
        }
        diff_ids.iter().map(|d| parse_digest(entry, d)).collect()
    }

    fn layer(
        &mut self,
        entry: &str,
        stored: &Stored,
        expected: Digest,
        media_type: Option<String>,
    ) -> Result<ArchiveLayer, ArchiveError> {
        let (diff_id, detected) = match self.diff_ids.get(&stored.path) {
            Some(known) => *known,
            None => {
                let computed = uncompressed_digest(entry, stored)?;
                self.diff_ids.insert(stored.path.clone(), computed);
                computed
            }
        };
        if diff_id != expected {
            return Err(ArchiveError::DiffIdMismatch {
                entry: entry.to_string(),
                expected,
                actual: diff_id,
            });
        }
        Ok(ArchiveLayer {
            entry: entry.to_string(),
            path: stored.path.clone(),
            digest: stored.digest,
            size: stored.size,
            diff_id,
            media_type,
            detected,
        })
    }

    fn oci_images(&mut self) -> Result<Vec<ArchiveImage>, ArchiveError> {
        if self.x.lookup("oci-layout").is_some() {
            let _: serde_json::Value = self.x.read_json("oci-layout")?;
        }
        let index: Index = self.x.read_json("index.json")?;
        let mut images: Vec<ArchiveImage> = Vec::new();
        for desc in &index.manifests {
            self.walk(desc, &names_of(desc), 0, &mut images)?;
        }
        Ok(images)
    }

    /// Reads the blob a descriptor names, checking size and digest.
    fn blob(&self, desc: &Descriptor) -> Result<Option<(String, Digest)>, ArchiveError> {
        let digest = desc.digest;
        let name = blob_name(&digest);
        let Some((entry, stored)) = self.x.lookup(&name) else {
            return Ok(None);
        };
        check_digest(entry, digest, stored.digest)?;
        if stored.size != desc.size {
            return Err(ArchiveError::SizeMismatch {
                entry: entry.to_string(),
                expected: desc.size,
                actual: stored.size,
            });
        }
        Ok(Some((entry.to_string(), digest)))
    }

    fn walk(
        &mut self,
        desc: &Descriptor,
        names: &[String],
        depth: usize,
        images: &mut Vec<ArchiveImage>,
    ) -> Result<(), ArchiveError> {
        let Some((entry, digest)) = self.blob(desc)? else {
            // A nested index may list platforms whose blobs were left out.
            if depth == 0 {
                return Err(ArchiveError::Missing {
                    entry: blob_name(&desc.digest),
                });
            }
            return Ok(());
        };
        if !self.walked.insert((digest, names.to_vec())) {
            return Ok(());
        }
        match desc.media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(ArchiveError::MediaType {
                        entry,
                        media_type: format!("{} nested too deep", desc.media_type),
                    });
                }
                let index: Index = self.x.read_json(&entry)?;
                for child in &index.manifests {
                    let own = names_of(child);
                    let names = if own.is_empty() { names } else { &own[..] };
                    self.walk(child, names, depth + 1, images)?;
                }
                Ok(())
            }
            OCI_MANIFEST | DOCKER_MANIFEST | "" => {
                if let Some(image) = images
                    .iter_mut()
                    .find(|i| i.manifest_digest == Some(digest))
                {
                    for name in names {
                        if !image.tags.contains(name) {
                            image.tags.push(name.clone());
                        }
                    }
                    return Ok(());
                }
                if let Some(image) = self.oci_image(&entry, digest, names)? {
                    images.push(image);
                }
                Ok(())
            }
            other if depth == 0 => Err(ArchiveError::MediaType {
                entry,
                media_type: other.to_string(),
            }),
            _ => Ok(()),
        }
    }

    fn oci_image(
        &mut self,
        entry: &str,
        digest: Digest,
        names: &[String],
    ) -> Result<Option<ArchiveImage>, ArchiveError> {
        let manifest_bytes = self.x.read_small(entry)?;
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|source| ArchiveError::Json {
                entry: entry.to_string(),
                source,
            })?;
        if !matches!(
            manifest.config.media_type.as_str(),
            OCI_CONFIG | DOCKER_CONFIG
        ) {
            // Attestations and other artifacts are not images.
            return Ok(None);
        }
        let (config_entry, config_digest) =
            self.blob(&manifest.config)?
                .ok_or_else(|| ArchiveError::Missing {
                    entry: blob_name(&manifest.config.digest),
                })?;
        let config = self.x.read_small(&config_entry)?;
        let diff_ids = self.config_diff_ids(&config_entry, &config, manifest.layers.len())?;
        let mut layers = Vec::new();
        for (desc, diff_id) in manifest.layers.iter().zip(diff_ids) {
            if Compression::from_media_type(&desc.media_type).is_none() {
                return Err(ArchiveError::MediaType {
                    entry: entry.to_string(),
                    media_type: desc.media_type.clone(),
                });
            }
            let (layer_entry, _) = self.blob(desc)?.ok_or_else(|| ArchiveError::Missing {
                entry: blob_name(&desc.digest),
            })?;
            let (_, stored) = self.x.get(&layer_entry)?;
            let stored = stored.clone();
            layers.push(self.layer(
                &layer_entry,
                &stored,
                diff_id,
                Some(desc.media_type.clone()),
            )?);
        }
        Ok(Some(ArchiveImage {
            tags: names.to_vec(),
            manifest: Some(manifest_bytes),
            manifest_digest: Some(digest),
            config,
            config_digest,
            layers,
        }))
    }
}

/// The references an index descriptor names: containerd's full name when
/// present, else the OCI ref name.
fn names_of(desc: &Descriptor) -> Vec<String> {
    desc.annotations
        .get(CONTAINERD_NAME)
        .or_else(|| desc.annotations.get(REF_NAME))
        .map(|n| vec![n.clone()])
        .unwrap_or_default()
}

fn check_digest(entry: &str, expected: Digest, actual: Digest) -> Result<(), ArchiveError> {
    if expected == actual {
        Ok(())
    } else {
        Err(ArchiveError::DigestMismatch {
            entry: entry.to_string(),
            expected,
            actual,
        })
    }
}

/// The digest of the decompressed blob, and its compression.
fn uncompressed_digest(entry: &str, stored: &Stored) -> Result<(Digest, Detected), ArchiveError> {
    let file = File::open(&stored.path).map_err(|source| ArchiveError::Fs {
        action: "open",
        path: stored.path.clone(),
        source,
    })?;
    let decompress_err = |source| ArchiveError::Decompress {
        entry: entry.to_string(),
        source,
    };
    let (detected, _) = sniff(&file).map_err(decompress_err)?;
    if detected == Detected::Plain {
        return Ok((stored.digest, detected));
    }
    (&file).rewind().map_err(decompress_err)?;
    let mut reader = decompressing_reader(&file).map_err(|e| decompress_err(compress_io(e)))?;
    let mut hasher = Hasher::new();
    io::copy(&mut reader, &mut hasher).map_err(decompress_err)?;
    Ok((hasher.finish(), detected))
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Where writers get blobs from (the store, in practice).
pub trait BlobSource {
    /// Opens the blob named `digest`. The writer checks what it reads.
    fn open_blob(&mut self, digest: &Digest) -> io::Result<Box<dyn Read + '_>>;

    /// Whether the OCI archive gets, in place of `layer`, a blob made from
    /// it as it is written ([`make_blob`](BlobSource::make_blob)): a layer
    /// compressed now, written to the archive and kept in the store from
    /// the same pass. None by default.
    fn makes_blob(&self, _layer: &Descriptor) -> bool {
        false
    }

    /// Makes the blob that stands for `layer` (whose diff ID is `diff_id`;
    /// [`makes_blob`](BlobSource::makes_blob) said so), writing every byte
    /// into `out` as it is made, and returns its descriptor. The source
    /// checks what it reads and what it makes: the writer takes the
    /// descriptor as it is.
    fn make_blob(
        &mut self,
        layer: &Descriptor,
        _diff_id: &Digest,
        _out: &mut dyn Write,
    ) -> io::Result<Descriptor> {
        Err(io::Error::other(format!(
            "this source makes no blob for layer {}",
            layer.digest
        )))
    }
}

/// An archive being written that can go back over bytes it wrote: the tar
/// header of a blob made as it is written is filled in once the blob's
/// digest and size are known.
pub trait ArchiveOut: Write {
    /// How many bytes were written so far.
    fn position(&self) -> u64;

    /// Overwrites bytes written earlier, from offset `at`.
    fn rewrite(&mut self, at: u64, bytes: &[u8]) -> io::Result<()>;
}

impl ArchiveOut for Vec<u8> {
    fn position(&self) -> u64 {
        self.len() as u64
    }

    fn rewrite(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        let at = usize::try_from(at).map_err(io::Error::other)?;
        self.get_mut(at..at + bytes.len())
            .ok_or_else(|| io::Error::other("rewriting past the end"))?
            .copy_from_slice(bytes);
        Ok(())
    }
}

impl<F: std::borrow::Borrow<File>> ArchiveOut for estiba_cache::DirectWriter<F> {
    fn position(&self) -> u64 {
        estiba_cache::DirectWriter::position(self)
    }

    fn rewrite(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        estiba_cache::DirectWriter::rewrite(self, at, bytes)
    }
}

impl<T: ArchiveOut + ?Sized> ArchiveOut for &mut T {
    fn position(&self) -> u64 {
        (**self).position()
    }

    fn rewrite(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        (**self).rewrite(at, bytes)
    }
}

impl<F> BlobSource for F
where
    F: FnMut(&Digest) -> io::Result<Box<dyn Read>>,
{
    fn open_blob(&mut self, digest: &Digest) -> io::Result<Box<dyn Read + '_>> {
        self(digest)
    }
}

/// An image to write into an archive.
#[derive(Clone, Debug)]
pub struct ExportImage {
    /// References to record (`name:tag`); a name without a tag gets
    /// `:latest`; digest references are not recorded.
    pub tags: Vec<String>,
    /// The image manifest as stored, if any: OCI archives keep it byte for
    /// byte when the layers are written as it describes them, and keep its
    /// annotations otherwise.
    pub manifest: Option<Vec<u8>>,
    /// The image config bytes.
    pub config: Vec<u8>,
    /// The layer blobs, bottom first, matching the config's diff IDs: each
    /// descriptor's digest is what [`BlobSource::open_blob`] is asked for,
    /// its media type tells the blob's compression.
    pub layers: Vec<Descriptor>,
}

struct Out<W: Write> {
    tar: TarWriter<W>,
    written: HashSet<String>,
}

impl<W: Write> Out<W> {
    fn dir(&mut self, path: &str) -> Result<(), ArchiveError> {
        if self.written.insert(path.to_string()) {
            self.tar
                .header(&TarHeader::simple(path, EntryKind::Dir, 0))
                .map_err(|source| ArchiveError::Write { source })?;
        }
        Ok(())
    }

    fn bytes(&mut self, path: &str, data: &[u8]) -> Result<(), ArchiveError> {
        if !self.written.insert(path.to_string()) {
            return Ok(());
        }
        self.tar
            .header(&TarHeader::simple(path, EntryKind::File, data.len() as u64))
            .map_err(|source| ArchiveError::Write { source })?;
        self.tar
            .data(data, data.len() as u64)
            .map_err(|e| ArchiveError::Write { source: data_io(e) })
    }

    /// Copies exactly `size` bytes of `reader` (the blob `digest`) as
    /// `path`; a blob of another size is an error.
    fn stream(
        &mut self,
        path: &str,
        reader: impl Read,
        size: u64,
        digest: Digest,
    ) -> Result<(), ArchiveError> {
        self.written.insert(path.to_string());
        self.tar
            .header(&TarHeader::simple(path, EntryKind::File, size))
            .map_err(|source| ArchiveError::Write { source })?;
        self.tar.data(reader, size).map_err(|e| match e {
            crate::layer::DataError::Read(source) => ArchiveError::Blob { digest, source },
            crate::layer::DataError::Write(source) => ArchiveError::Write { source },
            crate::layer::DataError::Short | crate::layer::DataError::Long => {
                ArchiveError::BlobSize {
                    digest,
                    expected: size,
                }
            }
        })
    }

    /// Copies the stored blob `layer` as `path`, checking it against its
    /// digest and size as it goes. The hash runs on a thread of its own
    /// ([`BackgroundDigestReader`]): the copy waits on the disk, and the
    /// hash was the one other thing on this thread (a 577 MB export again:
    /// 1.08-1.30 s, 0.93-1.14 s with it).
    fn copy_blob(
        &mut self,
        path: &str,
        blobs: &mut dyn BlobSource,
        layer: &Descriptor,
    ) -> Result<(), ArchiveError> {
        let mut blob = BackgroundDigestReader::new(open_blob(blobs, &layer.digest)?)
            .map_err(|source| ArchiveError::Write { source })?;
        self.stream(path, &mut blob, layer.size, layer.digest)?;
        let (_, actual, size) = blob.into_parts().map_err(|source| ArchiveError::Blob {
            digest: layer.digest,
            source,
        })?;
        check_digest_and_size(layer, actual, size)
    }

    fn finish(self) -> Result<(), ArchiveError> {
        self.tar
            .finish()
            .map_err(|source| ArchiveError::Write { source })?;
        Ok(())
    }
}

fn data_io(e: crate::layer::DataError) -> io::Error {
    match e {
        crate::layer::DataError::Read(e) | crate::layer::DataError::Write(e) => e,
        crate::layer::DataError::Short | crate::layer::DataError::Long => {
            io::Error::new(io::ErrorKind::InvalidData, "size mismatch")
        }
    }
}

fn open_blob<'a>(
    blobs: &'a mut dyn BlobSource,
    digest: &Digest,
) -> Result<Box<dyn Read + 'a>, ArchiveError> {
    blobs
        .open_blob(digest)
        .map_err(|source| ArchiveError::Blob {
            digest: *digest,
            source,
        })
}

fn config_diff_ids(image: &ExportImage) -> Result<(Digest, Vec<Digest>), ArchiveError> {
    let config_digest = Digest::of(&image.config);
    let diff_ids = diff_ids_of(&image.config).map_err(|source| ArchiveError::Config {
        config: config_digest,
        source,
    })?;
    if diff_ids.len() != image.layers.len() {
        return Err(ArchiveError::LayerCount {
            entry: config_digest.to_string(),
            diff_ids: diff_ids.len(),
            layers: image.layers.len(),
        });
    }
    let entry = config_digest.to_string();
    let diff_ids = diff_ids
        .iter()
        .map(|d| parse_digest(&entry, d))
        .collect::<Result<_, _>>()?;
    Ok((config_digest, diff_ids))
}

fn layer_compression(layer: &Descriptor) -> Result<Compression, ArchiveError> {
    Compression::from_media_type(&layer.media_type).ok_or_else(|| ArchiveError::MediaType {
        entry: layer.digest.to_string(),
        media_type: layer.media_type.clone(),
    })
}

/// Splits `name[:tag]` (a tag is after the last `/`), defaulting the tag to
/// `latest`; `None` for digest references.
fn split_tag(reference: &str) -> Option<(&str, &str)> {
    if reference.contains('@') || reference.is_empty() {
        return None;
    }
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => Some((&reference[..slash + i], &reference[slash + i + 1..])),
        None => Some((reference, "latest")),
    }
}

/// Decompresses the blob `layer` into a temp file under `tmp`, checking
/// the blob's digest and the diff ID; returns the file and its size.
fn spill_uncompressed(
    blobs: &mut dyn BlobSource,
    layer: &Descriptor,
    diff_id: Digest,
    tmp: &Path,
) -> Result<(File, u64), ArchiveError> {
    let spill = tempfile::tempfile_in(tmp).map_err(|source| ArchiveError::Fs {
        action: "create a temporary file in",
        path: tmp.to_path_buf(),
        source,
    })?;
    let mut blob = DigestReader::new(open_blob(blobs, &layer.digest)?);
    let mut out = DigestWriter::new(spill);
    {
        let mut tar = decompressing_reader(&mut blob).map_err(|e| ArchiveError::Decompress {
            entry: layer.digest.to_string(),
            source: compress_io(e),
        })?;
        copy(&mut tar, &mut out).map_err(|e| match e {
            CopyError::Read(source) => ArchiveError::Decompress {
                entry: layer.digest.to_string(),
                source,
            },
            CopyError::Write(source) => ArchiveError::Fs {
                action: "write",
                path: tmp.to_path_buf(),
                source,
            },
        })?;
    }
    io::copy(&mut blob, &mut io::sink()).map_err(|source| ArchiveError::Blob {
        digest: layer.digest,
        source,
    })?;
    check_blob(layer, blob)?;
    let (mut file, actual, size) = out.finish();
    if actual != diff_id {
        return Err(ArchiveError::DiffIdMismatch {
            entry: layer.digest.to_string(),
            expected: diff_id,
            actual,
        });
    }
    file.rewind().map_err(|source| ArchiveError::Fs {
        action: "rewind",
        path: tmp.to_path_buf(),
        source,
    })?;
    Ok((file, size))
}

/// Checks what was read through `blob` is the whole of `layer`'s blob.
fn check_blob<R: Read>(layer: &Descriptor, blob: DigestReader<R>) -> Result<(), ArchiveError> {
    let (_, actual, size) = blob.into_parts();
    check_digest_and_size(layer, actual, size)
}

fn check_digest_and_size(
    layer: &Descriptor,
    actual: Digest,
    size: u64,
) -> Result<(), ArchiveError> {
    if actual != layer.digest {
        return Err(ArchiveError::CorruptBlob {
            digest: layer.digest,
            actual,
        });
    }
    if size != layer.size {
        return Err(ArchiveError::BlobSize {
            digest: layer.digest,
            expected: layer.size,
        });
    }
    Ok(())
}

/// Writes `images` as a docker archive that `docker load` (1.10 and later)
/// reads: `<diff ID hex>/layer.tar` uncompressed, `<config hex>.json`,
/// `manifest.json`, `repositories`. Compressed blobs are decompressed into
/// temp files under `tmp` first (a tar entry needs its size up front).
///
/// Blobs are checked as they are copied; a bad one fails the write after
/// part of it reached `out`, so write to a temp file and rename.
pub fn write_docker_archive(
    images: &[ExportImage],
    blobs: &mut dyn BlobSource,
    out: impl Write,
    tmp: &Path,
) -> Result<(), ArchiveError> {
    let mut out = Out {
        tar: TarWriter::new(out),
        written: HashSet::new(),
    };
    let mut manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for image in images {
        let (config_digest, diff_ids) = config_diff_ids(image)?;
        let mut layer_paths = Vec::new();
        for (layer, diff_id) in image.layers.iter().zip(&diff_ids) {
            let dir = diff_id.hex();
            let path = format!("{dir}/layer.tar");
            if !out.written.contains(&path) {
                out.dir(&format!("{dir}/"))?;
                if layer_compression(layer)? == Compression::None {
                    if layer.digest != *diff_id {
                        return Err(ArchiveError::DiffIdMismatch {
                            entry: layer.digest.to_string(),
                            expected: *diff_id,
                            actual: layer.digest,
                        });
                    }
                    out.copy_blob(&path, blobs, layer)?;
                } else {
                    let (file, size) = spill_uncompressed(blobs, layer, *diff_id, tmp)?;
                    out.stream(&path, file, size, layer.digest)?;
                }
            }
            layer_paths.push(path);
        }
        let config_path = format!("{}.json", config_digest.hex());
        out.bytes(&config_path, &image.config)?;
        let mut repo_tags = Vec::new();
        for tag in &image.tags {
            if let Some((name, tag)) = split_tag(tag) {
                repo_tags.push(format!("{name}:{tag}"));
                if let Some(top) = diff_ids.last() {
                    repositories
                        .entry(name.to_string())
                        .or_default()
                        .insert(tag.to_string(), top.hex());
                }
            }
        }
        manifest.push(DockerManifestEntry {
            config: config_path,
            repo_tags: Some(repo_tags),
            layers: layer_paths,
        });
    }
    let manifest = serde_json::to_vec(&manifest).map_err(|e| ArchiveError::Write {
        source: io::Error::other(e),
    })?;
    out.bytes("manifest.json", &manifest)?;
    let repositories = serde_json::to_vec(&repositories).map_err(|e| ArchiveError::Write {
        source: io::Error::other(e),
    })?;
    out.bytes("repositories", &repositories)?;
    out.finish()
}

/// Writes `images` as an OCI archive: `oci-layout`, the blobs, and an
/// `index.json` with one descriptor per tag (`org.opencontainers.image.ref.name`).
/// Layer blobs are written as `images` describe them: to export layers
/// compressed, pass the compressed blobs
/// ([`compressed_layer`](crate::image::compressed_layer) makes them, once),
/// or the uncompressed ones with a source that makes the compressed blob
/// as it is written ([`BlobSource::makes_blob`]); the manifest lists what
/// was written.
/// A stored manifest is kept byte for byte when it describes exactly those
/// blobs, else an OCI manifest is written for them. Returns each image's
/// manifest digest.
///
/// Blobs are checked as they are copied; a bad one fails the write after
/// part of it reached `out`, so write to a temp file and rename.
pub fn write_oci_archive(
    images: &[ExportImage],
    blobs: &mut dyn BlobSource,
    out: impl ArchiveOut,
) -> Result<Vec<Digest>, ArchiveError> {
    let mut out = Out {
        tar: TarWriter::new(out),
        written: HashSet::new(),
    };
    out.bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    out.dir("blobs/")?;
    out.dir("blobs/sha256/")?;
    let mut index = Vec::new();
    let mut manifest_digests = Vec::new();
    // Layers the source made a blob for, and that blob.
    let mut made = HashMap::new();
    for image in images {
        let (config_digest, diff_ids) = config_diff_ids(image)?;
        let mut layers = Vec::with_capacity(image.layers.len());
        for (layer, diff_id) in image.layers.iter().zip(&diff_ids) {
            layers.push(write_oci_layer(
                &mut out, blobs, &mut made, layer, *diff_id,
            )?);
        }
        out.bytes(&blob_name(&config_digest), &image.config)?;
        let manifest = oci_manifest(image, &layers, config_digest)?;
        let manifest_digest = Digest::of(&manifest);
        out.bytes(&blob_name(&manifest_digest), &manifest)?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        let descriptor = |annotations| Descriptor {
            annotations,
            ..Descriptor::new(&media_type, manifest_digest, manifest.len() as u64)
        };
        let tags: Vec<String> = image
            .tags
            .iter()
            .filter_map(|t| split_tag(t).map(|(n, t)| format!("{n}:{t}")))
            .collect();
        if tags.is_empty() {
            index.push(descriptor(BTreeMap::new()));
        }
        for tag in tags {
            index.push(descriptor(BTreeMap::from([(REF_NAME.to_string(), tag)])));
        }
        manifest_digests.push(manifest_digest);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": index,
    });
    let index = serde_json::to_vec(&index).map_err(|e| ArchiveError::Write {
        source: io::Error::other(e),
    })?;
    out.bytes("index.json", &index)?;
    out.finish()?;
    Ok(manifest_digests)
}

/// Writes `layer`'s blob (once per archive) and returns its descriptor: the
/// blob as it is stored, checked as it is copied, or the one the source
/// makes for it as it is written ([`BlobSource::makes_blob`]; `made`
/// remembers those).
fn write_oci_layer<W: ArchiveOut>(
    out: &mut Out<W>,
    blobs: &mut dyn BlobSource,
    made: &mut HashMap<Digest, Descriptor>,
    layer: &Descriptor,
    diff_id: Digest,
) -> Result<Descriptor, ArchiveError> {
    if let Some(blob) = made.get(&layer.digest) {
        return Ok(blob.clone());
    }
    let path = blob_name(&layer.digest);
    if out.written.contains(&path) {
        return Ok(layer.clone());
    }
    if layer_compression(layer)? == Compression::None && layer.digest != diff_id {
        return Err(ArchiveError::DiffIdMismatch {
            entry: layer.digest.to_string(),
            expected: diff_id,
            actual: layer.digest,
        });
    }
    if blobs.makes_blob(layer) {
        let blob = write_made_blob(out, blobs, layer, diff_id)?;
        made.insert(layer.digest, blob.clone());
        return Ok(blob);
    }
    out.copy_blob(&path, blobs, layer)?;
    Ok(layer.clone())
}

/// Writes the blob `blobs` makes from `layer` as it is made: a header
/// first, for a blob whose name and size are not known yet, then the
/// blob, then the header again, right. The blob's name fits a ustar header
/// and its size must too (under 8 GiB), so the header stays one block. A
/// made blob that turns out to be in the archive already (the same bytes)
/// is in it twice, as the same entry.
fn write_made_blob<W: ArchiveOut>(
    out: &mut Out<W>,
    blobs: &mut dyn BlobSource,
    layer: &Descriptor,
    diff_id: Digest,
) -> Result<Descriptor, ArchiveError> {
    let write_err = |source| ArchiveError::Write { source };
    let header_at = out.tar.get_mut().position();
    out.tar
        .header(&TarHeader::simple(
            &blob_name(&layer.digest),
            EntryKind::File,
            0,
        ))
        .map_err(write_err)?;
    let mut counted = CountWriter {
        inner: out.tar.get_mut(),
        size: 0,
    };
    let blob = blobs
        .make_blob(layer, &diff_id, &mut counted)
        .map_err(|source| ArchiveError::Blob {
            digest: layer.digest,
            source,
        })?;
    if counted.size != blob.size {
        return Err(ArchiveError::BlobSize {
            digest: blob.digest,
            expected: blob.size,
        });
    }
    out.tar.pad(blob.size).map_err(write_err)?;
    let path = blob_name(&blob.digest);
    let mut header = TarWriter::new(Vec::new());
    header
        .header(&TarHeader::simple(&path, EntryKind::File, blob.size))
        .map_err(write_err)?;
    let header = header.into_inner();
    if header.len() != 512 {
        return Err(write_err(io::Error::other(format!(
            "blob {} of {} bytes needs more than a ustar header",
            blob.digest, blob.size
        ))));
    }
    out.tar
        .get_mut()
        .rewrite(header_at, &header)
        .map_err(write_err)?;
    out.written.insert(path);
    Ok(blob)
}

/// The manifest to write: the stored one when it describes exactly these
/// blobs (`layers`, as written), else an OCI manifest for them keeping the
/// stored annotations.
fn oci_manifest(
    image: &ExportImage,
    layers: &[Descriptor],
    config_digest: Digest,
) -> Result<Vec<u8>, ArchiveError> {
    let stored: Option<serde_json::Value> = image
        .manifest
        .as_deref()
        .and_then(|m| serde_json::from_slice(m).ok());
    if let (Some(bytes), Some(parsed)) = (&image.manifest, &stored) {
        let same = serde_json::from_value::<Manifest>(parsed.clone())
            .map(|m| {
                m.config.digest == config_digest
                    && m.layers.len() == layers.len()
                    && m.layers.iter().zip(layers).all(|(d, l)| {
                        d.digest == l.digest && d.size == l.size && d.media_type == l.media_type
                    })
            })
            .unwrap_or(false);
        if same {
            return Ok(bytes.clone());
        }
    }
    let annotations = stored
        .as_ref()
        .and_then(|v| v.get("annotations").cloned())
        .filter(|a| a.is_object());
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": config_digest.to_string(),
            "size": image.config.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            // Docker media types become their OCI equivalents.
            "mediaType": Compression::from_media_type(&l.media_type)
                .map_or_else(|| l.media_type.clone(), |c| media_type(c).to_string()),
            "digest": l.digest.to_string(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    if let (Some(annotations), Some(obj)) = (annotations, manifest.as_object_mut()) {
        obj.insert("annotations".to_string(), annotations);
    }
    serde_json::to_vec(&manifest).map_err(|e| ArchiveError::Write {
        source: io::Error::other(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_tags() {
        assert_eq!(split_tag("foo"), Some(("foo", "latest")));
        assert_eq!(split_tag("foo:1"), Some(("foo", "1")));
        assert_eq!(
            split_tag("localhost:5000/a/b:v2"),
            Some(("localhost:5000/a/b", "v2"))
        );
        assert_eq!(
            split_tag("localhost:5000/a"),
            Some(("localhost:5000/a", "latest"))
        );
        assert_eq!(split_tag("foo@sha256:abc"), None);
    }

    #[test]
    fn resolves_links_inside_the_archive() {
        assert_eq!(
            resolve_link("b/layer.tar", b"../a/layer.tar").as_deref(),
            Some("a/layer.tar")
        );
        assert_eq!(resolve_link("b/layer.tar", b"../../x"), None);
        assert_eq!(resolve_link("l", b"/a/./b").as_deref(), Some("a/b"));
    }

    #[test]
    fn digests_in_names() {
        let d = Digest::of(b"x");
        assert_eq!(digest_in_name(&format!("{}.json", d.hex())), Some(d));
        assert_eq!(
            digest_in_name(&format!("./blobs/sha256/{}", d.hex())),
            Some(d)
        );
        assert_eq!(digest_in_name("config.json"), None);
    }
}
