//! The store every estiba command works on: an OCI image layout on disk that
//! `skopeo inspect oci:ROOT:NAME` and `umoci` read as it is, plus estiba's
//! own versioned state beside it.
//!
//! ```text
//! ROOT/                       0710; the directories below that estiba makes are 0700
//!   oci-layout                {"imageLayoutVersion":"1.0.0"}
//!   index.json                OCI image index; tags are manifests annotated with
//!                             org.opencontainers.image.ref.name
//!   blobs/sha256/<hex>        content-addressed blobs
//!   CACHEDIR.TAG              tells backup tools this is a cache
//!   estiba/
//!     lock                    flock: shared while building or reading, exclusive for GC
//!     index.lock              flock: serialises read-modify-write of index.json
//!     cache-v1/<hex>          step cache: one JSON CacheRecord per cache key
//!     snapshots-v1/<hex>/     unpacked layer per diff id: rootfs/ + a `complete` marker
//!     compressed-v1/<hex>.<c> the blob holding layer <hex> (a diff id) compressed with
//!                             <c> (gzip, zstd; `gzip-9`: a level not the default): one
//!                             JSON descriptor, written after its blob
//!     mounts-v1/<hex>/        one `RUN --mount=type=cache` directory per identity
//!     statcache-v1/<hex>      one build context's stat cache, by the digest of its path
//!     tmp/                    temp files and directories, renamed into place when done;
//!                             each names and is locked by the process that made it
//! ```
//!
//! Nothing is ever written in place: blobs, `index.json`, cache records,
//! compressed-layer records and snapshots are built under `estiba/tmp` and
//! renamed, so a crash or a concurrent reader never sees half of anything
//! under its final name.
//! Every path above is named here, by a `Store` method, and
//! [`Store::prune`] knows all of them.

mod blobs;
mod compressed;
mod direct;
mod direct_read;
mod fsck;
mod fsutil;
mod gc;
mod index;
mod lock;
mod records;
mod snapshots;
mod tmp;
mod usage;

pub use blobs::BlobWriter;
pub use direct::DirectWriter;
pub use direct_read::{BlobReader, LARGE_CHUNK};
pub use fsck::{BlobFault, FsckReport, Problem, RepairReport, SnapshotFault};
pub use fsutil::remove_dir_all_force;
pub use gc::{PruneOptions, PruneReport};
pub use lock::StoreLock;
pub use snapshots::SnapshotBuilder;
pub use tmp::TempDir;
pub use usage::{Part as UsagePart, Usage};

use crate::oci::{media_type, Descriptor, REF_NAME_ANNOTATION};
use crate::Digest;
use fsutil::io_err;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// The only OCI image layout version this store reads and writes.
pub const LAYOUT_VERSION: &str = "1.0.0";

/// The store root's mode: its owner's, and a way through (no listing) for
/// its group, as docker's `/var/lib/docker`.
const ROOT_MODE: u32 = 0o710;

/// The mode of every directory the store makes under its root: its
/// owner's alone, as docker's layer directories.
const PRIVATE_MODE: u32 = 0o700;

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by estiba.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

