//! Rootless builds (issue 14): the tests run as root, make an ordinary test
//! user with `/etc/subuid` and `/etc/subgid` ranges (see
//! `support/rootless.rs`) and run the estiba binary as that user. A build
//! as the user gives the same image as root's, its RUN steps are as
//! confined, and what cannot work says what to do.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

#[path = "support/busybox.rs"]
mod busybox;
#[path = "support/ci.rs"]
mod ci;
#[path = "support/rootless.rs"]
mod rootless;
#[path = "support/estiba.rs"]
mod support_estiba;

use rootless::{User, RANGED, SINGLE};
use support_estiba::{estiba, run};

const EPOCH: &str = "1700000000";

/// Whether the test can run; in CI it must.
fn can_run(test: &str) -> bool {
    match rootless::unavailable() {
        None => true,
        Some(why) => {
            ci::skip_or_fail(test, "a rootless estiba", &why);
            false
        }
    }
}

/// A context owned by `user` with a busybox `rootfs.tar` (files of root,
/// plus `/home/app` of 1000:1000) and `files`.
fn context(user: &User, files: &[(&str, &str)]) -> std::path::PathBuf {
    let ctx = user.mkdir("ctx");
    let rootfs = user.dir().join("rootfs");
    busybox::busybox_rootfs(&rootfs);
    for applet in [
        "mkdir", "touch", "rm", "chown", "chmod", "stat", "test", "grep", "mount", "hostname",
        "wc", "mv", "ln", "tr", "head",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("link");
    }
    std::fs::create_dir_all(rootfs.join("home/app")).expect("mkdir");
    std::fs::create_dir_all(rootfs.join("tmp")).expect("mkdir");
    std::fs::set_permissions(rootfs.join("tmp"), PermissionsExt::from_mode(0o1777)).expect("chmod");
    std::fs::create_dir_all(rootfs.join("opt/old/deep")).expect("mkdir");
    std::fs::write(rootfs.join("opt/old/deep/file"), "old").expect("write");
    std::fs::write(rootfs.join("opt/gone"), "gone").expect("write");
    std::os::unix::fs::chown(rootfs.join("home/app"), Some(1000), Some(1000)).expect("chown");
    let tar = busybox::tar_tree(&rootfs);
    std::fs::rename(&tar, ctx.join("rootfs.tar")).expect("move the tar");
    for (name, text) in files {
        std::fs::write(ctx.join(name), text).expect("write");
    }
    user.give(&ctx);
    ctx
}

/// Runs `cmd`; its exit code and both outputs in one string.
fn outcome(cmd: &mut Command) -> (i32, String) {
    let (code, out, err) = run(cmd);
    (code, format!("{out}{err}"))
}

/// `estiba build --progress plain ARGS CTX` as `user`.
fn user_build(user: &User, ctx: &Path, args: &[&str]) -> (i32, String) {
    outcome(
        user.estiba()
            .args(["build", "--progress", "plain"])
            .args(args)
            .arg(ctx),
    )
}

fn image_id(iidfile: &Path) -> String {
    std::fs::read_to_string(iidfile).expect("iidfile")
}

/// Everything that decides a layer's bytes: owners of every kind (root,
/// 1000, 65534), setuid, whiteouts of files and directories, an opaque
/// directory, a cache mount, USER, and a second stage copied from.
const LAYERS: &str = r#"FROM scratch AS base
ADD rootfs.tar /
COPY --chown=1000:1000 a.txt /home/app/a.txt
COPY --chown=65534:65534 a.txt /srv/nobody.txt
RUN mkdir -p /srv/d && touch /srv/d/x /srv/root && chown 65534:65534 /srv/d/x && chown 1000:1000 /srv/d \
 && chown 0:0 /srv/root && chmod 4755 /srv/root
RUN rm /opt/gone && rm -rf /opt/old && mkdir -p /opt/old && echo new > /opt/old/new
RUN --mount=type=cache,target=/cache echo cached > /cache/c && cp /cache/c /srv/from-cache
RUN test "$(stat -c '%u:%g %a' /srv/d/x)" = "65534:65534 644" \
 && test "$(stat -c '%u:%g' /srv/d)" = "1000:1000" \
 && test "$(stat -c '%u:%g %a' /srv/root)" = "0:0 4755" \
 && test "$(stat -c '%u:%g' /home/app/a.txt)" = "1000:1000" \
 && test ! -e /opt/gone && test ! -e /opt/old/deep && test -f /opt/old/new \
 || { echo OWNERS-WRONG; stat -c '%u:%g %a %n' /srv/d/x /srv/d /srv/root /home/app/a.txt; ls -R /opt; exit 1; }
USER app
RUN id -u > /home/app/who && echo from-app > /tmp/app-file

FROM scratch
COPY --from=base / /
RUN test "$(cat /home/app/who)" = 1000 && test "$(stat -c '%u' /tmp/app-file)" = 1000 \
 && test "$(stat -c '%u' /srv/nobody.txt)" = 65534 || { echo STAGE-WRONG; exit 1; }
