//! The copy snapshotter, for kernels and file systems without overlayfs
//! (or when `ESTIBA_SNAPSHOTTER=copy` asks for it).
//!
//! The layers below the step are flattened into a private directory, which
//! the init bind-mounts as the container's root; the step writes into it
//! directly. Before the step runs, every entry's identity is recorded:
//! device, inode and ctime. The kernel moves the ctime on every change to an
//! entry (content, mode, owner, xattrs, links, and for a directory its
//! entries), and no call can set it back, so afterwards an entry whose
//! identity is unchanged is unchanged, without reading any content.
//!
//! The step's changes then become an upper dir in overlay form, the same as
//! overlayfs leaves, so the rest of the pipeline does not know which
//! snapshotter ran: changed and new entries are hard-linked (files) or
//! recreated (directories, symlinks, devices) with their metadata; entries
//! that are gone become whiteouts (character devices 0/0) under a parent
//! that still exists; parents of changed entries are copied up with their
//! metadata, as overlayfs would. Mount point placeholders the init made and
//! the step left alone are not changes (see [`super::stubs`]).
//!
//! One difference from overlayfs stays, on purpose: a file with several
//! names changed through one of them. overlayfs (without its inode index)
//! copies up only that name and so breaks the link; here all its names
//! change together, as on any plain file system, and all go in the layer.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::stubs::Tracked;
use super::{sys, ExecError};
use crate::copy::{CopyOptions, Writer};
use crate::rootfs::LayeredTree;
use crate::tree::SourceTree;

/// What must be unchanged for an entry to be unchanged: device, inode,
/// ctime (seconds, nanoseconds).
type Identity = (u64, u64, i64, i64);

fn identity(meta: &fs::Metadata) -> Identity {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

fn fail(path: &Path) -> impl FnOnce(io::Error) -> ExecError + '_ {
    move |source| ExecError::CopyRoot {
        path: path.to_owned(),
        source,
    }
}

/// A step's private root file system and what it held before the step.
#[derive(Debug)]
pub(super) struct CopyRoot {
    dir: PathBuf,
    before: HashMap<PathBuf, Identity>,
}

impl CopyRoot {
    /// Flattens `lower` (snapshot directories, top first) into the empty
    /// directory `dir` and records what is there.
    pub(super) fn prepare(lower: &[PathBuf], dir: &Path) -> Result<Self, ExecError> {
        let tree: Rc<dyn SourceTree> = Rc::new(LayeredTree::new(lower.to_vec()));
        let mut writer = Writer::new(LayeredTree::new(Vec::new()), CopyOptions::default());
        writer
            .mirror(&tree)
            .and_then(|()| writer.write_to_dir(dir))
            .map_err(|e| fail(dir)(io::Error::other(e)))?;
        let mut before = HashMap::new();
        for item in walkdir::WalkDir::new(dir).min_depth(1) {
            let item = item.map_err(|e| fail(dir)(e.into()))?;
            let meta = item.metadata().map_err(|e| fail(item.path())(e.into()))?;
            let rel = relative(dir, item.path())?;
            before.insert(rel, identity(&meta));
        }
        Ok(CopyRoot {
            dir: dir.to_owned(),
            before,
        })
    }

    /// The directory the init mounts as the root.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes what the step changed into the empty directory `upper`, in
    /// overlay form. `tracked` holds the init's placeholders.
    pub(super) fn diff(&self, tracked: &Tracked, upper: &Path) -> Result<(), ExecError> {
        let mut out = Upper {
            root: &self.dir,
            upper,
            dirs: Vec::new(),
        };
        for item in walkdir::WalkDir::new(&self.dir)
            .min_depth(1)
            .sort_by_file_name()
        {
            let item = item.map_err(|e| fail(&self.dir)(e.into()))?;
            let meta = item.metadata().map_err(|e| fail(item.path())(e.into()))?;
            let rel = relative(&self.dir, item.path())?;
            let unchanged = self.before.get(&rel) == Some(&identity(&meta))
                || tracked.untouched(&self.dir, &rel);
            if !unchanged {
                out.put(&rel, &meta)?;
            }
        }
        for rel in self.before.keys() {
            if fs::symlink_metadata(self.dir.join(rel)).is_ok() {
                continue;
            }
            // Under a parent that is gone too, the parent's whiteout or
            // replacement already hides it.
            let parent = rel.parent().unwrap_or(Path::new(""));
            let parent_is_dir = parent.as_os_str().is_empty()
                || fs::symlink_metadata(self.dir.join(parent)).is_ok_and(|m| m.is_dir());
            if parent_is_dir {
                out.whiteout(rel)?;
            }
        }
        out.finish()
    }
}

