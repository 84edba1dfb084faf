//! Layers, compression and image archives, end to end on a real file
//! system: deterministic tars, unpacking and flattening with whiteouts,
//! path-escape attempts, and docker/OCI archive round trips.
// Tests print why they skip the parts the machine cannot run.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use estiba::archive::{
    read_archive, write_docker_archive, write_oci_archive, ArchiveError, ArchiveFormat, BlobSource,
    ExportImage,
};
use estiba::compress::{compress, decompressing_reader, media_type, sniff, Compression, Detected};
use estiba::image::{compressed_layer, CompressedError};
use estiba::layer::{
    list_layer, unpack_layer, unpack_layer_file, write_layer, EntryKind, LayerError, LayerOptions,
    UnpackOptions, Whiteout, WhiteoutMode,
};
use estiba::tree::path_order;
use estiba_cache::media_type::{DOCKER_LAYER_GZIP, OCI_CONFIG};
use estiba_cache::{Descriptor, Digest, Store};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write(path: &Path, content: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(path: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

/// Whether this file system takes `user.*` xattrs; prints why not.
fn user_xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    fs::write(&probe, b"").unwrap();
    let result = xattr::set(&probe, "user.probe", b"1");
    fs::remove_file(&probe).unwrap();
    match result {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
            println!(
                "skipping xattr assertions: {} does not support user.* xattrs ({e})",
                dir.display()
            );
            false
        }
        Err(e) => panic!("setxattr probe failed: {e}"),
    }
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Everything about a tree that a layer should carry, by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
        let m = fs::symlink_metadata(entry.path()).unwrap();
        let ft = m.file_type();
        let mut desc = format!(
            "mode={:o} uid={} gid={} mtime={}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime()
        );
        if ft.is_file() {
            let content = fs::read(entry.path()).unwrap();
            desc += &format!(" file={}", Digest::of(&content));
        } else if ft.is_symlink() {
            desc += &format!(" link={}", fs::read_link(entry.path()).unwrap().display());
        } else if ft.is_dir() {
            desc = desc.replace("mtime=", "dir-mtime=");
        } else {
            desc += &format!(" rdev={}", m.rdev());
        }
        if !ft.is_dir() && m.nlink() > 1 {
            let first = inodes
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| rel.clone());
            desc += &format!(" inode-of={}", first.display());
        }
        if let Some(v) = xattr::get(entry.path(), "user.estiba").ok().flatten() {
            desc += &format!(" xattr={}", String::from_utf8_lossy(&v));
        }
        out.insert(rel, desc);
    }
    out
}

/// The layer tar of `dir`, and its diff ID: the digest of those bytes.
fn layer_bytes(dir: &Path, opts: &LayerOptions) -> (Vec<u8>, Digest) {
    let out = write_layer(dir, Vec::new(), opts).unwrap();
    let diff_id = Digest::of(&out);
    (out, diff_id)
}

/// A tar entry header with raw name bytes, bypassing the tar crate's checks.
fn raw_header(name: &[u8], kind: tar::EntryType, size: u64, link: &[u8]) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    h
}

/// (path, type, link target, content) of one raw tar entry.
type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let h = raw_header(name, *kind, data.len() as u64, link);
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn root_opts() -> UnpackOptions {
    UnpackOptions {
        same_owner: is_root(),
        whiteouts: WhiteoutMode::Apply,
        devices: true,
    }
}

// ---------------------------------------------------------------------------
// write_layer
// ---------------------------------------------------------------------------

#[test]
fn same_tree_gives_same_bytes_whatever_the_creation_order_and_mtimes() {
    let a = tmp();
    let b = tmp();
    let names = ["z", "a/b/c.txt", "a/b.txt", "a-b", "m/n/o/p", "a/b/d"];
    for n in names {
        write(&a.path().join(n), n.as_bytes());
    }
    for n in names.iter().rev() {
        write(&b.path().join(n), n.as_bytes());
    }
    symlink("a/b.txt", a.path().join("link")).unwrap();
    symlink("a/b.txt", b.path().join("link")).unwrap();
    // Different mtimes everywhere, all later than the clamp.
    for (i, root) in [a.path(), b.path()].iter().enumerate() {
        for e in walkdir::WalkDir::new(root)
            .min_depth(1)
            .contents_first(true)
        {
            let e = e.unwrap();
            set_mtime(e.path(), 2_000_000_000 + i as i64 * 1000);
        }
    }
    let opts = LayerOptions {
        mtime_clamp: Some(1_700_000_000),
    };
    let (ta, ia) = layer_bytes(a.path(), &opts);
    let (tb, ib) = layer_bytes(b.path(), &opts);
    assert_eq!(ta, tb, "same tree, different bytes");
    assert_eq!(ia, ib);

    // Entries depth first by name (each directory with its entries), relative, directories with a trailing slash,
    // no user or group names, mtimes clamped.
    let mut archive = tar::Archive::new(&ta[..]);
    let mut paths = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(h.username_bytes(), Some(&b""[..]));
        assert_eq!(h.groupname_bytes(), Some(&b""[..]));
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        paths.push(String::from_utf8(e.path_bytes().into_owned()).unwrap());
    }
    assert_eq!(
        paths,
        [
            "a/",
            "a/b/",
            "a/b/c.txt",
            "a/b/d",
            "a/b.txt",
            "a-b",
            "link",
            "m/",
            "m/n/",
            "m/n/o/",
            "m/n/o/p",
            "z"
        ]
    );
    let mut sorted = paths.clone();
    sorted.sort_by(|x, y| path_order(x.trim_end_matches('/'), y.trim_end_matches('/')));
    assert_eq!(paths, sorted, "entries not depth first by name");
    assert!(paths
        .iter()
        .all(|p| !p.starts_with("./") && !p.starts_with('/')));
    assert!(paths.contains(&"a/b/".to_string()));

    // Without the clamp, mtimes differ and so do the bytes.
    let (ua, _) = layer_bytes(a.path(), &LayerOptions::default());
    let (ub, _) = layer_bytes(b.path(), &LayerOptions::default());
    assert_ne!(ua, ub);
}

#[test]
fn clamp_keeps_earlier_mtimes() {
    let d = tmp();
    write(&d.path().join("old"), b"x");
    write(&d.path().join("new"), b"y");
    set_mtime(&d.path().join("old"), 1000);
    set_mtime(&d.path().join("new"), 3000);
    let (t, _) = layer_bytes(
        d.path(),
        &LayerOptions {
            mtime_clamp: Some(2000),
        },
    );
    let entries = list_layer(&t[..]).unwrap();
    let by_path: HashMap<_, _> = entries.iter().map(|e| (e.path.clone(), e.mtime)).collect();
    assert_eq!(by_path[Path::new("old")], 1000);
    assert_eq!(by_path[Path::new("new")], 2000);
}

