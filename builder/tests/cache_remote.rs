//! The cache artifact against a real registry (Debian's `docker-registry`
//! on 127.0.0.1, started by each test) and in a local OCI layout: export,
//! load, hits and misses, blobs fetched into an empty store and verified,
//! re-exports that change and upload nothing, damaged and missing sources,
//! several sources, and the inline cache of a pushed image.

#[path = "../../tests/support/registry.rs"]
mod harness;

use estiba::compress::decompressing_reader;
use estiba::image::{
    self, export_cache, inline_metadata, CacheDest, CacheEntry, CacheExportOptions, CacheSource,
    Images, Layer, PullPolicy, PushOptions, RemoteCache, INLINE_CACHE_KEY,
};
use estiba::progress::Reporter;
use estiba::registry::{Reference, Registry, RegistryOptions};
use estiba_cache::oci::{media_type, Descriptor, Index, REF_NAME_ANNOTATION};
use estiba_cache::{Compression, Digest, DigestReader, Store};
use harness::{Auth, RegistryServer};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// A reporter that keeps what it is told.
#[derive(Default)]
struct Recorder {
    logs: Mutex<Vec<String>>,
    warnings: Mutex<Vec<String>>,
}

impl Recorder {
    fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("lock").clone()
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.lock().expect("lock").clone()
    }
}

impl Reporter for Recorder {
    fn started(&self, _: usize, _: &str) {}
    fn log(&self, _: usize, line: &str) {
        self.logs.lock().expect("lock").push(line.to_string());
    }
    fn cached(&self, _: usize) {}
    fn done(&self, _: usize, _: Duration) {}
    fn failed(&self, _: usize, _: Duration, _: &str) {}
    fn warning(&self, message: &str) {
        self.warnings
            .lock()
            .expect("lock")
            .push(message.to_string());
    }
}

/// A test's temp directory, store and registry client.
struct Env {
    tmp: tempfile::TempDir,
    store: Store,
    reg: Registry,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&tmp.path().join("store")).expect("store");
        let home = tmp.path().join("docker");
        std::fs::create_dir_all(&home).expect("mkdir");
        let reg = Registry::new(RegistryOptions {
            docker_config_dir: Some(home.clone()),
            certs_dir: home.join("certs.d"),
            config_file: Some(home.join("registries.json")),
            ..RegistryOptions::default()
        })
        .expect("client");
        Env { tmp, store, reg }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Another, empty store (the other machine).
    fn empty_store(&self, name: &str) -> Store {
        Store::open(&self.path(name)).expect("store")
    }

    /// A layer holding one file, stored uncompressed as estiba stores the
    /// layers it builds.
    fn layer(&self, name: &str) -> Layer {
        let mut tar = tar::Builder::new(Vec::new());
        let data = format!("{name} {}\n", "x".repeat(4000));
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, data.as_bytes())
            .expect("tar");
        let bytes = tar.into_inner().expect("tar");
        let (digest, size) = self.store.put_blob(&bytes).expect("put");
        Layer::uncompressed(digest, size)
    }

    /// Stores an image of `config` and `layers` and pushes it to
    /// `reference`; with `tag`, the store also names it so.
    fn push_image(
        &self,
        mut config: image::ImageConfig,
        layers: &[Layer],
        reference: &Reference,
        tag: bool,
    ) {
        config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id.to_string()).collect();
        let desc = image::store_image(&self.store, &config, layers).expect("store image");
        if tag {
            self.store
                .set_tag(&reference.to_string(), &desc)
                .expect("tag");
        }
        let stored = image::read(&self.store, &reference.familiar(), &desc).expect("read");
        let reporter = Recorder::default();
        let _lock = self.store.lock_shared().expect("lock");
        Images::with_registry(&self.store, &self.reg, PullPolicy::Never, &reporter)
            .push(&stored, reference, &PushOptions::default())
            .expect("push");
    }

    fn export(&self, dest: &CacheDest, entries: &[CacheEntry], reporter: &Recorder) -> Digest {
        self.export_with(dest, entries, Compression::Gzip, reporter)
    }

    fn export_with(
        &self,
        dest: &CacheDest,
        entries: &[CacheEntry],
        compression: Compression,
        reporter: &Recorder,
    ) -> Digest {
        let _lock = self.store.lock_shared().expect("lock");
        export_cache(
            &self.store,
            Some(&self.reg),
            dest,
            entries,
            &CacheExportOptions {
                compression: compression.into(),
            },
            reporter,
            1,
        )
        .expect("export")
    }
}

