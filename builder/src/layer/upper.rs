//! A RUN step's upper dir as a layer, in one walk.
//!
//! overlayfs records a deletion as a 0/0 character device and a replaced
//! directory with its opaque xattr; a layer says the same with `.wh.<name>`
//! files and `.wh..wh..opq` markers. [`write_upper_layer`] writes the tar
//! that `executor::upper_to_layer_dir` followed by [`super::write_layer`]
//! writes, byte for byte, without converting the dir and converting it
//! back for its snapshot (`rootfs::oci_to_overlay`): three walks of every
//! entry by path were 22 of a 75 ms commit after an `npm ci`. Each entry is
//! reached from its parent's descriptor, its xattrs read from its own where
//! it is opened anyway.
//!
//! The dir is left in the form snapshots are kept in as root: its 0/0
//! devices and opaque xattrs as overlayfs wrote them, every other overlayfs
//! xattr removed, as the conversions there and back leave it.

use super::{
    layer_xattr, reopen_parent, EntryKind, LayerError, LayerOptions, LayerStream, TarHeader,
};
use super::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::rootfs::{is_overlay_xattr, opaque_xattr, unconvertible_overlay_xattr};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Writes the unmounted overlay upper dir `upper` as a layer tar into
/// `out`, and returns `out` (see the module's documentation).
pub fn write_upper_layer<W: Write>(
    upper: &Path,
    out: W,
    opts: &LayerOptions,
) -> Result<W, LayerError> {
    let root = rfs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fs_err("open", upper, e))?;
    let root_stat = rfs::fstat(&root).map_err(|e| fs_err("stat", upper, e))?;
    // The root is no entry of the layer; its overlay xattrs go all the same.
    let xattrs = read_xattrs(Source::Fd(root.as_fd()))
        .map_err(|e| fs_err("read the xattrs of", upper, e))?;
    strip_overlay_xattrs(Source::Fd(root.as_fd()), &xattrs, false, upper)?;
    let mut walk = Walk {
        tar: LayerStream::new(out),
        opts,
        inodes: HashMap::new(),
        owner: (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        ),
    };
    walk.run(root, root_stat, upper)?;
    walk.tar.finish()
}

struct Walk<'o, W: Write> {
    tar: LayerStream<W>,
    opts: &'o LayerOptions,
    /// The first path of each inode with more than one link.
    inodes: HashMap<(u64, u64), Vec<u8>>,
    /// Who a whiteout file would belong to, made by this process.
    owner: (u32, u32),
}

/// One entry of a directory as the layer names it.
struct Child {
    /// Its name in the layer: `.wh.<name>` for a whiteout.
    layer_name: Vec<u8>,
    what: ChildKind,
}

enum ChildKind {
    /// An entry of the dir, by its name there.
    Entry(OsString, rfs::Stat),
    /// A 0/0 device: the whiteout file of the same name.
    Whiteout(rfs::Stat),
    /// The opaque marker of the dir itself.
    Opaque,
}

/// A directory being written: what is left of its entries.
struct Frame {
    stat: rfs::Stat,
    /// For messages.
    path: PathBuf,
    /// Its path in the layer, ending in `/` (empty for the root).
    rel: Vec<u8>,
    children: std::vec::IntoIter<Child>,
}

/// A directory entry just written, to descend into.
struct Subdir {
    fd: OwnedFd,
    path: PathBuf,
    rel: Vec<u8>,
    opaque: bool,
}

/// Where an entry's xattrs are read and removed: its open descriptor, or,
/// for what cannot be opened (symlinks, devices, fifos), its name through
/// its directory's descriptor (`/proc/self/fd/N/name`, any depth).
#[derive(Clone, Copy)]
enum Source<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a Path),
}

