//! The store end to end on a real file system: layout, blobs, tags (with
//! concurrent taggers, threads and processes), the step cache, snapshots,
//! locking and garbage collection.

use estiba_cache::{
    media_type, remove_dir_all_force, CacheRecord, Codec, Compression, Descriptor, Digest,
    PruneOptions, Store, StoreError, REF_NAME_ANNOTATION,
};
use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("store")).expect("open store");
    (dir, store)
}

fn tmp_entries(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.root().join("estiba/tmp"))
        .expect("read tmp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn blob_count(store: &Store) -> usize {
    fs::read_dir(store.root().join("blobs/sha256"))
        .expect("read blobs")
        .count()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).expect("read json file")).expect("valid json")
}

fn desc(media_type: &str, (digest, size): (Digest, u64)) -> Descriptor {
    Descriptor::new(media_type, digest, size)
}

fn put_json(store: &Store, v: &Value) -> (Digest, u64) {
    store
        .put_blob(&serde_json::to_vec(v).expect("encode"))
        .expect("put json blob")
}

/// An image in the store: its manifest descriptor, config, layers, diff ids.
struct Image {
    manifest: Descriptor,
    config: Digest,
    layers: Vec<Digest>,
    diff_ids: Vec<Digest>,
}

fn make_image(store: &Store, seed: &str, docker: bool) -> Image {
    let (layer_mt, config_mt, manifest_mt) = if docker {
        (
            media_type::DOCKER_LAYER_GZIP,
            media_type::DOCKER_CONFIG,
            media_type::DOCKER_MANIFEST,
        )
    } else {
        (
            media_type::OCI_LAYER_GZIP,
            media_type::OCI_CONFIG,
            media_type::OCI_MANIFEST,
        )
    };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..2 {
        let (d, size) = store
            .put_blob(format!("{seed} layer {i}").as_bytes())
            .expect("put layer");
        layers.push(desc(layer_mt, (d, size)));
        diff_ids.push(Digest::of(format!("{seed} diff {i}").as_bytes()));
    }
    let config = put_json(
        store,
        &json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": [format!("SEED={seed}")]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        }),
    );
    let manifest = put_json(
        store,
        &json!({
            "schemaVersion": 2,
            "mediaType": manifest_mt,
            "config": desc(config_mt, config),
            "layers": layers,
        }),
    );
    Image {
        manifest: desc(manifest_mt, manifest),
        config: config.0,
        layers: layers.iter().map(|l| l.digest).collect(),
        diff_ids,
    }
}

fn make_snapshot(store: &Store, diff_id: &Digest) -> std::path::PathBuf {
    let b = store.snapshot_builder(diff_id).expect("builder");
    fs::write(b.path().join("file"), diff_id.to_string()).expect("write into snapshot");
    b.commit().expect("commit snapshot")
}

#[test]
fn layout_is_created_and_valid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("a/b/store");
    let store = Store::open(&root).expect("open creates the layout");
    assert_eq!(
        read_json(&root.join("oci-layout")),
        json!({"imageLayoutVersion": "1.0.0"})
    );
    assert_eq!(
        read_json(&root.join("index.json")),
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [],
        })
    );
    for d in [
        "blobs/sha256",
        "estiba/cache-v1",
        "estiba/snapshots-v1",
        "estiba/tmp",
    ] {
        assert!(root.join(d).is_dir(), "{d}");
    }
    let tag = fs::read_to_string(root.join("CACHEDIR.TAG")).expect("CACHEDIR.TAG");
    assert!(tag.starts_with("Signature: 8a477f597d28d172789f06886806bc55"));
    assert_eq!(store.root(), fs::canonicalize(&root).expect("canonical"));

    // Opening again changes nothing and keeps tags.
    let (d, size) = store.put_blob(b"{}").expect("put");
    store
        .set_tag("x", &desc(media_type::OCI_MANIFEST, (d, size)))
        .expect("tag");
    let again = Store::open(&root).expect("reopen");
    assert!(again.tag("x").expect("read tag").is_some());
    assert!(tmp_entries(&again).is_empty());
}

/// The permission bits of `path` beyond `allowed`.
fn mode_beyond(path: &Path, allowed: u32) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777 & !allowed
}

/// The scratch directory asks ext4 to place each tree made in it apart
/// from the last ones (`TOPDIR`, as `chattr +T`), so a build after the last
/// one's trees were deleted does not allocate its inodes among theirs. On
/// another file system the store opens all the same.
#[test]
fn scratch_trees_are_placed_apart_on_ext4() {
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    let (dir, store) = new_store();
    let tmp = fs::File::open(store.root().join("estiba/tmp")).expect("open tmp");
    let kind = rustix::fs::fstatfs(&tmp).expect("statfs").f_type as i64;
    let flags = rustix::fs::ioctl_getflags(&tmp);
    if kind == EXT4_SUPER_MAGIC {
        assert!(
            flags
                .expect("ext4 has inode flags")
                .contains(rustix::fs::IFlags::TOPDIR),
            "estiba/tmp lacks the TOPDIR flag"
        );
    }
    // Set already: opening again keeps it and does not fail.
    drop(store);
    let again = Store::open(&dir.path().join("store")).expect("reopen");
    if kind == EXT4_SUPER_MAGIC {
        let tmp = fs::File::open(again.root().join("estiba/tmp")).expect("open tmp");
        let flags = rustix::fs::ioctl_getflags(&tmp).expect("flags");
        assert!(flags.contains(rustix::fs::IFlags::TOPDIR));
    }
}

/// Snapshots hold images' setuid files and device nodes: like
/// `/var/lib/docker`, the root lets only its owner (and its group, through)
/// in, and the directories below are the owner's alone. A store an older
/// estiba made 0755 is tightened when opened; a stricter mode is kept.
#[test]
fn the_store_is_private_to_its_owner_and_older_stores_are_tightened() {
    const PRIVATE: [&str; 6] = [
        "blobs",
        "blobs/sha256",
        "estiba",
        "estiba/cache-v1",
        "estiba/snapshots-v1",
        "estiba/tmp",
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("store");
    let check = |root: &Path| {
        assert_eq!(mode_beyond(root, 0o710), 0, "the store root");
        for d in PRIVATE {
            assert_eq!(mode_beyond(&root.join(d), 0o700), 0, "{d}");
        }
    };
    Store::open(&root).expect("open creates the layout");
    check(&root);
    // What an older estiba left: everything 0755.
    for d in PRIVATE.iter().map(|d| root.join(d)).chain([root.clone()]) {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    Store::open(&root).expect("reopen");
    check(&root);
    assert_eq!(
        fs::metadata(&root).expect("stat").permissions().mode() & 0o7777,
        0o710
    );
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).expect("chmod");
    Store::open(&root).expect("reopen");
    assert_eq!(
        fs::metadata(&root).expect("stat").permissions().mode() & 0o7777,
        0o700,
        "a stricter mode stays"
    );
}

#[test]
fn refuses_another_layout_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .expect("write layout");
    let err = Store::open(dir.path()).expect_err("other version refused");
    assert!(matches!(err, StoreError::LayoutVersion { ref version, .. } if version == "2.0.0"));
    assert_eq!(
        err.to_string(),
        format!(
            "not an estiba store: {}: oci-layout version 2.0.0",
            fs::canonicalize(dir.path()).expect("canonical").display()
        )
    );
    // Nothing of ours was created in the foreign directory.
    assert!(!dir.path().join("estiba").exists());
    assert!(!dir.path().join("index.json").exists());
}

