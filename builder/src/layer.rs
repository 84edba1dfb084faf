//! Layers as the OCI image spec defines them: a tar of a file system diff,
//! with `.wh.<name>` whiteouts for deletions and `.wh..wh..opq` markers for
//! directories whose lower contents are hidden.
//!
//! [`write_layer`] turns a diff directory into a *deterministic* tar (sorted
//! entries, no user or group names, numeric ids only, mtimes from the files
//! or clamped, PAX records only where ustar cannot say it), streamed into a
//! store blob writer, whose digest is the layer's diff ID;
//! [`write_upper_layer`] writes the same tar from a RUN step's upper dir as
//! overlayfs left it.
//! [`unpack_layer`] applies a layer onto a directory, flattening it onto what
//! lower layers left there; no entry can write outside that directory, and
//! symbolic links already in it are resolved as if it were the root, as a
//! container would see them. [`list_layer`] reads what a layer contains
//! without writing anything.

mod input;
mod unpack;
mod upper;

pub use unpack::{unpack_layer, unpack_layer_file};
pub use upper::write_upper_layer;

use crate::sys;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The prefix of a whiteout file's name: `.wh.x` deletes `x` from lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of the marker that hides a directory's lower-layer contents.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Names with this prefix (other than [`OPAQUE_MARKER`]) are AUFS metadata,
/// never part of the file system.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";

/// How symbolic links in a parent path may be followed before giving up.
const MAX_SYMLINKS: usize = 255;
/// The largest number ustar's 7-digit octal fields hold (ids, mode).
const MAX_OCTAL_7: u64 = 0o7_777_777;
/// The largest number ustar's 11-digit octal fields hold (size, mtime).
const MAX_OCTAL_11: u64 = 0o77_777_777_777;
/// A tar block.
const BLOCK: usize = 512;

/// How [`write_layer`] writes a layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerOptions {
    /// `SOURCE_DATE_EPOCH`: no entry gets an mtime later than this (seconds
    /// since the epoch); earlier mtimes are kept.
    pub mtime_clamp: Option<i64>,
}

/// What [`unpack_layer`] does with whiteout entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Delete what they name and empty opaque directories: flattening onto
    /// lower layers.
    #[default]
    Apply,
    /// Write them as the empty files they are: a snapshot of this layer
    /// alone, to be stacked (overlayfs) or re-archived later.
    Keep,
    /// Write them as overlayfs reads them in a lower dir: `.wh.x` as a 0/0
    /// character device `x`, an opaque marker as `trusted.overlay.opaque=y`
    /// on its directory (both need root). A snapshot of this layer alone,
    /// to be mounted as it is.
    Overlay,
}

/// How [`unpack_layer`] applies a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Give files the owners the layer says (needs root). When false, files
    /// belong to whoever unpacks, and xattrs the kernel refuses (`EPERM`,
    /// `ENOTSUP`) are skipped and counted instead of failing.
    pub same_owner: bool,
    /// Apply or keep whiteouts.
    pub whiteouts: WhiteoutMode,
    /// Create the character and block devices the layer holds. When false
    /// they are skipped (whatever was at their path is still removed) and
    /// counted in [`UnpackStats::devices_skipped`]: a tree the host sees
    /// should not get a device node an image chose.
    pub devices: bool,
}

impl Default for UnpackOptions {
    /// Owners kept when running as root; whiteouts applied; devices made.
    fn default() -> Self {
        UnpackOptions {
            same_owner: nix::unistd::geteuid().is_root(),
            whiteouts: WhiteoutMode::Apply,
            devices: true,
        }
    }
}

/// Counts of what [`unpack_layer`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries read (extension headers not counted).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symbolic links created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Devices and fifos created.
    pub specials: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// xattrs the kernel refused on an unprivileged run.
    pub xattrs_skipped: u64,
    /// Devices (and hard links to them) not made, as
    /// [`UnpackOptions::devices`] asked.
    pub devices_skipped: u64,
    /// Regular files written with a setuid or setgid bit, relative to the
    /// destination.
    pub setid_files: Vec<PathBuf>,
}

/// The type of a layer entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A second name for an earlier entry's inode.
    Hardlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
}

/// What a whiteout entry hides.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Whiteout {
    /// `dir/.wh.name`: `dir/name` is deleted.
    Remove(PathBuf),
    /// `dir/.wh..wh..opq`: what lower layers hold in `dir` is hidden.
    Opaque(PathBuf),
}

