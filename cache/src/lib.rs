//! estiba's content-addressed storage: digests, and (as the build grows) the
//! OCI image layout store, the step cache index and snapshots.
//!
//! Everything stored is named by the sha256 of its bytes, so equal content is
//! stored once and a name can always be checked against what it names.
#![deny(missing_docs)]

mod digest;

pub use digest::{Digest, DigestError, Hasher};
