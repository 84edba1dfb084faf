//! Checking the store (`estiba fsck`): every blob against its digest,
//! everything that names a blob against the blobs there are, and snapshots
//! against their diff ids; and repairing it by dropping what is broken, so
//! the next build makes it again. Comparing a snapshot's tree with its
//! layer needs a tar reader: the report names each snapshot's layer
//! ([`FsckReport::layers`]) for a caller that has one (`estiba fsck --full`).
//!
//! What is checked:
//!
//! | what                  | how                                                        |
//! |-----------------------|------------------------------------------------------------|
//! | each blob             | its content is re-hashed and must give its name            |
//! | `index.json`          | parses; each entry's manifest (and an index's manifests that are here) parses, and its config and layers are here and intact |
//! | each cache record     | parses; its layer blob is here and intact                  |
//! | each compressed-layer record | named by a diff id and a compression (and level); parses; its blob is here and intact |
//! | each snapshot         | named by a diff id; its completion marker holds that diff id and this boot's id; its `rootfs/` is there |
//!
//! What nothing references is not a problem (that is [`Store::prune`]'s
//! job), and neither is a manifest an index lists but that was never
//! stored (a pulled image keeps only its own platform's).

use super::compressed::{parse_compressed_name, parse_record};
use super::fsutil::io_err;
use super::gc::{desc_digest, desc_media_type, entries, hex_digest, Manifest, Refs};
use super::index::ref_name;
use super::snapshots::{read_marker, MARKER, ROOTFS};
use super::tmp::Sweep;
use super::{CacheRecord, Store, StoreError};
use crate::oci::Codec;
use crate::Digest;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;

/// What [`Store::fsck`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Blobs re-hashed.
    pub blobs_checked: usize,
    /// Entries of `index.json` followed.
    pub images_checked: usize,
    /// Cache records read.
    pub records_checked: usize,
    /// Compressed-layer records read.
    pub compressed_checked: usize,
    /// Snapshots looked at.
    pub snapshots_checked: usize,
    /// Everything wrong, in the order found.
    pub problems: Vec<Problem>,
    /// For each diff id a cache record or an image names, an intact layer
    /// blob with that diff id: what a snapshot can be checked against
    /// (by unpacking it again, which needs a tar reader this crate does
    /// not have).
    pub layers: BTreeMap<Digest, Digest>,
}

impl FsckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What is wrong with a blob something refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobFault {
    /// Not in the store.
    Missing,
    /// In the store, but its content does not hash to its name (or cannot
    /// be read).
    Damaged,
    /// A manifest or index that does not parse.
    Unparseable,
}

impl fmt::Display for BlobFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlobFault::Missing => "is missing",
            BlobFault::Damaged => "is damaged",
            BlobFault::Unparseable => "does not parse",
        })
    }
}

/// What is wrong with a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotFault {
    /// Its directory name is not the hex of a diff id.
    BadName,
    /// It has no completion marker: it was never finished.
    Incomplete,
    /// Its marker records another diff id (or none).
    MarkerMismatch {
        /// What the marker says.
        found: String,
    },
    /// It was made before the machine last started (its marker names
    /// another boot, or none): what was not written back before a crash
    /// may be missing, so it is not used; the next build makes it again.
    OtherBoot {
        /// The boot its marker names.
        boot_id: Option<String>,
    },
    /// The marker is there but the tree is not.
    NoTree,
    /// The tree is not what unpacking its layer gives (found by a caller
    /// that can unpack layers: `estiba fsck --full`).
    DiffersFromLayer {
        /// The layer blob it was compared with.
        layer: Digest,
        /// The first difference.
        detail: String,
    },
}