impl<W: Write> Walk<'_, W> {
    /// Depth first, without recursion and with two descriptors open at
    /// most, whatever the depth (a step can make a tree deeper than any
    /// stack or path): only the current directory's descriptor is kept, and
    /// a parent is opened again through `..` (checked to be the same
    /// directory) when its child is done.
    fn run(&mut self, root: OwnedFd, root_stat: rfs::Stat, upper: &Path) -> Result<(), LayerError> {
        let children = layer_children(root.as_fd(), upper, false)?;
        let mut fd = root;
        let mut stack = vec![Frame {
            stat: root_stat,
            path: upper.to_path_buf(),
            rel: Vec::new(),
            children: children.into_iter(),
        }];
        while let Some(top) = stack.last_mut() {
            let Some(child) = top.children.next() else {
                let done = stack.pop();
                if let (Some(parent), Some(done)) = (stack.last(), done) {
                    let expected = (parent.stat.st_dev, parent.stat.st_ino);
                    fd = reopen_parent(fd.as_fd(), expected)
                        .map_err(|e| fs_err("open the parent of", &done.path, e))?;
                }
                continue;
            };
            let mut rel = top.rel.clone();
            rel.extend_from_slice(&child.layer_name);
            let sub = match child.what {
                ChildKind::Whiteout(st) => {
                    // As made by this process: setgid directories give it
                    // their group.
                    let gid = if top.stat.st_mode & libc::S_ISGID != 0 {
                        top.stat.st_gid
                    } else {
                        self.owner.1
                    };
                    self.tar
                        .header(&self.marker(rel, 0o600, (self.owner.0, gid), &st))?;
                    None
                }
                ChildKind::Opaque => {
                    let h = self.marker(
                        rel,
                        top.stat.st_mode & 0o777,
                        (top.stat.st_uid, top.stat.st_gid),
                        &top.stat,
                    );
                    self.tar.header(&h)?;
                    None
                }
                ChildKind::Entry(name, st) => self
                    .entry(fd.as_fd(), &name, &st, &top.path, rel)?
                    .map(|sub| (sub, st)),
            };
            if let Some((sub, stat)) = sub {
                let children = layer_children(sub.fd.as_fd(), &sub.path, sub.opaque)?;
                fd = sub.fd;
                stack.push(Frame {
                    stat,
                    path: sub.path,
                    rel: sub.rel,
                    children: children.into_iter(),
                });
            }
        }
        Ok(())
    }

    /// An empty regular file as the conversion makes it: `mode`, `owner`,
    /// and the mtime of `like`.
    fn marker(&self, path: Vec<u8>, mode: u32, owner: (u32, u32), like: &rfs::Stat) -> TarHeader {
        TarHeader {
            path,
            kind: EntryKind::File,
            mode,
            uid: u64::from(owner.0),
            gid: u64::from(owner.1),
            size: 0,
            mtime: self.mtime(like),
            link: None,
            device: (0, 0),
            xattrs: Vec::new(),
        }
    }

    fn mtime(&self, st: &rfs::Stat) -> i64 {
        match self.opts.mtime_clamp {
            Some(clamp) => st.st_mtime.min(clamp),
            None => st.st_mtime,
        }
    }

    /// One entry other than a whiteout, as `write_layer` writes it; a
    /// directory's header only, and the directory, opened, to go into.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &rfs::Stat,
        parent: &Path,
        rel: Vec<u8>,
    ) -> Result<Option<Subdir>, LayerError> {
        let path = parent.join(name);
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind == FileType::Socket {
            return Ok(None);
        }
        let mut h = TarHeader {
            path: rel,
            kind: EntryKind::File,
            mode: st.st_mode & 0o7777,
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            size: 0,
            mtime: self.mtime(st),
            link: None,
            device: (0, 0),
            xattrs: Vec::new(),
        };
        if kind != FileType::Directory && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.inodes.get(&key) {
                h.kind = EntryKind::Hardlink;
                h.link = Some(first.clone());
                self.tar.header(&h)?;
                return Ok(None);
            }
            self.inodes.insert(key, h.path.clone());
        }
        let open = |flags: OFlags| {
            rfs::openat(
                dir,
                name,
                flags | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
                Mode::empty(),
            )
            .map_err(|e| fs_err("open", &path, e))
        };
        let fd: Option<OwnedFd> = match kind {
            FileType::Directory => Some(open(OFlags::DIRECTORY)?),
            FileType::RegularFile => Some(open(OFlags::empty())?),
            _ => None,
        };
        // What cannot be opened is named through its directory's descriptor.
        let through_dir = match fd {
            Some(_) => PathBuf::new(),
            None => PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name),
        };
        let source = match &fd {
            Some(fd) => Source::Fd(fd.as_fd()),
            None => Source::Path(&through_dir),
        };
        let all = read_xattrs(source).map_err(|e| fs_err("read the xattrs of", &path, e))?;
        let opaque = kind == FileType::Directory
            && all.iter().any(|(n, v)| {
                (n == b"trusted.overlay.opaque" || n == b"user.overlay.opaque") && v == b"y"
            });
        strip_overlay_xattrs(source, &all, opaque, &path)?;
        h.xattrs = all.into_iter().filter(|(n, _)| layer_xattr(n)).collect();
        match (kind, fd) {
            (FileType::Directory, Some(fd)) => {
                h.kind = EntryKind::Dir;
                h.path.push(b'/');
                self.tar.header(&h)?;
                return Ok(Some(Subdir {
                    fd,
                    path,
                    rel: h.path,
                    opaque,
                }));
            }
            (FileType::RegularFile, Some(fd)) => {
                h.size = st.st_size as u64;
                self.tar.file(&h, std::fs::File::from(fd), &path)?;
                return Ok(None);
            }
            (FileType::Symlink, _) => {
                h.kind = EntryKind::Symlink;
                let target = rfs::readlinkat(dir, name, Vec::new())
                    .map_err(|e| fs_err("read the link", &path, e))?;
                h.link = Some(target.into_bytes());
            }
            (FileType::CharacterDevice | FileType::BlockDevice, _) => {
                h.kind = if kind == FileType::CharacterDevice {
                    EntryKind::CharDevice
                } else {
                    EntryKind::BlockDevice
                };
                h.device = (rfs::major(st.st_rdev), rfs::minor(st.st_rdev));
            }
            (FileType::Fifo, _) => h.kind = EntryKind::Fifo,
            // Directories and files were opened above; sockets returned.
            _ => {}
        }
        self.tar.header(&h)?;
        Ok(None)
    }
}

