//! estiba's own image (deploy/Dockerfile: the static estiba on scratch, user
//! 1000), built by scripts/static-image with that static estiba itself, and
//! run the way the README's Kubernetes Job runs it: in a container of a real
//! runtime (a private dockerd: runc, as a cluster's containerd uses), as
//! uid 1000 with no capabilities and no_new_privs on a read-only root, building a Dockerfile with a RUN step
//! from a base image in a registry and pushing the result there (TLS and
//! basic auth, credentials from a mounted `DOCKER_CONFIG`, the registry's
//! CA at the path of the image's CA bundle), and gives the image the
//! glibc estiba gives as root of the host. It also checks the two
//! container settings the README says the Job depends on: without a
//! seccomp profile that allows user namespaces the build stops saying so,
//! and with /proc masked (docker's default, Kubernetes' `procMount:
//! Default`) a RUN step cannot mount its /proc.
//!
//! The first run compiles estiba for x86_64-unknown-linux-musl (a few
//! minutes); scripts/test-deps installs musl-tools and the Rust target.
// A test that cannot run outside CI says so on stderr rather than silently.
#![allow(clippy::print_stderr)]
// dockerd's and the registry's harnesses each include the shared child and
// CI helpers.
#![allow(clippy::duplicate_mod)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

use dockerd::Dockerd;
use registry::{Auth, RegistryServer};
use support_estiba::{estiba, run};

/// Both builds of the workspace are reproducible, to compare them.
const EPOCH: &str = "1700000000";

/// The image's user, as deploy/Dockerfile makes it.
const IMAGE_USER: &str = "1000:1000";

/// Runs `cmd` and returns its stdout, or panics with everything it said.
fn ok(what: &str, cmd: &mut Command) -> String {
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{what} failed:\nstdout:\n{out}\nstderr:\n{err}");
    out
}

/// A directory anyone may read (and, with `writable`, write), as a pod's
/// volumes are for its user.
fn open_dir(path: &Path, writable: bool) -> PathBuf {
    std::fs::create_dir_all(path).expect("mkdir");
    let mode = if writable { 0o777 } else { 0o755 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path.to_path_buf()
}

/// `scripts/static-image`, building the image with the static estiba it
/// just compiled, into a docker archive. The dev profile: the same code
/// as the release image's, compiled in two minutes rather than three or
/// four on CI's two cores.
fn build_image(store: &Path, archive: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(repo.join("scripts/static-image"));
    cmd.current_dir(&repo)
        .env("ESTIBA_ROOT", store)
        .env_remove("ESTIBA")
        .env("ESTIBA_STATIC_PROFILE", "dev")
        .args(["--progress", "plain", "-t", "estiba:static", "-o"])
        .arg(format!("type=docker,dest={}", archive.display()));
    ok("scripts/static-image", &mut cmd);
}

/// The docker flags of the README's Job: the image's own user with no
/// capabilities and no privilege escalation, seccomp and /proc as the
/// Job's securityContext sets them, and the pod's
/// volumes (the workspace read-only, the credentials Secret as
/// `DOCKER_CONFIG`, an emptyDir as HOME for the store).
struct Job<'a> {
    docker: &'a Dockerd,
    workspace: PathBuf,
    docker_config: PathBuf,
    ca: PathBuf,
    home: PathBuf,
}

impl Job<'_> {
    fn run(&self, security_opts: &[&str], args: &[&str]) -> (i32, String, String) {
        let mut cmd = self.docker.docker();
        // runAsUser 1000, capabilities drop ALL, allowPrivilegeEscalation
        // false (no_new_privs).
        cmd.args(["run", "--rm", "--network", "host", "--user", IMAGE_USER])
            .args(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"])
            // readOnlyRootFilesystem, with an emptyDir at /tmp.
            .args(["--read-only", "--tmpfs", "/tmp"]);
        for opt in security_opts {
            cmd.args(["--security-opt", opt]);
        }
        let volume = |host: &Path, inside: &str, ro: bool| {
            format!("{}:{inside}{}", host.display(), if ro { ":ro" } else { "" })
        };
        cmd.args(["-e", "DOCKER_CONFIG=/docker"])
            .args(["-e", &format!("SOURCE_DATE_EPOCH={EPOCH}")])
            .args(["-v", &volume(&self.docker_config, "/docker", true)])
            .args([
                "-v",
                &volume(&self.ca, "/etc/ssl/certs/ca-certificates.crt", true),
            ])
            .args(["-v", &volume(&self.workspace, "/workspace", true)])
            .args(["-v", &volume(&self.home, "/home/estiba", false)])
            .arg("estiba:static")
            .args(args);
        run(&mut cmd)
    }
}

/// What the Job's securityContext gives: seccomp `Unconfined` and
/// `procMount: Unmasked`.
const JOB_SECURITY: &[&str] = &["seccomp=unconfined", "systempaths=unconfined"];