/// One layer entry, as [`list_layer`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    /// Relative path, without `./` or a trailing `/`; empty for the root.
    pub path: PathBuf,
    /// Entry type.
    pub kind: EntryKind,
    /// Permission bits, with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Content size (0 for all but regular files).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// A symlink's target (verbatim) or a hardlink's target path (relative,
    /// like `path`).
    pub link_target: Option<PathBuf>,
    /// Major and minor numbers of a device.
    pub device: Option<(u32, u32)>,
    /// Extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Set when this entry is a whiteout or an opaque marker.
    pub whiteout: Option<Whiteout>,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A file-system operation failed while archiving.
    #[error("cannot {action} {path}")]
    Fs {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file's content changed size while it was being archived.
    #[error("{path} changed while it was being archived")]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// Writing the tar failed.
    #[error("cannot write the layer tar")]
    Write {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the tar failed (corrupt header, I/O or decompression error).
    #[error("cannot read the layer tar")]
    Read {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The tar ends without its end-of-archive blocks.
    #[error("the layer tar is truncated: it ends without an end-of-archive marker")]
    Truncated,
    /// An entry's content ends before its declared size.
    #[error("layer entry {entry:?} is truncated: the tar ends inside its {size} bytes")]
    TruncatedEntry {
        /// The entry's path.
        entry: String,
        /// Bytes declared.
        size: u64,
    },
    /// A header or extension record is malformed.
    #[error("the layer tar is corrupt at or after entry {near:?}: {reason}")]
    Corrupt {
        /// The entry at or after which it is.
        near: String,
        /// What is wrong.
        reason: String,
    },
    /// An entry's path or link target would leave the destination.
    #[error("layer entry {entry:?} escapes the destination: {reason}")]
    Escape {
        /// The entry's path.
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// An entry belongs to a uid or gid the user namespace estiba runs in
    /// does not map (rootless, without enough subordinate ids).
    #[error("cannot give {entry:?} its owner {uid}:{gid}: {hint}")]
    UnmappedOwner {
        /// The entry's path.
        entry: String,
        /// The uid it has.
        uid: u32,
        /// The gid it has.
        gid: u32,
        /// What to do about it.
        hint: String,
    },
    /// An entry is malformed in some other way.
    #[error("layer entry {entry:?} is invalid: {reason}")]
    Invalid {
        /// The entry's path.
        entry: String,
        /// Why.
        reason: String,
    },
    /// An entry type layers do not carry (sparse chunks, multi-volume…).
    #[error("layer entry {entry:?} has unsupported type {kind:?}")]
    UnsupportedType {
        /// The entry's path.
        entry: String,
        /// The type flag.
        kind: char,
    },
    /// A parent component of an entry exists and is not a directory.
    #[error("cannot apply layer entry {entry:?}: {path} is not a directory")]
    NotADirectory {
        /// The entry's path.
        entry: String,
        /// The offending path in the destination.
        path: PathBuf,
    },
    /// Resolving a parent path met too many symbolic links.
    #[error("cannot apply layer entry {entry:?}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The entry's path.
        entry: String,
    },
    /// A hardlink's target is not there.
    #[error("layer entry {entry:?} is a hard link to {target:?}, which does not exist")]
    MissingLinkTarget {
        /// The entry's path.
        entry: String,
        /// The link target.
        target: String,
    },
    /// A file-system operation failed while applying an entry.
    #[error("cannot apply layer entry {entry:?} at {path}")]
    Apply {
        /// The entry's path.
        entry: String,
        /// The destination path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------
// Writing tars
// ---------------------------------------------------------------------------

/// One tar header as estiba writes it.
#[derive(Clone, Debug)]
pub(crate) struct TarHeader {
    /// Path bytes, with a trailing `/` for directories.
    pub(crate) path: Vec<u8>,
    pub(crate) kind: EntryKind,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    pub(crate) link: Option<Vec<u8>>,
    pub(crate) device: (u32, u32),
    /// Sorted by name.
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl TarHeader {
    /// A plain file or directory header for archives estiba writes itself
    /// (mode 0644/0755, root, mtime 0).
    pub(crate) fn simple(path: &str, kind: EntryKind, size: u64) -> Self {
        TarHeader {
            path: path.as_bytes().to_vec(),
            kind,
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            link: None,
            device: (0, 0),
            xattrs: Vec::new(),
        }
    }
}

/// Why copying an entry's content into a tar failed.
#[derive(Debug)]
pub(crate) enum DataError {
    /// The source failed.
    Read(io::Error),
    /// The output failed.
    Write(io::Error),
    /// The source had fewer bytes than the header says.
    Short,
    /// The source had more bytes than the header says.
    Long,
}

/// A minimal ustar/PAX writer that produces the same bytes for the same
/// headers, always: ustar where it can, PAX records (sorted by key) where
/// ustar cannot say it, no names, no padding beyond the two end blocks.
#[derive(Debug)]
pub(crate) struct TarWriter<W: Write> {
    out: W,
    /// Content goes through this buffer, allocated once.
    buf: Vec<u8>,
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        TarWriter {
            out,
            buf: Vec::new(),
        }
    }

    /// Writes the header (and any PAX header before it).
    pub(crate) fn header(&mut self, h: &TarHeader) -> io::Result<()> {
        let mut pax: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        if h.path.len() > 100 {
            pax.insert(b"path".to_vec(), h.path.clone());
        }
        if let Some(link) = &h.link {
            if link.len() > 100 {
                pax.insert(b"linkpath".to_vec(), link.clone());
            }
        }
        if h.uid > MAX_OCTAL_7 {
            pax.insert(b"uid".to_vec(), h.uid.to_string().into_bytes());
        }
        if h.gid > MAX_OCTAL_7 {
            pax.insert(b"gid".to_vec(), h.gid.to_string().into_bytes());
        }
        if h.size > MAX_OCTAL_11 {
            pax.insert(b"size".to_vec(), h.size.to_string().into_bytes());
        }
        if h.mtime < 0 || h.mtime as u64 > MAX_OCTAL_11 {
            pax.insert(b"mtime".to_vec(), h.mtime.to_string().into_bytes());
        }
        if !pax.is_empty() || !h.xattrs.is_empty() {
            // Standard keys first, then xattrs, each set sorted: readers that
            // split records on newlines (the tar crate) still find the
            // standard keys even when a binary xattr value holds a newline.
            let mut data = Vec::new();
            for (key, value) in &pax {
                pax_record(&mut data, key, value);
            }
            for (name, value) in &h.xattrs {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(name);
                pax_record(&mut data, &key, value);
            }
            let mut name = b"PaxHeaders.0/".to_vec();
            let base = h
                .path
                .strip_suffix(b"/")
                .unwrap_or(&h.path)
                .rsplit(|b| *b == b'/')
                .next()
                .unwrap_or(b"");
            name.extend_from_slice(base);
            name.truncate(100);
            let block = ustar_block(&name, b'x', 0, 0, 0, data.len() as u64, 0, b"", (0, 0));
            self.out.write_all(&block)?;
            self.out.write_all(&data)?;
            self.pad(data.len() as u64)?;
        }
        let fit = |v: u64, max: u64| if v > max { 0 } else { v };
        let mtime = if h.mtime < 0 {
            0
        } else {
            fit(h.mtime as u64, MAX_OCTAL_11)
        };
        let block = ustar_block(
            &h.path[..h.path.len().min(100)],
            type_flag(h.kind),
            u64::from(h.mode & 0o7777),
            fit(h.uid, MAX_OCTAL_7),
            fit(h.gid, MAX_OCTAL_7),
            fit(h.size, MAX_OCTAL_11),
            mtime,
            h.link
                .as_deref()
                .map_or(&b""[..], |l| &l[..l.len().min(100)]),
            h.device,
        );
        self.out.write_all(&block)
    }

    /// The output.
    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The output, the archive not ended (no end blocks).
    pub(crate) fn into_inner(self) -> W {
        self.out
    }

    /// Copies exactly `size` bytes of content from `data`, then the padding.
    pub(crate) fn data(&mut self, data: impl Read, size: u64) -> Result<(), DataError> {
        let mut data = data;
        let mut limited = (&mut data).take(size);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(128 * 1024, 0);
        let result = self.data_through(&mut limited, &mut buf, size);
        self.buf = buf;
        result?;
        let mut probe = [0u8; 1];
        loop {
            match data.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => return Err(DataError::Long),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DataError::Read(e)),
            }
        }
        self.pad(size).map_err(DataError::Write)
    }

    fn data_through(
        &mut self,
        limited: &mut impl Read,
        buf: &mut [u8],
        size: u64,
    ) -> Result<(), DataError> {
        let mut copied = 0u64;
        loop {
            let n = match limited.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DataError::Read(e)),
            };
            self.out.write_all(&buf[..n]).map_err(DataError::Write)?;
            copied += n as u64;
        }
        if copied < size {
            return Err(DataError::Short);
        }
        Ok(())
    }

    /// Pads content of `size` bytes written straight to the output to a
    /// whole block.
    pub(crate) fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Writes the two end-of-archive blocks and returns the output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    // "<len> <key>=<value>\n", where <len> counts itself.
    let rest = 3 + key.len() + value.len();
    let mut len = rest + 1;
    while rest + len.to_string().len() != len {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn type_flag(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::File => b'0',
        EntryKind::Hardlink => b'1',
        EntryKind::Symlink => b'2',
        EntryKind::CharDevice => b'3',
        EntryKind::BlockDevice => b'4',
        EntryKind::Dir => b'5',
        EntryKind::Fifo => b'6',
    }
}

fn octal(field: &mut [u8], value: u64) {
    // Zero-padded octal digits filling all but the last byte, then NUL.
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

#[allow(clippy::too_many_arguments)]
fn ustar_block(
    name: &[u8],
    flag: u8,
    mode: u64,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link: &[u8],
    device: (u32, u32),
) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name);
    octal(&mut b[100..108], mode);
    octal(&mut b[108..116], uid);
    octal(&mut b[116..124], gid);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime);
    b[156] = flag;
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], u64::from(device.0).min(MAX_OCTAL_7));
    octal(&mut b[337..345], u64::from(device.1).min(MAX_OCTAL_7));
    b[148..156].copy_from_slice(b"        ");
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    octal(&mut b[148..155], sum);
    b[155] = b' ';
    b
}

