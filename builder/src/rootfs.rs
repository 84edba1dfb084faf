//! A root filesystem seen through its layers, as overlayfs sees it, without
//! mounting anything: each layer is a directory (an unpacked snapshot with
//! its `.wh.` whiteouts kept, or the upper dir a step is writing), top first.
//!
//! Lookups follow overlay rules: the topmost layer holding a path wins; a
//! `.wh.<name>` whiteout hides the name in every lower layer; a directory
//! holding `.wh..wh..opq` hides everything below it in lower layers; a
//! non-directory in a higher layer hides a directory of the same path below.

use crate::sys;
use crate::tree::{EntryKind, Meta, SourceTree, TreeError};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Prefix of whiteout files.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Whether `m` is an overlayfs whiteout: a character device 0/0.
fn is_overlay_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Whether `name` is one of overlayfs's own xattrs: `trusted.overlay.*`
/// as root of the host mounts it, `user.overlay.*` in a user namespace
/// (`userxattr`). They describe an upper or lower dir, never a file of an
/// image.
pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// Overlay metadata that means an upper dir is not a self-contained diff,
/// by its name after the `trusted.overlay.` or `user.overlay.` prefix.
const UNCONVERTIBLE_XATTRS: [(&[u8], &str); 2] = [
    (b"redirect", "a renamed directory (overlay redirect_dir)"),
    (b"metacopy", "a metadata-only copy-up (overlay metacopy)"),
];

/// What the overlayfs xattr `name` says that no layer can (a redirect, a
/// metadata-only copy-up), if it says that.
pub(crate) fn unconvertible_overlay_xattr(name: &[u8]) -> Option<&'static str> {
    if !is_overlay_xattr(name) {
        return None;
    }
    let own = name.splitn(3, |&b| b == b'.').nth(2).unwrap_or_default();
    UNCONVERTIBLE_XATTRS
        .iter()
        .find(|(n, _)| *n == own)
        .map(|(_, what)| *what)
}

/// The xattr that marks an opaque directory for overlayfs as this process
/// mounts it (see [`crate::rootless::overlay_xattr_prefix`]).
pub(crate) fn opaque_xattr() -> String {
    format!("{}opaque", crate::rootless::overlay_xattr_prefix())
}

/// Whether `dir` is an overlayfs opaque directory (`trusted.overlay.opaque=y`,
/// or `user.overlay.opaque=y` as a user namespace's overlayfs marks it).
pub(crate) fn is_overlay_opaque(dir: &Path) -> bool {
    [&b"trusted.overlay.opaque"[..], b"user.overlay.opaque"]
        .into_iter()
        .any(|name| sys::xattr(dir, name).is_ok_and(|v| v.is_some_and(|v| v == b"y")))
}

/// Converts a snapshot from OCI whiteout form (`.wh.<name>` files,
/// `.wh..wh..opq` markers) into the form overlayfs reads as a lower dir
/// (a 0/0 character device named `<name>`, the [`opaque_xattr`] set to
/// `y`), in place. Snapshots are kept in this form so they mount as they are.
pub fn oci_to_overlay(root: &Path) -> Result<usize, TreeError> {
    let mut converted = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let ft = entry.file_type().map_err(|e| io_err(&path, e))?;
            if name == OPAQUE_MARKER {
                fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                xattr::set(&dir, opaque_xattr(), b"y").map_err(|e| io_err(&dir, e))?;
                converted += 1;
            } else if let Some(gone) = name.strip_prefix(WHITEOUT_PREFIX) {
                fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                let target = dir.join(gone);
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    0,
                )
                .map_err(|e| io_err(&target, e.into()))?;
                converted += 1;
            } else if ft.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(converted)
}

/// A stack of layer directories, top first.
#[derive(Debug, Clone)]
pub struct LayeredTree {
    layers: Vec<PathBuf>,
}

fn io_err(path: &Path, source: std::io::Error) -> TreeError {
    TreeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `lstat` that maps "not there" (including a non-directory parent) to None.
fn lstat(path: &Path) -> Result<Option<fs::Metadata>, TreeError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(None)
        }
        Err(e) => Err(io_err(path, e)),
    }
}