fn relative(root: &Path, path: &Path) -> Result<PathBuf, ExecError> {
    path.strip_prefix(root)
        .map(Path::to_path_buf)
        .map_err(|_| fail(path)(io::Error::other("outside the copied root")))
}

/// The upper dir being filled.
struct Upper<'a> {
    root: &'a Path,
    upper: &'a Path,
    /// Directories made here, whose times are set once all is written.
    dirs: Vec<PathBuf>,
}

impl Upper<'_> {
    /// Puts the entry `rel` of the root into the upper dir.
    fn put(&mut self, rel: &Path, meta: &fs::Metadata) -> Result<(), ExecError> {
        self.parents(rel)?;
        let from = self.root.join(rel);
        let to = self.upper.join(rel);
        let ft = meta.file_type();
        if ft.is_dir() {
            return self.dir(rel, meta);
        }
        if ft.is_socket() {
            return Ok(());
        }
        if ft.is_file() {
            // The root is thrown away after the step: the upper dir can
            // have its files, with every bit of their metadata.
            return fs::hard_link(&from, &to).map_err(fail(&to));
        }
        if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(fail(&from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(fail(&to))?;
        } else {
            let kind = if ft.is_char_device() {
                nix::sys::stat::SFlag::S_IFCHR
            } else if ft.is_block_device() {
                nix::sys::stat::SFlag::S_IFBLK
            } else {
                nix::sys::stat::SFlag::S_IFIFO
            };
            nix::sys::stat::mknod(
                &to,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(|e| fail(&to)(e.into()))?;
        }
        self.metadata(&from, &to, meta)?;
        sys::set_times(&to, atime(meta), mtime(meta)).map_err(fail(&to))
    }

    /// A directory at `rel`, with the root's metadata, unless already made.
    fn dir(&mut self, rel: &Path, meta: &fs::Metadata) -> Result<(), ExecError> {
        let to = self.upper.join(rel);
        if fs::symlink_metadata(&to).is_ok() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&to)
            .map_err(fail(&to))?;
        self.metadata(&self.root.join(rel), &to, meta)?;
        self.dirs.push(rel.to_owned());
        Ok(())
    }

    /// The directories above `rel`, copied up with their metadata.
    fn parents(&mut self, rel: &Path) -> Result<(), ExecError> {
        let mut at = PathBuf::new();
        let parts: Vec<_> = rel.iter().collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            at.push(part);
            let from = self.root.join(&at);
            let meta = fs::symlink_metadata(&from).map_err(fail(&from))?;
            self.dir(&at, &meta)?;
        }
        Ok(())
    }

    /// Owner, mode and xattrs of `from` onto `to` (not following links).
    fn metadata(&self, from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), ExecError> {
        nix::unistd::fchownat(
            None,
            to,
            Some(meta.uid().into()),
            Some(meta.gid().into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail(to)(e.into()))?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(fail(to))?;
        let xattrs =
            crate::rootfs::read_xattrs(from).map_err(|e| fail(from)(io::Error::other(e)))?;
        for (name, value) in xattrs {
            xattr::set(to, &name, &value).map_err(fail(to))?;
        }
        Ok(())
    }

    /// An overlay whiteout at `rel`: the entry below is deleted.
    fn whiteout(&mut self, rel: &Path) -> Result<(), ExecError> {
        self.parents(rel)?;
        let to = self.upper.join(rel);
        nix::sys::stat::mknod(
            &to,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .map_err(|e| fail(&to)(e.into()))
    }

    /// Directory times, deepest first: writing inside moved them.
    fn finish(mut self) -> Result<(), ExecError> {
        self.dirs
            .sort_by_key(|rel| std::cmp::Reverse(rel.components().count()));
        for rel in &self.dirs {
            let from = self.root.join(rel);
            let meta = fs::symlink_metadata(&from).map_err(fail(&from))?;
            let to = self.upper.join(rel);
            sys::set_times(&to, atime(&meta), mtime(&meta)).map_err(fail(&to))?;
        }
        Ok(())
    }
}

fn atime(meta: &fs::Metadata) -> (i64, i64) {
    (meta.atime(), meta.atime_nsec())
}

fn mtime(meta: &fs::Metadata) -> (i64, i64) {
    (meta.mtime(), meta.mtime_nsec())
}