/// The parent of the directory open as `dir`, opened through `..`, once it
/// is shown to be the directory whose device and inode are `expected`: how
/// the walks that keep one directory open at a time, whatever the depth,
/// go back up (nothing else may change the tree meanwhile).
fn reopen_parent(
    dir: std::os::fd::BorrowedFd<'_>,
    expected: (u64, u64),
) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{fstat, openat, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let up = openat(dir, "..", flags, Mode::empty())?;
    let st = fstat(&up)?;
    if (st.st_dev, st.st_ino) != expected {
        return Err(io::Error::other("a directory being walked moved meanwhile"));
    }
    Ok(up)
}

/// An entry found under the diff directory.
struct Found {
    rel: Vec<u8>,
    abs: PathBuf,
    meta: fs::Metadata,
}

/// Writes the tree under `dir` (a layer diff: whiteout files in it are kept
/// as they are) as a deterministic tar into `out`, and returns `out`. The
/// tar is the layer's uncompressed blob: a store blob writer hashes it
/// once, into the digest that is also its diff ID.
///
/// Entries come depth first, each directory's sorted by name
/// ([`crate::tree::path_order`]: parents before children), streamed from
/// the walk;
/// paths are relative, directories end in `/`; owners are numeric only;
/// the second and later paths of an inode become hard links to the first;
/// symlinks are stored, never followed; sockets are skipped (a tar cannot
/// hold them); xattrs in the `user.`, `security.` and `trusted.` namespaces
/// are kept except overlayfs's own (`trusted.overlay.*`, `user.overlay.*`)
/// and `security.selinux`, which is the host's label, not the image's.
pub fn write_layer<W: Write>(dir: &Path, out: W, opts: &LayerOptions) -> Result<W, LayerError> {
    let mut tar = LayerStream::new(out);
    let mut inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    // Depth first, each directory's entries by name: the tree::path_order
    // of their paths, streamed with one listing per level held.
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name();
    for item in walk {
        let item = item.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            LayerError::Fs {
                action: "walk",
                path,
                source: e.into(),
            }
        })?;
        let meta = item.metadata().map_err(|e| LayerError::Fs {
            action: "stat",
            path: item.path().to_path_buf(),
            source: e.into(),
        })?;
        if meta.file_type().is_socket() {
            continue;
        }
        let rel = item
            .path()
            .strip_prefix(dir)
            .map_err(|_| LayerError::Fs {
                action: "walk",
                path: item.path().to_path_buf(),
                source: io::Error::other("path outside the walked directory"),
            })?
            .as_os_str()
            .as_bytes()
            .to_vec();
        let found = Found {
            rel,
            abs: item.into_path(),
            meta,
        };
        write_entry(&mut tar, &found, opts, &mut inodes)?;
    }
    tar.finish()
}