#[test]
fn blob_round_trip() {
    let (_dir, store) = new_store();
    let mut w = store.blob_writer().expect("writer");
    let mut expected = Vec::new();
    for i in 0..1000u32 {
        let chunk = format!("chunk {i}\n");
        w.write_all(chunk.as_bytes()).expect("write");
        expected.extend_from_slice(chunk.as_bytes());
    }
    assert_eq!(w.size(), expected.len() as u64);
    let (digest, size) = w.commit().expect("commit");
    assert_eq!(digest, Digest::of(&expected));
    assert_eq!(size, expected.len() as u64);
    assert!(store.has_blob(&digest));
    assert_eq!(
        store.blob_path(&digest),
        store.root().join("blobs/sha256").join(digest.hex())
    );
    assert_eq!(store.read_blob(&digest).expect("read"), expected);
    let mut from_file = Vec::new();
    std::io::Read::read_to_end(&mut store.open_blob(&digest).expect("open"), &mut from_file)
        .expect("read file");
    assert_eq!(from_file, expected);
    store.verify_blob(&digest).expect("verifies");
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn large_blob_streams_through() {
    let (_dir, store) = new_store();
    let mut w = store.blob_writer().expect("writer");
    let chunk: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let mut hasher = estiba_cache::Hasher::new();
    for _ in 0..6 {
        w.write_all(&chunk).expect("write");
        hasher.update(&chunk);
    }
    let (digest, size) = w.commit().expect("commit");
    assert_eq!(size, 6 << 20);
    assert_eq!(digest, hasher.finish());
    store.verify_blob(&digest).expect("verifies");
}

/// Blobs bypass the page cache in whole aligned chunks and write the tail
/// buffered: every size around a block or chunk edge, written in uneven
/// pieces, must read back byte for byte under the right digest. Run on the
/// disk's file system and on tmpfs (/dev/shm), which may refuse O_DIRECT.
#[test]
fn blobs_of_every_edge_size_read_back_exactly() {
    let mut places = vec![tempfile::tempdir().expect("temp dir")];
    if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
        places.push(shm);
    }
    const CHUNK: usize = 1 << 20;
    let sizes = [
        0,
        1,
        511,
        4095,
        4096,
        4097,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        3 * CHUNK + 4096 + 17,
    ];
    for place in &places {
        let store = Store::open(&place.path().join("store")).expect("open store");
        for size in sizes {
            let content: Vec<u8> = (0..size).map(|i| (i * 31 % 253) as u8).collect();
            let mut w = store.blob_writer().expect("writer");
            // Pieces of 1, 2, 3... 999 bytes, then again: never aligned.
            let mut at = 0;
            let mut piece = 1;
            while at < size {
                let end = (at + piece).min(size);
                w.write_all(&content[at..end]).expect("write");
                at = end;
                piece = piece % 999 + 1;
            }
            let (digest, written) = w.commit().expect("commit");
            assert_eq!(written, size as u64, "size {size}");
            assert_eq!(digest, Digest::of(&content), "size {size}");
            assert_eq!(
                store.read_blob(&digest).expect("read"),
                content,
                "size {size} in {}",
                place.path().display()
            );
            store.verify_blob(&digest).expect("verifies");
        }
        assert!(tmp_entries(&store).is_empty());
    }
}

#[test]
fn same_blob_twice_is_stored_once() {
    let (_dir, store) = new_store();
    let a = store.put_blob(b"hello").expect("first");
    let b = store.put_blob(b"hello").expect("second");
    assert_eq!(a, b);
    let mut w = store.blob_writer().expect("writer");
    w.write_all(b"hello").expect("write");
    assert_eq!(w.commit().expect("third"), a);
    assert_eq!(blob_count(&store), 1);
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn dropped_writer_leaves_no_temp() {
    let (_dir, store) = new_store();
    let mut w = store.blob_writer().expect("writer");
    w.write_all(&[7u8; 300_000]).expect("write");
    assert_eq!(tmp_entries(&store).len(), 1);
    drop(w);
    assert!(tmp_entries(&store).is_empty());
    assert_eq!(blob_count(&store), 0);
}

#[test]
fn commit_expect_mismatch_errors_and_leaves_nothing() {
    let (_dir, store) = new_store();
    let wrong = Digest::of(b"something else");
    let mut w = store.blob_writer().expect("writer");
    w.write_all(b"actual content").expect("write");
    let err = w.commit_expect(&wrong).expect_err("mismatch");
    match err {
        StoreError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, Digest::of(b"actual content"));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(blob_count(&store), 0);
    assert!(tmp_entries(&store).is_empty());

    let mut w = store.blob_writer().expect("writer");
    w.write_all(b"actual content").expect("write");
    let right = Digest::of(b"actual content");
    assert_eq!(w.commit_expect(&right).expect("matches"), (right, 14));
}

#[test]
fn corrupted_blob_is_detected() {
    let (_dir, store) = new_store();
    let (digest, _) = store.put_blob(b"{\"good\":true}").expect("put");
    let path = store.blob_path(&digest);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(&path, b"{\"good\":false}").expect("corrupt it");
    let err = store.verify_blob(&digest).expect_err("corruption detected");
    assert_eq!(
        err.to_string(),
        format!(
            "corrupt blob {digest}: content hashes to {}",
            Digest::of(b"{\"good\":false}")
        )
    );
    assert!(matches!(
        store.read_blob(&digest),
        Err(StoreError::CorruptBlob { .. })
    ));
    let missing = Digest::of(b"never stored");
    assert!(!store.has_blob(&missing));
    assert!(matches!(
        store.verify_blob(&missing),
        Err(StoreError::MissingBlob { digest }) if digest == missing
    ));
    assert!(matches!(
        store.open_blob(&missing),
        Err(StoreError::MissingBlob { .. })
    ));
}

#[test]
fn tags_set_replace_remove_and_keep_other_entries() {
    let (_dir, store) = new_store();
    // An index another tool wrote: an untagged entry with a field we do not
    // model, and an index-level annotation.
    let foreign = json!({
        "mediaType": media_type::OCI_MANIFEST,
        "digest": Digest::of(b"foreign").to_string(),
        "size": 7,
        "urls": ["https://example.invalid/x"],
    });
    fs::write(
        store.root().join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [foreign.clone()],
            "annotations": {"made.by": "someone"},
        }))
        .expect("encode"),
    )
    .expect("write index");

    let one = desc(
        media_type::OCI_MANIFEST,
        store.put_blob(b"one").expect("put"),
    );
    let two = desc(
        media_type::DOCKER_MANIFEST,
        store.put_blob(b"two").expect("put"),
    );
    store
        .set_tag("docker.io/library/busybox:latest", &one)
        .expect("tag");
    store.set_tag("mi-aplicacion", &two).expect("tag");
    assert_eq!(
        store.tag("docker.io/library/busybox:latest").expect("read"),
        Some(one.clone())
    );
    assert_eq!(store.tag("nope").expect("read"), None);

    // Replace: one entry for the name, pointing at the new manifest.
    store
        .set_tag("docker.io/library/busybox:latest", &two)
        .expect("retag");
    assert_eq!(
        store.tags().expect("tags"),
        vec![
            ("docker.io/library/busybox:latest".to_string(), two.clone()),
            ("mi-aplicacion".to_string(), two.clone()),
        ]
    );
    let index = read_json(&store.root().join("index.json"));
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 4);
    assert_eq!(manifests[0], foreign, "foreign entry kept verbatim");
    assert_eq!(index["annotations"], json!({"made.by": "someone"}));
    // The image the name left is kept without a name (docker's dangling
    // image); the foreign entry without a name is not one of those.
    assert_eq!(store.unnamed().expect("unnamed"), vec![one.clone()]);
    // Named again: no longer dangling.
    store.set_tag("again", &one).expect("tag");
    assert_eq!(store.unnamed().expect("unnamed"), vec![]);
    assert!(store.remove_tag("again").expect("rm"));
    assert_eq!(store.unnamed().expect("unnamed"), vec![], "rmi deletes it");
    store.add_unnamed(&one).expect("add");
    store.add_unnamed(&one).expect("add twice");
    store
        .add_unnamed(&two)
        .expect("named already: nothing to add");
    assert_eq!(store.unnamed().expect("unnamed"), vec![one.clone()]);
    assert_eq!(store.remove_unnamed().expect("prune"), vec![one.clone()]);
    assert_eq!(store.unnamed().expect("unnamed"), vec![]);
    let index = read_json(&store.root().join("index.json"));
    assert_eq!(
        index["manifests"][0], foreign,
        "prune leaves foreign entries"
    );
    store.set_tag("three", &two).expect("tag");
    assert_eq!(
        store.remove_image(&two.digest).expect("rm image"),
        3,
        "every name of the image"
    );
    store.set_tag("mi-aplicacion", &two).expect("tag back");
    store
        .set_tag("docker.io/library/busybox:latest", &two)
        .expect("tag back");

    assert!(store
        .remove_tag("docker.io/library/busybox:latest")
        .expect("rm"));
    assert!(!store
        .remove_tag("docker.io/library/busybox:latest")
        .expect("rm again"));
    assert_eq!(
        store.tags().expect("tags"),
        vec![("mi-aplicacion".to_string(), two)]
    );
    let index = read_json(&store.root().join("index.json"));
    assert_eq!(index["manifests"][0], foreign);

    assert!(matches!(
        store.set_tag("", &one),
        Err(StoreError::InvalidTagName(_))
    ));
    assert!(matches!(
        store.set_tag("a\nb", &one),
        Err(StoreError::InvalidTagName(_))
    ));
}

