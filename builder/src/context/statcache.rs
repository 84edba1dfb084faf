//! The stat cache on disk, read and written without holding it in memory:
//! a context of a million files costs a bitmap of 125 KB and a sparse index,
//! not a map of every file.
//!
//! - **The file** is a header (format, version, context root) then one
//!   record per file, sorted by [`path_order`], the order COPY's walk asks
//!   for paths in. A record is its length, the body (kind, path, the
//!   [`StatKey`] fields, the digest, the kept xattrs; variable fields
//!   length-prefixed) and a checksum of the body. A file of another format,
//!   version or root is empty; a damaged one (bad length, bad checksum, a
//!   record out of order, a truncated end) is read up to the damage.
//! - **Lookups** read the file through a few [`Cursor`]s, buffered readers
//!   positioned in it. A lookup takes the cursor furthest along that is not
//!   past the path and reads forward, so a walk asking in order decodes
//!   about one record per file. A sparse index (every [`INDEX_EVERY`]th
//!   record), built while the file is checked on a second thread at open,
//!   lets a cursor jump to a path asked out of order or far ahead.
//! - **Hits** are a bit per record of the file, so that saving knows which
//!   records the build confirmed.
//! - **New records** (files hashed this build, and tombstones for files no
//!   longer to be remembered) collect in a small batch, which is sorted and
//!   appended to a *run*: an unnamed temporary file beside the cache file,
//!   sorted too, gone when closed. A batch goes to the newest run when it
//!   sorts after it, else starts a new run; more than [`MAX_RUNS`] runs are
//!   merged into one. A newer record wins over an older one.
//! - **Saving** merges the file and the runs in one pass into a temporary
//!   file renamed over the old one. Records of the file that were not hits
//!   and that no run replaces are checked with `lstat` first and dropped
//!   when the file is gone or changed (not when the build neither hit nor
//!   hashed anything: it did not use the context). Nothing is written when
//!   nothing changed.

use super::{Lstat, RACY_WINDOW, RACY_WINDOW_COARSE};
use crate::memo::{PathHasher, PathMap};
use crate::tree::{path_order, path_order_bytes as order};
use estiba_cache::Digest;
use std::cmp::Ordering;
use std::fs::{self, File};
use std::hash::Hasher as _;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// What the stat cache file starts with; anything else is ignored.
const CACHE_MAGIC: &[u8] = b"estiba-context-stat-cache\n";
/// Bump when the record layout or the meaning of a field changes.
const CACHE_VERSION: u32 = 3;
/// The longest context root a header may name.
const MAX_ROOT: usize = 64 * 1024;
/// The longest record body; a longer one is not remembered, and a length
/// field above it is damage.
const MAX_RECORD: usize = 1 << 20;
/// The sparse index keeps the path and offset of every this many records:
/// a lookup out of order reads half as many on average, and the index costs
/// about a quarter of a byte per record.
const INDEX_EVERY: u64 = 256;
/// Cursors kept on the cache file, and on each run.
const FILE_CURSORS: usize = 8;
const RUN_CURSORS: usize = 4;
/// Read-ahead of a lookup cursor, and of a sequential reader (check at
/// open, merge at save).
const CURSOR_BUFFER: usize = 16 * 1024;
const SCAN_BUFFER: usize = 64 * 1024;
/// More runs than this are merged into one.
const MAX_RUNS: usize = 16;
/// New records kept in memory before they go to a run, by count and size.
pub(super) const BATCH_RECORDS: usize = 4096;
const BATCH_BYTES: usize = 8 << 20;

/// Record kinds: a file's digest and xattrs, or a tombstone that hides
/// older records of the path (in runs only).
const REMEMBERED: u8 = 0;
const FORGOTTEN: u8 = 1;
/// kind, path length.
const BODY_HEAD: usize = 3;
/// size, mtime ns, ctime ns, inode, device, mode.
const KEY_BYTES: usize = 44;
const DIGEST_BYTES: usize = 32;
/// length before the body, checksum after it.
const FRAME_BYTES: u64 = 8;

/// What must be unchanged for a remembered digest to stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StatKey {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
    mode: u32,
}

impl StatKey {
    pub(super) fn of(meta: &Lstat) -> Self {
        let ns = |secs: i64, nsecs: i64| secs.saturating_mul(1_000_000_000).saturating_add(nsecs);
        StatKey {
            size: meta.size,
            mtime_ns: ns(meta.mtime.0, meta.mtime.1),
            ctime_ns: ns(meta.ctime.0, meta.ctime.1),
            ino: meta.ino,
            dev: meta.dev,
            mode: meta.mode,
        }
    }

    /// Changed so recently, relative to `started`, that a later write could
    /// keep the same timestamps.
    pub(super) fn is_racy(&self, started: i64) -> bool {
        let whole_seconds = |ns: i64| ns.rem_euclid(1_000_000_000) == 0;
        let window = if whole_seconds(self.mtime_ns) && whole_seconds(self.ctime_ns) {
            RACY_WINDOW_COARSE
        } else {
            RACY_WINDOW
        };
        let window = i64::try_from(window.as_nanos()).unwrap_or(i64::MAX);
        self.mtime_ns.max(self.ctime_ns) >= started.saturating_sub(window)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.ctime_ns.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
    }

    fn decode(mut fields: &[u8]) -> Option<Self> {
        let mut r = Fields(&mut fields);
        Some(StatKey {
            size: r.u64()?,
            mtime_ns: r.u64()? as i64,
            ctime_ns: r.u64()? as i64,
            ino: r.u64()?,
            dev: r.u64()?,
            mode: r.u32()?,
        })
    }
}

