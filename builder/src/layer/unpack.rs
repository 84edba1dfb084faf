//! Applying a layer tar onto a directory ([`unpack_layer`]) at the speed of
//! the disk.
//!
//! Every entry is made relative to an open descriptor of its parent
//! directory (`openat`, `mkdirat`, `symlinkat`, `linkat`, `mknodat`), never
//! by walking a full path from `/`, and its owner, xattrs, mode and times
//! are set on the open file, or by name in that parent for what cannot be
//! opened (symlinks, devices). The directories on the last entry's path
//! stay open: a tar lists a directory's entries together, so most entries
//! need no lookup at all. Nothing is looked at before it is made: a create
//! that finds something in the way (`EEXIST`) removes it and tries again.
//!
//! A hostile layer cannot write outside the destination: no call follows a
//! symlink in its last component (`O_NOFOLLOW`, `O_EXCL`,
//! `AT_SYMLINK_NOFOLLOW`, or a name that was just created), parents are
//! opened one component at a time with `O_NOFOLLOW`, and a symlink met on
//! the way (a lower layer's, or this layer's own) is resolved by hand with
//! the destination as `/`, as a chroot would.

use super::input::{FileInput, Streamed, TarInput};
use super::{
    entry_meta, layer_tar_error, DataError, EntryData, EntryKind, EntryMeta, LayerError, TarReader,
    UnpackOptions, UnpackStats, Whiteout, WhiteoutMode, MAX_SYMLINKS, OPAQUE_MARKER,
    WHITEOUT_META_PREFIX, WHITEOUT_PREFIX,
};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// How directories are opened: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// How often a create that found something in its way removes it and
/// tries again before giving up.
const CREATE_ATTEMPTS: usize = 4;

/// Applies the layer tar `reader` onto `dest`; see the module docs of
/// [`crate::layer`].
///
/// Whiteouts (in [`WhiteoutMode::Apply`]) and opaque markers only hide what
/// was there before this layer, never entries of the layer itself, in
/// whatever order they come. Entry paths with `..` or a leading `/` are
/// refused; symlinks met in parent paths are resolved inside `dest`, as a
/// chroot would, so nothing is written outside it. Directory modes and
/// mtimes are set last, once their contents are in place.
pub fn unpack_layer(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    unpack(TarReader::new(Streamed(reader)), dest, opts)
}

/// [`unpack_layer`] of the uncompressed layer tar in `file` (read from its
/// start): each file's content is copied from it inside the kernel
/// (`copy_file_range`), not through memory.
pub fn unpack_layer_file(
    file: fs::File,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    unpack(TarReader::new(FileInput::new(file)), dest, opts)
}

fn unpack<R: TarInput>(
    mut tar: TarReader<R>,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    let root_fd = rfs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| apply_err(".", dest.to_path_buf(), e))?;
    let mut unpacker = Unpacker {
        root: dest.to_path_buf(),
        root_fd,
        opts: opts.clone(),
        stats: UnpackStats::default(),
        written: HashSet::new(),
        skipped_devices: HashSet::new(),
        dirs: Vec::new(),
        levels: Vec::new(),
        levels_stale: false,
        buf: vec![0u8; 256 * 1024],
    };
    while let Some(raw) = tar.next_entry().map_err(layer_tar_error)? {
        let meta = entry_meta(&raw)?;
        unpacker.stats.entries += 1;
        unpacker.apply(&meta, &mut tar.data())?;
    }
    tar.drain().map_err(|source| LayerError::Read { source })?;
    unpacker.finish_dirs()?;
    Ok(unpacker.stats)
}

/// An open directory on the path of the last entry applied.
struct Level {
    /// The component of entry paths it stands for.
    name: OsString,
    fd: OwnedFd,
    /// Where it is, relative to the root, symlinks resolved.
    rel: PathBuf,
    /// Reached through a symlink: removing anything may move it.
    by_hand: bool,
}

/// A directory whose mode and mtime are set at the end.
struct PendingDir {
    entry: String,
    rel: PathBuf,
    mode: u32,
    mtime: i64,
}

