//! The read-only file trees COPY and ADD read from, behind one trait: the
//! build context (with `.dockerignore` applied) and the root filesystem of a
//! stage or image (layers seen through their snapshots, as overlayfs would).
//!
//! Paths here are relative, `/`-separated, without a leading `/`; `""` is the
//! root. Nothing in this module follows a symlink out of its tree: symlinks
//! are resolved as if the tree's root were `/` (chroot semantics).

use estiba_cache::Digest;
use std::io::Read;

/// What kind of entry a path is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link and its target, verbatim.
    Symlink(String),
    /// A character device (major, minor).
    CharDevice(u32, u32),
    /// A block device (major, minor).
    BlockDevice(u32, u32),
    /// A named pipe.
    Fifo,
    /// A socket (never copied: docker skips them).
    Socket,
}

/// `lstat` of an entry, as far as images care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Its kind.
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (`0o7777` mask).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes of a regular file, else 0.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// `(device, inode)` when the entry may be a hard link of another
    /// (regular file with more than one link), for keeping hard links.
    pub link_id: Option<(u64, u64)>,
}

/// A failure reading a tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// An I/O error on a named path.
    #[error("cannot read {path}")]
    Io {
        /// The path, as the user knows it.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A symlink chain that does not end.
    #[error("too many levels of symbolic links at {0}")]
    SymlinkLoop(String),
    /// Anything else the tree's backing store reports.
    #[error("{0}")]
    Other(String),
}

/// A read-only tree COPY can read.
pub trait SourceTree {
    /// `lstat` of `path`, or `None` when it does not exist or is excluded.
    fn stat(&self, path: &str) -> Result<Option<Meta>, TreeError>;
    /// The names of a directory's entries, sorted bytewise, excluded ones left out.
    fn children(&self, path: &str) -> Result<Vec<String>, TreeError>;
    /// A regular file's content.
    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, TreeError>;
    /// Extended attributes worth keeping (`user.*`, `security.*`, `trusted.*`
    /// but not `trusted.overlay.*`), sorted by name.
    fn xattrs(&self, path: &str) -> Result<Vec<(String, Vec<u8>)>, TreeError>;
    /// A regular file's content as a file on disk, when the tree has one:
    /// copying file to file lets the kernel move the bytes
    /// (`copy_file_range`) instead of a user-space buffer. `None` when the
    /// tree has no such file (the caller then uses [`SourceTree::open`]).
    fn open_file(&self, path: &str) -> Result<Option<std::fs::File>, TreeError> {
        let _ = path;
        Ok(None)
    }
    /// The sha256 of a regular file's content. Trees that can remember it
    /// (the context's stat cache) override this.
    fn content_digest(&self, path: &str) -> Result<Digest, TreeError> {
        let mut hasher = estiba_cache::Hasher::new();
        let mut reader = self.open(path)?;
        std::io::copy(&mut reader, &mut hasher).map_err(|source| TreeError::Io {
            path: path.to_string(),
            source,
        })?;
        Ok(hasher.finish())
    }
    /// [`SourceTree::content_digest`] of each of `paths`, in order. Trees
    /// that can hash on several threads override this.
    fn content_digests(&self, paths: &[&str]) -> Result<Vec<Digest>, TreeError> {
        paths.iter().map(|p| self.content_digest(p)).collect()
    }
    /// Whether a directory copied from this tree keeps its own mtime once
    /// its contents are in, as fsutil's copy sets it from the source after
    /// them (copy/copy.go `copyFileInfo`): a stage's or an image's tree.
    /// The build context says no: docker 20.10's transfer of the context
    /// loses directory mtimes, so a copied directory with contents has the
    /// step's time there.
    fn keeps_dir_times(&self) -> bool {
        true
    }
}

/// A borrowed tree is a tree: lets a step hand out `Rc<dyn SourceTree>`
/// views of the context, which it does not own.
impl<T: SourceTree + ?Sized> SourceTree for &T {
    fn stat(&self, path: &str) -> Result<Option<Meta>, TreeError> {
        (**self).stat(path)
    }
    fn children(&self, path: &str) -> Result<Vec<String>, TreeError> {
        (**self).children(path)
    }
    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, TreeError> {
        (**self).open(path)
    }
    fn xattrs(&self, path: &str) -> Result<Vec<(String, Vec<u8>)>, TreeError> {
        (**self).xattrs(path)
    }
    fn open_file(&self, path: &str) -> Result<Option<std::fs::File>, TreeError> {
        (**self).open_file(path)
    }
    fn keeps_dir_times(&self) -> bool {
        (**self).keeps_dir_times()
    }
    fn content_digest(&self, path: &str) -> Result<Digest, TreeError> {
        (**self).content_digest(path)
    }
    fn content_digests(&self, paths: &[&str]) -> Result<Vec<Digest>, TreeError> {
        (**self).content_digests(paths)
    }
}

