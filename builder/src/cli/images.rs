//! The store commands: images, inspect, tag, rmi, prune, import, load, save,
//! and the archive and rootfs exports `build -o` uses.

use super::args::{ArchiveFormat, ListFormat};
use super::Failure;
use anyhow::{anyhow, Context, Result};
use estiba::image::Layer;
use estiba::image::{self, History, ImageConfig, RootFs};
use estiba::registry::Reference;
use estiba::solve::Built;
use estiba_cache::{Descriptor, Store};
use std::path::Path;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `5 minutes ago`, as docker prints ages.
fn human_age(created: Option<i64>) -> String {
    let Some(t) = created else {
        return "N/A".to_string();
    };
    let secs = (now() - t).max(0);
    let (n, unit) = match secs {
        0..=59 => return "Less than a minute ago".to_string(),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        86_400..=2_591_999 => (secs / 86_400, "day"),
        2_592_000..=31_535_999 => (secs / 2_592_000, "month"),
        _ => (secs / 31_536_000, "year"),
    };
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

struct Listed {
    /// `None` for an image without a name (dangling).
    reference: Option<Reference>,
    id: String,
    created: Option<i64>,
    size: u64,
}

fn listed(store: &Store) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let named = store
        .tags()?
        .into_iter()
        .filter_map(|(name, desc)| Reference::parse(&name).ok().map(|r| (Some(r), desc)));
    let unnamed = store.unnamed()?.into_iter().map(|desc| (None, desc));
    for (reference, desc) in named.chain(unnamed) {
        let shown = reference
            .as_ref()
            .map_or_else(|| desc.digest.to_string(), Reference::familiar);
        let image = image::read(store, &shown, &desc)
            .map_err(|e| anyhow!(estiba::solve::error_chain(&e)))
            .with_context(|| format!("cannot read image {shown}"))?;
        out.push(Listed {
            reference,
            id: image.id().to_string(),
            created: image
                .config
                .created
                .as_deref()
                .and_then(image::parse_rfc3339),
            size: image.layers.iter().map(|l| l.descriptor.size).sum(),
        });
    }
    Ok(out)
}

/// `images --filter`: every filter of one key must hold for one of its
/// values (docker ORs the values of a key and ANDs the keys).
struct ImageFilter {
    dangling: Option<bool>,
    references: Vec<String>,
}

impl ImageFilter {
    fn parse(filters: &[String]) -> Result<Self, Failure> {
        let mut out = ImageFilter {
            dangling: None,
            references: Vec::new(),
        };
        for f in filters {
            match f.split_once('=') {
                Some(("dangling", v)) => {
                    out.dangling = Some(match v.to_ascii_lowercase().as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(Failure::Usage(format!(
                                "invalid filter {f:?}: dangling is true or false"
                            )))
                        }
                    })
                }
                Some(("reference", v)) => out.references.push(v.to_string()),
                _ => {
                    return Err(Failure::Usage(format!(
                        "invalid filter {f:?}: estiba images filters by dangling=true|false and reference=PATTERN"
                    )))
                }
            }
        }
        Ok(out)
    }

    fn keeps(&self, image: &Listed) -> bool {
        if let Some(dangling) = self.dangling {
            if image.reference.is_none() != dangling {
                return false;
            }
        }
        if self.references.is_empty() {
            return true;
        }
        let Some(r) = &image.reference else {
            return false;
        };
        let name = r.familiar_name();
        let full = r.familiar();
        self.references
            .iter()
            .any(|p| glob_matches(p, &name) || glob_matches(p, &full))
    }
}

