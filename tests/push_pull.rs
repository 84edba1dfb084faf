//! estiba against a real registry (Debian's docker-registry on loopback,
//! started by each test): `build --push`, `push`, `pull`, FROM pulling
//! what the store lacks, `login`/`logout`, every auth mode, TLS with a CA,
//! a registry that fails at random, one that serves a damaged blob, and
//! interop with skopeo and dockerd both ways.
// A test that cannot run outside CI says so on stderr rather than silently.
#![allow(clippy::print_stderr)]
// dockerd's and the registry's harnesses each include the shared child and
// CI helpers.
#![allow(clippy::duplicate_mod)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

#[path = "support/busybox.rs"]
mod busybox;
// Only docker() is used here, not the reference build.
#[allow(dead_code)]
#[path = "support/dockerd.rs"]
mod dockerd;
#[path = "support/registry.rs"]
mod registry;
#[path = "support/estiba.rs"]
mod support_estiba;

use registry::{layout, Auth, FaultProxy, Faults, RegistryServer};

/// A test's own stores, context, docker config and certs directory, so
/// nothing of the machine's (`~/.docker`, `/etc/docker/certs.d`) is read
/// or written.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        for dir in ["docker", "certs.d", "ctx"] {
            std::fs::create_dir_all(tmp.path().join(dir)).expect("mkdir");
        }
        Env { tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `estiba` on the store `store` (a directory under the test's tmp).
    fn estiba(&self, store: &str) -> Command {
        let mut cmd = support_estiba::estiba(&self.path(store));
        cmd.env("DOCKER_CONFIG", self.path("docker"))
            .env("ESTIBA_CERTS_DIR", self.path("certs.d"))
            .env("ESTIBA_REGISTRIES_CONFIG", self.path("registries.json"))
            .env("SOURCE_DATE_EPOCH", "1700000000");
        cmd
    }

    /// Writes the build context.
    fn context(&self, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.path("ctx");
        for (name, text) in files {
            std::fs::write(ctx.join(name), text).expect("write");
        }
        ctx
    }

    /// A busybox image (`busybox:test`) in the store `store`.
    fn import_busybox(&self, store: &str) {
        let rootfs = self.path("rootfs");
        if !rootfs.exists() {
            busybox::busybox_rootfs(&rootfs);
        }
        let tar = busybox::tar_tree(&rootfs);
        ok(self
            .estiba(store)
            .arg("import")
            .arg(&tar)
            .arg("busybox:test"));
    }

    /// The image ID of `name` in `store`.
    fn image_id(&self, store: &str, name: &str) -> String {
        let (out, _) = ok(self.estiba(store).args(["inspect", name]));
        let v: serde_json::Value = serde_json::from_str(&out).expect("inspect json");
        v[0]["Id"].as_str().expect("Id").to_string()
    }

    fn manifest_digest(&self, store: &str, name: &str) -> String {
        let (out, _) = ok(self.estiba(store).args(["inspect", name]));
        let v: serde_json::Value = serde_json::from_str(&out).expect("inspect json");
        v[0]["ManifestDigest"]
            .as_str()
            .expect("ManifestDigest")
            .to_string()
    }

    /// The store verifies: every blob, tag, cache record and snapshot.
    fn fsck_clean(&self, store: &str) {
        let (code, out, err) = support_estiba::run(self.estiba(store).arg("fsck"));
        assert_eq!(code, 0, "fsck of {store}:\n{out}\n{err}");
    }
}

fn ok(cmd: &mut Command) -> (String, String) {
    let (code, out, err) = support_estiba::run(cmd);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    (out, err)
}

fn fails(cmd: &mut Command) -> String {
    let (code, out, err) = support_estiba::run(cmd);
    assert_eq!(
        code, 1,
        "expected a failure (exit 1):\nstdout:\n{out}\nstderr:\n{err}"
    );
    err
}

/// A build that fails (exit 1) at its FROM line, which the error names.
fn fails_at_from(cmd: &mut Command) -> String {
    let err = fails(cmd);
    assert!(
        err.contains("Dockerfile:1"),
        "the FROM line is named: {err}"
    );
    err
}

/// The digest `push` or `build --push` printed for `name`
/// (`NAME: digest: sha256:… size: N`).
fn pushed_digest(stdout: &str, name: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: digest: ")))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest line for {name} in:\n{stdout}"))
        .to_string()
}

const APP: &str = "FROM busybox:test\nRUN echo hola > /hola\nCOPY f.txt /f.txt\n";