/// A tree with everything a layer can carry.
fn rich_tree(root: &Path) -> bool {
    write(&root.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n");
    write(&root.join("bin/su"), b"\x7fELF setuid");
    chmod(&root.join("bin/su"), 0o4755);
    fs::create_dir_all(root.join("var/mail")).unwrap();
    chmod(&root.join("var/mail"), 0o2775);
    fs::create_dir_all(root.join("tmp")).unwrap();
    chmod(&root.join("tmp"), 0o1777);
    fs::create_dir_all(root.join("empty/dir")).unwrap();
    symlink("../etc/passwd", root.join("bin/passwd-link")).unwrap();
    symlink("/does/not/exist", root.join("dangling")).unwrap();
    write(&root.join("hard/one"), b"shared inode");
    fs::hard_link(root.join("hard/one"), root.join("hard/two")).unwrap();
    fs::hard_link(root.join("hard/one"), root.join("a-hardlink")).unwrap();
    let long_dir = root.join("l".repeat(60)).join("o".repeat(60));
    write(
        &long_dir.join(format!("{}.txt", "n".repeat(90))),
        b"long name",
    );
    symlink(
        format!("{}/{}", "t".repeat(80), "u".repeat(80)),
        root.join("long-target"),
    )
    .unwrap();
    write(&root.join("big-ids"), b"owned by a big uid");
    write(&root.join("empty-file"), b"");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    write(&root.join("big-file"), &big);
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    if is_root() {
        std::os::unix::fs::lchown(root.join("big-ids"), Some(3_000_000), Some(2_500_000)).unwrap();
        std::os::unix::fs::lchown(root.join("etc/passwd"), Some(0), Some(42)).unwrap();
        std::os::unix::fs::lchown(root.join("dangling"), Some(7), Some(8)).unwrap();
        nix::sys::stat::mknod(
            &root.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    } else {
        println!("not root: skipping ownership and device parts");
    }
    let xattrs = user_xattrs_supported(root);
    if xattrs {
        xattr::set(root.join("etc/passwd"), "user.estiba", b"v=1\n=x").unwrap();
        xattr::set(root.join("empty/dir"), "user.estiba", b"on a dir").unwrap();
    }
    for e in walkdir::WalkDir::new(root)
        .min_depth(1)
        .contents_first(true)
    {
        let e = e.unwrap();
        set_mtime(e.path(), 1_600_000_000 + e.depth() as i64);
    }
    xattrs
}

/// A root filesystem for the host (`-o type=local`) gets no device node an
/// image chose unless asked: devices and hard links to them are skipped and
/// counted, and what was at their path goes; setuid and setgid files are
/// named so the exporter can warn about them.
#[test]
fn unpack_skips_devices_when_asked_and_names_setid_files() {
    let src = tmp();
    rich_tree(src.path());
    if is_root() {
        fs::hard_link(src.path().join("null"), src.path().join("null-too")).unwrap();
    }
    let (tar, _) = layer_bytes(src.path(), &LayerOptions::default());
    let dest = tmp();
    write(&dest.path().join("null"), b"replaced by the layer");
    let stats = unpack_layer(
        &tar[..],
        dest.path(),
        &UnpackOptions {
            devices: false,
            ..root_opts()
        },
    )
    .unwrap();
    assert_eq!(stats.setid_files, vec![PathBuf::from("bin/su")]);
    assert!(fs::symlink_metadata(dest.path().join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    if is_root() {
        assert_eq!(stats.devices_skipped, 2);
        for name in ["null", "null-too"] {
            assert!(!dest.path().join(name).exists(), "{name}");
        }
    }
    let dest = tmp();
    let stats = unpack_layer(&tar[..], dest.path(), &root_opts()).unwrap();
    assert_eq!(stats.devices_skipped, 0);
    if is_root() {
        let null = fs::symlink_metadata(dest.path().join("null-too")).unwrap();
        assert!(null.file_type().is_char_device());
    }
}

#[test]
fn layer_round_trips_every_kind_of_entry() {
    let src = tmp();
    let xattrs = rich_tree(src.path());
    let (tar, info) = layer_bytes(src.path(), &LayerOptions::default());

    let entries = list_layer(&tar[..]).unwrap();
    let get = |p: &str| {
        entries
            .iter()
            .find(|e| e.path == Path::new(p))
            .unwrap_or_else(|| panic!("no entry {p}"))
    };
    assert_eq!(get("bin/su").mode, 0o4755);
    assert_eq!(get("var/mail").mode, 0o2775);
    assert_eq!(get("tmp").mode, 0o1777);
    assert_eq!(get("tmp").kind, EntryKind::Dir);
    assert_eq!(get("dangling").kind, EntryKind::Symlink);
    assert_eq!(
        get("dangling").link_target.as_deref(),
        Some(Path::new("/does/not/exist"))
    );
    // Sorted first among the three names of the inode: "a-hardlink".
    assert_eq!(get("a-hardlink").kind, EntryKind::File);
    assert_eq!(get("hard/one").kind, EntryKind::Hardlink);
    assert_eq!(
        get("hard/two").link_target.as_deref(),
        Some(Path::new("a-hardlink"))
    );
    assert_eq!(get("fifo").kind, EntryKind::Fifo);
    assert_eq!(get("big-file").size, 300_000);
    let long = format!(
        "{}/{}/{}.txt",
        "l".repeat(60),
        "o".repeat(60),
        "n".repeat(90)
    );
    assert_eq!(get(&long).size, 9);
    assert_eq!(
        get("long-target").link_target.as_deref(),
        Some(Path::new(&format!("{}/{}", "t".repeat(80), "u".repeat(80))))
    );
    if is_root() {
        assert_eq!(get("big-ids").uid, 3_000_000);
        assert_eq!(get("big-ids").gid, 2_500_000);
        assert_eq!(get("null").kind, EntryKind::CharDevice);
        assert_eq!(get("null").device, Some((1, 3)));
    }
    if xattrs {
        assert_eq!(get("etc/passwd").xattrs["user.estiba"], b"v=1\n=x");
    }
    assert!(entries.iter().all(|e| e.whiteout.is_none()));

    let dest = tmp();
    let stats = unpack_layer(&tar[..], dest.path(), &root_opts()).unwrap();
    assert_eq!(stats.hardlinks, 2);
    let mut seen = std::collections::HashSet::new();
    let content: u64 = walkdir::WalkDir::new(src.path())
        .into_iter()
        .map(|e| fs::symlink_metadata(e.unwrap().path()).unwrap())
        .filter(|m| m.is_file() && seen.insert(m.ino()))
        .map(|m| m.len())
        .sum();
    assert_eq!(stats.bytes, content);
    assert_eq!(snapshot(src.path()), snapshot(dest.path()));

    // The unpacked tree archives to the very same layer.
    let (again, info_again) = layer_bytes(dest.path(), &LayerOptions::default());
    assert_eq!(info, info_again);
    assert!(again == tar);

    // GNU tar reads it the same way.
    if which("tar") && is_root() {
        let by_tar = tmp();
        let file = by_tar.path().join("layer.tar");
        fs::write(&file, &tar).unwrap();
        let out = by_tar.path().join("root");
        fs::create_dir(&out).unwrap();
        let output = Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(&file)
            .arg("-C")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tar -x: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // GNU tar does not always restore directory mtimes; compare the rest.
        let no_dir_mtimes = |m: BTreeMap<PathBuf, String>| {
            m.into_iter()
                .map(|(k, v)| match v.find(" dir-mtime=") {
                    Some(i) => {
                        let rest = &v[i + 11..];
                        let end = rest.find(' ').unwrap_or(rest.len());
                        (k, format!("{}{}", &v[..i], &rest[end..]))
                    }
                    None => (k, v),
                })
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            no_dir_mtimes(snapshot(src.path())),
            no_dir_mtimes(snapshot(&out))
        );
    } else {
        println!("GNU tar missing or not root: skipping the GNU tar check");
    }
}

#[test]
fn write_layer_keeps_whiteout_files_and_drops_overlay_xattrs() {
    let d = tmp();
    write(&d.path().join(".wh.gone"), b"");
    write(&d.path().join("dir/.wh..wh..opq"), b"");
    write(&d.path().join("dir/new"), b"n");
    let xattrs = user_xattrs_supported(d.path());
    if is_root() {
        xattr::set(d.path().join("dir"), "trusted.overlay.opaque", b"y").unwrap();
        xattr::set(d.path().join("dir"), "trusted.estiba", b"kept").unwrap();
    }
    if xattrs {
        xattr::set(d.path().join("dir/new"), "user.overlay.origin", b"x").unwrap();
    }
    let (t, _) = layer_bytes(d.path(), &LayerOptions::default());
    let entries = list_layer(&t[..]).unwrap();
    let wh: Vec<_> = entries.iter().filter_map(|e| e.whiteout.clone()).collect();
    assert_eq!(
        wh,
        [
            Whiteout::Remove(PathBuf::from("gone")),
            Whiteout::Opaque(PathBuf::from("dir")),
        ]
    );
    for e in &entries {
        assert!(!e.xattrs.keys().any(|k| k.contains("overlay")), "{e:?}");
    }
    if is_root() {
        let dir = entries.iter().find(|e| e.path == Path::new("dir")).unwrap();
        assert_eq!(dir.xattrs["trusted.estiba"], b"kept");
    }
}

// ---------------------------------------------------------------------------
// unpack_layer: whiteouts and flattening
// ---------------------------------------------------------------------------

fn layer_of(build: impl FnOnce(&Path)) -> Vec<u8> {
    let d = tmp();
    build(d.path());
    layer_bytes(d.path(), &LayerOptions::default()).0
}

#[test]
fn flattening_applies_whiteouts_and_opaque_dirs() {
    let lower = layer_of(|d| {
        write(&d.join("a/file1"), b"1");
        write(&d.join("a/file2"), b"2");
        write(&d.join("b/x"), b"x");
        write(&d.join("b/deep/y"), b"y");
        write(&d.join("c/old1"), b"o");
        write(&d.join("c/sub/old2"), b"o");
        write(&d.join("c/+dir/old3"), b"o");
        write(&d.join("keep.txt"), b"k");
        symlink("a", d.join("alink")).unwrap();
    });
    let upper = layer_of(|d| {
        write(&d.join("a/.wh.file1"), b"");
        write(&d.join(".wh.b"), b"");
        write(&d.join(".wh.alink"), b"");
        write(&d.join(".wh.never-existed"), b"");
        // "c/+early" sorts before "c/.wh..wh..opq": the marker must not
        // hide what its own layer put there.
        write(&d.join("c/+early"), b"e");
        write(&d.join("c/+dir/new"), b"n");
        write(&d.join("c/.wh..wh..opq"), b"");
        write(&d.join("c/new"), b"n");
    });
    let dest = tmp();
    unpack_layer(&lower[..], dest.path(), &root_opts()).unwrap();
    let stats = unpack_layer(&upper[..], dest.path(), &root_opts()).unwrap();
    assert_eq!(stats.whiteouts, 5);
    let p = dest.path();
    assert!(!p.join("a/file1").exists());
    assert_eq!(fs::read(p.join("a/file2")).unwrap(), b"2");
    assert!(!p.join("b").exists());
    assert!(fs::symlink_metadata(p.join("alink")).is_err());
    assert!(
        p.join("a").is_dir(),
        "whiteout of a symlink removed its target"
    );
    assert_eq!(fs::read(p.join("keep.txt")).unwrap(), b"k");
    let mut c: Vec<_> = fs::read_dir(p.join("c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    c.sort();
    assert_eq!(c, ["+dir", "+early", "new"]);
    let plus_dir: Vec<_> = fs::read_dir(p.join("c/+dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(plus_dir, ["new"], "lower content survived an opaque marker");
    assert!(!p.join("a/.wh.file1").exists());
    assert!(!p.join("c/.wh..wh..opq").exists());

    // Keep mode: the whiteouts are plain empty files.
    let snap = tmp();
    unpack_layer(
        &upper[..],
        snap.path(),
        &UnpackOptions {
            whiteouts: WhiteoutMode::Keep,
            ..root_opts()
        },
    )
    .unwrap();
    assert!(snap.path().join(".wh.b").is_file());
    assert!(snap.path().join("c/.wh..wh..opq").is_file());
    assert!(snap.path().join("c/+early").is_file());

    // Overlay mode (root: devices and trusted.* xattrs): the whiteouts as
    // overlayfs reads them in a lower dir, made as the layer is unpacked.
    if !is_root() {
        return;
    }
    let snap = tmp();
    let stats = unpack_layer(
        &upper[..],
        snap.path(),
        &UnpackOptions {
            whiteouts: WhiteoutMode::Overlay,
            ..root_opts()
        },
    )
    .unwrap();
    assert!(stats.whiteouts >= 2, "{stats:?}");
    let b = fs::symlink_metadata(snap.path().join("b")).unwrap();
    assert!(b.file_type().is_char_device(), "{b:?}");
    assert_eq!(b.rdev(), 0);
    assert!(!snap.path().join(".wh.b").exists());
    assert!(!snap.path().join("c/.wh..wh..opq").exists());
    assert_eq!(
        xattr::get(snap.path().join("c"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert!(snap.path().join("c/+early").is_file());
}

/// Entries are created without a look first (a create that meets
/// something removes it and tries again): whatever a later entry of the
/// same layer does to an earlier one (the same name again, a directory or
/// symlink in its place, its parent replaced by a file, a hard link to
/// it), the tar's order wins.
#[test]
fn later_entries_of_a_layer_win_over_earlier_ones() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let mut entries: Vec<RawEntry<'_>> = Vec::new();
    let names: Vec<String> = (0..200).map(|i| format!("d/many/f{i:03}")).collect();
    entries.push((b"d/", Directory, b"", b""));
    for n in &names {
        entries.push((n.as_bytes(), Regular, b"", b"m"));
    }
    entries.extend_from_slice(&[
        (b"twice", Regular, b"", b"first"),
        (b"twice", Regular, b"", b"second"),
        (b"becomes-dir", Regular, b"", b"f"),
        (b"becomes-dir/", Directory, b"", b""),
        (b"becomes-dir/inside", Regular, b"", b"i"),
        (b"d/many/f199", Regular, b"", b"again"),
        (b"linked", Regular, b"", b"l"),
        (b"hard", Link, b"linked", b""),
        (b"becomes-link", Regular, b"", b"x"),
        (b"becomes-link", Symlink, b"twice", b""),
        (b"gone/", Directory, b"", b""),
        (b"gone/queued", Regular, b"", b"q"),
        (b"gone", Regular, b"", b"a file now"),
    ]);
    let tar = raw_tar(&entries);
    let dest = tmp();
    let p = dest.path();
    let stats = unpack_layer(&tar[..], p, &root_opts()).unwrap();
    assert_eq!(stats.files, 209);
    assert_eq!(fs::read(p.join("twice")).unwrap(), b"second");
    assert_eq!(fs::read(p.join("becomes-dir/inside")).unwrap(), b"i");
    assert_eq!(fs::read(p.join("d/many/f199")).unwrap(), b"again");
    assert_eq!(fs::read(p.join("d/many/f000")).unwrap(), b"m");
    assert_eq!(fs::read_dir(p.join("d/many")).unwrap().count(), 200);
    let (linked, hard) = (
        fs::metadata(p.join("linked")).unwrap(),
        fs::metadata(p.join("hard")).unwrap(),
    );
    assert_eq!((linked.ino(), linked.nlink()), (hard.ino(), 2));
    assert_eq!(
        fs::read_link(p.join("becomes-link")).unwrap(),
        Path::new("twice")
    );
    assert_eq!(fs::read(p.join("gone")).unwrap(), b"a file now");
}

#[test]
fn later_layer_replaces_kinds() {
    let lower = layer_of(|d| {
        write(&d.join("was-file"), b"f");
        fs::create_dir_all(d.join("was-dir/child")).unwrap();
        symlink("/etc", d.join("was-link")).unwrap();
    });
    let upper = layer_of(|d| {
        write(&d.join("was-file/inside"), b"now a dir");
        write(&d.join("was-dir"), b"now a file");
        write(&d.join("was-link/inside"), b"now a dir too");
    });
    let dest = tmp();
    unpack_layer(&lower[..], dest.path(), &root_opts()).unwrap();
    unpack_layer(&upper[..], dest.path(), &root_opts()).unwrap();
    assert_eq!(
        fs::read(dest.path().join("was-file/inside")).unwrap(),
        b"now a dir"
    );
    assert_eq!(
        fs::read(dest.path().join("was-dir")).unwrap(),
        b"now a file"
    );
    assert!(fs::symlink_metadata(dest.path().join("was-link"))
        .unwrap()
        .is_dir());
}

#[test]
fn read_only_dirs_get_their_mode_after_their_contents() {
    let layer = layer_of(|d| {
        write(&d.join("ro/file"), b"x");
        chmod(&d.join("ro"), 0o555);
    });
    let dest = tmp();
    unpack_layer(
        &layer[..],
        dest.path(),
        &UnpackOptions {
            same_owner: false,
            whiteouts: WhiteoutMode::Apply,
            devices: true,
        },
    )
    .unwrap();
    assert_eq!(
        fs::metadata(dest.path().join("ro")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(fs::read(dest.path().join("ro/file")).unwrap(), b"x");
    chmod(&dest.path().join("ro"), 0o755);
}

// ---------------------------------------------------------------------------
// unpack_layer: escapes
// ---------------------------------------------------------------------------

fn tree_listing(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap().path().to_path_buf())
        .collect()
}

#[test]
fn entries_cannot_escape_the_destination() {
    use tar::EntryType::{Link, Regular, Symlink};
    let base = tmp();
    let dest = base.path().join("dest");
    let outside = base.path().join("outside");
    fs::create_dir_all(&dest).unwrap();
    write(&outside.join("secret"), b"secret");
    let before = tree_listing(base.path());
    let outside_str = outside.to_str().unwrap().as_bytes().to_vec();

    let refused: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            raw_tar(&[(b"../pwned", Regular, b"", b"x")]),
            "../pwned",
        ),
        (
            "nested dotdot",
            raw_tar(&[(b"a/../../pwned", Regular, b"", b"x")]),
            "a/../../pwned",
        ),
        (
            "absolute",
            raw_tar(&[(b"/tmp/pwned", Regular, b"", b"x")]),
            "/tmp/pwned",
        ),
        (
            "whiteout of ..",
            raw_tar(&[(b"sub/.wh..", Regular, b"", b"")]),
            "sub/.wh..",
        ),
        (
            "whiteout of .",
            raw_tar(&[(b".wh..", Regular, b"", b"")]),
            ".wh..",
        ),
        (
            "hardlink out",
            raw_tar(&[(b"h", Link, b"../outside/secret", b"")]),
            "h",
        ),
        (
            "hardlink absolute",
            raw_tar(&[(
                b"h",
                Link,
                outside.join("secret").as_os_str().as_bytes(),
                b"",
            )]),
            "h",
        ),
    ];
    for (what, tar, entry) in refused {
        let err = unpack_layer(&tar[..], &dest, &root_opts()).unwrap_err();
        assert!(
            matches!(&err, LayerError::Escape { entry: e, .. } if e == entry),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains(entry), "{what}: {err}");
    }
    assert_eq!(tree_listing(base.path()), before, "something was written");

    // Symlinks in parent paths resolve inside dest, chroot-like.
    let tar = raw_tar(&[
        (b"abs", Symlink, &outside_str, b""),
        (b"abs/pwned", Regular, b"", b"x"),
        (b"rel", Symlink, b"../../../../../..", b""),
        (b"rel/pwned2", Regular, b"", b"y"),
        (b"rel/abs/pwned3", Regular, b"", b"z"),
    ]);
    unpack_layer(&tar[..], &dest, &root_opts()).unwrap();
    assert!(!outside.join("pwned").exists());
    assert!(!outside.join("pwned3").exists());
    assert!(!base.path().join("pwned2").exists());
    let inside = dest.join(outside.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("pwned")).unwrap(), b"x");
    assert_eq!(fs::read(inside.join("pwned3")).unwrap(), b"z");
    assert_eq!(fs::read(dest.join("pwned2")).unwrap(), b"y");
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"secret");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);

    // A hard link through a symlinked parent: the target is looked up
    // inside dest, where it does not exist.
    let tar = raw_tar(&[(b"h2", Link, b"abs/secret", b"")]);
    let err = unpack_layer(&tar[..], &dest, &root_opts()).unwrap_err();
    assert!(
        matches!(err, LayerError::MissingLinkTarget { .. }),
        "{err:?}"
    );

    // A symlink already in dest (from a lower layer) as the last component
    // is replaced, never written through.
    let dest2 = base.path().join("dest2");
    fs::create_dir_all(&dest2).unwrap();
    symlink(outside.join("secret"), dest2.join("victim")).unwrap();
    symlink(&outside, dest2.join("victimdir")).unwrap();
    let tar = raw_tar(&[
        (b"victim", Regular, b"", b"overwritten?"),
        (b"victimdir/new", Regular, b"", b"n"),
    ]);
    unpack_layer(&tar[..], &dest2, &root_opts()).unwrap();
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"secret");
    assert!(!outside.join("new").exists());
    assert!(fs::symlink_metadata(dest2.join("victim"))
        .unwrap()
        .is_file());

    // Symlink loops end in an error, not a hang.
    let tar = raw_tar(&[
        (b"loop1", Symlink, b"loop2", b""),
        (b"loop2", Symlink, b"loop1", b""),
        (b"loop1/x", Regular, b"", b"x"),
    ]);
    let dest3 = base.path().join("dest3");
    fs::create_dir_all(&dest3).unwrap();
    let err = unpack_layer(&tar[..], &dest3, &root_opts()).unwrap_err();
    assert!(matches!(err, LayerError::SymlinkLoop { .. }), "{err:?}");
}

#[test]
fn truncated_and_corrupt_layers_are_errors() {
    let layer = layer_of(|d| {
        write(&d.join("a"), &vec![7u8; 5000]);
        write(&d.join("b"), b"b");
    });
    // Cut inside a file's content, at a header boundary, and before the end
    // blocks.
    for cut in [700, 512 * 11, layer.len() - 1024, layer.len() - 1] {
        let dest = tmp();
        let result = unpack_layer(&layer[..cut], dest.path(), &root_opts());
        assert!(result.is_err(), "cut at {cut} of {} accepted", layer.len());
        assert!(list_layer(&layer[..cut]).is_err(), "list: cut at {cut}");
    }
    let mut bad = layer.clone();
    bad[100] ^= 0xff; // the first header's mode field: checksum mismatch
    let err = unpack_layer(&bad[..], tmp().path(), &root_opts()).unwrap_err();
    assert!(matches!(err, LayerError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("checksum"), "{err}");
    // A truncated compressed layer fails too.
    let mut gz = Vec::new();
    compress(&layer[..], &mut gz, Compression::Gzip).unwrap();
    let cut = &gz[..gz.len() - 8];
    let result = unpack_layer(
        decompressing_reader(cut).unwrap(),
        tmp().path(),
        &root_opts(),
    );
    assert!(result.is_err());
}

/// A layer tar in a file of its own, as the store keeps an uncompressed
/// layer.
fn layer_file(dir: &Path, tar: &[u8]) -> fs::File {
    let path = dir.join("layer.tar");
    fs::write(&path, tar).unwrap();
    fs::File::open(&path).unwrap()
}

#[test]
fn a_layer_file_unpacks_as_its_stream_does() {
    let src = tmp();
    rich_tree(src.path());
    // Files bigger than the read-ahead buffer, and a run of small ones.
    write(&src.path().join("huge/a"), &vec![1u8; 700_000]);
    write(&src.path().join("huge/b"), &vec![2u8; 1_300_001]);
    // Big enough to be written past the page cache (4 MiB and up), with a
    // tail that is not a whole block.
    let big: Vec<u8> = (0..5 * 1024 * 1024 + 123)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    write(&src.path().join("huge/c"), &big);
    for i in 0..50 {
        write(
            &src.path().join(format!("small/{i}")),
            format!("{i}").as_bytes(),
        );
    }
    let (tar, _) = layer_bytes(src.path(), &LayerOptions::default());
    let work = tmp();
    let (streamed, from_file) = (tmp(), tmp());
    let a = unpack_layer(&tar[..], streamed.path(), &root_opts()).unwrap();
    let b = unpack_layer_file(
        layer_file(work.path(), &tar),
        from_file.path(),
        &root_opts(),
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(snapshot(streamed.path()), snapshot(from_file.path()));
    assert_eq!(
        fs::read(from_file.path().join("huge/b")).unwrap(),
        vec![2u8; 1_300_001]
    );
    assert!(fs::read(streamed.path().join("huge/c")).unwrap() == big);
    // A stream cut inside the big file's content.
    let result = unpack_layer(&tar[..tar.len() / 2], tmp().path(), &root_opts());
    assert!(
        matches!(
            result,
            Err(LayerError::Truncated | LayerError::TruncatedEntry { .. })
        ),
        "{result:?}"
    );
    // Cut inside the big file's content, and before the end blocks.
    for cut in [tar.len() / 2, tar.len() - 1024] {
        let result = unpack_layer_file(
            layer_file(work.path(), &tar[..cut]),
            tmp().path(),
            &root_opts(),
        );
        assert!(
            matches!(
                result,
                Err(LayerError::Truncated | LayerError::TruncatedEntry { .. })
            ),
            "cut at {cut} of {}: {result:?}",
            tar.len()
        );
    }
}

// ---------------------------------------------------------------------------
// compression
// ---------------------------------------------------------------------------

#[test]
fn compression_round_trips_and_hashes_compressed_bytes() {
    let layer = layer_of(|d| write(&d.join("f"), &vec![1u8; 100_000]));
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut blob = Vec::new();
        let (digest, size) = compress(&layer[..], &mut blob, c).unwrap();
        assert_eq!(digest, Digest::of(&blob));
        assert_eq!(size, blob.len() as u64);
        let mut again = Vec::new();
        compress(&layer[..], &mut again, c).unwrap();
        assert_eq!(blob, again, "{c} is not deterministic");
        let (detected, _) = sniff(&blob[..]).unwrap();
        assert_eq!(detected.compression(), Some(c));
        let mut back = Vec::new();
        decompressing_reader(&blob[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, layer);
        assert!(media_type(c).starts_with("application/vnd.oci.image.layer.v1.tar"));
    }
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(&layer).unwrap();
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&layer).unwrap();
    for (blob, want) in [
        (bz.finish().unwrap(), Detected::Bzip2),
        (xz.finish().unwrap(), Detected::Xz),
    ] {
        assert_eq!(sniff(&blob[..]).unwrap().0, want);
        let entries = list_layer(decompressing_reader(&blob[..]).unwrap()).unwrap();
        assert_eq!(entries.len(), 1);
    }
}

// ---------------------------------------------------------------------------
// archives
// ---------------------------------------------------------------------------

/// A blob store in memory, for tests.
#[derive(Default)]
struct Blobs(HashMap<Digest, Vec<u8>>);

impl Blobs {
    fn put(&mut self, bytes: Vec<u8>) -> (Digest, u64) {
        let d = Digest::of(&bytes);
        let n = bytes.len() as u64;
        self.0.insert(d, bytes);
        (d, n)
    }
}

impl BlobSource for Blobs {
    fn open_blob(&mut self, digest: &Digest) -> io::Result<Box<dyn Read + '_>> {
        match self.0.get(digest) {
            Some(b) => Ok(Box::new(&b[..])),
            None => Err(io::Error::new(io::ErrorKind::NotFound, digest.to_string())),
        }
    }
}

/// Two images sharing a base layer: one layer stored gzip, one plain.
fn sample_images(blobs: &mut Blobs) -> Vec<ExportImage> {
    let base = layer_of(|d| {
        write(&d.join("etc/os-release"), b"ID=estiba\n");
        symlink("os-release", d.join("etc/alias")).unwrap();
    });
    let top = layer_of(|d| write(&d.join("app/run.sh"), b"#!/bin/sh\necho hola\n"));
    let base_id = Digest::of(&base);
    let top_id = Digest::of(&top);
    let mut gz = Vec::new();
    compress(&base[..], &mut gz, Compression::Gzip).unwrap();
    let (gz_digest, gz_size) = blobs.put(gz);
    let (top_digest, top_size) = blobs.put(top);
    let config = |ids: &[Digest]| {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/app/run.sh"]},
            "rootfs": {"type": "layers", "diff_ids": ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        }))
        .unwrap()
    };
    let base_layer = Descriptor::new(media_type(Compression::Gzip), gz_digest, gz_size);
    let top_layer = Descriptor::new(
        "application/vnd.docker.image.rootfs.diff.tar",
        top_digest,
        top_size,
    );
    vec![
        ExportImage {
            tags: vec![
                "mi-aplicacion:latest".into(),
                "localhost:5000/mi/app".into(),
            ],
            manifest: None,
            config: config(&[base_id, top_id]),
            layers: vec![base_layer.clone(), top_layer],
        },
        ExportImage {
            tags: vec!["base:1".into()],
            manifest: None,
            config: config(&[base_id]),
            layers: vec![base_layer],
        },
    ]
}

/// `images` with every layer `compression`-compressed as exports do it
/// (through a store: [`estiba::image::compressed_layer`]), the compressed
/// blobs added to `blobs`.
fn compressed(
    images: &[ExportImage],
    blobs: &mut Blobs,
    compression: Compression,
) -> Vec<ExportImage> {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let mut out = images.to_vec();
    for image in &mut out {
        let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
        for (layer, diff_id) in image.layers.iter_mut().zip(diff_ids) {
            store.put_blob(&blobs.0[&layer.digest]).unwrap();
            let diff_id: Digest = diff_id.as_str().unwrap().parse().unwrap();
            *layer = compressed_layer(&store, layer, &diff_id, compression).unwrap();
            blobs.put(store.read_blob(&layer.digest).unwrap());
        }
    }
    out
}

fn blob_names(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_layer_is_compressed_once_and_what_is_read_is_checked() {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let tar = layer_of(|d| write(&d.join("etc/os-release"), b"ID=estiba\n"));
    let diff_id = Digest::of(&tar);
    let (digest, size) = store.put_blob(&tar).unwrap();
    let plain = Descriptor::new(media_type(Compression::None), digest, size);

    // Compressed as compressing the tar gives, stored and recorded; asked
    // again, the record answers.
    let gz = compressed_layer(&store, &plain, &diff_id, Compression::Gzip).unwrap();
    assert_eq!(
        compress(&tar[..], &mut Vec::new(), Compression::Gzip).unwrap(),
        (gz.digest, gz.size)
    );
    assert_eq!(gz.media_type, media_type(Compression::Gzip));
    assert_eq!(
        store.compressed_blob(&diff_id, Compression::Gzip).unwrap(),
        Some(gz.clone())
    );
    let blobs = blob_names(&store);
    fs::write(store.blob_path(&digest), b"damaged").unwrap();
    assert_eq!(
        compressed_layer(&store, &plain, &diff_id, Compression::Gzip).unwrap(),
        gz,
        "the kept blob is used, the layer not read"
    );
    assert_eq!(blob_names(&store), blobs);
    store.put_blob(&tar).unwrap(); // the layer again

    // A layer already in the wanted form is itself, media type and all.
    let docker_gz = Descriptor::new(DOCKER_LAYER_GZIP, gz.digest, gz.size);
    assert_eq!(
        compressed_layer(&store, &docker_gz, &diff_id, Compression::Gzip).unwrap(),
        docker_gz
    );
    // From gzip to zstd: decompressed and compressed again in one pass,
    // recorded under the diff ID.
    let zst = compressed_layer(&store, &docker_gz, &diff_id, Compression::Zstd).unwrap();
    assert_eq!(
        store.compressed_blob(&diff_id, Compression::Zstd).unwrap(),
        Some(zst.clone())
    );
    let mut back = Vec::new();
    decompressing_reader(&store.read_blob(&zst.digest).unwrap()[..])
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == tar);

    // A layer that is not what the config says, or not what its digest
    // says, is refused and nothing is stored or recorded.
    let blobs = blob_names(&store);
    let other = Digest::of(b"another layer");
    let err = compressed_layer(&store, &plain, &other, Compression::Gzip).unwrap_err();
    assert!(
        matches!(err, CompressedError::DiffIdMismatch { .. }),
        "{err:?}"
    );
    let err = compressed_layer(&store, &gz, &other, Compression::Zstd).unwrap_err();
    assert!(
        matches!(&err, CompressedError::DiffIdMismatch { actual, .. } if *actual == diff_id),
        "{err:?}"
    );
    assert_eq!(
        store.compressed_blob(&other, Compression::Zstd).unwrap(),
        None
    );
    let other_dir = tmp();
    let fresh = Store::open(other_dir.path()).unwrap();
    fresh.put_blob(&tar).unwrap();
    let mut bytes = tar.clone();
    bytes[600] ^= 1;
    fs::write(fresh.blob_path(&digest), &bytes).unwrap();
    let err = compressed_layer(&fresh, &plain, &diff_id, Compression::Gzip).unwrap_err();
    assert!(
        matches!(err, CompressedError::CorruptBlob { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&digest.to_string()), "{err}");
    assert_eq!(blob_names(&fresh), [digest.hex().to_string()]);
    assert_eq!(
        fresh.compressed_blob(&diff_id, Compression::Gzip).unwrap(),
        None
    );
    assert_eq!(blob_names(&store), blobs);
    // Only layers.
    let config = Descriptor::new(OCI_CONFIG, digest, size);
    assert!(matches!(
        compressed_layer(&store, &config, &diff_id, Compression::Gzip),
        Err(CompressedError::MediaType { .. })
    ));
}

fn outer_paths(archive: &[u8]) -> Vec<String> {
    tar::Archive::new(archive)
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect()
}

fn check_round_trip(images: &[ExportImage], archive: &estiba::archive::ImageArchive) {
    assert_eq!(archive.images.len(), images.len());
    for (want, got) in images.iter().zip(&archive.images) {
        assert_eq!(got.config, want.config);
        assert_eq!(got.config_digest, Digest::of(&want.config));
        assert_eq!(got.layers.len(), want.layers.len());
        // Every layer unpacks.
        let dest = tmp();
        for layer in &got.layers {
            unpack_layer(layer.open_tar().unwrap(), dest.path(), &root_opts()).unwrap();
        }
        assert!(dest.path().join("etc/os-release").is_file());
    }
}

#[test]
fn docker_archive_round_trips() {
    let mut blobs = Blobs::default();
    let images = sample_images(&mut blobs);
    let work = tmp();
    let mut out = Vec::new();
    write_docker_archive(&images, &mut blobs, &mut out, work.path()).unwrap();

    let paths = outer_paths(&out);
    assert!(paths.contains(&"manifest.json".to_string()));
    assert!(paths.contains(&"repositories".to_string()));
    let config_hex = Digest::of(&images[0].config).hex();
    assert!(paths.contains(&format!("{config_hex}.json")));
    let base_diff = read_archive(&out[..], work.path()).unwrap().images[1].layers[0].diff_id;
    assert!(paths.contains(&format!("{}/layer.tar", base_diff.hex())));
    // The shared base layer is written once.
    assert_eq!(paths.iter().filter(|p| p.ends_with("layer.tar")).count(), 2);

    let archive = read_archive(&out[..], work.path()).unwrap();
    assert_eq!(archive.format, ArchiveFormat::Docker);
    check_round_trip(&images, &archive);
    assert_eq!(
        archive.images[0].tags,
        ["mi-aplicacion:latest", "localhost:5000/mi/app:latest"]
    );
    assert_eq!(archive.images[1].tags, ["base:1"]);
    for layer in &archive.images[0].layers {
        assert_eq!(
            layer.detected,
            Detected::Plain,
            "docker layers are uncompressed"
        );
        assert_eq!(layer.digest, layer.diff_id);
    }
    // Same input, same archive.
    let mut again = Vec::new();
    write_docker_archive(&images, &mut blobs, &mut again, work.path()).unwrap();
    assert!(again == out);

    // The archive also reads gzip-compressed as a whole, like docker load.
    let mut gz = Vec::new();
    compress(&out[..], &mut gz, Compression::Gzip).unwrap();
    assert_eq!(read_archive(&gz[..], work.path()).unwrap().images.len(), 2);

    if which("skopeo") {
        let file = work.path().join("docker.tar");
        fs::write(&file, &out).unwrap();
        let status = Command::new("skopeo")
            .arg("inspect")
            .arg(format!(
                "docker-archive:{}:mi-aplicacion:latest",
                file.display()
            ))
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "skopeo inspect: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    } else {
        println!("skopeo not installed: skipping the skopeo check");
    }
    // Nothing is left behind in the temp dir once archives are dropped.
    drop(archive);
    let left: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("archive-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A source that gzips the uncompressed layers as the archive is written
/// (what `estiba save` does for layers it has not compressed before),
/// or, with `lie`, says a made blob is one byte longer than it is.
struct Maker {
    blobs: Blobs,
    fail: bool,
    lie: bool,
}

impl BlobSource for Maker {
    fn open_blob(&mut self, digest: &Digest) -> io::Result<Box<dyn Read + '_>> {
        self.blobs.open_blob(digest)
    }

    fn makes_blob(&self, layer: &Descriptor) -> bool {
        Compression::from_media_type(&layer.media_type) == Some(Compression::None)
    }

    fn make_blob(
        &mut self,
        layer: &Descriptor,
        _diff_id: &Digest,
        out: &mut dyn Write,
    ) -> io::Result<Descriptor> {
        if self.fail {
            return Err(io::Error::other("the layer is corrupt"));
        }
        let raw = &self.blobs.0[&layer.digest];
        let (digest, size) =
            compress(&raw[..], out, Compression::Gzip).map_err(io::Error::other)?;
        let size = size + u64::from(self.lie);
        Ok(Descriptor::new(media_type(Compression::Gzip), digest, size))
    }
}

#[test]
fn blobs_made_as_the_archive_is_written_give_the_archive_of_blobs_made_first() {
    let mut blobs = Blobs::default();
    let images = sample_images(&mut blobs);
    let gzipped = compressed(&images, &mut blobs, Compression::Gzip);
    let mut first = Vec::new();
    let digests = write_oci_archive(&gzipped, &mut blobs, &mut first).unwrap();

    // The same images with the plain layer as it is stored: the source
    // gzips it while its tar header waits to be filled in.
    let mut maker = Maker {
        blobs,
        fail: false,
        lie: false,
    };
    let mut made = Vec::new();
    let made_digests = write_oci_archive(&images, &mut maker, &mut made).unwrap();
    assert_eq!(made_digests, digests);
    assert!(made == first, "the archives differ");
    let work = tmp();
    let archive = read_archive(&made[..], work.path()).unwrap();
    check_round_trip(&images, &archive);

    // A blob that cannot be made, or is not the size its source says,
    // fails the archive, naming the layer or the blob.
    let plain = &images[0].layers[1];
    maker.fail = true;
    let err = write_oci_archive(&images, &mut maker, &mut Vec::new()).unwrap_err();
    let message = estiba::solve::error_chain(&err);
    assert!(message.contains(&plain.digest.to_string()), "{message}");
    assert!(message.contains("the layer is corrupt"), "{message}");
    maker.fail = false;
    maker.lie = true;
    let err = write_oci_archive(&images, &mut maker, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, ArchiveError::BlobSize { .. }), "{err:?}");
}

#[test]
fn oci_archive_round_trips() {
    let mut blobs = Blobs::default();
    let images = sample_images(&mut blobs);
    let gzipped = compressed(&images, &mut blobs, Compression::Gzip);
    let work = tmp();
    let mut out = Vec::new();
    let digests = write_oci_archive(&gzipped, &mut blobs, &mut out).unwrap();
    let paths = outer_paths(&out);
    assert_eq!(paths[0], "oci-layout");
    assert!(paths.contains(&"index.json".to_string()));

    let archive = read_archive(&out[..], work.path()).unwrap();
    assert_eq!(archive.format, ArchiveFormat::Oci);
    check_round_trip(&images, &archive);
    assert_eq!(
        archive.images[0].tags,
        ["mi-aplicacion:latest", "localhost:5000/mi/app:latest"]
    );
    for (image, digest) in archive.images.iter().zip(&digests) {
        assert_eq!(image.manifest_digest, Some(*digest));
        assert_eq!(Digest::of(image.manifest.as_ref().unwrap()), *digest);
        for layer in &image.layers {
            assert_eq!(layer.detected, Detected::Gzip, "layers are gzip by default");
            assert_eq!(
                layer.media_type.as_deref(),
                Some(media_type(Compression::Gzip))
            );
        }
    }
    // The gzip base layer went through as it was; the plain top layer was
    // compressed once, and both images share the base blob.
    assert_eq!(
        archive.images[0].layers[0].digest,
        images[0].layers[0].digest
    );
    assert_ne!(
        archive.images[0].layers[1].digest,
        images[0].layers[1].digest
    );

    // Keeping blobs as stored keeps a given manifest byte for byte.
    let kept = archive.images[0].clone();
    let reexport = vec![ExportImage {
        tags: vec!["again:v1".into()],
        manifest: kept.manifest.clone(),
        config: kept.config.clone(),
        layers: kept
            .layers
            .iter()
            .map(|l| Descriptor::new(l.media_type.as_deref().unwrap(), l.digest, l.size))
            .collect(),
    }];
    let mut store = Blobs::default();
    for l in &kept.layers {
        store.put(fs::read(&l.path).unwrap());
    }
    let mut out2 = Vec::new();
    let d2 = write_oci_archive(&reexport, &mut store, &mut out2).unwrap();
    assert_eq!(d2, [digests[0]]);

    // zstd on request.
    let mut out3 = Vec::new();
    let zstd = compressed(&images, &mut blobs, Compression::Zstd);
    write_oci_archive(&zstd, &mut blobs, &mut out3).unwrap();
    let zst = read_archive(&out3[..], work.path()).unwrap();
    check_round_trip(&images, &zst);
    assert!(zst.images[0]
        .layers
        .iter()
        .all(|l| l.detected == Detected::Zstd));

    if which("skopeo") {
        let file = work.path().join("oci.tar");
        fs::write(&file, &out).unwrap();
        let output = Command::new("skopeo")
            .arg("inspect")
            .arg(format!(
                "oci-archive:{}:mi-aplicacion:latest",
                file.display()
            ))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "skopeo inspect: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
    } else {
        println!("skopeo not installed: skipping the skopeo check");
    }
    if which("umoci") {
        let layout = work.path().join("layout");
        fs::create_dir_all(&layout).unwrap();
        tar::Archive::new(&out[..]).unpack(&layout).unwrap();
        let bundle = work.path().join("bundle");
        let output = Command::new("umoci")
            .arg("unpack")
            .arg("--rootless")
            .arg("--image")
            .arg(format!("{}:mi-aplicacion:latest", layout.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "umoci unpack: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(bundle.join("rootfs/app/run.sh").is_file());
    } else {
        println!("umoci not installed: skipping the umoci check");
    }
}

/// Builds a tar from (path, bytes) files and (path, target) symlinks.
fn archive_of(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, *data).unwrap();
    }
    for (path, target) in links {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, path, target).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn reads_legacy_symlinked_layers_and_docker_25_layouts() {
    let layer = layer_of(|d| write(&d.join("etc/os-release"), b"ID=x\n"));
    let id = Digest::of(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": [id.to_string(), id.to_string()]}
    }))
    .unwrap();
    let cfg = Digest::of(&config);
    let work = tmp();

    // docker save before 25: v1 ids, a repeated layer stored as a symlink.
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{}.json", cfg.hex()),
        "RepoTags": ["old:latest"],
        "Layers": ["v1a/layer.tar", "v1b/layer.tar"],
    }]))
    .unwrap();
    let old = archive_of(
        &[
            ("v1a/layer.tar", &layer),
            (&format!("{}.json", cfg.hex()), &config),
            ("manifest.json", &manifest),
        ],
        &[("v1b/layer.tar", "../v1a/layer.tar")],
    );
    let a = read_archive(&old[..], work.path()).unwrap();
    assert_eq!(a.images[0].tags, ["old:latest"]);
    assert_eq!(a.images[0].layers[1].diff_id, id);

    // docker 25+: an OCI layout inside, manifest.json pointing into blobs.
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("blobs/sha256/{}", cfg.hex()),
        "RepoTags": null,
        "Layers": [format!("blobs/sha256/{}", id.hex()), format!("blobs/sha256/{}", id.hex())],
    }]))
    .unwrap();
    let new = archive_of(
        &[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", br#"{"schemaVersion":2,"manifests":[]}"#),
            (&format!("blobs/sha256/{}", id.hex()), &layer),
            (&format!("blobs/sha256/{}", cfg.hex()), &config),
            ("manifest.json", &manifest),
        ],
        &[],
    );
    let a = read_archive(&new[..], work.path()).unwrap();
    assert_eq!(a.format, ArchiveFormat::Docker);
    assert!(a.images[0].tags.is_empty());

    // A config whose name does not match its digest.
    let wrong = archive_of(
        &[
            ("v1a/layer.tar", &layer),
            (&format!("{}.json", id.hex()), &config),
            (
                "manifest.json",
                &serde_json::to_vec(&serde_json::json!([{
                    "Config": format!("{}.json", id.hex()),
                    "Layers": ["v1a/layer.tar", "v1a/layer.tar"],
                }]))
                .unwrap(),
            ),
        ],
        &[],
    );
    let err = read_archive(&wrong[..], work.path()).unwrap_err();
    assert!(
        matches!(err, ArchiveError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("{}.json", id.hex())),
        "{err}"
    );

    // A layer whose content is not what the config says.
    let other = layer_of(|d| write(&d.join("x"), b"other"));
    let bad = archive_of(
        &[
            ("v1a/layer.tar", &other),
            (&format!("{}.json", cfg.hex()), &config),
            (
                "manifest.json",
                &serde_json::to_vec(&serde_json::json!([{
                    "Config": format!("{}.json", cfg.hex()),
                    "Layers": ["v1a/layer.tar", "v1a/layer.tar"],
                }]))
                .unwrap(),
            ),
        ],
        &[],
    );
    let err = read_archive(&bad[..], work.path()).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::DiffIdMismatch { entry, .. } if entry == "v1a/layer.tar"),
        "{err:?}"
    );
}