/// Extended attributes worth keeping, sorted by name.
pub(super) type Xattrs = Vec<(String, Vec<u8>)>;

/// What the stat cache remembers of a file.
#[derive(Debug, Clone)]
pub(super) struct Remembered {
    pub(super) key: StatKey,
    pub(super) digest: Digest,
    pub(super) xattrs: Xattrs,
}

/// A new record: the context path and what to remember of it, or `None`
/// to forget it.
pub(super) type NewRecord = (String, Option<Remembered>);

/// The stat cache: the file as it was, the records of this build, and
/// which records of the file were hits.
#[derive(Debug)]
pub(super) struct StatCache {
    file: Option<PathBuf>,
    /// Where a new `file` is written before it is renamed over the old
    /// one; `None`: beside it.
    temp_dir: Option<PathBuf>,
    /// The context root the records belong to.
    root: String,
    /// The thread checking `file`, until a lookup needs it.
    loading: Option<JoinHandle<Option<Table>>>,
    /// The records of `file`, once checked.
    old: Option<Table>,
    /// Which records of `old` were hits (or were checked at save).
    visited: Bitmap,
    /// New records not yet in a run, by path (the last one wins).
    pending: PathMap<Option<Remembered>>,
    pending_bytes: usize,
    batch_records: usize,
    /// Sorted files of new records, oldest first.
    runs: Vec<Table>,
}

impl StatCache {
    /// The cache kept in `file` (or nowhere) for the context `root`;
    /// starts checking the file on another thread.
    pub(super) fn open(file: Option<PathBuf>, root: String) -> Self {
        let loading = file.clone().map(|file| {
            let root = root.clone();
            std::thread::spawn(move || load(&file, &root))
        });
        StatCache {
            file,
            temp_dir: None,
            root,
            loading,
            old: None,
            visited: Bitmap::default(),
            pending: PathMap::default(),
            pending_bytes: 0,
            batch_records: BATCH_RECORDS,
            runs: Vec::new(),
        }
    }

    /// Writes new cache files in `dir` (on the file's file system), so that
    /// what a killed build leaves is where its owner cleans up.
    pub(super) fn set_temp_dir(&mut self, dir: PathBuf) {
        self.temp_dir = Some(dir);
    }

    /// The file the cache is kept in.
    pub(super) fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Sets how many new records are kept in memory before they go to a run.
    pub(super) fn set_batch_records(&mut self, records: usize) {
        self.batch_records = records.max(1);
    }

    /// The remembered digest of `path`, if its key is `key`.
    pub(super) fn digest(&mut self, path: &str, key: &StatKey) -> Option<Digest> {
        self.find(path, key, |known| Some(known.digest), decode_digest)
    }

    /// The remembered xattrs of `path`, if its key is `key`.
    pub(super) fn xattrs(&mut self, path: &str, key: &StatKey) -> Option<Xattrs> {
        self.find(path, key, |known| Some(known.xattrs.clone()), decode_xattrs)
    }

    /// Remembers (or forgets) what the build found; the records go to a
    /// run once the batch is full.
    pub(super) fn remember(&mut self, records: impl IntoIterator<Item = NewRecord>) {
        for (path, known) in records {
            self.pending_bytes += path.len()
                + known.as_ref().map_or(0, |known| {
                    KEY_BYTES
                        + DIGEST_BYTES
                        + known
                            .xattrs
                            .iter()
                            .map(|(name, value)| name.len() + value.len())
                            .sum::<usize>()
                });
            self.pending.insert(path, known);
        }
        if self.pending.len() >= self.batch_records || self.pending_bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Writes the records of this build into the cache file if anything
    /// changed: one merge of the file and the runs into a temporary file,
    /// renamed over it. `context` is the context directory, where records
    /// that were not hits are checked.
    pub(super) fn save(&mut self, context: &Path) -> io::Result<()> {
        self.wait_loaded();
        self.flush();
        let Some(file) = self.file.clone() else {
            return Ok(());
        };
        let count = self.old.as_ref().map_or(0, |old| old.count);
        let unvisited = count - self.visited.ones;
        // Records that were no hit stay unchecked when the build neither
        // read the cache nor hashed anything: it did not use the context.
        if self.runs.is_empty() && (unvisited == 0 || self.visited.ones == 0) {
            return Ok(());
        }
        let dropped = match &self.old {
            Some(old) if unvisited > 0 => check_unvisited(old, &self.visited, &self.runs, context),
            _ => Bitmap::default(),
        };
        if self.runs.is_empty() && dropped.ones == 0 {
            // Checked: as good as hits until something changes.
            self.visited = Bitmap::full(count);
            return Ok(());
        }
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir)?;
        let mut temp = tempfile::NamedTempFile::new_in(self.temp_dir.as_deref().unwrap_or(dir))?;
        let mut header = Vec::new();
        header.extend_from_slice(CACHE_MAGIC);
        header.extend_from_slice(&CACHE_VERSION.to_le_bytes());
        header.extend_from_slice(&(self.root.len() as u32).to_le_bytes());
        header.extend_from_slice(self.root.as_bytes());
        let start = header.len() as u64;
        let mut out = io::BufWriter::with_capacity(SCAN_BUFFER, temp.as_file_mut());
        out.write_all(&header)?;
        let mut writer = TableWriter::new(out, start, 0);
        let changes = merge(
            self.runs.iter().rev(),
            self.old.as_ref(),
            &mut writer,
            |ordinal| !dropped.get(ordinal),
            false,
        )?;
        let written = writer.finish()?;
        if changes == 0 {
            // Only tombstones of records that were not there.
            self.runs.clear();
            self.visited = Bitmap::full(count);
            return Ok(());
        }
        let file = temp.persist(&file).map_err(|error| error.error)?;
        self.runs.clear();
        let mut table = Table::empty(file, start, FILE_CURSORS);
        written.fill(&mut table);
        self.visited = Bitmap::full(table.count);
        self.old = Some(table);
        Ok(())
    }

