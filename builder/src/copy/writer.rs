//! The diff a COPY, ADD or WORKDIR step makes, held in memory: destinations
//! resolved as overlayfs would merge the step's changes over the layers
//! below, file contents left in their source trees until the layer tar is
//! streamed from them ([`Writer::write_layer`]) or unpacked into a directory
//! ([`Writer::write_to_dir`]).
//!
//! Memory does not grow with the number of files copied: a directory that
//! lands where nothing was ([`Data::Subtree`]) is held as one entry, and its
//! contents are walked from the source only when the layer is written. Only
//! where a copy merges with what is already there (the layers below, or an
//! earlier source of the same step) are entries held one by one; a later
//! source that lands inside a held directory opens it up one level at a
//! time along its path ([`Writer::open_up`]).

use super::{copied_children, walk_from, write_err, Chmod, CopyError, SourceMatch, WalkEntry};
use crate::layer::{self, LayerStream, TarHeader};
use crate::memo::Memo;
use crate::rootfs::LayeredTree;
use crate::tree::{self, EntryKind, Meta, SourceTree, TreeError};
use estiba_frontend::dockerignore::Matcher;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::rc::Rc;

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
    /// A directory source lands as the directory itself, with its own mode
    /// and owner (what a bind mount shows), rather than as its contents in
    /// a directory the copy makes (COPY).
    pub dir_itself: bool,
}

impl CopyOptions {
    /// A directory the copy creates itself (a missing parent, or the
    /// destination a directory's contents go to): mode 0755, or the octal
    /// `--chmod` mode (a symbolic one applies to copied entries only),
    /// owned by `--chown` or 0:0. This is fsutil's `MkdirAll` with the
    /// copy's mode (tonistiigi/fsutil `copy/copy.go`, `Copy` and
    /// `prepareTargetDir`; BuildKit's `testCopyChmod` expects
    /// `COPY --chmod=770 foo /parent/sub/foo` to make `/parent/sub` 0770).
    fn created_dir(&self) -> Meta {
        let (uid, gid) = self.chown.unwrap_or((0, 0));
        let mode = match self.chmod {
            Some(Chmod::Octal(m)) => m,
            _ => 0o755,
        };
        Meta {
            kind: EntryKind::Dir,
            mode,
            uid,
            gid,
            size: 0,
            mtime: self.mtime,
            link_id: None,
        }
    }
}

/// One entry of a [`Writer`]'s diff, with its final metadata (a held
/// directory's mtime is settled when it is opened up or written).
struct Entry<'t> {
    meta: Meta,
    xattrs: Vec<(String, Vec<u8>)>,
    data: Data<'t>,
    /// A lower directory copied up only to hold what is written below it.
    copied_up: bool,
}

/// Where a regular file's content, or a held directory's entries, come from.
enum Data<'t> {
    /// Not a regular file.
    None,
    /// A file in a source tree, read when the layer is written.
    Tree {
        tree: Rc<dyn SourceTree + 't>,
        path: String,
        /// The source match it was copied by (`LinkScope`).
        scope: LinkScope,
    },
    /// Bytes held in memory (a heredoc).
    Inline(Vec<u8>),
    /// A directory new in this step, copied whole: nothing was below it, so
    /// its entries need no merging and are read from the source only when
    /// the layer is written.
    Subtree(Subtree<'t>),
}

/// The source of a [`Data::Subtree`] and how its entries are copied.
#[derive(Clone)]
struct Subtree<'t> {
    tree: Rc<dyn SourceTree + 't>,
    /// The directory in the source tree.
    dir: String,
    /// Its path below the match, which `--exclude` patterns are relative to.
    rel: String,
    excludes: Option<Rc<Matcher>>,
    /// The options of the copy that placed it.
    opts: Rc<CopyOptions>,
    /// Placed by an extraction: directories keep their own mtimes.
    replace: bool,
    /// The source match that placed it.
    scope: LinkScope,
}