/// The regular files of a tar, in order: (path, content).
fn files_of(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for e in tar::Archive::new(archive).entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_file() {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            files.push((String::from_utf8(e.path_bytes().into_owned()).unwrap(), v));
        }
    }
    files
}

/// `files` as a tar.
fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, v)| (p.as_str(), &v[..])).collect();
    archive_of(&refs, &[])
}

/// `files` as a tar, with `path` holding `content` instead.
fn with_file(files: &[(String, Vec<u8>)], path: &str, content: &[u8]) -> Vec<u8> {
    let mut files = files.to_vec();
    for (p, v) in &mut files {
        if p == path {
            *v = content.to_vec();
        }
    }
    tar_of(&files)
}

#[test]
fn oci_documents_with_bad_digests_are_refused_naming_the_entry() {
    let mut blobs = Blobs::default();
    let images = sample_images(&mut blobs);
    let work = tmp();
    let mut out = Vec::new();
    write_oci_archive(&images[1..], &mut blobs, &mut out).unwrap();
    let files = files_of(&out);
    let json = |path: &str| -> serde_json::Value {
        serde_json::from_slice(&files.iter().find(|(p, _)| p == path).unwrap().1).unwrap()
    };
    let index = json("index.json");
    // An index entry without a media type is read as an image manifest.
    let mut lenient = index.clone();
    lenient["manifests"][0]
        .as_object_mut()
        .unwrap()
        .remove("mediaType");
    let a = read_archive(
        &with_file(&files, "index.json", lenient.to_string().as_bytes())[..],
        work.path(),
    )
    .unwrap();
    assert_eq!(a.images[0].tags, ["base:1"]);

    // A digest that is not one: an error naming the document and the digest.
    let chain = |e: &ArchiveError| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        text
    };
    let mut bad = index.clone();
    bad["manifests"][0]["digest"] = "sha256:not-hex".into();
    let err = read_archive(
        &with_file(&files, "index.json", bad.to_string().as_bytes())[..],
        work.path(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Json { entry, .. } if entry == "index.json"),
        "{err:?}"
    );
    assert!(
        chain(&err).contains("malformed sha256 digest \"sha256:not-hex\""),
        "{}",
        chain(&err)
    );

    // The same inside a manifest: the manifest's entry is named. (Its
    // digest changes, so the index points at the new one.)
    let manifest_path = format!(
        "blobs/sha256/{}",
        index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap()
    );
    let mut manifest = json(&manifest_path);
    manifest["layers"][0]["digest"] = "md5:0123".into();
    let manifest = manifest.to_string().into_bytes();
    let new_path = format!("blobs/sha256/{}", Digest::of(&manifest).hex());
    let mut index = index;
    index["manifests"][0]["digest"] = Digest::of(&manifest).to_string().into();
    index["manifests"][0]["size"] = manifest.len().into();
    let mut files = files.clone();
    files.retain(|(p, _)| p != &manifest_path && p != "index.json");
    files.push((new_path.clone(), manifest));
    files.push(("index.json".into(), index.to_string().into_bytes()));
    let err = read_archive(&tar_of(&files)[..], work.path()).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Json { entry, .. } if *entry == new_path),
        "{err:?}"
    );
    assert!(
        chain(&err).contains("unsupported digest algorithm in \"md5:0123\""),
        "{}",
        chain(&err)
    );
}