/// A plain-http registry for `test` (`None`: skipped outside CI).
fn start(test: &str) -> Option<RegistryServer> {
    RegistryServer::start_or_skip(test, Auth::None)
}

fn r(text: &str) -> Reference {
    Reference::parse(text).expect("reference")
}

fn key(name: &str) -> Digest {
    Digest::of(format!("key {name}").as_bytes())
}

fn entry(name: &str, layer: Option<&Layer>) -> CacheEntry {
    CacheEntry {
        key: key(name),
        layer: layer.cloned(),
        created: 1_700_000_000,
    }
}

fn registry_dest(reference: &Reference) -> CacheDest {
    CacheDest::Registry {
        reference: reference.clone(),
    }
}

fn registry_source(reference: &Reference) -> CacheSource {
    CacheSource::Registry {
        reference: reference.clone(),
    }
}

/// The diff ID of the compressed layer blob `digest` in `store`.
fn diff_id_of(store: &Store, digest: &Digest) -> Digest {
    let blob = store.open_blob(digest).expect("open");
    let mut tar = DigestReader::new(decompressing_reader(blob).expect("decompress"));
    std::io::copy(&mut tar, &mut std::io::sink()).expect("read");
    tar.finish().expect("hash").0
}

/// The compressed blob a hit names.
fn hit_blob(cache: &RemoteCache<'_>, name: &str) -> Layer {
    cache
        .get(&key(name))
        .unwrap_or_else(|| panic!("a hit for {name}"))
        .layer
        .unwrap_or_else(|| panic!("{name} has a layer"))
}

/// Fetches `layer`'s blob into `store` and checks it there: the blob
/// verifies, and its content decompresses to the diff ID.
fn fetch_and_check(cache: &RemoteCache<'_>, store: &Store, layer: &Layer) {
    assert!(!store.has_blob(&layer.descriptor.digest));
    let reporter = Recorder::default();
    assert!(cache
        .fetch_reporting(store, &layer.descriptor, &reporter, 1)
        .expect("fetch"));
    let logs = reporter.logs();
    assert!(
        logs.len() == 1 && logs[0].ends_with(" done"),
        "one line says it: {logs:?}"
    );
    store
        .verify_blob(&layer.descriptor.digest)
        .expect("the fetched blob verifies");
    assert_eq!(diff_id_of(store, &layer.descriptor.digest), layer.diff_id);
}

