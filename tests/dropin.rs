//! `estiba build` in place of `docker build`: docker's flags, contexts and
//! outputs, as scripts written for docker use them (issue 15).

use std::path::Path;

#[path = "support/busybox.rs"]
mod busybox;
#[path = "support/project.rs"]
mod project;
#[path = "support/env.rs"]
mod support_env;
#[path = "support/estiba.rs"]
mod support_estiba;
use project::{build, env, import_busybox, local_export};
use support_estiba::{estiba, run};

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `--add-host`, `--shm-size` and `--ulimit` reach every RUN step, and are
/// part of its key: the same flags hit the cache, other flags run again.
#[test]
fn add_host_shm_size_and_ulimit_reach_run_steps() {
    let e = env(&[(
        "Dockerfile",
        "FROM busybox:test\n\
         RUN grep -v '^#' /etc/hosts > /hosts && df -k /dev/shm | tail -n 1 > /shm \
             && ulimit -n > /nofile_soft && ulimit -Hn > /nofile_hard\n",
    )]);
    import_busybox(&e);
    let flags = [
        "--add-host",
        "db.internal:10.1.2.3",
        "--add-host=v6host=fd00::1",
        "--shm-size",
        "128m",
        "--ulimit",
        "nofile=1000:2000",
    ];
    let out = local_export(&e, "flags", &flags);
    let hosts = read(&out, "hosts");
    assert!(hosts.contains("10.1.2.3\tdb.internal\n"), "{hosts}");
    assert!(hosts.contains("fd00::1\tv6host\n"), "{hosts}");
    assert!(
        hosts.contains("localhost"),
        "the default lines stay: {hosts}"
    );
    let shm: Vec<String> = read(&out, "shm")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(shm.get(1).map(String::as_str), Some("131072"), "{shm:?}");
    assert_eq!(read(&out, "nofile_soft").trim(), "1000");
    assert_eq!(read(&out, "nofile_hard").trim(), "2000");

    // The defaults: docker's 64 MiB /dev/shm.
    let plain = local_export(&e, "plain", &[]);
    let shm = read(&plain, "shm");
    assert_eq!(shm.split_whitespace().nth(1), Some("65536"), "{shm}");
    assert!(!read(&plain, "hosts").contains("db.internal"));

    let (code, _, err) = build(&e, &flags);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("CACHED"), "same flags, same key: {err}");
    let (code, _, err) = build(&e, &["--ulimit", "nofile=1001:2000"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("CACHED"), "another limit runs again: {err}");
}

