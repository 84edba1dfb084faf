//! The distribution client against a real registry (Debian's
//! `docker-registry`, distribution v2) started on 127.0.0.1 by each test:
//! push and pull of blobs and manifests, mounts and their 202 fallback,
//! chunked uploads, basic auth, and a download resumed after the
//! connection is cut.

#[path = "../../tests/support/registry.rs"]
mod harness;

use estiba::registry::{credentials, Reference, Registry, RegistryError, RegistryOptions};
use estiba_cache::oci::{media_type, Descriptor};
use estiba_cache::Digest;
use harness::{Auth, FaultProxy, Faults, RegistryServer, TokenPolicy};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// Pushes an image of `layers` (already pushed) and an empty config under
/// `image`'s tag; the manifest.
fn push_image(reg: &Registry, image: &Reference, layers: &[Descriptor]) -> Vec<u8> {
    let config = push_bytes(reg, image, media_type::OCI_CONFIG, b"{}");
    let manifest = manifest_for(&config, layers);
    reg.put_manifest(image, media_type::OCI_MANIFEST, &manifest)
        .expect("push manifest");
    manifest
}

/// Pushes a one-layer image of [`blob_bytes`]`(len, seed)`; the layer's
/// descriptor and the manifest.
fn push_layer_image(
    reg: &Registry,
    image: &Reference,
    len: usize,
    seed: u8,
) -> (Descriptor, Vec<u8>) {
    let layer = push_bytes(
        reg,
        image,
        media_type::OCI_LAYER_GZIP,
        &blob_bytes(len, seed),
    );
    let manifest = push_image(reg, image, std::slice::from_ref(&layer));
    (layer, manifest)
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
    let Some(registry) = RegistryServer::start_or_skip(
        "pushes_a_blob_and_manifest_then_pulls_them_back",
        Auth::None,
    ) else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client(home.path());
    let image = r(&format!("{}/team/app:v1", registry.host()));

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
    let Some(registry) =
        RegistryServer::start_or_skip("missing_tags_say_not_found_and_head_says_none", Auth::None)
    else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client(home.path());
    let image = r(&format!("{}/nothing/here:v9", registry.host()));
    assert_eq!(reg.head_manifest(&image).expect("head"), None);
    let err = reg.get_manifest(&image).expect_err("missing");
    assert_eq!(
        err.to_string(),
        format!(
            "{}/nothing/here:v9 not found in {} (check the name and tag)",
            registry.host(),
            registry.host()
        )
    );
}

