//! The build context: the directory `estiba build` is pointed at, seen as a
//! [`SourceTree`] exactly as `docker build` would send it, so COPY and ADD
//! can never read a file Docker would have left out.
//!
//! - **`.dockerignore`**: the first ignore file of
//!   [`ignore_file_candidates`] that exists (`<Dockerfile>.dockerignore` beside
//!   the Dockerfile, else `.dockerignore` at the root) is compiled once with
//!   the frontend's [`Matcher`]. Excluded paths do not exist for
//!   [`SourceTree::stat`] and are left out of [`SourceTree::children`]. As in
//!   BuildKit's file sync (fsutil), an excluded directory is still looked
//!   into when an exception (`!pattern`) could re-include something below it,
//!   and it is then visible, as a parent of what was re-included. The
//!   Dockerfile and the ignore file are ordinary context files. (This is
//!   current BuildKit; Docker 20.10's older fsutil only looked into an
//!   excluded directory for a literal exception naming a path inside it, so
//!   `!**/keep` re-included nothing under an excluded directory there.)
//! - **Matching in O(files)**: each directory's per-pattern results
//!   ([`MatchInfo`]) are remembered and handed to its entries, Docker's
//!   `MatchesUsingParentResults`, so a path costs one match per pattern.
//! - **No way out**: symlinks are reported, never followed, by `stat`,
//!   `children` and `open`; a symlink in a *parent* component of a path is
//!   followed inside the context (chroot semantics, like
//!   [`tree::resolve`]), never on the host, and never through an excluded
//!   entry.
//! - **Stat cache**: [`SourceTree::content_digest`] remembers each file's
//!   digest with its `lstat` key (size, mtime and ctime in ns, inode, device,
//!   mode) and does not read the file again while the key is unchanged. The
//!   records are kept in a file the caller chooses ([`BuildContext::open`]),
//!   sorted in walk order and read as the walk goes, never loaded whole
//!   (`statcache`); it is written with temp + rename, and a missing, corrupt
//!   or other-version file is ignored. A file hashed within [`RACY_WINDOW`]
//!   of its last change is not remembered (git's "racily clean" problem: a
//!   write in the same clock tick would keep the same key), so it is read
//!   again next time.
//! - **Bounded memory**: what the context remembers per path (`lstat`s,
//!   visible directories, matcher results, re-included directories) is a
//!   memo of at most `MEMO_ENTRIES` entries each; a forgotten entry is
//!   looked up again, a forgotten directory walked to again component by
//!   component from the root. Nothing held grows with the context but a bit
//!   per remembered file and the stat cache's sparse index.
//!
//! Like `docker build`, which sends the context once, this assumes the
//! directory does not change while a build reads it: an answer may come
//! from the memos or from the disk. Digests are checked against the `lstat`
//! key on every call.

use crate::memo::Memo;
use crate::sys;
use crate::tree::{self, EntryKind, Meta, SourceTree, TreeError};
use estiba_cache::{Digest, Hasher};
use estiba_frontend::dockerignore::{
    ignore_file_candidates, parse_ignore_file, IgnoreError, MatchInfo, Matcher,
};
use statcache::{NewRecord, Remembered, StatCache, StatKey, Xattrs};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How recent a file's last change (mtime or ctime) may be, relative to the
/// moment hashing started, for its digest to be remembered. File timestamps
/// come from the kernel's coarse clock, which lags by up to one tick; within
/// that window a later write could leave every field of the stat key as it
/// was. On file systems with whole-second timestamps (both nanosecond parts
/// zero) the window is [`RACY_WINDOW_COARSE`].
pub const RACY_WINDOW: Duration = Duration::from_millis(100);

/// [`RACY_WINDOW`] for files whose timestamps have no sub-second part
/// (FAT keeps 2-second mtimes).
pub const RACY_WINDOW_COARSE: Duration = Duration::from_secs(2);

mod statcache;

/// Entries each of the context's memos (lstats, directories, matcher
/// results) holds at most, in two generations of 28,672: 7/8 of 32,768,
/// the most a hash table of 32,768 slots takes before it doubles. The
/// lstats memo is then about 9 MB, whatever the size of the context. Past
/// it the older generation is forgotten, and looked up again if asked for.
const MEMO_ENTRIES: usize = 2 * 28_672;
/// Fewer files than this per core are hashed on one thread.
const PARALLEL_MIN_FILES: usize = 64;
/// Files looked up and hashed together by
/// [`SourceTree::content_digests`]: their new stat cache records are sorted
/// as one batch.
const DIGEST_CHUNK: usize = statcache::BATCH_RECORDS;

