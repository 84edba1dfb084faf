//! The step cache as an artifact other machines import (`--cache-to`,
//! `--cache-from`): a CI fleet starts every job on an empty machine, and a
//! registry (or a directory a CI cache action saves) is what its runners
//! share. Cache keys are content-addressed and machine-independent, so a
//! key another machine exported names the same step here.
//!
//! # Format
//!
//! One OCI image manifest (`schemaVersion` 2, media type
//! `application/vnd.oci.image.manifest.v1+json`, `artifactType`
//! [`CACHE_ARTIFACT_TYPE`]):
//!
//! - `config`: a JSON blob of media type [`CACHE_CONFIG_MEDIA_TYPE`]:
//!   `{"version":1,"entries":[{"key":"sha256:…","layer":N,"diffID":"sha256:…","created":UNIX}]}`,
//!   one entry per cache key, sorted by key. `layer` indexes the
//!   manifest's `layers`; it and `diffID` are `null` for a step that made
//!   no layer. The same entries always give the same bytes, so exporting
//!   an unchanged cache again gives the same manifest digest.
//! - `layers`: the layer blobs, compressed (gzip unless asked otherwise;
//!   a layer the store holds compressed already is sent as it is, as a
//!   push does, so blobs an image push sent are not sent twice), each
//!   once, in the order of the first entry naming it.
//!
//! It is an image manifest and not an index of blobs because distribution
//! (`registry:2`) refuses an index whose entries are not manifests
//! (BuildKit's `image-manifest=true` exists for the same reason); a
//! manifest's config and layers may be any blob.
//!
//! In a registry the manifest is pushed under the reference's tag. In a
//! directory ([`CacheDest::Local`]) it is an OCI image layout: `oci-layout`,
//! `blobs/sha256/<hex>`, and `index.json` naming the manifest with
//! `org.opencontainers.image.ref.name` `latest`; an export adds to what is
//! there (blobs present are not written again, other `index.json` entries
//! are kept).
//!
//! The inline cache (`--cache-to type=inline`) is the same config JSON
//! under the key [`INLINE_CACHE_KEY`] of a pushed image's config, its
//! `layer` indexes being the image's layers ([`inline_metadata`]).
//!
//! # Import
//!
//! [`RemoteCache::load`] reads only each source's manifest and config;
//! layer blobs are fetched one by one, when the solver needs one
//! ([`RemoteCache::fetch`]), and verified against their digest. A source
//! that is missing, unreachable or corrupt is a warning and gives nothing:
//! a cache never fails a build.

use super::push::{self, Format};
use super::stored::Layer;
use super::Vertex;
use super::{ImageConfig, ImageError};
use crate::compress::{Codec, Compression};
use crate::progress::{human_size, Reporter, Silent};
use crate::registry::{Reference, Registry, MAX_MANIFEST_SIZE};
use estiba_cache::oci::{media_type, Descriptor, Index, Manifest, REF_NAME_ANNOTATION};
use estiba_cache::{CacheRecord, Digest, DigestReader, Store};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The `artifactType` of a cache manifest.
pub const CACHE_ARTIFACT_TYPE: &str = "application/vnd.estiba.cache.v1";
/// The media type of a cache manifest's config.
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.estiba.cache.config.v1+json";
/// The image config key that holds an inline cache.
pub const INLINE_CACHE_KEY: &str = "estiba.cache.v1";
/// The version of the config JSON this estiba writes and reads.
const CONFIG_VERSION: u32 = 1;
/// The `ref.name` of the cache manifest in a local layout.
const LOCAL_REF_NAME: &str = "latest";
/// The largest cache (or image) config read (a config entry is ~200
/// bytes: this is far above any real cache, and stops a hostile source).
const MAX_CONFIG: u64 = 32 << 20;
/// An OCI layout's `oci-layout` file.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// What a cache export or import can fail at, beside the store and the
/// registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A file of a local cache directory.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A manifest, index or config of a cache that is no JSON of its kind.
    #[error("cache {cache}: its {what} does not parse")]
    Json {
        /// The cache.
        cache: String,
        /// `manifest`, `config`, `index.json`...
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A cache whose documents parse but do not fit together.
    #[error("cache {cache} is corrupt: {reason}")]
    Corrupt {
        /// The cache.
        cache: String,
        /// What is wrong.
        reason: String,
    },
    /// An image with no inline cache in its config.
    #[error("{image} holds no cache: its config has no {INLINE_CACHE_KEY:?} (push it with --cache-to type=inline)")]
    NoInlineCache {
        /// The image.
        image: String,
    },
    /// A registry cache with no registry client (an offline command).
    #[error("cache {cache} is in a registry, and this command has no registry client")]
    NoRegistry {
        /// The cache.
        cache: String,
    },
    /// A blob of a local cache is not what its digest says.
    #[error("blob {} is damaged: {size} bytes hashing to {actual}, expected {expected_size} bytes", path.display())]
    DamagedBlob {
        /// The file.
        path: PathBuf,
        /// What its content hashes to.
        actual: Digest,
        /// Its size.
        size: u64,
        /// The size its descriptor says.
        expected_size: u64,
    },
}