/// How many symlinks one resolution may follow, as Linux allows.
pub const MAX_SYMLINKS: usize = 40;

/// Joins relative tree paths.
pub fn join(dir: &str, name: &str) -> String {
    match (dir.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => dir.to_string(),
        _ => {
            let mut joined = String::with_capacity(dir.len() + 1 + name.len());
            joined.push_str(dir);
            joined.push('/');
            joined.push_str(name);
            joined
        }
    }
}

/// Cleans a path into tree form: no leading `/`, no `.`/empty components,
/// `..` never above the root.
pub fn clean(path: &str) -> String {
    let is_clean = path.is_empty()
        || path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if is_clean {
        return path.to_string();
    }
    // The frontend's `path.Clean` for absolute paths, without the leading `/`.
    let mut cleaned = estiba_frontend::plan::clean_path(path);
    cleaned.remove(0);
    cleaned
}

/// Resolves `path` inside `tree` as if its root were `/`: every symlink in a
/// parent component is followed within the tree, and the last component too
/// when `follow_last`. Returns the resolved path (which may not exist).
pub fn resolve(tree: &dyn SourceTree, path: &str, follow_last: bool) -> Result<String, TreeError> {
    resolve_with(|p| tree.stat(p), path, follow_last)
}

/// [`resolve`] over any `lstat`: for views that are not whole trees.
pub fn resolve_with(
    mut stat: impl FnMut(&str) -> Result<Option<Meta>, TreeError>,
    path: &str,
    follow_last: bool,
) -> Result<String, TreeError> {
    let mut pending: Vec<String> = clean(path)
        .split('/')
        .filter(|p| !p.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut done = String::new();
    let mut followed = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            done = match done.rsplit_once('/') {
                Some((parent, _)) => parent.to_string(),
                None => String::new(),
            };
            continue;
        }
        if part == "." || part.is_empty() {
            continue;
        }
        let candidate = join(&done, &part);
        let is_last = pending.is_empty();
        match stat(&candidate)? {
            Some(Meta {
                kind: EntryKind::Symlink(target),
                ..
            }) if !is_last || follow_last => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(TreeError::SymlinkLoop(candidate));
                }
                if target.starts_with('/') {
                    done.clear();
                }
                for p in target.split('/').rev() {
                    pending.push(p.to_string());
                }
            }
            _ => done = candidate,
        }
    }
    Ok(done)
}

/// The order walks visit a tree in and the order layers and the stat cache
/// list paths in: depth first, a directory's entries sorted bytewise, each
/// followed by everything below it. It is bytewise order with `/` below
/// every other byte, so `a`, `a/z`, `a.c` (plain bytewise order would put
/// `a.c` before `a/z` and split the directory `a` from its entries).
pub fn path_order(a: &str, b: &str) -> std::cmp::Ordering {
    path_order_bytes(a.as_bytes(), b.as_bytes())
}

/// [`path_order`] of paths as bytes.
pub fn path_order_bytes(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => key(a[i]).cmp(&key(b[i])),
        None => a.len().cmp(&b.len()),
    }
}

/// Whether a source pattern has wildcards (`*`, `?`, `[`), as Go's
/// `filepath.Match` reads them.
pub fn has_wildcards(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_order_keeps_a_directory_with_its_entries() {
        let mut paths = vec!["a.c", "a/z", "a", "b", "a/b/c", "a/b", "a-"];
        paths.sort_by(|x, y| path_order(x, y));
        assert_eq!(paths, ["a", "a/b", "a/b/c", "a/z", "a-", "a.c", "b"]);
    }

    #[test]
    fn clean_keeps_clean_paths_and_cleans_the_rest() {
        for clean_already in ["", "a", "a/b", "a.b/..c/.d"] {
            assert_eq!(clean(clean_already), clean_already);
        }
        for (messy, want) in [
            ("/", ""),
            ("/a/b/", "a/b"),
            ("a//b", "a/b"),
            ("./a/./b", "a/b"),
            ("a/../b", "b"),
            ("../../a", "a"),
            ("a/b/..", "a"),
            (".", ""),
        ] {
            assert_eq!(clean(messy), want, "{messy}");
        }
    }
}