/// Which source match of a step copied a file. Hard links are kept only
/// between files one match copied: BuildKit copies each match of a COPY
/// with a copier of its own, whose inode map starts empty (fsutil
/// `copy/copy.go`: `Copy` calls `newCopier` for every resolved source),
/// so `COPY * dest/` copies two names of one inode from two matches as
/// two files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LinkScope(usize);

impl<'t> Subtree<'t> {
    /// The held directory `e`, a directory of this one's source, holds too.
    fn below(&self, e: &WalkEntry) -> Subtree<'t> {
        Subtree {
            dir: e.source.clone(),
            rel: e.rel.clone(),
            ..self.clone()
        }
    }

    /// What the copy takes from this directory, sorted by name.
    fn children(&self) -> Result<Vec<WalkEntry>, CopyError> {
        copied_children(
            self.tree.as_ref(),
            &self.dir,
            &self.rel,
            self.excludes.as_deref(),
        )
    }

    /// The diff entry of `e`, an entry below this directory; a directory
    /// is held in turn.
    fn entry(&self, e: &WalkEntry) -> Result<Entry<'t>, CopyError> {
        let data = match e.meta.kind {
            EntryKind::Dir => Data::Subtree(self.below(e)),
            _ => Data::None,
        };
        source_entry(&self.tree, e, &self.opts, self.scope, data)
    }

    /// A held directory's mtime: the step's once an entry is made in it,
    /// unless it is extracted or its tree keeps directory times.
    fn dir_mtime(&self, meta: &Meta, has_children: bool) -> i64 {
        if has_children && !self.replace && !self.tree.keeps_dir_times() {
            self.opts.mtime
        } else {
            meta.mtime
        }
    }
}

/// What a copy is reading: the tree, its `--exclude` patterns and the
/// options directories it holds whole will be written with.
struct Source<'a, 't> {
    tree: &'a Rc<dyn SourceTree + 't>,
    excludes: Option<Rc<Matcher>>,
    opts: Rc<CopyOptions>,
    /// The match being copied.
    scope: LinkScope,
    /// The match lands at the destination itself (not below it, as with
    /// `--parents`): a directory's contents go into a directory the copy
    /// creates, which takes none of the source directory's metadata.
    contents_only: bool,
}