/// A layer tar written entry by entry, for diffs that are not directories
/// ([`crate::copy::Writer`]'s, held in memory). The caller gives the entries
/// sorted, parents first, as [`write_layer`] does, and hashes the output if
/// it needs the diff ID (a store blob writer hashes what it is given).
pub(crate) struct LayerStream<W: Write> {
    tar: TarWriter<W>,
}

impl<W: Write> LayerStream<W> {
    pub(crate) fn new(out: W) -> Self {
        LayerStream {
            tar: TarWriter::new(out),
        }
    }

    /// An entry without content (anything but a regular file's data).
    pub(crate) fn header(&mut self, h: &TarHeader) -> Result<(), LayerError> {
        self.tar
            .header(h)
            .map_err(|source| LayerError::Write { source })
    }

    /// A regular file: the header, then exactly `h.size` bytes of `data`,
    /// read from `path` (named in errors).
    pub(crate) fn file(
        &mut self,
        h: &TarHeader,
        data: impl Read,
        path: &Path,
    ) -> Result<(), LayerError> {
        self.header(h)?;
        self.tar.data(data, h.size).map_err(|e| match e {
            DataError::Read(source) => LayerError::Fs {
                action: "read",
                path: path.to_path_buf(),
                source,
            },
            DataError::Write(source) => LayerError::Write { source },
            DataError::Short | DataError::Long => LayerError::Changed {
                path: path.to_path_buf(),
            },
        })
    }

    /// Ends the tar and gives the output back.
    pub(crate) fn finish(self) -> Result<W, LayerError> {
        self.tar
            .finish()
            .map_err(|source| LayerError::Write { source })
    }
}

fn write_entry<W: Write>(
    tar: &mut LayerStream<W>,
    f: &Found,
    opts: &LayerOptions,
    inodes: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<(), LayerError> {
    let meta = &f.meta;
    let ft = meta.file_type();
    let fs_err = |action, source| LayerError::Fs {
        action,
        path: f.abs.clone(),
        source,
    };
    let mut mtime = meta.mtime();
    if let Some(clamp) = opts.mtime_clamp {
        mtime = mtime.min(clamp);
    }
    let mut h = TarHeader {
        path: f.rel.clone(),
        kind: EntryKind::File,
        mode: meta.mode() & 0o7777,
        uid: u64::from(meta.uid()),
        gid: u64::from(meta.gid()),
        size: 0,
        mtime,
        link: None,
        device: (0, 0),
        xattrs: Vec::new(),
    };
    if !ft.is_dir() && meta.nlink() > 1 {
        let key = (meta.dev(), meta.ino());
        if let Some(first) = inodes.get(&key) {
            h.kind = EntryKind::Hardlink;
            h.link = Some(first.clone());
            return tar.header(&h);
        }
        inodes.insert(key, f.rel.clone());
    }
    h.xattrs =
        sys::read_xattrs(&f.abs, layer_xattr).map_err(|e| fs_err("read the xattrs of", e))?;
    if ft.is_dir() {
        h.kind = EntryKind::Dir;
        h.path.push(b'/');
    } else if ft.is_symlink() {
        h.kind = EntryKind::Symlink;
        let target = fs::read_link(&f.abs).map_err(|e| fs_err("read the link", e))?;
        h.link = Some(target.into_os_string().into_vec());
    } else if ft.is_char_device() || ft.is_block_device() {
        h.kind = if ft.is_char_device() {
            EntryKind::CharDevice
        } else {
            EntryKind::BlockDevice
        };
        let rdev = meta.rdev();
        h.device = (
            nix::sys::stat::major(rdev) as u32,
            nix::sys::stat::minor(rdev) as u32,
        );
    } else if ft.is_fifo() {
        h.kind = EntryKind::Fifo;
    } else if ft.is_file() {
        h.size = meta.len();
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&f.abs)
            .map_err(|e| fs_err("open", e))?;
        return tar.file(&h, file, &f.abs);
    }
    tar.header(&h)
}