struct Unpacker {
    root: PathBuf,
    root_fd: OwnedFd,
    opts: UnpackOptions,
    stats: UnpackStats,
    /// Resolved relative paths this layer has written (only when whiteouts
    /// are applied: they hide only what was there before).
    written: HashSet<PathBuf>,
    /// Entries of devices this layer did not make, for its hard links to them.
    skipped_devices: HashSet<PathBuf>,
    dirs: Vec<PendingDir>,
    /// `levels[i]` is the directory the first `i + 1` components of the
    /// last parent path lead to.
    levels: Vec<Level>,
    /// Something was removed that an open level may be (or be under):
    /// they are opened again for the next entry.
    levels_stale: bool,
    /// File content passes through here.
    buf: Vec<u8>,
}

/// What a name in a directory was before it was removed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Removed {
    Nothing,
    NotADir,
    Dir,
}

impl Unpacker {
    /// Whether device nodes are made: when asked, and not in a user
    /// namespace (rootless), where the kernel makes none; such an image's
    /// nodes are skipped, as in Buildah.
    fn makes_devices(&self) -> bool {
        self.opts.devices && !crate::rootless::in_user_namespace()
    }

    fn apply<R: TarInput>(
        &mut self,
        meta: &EntryMeta,
        data: &mut EntryData<'_, R>,
    ) -> Result<(), LayerError> {
        let name = meta.path.to_string_lossy().into_owned();
        let Some(file_name) = meta.path.file_name() else {
            // The root itself: its metadata belongs to whoever owns `dest`.
            return Ok(());
        };
        let apply_whiteouts = self.opts.whiteouts == WhiteoutMode::Apply;
        if apply_whiteouts
            && meta.path.iter().any(|c| {
                c.as_bytes().starts_with(WHITEOUT_META_PREFIX.as_bytes())
                    && c.as_bytes() != OPAQUE_MARKER.as_bytes()
            })
        {
            return Ok(());
        }
        if file_name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes())
            && apply_whiteouts
            && meta.whiteout.is_none()
        {
            return Err(LayerError::Invalid {
                entry: name,
                reason: "whiteout without a name".to_string(),
            });
        }
        let parent: Vec<&OsStr> = meta.path.parent().unwrap_or(Path::new("")).iter().collect();
        if let (WhiteoutMode::Overlay, Some(whiteout)) = (self.opts.whiteouts, &meta.whiteout) {
            self.stats.whiteouts += 1;
            self.open_parent(&parent, true, &name)?;
            let (dir, dir_rel) = current(&self.levels, &self.root_fd);
            return match whiteout {
                Whiteout::Opaque(_) => rfs::fsetxattr(
                    dir,
                    crate::rootfs::opaque_xattr().as_str(),
                    b"y",
                    rfs::XattrFlags::empty(),
                )
                .map_err(|e| apply_err(&name, self.root.join(dir_rel), e)),
                Whiteout::Remove(_) => {
                    let target = OsStr::from_bytes(&file_name.as_bytes()[WHITEOUT_PREFIX.len()..]);
                    let made = create_at(dir, target, || {
                        rfs::mknodat(dir, target, FileType::CharacterDevice, Mode::empty(), 0)
                    });
                    match made {
                        Ok(((), removed)) => {
                            if removed != Removed::Nothing {
                                self.levels_stale = true;
                            }
                            Ok(())
                        }
                        Err(e) => Err(apply_err(&name, self.root.join(dir_rel).join(target), e)),
                    }
                }
            };
        }
        if apply_whiteouts {
            if let Some(whiteout) = &meta.whiteout {
                self.stats.whiteouts += 1;
                // Nothing below a missing or non-directory parent to hide.
                match self.open_parent(&parent, false, &name) {
                    Ok(()) => {}
                    Err(LayerError::NotADirectory { .. }) => return Ok(()),
                    Err(LayerError::Apply { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        return Ok(())
                    }
                    Err(e) => return Err(e),
                }
                // Whatever goes may be an open level.
                self.levels_stale = true;
                let (dir, dir_rel) = current(&self.levels, &self.root_fd);
                return match whiteout {
                    Whiteout::Opaque(_) => {
                        make_opaque(&self.root, &self.written, &name, dir, dir_rel)
                    }
                    Whiteout::Remove(_) => {
                        let target =
                            OsStr::from_bytes(&file_name.as_bytes()[WHITEOUT_PREFIX.len()..]);
                        let rel = dir_rel.join(target);
                        if self.written.contains(&rel) {
                            return Ok(());
                        }
                        remove_at(dir, target)
                            .map(drop)
                            .map_err(|e| apply_err(&name, self.root.join(&rel), e))
                    }
                };
            }
        }
        // Hard links and devices not made take no owner of their own.
        let owner = match meta.kind {
            EntryKind::Hardlink => None,
            EntryKind::CharDevice | EntryKind::BlockDevice if !self.makes_devices() => None,
            _ => owner_of(&self.opts, &name, meta)?,
        };
        self.open_parent(&parent, true, &name)?;
        let by_hand = self.levels.iter().any(|l| l.by_hand);
        let (dir, parent_rel) = current(&self.levels, &self.root_fd);
        let rel = parent_rel.join(file_name);
        let root = &self.root;
        let err = |source: io::Error| apply_err(&name, root.join(&rel), source);
        let makes_devices = self.makes_devices();
        // Anything removed to make room may be where an open level is.
        let mut stale = |removed: Removed| {
            if removed == Removed::Dir || (removed != Removed::Nothing && by_hand) {
                self.levels_stale = true;
            }
        };
        let mut new_level = None;
        match meta.kind {
            EntryKind::Dir => {
                let fd = loop {
                    match rfs::mkdirat(dir, file_name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(err(e.into())),
                    }
                    match rfs::openat(dir, file_name, DIR_FLAGS, Mode::empty()) {
                        Ok(fd) => break fd,
                        // Something else was there (a file, a symlink).
                        Err(Errno::LOOP | Errno::NOTDIR) => {
                            stale(remove_at(dir, file_name).map_err(err)?);
                        }
                        Err(e) => return Err(err(e.into())),
                    }
                };
                set_owner_and_xattrs(
                    &self.opts,
                    &mut self.stats,
                    Target::Fd(fd.as_fd()),
                    owner,
                    meta,
                )
                .map_err(&err)?;
                self.dirs.push(PendingDir {
                    entry: name.clone(),
                    rel: rel.clone(),
                    mode: meta.mode,
                    mtime: meta.mtime,
                });
                self.stats.dirs += 1;
                new_level = Some(Level {
                    name: file_name.to_os_string(),
                    fd,
                    rel: rel.clone(),
                    by_hand: false,
                });
            }
            EntryKind::File => {
                let (fd, removed) = create_at(dir, file_name, || {
                    rfs::openat(
                        dir,
                        file_name,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                })
                .map_err(&err)?;
                stale(removed);
                let mut file = fs::File::from(fd);
                let truncated = || LayerError::TruncatedEntry {
                    entry: name.clone(),
                    size: meta.size,
                };
                let copied = match data.splice_into(&file) {
                    Some(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(truncated()),
                    Some(spliced) => spliced.map_err(&err),
                    None => if meta.size >= DIRECT_WRITE_MIN {
                        copy_content_direct(data, &file, &mut self.buf)
                    } else {
                        copy_content(data, &mut file, &mut self.buf)
                    }
                    .map_err(|e| match e {
                        DataError::Read(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            truncated()
                        }
                        DataError::Read(source) => LayerError::Read { source },
                        DataError::Write(e) => err(e),
                        DataError::Short | DataError::Long => truncated(),
                    }),
                }?;
                if copied != meta.size {
                    return Err(truncated());
                }
                let target = Target::Fd(file.as_fd());
                set_owner_and_xattrs(&self.opts, &mut self.stats, target, owner, meta)
                    .map_err(&err)?;
                set_mode(target, meta.mode).map_err(&err)?;
                set_mtime(target, meta.mtime).map_err(&err)?;
                if meta.mode & 0o6000 != 0 {
                    self.stats.setid_files.push(rel.clone());
                }
                self.stats.files += 1;
                self.stats.bytes += copied;
            }
            EntryKind::Symlink => {
                let target = meta.link_target.as_deref().unwrap_or(Path::new(""));
                let ((), removed) =
                    create_at(dir, file_name, || rfs::symlinkat(target, dir, file_name))
                        .map_err(&err)?;
                stale(removed);
                let at = Target::At(dir, file_name);
                set_owner_and_xattrs(&self.opts, &mut self.stats, at, owner, meta).map_err(&err)?;
                set_mtime(at, meta.mtime).map_err(&err)?;
                self.stats.symlinks += 1;
            }
            EntryKind::Hardlink => {
                let target = meta.link_target.as_deref().unwrap_or(Path::new(""));
                if self.skipped_devices.contains(target) {
                    stale(remove_at(dir, file_name).map_err(err)?);
                    self.stats.devices_skipped += 1;
                    return Ok(());
                }
                let (target_dir, target_name, target_rel) =
                    resolve_link_target(&self.root, self.root_fd.as_fd(), &name, target)?;
                if target_rel != rel {
                    let ((), removed) = create_at(dir, file_name, || {
                        rfs::linkat(&target_dir, target_name, dir, file_name, AtFlags::empty())
                    })
                    .map_err(&err)?;
                    stale(removed);
                }
                self.stats.hardlinks += 1;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice if !makes_devices => {
                stale(remove_at(dir, file_name).map_err(err)?);
                self.skipped_devices.insert(meta.path.clone());
                self.stats.devices_skipped += 1;
                return Ok(());
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                let (kind, dev) = match meta.kind {
                    EntryKind::CharDevice => (FileType::CharacterDevice, meta.device),
                    EntryKind::BlockDevice => (FileType::BlockDevice, meta.device),
                    _ => (FileType::Fifo, None),
                };
                let (major, minor) = dev.unwrap_or((0, 0));
                let ((), removed) = create_at(dir, file_name, || {
                    rfs::mknodat(
                        dir,
                        file_name,
                        kind,
                        Mode::from_raw_mode(0o600),
                        rfs::makedev(major, minor),
                    )
                })
                .map_err(&err)?;
                stale(removed);
                let at = Target::At(dir, file_name);
                set_owner_and_xattrs(&self.opts, &mut self.stats, at, owner, meta).map_err(&err)?;
                set_mode(at, meta.mode).map_err(&err)?;
                set_mtime(at, meta.mtime).map_err(&err)?;
                self.stats.specials += 1;
            }
        }
        if let Some(level) = new_level {
            self.levels.push(level);
        }
        // Only whiteouts ask what this layer wrote: kept as files, they
        // need no memory per entry.
        if self.opts.whiteouts != WhiteoutMode::Apply {
            return Ok(());
        }
        // Parents too: a directory holding this layer's entries is this
        // layer's, even when the tar has no entry for it.
        let mut ancestor = rel.parent().map(Path::to_path_buf);
        self.written.insert(rel);
        while let Some(a) = ancestor {
            if a.as_os_str().is_empty() || !self.written.insert(a.clone()) {
                break;
            }
            ancestor = a.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    /// Opens the directories of the entry parent path `comps` into the
    /// levels, keeping those the last entry's path shares with it, and
    /// creating missing ones when `create`.
    fn open_parent(
        &mut self,
        comps: &[&OsStr],
        create: bool,
        entry: &str,
    ) -> Result<(), LayerError> {
        if self.levels_stale {
            self.levels.clear();
            self.levels_stale = false;
        }
        let same = self
            .levels
            .iter()
            .zip(comps)
            .take_while(|(l, c)| l.name == **c)
            .count();
        self.levels.truncate(same);
        for (i, c) in comps.iter().enumerate().skip(same) {
            let (cur, cur_rel) = current(&self.levels, &self.root_fd);
            let rel = cur_rel.join(c);
            let err = |e: Errno| apply_err(entry, self.root.join(&rel), e);
            let opened = match rfs::openat(cur, *c, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => Some(fd),
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(cur, *c, Mode::from_raw_mode(0o755)) {
                        Ok(()) => {
                            let fd = rfs::openat(cur, *c, DIR_FLAGS, Mode::empty()).map_err(err)?;
                            // 0755 whatever the umask: a parent no entry
                            // lists keeps it, as containerd's `mkparent`
                            // under a daemon's 022 gives it.
                            rfs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(err)?;
                            Some(fd)
                        }
                        // A dangling symlink: resolved below.
                        Err(Errno::EXIST) => None,
                        Err(e) => return Err(err(e)),
                    }
                }
                // A symlink, or not a directory.
                Err(Errno::LOOP | Errno::NOTDIR) => None,
                Err(e) => return Err(err(e)),
            };
            let level = match opened {
                Some(fd) => Level {
                    name: c.to_os_string(),
                    fd,
                    rel,
                    by_hand: false,
                },
                None => {
                    let (fd, rel) = resolve_dir(
                        &self.root,
                        self.root_fd.as_fd(),
                        &comps[..=i],
                        create,
                        entry,
                    )?;
                    Level {
                        name: c.to_os_string(),
                        fd,
                        rel,
                        by_hand: true,
                    }
                }
            };
            self.levels.push(level);
        }
        Ok(())
    }

    /// Sets directory modes and mtimes, deepest first, now that nothing
    /// more will be written into them. A directory a later entry replaced
    /// or removed is skipped, and so is one a later entry moved out of
    /// reach: had a parent become a symlink, the path would now name
    /// whatever that symlink points at, maybe outside the root. Each is
    /// opened one component at a time without following symlinks, sharing
    /// the open parents of the one before.
    fn finish_dirs(&mut self) -> Result<(), LayerError> {
        self.levels.clear();
        let mut open: Vec<(OsString, OwnedFd)> = Vec::new();
        for d in self.dirs.iter().rev() {
            let comps: Vec<&OsStr> = d.rel.iter().collect();
            let same = open
                .iter()
                .zip(&comps)
                .take_while(|((name, _), c)| name == *c)
                .count();
            open.truncate(same);
            let mut reachable = true;
            for c in &comps[same..] {
                let cur = open
                    .last()
                    .map_or(self.root_fd.as_fd(), |(_, fd)| fd.as_fd());
                match rfs::openat(cur, *c, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => open.push((c.to_os_string(), fd)),
                    Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {
                        reachable = false;
                        break;
                    }
                    Err(e) => return Err(apply_err(&d.entry, self.root.join(&d.rel), e)),
                }
            }
            let Some((_, fd)) = open.last().filter(|_| reachable && !comps.is_empty()) else {
                continue;
            };
            let target = Target::Fd(fd.as_fd());
            set_mode(target, d.mode)
                .and_then(|()| set_mtime(target, d.mtime))
                .map_err(|e| apply_err(&d.entry, self.root.join(&d.rel), e))?;
        }
        Ok(())
    }
}

/// The directory `levels` lead to and its path relative to the root.
fn current<'a>(levels: &'a [Level], root_fd: &'a OwnedFd) -> (BorrowedFd<'a>, &'a Path) {
    match levels.last() {
        Some(l) => (l.fd.as_fd(), &l.rel),
        None => (root_fd.as_fd(), Path::new("")),
    }
}

fn apply_err(entry: &str, path: PathBuf, source: impl Into<io::Error>) -> LayerError {
    let source = source.into();
    if let Some(Unmapped(uid, gid)) = source.get_ref().and_then(|e| e.downcast_ref()) {
        return LayerError::UnmappedOwner {
            entry: entry.to_string(),
            uid: *uid,
            gid: *gid,
            hint: crate::rootless::unmapped_owner_hint(),
        };
    }
    LayerError::Apply {
        entry: entry.to_string(),
        path,
        source,
    }
}

/// A chown the kernel refused with `EINVAL`: its answer for an id the user
/// namespace estiba runs in does not map (rootless, without enough
/// subordinate ids). [`apply_err`] makes it [`LayerError::UnmappedOwner`].
#[derive(Debug)]
struct Unmapped(u32, u32);

impl std::fmt::Display for Unmapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} is not mapped in this user namespace",
            self.0, self.1
        )
    }
}