/// One thing wrong in the store; its `Display` is one line naming it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A blob whose content does not hash to its name.
    CorruptBlob {
        /// The blob.
        digest: Digest,
        /// What its content hashes to.
        actual: Digest,
    },
    /// A blob that cannot be read.
    UnreadableBlob {
        /// The blob.
        digest: Digest,
        /// Why.
        error: String,
    },
    /// `index.json` does not parse: no tag can be read.
    InvalidIndex {
        /// The parser's complaint.
        error: String,
    },
    /// An image `index.json` lists (by tag, or untagged) that is not whole.
    BrokenImage {
        /// The tag, if the entry has one.
        tag: Option<String>,
        /// The manifest (or index) the entry points at.
        manifest: Digest,
        /// What the broken blob is to the image: `manifest`, `config`, `layer`.
        role: &'static str,
        /// The broken blob.
        blob: Digest,
        /// What is wrong with it.
        fault: BlobFault,
    },
    /// A cache record that does not parse (or is not named by a key).
    InvalidRecord {
        /// Its file name.
        name: String,
    },
    /// A cache record whose layer blob is missing or damaged.
    BrokenRecord {
        /// The cache key.
        key: Digest,
        /// The layer blob.
        blob: Digest,
        /// What is wrong with it.
        fault: BlobFault,
    },
    /// A compressed-layer record that does not parse, or is not named by
    /// a diff id and a compression.
    InvalidCompressedRecord {
        /// Its file name.
        name: String,
    },
    /// A compressed-layer record whose blob is missing or damaged.
    BrokenCompressedRecord {
        /// The layer's diff id.
        diff_id: Digest,
        /// The compression and level the record is for.
        codec: Codec,
        /// The compressed blob.
        blob: Digest,
        /// What is wrong with it.
        fault: BlobFault,
    },
    /// A snapshot that is not what its name says.
    BrokenSnapshot {
        /// Its directory name.
        name: String,
        /// What is wrong with it.
        fault: SnapshotFault,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CorruptBlob { digest, actual } => {
                write!(f, "blob {digest}: content hashes to {actual}")
            }
            Problem::UnreadableBlob { digest, error } => {
                write!(f, "blob {digest}: cannot be read: {error}")
            }
            Problem::InvalidIndex { error } => write!(f, "index.json: does not parse: {error}"),
            Problem::BrokenImage {
                tag,
                manifest,
                role,
                blob,
                fault,
            } => {
                match tag {
                    Some(tag) => write!(f, "tag {tag}: ")?,
                    None => write!(f, "untagged image {manifest}: ")?,
                }
                write!(f, "{role} {blob} {fault}")
            }
            Problem::InvalidRecord { name } => write!(f, "cache record {name}: does not parse"),
            Problem::BrokenRecord { key, blob, fault } => {
                write!(f, "cache record {}: layer {blob} {fault}", key.hex())
            }
            Problem::InvalidCompressedRecord { name } => {
                write!(f, "compressed layer record {name}: does not parse")
            }
            Problem::BrokenCompressedRecord {
                diff_id,
                codec,
                blob,
                fault,
            } => write!(
                f,
                "{codec} form of layer {}: blob {blob} {fault}",
                diff_id.hex()
            ),
            Problem::BrokenSnapshot { name, fault } => {
                write!(f, "snapshot {name}: ")?;
                match fault {
                    SnapshotFault::BadName => f.write_str("not named by a diff id"),
                    SnapshotFault::Incomplete => f.write_str("no completion marker"),
                    SnapshotFault::MarkerMismatch { found } => {
                        write!(f, "completion marker names {found:?}")
                    }
                    SnapshotFault::OtherBoot { boot_id } => write!(
                        f,
                        "made before the machine last started (boot {}): not used, made again when needed",
                        boot_id.as_deref().unwrap_or("unknown")
                    ),
                    SnapshotFault::NoTree => f.write_str("rootfs is missing"),
                    SnapshotFault::DiffersFromLayer { layer, detail } => {
                        write!(f, "differs from layer {layer}: {detail}")
                    }
                }
            }
        }
    }
}

/// What [`Store::repair`] dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Blobs deleted.
    pub blobs_removed: usize,
    /// Entries of `index.json` deleted (all of them, if it did not parse).
    pub index_entries_removed: usize,
    /// Cache records deleted.
    pub records_removed: usize,
    /// Compressed-layer records deleted.
    pub compressed_records_removed: usize,
    /// Snapshots deleted.
    pub snapshots_removed: usize,
}

impl Store {
    /// Checks the whole store (see the module docs); reading every blob, so
    /// it takes as long as reading the store once. Hold at least the shared
    /// lock. Errors only when the store cannot be read at all; everything
    /// wrong with its content is a [`Problem`] in the report.
    pub fn fsck(&self) -> Result<FsckReport, StoreError> {
        let mut report = FsckReport::default();
        let damaged = self.check_blobs(&mut report)?;
        let state = |d: &Digest| {
            if damaged.contains(d) {
                Some(BlobFault::Damaged)
            } else if !self.has_blob(d) {
                Some(BlobFault::Missing)
            } else {
                None
            }
        };
        self.check_images(&state, &mut report)?;
        self.check_records(&state, &mut report)?;
        self.check_compressed(&state, &mut report)?;
        self.check_snapshots(&mut report)?;
        Ok(report)
    }