"#;

#[test]
fn a_rootless_build_gives_the_image_a_root_build_gives() {
    if !can_run("a_rootless_build_gives_the_image_a_root_build_gives") {
        return;
    }
    let user = User::new(RANGED);
    let ctx = context(&user, &[("Dockerfile", LAYERS), ("a.txt", "a\n")]);
    let iid_user = user.dir().join("iid-user");
    let (code, out) = outcome(
        user.estiba()
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .args([
                "build",
                "--progress",
                "plain",
                "--network",
                "none",
                "--iidfile",
            ])
            .arg(&iid_user)
            .arg(&ctx),
    );
    assert_eq!(code, 0, "rootless build:\n{out}");
    assert!(
        user.default_store().join("index.json").is_file(),
        "the store is $XDG_DATA_HOME/estiba"
    );
    assert_eq!(rootless::owner(&user.default_store()).0, user.uid);
    let local = user.dir().join("local");
    let (code, out) = outcome(
        user.estiba()
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .args(["build", "--progress", "plain", "--network", "none", "-o"])
            .arg(format!("type=local,dest={}", local.display()))
            .arg(&ctx),
    );
    assert_eq!(code, 0, "local export:\n{out}");
    assert_eq!(
        rootless::owner(&local.join("home/app/a.txt")),
        (user.uid, user.gid),
        "a local export is the user's"
    );

    let root_store = user.dir().join("root-store");
    let iid_root = user.dir().join("iid-root");
    let (code, out) = outcome(
        estiba(&root_store)
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .args([
                "build",
                "--progress",
                "plain",
                "--network",
                "none",
                "--iidfile",
            ])
            .arg(&iid_root)
            .arg(&ctx),
    );
    assert_eq!(code, 0, "root build:\n{out}");
    assert_eq!(image_id(&iid_user), image_id(&iid_root));
}

#[test]
fn a_rootless_rebuild_hits_the_cache_and_the_copy_snapshotter_agrees() {
    if !can_run("a_rootless_rebuild_hits_the_cache_and_the_copy_snapshotter_agrees") {
        return;
    }
    let user = User::new(RANGED);
    let ctx = context(&user, &[("Dockerfile", LAYERS), ("a.txt", "a\n")]);
    let build = |snapshotter: &str, root: &str| {
        let iid = user.dir().join(format!("iid-{snapshotter}-{root}"));
        let (code, out) = outcome(
            user.estiba()
                .env("SOURCE_DATE_EPOCH", EPOCH)
                .env("ESTIBA_SNAPSHOTTER", snapshotter)
                .arg("--root")
                .arg(user.dir().join(root))
                .args([
                    "build",
                    "--progress",
                    "plain",
                    "--network",
                    "none",
                    "--iidfile",
                ])
                .arg(&iid)
                .arg(&ctx),
        );
        assert_eq!(code, 0, "{snapshotter} build:\n{out}");
        (image_id(&iid), out)
    };
    let (overlay, _) = build("overlay", "s1");
    let (again, out) = build("overlay", "s1");
    assert_eq!(overlay, again);
    assert!(
        out.matches("CACHED").count() >= 10,
        "every step hits:\n{out}"
    );
    let (copy, _) = build("copy", "s2");
    assert_eq!(overlay, copy, "the copy snapshotter gives other layers");
}

