//! The distribution client against a real registry (Debian's
//! `docker-registry`, distribution v2) started on 127.0.0.1 by each test:
//! push and pull of blobs and manifests, mounts and their 202 fallback,
//! chunked uploads, basic auth, and a download resumed after the
//! connection is cut.

use estiba::registry::{credentials, Reference, Registry, RegistryError, RegistryOptions};
use estiba_cache::oci::{media_type, Descriptor};
use estiba_cache::Digest;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `docker-registry` on a free loopback port, stopped on drop.
struct TestRegistry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    fn start(htpasswd: Option<(&str, &str)>) -> TestRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd runs (apache2-utils)");
            assert!(out.status.success());
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry runs (Debian package docker-registry)");
        let started = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        TestRegistry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// A client reading credentials from `docker_config` and no system config.
fn client(docker_config: &Path) -> Registry {
    client_with(docker_config, |_| {})
}

fn client_with(docker_config: &Path, tweak: impl FnOnce(&mut RegistryOptions)) -> Registry {
    let mut opts = RegistryOptions {
        docker_config_dir: Some(docker_config.to_path_buf()),
        certs_dir: docker_config.join("certs.d"),
        config_file: Some(docker_config.join("registries.json")),
        ..RegistryOptions::default()
    };
    tweak(&mut opts);
    Registry::new(opts).expect("client")
}

fn r(text: &str) -> Reference {
    Reference::parse(text).expect("reference")
}

/// Deterministic, incompressible-looking bytes.
fn blob_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn push_bytes(reg: &Registry, repo: &Reference, media: &str, bytes: &[u8]) -> Descriptor {
    let desc = Descriptor::new(media, Digest::of(bytes), bytes.len() as u64);
    let data = Arc::new(bytes.to_vec());
    let open = move || -> std::io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(std::io::Cursor::new(data.as_ref().clone())))
    };
    reg.put_blob(repo, &desc, &open, &|_| {}).expect("put blob");
    desc
}

fn fetch_blob(reg: &Registry, repo: &Reference, desc: &Descriptor) -> Vec<u8> {
    let mut out = Vec::new();
    reg.get_blob(repo, desc, &mut out, &|_| {})
        .expect("get blob");
    out
}

fn manifest_for(config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": config,
        "layers": layers,
    }))
    .expect("json")
}

#[test]
fn pushes_a_blob_and_manifest_then_pulls_them_back() {
    let registry = TestRegistry::start(None);
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client(home.path());
    let image = r(&format!("{}/team/app:v1", registry.addr));

    let layer = blob_bytes(300_000, 1);
    let ldesc = Descriptor::new(
        media_type::OCI_LAYER_GZIP,
        Digest::of(&layer),
        layer.len() as u64,
    );
    assert!(!reg.blob_exists(&image, &ldesc.digest).expect("head"));
    let progress = AtomicU64::new(0);
    let data = layer.clone();
    let open = move || -> std::io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(std::io::Cursor::new(data.clone())))
    };
    reg.put_blob(&image, &ldesc, &open, &|n| {
        progress.store(n, Ordering::Relaxed)
    })
    .expect("put layer");
    assert_eq!(progress.load(Ordering::Relaxed), layer.len() as u64);
    assert!(reg.blob_exists(&image, &ldesc.digest).expect("head"));
    let cdesc = push_bytes(
        &reg,
        &image,
        media_type::OCI_CONFIG,
        br#"{"architecture":"amd64","os":"linux"}"#,
    );

    let manifest = manifest_for(&cdesc, std::slice::from_ref(&ldesc));
    let digest = reg
        .put_manifest(&image, media_type::OCI_MANIFEST, &manifest)
        .expect("put manifest");
    assert_eq!(digest, Digest::of(&manifest));

    // Another client (no shared state) reads it all back.
    let reg = client(home.path());
    let fetched = reg.get_manifest(&image).expect("get by tag");
    assert_eq!(fetched.bytes, manifest);
    assert_eq!(fetched.media_type, media_type::OCI_MANIFEST);
    assert_eq!(fetched.digest, digest);
    let by_digest = reg
        .get_manifest(&image.with_digest(digest))
        .expect("get by digest");
    assert_eq!(by_digest.bytes, manifest);
    let head = reg.head_manifest(&image).expect("head").expect("exists");
    assert_eq!(
        head,
        Descriptor::new(media_type::OCI_MANIFEST, digest, manifest.len() as u64)
    );

    let seen = AtomicU64::new(0);
    let mut out = Vec::new();
    reg.get_blob(&image, &ldesc, &mut out, &|n| {
        seen.store(n, Ordering::Relaxed)
    })
    .expect("get layer");
    assert_eq!(out, layer);
    assert_eq!(seen.load(Ordering::Relaxed), layer.len() as u64);

    // A descriptor that lies about the digest is refused.
    let wrong = Descriptor::new(media_type::OCI_CONFIG, Digest::of(b"other"), cdesc.size);
    let err = reg
        .get_blob(&image, &wrong, &mut Vec::new(), &|_| {})
        .expect_err("unknown blob");
    assert!(err.to_string().contains("not found"), "{err}");
    let lying = Descriptor::new(media_type::OCI_LAYER_GZIP, ldesc.digest, ldesc.size - 1);
    let err = reg
        .get_blob(&image, &lying, &mut Vec::new(), &|_| {})
        .expect_err("size mismatch");
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err}");
}

#[test]
fn missing_tags_say_not_found_and_head_says_none() {
    let registry = TestRegistry::start(None);
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client(home.path());
    let image = r(&format!("{}/nothing/here:v9", registry.addr));
    assert_eq!(reg.head_manifest(&image).expect("head"), None);
    let err = reg.get_manifest(&image).expect_err("missing");
    assert_eq!(
        err.to_string(),
        format!(
            "{}/nothing/here:v9 not found in {} (check the name and tag)",
            registry.addr, registry.addr
        )
    );
}

