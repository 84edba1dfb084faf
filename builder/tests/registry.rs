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
use std::path::{Path, PathBuf};
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
        Self::start_with(htpasswd, None)
    }

    /// With `tls`: the (certificate, key) it serves https with.
    fn start_with(htpasswd: Option<(&str, &str)>, tls: Option<(&Path, &Path)>) -> TestRegistry {
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
        if let Some((cert, key)) = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
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
    let proxy = CuttingProxy::start(&registry.addr, u64::MAX, 0);
    let image = r(&format!("{}/big/blob:1", proxy.addr));
    let bytes = blob_bytes(1024 * 1024 + 12_345, 4);
    let desc = push_bytes(&reg, &image, media_type::OCI_LAYER_GZIP, &bytes);
    assert_eq!(proxy.count("PATCH "), 4, "1 MiB + 12 KiB in 300 KiB chunks");
    assert_eq!(proxy.count("PUT "), 1, "the closing PUT");
    assert_eq!(fetch_blob(&reg, &image, &desc), bytes);

    // At the threshold: one PUT, no PATCH.
    let small = blob_bytes(1024 * 1024, 5);
    push_bytes(&reg, &image, media_type::OCI_LAYER_GZIP, &small);
    assert_eq!(proxy.count("PATCH "), 4);
    assert_eq!(proxy.count("PUT "), 2);
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

/// Runs openssl in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for 127.0.0.1 it signed: (ca.crt, server.crt, server.key).
fn make_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509", "-days", "2", "-subj", "/CN=estiba test CA"];
    args.extend(ec);
    args.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &args);
    let mut args = vec!["req", "-subj", "/CN=127.0.0.1"];
    args.extend(ec);
    args.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
    );
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

#[test]
fn tls_with_an_unknown_ca_says_where_to_put_it() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = make_ca(pki.path());
    let registry = TestRegistry::start_with(None, Some((&cert, &key)));
    let home = tempfile::tempdir().expect("tempdir");
    let image = r(&format!("{}/tls/app:1", registry.addr));

    let err = client(home.path())
        .head_manifest(&image)
        .expect_err("unknown CA");
    let certs = home.path().join("certs.d");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot verify the TLS certificate of {addr}: put its CA in {certs}/{addr}/ca.crt, or list {addr} in \"insecure-registries\" in {config}",
            addr = registry.addr,
            certs = certs.display(),
            config = home.path().join("registries.json").display(),
        )
    );

    // Listed as insecure: the certificate is not checked.
    std::fs::write(
        home.path().join("registries.json"),
        format!(r#"{{"insecure-registries": ["{}"]}}"#, registry.addr),
    )
    .expect("write config");
    assert_eq!(
        client(home.path()).head_manifest(&image).expect("insecure"),
        None
    );
    std::fs::remove_file(home.path().join("registries.json")).expect("rm");

    // The CA where docker reads it: verified https.
    std::fs::create_dir_all(certs.join(&registry.addr)).expect("mkdir");
    std::fs::copy(&ca, certs.join(&registry.addr).join("ca.crt")).expect("copy");
    let reg = client(home.path());
    let bytes = blob_bytes(2000, 7);
    let desc = push_bytes(&reg, &image, media_type::OCI_LAYER_GZIP, &bytes);
    assert_eq!(fetch_blob(&reg, &image, &desc), bytes);
}