/// The tree's view of a file's metadata.
pub fn meta_of(path: &Path, m: &fs::Metadata) -> Result<Meta, TreeError> {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(|e| io_err(path, e))?;
        EntryKind::Symlink(target.to_string_lossy().into_owned())
    } else if ft.is_char_device() {
        let rdev = m.rdev();
        EntryKind::CharDevice(libc::major(rdev), libc::minor(rdev))
    } else if ft.is_block_device() {
        let rdev = m.rdev();
        EntryKind::BlockDevice(libc::major(rdev), libc::minor(rdev))
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_socket() {
        EntryKind::Socket
    } else {
        EntryKind::File
    };
    Ok(Meta {
        size: if kind == EntryKind::File { m.len() } else { 0 },
        link_id: (kind == EntryKind::File && m.nlink() > 1).then(|| (m.dev(), m.ino())),
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
    })
}

impl LayeredTree {
    /// A view of `layers`, topmost first.
    pub fn new(layers: Vec<PathBuf>) -> Self {
        LayeredTree { layers }
    }

    /// The layer directories, top first.
    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    /// The layer directory that provides `path`, and its metadata there.
    pub fn locate(&self, path: &str) -> Result<Option<(PathBuf, fs::Metadata)>, TreeError> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            // The root exists in the topmost layer that has it; an empty stack
            // has no root.
            for layer in &self.layers {
                if let Some(m) = lstat(layer)? {
                    return Ok(Some((layer.clone(), m)));
                }
            }
            return Ok(None);
        }
        'layers: for layer in &self.layers {
            let mut dir = layer.clone();
            for (i, part) in parts.iter().enumerate() {
                if lstat(&dir.join(format!("{WHITEOUT_PREFIX}{part}")))?.is_some() {
                    return Ok(None);
                }
                let here = dir.join(part);
                let Some(m) = lstat(&here)? else {
                    // Not in this layer; lower layers may have it, unless this
                    // layer's directory so far is opaque.
                    if i > 0
                        && (lstat(&dir.join(OPAQUE_MARKER))?.is_some() || is_overlay_opaque(&dir))
                    {
                        return Ok(None);
                    }
                    continue 'layers;
                };
                if is_overlay_whiteout(&m) {
                    return Ok(None);
                }
                if i + 1 == parts.len() {
                    return Ok(Some((here, m)));
                }
                if !m.is_dir() {
                    // A file or symlink here hides any directory below.
                    return Ok(None);
                }
                dir = here;
            }
        }
        Ok(None)
    }
}

impl SourceTree for LayeredTree {
    fn stat(&self, path: &str) -> Result<Option<Meta>, TreeError> {
        match self.locate(path)? {
            Some((real, m)) => meta_of(&real, &m).map(Some),
            None => Ok(None),
        }
    }

    fn children(&self, path: &str) -> Result<Vec<String>, TreeError> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut names = std::collections::BTreeSet::new();
        let mut hidden = std::collections::BTreeSet::new();
        'layers: for layer in &self.layers {
            let mut dir = layer.clone();
            for (i, part) in parts.iter().enumerate() {
                if lstat(&dir.join(format!("{WHITEOUT_PREFIX}{part}")))?.is_some() {
                    break 'layers;
                }
                let here = dir.join(part);
                match lstat(&here)? {
                    Some(m) if m.is_dir() => dir = here,
                    Some(_) => break 'layers,
                    None => {
                        if i > 0
                            && (lstat(&dir.join(OPAQUE_MARKER))?.is_some()
                                || is_overlay_opaque(&dir))
                        {
                            break 'layers;
                        }
                        continue 'layers;
                    }
                }
            }
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir, e)),
            };
            let mut opaque = is_overlay_opaque(&dir);
            for entry in entries {
                let entry = entry.map_err(|e| io_err(&dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == OPAQUE_MARKER {
                    opaque = true;
                } else if let Some(gone) = name.strip_prefix(WHITEOUT_PREFIX) {
                    hidden.insert(gone.to_string());
                } else if entry
                    .metadata()
                    .map(|m| is_overlay_whiteout(&m))
                    .unwrap_or(false)
                {
                    hidden.insert(name);
                } else if !hidden.contains(&name) {
                    names.insert(name);
                }
            }
            // Names this layer has hide nothing, but its whiteouts and
            // opacity apply to the layers below.
            if opaque {
                break;
            }
        }
        Ok(names.into_iter().collect())
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, TreeError> {
        match self.locate(path)? {
            Some((real, m)) if m.is_file() => Ok(Box::new(
                fs::File::open(&real).map_err(|e| io_err(&real, e))?,
            )),
            _ => Err(TreeError::Other(format!("{path}: not a regular file"))),
        }
    }

    fn open_file(&self, path: &str) -> Result<Option<fs::File>, TreeError> {
        match self.locate(path)? {
            Some((real, m)) if m.is_file() => {
                Ok(Some(fs::File::open(&real).map_err(|e| io_err(&real, e))?))
            }
            _ => Ok(None),
        }
    }

    fn xattrs(&self, path: &str) -> Result<Vec<(String, Vec<u8>)>, TreeError> {
        match self.locate(path)? {
            Some((real, _)) => read_xattrs(&real),
            None => Ok(Vec::new()),
        }
    }
}