#[test]
fn the_static_image_builds_and_pushes_as_uid_1000_in_a_container() {
    let test = "the_static_image_builds_and_pushes_as_uid_1000_in_a_container";
    let Some(docker) = Dockerd::start_or_skip(test) else {
        return;
    };
    let Some(reg) = registry::or_skip(
        test,
        RegistryServer::start_tls(Auth::basic("ana", "s3cr3t")),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = open_dir(tmp.path(), false);

    // The image, built by estiba itself.
    let archive = dir.join("estiba.tar");
    build_image(&dir.join("image-store"), &archive);
    ok(
        "docker load",
        docker.docker().arg("load").arg("-i").arg(&archive),
    );
    let config = ok(
        "docker image inspect",
        docker.docker().args([
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{json .Config.Entrypoint}} {{.Os}}",
            "estiba:static",
        ]),
    );
    assert_eq!(config.trim(), "1000:1000 [\"/estiba\"] linux");
    // scratch holds no libc: the binary runs only if it is static.
    let version = ok(
        "estiba --version in its image",
        docker.docker().args([
            "run",
            "--rm",
            "--network",
            "none",
            "estiba:static",
            "--version",
        ]),
    );
    assert!(version.starts_with("estiba "), "{version}");

    // A base image in the registry, pushed by the estiba under test.
    let certs_d = reg.certs_dir().expect("a TLS registry has a certs dir");
    let ca = reg
        .ca_file()
        .expect("a TLS registry has a CA")
        .to_path_buf();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).expect("chmod ca");
    let docker_config = open_dir(&dir.join("docker"), false);
    let config_json = reg
        .write_docker_config(&docker_config)
        .expect("write config.json");
    std::fs::set_permissions(&config_json, std::fs::Permissions::from_mode(0o644))
        .expect("chmod config.json");
    let host_store = dir.join("host-store");
    let host = |cmd: &mut Command| {
        cmd.env("DOCKER_CONFIG", &docker_config)
            .env("ESTIBA_CERTS_DIR", certs_d)
            .env("ESTIBA_REGISTRIES_CONFIG", dir.join("registries.json"));
    };
    let rootfs = dir.join("rootfs");
    busybox::busybox_rootfs(&rootfs);
    let tar = busybox::tar_tree(&rootfs);
    let base = format!("{}/base:1", reg.host());
    ok(
        "import busybox",
        estiba(&host_store).arg("import").arg(&tar).arg(&base),
    );
    let mut push = estiba(&host_store);
    host(&mut push);
    ok("push the base image", push.args(["push", &base]));

    // The Job's build: FROM the registry, a RUN step, a COPY, pushed back.
    let workspace = open_dir(&dir.join("workspace"), false);
    std::fs::write(
        workspace.join("Dockerfile"),
        format!(
            "FROM {base}\nRUN echo \"built by uid $(id -u)\" > /made\nCOPY hello.txt /hello.txt\n"
        ),
    )
    .expect("write Dockerfile");
    std::fs::write(workspace.join("hello.txt"), "hola\n").expect("write hello.txt");
    let job = Job {
        docker: &docker,
        workspace,
        docker_config: docker_config.clone(),
        ca,
        home: open_dir(&dir.join("home"), true),
    };
    let app = format!("{}/app:1", reg.host());
    let cache = format!("type=registry,ref={}/app:buildcache", reg.host());
    let cache_to = format!("{cache},mode=max");
    // The README's Job's arguments, the registry's name aside.
    let build = [
        "build",
        "--progress",
        "plain",
        "--network",
        "host",
        "--push",
        "-t",
        &app,
        "--cache-from",
        &cache,
        "--cache-to",
        &cache_to,
        "--iidfile",
        "/home/estiba/iid",
        "/workspace",
    ];
    let (code, out, err) = job.run(JOB_SECURITY, &build);
    assert_eq!(
        code,
        0,
        "the Job's build:\nstdout:\n{out}\nstderr:\n{err}\ndockerd:\n{}",
        docker.log_tail()
    );
    assert!(
        out.contains(&format!("{app}: digest: sha256:")),
        "pushed: {out}"
    );

    // What was pushed: the RUN step ran as the image's root, which is
    // uid 1000 of the container.
    let mut pull = estiba(&host_store);
    host(&mut pull);
    ok("pull the built image", pull.args(["pull", &app]));
    let made = ok(
        "estiba run the built image",
        estiba(&host_store).args([
            "run",
            "--rm",
            "--network",
            "none",
            &app,
            "cat",
            "/made",
            "/hello.txt",
        ]),
    );
    assert_eq!(made, "built by uid 0\nhola\n");
    // The same image as the glibc estiba under test gives as root of the
    // host, from the same workspace.
    let iid_host = dir.join("iid-host");
    let mut root_build = estiba(&host_store);
    host(&mut root_build);
    ok(
        "the root build on the host",
        root_build
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .args(["build", "--progress", "plain", "--network", "host"])
            .arg("--iidfile")
            .arg(&iid_host)
            .arg(&job.workspace),
    );
    let iid = |path: &Path| std::fs::read_to_string(path).expect("read an iidfile");
    assert_eq!(iid(&job.home.join("iid")), iid(&iid_host));

    // What the Job depends on. The runtime's default seccomp profile
    // refuses the user namespace, and the message says what to change.
    let (code, _, err) = job.run(&["systempaths=unconfined"], &build);
    assert_eq!(code, 1, "a build under the default seccomp profile: {err}");
    assert!(
        err.contains("seccomp or AppArmor profile must allow unshare(CLONE_NEWUSER)"),
        "{err}"
    );
    // With /proc masked, the RUN step cannot mount its own /proc: the
    // README's `procMount: Unmasked` (if this now works, say so there).
    let no_cache = [&build[..1], &["--no-cache"], &build[1..]].concat();
    let (code, _, err) = job.run(&["seccomp=unconfined"], &no_cache);
    assert_eq!(code, 1, "a RUN step with /proc masked: {err}");
    assert!(err.contains("cannot mount proc"), "{err}");
}
