//! COPY and ADD: what the sources are, where they land, and writing them
//! into a step's fresh upper directory.
//!
//! The rules are BuildKit's (its file op over fsutil's copier):
//! - sources are relative to the source tree's root and never leave it;
//!   wildcards (`*`, `?`, `[…]`) match per path component, and a wildcard
//!   matching nothing is no error; a named source that is missing is one;
//! - a symlink named as a source is followed (inside the tree); symlinks
//!   inside a copied directory are copied as symlinks;
//! - a directory source copies its contents; a file source lands at the
//!   destination, or inside it when the destination ends in `/` or is an
//!   existing directory;
//! - missing parent directories are created (mode 0755, owned by `--chown`);
//!   existing ones are copied up with their metadata, as overlayfs would;
//! - from the build context files are owned by 0:0, from a stage or image
//!   they keep their owners, and `--chown` overrides both; `--chmod` sets the
//!   mode of everything copied.
//!
//! [`walk_sources`] yields the entries in one fixed order; both the copy and
//! the cache key ([`hash_sources`]) use it, so they always agree.

use crate::layer::{self, LayerStream, TarHeader};
use crate::rootfs::LayeredTree;
use crate::tree::{self, EntryKind, Meta, SourceTree, TreeError};
use estiba_cache::{Digest, Hasher};
use estiba_frontend::dockerignore::{path_match, Matcher};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// How errors name the build context as a source tree.
pub const CONTEXT: &str = "the build context";

/// Why a COPY or ADD failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A named source that is not there (or is excluded by `.dockerignore`).
    #[error("{source_path}: not found in {tree}{}", if tree == CONTEXT { " (is it excluded by .dockerignore?)" } else { "" })]
    NotFound {
        /// The source as written.
        source_path: String,
        /// [`CONTEXT`], "stage build", ...
        tree: String,
    },
    /// `COPY ../x`.
    #[error("{0}: the source is outside the build context")]
    OutsideContext(String),
    /// A bad `--exclude` or wildcard pattern.
    #[error("invalid pattern {pattern:?}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        #[source]
        source: estiba_frontend::dockerignore::IgnoreError,
    },
    /// Copying a directory onto a file, or the like.
    #[error("cannot copy {source_path} to {dest}: {reason}")]
    Conflict {
        /// The source.
        source_path: String,
        /// The destination in the image.
        dest: String,
        /// Why.
        reason: &'static str,
    },
    /// Reading a source failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Writing the layer failed.
    #[error(transparent)]
    Layer(#[from] layer::LayerError),
    /// Writing the destination failed.
    #[error("cannot write {path}")]
    Write {
        /// The path in the upper directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> CopyError + '_ {
    move |source| CopyError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// A mode from `--chmod`: octal, or symbolic (`u+x,go-w`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// `0755`.
    Octal(u32),
    /// `u+x,g-w` and the like, applied to each entry's own mode.
    Symbolic(String),
}

impl Chmod {
    /// Parses a `--chmod` value.
    pub fn parse(text: &str) -> Option<Self> {
        if let Ok(m) = u32::from_str_radix(text, 8) {
            return (m <= 0o7777).then_some(Chmod::Octal(m));
        }
        apply_symbolic(text, 0, false).map(|_| Chmod::Symbolic(text.to_string()))
    }

    /// The mode of an entry that had `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(s) => apply_symbolic(s, mode, is_dir).unwrap_or(mode),
        }
    }
}

/// chmod(1)-style symbolic modes: `[ugoa]*[+-=][rwxXst]*`, comma-separated.
fn apply_symbolic(text: &str, mut mode: u32, is_dir: bool) -> Option<u32> {
    for clause in text.split(',') {
        let who_len = clause.find(['+', '-', '=']).unwrap_or(clause.len());
        let (who, rest) = clause.split_at(who_len);
        let mut mask = 0u32;
        for c in who.chars() {
            mask |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                'a' => 0o7777,
                _ => return None,
            };
        }
        if who.is_empty() {
            mask = 0o7777;
        }
        let mut chars = rest.chars().peekable();
        let op = chars.next()?;
        if !matches!(op, '+' | '-' | '=') {
            return None;
        }
        let mut bits = 0u32;
        for c in chars {
            bits |= match c {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                'X' if is_dir || mode & 0o111 != 0 => 0o111,
                'X' => 0,
                's' => 0o6000,
                't' => 0o1000,
                _ => return None,
            };
        }
        let bits = bits & mask;
        mode = match op {
            '+' => mode | bits,
            '-' => mode & !bits,
            _ => (mode & !mask) | bits,
        };
    }
    Some(mode)
}