/// Whether an xattr belongs in a layer (see [`write_layer`]).
fn layer_xattr(name: &[u8]) -> bool {
    let namespace_ok = name.starts_with(b"user.")
        || name.starts_with(b"security.")
        || name.starts_with(b"trusted.");
    namespace_ok && !crate::rootfs::is_overlay_xattr(name) && name != b"security.selinux"
}

// ---------------------------------------------------------------------------
// Reading tars
// ---------------------------------------------------------------------------

/// The most bytes an extension header (PAX, GNU long name) may hold.
const MAX_EXTENSION: u64 = 16 << 20;

/// A tar entry as read, with PAX and GNU extensions applied.
#[derive(Clone, Debug)]
pub(crate) struct RawEntry {
    /// Path bytes as the archive spells them.
    pub(crate) path: Vec<u8>,
    /// The type flag.
    pub(crate) flag: u8,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    /// Content bytes that follow (0 for header-only types).
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    /// Link target bytes (empty when none).
    pub(crate) link: Vec<u8>,
    pub(crate) device: (u32, u32),
    pub(crate) xattrs: BTreeMap<String, Vec<u8>>,
}

/// Why reading a tar failed.
#[derive(Debug)]
pub(crate) enum TarError {
    /// The input failed.
    Io(io::Error),
    /// The input ended before the end-of-archive blocks.
    Truncated,
    /// A header or extension is malformed.
    Corrupt {
        /// The entry at or after which it happened.
        near: String,
        /// What is wrong.
        reason: String,
    },
}

/// A strict streaming tar reader (ustar, PAX, GNU long names): checksums
/// checked, PAX records parsed by their lengths (xattr values are binary),
/// and an archive must end with its two zero blocks, so a truncated one is
/// an error rather than a shorter archive.
#[derive(Debug)]
pub(crate) struct TarReader<R> {
    inner: R,
    /// Content bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's content.
    padding: u64,
    done: bool,
    /// The last entry returned, for error messages.
    last: String,
}

fn padding_of(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            done: false,
            last: String::new(),
        }
    }

    fn corrupt(&self, near: Option<&[u8]>, reason: impl Into<String>) -> TarError {
        TarError::Corrupt {
            near: near.map_or_else(|| self.last.clone(), lossy),
            reason: reason.into(),
        }
    }

    /// A whole block, `None` at a clean end of input.
    fn read_block(&mut self) -> Result<Option<[u8; BLOCK]>, TarError> {
        let mut block = [0u8; BLOCK];
        let mut len = 0;
        while len < BLOCK {
            match self.inner.read(&mut block[len..]) {
                Ok(0) if len == 0 => return Ok(None),
                Ok(0) => return Err(TarError::Truncated),
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        Ok(Some(block))
    }

    fn skip(&mut self, mut n: u64) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => return Err(TarError::Truncated),
                Ok(got) => n -= got as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        Ok(())
    }

    fn read_extension(&mut self, size: u64, name: &[u8]) -> Result<Vec<u8>, TarError> {
        if size > MAX_EXTENSION {
            return Err(self.corrupt(Some(name), format!("{size}-byte extension header")));
        }
        let mut data = vec![0u8; size as usize];
        let mut len = 0;
        while len < data.len() {
            match self.inner.read(&mut data[len..]) {
                Ok(0) => return Err(TarError::Truncated),
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.skip(padding_of(size))?;
        Ok(data)
    }

    /// The next entry, or `None` after the end-of-archive blocks. Skips
    /// whatever of the previous entry's content was not read.
    pub(crate) fn next_entry(&mut self) -> Result<Option<RawEntry>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        let mut pax: Option<PaxRecords> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let Some(block) = self.read_block()? else {
                return Err(TarError::Truncated);
            };
            if block.iter().all(|b| *b == 0) {
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(self.corrupt(None, "extension header without an entry"));
                }
                return match self.read_block()? {
                    Some(b) if b.iter().all(|b| *b == 0) => {
                        self.done = true;
                        Ok(None)
                    }
                    Some(_) => Err(self.corrupt(None, "a zero block followed by data")),
                    None => Err(TarError::Truncated),
                };
            }
            let name = cstr(&block[0..100]);
            match header_checksum_matches(&block) {
                Some(true) => {}
                Some(false) => return Err(self.corrupt(Some(name), "header checksum mismatch")),
                None => return Err(self.corrupt(Some(name), "bad checksum field")),
            }
            let field = |range: std::ops::Range<usize>, what: &str| {
                parse_numeric(&block[range])
                    .ok_or_else(|| self.corrupt(Some(name), format!("bad {what} field")))
            };
            let flag = block[156];
            let mut size = u64::try_from(field(124..136, "size")?)
                .map_err(|_| self.corrupt(Some(name), "negative size"))?;
            match flag {
                b'x' | b'g' | b'L' | b'K' => {
                    let data = self.read_extension(size, name)?;
                    match flag {
                        b'x' if pax.is_some() => {
                            return Err(self.corrupt(Some(name), "two PAX headers for one entry"))
                        }
                        b'x' => {
                            pax = Some(parse_pax(&data).map_err(|r| self.corrupt(Some(name), r))?)
                        }
                        b'L' => long_name = Some(trim_nuls(data)),
                        b'K' => long_link = Some(trim_nuls(data)),
                        // Global headers describe the archive, not files.
                        _ => {}
                    }
                    continue;
                }
                _ => {}
            }
            let posix = &block[257..263] == b"ustar\0";
            let mut path = name.to_vec();
            let prefix = cstr(&block[345..500]);
            if posix && !prefix.is_empty() {
                path = [prefix, b"/", name].concat();
            }
            let mut entry = RawEntry {
                path,
                flag,
                mode: (field(100..108, "mode")? & 0o7777) as u32,
                uid: u64::try_from(field(108..116, "uid")?)
                    .map_err(|_| self.corrupt(Some(name), "negative uid"))?,
                gid: u64::try_from(field(116..124, "gid")?)
                    .map_err(|_| self.corrupt(Some(name), "negative gid"))?,
                size: 0,
                mtime: field(136..148, "mtime")?,
                link: cstr(&block[157..257]).to_vec(),
                device: (0, 0),
                xattrs: BTreeMap::new(),
            };
            if matches!(flag, b'3' | b'4') {
                let major = u32::try_from(field(329..337, "devmajor")?)
                    .map_err(|_| self.corrupt(Some(name), "bad devmajor"))?;
                let minor = u32::try_from(field(337..345, "devminor")?)
                    .map_err(|_| self.corrupt(Some(name), "bad devminor"))?;
                entry.device = (major, minor);
            }
            if let Some(n) = long_name.take() {
                entry.path = n;
            }
            if let Some(l) = long_link.take() {
                entry.link = l;
            }
            for (key, value) in pax.take().unwrap_or_default() {
                let number = |v: &[u8]| -> Result<u64, TarError> {
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                            self.corrupt(Some(&entry.path), format!("bad PAX {}", lossy(&key)))
                        })
                };
                match key.as_slice() {
                    b"path" if !value.is_empty() => entry.path = value,
                    b"linkpath" if !value.is_empty() => entry.link = value,
                    b"uid" => entry.uid = number(&value)?,
                    b"gid" => entry.gid = number(&value)?,
                    // As Go's archive/tar: a size is an int64.
                    b"size" => {
                        size = number(&value)?;
                        if i64::try_from(size).is_err() {
                            return Err(self.corrupt(Some(&entry.path), "bad PAX size"));
                        }
                    }
                    b"mtime" => {
                        entry.mtime = parse_pax_time(&value)
                            .ok_or_else(|| self.corrupt(Some(&entry.path), "bad PAX mtime"))?
                    }
                    k => {
                        if let Some(xattr) = k.strip_prefix(b"SCHILY.xattr.") {
                            let xattr = String::from_utf8(xattr.to_vec()).map_err(|_| {
                                self.corrupt(Some(&entry.path), "xattr name is not UTF-8")
                            })?;
                            entry.xattrs.insert(xattr, value);
                        }
                    }
                }
            }
            // As Go's archive/tar does: these types carry no content,
            // whatever their size field says.
            if matches!(flag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
                size = 0;
            }
            entry.size = size;
            self.remaining = size;
            self.padding = padding_of(size);
            self.last = lossy(&entry.path);
            return Ok(Some(entry));
        }
    }

    /// The current entry's content.
    pub(crate) fn data(&mut self) -> EntryData<'_, R> {
        EntryData { tar: self }
    }

    /// Reads what follows the archive (compression trailers, record
    /// padding), so that a decompressor checks its checksums.
    pub(crate) fn drain(&mut self) -> io::Result<u64> {
        io::copy(&mut self.inner, &mut io::sink())
    }
}