#[test]
fn rootless_run_steps_are_confined_like_roots() {
    if !can_run("rootless_run_steps_are_confined_like_roots") {
        return;
    }
    let user = User::new(RANGED);
    let secret = user.dir().join("secret");
    std::fs::write(&secret, "host secret").expect("write");
    user.give(&secret);
    let dockerfile = format!(
        "FROM scratch\nADD rootfs.tar /\n\
         RUN if cat {secret} 2>/dev/null; then echo HOST-FILE-READ; exit 1; fi\n\
         RUN ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' ' > /pids; \
             for p in $(cat /pids); do test $p -lt 10 || {{ echo HOST-PROCESS $p; exit 1; }}; done\n\
         RUN if mount -t tmpfs x /mnt 2>/dev/null; then echo MOUNTED; exit 1; fi\n\
         RUN if echo 1 > /proc/sys/vm/drop_caches 2>/dev/null; then echo PROC-SYS; exit 1; fi\n\
         RUN test \"$(hostname)\" = buildkitsandbox || {{ echo HOSTNAME; exit 1; }}\n\
         RUN --network=none test \"$(grep -c : /proc/net/dev)\" = 1 || {{ echo NOT-ONLY-LO; exit 1; }}\n",
        secret = secret.display()
    );
    let ctx = context(&user, &[("Dockerfile", &dockerfile)]);
    let (code, out) = user_build(&user, &ctx, &["--network", "none"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_rootless_default_network_goes_through_pasta_or_says_why_not() {
    if !can_run("the_rootless_default_network_goes_through_pasta_or_says_why_not") {
        return;
    }
    let user = User::new(RANGED);
    let ctx = context(
        &user,
        &[(
            "Dockerfile",
            "FROM scratch\nADD rootfs.tar /\n\
             RUN grep -q '^[a-z0-9]*\t00000000' /proc/net/route || { echo NO-DEFAULT-ROUTE; exit 1; }\n",
        )],
    );
    let (code, out) = outcome(
        user.estiba_with_tun(0o666)
            .args(["build", "--progress", "plain"])
            .arg(&ctx),
    );
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning: no outbound network"), "{out}");

    // A tun device only root opens: the step runs with lo, and the
    // warning says what to change.
    let (code, out) = outcome(
        user.estiba_with_tun(0o600)
            .args(["build", "--progress", "plain", "--no-cache"])
            .arg(&ctx),
    );
    assert_eq!(code, 1, "no default route without pasta:\n{out}");
    assert!(
        out.contains("Rootless, pasta needs /dev/net/tun, which you cannot open")
            && out.contains("chmod 0666 /dev/net/tun"),
        "{out}"
    );
}

#[test]
fn rootless_host_network_is_the_users() {
    if !can_run("rootless_host_network_is_the_users") {
        return;
    }
    let user = User::new(RANGED);
    let mut host: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .expect("/proc/net/dev")
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .collect();
    host.sort();
    let ctx = context(
        &user,
        &[(
            "Dockerfile",
            "FROM scratch\nADD rootfs.tar /\n\
             RUN echo IFACES $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' ')\n",
        )],
    );
    let (code, out) = user_build(&user, &ctx, &["--network", "host"]);
    assert_eq!(code, 0, "{out}");
    let line = out
        .lines()
        .filter_map(|l| {
            l.split_once(" IFACES ")
                .map(|(_, rest)| rest.trim().to_owned())
        })
        .find(|rest| !rest.starts_with('$'))
        .unwrap_or_else(|| panic!("no interfaces printed:\n{out}"));
    assert_eq!(line, host.join(" "));
}

#[test]
fn without_subordinate_ids_root_files_work_and_another_owner_is_named() {
    if !can_run("without_subordinate_ids_root_files_work_and_another_owner_is_named") {
        return;
    }
    let user = User::new(SINGLE);
    let ctx = context(
        &user,
        &[(
            "Dockerfile",
            "FROM scratch\nADD rootfs.tar /\nRUN echo single > /single && id -u\n",
        )],
    );
    // The busybox tar holds /home/app of 1000:1000: not mappable.
    let (code, out) = user_build(&user, &ctx, &["--network", "none"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("home/app"), "the file is named:\n{out}");
    assert!(out.contains("1000:1000"), "{out}");
    assert!(
        out.contains("/etc/subuid")
            && out.contains(&format!(
                "--add-subuids 100000-165535 --add-subgids 100000-165535 {SINGLE}"
            )),
        "says how to add a range:\n{out}"
    );

    // Files of root only: the single mapping builds and runs them.
    let rootfs = user.dir().join("rootfs");
    std::os::unix::fs::chown(rootfs.join("home/app"), Some(0), Some(0)).expect("chown");
    let tar = busybox::tar_tree(&rootfs);
    std::fs::rename(&tar, ctx.join("rootfs.tar")).expect("move");
    user.give(&ctx);
    let (code, out) = user_build(&user, &ctx, &["--network", "none"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn another_users_store_is_refused_saying_what_to_do() {
    if !can_run("another_users_store_is_refused_saying_what_to_do") {
        return;
    }
    let user = User::new(RANGED);
    let theirs = user.dir().join("roots-store");
    let (code, out) = outcome(estiba(&theirs).arg("images"));
    assert_eq!(code, 0, "{out}");
    let (code, out) = outcome(user.estiba().arg("--root").arg(&theirs).arg("images"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "the store {} belongs to another user",
            theirs.display()
        )),
        "{out}"
    );
    assert!(out.contains("--root DIR or ESTIBA_ROOT=DIR"), "{out}");
}

/// The machine's `user.max_user_namespaces` is not the test's to change
/// (other builds run beside it): a private mount namespace gets a file
/// saying 0 bound over it, which is all estiba reads before it asks the
/// kernel.
#[test]
fn user_namespaces_disabled_is_an_error_saying_what_to_do() {
    if !can_run("user_namespaces_disabled_is_an_error_saying_what_to_do") {
        return;
    }
    let user = User::new(RANGED);
    let zero = user.dir().join("zero");
    std::fs::write(&zero, "0\n").expect("write");
    let script = format!(
        "mount --make-rprivate / && mount --bind {} /proc/sys/user/max_user_namespaces || exit 97; \
         exec setpriv --reuid={} --regid={} --clear-groups -- {} --root {}/store images",
        zero.display(),
        user.uid,
        user.gid,
        user.bin().display(),
        user.dir().display()
    );
    let (code, text) = outcome(Command::new("unshare").args(["--mount", "sh", "-c", &script]));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("this kernel allows none (/proc/sys/user/max_user_namespaces is 0)"),
        "{text}"
    );
    assert!(
        text.contains("sysctl -w user.max_user_namespaces="),
        "{text}"
    );
}