#[test]
fn a_registry_cache_gives_every_key_and_brings_its_blobs_into_an_empty_store() {
    let Some(server) =
        start("a_registry_cache_gives_every_key_and_brings_its_blobs_into_an_empty_store")
    else {
        return;
    };
    let env = Env::new();
    let (a, b) = (env.layer("a"), env.layer("b"));
    let entries = [
        entry("copy", Some(&a)),
        entry("run", Some(&b)),
        entry("env", None),
        entry("same-as-copy", Some(&a)),
    ];
    let reference = r(&format!("{}/cache/app:buildcache", server.host()));
    let reporter = Recorder::default();
    let digest = env.export(&registry_dest(&reference), &entries, &reporter);
    let pushed = env
        .reg
        .head_manifest(&reference)
        .expect("head")
        .expect("the tag exists");
    assert_eq!(pushed.digest, digest);
    // The format: an OCI image manifest of artifact type estiba cache, its
    // config the entries sorted by key, its layers each blob once.
    let manifest: serde_json::Value =
        serde_json::from_slice(&env.reg.get_manifest(&reference).expect("manifest").bytes)
            .expect("json");
    assert_eq!(manifest["mediaType"], media_type::OCI_MANIFEST);
    assert_eq!(manifest["artifactType"], "application/vnd.estiba.cache.v1");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.estiba.cache.config.v1+json"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 2);
    let config: Descriptor =
        serde_json::from_value(manifest["config"].clone()).expect("descriptor");
    let mut config_bytes = Vec::new();
    env.reg
        .get_blob(&reference, &config, &mut config_bytes, &|_| {})
        .expect("config");
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|e| e.key);
    let want: Vec<String> = sorted
        .iter()
        .map(|e| match &e.layer {
            None => format!(
                r#"{{"key":"{}","layer":null,"diffID":null,"created":1700000000}}"#,
                e.key
            ),
            Some(l) => {
                let at = layers
                    .iter()
                    .position(|d| {
                        d["digest"]
                            .as_str()
                            .and_then(|t| t.parse().ok())
                            .map(|t| diff_id_of(&env.store, &t))
                            == Some(l.diff_id)
                    })
                    .expect("the layer is in the manifest");
                format!(
                    r#"{{"key":"{}","layer":{at},"diffID":"{}","created":1700000000}}"#,
                    e.key, l.diff_id
                )
            }
        })
        .collect();
    assert_eq!(
        String::from_utf8(config_bytes).expect("utf-8"),
        format!(r#"{{"version":1,"entries":[{}]}}"#, want.join(","))
    );

    let reporter = Recorder::default();
    let cache = RemoteCache::load(Some(&env.reg), &[registry_source(&reference)], &reporter);
    assert_eq!(reporter.warnings(), Vec::<String>::new());
    assert!(!cache.is_empty());
    for (name, layer) in [("copy", &a), ("run", &b), ("same-as-copy", &a)] {
        let hit = cache.get(&key(name)).expect("a hit");
        assert_eq!(hit.created, 1_700_000_000);
        let got = hit.layer.expect("a layer");
        assert_eq!(got.diff_id, layer.diff_id, "{name}");
        assert_eq!(got.descriptor.media_type, media_type::OCI_LAYER_GZIP);
    }
    assert_eq!(hit_blob(&cache, "copy"), hit_blob(&cache, "same-as-copy"));
    let env_hit = cache
        .get(&key("env"))
        .expect("a hit for a step with no layer");
    assert_eq!(env_hit.layer, None);
    assert_eq!(cache.get(&key("never built")), None);

    let other = env.empty_store("other");
    fetch_and_check(&cache, &other, &hit_blob(&cache, "copy"));
    fetch_and_check(&cache, &other, &hit_blob(&cache, "run"));
    // A blob the store has now is not fetched again; one no source names
    // is no error.
    assert!(cache
        .fetch(&other, &hit_blob(&cache, "run").descriptor)
        .expect("fetch"));
    let unknown = Descriptor::new(media_type::OCI_LAYER_GZIP, Digest::of(b"nothing"), 7);
    assert!(!cache.fetch(&other, &unknown).expect("fetch"));
}

#[test]
fn exporting_the_same_entries_again_changes_and_uploads_nothing() {
    let Some(server) = start("exporting_the_same_entries_again_changes_and_uploads_nothing") else {
        return;
    };
    let env = Env::new();
    let (a, b) = (env.layer("a"), env.layer("b"));
    let entries = vec![
        entry("copy", Some(&a)),
        entry("run", Some(&b)),
        entry("env", None),
    ];
    let reference = r(&format!("{}/cache/app:buildcache", server.host()));
    let first = Recorder::default();
    let digest = env.export(&registry_dest(&reference), &entries, &first);
    let uploaded = |reporter: &Recorder| -> Vec<String> {
        reporter
            .logs()
            .into_iter()
            .filter(|l| l.starts_with("sha256:") && !l.ends_with("already exists"))
            .collect()
    };
    assert_eq!(
        uploaded(&first).len(),
        3,
        "the config and two layers go up: {:?}",
        first.logs()
    );

    let again = Recorder::default();
    let reversed: Vec<CacheEntry> = entries.iter().rev().cloned().collect();
    assert_eq!(
        env.export(&registry_dest(&reference), &reversed, &again),
        digest
    );
    assert_eq!(uploaded(&again), Vec::<String>::new(), "{:?}", again.logs());
    assert_eq!(
        again
            .logs()
            .iter()
            .filter(|l| l.ends_with("already exists"))
            .count(),
        3
    );
}