    /// Drops everything `report` (from [`Store::fsck`] under the same lock)
    /// found broken: damaged blobs, the tags, cache records and
    /// compressed-layer records that need them, broken snapshots; an `index.json` that does not parse is
    /// replaced by an empty one. Needs [`Store::lock_exclusive`], else
    /// [`StoreError::NotLocked`]. What the dropped things alone kept alive
    /// goes with the next [`Store::prune`].
    pub fn repair(&self, report: &FsckReport) -> Result<RepairReport, StoreError> {
        if !self.holds_exclusive() {
            return Err(StoreError::NotLocked);
        }
        let mut done = RepairReport::default();
        let mut entries = HashSet::new();
        let mut reset_index = false;
        for problem in &report.problems {
            match problem {
                Problem::CorruptBlob { digest, .. } | Problem::UnreadableBlob { digest, .. } => {
                    if remove_file(&self.blob_path(digest))? {
                        done.blobs_removed += 1;
                    }
                }
                Problem::InvalidIndex { .. } => reset_index = true,
                Problem::BrokenImage { tag, manifest, .. } => {
                    entries.insert((tag.clone(), *manifest));
                }
                Problem::InvalidRecord { name } => {
                    if remove_file(&self.cache_dir().join(name))? {
                        done.records_removed += 1;
                    }
                }
                Problem::BrokenRecord { key, .. } => {
                    if self.cache_remove(key)? {
                        done.records_removed += 1;
                    }
                }
                Problem::InvalidCompressedRecord { name } => {
                    if remove_file(&self.compressed_dir().join(name))? {
                        done.compressed_records_removed += 1;
                    }
                }
                Problem::BrokenCompressedRecord { diff_id, codec, .. } => {
                    if remove_file(&self.compressed_path(diff_id, *codec))? {
                        done.compressed_records_removed += 1;
                    }
                }
                Problem::BrokenSnapshot { name, .. } => {
                    let path = self.snapshots_dir().join(name);
                    if self.remove_snapshot_dir(&path)?.is_some() {
                        done.snapshots_removed += 1;
                    }
                }
            }
        }
        if reset_index || !entries.is_empty() {
            self.with_index_lock(|| {
                let mut index = if reset_index {
                    super::index::IndexFile::default()
                } else {
                    self.read_index()?
                };
                let before = index.manifests.len();
                index.manifests.retain(|e| {
                    desc_digest(e)
                        .is_none_or(|d| !entries.contains(&(ref_name(e).map(str::to_string), d)))
                });
                done.index_entries_removed = before - index.manifests.len();
                self.write_index(&index)
            })?;
        }
        // Leftovers of repairs interrupted before.
        self.sweep_tmp(Sweep::DeadOwners, &mut super::gc::PruneReport::default())?;
        Ok(done)
    }

    /// Re-hashes every blob; returns the damaged ones.
    fn check_blobs(&self, report: &mut FsckReport) -> Result<HashSet<Digest>, StoreError> {
        let mut damaged = HashSet::new();
        for (name, _) in sorted_entries(&self.blobs_dir())? {
            // Names that are not digests are not ours to judge.
            let Some(digest) = hex_digest(&name) else {
                continue;
            };
            report.blobs_checked += 1;
            let problem = match self.verify_blob(&digest) {
                Ok(()) => continue,
                // Removed meanwhile: not damage.
                Err(StoreError::MissingBlob { .. }) => continue,
                Err(StoreError::CorruptBlob { digest, actual }) => {
                    Problem::CorruptBlob { digest, actual }
                }
                Err(StoreError::Io { source, .. }) => Problem::UnreadableBlob {
                    digest,
                    error: source.to_string(),
                },
                Err(e) => return Err(e),
            };
            damaged.insert(digest);
            report.problems.push(problem);
        }
        Ok(damaged)
    }