/// Lower-layer answers and directories made remembered per step: only
/// merges ask, and a forgotten answer costs only a lookup again.
const MEMO_CAP: usize = 65_536;

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
    lower_stats: RefCell<Memo<Option<Meta>>>,
    entries: BTreeMap<String, Entry<'t>>,
    /// Directories [`Writer::mkdir_all`] made or found, by path as asked.
    made: Memo<String>,
    opts: CopyOptions,
    /// Temporary directories whose files the diff refers to.
    held: Vec<estiba_cache::TempDir>,
    /// Entries replace whatever is at their path, as extracting an archive
    /// does, rather than refusing to put a directory over a file.
    replace: bool,
    /// The scope the next source match copies in.
    next_scope: usize,
    /// The tree being copied keeps its directories' times
    /// ([`SourceTree::keeps_dir_times`]).
    keep_times: bool,
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
            lower_stats: RefCell::new(Memo::new(MEMO_CAP)),
            entries: BTreeMap::new(),
            made: Memo::new(MEMO_CAP),
            opts,
            held: Vec::new(),
            replace: false,
            next_scope: 0,
            keep_times: false,
        }
    }

    /// `lstat` in the merged view: the diff over the lower layers.
    fn stat(&self, path: &str) -> Result<Option<Meta>, TreeError> {
        if let Some(e) = self.entries.get(path) {
            return Ok(Some(e.meta.clone()));
        }
        // A non-directory the diff put at a parent hides what is below it,
        // and a held directory holds all that is below it.
        let mut at = path;
        while let Some((parent, _)) = at.rsplit_once('/') {
            match self.entries.get(parent) {
                Some(e) if e.meta.kind != EntryKind::Dir => return Ok(None),
                Some(Entry {
                    data: Data::Subtree(sub),
                    ..
                }) => return held_stat(sub, &path[parent.len() + 1..]),
                _ => {}
            }
            at = parent;
        }
        if let Some(known) = self.lower_stats.borrow().get(path) {
            return Ok(known);
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
    /// an archive's own directories, and those copied from a tree that
    /// keeps directory times, keep theirs, set again after their contents.
    fn insert(&mut self, path: String, entry: Entry<'t>) -> Result<(), CopyError> {
        if path.is_empty() {
            return Ok(());
        }
        let parent = parent_of(&path);
        self.open_up(parent)?;
        if entry.meta.kind == EntryKind::Dir {
            // A directory merged over a held one: what it holds stays.
            self.open_up(&path)?;
        }
        if let Some(dir) = self.entries.get_mut(parent) {
            if !(self.replace || self.keep_times) || dir.copied_up {
                dir.meta.mtime = self.opts.mtime;
            }
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Makes every held directory on the way to `path`, `path` included,
    /// hold its entries one by one, from the root down: then `path` and its
    /// parents can be looked up in the diff, replaced or written below.
    fn open_up(&mut self, path: &str) -> Result<(), CopyError> {
        for (slash, _) in path.match_indices('/') {
            self.open_one(&path[..slash])?;
        }
        self.open_one(path)
    }

    /// Opens up the held directory at `path`, if it is one: its entries
    /// join the diff, its directories held in turn.
    fn open_one(&mut self, path: &str) -> Result<(), CopyError> {
        let Some(Entry {
            data: Data::Subtree(sub),
            ..
        }) = self.entries.get(path)
        else {
            return Ok(());
        };
        let sub = sub.clone();
        let children = sub.children()?;
        if let Some(dir) = self.entries.get_mut(path) {
            dir.data = Data::None;
            dir.meta.mtime = sub.dir_mtime(&dir.meta, !children.is_empty());
        }
        for child in &children {
            let name = child.rel.rsplit('/').next().unwrap_or_default();
            let entry = sub.entry(child)?;
            self.entries.insert(tree::join(path, name), entry);
        }
        Ok(())
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
        self.keep_times = tree.keeps_dir_times();
        let copied = self.copy_matches(tree, matches, &dest_rel, excludes);
        self.keep_times = false;
        copied
    }

    /// [`Writer::copy`] of each match, the destination made when asked.
    fn copy_matches(
        &mut self,
        tree: &Rc<dyn SourceTree + 't>,
        matches: &[SourceMatch],
        dest_rel: &str,
        excludes: Option<&Matcher>,
    ) -> Result<(), CopyError> {
        let dest_rel = dest_rel.to_string();
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
            let scope = LinkScope(self.next_scope);
            self.next_scope += 1;
            let source = Source {
                tree,
                excludes: excludes.map(|ex| Rc::new(ex.clone())),
                opts: Rc::new(self.opts.clone()),
                scope,
                contents_only: m.parents_path.is_none() && !self.opts.dir_itself,
            };
            let start = WalkEntry {
                source: m.path.clone(),
                rel: String::new(),
                meta: src_meta,
            };
            self.copy_from(&source, start, &target)?;
        }
        Ok(())
    }

    /// Copies `start` and what is below it to `target`, walking the source
    /// only where it merges with what is there: a directory that lands
    /// where nothing was is held whole.
    fn copy_from(
        &mut self,
        source: &Source<'_, 't>,
        start: WalkEntry,
        target: &str,
    ) -> Result<(), CopyError> {
        let excludes = source.excludes.clone();
        walk_from(source.tree.as_ref(), start, excludes.as_deref(), |e, _| {
            let to = tree::join(target, &e.rel);
            self.write_entry(source, e, &to, e.rel.is_empty())
        })
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
    pub fn add_extracted(
        &mut self,
        dir: estiba_cache::TempDir,
        dest: &str,
    ) -> Result<(), CopyError> {
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
        // BuildKit makes the directory an archive unpacks into 0755, owned
        // by `--chown`, whatever `--chmod` says (solver/llbsolver/file/
        // unpack.go `MkdirAll(dest, 0755, ch, tm)`).
        let chmod = self.opts.chmod.take();
        let made = self.mkdir_all(&dest_rel);
        self.opts.chmod = chmod;
        made?;
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
        let entry = finish(&self.opts, &meta, Vec::new(), Data::Inline(data.to_vec()));
        self.insert(path, entry)?;
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
            return Ok(done);
        }
        let mut done = String::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            let candidate = tree::join(&done, part);
            let resolved = self.resolve(&candidate, true)?;
            if resolved != candidate {
                // Reached through a symlink: the directories on the way to
                // where it points are in the diff too, made if missing, as
                // docker's layer holds them (not left to whoever unpacks it).
                self.make_parents(dir, &resolved)?;
            }
            match self.stat(&resolved)? {
                Some(
                    meta @ Meta {
                        kind: EntryKind::Dir,
                        ..
                    },
                ) => {
                    // Inside a held directory it is in the diff already.
                    self.open_up(parent_of(&resolved))?;
                    if !self.entries.contains_key(&resolved) {
                        // Copy up, as overlayfs does on the first write below it.
                        let xattrs = self.lower.xattrs(&resolved)?;
                        let entry = Entry {
                            meta,
                            xattrs,
                            data: Data::None,
                            copied_up: true,
                        };
                        self.insert(resolved.clone(), entry)?;
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
                    let entry = Entry {
                        meta: self.opts.created_dir(),
                        xattrs: Vec::new(),
                        data: Data::None,
                        copied_up: false,
                    };
                    self.insert(resolved.clone(), entry)?;
                }
            }
            done = resolved;
        }
        self.made.insert(dir.to_string(), done.clone());
        Ok(done)
    }

    /// Every ancestor of `resolved` (a path with no symlink left in it) in
    /// the diff: copied up when it exists, made when it does not.
    fn make_parents(&mut self, dir: &str, resolved: &str) -> Result<(), CopyError> {
        let mut at = String::new();
        let parts: Vec<&str> = resolved.split('/').filter(|p| !p.is_empty()).collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            at = tree::join(&at, part);
            if self.entries.contains_key(&at) {
                continue;
            }
            self.open_up(parent_of(&at))?;
            let entry = match self.stat(&at)? {
                Some(meta) if meta.kind == EntryKind::Dir => Entry {
                    xattrs: self.lower.xattrs(&at)?,
                    meta,
                    data: Data::None,
                    copied_up: true,
                },
                Some(_) => {
                    return Err(CopyError::Conflict {
                        source_path: dir.to_string(),
                        dest: format!("/{at}"),
                        reason: "a parent of the destination is not a directory",
                    })
                }
                None => Entry {
                    meta: self.opts.created_dir(),
                    xattrs: Vec::new(),
                    data: Data::None,
                    copied_up: false,
                },
            };
            self.insert(at.clone(), entry)?;
        }
        Ok(())
    }

    /// A non-directory may not replace a directory the diff holds, unless
    /// entries replace (an archive): then the directory and all below it go.
    fn refuse_dir(&mut self, path: &str, source: &str, target: &str) -> Result<(), CopyError> {
        self.open_up(parent_of(path))?;
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

    /// Puts one walked entry at `target`; `true` when it is a directory
    /// merged with one already there, whose entries must be walked too.
    fn write_entry(
        &mut self,
        source: &Source<'_, 't>,
        e: &WalkEntry,
        target: &str,
        top: bool,
    ) -> Result<bool, CopyError> {
        match &e.meta.kind {
            EntryKind::Dir => {
                let resolved = self.resolve(target, true)?;
                let (path, merged, created) = match self.stat(&resolved)? {
                    Some(Meta {
                        kind: EntryKind::Dir,
                        ..
                    }) => {
                        let path = self.mkdir_all(target)?;
                        // The copy root keeps the metadata it had; directories
                        // below it take the source's (fsutil's rule).
                        if top {
                            return Ok(true);
                        }
                        (path, true, false)
                    }
                    // Over a non-directory: nothing can be below it.
                    Some(_) if self.replace => (self.prepare(target)?, false, false),
                    Some(_) => {
                        return Err(CopyError::Conflict {
                            source_path: e.source.clone(),
                            dest: format!("/{target}"),
                            reason: "cannot replace a file with a directory",
                        })
                    }
                    None => (self.prepare(&resolved)?, false, true),
                };
                let data = if merged {
                    Data::None
                } else {
                    Data::Subtree(Subtree {
                        tree: Rc::clone(source.tree),
                        dir: e.source.clone(),
                        rel: e.rel.clone(),
                        excludes: source.excludes.clone(),
                        opts: Rc::clone(&source.opts),
                        replace: self.replace,
                        scope: source.scope,
                    })
                };
                let mut entry = source_entry(source.tree, e, &self.opts, source.scope, data)?;
                if top && created && source.contents_only {
                    // The contents are copied, not the directory: fsutil's
                    // `prepareTargetDir` makes the destination with
                    // `MkdirAll` before copying into it.
                    entry.meta = self.opts.created_dir();
                    entry.xattrs.clear();
                }
                self.insert(path, entry)?;
                return Ok(merged);
            }
            EntryKind::Socket => return Ok(false),
            _ => {}
        }
        let path = self.prepare(target)?;
        self.refuse_dir(&path, &e.source, target)?;
        let entry = source_entry(source.tree, e, &self.opts, source.scope, Data::None)?;
        self.insert(path, entry)?;
        Ok(false)
    }

    /// Writes the diff as a deterministic layer tar into `out`, in
    /// [`tree::path_order`], reading each file's content (and each held
    /// directory's entries) from its source as it goes, and gives `out`
    /// back. The tar is not hashed here: the store's blob writer does it once.
    pub fn write_layer<W: Write>(
        &self,
        out: W,
        opts: &layer::LayerOptions,
    ) -> Result<W, CopyError> {
        let mut tar = TarOut {
            tar: LayerStream::new(out),
            opts,
            first_names: HashMap::new(),
        };
        let mut order: Vec<(&String, &Entry<'t>)> = self.entries.iter().collect();
        order.sort_unstable_by(|a, b| tree::path_order(a.0, b.0));
        for (path, e) in order {
            match &e.data {
                Data::Subtree(sub) => tar.subtree(path, e, sub)?,
                _ => tar.entry(path, e)?,
            }
        }
        Ok(tar.tar.finish()?)
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

/// A layer tar being written from a diff.
struct TarOut<'o, W: Write> {
    tar: LayerStream<W>,
    opts: &'o layer::LayerOptions,
    /// A source file's (device, inode), in the match that copied it → the
    /// first name it was written under: the names after it are hard links
    /// to that one.
    first_names: HashMap<(LinkScope, (u64, u64)), Vec<u8>>,
}

impl<W: Write> TarOut<'_, W> {
    /// One entry at `path`, with its content.
    fn entry(&mut self, path: &str, e: &Entry<'_>) -> Result<(), CopyError> {
        let mut h = header(path, e, self.opts);
        match &e.data {
            Data::None | Data::Subtree(_) => self.tar.header(&h)?,
            Data::Inline(bytes) => self.tar.file(&h, bytes.as_slice(), Path::new(path))?,
            Data::Tree {
                tree,
                path: source,
                scope,
            } => {
                if let Some(id) = e.meta.link_id.map(|id| (*scope, id)) {
                    if let Some(first) = self.first_names.get(&id) {
                        h.kind = layer::EntryKind::Hardlink;
                        h.link = Some(first.clone());
                        h.size = 0;
                        h.xattrs.clear();
                        self.tar.header(&h)?;
                        return Ok(());
                    }
                    self.first_names.insert(id, h.path.clone());
                }
                let reader: Box<dyn Read + '_> = match tree.open_file(source)? {
                    Some(file) => Box::new(file),
                    None => tree.open(source)?,
                };
                self.tar.file(&h, reader, Path::new(source))?;
            }
        }
        Ok(())
    }

    /// The held directory `e` at `path` and everything below it, walked
    /// from its source depth first: one listing per level is held.
    fn subtree(&mut self, path: &str, e: &Entry<'_>, sub: &Subtree<'_>) -> Result<(), CopyError> {
        let start = WalkEntry {
            source: sub.dir.clone(),
            rel: sub.rel.clone(),
            meta: e.meta.clone(),
        };
        walk_from(
            sub.tree.as_ref(),
            start,
            sub.excludes.as_deref(),
            |child, has_children| {
                let below = child.rel[sub.rel.len()..].trim_start_matches('/');
                let (to, mut entry) = if below.is_empty() {
                    let dir = Entry {
                        meta: e.meta.clone(),
                        xattrs: e.xattrs.clone(),
                        data: Data::None,
                        copied_up: false,
                    };
                    (path.to_string(), dir)
                } else {
                    let entry = source_entry(&sub.tree, child, &sub.opts, sub.scope, Data::None)?;
                    (tree::join(path, below), entry)
                };
                if entry.meta.kind == EntryKind::Dir {
                    entry.meta.mtime = sub.dir_mtime(&entry.meta, has_children);
                }
                self.entry(&to, &entry)?;
                Ok(true)
            },
        )
    }
}

/// `meta` (and `xattrs`) with `--chown`/`--chmod` of `opts` applied.
fn finish<'t>(
    opts: &CopyOptions,
    meta: &Meta,
    xattrs: Vec<(String, Vec<u8>)>,
    data: Data<'t>,
) -> Entry<'t> {
    let (uid, gid) = match opts.chown {
        Some(owner) => owner,
        None if opts.keep_owners => (meta.uid, meta.gid),
        None => (0, 0),
    };
    let mode = match (&opts.chmod, &meta.kind) {
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

/// The diff entry of the walked source entry `e`, copied with `opts` by
/// the match `scope`; a regular file's data is its source, a directory's is
/// `dir_data`.
fn source_entry<'t>(
    tree: &Rc<dyn SourceTree + 't>,
    e: &WalkEntry,
    opts: &CopyOptions,
    scope: LinkScope,
    dir_data: Data<'t>,
) -> Result<Entry<'t>, CopyError> {
    let (xattrs, data) = match &e.meta.kind {
        EntryKind::File => {
            let data = Data::Tree {
                tree: Rc::clone(tree),
                path: e.source.clone(),
                scope,
            };
            (tree.xattrs(&e.source)?, data)
        }
        EntryKind::Dir => (tree.xattrs(&e.source)?, dir_data),
        // fsutil copies no xattrs of a symlink.
        EntryKind::Symlink(_) => (Vec::new(), Data::None),
        _ => (tree.xattrs(&e.source)?, Data::None),
    };
    Ok(finish(opts, &e.meta, xattrs, data))
}

