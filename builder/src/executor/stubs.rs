//! Mount point placeholders. A mount needs something to mount on; when the
//! image lacks it (`/proc`, `/etc/hosts`, a `RUN --mount` target), the init
//! creates it through the overlay, which puts it in the step's upper dir.
//! [`Stubs`] (in the init) creates them, resolving symlinks inside the root
//! file system only, and reports each one that landed in the upper dir;
//! [`Tracked`] (in [`super::run`], once the overlay is gone) removes those
//! that are still exactly what the init made, as BuildKit's mount stub
//! cleaner does, so they never reach the layer.
//!
//! An image directory that only got copied up because a placeholder was
//! created in it (`/etc` for `/etc/hosts`) goes too, when the step did not
//! touch it: its times still match the stamp the init took after setup.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::protocol::{errno, Failure, Message, Reporter, Stamp, StubKind};
use super::ExecError;

/// How many symlinks one path may go through, as the kernel's limit.
const MAX_SYMLINKS: u32 = 40;

/// Resolves `path` inside `root` as if `root` were `/`: absolute symlinks
/// restart at `root`, `..` never climbs above it. Returns the resolved path
/// relative to `root`; its last components may not exist.
pub(super) fn resolve_in(root: &Path, path: &Path) -> io::Result<PathBuf> {
    enum Step {
        Up,
        Name(OsString),
    }
    fn push_steps(stack: &mut Vec<Step>, path: &Path) {
        let steps: Vec<Step> = path
            .components()
            .filter_map(|c| match c {
                Component::ParentDir => Some(Step::Up),
                Component::Normal(name) => Some(Step::Name(name.to_owned())),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
            })
            .collect();
        stack.extend(steps.into_iter().rev());
    }

    let mut resolved = PathBuf::new();
    let mut stack = Vec::new();
    push_steps(&mut stack, path);
    let mut links = 0;
    while let Some(step) = stack.pop() {
        let name = match step {
            Step::Up => {
                resolved.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let candidate = root.join(&resolved).join(&name);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                push_steps(&mut stack, &target);
            }
            _ => resolved.push(name),
        }
    }
    Ok(resolved)
}

/// What [`Stubs::write`] does with what the image has at its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Existing {
    /// Keep the image's own (a generated `/etc/hosts`).
    Keep,
    /// An error: the step must see what estiba puts there (a heredoc).
    Refuse,
}

/// Creates mount points in the mounted overlay (the init's side).
#[derive(Debug)]
pub(super) struct Stubs<'a> {
    rootfs: &'a Path,
    upper: &'a Path,
    /// `upper` is the copy snapshotter's whole root: every image directory
    /// a placeholder is made in is tracked, as overlayfs would copy it up.
    copy: bool,
    report: &'a mut Reporter,
    /// Tracked directories, to stamp once setup is done.
    dirs: Vec<PathBuf>,
}

impl<'a> Stubs<'a> {
    pub(super) fn new(
        rootfs: &'a Path,
        upper: &'a Path,
        copy: bool,
        report: &'a mut Reporter,
    ) -> Self {
        Stubs {
            rootfs,
            upper,
            copy,
            report,
            dirs: Vec::new(),
        }
    }

    /// Makes sure a directory (`dir`) or a non-directory exists at the
    /// container path `target`, creating it and its missing parents, and
    /// returns its host path (under the root file system).
    pub(super) fn ensure(&mut self, target: &str, dir: bool) -> Result<PathBuf, Failure> {
        let fail = |e: io::Error| Failure::MountPoint {
            target: target.to_owned(),
            errno: errno(&e),
        };
        let os = io::Error::from_raw_os_error;
        let rel = resolve_in(self.rootfs, Path::new(target)).map_err(fail)?;
        if rel.as_os_str().is_empty() {
            return Err(Failure::Spec(format!(
                "cannot mount over {target}: it is the root directory"
            )));
        }
        let parts: Vec<_> = rel.iter().collect();
        let mut cur = PathBuf::new();
        // Image directories not yet in the upper dir: creating an entry in
        // one copies it up.
        let mut fresh = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            cur.push(part);
            let last = i + 1 == parts.len();
            let host = self.rootfs.join(&cur);
            match fs::symlink_metadata(&host) {
                Ok(meta) if !last => {
                    if !meta.is_dir() {
                        return Err(fail(os(libc::ENOTDIR)));
                    }
                    if self.copy || !exists(&self.upper.join(&cur)) {
                        fresh.push(cur.clone());
                    }
                }
                Ok(meta) => {
                    if dir && !meta.is_dir() {
                        return Err(fail(os(libc::ENOTDIR)));
                    }
                    if !dir && meta.is_dir() {
                        return Err(fail(os(libc::EISDIR)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let kind = if last && !dir {
                        fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o644)
                            .open(&host)
                            .map_err(fail)?;
                        StubKind::File
                    } else {
                        fs::DirBuilder::new()
                            .mode(0o755)
                            .create(&host)
                            .map_err(fail)?;
                        StubKind::Dir
                    };
                    self.record(&cur, kind);
                }
                Err(e) => return Err(fail(e)),
            }
        }
        for copied in fresh {
            if exists(&self.upper.join(&copied)) {
                self.record(&copied, StubKind::CopiedUp);
            }
        }
        Ok(self.rootfs.join(rel))
    }

    /// Chroot isolation, where nothing can be mounted: writes `content` at
    /// the container path `target` when the image has nothing there (its
    /// parents made as for a mount point); what the image has there is
    /// kept or refused, as `existing` says.
    pub(super) fn write(
        &mut self,
        target: &str,
        content: &[u8],
        mode: u32,
        existing: Existing,
    ) -> Result<(), Failure> {
        self.make_if_missing(target, StubKind::Written, existing, |host| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(host)?;
            io::Write::write_all(&mut file, content)?;
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        })
    }