#[test]
fn a_local_cache_dir_round_trips_and_an_export_adds_to_what_is_there() {
    let env = Env::new();
    let (a, b) = (env.layer("a"), env.layer("b"));
    let dir = env.path("ci-cache");
    let dest = CacheDest::Local { dir: dir.clone() };
    let reporter = Recorder::default();
    let first = env.export_with(
        &dest,
        &[entry("copy", Some(&a))],
        Compression::Zstd,
        &reporter,
    );

    // What else is in the directory stays: another tag, its blobs.
    let index_path = dir.join("index.json");
    let mut index: Index =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index")).expect("parses");
    assert_eq!(index.manifests.len(), 1);
    let mut kept = index.manifests[0].clone();
    kept.annotations
        .insert(REF_NAME_ANNOTATION.to_string(), "main".to_string());
    index.manifests.push(kept);
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("json")).expect("write");
    let blob_of = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
    let layer_a = {
        let cache = RemoteCache::load(None, &[CacheSource::Local { dir: dir.clone() }], &reporter);
        hit_blob(&cache, "copy")
    };
    assert_eq!(layer_a.descriptor.media_type, media_type::OCI_LAYER_ZSTD);
    let inode = std::fs::metadata(blob_of(&layer_a.descriptor.digest))
        .expect("blob")
        .ino();

    let second = env.export_with(
        &dest,
        &[entry("copy", Some(&a)), entry("run", Some(&b))],
        Compression::Zstd,
        &reporter,
    );
    assert_ne!(first, second);
    assert_eq!(
        std::fs::metadata(blob_of(&layer_a.descriptor.digest))
            .expect("blob")
            .ino(),
        inode,
        "a blob the directory has is not written again"
    );
    let index: Index =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index")).expect("parses");
    let named = |name: &str| -> Vec<Digest> {
        index
            .manifests
            .iter()
            .filter(|d| d.annotations.get(REF_NAME_ANNOTATION).map(String::as_str) == Some(name))
            .map(|d| d.digest)
            .collect()
    };
    assert_eq!(named("latest"), vec![second]);
    assert_eq!(named("main"), vec![first]);
    assert!(blob_of(&first).is_file());
    assert!(dir.join("oci-layout").is_file());

    let cache = RemoteCache::load(None, &[CacheSource::Local { dir: dir.clone() }], &reporter);
    assert_eq!(reporter.warnings(), Vec::<String>::new());
    assert_eq!(hit_blob(&cache, "copy"), layer_a);
    assert_eq!(hit_blob(&cache, "run").diff_id, b.diff_id);
    let other = env.empty_store("other");
    fetch_and_check(&cache, &other, &hit_blob(&cache, "copy"));
    fetch_and_check(&cache, &other, &hit_blob(&cache, "run"));
}