#[test]
fn index_json_is_a_valid_oci_index_with_ref_names() {
    let (_dir, store) = new_store();
    let image = make_image(&store, "a", false);
    let mut with_platform = image.manifest.clone();
    with_platform.platform = Some(estiba_cache::oci::Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    });
    store.set_tag("localhost/a:1", &with_platform).expect("tag");
    store.set_tag("b", &image.manifest).expect("tag");

    let index = read_json(&store.root().join("index.json"));
    assert_eq!(index["schemaVersion"], json!(2));
    assert_eq!(index["mediaType"], json!(media_type::OCI_INDEX));
    let manifests = index["manifests"].as_array().expect("manifests array");
    let mut names = Vec::new();
    for m in manifests {
        let obj = m.as_object().expect("descriptor object");
        for key in obj.keys() {
            assert!(
                ["mediaType", "digest", "size", "annotations", "platform"].contains(&key.as_str()),
                "unexpected descriptor field {key}"
            );
        }
        assert_eq!(m["mediaType"], json!(media_type::OCI_MANIFEST));
        let digest: Digest = m["digest"]
            .as_str()
            .expect("digest string")
            .parse()
            .expect("sha256 digest");
        assert!(store.has_blob(&digest), "manifest blob present");
        assert_eq!(
            m["size"].as_u64(),
            Some(fs::metadata(store.blob_path(&digest)).expect("stat").len())
        );
        names.push(
            m["annotations"][REF_NAME_ANNOTATION]
                .as_str()
                .expect("ref.name annotation")
                .to_string(),
        );
    }
    assert_eq!(names, ["localhost/a:1", "b"]);
    assert_eq!(manifests[0]["platform"]["os"], json!("linux"));
    // The manifest itself parses as an OCI manifest whose blobs are present.
    let manifest: Value =
        serde_json::from_slice(&store.read_blob(&image.manifest.digest).expect("read"))
            .expect("manifest json");
    assert_eq!(manifest["schemaVersion"], json!(2));
    for d in
        std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().expect("layers"))
    {
        let digest: Digest = d["digest"]
            .as_str()
            .expect("digest")
            .parse()
            .expect("parse");
        store.verify_blob(&digest).expect("blob present and intact");
    }
}

#[test]
fn concurrent_tagging_from_threads_loses_nothing() {
    let (_dir, store) = new_store();
    let root = store.root().to_path_buf();
    let manifest = desc(media_type::OCI_MANIFEST, store.put_blob(b"m").expect("put"));
    std::thread::scope(|s| {
        for t in 0..8 {
            let root = root.clone();
            let manifest = manifest.clone();
            s.spawn(move || {
                // A separate handle per thread: separate lock files, as
                // separate processes would have.
                let store = Store::open(&root).expect("open");
                for i in 0..20 {
                    store
                        .set_tag(&format!("thread{t}/tag{i}"), &manifest)
                        .expect("tag");
                }
            });
        }
    });
    let tags = store.tags().expect("tags");
    assert_eq!(tags.len(), 160);
    for t in 0..8 {
        for i in 0..20 {
            assert!(store
                .tag(&format!("thread{t}/tag{i}"))
                .expect("read")
                .is_some());
        }
    }
    assert!(tmp_entries(&store).is_empty());
}

const CHILD_ROOT: &str = "ESTIBA_STORE_TEST_CHILD_ROOT";
const CHILD_ID: &str = "ESTIBA_STORE_TEST_CHILD_ID";

/// Not a test on its own: the body of each child process of
/// `concurrent_tagging_from_processes_loses_nothing`, which runs this test
/// binary again with the environment set.
#[test]
fn child_process_tagger() {
    let (Ok(root), Ok(id)) = (std::env::var(CHILD_ROOT), std::env::var(CHILD_ID)) else {
        return;
    };
    let store = Store::open(Path::new(&root)).expect("child opens store");
    let _shared = store.lock_shared().expect("child shared lock");
    for i in 0..25 {
        // Every child writes the same blobs too.
        let d = store
            .put_blob(format!("shared manifest {}", i % 5).as_bytes())
            .expect("child put blob");
        store
            .set_tag(
                &format!("proc{id}/tag{i}"),
                &desc(media_type::OCI_MANIFEST, d),
            )
            .expect("child tag");
    }
}

#[test]
fn concurrent_tagging_from_processes_loses_nothing() {
    let (_dir, store) = new_store();
    let exe = std::env::current_exe().expect("test binary path");
    let children: Vec<_> = (0..4)
        .map(|id| {
            std::process::Command::new(&exe)
                .args(["child_process_tagger", "--exact", "--test-threads=1"])
                .env(CHILD_ROOT, store.root())
                .env(CHILD_ID, id.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    // The parent tags at the same time.
    let m = desc(
        media_type::OCI_MANIFEST,
        store.put_blob(b"parent").expect("put"),
    );
    for i in 0..25 {
        store.set_tag(&format!("parent/tag{i}"), &m).expect("tag");
    }
    for mut child in children {
        assert!(child.wait().expect("wait child").success(), "child failed");
    }
    let tags = store.tags().expect("tags");
    assert_eq!(tags.len(), 125);
    for id in 0..4 {
        for i in 0..25 {
            let d = store
                .tag(&format!("proc{id}/tag{i}"))
                .expect("read")
                .expect("child tag present");
            assert_eq!(
                d.digest,
                Digest::of(format!("shared manifest {}", i % 5).as_bytes())
            );
            store.verify_blob(&d.digest).expect("shared blob intact");
        }
    }
    assert_eq!(blob_count(&store), 6);
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn concurrent_writers_of_one_blob_agree() {
    let (_dir, store) = new_store();
    let content: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&content);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let mut w = store.blob_writer().expect("writer");
                for chunk in content.chunks(65_536) {
                    w.write_all(chunk).expect("write");
                }
                assert_eq!(w.commit().expect("commit").0, digest);
            });
        }
    });
    store.verify_blob(&digest).expect("intact");
    assert_eq!(blob_count(&store), 1);
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn cache_records_replace_atomically_and_need_their_blob() {
    let (_dir, store) = new_store();
    let key = Digest::of(b"step key");
    assert_eq!(store.cache_get(&key).expect("get"), None);

    let layer = desc(
        media_type::OCI_LAYER_GZIP,
        store.put_blob(b"layer 1").expect("put"),
    );
    let first = CacheRecord {
        layer: Some(layer),
        diff_id: Some(Digest::of(b"diff 1")),
        created: 1_700_000_000,
    };
    store.cache_put(&key, &first).expect("put");
    assert_eq!(store.cache_get(&key).expect("get"), Some(first));

    let layer2 = desc(
        media_type::OCI_LAYER_GZIP,
        store.put_blob(b"layer 2").expect("put"),
    );
    let second = CacheRecord {
        layer: Some(layer2.clone()),
        diff_id: Some(Digest::of(b"diff 2")),
        created: 1_700_000_100,
    };
    store.cache_put(&key, &second).expect("replace");
    assert_eq!(store.cache_get(&key).expect("get"), Some(second));
    let records: Vec<_> = fs::read_dir(store.root().join("estiba/cache-v1"))
        .expect("read cache dir")
        .collect();
    assert_eq!(records.len(), 1);
    assert!(tmp_entries(&store).is_empty());

    // The blob goes: the record reads as a miss.
    fs::remove_file(store.blob_path(&layer2.digest)).expect("delete blob");
    assert_eq!(store.cache_get(&key).expect("get"), None);

    // A step without a layer needs no blob.
    let empty = CacheRecord {
        layer: None,
        diff_id: None,
        created: 5,
    };
    let key2 = Digest::of(b"env step");
    store.cache_put(&key2, &empty).expect("put");
    assert_eq!(store.cache_get(&key2).expect("get"), Some(empty));

    // A damaged record is a miss, not an error.
    fs::write(
        store.root().join("estiba/cache-v1").join(key2.hex()),
        b"{not json",
    )
    .expect("damage");
    assert_eq!(store.cache_get(&key2).expect("get"), None);
    assert!(store.cache_remove(&key2).expect("remove"));
    assert!(!store.cache_remove(&key2).expect("remove again"));
}