/// The xattrs of a file worth keeping in an image, sorted.
pub fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>, TreeError> {
    let xattrs =
        sys::read_xattrs(path, |name| !is_overlay_xattr(name)).map_err(|err| io_err(path, err))?;
    let mut out: Vec<(String, Vec<u8>)> = xattrs
        .into_iter()
        .map(|(name, value)| (String::from_utf8_lossy(&name).into_owned(), value))
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    #[test]
    fn overlay_form_whiteouts_hide_like_oci_ones() {
        let lower = tempfile::tempdir().expect("tmp");
        let upper = tempfile::tempdir().expect("tmp");
        write(lower.path(), "etc/passwd", "root");
        write(lower.path(), "etc/group", "root");
        write(lower.path(), "opt/a/x", "x");
        write(upper.path(), "etc/.wh.group", "");
        write(upper.path(), "opt/a/.wh..wh..opq", "");
        write(upper.path(), "opt/a/z", "z");
        assert_eq!(oci_to_overlay(upper.path()).expect("convert"), 2);
        let group = std::fs::symlink_metadata(upper.path().join("etc/group")).expect("device");
        assert!(is_overlay_whiteout(&group));
        assert!(!upper.path().join("etc/.wh.group").exists());
        assert!(is_overlay_opaque(&upper.path().join("opt/a")));
        let tree = LayeredTree::new(vec![upper.path().to_path_buf(), lower.path().to_path_buf()]);
        assert!(tree.stat("etc/group").expect("ok").is_none());
        assert_eq!(tree.children("etc").expect("ok"), ["passwd"]);
        assert!(tree.stat("opt/a/x").expect("ok").is_none());
        assert_eq!(tree.children("opt/a").expect("ok"), ["z"]);
    }

    #[test]
    fn overlay_rules() {
        let lower = tempfile::tempdir().expect("tmp");
        let upper = tempfile::tempdir().expect("tmp");
        write(lower.path(), "etc/passwd", "root");
        write(lower.path(), "etc/group", "root");
        write(lower.path(), "opt/a/x", "x");
        write(lower.path(), "opt/b/y", "y");
        write(lower.path(), "srv/old", "old");
        write(upper.path(), "etc/.wh.group", "");
        write(upper.path(), "opt/a/.wh..wh..opq", "");
        write(upper.path(), "opt/a/z", "z");
        write(upper.path(), "opt/b/w", "w");
        write(upper.path(), "srv", "now a file");
        let tree = LayeredTree::new(vec![upper.path().to_path_buf(), lower.path().to_path_buf()]);
        assert!(tree.stat("etc/passwd").expect("ok").is_some());
        assert!(tree.stat("etc/group").expect("ok").is_none(), "whited out");
        assert!(
            tree.stat("opt/a/x").expect("ok").is_none(),
            "opaque dir hides lower"
        );
        assert!(tree.stat("opt/a/z").expect("ok").is_some());
        assert_eq!(tree.children("opt/a").expect("ok"), ["z"]);
        assert_eq!(tree.children("opt/b").expect("ok"), ["w", "y"]);
        assert_eq!(tree.children("etc").expect("ok"), ["passwd"]);
        assert!(
            tree.stat("srv/old").expect("ok").is_none(),
            "file hides dir below"
        );
        assert_eq!(
            tree.stat("srv").expect("ok").map(|m| m.kind),
            Some(EntryKind::File)
        );
        let mut text = String::new();
        tree.open("opt/b/y")
            .expect("open")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, "y");
    }
}