/// Go's `path.Match` for the patterns `images --filter reference=` takes:
/// `*` is any run of characters but `/`, `?` one character but `/`, and
/// `[…]` a class (with `^` or `!` to negate, and ranges); anything else
/// matches itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p[0] == '['; returns (matched, length of the class).
        let mut i = 1;
        let negate = matches!(p.get(1), Some('^' | '!'));
        if negate {
            i += 1;
        }
        let mut matched = false;
        let start = i;
        while i < p.len() && (p[i] != ']' || i == start) {
            if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                matched |= p[i] <= c && c <= p[i + 2];
                i += 3;
            } else {
                matched |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((matched != negate, i + 1))
    }
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len())
                .take_while(|&k| k == 0 || t[k - 1] != '/')
                .any(|k| go(&p[1..], &t[k..])),
            Some('?') => t.first().is_some_and(|&c| c != '/') && go(&p[1..], &t[1..]),
            Some('[') => match (t.first(), class(p, t.first().copied().unwrap_or('/'))) {
                (Some(&c), Some((true, len))) if c != '/' => go(&p[len..], &t[1..]),
                (_, None) => t.first() == Some(&'[') && go(&p[1..], &t[1..]),
                _ => false,
            },
            Some(&c) => t.first() == Some(&c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

pub(crate) fn images(
    root: Option<&Path>,
    format: ListFormat,
    filters: &[String],
    quiet: bool,
) -> Result<(), Failure> {
    let filter = ImageFilter::parse(filters)?;
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let images: Vec<Listed> = listed(&store)?
        .into_iter()
        .filter(|i| filter.keeps(i))
        .collect();
    let none = || "<none>".to_string();
    if quiet {
        let mut seen = std::collections::BTreeSet::new();
        for i in &images {
            if seen.insert(&i.id) {
                println!("{}", short_id(&i.id));
            }
        }
        return Ok(());
    }
    match format {
        ListFormat::Json => {
            let rows: Vec<serde_json::Value> = images
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "Repository": i.reference.as_ref().map_or_else(none, Reference::familiar_name),
                        "Tag": i.reference.as_ref().and_then(|r| r.tag.clone()).unwrap_or_else(none),
                        "ID": i.id,
                        "CreatedAt": i.created.map(image::rfc3339),
                        "Size": i.size,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).context("cannot serialize")?
            );
        }
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|i| {
                    vec![
                        i.reference
                            .as_ref()
                            .map_or_else(none, Reference::familiar_name),
                        i.reference
                            .as_ref()
                            .and_then(|r| r.tag.clone())
                            .unwrap_or_else(none),
                        short_id(&i.id),
                        human_age(i.created),
                        estiba::progress::human_size(i.size),
                    ]
                })
                .collect();
            print_table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows);
        }
    }
    Ok(())
}

/// An image ID as docker shows it: 12 hex digits.
fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// Columns padded to their widest cell, three spaces apart, as docker's
/// tables are; the last column is not padded.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < widths.len() {
                s.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            } else {
                s.push_str(cell);
            }
        }
        s
    };
    println!("{}", line(&mut header.iter().copied()));
    for row in rows {
        println!("{}", line(&mut row.iter().map(String::as_str)));
    }
}

