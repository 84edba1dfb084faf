//! Garbage collection: mark what the tags (and, unless told otherwise, the
//! step cache) keep alive, sweep the rest.
//!
//! Roots are every entry of `index.json` (tagged or not). A manifest keeps
//! its config and layers (OCI image manifests and Docker schema 2
//! manifests); an index or a Docker manifest list keeps its manifests,
//! recursively; an image config's `rootfs.diff_ids` keep their snapshots.
//! Each cache record keeps its layer blob and its snapshot. A compressed
//! form of a layer (see the `compressed` module) is derived data: its
//! record keeps its blob while the layer is kept in some form (its blob,
//! named by the diff id, or an image config or cache record naming the diff
//! id). Then the sweep removes unmarked blobs, cache records whose blob is
//! gone, compressed-layer records whose layer or blob is gone, unmarked or
//! incomplete snapshots, and temp entries no live process holds a lock on;
//! with `all`, also every compressed-layer record, the mount caches and
//! stat caches.
//!
//! The caller holds [`Store::lock_exclusive`], so no build is between
//! writing a blob and recording it.

use super::compressed::{parse_compressed_name, parse_record};
use super::fsutil::{self, io_err};
use super::snapshots::is_trusted;
use super::tmp::Sweep;
use super::{media_type, CacheRecord, Store, StoreError};
use crate::Digest;
use serde_json::Value;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

/// Manifests larger than this are not parsed unless their media type says
/// they are manifests (it keeps a mislabelled layer out of memory).
const MAX_UNTYPED_MANIFEST: u64 = 4 << 20;
/// Configs larger than this are not read for their diff ids.
const MAX_CONFIG: u64 = 16 << 20;

/// What [`Store::prune_with`] removes beyond what nothing references.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneOptions {
    /// Drop every cache record, compressed-layer record, snapshot, `RUN
    /// --mount=type=cache` directory and stat cache: only what tags reach
    /// stays.
    pub all: bool,
    /// Also drop cache records created before this time (Unix seconds),
    /// and so whatever only they kept alive.
    pub records_created_before: Option<i64>,
}

/// What a prune removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Blobs deleted.
    pub blobs_removed: usize,
    /// Bytes of file content freed: blobs, records, snapshots and temp files.
    pub bytes_freed: u64,
    /// Step cache records deleted.
    pub cache_records_removed: usize,
    /// Compressed-layer records deleted (their blobs count in
    /// `blobs_removed` when nothing else keeps them).
    pub compressed_records_removed: usize,
    /// Snapshots deleted.
    pub snapshots_removed: usize,
    /// Stale temp files and directories deleted.
    pub tmp_removed: usize,
    /// `RUN --mount=type=cache` directories deleted (with `all`; else only
    /// strays that are not named like one).
    pub mount_caches_removed: usize,
    /// Build contexts' stat caches deleted (with `all`; else only strays
    /// that are not named like one).
    pub stat_caches_removed: usize,
}

/// The mark phase's result.
#[derive(Default)]
struct Live {
    blobs: HashSet<Digest>,
    diff_ids: HashSet<Digest>,
}

pub(super) fn desc_digest(v: &Value) -> Option<Digest> {
    v.get("digest")?.as_str()?.parse().ok()
}

pub(super) fn desc_media_type(v: &Value) -> Option<&str> {
    v.get("mediaType")?.as_str()
}

fn is_manifest_type(mt: &str) -> bool {
    matches!(
        mt,
        media_type::OCI_MANIFEST
            | media_type::OCI_INDEX
            | media_type::DOCKER_MANIFEST
            | media_type::DOCKER_MANIFEST_LIST
    )
}

/// A blob an `index.json` entry (or an index) points at, read as a manifest.
pub(super) enum Manifest {
    /// A JSON document: a manifest, an index or a manifest list.
    Doc(Value),
    /// Said to be a manifest (or of no stated type), but not JSON.
    Unparseable(serde_json::Error),
    /// Something else (a config, a layer) tagged directly.
    Other,
}

/// The blobs a manifest or index names.
pub(super) struct Refs {
    /// An image manifest's config.
    pub(super) config: Option<Digest>,
    /// An image manifest's layers.
    pub(super) layers: Vec<Digest>,
    /// The manifests an index or manifest list lists, with their media types.
    pub(super) manifests: Vec<(Digest, Option<String>)>,
}