    /// The checked cache file, once the thread checking it is done.
    fn wait_loaded(&mut self) {
        if let Some(loading) = self.loading.take() {
            // A checker that panicked leaves an empty cache: only a re-read.
            self.old = loading.join().ok().flatten();
            self.visited = Bitmap::new(self.old.as_ref().map_or(0, |old| old.count));
        }
    }

    /// The newest record of `path`: from the batch, else the newest run
    /// that has it, else the file. `T` from an entry of the batch, or from
    /// a stored record's fields after the path.
    fn find<T>(
        &mut self,
        path: &str,
        key: &StatKey,
        from_batch: impl FnOnce(&Remembered) -> Option<T>,
        from_record: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Option<T> {
        self.wait_loaded();
        if let Some(known) = self.pending.get(path) {
            return known
                .as_ref()
                .filter(|known| known.key == *key)
                .and_then(from_batch);
        }
        let path = path.as_bytes();
        for run in self.runs.iter_mut().rev() {
            if let Some(i) = run.find(path) {
                let cursor = &run.cursors[i];
                if cursor.kind() != REMEMBERED || StatKey::decode(cursor.fields())? != *key {
                    return None;
                }
                return from_record(cursor.fields());
            }
        }
        let old = self.old.as_mut()?;
        let i = old.find(path)?;
        let cursor = &old.cursors[i];
        if StatKey::decode(cursor.fields())? != *key {
            return None;
        }
        let found = from_record(cursor.fields())?;
        self.visited.set(cursor.ordinal);
        Some(found)
    }

    /// Moves the batch to a run: the newest one when the batch sorts after
    /// it, else a new one. Records that cannot be written are lost, which
    /// only costs a re-read.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut batch: Vec<NewRecord> = self.pending.drain().collect();
        self.pending_bytes = 0;
        batch.sort_unstable_by(|a, b| path_order(&a.0, &b.0));
        let first = batch[0].0.as_bytes();
        let fits = self
            .runs
            .last()
            .is_some_and(|run| order(&run.last, first) == Ordering::Less);
        if !fits {
            let Ok(file) = self.temp_file() else {
                return;
            };
            self.runs.push(Table::empty(file, 0, RUN_CURSORS));
        }
        if let Some(run) = self.runs.last_mut() {
            // A failed append leaves the run as it was.
            let _ = run.append(&batch);
        }
        if self.runs.len() > MAX_RUNS {
            // A failed merge leaves the runs as they were.
            let _ = self.merge_runs();
        }
    }

    /// All runs merged into one, tombstones kept (they hide records of the
    /// file).
    fn merge_runs(&mut self) -> io::Result<()> {
        let mut file = self.temp_file()?;
        let out = io::BufWriter::with_capacity(SCAN_BUFFER, &mut file);
        let mut writer = TableWriter::new(out, 0, 0);
        merge(self.runs.iter().rev(), None, &mut writer, |_| true, true)?;
        let written = writer.finish()?;
        let mut merged = Table::empty(file, 0, RUN_CURSORS);
        written.fill(&mut merged);
        self.runs = vec![merged];
        Ok(())
    }

    /// An unnamed temporary file beside the cache file (or in the system's
    /// temporary directory): deleted when closed, whatever happens.
    fn temp_file(&self) -> io::Result<File> {
        let dir = self.file.as_deref().and_then(Path::parent);
        if let Some(dir) = dir.filter(|dir| !dir.as_os_str().is_empty()) {
            if let Ok(file) = fs::create_dir_all(dir).and_then(|()| tempfile::tempfile_in(dir)) {
                return Ok(file);
            }
        }
        tempfile::tempfile()
    }
}

/// The checked records of the cache file for `root`; `None` when the file
/// is missing, unreadable, of another format or version, or made for
/// another root. Records after damage are left out.
fn load(path: &Path, root: &str) -> Option<Table> {
    let file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut reader = Cursor::new(SCAN_BUFFER);
    reader.verify = true;
    let head = reader.window.bytes(&file, size, 0, CACHE_MAGIC.len() + 8)?;
    let (magic, mut numbers) = head.split_at(CACHE_MAGIC.len());
    let version = Fields(&mut numbers).u32()?;
    let root_len = Fields(&mut numbers).u32()? as usize;
    if magic != CACHE_MAGIC || version != CACHE_VERSION || root_len > MAX_ROOT {
        return None;
    }
    let start = (CACHE_MAGIC.len() + 8) as u64;
    if reader.window.bytes(&file, size, start, root_len)? != root.as_bytes() {
        return None;
    }
    let start = start + root_len as u64;
    let mut table = Table::empty(file, start, FILE_CURSORS);
    reader.load(&table.file, size, start, 0);
    let mut last: Vec<u8> = Vec::new();
    while let Some(path) = reader.path() {
        let in_order = reader.ordinal == 0 || order(&last, path) == Ordering::Less;
        if !in_order || reader.kind() != REMEMBERED || !is_clean(path) {
            break;
        }
        if !valid_fields(reader.fields()) {
            break;
        }
        if reader.ordinal % INDEX_EVERY == 0 {
            table.index.push((path.into(), reader.at));
        }
        last.clear();
        last.extend_from_slice(path);
        reader.advance(&table.file, size);
    }
    table.end = reader.at;
    table.count = reader.ordinal;
    table.last = last;
    Some(table)
}