/// One source the user named, matched in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMatch {
    /// The name it lands under (the last component as matched, links unresolved).
    pub name: String,
    /// The path relative to the tree root, symlinks resolved.
    pub path: String,
    /// Where it lands relative to the destination with `--parents`.
    pub parents_path: Option<String>,
}

/// Matches the sources of one COPY in `tree`. `what` names the tree in errors.
pub fn match_sources(
    tree: &dyn SourceTree,
    sources: &[String],
    parents: bool,
    what: &str,
) -> Result<Vec<SourceMatch>, CopyError> {
    let mut out = Vec::new();
    for source in sources {
        // `--parents`: the part after `/./` is kept under the destination.
        let (base, kept) = match (parents, source.split_once("/./")) {
            (true, Some((base, kept))) => (base.to_string(), Some(kept.to_string())),
            (true, None) => (String::new(), Some(source.clone())),
            (false, _) => (String::new(), None),
        };
        let full = match &kept {
            Some(k) => tree::join(&tree::clean(&base), k),
            None => source.clone(),
        };
        if escapes_root(&full) {
            return Err(CopyError::OutsideContext(source.clone()));
        }
        let cleaned = tree::clean(&full);
        if !tree::has_wildcards(&cleaned) {
            let path = tree::resolve(tree, &cleaned, true)?;
            if tree.stat(&path)?.is_none() {
                return Err(CopyError::NotFound {
                    source_path: source.clone(),
                    tree: what.to_string(),
                });
            }
            let name = cleaned.rsplit('/').next().unwrap_or_default().to_string();
            let parents_path = kept
                .as_ref()
                .map(|_| strip_base(&cleaned, &tree::clean(&base)));
            out.push(SourceMatch {
                name,
                path,
                parents_path,
            });
            continue;
        }
        for matched in expand_wildcards(tree, &cleaned)? {
            let resolved = tree::resolve(tree, &matched, true)?;
            let name = matched.rsplit('/').next().unwrap_or_default().to_string();
            let parents_path = kept
                .as_ref()
                .map(|_| strip_base(&matched, &tree::clean(&base)));
            out.push(SourceMatch {
                name,
                path: resolved,
                parents_path,
            });
        }
    }
    Ok(out)
}

fn strip_base(path: &str, base: &str) -> String {
    if base.is_empty() {
        return path.to_string();
    }
    path.strip_prefix(base)
        .map(|p| p.trim_start_matches('/').to_string())
        .unwrap_or_else(|| path.to_string())
}

/// Whether a relative source climbs above the root (`../x`, `a/../../x`).
fn escapes_root(path: &str) -> bool {
    let mut depth: i64 = 0;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// Every path matching a wildcard pattern, component by component, sorted.
fn expand_wildcards(tree: &dyn SourceTree, pattern: &str) -> Result<Vec<String>, CopyError> {
    let mut current = vec![String::new()];
    let parts: Vec<&str> = pattern.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for dir in &current {
            let real_dir = tree::resolve(tree, dir, true)?;
            if !tree::has_wildcards(part) {
                let candidate = tree::join(dir, part);
                let real = tree::join(&real_dir, part);
                if tree.stat(&real)?.is_some() {
                    next.push(candidate);
                }
                continue;
            }
            match tree.stat(&real_dir)? {
                Some(Meta {
                    kind: EntryKind::Dir,
                    ..
                }) => {}
                _ => continue,
            }
            for name in tree.children(&real_dir)? {
                let matched = path_match(part, &name).map_err(|source| CopyError::Pattern {
                    pattern: pattern.to_string(),
                    source,
                })?;
                if matched {
                    next.push(tree::join(dir, &name));
                }
            }
        }
        if !last {
            // Only directories (or links to them) can hold the next component.
            let mut dirs = Vec::new();
            for p in next {
                let real = tree::resolve(tree, &p, true)?;
                if matches!(
                    tree.stat(&real)?,
                    Some(Meta {
                        kind: EntryKind::Dir,
                        ..
                    })
                ) {
                    dirs.push(p);
                }
            }
            next = dirs;
        }
        current = next;
    }
    current.sort();
    Ok(current)
}