/// A loopback proxy that cuts the first `cuts` connections that carry
/// more than `after` bytes of the registry's answers, right there, counting every
/// answer byte it forwards, the cuts it made and the requests of each
/// method it saw.
struct CuttingProxy {
    addr: String,
    forwarded: Arc<AtomicU64>,
    cuts_left: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl CuttingProxy {
    /// How many requests began with `prefix` (`"PATCH "`, `"GET "`), or
    /// had a `range: bytes=` header.
    fn count(&self, prefix: &str) -> usize {
        let requests = self.requests.lock().expect("lock");
        requests.iter().filter(|r| r.starts_with(prefix)).count()
    }
}

/// Copies a client's bytes to the server, noting each request line.
fn copy_requests(
    mut from: TcpStream,
    mut to: TcpStream,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut window = std::mem::take(&mut tail);
        window.extend_from_slice(&buf[..n]);
        for method in ["GET ", "HEAD ", "POST ", "PATCH ", "PUT ", "range: bytes="] {
            let needle = if method.starts_with("range") {
                method.to_string()
            } else {
                format!("{method}/v2/")
            };
            let hits = window
                .windows(needle.len())
                .filter(|w| *w == needle.as_bytes())
                .count();
            let mut requests = requests.lock().expect("lock");
            requests.extend(std::iter::repeat_n(method.to_string(), hits));
        }
        tail = window[window.len().saturating_sub(16)..].to_vec();
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl CuttingProxy {
    fn start(upstream: &str, after: u64, cuts: usize) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let forwarded = Arc::new(AtomicU64::new(0));
        let cuts_left = Arc::new(AtomicUsize::new(cuts));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cuts_seen, requests_seen) = (cuts_left.clone(), requests.clone());
        let upstream = upstream.to_string();
        let total = forwarded.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let cuts_left = cuts_left.clone();
                let (c_read, s_write) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let requests = requests.clone();
                std::thread::spawn(move || copy_requests(c_read, s_write, requests));
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
                        // Past `after` bytes, the connection is cut if a cut is left.
                        let cut = sent + n as u64 > after
                            && cuts_left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                                    c.checked_sub(1)
                                })
                                .is_ok();
                        let n = if cut {
                            usize::try_from(after - sent).unwrap_or(n)
                        } else {
                            n
                        };
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        total.fetch_add(n as u64, Ordering::SeqCst);
                        if cut {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy {
            addr,
            forwarded,
            cuts_left: cuts_seen,
            requests: requests_seen,
        }
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
    assert_eq!(
        proxy.cuts_left.load(Ordering::SeqCst),
        0,
        "both cuts happened"
    );
    assert_eq!(
        proxy.count("GET "),
        4,
        "the /v2/ probe, then the blob in three pieces"
    );
    let forwarded = proxy.forwarded.load(Ordering::SeqCst);
    // Starting over would have sent at least one cut megabyte twice.
    assert!(
        forwarded < desc.size + 64 * 1024,
        "forwarded {forwarded} bytes for a {} byte blob: not resumed",
        desc.size
    );
}

/// The connections of `listener` that speak plain HTTP; a TLS hello (the
/// client's https probe) is hung up on, as an http server would fail it.
fn http_clients(listener: TcpListener) -> impl Iterator<Item = TcpStream> {
    std::iter::from_fn(move || listener.accept().ok().map(|(c, _)| c)).filter(|client| {
        let mut first = [0u8; 1];
        client.peek(&mut first).is_ok_and(|n| n == 1) && first[0] != 0x16
    })
}