/// The records of `old` that were no hit, that no run replaces, and whose
/// file is gone, no longer a regular file, or changed.
fn check_unvisited(old: &Table, visited: &Bitmap, runs: &[Table], context: &Path) -> Bitmap {
    let mut dropped = Bitmap::new(old.count);
    let mut reader = old.reader();
    let mut runs: Vec<(Cursor, &Table)> = runs.iter().map(|run| (run.reader(), run)).collect();
    while let Some(path) = reader.path() {
        let ordinal = reader.ordinal;
        if !visited.get(ordinal) && !replaced(&mut runs, path) {
            let now = std::str::from_utf8(path)
                .ok()
                .and_then(|path| fs::symlink_metadata(context.join(path)).ok())
                .map(|meta| Lstat::from(&meta))
                .filter(Lstat::is_file)
                .map(|meta| StatKey::of(&meta));
            if now.is_none() || now != StatKey::decode(reader.fields()) {
                dropped.set(ordinal);
            }
        }
        reader.advance(&old.file, old.end);
    }
    dropped
}

/// Whether a run has a record of `path`; each run's reader is moved up to
/// `path` (asked in order).
fn replaced(runs: &mut [(Cursor, &Table)], path: &[u8]) -> bool {
    let mut found = false;
    for (reader, run) in runs {
        while reader
            .path()
            .is_some_and(|at| order(at, path) == Ordering::Less)
        {
            reader.advance(&run.file, run.end);
        }
        found |= reader.path() == Some(path);
    }
    found
}

/// One sorted pass over `runs` (newest first) and `old`, writing the newest
/// record of each path; records of `old` only when `keep_old(ordinal)`;
/// tombstones only when `keep_tombstones`. The number of changes to `old`
/// (records written from runs, records of `old` dropped or hidden).
fn merge<'a, W: Write>(
    runs: impl Iterator<Item = &'a Table>,
    old: Option<&'a Table>,
    writer: &mut TableWriter<W>,
    keep_old: impl Fn(u64) -> bool,
    keep_tombstones: bool,
) -> io::Result<u64> {
    // By priority: runs newest first, the file last.
    let mut sources: Vec<(Cursor, &Table)> = runs
        .chain(old)
        .map(|table| (table.reader(), table))
        .collect();
    let old_source = old.map(|_| sources.len() - 1);
    let mut changes = 0u64;
    let mut current: Vec<u8> = Vec::new();
    loop {
        let mut best: Option<usize> = None;
        for (i, (cursor, _)) in sources.iter().enumerate() {
            let Some(path) = cursor.path() else { continue };
            let better = match best {
                None => true,
                Some(b) => sources[b]
                    .0
                    .path()
                    .is_none_or(|best_path| order(path, best_path) == Ordering::Less),
            };
            if better {
                best = Some(i);
            }
        }
        let Some(best) = best else {
            return Ok(changes);
        };
        let (cursor, _) = &sources[best];
        current.clear();
        current.extend_from_slice(cursor.path().unwrap_or_default());
        let old_has_it = old_source.is_some_and(|o| sources[o].0.path() == Some(&current[..]));
        if Some(best) == old_source {
            if keep_old(cursor.ordinal) {
                writer.push(cursor.body())?;
            } else {
                changes += 1;
            }
        } else if cursor.kind() == REMEMBERED {
            writer.push(cursor.body())?;
            changes += 1;
        } else {
            if keep_tombstones {
                writer.push(cursor.body())?;
            }
            changes += u64::from(old_has_it);
        }
        for (cursor, table) in &mut sources {
            if cursor.path() == Some(&current[..]) {
                cursor.advance(&table.file, table.end);
            }
        }
    }
}

/// A sorted file of records: the cache file or a run.
#[derive(Debug)]
struct Table {
    file: File,
    /// Offset of the first record.
    start: u64,
    /// End of the last whole record.
    end: u64,
    count: u64,
    /// Path and offset of record 0, [`INDEX_EVERY`], 2 × [`INDEX_EVERY`]…
    index: Vec<(Box<[u8]>, u64)>,
    /// The last record's path.
    last: Vec<u8>,
    cursors: Vec<Cursor>,
    max_cursors: usize,
    /// Lookups so far: which cursor was used last.
    tick: u64,
}

impl Table {
    fn empty(file: File, start: u64, max_cursors: usize) -> Self {
        Table {
            file,
            start,
            end: start,
            count: 0,
            index: Vec::new(),
            last: Vec::new(),
            cursors: Vec::new(),
            max_cursors,
            tick: 0,
        }
    }

    /// A reader from the first record on, for one pass.
    fn reader(&self) -> Cursor {
        let mut reader = Cursor::new(SCAN_BUFFER);
        reader.load(&self.file, self.end, self.start, 0);
        reader
    }