/// Characters that make an exception pattern a glob (once a trailing `/*` or
/// `/**` is set aside): when any exception has one, every excluded directory
/// must be looked into (fsutil's `onlyPrefixExcludeExceptions`).
const PATTERN_CHARS: &[char] = &['*', '[', ']', '?', '^', '\\'];

/// A failure opening or using the build context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The context directory cannot be read.
    #[error("cannot open build context {path}")]
    Root {
        /// The directory as given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The context is not a directory.
    #[error("build context {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The ignore file exists but cannot be read.
    #[error("cannot read ignore file {path}")]
    ReadIgnoreFile {
        /// The ignore file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A pattern of the ignore file Docker would refuse too.
    #[error("invalid pattern {pattern:?} in {file}")]
    Pattern {
        /// The ignore file.
        file: PathBuf,
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        #[source]
        source: IgnoreError,
    },
    /// The stat cache cannot be written.
    #[error("cannot write stat cache {path}")]
    SaveStatCache {
        /// The cache file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Counters of [`SourceTree::content_digest`] since the context was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextStats {
    /// Files whose content was read and hashed.
    pub files_hashed: u64,
    /// Digests answered from the stat cache without reading the file.
    pub cache_hits: u64,
}

/// The build context directory with its `.dockerignore` applied, as a
/// [`SourceTree`]. `Send + Sync`: the solver may hash from several threads.
#[derive(Debug)]
pub struct BuildContext {
    /// The canonical context directory.
    root: PathBuf,
    /// The ignore file that applied, if any.
    ignore_file: Option<PathBuf>,
    matcher: Matcher,
    /// The exception patterns (cleaned, without `!`, a trailing `/*` or
    /// `/**` removed).
    exceptions: Vec<String>,
    /// Some exception is a glob: every excluded directory may hold something.
    glob_exception: bool,
    /// Per-directory matcher results, handed to the directory's entries.
    match_infos: RwLock<Memo<MatchInfo>>,
    /// Visible directories reached from the root through real directories
    /// only (no symlink): the only places host paths are built from. One
    /// that was forgotten is walked to again, component by component.
    dirs: RwLock<Memo<()>>,
    /// Excluded directories → whether something below them is re-included.
    reincluded: RwLock<Memo<bool>>,
    /// [`BuildContext::lookup`]'s answers, filled by directory listings:
    /// the walk that follows a listing asks for each entry.
    lstats: RwLock<Memo<Option<Lstat>>>,
    cache: Mutex<StatCache>,
    files_hashed: AtomicU64,
    cache_hits: AtomicU64,
}

impl BuildContext {
    /// Opens the context at `root`.
    ///
    /// `dockerfile` is the Dockerfile's path as the user gave it (relative
    /// paths are relative to the current directory, as with `docker build
    /// -f`; `-` means stdin); `<dockerfile>.dockerignore` beside it is used
    /// when it exists, else `.dockerignore` in `root`. `None` means
    /// `root/Dockerfile`. `stat_cache` is the file the stat cache is loaded
    /// from and saved to (one per context directory is best: entries made
    /// for another root are dropped), or `None` to keep it in memory only.
    pub fn open(
        root: &Path,
        dockerfile: Option<&Path>,
        stat_cache: Option<PathBuf>,
    ) -> Result<Self, ContextError> {
        let canonical = fs::canonicalize(root).map_err(|source| ContextError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        if !canonical.is_dir() {
            return Err(ContextError::NotADirectory(root.to_path_buf()));
        }
        let (ignore_file, patterns) = read_ignore_file(&canonical, dockerfile)?;
        let matcher = match &ignore_file {
            Some(file) => Matcher::new(&patterns).map_err(|source| pattern_error(file, source))?,
            None => Matcher::default(),
        };
        let exceptions: Vec<String> = matcher
            .patterns()
            .filter(|(_, exception)| *exception)
            .map(|(pattern, _)| without_trailing_glob(pattern).to_owned())
            .collect();
        let glob_exception = exceptions.iter().any(|p| p.contains(PATTERN_CHARS));
        let root_key = canonical.to_string_lossy().into_owned();
        // Checked on a second thread while the context is walked: only
        // hashing needs it.
        let cache = StatCache::open(stat_cache, root_key);
        Ok(BuildContext {
            root: canonical,
            ignore_file,
            matcher,
            exceptions,
            glob_exception,
            match_infos: RwLock::new(Memo::new(MEMO_ENTRIES)),
            dirs: RwLock::new(Memo::new(MEMO_ENTRIES)),
            reincluded: RwLock::new(Memo::new(MEMO_ENTRIES)),
            lstats: RwLock::new(Memo::new(MEMO_ENTRIES)),
            cache: Mutex::new(cache),
            files_hashed: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    /// Lowers how many entries each memo keeps (lstats, directories,
    /// matcher results), for tests: answers must not depend on it.
    #[doc(hidden)]
    pub fn with_memo_cap(self, entries: usize) -> Self {
        write(&self.lstats).cap = entries;
        write(&self.dirs).cap = entries;
        write(&self.match_infos).cap = entries;
        write(&self.reincluded).cap = entries;
        self
    }

    /// Writes a new stat cache file in `dir` before renaming it over the
    /// old one (by default it is written beside it). `dir` must be on the
    /// same file system, and outlive the context (dropping it saves too).
    pub fn with_stat_cache_temp_dir(self, dir: &Path) -> Self {
        self.stat_cache().set_temp_dir(dir.to_path_buf());
        self
    }

    /// Lowers how many new stat cache records are kept in memory before
    /// they go to a sorted run file, for tests of the runs.
    #[doc(hidden)]
    pub fn with_stat_cache_batch(self, records: usize) -> Self {
        self.stat_cache().set_batch_records(records);
        self
    }

    /// The context directory (canonicalized).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ignore file that applied, if any.
    pub fn ignore_file(&self) -> Option<&Path> {
        self.ignore_file.as_deref()
    }

    /// The compiled patterns of the ignore file (empty when there is none).
    pub fn ignore_matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// Whether the patterns exclude `path` (context-relative), by the rule
    /// BuildKit's walk applies (each directory's results carried to its
    /// entries). Purely by name: symlinks are not resolved, and an excluded
    /// directory answers `true` even when [`SourceTree::stat`] shows it
    /// because something inside is re-included.
    pub fn is_excluded(&self, path: &str) -> Result<bool, ContextError> {
        self.excluded(&tree::clean(path))
    }

    /// Writes the stat cache to its file if it changed (temp file + rename
    /// in the same directory, which is created if missing). Remembered
    /// files this build neither hashed nor found unchanged are checked with
    /// `lstat` and forgotten when gone or changed. Also done, best effort,
    /// when the context is dropped.
    pub fn save_stat_cache(&self) -> Result<(), ContextError> {
        let mut cache = self.stat_cache();
        cache
            .save(&self.root)
            .map_err(|source| ContextError::SaveStatCache {
                path: cache.file().map(Path::to_path_buf).unwrap_or_default(),
                source,
            })
    }

    /// Hashing counters since the context was opened.
    pub fn stats(&self) -> ContextStats {
        ContextStats {
            files_hashed: self.files_hashed.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
        }
    }

    /// The matcher's answer for a clean path.
    fn excluded(&self, path: &str) -> Result<bool, ContextError> {
        if path.is_empty() || self.matcher.is_empty() {
            return Ok(false);
        }
        let parent = self.match_info(parent_of(path))?;
        let (excluded, _) = self
            .matcher
            .matches_using_parent(path, parent)
            .map_err(|source| self.pattern_error(source))?;
        Ok(excluded)
    }

    /// The [`MatchInfo`] to hand to the entries of directory `dir`.
    fn match_info(&self, dir: &str) -> Result<MatchInfo, ContextError> {
        if dir.is_empty() {
            return Ok(MatchInfo::default());
        }
        if let Some(info) = read(&self.match_infos).get(dir) {
            return Ok(info);
        }
        let parent = self.match_info(parent_of(dir))?;
        let (_, info) = self
            .matcher
            .matches_using_parent(dir, parent)
            .map_err(|source| self.pattern_error(source))?;
        write(&self.match_infos).insert(dir.to_owned(), info);
        Ok(info)
    }

    fn pattern_error(&self, source: IgnoreError) -> ContextError {
        let file = self
            .ignore_file
            .clone()
            .unwrap_or_else(|| self.root.join(".dockerignore"));
        pattern_error(&file, source)
    }

    /// Whether an exception could re-include something below the excluded
    /// directory `dir`, fsutil's test: any glob exception may; otherwise an
    /// exception must name a path inside `dir`.
    fn may_reinclude_below(&self, dir: &str) -> bool {
        if self.exceptions.is_empty() {
            return false;
        }
        if self.glob_exception {
            return true;
        }
        self.exceptions.iter().any(|exception| {
            exception == dir
                || (exception.starts_with(dir)
                    && exception.as_bytes().get(dir.len()) == Some(&b'/'))
        })
    }

    fn is_dir_known(&self, path: &str) -> bool {
        path.is_empty() || read(&self.dirs).get(path).is_some()
    }

    /// Resolves a directory path inside the context, following symlinks
    /// within it (the last component too), through visible entries only.
    /// `None` when some component is missing, excluded or not a directory.
    fn resolve_dir(&self, path: &str) -> Result<Option<String>, TreeError> {
        if self.is_dir_known(path) {
            return Ok(Some(path.to_owned()));
        }
        let mut pending: Vec<String> = path
            .split('/')
            .filter(|part| !part.is_empty())
            .rev()
            .map(str::to_owned)
            .collect();
        let mut done = String::new();
        let mut followed = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    done.truncate(parent_of(&done).len());
                    continue;
                }
                _ => {}
            }
            let candidate = tree::join(&done, &part);
            if self.is_dir_known(&candidate) {
                done = candidate;
                continue;
            }
            // `done` is a known directory, so this lstat never follows a
            // symlink on the host.
            match self.lookup(&candidate)? {
                Some(meta) if meta.is_dir() => done = candidate,
                Some(meta) if meta.file_type().is_symlink() => {
                    followed += 1;
                    if followed > tree::MAX_SYMLINKS {
                        return Err(TreeError::SymlinkLoop(candidate));
                    }
                    let target = read_link(&self.root.join(&candidate))?;
                    if target.starts_with('/') {
                        done.clear();
                    }
                    pending.extend(target.split('/').rev().map(str::to_owned));
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(done))
    }

    /// The context path `path` really names: its parent resolved inside the
    /// context. `None` when the parent is not a visible directory.
    fn locate(&self, path: &str) -> Result<Option<String>, TreeError> {
        let path = tree::clean(path);
        if path.is_empty() {
            return Ok(Some(path));
        }
        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => ("", path.as_str()),
        };
        Ok(self
            .resolve_dir(parent)?
            .map(|parent| tree::join(&parent, name)))
    }

    /// `lstat` of `path`, whose parent is a known directory, or `None` when
    /// it is missing or not visible. Remembers visible directories.
    fn lookup(&self, path: &str) -> Result<Option<Lstat>, TreeError> {
        if let Some(known) = read(&self.lstats).get(path) {
            return Ok(known);
        }
        let found = self.lookup_uncached(path)?;
        write(&self.lstats).insert(path.to_owned(), found);
        Ok(found)
    }

    fn lookup_uncached(&self, path: &str) -> Result<Option<Lstat>, TreeError> {
        let excluded = self.excluded(path).map_err(tree_error)?;
        if excluded && !self.may_reinclude_below(path) {
            return Ok(None);
        }
        let host = self.root.join(path);
        let meta = match fs::symlink_metadata(&host) {
            Ok(meta) => Lstat::from(&meta),
            Err(error) if is_missing(&error) => return Ok(None),
            Err(source) => return Err(io_error(&host, source)),
        };
        if meta.is_dir() {
            if excluded && !self.has_visible_content(path)? {
                return Ok(None);
            }
            write(&self.dirs).insert(path.to_owned(), ());
        } else if excluded {
            return Ok(None);
        }
        Ok(Some(meta))
    }

    /// Whether the excluded directory `dir` (a real directory under a known
    /// one) holds something re-included, at any depth.
    fn has_visible_content(&self, dir: &str) -> Result<bool, TreeError> {
        if let Some(known) = read(&self.reincluded).get(dir) {
            return Ok(known);
        }
        let visible = !self.list(dir, true)?.is_empty();
        write(&self.reincluded).insert(dir.to_owned(), visible);
        Ok(visible)
    }

    /// The visible entries of `dir`, a real directory reached without
    /// symlinks, sorted; with `any`, stops at the first one.
    fn list(&self, dir: &str, any: bool) -> Result<Vec<String>, TreeError> {
        let host = self.root.join(dir);
        let entries = fs::read_dir(&host).map_err(|source| io_error(&host, source))?;
        let info = self.match_info(dir).map_err(tree_error)?;
        let mut names = Vec::new();
        // Recorded once the directory is read: one lock per directory, not
        // per entry.
        let mut found: Vec<(String, Lstat)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_error(&host, source))?;
            let is_dir = || -> Result<bool, TreeError> {
                let kind = entry
                    .file_type()
                    .map_err(|source| io_error(&entry.path(), source))?;
                Ok(kind.is_dir())
            };
            let name = match entry.file_name().into_string() {
                Ok(name) => name,
                Err(raw) => {
                    // Not representable as a tree path: fine if Docker
                    // would not send it anyway.
                    let mut path = dir.as_bytes().to_vec();
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(raw.as_bytes());
                    let (excluded, _) = self
                        .matcher
                        .matches_using_parent_bytes(&path, info)
                        .map_err(|source| tree_error(self.pattern_error(source)))?;
                    if excluded && (self.exceptions.is_empty() || !is_dir()?) {
                        continue;
                    }
                    return Err(TreeError::Other(format!(
                        "file name is not UTF-8: {}",
                        host.join(&raw).display()
                    )));
                }
            };
            let path = tree::join(dir, &name);
            let (visible, excluded) = if self.matcher.is_empty() {
                (true, false)
            } else {
                let (excluded, child_info) = self
                    .matcher
                    .matches_using_parent(&path, info)
                    .map_err(|source| tree_error(self.pattern_error(source)))?;
                let is_subdir = is_dir()?;
                if is_subdir {
                    write(&self.match_infos).insert(path.clone(), child_info);
                }
                let visible = !excluded
                    || (is_subdir
                        && self.may_reinclude_below(&path)
                        && self.has_visible_content(&path)?);
                (visible, excluded)
            };
            if visible && !excluded {
                // What `lookup` would find, from the open directory (no
                // path walk): the walk that follows asks for each entry.
                if let Ok(meta) = entry.metadata().as_ref().map(Lstat::from) {
                    found.push((path, meta));
                }
            }
            if visible {
                names.push(name);
                if any {
                    break;
                }
            }
        }
        names.sort_unstable();
        {
            let mut dirs = write(&self.dirs);
            for (path, meta) in &found {
                if meta.is_dir() {
                    dirs.insert(path.clone(), ());
                }
            }
        }
        let mut lstats = write(&self.lstats);
        for (path, meta) in found {
            lstats.insert(path, Some(meta));
        }
        Ok(names)
    }

    fn stat_cache(&self) -> std::sync::MutexGuard<'_, StatCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The remembered digest of `path`, if its key is unchanged.
    fn cached_digest(&self, path: &str, key: &StatKey) -> Option<Digest> {
        self.stat_cache().digest(path, key)
    }

    /// The remembered xattrs of `path`, if its key is unchanged. An xattr
    /// change changes the ctime, so the key.
    fn cached_xattrs(&self, path: &str, key: &StatKey) -> Option<Xattrs> {
        self.stat_cache().xattrs(path, key)
    }

    /// Reads and hashes the regular file `located` (at `host`); also reads
    /// its xattrs. The record to keep: forgotten when the file changed
    /// within the racy window of the moment hashing began.
    fn hash_file(&self, located: &str, host: &Path) -> Result<(Digest, NewRecord), TreeError> {
        // Taken before the key is: a change after this moment gives a
        // timestamp at least this late, minus one clock tick.
        let started = now_ns();
        let (mut file, meta) = open_regular(host)?;
        let key = StatKey::of(&Lstat::from(&meta));
        let mut hasher = Hasher::new();
        io::copy(&mut file, &mut hasher).map_err(|source| io_error(host, source))?;
        let digest = hasher.finish();
        // Read after the key was taken: a later change moves the ctime.
        let xattrs = read_xattrs(host).map_err(|source| io_error(host, source))?;
        self.files_hashed.fetch_add(1, Ordering::Relaxed);
        let known = (!key.is_racy(started)).then_some(Remembered {
            key,
            digest,
            xattrs,
        });
        Ok((digest, (located.to_owned(), known)))
    }

    /// A visible regular file: its context path, host path and `lstat`.
    fn regular_file(&self, path: &str) -> Result<(String, PathBuf, Lstat), TreeError> {
        let located = self.locate(path)?;
        let found = match &located {
            Some(located) => self.lookup(located)?,
            None => None,
        };
        let (Some(located), Some(meta)) = (located, found) else {
            return Err(io_error(
                &self.root.join(tree::clean(path)),
                io::Error::from(io::ErrorKind::NotFound),
            ));
        };
        let host = self.root.join(&located);
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(TreeError::Other(format!(
                "cannot open {}: it is a symbolic link (resolve it first)",
                host.display()
            )));
        }
        if kind.is_dir() {
            return Err(io_error(&host, io::Error::from_raw_os_error(libc::EISDIR)));
        }
        if !kind.is_file() {
            return Err(TreeError::Other(format!(
                "cannot open {}: not a regular file",
                host.display()
            )));
        }
        Ok((located, host, meta))
    }
}

impl SourceTree for BuildContext {
    fn keeps_dir_times(&self) -> bool {
        false
    }

    fn stat(&self, path: &str) -> Result<Option<Meta>, TreeError> {
        let Some(located) = self.locate(path)? else {
            return Ok(None);
        };
        let meta = if located.is_empty() {
            Lstat::from(
                &fs::symlink_metadata(&self.root).map_err(|source| io_error(&self.root, source))?,
            )
        } else {
            match self.lookup(&located)? {
                Some(meta) => meta,
                None => return Ok(None),
            }
        };
        let host = self.root.join(&located);
        Ok(Some(to_meta(&host, &meta)?))
    }

    fn children(&self, path: &str) -> Result<Vec<String>, TreeError> {
        match self.resolve_dir(&tree::clean(path))? {
            Some(dir) => self.list(&dir, false),
            None => {
                let errno = match self.stat(path)? {
                    Some(_) => libc::ENOTDIR,
                    None => libc::ENOENT,
                };
                Err(io_error(
                    &self.root.join(tree::clean(path)),
                    io::Error::from_raw_os_error(errno),
                ))
            }
        }
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, TreeError> {
        let (_, host, _) = self.regular_file(path)?;
        Ok(Box::new(open_regular(&host)?.0))
    }

    fn open_file(&self, path: &str) -> Result<Option<std::fs::File>, TreeError> {
        let (_, host, _) = self.regular_file(path)?;
        Ok(Some(open_regular(&host)?.0))
    }

    fn xattrs(&self, path: &str) -> Result<Vec<(String, Vec<u8>)>, TreeError> {
        let host = match self.locate(path)? {
            Some(located) if located.is_empty() => self.root.clone(),
            Some(located) => match self.lookup(&located)? {
                Some(meta) => {
                    if meta.is_file() {
                        if let Some(xattrs) = self.cached_xattrs(&located, &StatKey::of(&meta)) {
                            return Ok(xattrs);
                        }
                    }
                    self.root.join(located)
                }
                None => {
                    return Err(io_error(
                        &self.root.join(tree::clean(path)),
                        io::Error::from(io::ErrorKind::NotFound),
                    ))
                }
            },
            None => {
                return Err(io_error(
                    &self.root.join(tree::clean(path)),
                    io::Error::from(io::ErrorKind::NotFound),
                ))
            }
        };
        read_xattrs(&host).map_err(|source| io_error(&host, source))
    }

    fn content_digest(&self, path: &str) -> Result<Digest, TreeError> {
        let (located, host, meta) = self.regular_file(path)?;
        if let Some(digest) = self.cached_digest(&located, &StatKey::of(&meta)) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(digest);
        }
        let (digest, record) = self.hash_file(&located, &host)?;
        self.stat_cache().remember([record]);
        Ok(digest)
    }

    /// Answers what the stat cache knows on this thread, then hashes the
    /// rest on every core: a cold context is mostly reading and sha256.
    /// Done `DIGEST_CHUNK` paths at a time, so that the new records of a
    /// walk's paths are sorted chunk by chunk.
    fn content_digests(&self, paths: &[&str]) -> Result<Vec<Digest>, TreeError> {
        let mut digests = Vec::with_capacity(paths.len());
        for (chunk_index, chunk) in paths.chunks(DIGEST_CHUNK).enumerate() {
            let offset = chunk_index * DIGEST_CHUNK;
            let mut missing = Vec::new();
            for (i, path) in chunk.iter().enumerate() {
                let (located, host, meta) = self.regular_file(path)?;
                match self.cached_digest(&located, &StatKey::of(&meta)) {
                    Some(digest) => {
                        self.cache_hits.fetch_add(1, Ordering::Relaxed);
                        digests.push(digest);
                    }
                    None => {
                        missing.push((offset + i, located, host));
                        digests.push(Digest::of(b""));
                    }
                }
            }
            let mut records = Vec::with_capacity(missing.len());
            for (i, digest, record) in self.hash_in_parallel(&missing)? {
                digests[i] = digest;
                records.push(record);
            }
            self.stat_cache().remember(records);
        }
        Ok(digests)
    }
}

/// A file for [`BuildContext::hash_in_parallel`]: its index in the
/// caller's list, context path and host path.
type ToHash = (usize, String, PathBuf);

impl BuildContext {
    /// [`BuildContext::hash_file`] of each file, on up to one thread per
    /// core; the results come back with their indexes.
    fn hash_in_parallel(
        &self,
        files: &[ToHash],
    ) -> Result<Vec<(usize, Digest, NewRecord)>, TreeError> {
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(files.len() / PARALLEL_MIN_FILES)
            .max(1);
        if threads == 1 {
            return files
                .iter()
                .map(|(i, located, host)| {
                    let (digest, record) = self.hash_file(located, host)?;
                    Ok((*i, digest, record))
                })
                .collect();
        }
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let work = || -> Result<Vec<(usize, Digest, NewRecord)>, TreeError> {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= files.len() || failed.load(Ordering::Relaxed) {
                    return Ok(done);
                }
                let (index, located, host) = &files[i];
                match self.hash_file(located, host) {
                    Ok((digest, record)) => done.push((*index, digest, record)),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        };
        let results: Vec<_> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut hashed = Vec::with_capacity(files.len());
        for result in results {
            hashed.extend(result?);
        }
        Ok(hashed)
    }
}

impl Drop for BuildContext {
    fn drop(&mut self) {
        // Best effort: a cache that cannot be written only costs a re-read.
        let _ = self.save_stat_cache();
    }
}

/// Finds and reads the ignore file that applies.
fn read_ignore_file(
    root: &Path,
    dockerfile: Option<&Path>,
) -> Result<(Option<PathBuf>, Vec<String>), ContextError> {
    let candidates: Vec<PathBuf> = match dockerfile {
        Some(dockerfile) if dockerfile != Path::new("-") => {
            let beside = match dockerfile.file_name().and_then(OsStr::to_str) {
                Some(name) => {
                    let names = ignore_file_candidates(name);
                    let first = names.first().map(String::as_str).unwrap_or_default();
                    dockerfile.with_file_name(first)
                }
                None => {
                    let mut name = dockerfile.as_os_str().to_owned();
                    name.push(".dockerignore");
                    PathBuf::from(name)
                }
            };
            let last = ignore_file_candidates("-");
            std::iter::once(beside)
                .chain(last.iter().map(|name| root.join(name)))
                .collect()
        }
        Some(_) => ignore_file_candidates("-")
            .iter()
            .map(|name| root.join(name))
            .collect(),
        None => ignore_file_candidates("")
            .iter()
            .map(|name| root.join(name))
            .collect(),
    };
    for candidate in candidates {
        match fs::read(&candidate) {
            Ok(bytes) => {
                let patterns = parse_ignore_file(&String::from_utf8_lossy(&bytes));
                return Ok((Some(candidate), patterns));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ContextError::ReadIgnoreFile {
                    path: candidate,
                    source,
                })
            }
        }
    }
    Ok((None, Vec::new()))
}

/// fsutil's `patternWithoutTrailingGlob`: `dir/**` and `dir/*` can only
/// match below `dir`.
fn without_trailing_glob(pattern: &str) -> &str {
    let pattern = pattern.strip_suffix("/**").unwrap_or(pattern);
    pattern.strip_suffix("/*").unwrap_or(pattern)
}

fn pattern_error(file: &Path, source: IgnoreError) -> ContextError {
    let pattern = match &source {
        IgnoreError::BadPattern { pattern } | IgnoreError::UnusablePattern { pattern, .. } => {
            pattern.clone()
        }
        IgnoreError::IllegalExclusion => "!".to_owned(),
        _ => String::new(),
    };
    ContextError::Pattern {
        file: file.to_path_buf(),
        pattern,
        source,
    }
}

/// A context error inside the [`SourceTree`] interface, cause chain kept in
/// the text.
fn tree_error(error: ContextError) -> TreeError {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    TreeError::Other(text)
}

fn io_error(path: &Path, source: io::Error) -> TreeError {
    TreeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Missing, or a parent that is not a directory.
fn is_missing(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::ENOTDIR)
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn read_link(host: &Path) -> Result<String, TreeError> {
    let target = fs::read_link(host).map_err(|source| io_error(host, source))?;
    target.into_os_string().into_string().map_err(|target| {
        TreeError::Other(format!(
            "symlink target of {} is not UTF-8: {}",
            host.display(),
            target.to_string_lossy()
        ))
    })
}

fn to_meta(host: &Path, meta: &Lstat) -> Result<Meta, TreeError> {
    let kind = meta.file_type();
    let rdev = meta.rdev;
    let kind = if kind.is_file() {
        EntryKind::File
    } else if kind.is_dir() {
        EntryKind::Dir
    } else if kind.is_symlink() {
        EntryKind::Symlink(read_link(host)?)
    } else if kind.is_char_device() {
        EntryKind::CharDevice(major(rdev), minor(rdev))
    } else if kind.is_block_device() {
        EntryKind::BlockDevice(major(rdev), minor(rdev))
    } else if kind.is_fifo() {
        EntryKind::Fifo
    } else if kind.is_socket() {
        EntryKind::Socket
    } else {
        return Err(TreeError::Other(format!(
            "{}: unknown file type {:o}",
            host.display(),
            meta.mode & libc::S_IFMT
        )));
    };
    let regular = kind == EntryKind::File;
    Ok(Meta {
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        size: if regular { meta.size } else { 0 },
        mtime: meta.mtime.0,
        link_id: (regular && meta.nlink > 1).then_some((meta.dev, meta.ino)),
        kind,
    })
}

/// What the context keeps of an `lstat`, for every entry it has looked at:
/// 96 bytes where `fs::Metadata` takes about 190, which is 10 MB for each
/// 100,000 files of a context.
#[derive(Debug, Clone, Copy)]
struct Lstat {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
    rdev: u64,
}

impl From<&fs::Metadata> for Lstat {
    fn from(m: &fs::Metadata) -> Self {
        Lstat {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            nlink: m.nlink(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
            rdev: m.rdev(),
        }
    }
}

/// The file type bits of an [`Lstat`], asked as `fs::FileType` is.
#[derive(Debug, Clone, Copy)]
struct FileKind(u32);

impl FileKind {
    fn is(self, kind: u32) -> bool {
        self.0 & libc::S_IFMT == kind
    }
    fn is_file(self) -> bool {
        self.is(libc::S_IFREG)
    }
    fn is_dir(self) -> bool {
        self.is(libc::S_IFDIR)
    }
    fn is_symlink(self) -> bool {
        self.is(libc::S_IFLNK)
    }
    fn is_char_device(self) -> bool {
        self.is(libc::S_IFCHR)
    }
    fn is_block_device(self) -> bool {
        self.is(libc::S_IFBLK)
    }
    fn is_fifo(self) -> bool {
        self.is(libc::S_IFIFO)
    }
    fn is_socket(self) -> bool {
        self.is(libc::S_IFSOCK)
    }
}

impl Lstat {
    fn file_type(&self) -> FileKind {
        FileKind(self.mode)
    }
    fn is_dir(&self) -> bool {
        self.file_type().is_dir()
    }
    fn is_file(&self) -> bool {
        self.file_type().is_file()
    }
}

/// glibc's `gnu_dev_major`.
fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff)) as u32
}