impl<R: input::TarInput> EntryData<'_, R> {
    /// Copies the rest of the entry's content to `out` inside the kernel
    /// when the input can ([`input::TarInput::splice_into`]).
    pub(crate) fn splice_into(&mut self, out: &fs::File) -> Option<io::Result<u64>> {
        let len = self.tar.remaining;
        let copied = self.tar.inner.splice_into(out, len)?;
        if copied.is_ok() {
            self.tar.remaining = 0;
        }
        Some(copied)
    }
}

/// The content of the current entry of a [`TarReader`]; ends with an
/// `UnexpectedEof` error if the archive does.
#[derive(Debug)]
pub(crate) struct EntryData<'a, R> {
    tar: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tar.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.tar.remaining) as usize;
        let n = self.tar.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry",
            ));
        }
        self.tar.remaining -= n as u64;
        Ok(n)
    }
}

/// Whether a tar header block's checksum field holds the sum of its bytes
/// (the field itself counted as spaces), summed as unsigned or, as some old
/// tars did, signed bytes; `None` when the field is not a number.
pub(crate) fn header_checksum_matches(block: &[u8; BLOCK]) -> Option<bool> {
    let stored = parse_numeric(&block[148..156])?;
    let sum = |byte: fn(u8) -> i64| -> i64 {
        block
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    byte(*b)
                }
            })
            .sum()
    };
    Some(stored == sum(i64::from) || stored == sum(|b| i64::from(b as i8)))
}

/// The bytes of a NUL-terminated field.
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

fn trim_nuls(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// A numeric header field: octal text (padded with spaces or NULs), or
/// GNU base-256 when the high bit of the first byte is set.
fn parse_numeric(field: &[u8]) -> Option<i64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let inv = if field[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, c) in field.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 > 0 {
                return None;
            }
            x = x << 8 | u64::from(c);
        }
        if x >> 63 > 0 {
            return None;
        }
        let x = x as i64;
        return Some(if inv == 0xff { !x } else { x });
    }
    let text = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == 0)
        .take_while(|b| *b != b' ' && *b != 0)
        .collect::<Vec<u8>>();
    if text.is_empty() {
        return Some(0);
    }
    let text = std::str::from_utf8(&text).ok()?;
    i64::from_str_radix(text, 8).ok()
}