/// `estiba history IMAGE`: the config's history, newest first, each step
/// with its layer's size (0 B for steps that made none), as `docker
/// history` prints it.
pub(crate) fn history(
    root: Option<&Path>,
    name: &str,
    format: ListFormat,
    no_trunc: bool,
) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let (_, img) = find(&store, name)?;
    let mut layers = img.layers.iter();
    let mut rows: Vec<(String, Option<i64>, String, u64, String)> = Vec::new();
    for h in &img.config.history {
        let size = if h.empty_layer {
            0
        } else {
            layers.next().map_or(0, |l| l.descriptor.size)
        };
        rows.push((
            "<missing>".to_string(),
            h.created.as_deref().and_then(image::parse_rfc3339),
            h.created_by.clone(),
            size,
            h.comment.clone(),
        ));
    }
    rows.reverse();
    if let Some(top) = rows.first_mut() {
        top.0 = if no_trunc {
            img.id().to_string()
        } else {
            short_id(&img.id().to_string())
        };
    }
    match format {
        ListFormat::Json => {
            let json: Vec<serde_json::Value> = rows
                .iter()
                .map(|(id, created, by, size, comment)| {
                    serde_json::json!({
                        "ID": id,
                        "CreatedAt": created.map(image::rfc3339),
                        "CreatedBy": by,
                        "Size": size,
                        "Comment": comment,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json).context("cannot serialize")?
            );
        }
        ListFormat::Table => {
            const CUT: usize = 45;
            let table: Vec<Vec<String>> = rows
                .into_iter()
                .map(|(id, created, by, size, comment)| {
                    let by = by.replace('\n', " ");
                    let by = if !no_trunc && by.chars().count() > CUT {
                        format!("{}…", by.chars().take(CUT - 1).collect::<String>())
                    } else {
                        by
                    };
                    vec![
                        id,
                        human_age(created),
                        by,
                        estiba::progress::human_size(size),
                        comment,
                    ]
                })
                .collect();
            print_table(
                &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
                &table,
            );
        }
    }
    Ok(())
}

/// `estiba system df`: the store's parts and what each takes on disk.
pub(crate) fn system_df(root: Option<&Path>) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let images = listed(&store)?;
    let named = images.iter().filter(|i| i.reference.is_some()).count();
    let dangling = images.len() - named;
    let usage = store.usage()?;
    let size = estiba::progress::human_size;
    let part = |what: &str, p: estiba_cache::UsagePart| {
        vec![what.to_string(), p.count.to_string(), size(p.bytes)]
    };
    let rows = vec![
        vec![
            "Images".to_string(),
            images.len().to_string(),
            format!("{named} named, {dangling} dangling (estiba prune removes them)"),
        ],
        part("Blobs (layers, configs, manifests)", usage.blobs),
        part("Snapshots (unpacked layers)", usage.snapshots),
        part("Build cache records", usage.cache_records),
        part("Cache mounts", usage.mount_caches),
        part("Stat caches", usage.stat_caches),
        part("Scratch", usage.scratch),
        vec!["Total".to_string(), String::new(), size(usage.total)],
    ];
    println!("store: {}", store.root().display());
    print_table(&["WHAT", "COUNT", "SIZE"], &rows);
    Ok(())
}

pub(crate) fn inspect(root: Option<&Path>, name: &str) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let (reference, img) = find(&store, name)?;
    let (desc, config, layers) = (&img.descriptor, &img.config, &img.layers);
    let tags: Vec<String> = store
        .tags()?
        .into_iter()
        .filter(|(_, d)| d.digest == desc.digest)
        .filter_map(|(n, _)| Reference::parse(&n).ok().map(|r| r.familiar()))
        .collect();
    let out = serde_json::json!([{
        "Id": img.id().to_string(),
        "RepoTags": tags,
        "Name": reference.map_or_else(|| name.to_string(), |r| r.familiar()),
        "ManifestDigest": desc.digest.to_string(),
        "Created": config.created,
        "Author": config.author,
        "Architecture": config.architecture,
        "Os": config.os,
        "Config": config.config,
        "Size": layers.iter().map(|l| l.descriptor.size).sum::<u64>(),
        "RootFS": { "Type": "layers", "Layers": config.rootfs.diff_ids },
        "History": config.history,
    }]);
    println!(
        "{}",
        serde_json::to_string_pretty(&out).context("cannot serialize")?
    );
    Ok(())
}

pub(crate) fn tag(root: Option<&Path>, source: &str, target: &str) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let dst = Reference::parse(target).map_err(|e| Failure::Usage(e.to_string()))?;
    let (_, img) = find(&store, source)?;
    store.set_tag(&dst.to_string(), &img.descriptor)?;
    Ok(())
}

pub(crate) fn rmi(root: Option<&Path>, names: &[String]) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let mut missing = Vec::new();
    for name in names {
        let img = match image::find(&store, name) {
            Ok((_, img)) => img,
            Err(image::ImageError::NotFound(_)) => {
                missing.push(name.clone());
                continue;
            }
            Err(e) => return Err(failure(e)),
        };
        // A name removes that tag; an ID removes the image with every tag
        // of it, as `docker rmi ID` does when one repository holds them.
        if let Ok(r) = Reference::parse(name) {
            if store.remove_tag(&r.to_string())? {
                println!("Untagged: {}", r.familiar());
                continue;
            }
        }
        for (t, _) in store
            .tags()?
            .into_iter()
            .filter(|(_, d)| d.digest == img.descriptor.digest)
        {
            let shown = Reference::parse(&t).map_or(t.clone(), |r| r.familiar());
            println!("Untagged: {shown}");
        }
        store.remove_image(&img.descriptor.digest)?;
        println!("Deleted: {}", img.id());
    }
    if !missing.is_empty() {
        return Err(anyhow!("no such image: {}", missing.join(", ")).into());
    }
    Ok(())
}

