//! Overlay upper dir → OCI layer directory. overlayfs records deletions as
//! character devices 0/0 and replaced directories with the xattr
//! `trusted.overlay.opaque=y` (`user.overlay.opaque=y` when mounted in a
//! user namespace, rootless); an OCI layer says the same with `.wh.<name>`
//! and `.wh..wh..opq` files (image-spec `layer.md`). The conversion keeps
//! what moby's overlay whiteout converter writes: a whiteout is an empty
//! file, mode 0600, with the device's times; an opaque marker takes its
//! directory's permissions, owner and times. Directory times are restored
//! after the entries inside them change.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::{sys, ExecError};
use crate::rootfs::{is_overlay_opaque, is_overlay_xattr, unconvertible_overlay_xattr};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Converts an overlay upper dir, in place and not mounted, into OCI
/// whiteout form: a character device 0/0 becomes an empty regular file
/// `.wh.<name>`; a directory with `trusted.overlay.opaque=y` (or
/// `user.overlay.opaque=y`) loses the xattr and gets an empty `.wh..wh..opq`
/// inside; every other `trusted.overlay.*` and `user.overlay.*` xattr is
/// removed.
pub fn upper_to_layer_dir(upper: &Path) -> Result<(), ExecError> {
    let meta = fs::symlink_metadata(upper).map_err(|source| whiteout_error(upper, source))?;
    if !meta.is_dir() {
        return Err(whiteout_error(
            upper,
            io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    strip_overlay_xattrs(upper)?;
    convert_dir(upper, &meta)
}

fn whiteout_error(path: &Path, source: io::Error) -> ExecError {
    ExecError::Whiteout {
        path: path.to_owned(),
        source,
    }
}

fn convert_dir(dir: &Path, dir_meta: &fs::Metadata) -> Result<(), ExecError> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .map_err(|e| whiteout_error(dir, e))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| whiteout_error(dir, e))?;
    names.sort();
    let mut changed = false;
    for name in names {
        let path = dir.join(&name);
        let meta = fs::symlink_metadata(&path).map_err(|e| whiteout_error(&path, e))?;
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            let mut marker = OsString::from(WHITEOUT_PREFIX);
            marker.push(&name);
            let marker = dir.join(marker);
            fs::remove_file(&path).map_err(|e| whiteout_error(&path, e))?;
            create_marker(&marker, 0o600, None, &meta)?;
            changed = true;
            continue;
        }
        let opaque = meta.is_dir() && is_overlay_opaque(&path);
        strip_overlay_xattrs(&path)?;
        if meta.is_dir() {
            convert_dir(&path, &meta)?;
            if opaque {
                let marker = path.join(OPAQUE_MARKER);
                let owner = Some((meta.uid(), meta.gid()));
                create_marker(&marker, meta.mode() & 0o777, owner, &meta)?;
                restore_times(&path, &meta)?;
            }
        }
    }
    if changed {
        restore_times(dir, dir_meta)?;
    }
    Ok(())
}

/// Creates an empty marker file with the given mode, owner, and the times of
/// `like`.
fn create_marker(
    path: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
    like: &fs::Metadata,
) -> Result<(), ExecError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| whiteout_error(path, e))?;
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| whiteout_error(path, e))?;
    drop(file);
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| whiteout_error(path, e))?;
    }
    restore_times(path, like)
}

fn restore_times(path: &Path, meta: &fs::Metadata) -> Result<(), ExecError> {
    sys::set_times(
        path,
        (meta.atime(), meta.atime_nsec()),
        (meta.mtime(), meta.mtime_nsec()),
    )
    .map_err(|e| whiteout_error(path, e))
}

fn strip_overlay_xattrs(path: &Path) -> Result<(), ExecError> {
    // A file system without xattrs has no overlay metadata either.
    let names = sys::xattr_names(path).map_err(|e| whiteout_error(path, e))?;
    for name in names {
        if !is_overlay_xattr(&name) {
            continue;
        }
        if let Some(what) = unconvertible_overlay_xattr(&name) {
            return Err(ExecError::Unconvertible {
                path: path.to_owned(),
                what: what.to_owned(),
            });
        }
        match xattr::remove(path, OsStr::from_bytes(&name)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(whiteout_error(path, e)),
        }
    }
    Ok(())
}
