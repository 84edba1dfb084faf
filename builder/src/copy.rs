//! COPY and ADD: what the sources are, where they land, and the key of what
//! they read; [`Writer`] (in `copy/writer.rs`) makes the step's layer.
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
//! [`walk_sources`] visits the entries in one fixed order ([`tree::path_order`],
//! a listing per level held at a time); both the copy and the cache key
//! ([`hash_sources`]) use it, so they always agree.

use crate::layer::{self, UnpackOptions, UnpackStats, WhiteoutMode};
use crate::tree::{self, EntryKind, Meta, SourceTree, TreeError};
use estiba_cache::{Digest, Hasher};
use estiba_frontend::dockerignore::{path_match, Matcher};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

mod writer;
pub use writer::{CopyOptions, Writer};

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
    Layer(#[from] crate::layer::LayerError),
    /// An archive ADD extracts cannot be decompressed.
    #[error("cannot decompress the archive")]
    Decompress(#[source] crate::compress::CompressError),
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

/// The entries of the source directory `dir` (at `rel` below its match)
/// that a copy takes, sorted by name: `--exclude`d ones and sockets left out.
pub fn copied_children(
    tree: &dyn SourceTree,
    dir: &str,
    rel: &str,
    excludes: Option<&Matcher>,
) -> Result<Vec<WalkEntry>, CopyError> {
    let mut out = Vec::new();
    for name in tree.children(dir)? {
        let child_rel = tree::join(rel, &name);
        if let Some(ex) = excludes {
            let excluded =
                ex.matches_or_parent_matches(&child_rel)
                    .map_err(|source| CopyError::Pattern {
                        pattern: child_rel.clone(),
                        source,
                    })?;
            if excluded {
                continue;
            }
        }
        let source = tree::join(dir, &name);
        let Some(meta) = tree.stat(&source)? else {
            continue;
        };
        if meta.kind == EntryKind::Socket {
            continue;
        }
        out.push(WalkEntry {
            source,
            rel: child_rel,
            meta,
        });
    }
    Ok(out)
}

/// Visits `start` and everything below it that a copy takes, in
/// [`tree::path_order`] of their paths: depth first, each directory's
/// entries by name. Holds one listing per level, never the whole walk.
/// `visit` learns whether a directory holds anything the copy takes (its
/// mtime depends on it), and its entries are visited when it answers `true`.
pub fn walk_from(
    tree: &dyn SourceTree,
    start: WalkEntry,
    excludes: Option<&Matcher>,
    mut visit: impl FnMut(&WalkEntry, bool) -> Result<bool, CopyError>,
) -> Result<(), CopyError> {
    let mut levels: Vec<std::vec::IntoIter<WalkEntry>> = Vec::new();
    let mut next = Some(start);
    loop {
        let entry = match next.take() {
            Some(entry) => entry,
            None => match levels.last_mut() {
                None => return Ok(()),
                Some(level) => match level.next() {
                    Some(entry) => entry,
                    None => {
                        levels.pop();
                        continue;
                    }
                },
            },
        };
        let children = if entry.meta.kind == EntryKind::Dir {
            copied_children(tree, &entry.source, &entry.rel, excludes)?
        } else {
            Vec::new()
        };
        if visit(&entry, !children.is_empty())? && !children.is_empty() {
            levels.push(children.into_iter());
        }
    }
}

/// [`walk_from`] the source one match names (nothing when it is gone).
pub fn walk_sources(
    tree: &dyn SourceTree,
    m: &SourceMatch,
    excludes: Option<&Matcher>,
    visit: impl FnMut(&WalkEntry, bool) -> Result<bool, CopyError>,
) -> Result<(), CopyError> {
    let Some(meta) = tree.stat(&m.path)? else {
        return Ok(());
    };
    let start = WalkEntry {
        source: m.path.clone(),
        rel: String::new(),
        meta,
    };
    walk_from(tree, start, excludes, visit)
}

/// Files whose digests are asked for at once: enough for every core to
/// hash, few enough that a walk of any size holds little.
const HASH_BATCH: usize = 4096;

/// The content digest of a COPY's sources, for its cache key: every entry's
/// path, kind, mode, content (or link target, or device numbers), and owner
/// when the copy keeps owners; never mtimes. The walk is hashed as it goes,
/// its files' digests asked for in batches.
pub fn hash_sources(
    tree: &dyn SourceTree,
    matches: &[SourceMatch],
    excludes: Option<&Matcher>,
    keep_owners: bool,
) -> Result<Digest, CopyError> {
    let mut h = Hasher::new();
    let mut pending: Vec<WalkEntry> = Vec::new();
    let mut files = 0;
    for m in matches {
        let line = format!("match\0{}\0{}\0{:?}\n", m.name, m.path, m.parents_path);
        h.update(line.as_bytes());
        walk_sources(tree, m, excludes, |entry, _| {
            if entry.meta.kind == EntryKind::File {
                files += 1;
            }
            pending.push(entry.clone());
            if files == HASH_BATCH {
                hash_entries(tree, &pending, keep_owners, &mut h)?;
                pending.clear();
                files = 0;
            }
            Ok(true)
        })?;
        hash_entries(tree, &pending, keep_owners, &mut h)?;
        pending.clear();
        files = 0;
    }
    Ok(h.finish())
}

/// One line per entry of `entries` into `h`, their files' digests asked
/// for at once.
fn hash_entries(
    tree: &dyn SourceTree,
    entries: &[WalkEntry],
    keep_owners: bool,
    h: &mut Hasher,
) -> Result<(), CopyError> {
    let files: Vec<&str> = entries
        .iter()
        .filter(|e| e.meta.kind == EntryKind::File)
        .map(|e| e.source.as_str())
        .collect();
    let mut digests = tree.content_digests(&files)?.into_iter();
    // One line per entry, written into one reused buffer.
    let mut line = String::new();
    for e in entries {
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
    Ok(())
}

/// Whether a file is a tar archive, plain or compressed, as docker's ADD
/// decides it: the first 512 bytes (decompressed) are a tar header with a
/// valid checksum.
pub fn is_archive(reader: impl Read) -> bool {
    let Ok(mut reader) = crate::compress::decompressing_reader(reader) else {
        return false;
    };
    let mut header = [0u8; 512];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(_) => return false,
        }
    }
    filled == header.len()
        && header.iter().any(|b| *b != 0)
        && layer::header_checksum_matches(&header) == Some(true)
}

/// Extracts an archive ADD was given ([`is_archive`]), decompressed, into
/// `dest`, a fresh directory the step's [`Writer::add_extracted`] then
/// takes: whiteout entries stay the files they are, owners are kept when
/// running as root, and nothing is written outside `dest`
/// ([`layer::unpack_layer`]'s guarantee).
pub fn extract_archive(reader: impl Read, dest: &Path) -> Result<UnpackStats, CopyError> {
    let reader = crate::compress::decompressing_reader(reader).map_err(CopyError::Decompress)?;
    let opts = UnpackOptions {
        whiteouts: WhiteoutMode::Keep,
        ..UnpackOptions::default()
    };
    Ok(layer::unpack_layer(reader, dest, &opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_told_by_their_first_header_checksum() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_cksum();
        b.append_data(&mut h, "x".repeat(150), &b"hi"[..])
            .expect("append");
        let tar = b.into_inner().expect("tar");
        let mut gz = Vec::new();
        crate::compress::compress(&tar[..], &mut gz, crate::compress::Compression::Gzip)
            .expect("gzip");
        assert!(is_archive(&tar[..]), "a tar starting with a GNU long name");
        assert!(is_archive(&gz[..]), "a gzipped tar");
        let mut corrupt = tar.clone();
        corrupt[10] ^= 1;
        assert!(!is_archive(&corrupt[..]), "a bad checksum");
        assert!(!is_archive(&[0u8; 1024][..]), "zero blocks");
        assert!(!is_archive(&tar[..511]), "less than a block");
        assert!(!is_archive(&b"plain text"[..]), "text");
    }

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