pub(crate) fn prune(root: Option<&Path>, all: bool) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let _lock = store.lock_exclusive().context("cannot lock the store")?;
    // Images without a name go first, as `docker image prune` removes
    // dangling images; then what nothing references.
    let dangling = store.remove_unnamed()?;
    for manifest in &dangling {
        println!("Deleted image (manifest): {}", manifest.digest);
    }
    let report = store.prune(all)?;
    println!(
        "Deleted {} dangling images, {} blobs, {} cache records, {} snapshots",
        dangling.len(),
        report.blobs_removed,
        report.cache_records_removed,
        report.snapshots_removed
    );
    println!(
        "Total reclaimed space: {}",
        estiba::progress::human_size(report.bytes_freed)
    );
    Ok(())
}

/// `estiba import FILE NAME`: the tarball (decompressed) becomes the one
/// layer of a new image, as `docker import` does. Its creation time is
/// `SOURCE_DATE_EPOCH` when set, so one tar imported twice is one image.
pub(crate) fn import(root: Option<&Path>, file: &Path, name: &str) -> Result<(), Failure> {
    let reference = Reference::parse(name).map_err(|e| Failure::Usage(e.to_string()))?;
    let created = super::build::source_date_epoch()?.unwrap_or_else(now);
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let reader = estiba::compress::decompressing_reader(std::io::BufReader::new(input))
        .with_context(|| format!("cannot read {}", file.display()))?;
    // Check it is a tar while storing it: list its entries from a tee.
    let mut blob = store.blob_writer()?;
    let mut tee = TeeReader {
        inner: reader,
        out: &mut blob,
    };
    estiba::layer::list_layer(&mut tee)
        .with_context(|| format!("{} is not a valid tar archive", file.display()))?;
    std::io::copy(&mut tee.inner, tee.out)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let (digest, size) = blob.commit()?;
    let platform = estiba_frontend::Platform::host();
    let config = ImageConfig {
        architecture: platform.architecture,
        os: platform.os,
        created: Some(image::rfc3339(created)),
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: vec![digest.to_string()],
        },
        history: vec![History {
            created: Some(image::rfc3339(created)),
            created_by: String::new(),
            comment: format!("Imported from {}", file.display()),
            empty_layer: false,
        }],
        ..ImageConfig::default()
    };
    let built = Built {
        config,
        layers: vec![Layer::uncompressed(digest, size)],
        key: String::new(),
    };
    let manifest = image::store_image(&store, &built.config, &built.layers)
        .map_err(|e| anyhow!(estiba::solve::error_chain(&e)))?;
    store.set_tag(&reference.to_string(), &manifest)?;
    let id = estiba_cache::Digest::of(&serde_json::to_vec(&built.config).context("serialize")?);
    println!("{id}");
    Ok(())
}

/// Copies what it reads into `out` too.
struct TeeReader<'a, R: std::io::Read, W: std::io::Write> {
    inner: R,
    out: &'a mut W,
}