    /// Chroot isolation: makes the character device `major:minor` at
    /// `target` (mode 0666) when the image has nothing there.
    pub(super) fn device_if_missing(
        &mut self,
        target: &str,
        major: u64,
        minor: u64,
    ) -> Result<(), Failure> {
        self.make_if_missing(target, StubKind::Device, Existing::Keep, |host| {
            let mode = rustix::fs::Mode::from_raw_mode(0o666);
            let dev = rustix::fs::makedev(major as u32, minor as u32);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                host,
                rustix::fs::FileType::CharacterDevice,
                mode,
                dev,
            )?;
            // The umask narrowed it.
            rustix::fs::chmod(host, mode).map_err(io::Error::from)
        })
    }

    fn make_if_missing(
        &mut self,
        target: &str,
        kind: StubKind,
        existing: Existing,
        make: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<(), Failure> {
        let fail = |e: io::Error| Failure::MountPoint {
            target: target.to_owned(),
            errno: errno(&e),
        };
        let path = Path::new(target);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Failure::Spec(format!("cannot place {target}")));
        };
        let parent_host = if parent == Path::new("/") {
            self.rootfs.to_path_buf()
        } else {
            let host = self.ensure(&parent.to_string_lossy(), true)?;
            // An image directory the entry goes in: tracked as overlayfs
            // would copy it up (one `ensure` just made is tracked already).
            if let Ok(rel) = host.strip_prefix(self.rootfs) {
                let rel = rel.to_owned();
                self.record(&rel, StubKind::CopiedUp);
            }
            host
        };
        let host = parent_host.join(name);
        match fs::symlink_metadata(&host) {
            Ok(_) if existing == Existing::Refuse => {
                return Err(Failure::Spec(format!(
                    "the image has {target}, where --isolation chroot cannot mount over it"
                )))
            }
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e)),
        }
        make(&host).map_err(fail)?;
        let rel = host
            .strip_prefix(self.rootfs)
            .map_err(|_| fail(io::Error::from_raw_os_error(libc::EXDEV)))?
            .to_owned();
        self.record(&rel, kind);
        Ok(())
    }

    /// Reports an entry the init made, if it landed in the upper dir (not in
    /// a tmpfs such as `/dev`).
    fn record(&mut self, rel: &Path, kind: StubKind) {
        if !exists(&self.upper.join(rel)) {
            return;
        }
        if kind != StubKind::File {
            self.dirs.push(rel.to_owned());
        }
        self.report.send(&Message::Created {
            path: rel.to_owned(),
            kind,
        });
    }

    /// Reports the times of the tracked directories, now that setup is done
    /// and before the command runs.
    pub(super) fn send_stamps(&mut self) {
        for rel in std::mem::take(&mut self.dirs) {
            if let Ok(meta) = fs::symlink_metadata(self.upper.join(&rel)) {
                self.report.send(&Message::Stamp {
                    path: rel,
                    stamp: stamp(&meta),
                });
            }
        }
    }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn stamp(meta: &fs::Metadata) -> Stamp {
    Stamp {
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    }
}

/// Whether `meta` is still of the type the init made for `kind`.
fn same_kind(kind: StubKind, meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    match kind {
        StubKind::File | StubKind::Written => meta.file_type().is_file() && meta.nlink() == 1,
        StubKind::Device => meta.file_type().is_char_device(),
        StubKind::Dir | StubKind::CopiedUp => meta.is_dir(),
    }
}

/// The placeholders the init reported (the side of [`super::run`]).
#[derive(Debug, Default)]
pub(super) struct Tracked {
    entries: BTreeMap<PathBuf, (StubKind, Option<Stamp>)>,
}