    /// The cursor standing on the record of `path`, if there is one.
    /// Reads forward from the cursor furthest along that is not past
    /// `path`, or from the index entry before `path` when that is further.
    fn find(&mut self, path: &[u8]) -> Option<usize> {
        let first = self.index.first()?;
        if order(path, &first.0) == Ordering::Less || order(path, &self.last) == Ordering::Greater {
            return None;
        }
        self.tick += 1;
        // A cursor that stopped at the end of a run that grew since reads on.
        for cursor in &mut self.cursors {
            if cursor.record.is_empty() && cursor.at < self.end {
                cursor.load(&self.file, self.end, cursor.at, cursor.ordinal);
            }
        }
        let mut best: Option<(usize, &[u8])> = None;
        for (i, cursor) in self.cursors.iter().enumerate() {
            let Some(at) = cursor.path() else { continue };
            let usable = order(at, path) != Ordering::Greater;
            if usable && best.is_none_or(|(_, best)| order(at, best) == Ordering::Greater) {
                best = Some((i, at));
            }
        }
        let best = best.map(|(i, _)| i);
        // Jump to the index entry at or before `path` when the cursor is
        // behind it (one comparison with the next entry says whether).
        let behind = |cursor: &Cursor| {
            let next = cursor.ordinal / INDEX_EVERY + 1;
            usize::try_from(next)
                .ok()
                .and_then(|next| self.index.get(next))
                .is_some_and(|(at, _)| order(at, path) != Ordering::Greater)
        };
        let i = match best {
            Some(i) if !behind(&self.cursors[i]) => i,
            _ => {
                // There is one: `path` is not before the first record.
                let entry = self
                    .index
                    .partition_point(|(at, _)| order(at, path) != Ordering::Greater)
                    .saturating_sub(1);
                let at = self.index[entry].1;
                let i = best.unwrap_or_else(|| self.spare_cursor());
                self.cursors[i].load(&self.file, self.end, at, entry as u64 * INDEX_EVERY);
                i
            }
        };
        let cursor = &mut self.cursors[i];
        cursor.used = self.tick;
        while let Some(at) = cursor.path() {
            match order(at, path) {
                Ordering::Less => cursor.advance(&self.file, self.end),
                Ordering::Equal => return Some(i),
                Ordering::Greater => return None,
            }
        }
        None
    }

    /// A cursor to move: a new one while there are fewer than
    /// `max_cursors`, else one at the end, else the least recently used.
    fn spare_cursor(&mut self) -> usize {
        if self.cursors.len() < self.max_cursors {
            self.cursors.push(Cursor::new(CURSOR_BUFFER));
            return self.cursors.len() - 1;
        }
        let at_end = self.cursors.iter().position(|c| c.record.is_empty());
        at_end.unwrap_or_else(|| {
            self.cursors
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.used)
                .map_or(0, |(i, _)| i)
        })
    }

    /// Appends `batch`, sorted, every path after [`Table::last`]. Records
    /// too big to keep are left out; on an error the table is unchanged.
    fn append(&mut self, batch: &[NewRecord]) -> io::Result<()> {
        let mut bytes = Vec::new();
        let mut writer = TableWriter::new(&mut bytes, self.end, self.count);
        writer.last.clone_from(&self.last);
        let mut body = Vec::new();
        for (path, known) in batch {
            if encode_body(path, known.as_ref(), &mut body) {
                writer.push(&body)?;
            }
        }
        let written = writer.finish()?;
        self.file.write_all_at(&bytes, self.end)?;
        written.fill(self);
        Ok(())
    }
}

/// What a [`TableWriter`] wrote: the table's new end, count, index entries
/// and last path.
#[derive(Debug)]
struct Written {
    end: u64,
    count: u64,
    index: Vec<(Box<[u8]>, u64)>,
    last: Vec<u8>,
}

impl Written {
    /// The table now ends with what was written.
    fn fill(self, table: &mut Table) {
        table.end = self.end;
        table.count = self.count;
        table.index.extend(self.index);
        table.last = self.last;
    }
}

/// Writes records one after the other, noting the index entries.
#[derive(Debug)]
struct TableWriter<W> {
    out: W,
    /// Where the next record goes.
    offset: u64,
    /// Records so far (in the table, when appending).
    count: u64,
    index: Vec<(Box<[u8]>, u64)>,
    last: Vec<u8>,
}

impl<W: Write> TableWriter<W> {
    fn new(out: W, offset: u64, count: u64) -> Self {
        TableWriter {
            out,
            offset,
            count,
            index: Vec::new(),
            last: Vec::new(),
        }
    }

    /// Flushes what was written.
    fn finish(mut self) -> io::Result<Written> {
        self.out.flush()?;
        Ok(Written {
            end: self.offset,
            count: self.count,
            index: self.index,
            last: self.last,
        })
    }

    /// Writes one record around `body` (kind, path, fields).
    fn push(&mut self, body: &[u8]) -> io::Result<()> {
        let path = body_path(body).ok_or_else(|| io::Error::other("malformed record"))?;
        let len = u32::try_from(body.len()).map_err(io::Error::other)?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(body)?;
        self.out.write_all(&checksum(body).to_le_bytes())?;
        if self.count % INDEX_EVERY == 0 {
            self.index.push((path.into(), self.offset));
        }
        self.last.clear();
        self.last.extend_from_slice(path);
        self.count += 1;
        self.offset += FRAME_BYTES + u64::from(len);
        Ok(())
    }
}

/// A buffered reader standing on one record of a table.
#[derive(Debug)]
struct Cursor {
    window: Window,
    /// Offset and ordinal of the record; at the end (or at damage) when
    /// `record` is empty.
    at: u64,
    ordinal: u64,
    /// Offset of the next record.
    next: u64,
    /// The record's body: kind, path length, path, fields.
    record: Vec<u8>,
    path_len: usize,
    /// When a lookup last used it.
    used: u64,
    /// Records read so far.
    loads: u64,
    /// Checks each record's checksum (a table is checked once, when
    /// loaded; lookups then trust it).
    verify: bool,
}