/// One entry to copy: where it is in the source tree, where it goes
/// relative to its match's landing point, and its metadata.
#[derive(Debug, Clone)]
pub struct WalkEntry {
    /// Path in the source tree.
    pub source: String,
    /// Path relative to the match's landing point (`""` for the match itself).
    pub rel: String,
    /// Its metadata.
    pub meta: Meta,
}

/// The entries under one match, parents before children, sorted, with
/// `--exclude` patterns (relative to the match) applied.
pub fn walk_sources(
    tree: &dyn SourceTree,
    m: &SourceMatch,
    excludes: Option<&Matcher>,
) -> Result<Vec<WalkEntry>, CopyError> {
    let mut out = Vec::new();
    let Some(meta) = tree.stat(&m.path)? else {
        return Ok(out);
    };
    let is_dir = meta.kind == EntryKind::Dir;
    out.push(WalkEntry {
        source: m.path.clone(),
        rel: String::new(),
        meta,
    });
    if !is_dir {
        return Ok(out);
    }
    let mut stack = vec![(m.path.clone(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut children = Vec::new();
        for name in tree.children(&dir)? {
            let source = tree::join(&dir, &name);
            let child_rel = tree::join(&rel, &name);
            if let Some(ex) = excludes {
                let excluded = ex.matches_or_parent_matches(&child_rel).map_err(|source| {
                    CopyError::Pattern {
                        pattern: child_rel.clone(),
                        source,
                    }
                })?;
                if excluded {
                    continue;
                }
            }
            let Some(meta) = tree.stat(&source)? else {
                continue;
            };
            if meta.kind == EntryKind::Socket {
                continue;
            }
            children.push((source, child_rel, meta));
        }
        // Depth-first in sorted order: push directories in reverse.
        let mut dirs = Vec::new();
        for (source, rel, meta) in children {
            if meta.kind == EntryKind::Dir {
                dirs.push((source.clone(), rel.clone()));
            }
            out.push(WalkEntry { source, rel, meta });
        }
        for d in dirs.into_iter().rev() {
            stack.push(d);
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// The content digest of a COPY's sources, for its cache key: every entry's
/// path, kind, mode, content (or link target, or device numbers), and owner
/// when the copy keeps owners; never mtimes.
pub fn hash_sources(
    tree: &dyn SourceTree,
    matches: &[SourceMatch],
    excludes: Option<&Matcher>,
    keep_owners: bool,
) -> Result<Digest, CopyError> {
    let mut h = Hasher::new();
    for m in matches {
        let line = format!("match\0{}\0{}\0{:?}\n", m.name, m.path, m.parents_path);
        h.update(line.as_bytes());
        let entries = walk_sources(tree, m, excludes)?;
        let files: Vec<&str> = entries
            .iter()
            .filter(|e| e.meta.kind == EntryKind::File)
            .map(|e| e.source.as_str())
            .collect();
        let mut digests = tree.content_digests(&files)?.into_iter();
        // One line per entry, written into one reused buffer.
        let mut line = String::new();
        for e in &entries {
            line.clear();
            let _ = write!(line, "{}\0{:o}\0", e.rel, e.meta.mode);
            if keep_owners {
                let _ = write!(line, "{}:{}", e.meta.uid, e.meta.gid);
            }
            line.push('\0');
            let _ = match &e.meta.kind {
                EntryKind::File => {
                    let digest = digests
                        .next()
                        .ok_or_else(|| TreeError::Other("a file without its digest".to_string()))?;
                    write!(line, "{digest}")
                }
                EntryKind::Dir => write!(line, "dir"),
                EntryKind::Symlink(t) => write!(line, "symlink\0{t}"),
                EntryKind::CharDevice(a, b) => write!(line, "char\0{a}\0{b}"),
                EntryKind::BlockDevice(a, b) => write!(line, "block\0{a}\0{b}"),
                EntryKind::Fifo => write!(line, "fifo"),
                EntryKind::Socket => continue,
            };
            let xattrs = tree.xattrs(&e.source)?;
            let _ = writeln!(line, "\0{}", xattrs.len());
            h.update(line.as_bytes());
            for (k, v) in xattrs {
                h.update(k.as_bytes());
                h.update(&[0]);
                h.update(&v);
            }
        }
    }
    Ok(h.finish())
}

/// How to write what is copied.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// `--chown`, resolved to numbers.
    pub chown: Option<(u32, u32)>,
    /// `--chmod`.
    pub chmod: Option<Chmod>,
    /// Keep the sources' owners (a stage or image) rather than 0:0 (the context).
    pub keep_owners: bool,
    /// mtime for files that have none of their own (heredocs) and for
    /// directories created; also the clamp for SOURCE_DATE_EPOCH.
    pub mtime: i64,
}

/// One entry of a [`Writer`]'s diff, with its final metadata.
struct Entry<'t> {
    meta: Meta,
    xattrs: Vec<(String, Vec<u8>)>,
    data: Data<'t>,
    /// A lower directory copied up only to hold what is written below it.
    copied_up: bool,
}

/// Where a regular file's content comes from.
enum Data<'t> {
    /// Not a regular file.
    None,
    /// A file in a source tree, read when the layer is written; `inode`
    /// groups the names of one hard-linked file.
    Tree {
        tree: Rc<dyn SourceTree + 't>,
        path: String,
        inode: Option<usize>,
    },
    /// Bytes held in memory (a heredoc).
    Inline(Vec<u8>),
}

/// What a COPY, ADD or WORKDIR step changes above the layers below it.
///
/// The diff is built in memory: destinations are resolved against it over
/// the lower layers, merged as overlayfs would show them, and file contents
/// stay in their source trees until [`Writer::write_layer`] streams them
/// into the layer tar (or [`Writer::write_to_dir`] into a directory), so
/// each byte is read once.
pub struct Writer<'t> {
    lower: LayeredTree,
    /// `lstat` answers of `lower`, which does not change during a step.
    lower_stats: RefCell<HashMap<String, Option<Meta>>>,
    entries: BTreeMap<String, Entry<'t>>,
    /// Directories [`Writer::mkdir_all`] made or found, by path as asked.
    made: HashMap<String, String>,
    opts: CopyOptions,
    /// A source file's (device, inode) → its hard-link group in the diff.
    links: HashMap<(u64, u64), usize>,
    /// Temporary directories whose files the diff refers to.
    held: Vec<tempfile::TempDir>,
    /// Entries replace whatever is at their path, as extracting an archive
    /// does, rather than refusing to put a directory over a file.
    replace: bool,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("lower", &self.lower)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl<'t> Writer<'t> {
    /// A writer above `lower`.
    pub fn new(lower: LayeredTree, opts: CopyOptions) -> Self {
        Writer {
            lower,
            lower_stats: RefCell::default(),
            entries: BTreeMap::new(),
            made: HashMap::new(),
            opts,
            links: HashMap::new(),
            held: Vec::new(),
            replace: false,
        }
    }

    fn owner(&self, meta: &Meta) -> (u32, u32) {
        match self.opts.chown {
            Some(o) => o,
            None if self.opts.keep_owners => (meta.uid, meta.gid),
            None => (0, 0),
        }
    }

    /// `lstat` in the merged view: the diff over the lower layers.
    fn stat(&self, path: &str) -> Result<Option<Meta>, TreeError> {
        if let Some(e) = self.entries.get(path) {
            return Ok(Some(e.meta.clone()));
        }
        // A non-directory the diff put at a parent hides what is below it.
        let mut at = path;
        while let Some((parent, _)) = at.rsplit_once('/') {
            if matches!(self.entries.get(parent), Some(e) if e.meta.kind != EntryKind::Dir) {
                return Ok(None);
            }
            at = parent;
        }
        if let Some(known) = self.lower_stats.borrow().get(path) {
            return Ok(known.clone());
        }
        let mut meta = self.lower.stat(path)?;
        if path.is_empty() && meta.is_none() {
            // No layer below (FROM scratch, --link): the root is there anyway.
            meta = Some(Meta {
                kind: EntryKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: self.opts.mtime,
                link_id: None,
            });
        }
        self.lower_stats
            .borrow_mut()
            .insert(path.to_string(), meta.clone());
        Ok(meta)
    }

    fn resolve(&self, path: &str, follow_last: bool) -> Result<String, TreeError> {
        tree::resolve_with(|p| self.stat(p), path, follow_last)
    }

    fn is_dir(&self, path: &str) -> Result<bool, TreeError> {
        Ok(matches!(
            self.stat(path)?,
            Some(Meta {
                kind: EntryKind::Dir,
                ..
            })
        ))
    }

    /// Puts `entry` at `path` (resolved), replacing what the diff had there.
    /// The root is never an entry: a layer does not carry it.
    ///
    /// The parent directory's mtime becomes the step's, as the kernel sets
    /// it when an entry is made in it (and as docker's layers show); only
    /// an archive's own directories keep theirs, restored after extraction.
    fn insert(&mut self, path: String, entry: Entry<'t>) {
        if path.is_empty() {
            return;
        }
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        if let Some(dir) = self.entries.get_mut(parent) {
            if !self.replace || dir.copied_up {
                dir.meta.mtime = self.opts.mtime;
            }
        }
        self.entries.insert(path, entry);
    }

    /// `meta` (and `xattrs`) with `--chown`/`--chmod` applied.
    fn finished(&self, meta: &Meta, xattrs: Vec<(String, Vec<u8>)>, data: Data<'t>) -> Entry<'t> {
        let (uid, gid) = self.owner(meta);
        let mode = match (&self.opts.chmod, &meta.kind) {
            // A symlink's own mode means nothing on Linux.
            (_, EntryKind::Symlink(_)) => 0o777,
            (Some(c), kind) => c.apply(meta.mode, *kind == EntryKind::Dir),
            (None, _) => meta.mode,
        };
        Entry {
            meta: Meta {
                mode,
                uid,
                gid,
                ..meta.clone()
            },
            xattrs,
            data,
            copied_up: false,
        }
    }

    /// Copies every match to `dest` (absolute; a trailing `/` means a directory).
    pub fn copy(
        &mut self,
        tree: &Rc<dyn SourceTree + 't>,
        matches: &[SourceMatch],
        dest: &str,
        excludes: Option<&Matcher>,
    ) -> Result<(), CopyError> {
        // A wildcard that matched nothing changes nothing, not even the
        // destination directory (BuildKit returns early).
        if matches.is_empty() {
            return Ok(());
        }
        let dest_dir_hint = dest.ends_with('/');
        let dest_rel = tree::clean(dest);
        if dest_dir_hint {
            self.mkdir_all(&dest_rel)?;
        }
        for m in matches {
            let Some(src_meta) = tree.stat(&m.path)? else {
                continue;
            };
            let target = if let Some(kept) = &m.parents_path {
                tree::join(&dest_rel, kept)
            } else {
                let dest_resolved = self.resolve(&dest_rel, true)?;
                if src_meta.kind != EntryKind::Dir && self.is_dir(&dest_resolved)? {
                    tree::join(&dest_rel, &m.name)
                } else {
                    dest_rel.clone()
                }
            };
            for e in walk_sources(tree.as_ref(), m, excludes)? {
                let to = tree::join(&target, &e.rel);
                self.write_entry(tree, &e, &to, e.rel.is_empty())?;
            }
        }
        Ok(())
    }

    /// Sets `--chown`, `--chmod` and whether sources keep their owners.
    pub fn set_options(
        &mut self,
        chown: Option<(u32, u32)>,
        chmod: Option<Chmod>,
        keep_owners: bool,
    ) {
        self.opts.chown = chown;
        self.opts.chmod = chmod;
        self.opts.keep_owners = keep_owners;
    }

    /// `mkdir -p` of `dir` (WORKDIR): directories created are owned by
    /// `owner`; existing ones are copied up unchanged.
    pub fn mkdir_owned(&mut self, dir: &str, owner: (u32, u32)) -> Result<(), CopyError> {
        let saved = self.opts.chown.replace(owner);
        let result = self.mkdir_all(&tree::clean(dir)).map(|_| ());
        self.opts.chown = saved;
        result
    }

    /// ADD of a local archive, already extracted into `dir`: its contents go
    /// to the directory `dest` (created), with the owners and modes the
    /// archive gave them. The writer keeps `dir` until the layer is written.
    pub fn add_extracted(&mut self, dir: tempfile::TempDir, dest: &str) -> Result<(), CopyError> {
        let tree: Rc<dyn SourceTree + 't> =
            Rc::new(LayeredTree::new(vec![dir.path().to_path_buf()]));
        self.held.push(dir);
        self.extract(&tree, dest)
    }

    /// All of `tree` at the root, as [`Writer::add_extracted`] puts an
    /// archive: a flattened copy of a stack of layers.
    pub fn mirror(&mut self, tree: &Rc<dyn SourceTree + 't>) -> Result<(), CopyError> {
        self.extract(tree, "/")
    }

    /// The contents of `tree` into the directory `dest` (created), with
    /// extraction's rules: entries keep their owners, modes and directory
    /// times, and replace whatever is at their path.
    fn extract(&mut self, tree: &Rc<dyn SourceTree + 't>, dest: &str) -> Result<(), CopyError> {
        let dest_rel = tree::clean(dest);
        self.mkdir_all(&dest_rel)?;
        let saved = self.opts.clone();
        self.set_options(None, None, true);
        self.replace = true;
        let root = SourceMatch {
            name: String::new(),
            path: String::new(),
            parents_path: None,
        };
        let result = self.copy(tree, &[root], &format!("/{dest_rel}"), None);
        self.opts = saved;
        self.replace = false;
        result
    }

    /// Writes a file with `data` (a heredoc source) at `dest`.
    pub fn write_file(&mut self, dest: &str, name: &str, data: &[u8]) -> Result<(), CopyError> {
        let dest_rel = tree::clean(dest);
        let dest_resolved = self.resolve(&dest_rel, true)?;
        let target = if dest.ends_with('/') || self.is_dir(&dest_resolved)? {
            tree::join(&dest_rel, name)
        } else {
            dest_rel
        };
        let meta = Meta {
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: data.len() as u64,
            mtime: self.opts.mtime,
            link_id: None,
        };
        let path = self.prepare(&target)?;
        self.refuse_dir(&path, &target, &target)?;
        let entry = self.finished(&meta, Vec::new(), Data::Inline(data.to_vec()));
        self.insert(path, entry);
        Ok(())
    }

    /// `target` (a path in the image) with its parent directories present
    /// in the diff (copied up or created), resolved.
    fn prepare(&mut self, target: &str) -> Result<String, CopyError> {
        Ok(match target.rsplit_once('/') {
            Some((parent, name)) => tree::join(&self.mkdir_all(parent)?, name),
            None => target.to_string(),
        })
    }

    /// Makes `dir` (a path in the image) a directory in the diff, following
    /// symlinks of the merged view; returns the resolved path.
    fn mkdir_all(&mut self, dir: &str) -> Result<String, CopyError> {
        if let Some(done) = self.made.get(dir) {
            return Ok(done.clone());
        }
        let mut done = String::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            let candidate = tree::join(&done, part);
            let resolved = self.resolve(&candidate, true)?;
            match self.stat(&resolved)? {
                Some(
                    meta @ Meta {
                        kind: EntryKind::Dir,
                        ..
                    },
                ) => {
                    if !self.entries.contains_key(&resolved) {
                        // Copy up, as overlayfs does on the first write below it.
                        let xattrs = self.lower.xattrs(&resolved)?;
                        let entry = Entry {
                            meta,
                            xattrs,
                            data: Data::None,
                            copied_up: true,
                        };
                        self.insert(resolved.clone(), entry);
                    }
                }
                Some(_) => {
                    return Err(CopyError::Conflict {
                        source_path: dir.to_string(),
                        dest: format!("/{resolved}"),
                        reason: "a parent of the destination is not a directory",
                    })
                }
                None => {
                    let (uid, gid) = self.opts.chown.unwrap_or((0, 0));
                    let meta = Meta {
                        kind: EntryKind::Dir,
                        mode: 0o755,
                        uid,
                        gid,
                        size: 0,
                        mtime: self.opts.mtime,
                        link_id: None,
                    };
                    let entry = Entry {
                        meta,
                        xattrs: Vec::new(),
                        data: Data::None,
                        copied_up: false,
                    };
                    self.insert(resolved.clone(), entry);
                }
            }
            done = resolved;
        }
        self.made.insert(dir.to_string(), done.clone());
        Ok(done)
    }

    /// A non-directory may not replace a directory the diff holds, unless
    /// entries replace (an archive): then the directory and all below it go.
    fn refuse_dir(&mut self, path: &str, source: &str, target: &str) -> Result<(), CopyError> {
        match self.entries.get(path) {
            Some(e) if e.meta.kind == EntryKind::Dir && self.replace => {
                let below = format!("{path}/");
                self.entries
                    .retain(|p, _| p != path && !p.starts_with(below.as_str()));
                self.made.clear();
                Ok(())
            }
            Some(e) if e.meta.kind == EntryKind::Dir => Err(CopyError::Conflict {
                source_path: source.to_string(),
                dest: format!("/{target}"),
                reason: "cannot replace a directory with a file",
            }),
            _ => Ok(()),
        }
    }

    fn write_entry(
        &mut self,
        tree: &Rc<dyn SourceTree + 't>,
        e: &WalkEntry,
        target: &str,
        top: bool,
    ) -> Result<(), CopyError> {
        match &e.meta.kind {
            EntryKind::Dir => {
                let resolved = self.resolve(target, true)?;
                let path = match self.stat(&resolved)? {
                    Some(Meta {
                        kind: EntryKind::Dir,
                        ..
                    }) => {
                        let path = self.mkdir_all(target)?;
                        // The copy root keeps the metadata it had; directories
                        // below it take the source's (fsutil's rule).
                        if top {
                            return Ok(());
                        }
                        path
                    }
                    Some(_) if self.replace => self.prepare(target)?,
                    Some(_) => {
                        return Err(CopyError::Conflict {
                            source_path: e.source.clone(),
                            dest: format!("/{target}"),
                            reason: "cannot replace a file with a directory",
                        })
                    }
                    None => self.prepare(&resolved)?,
                };
                let xattrs = tree.xattrs(&e.source)?;
                let entry = self.finished(&e.meta, xattrs, Data::None);
                self.insert(path, entry);
                return Ok(());
            }
            EntryKind::Socket => return Ok(()),
            _ => {}
        }
        let path = self.prepare(target)?;
        self.refuse_dir(&path, &e.source, target)?;
        let (xattrs, data) = match &e.meta.kind {
            EntryKind::File => {
                let inode = e.meta.link_id.map(|id| {
                    let next = self.links.len();
                    *self.links.entry(id).or_insert(next)
                });
                let data = Data::Tree {
                    tree: Rc::clone(tree),
                    path: e.source.clone(),
                    inode,
                };
                (tree.xattrs(&e.source)?, data)
            }
            // fsutil copies no xattrs of a symlink.
            EntryKind::Symlink(_) => (Vec::new(), Data::None),
            _ => (tree.xattrs(&e.source)?, Data::None),
        };
        let entry = self.finished(&e.meta, xattrs, data);
        self.insert(path, entry);
        Ok(())
    }

    /// Writes the diff as a deterministic layer tar into `out`, reading
    /// each file's content from its source as it goes, and gives `out` back.
    /// The tar is not hashed here: the store's blob writer does it once.
    pub fn write_layer<W: Write>(
        &self,
        out: W,
        opts: &layer::LayerOptions,
    ) -> Result<W, CopyError> {
        let mut tar = LayerStream::new(out);
        let mut first_names: HashMap<usize, Vec<u8>> = HashMap::new();
        for (path, e) in &self.entries {
            let mut h = header(path, e, opts);
            match &e.data {
                Data::None => tar.header(&h)?,
                Data::Inline(bytes) => tar.file(&h, bytes.as_slice(), Path::new(path))?,
                Data::Tree {
                    tree,
                    path: source,
                    inode,
                } => {
                    if let Some(inode) = inode {
                        if let Some(first) = first_names.get(inode) {
                            h.kind = layer::EntryKind::Hardlink;
                            h.link = Some(first.clone());
                            h.size = 0;
                            h.xattrs.clear();
                            tar.header(&h)?;
                            continue;
                        }
                        first_names.insert(*inode, h.path.clone());
                    }
                    let reader: Box<dyn Read + '_> = match tree.open_file(source)? {
                        Some(file) => Box::new(file),
                        None => tree.open(source)?,
                    };
                    tar.file(&h, reader, Path::new(source))?;
                }
            }
        }
        Ok(tar.finish()?)
    }

    /// Writes the diff into the empty directory `dir` (a bind mount's
    /// private copy): the layer tar is unpacked as it is made.
    pub fn write_to_dir(&self, dir: &Path) -> Result<(), CopyError> {
        // Close-on-exec: a RUN starting on another thread must not inherit
        // the write end, or the unpacker would wait for that step to end.
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| write_err(dir)(std::io::Error::from(e)))?;
        std::thread::scope(|s| {
            let unpacker = s.spawn(move || {
                let reader = std::io::BufReader::new(fs::File::from(read_end));
                layer::unpack_layer(
                    reader,
                    dir,
                    &layer::UnpackOptions {
                        whiteouts: layer::WhiteoutMode::Keep,
                        ..layer::UnpackOptions::default()
                    },
                )
            });
            let pipe = std::io::BufWriter::new(fs::File::from(write_end));
            // Dropping the pipe's end tells the unpacker the tar is complete.
            let written = self
                .write_layer(pipe, &layer::LayerOptions::default())
                .map(drop);
            let unpacked = unpacker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            written?;
            unpacked?;
            Ok(())
        })
    }
}