#[test]
fn snapshot_builder_commit_and_drop() {
    let (_dir, store) = new_store();
    let diff_id = Digest::of(b"tree");
    assert_eq!(store.snapshot(&diff_id), None);

    // Dropped: nothing stays, not even in tmp.
    let b = store.snapshot_builder(&diff_id).expect("builder");
    assert!(b.path().is_dir());
    assert!(b.path().starts_with(store.root().join("estiba/tmp")));
    fs::create_dir(b.path().join("ro")).expect("mkdir");
    fs::write(b.path().join("ro/f"), b"x").expect("write");
    fs::set_permissions(b.path().join("ro"), fs::Permissions::from_mode(0o555)).expect("chmod");
    drop(b);
    assert!(tmp_entries(&store).is_empty());
    assert_eq!(store.snapshot(&diff_id), None);

    // Committed.
    let b = store.snapshot_builder(&diff_id).expect("builder");
    assert_eq!(b.diff_id(), &diff_id);
    fs::create_dir_all(b.path().join("etc")).expect("mkdir");
    fs::write(b.path().join("etc/hostname"), b"estiba\n").expect("write");
    std::os::unix::fs::symlink("/etc/hostname", b.path().join("link")).expect("symlink");
    let path = b.commit().expect("commit");
    assert_eq!(store.snapshot(&diff_id), Some(path.clone()));
    assert!(path.starts_with(store.root().join("estiba/snapshots-v1")));
    assert_eq!(
        fs::read(path.join("etc/hostname")).expect("read"),
        b"estiba\n"
    );
    assert!(tmp_entries(&store).is_empty());

    // A second builder for the same diff id finds the first one's snapshot.
    let b = store.snapshot_builder(&diff_id).expect("builder");
    fs::write(b.path().join("other"), b"y").expect("write");
    assert_eq!(b.commit().expect("commit"), path);
    assert!(!path.join("other").exists());
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn half_built_snapshot_is_never_used() {
    let (_dir, store) = new_store();
    let diff_id = Digest::of(b"half");
    // What a crash could leave: the directory without its marker.
    let dir = store.root().join("estiba/snapshots-v1").join(diff_id.hex());
    fs::create_dir_all(dir.join("rootfs")).expect("mkdir");
    fs::write(dir.join("rootfs/partial"), b"").expect("write");
    assert_eq!(store.snapshot(&diff_id), None);
    let b = store.snapshot_builder(&diff_id).expect("builder");
    fs::write(b.path().join("whole"), b"").expect("write");
    let path = b.commit().expect("commit replaces the leftover");
    assert!(path.join("whole").exists());
    assert!(!path.join("partial").exists());
    assert_eq!(store.snapshot(&diff_id), Some(path));
    assert!(tmp_entries(&store).is_empty());
}

/// Snapshots are not synced: one made before the machine last started may
/// have lost data in a crash, so its marker's boot id keeps it from use
/// until it is made again, and fsck names it.
#[test]
fn a_snapshot_from_another_boot_is_not_trusted() {
    let (_dir, store) = new_store();
    let diff_id = Digest::of(b"before the crash");
    let b = store.snapshot_builder(&diff_id).expect("builder");
    fs::write(b.path().join("old"), b"x").expect("write");
    let path = b.commit().expect("commit");
    assert_eq!(store.snapshot(&diff_id), Some(path.clone()));
    assert!(store.fsck().expect("fsck").is_clean());

    let marker = path.parent().expect("snapshot dir").join("complete");
    let text = fs::read_to_string(&marker).expect("marker");
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    let boot = boot.trim();
    assert!(text.contains(boot), "{text}");
    let other = "00000000-0000-4000-8000-000000000000";
    for stale in [text.replace(boot, other), format!("{diff_id}\n")] {
        fs::write(&marker, &stale).expect("write");
        assert_eq!(store.snapshot(&diff_id), None, "{stale}");
    }
    fs::write(&marker, text.replace(boot, other)).expect("write");
    let report = store.fsck().expect("fsck");
    let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [format!(
            "snapshot {}: made before the machine last started (boot {other}): \
             not used, made again when needed",
            diff_id.hex()
        )]
    );

    // Made again, it replaces the old tree.
    let b = store.snapshot_builder(&diff_id).expect("builder");
    fs::write(b.path().join("new"), b"y").expect("write");
    assert_eq!(b.commit().expect("commit"), path);
    assert!(path.join("new").exists());
    assert!(!path.join("old").exists());
    assert_eq!(store.snapshot(&diff_id), Some(path));
    assert!(store.fsck().expect("fsck").is_clean());
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn prune_needs_the_exclusive_lock() {
    let (_dir, store) = new_store();
    assert!(matches!(store.prune(false), Err(StoreError::NotLocked)));
    let shared = store.lock_shared().expect("shared");
    assert!(matches!(store.prune(false), Err(StoreError::NotLocked)));
    drop(shared);
    let _lock = store.lock_exclusive().expect("exclusive");
    store.prune(false).expect("prune under the lock");
}

#[test]
fn prune_keeps_what_tags_reach_and_removes_the_rest() {
    let (_dir, store) = new_store();
    // Tagged: an OCI image, and an index over a Docker image and another
    // OCI image.
    let tagged = make_image(&store, "tagged", false);
    store.set_tag("tagged", &tagged.manifest).expect("tag");
    let in_index_docker = make_image(&store, "docker", true);
    let in_index_oci = make_image(&store, "oci", false);
    let mut arm = in_index_oci.manifest.clone();
    arm.platform = Some(estiba_cache::oci::Platform {
        architecture: "arm64".into(),
        os: "linux".into(),
        ..Default::default()
    });
    let index = put_json(
        &store,
        &json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [in_index_docker.manifest, arm],
        }),
    );
    store
        .set_tag("multi", &desc(media_type::OCI_INDEX, index))
        .expect("tag index");
    // A docker manifest list nested in nothing but tagged too.
    let listed = make_image(&store, "listed", true);
    let list = put_json(
        &store,
        &json!({
            "schemaVersion": 2,
            "mediaType": media_type::DOCKER_MANIFEST_LIST,
            "manifests": [listed.manifest],
        }),
    );
    store
        .set_tag("list", &desc(media_type::DOCKER_MANIFEST_LIST, list))
        .expect("tag list");

    // Untagged: an image nobody points at, and a loose blob.
    let orphan = make_image(&store, "orphan", false);
    let (loose, loose_size) = store.put_blob(&[1u8; 1000]).expect("put loose");

    // Cached: a layer only a cache record keeps, and a record whose blob is gone.
    let cached_layer = desc(
        media_type::OCI_LAYER_GZIP,
        store.put_blob(b"cached layer").expect("put"),
    );
    let cached_diff = Digest::of(b"cached diff");
    let cache_key = Digest::of(b"cache key");
    store
        .cache_put(
            &cache_key,
            &CacheRecord {
                layer: Some(cached_layer.clone()),
                diff_id: Some(cached_diff),
                created: 100,
            },
        )
        .expect("cache put");
    let dangling_key = Digest::of(b"dangling key");
    store
        .cache_put(
            &dangling_key,
            &CacheRecord {
                layer: Some(desc(media_type::OCI_LAYER_GZIP, (Digest::of(b"gone"), 4))),
                diff_id: None,
                created: 100,
            },
        )
        .expect("cache put");

    // Snapshots: for a tagged layer, a cached layer, an orphan, and a
    // half-built one.
    let snap_tagged = make_snapshot(&store, &tagged.diff_ids[0]);
    let snap_indexed = make_snapshot(&store, &in_index_oci.diff_ids[1]);
    let snap_cached = make_snapshot(&store, &cached_diff);
    let snap_orphan = make_snapshot(&store, &orphan.diff_ids[0]);
    let half = store
        .root()
        .join("estiba/snapshots-v1")
        .join(Digest::of(b"half").hex());
    fs::create_dir_all(half.join("rootfs")).expect("mkdir");

    // Temp: a stale file from a dead process, and a live writer.
    fs::write(store.root().join("estiba/tmp/blob-dead"), [0u8; 10]).expect("stale tmp");
    let mut live_writer = store.blob_writer().expect("writer");
    live_writer.write_all(b"in flight").expect("write");

    let lock = store.lock_exclusive().expect("exclusive");
    let report = store.prune(false).expect("prune");

    for image in [&tagged, &in_index_docker, &in_index_oci, &listed] {
        assert!(store.has_blob(&image.manifest.digest));
        assert!(store.has_blob(&image.config));
        for l in &image.layers {
            assert!(store.has_blob(l), "layer {l} kept");
        }
    }
    assert!(store.has_blob(&index.0));
    assert!(store.has_blob(&list.0));
    assert!(store.has_blob(&cached_layer.digest));
    assert!(!store.has_blob(&orphan.manifest.digest));
    assert!(!store.has_blob(&orphan.config));
    for l in &orphan.layers {
        assert!(!store.has_blob(l));
    }
    assert!(!store.has_blob(&loose));
    assert_eq!(report.blobs_removed, 1 + 1 + 2 + 1);
    assert!(report.bytes_freed >= loose_size + 10);
    assert_eq!(report.cache_records_removed, 1);
    assert!(store.cache_get(&cache_key).expect("get").is_some());
    assert!(!store
        .root()
        .join("estiba/cache-v1")
        .join(dangling_key.hex())
        .exists());
    assert_eq!(report.snapshots_removed, 2);
    assert_eq!(
        store.snapshot(&tagged.diff_ids[0]),
        Some(snap_tagged.clone())
    );
    assert_eq!(
        store.snapshot(&in_index_oci.diff_ids[1]),
        Some(snap_indexed.clone())
    );
    assert_eq!(store.snapshot(&cached_diff), Some(snap_cached.clone()));
    assert!(!snap_orphan.exists());
    assert!(!half.exists());
    assert_eq!(report.tmp_removed, 1);
    assert_eq!(tmp_entries(&store).len(), 1, "the live writer's temp stays");

    // The live writer still commits after the prune.
    let (in_flight, _) = live_writer.commit().expect("commit after prune");
    assert!(store.has_blob(&in_flight));

    // Everything still reachable; a second prune only drops the new loose blob.
    let again = store.prune(false).expect("prune again");
    assert_eq!(again.blobs_removed, 1);
    assert_eq!(again.cache_records_removed, 0);
    assert_eq!(again.snapshots_removed, 0);

    // `all`: cache records and snapshots go, tagged images stay.
    let all = store.prune(true).expect("prune all");
    assert_eq!(all.cache_records_removed, 1);
    assert_eq!(all.snapshots_removed, 3);
    assert_eq!(all.blobs_removed, 1, "the cached layer");
    assert!(!store.has_blob(&cached_layer.digest));
    assert!(store.cache_get(&cache_key).expect("get").is_none());
    assert_eq!(store.snapshot(&tagged.diff_ids[0]), None);
    for image in [&tagged, &in_index_docker, &in_index_oci, &listed] {
        store
            .verify_blob(&image.manifest.digest)
            .expect("tagged manifest kept");
        for l in &image.layers {
            store.verify_blob(l).expect("tagged layer kept");
        }
    }

    // Untagging makes an image collectable.
    assert!(store.remove_tag("tagged").expect("untag"));
    let after_untag = store.prune(false).expect("prune");
    assert_eq!(after_untag.blobs_removed, 4);
    assert!(!store.has_blob(&tagged.manifest.digest));
    drop(lock);
}