/// One step-cache entry to export: a cache key and the step's result as
/// the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The cache key.
    pub key: Digest,
    /// The layer the step made, as stored locally; `None` for a step that
    /// made none.
    pub layer: Option<Layer>,
    /// When the entry was made, in seconds since the epoch.
    pub created: i64,
}

impl CacheEntry {
    /// The entry of the store's record for `key`; `None` for a record that
    /// names a compressed layer without its diff ID (nothing estiba writes),
    /// which could not be told from a step that made no layer.
    pub fn from_record(key: Digest, record: &CacheRecord) -> Option<CacheEntry> {
        let layer = match (&record.layer, record.diff_id) {
            (None, _) => None,
            (Some(descriptor), Some(diff_id)) => Some(Layer {
                descriptor: descriptor.clone(),
                diff_id,
            }),
            (Some(descriptor), None)
                if Compression::from_media_type(&descriptor.media_type)
                    == Some(Compression::None) =>
            {
                Some(Layer::uncompressed(descriptor.digest, descriptor.size))
            }
            (Some(_), None) => return None,
        };
        Some(CacheEntry {
            key,
            layer,
            created: record.created,
        })
    }
}

/// Where a cache is exported (`--cache-to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheDest {
    /// A registry, under this reference's tag (`type=registry,ref=R`).
    Registry {
        /// Where.
        reference: Reference,
    },
    /// An OCI layout in a directory (`type=local,dest=DIR`).
    Local {
        /// The directory (made if missing).
        dir: PathBuf,
    },
}

/// Where a cache is imported from (`--cache-from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSource {
    /// A cache manifest in a registry, or an image with an inline cache.
    Registry {
        /// The tag or digest.
        reference: Reference,
    },
    /// An OCI layout a local export wrote (`type=local,src=DIR`).
    Local {
        /// The directory.
        dir: PathBuf,
    },
}

impl std::fmt::Display for CacheSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheSource::Registry { reference } => write!(f, "{reference}"),
            CacheSource::Local { dir } => write!(f, "{}", dir.display()),
        }
    }
}

/// How a cache is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheExportOptions {
    /// How layers stored uncompressed are compressed, and at what level.
    pub compression: Codec,
}

impl Default for CacheExportOptions {
    fn default() -> Self {
        CacheExportOptions {
            compression: Codec::default_for(Compression::Gzip),
        }
    }
}

/// What a cache offers for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheHit {
    /// The layer: its descriptor is the blob as the cache has it
    /// (compressed; bring it in with [`RemoteCache::fetch`]), with its
    /// diff ID. `None` for a step that made no layer.
    pub layer: Option<Layer>,
    /// When the entry was made, in seconds since the epoch.
    pub created: i64,
}

impl CacheHit {
    /// The store's record for this hit (once its blob is fetched).
    pub fn record(&self) -> CacheRecord {
        CacheRecord {
            layer: self.layer.as_ref().map(|l| l.descriptor.clone()),
            diff_id: self.layer.as_ref().map(|l| l.diff_id),
            created: self.created,
        }
    }
}

/// The config JSON (and the inline cache's value).
#[derive(Debug, Serialize, Deserialize)]
struct CacheConfig {
    version: u32,
    entries: Vec<ConfigEntry>,
}

/// One entry of [`CacheConfig`]. Field order is the byte order.
#[derive(Debug, Serialize, Deserialize)]
struct ConfigEntry {
    key: Digest,
    /// An index into the manifest's (or the image's) layers.
    layer: Option<usize>,
    #[serde(rename = "diffID")]
    diff_id: Option<Digest>,
    created: i64,
}