impl Cursor {
    fn new(buffer: usize) -> Self {
        Cursor {
            window: Window {
                bytes: Vec::new(),
                at: 0,
                capacity: buffer,
            },
            at: 0,
            ordinal: 0,
            next: 0,
            record: Vec::new(),
            path_len: 0,
            used: 0,
            loads: 0,
            verify: false,
        }
    }

    /// Stands on the record at `offset` of `file` (which ends at `end`),
    /// whose ordinal is `ordinal`; at the end when there is none or it is
    /// damaged.
    fn load(&mut self, file: &File, end: u64, offset: u64, ordinal: u64) {
        self.at = offset;
        self.next = offset;
        self.ordinal = ordinal;
        self.loads += 1;
        self.record.clear();
        let Some(len) = self.window.bytes(file, end, offset, 4) else {
            return;
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if !(BODY_HEAD..=MAX_RECORD).contains(&len) {
            return;
        }
        let Some(frame) = self.window.bytes(file, end, offset + 4, len + 4) else {
            return;
        };
        let (body, check) = frame.split_at(len);
        if self.verify && checksum(body).to_le_bytes() != check {
            return;
        }
        let Some(path) = body_path(body) else {
            return;
        };
        self.path_len = path.len();
        self.record.extend_from_slice(body);
        self.next = offset + FRAME_BYTES + len as u64;
    }

    /// Moves to the next record.
    fn advance(&mut self, file: &File, end: u64) {
        if !self.record.is_empty() {
            self.load(file, end, self.next, self.ordinal + 1);
        }
    }

    fn path(&self) -> Option<&[u8]> {
        self.record.get(BODY_HEAD..BODY_HEAD + self.path_len)
    }

    fn kind(&self) -> u8 {
        self.record.first().copied().unwrap_or(FORGOTTEN)
    }

    fn body(&self) -> &[u8] {
        &self.record
    }

    /// The fields after the path.
    fn fields(&self) -> &[u8] {
        self.record
            .get(BODY_HEAD + self.path_len..)
            .unwrap_or_default()
    }
}

/// Bytes of a file read ahead.
#[derive(Debug)]
struct Window {
    bytes: Vec<u8>,
    /// Where `bytes` start in the file.
    at: u64,
    /// How much to read at once.
    capacity: usize,
}

impl Window {
    /// Bytes `offset..offset + len` of `file`, which ends at `end`; `None`
    /// past the end or on a read error.
    fn bytes(&mut self, file: &File, end: u64, offset: u64, len: usize) -> Option<&[u8]> {
        let stop = offset.checked_add(len as u64).filter(|&stop| stop <= end)?;
        let held = offset >= self.at && stop <= self.at + self.bytes.len() as u64;
        if !held {
            let read = (len.max(self.capacity) as u64).min(end - offset) as usize;
            self.bytes.resize(read, 0);
            if file.read_exact_at(&mut self.bytes, offset).is_err() {
                self.bytes.clear();
                return None;
            }
            self.at = offset;
        }
        let from = (offset - self.at) as usize;
        self.bytes.get(from..from + len)
    }
}

/// One bit per record of the cache file.
#[derive(Debug, Default)]
struct Bitmap {
    words: Vec<u64>,
    /// Bits set.
    ones: u64,
}

impl Bitmap {
    fn new(bits: u64) -> Self {
        Bitmap {
            words: vec![0; bits.div_ceil(64) as usize],
            ones: 0,
        }
    }

    fn full(bits: u64) -> Self {
        let mut map = Bitmap::new(bits);
        map.words.fill(u64::MAX);
        map.ones = bits;
        map
    }

    fn get(&self, bit: u64) -> bool {
        self.words
            .get((bit / 64) as usize)
            .is_some_and(|word| word & (1 << (bit % 64)) != 0)
    }

    fn set(&mut self, bit: u64) {
        if let Some(word) = self.words.get_mut((bit / 64) as usize) {
            let mask = 1 << (bit % 64);
            if *word & mask == 0 {
                *word |= mask;
                self.ones += 1;
            }
        }
    }
}

/// Little-endian fields read in turn from a slice.
struct Fields<'a, 'b>(&'a mut &'b [u8]);

impl<'b> Fields<'_, 'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        *self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(word))
    }
}

/// The path of a record body.
fn body_path(body: &[u8]) -> Option<&[u8]> {
    let len = usize::from(u16::from_le_bytes([*body.get(1)?, *body.get(2)?]));
    body.get(BODY_HEAD..BODY_HEAD + len)
}

/// Encodes a record body into `out` (cleared first); `false` when it does
/// not fit the format's limits.
fn encode_body(path: &str, known: Option<&Remembered>, out: &mut Vec<u8>) -> bool {
    out.clear();
    let Ok(path_len) = u16::try_from(path.len()) else {
        return false;
    };
    out.push(if known.is_some() {
        REMEMBERED
    } else {
        FORGOTTEN
    });
    out.extend_from_slice(&path_len.to_le_bytes());
    out.extend_from_slice(path.as_bytes());
    let Some(known) = known else {
        return true;
    };
    known.key.encode(out);
    out.extend_from_slice(known.digest.as_bytes());
    let Ok(count) = u16::try_from(known.xattrs.len()) else {
        return false;
    };
    out.extend_from_slice(&count.to_le_bytes());
    for (name, value) in &known.xattrs {
        let (Ok(name_len), Ok(value_len)) = (u16::try_from(name.len()), u32::try_from(value.len()))
        else {
            return false;
        };
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&value_len.to_le_bytes());
        out.extend_from_slice(value);
        if out.len() > MAX_RECORD {
            return false;
        }
    }
    out.len() <= MAX_RECORD
}

