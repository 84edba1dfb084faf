//! The diff a COPY, ADD or WORKDIR step makes, held in memory: destinations
//! resolved as overlayfs would merge the step's changes over the layers
//! below, file contents left in their source trees until the layer tar is
//! streamed from them ([`Writer::write_layer`]) or unpacked into a directory
//! ([`Writer::write_to_dir`]).

use super::{walk_sources, write_err, Chmod, CopyError, SourceMatch, WalkEntry};
use crate::layer::{self, LayerStream, TarHeader};
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
