//! A snapshot checked against its layer (`estiba fsck --full`): the layer
//! blob is unpacked again into a temp dir of the store, the way the solver
//! makes a snapshot, and the two trees are compared entry by entry: type,
//! permission bits, owner, content, link target, device number, xattrs and
//! overlay opaqueness.
//!
//! Times are left out, and so is the root directory itself: a snapshot kept
//! from a RUN step's upper dir has the times the step gave its files, the
//! layer the clamped ones (`SOURCE_DATE_EPOCH`). A whiteout (a 0/0
//! device) is compared by its name alone.

use crate::layer;
use crate::rootfs;
use crate::tree::TreeError;
use estiba_cache::{Digest, Hasher, Store, StoreError};
use std::fs;
use std::io::{self, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a snapshot could not be compared (not: that it differs).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store failed (a temp dir, the layer blob).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The layer blob is not a layer that can be unpacked.
    #[error("cannot unpack layer {layer}")]
    Unpack {
        /// The layer blob.
        layer: Digest,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A tree could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A tree's xattrs could not be read.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// Compares the snapshot tree `snapshot` with layer blob `layer` unpacked;
/// `None` when they agree, else the first difference, as one line.
pub fn compare_snapshot(
    store: &Store,
    snapshot: &Path,
    layer: &Digest,
) -> Result<Option<String>, VerifyError> {
    let unpack_err = |source: Box<dyn std::error::Error + Send + Sync>| VerifyError::Unpack {
        layer: *layer,
        source,
    };
    let scratch = store.temp_dir("fsck")?;
    let fresh = scratch.path().join("rootfs");
    fs::create_dir(&fresh).map_err(|source| VerifyError::Read {
        path: fresh.clone(),
        source,
    })?;
    let blob = store.open_blob(layer)?;
    let reader = crate::compress::decompressing_reader(BufReader::new(blob))
        .map_err(|e| unpack_err(Box::new(e)))?;
    layer::unpack_layer(reader, &fresh, &crate::image::snapshot_unpack_options())
        .map_err(|e| unpack_err(Box::new(e)))?;
    let ours = describe_tree(snapshot)?;
    let theirs = describe_tree(&fresh)?;
    Ok(first_difference(&ours, &theirs))
}

/// One line per entry below `root` (not `root` itself), sorted by path:
/// the path and what is compared about it.
fn describe_tree(root: &Path) -> Result<Vec<(String, String)>, VerifyError> {
    let mut out = Vec::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .follow_links(false);
    for entry in walk {
        let entry = entry.map_err(|e| VerifyError::Read {
            path: e.path().unwrap_or(root).to_path_buf(),
            source: e.into(),
        })?;
        let path = entry.path();
        let read_err = |source| VerifyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = fs::symlink_metadata(path).map_err(read_err)?;
        let kind = meta.file_type();
        let rel = path.strip_prefix(root).unwrap_or(path);
        if kind.is_char_device() && meta.rdev() == 0 {
            // A whiteout: only its name means something to overlayfs. A
            // step's whiteouts are links to one inode overlayfs made, with
            // its own owner and link count.
            out.push((format!("/{}", rel.display()), "whiteout".to_string()));
            continue;
        }
        let what = if kind.is_file() {
            let mut hasher = Hasher::new();
            io::copy(&mut fs::File::open(path).map_err(read_err)?, &mut hasher)
                .map_err(read_err)?;
            format!("file {} bytes {}", meta.len(), hasher.finish())
        } else if kind.is_dir() {
            let opaque = if rootfs::is_overlay_opaque(path) {
                " opaque"
            } else {
                ""
            };
            format!("directory{opaque}")
        } else if kind.is_symlink() {
            let target = fs::read_link(path).map_err(read_err)?;
            format!("symlink to {}", target.display())
        } else if kind.is_char_device() || kind.is_block_device() {
            let c = if kind.is_char_device() { 'c' } else { 'b' };
            format!("device {c} {}", meta.rdev())
        } else if kind.is_fifo() {
            "fifo".to_string()
        } else {
            "socket".to_string()
        };
        let xattrs: Vec<String> = rootfs::read_xattrs(path)?
            .into_iter()
            .map(|(name, value)| format!("{name}={}", Digest::of(&value)))
            .collect();
        out.push((
            format!("/{}", rel.display()),
            format!(
                "{what}, mode {:o}, owner {}:{}{}{}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
                if xattrs.is_empty() { "" } else { ", xattrs " },
                xattrs.join(" ")
            ),
        ));
    }
    out.sort();
    Ok(out)
}

/// The first place two sorted descriptions disagree.
fn first_difference(ours: &[(String, String)], theirs: &[(String, String)]) -> Option<String> {
    let (mut a, mut b) = (ours.iter().peekable(), theirs.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return None,
            (Some((path, _)), None) => return Some(format!("{path} is not in the layer")),
            (None, Some((path, _))) => return Some(format!("{path} is missing")),
            (Some((pa, da)), Some((pb, db))) => {
                if pa < pb {
                    return Some(format!("{pa} is not in the layer"));
                }
                if pb < pa {
                    return Some(format!("{pb} is missing"));
                }
                if da != db {
                    return Some(format!("{pa} is a {da}; the layer has a {db}"));
                }
                a.next();
                b.next();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, what: &str) -> (String, String) {
        (path.to_string(), what.to_string())
    }

    #[test]
    fn differences_name_the_first_path() {
        let a = [entry("/a", "x"), entry("/b", "y")];
        assert_eq!(first_difference(&a, &a), None);
        assert_eq!(
            first_difference(&a, &[entry("/a", "x")]),
            Some("/b is not in the layer".to_string())
        );
        assert_eq!(
            first_difference(&a[..1], &a),
            Some("/b is missing".to_string())
        );
        assert_eq!(
            first_difference(&a, &[entry("/a", "z"), entry("/b", "y")]),
            Some("/a is a x; the layer has a z".to_string())
        );
    }
}