impl<R: std::io::Read, W: std::io::Write> std::io::Read for TeeReader<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// `-o type=local,dest=DIR`: the image's root filesystem, layers applied.
/// Device nodes are made only with `devices` (an image's `c 1 11` would
/// otherwise be a door to the host's kernel log); a warning says how many
/// were skipped, and another names the setuid and setgid files written.
pub(crate) fn export_rootfs(
    store: &Store,
    built: &Built,
    dest: &Path,
    devices: bool,
    reporter: &dyn estiba::progress::Reporter,
) -> Result<(), Failure> {
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut opts = estiba::layer::UnpackOptions {
        devices,
        ..estiba::layer::UnpackOptions::default()
    };
    // Rootless, the image's owners would be subordinate ids on the host,
    // files the user could not remove: the tree is the user's, as a
    // rootless `docker export` of it would be.
    if estiba::rootless::entered().is_some() {
        opts.same_owner = false;
    }
    let mut devices_skipped = 0;
    let mut setid = std::collections::BTreeSet::new();
    for layer in &built.layers {
        let blob = store.open_blob(&layer.descriptor.digest)?;
        let reader = estiba::compress::decompressing_reader(std::io::BufReader::new(blob))
            .context("cannot read a layer")?;
        let stats = estiba::layer::unpack_layer(reader, dest, &opts)
            .with_context(|| format!("cannot write the root filesystem to {}", dest.display()))?;
        devices_skipped += stats.devices_skipped;
        setid.extend(stats.setid_files);
    }
    if devices_skipped > 0 {
        reporter.warning(&format!(
            "{devices_skipped} device node(s) of the image not written to {}: \
             add devices=true to --output to write them",
            dest.display()
        ));
    }
    // What later layers left setuid or setgid.
    use std::os::unix::fs::PermissionsExt;
    let setid: Vec<_> = setid
        .into_iter()
        .filter(|rel| {
            std::fs::symlink_metadata(dest.join(rel))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o6000 != 0)
        })
        .collect();
    if !setid.is_empty() {
        const NAMED: usize = 5;
        let mut names: Vec<String> = setid
            .iter()
            .take(NAMED)
            .map(|p| format!("/{}", p.display()))
            .collect();
        if setid.len() > NAMED {
            names.push(format!("and {} more", setid.len() - NAMED));
        }
        reporter.warning(&format!(
            "{} setuid/setgid file(s) written to {}: {}",
            setid.len(),
            dest.display(),
            names.join(", ")
        ));
    }
    Ok(())
}

/// `-o type=tar`: the root filesystem as one tar, to `dest` or standard
/// output (`-`), entries in path order as a layer's are. It is unpacked
/// in the store's scratch space first, so later layers' whiteouts and
/// replacements are applied exactly as `type=local` applies them.
pub(crate) fn export_rootfs_tar(
    store: &Store,
    built: &Built,
    dest: &Path,
    devices: bool,
    reporter: &dyn estiba::progress::Reporter,
) -> Result<(), Failure> {
    let scratch = store.temp_dir("rootfs-tar")?;
    let tree = scratch.path().join("rootfs");
    export_rootfs(store, built, &tree, devices, reporter)?;
    let opts = estiba::layer::LayerOptions::default();
    let out: Box<dyn std::io::Write> = if dest == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(dest)
                .with_context(|| format!("cannot create {}", dest.display()))?,
        )
    };
    let mut out = std::io::BufWriter::new(out);
    let written = estiba::layer::write_layer(&tree, &mut out, &opts)
        .map(drop)
        .map_err(anyhow::Error::from)
        .and_then(|()| std::io::Write::flush(&mut out).map_err(anyhow::Error::from));
    written.with_context(|| format!("cannot write the root filesystem to {}", dest.display()))?;
    Ok(())
}

pub(crate) fn save(
    root: Option<&Path>,
    output: &Path,
    format: ArchiveFormat,
    names: &[String],
) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let mut images = Vec::new();
    for name in names {
        // Saved by ID, an image carries no name, as with `docker save ID`.
        let (reference, img) = find(&store, name)?;
        let tags = reference.map(|r| r.to_string()).into_iter().collect();
        images.push((tags, img.descriptor));
    }
    write_archive(
        &store,
        &images,
        output,
        format == ArchiveFormat::Oci,
        estiba::compress::Codec::default_for(estiba::compress::Compression::Gzip),
    )
}