/// The entries of the open directory `fd` (at `path`) in layer order,
/// with its opaque marker if it is `opaque`.
fn layer_children(fd: BorrowedFd<'_>, path: &Path, opaque: bool) -> Result<Vec<Child>, LayerError> {
    let list_err = |e: io::Error| fs_err("walk", path, e);
    let mut children = Vec::new();
    for entry in rfs::Dir::read_from(fd).map_err(|e| list_err(e.into()))? {
        let entry = entry.map_err(|e| list_err(e.into()))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_os_string();
        let st = rfs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fs_err("stat", &path.join(&name), e))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        children.push(if kind == FileType::CharacterDevice && st.st_rdev == 0 {
            let mut layer_name = WHITEOUT_PREFIX.as_bytes().to_vec();
            layer_name.extend_from_slice(name.as_bytes());
            Child {
                layer_name,
                what: ChildKind::Whiteout(st),
            }
        } else {
            Child {
                layer_name: name.as_bytes().to_vec(),
                what: ChildKind::Entry(name, st),
            }
        });
    }
    if opaque {
        children.push(Child {
            layer_name: OPAQUE_MARKER.as_bytes().to_vec(),
            what: ChildKind::Opaque,
        });
    }
    children.sort_unstable_by(|a, b| a.layer_name.cmp(&b.layer_name));
    for pair in children.windows(2) {
        if pair[0].layer_name == pair[1].layer_name {
            // A file named as the marker the layer needs (`.wh.x` beside
            // a deleted `x`): the conversion could not make it either.
            return Err(fs_err(
                "write the whiteout",
                &path.join(OsStr::from_bytes(&pair[0].layer_name)),
                io::Error::from_raw_os_error(libc::EEXIST),
            ));
        }
    }
    Ok(children)
}

/// Every xattr of `source`, sorted by name; none on a file system without
/// them, and one removed since it was listed is left out. A file without
/// any costs one list call into a stack buffer.
fn read_xattrs(source: Source<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut small = [0u8; 1024];
    let listed = match source {
        Source::Fd(fd) => rfs::flistxattr(fd, &mut small[..]),
        Source::Path(p) => rfs::llistxattr(p, &mut small[..]),
    };
    let list = match listed {
        Ok(0) | Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Ok(n) => small[..n].to_vec(),
        Err(rustix::io::Errno::RANGE) => {
            let mut big = vec![0u8; 64 * 1024];
            let n = match source {
                Source::Fd(fd) => rfs::flistxattr(fd, &mut big[..])?,
                Source::Path(p) => rfs::llistxattr(p, &mut big[..])?,
            };
            big.truncate(n);
            big
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name_os = OsStr::from_bytes(name);
        let mut value = vec![0u8; 64 * 1024];
        let got = match source {
            Source::Fd(fd) => rfs::fgetxattr(fd, name_os, &mut value[..]),
            Source::Path(p) => rfs::lgetxattr(p, name_os, &mut value[..]),
        };
        match got {
            Ok(n) => {
                value.truncate(n);
                out.push((name.to_vec(), value));
            }
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.sort();
    Ok(out)
}

/// Removes overlayfs's xattrs from an entry, but for the opaque mark of an
/// opaque directory (set in this process's namespace, see
/// [`opaque_xattr`]); refuses redirects and metacopy.
fn strip_overlay_xattrs(
    source: Source<'_>,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    opaque: bool,
    path: &Path,
) -> Result<(), LayerError> {
    let keep = opaque_xattr();
    let mut has_keep = false;
    for (name, _) in xattrs.iter().filter(|(n, _)| is_overlay_xattr(n)) {
        if let Some(what) = unconvertible_overlay_xattr(name) {
            return Err(fs_err(
                "write a layer of",
                path,
                io::Error::other(format!("the step left {what} in its changes")),
            ));
        }
        if opaque && name.as_slice() == keep.as_bytes() {
            has_keep = true;
            continue;
        }
        let name = OsStr::from_bytes(name);
        let removed = match source {
            Source::Fd(fd) => rfs::fremovexattr(fd, name),
            Source::Path(p) => rfs::lremovexattr(p, name),
        };
        match removed {
            Ok(()) | Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(fs_err("remove an overlay xattr of", path, e)),
        }
    }
    if opaque && !has_keep {
        let set = match source {
            Source::Fd(fd) => rfs::fsetxattr(fd, keep.as_str(), b"y", rfs::XattrFlags::empty()),
            Source::Path(p) => rfs::lsetxattr(p, keep.as_str(), b"y", rfs::XattrFlags::empty()),
        };
        set.map_err(|e| fs_err("mark opaque", path, e))?;
    }
    Ok(())
}

fn fs_err(action: &'static str, path: &Path, source: impl Into<io::Error>) -> LayerError {
    LayerError::Fs {
        action,
        path: PathBuf::from(path),
        source: source.into(),
    }
}