impl std::error::Error for Unmapped {}

/// Runs `create` (which makes `name` in `dir`, failing with `EEXIST` when
/// something is there) until it succeeds, removing what is in the way
/// after each `EEXIST`. Returns its result and what was removed (the most
/// telling kind, when several).
fn create_at<T>(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mut create: impl FnMut() -> rustix::io::Result<T>,
) -> io::Result<(T, Removed)> {
    let mut removed = Removed::Nothing;
    for _ in 0..CREATE_ATTEMPTS {
        match create() {
            Ok(t) => return Ok((t, removed)),
            Err(Errno::EXIST) => match remove_at(dir, name)? {
                Removed::Dir => removed = Removed::Dir,
                Removed::NotADir if removed == Removed::Nothing => removed = Removed::NotADir,
                _ => {}
            },
            Err(e) => return Err(e.into()),
        }
    }
    Err(Errno::EXIST.into())
}

/// Removes whatever `name` in `dir` is (a directory with its contents),
/// never following a symlink; nothing there is fine.
fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Removed> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(Removed::NotADir),
        Err(Errno::NOENT) => Ok(Removed::Nothing),
        Err(Errno::ISDIR) => {
            remove_tree_at(dir, name)?;
            Ok(Removed::Dir)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the directory `name` in `parent` with everything in it.
fn remove_tree_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    /// A directory being emptied: its name in its parent, what is left in
    /// it, and its parent's device and inode.
    struct Level {
        name: OsString,
        left: Vec<OsString>,
        parent: (u64, u64),
    }
    let id = |fd: BorrowedFd<'_>| rfs::fstat(fd).map(|st| (st.st_dev, st.st_ino));
    let gone = |removed: rustix::io::Result<()>| match removed {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    };
    // Depth first without recursion, whatever the depth (a layer can hold
    // a tree deeper than any stack): only the current directory's
    // descriptor is open; its parent is opened again once it is empty.
    let mut fd = rfs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
    let mut stack = vec![Level {
        name: name.to_os_string(),
        left: child_names(fd.as_fd())?,
        parent: id(parent)?,
    }];
    while let Some(top) = stack.last_mut() {
        if let Some(child) = top.left.pop() {
            match rfs::unlinkat(&fd, &child, AtFlags::empty()) {
                Err(Errno::ISDIR) => {
                    let sub = rfs::openat(&fd, &child, DIR_FLAGS, Mode::empty())?;
                    stack.push(Level {
                        name: child,
                        left: child_names(sub.as_fd())?,
                        parent: id(fd.as_fd())?,
                    });
                    fd = sub;
                }
                other => gone(other)?,
            }
            continue;
        }
        let Some(done) = stack.pop() else { break };
        if stack.is_empty() {
            return gone(rfs::unlinkat(parent, &done.name, AtFlags::REMOVEDIR));
        }
        fd = super::reopen_parent(fd.as_fd(), done.parent)?;
        gone(rfs::unlinkat(&fd, &done.name, AtFlags::REMOVEDIR))?;
    }
    Ok(())
}