impl Refs {
    /// OCI image manifests and Docker schema 2 manifests name a config and
    /// layers; OCI indexes and Docker manifest lists name manifests.
    pub(super) fn of(doc: &Value) -> Refs {
        let list = |key| doc.get(key).and_then(Value::as_array).into_iter().flatten();
        Refs {
            config: doc.get("config").and_then(desc_digest),
            layers: list("layers").filter_map(desc_digest).collect(),
            manifests: list("manifests")
                .filter_map(|m| Some((desc_digest(m)?, desc_media_type(m).map(str::to_string))))
                .collect(),
        }
    }
}

pub(super) fn entries(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    for entry in read {
        let entry = entry.map_err(io_err("read directory", dir))?;
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    Ok(out)
}

pub(super) fn hex_digest(name: &str) -> Option<Digest> {
    format!("sha256:{name}").parse().ok()
}

impl Store {
    /// Reads blob `digest`, which an entry of media type `media_type`
    /// points at, as a manifest. Large blobs not typed as manifests are not
    /// read (it keeps a mislabelled layer out of memory).
    pub(super) fn read_manifest(
        &self,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<Manifest, StoreError> {
        let typed = media_type.is_some_and(is_manifest_type);
        let size = fs::metadata(self.blob_path(digest)).map_or(0, |m| m.len());
        if !typed && size > MAX_UNTYPED_MANIFEST {
            return Ok(Manifest::Other);
        }
        let bytes = self.read_blob(digest)?;
        Ok(match serde_json::from_slice(&bytes) {
            Ok(doc) => Manifest::Doc(doc),
            Err(source) if typed || media_type.is_none() => Manifest::Unparseable(source),
            Err(_) => Manifest::Other,
        })
    }

    /// Collects garbage; see [`PruneOptions::all`]. The caller must hold
    /// [`Store::lock_exclusive`] on this handle (or a clone), else
    /// [`StoreError::NotLocked`].
    pub fn prune(&self, all: bool) -> Result<PruneReport, StoreError> {
        self.prune_with(&PruneOptions {
            all,
            ..PruneOptions::default()
        })
    }

    /// [`Store::prune`] with every option.
    pub fn prune_with(&self, options: &PruneOptions) -> Result<PruneReport, StoreError> {
        if !self.holds_exclusive() {
            return Err(StoreError::NotLocked);
        }
        let mut report = PruneReport::default();
        let mut live = Live::default();
        self.mark_from_index(&mut live)?;
        self.sweep_records(options, &mut live, &mut report)?;
        self.sweep_compressed(options.all, &mut live, &mut report)?;
        self.sweep_blobs(&live, &mut report)?;
        self.sweep_snapshots(options.all, &live, &mut report)?;
        self.sweep_side_caches(options.all, &mut report)?;
        self.sweep_tmp(Sweep::Unowned, &mut report)?;
        Ok(report)
    }

    /// Bytes of file content in the store (each inode counted once).
    pub fn disk_usage(&self) -> Result<u64, StoreError> {
        fsutil::tree_size(&self.root)
    }

    fn mark_from_index(&self, live: &mut Live) -> Result<(), StoreError> {
        let index = self.read_index()?;
        let mut queue: Vec<(Digest, Option<String>)> = index
            .manifests
            .iter()
            .filter_map(|e| Some((desc_digest(e)?, desc_media_type(e).map(str::to_string))))
            .collect();
        while let Some((digest, mt)) = queue.pop() {
            if !live.blobs.insert(digest) {
                continue;
            }
            if !self.has_blob(&digest) {
                // A tag on a manifest that is not here keeps nothing else.
                continue;
            }
            let doc = match self.read_manifest(&digest, mt.as_deref())? {
                Manifest::Doc(doc) => doc,
                Manifest::Unparseable(source) => {
                    return Err(StoreError::InvalidManifest { digest, source })
                }
                Manifest::Other => continue,
            };
            let refs = Refs::of(&doc);
            if let Some(config) = refs.config {
                live.blobs.insert(config);
                self.mark_diff_ids(&config, live);
            }
            live.blobs.extend(refs.layers);
            queue.extend(refs.manifests);
        }
        Ok(())
    }

    /// Marks the diff ids an image config lists; a config that cannot be
    /// read only means its snapshots are not kept.
    fn mark_diff_ids(&self, config: &Digest, live: &mut Live) {
        live.diff_ids
            .extend(self.config_diff_ids(config).into_iter().flatten());
    }

    /// The diff ids (`rootfs.diff_ids`) an image config lists, in order;
    /// `None` for a config that is too large, unreadable or not JSON.
    /// Entries that are not digests are left out.
    pub(super) fn config_diff_ids(&self, config: &Digest) -> Option<Vec<Digest>> {
        let small = fs::metadata(self.blob_path(config)).is_ok_and(|m| m.len() <= MAX_CONFIG);
        if !small {
            return None;
        }
        let doc = serde_json::from_slice::<Value>(&self.read_blob(config).ok()?).ok()?;
        let ids = doc
            .get("rootfs")
            .and_then(|r| r.get("diff_ids"))
            .and_then(Value::as_array);
        Some(
            ids.into_iter()
                .flatten()
                .filter_map(|id| id.as_str().and_then(|s| s.parse().ok()))
                .collect(),
        )
    }

    fn sweep_records(
        &self,
        options: &PruneOptions,
        live: &mut Live,
        report: &mut PruneReport,
    ) -> Result<(), StoreError> {
        for (name, path) in entries(&self.cache_dir())? {
            let record = hex_digest(&name)
                .and_then(|_| fs::read(&path).ok())
                .and_then(|b| serde_json::from_slice::<CacheRecord>(&b).ok());
            let keep = match &record {
                None => false,
                Some(_) if options.all => false,
                Some(r) => {
                    let blob_ok = r.layer.as_ref().is_none_or(|l| self.has_blob(&l.digest));
                    let fresh = options
                        .records_created_before
                        .is_none_or(|cutoff| r.created >= cutoff);
                    blob_ok && fresh
                }
            };
            if keep {
                if let Some(r) = record {
                    if let Some(layer) = r.layer {
                        live.blobs.insert(layer.digest);
                    }
                    if let Some(diff_id) = r.diff_id {
                        live.diff_ids.insert(diff_id);
                    }
                }
                continue;
            }
            report.bytes_freed += fsutil::remove_dir_all_force(&path)?;
            report.cache_records_removed += 1;
        }
        Ok(())
    }

    /// Keeps (and marks the blob of) each compressed-layer record whose
    /// layer is live and whose blob is whole; removes the others, and all
    /// of them with `all`. Runs after the marks of tags and cache records.
    fn sweep_compressed(
        &self,
        all: bool,
        live: &mut Live,
        report: &mut PruneReport,
    ) -> Result<(), StoreError> {
        for (name, path) in entries(&self.compressed_dir())? {
            let blob = parse_compressed_name(&name).and_then(|(diff_id, codec)| {
                let layer_live = live.blobs.contains(&diff_id) || live.diff_ids.contains(&diff_id);
                let desc = parse_record(&fs::read(&path).ok()?, codec.compression)?;
                (!all && layer_live && self.blob_has_size(&desc.digest, desc.size))
                    .then_some(desc.digest)
            });
            match blob {
                Some(blob) => {
                    live.blobs.insert(blob);
                }
                None => {
                    report.bytes_freed += fsutil::remove_dir_all_force(&path)?;
                    report.compressed_records_removed += 1;
                }
            }
        }
        Ok(())
    }

    fn sweep_blobs(&self, live: &Live, report: &mut PruneReport) -> Result<(), StoreError> {
        for (name, path) in entries(&self.blobs_dir())? {
            // Names that are not digests are not ours to judge.
            let Some(digest) = hex_digest(&name) else {
                continue;
            };
            if live.blobs.contains(&digest) {
                continue;
            }
            report.bytes_freed += fsutil::remove_dir_all_force(&path)?;
            report.blobs_removed += 1;
        }
        Ok(())
    }

    fn sweep_snapshots(
        &self,
        all: bool,
        live: &Live,
        report: &mut PruneReport,
    ) -> Result<(), StoreError> {
        for (name, path) in entries(&self.snapshots_dir())? {
            let keep = !all
                && hex_digest(&name)
                    .is_some_and(|d| live.diff_ids.contains(&d) && is_trusted(&path, &d));
            if keep {
                continue;
            }
            if let Some(freed) = self.remove_snapshot_dir(&path)? {
                report.bytes_freed += freed;
                report.snapshots_removed += 1;
            }
        }
        Ok(())
    }

    /// The caches beside the blobs that no record names: `RUN
    /// --mount=type=cache` directories and the stat caches of build
    /// contexts, all dropped with `all`. Otherwise only what is not named
    /// like an entry of theirs goes (a stat cache's temp file an older
    /// estiba, which wrote them beside the cache, left when killed).
    fn sweep_side_caches(&self, all: bool, report: &mut PruneReport) -> Result<(), StoreError> {
        for (name, path) in entries(&self.mount_caches_dir())? {
            if all || hex_digest(&name).is_none() {
                report.bytes_freed += fsutil::remove_dir_all_force(&path)?;
                report.mount_caches_removed += 1;
            }
        }
        for (name, path) in entries(&self.stat_caches_dir())? {
            if all || hex_digest(&name).is_none() {
                report.bytes_freed += fsutil::remove_dir_all_force(&path)?;
                report.stat_caches_removed += 1;
            }
        }
        Ok(())
    }
}