/// The whole round trip on a plain registry: `build --push` from store A;
/// skopeo reads the same digest; a second push uploads nothing; store B
/// pulls the image (same ID, same digest) and runs it; store C builds FROM
/// it (pulled because missing), then rebuilds with the registry gone.
#[test]
fn an_image_pushed_by_a_build_is_pulled_run_and_built_from_elsewhere() {
    let Some(reg) = RegistryServer::start_or_skip("round_trip", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let ctx = e.context(&[("Dockerfile", APP), ("f.txt", "uno\n")]);
    let name = format!("{}/app:1", reg.host());
    let meta = e.path("meta.json");
    let iid = e.path("iid");
    let (out, err) = ok(e
        .estiba("a")
        .args(["build", "--progress", "plain", "--push", "-t", &name])
        .arg("--metadata-file")
        .arg(&meta)
        .arg("--iidfile")
        .arg(&iid)
        .arg(&ctx));
    let digest = pushed_digest(&out, &name);
    assert!(err.contains(&format!("pushing {name}")), "{err}");
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).expect("metadata file")).expect("json");
    assert_eq!(metadata["containerimage.digest"], serde_json::json!(digest));
    assert_eq!(metadata["image.name"], serde_json::json!(name));
    let id = std::fs::read_to_string(&iid).expect("iidfile");
    assert_eq!(
        metadata["containerimage.config.digest"],
        serde_json::json!(id)
    );

    let inspected = reg.inspect("app:1", false).expect("skopeo inspect");
    assert_eq!(
        inspected["Digest"],
        serde_json::json!(digest),
        "{inspected}"
    );
    let raw = reg.inspect("app:1", true).expect("skopeo inspect --raw");
    assert_eq!(
        raw["mediaType"],
        serde_json::json!("application/vnd.oci.image.manifest.v1+json")
    );
    for layer in raw["layers"].as_array().expect("layers") {
        assert_eq!(
            layer["mediaType"],
            serde_json::json!("application/vnd.oci.image.layer.v1.tar+gzip"),
            "layers are pushed compressed: {raw}"
        );
    }

    // Everything is there: a second push uploads nothing, same digest.
    let (out, err) = ok(e.estiba("a").args(["push", "--progress", "plain", &name]));
    assert_eq!(pushed_digest(&out, &name), digest);
    let existing = err.matches("already exists").count();
    assert!(existing >= 4, "config and 3 layers already exist:\n{err}");

    // Store B pulls it: the same image, runnable.
    let (out, _) = ok(e.estiba("b").args(["pull", &name]));
    assert!(out.contains(&name), "{out}");
    assert_eq!(e.image_id("b", &name), id);
    assert_eq!(e.manifest_digest("b", &name), digest);
    let (out, _) = ok(e.estiba("b").args([
        "run",
        "--rm",
        "--network",
        "none",
        &name,
        "cat",
        "/hola",
        "/f.txt",
    ]));
    assert_eq!(out, "hola\nuno\n");
    e.fsck_clean("b");
    // Pulled again: nothing downloaded, the layers already exist.
    let (_, err) = ok(e.estiba("b").args(["pull", &name]));
    assert!(!err.contains("ERROR"), "{err}");

    // Store C builds FROM it: pulled because the store lacks it.
    let ctx2 = e.path("ctx2");
    std::fs::create_dir_all(&ctx2).expect("mkdir");
    std::fs::write(
        ctx2.join("Dockerfile"),
        format!("FROM {name}\nRUN cat /hola > /copia\n"),
    )
    .expect("write");
    let (_, err) = ok(e
        .estiba("c")
        .args(["build", "--progress", "plain", "-t", "derived:1"])
        .arg(&ctx2));
    assert!(err.contains(&format!("pull {name}")), "{err}");
    let (out, _) = ok(e.estiba("c").args([
        "run",
        "--rm",
        "--network",
        "none",
        "derived:1",
        "cat",
        "/copia",
    ]));
    assert_eq!(out, "hola\n");

    // With the registry gone, a rebuild needs nothing from it ...
    drop(reg);
    let (_, err) = ok(e
        .estiba("c")
        .args([
            "build",
            "--progress",
            "plain",
            "--no-cache",
            "-t",
            "derived:2",
        ])
        .arg(&ctx2));
    assert!(!err.contains(&format!("pull {name}")), "{err}");
    // ... unless --pull asks it what the tag names now.
    let err = fails_at_from(
        e.estiba("c")
            .args(["build", "--progress", "plain", "--pull", "-t", "derived:3"])
            .arg(&ctx2),
    );
    assert!(err.contains("127.0.0.1"), "the registry is named: {err}");
    e.fsck_clean("c");
}

/// What skopeo pushes (an OCI layout's image, layers uncompressed and
/// gzip), estiba pulls with the digest the registry serves and builds
/// FROM; an index resolves to the platform asked for.
#[test]
fn images_skopeo_pushed_are_pulled_per_platform_and_built_from() {
    let Some(reg) = RegistryServer::start_or_skip("skopeo_interop", Auth::None) else {
        return;
    };
    let e = Env::new();
    let dir = e.path("layout");
    let multi = layout::write_multi_platform(&dir, "multi", &["amd64", "arm64"]).expect("layout");
    reg.push_layout(&dir, "multi", "multi:1", true)
        .expect("skopeo copy --all");
    let name = format!("{}/multi:1", reg.host());
    for (platform, arch) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64")] {
        let store = format!("s-{arch}");
        ok(e.estiba(&store)
            .args(["pull", "--platform", platform, &name]));
        let want = multi.image(arch).expect("image").manifest.to_string();
        assert_eq!(e.manifest_digest(&store, &name), want, "{platform}");
        // FROM it, with a file read back from the image's layer.
        let ctx = e.path(&format!("ctx-{arch}"));
        std::fs::create_dir_all(&ctx).expect("mkdir");
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {name}\nCOPY extra.txt /extra.txt\n"),
        )
        .expect("write");
        std::fs::write(ctx.join("extra.txt"), "extra\n").expect("write");
        let out = e.path(&format!("out-{arch}"));
        ok(e.estiba(&store)
            .args(["build", "--progress", "plain", "--platform", platform])
            .arg("-o")
            .arg(format!("type=local,dest={}", out.display()))
            .arg(&ctx));
        assert_eq!(
            std::fs::read_to_string(out.join("hello.txt")).expect("hello.txt"),
            format!("hello from {arch}\n")
        );
        e.fsck_clean(&store);
    }
    let err = fails(
        e.estiba("s-other")
            .args(["pull", "--platform", "linux/s390x", &name]),
    );
    assert!(
        err.contains("linux/s390x") && err.contains("linux/arm64") && err.contains("linux/amd64"),
        "the error names what was asked and what there is: {err}"
    );
}