/// The names in the open directory `dir` (not `.` and `..`), with whether
/// each is a directory.
fn child_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    Ok(children(dir)?.into_iter().map(|(name, _)| name).collect())
}

fn children(dir: BorrowedFd<'_>) -> io::Result<Vec<(OsString, bool)>> {
    let mut out = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_os_string();
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => match rfs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            },
            _ => false,
        };
        out.push((name, is_dir));
    }
    Ok(out)
}

/// Empties the directory `dir` (at `dir_rel`) of everything this layer has
/// not written itself, descending into the directories it has
/// (containerd's semantics).
fn make_opaque(
    root: &Path,
    written: &HashSet<PathBuf>,
    entry: &str,
    dir: BorrowedFd<'_>,
    dir_rel: &Path,
) -> Result<(), LayerError> {
    let children = children(dir).map_err(|e| apply_err(entry, root.join(dir_rel), e))?;
    for (name, is_dir) in children {
        let rel = dir_rel.join(&name);
        let err = |e| apply_err(entry, root.join(&rel), e);
        if written.contains(&rel) {
            if is_dir {
                let fd = rfs::openat(dir, &name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| err(io::Error::from(e)))?;
                make_opaque(root, written, entry, fd.as_fd(), &rel)?;
            }
            continue;
        }
        remove_at(dir, &name).map_err(err)?;
    }
    Ok(())
}