/// Flips one byte of the file at `path`.
fn damage(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn a_blob_gone_or_damaged_is_an_error_of_fetch_and_never_of_load() {
    let Some(server) = start("a_blob_gone_or_damaged_is_an_error_of_fetch_and_never_of_load")
    else {
        return;
    };
    let env = Env::new();
    let (a, b) = (env.layer("a"), env.layer("b"));
    let entries = [entry("copy", Some(&a)), entry("run", Some(&b))];
    let reference = r(&format!("{}/cache/app:buildcache", server.host()));
    let dir = env.path("ci-cache");
    let reporter = Recorder::default();
    env.export(&registry_dest(&reference), &entries, &reporter);
    env.export(&CacheDest::Local { dir: dir.clone() }, &entries, &reporter);

    let sources = [
        (registry_source(&reference), "registry"),
        (CacheSource::Local { dir: dir.clone() }, "dir"),
    ];
    for (source, what) in sources {
        let cache = RemoteCache::load(Some(&env.reg), &[source], &reporter);
        let (gone, damaged) = (hit_blob(&cache, "copy"), hit_blob(&cache, "run"));
        let (gone_path, damaged_path) = match what {
            "registry" => (
                server.blob_data_path(&gone.descriptor.digest.to_string()),
                server.blob_data_path(&damaged.descriptor.digest.to_string()),
            ),
            _ => (
                dir.join("blobs/sha256").join(gone.descriptor.digest.hex()),
                dir.join("blobs/sha256")
                    .join(damaged.descriptor.digest.hex()),
            ),
        };
        std::fs::remove_file(&gone_path).expect("remove");
        damage(&damaged_path);

        let cache = RemoteCache::load(
            Some(&env.reg),
            &[match what {
                "registry" => registry_source(&reference),
                _ => CacheSource::Local { dir: dir.clone() },
            }],
            &reporter,
        );
        assert_eq!(reporter.warnings(), Vec::<String>::new(), "{what}");
        assert_eq!(hit_blob(&cache, "copy"), gone, "{what}: load still works");
        let other = env.empty_store(&format!("other-{what}"));
        for blob in [&gone, &damaged] {
            let err = cache
                .fetch(&other, &blob.descriptor)
                .expect_err("a gone or damaged blob is an error");
            assert!(!estiba::solve::error_chain(&err).is_empty());
            assert!(
                !other.has_blob(&blob.descriptor.digest),
                "{what}: nothing is stored"
            );
        }
    }
}

#[test]
fn a_missing_or_unreadable_source_is_a_warning_and_the_others_still_count() {
    let Some(server) =
        start("a_missing_or_unreadable_source_is_a_warning_and_the_others_still_count")
    else {
        return;
    };
    let env = Env::new();
    let a = env.layer("a");
    let reference = r(&format!("{}/cache/app:buildcache", server.host()));
    let missing = r(&format!("{}/cache/app:no-such-tag", server.host()));
    env.export(
        &registry_dest(&reference),
        &[entry("copy", Some(&a))],
        &Recorder::default(),
    );
    let garbage = env.path("garbage");
    std::fs::create_dir_all(&garbage).expect("mkdir");
    std::fs::write(garbage.join("index.json"), b"{not json").expect("write");

    let reporter = Recorder::default();
    let cache = RemoteCache::load(Some(&env.reg), &[registry_source(&missing)], &reporter);
    assert!(cache.is_empty());
    assert_eq!(cache.get(&key("copy")), None);
    let warnings = reporter.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("no-such-tag"), "{warnings:?}");

    let reporter = Recorder::default();
    let cache = RemoteCache::load(
        Some(&env.reg),
        &[
            registry_source(&missing),
            CacheSource::Local {
                dir: env.path("no-such-dir"),
            },
            CacheSource::Local { dir: garbage },
            registry_source(&reference),
        ],
        &reporter,
    );
    assert_eq!(reporter.warnings().len(), 3, "{:?}", reporter.warnings());
    assert_eq!(hit_blob(&cache, "copy").diff_id, a.diff_id);

    // A registry source with no registry client.
    let reporter = Recorder::default();
    let cache = RemoteCache::load(None, &[registry_source(&reference)], &reporter);
    assert!(cache.is_empty());
    let warnings = reporter.warnings();
    assert!(
        warnings.len() == 1 && warnings[0].contains("no registry client"),
        "{warnings:?}"
    );

    // An export to a registry without a client fails, before any work.
    let err = export_cache(
        &env.store,
        None,
        &registry_dest(&reference),
        &[entry("copy", Some(&a))],
        &CacheExportOptions::default(),
        &Recorder::default(),
        1,
    )
    .expect_err("no registry client");
    assert!(matches!(err, image::ImageError::NoRegistry(_)), "{err:?}");

    // An empty cache is a cache (the registry takes a manifest with no
    // layers), not a warning.
    let empty = r(&format!("{}/cache/empty:buildcache", server.host()));
    env.export(&registry_dest(&empty), &[], &Recorder::default());
    let reporter = Recorder::default();
    let cache = RemoteCache::load(Some(&env.reg), &[registry_source(&empty)], &reporter);
    assert!(cache.is_empty());
    assert_eq!(reporter.warnings(), Vec::<String>::new());
}