/// Key/value pairs of a PAX header, in order.
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// PAX records (`<len> <key>=<value>\n`), split by their lengths.
fn parse_pax(mut data: &[u8]) -> Result<PaxRecords, &'static str> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("malformed PAX record")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or("malformed PAX record length")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("malformed PAX record");
        }
        let kv = &data[space + 1..len - 1];
        let eq = kv
            .iter()
            .position(|b| *b == b'=')
            .ok_or("PAX record without '='")?;
        out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// Splits a tar path into clean components: `.` and empty components
/// dropped, `..` and absolute paths refused.
pub(crate) fn clean_components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("\"..\" component"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(components: &[&[u8]]) -> PathBuf {
    PathBuf::from(OsString::from_vec(components.join(&b'/')))
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// What a [`TarError`] means for a layer.
fn layer_tar_error(e: TarError) -> LayerError {
    match e {
        TarError::Io(source) => LayerError::Read { source },
        TarError::Truncated => LayerError::Truncated,
        TarError::Corrupt { near, reason } => LayerError::Corrupt { near, reason },
    }
}

/// An entry's metadata, its path and link target checked.
fn entry_meta(raw: &RawEntry) -> Result<EntryMeta, LayerError> {
    let name = lossy(&raw.path);
    let mut kind = match raw.flag {
        b'0' | b'\0' | b'7' => EntryKind::File,
        b'5' => EntryKind::Dir,
        b'2' => EntryKind::Symlink,
        b'1' => EntryKind::Hardlink,
        b'3' => EntryKind::CharDevice,
        b'4' => EntryKind::BlockDevice,
        b'6' => EntryKind::Fifo,
        other => {
            return Err(LayerError::UnsupportedType {
                entry: name,
                kind: char::from(other),
            })
        }
    };
    // Pre-POSIX tars mark directories only by the trailing slash.
    if kind == EntryKind::File && raw.path.ends_with(b"/") {
        kind = EntryKind::Dir;
    }
    let components = clean_components(&raw.path).map_err(|reason| LayerError::Escape {
        entry: name.clone(),
        reason,
    })?;
    let link_target = match kind {
        EntryKind::Symlink => Some(PathBuf::from(OsString::from_vec(raw.link.clone()))),
        EntryKind::Hardlink => {
            let clean = clean_components(&raw.link).map_err(|reason| LayerError::Escape {
                entry: name.clone(),
                reason,
            })?;
            if clean.is_empty() {
                return Err(LayerError::Invalid {
                    entry: name,
                    reason: "hard link without a target".to_string(),
                });
            }
            Some(join(&clean))
        }
        _ => None,
    };
    if let Some(last) = components.last() {
        if matches!(
            last.strip_prefix(WHITEOUT_PREFIX.as_bytes()),
            Some(b"." | b"..")
        ) {
            return Err(LayerError::Escape {
                entry: name,
                reason: "whiteout of \".\" or \"..\"",
            });
        }
    }
    let whiteout = components.split_last().and_then(|(last, parent)| {
        let parent = join(parent);
        if *last == OPAQUE_MARKER.as_bytes() {
            Some(Whiteout::Opaque(parent))
        } else if last.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            None
        } else {
            last.strip_prefix(WHITEOUT_PREFIX.as_bytes())
                .filter(|rest| !rest.is_empty())
                .map(|rest| Whiteout::Remove(parent.join(OsStr::from_bytes(rest))))
        }
    });
    Ok(EntryMeta {
        path: join(&components),
        kind,
        mode: raw.mode,
        uid: raw.uid,
        gid: raw.gid,
        size: if kind == EntryKind::File { raw.size } else { 0 },
        mtime: raw.mtime,
        link_target,
        device: matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice)
            .then_some(raw.device),
        xattrs: raw.xattrs.clone(),
        whiteout,
    })
}

/// A PAX time (`seconds[.fraction]`, maybe negative) in whole seconds.
fn parse_pax_time(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let whole = text.split('.').next()?;
    if whole.is_empty() || whole == "-" {
        return Some(0);
    }
    whole.parse().ok()
}