#[test]
fn reads_nested_indexes_and_skips_missing_platforms() {
    let mut blobs = Blobs::default();
    let images = sample_images(&mut blobs);
    let work = tmp();
    let mut out = Vec::new();
    let digests = write_oci_archive(&images[1..], &mut blobs, &mut out).unwrap();
    // Rebuild the archive with index.json → nested index → [manifest,
    // a manifest whose blobs are absent, an attestation-like artifact].
    let mut files = files_of(&out);
    let index: serde_json::Value =
        serde_json::from_slice(&files.iter().find(|(p, _)| p == "index.json").unwrap().1).unwrap();
    let mut manifest_desc = index["manifests"][0].clone();
    manifest_desc.as_object_mut().unwrap().remove("annotations");
    manifest_desc["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    let missing = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": Digest::of(b"absent").to_string(),
        "size": 6,
        "platform": {"architecture": "arm64", "os": "linux"},
    });
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc, missing],
    }))
    .unwrap();
    let nested_digest = Digest::of(&nested);
    let top = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": nested_digest.to_string(),
            "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi:1",
                            "io.containerd.image.name": "docker.io/library/multi:1"},
        }],
    }))
    .unwrap();
    files.retain(|(p, _)| p != "index.json");
    files.push((format!("blobs/sha256/{}", nested_digest.hex()), nested));
    files.push(("index.json".into(), top));
    let rebuilt = tar_of(&files);
    let a = read_archive(&rebuilt[..], work.path()).unwrap();
    assert_eq!(a.images.len(), 1);
    assert_eq!(a.images[0].tags, ["docker.io/library/multi:1"]);
    assert_eq!(a.images[0].manifest_digest, Some(digests[0]));
}