#[test]
fn of_two_sources_the_first_that_has_a_key_wins() {
    let Some(server) =
        RegistryServer::start_or_skip("of_two_sources_the_first_that_has_a_key_wins", Auth::None)
    else {
        return;
    };
    let env = Env::new();
    let (a, b, c, d) = (
        env.layer("a"),
        env.layer("b"),
        env.layer("c"),
        env.layer("d"),
    );
    let branch = r(&format!("{}/cache/app:branch", server.host()));
    let main = r(&format!("{}/cache/main:buildcache", server.host()));
    let reporter = Recorder::default();
    env.export(
        &registry_dest(&branch),
        &[entry("copy", Some(&a)), entry("run", Some(&b))],
        &reporter,
    );
    env.export(
        &registry_dest(&main),
        &[entry("copy", Some(&c)), entry("test", Some(&d))],
        &reporter,
    );

    let cache = RemoteCache::load(
        Some(&env.reg),
        &[registry_source(&branch), registry_source(&main)],
        &reporter,
    );
    assert_eq!(hit_blob(&cache, "copy").diff_id, a.diff_id);
    assert_eq!(hit_blob(&cache, "run").diff_id, b.diff_id);
    assert_eq!(hit_blob(&cache, "test").diff_id, d.diff_id);
    // Each blob comes from the source that named it.
    let other = env.empty_store("other");
    fetch_and_check(&cache, &other, &hit_blob(&cache, "test"));
    fetch_and_check(&cache, &other, &hit_blob(&cache, "run"));

    let cache = RemoteCache::load(
        Some(&env.reg),
        &[registry_source(&main), registry_source(&branch)],
        &reporter,
    );
    assert_eq!(hit_blob(&cache, "copy").diff_id, c.diff_id);
    assert_eq!(reporter.warnings(), Vec::<String>::new());
}

#[test]
fn an_image_pushed_with_inline_cache_metadata_is_a_cache_source() {
    let Some(server) = start("an_image_pushed_with_inline_cache_metadata_is_a_cache_source") else {
        return;
    };
    let env = Env::new();
    let (a, b, elsewhere) = (env.layer("a"), env.layer("b"), env.layer("elsewhere"));
    let layers = [a.clone(), b.clone()];
    let entries = [
        entry("copy", Some(&a)),
        entry("run", Some(&b)),
        entry("env", None),
        entry("other stage", Some(&elsewhere)),
    ];
    let push = |name: &str, inline: bool| -> Reference {
        let mut config = image::ImageConfig {
            architecture: "amd64".to_string(),
            os: "linux".to_string(),
            ..image::ImageConfig::default()
        };
        if inline {
            config.other.insert(
                INLINE_CACHE_KEY.to_string(),
                inline_metadata(&entries, &layers),
            );
        }
        let reference = r(&format!("{}/{name}:latest", server.host()));
        env.push_image(config, &layers, &reference, false);
        reference
    };
    let with_cache = push("team/app", true);
    let without = push("team/plain", false);

    let reporter = Recorder::default();
    let cache = RemoteCache::load(Some(&env.reg), &[registry_source(&with_cache)], &reporter);
    assert_eq!(reporter.warnings(), Vec::<String>::new());
    let manifest: estiba_cache::oci::Manifest =
        serde_json::from_slice(&env.reg.get_manifest(&with_cache).expect("manifest").bytes)
            .expect("parses");
    assert_eq!(hit_blob(&cache, "copy").descriptor, manifest.layers[0]);
    assert_eq!(hit_blob(&cache, "copy").diff_id, a.diff_id);
    assert_eq!(hit_blob(&cache, "run").descriptor, manifest.layers[1]);
    assert_eq!(cache.get(&key("env")).expect("hit").layer, None);
    assert_eq!(
        cache.get(&key("other stage")),
        None,
        "a layer the image lacks is not inline"
    );
    fetch_and_check(&cache, &env.empty_store("other"), &hit_blob(&cache, "run"));

    let reporter = Recorder::default();
    let cache = RemoteCache::load(Some(&env.reg), &[registry_source(&without)], &reporter);
    assert!(cache.is_empty());
    let warnings = reporter.warnings();
    assert!(
        warnings.len() == 1 && warnings[0].contains("holds no cache"),
        "{warnings:?}"
    );
}