/// `lstat` of `rel` below the held directory `sub`, in the merged view:
/// what its copy will put there.
fn held_stat(sub: &Subtree<'_>, rel: &str) -> Result<Option<Meta>, TreeError> {
    let mut source = sub.dir.clone();
    let mut below = sub.rel.clone();
    let mut parts = rel.split('/').peekable();
    while let Some(part) = parts.next() {
        source = tree::join(&source, part);
        below = tree::join(&below, part);
        if let Some(ex) = &sub.excludes {
            let excluded = ex
                .matches_or_parent_matches(&below)
                .map_err(|e| TreeError::Other(format!("invalid pattern: {e}")))?;
            if excluded {
                return Ok(None);
            }
        }
        let Some(meta) = sub.tree.stat(&source)? else {
            return Ok(None);
        };
        match meta.kind {
            EntryKind::Socket => return Ok(None),
            EntryKind::Dir => {}
            _ if parts.peek().is_some() => return Ok(None),
            _ => {}
        }
        if parts.peek().is_none() {
            return Ok(Some(finish(&sub.opts, &meta, Vec::new(), Data::None).meta));
        }
    }
    Ok(None)
}

/// The directory part of a diff path (`""` at the top).
fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const STEP_TIME: i64 = 1_700_000_000;

    fn writer_over(lower: Option<&Path>) -> Writer<'static> {
        let dirs = lower.map(Path::to_path_buf).into_iter().collect();
        Writer::new(
            LayeredTree::new(dirs),
            CopyOptions {
                mtime: STEP_TIME,
                ..CopyOptions::default()
            },
        )
    }

    fn tree(dir: &Path) -> Rc<dyn SourceTree> {
        Rc::new(LayeredTree::new(vec![dir.to_path_buf()]))
    }

    fn whole(name: &str) -> SourceMatch {
        SourceMatch {
            name: name.rsplit('/').next().unwrap_or_default().to_string(),
            path: name.to_string(),
            parents_path: None,
        }
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    /// The layer `w` writes.
    fn layer_of(w: &Writer<'_>) -> Vec<u8> {
        w.write_layer(Vec::new(), &layer::LayerOptions::default())
            .expect("layer")
    }

    /// Every held directory opened up, as if nothing were held.
    fn open_everything(w: &mut Writer<'_>) {
        loop {
            let held: Vec<String> = w
                .entries
                .iter()
                .filter(|(_, e)| matches!(e.data, Data::Subtree(_)))
                .map(|(p, _)| p.clone())
                .collect();
            if held.is_empty() {
                return;
            }
            for path in held {
                w.open_one(&path).expect("open up");
            }
        }
    }

    /// The layer `fill` makes, checked to be the one it makes with every
    /// held directory opened up; and the number of entries it held.
    fn layer_checked(
        lower: Option<&Path>,
        fill: impl Fn(&mut Writer<'static>),
    ) -> (Vec<layer::EntryMeta>, usize) {
        let mut held = writer_over(lower);
        fill(&mut held);
        let held_entries = held.entries.len();
        let mut opened = writer_over(lower);
        fill(&mut opened);
        open_everything(&mut opened);
        let bytes = layer_of(&held);
        assert_eq!(bytes, layer_of(&opened), "held and opened layers differ");
        (
            layer::list_layer(bytes.as_slice()).expect("list"),
            held_entries,
        )
    }

    fn paths(entries: &[layer::EntryMeta]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.path.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_directory_landing_where_nothing_was_is_held_as_one_entry() {
        let src = tempfile::tempdir().expect("tempdir");
        for i in 0..300 {
            write(&src.path().join(format!("app/d{}/f{i}", i % 7)), "x");
        }
        fs::create_dir_all(src.path().join("app/empty")).expect("mkdir");
        let t = tree(src.path());
        let (listed, held) = layer_checked(None, |w| {
            w.copy(&t, &[whole("app")], "/data", None).expect("copy");
        });
        assert_eq!(held, 1, "only /data is held");
        assert_eq!(listed.len(), 1 + 1 + 7 + 300);
        let names = paths(&listed);
        let mut sorted = names.clone();
        sorted.sort_by(|a, b| tree::path_order(a, b));
        assert_eq!(names, sorted, "the layer is in path order");
        for e in &listed {
            if e.path == Path::new("data") {
                assert_eq!(e.mtime, STEP_TIME, "the destination is made by the copy");
            } else if e.kind == layer::EntryKind::Dir {
                assert_ne!(
                    e.mtime,
                    STEP_TIME,
                    "a directory of a tree that keeps directory times keeps its own: {}",
                    e.path.display()
                );
            }
        }
    }

    #[test]
    fn a_later_source_opens_up_only_the_directories_on_its_way() {
        let src = tempfile::tempdir().expect("tempdir");
        write(&src.path().join("one/a/b/old"), "1");
        write(&src.path().join("one/a/c/keep"), "1");
        write(&src.path().join("one/x/y/z"), "1");
        write(&src.path().join("two/a/b/new"), "2");
        write(&src.path().join("two/a/b/old"), "2");
        let t = tree(src.path());
        let (listed, held) = layer_checked(None, |w| {
            w.copy(&t, &[whole("one"), whole("two")], "/d/", None)
                .expect("copy");
        });
        // d, d/a, d/a/b, d/a/b/{new,old}, d/a/c (held), d/x (held).
        assert_eq!(held, 7);
        assert_eq!(
            paths(&listed),
            [
                "d",
                "d/a",
                "d/a/b",
                "d/a/b/new",
                "d/a/b/old",
                "d/a/c",
                "d/a/c/keep",
                "d/x",
                "d/x/y",
                "d/x/y/z"
            ]
        );
        let old = listed
            .iter()
            .find(|e| e.path == Path::new("d/a/b/old"))
            .expect("old");
        assert_eq!(old.size, 1);
    }

    #[test]
    fn a_file_copied_through_a_symlink_into_a_held_directory_lands_in_it() {
        let lower = tempfile::tempdir().expect("tempdir");
        symlink("/d/a", lower.path().join("link")).expect("symlink");
        let src = tempfile::tempdir().expect("tempdir");
        write(&src.path().join("one/a/b/f"), "1");
        write(&src.path().join("note"), "n");
        let t = tree(src.path());
        let (listed, _) = layer_checked(Some(lower.path()), |w| {
            w.copy(&t, &[whole("one")], "/d", None).expect("copy");
            w.copy(&t, &[whole("note")], "/link/", None).expect("copy");
        });
        assert_eq!(paths(&listed), ["d", "d/a", "d/a/b", "d/a/b/f", "d/a/note"]);
    }

    #[test]
    fn a_file_may_not_replace_a_directory_inside_a_held_one() {
        let src = tempfile::tempdir().expect("tempdir");
        write(&src.path().join("one/a/b/f"), "1");
        write(&src.path().join("two/a/b"), "a file");
        let t = tree(src.path());
        let mut w = writer_over(None);
        let err = w
            .copy(&t, &[whole("one"), whole("two")], "/d/", None)
            .expect_err("a file over a directory");
        assert!(
            matches!(err, CopyError::Conflict { .. }),
            "unexpected error: {err}"
        );
    }

    #[test]
    fn hard_links_and_excludes_inside_a_held_directory() {
        let src = tempfile::tempdir().expect("tempdir");
        write(&src.path().join("app/a/first"), "same");
        fs::create_dir_all(src.path().join("app/b")).expect("mkdir");
        fs::hard_link(
            src.path().join("app/a/first"),
            src.path().join("app/b/second"),
        )
        .expect("link");
        write(&src.path().join("app/a/skip.log"), "no");
        let t = tree(src.path());
        let excludes = Matcher::new(&["**/*.log".to_string()]).expect("pattern");
        let (listed, held) = layer_checked(None, |w| {
            w.copy(&t, &[whole("app")], "/app", Some(&excludes))
                .expect("copy");
        });
        assert_eq!(held, 1);
        assert_eq!(
            paths(&listed),
            ["app", "app/a", "app/a/first", "app/b", "app/b/second"]
        );
        let second = listed.last().expect("entries");
        assert_eq!(second.kind, layer::EntryKind::Hardlink);
    }

    /// `COPY * dest/` where two matches are names of one inode: BuildKit
    /// copies each match with a fresh copier, so they land as two files.
    #[test]
    fn hard_links_between_two_matches_are_two_files() {
        let src = tempfile::tempdir().expect("tempdir");
        write(&src.path().join("a"), "same");
        fs::hard_link(src.path().join("a"), src.path().join("b")).expect("link");
        write(&src.path().join("dir/c"), "other");
        fs::hard_link(src.path().join("dir/c"), src.path().join("dir/d")).expect("link");
        let t = tree(src.path());
        let (listed, _) = layer_checked(None, |w| {
            w.copy(&t, &[whole("a"), whole("b"), whole("dir")], "/dest/", None)
                .expect("copy");
        });
        let kinds: Vec<(String, layer::EntryKind)> = listed
            .iter()
            .map(|e| (e.path.to_string_lossy().into_owned(), e.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("dest".to_owned(), layer::EntryKind::Dir),
                ("dest/a".to_owned(), layer::EntryKind::File),
                ("dest/b".to_owned(), layer::EntryKind::File),
                ("dest/c".to_owned(), layer::EntryKind::File),
                ("dest/d".to_owned(), layer::EntryKind::Hardlink),
            ],
            "linked only within one match"
        );
    }
}