/// `entries` sorted by key, each key once (the first given wins).
fn sorted(entries: &[CacheEntry]) -> Vec<&CacheEntry> {
    let mut out: Vec<&CacheEntry> = entries.iter().collect();
    out.sort_by_key(|e| e.key);
    out.dedup_by_key(|e| e.key);
    out
}

/// The inline cache of an image whose layers are `image_layers` (as the
/// store has them): the entries whose layer is one of the image's (by diff
/// ID), and those that made no layer, in the config format with `layer`
/// indexing `image_layers`. The build puts it under [`INLINE_CACHE_KEY`] in
/// the image config.
pub fn inline_metadata(entries: &[CacheEntry], image_layers: &[Layer]) -> serde_json::Value {
    let entries = sorted(entries)
        .into_iter()
        .filter_map(|e| match &e.layer {
            None => Some(ConfigEntry {
                key: e.key,
                layer: None,
                diff_id: None,
                created: e.created,
            }),
            Some(layer) => image_layers
                .iter()
                .position(|l| l.diff_id == layer.diff_id)
                .map(|i| ConfigEntry {
                    key: e.key,
                    layer: Some(i),
                    diff_id: Some(layer.diff_id),
                    created: e.created,
                }),
        })
        .collect();
    let config = CacheConfig {
        version: CONFIG_VERSION,
        entries,
    };
    // Digests, numbers and null: nothing serde_json can refuse.
    serde_json::to_value(config).unwrap_or(serde_json::Value::Null)
}

/// A cache ready to be written: its blobs are in the store.
struct Artifact {
    /// How many entries (keys) it holds.
    entries: usize,
    config: Descriptor,
    /// Each layer blob once, with its diff ID (what mounts match it by).
    layers: Vec<(Descriptor, Digest)>,
    manifest: Vec<u8>,
}

/// Compresses the entries' layers (once: [`super::compressed_layer`]),
/// stores the config, and makes the manifest.
fn artifact(
    store: &Store,
    entries: &[CacheEntry],
    compression: Codec,
) -> Result<Artifact, ImageError> {
    let mut layers: Vec<(Descriptor, Digest)> = Vec::new();
    let mut config_entries = Vec::with_capacity(entries.len());
    for entry in sorted(entries) {
        let (layer, diff_id) = match &entry.layer {
            None => (None, None),
            Some(layer) => {
                let blob = push::layer_blob(store, layer, compression, Format::Oci)?;
                let index = match layers.iter().position(|(b, _)| b.digest == blob.digest) {
                    Some(i) => i,
                    None => {
                        layers.push((blob, layer.diff_id));
                        layers.len() - 1
                    }
                };
                (Some(index), Some(layer.diff_id))
            }
        };
        config_entries.push(ConfigEntry {
            key: entry.key,
            layer,
            diff_id,
            created: entry.created,
        });
    }
    let config_entries_len = config_entries.len();
    let config_json = serde_json::to_vec(&CacheConfig {
        version: CONFIG_VERSION,
        entries: config_entries,
    })
    .map_err(ImageError::Encode)?;
    let (digest, size) = store.put_blob(&config_json)?;
    let config = Descriptor::new(CACHE_CONFIG_MEDIA_TYPE, digest, size);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.to_string()),
        artifact_type: Some(CACHE_ARTIFACT_TYPE.to_string()),
        config: config.clone(),
        layers: layers.iter().map(|(d, _)| d.clone()).collect(),
        annotations: Default::default(),
    };
    let manifest = serde_json::to_vec(&manifest).map_err(ImageError::Encode)?;
    Ok(Artifact {
        entries: config_entries_len,
        config,
        layers,
        manifest,
    })
}