#[test]
fn prune_aborts_on_an_unreadable_manifest() {
    let (_dir, store) = new_store();
    let (bad, size) = store.put_blob(b"not json at all").expect("put");
    store
        .set_tag("broken", &desc(media_type::OCI_MANIFEST, (bad, size)))
        .expect("tag");
    let (loose, _) = store.put_blob(b"loose").expect("put");
    let _lock = store.lock_exclusive().expect("lock");
    assert!(matches!(
        store.prune(false),
        Err(StoreError::InvalidManifest { digest, .. }) if digest == bad
    ));
    assert!(store.has_blob(&loose), "nothing swept after a failed mark");
}

#[test]
fn prune_removes_snapshots_with_read_only_dirs_and_foreign_owners() {
    let (_dir, store) = new_store();
    let diff_id = Digest::of(b"hostile tree");
    let b = store.snapshot_builder(&diff_id).expect("builder");
    let root = b.path().to_path_buf();
    fs::create_dir_all(root.join("a/b/c")).expect("mkdir");
    fs::write(root.join("a/b/c/file"), vec![0u8; 4096]).expect("write");
    fs::create_dir(root.join("tmp")).expect("mkdir");
    fs::write(root.join("tmp/other"), b"x").expect("write");
    std::os::unix::fs::symlink("/", root.join("a/rootlink")).expect("symlink");
    std::os::unix::fs::symlink("/etc", root.join("etc")).expect("symlink");
    let is_root = nix::unistd::geteuid().is_root();
    if is_root {
        let other = Some(nix::unistd::Uid::from_raw(54_321));
        let group = Some(nix::unistd::Gid::from_raw(54_321));
        for p in ["a/b/c/file", "a/b/c", "tmp/other"] {
            nix::unistd::chown(&root.join(p), other, group).expect("chown");
        }
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
    fs::set_permissions(root.join("a/b/c"), fs::Permissions::from_mode(0o000)).expect("chmod");
    fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o555)).expect("chmod");
    fs::set_permissions(root.join("a"), fs::Permissions::from_mode(0o500)).expect("chmod");
    let path = b.commit().expect("commit");
    assert!(path.join("a").exists());

    let _lock = store.lock_exclusive().expect("lock");
    let report = store.prune(false).expect("prune");
    assert_eq!(report.snapshots_removed, 1);
    assert!(report.bytes_freed >= 4097);
    assert!(!path.exists());
    // The symlinks were removed, not followed.
    assert!(Path::new("/etc/passwd").exists());
}

#[test]
fn remove_dir_all_force_refuses_a_tree_with_a_mount_inside() {
    if !nix::unistd::geteuid().is_root() {
        // Mounting needs root; CI runs this suite as root.
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "remove_dir_all_force_refuses_a_tree_with_a_mount_inside: needs root, not run"
            );
        }
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = dir.path().join("tree");
    let mnt = tree.join("sub/mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount tmpfs (the test runs as root)");
    fs::write(mnt.join("precious"), b"keep me").expect("write");
    let result = remove_dir_all_force(&tree);
    let still_there = mnt.join("precious").exists();
    nix::mount::umount(&mnt).expect("umount");
    assert!(matches!(result, Err(StoreError::MountedInside { .. })));
    assert!(still_there);
    remove_dir_all_force(&tree).expect("removes once unmounted");
    assert!(!tree.exists());
}