/// Writes images from the store to an archive at `dest` (a temp file
/// renamed into place, so a failure leaves no half archive). An OCI archive
/// gets each layer compressed with `compression`, as the store kept it from an
/// earlier export or push, else compressed now and kept; a docker archive
/// gets them uncompressed.
pub(crate) fn write_archive(
    store: &Store,
    images: &[(Vec<String>, Descriptor)],
    dest: &Path,
    oci: bool,
    compression: estiba::compress::Codec,
) -> Result<(), Failure> {
    let mut export = Vec::with_capacity(images.len());
    let mut blobs = StoreBlobs {
        store,
        codec: compression,
        to_make: std::collections::HashSet::new(),
    };
    for (tags, desc) in images {
        let img = image::read(store, &desc.digest.to_string(), desc)
            .map_err(|e| anyhow!(estiba::solve::error_chain(&e)))?;
        let manifest_bytes = store.read_blob(&desc.digest)?;
        let config = store.read_blob(&img.manifest.config.digest)?;
        let layers = if oci {
            img.layers
                .iter()
                .map(|l| blobs.layer_blob(l))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("cannot write {}", dest.display()))?
        } else {
            img.manifest.layers
        };
        export.push(estiba::archive::ExportImage {
            tags: tags
                .iter()
                .filter_map(|t| Reference::parse(t).ok().map(|r| r.familiar()))
                .collect(),
            manifest: Some(manifest_bytes),
            config,
            layers,
        });
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp_out = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    // Past the page cache, as the store writes blobs: hundreds of
    // megabytes another program reads later, if at all on this machine.
    // The archive's chunks are written in the background: an export writes
    // each layer's compressed bytes to its kept blob and to the archive,
    // and waiting for one write after the other left the disk idle half
    // of the time.
    let mut out = estiba_cache::DirectWriter::to_file(tmp_out.as_file()).in_background();
    if oci {
        estiba::archive::write_oci_archive(&export, &mut blobs, &mut out)
            .with_context(|| format!("cannot write {}", dest.display()))?;
    } else {
        let scratch = store.temp_dir("save")?;
        estiba::archive::write_docker_archive(&export, &mut blobs, &mut out, scratch.path())
            .with_context(|| format!("cannot write {}", dest.display()))?;
    }
    out.finish_file()
        .with_context(|| format!("cannot write {}", dest.display()))?;
    // Not synced to disk before the rename, as docker save, buildx's
    // `-o type=oci` and tar do not: the archive is made again from the
    // store, which keeps its own blobs synced. Waiting for the disk took
    // 0.4 s of a 1 s export of 500 MiB here.
    // A temp file is 0600; an archive is shared like any file docker writes.
    use std::os::unix::fs::PermissionsExt;
    tmp_out
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot write {}", dest.display()))?;
    tmp_out
        .persist(dest)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(())
}

/// The store as an archive's [`BlobSource`](estiba::archive::BlobSource):
/// blobs read as they are stored, and layers an OCI archive wants
/// compressed and the store holds only uncompressed made in the same pass
/// that writes them into the archive (compressed, written into the store
/// and kept, and into the archive, from one read of the layer).
struct StoreBlobs<'a> {
    store: &'a Store,
    codec: estiba::compress::Codec,
    /// Layers (by their stored blob) compressed as the archive is written.
    to_make: std::collections::HashSet<estiba_cache::Digest>,
}

/// The largest stored layer compressed as the archive is written: its
/// compressed form stays under the 8 GiB a one-block tar header can say.
const MADE_IN_PASSING_MAX: u64 = 4 << 30;

impl StoreBlobs<'_> {
    /// The blob an OCI archive lists for `layer`: the one kept compressed
    /// (or the layer itself when stored compressed as asked), else the
    /// layer itself, to be compressed as it is written (up to
    /// [`MADE_IN_PASSING_MAX`]; a bigger one, or one stored in another
    /// compression, is compressed and kept first).
    fn layer_blob(&mut self, layer: &Layer) -> Result<Descriptor, image::CompressedError> {
        if let Some(kept) =
            image::kept_layer(self.store, &layer.descriptor, &layer.diff_id, self.codec)?
        {
            return Ok(kept);
        }
        let stored = estiba::compress::Compression::from_media_type(&layer.descriptor.media_type);
        if stored == Some(estiba::compress::Compression::None)
            && layer.descriptor.size <= MADE_IN_PASSING_MAX
        {
            self.to_make.insert(layer.descriptor.digest);
            return Ok(layer.descriptor.clone());
        }
        // Nothing kept (asked above): compressed now.
        image::compress_layer(
            self.store,
            &layer.descriptor,
            &layer.diff_id,
            self.codec,
            &mut std::io::sink(),
        )
    }
}