/// Exports `entries` to `dest`; returns the cache manifest's digest.
/// `registry` is needed for a registry destination. Progress lines go to
/// `reporter` under vertex `vertex`.
///
/// Call it under the store's shared lock (layers compressed now are
/// stored, then recorded).
pub fn export_cache(
    store: &Store,
    registry: Option<&Registry>,
    dest: &CacheDest,
    entries: &[CacheEntry],
    opts: &CacheExportOptions,
    reporter: &dyn Reporter,
    vertex: usize,
) -> Result<Digest, ImageError> {
    // A registry destination without a client fails before any work.
    enum Target<'a> {
        Registry(&'a Registry, &'a Reference),
        Local(&'a Path),
    }
    let target = match (dest, registry) {
        (CacheDest::Registry { reference }, Some(registry)) => {
            Target::Registry(registry, reference)
        }
        (CacheDest::Registry { reference }, None) => {
            return Err(ImageError::NoRegistry(reference.familiar()))
        }
        (CacheDest::Local { dir }, _) => Target::Local(dir),
    };
    let artifact = artifact(store, entries, opts.compression)?;
    reporter.log(
        vertex,
        &format!(
            "exporting cache: {} entries, {} layers",
            artifact.entries,
            artifact.layers.len()
        ),
    );
    let digest = Digest::of(&artifact.manifest);
    match target {
        Target::Registry(registry, reference) => {
            let progress = Vertex {
                reporter,
                id: vertex,
            };
            let diff_ids: Vec<Digest> = artifact.layers.iter().map(|(_, d)| *d).collect();
            let sources = push::mount_sources(store, &diff_ids, None, reference)?;
            let mut blobs: Vec<(&Descriptor, Digest)> =
                vec![(&artifact.config, artifact.config.digest)];
            blobs.extend(artifact.layers.iter().map(|(b, d)| (b, *d)));
            push::upload_blobs(store, registry, reference, &blobs, &sources, &progress)?;
            registry.put_manifest(reference, media_type::OCI_MANIFEST, &artifact.manifest)?;
            reporter.log(
                vertex,
                &format!("pushing cache manifest for {reference}@{digest} done"),
            );
        }
        Target::Local(dir) => {
            write_layout(store, dir, &artifact)?;
            reporter.log(
                vertex,
                &format!("writing cache {}@{digest} done", dir.display()),
            );
        }
    }
    Ok(digest)
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io {
        action,
        path,
        source,
    }
}

/// Where an OCI layout at `dir` keeps blob `digest`.
fn layout_blob(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.hex())
}

/// Writes `artifact` into the OCI layout at `dir`, adding to what is
/// there: a blob already present (at its size) is left as it is, and
/// `index.json` (its `latest` entry replaced, the others kept) is renamed
/// into place last, so a reader never sees a manifest whose blobs are not
/// all there.
fn write_layout(store: &Store, dir: &Path, artifact: &Artifact) -> Result<(), ImageError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err("create directory", &blobs))?;
    let layout = dir.join("oci-layout");
    if !layout.exists() {
        write_atomic(dir, &layout, OCI_LAYOUT)?;
    }
    for blob in std::iter::once(&artifact.config).chain(artifact.layers.iter().map(|(b, _)| b)) {
        let path = layout_blob(dir, &blob.digest);
        if has_file_of_size(&path, blob.size) {
            continue;
        }
        let mut from = DigestReader::new(io::BufReader::new(store.open_blob(&blob.digest)?));
        let mut tmp = tempfile::NamedTempFile::new_in(&blobs).map_err(io_err("create", &blobs))?;
        io::copy(&mut from, &mut tmp).map_err(io_err("write", tmp.path()))?;
        let (_, actual, size) = from.into_parts();
        if actual != blob.digest || size != blob.size {
            return Err(CacheError::DamagedBlob {
                path: store.blob_path(&blob.digest),
                actual,
                size,
                expected_size: blob.size,
            }
            .into());
        }
        persist(tmp, &path)?;
    }
    let manifest_digest = Digest::of(&artifact.manifest);
    let manifest_path = layout_blob(dir, &manifest_digest);
    if !has_file_of_size(&manifest_path, artifact.manifest.len() as u64) {
        write_atomic(&blobs, &manifest_path, &artifact.manifest)?;
    }
    let index_path = dir.join("index.json");
    let mut index = match fs::read(&index_path) {
        Ok(bytes) => {
            serde_json::from_slice::<Index>(&bytes).map_err(|source| CacheError::Json {
                cache: dir.display().to_string(),
                what: "index.json",
                source,
            })?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Index {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: Default::default(),
        },
        Err(e) => return Err(io_err("read", &index_path)(e).into()),
    };
    index.manifests.retain(|d| !is_latest(d));
    let mut entry = Descriptor::new(
        media_type::OCI_MANIFEST,
        manifest_digest,
        artifact.manifest.len() as u64,
    );
    entry
        .annotations
        .insert(REF_NAME_ANNOTATION.to_string(), LOCAL_REF_NAME.to_string());
    index.manifests.push(entry);
    let index_json = serde_json::to_vec(&index).map_err(ImageError::Encode)?;
    write_atomic(dir, &index_path, &index_json)
}