#[test]
fn mounts_across_repositories_and_falls_back_to_upload_on_202() {
    let registry = TestRegistry::start(None);
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client(home.path());
    let base = r(&format!("{}/base/os:1", registry.addr));
    let app = r(&format!("{}/team/app:1", registry.addr));
    let layer = push_bytes(
        &reg,
        &base,
        media_type::OCI_LAYER_GZIP,
        &blob_bytes(10_000, 2),
    );

    assert!(
        reg.mount_blob(&app, &base, &layer.digest).expect("mount"),
        "201"
    );
    assert!(reg.blob_exists(&app, &layer.digest).expect("head"));

    // A blob the source does not hold: 202, and the upload goes on in
    // the session the registry opened.
    let other = blob_bytes(5_000, 3);
    let odesc = Descriptor::new(
        media_type::OCI_LAYER_GZIP,
        Digest::of(&other),
        other.len() as u64,
    );
    assert!(
        !reg.mount_blob(&app, &base, &odesc.digest)
            .expect("mount answered"),
        "202"
    );
    push_bytes(&reg, &app, media_type::OCI_LAYER_GZIP, &other);
    assert!(reg.blob_exists(&app, &odesc.digest).expect("head"));
    assert!(!reg.blob_exists(&base, &odesc.digest).expect("head"));
}

#[test]
fn uploads_in_chunks_above_the_threshold() {
    let registry = TestRegistry::start(None);
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client_with(home.path(), |o| {
        o.chunked_upload_threshold = 1024 * 1024;
        o.upload_chunk_size = 300 * 1024;
    });
    let image = r(&format!("{}/big/blob:1", registry.addr));
    let bytes = blob_bytes(1024 * 1024 + 12_345, 4);
    let desc = push_bytes(&reg, &image, media_type::OCI_LAYER_GZIP, &bytes);
    assert_eq!(fetch_blob(&reg, &image, &desc), bytes);
}

#[test]
fn basic_auth_logs_in_and_refuses_without_credentials() {
    let registry = TestRegistry::start(Some(("ana", "s3cret")));
    let home = tempfile::tempdir().expect("tempdir");
    let image = r(&format!("{}/private/app:1", registry.addr));

    let reg = client(home.path());
    let err = reg.get_manifest(&image).expect_err("anonymous");
    assert_eq!(
        err.to_string(),
        format!(
            "not authorized to pull {}/private/app:1: log in with `estiba login {}`",
            registry.addr, registry.addr
        )
    );
    let bytes = blob_bytes(1000, 5);
    let desc = Descriptor::new(media_type::OCI_LAYER_GZIP, Digest::of(&bytes), 1000);
    let open = || -> std::io::Result<Box<dyn Read + Send>> { Ok(Box::new(std::io::empty())) };
    let err = reg
        .put_blob(&image, &desc, &open, &|_| {})
        .expect_err("anonymous push");
    assert!(
        err.to_string().starts_with("not authorized to push"),
        "{err}"
    );

    let err = reg
        .login(&registry.addr, "ana", "wrong")
        .expect_err("bad password");
    assert!(matches!(err, RegistryError::LoginFailed { .. }), "{err}");
    reg.login(&registry.addr, "ana", "s3cret").expect("login");
    credentials::store(home.path(), &registry.addr, "ana", "s3cret").expect("store");

    let reg = client(home.path());
    push_bytes(&reg, &image, media_type::OCI_LAYER_GZIP, &bytes);
    assert_eq!(fetch_blob(&reg, &image, &desc), bytes);
}

/// A loopback proxy that cuts the first `cuts` connections after
/// forwarding `after` bytes of the registry's answers, counting every
/// answer byte it forwards.
struct CuttingProxy {
    addr: String,
    forwarded: Arc<AtomicU64>,
}

impl CuttingProxy {
    fn start(upstream: &str, after: u64, cuts: usize) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let forwarded = Arc::new(AtomicU64::new(0));
        let cuts_left = Arc::new(AtomicUsize::new(cuts));
        let upstream = upstream.to_string();
        let total = forwarded.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let cut = cuts_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let limit = if cut { after } else { u64::MAX };
                let (mut c_read, mut s_write) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                });
                let total = total.clone();
                std::thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let mut sent = 0u64;
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let n = n.min(usize::try_from(limit - sent).unwrap_or(usize::MAX));
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        total.fetch_add(n as u64, Ordering::SeqCst);
                        if sent >= limit {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy { addr, forwarded }
    }
}

#[test]
fn a_cut_download_resumes_where_it_stopped() {
    let registry = TestRegistry::start(None);
    let home = tempfile::tempdir().expect("tempdir");
    let direct = client(home.path());
    let image = r(&format!("{}/cut/blob:1", registry.addr));
    let bytes = blob_bytes(3 * 1024 * 1024, 6);
    let desc = push_bytes(&direct, &image, media_type::OCI_LAYER_GZIP, &bytes);

    let proxy = CuttingProxy::start(&registry.addr, 1024 * 1024, 2);
    let through = r(&format!("{}/cut/blob:1", proxy.addr));
    let reg = client(home.path());
    let mut out = Vec::new();
    reg.get_blob(&through, &desc, &mut out, &|_| {})
        .expect("resumed download");
    assert_eq!(Digest::of(&out), desc.digest);
    let forwarded = proxy.forwarded.load(Ordering::SeqCst);
    // Starting over would have sent at least one cut megabyte twice.
    assert!(
        forwarded < desc.size + 64 * 1024,
        "forwarded {forwarded} bytes for a {} byte blob: not resumed",
        desc.size
    );
}
