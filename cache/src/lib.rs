//! estiba's content-addressed storage: digests, and the [`Store`] every
//! command works on (an OCI image layout on disk, plus the step cache index
//! and unpacked snapshots beside it).
//!
//! Everything stored is named by the sha256 of its bytes, so equal content is
//! stored once and a name can always be checked against what it names.
#![deny(missing_docs)]

mod digest;
pub mod oci;
mod store;

pub use digest::{BackgroundDigestReader, Digest, DigestError, DigestReader, Hasher};
pub use oci::{media_type, Codec, Compression, Descriptor, REF_NAME_ANNOTATION};
pub use store::{
    remove_dir_all_force, BlobFault, BlobReader, BlobWriter, CacheRecord, DirectWriter, FsckReport,
    Problem, PruneOptions, PruneReport, RepairReport, SnapshotBuilder, SnapshotFault, Store,
    StoreError, StoreLock, TempDir, Usage, UsagePart, LARGE_CHUNK, LAYOUT_VERSION,
};