/// Basic auth: without credentials a push fails with one line saying to
/// log in; `login --password-stdin` checks and saves them in
/// `$DOCKER_CONFIG/config.json` as docker does, a wrong password saves
/// nothing, and `logout` removes them.
#[test]
fn basic_auth_login_push_pull_logout() {
    let Some(reg) = RegistryServer::start_or_skip("basic_auth", Auth::basic("ana", "s3cr3t"))
    else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let name = format!("{}/private/app:1", reg.host());
    ok(e.estiba("a").args(["tag", "busybox:test", &name]));
    let err = fails(e.estiba("a").args(["push", &name]));
    assert!(err.contains("estiba login"), "{err}");
    assert!(err.contains(&reg.host()), "{err}");

    let login = |password: &str| {
        let mut child = e
            .estiba("a")
            .args(["login", "-u", "ana", "--password-stdin", &reg.host()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn login");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("write password");
        let out = child.wait_with_output().expect("login");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let config = e.path("docker/config.json");
    let (code, _, err) = login("wrong");
    assert_eq!(code, 1, "{err}");
    assert!(
        !config.exists()
            || !std::fs::read_to_string(&config)
                .expect("read")
                .contains(&reg.host())
    );
    let (code, out, err) = login("s3cr3t");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Login Succeeded"), "{out}");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).expect("config.json")).expect("json");
    let auth = saved["auths"][reg.host()]["auth"]
        .as_str()
        .expect("auths entry");
    assert_eq!(
        auth, "YW5hOnMzY3IzdA==",
        "base64 of ana:s3cr3t, as docker writes it"
    );

    let (out, _) = ok(e.estiba("a").args(["push", &name]));
    let digest = pushed_digest(&out, &name);
    ok(e.estiba("b").args(["pull", &name]));
    assert_eq!(e.manifest_digest("b", &name), digest);

    let (out, _) = ok(e.estiba("a").args(["logout", &reg.host()]));
    assert!(out.contains("Removing login credentials"), "{out}");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).expect("config.json")).expect("json");
    assert!(saved["auths"].get(reg.host()).is_none(), "{saved}");
    let err = fails(e.estiba("c").args(["pull", &name]));
    assert!(err.contains("estiba login"), "{err}");
}

/// Token auth (distribution's `auth: token`, a token issuer in the test):
/// push and pull with the credentials from `login`; the issuer was asked,
/// with the repository's scope.
#[test]
fn token_auth_push_and_pull() {
    let Some(reg) = RegistryServer::start_or_skip("token_auth", Auth::token("ana", "s3cr3t"))
    else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let name = format!("{}/team/app:1", reg.host());
    ok(e.estiba("a").args(["tag", "busybox:test", &name]));
    ok(e.estiba("a")
        .args(["login", "-u", "ana", "-p", "s3cr3t", &reg.host()]));
    let (out, _) = ok(e.estiba("a").args(["push", &name]));
    let digest = pushed_digest(&out, &name);
    ok(e.estiba("b").args(["pull", &name]));
    assert_eq!(e.manifest_digest("b", &name), digest);
    let issuer = reg.token_issuer().expect("token mode has an issuer");
    let log = issuer.log();
    assert!(
        log.iter().any(|r| r.status == 200
            && r.scopes
                .iter()
                .any(|s| s.contains("team/app") && s.contains("push"))),
        "a token with push scope was issued: {log:?}"
    );
    e.fsck_clean("b");
}

/// TLS with a CA of the test's own: refused with a message saying where
/// the CA goes, then trusted from `certs.d/HOST/ca.crt`.
#[test]
fn tls_registries_need_their_ca_in_certs_d() {
    let Some(reg) = RegistryServer::start_or_skip("tls", Auth::Tls) else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let name = format!("{}/app:tls", reg.host());
    ok(e.estiba("a").args(["tag", "busybox:test", &name]));
    let err = fails(e.estiba("a").args(["push", &name]));
    assert!(err.contains("ca.crt"), "{err}");
    let ca_dir = e.path("certs.d").join(reg.host());
    std::fs::create_dir_all(&ca_dir).expect("mkdir");
    std::fs::copy(reg.ca_file().expect("ca"), ca_dir.join("ca.crt")).expect("copy ca");
    let (out, _) = ok(e.estiba("a").args(["push", &name]));
    let digest = pushed_digest(&out, &name);
    ok(e.estiba("b").args(["pull", &name]));
    assert_eq!(e.manifest_digest("b", &name), digest);
}

/// A registry behind a proxy that answers 500/502/429 and cuts blob
/// downloads at random: push and pull still complete, the image is the
/// same, and the store verifies.
#[test]
fn pull_and_push_survive_a_registry_that_fails_at_random() {
    let Some(reg) = RegistryServer::start_or_skip("faults", Auth::None) else {
        return;
    };
    let proxy = FaultProxy::start(
        &reg.host(),
        Faults {
            error_rate: 0.25,
            cut_rate: 0.5,
            ..Faults::default()
        },
    )
    .expect("fault proxy");
    let e = Env::new();
    e.import_busybox("a");
    // A layer big enough to be cut mid-body.
    let big: String = (0..200_000).map(|i| format!("{i:08}\n")).collect();
    let ctx = e.context(&[
        ("Dockerfile", "FROM busybox:test\nCOPY big.txt /big.txt\n"),
        ("big.txt", &big),
    ]);
    let name = format!("{}/app:faults", proxy.host());
    let (out, _) = ok(e
        .estiba("a")
        .args(["build", "--progress", "plain", "--push", "-t", &name])
        .arg(&ctx));
    let digest = pushed_digest(&out, &name);
    ok(e.estiba("b").args(["pull", &name]));
    assert_eq!(e.manifest_digest("b", &name), digest);
    let (out, _) = ok(e.estiba("b").args([
        "run",
        "--rm",
        "--network",
        "none",
        &name,
        "busybox",
        "wc",
        "-l",
        "/big.txt",
    ]));
    assert!(out.contains("200000"), "{out}");
    e.fsck_clean("b");
    let counts = proxy.counts();
    assert!(
        counts.error_total() > 0,
        "faults were injected (seed {}): {counts:?}",
        proxy.seed()
    );

    // Random cuts may spare a pull of a few blobs; this proxy cuts the
    // first three blob downloads (resumes included) for certain.
    let cutter = FaultProxy::start(
        &reg.host(),
        Faults {
            cut_rate: 1.0,
            max_faults: Some(3),
            ..Faults::default()
        },
    )
    .expect("fault proxy");
    let cut_name = format!("{}/app:faults", cutter.host());
    ok(e.estiba("c").args(["pull", &cut_name]));
    assert_eq!(e.manifest_digest("c", &cut_name), digest);
    e.fsck_clean("c");
    let counts = cutter.counts();
    assert_eq!(counts.cuts, 3, "downloads were cut: {counts:?}");
}

/// A registry that serves a blob whose bytes are not its digest: the pull
/// fails naming the layer, nothing is tagged, and the store verifies.
#[test]
fn a_damaged_blob_in_the_registry_never_enters_the_store() {
    let Some(reg) = RegistryServer::start_or_skip("damaged", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let name = format!("{}/app:damaged", reg.host());
    ok(e.estiba("a").args(["tag", "busybox:test", &name]));
    ok(e.estiba("a").args(["push", &name]));
    let raw = reg.inspect("app:damaged", true).expect("inspect --raw");
    let layer = raw["layers"][0]["digest"].as_str().expect("layer digest");
    let hex = layer.strip_prefix("sha256:").expect("sha256");
    let data = reg
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).expect("the registry's blob");
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&data, &bytes).expect("damage the blob");

    let err = fails(e.estiba("b").args(["pull", &name]));
    assert!(err.contains(&hex[..12]), "the layer is named: {err}");
    // The registry's error, naming the image and the registry, whichever
    // side hashed the blob.
    assert!(
        err.contains("refused") && err.contains(&reg.host()) && err.contains("app:damaged"),
        "the registry is blamed: {err}"
    );
    let (code, _, _) = support_estiba::run(e.estiba("b").args(["inspect", &name]));
    assert_ne!(code, 0, "nothing is tagged");
    e.fsck_clean("b");
}