#[test]
fn truncated_or_corrupt_archives_are_errors() {
    let mut blobs = Blobs::default();
    let images = sample_images(&mut blobs);
    let work = tmp();
    let mut docker = Vec::new();
    write_docker_archive(&images, &mut blobs, &mut docker, work.path()).unwrap();
    let mut oci = Vec::new();
    let gzipped = compressed(&images, &mut blobs, Compression::Gzip);
    write_oci_archive(&gzipped, &mut blobs, &mut oci).unwrap();
    for (what, archive) in [("docker", &docker), ("oci", &oci)] {
        let n = archive.len();
        for cut in [0, 100, 512, 513, n / 3, n / 2, n - 1024, n - 512, n - 1] {
            let result = read_archive(&archive[..cut], work.path());
            assert!(result.is_err(), "{what}: cut at {cut} of {n} accepted");
        }
        // Flip one byte in every 512-byte block in turn (headers, JSON,
        // layer bytes): never a panic, and whatever is accepted still
        // checks out.
        for block in 0..n / 512 {
            let mut bad = archive.clone();
            bad[block * 512 + 300] ^= 0x55;
            if let Ok(a) = read_archive(&bad[..], work.path()) {
                for image in &a.images {
                    assert_eq!(Digest::of(&image.config), image.config_digest);
                    for l in &image.layers {
                        let bytes = fs::read(&l.path).unwrap();
                        assert_eq!(Digest::of(&bytes), l.digest);
                    }
                }
            }
        }
    }
    // Garbage and empty input.
    assert!(matches!(
        read_archive(&b"not a tar at all"[..], work.path()),
        Err(ArchiveError::Read { .. } | ArchiveError::Truncated)
    ));
    let empty = tar::Builder::new(Vec::new()).into_inner().unwrap();
    assert!(matches!(
        read_archive(&empty[..], work.path()),
        Err(ArchiveError::UnknownFormat)
    ));
    // A blob in the store that is not what its digest says.
    let mut corrupt = Blobs::default();
    let images = sample_images(&mut corrupt);
    let d = images[0].layers[1].digest;
    let bytes = corrupt.0.get_mut(&d).unwrap();
    let last = bytes.len() - 2000;
    bytes[last] ^= 1;
    let err = write_oci_archive(&images, &mut corrupt, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, ArchiveError::CorruptBlob { .. }), "{err:?}");
}