/// glibc's `gnu_dev_minor`.
fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x00ff)) as u32
}

/// Opens a regular file without following a symlink or blocking on a FIFO
/// swapped in since it was looked at; returns it with its `fstat`.
fn open_regular(host: &Path) -> Result<(fs::File, fs::Metadata), TreeError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(host)
        .map_err(|source| io_error(host, source))?;
    let meta = file.metadata().map_err(|source| io_error(host, source))?;
    if !meta.is_file() {
        return Err(TreeError::Other(format!(
            "cannot open {}: not a regular file",
            host.display()
        )));
    }
    Ok((file, meta))
}

/// Whether an extended attribute is worth keeping in an image.
fn keep_xattr(name: &[u8]) -> bool {
    (name.starts_with(b"user.") || name.starts_with(b"security.") || name.starts_with(b"trusted."))
        && !crate::rootfs::is_overlay_xattr(name)
}

/// The kept extended attributes of `host` (not following a symlink), sorted
/// by name; none on a file system without them. Names that are not UTF-8
/// are left out.
fn read_xattrs(host: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let xattrs = sys::read_xattrs(host, keep_xattr)?;
    Ok(xattrs
        .into_iter()
        .filter_map(|(name, value)| Some((String::from_utf8(name).ok()?, value)))
        .collect())
}

fn now_ns() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}