impl Tracked {
    pub(super) fn created(&mut self, path: PathBuf, kind: StubKind) {
        // Only plain relative paths: nothing may point outside the upper dir.
        if path.components().all(|c| matches!(c, Component::Normal(_))) {
            self.entries.entry(path).or_insert((kind, None));
        }
    }

    pub(super) fn stamp(&mut self, path: PathBuf, stamp: Stamp) {
        if let Some(entry) = self.entries.get_mut(&path) {
            entry.1 = Some(stamp);
        }
    }

    /// Removes from `upper` (no longer mounted) every placeholder that is
    /// still what the init made, and the directories that hold nothing else.
    pub(super) fn clean(&self, upper: &Path) -> Result<(), ExecError> {
        let mut memo = HashMap::new();
        let mut doomed: Vec<&PathBuf> = self
            .entries
            .keys()
            .filter(|rel| self.removable(upper, rel, &mut memo))
            .collect();
        // Children before their parents.
        doomed.sort_by_key(|rel| std::cmp::Reverse(rel.components().count()));
        for rel in doomed {
            let path = upper.join(rel);
            let removed = match self.entries.get(rel) {
                Some((StubKind::File | StubKind::Written | StubKind::Device, _)) => {
                    fs::remove_file(&path)
                }
                _ => fs::remove_dir(&path),
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(ExecError::Cleanup { path, source }),
            }
        }
        Ok(())
    }

    /// Whether `rel`, in the copy snapshotter's root, is a placeholder the
    /// init made and the step left as it was: not a change of the step.
    pub(super) fn untouched(&self, root: &Path, rel: &Path) -> bool {
        let Ok(meta) = fs::symlink_metadata(root.join(rel)) else {
            return false;
        };
        match self.entries.get(rel) {
            Some((StubKind::File, _)) => {
                meta.file_type().is_file() && meta.len() == 0 && meta.nlink() == 1
            }
            Some((kind, Some(recorded))) => same_kind(*kind, &meta) && *recorded == stamp(&meta),
            _ => false,
        }
    }

    fn removable(&self, upper: &Path, rel: &Path, memo: &mut HashMap<PathBuf, bool>) -> bool {
        if let Some(&known) = memo.get(rel) {
            return known;
        }
        let verdict = self.check(upper, rel, memo);
        memo.insert(rel.to_owned(), verdict);
        verdict
    }

    fn check(&self, upper: &Path, rel: &Path, memo: &mut HashMap<PathBuf, bool>) -> bool {
        let Some(&(kind, recorded)) = self.entries.get(rel) else {
            return false;
        };
        let path = upper.join(rel);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            return false;
        };
        if kind == StubKind::File {
            return meta.file_type().is_file() && meta.len() == 0 && meta.nlink() == 1;
        }
        if matches!(kind, StubKind::Written | StubKind::Device) {
            return same_kind(kind, &meta) && recorded == Some(stamp(&meta));
        }
        if !meta.is_dir() {
            return false;
        }
        // A copied-up image directory goes only if the step left it alone; a
        // directory the init created, also when setup failed before stamping.
        match (kind, recorded) {
            (_, Some(s)) if s != stamp(&meta) => return false,
            (StubKind::CopiedUp, None) => return false,
            _ => {}
        }
        // A directory the init created may be opaque (it replaced a deleted
        // one); without it the deletion shows again, as before the step.
        if kind == StubKind::CopiedUp && crate::rootfs::is_overlay_opaque(&path) {
            return false;
        }
        let Ok(entries) = fs::read_dir(&path) else {
            return false;
        };
        for entry in entries {
            let Ok(entry) = entry else {
                return false;
            };
            if !self.removable(upper, &rel.join(entry.file_name()), memo) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_in_keeps_symlinks_inside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        fs::create_dir_all(r.join("etc")).expect("mkdir");
        std::os::unix::fs::symlink("/run/real", r.join("etc/abs")).expect("link");
        std::os::unix::fs::symlink("../../../../x", r.join("etc/up")).expect("link");
        std::os::unix::fs::symlink("etc", r.join("e")).expect("link");
        std::os::unix::fs::symlink("loop", r.join("loop")).expect("link");
        let res = |p: &str| resolve_in(r, Path::new(p));
        assert_eq!(res("/etc/abs/f").expect("abs"), Path::new("run/real/f"));
        assert_eq!(res("/etc/up").expect("up"), Path::new("x"));
        assert_eq!(res("/e/hosts").expect("rel"), Path::new("etc/hosts"));
        assert_eq!(res("/../../etc").expect("dotdot"), Path::new("etc"));
        assert_eq!(
            res("/loop").map_err(|e| e.raw_os_error()),
            Err(Some(libc::ELOOP))
        );
    }
}