#[test]
fn a_directory_replaced_by_a_symlink_keeps_its_mode_off_the_symlink_target() {
    // Found by the `layer` fuzz target: directory modes are set at the end,
    // by then `b` is a symlink out of the root and `b/etc` is outside.
    use tar::EntryType::{Directory, Symlink};
    let base = tmp();
    let dest = base.path().join("dest");
    let outside = base.path().join("outside");
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir_all(outside.join("etc")).unwrap();
    chmod(&outside.join("etc"), 0o755);
    set_mtime(&outside.join("etc"), 1_000_000);
    let tar = raw_tar(&[
        (b"b/", Directory, b"", b""),
        (b"b/etc/", Directory, b"", b""),
        (b"b", Symlink, b"../outside", b""),
    ]);
    unpack_layer(&tar[..], &dest, &root_opts()).unwrap();
    let m = fs::metadata(outside.join("etc")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755, "mode set through the symlink");
    assert_eq!(m.mtime(), 1_000_000, "mtime set through the symlink");
    assert_eq!(
        fs::read_link(dest.join("b")).unwrap(),
        Path::new("../outside")
    );
}

#[test]
fn an_index_listing_the_same_blob_many_times_is_read_once() {
    // index.json → 7 nested indexes → one manifest, each level listing
    // the next 32 times: without walking each (blob, names) once, reading
    // it would take 32^8 steps, a denial of service in 50 KiB.
    let layer = layer_of(|d| write(&d.join("f"), b"x"));
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer).to_string()]}
    }))
    .unwrap();
    let desc = |media_type: &str, data: &[u8]| {
        serde_json::json!({
            "mediaType": media_type,
            "digest": Digest::of(data).to_string(),
            "size": data.len(),
        })
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))
    .unwrap();
    let mut files = vec![layer.clone(), config.clone(), manifest.clone()];
    let mut next = desc("application/vnd.oci.image.manifest.v1+json", &manifest);
    for _ in 0..7 {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": vec![next.clone(); 32],
        }))
        .unwrap();
        next = desc("application/vnd.oci.image.index.v1+json", &index);
        files.push(index);
    }
    let mut top = next.clone();
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "fan:out"});
    let index_json = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": vec![top; 32],
    }))
    .unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| format!("blobs/sha256/{}", Digest::of(f).hex()))
        .collect();
    let mut entries: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&files)
        .map(|(n, f)| (n.as_str(), f.as_slice()))
        .collect();
    entries.push(("index.json", &index_json));
    let archive = archive_of(&entries, &[]);
    let work = tmp();
    let a = read_archive(&archive[..], work.path()).unwrap();
    assert_eq!(a.images.len(), 1);
    assert_eq!(a.images[0].tags, ["fan:out"]);
    assert_eq!(a.images[0].manifest_digest, Some(Digest::of(&manifest)));
}