fn is_latest(d: &Descriptor) -> bool {
    d.annotations.get(REF_NAME_ANNOTATION).map(String::as_str) == Some(LOCAL_REF_NAME)
}

fn has_file_of_size(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Writes `bytes` to a temp file in `tmp_dir` and renames it to `path`.
fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(io_err("create", tmp_dir))?;
    tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
    persist(tmp, path)
}

/// Syncs `tmp` and renames it to `path`.
fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<(), ImageError> {
    tmp.as_file()
        .sync_all()
        .map_err(io_err("write", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| io_err("rename a temp file to", path)(e.error))?;
    Ok(())
}

/// Where a loaded source's blobs are fetched from.
#[derive(Debug)]
enum Origin {
    Registry(Reference),
    Local(PathBuf),
}

/// What one or several `--cache-from` sources offer: their entries (the
/// first source that has a key wins) and where each layer blob is.
#[derive(Debug)]
pub struct RemoteCache<'r> {
    registry: Option<&'r Registry>,
    origins: Vec<Origin>,
    hits: HashMap<Digest, CacheHit>,
    /// Each blob with the sources that name it, in source order.
    blobs: HashMap<Digest, Vec<(usize, Descriptor)>>,
}

/// How many small blobs [`RemoteCache::prefetch_small`] fetches at once.
const PREFETCH_WORKERS: usize = 8;

/// What one source gave.
struct Loaded {
    entries: Vec<(Digest, CacheHit)>,
    layers: Vec<Descriptor>,
}