    /// Follows every entry of `index.json` to its config and layers.
    fn check_images(
        &self,
        state: &dyn Fn(&Digest) -> Option<BlobFault>,
        report: &mut FsckReport,
    ) -> Result<(), StoreError> {
        let index = match self.read_index() {
            Ok(index) => index,
            Err(StoreError::Json { source, .. }) => {
                report.problems.push(Problem::InvalidIndex {
                    error: source.to_string(),
                });
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for entry in &index.manifests {
            // Entries that are not sha256 descriptors are another tool's.
            let Some(manifest) = desc_digest(entry) else {
                continue;
            };
            report.images_checked += 1;
            let tag = ref_name(entry).map(str::to_string);
            let broken = |role, blob, fault| Problem::BrokenImage {
                tag: tag.clone(),
                manifest,
                role,
                blob,
                fault,
            };
            let mut queue = vec![(manifest, desc_media_type(entry).map(str::to_string), true)];
            let mut seen = HashSet::new();
            while let Some((digest, media_type, required)) = queue.pop() {
                if !seen.insert(digest) {
                    continue;
                }
                match state(&digest) {
                    None => {}
                    // An index may list manifests that were never stored.
                    Some(BlobFault::Missing) if !required => continue,
                    Some(fault) => {
                        report.problems.push(broken("manifest", digest, fault));
                        break;
                    }
                }
                let doc = match self.read_manifest(&digest, media_type.as_deref()) {
                    Ok(Manifest::Doc(doc)) => doc,
                    Ok(Manifest::Other) => continue,
                    Ok(Manifest::Unparseable(_)) => {
                        report
                            .problems
                            .push(broken("manifest", digest, BlobFault::Unparseable));
                        break;
                    }
                    Err(StoreError::MissingBlob { .. } | StoreError::CorruptBlob { .. }) => {
                        report
                            .problems
                            .push(broken("manifest", digest, BlobFault::Damaged));
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let refs = Refs::of(&doc);
                let parts = refs
                    .config
                    .map(|c| ("config", c))
                    .into_iter()
                    .chain(refs.layers.iter().map(|l| ("layer", *l)));
                for (role, blob) in parts {
                    if let Some(fault) = state(&blob) {
                        report.problems.push(broken(role, blob, fault));
                    }
                }
                let diff_ids = refs
                    .config
                    .filter(|c| state(c).is_none())
                    .and_then(|c| self.config_diff_ids(&c));
                if let Some(diff_ids) = diff_ids.filter(|d| d.len() == refs.layers.len()) {
                    for (diff_id, layer) in diff_ids.into_iter().zip(&refs.layers) {
                        if state(layer).is_none() {
                            report.layers.insert(diff_id, *layer);
                        }
                    }
                }
                queue.extend(refs.manifests.into_iter().map(|(d, mt)| (d, mt, false)));
            }
        }
        Ok(())
    }

    /// Every cache record parses and has its layer.
    fn check_records(
        &self,
        state: &dyn Fn(&Digest) -> Option<BlobFault>,
        report: &mut FsckReport,
    ) -> Result<(), StoreError> {
        for (name, path) in sorted_entries(&self.cache_dir())? {
            report.records_checked += 1;
            let record = match fs::read(&path) {
                Ok(bytes) => serde_json::from_slice::<CacheRecord>(&bytes).ok(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read", &path)(e)),
            };
            let (Some(key), Some(record)) = (hex_digest(&name), record) else {
                report.problems.push(Problem::InvalidRecord { name });
                continue;
            };
            if let Some(layer) = &record.layer {
                match state(&layer.digest) {
                    Some(fault) => report.problems.push(Problem::BrokenRecord {
                        key,
                        blob: layer.digest,
                        fault,
                    }),
                    None => {
                        if let Some(diff_id) = record.diff_id {
                            report.layers.insert(diff_id, layer.digest);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every compressed-layer record parses and has its blob.
    fn check_compressed(
        &self,
        state: &dyn Fn(&Digest) -> Option<BlobFault>,
        report: &mut FsckReport,
    ) -> Result<(), StoreError> {
        for (name, path) in sorted_entries(&self.compressed_dir())? {
            report.compressed_checked += 1;
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read", &path)(e)),
            };
            let parsed = parse_compressed_name(&name)
                .and_then(|(diff_id, c)| Some((diff_id, c, parse_record(&bytes, c.compression)?)));
            let Some((diff_id, codec, desc)) = parsed else {
                report
                    .problems
                    .push(Problem::InvalidCompressedRecord { name });
                continue;
            };
            let fault = match state(&desc.digest) {
                None if !self.blob_has_size(&desc.digest, desc.size) => Some(BlobFault::Damaged),
                fault => fault,
            };
            if let Some(fault) = fault {
                report.problems.push(Problem::BrokenCompressedRecord {
                    diff_id,
                    codec,
                    blob: desc.digest,
                    fault,
                });
            }
        }
        Ok(())
    }

    /// Every snapshot is complete and is the diff id it is named by.
    fn check_snapshots(&self, report: &mut FsckReport) -> Result<(), StoreError> {
        for (name, path) in sorted_entries(&self.snapshots_dir())? {
            report.snapshots_checked += 1;
            let fault = match hex_digest(&name) {
                None => Some(SnapshotFault::BadName),
                Some(diff_id) => match read_marker(&path) {
                    Ok(None) => Some(SnapshotFault::Incomplete),
                    Err(e) => return Err(io_err("read", &path.join(MARKER))(e)),
                    Ok(Some(marker)) => {
                        if marker.diff_id != diff_id.to_string() {
                            Some(SnapshotFault::MarkerMismatch {
                                found: marker.diff_id,
                            })
                        } else if !marker.this_boot() {
                            Some(SnapshotFault::OtherBoot {
                                boot_id: marker.boot_id,
                            })
                        } else if !path.join(ROOTFS).is_dir() {
                            Some(SnapshotFault::NoTree)
                        } else {
                            None
                        }
                    }
                },
            };
            if let Some(fault) = fault {
                report
                    .problems
                    .push(Problem::BrokenSnapshot { name, fault });
            }
        }
        Ok(())
    }
}

/// Removes a file; `false` if it was already gone.
fn remove_file(path: &std::path::Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// A directory's entries, sorted by name (so reports read the same twice).
fn sorted_entries(dir: &std::path::Path) -> Result<BTreeSet<(String, PathBuf)>, StoreError> {
    Ok(entries(dir)?.into_iter().collect())
}