#[test]
fn prune_with_age_drops_old_records() {
    let (_dir, store) = new_store();
    let old = desc(
        media_type::OCI_LAYER_GZIP,
        store.put_blob(b"old").expect("put"),
    );
    let new = desc(
        media_type::OCI_LAYER_GZIP,
        store.put_blob(b"new").expect("put"),
    );
    for (key, layer, created) in [("old", &old, 10), ("new", &new, 1000)] {
        store
            .cache_put(
                &Digest::of(key.as_bytes()),
                &CacheRecord {
                    layer: Some(layer.clone()),
                    diff_id: None,
                    created,
                },
            )
            .expect("put");
    }
    let _lock = store.lock_exclusive().expect("lock");
    let report = store
        .prune_with(&PruneOptions {
            all: false,
            records_created_before: Some(500),
        })
        .expect("prune");
    assert_eq!(report.cache_records_removed, 1);
    assert_eq!(report.blobs_removed, 1);
    assert!(!store.has_blob(&old.digest));
    assert!(store.cache_get(&Digest::of(b"new")).expect("get").is_some());
}

#[test]
fn exclusive_lock_waits_for_shared_locks() {
    let (_dir, store) = new_store();
    let shared1 = store.lock_shared().expect("shared");
    let shared2 = store.lock_shared().expect("shared locks coexist");
    assert!(!shared1.is_exclusive());
    assert!(store.try_lock_exclusive().expect("try").is_none());

    let (tx, rx) = mpsc::channel();
    let other = Store::open(store.root()).expect("open");
    let waiter = std::thread::spawn(move || {
        let lock = other.lock_exclusive().expect("exclusive");
        tx.send(()).expect("send");
        // Hold it a moment so the main thread can see it is exclusive.
        std::thread::sleep(Duration::from_millis(200));
        drop(lock);
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "exclusive lock granted while shared locks are held"
    );
    drop(shared1);
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "exclusive lock granted while a shared lock is held"
    );
    drop(shared2);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("exclusive lock granted once the shared locks are gone");
    assert!(store.try_lock_shared().expect("try").is_none());
    waiter.join().expect("waiter thread");
    let lock = store.try_lock_shared().expect("try").expect("free again");
    drop(lock);
}

#[test]
fn disk_usage_counts_blobs() {
    let (_dir, store) = new_store();
    let before = store.disk_usage().expect("usage");
    store.put_blob(&vec![9u8; 100_000]).expect("put");
    let after = store.disk_usage().expect("usage");
    assert!(after >= before + 100_000);
}

const LEFTOVER_ROOT: &str = "ESTIBA_STORE_TEST_LEFTOVER_ROOT";

/// Not a test on its own: the body of the child process of
/// `leftovers_of_killed_processes_go_and_live_ones_stay`. It leaves one of
/// each kind of temp entry open, says so, and waits to be killed.
#[test]
fn child_process_leaving_temp_data() {
    let Ok(root) = std::env::var(LEFTOVER_ROOT) else {
        return;
    };
    let store = Store::open(Path::new(&root)).expect("child opens store");
    let _shared = store.lock_shared().expect("child shared lock");
    // An overlay upper and work dir as a killed RUN leaves them: the
    // kernel's work/work is mode 000.
    let upper = store.temp_dir("upper").expect("temp dir");
    fs::create_dir_all(upper.path().join("work/work")).expect("mkdir");
    fs::write(upper.path().join("big"), vec![1u8; 1 << 20]).expect("write");
    fs::set_permissions(
        upper.path().join("work/work"),
        fs::Permissions::from_mode(0o000),
    )
    .expect("chmod 000");
    let mut blob = store.blob_writer().expect("blob writer");
    blob.write_all(&[2u8; 100_000]).expect("write blob");
    let snapshot = store
        .snapshot_builder(&Digest::of(b"half"))
        .expect("builder");
    fs::write(snapshot.path().join("f"), b"x").expect("write");
    let mut out = std::io::stdout();
    out.write_all(b"ready\n")
        .and_then(|()| out.flush())
        .expect("tell the parent");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn leftovers_of_killed_processes_go_and_live_ones_stay() {
    use std::io::BufRead;
    let (_dir, store) = new_store();
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = std::process::Command::new(&exe)
        .args(["child_process_leaving_temp_data", "--exact", "--nocapture"])
        .env(LEFTOVER_ROOT, store.root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    while !line.contains("ready") {
        line.clear();
        assert_ne!(
            out.read_line(&mut line).expect("read child"),
            0,
            "child ended"
        );
    }
    assert_eq!(tmp_entries(&store).len(), 3, "{:?}", tmp_entries(&store));
    // This process's own entries, and one an older estiba left (its name
    // names no owner).
    let live = store.temp_dir("live").expect("temp dir");
    fs::create_dir(store.root().join("estiba/tmp/upper-Ab3xYz")).expect("mkdir");

    // While the child lives, nothing of it goes.
    let shared = store.lock_shared().expect("shared");
    let report = store.remove_leftovers().expect("clean");
    assert_eq!(report.tmp_removed, 0);
    assert_eq!(tmp_entries(&store).len(), 5);

    // Killed: its entries go, beside a shared lock (builds may run).
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    let report = store.remove_leftovers().expect("clean");
    assert_eq!(report.tmp_removed, 3, "{:?}", tmp_entries(&store));
    assert!(report.bytes_freed >= 1 << 20, "{report:?}");
    let left = tmp_entries(&store);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(live.path().is_dir());
    drop(shared);

    // GC, alone with the store, also takes the unowned entry; ours stays.
    let _lock = store.lock_exclusive().expect("exclusive");
    let report = store.prune(false).expect("prune");
    assert_eq!(report.tmp_removed, 1);
    assert!(live.path().is_dir());
    drop(live);
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn prune_all_drops_mount_and_stat_caches_and_plain_prune_their_strays() {
    let (_dir, store) = new_store();
    let mount = store.mount_cache_dir(&Digest::of(b"id=/root/.cache"));
    fs::create_dir_all(mount.join("pip")).expect("mkdir");
    fs::write(mount.join("pip/wheel"), b"w").expect("write");
    let stat = store.stat_cache_file(&Digest::of(b"/src/app"));
    fs::create_dir_all(stat.parent().expect("parent")).expect("mkdir");
    fs::write(&stat, b"cache").expect("write");
    let stray = stat.with_file_name(".tmpAbCdEf");
    fs::write(&stray, b"half").expect("write");
    assert!(mount.starts_with(store.root()) && stat.starts_with(store.root()));

    let _lock = store.lock_exclusive().expect("exclusive");
    let report = store.prune(false).expect("prune");
    assert_eq!(
        (report.mount_caches_removed, report.stat_caches_removed),
        (0, 1)
    );
    assert!(mount.join("pip/wheel").is_file() && stat.is_file() && !stray.exists());
    let report = store.prune(true).expect("prune --all");
    assert_eq!(
        (report.mount_caches_removed, report.stat_caches_removed),
        (1, 1)
    );
    assert!(!mount.exists() && !stat.exists());
}

/// A store with one tagged image whose second layer also has a cache
/// record and a snapshot.
fn store_with_image() -> (tempfile::TempDir, Store, Image, Digest) {
    let (dir, store) = new_store();
    let image = make_image(&store, "fsck", false);
    store.set_tag("app:1", &image.manifest).expect("tag");
    let key = Digest::of(b"step key");
    store
        .cache_put(
            &key,
            &CacheRecord {
                layer: Some(desc(
                    media_type::OCI_LAYER_GZIP,
                    (image.layers[1], "fsck layer 1".len() as u64),
                )),
                diff_id: Some(image.diff_ids[1]),
                created: 1,
            },
        )
        .expect("record");
    for diff_id in &image.diff_ids {
        make_snapshot(&store, diff_id);
    }
    (dir, store, image, key)
}

#[test]
fn fsck_of_a_sound_store_is_clean() {
    let (_dir, store, image, _) = store_with_image();
    let _lock = store.lock_shared().expect("shared");
    let report = store.fsck().expect("fsck");
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(
        (
            report.blobs_checked,
            report.images_checked,
            report.records_checked,
            report.snapshots_checked
        ),
        (4, 1, 1, 2)
    );
    // Each snapshot's layer, for a caller that can unpack it again.
    let layers: Vec<(Digest, Digest)> = report.layers.into_iter().collect();
    let mut want: Vec<(Digest, Digest)> = image
        .diff_ids
        .iter()
        .copied()
        .zip(image.layers.iter().copied())
        .collect();
    want.sort();
    assert_eq!(layers, want);
}

#[test]
fn fsck_finds_a_damaged_layer_and_repair_drops_it_and_what_needs_it() {
    let (_dir, store, image, key) = store_with_image();
    let layer = image.layers[1];
    let path = store.blob_path(&layer);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut bytes = fs::read(&path).expect("read");
    bytes[3] ^= 1;
    fs::write(&path, &bytes).expect("flip one byte");

    let report = store.fsck().expect("fsck");
    let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            format!("blob {layer}: content hashes to {}", Digest::of(&bytes)),
            format!("tag app:1: layer {layer} is damaged"),
            format!("cache record {}: layer {layer} is damaged", key.hex()),
        ]
    );
    assert!(matches!(store.repair(&report), Err(StoreError::NotLocked)));

    let _lock = store.lock_exclusive().expect("exclusive");
    let done = store.repair(&report).expect("repair");
    assert_eq!(
        (
            done.blobs_removed,
            done.index_entries_removed,
            done.records_removed
        ),
        (1, 1, 1)
    );
    assert!(store.fsck().expect("fsck").is_clean());
    // The next build misses and makes the layer again.
    assert!(!store.has_blob(&layer));
    assert_eq!(store.cache_get(&key).expect("lookup"), None);
    assert_eq!(store.tag("app:1").expect("read"), None);
    // What only the dropped tag kept goes with the next prune.
    store.prune(false).expect("prune");
    assert_eq!(blob_count(&store), 0);
}

#[test]
fn fsck_finds_broken_records_snapshots_images_and_repair_drops_them() {
    let (_dir, store, image, key) = store_with_image();
    let cache = store.root().join("estiba/cache-v1");
    fs::write(cache.join(Digest::of(b"bad").hex()), b"{not json").expect("write");
    let gone = Digest::of(b"never stored");
    let orphan_key = Digest::of(b"orphan");
    store
        .cache_put(
            &orphan_key,
            &CacheRecord {
                layer: Some(desc(media_type::OCI_LAYER_GZIP, (gone, 1))),
                diff_id: None,
                created: 1,
            },
        )
        .expect("record");
    let snapshots = store.root().join("estiba/snapshots-v1");
    // No marker; a marker naming another diff id; not a diff id at all.
    let half = Digest::of(b"half");
    fs::create_dir_all(snapshots.join(half.hex()).join("rootfs")).expect("mkdir");
    let lying = snapshots.join(image.diff_ids[0].hex());
    fs::write(lying.join("complete"), format!("{}\n", image.diff_ids[1])).expect("write");
    fs::create_dir_all(snapshots.join("junk/rootfs")).expect("mkdir");
    // A tag on a manifest that is not there, and one on a manifest that
    // is not JSON.
    store
        .set_tag("lost:1", &desc(media_type::OCI_MANIFEST, (gone, 1)))
        .expect("tag");
    let not_json = store.put_blob(b"not a manifest").expect("put");
    store
        .set_tag("garbled:1", &desc(media_type::OCI_MANIFEST, not_json))
        .expect("tag");

    let report = store.fsck().expect("fsck");
    let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    let bad = Digest::of(b"bad").hex();
    let expected = [
        format!("tag lost:1: manifest {gone} is missing"),
        format!("tag garbled:1: manifest {} does not parse", not_json.0),
        format!("cache record {}: layer {gone} is missing", orphan_key.hex()),
        format!("cache record {bad}: does not parse"),
        format!(
            "snapshot {}: completion marker names \"{}\"",
            image.diff_ids[0].hex(),
            image.diff_ids[1]
        ),
        format!("snapshot {}: no completion marker", half.hex()),
        "snapshot junk: not named by a diff id".to_string(),
    ];
    let mut sorted = lines.clone();
    sorted.sort();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(sorted, want, "{lines:#?}");

    let _lock = store.lock_exclusive().expect("exclusive");
    let done = store.repair(&report).expect("repair");
    assert_eq!(
        (
            done.index_entries_removed,
            done.records_removed,
            done.snapshots_removed
        ),
        (2, 2, 3)
    );
    assert!(store.fsck().expect("fsck").is_clean());
    // What was sound stays.
    assert!(store.tag("app:1").expect("read").is_some());
    assert!(store.cache_get(&key).expect("lookup").is_some());
    assert!(store.snapshot(&image.diff_ids[1]).is_some());
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn fsck_reports_an_unparseable_index_and_repair_empties_it() {
    let (_dir, store, _, _) = store_with_image();
    fs::write(store.root().join("index.json"), b"{\"manifests\": [").expect("write");
    let report = store.fsck().expect("fsck");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0]
        .to_string()
        .starts_with("index.json: does not parse: "));
    let _lock = store.lock_exclusive().expect("exclusive");
    store.repair(&report).expect("repair");
    assert!(store.fsck().expect("fsck").is_clean());
    assert!(store.tags().expect("tags").is_empty());
}