impl estiba::archive::BlobSource for StoreBlobs<'_> {
    fn open_blob(
        &mut self,
        digest: &estiba_cache::Digest,
    ) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        let f = self
            .store
            .open_blob_stream_chunked(digest, estiba_cache::LARGE_CHUNK)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Box::new(f))
    }

    fn makes_blob(&self, layer: &Descriptor) -> bool {
        self.to_make.contains(&layer.digest)
    }

    fn make_blob(
        &mut self,
        layer: &Descriptor,
        diff_id: &estiba_cache::Digest,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<Descriptor> {
        image::compress_layer_with(
            self.store,
            layer,
            diff_id,
            self.codec,
            out,
            image::BlobWrites::Background,
        )
        .map_err(|e| std::io::Error::other(estiba::solve::error_chain(&e)))
    }
}

/// `estiba load -i FILE`: every image of a docker or OCI archive into the
/// store, layers stored uncompressed and checked against the config's diff
/// IDs, configs byte for byte (so image IDs stay what they were).
pub(crate) fn load(root: Option<&Path>, input: &Path) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let scratch = store.temp_dir("load")?;
    let reader: Box<dyn std::io::Read> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input)
                .with_context(|| format!("cannot open {}", input.display()))?,
        ))
    };
    let archive = estiba::archive::read_archive(reader, scratch.path())
        .with_context(|| format!("cannot load {}", input.display()))?;
    // Every name is checked before anything is stored: a refused archive
    // leaves no blob behind that nothing refers to.
    let mut names = Vec::with_capacity(archive.images.len());
    for img in &archive.images {
        let refs = img
            .tags
            .iter()
            .map(|tag| {
                Reference::parse(tag).with_context(|| {
                    format!(
                        "cannot load {}: invalid image name {tag:?}",
                        input.display()
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        names.push(refs);
    }
    for (img, refs) in archive.images.iter().zip(&names) {
        let mut layers = Vec::with_capacity(img.layers.len());
        for l in &img.layers {
            let mut blob = store.blob_writer()?;
            let mut tar = l
                .open_tar()
                .with_context(|| format!("cannot read {}", l.entry))?;
            std::io::copy(&mut tar, &mut blob)
                .with_context(|| format!("cannot read {}", l.entry))?;
            let (digest, size) = blob
                .commit_expect(&l.diff_id)
                .with_context(|| format!("layer {} does not match its diff id", l.entry))?;
            layers.push(Layer::uncompressed(digest, size).descriptor);
        }
        let desc = image::store_manifest(&store, &img.config, layers)
            .map_err(|e| anyhow!(estiba::solve::error_chain(&e)))?;
        if img.tags.is_empty() {
            println!("Loaded image ID: {}", img.config_digest);
        }
        for r in refs {
            store.set_tag(&r.to_string(), &desc)?;
            println!("Loaded image: {}", r.familiar());
        }
    }
    Ok(())
}

/// The image `name` (a name, or an image ID or a prefix of one) in the
/// store, and the tag it was found by.
pub(crate) fn find(
    store: &Store,
    name: &str,
) -> Result<(Option<Reference>, image::Image), Failure> {
    image::find(store, name).map_err(failure)
}

/// An image layer error as the CLI reports it: a bad name is a usage error.
fn failure(e: image::ImageError) -> Failure {
    match e {
        image::ImageError::Reference(e) => Failure::Usage(e.to_string()),
        e => Failure::Other(anyhow::Error::new(e)),
    }
}