/// Lists every entry of a layer tar without writing anything.
pub fn list_layer(reader: impl Read) -> Result<Vec<EntryMeta>, LayerError> {
    let mut tar = TarReader::new(reader);
    let mut out = Vec::new();
    while let Some(raw) = tar.next_entry().map_err(layer_tar_error)? {
        out.push(entry_meta(&raw)?);
    }
    tar.drain().map_err(|source| LayerError::Read { source })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", b"a");
        assert_eq!(out, b"9 path=a\n");
        // 3 + 4 + 95 = 102 → "105 " crosses from 2 to 3 digits.
        let mut out = Vec::new();
        pax_record(&mut out, b"path", &[b'x'; 95]);
        assert_eq!(out.len(), 105);
        assert!(out.starts_with(b"105 path="));
    }

    #[test]
    fn ustar_header_reads_back() {
        let block = ustar_block(
            b"a/b",
            b'0',
            0o4755,
            1000,
            1000,
            12,
            1_700_000_000,
            b"",
            (0, 0),
        );
        let header = tar::Header::from_byte_slice(&block);
        assert_eq!(header.path_bytes().as_ref(), b"a/b");
        assert_eq!(header.mode().expect("mode"), 0o4755);
        assert_eq!(header.uid().expect("uid"), 1000);
        assert_eq!(header.size().expect("size"), 12);
        assert_eq!(header.mtime().expect("mtime"), 1_700_000_000);
        assert_eq!(header.cksum().expect("cksum"), {
            let mut b = block;
            b[148..156].copy_from_slice(b"        ");
            b.iter().map(|&x| u32::from(x)).sum::<u32>()
        });
    }

    fn read_all(tar: &[u8]) -> Result<Vec<(RawEntry, Vec<u8>)>, TarError> {
        let mut r = TarReader::new(tar);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut data = Vec::new();
            r.data().read_to_end(&mut data).map_err(TarError::Io)?;
            out.push((e, data));
        }
        Ok(out)
    }

    #[test]
    fn reads_back_what_it_writes_including_binary_xattrs() {
        let mut w = TarWriter::new(Vec::new());
        let long = "d/".repeat(80) + "file";
        let h = TarHeader {
            path: long.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o4755,
            uid: 3_000_000,
            gid: 7,
            size: 3,
            mtime: -5,
            link: None,
            device: (0, 0),
            xattrs: vec![(b"security.capability".to_vec(), b"\x01\n\x00=\n".to_vec())],
        };
        w.header(&h).expect("header");
        w.data(&b"abc"[..], 3).expect("data");
        let tar = w.finish().expect("finish");
        let entries = read_all(&tar).expect("read");
        assert_eq!(entries.len(), 1);
        let (e, data) = &entries[0];
        assert_eq!(e.path, long.as_bytes());
        assert_eq!((e.mode, e.uid, e.gid, e.mtime), (0o4755, 3_000_000, 7, -5));
        assert_eq!(e.xattrs["security.capability"], b"\x01\n\x00=\n");
        assert_eq!(data, b"abc");
        // The tar crate still reads the standard keys.
        let mut archive = tar::Archive::new(&tar[..]);
        let entry = archive
            .entries()
            .expect("entries")
            .next()
            .expect("one")
            .expect("entry");
        assert_eq!(entry.path_bytes().as_ref(), long.as_bytes());
        assert_eq!(entry.header().uid().expect("uid"), 3_000_000);
    }

    #[test]
    fn reads_gnu_long_names_and_base_256() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(0o7777777 + 10); // base-256 in a GNU header
        h.set_mtime(0);
        let long = "x".repeat(150);
        b.append_data(&mut h, &long, &b"z"[..]).expect("append");
        let tar = b.into_inner().expect("tar");
        let entries = read_all(&tar).expect("read");
        assert_eq!(entries[0].0.path, long.as_bytes());
        assert_eq!(entries[0].0.uid, 0o7777777 + 10);
        assert_eq!(entries[0].1, b"z");
    }

    #[test]
    fn strict_about_ends_and_checksums() {
        let mut w = TarWriter::new(Vec::new());
        w.header(&TarHeader::simple("f", EntryKind::File, 600))
            .expect("header");
        w.data(&[1u8; 600][..], 600).expect("data");
        let tar = w.finish().expect("finish");
        assert_eq!(tar.len(), 512 + 1024 + 1024);
        for cut in [0, 100, 512, 700, 1536, 2048, 2559] {
            assert!(read_all(&tar[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut bad = tar.clone();
        bad[0] = b'g';
        assert!(matches!(read_all(&bad), Err(TarError::Corrupt { .. })));
        let mut bad = tar.clone();
        bad[2048 + 10] = 1;
        assert!(matches!(read_all(&bad), Err(TarError::Corrupt { .. })));
        assert!(read_all(&tar).is_ok());
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_numeric(b"0000644\0"), Some(0o644));
        assert_eq!(parse_numeric(b"   644 \0"), Some(0o644));
        assert_eq!(parse_numeric(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_numeric(&[0xff; 8]), Some(-1));
        assert_eq!(parse_numeric(b"0008"), None);
    }

    #[test]
    fn pax_records_split_by_length() {
        let mut data = Vec::new();
        pax_record(&mut data, b"path", b"a\nb");
        pax_record(&mut data, b"SCHILY.xattr.user.x", b"=\n=");
        let records = parse_pax(&data).expect("parse");
        assert_eq!(records[0], (b"path".to_vec(), b"a\nb".to_vec()));
        assert_eq!(
            records[1],
            (b"SCHILY.xattr.user.x".to_vec(), b"=\n=".to_vec())
        );
        assert!(parse_pax(b"99 path=a\n").is_err());
        assert!(parse_pax(b"x path=a\n").is_err());
    }

    #[test]
    fn cleans_components() {
        assert_eq!(
            clean_components(b"./a//b/").expect("clean"),
            vec![&b"a"[..], b"b"]
        );
        assert!(clean_components(b"./").expect("clean").is_empty());
        assert!(clean_components(b"/etc/passwd").is_err());
        assert!(clean_components(b"a/../../b").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000.123"), Some(1_700_000_000));
        assert_eq!(parse_pax_time(b"-5"), Some(-5));
        assert_eq!(parse_pax_time(b"x"), None);
    }

    #[test]
    fn xattr_filter() {
        assert!(layer_xattr(b"user.foo"));
        assert!(layer_xattr(b"security.capability"));
        assert!(layer_xattr(b"trusted.foo"));
        assert!(!layer_xattr(b"trusted.overlay.opaque"));
        assert!(!layer_xattr(b"user.overlay.origin"));
        assert!(!layer_xattr(b"security.selinux"));
        assert!(!layer_xattr(b"system.posix_acl_access"));
    }
}