/// A tagged image with one uncompressed layer (blob digest = diff id) and
/// a stand-in for its gzip form; returns the layer and the gzip blob.
fn store_with_uncompressed_image(store: &Store, seed: &str) -> (Descriptor, Descriptor) {
    let layer = desc(
        media_type::OCI_LAYER_TAR,
        store
            .put_blob(format!("{seed} layer tar").as_bytes())
            .expect("put layer"),
    );
    let config = put_json(
        store,
        &json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest.to_string()]},
        }),
    );
    let manifest = put_json(
        store,
        &json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": desc(media_type::OCI_CONFIG, config),
            "layers": [layer],
        }),
    );
    store
        .set_tag(seed, &desc(media_type::OCI_MANIFEST, manifest))
        .expect("tag");
    let gzip = desc(
        media_type::OCI_LAYER_GZIP,
        store
            .put_blob(format!("{seed} layer gzip").as_bytes())
            .expect("put gzip form"),
    );
    (layer, gzip)
}

/// [`store_with_uncompressed_image`], with its gzip form recorded.
fn image_with_gzip_form(store: &Store, seed: &str) -> (Descriptor, Descriptor) {
    let (layer, gzip) = store_with_uncompressed_image(store, seed);
    store
        .record_compressed(&layer.digest, Compression::Gzip, &gzip)
        .expect("record");
    (layer, gzip)
}

fn gzip_form(store: &Store, diff_id: &Digest) -> Option<Descriptor> {
    store
        .compressed_blob(diff_id, Compression::Gzip)
        .expect("lookup")
}

#[test]
fn a_compressed_record_is_kept_per_level() {
    let (_dir, store) = new_store();
    let (layer, gzip_default) = store_with_uncompressed_image(&store, "levels");
    let diff_id = layer.digest;
    let gzip9 = Descriptor::new(
        media_type::OCI_LAYER_GZIP,
        store.put_blob(b"levels layer gzip -9").expect("put").0,
        20,
    );
    let level9 = Codec {
        compression: Compression::Gzip,
        level: 9,
    };
    store
        .record_compressed(&diff_id, level9, &gzip9)
        .expect("record level 9");
    // The default level's record is another one: still a miss.
    assert_eq!(gzip_form(&store, &diff_id), None);
    assert_eq!(
        store.compressed_blob(&diff_id, level9).expect("lookup"),
        Some(gzip9.clone())
    );
    store
        .record_compressed(&diff_id, Compression::Gzip, &gzip_default)
        .expect("record the default level");
    assert_eq!(gzip_form(&store, &diff_id), Some(gzip_default.clone()));
    assert_eq!(
        store.compressed_blob(&diff_id, level9).expect("lookup"),
        Some(gzip9.clone())
    );
    // The default level spelled out is the same record as no level.
    let spelled_out = Codec {
        compression: Compression::Gzip,
        level: Codec::default_for(Compression::Gzip).level,
    };
    assert_eq!(
        store
            .compressed_blob(&diff_id, spelled_out)
            .expect("lookup"),
        Some(gzip_default)
    );
    let dir = store.root().join("estiba/compressed-v1");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want = vec![
        format!("{}.gzip", diff_id.hex()),
        format!("{}.gzip-9", diff_id.hex()),
    ];
    want.sort();
    assert_eq!(names, want);
    // Both are sound records to fsck, and both blobs live while the layer is.
    let report = store.fsck().expect("fsck");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let lock = store.lock_exclusive().expect("exclusive");
    store.prune(false).expect("prune");
    drop(lock);
    assert!(store.has_blob(&gzip9.digest));
}