/// A loopback proxy that answers the first `failures` HTTP requests itself
/// with `status` (and `Retry-After: 0`) and forwards the rest.
fn failing_proxy(upstream: &str, status: &'static str, failures: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let left = Arc::new(AtomicUsize::new(failures));
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for mut client in http_clients(listener) {
            if left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let answer = format!(
                    "HTTP/1.1 {status}\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = client.write_all(answer.as_bytes());
                let _ = client.shutdown(std::net::Shutdown::Write);
                // Drain what the client still sends so it sees the answer.
                let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = std::io::copy(&mut client, &mut std::io::sink());
                continue;
            }
            let Ok(server) = TcpStream::connect(&upstream) else {
                return;
            };
            let (c2, s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let (mut c2, mut s2) = (c2, s2);
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut server, mut client) = (server, client);
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn server_errors_and_rate_limits_are_retried_then_reported() {
    let registry = TestRegistry::start(None);
    let home = tempfile::tempdir().expect("tempdir");
    let direct = client(home.path());
    let image = r(&format!("{}/flaky/app:1", registry.addr));
    let layer = push_bytes(
        &direct,
        &image,
        media_type::OCI_LAYER_GZIP,
        &blob_bytes(50_000, 8),
    );
    let config = push_bytes(&direct, &image, media_type::OCI_CONFIG, b"{}");
    let manifest = manifest_for(&config, std::slice::from_ref(&layer));
    direct
        .put_manifest(&image, media_type::OCI_MANIFEST, &manifest)
        .expect("put manifest");

    // The /v2/ probe takes the first failure; then three more on the way.
    let proxy = failing_proxy(&registry.addr, "503 Service Unavailable", 4);
    let through = r(&format!("{proxy}/flaky/app:1"));
    let reg = client(home.path());
    assert_eq!(reg.get_manifest(&through).expect("retried").bytes, manifest);
    assert_eq!(fetch_blob(&reg, &through, &layer), blob_bytes(50_000, 8));
    let pushed = blob_bytes(70_000, 9);
    push_bytes(&reg, &through, media_type::OCI_LAYER_GZIP, &pushed);
    assert!(direct
        .blob_exists(&image, &Digest::of(&pushed))
        .expect("head"));

    let proxy = failing_proxy(&registry.addr, "429 Too Many Requests", 1000);
    let through = r(&format!("{proxy}/flaky/app:1"));
    let err = client(home.path())
        .get_manifest(&through)
        .expect_err("always 429");
    assert_eq!(
        err.to_string(),
        format!(
            "{proxy} kept answering 429 (too many requests) for {proxy}/flaky/app:1 after {} attempts: wait and try again",
            estiba::registry::MAX_ATTEMPTS
        )
    );
}

#[test]
fn threads_share_one_client_for_concurrent_downloads() {
    let registry = TestRegistry::start(None);
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client(home.path());
    let image = r(&format!("{}/many/layers:1", registry.addr));
    let blobs: Vec<(Vec<u8>, Descriptor)> = (0..6u8)
        .map(|i| {
            let bytes = blob_bytes(200_000 + usize::from(i) * 1000, 20 + i);
            let desc = push_bytes(&reg, &image, media_type::OCI_LAYER_GZIP, &bytes);
            (bytes, desc)
        })
        .collect();
    let reg = client(home.path());
    std::thread::scope(|s| {
        for (bytes, desc) in &blobs {
            let (reg, image) = (&reg, &image);
            s.spawn(move || assert_eq!(&fetch_blob(reg, image, desc), bytes));
        }
    });
}

#[test]
fn docker_hub_pulls_go_to_the_configured_mirror() {
    let mirror = TestRegistry::start(None);
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client(home.path());
    let in_mirror = r(&format!("{}/library/busybox:1", mirror.addr));
    let config = push_bytes(&reg, &in_mirror, media_type::OCI_CONFIG, b"{}");
    let manifest = manifest_for(&config, &[]);
    reg.put_manifest(&in_mirror, media_type::OCI_MANIFEST, &manifest)
        .expect("put manifest");

    std::fs::write(
        home.path().join("registries.json"),
        format!(r#"{{"registry-mirrors": ["http://{}"]}}"#, mirror.addr),
    )
    .expect("write config");
    let reg = client(home.path());
    let hub = r("busybox:1");
    assert_eq!(
        reg.get_manifest(&hub).expect("from the mirror").bytes,
        manifest
    );
    assert_eq!(fetch_blob(&reg, &hub, &config), b"{}");
}

/// Reads an HTTP request head (up to the blank line) from `stream`.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A loopback server standing for blob storage (what S3 is to Docker
/// Hub): serves `body` to any GET and keeps each request head it got.
fn blob_storage(body: Vec<u8>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let head = read_head(&mut stream);
            seen.lock().expect("lock").push(head);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (addr, heads)
}

/// A loopback proxy in front of a registry that redirects blob GETs to
/// `storage` (307) and forwards every other request, one per connection.
fn redirecting_proxy(upstream: &str, storage: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (upstream, storage) = (upstream.to_string(), storage.to_string());
    std::thread::spawn(move || {
        for mut client in http_clients(listener) {
            let head = read_head(&mut client);
            let path = head.split(' ').nth(1).unwrap_or("/").to_string();
            if head.starts_with("GET ") && path.contains("/blobs/sha256:") {
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{storage}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = client.write_all(answer.as_bytes());
                continue;
            }
            let Ok(mut server) = TcpStream::connect(&upstream) else {
                return;
            };
            let head = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
            if server.write_all(head.as_bytes()).is_err() {
                continue;
            }
            let mut c2 = client.try_clone().expect("clone");
            let mut s2 = server.try_clone().expect("clone");
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
            });
            let _ = std::io::copy(&mut server, &mut client);
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    });
    addr
}

#[test]
fn blob_redirects_are_followed_without_the_registrys_credentials() {
    let registry = TestRegistry::start(Some(("ana", "s3cret")));
    let home = tempfile::tempdir().expect("tempdir");
    let bytes = blob_bytes(40_000, 30);
    let (storage, heads) = blob_storage(bytes.clone());
    let proxy = redirecting_proxy(&registry.addr, &storage);
    credentials::store(home.path(), &proxy, "ana", "s3cret").expect("store");
    let reg = client(home.path());
    let image = r(&format!("{proxy}/private/app:1"));
    let desc = Descriptor::new(
        media_type::OCI_LAYER_GZIP,
        Digest::of(&bytes),
        bytes.len() as u64,
    );
    assert_eq!(fetch_blob(&reg, &image, &desc), bytes);
    let heads = heads.lock().expect("lock");
    assert_eq!(heads.len(), 1, "one GET reached the storage");
    assert!(
        !heads[0].to_ascii_lowercase().contains("authorization:"),
        "the registry's credentials went to the storage: {}",
        heads[0]
    );
}