/// The tar header of a diff entry.
fn header(path: &str, e: &Entry<'_>, opts: &layer::LayerOptions) -> TarHeader {
    let mut name = path.as_bytes().to_vec();
    let (kind, link, device) = match &e.meta.kind {
        EntryKind::File => (layer::EntryKind::File, None, (0, 0)),
        EntryKind::Dir => {
            name.push(b'/');
            (layer::EntryKind::Dir, None, (0, 0))
        }
        EntryKind::Symlink(t) => (
            layer::EntryKind::Symlink,
            Some(t.as_bytes().to_vec()),
            (0, 0),
        ),
        EntryKind::CharDevice(a, b) => (layer::EntryKind::CharDevice, None, (*a, *b)),
        EntryKind::BlockDevice(a, b) => (layer::EntryKind::BlockDevice, None, (*a, *b)),
        EntryKind::Fifo | EntryKind::Socket => (layer::EntryKind::Fifo, None, (0, 0)),
    };
    let mtime = match opts.mtime_clamp {
        Some(clamp) => e.meta.mtime.min(clamp),
        None => e.meta.mtime,
    };
    TarHeader {
        path: name,
        kind,
        mode: e.meta.mode,
        uid: u64::from(e.meta.uid),
        gid: u64::from(e.meta.gid),
        size: if kind == layer::EntryKind::File {
            e.meta.size
        } else {
            0
        },
        mtime,
        link,
        device,
        xattrs: e
            .xattrs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect(),
    }
}