#[test]
fn mounts_across_repositories_and_falls_back_to_upload_on_202() {
    let Some(registry) = RegistryServer::start_or_skip(
        "mounts_across_repositories_and_falls_back_to_upload_on_202",
        Auth::None,
    ) else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client(home.path());
    let base = r(&format!("{}/base/os:1", registry.host()));
    let app = r(&format!("{}/team/app:1", registry.host()));
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
    let Some(registry) =
        RegistryServer::start_or_skip("uploads_in_chunks_above_the_threshold", Auth::None)
    else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client_with(home.path(), |o| {
        o.chunked_upload_threshold = 1024 * 1024;
        o.upload_chunk_size = 300 * 1024;
    });
    let proxy = CuttingProxy::start(&registry.host(), u64::MAX, 0);
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

/// A blob uploaded while it is made: PATCHes of at most the chunk size
/// as the bytes come, the digest only in the closing PUT; a producer that
/// fails commits nothing.
#[test]
fn a_blob_streams_up_while_it_is_made() {
    let Some(registry) =
        RegistryServer::start_or_skip("a_blob_streams_up_while_it_is_made", Auth::None)
    else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client_with(home.path(), |o| o.upload_chunk_size = 300 * 1024);
    let proxy = CuttingProxy::start(&registry.host(), u64::MAX, 0);
    let image = r(&format!("{}/streamed/blob:1", proxy.addr));
    let bytes = blob_bytes(700 * 1024 + 3, 6);
    let desc = Descriptor::new(
        media_type::OCI_LAYER_GZIP,
        Digest::of(&bytes),
        bytes.len() as u64,
    );
    let (made, uploaded) = reg.put_blob_streamed(
        &image,
        Digest::of(b"label"),
        |out| {
            // Written in uneven pieces, as a compressor makes them.
            for piece in bytes.chunks(100_000) {
                out.write_all(piece)?;
            }
            Ok::<_, std::io::Error>(desc.clone())
        },
        Descriptor::clone,
        &|_| {},
    );
    assert_eq!(made.expect("made"), desc);
    uploaded.expect("streamed upload");
    assert_eq!(proxy.count("PATCH "), 3, "700 KiB in 300 KiB requests");
    assert_eq!(proxy.count("PUT "), 1, "the closing PUT");
    assert_eq!(fetch_blob(&reg, &image, &desc), bytes);

    // A producer that fails half way: the registry never gets the blob.
    let other = blob_bytes(400 * 1024, 7);
    let other_digest = Digest::of(&other);
    let (made, _) = reg.put_blob_streamed(
        &image,
        Digest::of(b"label"),
        |out| {
            out.write_all(&other[..200 * 1024])?;
            Err::<Descriptor, _>(std::io::Error::other("the layer is corrupt"))
        },
        Descriptor::clone,
        &|_| {},
    );
    assert!(made.is_err());
    assert_eq!(proxy.count("PUT "), 1, "no closing PUT");
    assert!(!reg.blob_exists(&image, &other_digest).expect("head"));

    // A descriptor that does not match what was sent is refused.
    let (_, uploaded) = reg.put_blob_streamed(
        &image,
        Digest::of(b"label"),
        |out| {
            out.write_all(&other)?;
            Ok::<_, std::io::Error>(())
        },
        |()| Descriptor::new(media_type::OCI_LAYER_GZIP, other_digest, 5),
        &|_| {},
    );
    assert!(
        matches!(uploaded, Err(RegistryError::SizeMismatch { .. })),
        "{uploaded:?}"
    );
    assert!(!reg.blob_exists(&image, &other_digest).expect("head"));
}

#[test]
fn basic_auth_logs_in_and_refuses_without_credentials() {
    let Some(registry) = RegistryServer::start_or_skip(
        "basic_auth_logs_in_and_refuses_without_credentials",
        Auth::basic("ana", "s3cret"),
    ) else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let image = r(&format!("{}/private/app:1", registry.host()));

    let reg = client(home.path());
    let err = reg.get_manifest(&image).expect_err("anonymous");
    assert_eq!(
        err.to_string(),
        format!(
            "not authorized to pull {}/private/app:1: log in with `estiba login {}`",
            registry.host(),
            registry.host()
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
        .login(&registry.host(), "ana", "wrong")
        .expect_err("bad password");
    assert!(matches!(err, RegistryError::LoginFailed { .. }), "{err}");
    reg.login(&registry.host(), "ana", "s3cret").expect("login");
    credentials::store(home.path(), &registry.host(), "ana", "s3cret").expect("store");

    let reg = client(home.path());
    push_bytes(&reg, &image, media_type::OCI_LAYER_GZIP, &bytes);
    assert_eq!(fetch_blob(&reg, &image, &desc), bytes);
}

#[test]
fn tls_with_an_unknown_ca_says_where_to_put_it() {
    let Some(registry) = harness::or_skip(
        "tls_with_an_unknown_ca_says_where_to_put_it",
        RegistryServer::start(Auth::Tls),
    ) else {
        return;
    };
    let ca = registry.ca_file().expect("a TLS server has a CA");
    let home = tempfile::tempdir().expect("tempdir");
    let image = r(&format!("{}/tls/app:1", registry.host()));

    let err = client(home.path())
        .head_manifest(&image)
        .expect_err("unknown CA");
    let certs = home.path().join("certs.d");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot verify the TLS certificate of {addr}: put its CA in {certs}/{addr}/ca.crt, or list {addr} in \"insecure-registries\" in {config}",
            addr = registry.host(),
            certs = certs.display(),
            config = home.path().join("registries.json").display(),
        )
    );

    // Listed as insecure: the certificate is not checked.
    std::fs::write(
        home.path().join("registries.json"),
        format!(r#"{{"insecure-registries": ["{}"]}}"#, registry.host()),
    )
    .expect("write config");
    assert_eq!(
        client(home.path()).head_manifest(&image).expect("insecure"),
        None
    );
    std::fs::remove_file(home.path().join("registries.json")).expect("rm");

    // The CA where docker reads it: verified https.
    std::fs::create_dir_all(certs.join(registry.host())).expect("mkdir");
    std::fs::copy(ca, certs.join(registry.host()).join("ca.crt")).expect("copy");
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
    let Some(registry) =
        RegistryServer::start_or_skip("a_cut_download_resumes_where_it_stopped", Auth::None)
    else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let direct = client(home.path());
    let image = r(&format!("{}/cut/blob:1", registry.host()));
    let bytes = blob_bytes(3 * 1024 * 1024, 6);
    let desc = push_bytes(&direct, &image, media_type::OCI_LAYER_GZIP, &bytes);

    let proxy = CuttingProxy::start(&registry.host(), 1024 * 1024, 2);
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
    let Some(registry) = RegistryServer::start_or_skip(
        "server_errors_and_rate_limits_are_retried_then_reported",
        Auth::None,
    ) else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let direct = client(home.path());
    let image = r(&format!("{}/flaky/app:1", registry.host()));
    let (layer, manifest) = push_layer_image(&direct, &image, 50_000, 8);

    // The /v2/ probe takes the first failure; then three more on the way.
    let proxy = failing_proxy(&registry.host(), "503 Service Unavailable", 4);
    let through = r(&format!("{proxy}/flaky/app:1"));
    let reg = client(home.path());
    assert_eq!(reg.get_manifest(&through).expect("retried").bytes, manifest);
    assert_eq!(fetch_blob(&reg, &through, &layer), blob_bytes(50_000, 8));
    let pushed = blob_bytes(70_000, 9);
    push_bytes(&reg, &through, media_type::OCI_LAYER_GZIP, &pushed);
    assert!(direct
        .blob_exists(&image, &Digest::of(&pushed))
        .expect("head"));

    let proxy = failing_proxy(&registry.host(), "429 Too Many Requests", 1000);
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
    let Some(registry) = RegistryServer::start_or_skip(
        "threads_share_one_client_for_concurrent_downloads",
        Auth::None,
    ) else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client(home.path());
    let image = r(&format!("{}/many/layers:1", registry.host()));
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
    let Some(mirror) =
        RegistryServer::start_or_skip("docker_hub_pulls_go_to_the_configured_mirror", Auth::None)
    else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client(home.path());
    let in_mirror = r(&format!("{}/library/busybox:1", mirror.host()));
    let (layer, manifest) = push_layer_image(&reg, &in_mirror, 1000, 60);

    std::fs::write(
        home.path().join("registries.json"),
        format!(r#"{{"registry-mirrors": ["http://{}"]}}"#, mirror.host()),
    )
    .expect("write config");
    let reg = client(home.path());
    let hub = r("busybox:1");
    assert_eq!(
        reg.get_manifest(&hub).expect("from the mirror").bytes,
        manifest
    );
    assert_eq!(fetch_blob(&reg, &hub, &layer), blob_bytes(1000, 60));
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
    let Some(registry) = RegistryServer::start_or_skip(
        "blob_redirects_are_followed_without_the_registrys_credentials",
        Auth::basic("ana", "s3cret"),
    ) else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let bytes = blob_bytes(40_000, 30);
    let (storage, heads) = blob_storage(bytes.clone());
    let proxy = redirecting_proxy(&registry.host(), &storage);
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

/// A client holding the server's credentials in its docker config.
fn logged_in_client(server: &RegistryServer, home: &Path) -> Registry {
    server.write_docker_config(home).expect("docker config");
    client(home)
}

#[test]
fn bearer_tokens_are_fetched_per_scope_cached_and_refused_with_the_login_hint() {
    let policy = TokenPolicy {
        user: "ana".into(),
        pass: "s3cret".into(),
        anonymous_pull: true,
        expires_in: 300,
    };
    let Some(registry) = RegistryServer::start_or_skip(
        "bearer_tokens_are_fetched_per_scope_cached_and_refused_with_the_login_hint",
        Auth::Token(policy),
    ) else {
        return;
    };
    let issuer = registry.token_issuer().expect("token mode");
    let home = tempfile::tempdir().expect("tempdir");
    let reg = logged_in_client(&registry, home.path());
    let base = r(&format!("{}/base/os:1", registry.host()));
    let app = r(&format!("{}/team/app:1", registry.host()));

    let (layer, manifest) = push_layer_image(&reg, &base, 20_000, 40);
    let log = issuer.log();
    assert!(
        log.iter()
            .all(|t| t.status == 200 && t.account.as_deref() == Some("ana")),
        "{log:?}"
    );
    assert_eq!(
        log.iter()
            .filter(|t| t.scopes == ["repository:base/os:pull,push"])
            .count(),
        1,
        "one token for every push request to the repository: {log:?}"
    );

    // A mount asks for the source repository's pull scope too.
    assert!(reg.mount_blob(&app, &base, &layer.digest).expect("mount"));
    assert!(
        issuer
            .log()
            .iter()
            .any(|t| t.scopes == ["repository:team/app:pull,push", "repository:base/os:pull"]),
        "{:?}",
        issuer.log()
    );

    // Anonymous: pulls (the policy allows it), pushes are refused.
    let anon_home = tempfile::tempdir().expect("tempdir");
    let anon = client(anon_home.path());
    assert_eq!(
        anon.get_manifest(&base).expect("anonymous pull").bytes,
        manifest
    );
    let before = issuer.requests();
    for _ in 0..3 {
        assert_eq!(fetch_blob(&anon, &base, &layer), blob_bytes(20_000, 40));
    }
    assert_eq!(issuer.requests(), before, "the pull token is reused");
    let err = anon
        .put_manifest(&app, media_type::OCI_MANIFEST, &manifest)
        .expect_err("anonymous push");
    assert_eq!(
        err.to_string(),
        format!(
            "not authorized to push {host}/team/app:1: log in with `estiba login {host}`",
            host = registry.host()
        )
    );

    // Login checks the password with the token server.
    let err = anon
        .login(&registry.host(), "ana", "wrong")
        .expect_err("wrong password");
    assert!(matches!(err, RegistryError::LoginFailed { .. }), "{err}");
    anon.login(&registry.host(), "ana", "s3cret")
        .expect("login");
}

#[test]
fn expired_tokens_are_fetched_again() {
    let policy = TokenPolicy {
        user: "ana".into(),
        pass: "s3cret".into(),
        anonymous_pull: false,
        expires_in: 1,
    };
    let Some(registry) =
        RegistryServer::start_or_skip("expired_tokens_are_fetched_again", Auth::Token(policy))
    else {
        return;
    };
    let issuer = registry.token_issuer().expect("token mode");
    let home = tempfile::tempdir().expect("tempdir");
    let reg = logged_in_client(&registry, home.path());
    let image = r(&format!("{}/short/lived:1", registry.host()));
    let d = Digest::of(b"nothing");
    assert!(!reg.blob_exists(&image, &d).expect("head"));
    let after_first = issuer.requests();
    // Past 90% of the token's one second, the client asks for a new one.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(!reg.blob_exists(&image, &d).expect("head"));
    assert_eq!(issuer.requests(), after_first + 1, "{:?}", issuer.log());
}

#[test]
fn pull_and_push_survive_a_faulty_network() {
    let Some(registry) =
        RegistryServer::start_or_skip("pull_and_push_survive_a_faulty_network", Auth::None)
    else {
        return;
    };
    // Pushes meet injected 500/502/429; pulls meet those and cut bodies.
    let push_proxy = FaultProxy::start(
        &registry.host(),
        Faults {
            error_rate: 0.3,
            max_faults: Some(12),
            ..Faults::default()
        },
    )
    .expect("fault proxy");
    let pull_proxy = FaultProxy::start(
        &registry.host(),
        Faults {
            error_rate: 0.2,
            cut_rate: 0.7,
            max_faults: Some(12),
            ..Faults::default()
        },
    )
    .expect("fault proxy");
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client_with(home.path(), |o| {
        o.chunked_upload_threshold = 512 * 1024;
        o.upload_chunk_size = 256 * 1024;
    });
    let image = r(&format!("{}/faulty/app:1", push_proxy.host()));
    let layers: Vec<(Vec<u8>, Descriptor)> = (0..4u8)
        .map(|i| {
            let bytes = blob_bytes(300_000 + usize::from(i) * 200_000, 50 + i);
            let desc = push_bytes(&reg, &image, media_type::OCI_LAYER_GZIP, &bytes);
            (bytes, desc)
        })
        .collect();
    let descs: Vec<Descriptor> = layers.iter().map(|(_, d)| d.clone()).collect();
    let manifest = push_image(&reg, &image, &descs);
    let pushed = push_proxy.counts();
    assert!(pushed.error_total() > 0, "faults happened: {pushed:?}");

    let reg = client(home.path());
    let image = r(&format!("{}/faulty/app:1", pull_proxy.host()));
    assert_eq!(
        reg.get_manifest(&image).expect("pull manifest").bytes,
        manifest
    );
    for (bytes, desc) in &layers {
        assert_eq!(&fetch_blob(&reg, &image, desc), bytes);
    }
    let pulled = pull_proxy.counts();
    assert!(pulled.cuts > 0, "faults happened: {pulled:?}");
}

#[test]
fn credentials_go_through_the_configured_helper() {
    let Some(registry) = RegistryServer::start_or_skip(
        "credentials_go_through_the_configured_helper",
        Auth::basic("ana", "s3cret"),
    ) else {
        return;
    };
    // A credential helper as docker-credential-helpers behave: `store`
    // reads {"ServerURL","Username","Secret"}, `get` prints it back (or
    // "credentials not found", exit 1), `erase` forgets it.
    let bin = tempfile::tempdir().expect("tempdir");
    let held = bin.path().join("held.json");
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n store) cat > {held} ;;\n get) cat > /dev/null; if [ -f {held} ]; then cat {held}; else echo 'credentials not found in native keychain'; exit 1; fi ;;\n erase) cat > /dev/null; rm -f {held} ;;\nesac\n",
        held = held.display()
    );
    let helper = bin.path().join("docker-credential-estibatest");
    std::fs::write(&helper, script).expect("write helper");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.path().to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    // Only adds a directory of its own to PATH, so other tests running at
    // the same time find what they found before.
    std::env::set_var("PATH", std::env::join_paths(dirs).expect("PATH"));

    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        home.path().join("config.json"),
        r#"{"credsStore": "estibatest", "auths": {}}"#,
    )
    .expect("write config");
    let image = r(&format!("{}/helped/app:1", registry.host()));
    let err = client(home.path())
        .blob_exists(&image, &Digest::of(b"x"))
        .expect_err("the helper holds nothing: anonymous, refused");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");

    credentials::store(home.path(), &registry.host(), "ana", "s3cret").expect("store");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.path().join("config.json")).expect("read"))
            .expect("json");
    assert_eq!(
        config["auths"][registry.host()],
        serde_json::json!({}),
        "no secret in the file"
    );
    assert!(held.exists(), "the helper holds it");
    assert!(!client(home.path())
        .blob_exists(&image, &Digest::of(b"x"))
        .expect("logged in through the helper"));

    assert!(credentials::erase(home.path(), &registry.host()).expect("erase"));
    assert!(!held.exists(), "the helper forgot it");
}