#[test]
fn a_pax_size_beyond_what_a_tar_can_hold_is_corrupt() {
    // The reader skipped an entry's content plus padding as one u64 sum:
    // a PAX size of 2^64 - 1 on an entry whose content nobody reads (a
    // directory, an entry the archive reader ignores) overflowed it.
    use tar::EntryType::{Regular, XHeader};
    let tar = raw_tar(&[
        (b"pax", XHeader, b"", b"29 size=18446744073709551615\n"),
        (b"d/", Regular, b"", b""),
        (b"f", Regular, b"", b"x"),
    ]);
    let err = list_layer(&tar[..]).unwrap_err();
    assert!(matches!(err, LayerError::Corrupt { .. }), "{err:?}");
    let dest = tmp();
    let err = unpack_layer(&tar[..], dest.path(), &root_opts()).unwrap_err();
    assert!(matches!(err, LayerError::Corrupt { .. }), "{err:?}");
    let err = read_archive(&tar[..], dest.path()).unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err:?}");
}

/// A compressed layer whose content is not the diff ID its image names
/// (a hostile registry's image) gets no snapshot under that diff ID: it
/// would stand in for another image's layer. The true diff ID unpacks.
#[test]
fn a_compressed_layer_unpacks_only_as_its_true_diff_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tar = archive_of(&[("etc/motd", b"hola\n")], &[]);
    let mut gz = Vec::new();
    compress(&tar[..], &mut gz, Compression::Gzip).unwrap();
    let (digest, size) = store.put_blob(&gz).unwrap();
    let blob = Descriptor::new(media_type(Compression::Gzip), digest, size);

    let claimed = Digest::of(b"another image's layer");
    let lie = estiba::image::Layer {
        descriptor: blob.clone(),
        diff_id: claimed,
    };
    let err = estiba::image::snapshot(&store, &lie).expect_err("not its diff ID");
    assert!(format!("{err}").contains("corrupt"), "{err}");
    assert!(
        store.snapshot(&claimed).is_none(),
        "no snapshot under the claim"
    );

    let truth = estiba::image::Layer {
        descriptor: blob,
        diff_id: Digest::of(&tar),
    };
    let snapshot = estiba::image::snapshot(&store, &truth).unwrap();
    assert_eq!(
        fs::read(snapshot.join("etc/motd")).unwrap(),
        b"hola\n".to_vec()
    );
}