/// The digest in a record's fields.
fn decode_digest(fields: &[u8]) -> Option<Digest> {
    let bytes = fields.get(KEY_BYTES..KEY_BYTES + DIGEST_BYTES)?;
    Some(Digest::from_bytes(bytes.try_into().ok()?))
}

/// The xattrs in a record's fields.
fn decode_xattrs(fields: &[u8]) -> Option<Xattrs> {
    let mut rest = fields.get(KEY_BYTES + DIGEST_BYTES..)?;
    let mut r = Fields(&mut rest);
    let count = r.u16()?;
    // Each takes at least 6 bytes: a bad count allocates no more than that.
    let mut xattrs = Vec::with_capacity(usize::from(count).min(r.0.len() / 6));
    for _ in 0..count {
        let name_len = usize::from(r.u16()?);
        let name = std::str::from_utf8(r.take(name_len)?).ok()?;
        let value_len = r.u32()? as usize;
        let value = r.take(value_len)?;
        xattrs.push((name.to_owned(), value.to_vec()));
    }
    r.0.is_empty().then_some(xattrs)
}

/// Whether a record's fields are whole: key, digest, xattrs, nothing more.
fn valid_fields(fields: &[u8]) -> bool {
    let Some(mut rest) = fields.get(KEY_BYTES + DIGEST_BYTES..) else {
        return false;
    };
    let mut r = Fields(&mut rest);
    let Some(count) = r.u16() else {
        return false;
    };
    for _ in 0..count {
        let Some(name_len) = r.u16() else {
            return false;
        };
        let name_ok = r
            .take(usize::from(name_len))
            .is_some_and(|name| std::str::from_utf8(name).is_ok());
        let value_ok = r.u32().and_then(|len| r.take(len as usize)).is_some();
        if !name_ok || !value_ok {
            return false;
        }
    }
    r.0.is_empty()
}

/// A context path as the context hands them out: relative, UTF-8, no
/// empty, `.` or `..` component.
fn is_clean(path: &[u8]) -> bool {
    std::str::from_utf8(path).is_ok()
        && path
            .split(|&b| b == b'/')
            .all(|part| !part.is_empty() && part != b"." && part != b"..")
}