/// Resolves the entry path `comps` as a directory inside the root, as a
/// chroot would: symlinks are followed with the root as `/`, `..` stops at
/// the root. Missing directories are created when `create`. Returns the
/// directory, open, and its path relative to the root, made only of real
/// directories.
fn resolve_dir(
    root: &Path,
    root_fd: BorrowedFd<'_>,
    comps: &[&OsStr],
    create: bool,
    entry: &str,
) -> Result<(OwnedFd, PathBuf), LayerError> {
    let mut stack: Vec<(OsString, OwnedFd)> = Vec::new();
    let mut pending: VecDeque<OsString> = comps.iter().map(|c| c.to_os_string()).collect();
    // Symlinks followed and directories made: both end, for a hostile tree.
    let mut steps = 0;
    while let Some(c) = pending.pop_front() {
        match c.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        let path = |stack: &[(OsString, OwnedFd)]| {
            let mut p = root.to_path_buf();
            p.extend(stack.iter().map(|(n, _)| n));
            p.push(&c);
            p
        };
        let cur = stack.last().map_or(root_fd, |(_, fd)| fd.as_fd());
        match rfs::openat(cur, &c, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => {
                stack.push((c, fd));
                continue;
            }
            Err(Errno::NOENT) if create => {
                steps += 1;
                if steps > MAX_SYMLINKS {
                    return Err(LayerError::SymlinkLoop {
                        entry: entry.to_string(),
                    });
                }
                match rfs::mkdirat(cur, &c, Mode::from_raw_mode(0o755)) {
                    // 0755 whatever the umask, as above.
                    Ok(()) => rfs::chmodat(cur, &c, Mode::from_raw_mode(0o755), AtFlags::empty())
                        .map_err(|e| apply_err(entry, path(&stack), e))?,
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(apply_err(entry, path(&stack), e)),
                }
                // Opened (or, if a symlink raced in, resolved) next turn.
                pending.push_front(c);
                continue;
            }
            Err(Errno::LOOP | Errno::NOTDIR) => {}
            Err(e) => return Err(apply_err(entry, path(&stack), e)),
        }
        let st = rfs::statat(cur, &c, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| apply_err(entry, path(&stack), e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            return Err(LayerError::NotADirectory {
                entry: entry.to_string(),
                path: path(&stack),
            });
        }
        steps += 1;
        if steps > MAX_SYMLINKS {
            return Err(LayerError::SymlinkLoop {
                entry: entry.to_string(),
            });
        }
        let target =
            rfs::readlinkat(cur, &c, Vec::new()).map_err(|e| apply_err(entry, path(&stack), e))?;
        let target = target.as_bytes();
        if target.starts_with(b"/") {
            stack.clear();
        }
        for part in target.split(|b| *b == b'/').rev() {
            pending.push_front(OsStr::from_bytes(part).to_os_string());
        }
    }
    let rel: PathBuf = stack.iter().map(|(n, _)| n).collect();
    let fd = match stack.pop() {
        Some((_, fd)) => fd,
        None => rfs::openat(root_fd, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| apply_err(entry, root.to_path_buf(), e))?,
    };
    Ok((fd, rel))
}

/// Where a hardlink's target is: its parent resolved inside the root, its
/// last component not followed. It must exist and not be a directory.
/// Returns the parent, open, the target's name in it, and the target's
/// resolved path relative to the root.
fn resolve_link_target<'t>(
    root: &Path,
    root_fd: BorrowedFd<'_>,
    entry: &str,
    target: &'t Path,
) -> Result<(OwnedFd, &'t OsStr, PathBuf), LayerError> {
    let missing = || LayerError::MissingLinkTarget {
        entry: entry.to_string(),
        target: target.to_string_lossy().into_owned(),
    };
    let file_name = target.file_name().ok_or_else(missing)?;
    let parent: Vec<&OsStr> = target.parent().unwrap_or(Path::new("")).iter().collect();
    let (dir, dir_rel) = match resolve_dir(root, root_fd, &parent, false, entry) {
        Ok(found) => found,
        Err(LayerError::Apply { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(missing())
        }
        Err(e) => return Err(e),
    };
    let rel = dir_rel.join(file_name);
    match rfs::statat(&dir, file_name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            Err(LayerError::Invalid {
                entry: entry.to_string(),
                reason: "hard link to a directory".to_string(),
            })
        }
        Ok(_) => Ok((dir, file_name, rel)),
        Err(Errno::NOENT) => Err(missing()),
        Err(e) => Err(apply_err(entry, root.join(rel), e)),
    }
}