/// What the step cache remembers about one step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CacheRecord {
    /// The layer blob the step produced; `None` when it made no layer.
    pub layer: Option<Descriptor>,
    /// The uncompressed layer's digest, which names its snapshot.
    pub diff_id: Option<Digest>,
    /// When the record was written, in seconds since the Unix epoch.
    pub created: i64,
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system operation on `path` failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done, e.g. "read".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A rename failed.
    #[error("could not rename {} to {}", from.display(), to.display())]
    Rename {
        /// The source.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The directory holds an OCI layout of a version this store does not know.
    #[error("not an estiba store: {}: oci-layout version {version}", path.display())]
    LayoutVersion {
        /// The store root.
        path: PathBuf,
        /// The version found.
        version: String,
    },
    /// A JSON file of the store does not parse.
    #[error("invalid JSON in {}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A value could not be encoded as JSON.
    #[error("could not encode {what} as JSON")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A blob's content does not hash to its name.
    #[error("corrupt blob {digest}: content hashes to {actual}")]
    CorruptBlob {
        /// The blob's name.
        digest: Digest,
        /// What its content hashes to.
        actual: Digest,
    },
    /// Content written with [`BlobWriter::commit_expect`] is not what was expected.
    #[error("blob content hashes to {actual}, expected {expected}")]
    DigestMismatch {
        /// The digest the caller expected.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
    /// The blob is not in the store.
    #[error("blob {digest} is not in the store")]
    MissingBlob {
        /// The missing blob.
        digest: Digest,
    },
    /// A tag name the index cannot hold.
    #[error("invalid tag name {0:?}: must be non-empty, without control characters")]
    InvalidTagName(String),
    /// The `index.json` entry for a tag is not a descriptor this store reads.
    #[error("invalid entry for tag {name:?} in {}", path.display())]
    InvalidTagEntry {
        /// The tag.
        name: String,
        /// `index.json`.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest or index reachable from a tag does not parse, so garbage
    /// collection cannot know what it keeps alive and stops.
    #[error("invalid manifest {digest}: cannot tell which blobs it references")]
    InvalidManifest {
        /// The manifest blob.
        digest: Digest,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// [`Store::record_compressed`] was given a blob that is not a gzip or
    /// zstd layer.
    #[error("not a compressed layer: media type {media_type:?}")]
    NotCompressedLayer {
        /// The blob's media type.
        media_type: String,
    },
    /// [`Store::prune`] was called without the exclusive lock.
    #[error("pruning needs the store's exclusive lock: take Store::lock_exclusive first")]
    NotLocked,
    /// A tree to remove has a file system mounted inside it.
    #[error("refusing to remove {}: a file system is mounted at {}", path.display(), mount.display())]
    MountedInside {
        /// The tree.
        path: PathBuf,
        /// The mount point.
        mount: PathBuf,
    },
}

/// The store: an OCI image layout plus estiba's cache, snapshots and locks.
///
/// A `Store` is a handle (a path and some bookkeeping); clones share the
/// bookkeeping. Every operation is safe against other processes using the
/// same root at the same time, under the locking rules in [`StoreLock`].
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Exclusive locks currently held through this handle or its clones.
    exclusive_held: Arc<AtomicUsize>,
}

impl Store {
    /// Opens the store at `root`, creating the layout (and `root` itself)
    /// where missing. Refuses a directory whose `oci-layout` has another
    /// version.
    ///
    /// The store is private to its owner, as `/var/lib/docker` is, since
    /// unpacked snapshots hold images' setuid files and device nodes: the
    /// root is 0710, `blobs/` and `estiba/` (and the directories the store
    /// makes in them) 0700. A store made with looser modes by an older
    /// estiba is tightened here; only these top-level directories are, as
    /// nothing below them can be reached past them.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        fsutil::create_dir_mode(root, ROOT_MODE)?;
        let root = fs::canonicalize(root).map_err(io_err("resolve", root))?;
        let store = Store {
            root,
            exclusive_held: Arc::new(AtomicUsize::new(0)),
        };
        store.check_layout_version()?;
        fsutil::private_dir(&store.root, ROOT_MODE)?;
        for dir in [
            store.root.join("blobs"),
            store.blobs_dir(),
            store.estiba_dir(),
            store.cache_dir(),
            store.snapshots_dir(),
            store.tmp_dir(),
        ] {
            fsutil::private_dir(&dir, PRIVATE_MODE)?;
        }
        fsutil::spread_subdirs(&store.tmp_dir());
        store.with_index_lock(|| {
            let layout = store.root.join("oci-layout");
            if !layout.exists() {
                let body = serde_json::json!({ "imageLayoutVersion": LAYOUT_VERSION });
                fsutil::atomic_write(&store.tmp_dir(), &layout, body.to_string().as_bytes(), true)?;
            }
            if !store.index_path().exists() {
                store.write_index(&index::IndexFile::default())?;
            }
            Ok(())
        })?;
        store.check_layout_version()?;
        let tag = store.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            fsutil::atomic_write(&store.tmp_dir(), &tag, CACHEDIR_TAG.as_bytes(), false)?;
        }
        Ok(store)
    }

    /// The store's root directory (absolute, symbolic links resolved).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Errors if `oci-layout` exists with another version.
    fn check_layout_version(&self) -> Result<(), StoreError> {
        let path = self.root.join("oci-layout");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
                path: path.clone(),
                source,
            })?;
        match value.get("imageLayoutVersion") {
            Some(serde_json::Value::String(v)) if v == LAYOUT_VERSION => Ok(()),
            Some(serde_json::Value::String(v)) => Err(StoreError::LayoutVersion {
                path: self.root.clone(),
                version: v.clone(),
            }),
            other => Err(StoreError::LayoutVersion {
                path: self.root.clone(),
                version: other.map_or_else(|| "missing".to_string(), |v| v.to_string()),
            }),
        }
    }

    fn estiba_dir(&self) -> PathBuf {
        self.root.join("estiba")
    }
    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }
    fn cache_dir(&self) -> PathBuf {
        self.estiba_dir().join("cache-v1")
    }
    fn snapshots_dir(&self) -> PathBuf {
        self.estiba_dir().join("snapshots-v1")
    }
    /// `estiba/tmp`: scratch space on the store's file system, so what is
    /// built there can be renamed into the store. Entries are made only by
    /// [`Store::temp_dir`] and the store's own writers (see the `tmp`
    /// module), never by hand.
    fn tmp_dir(&self) -> PathBuf {
        self.estiba_dir().join("tmp")
    }
    fn mount_caches_dir(&self) -> PathBuf {
        self.estiba_dir().join("mounts-v1")
    }
    fn stat_caches_dir(&self) -> PathBuf {
        self.estiba_dir().join("statcache-v1")
    }
    /// The directory of the `RUN --mount=type=cache` whose identity (id,
    /// owner, mode: the builder decides) hashes to `id`. It may not exist
    /// yet; it outlives builds until `prune --all`.
    pub fn mount_cache_dir(&self, id: &Digest) -> PathBuf {
        self.mount_caches_dir().join(id.hex())
    }
    /// The stat cache file of the build context whose (canonical) path
    /// hashes to `context`. It may not exist yet; its directory is created
    /// by whoever writes it; it stays until `prune --all`.
    pub fn stat_cache_file(&self, context: &Digest) -> PathBuf {
        self.stat_caches_dir().join(context.hex())
    }
    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_lowercase_and_name_things() {
        let e = StoreError::CorruptBlob {
            digest: Digest::of(b"a"),
            actual: Digest::of(b"b"),
        };
        assert_eq!(
            e.to_string(),
            format!(
                "corrupt blob {}: content hashes to {}",
                Digest::of(b"a"),
                Digest::of(b"b")
            )
        );
        let e = StoreError::LayoutVersion {
            path: "/s".into(),
            version: "2.0.0".into(),
        };
        assert_eq!(
            e.to_string(),
            "not an estiba store: /s: oci-layout version 2.0.0"
        );
    }
}