/// Sets an xattr on a path without following a final symlink.
pub fn set_xattr_public(path: &Path, name: &str, value: &[u8]) -> Result<(), CopyError> {
    set_xattr(path, name, value)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), CopyError> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| write_err(path)(std::io::Error::other("path has a NUL byte")))?;
    let c_name = CString::new(name)
        .map_err(|_| write_err(path)(std::io::Error::other("xattr name has a NUL byte")))?;
    // SAFETY: both strings are NUL-terminated; value is valid for its length.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(write_err(path)(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chmod_forms() {
        assert_eq!(Chmod::parse("0755"), Some(Chmod::Octal(0o755)));
        assert_eq!(Chmod::parse("17777"), None);
        let c = Chmod::parse("u+x,go-w").expect("symbolic");
        assert_eq!(c.apply(0o666, false), 0o744);
        assert_eq!(Chmod::parse("a=rX").expect("ok").apply(0o600, true), 0o555);
        assert_eq!(Chmod::parse("a=rX").expect("ok").apply(0o600, false), 0o444);
        assert!(Chmod::parse("z+q").is_none());
    }

    #[test]
    fn escaping_sources_are_caught() {
        assert!(escapes_root("../x"));
        assert!(escapes_root("a/../../x"));
        assert!(!escapes_root("a/../x"));
        assert!(!escapes_root("./x"));
    }
}