impl<'r> RemoteCache<'r> {
    /// Reads each source's manifest and config (never a layer). A source
    /// that cannot be read is a warning through `reporter` and gives
    /// nothing; `registry` is needed for registry sources.
    pub fn load(
        registry: Option<&'r Registry>,
        sources: &[CacheSource],
        reporter: &dyn Reporter,
    ) -> RemoteCache<'r> {
        let mut cache = RemoteCache {
            registry,
            origins: Vec::new(),
            hits: HashMap::new(),
            blobs: HashMap::new(),
        };
        for source in sources {
            let (origin, loaded) = match source {
                CacheSource::Registry { reference } => {
                    let loaded = match registry {
                        Some(registry) => load_registry(registry, reference),
                        None => Err(CacheError::NoRegistry {
                            cache: reference.to_string(),
                        }
                        .into()),
                    };
                    (Origin::Registry(reference.clone()), loaded)
                }
                CacheSource::Local { dir } => (Origin::Local(dir.clone()), load_local(dir)),
            };
            let loaded = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    // The error names the source.
                    reporter.warning(&format!(
                        "cache not used: {}",
                        crate::solve::error_chain(&e)
                    ));
                    continue;
                }
            };
            let at = cache.origins.len();
            cache.origins.push(origin);
            for layer in loaded.layers {
                let holders = cache.blobs.entry(layer.digest).or_default();
                if !holders.iter().any(|(i, _)| *i == at) {
                    holders.push((at, layer));
                }
            }
            for (key, hit) in loaded.entries {
                cache.hits.entry(key).or_insert(hit);
            }
        }
        cache
    }

    /// What the sources offer for `key`.
    pub fn get(&self, key: &Digest) -> Option<CacheHit> {
        self.hits.get(key).cloned()
    }

    /// Whether no source gave any entry.
    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }

    /// Brings every layer blob of at most `max_size` bytes that a hit names
    /// into `store`, eight at a time. A build of many small
    /// steps (50 RUNs that each write a file) would otherwise wait for one
    /// round trip per step, one after another; small blobs cost nothing to
    /// fetch ahead, even unused. Failures are left for [`RemoteCache::fetch`]
    /// to meet again when (if) the step asks, where they are a miss.
    pub fn prefetch_small(&self, store: &Store, max_size: u64) {
        let mut wanted: Vec<&Descriptor> = self
            .hits
            .values()
            .filter_map(|h| h.layer.as_ref())
            .map(|l| &l.descriptor)
            .filter(|d| d.size <= max_size && !store.has_blob(&d.digest))
            .collect();
        wanted.sort_by_key(|d| d.digest);
        wanted.dedup_by_key(|d| d.digest);
        let _ = super::each_concurrently(&wanted, PREFETCH_WORKERS, "a cache", |d| {
            // One blob's failure must not stop the others.
            let _ = self.fetch(store, d);
            Ok(())
        });
    }

    /// Brings the layer blob `descriptor` names (a hit's) into `store`,
    /// streamed and verified against its digest, from the first source
    /// naming it that serves it. `Ok(false)` when no source names it;
    /// `Ok(true)` at once when the store has it. A blob that is gone or
    /// damaged everywhere is the first source's error (store nothing).
    pub fn fetch(&self, store: &Store, descriptor: &Descriptor) -> Result<bool, ImageError> {
        self.fetch_reporting(store, descriptor, &Silent, 0)
    }

    /// [`RemoteCache::fetch`], showing the bytes received (and a line when
    /// done) on `reporter` under vertex `vertex`.
    pub fn fetch_reporting(
        &self,
        store: &Store,
        descriptor: &Descriptor,
        reporter: &dyn Reporter,
        vertex: usize,
    ) -> Result<bool, ImageError> {
        let Some(holders) = self.blobs.get(&descriptor.digest) else {
            return Ok(false);
        };
        if store.has_blob(&descriptor.digest) {
            return Ok(true);
        }
        let mut first_error = None;
        for (at, blob) in holders {
            let Some(origin) = self.origins.get(*at) else {
                continue;
            };
            let started = Instant::now();
            let item = format!("sha256:{}", &blob.digest.hex()[..12]);
            let progress = |done: u64| reporter.transfer(vertex, &item, done, blob.size);
            match self.fetch_from(store, origin, blob, &progress) {
                Ok(()) => {
                    reporter.log(
                        vertex,
                        &format!(
                            "{item} {} {:.1}s done",
                            human_size(blob.size),
                            started.elapsed().as_secs_f64()
                        ),
                    );
                    return Ok(true);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(false), Err)
    }

    fn fetch_from(
        &self,
        store: &Store,
        origin: &Origin,
        blob: &Descriptor,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), ImageError> {
        let mut out = store.blob_writer()?;
        match origin {
            Origin::Registry(reference) => {
                let Some(registry) = self.registry else {
                    return Err(CacheError::NoRegistry {
                        cache: reference.to_string(),
                    }
                    .into());
                };
                registry.get_blob_unhashed(reference, blob, &mut out, progress)?;
                return super::pull::commit_pulled(out, reference, blob);
            }
            Origin::Local(dir) => {
                let path = layout_blob(dir, &blob.digest);
                let file = fs::File::open(&path).map_err(io_err("open", &path))?;
                let mut from = DigestReader::new(io::BufReader::new(file).take(blob.size + 1));
                io::copy(&mut from, &mut out).map_err(io_err("read", &path))?;
                let (_, actual, size) = from.into_parts();
                progress(size);
                if actual != blob.digest || size != blob.size {
                    return Err(CacheError::DamagedBlob {
                        path,
                        actual,
                        size,
                        expected_size: blob.size,
                    }
                    .into());
                }
            }
        }
        out.commit_expect(&blob.digest)?;
        Ok(())
    }
}

/// Reads a cache manifest, or an image with an inline cache, from its
/// registry.
fn load_registry(registry: &Registry, reference: &Reference) -> Result<Loaded, ImageError> {
    let name = reference.to_string();
    let fetched = registry.get_manifest(reference)?;
    if !media_type::is_manifest(&fetched.media_type) {
        return Err(CacheError::Corrupt {
            cache: name,
            reason: format!(
                "it is a {:?}, not a manifest (name one platform's image by digest)",
                fetched.media_type
            ),
        }
        .into());
    }
    parse(&name, &fetched.bytes, |config| {
        let mut bytes = Vec::new();
        registry.get_blob(reference, config, &mut bytes, &|_| {})?;
        Ok(bytes)
    })
}

/// Reads the `latest` cache manifest of the OCI layout at `dir` (or its
/// only manifest).
fn load_local(dir: &Path) -> Result<Loaded, ImageError> {
    let name = dir.display().to_string();
    let index_path = dir.join("index.json");
    let index_bytes = fs::read(&index_path).map_err(io_err("read", &index_path))?;
    let index: Index = serde_json::from_slice(&index_bytes).map_err(|source| CacheError::Json {
        cache: name.clone(),
        what: "index.json",
        source,
    })?;
    let manifest = match index.manifests.iter().find(|d| is_latest(d)) {
        Some(d) => d,
        None if index.manifests.len() == 1 => &index.manifests[0],
        None => {
            return Err(CacheError::Corrupt {
                cache: name,
                reason: format!("its index.json names no manifest {LOCAL_REF_NAME:?}"),
            }
            .into())
        }
    };
    let manifest_bytes = read_local_blob(dir, manifest, MAX_MANIFEST_SIZE)?;
    parse(&name, &manifest_bytes, |config| {
        read_local_blob(dir, config, MAX_CONFIG)
    })
}

/// A small blob of the layout at `dir`, read whole and verified.
fn read_local_blob(dir: &Path, blob: &Descriptor, limit: u64) -> Result<Vec<u8>, ImageError> {
    let path = layout_blob(dir, &blob.digest);
    let file = fs::File::open(&path).map_err(io_err("open", &path))?;
    let mut bytes = Vec::new();
    file.take(limit.min(blob.size) + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", &path))?;
    let actual = Digest::of(&bytes);
    if actual != blob.digest || bytes.len() as u64 != blob.size {
        return Err(CacheError::DamagedBlob {
            path,
            actual,
            size: bytes.len() as u64,
            expected_size: blob.size,
        }
        .into());
    }
    Ok(bytes)
}

/// Reads a manifest: a cache's (its config is the cache), or an image's
/// (its config holds an inline cache); `read_config` fetches the config
/// blob, verified.
fn parse(
    name: &str,
    manifest_bytes: &[u8],
    read_config: impl FnOnce(&Descriptor) -> Result<Vec<u8>, ImageError>,
) -> Result<Loaded, ImageError> {
    let corrupt = |reason: String| CacheError::Corrupt {
        cache: name.to_string(),
        reason,
    };
    let json = |what: &'static str| {
        move |source| CacheError::Json {
            cache: name.to_string(),
            what,
            source,
        }
    };
    let manifest: Manifest = serde_json::from_slice(manifest_bytes).map_err(json("manifest"))?;
    if manifest.config.size > MAX_CONFIG {
        return Err(corrupt(format!("its config is {} bytes", manifest.config.size)).into());
    }
    for layer in &manifest.layers {
        if Compression::from_media_type(&layer.media_type).is_none() {
            return Err(corrupt(format!(
                "layer {} has media type {:?}, which is no layer's",
                layer.digest, layer.media_type
            ))
            .into());
        }
    }
    let config_type = manifest.config.media_type.as_str();
    // The diff IDs an image config lists, which an inline cache must agree with.
    let (config, image_diff_ids): (CacheConfig, Option<Vec<String>>) =
        if config_type == CACHE_CONFIG_MEDIA_TYPE {
            let bytes = read_config(&manifest.config)?;
            (
                serde_json::from_slice(&bytes).map_err(json("config"))?,
                None,
            )
        } else if matches!(
            config_type,
            media_type::OCI_CONFIG | media_type::DOCKER_CONFIG
        ) {
            let bytes = read_config(&manifest.config)?;
            let mut image: ImageConfig =
                serde_json::from_slice(&bytes).map_err(json("image config"))?;
            let inline =
                image
                    .other
                    .remove(INLINE_CACHE_KEY)
                    .ok_or_else(|| CacheError::NoInlineCache {
                        image: name.to_string(),
                    })?;
            let config = serde_json::from_value(inline).map_err(json("inline cache"))?;
            (config, Some(image.rootfs.diff_ids))
        } else {
            return Err(corrupt(format!(
                "its config has media type {config_type:?}, neither a cache's nor an image's"
            ))
            .into());
        };
    if config.version != CONFIG_VERSION {
        return Err(corrupt(format!(
            "it is version {} (this estiba reads {CONFIG_VERSION})",
            config.version
        ))
        .into());
    }
    let mut entries = Vec::with_capacity(config.entries.len());
    for e in config.entries {
        let layer = match (e.layer, e.diff_id) {
            (None, _) => None,
            (Some(i), Some(diff_id)) => {
                let descriptor = manifest.layers.get(i).ok_or_else(|| {
                    corrupt(format!(
                        "entry {} names layer {i} of {}",
                        e.key,
                        manifest.layers.len()
                    ))
                })?;
                if let Some(listed) = &image_diff_ids {
                    if listed.get(i).map(String::as_str) != Some(diff_id.to_string().as_str()) {
                        return Err(corrupt(format!(
                            "entry {} says layer {i} is {diff_id}, the image config disagrees",
                            e.key
                        ))
                        .into());
                    }
                }
                Some(Layer {
                    descriptor: descriptor.clone(),
                    diff_id,
                })
            }
            (Some(i), None) => {
                return Err(
                    corrupt(format!("entry {} names layer {i} but no diff ID", e.key)).into(),
                )
            }
        };
        entries.push((
            e.key,
            CacheHit {
                layer,
                created: e.created,
            },
        ));
    }
    Ok(Loaded {
        entries,
        layers: manifest.layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> Layer {
        Layer::uncompressed(Digest::of(&[n]), 1)
    }

    fn entry(key: u8, layer_of: Option<u8>) -> CacheEntry {
        CacheEntry {
            key: Digest::of(&[100 + key]),
            layer: layer_of.map(layer),
            created: 1_700_000_000 + i64::from(key),
        }
    }

    #[test]
    fn a_remote_cache_is_shared_by_the_solver_threads() {
        fn sync<T: Sync + Send>() {}
        sync::<RemoteCache<'_>>();
    }

    #[test]
    fn store_records_become_entries_and_hits_become_records() {
        let gz = Descriptor::new(media_type::OCI_LAYER_GZIP, Digest::of(b"gz"), 2);
        let record = CacheRecord {
            layer: Some(gz.clone()),
            diff_id: Some(Digest::of(b"tar")),
            created: 5,
        };
        let entry = CacheEntry::from_record(Digest::of(b"k"), &record).expect("an entry");
        let hit = CacheHit {
            layer: entry.layer.clone(),
            created: entry.created,
        };
        assert_eq!(hit.record(), record);
        let no_layer = CacheRecord {
            layer: None,
            diff_id: None,
            created: 1,
        };
        let entry = CacheEntry::from_record(Digest::of(b"k"), &no_layer).expect("an entry");
        assert_eq!(entry.layer, None);
        // A compressed layer without its diff ID would read as "no layer".
        let unknown = CacheRecord {
            layer: Some(gz),
            diff_id: None,
            created: 1,
        };
        assert_eq!(CacheEntry::from_record(Digest::of(b"k"), &unknown), None);
        let tar = CacheRecord {
            layer: Some(Layer::uncompressed(Digest::of(b"tar"), 3).descriptor),
            diff_id: None,
            created: 1,
        };
        let entry = CacheEntry::from_record(Digest::of(b"k"), &tar).expect("an entry");
        assert_eq!(entry.layer.map(|l| l.diff_id), Some(Digest::of(b"tar")));
    }

    #[test]
    fn inline_metadata_indexes_the_image_layers_and_is_sorted() {
        let entries = [
            entry(1, Some(2)),
            entry(2, None),
            entry(3, Some(9)),
            entry(0, Some(1)),
        ];
        let image = [layer(1), layer(2)];
        let value = inline_metadata(&entries, &image);
        let config: CacheConfig = serde_json::from_value(value.clone()).expect("reads back");
        assert_eq!(config.version, 1);
        let keys: Vec<Digest> = config.entries.iter().map(|e| e.key).collect();
        let mut want = vec![entries[0].key, entries[1].key, entries[3].key];
        want.sort();
        assert_eq!(
            keys, want,
            "sorted, and the entry of a layer the image lacks is left out"
        );
        let by_key = |k: Digest| config.entries.iter().find(|e| e.key == k).expect("entry");
        assert_eq!(by_key(entries[0].key).layer, Some(1));
        assert_eq!(by_key(entries[3].key).layer, Some(0));
        assert_eq!(by_key(entries[1].key).layer, None);
        assert_eq!(
            value["entries"][0]["diffID"],
            serde_json::json!(layer(1).diff_id.to_string())
        );
        // The same entries in another order give the same JSON.
        let reversed: Vec<CacheEntry> = entries.iter().rev().cloned().collect();
        assert_eq!(inline_metadata(&reversed, &image), value);
    }
}