/// What metadata is set on: an open file, or a name in an open directory
/// (never followed if it is a symlink).
#[derive(Clone, Copy)]
enum Target<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a OsStr),
}

/// The owner to give an entry: `None` when owners are not kept.
fn owner_of(
    opts: &UnpackOptions,
    entry: &str,
    meta: &EntryMeta,
) -> Result<Option<(rfs::Uid, rfs::Gid)>, LayerError> {
    if !opts.same_owner {
        return Ok(None);
    }
    let out_of_range = |what: &str, id: u64| LayerError::Invalid {
        entry: entry.to_string(),
        reason: format!("{what} {id} is out of range"),
    };
    let uid = u32::try_from(meta.uid).map_err(|_| out_of_range("uid", meta.uid))?;
    let gid = u32::try_from(meta.gid).map_err(|_| out_of_range("gid", meta.gid))?;
    Ok(Some((rfs::Uid::from_raw(uid), rfs::Gid::from_raw(gid))))
}

/// Gives `target` `owner` (when keeping owners) and the entry's xattrs;
/// the xattrs the kernel refuses an unprivileged run are counted in
/// `stats`.
fn set_owner_and_xattrs(
    opts: &UnpackOptions,
    stats: &mut UnpackStats,
    target: Target<'_>,
    owner: Option<(rfs::Uid, rfs::Gid)>,
    meta: &EntryMeta,
) -> Result<(), io::Error> {
    if let Some((uid, gid)) = owner {
        let chowned = match target {
            Target::Fd(fd) => rfs::fchown(fd, Some(uid), Some(gid)),
            Target::At(dir, name) => {
                rfs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
            }
        };
        match chowned {
            Ok(()) => {}
            Err(Errno::INVAL) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    Unmapped(uid.as_raw(), gid.as_raw()),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    // xattrs after chown: chown clears security.capability.
    for (name, value) in &meta.xattrs {
        if crate::rootfs::is_overlay_xattr(name.as_bytes()) {
            continue;
        }
        let set = match target {
            Target::Fd(fd) => rfs::fsetxattr(fd, name.as_str(), value, rfs::XattrFlags::empty()),
            // Symlinks and devices cannot be opened for this: the name
            // through the parent's descriptor, not followed.
            Target::At(dir, file) => {
                let mut path = PathBuf::from(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&dir)
                ));
                path.push(file);
                rfs::lsetxattr(&path, name.as_str(), value, rfs::XattrFlags::empty())
            }
        };
        match set {
            Ok(()) => {}
            Err(Errno::PERM | Errno::NOTSUP) if !opts.same_owner => stats.xattrs_skipped += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sets permission bits (with setuid, setgid and sticky).
fn set_mode(target: Target<'_>, mode: u32) -> io::Result<()> {
    let mode = Mode::from_raw_mode(mode & 0o7777);
    match target {
        Target::Fd(fd) => rfs::fchmod(fd, mode)?,
        // Only for names just made as devices or fifos, never symlinks.
        Target::At(dir, name) => rfs::chmodat(dir, name, mode, AtFlags::empty())?,
    }
    Ok(())
}

/// Sets both times to `mtime`, not following a symlink.
fn set_mtime(target: Target<'_>, mtime: i64) -> io::Result<()> {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    match target {
        Target::Fd(fd) => rfs::futimens(fd, &times)?,
        Target::At(dir, name) => rfs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?,
    }
    Ok(())
}

fn copy_content(
    data: &mut impl Read,
    out: &mut impl Write,
    buf: &mut [u8],
) -> Result<u64, DataError> {
    let mut copied = 0u64;
    loop {
        let n = match data.read(buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DataError::Read(e)),
        };
        out.write_all(&buf[..n]).map_err(DataError::Write)?;
        copied += n as u64;
    }
}

/// [`copy_content`] past the page cache (`O_DIRECT` where the file system
/// allows it), 1 MiB at a time from a thread of its own, for a file of at
/// least [`DIRECT_WRITE_MIN`] (`file` is new and empty). A snapshot's big
/// files are mostly written and not read again before the disk has them,
/// and on a VM whose host reclaims free memory each new page-cache page is
/// a fault on the host: a COPY of 20,000 files and 500 MB followed by a
/// RUN spent 2.0-2.3 s of system time that way, 1.0 s with this (cold
/// build 2.73-3.03 s -> 1.71-1.83 s; after a one-file edit 2.98-4.47 s ->
/// 1.45-1.77 s, alternating the binaries). A RUN that then reads every
/// byte of those files took as long either way (5.62-5.92 s against
/// 5.84-6.34 s).
fn copy_content_direct(
    data: &mut impl Read,
    file: &fs::File,
    buf: &mut [u8],
) -> Result<u64, DataError> {
    let mut out = estiba_cache::DirectWriter::to_file(file).in_background();
    let copied = copy_content(data, &mut out, buf)?;
    out.finish_file().map_err(DataError::Write)?;
    Ok(copied)
}

/// Files from this size up are written by [`copy_content_direct`].
const DIRECT_WRITE_MIN: u64 = 4 << 20;