#[test]
fn a_cache_in_another_repository_mounts_the_layers_the_image_push_sent() {
    let Some(server) = start("a_cache_in_another_repository_mounts_the_layers_the_image_push_sent")
    else {
        return;
    };
    let env = Env::new();
    let a = env.layer("a");
    let reference = r(&format!("{}/team/app:latest", server.host()));
    env.push_image(
        image::ImageConfig::default(),
        std::slice::from_ref(&a),
        &reference,
        true,
    );

    let cache = r(&format!("{}/team/cache:buildcache", server.host()));
    let reporter = Recorder::default();
    env.export(
        &registry_dest(&cache),
        &[entry("copy", Some(&a))],
        &reporter,
    );
    let logs = reporter.logs();
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains(" mounted from ") && l.ends_with("/team/app"))
            .count(),
        1,
        "the layer is mounted, not uploaded again: {logs:?}"
    );
}

#[test]
fn skopeo_copies_the_cache_between_a_registry_and_a_dir_and_both_load() {
    let Some(server) = start("skopeo_copies_the_cache_between_a_registry_and_a_dir_and_both_load")
    else {
        return;
    };
    let env = Env::new();
    let (a, b) = (env.layer("a"), env.layer("b"));
    let entries = [entry("copy", Some(&a)), entry("env", None)];
    let reporter = Recorder::default();
    // A registry cache, copied by the reference client into a layout.
    let pushed = r(&format!("{}/cache/app:buildcache", server.host()));
    let digest = env.export(&registry_dest(&pushed), &entries, &reporter);
    let copied = env.path("copied");
    harness::skopeo_copy(
        &format!("docker://{pushed}"),
        &format!("oci:{}:latest", copied.display()),
        &["--src-tls-verify=false"],
    )
    .expect("skopeo copies the cache out of the registry");
    // A layout cache, copied by it into a registry.
    let dir = env.path("ci-cache");
    env.export(
        &CacheDest::Local { dir: dir.clone() },
        &[entry("run", Some(&b))],
        &reporter,
    );
    let uploaded = r(&format!("{}/cache/from-dir:buildcache", server.host()));
    harness::skopeo_copy(
        &format!("oci:{}:latest", dir.display()),
        &format!("docker://{uploaded}"),
        &["--dest-tls-verify=false"],
    )
    .expect("skopeo copies the layout into the registry");

    let cache = RemoteCache::load(
        Some(&env.reg),
        &[
            CacheSource::Local { dir: copied },
            registry_source(&uploaded),
        ],
        &reporter,
    );
    assert_eq!(reporter.warnings(), Vec::<String>::new());
    assert_eq!(hit_blob(&cache, "copy").diff_id, a.diff_id);
    assert_eq!(cache.get(&key("env")).expect("hit").layer, None);
    let other = env.empty_store("other");
    fetch_and_check(&cache, &other, &hit_blob(&cache, "copy"));
    fetch_and_check(&cache, &other, &hit_blob(&cache, "run"));
    let raw = harness::skopeo_inspect(
        &format!("docker://{pushed}"),
        &["--raw", "--tls-verify=false"],
    )
    .expect("inspect");
    assert_eq!(raw["artifactType"], "application/vnd.estiba.cache.v1");
    // skopeo kept the manifest's bytes: the digest estiba exported.
    let index: Index = serde_json::from_slice(
        &std::fs::read(env.path("copied").join("index.json")).expect("index"),
    )
    .expect("parses");
    assert_eq!(index.manifests[0].digest, digest);
}