/// Makes `d/d/…/d/f` (`depth` directories, `f` holding `deep`) under
/// `root`, each level from its parent's descriptor: deeper than a path can
/// name.
fn deep_chain(root: &Path, depth: usize) {
    use rustix::fs::{mkdirat, open, openat, Mode, OFlags};
    let dir = OFlags::RDONLY | OFlags::DIRECTORY;
    let mut fd = open(root, dir, Mode::empty()).unwrap();
    for _ in 0..depth {
        mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        fd = openat(&fd, "d", dir, Mode::empty()).unwrap();
    }
    let file = openat(
        &fd,
        "f",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&file, b"deep").unwrap();
}

/// Runs `f` on a thread with a 256 KiB stack: a walk that recursed per
/// level would overflow it, and abort the test, long before 3,000 levels.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .expect("the walk panicked")
}

/// A step can leave a tree deeper than any thread's stack and longer than
/// any path (3,000 directories, a 6,000-byte path): a RUN step's upper dir
/// is still written as its layer, every level in order, with two
/// descriptors open at most (the walk goes back up through `..`).
#[test]
fn an_upper_dir_deeper_than_a_path_writes_its_layer() {
    const DEPTH: usize = 3000;
    let root = tmp();
    deep_chain(root.path(), DEPTH);
    // A sibling after the chain: the walk comes back up to the root.
    write(&root.path().join("e"), b"after");

    let dir = root.path().to_path_buf();
    let tar = on_small_stack(move || {
        estiba::layer::write_upper_layer(&dir, Vec::new(), &LayerOptions::default())
    })
    .unwrap();
    let entries = list_layer(&tar[..]).unwrap();
    assert_eq!(entries.len(), DEPTH + 2);
    let deepest = "d/".repeat(DEPTH) + "f";
    assert_eq!(entries[DEPTH].path, Path::new(&deepest));
    assert_eq!(entries[DEPTH].size, 4);
    assert_eq!(entries[DEPTH + 1].path, Path::new("e"));
    // GNU rm goes as deep as it must; std's removal may not.
    let removed = std::process::Command::new("rm")
        .arg("-rf")
        .arg(root.path().join("d"))
        .status()
        .unwrap();
    assert!(removed.success());
}

/// A whiteout removes a tree deeper than any stack and any path (a lower
/// layer's 3,000 directories) when layers are flattened, and what is
/// beside it stays.
#[test]
fn a_whiteout_removes_a_tree_deeper_than_a_path() {
    let dest = tmp();
    deep_chain(dest.path(), 3000);
    write(&dest.path().join("e"), b"kept");
    let layer = raw_tar(&[(b".wh.d", tar::EntryType::Regular, b"", b"")]);
    let dir = dest.path().to_path_buf();
    on_small_stack(move || unpack_layer(&layer[..], &dir, &root_opts())).unwrap();
    assert!(!dest.path().join("d").exists());
    assert_eq!(fs::read(dest.path().join("e")).unwrap(), b"kept");
}