#[test]
fn compressed_records_name_their_blob_and_miss_when_it_is_gone() {
    let (_dir, store) = new_store();
    let (layer, gzip) = store_with_uncompressed_image(&store, "app");
    let diff_id = layer.digest;
    assert_eq!(gzip_form(&store, &diff_id), None);
    // Recorded under docker's gzip type, answered under OCI's: the same bytes.
    let mut docker = gzip.clone();
    docker.media_type = media_type::DOCKER_LAYER_GZIP.to_string();
    docker
        .annotations
        .insert("x".to_string(), "dropped".to_string());
    store
        .record_compressed(&diff_id, Compression::Gzip, &docker)
        .expect("record");
    assert_eq!(gzip_form(&store, &diff_id), Some(gzip.clone()));
    assert_eq!(
        read_json(
            &store
                .root()
                .join(format!("estiba/compressed-v1/{}.gzip", diff_id.hex()))
        ),
        serde_json::to_value(&gzip).expect("encode")
    );
    assert!(tmp_entries(&store).is_empty(), "{:?}", tmp_entries(&store));
    // Another compression has no record; no compression is the layer itself.
    assert_eq!(
        store
            .compressed_blob(&diff_id, Compression::Zstd)
            .expect("lookup"),
        None
    );
    assert_eq!(
        store
            .compressed_blob(&diff_id, Compression::None)
            .expect("lookup"),
        Some(layer.clone())
    );
    // Only gzip and zstd blobs that are here are recorded.
    assert!(matches!(
        store.record_compressed(&diff_id, Compression::Gzip, &layer),
        Err(StoreError::NotCompressedLayer { .. })
    ));
    // ... and only under the compression their media type says.
    assert!(matches!(
        store.record_compressed(&diff_id, Compression::Zstd, &gzip),
        Err(StoreError::NotCompressedLayer { .. })
    ));
    let absent = Descriptor::new(media_type::OCI_LAYER_ZSTD, Digest::of(b"absent"), 6);
    assert!(matches!(
        store.record_compressed(&diff_id, Compression::Zstd, &absent),
        Err(StoreError::MissingBlob { .. })
    ));
    // A record whose blob went is a miss, as is one that does not parse.
    fs::remove_file(store.blob_path(&gzip.digest)).expect("remove gzip blob");
    assert_eq!(gzip_form(&store, &diff_id), None);
    fs::write(
        store
            .root()
            .join(format!("estiba/compressed-v1/{}.gzip", diff_id.hex())),
        b"{not json",
    )
    .expect("damage record");
    assert_eq!(gzip_form(&store, &diff_id), None);
}

#[test]
fn prune_keeps_a_compressed_layer_while_its_layer_is_kept() {
    let (_dir, store) = new_store();
    let (layer, gzip) = image_with_gzip_form(&store, "app");
    // A record whose blob is gone is dropped.
    let (_, other_gzip) = image_with_gzip_form(&store, "other");
    fs::remove_file(store.blob_path(&other_gzip.digest)).expect("remove blob");
    let _lock = store.lock_exclusive().expect("exclusive");

    let report = store.prune(false).expect("prune");
    assert_eq!(report.compressed_records_removed, 1);
    assert_eq!(report.blobs_removed, 0);
    assert_eq!(gzip_form(&store, &layer.digest), Some(gzip.clone()));

    // Kept by a cache record alone, the layer keeps its gzip form too.
    assert!(store.remove_tag("app").expect("untag"));
    let key = Digest::of(b"step");
    store
        .cache_put(
            &key,
            &CacheRecord {
                layer: Some(layer.clone()),
                diff_id: Some(layer.digest),
                created: 1,
            },
        )
        .expect("cache record");
    let report = store.prune(false).expect("prune");
    assert_eq!(report.compressed_records_removed, 0);
    assert!(store.has_blob(&gzip.digest));

    // Once the layer goes, so do the record and the gzip blob.
    assert!(store.cache_remove(&key).expect("remove record"));
    let before = blob_count(&store);
    let report = store.prune(false).expect("prune");
    assert_eq!(report.compressed_records_removed, 1);
    assert!(!store.has_blob(&layer.digest));
    assert!(!store.has_blob(&gzip.digest));
    assert_eq!(blob_count(&store), before - 2);
    let left: Vec<_> = fs::read_dir(store.root().join("estiba/compressed-v1"))
        .expect("read records")
        .collect();
    assert!(left.is_empty());
}

#[test]
fn prune_all_drops_compressed_forms_of_tagged_layers() {
    let (_dir, store) = new_store();
    let (layer, gzip) = image_with_gzip_form(&store, "app");
    let _lock = store.lock_exclusive().expect("exclusive");
    let report = store.prune(true).expect("prune --all");
    assert_eq!(report.compressed_records_removed, 1);
    assert_eq!(report.blobs_removed, 1);
    assert!(store.has_blob(&layer.digest));
    assert!(!store.has_blob(&gzip.digest));
    assert_eq!(gzip_form(&store, &layer.digest), None);
}

#[test]
fn fsck_finds_broken_compressed_records_and_repair_drops_them() {
    let (_dir, store) = new_store();
    let (layer, gzip) = image_with_gzip_form(&store, "app");
    let (other, other_gzip) = image_with_gzip_form(&store, "other");
    let records = store.root().join("estiba/compressed-v1");
    {
        let _lock = store.lock_shared().expect("shared");
        let report = store.fsck().expect("fsck");
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!(report.compressed_checked, 2);
    }
    // A record whose blob is damaged, one whose blob is missing, one that
    // does not parse.
    let path = store.blob_path(&gzip.digest);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut bytes = fs::read(&path).expect("read");
    bytes[0] ^= 1;
    fs::write(&path, &bytes).expect("flip one byte");
    fs::remove_file(store.blob_path(&other_gzip.digest)).expect("remove blob");
    fs::write(records.join("junk.gzip"), b"{}").expect("write junk");

    let report = store.fsck().expect("fsck");
    let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    let mut want = vec![
        format!(
            "blob {}: content hashes to {}",
            gzip.digest,
            Digest::of(&bytes)
        ),
        format!(
            "gzip form of layer {}: blob {} is damaged",
            layer.digest.hex(),
            gzip.digest
        ),
        format!(
            "gzip form of layer {}: blob {} is missing",
            other.digest.hex(),
            other_gzip.digest
        ),
        "compressed layer record junk.gzip: does not parse".to_string(),
    ];
    // Records are read in name order.
    if other.digest.hex() < layer.digest.hex() {
        want.swap(1, 2);
    }
    let mut sorted_tail = want.split_off(1);
    sorted_tail.sort_by_key(|l| l.starts_with("compressed"));
    want.extend(sorted_tail);
    assert_eq!(lines, want);

    let _lock = store.lock_exclusive().expect("exclusive");
    let done = store.repair(&report).expect("repair");
    assert_eq!(
        (done.blobs_removed, done.compressed_records_removed),
        (1, 3)
    );
    let after = store.fsck().expect("fsck");
    assert!(after.is_clean(), "{:?}", after.problems);
    assert_eq!(after.compressed_checked, 0);
    // The layers themselves are sound: their images stay.
    assert!(store.tag("app").expect("read").is_some());
    assert!(store.has_blob(&layer.digest));
}