/// A record's checksum: catches damage the framing does not.
fn checksum(body: &[u8]) -> u32 {
    let mut hasher = PathHasher(0x9e37_79b9_7f4a_7c15 ^ body.len() as u64);
    hasher.write(body);
    let hash = hasher.finish();
    (hash ^ (hash >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> StatKey {
        StatKey {
            size: n,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: n,
            dev: 3,
            mode: 0o100_644,
        }
    }

    fn known(path: &str, n: u64) -> Option<Remembered> {
        Some(Remembered {
            key: key(n),
            digest: Digest::of(format!("{path} {n}").as_bytes()),
            xattrs: if n % 3 == 0 {
                vec![("user.n".to_owned(), n.to_le_bytes().to_vec())]
            } else {
                Vec::new()
            },
        })
    }

    fn paths(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("d{}/f{i:05}", i % 7)).collect()
    }

    /// Asks for every path of `order`, checking against `want` (the
    /// generation each path was remembered with, or none).
    fn check(cache: &mut StatCache, order: &[&String], want: &PathMap<Option<u64>>) {
        for path in order {
            let expected = want[path.as_str()];
            let n = expected.unwrap_or(0);
            let digest = cache.digest(path, &key(n));
            match expected {
                Some(n) => {
                    assert_eq!(digest, known(path, n).map(|k| k.digest), "{path}");
                    let xattrs = cache.xattrs(path, &key(n));
                    assert_eq!(xattrs, known(path, n).map(|k| k.xattrs), "{path}");
                    assert_eq!(cache.digest(path, &key(n + 1000)), None, "{path}");
                }
                None => assert_eq!(digest, None, "{path}"),
            }
        }
    }

    #[test]
    fn order_is_path_order() {
        let names = [
            "a", "a/b", "a/b/c", "a-", "a.c", "a/z", "b", "", "ab", "a/", "ä",
        ];
        for x in names {
            for y in names {
                assert_eq!(
                    order(x.as_bytes(), y.as_bytes()),
                    path_order(x, y),
                    "{x} {y}"
                );
            }
        }
    }

    /// New records written in batches out of order make more runs than the
    /// merge limit; the newest record of a path wins over older ones and
    /// over the file, tombstones included, in lookups and once saved.
    #[test]
    fn runs_merge_past_the_limit_and_the_newest_record_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cache");
        let all = paths(1200);
        let mut want: PathMap<Option<u64>> = all.iter().map(|p| (p.clone(), None)).collect();

        // A first file, so that runs also override saved records.
        let mut cache = StatCache::open(Some(file.clone()), "/ctx".to_owned());
        cache.remember(all.iter().step_by(2).map(|p| (p.clone(), known(p, 1))));
        for p in all.iter().step_by(2) {
            want.insert(p.clone(), Some(1));
        }
        cache.save(dir.path()).expect("save");
        drop(cache);

        let mut cache = StatCache::open(Some(file.clone()), "/ctx".to_owned());
        cache.set_batch_records(20);
        // Backwards, in batches: every batch starts a run.
        let (mut most_runs, mut merges) = (0, 0);
        for (i, p) in all.iter().enumerate().rev() {
            let record = match i % 5 {
                0 => (p.clone(), None),
                1 | 2 => (p.clone(), known(p, 2)),
                _ => continue,
            };
            want.insert(p.clone(), record.1.as_ref().map(|_| 2));
            let before = cache.runs.len();
            cache.remember([record]);
            most_runs = most_runs.max(cache.runs.len());
            merges += usize::from(cache.runs.len() < before);
        }
        assert_eq!(most_runs, MAX_RUNS);
        assert!(merges >= 2, "{merges} merges");
        // Again over some: the newest wins over an older run.
        for p in all.iter().step_by(11) {
            want.insert(p.clone(), Some(3));
            cache.remember([(p.clone(), known(p, 3))]);
        }
        cache.flush();
        let forward: Vec<&String> = all.iter().collect();
        let backward: Vec<&String> = all.iter().rev().collect();
        let scattered: Vec<&String> = (0..all.len()).map(|i| &all[i * 541 % all.len()]).collect();
        check(&mut cache, &forward, &want);
        check(&mut cache, &backward, &want);
        check(&mut cache, &scattered, &want);
        cache.save(dir.path()).expect("save");
        assert!(cache.runs.is_empty());
        check(&mut cache, &scattered, &want);
        drop(cache);

        let mut cache = StatCache::open(Some(file), "/ctx".to_owned());
        check(&mut cache, &scattered, &want);
        check(&mut cache, &forward, &want);
        let remembered = want.values().filter(|n| n.is_some()).count() as u64;
        assert_eq!(cache.old.as_ref().map(|old| old.count), Some(remembered));
    }

    /// Reading in path order decodes about one record per lookup, and a
    /// jump far ahead goes through the index, not through every record.
    #[test]
    fn lookups_in_order_read_each_record_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cache");
        let mut all = paths(10_000);
        all.sort_by(|a, b| path_order(a, b));
        let mut cache = StatCache::open(Some(file.clone()), "/ctx".to_owned());
        cache.remember(all.iter().map(|p| (p.clone(), known(p, 7))));
        cache.save(dir.path()).expect("save");
        drop(cache);
        let mut cache = StatCache::open(Some(file), "/ctx".to_owned());
        cache.wait_loaded();
        let position = |cache: &StatCache| -> (u64, u64) {
            let old = cache.old.as_ref().expect("loaded");
            let at = old.cursors.iter().map(|c| c.ordinal).sum();
            let loads = old.cursors.iter().map(|c| c.loads).sum();
            (at, loads)
        };
        for p in &all[..100] {
            assert!(cache.digest(p, &key(7)).is_some());
        }
        assert_eq!(cache.old.as_ref().map(|old| old.cursors.len()), Some(1));
        assert_eq!(position(&cache), (99, 100));
        // Far ahead: from the index entry before it.
        assert!(cache.digest(&all[9000], &key(7)).is_some());
        assert_eq!(position(&cache), (9000, 100 + 1 + 9000 % INDEX_EVERY));
        // Back: a second cursor, from the index.
        assert!(cache.xattrs(&all[10], &key(7)).is_some());
        assert_eq!(cache.old.as_ref().map(|old| old.cursors.len()), Some(2));
        assert!(cache.xattrs(&all[11], &key(7)).is_some());
        assert!(cache.digest(&all[9001], &key(7)).is_some());
        let (at, loads) = position(&cache);
        assert_eq!(at, 9001 + 11);
        assert_eq!(loads, 100 + 1 + 9000 % INDEX_EVERY + 12 + 1);
        // Absent paths, before, between and after records, read nothing
        // or stop at the next record.
        assert!(cache.digest("", &key(7)).is_none());
        assert!(cache.digest("zzz", &key(7)).is_none());
        assert!(cache.digest(&format!("{}a", all[9001]), &key(7)).is_none());
        assert_eq!(position(&cache), (9002 + 11, loads + 1));
        assert_eq!(cache.visited.ones, 102);
    }

    /// Damage (a flipped byte, a truncated end, a huge length) ends the
    /// records read at the damage; other versions and roots are empty.
    #[test]
    fn a_damaged_file_is_read_up_to_the_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cache");
        let mut all = paths(500);
        all.sort_by(|a, b| path_order(a, b));
        let mut cache = StatCache::open(Some(file.clone()), "/ctx".to_owned());
        cache.remember(all.iter().map(|p| (p.clone(), known(p, 3))));
        cache.save(dir.path()).expect("save");
        drop(cache);
        let good = fs::read(&file).expect("read");
        let start = CACHE_MAGIC.len() + 8 + "/ctx".len();
        let count = |bytes: &[u8], root: &str| {
            fs::write(&file, bytes).expect("write");
            load(&file, root).map_or(0, |table| table.count)
        };
        assert_eq!(count(&good, "/ctx"), 500);
        assert_eq!(count(&good, "/other"), 0);
        let half = count(&good[..good.len() / 2], "/ctx");
        assert!((200..300).contains(&half), "{half}");
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x40;
        assert_eq!(count(&flipped, "/ctx"), half);
        let mut huge = good.clone();
        huge[start..start + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(count(&huge, "/ctx"), 0);
        let mut version = good.clone();
        version[CACHE_MAGIC.len()] = 2;
        assert_eq!(count(&version, "/ctx"), 0);
        let mut unsorted = good.clone();
        // The first two records swapped: the second is out of order.
        let first_len = u32::from_le_bytes(good[start..start + 4].try_into().expect("4")) as usize;
        let second = start + 8 + first_len;
        let second_len =
            u32::from_le_bytes(good[second..second + 4].try_into().expect("4")) as usize;
        let end = second + 8 + second_len;
        unsorted[start..end].copy_from_slice(&[&good[second..end], &good[start..second]].concat());
        assert_eq!(count(&unsorted, "/ctx"), 1);
        assert_eq!(count(b"", "/ctx"), 0);
    }
}