#[test]
fn bad_host_flags_are_usage_errors() {
    let e = env(&[("Dockerfile", "FROM scratch\n")]);
    for (flag, value, says) in [
        ("--add-host", "nocolon", "expected HOST:IP"),
        ("--add-host", "h:not-an-ip", "is not an IP address"),
        ("--add-host", "h:host-gateway", "host-gateway"),
        ("--shm-size", "lots", "invalid --shm-size"),
        ("--ulimit", "nofile=10:5", "above the hard limit"),
        ("--ulimit", "bogus=1", "unknown limit"),
    ] {
        let (code, _, err) = build(&e, &[flag, value]);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}

/// `--no-cache-filter STAGE` runs that stage's steps again and keeps the
/// cache for the others (BuildKit's `IgnoreCache` per stage).
#[test]
fn no_cache_filter_reruns_only_the_named_stage() {
    let e = env(&[(
        "Dockerfile",
        "FROM busybox:test AS deps\n\
         RUN cat /proc/sys/kernel/random/uuid > /deps\n\
         FROM busybox:test AS App\n\
         COPY --from=deps /deps /deps\n\
         RUN cat /proc/sys/kernel/random/uuid > /app\n",
    )]);
    import_busybox(&e);
    let first = local_export(&e, "first", &[]);
    let second = local_export(&e, "second", &["--no-cache-filter", "app"]);
    assert_eq!(
        read(&first, "deps"),
        read(&second, "deps"),
        "deps is cached"
    );
    assert_ne!(read(&first, "app"), read(&second, "app"), "app runs again");
    let (code, _, err) = build(&e, &["--no-cache-filter", "nosuch"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no stage named nosuch"), "{err}");
}

/// A docker flag estiba does not have is one line and exit 2, never clap's
/// "to pass it as a value, use `-- --squash`".
#[test]
fn unsupported_docker_flags_are_one_line() {
    let e = env(&[("Dockerfile", "FROM scratch\n")]);
    for flag in ["--squash", "--cpuset-cpus=0", "--cgroup-parent"] {
        let (code, out, err) = build(&e, &[flag]);
        let name = flag.split('=').next().unwrap_or(flag);
        assert_eq!(code, 2, "{flag}: {out}{err}");
        assert_eq!(
            err,
            format!("error: estiba build does not support {name}\n"),
            "{flag}"
        );
    }
    // --isolation is estiba's too (default or chroot): docker's Windows
    // values are refused by name.
    let (code, _, err) = build(&e, &["--isolation=hyperv"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid --isolation \"hyperv\""), "{err}");
    // docker's no-ops are accepted.
    let (code, _, err) = build(&e, &["--rm", "--force-rm", "--rm=false"]);
    assert_eq!(code, 0, "{err}");
}

/// `COPY --from=bulder` (a typo) is tried as an image, as BuildKit does;
/// when that fails the error suggests the stage `builder`.
#[test]
fn copy_from_a_misspelt_stage_suggests_the_stage() {
    let e = env(&[(
        "Dockerfile",
        "FROM scratch AS builder\nCOPY Dockerfile /x\nFROM scratch\nCOPY --from=bulder /x /y\n",
    )]);
    // No registry is reachable: a proxy on a closed loopback port refuses
    // at once, whatever DNS this machine has.
    let (code, _, err) = run(estiba(&e.root)
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("https_proxy", "http://127.0.0.1:9")
        .args(["build", "--progress", "plain"])
        .arg(&e.ctx));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("COPY --from=bulder: no stage is named bulder")
            && err.contains("(did you mean the stage builder?)"),
        "{err}"
    );
    assert!(err.contains("Dockerfile:4"), "{err}");
}

#[test]
fn completions_are_printed_for_each_shell() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (shell, marker) in [
        ("bash", "complete -F _estiba"),
        ("zsh", "#compdef estiba"),
        ("fish", "complete -c estiba"),
    ] {
        let (code, out, err) = run(estiba(tmp.path()).args(["completion", shell]));
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(
            out.contains("no-cache-filter"),
            "{shell} knows build's flags"
        );
    }
}

/// Runs `estiba ARGS…` with `input` on standard input: exit code, stdout
/// and stderr.
fn with_stdin(e: &project::Env, args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = estiba(&e.root)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("estiba starts");
    let mut stdin = child.stdin.take().expect("stdin");
    // It may stop reading early (a usage error): a broken pipe is fine.
    let _ = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().expect("estiba ends");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `estiba build --progress plain EXTRA…` with `input` on standard input.
fn build_with_stdin(e: &project::Env, extra: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    with_stdin(
        e,
        &[&["build", "--progress", "plain"], extra].concat(),
        input,
    )
}

/// A tar of `dir`, gzip-compressed when `gzip`.
fn tar_of(dir: &Path, gzip: bool) -> Vec<u8> {
    let mut cmd = std::process::Command::new("tar");
    cmd.arg("-C")
        .arg(dir)
        .arg(if gzip { "-czf" } else { "-cf" })
        .args(["-", "."]);
    let out = cmd.output().expect("tar runs");
    assert!(out.status.success());
    out.stdout
}

/// `estiba build - < ctx.tar[.gz]`: the tar is the context, its
/// Dockerfile (or `-f` inside it) the Dockerfile; `estiba build - <
/// Dockerfile`: no context at all, as the docker CLI tells them apart.
#[test]
fn standard_input_is_a_context_tar_or_a_dockerfile() {
    let e = env(&[
        ("Dockerfile", "FROM scratch\nCOPY a /a\n"),
        ("sub/Other", "FROM scratch\nCOPY sub/b /b\n"),
        ("a", "from the tar\n"),
        ("sub/b", "b\n"),
    ]);
    for gzip in [false, true] {
        let out = e.tmp.path().join(format!("out-{gzip}"));
        let spec = format!("type=local,dest={}", out.display());
        let (code, _, err) = build_with_stdin(&e, &["-o", &spec, "-"], &tar_of(&e.ctx, gzip));
        assert_eq!(code, 0, "{err}");
        assert_eq!(read(&out, "a"), "from the tar\n");
    }
    let out = e.tmp.path().join("out-f");
    let spec = format!("type=local,dest={}", out.display());
    let (code, _, err) = build_with_stdin(
        &e,
        &["-f", "sub/Other", "-o", &spec, "-"],
        &tar_of(&e.ctx, false),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(read(&out, "b"), "b\n");

    // A Dockerfile alone: it builds, and has no context to COPY from.
    let (code, _, err) = build_with_stdin(&e, &["-"], b"FROM scratch\nLABEL a=b\n");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = build_with_stdin(&e, &["-"], b"FROM scratch\nCOPY a /a\n");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Dockerfile") || err.contains("-:2"), "{err}");
    assert!(err.contains('a'), "{err}");

    // `-f -`: the Dockerfile from standard input beside a directory.
    let out = e.tmp.path().join("out-dash-f");
    let spec = format!("type=local,dest={}", out.display());
    let ctx = e.ctx.to_str().expect("utf-8");
    let (code, _, err) = build_with_stdin(
        &e,
        &["-f", "-", "-o", &spec, ctx],
        b"FROM scratch\nCOPY a /z\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(read(&out, "z"), "from the tar\n");

    let (code, _, err) = build_with_stdin(&e, &["-f", "-", "-"], b"FROM scratch\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be both"), "{err}");
}

#[test]
fn a_missing_context_directory_says_so() {
    let e = env(&[]);
    let missing = e.tmp.path().join("nosuch");
    let (code, _, err) = run(estiba(&e.root).arg("build").arg(&missing));
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err,
        format!(
            "error: the build context {} does not exist\n",
            missing.display()
        )
    );
}

/// `-o DIR` is the local exporter and `-o -` a tar on standard output, as
/// buildx reads a value without `=`; `type=tar,dest=F` writes the file.
#[test]
fn outputs_as_buildx_spells_them() {
    let e = env(&[
        ("Dockerfile", "FROM scratch\nCOPY a /dir/a\n"),
        ("a", "A\n"),
    ]);
    let dir = e.tmp.path().join("plain-dir");
    let (code, _, err) = build(&e, &["-o", dir.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read(&dir, "dir/a"), "A\n");

    let list = |tar: &[u8]| -> String {
        let mut child = std::process::Command::new("tar")
            .arg("-tvf")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("tar");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(tar)
            .expect("write");
        let out = child.wait_with_output().expect("tar ends");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (code, stdout, err) =
        build_with_stdin(&e, &["-o", "-", e.ctx.to_str().expect("utf-8")], b"");
    assert_eq!(code, 0, "{err}");
    let listing = list(&stdout);
    assert!(listing.contains("dir/a"), "{listing}");
    assert!(
        listing.contains("0/0"),
        "owners as the image has them: {listing}"
    );

    let file = e.tmp.path().join("rootfs.tar");
    let spec = format!("type=tar,dest={}", file.display());
    let (code, _, err) = build(&e, &["-o", &spec]);
    assert_eq!(code, 0, "{err}");
    let listing = list(&std::fs::read(&file).expect("tar file"));
    assert!(
        listing.contains("dir/\n") || listing.contains("dir/"),
        "{listing}"
    );
    assert!(listing.contains("dir/a"), "{listing}");
}

/// `--build-context NAME=DIR` is what `COPY --from=NAME` reads and what
/// `FROM NAME` starts from, owned by root as the context is; `NAME=docker-image://REF` stands for an image
/// in `FROM NAME` and `COPY --from=NAME`.
#[test]
fn named_build_contexts() {
    let e = env(&[(
        "Dockerfile",
        "FROM base AS tools\n\
             FROM assets AS files\n\
             FROM scratch\n\
             COPY --from=assets /e.txt /from-dir\n\
             COPY --from=files /e.txt /from-a-local-base\n\
             COPY --from=tools /bin/busybox /from-image\n\
             COPY --from=docker.io/library/base:latest /bin/busybox /from-full-name\n",
    )]);
    import_busybox(&e);
    let assets = e.tmp.path().join("assets");
    std::fs::create_dir_all(&assets).expect("assets");
    std::fs::write(assets.join("e.txt"), "extra\n").expect("write");
    std::os::unix::fs::chown(assets.join("e.txt"), Some(1234), Some(1234)).expect("chown");
    let dir_spec = format!("assets={}", assets.display());
    let out = local_export(
        &e,
        "named",
        &[
            "--build-context",
            &dir_spec,
            "--build-context",
            "base=docker-image://busybox:test",
        ],
    );
    assert_eq!(read(&out, "from-dir"), "extra\n");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(out.join("from-dir")).expect("from-dir");
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert!(out.join("from-image").is_file());
    assert_eq!(
        read(&out, "from-a-local-base"),
        "extra\n",
        "FROM a local context"
    );
    assert!(out.join("from-full-name").is_file());

    for (bad, says) in [
        ("x=git://example.com/repo", "not supported"),
        ("x", "expected NAME=DIR"),
        ("x=/nonexistent/dir", "is not a directory"),
    ] {
        let (code, _, err) = build(&e, &["--build-context", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}

fn ok_out(e: &project::Env, args: &[&str]) -> String {
    let (code, out, err) = run(estiba(&e.root).args(args));
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

/// The data rows of `estiba images` (no header), split into columns.
fn image_rows(e: &project::Env, extra: &[&str]) -> Vec<Vec<String>> {
    ok_out(e, &[&["images"], extra].concat())
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// A build without `-t` is an image as docker's is: listed as `<none>`,
/// found by its ID, removed by `prune`; a tag that moves leaves its old
/// image dangling; `--filter` and `-q` as docker's.
#[test]
fn images_without_a_name_are_listed_found_and_pruned() {
    let e = env(&[("Dockerfile", "FROM scratch\nCOPY a /a\n"), ("a", "1")]);
    let (code, id, err) = run(estiba(&e.root).args(["build", "-q"]).arg(&e.ctx));
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_string();
    let short: String = id.trim_start_matches("sha256:").chars().take(12).collect();
    let rows = image_rows(&e, &[]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(&rows[0][..3], &["<none>", "<none>", short.as_str()]);
    let inspected = ok_out(&e, &["inspect", &short]);
    assert!(inspected.contains(&id), "{inspected}");

    // A tag moved to a new build leaves the old image dangling.
    let (code, _, err) = build(&e, &["-t", "app:1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(image_rows(&e, &[]).len(), 1, "the same image, now named");
    std::fs::write(e.ctx.join("a"), "2").expect("write");
    let (code, _, err) = build(&e, &["-t", "app:1"]);
    assert_eq!(code, 0, "{err}");
    let dangling = image_rows(&e, &["--filter", "dangling=true"]);
    assert_eq!(dangling.len(), 1, "{dangling:?}");
    assert_eq!(dangling[0][2], short, "the old image is the dangling one");
    let named = image_rows(&e, &["-f", "dangling=false"]);
    assert_eq!(named.len(), 1);
    assert_eq!(&named[0][..2], &["app", "1"]);
    assert_eq!(image_rows(&e, &["--filter", "reference=ap*"]).len(), 1);
    assert_eq!(image_rows(&e, &["--filter", "reference=app:1"]).len(), 1);
    assert_eq!(image_rows(&e, &["--filter", "reference=other"]).len(), 0);
    let ids = ok_out(&e, &["images", "-q"]);
    assert_eq!(ids.lines().count(), 2, "{ids}");
    let (code, _, err) = run(estiba(&e.root).args(["images", "--filter", "label=x"]));
    assert_eq!(code, 2, "{err}");

    let (out, _) = project::ok(estiba(&e.root).arg("prune"));
    assert!(out.contains("1 dangling images"), "{out}");
    assert!(image_rows(&e, &["--filter", "dangling=true"]).is_empty());
    assert_eq!(image_rows(&e, &[]).len(), 1, "the named image stays");
    let (code, _, _) = run(estiba(&e.root).args(["inspect", &short]));
    assert_eq!(code, 1, "the pruned image is gone");

    // rmi by ID removes the image with its names.
    let (code, id2, err) = run(estiba(&e.root)
        .args(["build", "-q", "-t", "app:2"])
        .arg(&e.ctx));
    assert_eq!(code, 0, "{err}");
    let short2: String = id2
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    let out = ok_out(&e, &["rmi", &short2]);
    assert!(out.contains("Untagged: app:2"), "{out}");
    assert!(out.contains(&format!("Deleted: {}", id2.trim())), "{out}");
    assert!(
        image_rows(&e, &[]).iter().all(|r| r[2] != short2),
        "no name of the image is left"
    );
}

/// `estiba history` lists the steps newest first, with the image ID on top,
/// each layer's size and `0B` for steps without one.
#[test]
fn history_lists_the_steps_newest_first() {
    let e = env(&[
        (
            "Dockerfile",
            "FROM scratch\nCOPY a /a\nENV K=v\nLABEL x=y\n",
        ),
        ("a", "some content"),
    ]);
    let (code, id, err) = run(estiba(&e.root)
        .args(["build", "-q", "-t", "h:1"])
        .arg(&e.ctx));
    assert_eq!(code, 0, "{err}");
    let out = ok_out(&e, &["history", "h:1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("IMAGE"), "{out}");
    assert_eq!(lines.len(), 4, "{out}");
    let short: String = id
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    assert!(lines[1].starts_with(&short), "{out}");
    assert!(
        lines[1].contains("LABEL x=y") && lines[1].contains("0B"),
        "{out}"
    );
    assert!(lines[2].contains("ENV K=v"), "{out}");
    assert!(
        lines[3].contains("COPY a /a") && lines[3].starts_with("<missing>"),
        "{out}"
    );
    assert!(!lines[3].contains(" 0B "), "the COPY made a layer: {out}");
    let json: serde_json::Value = serde_json::from_str(&ok_out(
        &e,
        &["history", "--format", "json", "--no-trunc", "h:1"],
    ))
    .expect("json");
    assert_eq!(json[0]["ID"], id.trim());
    assert_eq!(json.as_array().map(Vec::len), Some(3));
}

#[test]
fn system_df_sizes_the_store_parts() {
    let e = env(&[(
        "Dockerfile",
        "FROM busybox:test\nRUN --mount=type=cache,target=/c echo x > /c/f && echo y > /y\n",
    )]);
    import_busybox(&e);
    let (code, _, err) = build(&e, &["-t", "df:1"]);
    assert_eq!(code, 0, "{err}");
    let out = ok_out(&e, &["system", "df"]);
    let row = |what: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} row: {out}"))
            .trim_start_matches(what)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("Images")[0], "2", "busybox:test and df:1: {out}");
    assert_ne!(row("Blobs")[3], "0B", "{out}");
    assert_ne!(
        row("Snapshots")[2],
        "0",
        "the base was unpacked to run: {out}"
    );
    assert_eq!(row("Cache mounts")[0], "1", "{out}");
    assert!(out.lines().any(|l| l.starts_with("Total")), "{out}");
}

/// `estiba run ARGS…` with `input` on standard input: exit code, stdout
/// (as text), stderr.
fn run_image(e: &project::Env, args: &[&str], input: &[u8]) -> (i32, String, String) {
    let (code, out, err) = with_stdin(e, &[&["run"], args].concat(), input);
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

/// `estiba run` as `docker run` checks an image by hand: `-i` passes
/// standard input (and only with it), `--name` is the host name,
/// `--entrypoint` replaces ENTRYPOINT and drops CMD, docker's exit codes,
/// and `-d` refused in one line.
#[test]
fn run_takes_dockers_interactive_flags_and_exit_codes() {
    let e = env(&[(
        "Dockerfile",
        "FROM busybox:test\n\
         RUN printf 'echo script' > /not-executable\n\
         ENTRYPOINT [\"echo\", \"from-entrypoint\"]\nCMD [\"from-cmd\"]\n",
    )]);
    import_busybox(&e);
    let (code, _, err) = build(&e, &["-t", "runner:1"]);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = run_image(&e, &["-i", "busybox:test", "cat"], b"hello\n");
    assert_eq!((code, out.as_str()), (0, "hello\n"), "{err}");
    let (code, out, err) = run_image(&e, &["busybox:test", "cat"], b"hello\n");
    assert_eq!((code, out.as_str()), (0, ""), "no -i, no input: {err}");

    let (_, out, _) = run_image(
        &e,
        &[
            "--name",
            "checker-1",
            "busybox:test",
            "cat",
            "/proc/sys/kernel/hostname",
        ],
        b"",
    );
    assert_eq!(out, "checker-1\n");
    let (code, _, err) = run_image(&e, &["--name", "bad name", "busybox:test", "true"], b"");
    assert_eq!(code, 2, "{err}");

    let (_, out, _) = run_image(&e, &["runner:1"], b"");
    assert_eq!(out, "from-entrypoint from-cmd\n");
    let (_, out, _) = run_image(&e, &["--entrypoint", "echo", "runner:1"], b"");
    assert_eq!(out, "\n", "the image's CMD goes with its ENTRYPOINT");
    let (_, out, _) = run_image(&e, &["--entrypoint", "echo", "runner:1", "a", "b"], b"");
    assert_eq!(out, "a b\n");
    let (_, out, _) = run_image(&e, &["--entrypoint", "", "runner:1", "echo", "c"], b"");
    assert_eq!(out, "c\n");

    for (args, want) in [
        (&["busybox:test", "/no/such/program"][..], 127),
        (&["busybox:test", "no-such-program"][..], 127),
        (&["runner:1-not-here"][..], 1),
        (&["--entrypoint", "/not-executable", "runner:1"][..], 126),
        (&["busybox:test", "sh", "-c", "exit 7"][..], 7),
        (&["-d", "busybox:test", "true"][..], 2),
    ] {
        let (code, _, err) = run_image(&e, args, b"");
        assert_eq!(code, want, "{args:?}: {err}");
    }
    let (_, _, err) = run_image(&e, &["-d", "busybox:test"], b"");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("-d is not supported"), "{err}");
    // -it needs a terminal to read from, as docker says.
    let (code, _, err) = run_image(&e, &["-it", "busybox:test", "sh"], b"exit\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a TTY"), "{err}");
}

/// `script` gives estiba a terminal: `-t` makes the command's standard
/// streams a terminal, and `-it` runs an interactive shell whose exit code
/// comes back.
#[test]
fn run_with_a_terminal_runs_an_interactive_shell() {
    let e = env(&[]);
    import_busybox(&e);
    let exe = env!("CARGO_BIN_EXE_estiba");
    let root = e.root.display().to_string();
    let in_script = |command: String, input: &[u8]| -> (i32, String) {
        use std::io::Write;
        let mut child = std::process::Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .env_remove("ESTIBA_ROOT")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("script (util-linux) runs");
        let _ = child.stdin.take().expect("stdin").write_all(input);
        let out = child.wait_with_output().expect("script ends");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = in_script(
        format!("{exe} --root {root} run -t busybox:test sh -c '[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-terminals && tty'"),
        b"",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("all-terminals"), "{out}");
    // Found by name too, bound at /dev/console as runc binds it.
    assert!(out.contains("/dev/console"), "{out}");
    let (code, out) = in_script(
        format!("{exe} --root {root} run -it busybox:test sh"),
        b"echo inside-$((40+2))\nexit 3\n",
    );
    assert!(out.contains("inside-42"), "{out}");
    assert_eq!(code, 3, "the shell's exit code: {out}");

    // On a terminal, `--progress auto` is the live display.
    std::fs::write(
        e.ctx.join("Dockerfile"),
        "FROM busybox:test
RUN echo built
",
    )
    .expect("write");
    let ctx = e.ctx.display();
    let (code, out) = in_script(format!("{exe} --root {root} build -t tty:1 {ctx}"), b"");
    assert_eq!(code, 0, "{out}");
    let shown = without_escapes(&out);
    assert!(
        shown.contains("[+] Building") && shown.contains("FINISHED"),
        "{shown}"
    );
    assert!(!shown.contains("#2 DONE"), "not the plain format: {shown}");
}

/// stderr without escape sequences, as a terminal would have shown it
/// line by line (erased lines included).
fn without_escapes(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `--progress tty`: BuildKit's header with steps done of known, a running
/// step's last output lines under it, lines cut to the terminal's width,
/// the image's ID and name at the end; a failing step's output is shown
/// once, in the error report.
#[test]
fn the_terminal_display_shows_running_steps_output_and_fits_the_width() {
    let e = env(&[(
        "Dockerfile",
        "FROM busybox:test\n\
         RUN echo first-line; echo a-rather-long-second-line-that-does-not-fit-in-forty; sleep 2\n\
         RUN true\n",
    )]);
    import_busybox(&e);
    let (code, _, err) = run(estiba(&e.root)
        .env("COLUMNS", "40")
        .env("NO_COLOR", "1")
        .args(["build", "--progress", "tty", "-t", "live:1"])
        .arg(&e.ctx));
    assert_eq!(code, 0, "{err}");
    let shown = without_escapes(&err);
    assert!(shown.contains("[+] Building"), "{shown}");
    assert!(shown.contains("(4/4) FINISHED"), "{shown}");
    assert!(
        shown.contains(" => => # first-line"),
        "the running step's output: {shown}"
    );
    assert!(shown.contains(" => => naming to docker.io/"), "{shown}");
    assert!(shown.contains("writing image sha256:"), "{shown}");
    for line in shown.lines() {
        assert!(
            line.chars().count() <= 40,
            "wider than the terminal: {line:?}"
        );
    }

    std::fs::write(
        e.ctx.join("Dockerfile"),
        "FROM busybox:test\nRUN echo the-failure-says-this; exit 3\n",
    )
    .expect("write");
    let (code, _, err) = run(estiba(&e.root)
        .env("NO_COLOR", "1")
        .args(["build", "--progress", "tty"])
        .arg(&e.ctx));
    assert_eq!(code, 1, "{err}");
    let shown = without_escapes(&err);
    assert!(shown.contains(" => ERROR [2/2] RUN"), "{shown}");
    assert_eq!(shown.matches("last output").count(), 1, "{shown}");
}

/// buildx's `--load` (the store is where images go anyway) and
/// `--provenance=false`/`--sbom=false` run as they are; asking for an
/// attestation is refused in one line.
#[test]
fn buildx_flags_ci_scripts_pass() {
    let e = env(&[("Dockerfile", "FROM scratch\n")]);
    let (code, _, err) = build(
        &e,
        &["--load", "--provenance=false", "--sbom=false", "-t", "l:1"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(image_rows(&e, &["--filter", "reference=l"]).len(), 1);
    for flag in ["--provenance", "--provenance=mode=max", "--sbom=true"] {
        let (code, _, err) = build(&e, &[flag]);
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains("makes no attestations"), "{flag}: {err}");
    }
}

/// Every stage starts at once and a step runs as soon as what it reads is
/// ready: `app`'s first step runs while `slow` (which `app` copies from
/// later) is still running. The two steps meet through a shared cache
/// mount: `slow` waits for the file `app`'s first step writes, which in
/// stage-by-stage waves would never come (it gives up after ten seconds).
#[test]
fn a_step_runs_when_its_inputs_are_ready_not_when_its_stage_wave_is() {
    let e = env(&[(
        "Dockerfile",
        "FROM busybox:test AS slow\n\
         RUN --mount=type=cache,target=/sync,id=sync,sharing=shared \
             i=0; while [ ! -f /sync/go ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
             if [ -f /sync/go ]; then echo saw-go > /slow; else echo gave-up > /slow; fi\n\
         FROM busybox:test AS app\n\
         RUN --mount=type=cache,target=/sync,id=sync,sharing=shared touch /sync/go\n\
         COPY --from=slow /slow /slow\n",
    )]);
    import_busybox(&e);
    let out = local_export(&e, "out", &["--no-cache"]);
    assert_eq!(read(&out, "slow"), "saw-go\n");
}

/// Two stages with the same step (same base, same command) run it once:
/// the second waits for the first and takes its layer, as BuildKit merges
/// identical vertices.
#[test]
fn a_step_two_stages_share_runs_once() {
    let step =
        "RUN echo the-shared-step-ran && sleep 1 && cat /proc/sys/kernel/random/uuid > /id\n";
    let e = env(&[(
        "Dockerfile",
        &format!(
            "FROM busybox:test AS one\n{step}\
             FROM busybox:test AS two\n{step}\
             FROM scratch\nCOPY --from=one /id /one\nCOPY --from=two /id /two\n"
        ),
    )]);
    import_busybox(&e);
    let out = e.tmp.path().join("out");
    let spec = format!("type=local,dest={}", out.display());
    let (code, _, err) = build(&e, &["-o", &spec]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read(&out, "one"), read(&out, "two"), "one layer for both");
    let ran = err
        .lines()
        .filter(|l| l.ends_with(" the-shared-step-ran") && !l.contains("RUN"))
        .count();
    assert_eq!(ran, 1, "the step's output, once: {err}");
    assert!(
        err.contains("CACHED"),
        "the other stage took its layer: {err}"
    );
}

/// When one stage fails, the build's error is that stage's, at its line,
/// not the knock-on failure of the stages that read it.
#[test]
fn the_failing_stage_is_the_error_of_a_parallel_build() {
    let e = env(&[(
        "Dockerfile",
        "FROM busybox:test AS broken\nRUN echo about-to-fail; exit 5\n\
         FROM busybox:test AS fine\nRUN sleep 1\n\
         FROM scratch\nCOPY --from=broken / /b\nCOPY --from=fine / /f\n",
    )]);
    import_busybox(&e);
    let (code, _, err) = build(&e, &[]);
    assert_eq!(code, 1, "{err}");
    let report = err.split("\nerror: ").nth(1).unwrap_or_default();
    assert!(report.contains("exit code: 5"), "{err}");
    assert!(report.contains("Dockerfile:2"), "{err}");
}

/// A COPY a later RUN reads has its snapshot unpacked as its layer is
/// written (issue 13: one pass, not the tar written and then unpacked).
/// The tree must be exactly what unpacking the stored layer gives:
/// `fsck --full` compares each snapshot with its layer unpacked again, on a
/// context with a 0700 directory owned by another user, a setgid 0775
/// directory, a symlink, a hard link and odd modes.
#[test]
fn a_copy_snapshot_made_while_writing_equals_its_layer_unpacked() {
    use std::os::unix::fs::PermissionsExt;
    let e = env(&[
        (
            "Dockerfile",
            "FROM busybox:test\nCOPY . /data\nCOPY --chown=1000:50 --chmod=640 sub /owned\n\
             RUN ls -ln /data /owned > /listing\n",
        ),
        ("private/secret", "s"),
        ("shared/group-file", "g"),
        ("sub/a", "a"),
        ("sub/deep/b", "b"),
    ]);
    import_busybox(&e);
    let set_mode = |path: &str, mode: u32| {
        std::fs::set_permissions(e.ctx.join(path), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    };
    set_mode("private", 0o700);
    std::os::unix::fs::chown(e.ctx.join("private"), Some(1000), Some(1000)).expect("chown");
    set_mode("shared", 0o2775);
    set_mode("sub/a", 0o4755);
    std::os::unix::fs::symlink("../sub/a", e.ctx.join("shared/link")).expect("symlink");
    std::fs::hard_link(e.ctx.join("sub/a"), e.ctx.join("sub/hard")).expect("hard link");
    let (code, _, err) = build(&e, &["-t", "onepass:1"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(estiba(&e.root).args(["fsck", "--full"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no problems"), "{out}{err}");
    // And the RUN saw what the layers hold.
    let rootfs = local_export(&e, "rootfs", &["-t", "onepass:1"]);
    let listing = read(&rootfs, "listing");
    assert!(listing.contains("1000"), "{listing}");
}