/// A loopback server that speaks just enough of the protocol to hand out
/// bad manifests: `/v2/` answers 200, `/v2/NAME/manifests/TAG` answers
/// with what `answer(TAG)` gives (headers, body).
fn bad_registry(answer: fn(&str) -> (String, Vec<u8>)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for mut client in http_clients(listener) {
            let head = read_head(&mut client);
            let path = head.split(' ').nth(1).unwrap_or("/").to_string();
            let (headers, body) = match path.rsplit_once("/manifests/") {
                Some((_, tag)) => answer(tag),
                None => (String::new(), Vec::new()),
            };
            let _ = client.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = client.write_all(&body);
        }
    });
    addr
}

#[test]
fn bad_manifests_and_dead_registries_are_refused_with_their_reason() {
    let addr = bad_registry(|tag| {
        let json = format!("Content-Type: {}\r\n", media_type::OCI_MANIFEST);
        match tag {
            "huge" => (json, vec![b' '; 5 * 1024 * 1024]),
            "text" => (json, b"<html>not a manifest</html>".to_vec()),
            _ => (
                format!(
                    "{json}Docker-Content-Digest: {}\r\n",
                    Digest::of(b"another")
                ),
                br#"{"schemaVersion":2}"#.to_vec(),
            ),
        }
    });
    let home = tempfile::tempdir().expect("tempdir");
    let reg = client(home.path());
    let err = reg
        .get_manifest(&r(&format!("{addr}/x:huge")))
        .expect_err("too large");
    assert_eq!(
        err.to_string(),
        format!("the manifest of {addr}/x:huge from {addr} is larger than 4194304 bytes: refused")
    );
    let err = reg
        .get_manifest(&r(&format!("{addr}/x:text")))
        .expect_err("not JSON");
    assert_eq!(
        err.to_string(),
        format!("the manifest of {addr}/x:text from {addr} is not JSON")
    );
    let err = reg
        .get_manifest(&r(&format!("{addr}/x:lying")))
        .expect_err("digest");
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    let pinned = Reference::parse(&format!("{addr}/x@{}", Digest::of(b"pinned"))).expect("ref");
    let err = reg.get_manifest(&pinned).expect_err("digest");
    assert!(err.to_string().contains("has digest"), "{err}");

    let dead = format!("127.0.0.1:{}", harness::free_port().expect("port"));
    let err = reg
        .get_manifest(&r(&format!("{dead}/x:1")))
        .expect_err("nobody there");
    assert_eq!(
        err.to_string(),
        format!("cannot connect to {dead}: connection refused (is the registry running at that address?)")
    );
}

#[test]
fn a_corrupted_blob_is_refused() {
    let Some(registry) = RegistryServer::start_or_skip("a_corrupted_blob_is_refused", Auth::None)
    else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let direct = client(home.path());
    let image = r(&format!("{}/corrupt/app:1", registry.host()));
    let bytes = blob_bytes(100_000, 70);
    let desc = push_bytes(&direct, &image, media_type::OCI_LAYER_GZIP, &bytes);
    let proxy = FaultProxy::start(
        &registry.host(),
        Faults {
            corrupt_rate: 1.0,
            max_faults: Some(1),
            ..Faults::default()
        },
    )
    .expect("fault proxy");
    let through = r(&format!("{}/corrupt/app:1", proxy.host()));
    let reg = client(home.path());
    let err = reg
        .get_blob(&through, &desc, &mut Vec::new(), &|_| {})
        .expect_err("one flipped byte");
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().ends_with(": refused"), "{err}");
    assert_eq!(proxy.counts().corruptions, 1);
    assert_eq!(
        fetch_blob(&reg, &through, &desc),
        bytes,
        "the next try is clean"
    );
}