/// dockerd (started as DESIGN.md says; loopback registries are insecure to
/// it by default) pulls what estiba pushed, in docker's and OCI's media
/// types, and runs it with no network.
#[test]
fn dockerd_pulls_and_runs_what_estiba_pushed() {
    let Some(reg) = RegistryServer::start_or_skip("dockerd_interop", Auth::None) else {
        return;
    };
    let Some(docker) = dockerd::Dockerd::start_or_skip("dockerd_interop") else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let ctx = e.context(&[("Dockerfile", APP), ("f.txt", "dos\n")]);
    for format in ["docker", "oci"] {
        let name = format!("{}/app:{format}", reg.host());
        ok(e.estiba("a")
            .args([
                "build",
                "--progress",
                "plain",
                "--push",
                "--push-format",
                format,
                "-t",
                &name,
            ])
            .arg(&ctx));
        let out = docker
            .docker()
            .args(["pull", &name])
            .output()
            .expect("docker pull");
        assert!(
            out.status.success(),
            "docker pull {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = docker
            .docker()
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                &name,
                "cat",
                "/hola",
                "/f.txt",
            ])
            .output()
            .expect("docker run");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hola\ndos\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A pull killed at a random point leaves a store that verifies, and the
/// next pull completes with what was already verified.
#[test]
fn a_killed_pull_leaves_a_sound_store_and_the_next_pull_completes() {
    let Some(reg) = RegistryServer::start_or_skip("killed_pull", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let big: String = (0..2_000_000).map(|i| format!("{i:08}\n")).collect();
    let ctx = e.context(&[
        ("Dockerfile", "FROM busybox:test\nCOPY big.txt /big.txt\n"),
        ("big.txt", &big),
    ]);
    let name = format!("{}/app:big", reg.host());
    ok(e.estiba("a")
        .args(["build", "--progress", "plain", "--push", "-t", &name])
        .arg(&ctx));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for round in 0..3u32 {
        let mut child = e
            .estiba("b")
            .args(["pull", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pull");
        let delay = u64::from((seed >> round) % 300);
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        e.fsck_clean("b");
    }
    ok(e.estiba("b").args(["pull", &name]));
    e.fsck_clean("b");
    let (out, _) = ok(e.estiba("b").args([
        "run",
        "--rm",
        "--network",
        "none",
        &name,
        "busybox",
        "wc",
        "-l",
        "/big.txt",
    ]));
    assert!(out.contains("2000000"), "{out}");
}

/// Names are normalized as docker does, and bad ones are usage errors
/// (exit 2) that say what is wrong, before any registry is asked.
#[test]
fn bad_image_names_are_refused_with_a_reason() {
    let e = Env::new();
    // `Upper/app` is not here: docker reads an upper-case first component
    // as a registry host (distribution/reference's splitDockerDomain).
    for bad in [
        "UPPER",
        "library/Upper",
        "app:bad tag",
        "app@sha256:123",
        "",
    ] {
        let (code, _, err) = support_estiba::run(e.estiba("a").args(["pull", bad]));
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains("invalid image reference"), "{bad:?}: {err}");
    }
}

/// Pushed to a second repository of the same registry, the blobs the
/// first one holds are mounted, not uploaded again; the image is the same.
#[test]
fn a_push_to_another_repository_mounts_the_blobs_the_registry_has() {
    let Some(reg) = RegistryServer::start_or_skip("mount", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let ctx = e.context(&[("Dockerfile", APP), ("f.txt", "tres\n")]);
    let first = format!("{}/team/first:1", reg.host());
    let second = format!("{}/team/second:1", reg.host());
    let (out, _) = ok(e
        .estiba("a")
        .args(["build", "--progress", "plain", "--push", "-t", &first])
        .arg(&ctx));
    let digest = pushed_digest(&out, &first);
    let (out, err) = ok(e
        .estiba("a")
        .args(["push", "--progress", "plain", &first, &second]));
    assert_eq!(pushed_digest(&out, &second), digest);
    let mounted = err
        .matches(&format!("mounted from {}/team/first", reg.host()))
        .count();
    assert_eq!(mounted, 4, "the config and 3 layers are mounted:\n{err}");
    assert_eq!(
        reg.inspect("team/second:1", false).expect("inspect")["Digest"],
        serde_json::json!(digest)
    );
}

/// A tag the registry does not have: one line naming the image and the
/// registry, exit 1, nothing in the store.
#[test]
fn a_missing_tag_is_one_clear_line() {
    let Some(reg) = RegistryServer::start_or_skip("missing_tag", Auth::None) else {
        return;
    };
    let e = Env::new();
    let name = format!("{}/nobody/here:1", reg.host());
    let err = fails(e.estiba("a").args(["pull", &name]));
    assert!(err.contains("nobody/here:1"), "{err}");
    assert!(err.contains("not found"), "{err}");
    let ctx = e.context(&[("Dockerfile", &format!("FROM {name}\nRUN true\n"))]);
    let err = fails_at_from(
        e.estiba("a")
            .args(["build", "--progress", "plain"])
            .arg(&ctx),
    );
    assert!(err.contains("not found"), "{err}");
    e.fsck_clean("a");
}

/// A tag that moves: without `--pull` a build keeps what the store has;
/// with it, the build gets what the tag names now, and the cache key
/// follows the new digest.
#[test]
fn pull_flag_takes_what_a_moved_tag_names_now() {
    let Some(reg) = RegistryServer::start_or_skip("moved_tag", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let base = format!("{}/base:latest", reg.host());
    let push_base = |text: &str| {
        let ctx = e.path("base-ctx");
        std::fs::create_dir_all(&ctx).expect("mkdir");
        std::fs::write(ctx.join("Dockerfile"), "FROM busybox:test\nCOPY v /v\n").expect("write");
        std::fs::write(ctx.join("v"), text).expect("write");
        ok(e.estiba("a")
            .args(["build", "--progress", "plain", "--push", "-t", &base])
            .arg(&ctx));
    };
    push_base("one\n");
    let ctx = e.path("app-ctx");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nRUN cat /v > /seen\n"),
    )
    .expect("write");
    let seen = |extra: &[&str]| {
        ok(e.estiba("b")
            .args(["build", "--progress", "plain", "-t", "app:1"])
            .args(extra)
            .arg(&ctx));
        let (out, _) =
            ok(e.estiba("b")
                .args(["run", "--rm", "--network", "none", "app:1", "cat", "/seen"]));
        out
    };
    assert_eq!(seen(&[]), "one\n");
    push_base("two\n");
    assert_eq!(
        seen(&[]),
        "one\n",
        "without --pull the store's image is used"
    );
    assert_eq!(seen(&["--pull"]), "two\n", "--pull takes the moved tag");
    e.fsck_clean("b");
}

/// Docker schema 2 manifests and zstd layers round-trip: pushed in each
/// form, pulled into an empty store (same image ID), and run.
#[test]
fn docker_manifests_and_zstd_layers_are_pulled_and_run() {
    let Some(reg) = RegistryServer::start_or_skip("formats", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let ctx = e.context(&[("Dockerfile", APP), ("f.txt", "cuatro\n")]);
    let iid = e.path("iid");
    ok(e.estiba("a")
        .args([
            "build",
            "--progress",
            "plain",
            "-t",
            "app:formats",
            "--iidfile",
        ])
        .arg(&iid)
        .arg(&ctx));
    let id = std::fs::read_to_string(&iid).expect("iidfile");
    for (i, (format, compression, layer_type)) in [
        (
            "docker",
            "gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
        ("oci", "zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        (
            "docker",
            "zstd",
            "application/vnd.docker.image.rootfs.diff.tar.zstd",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("{}/app:{format}-{compression}", reg.host());
        ok(e.estiba("a").args([
            "push",
            "--format",
            format,
            "--compression",
            compression,
            "app:formats",
            &name,
        ]));
        let raw = reg
            .inspect(&format!("app:{format}-{compression}"), true)
            .expect("inspect --raw");
        assert_eq!(
            raw["layers"][0]["mediaType"],
            serde_json::json!(layer_type),
            "{raw}"
        );
        let store = format!("b{i}");
        ok(e.estiba(&store).args(["pull", &name]));
        assert_eq!(e.image_id(&store, &name), id, "{format} {compression}");
        let (out, _) =
            ok(e.estiba(&store)
                .args(["run", "--rm", "--network", "none", &name, "cat", "/f.txt"]));
        assert_eq!(out, "cuatro\n");
        e.fsck_clean(&store);
    }
}

/// `push --compression-level` and `-o type=registry,compression=…,
/// compression-level=…` push a blob made at that level: a blob kept for
/// one level is never pushed for another.
#[test]
fn a_push_compresses_at_the_level_asked() {
    let Some(reg) = RegistryServer::start_or_skip("levels", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let big = "niveles\n".repeat(40_000);
    let ctx = e.context(&[("Dockerfile", APP), ("f.txt", &big)]);
    ok(e.estiba("a")
        .args(["build", "--progress", "plain", "-t", "app:levels"])
        .arg(&ctx));
    // The digest and media type of the pushed image's last layer.
    let last_layer = |tag: &str| {
        let raw = reg
            .inspect(&format!("app:{tag}"), true)
            .expect("inspect --raw");
        let layers = raw["layers"].as_array().expect("layers").clone();
        let last = layers.last().expect("a layer").clone();
        (
            last["digest"].as_str().expect("digest").to_string(),
            last["mediaType"].as_str().expect("mediaType").to_string(),
        )
    };
    let push = |tag: &str, flags: &[&str]| {
        ok(e.estiba("a")
            .arg("push")
            .args(flags)
            .args(["app:levels", &format!("{}/app:{tag}", reg.host())]));
        last_layer(tag)
    };
    let fast = push("gzip1", &["--compression-level", "1"]);
    let default = push("gzip6", &[]);
    let fast_again = push("gzip1b", &["--compression-level", "1"]);
    let zstd19 = push(
        "zstd19",
        &["--compression", "zstd", "--compression-level", "19"],
    );
    let zstd = push("zstd3", &["--compression", "zstd"]);
    assert_ne!(
        fast.0, default.0,
        "level 1 and level 6 pushed the same blob"
    );
    assert_eq!(fast_again, fast);
    assert_ne!(zstd19.0, zstd.0);
    for (layer, media_type) in [
        (&fast, "application/vnd.oci.image.layer.v1.tar+gzip"),
        (&default, "application/vnd.oci.image.layer.v1.tar+gzip"),
        (&zstd19, "application/vnd.oci.image.layer.v1.tar+zstd"),
        (&zstd, "application/vnd.oci.image.layer.v1.tar+zstd"),
    ] {
        assert_eq!(layer.1, media_type);
    }
    // A build's registry output says its own level.
    let name = format!("{}/app:built9", reg.host());
    ok(e.estiba("a")
        .args(["build", "--progress", "plain", "-o"])
        .arg(format!("type=registry,name={name},compression-level=9"))
        .arg(&ctx));
    let best = last_layer("built9");
    assert_ne!(best.0, default.0);
    assert_ne!(best.0, fast.0);
    let (code, _, err) = support_estiba::run(e.estiba("a").args([
        "push",
        "--compression",
        "zstd",
        "--compression-level",
        "23",
        "app:levels",
        &format!("{}/app:bad", reg.host()),
    ]));
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(
        err.contains("zstd takes compression levels 1 to 22, not 23"),
        "{err}"
    );
    e.fsck_clean("a");
}

/// `-o type=registry,name=REF` pushes without tagging the store, as
/// BuildKit's registry exporter; a push with no name is a usage error.
#[test]
fn output_type_registry_pushes_to_its_name() {
    let Some(reg) = RegistryServer::start_or_skip("output_registry", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let ctx = e.context(&[("Dockerfile", APP), ("f.txt", "cinco\n")]);
    let name = format!("{}/app:exported", reg.host());
    let (out, _) = ok(e
        .estiba("a")
        .args(["build", "--progress", "plain", "-o"])
        .arg(format!("type=registry,name={name}"))
        .arg(&ctx));
    let digest = pushed_digest(&out, &name);
    assert_eq!(
        reg.inspect("app:exported", false).expect("inspect")["Digest"],
        serde_json::json!(digest)
    );
    let (code, _, _) = support_estiba::run(e.estiba("a").args(["inspect", &name]));
    assert_ne!(code, 0, "type=registry does not tag the store");
    let (code, _, err) = support_estiba::run(
        e.estiba("a")
            .args(["build", "--progress", "plain", "--push"])
            .arg(&ctx),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("-t NAME"), "{err}");
}

// ---------------------------------------------------------------------------
// The build cache shared through a registry (--cache-to / --cache-from)

/// Two stages: COPY, a RUN with a cache mount, a second stage that copies
/// from the first. Each RUN checks the secret `who` is `A`: a secret is no
/// part of a cache key, so a machine that says `B` can only succeed when no
/// RUN executes there.
const SHARED: &str = "FROM busybox:test AS build
COPY src/a.txt /src/a.txt
COPY src/b.txt /src/b.txt
RUN --mount=type=cache,target=/cache --mount=type=secret,id=who test \"$(cat /run/secrets/who)\" = A && echo built >> /cache/log && cat /src/a.txt /src/b.txt > /out.txt
FROM busybox:test
COPY other.txt /app/other.txt
COPY --from=build /out.txt /app/out.txt
RUN --mount=type=secret,id=who test \"$(cat /run/secrets/who)\" = A && cat /app/other.txt /app/out.txt > /app/all.txt
";

/// Each step of a plain progress log: its name, and whether it was CACHED.
fn steps(stderr: &str) -> Vec<(String, bool)> {
    let mut names: Vec<(String, String)> = Vec::new();
    let mut cached = std::collections::BTreeSet::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((id, text)) = rest.split_once(' ') else {
            continue;
        };
        if text == "CACHED" {
            cached.insert(id.to_string());
        } else if text.starts_with('[') && !names.iter().any(|(i, _)| i == id) {
            names.push((id.to_string(), text.to_string()));
        }
    }
    names
        .into_iter()
        .map(|(id, name)| {
            let hit = cached.contains(&id);
            (name, hit)
        })
        .collect()
}

/// The steps of `stderr` that ran (were not CACHED), by name.
fn ran(stderr: &str) -> Vec<String> {
    steps(stderr)
        .into_iter()
        .filter(|(name, hit)| !hit && (name.contains(" RUN ") || name.contains(" COPY ")))
        .map(|(name, _)| name)
        .collect()
}

impl Env {
    fn shared_context(&self) -> PathBuf {
        let ctx = self.context(&[("Dockerfile", SHARED), ("other.txt", "other\n")]);
        std::fs::create_dir_all(ctx.join("src")).expect("mkdir");
        std::fs::write(ctx.join("src/a.txt"), "a\n").expect("write");
        std::fs::write(ctx.join("src/b.txt"), "b\n").expect("write");
        ctx
    }

    /// `estiba build` of the shared context on `store`, as machine `who`.
    fn build_as(&self, store: &str, who: &str, extra: &[&str]) -> (i32, String, String) {
        support_estiba::run(
            self.estiba(store)
                .env("WHO", who)
                .args(["build", "--progress", "plain", "--secret", "id=who,env=WHO"])
                .args(extra)
                .arg(self.path("ctx")),
        )
    }
}

/// The proof of issue 11: machine A builds and pushes the image and its
/// cache; machine B, an empty store, builds the same context from the
/// cache: every step a hit, no RUN executed, the same image digest. One
/// source changed on B: only the steps that read it and those after it run.
#[test]
fn an_empty_machine_builds_from_the_registry_cache_without_running_a_step() {
    let Some(reg) = RegistryServer::start_or_skip("cache_proof", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.shared_context();
    let image_a = format!("{}/app:a", reg.host());
    let cache = format!("{}/app:cache", reg.host());
    let meta = e.path("meta-a.json");
    e.import_busybox("a");
    let (code, out, err) = e.build_as(
        "a",
        "A",
        &[
            "--push",
            "-t",
            &image_a,
            "--cache-to",
            &format!("type=registry,ref={cache},mode=max"),
            "--metadata-file",
            meta.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let digest_a = pushed_digest(&out, &image_a);
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).expect("metadata")).expect("json");
    assert_eq!(
        metadata["estiba.cache.exported"][0]["ref"],
        serde_json::json!(cache),
        "{metadata}"
    );

    // B: empty but for its base image; says it is B, so a RUN would fail.
    e.import_busybox("b");
    let image_b = format!("{}/app:b", reg.host());
    let (code, out, err) = e.build_as(
        "b",
        "B",
        &[
            "--push",
            "-t",
            &image_b,
            "--cache-from",
            &format!("type=registry,ref={cache}"),
        ],
    );
    assert_eq!(code, 0, "B built with RUN steps that ran: {err}");
    assert_eq!(
        ran(&err),
        Vec::<String>::new(),
        "every step is a hit:\n{err}"
    );
    assert_eq!(pushed_digest(&out, &image_b), digest_a, "the same image");
    e.fsck_clean("b");

    // One file changed on B: the steps that read it and those after run.
    std::fs::write(e.path("ctx/src/b.txt"), "b changed\n").expect("write");
    e.import_busybox("c");
    let (code, _, err) = e.build_as(
        "c",
        "A",
        &[
            "-t",
            "changed:1",
            "--cache-from",
            &format!("type=registry,ref={cache}"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let ran = ran(&err);
    let ran_text = ran.join("\n");
    assert!(!ran_text.contains("COPY src/a.txt"), "{ran_text}");
    assert!(!ran_text.contains("COPY other.txt"), "{ran_text}");
    assert!(ran_text.contains("COPY src/b.txt"), "{ran_text}");
    assert_eq!(
        ran.iter().filter(|s| s.contains(" RUN ")).count(),
        2,
        "{ran_text}"
    );
    assert!(ran_text.contains("COPY --from=build"), "{ran_text}");
}

/// mode=min exports the final image's steps only; mode=max every stage's.
/// An intermediate stage built from each: only max spares its RUN.
#[test]
fn mode_max_exports_intermediate_stages_and_mode_min_does_not() {
    let Some(reg) = RegistryServer::start_or_skip("cache_modes", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.shared_context();
    e.import_busybox("a");
    let min = format!("{}/app:cache-min", reg.host());
    let max = format!("{}/app:cache-max", reg.host());
    let (code, _, err) = e.build_as(
        "a",
        "A",
        &[
            "--cache-to",
            &format!("type=registry,ref={min},mode=min"),
            "--cache-to",
            &format!("type=registry,ref={max},mode=max"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    for (cache, store, hits) in [(&max, "max", true), (&min, "min", false)] {
        e.import_busybox(store);
        let (code, _, err) = e.build_as(
            store,
            "B",
            &[
                "--target",
                "build",
                "--cache-from",
                &format!("type=registry,ref={cache}"),
            ],
        );
        if hits {
            assert_eq!(code, 0, "mode=max has the build stage: {err}");
            assert_eq!(ran(&err), Vec::<String>::new(), "{err}");
        } else {
            assert_eq!(code, 1, "mode=min lacks the build stage's RUN: {err}");
        }
    }
}

/// The cache in a directory (what a CI cache action saves), an inline
/// cache in the pushed image, and a list of sources where the first is
/// missing and the second has it: each gives every step as a hit.
#[test]
fn local_and_inline_caches_and_a_missing_first_source() {
    let Some(reg) = RegistryServer::start_or_skip("cache_kinds", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.shared_context();
    e.import_busybox("a");
    let dir = e.path("ci-cache");
    let inline = format!("{}/app:inline", reg.host());
    let (code, _, err) = e.build_as(
        "a",
        "A",
        &[
            "--push",
            "-t",
            &inline,
            "--cache-to",
            "type=inline",
            "--cache-to",
            &format!("type=local,dest={},mode=max", dir.display()),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(dir.join("index.json").exists() && dir.join("oci-layout").exists());

    e.import_busybox("local");
    let (code, _, err) = e.build_as(
        "local",
        "B",
        &["--cache-from", &format!("type=local,src={}", dir.display())],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(ran(&err), Vec::<String>::new(), "{err}");

    // An inline cache holds the final image's steps (BuildKit's too): the
    // build stage runs (as A, so its RUN succeeds), and since what it makes
    // is the same, every step of the final stage is a hit.
    e.import_busybox("inline");
    let missing = format!("{}/app:no-such-cache", reg.host());
    let (code, _, err) = e.build_as(
        "inline",
        "A",
        &["--cache-from", &missing, "--cache-from", &inline],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("no-such-cache"),
        "the missing source is a warning: {err}"
    );
    let ran = ran(&err);
    assert!(
        ran.iter().all(|s| s.starts_with("[build ")),
        "only the build stage ran: {ran:?}\n{err}"
    );
    assert!(
        steps(&err)
            .iter()
            .any(|(name, hit)| *hit && name.contains("COPY --from=build")),
        "{err}"
    );
}

/// A cache whose layer blob is gone from the registry: a miss with a
/// warning, the step runs, the build succeeds.
#[test]
fn a_cache_with_a_missing_blob_is_a_miss_not_a_failure() {
    let Some(reg) = RegistryServer::start_or_skip("cache_gone", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.shared_context();
    e.import_busybox("a");
    let cache = format!("{}/app:cache", reg.host());
    let (code, _, err) = e.build_as(
        "a",
        "A",
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    assert_eq!(code, 0, "{err}");
    let raw = reg.inspect("app:cache", true).expect("inspect --raw");
    for layer in raw["layers"].as_array().expect("layers") {
        let digest = layer["digest"].as_str().expect("digest");
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        let data = reg
            .storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut bytes = std::fs::read(&data).expect("blob");
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&data, bytes).expect("damage");
    }
    e.import_busybox("b");
    let (code, _, err) = e.build_as(
        "b",
        "A",
        &["--cache-from", &format!("type=registry,ref={cache}")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("cannot be used"), "a warning: {err}");
    assert!(!ran(&err).is_empty(), "steps ran: {err}");
    e.fsck_clean("b");
}

/// An image with the same layer twice (the same COPY repeated) is pushed
/// with that blob once and both places in its manifest, and pulls back.
#[test]
fn a_repeated_layer_is_pushed_once_and_named_twice() {
    let Some(reg) = RegistryServer::start_or_skip("repeated_layer", Auth::None) else {
        return;
    };
    let e = Env::new();
    e.import_busybox("a");
    let ctx = e.context(&[
        (
            "Dockerfile",
            "FROM busybox:test\nCOPY f.txt /f.txt\nRUN rm /f.txt\nCOPY f.txt /f.txt\n",
        ),
        ("f.txt", "seis\n"),
    ]);
    let name = format!("{}/app:repeated", reg.host());
    let (out, err) = ok(e
        .estiba("a")
        .args(["build", "--progress", "plain", "--push", "-t", &name])
        .arg(&ctx));
    let digest = pushed_digest(&out, &name);
    let raw = reg.inspect("app:repeated", true).expect("inspect --raw");
    let layers: Vec<&str> = raw["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest"))
        .collect();
    assert_eq!(layers.len(), 4, "{raw}");
    assert_eq!(
        layers[1], layers[3],
        "the same COPY makes the same layer: {raw}"
    );
    let uploads = err
        .matches(&layers[1]["sha256:".len()..]["".len()..][..12])
        .count();
    assert_eq!(uploads, 1, "pushed once:\n{err}");
    ok(e.estiba("b").args(["pull", &name]));
    assert_eq!(e.manifest_digest("b", &name), digest);
    let (out, _) =
        ok(e.estiba("b")
            .args(["run", "--rm", "--network", "none", &name, "cat", "/f.txt"]));
    assert_eq!(out, "seis\n");
}
