//! `estiba build` in place of `docker build`: docker's flags, contexts and
//! outputs, as scripts written for docker use them (issue 15).

use std::path::Path;

#[path = "support/busybox.rs"]
mod busybox;
#[path = "support/project.rs"]
mod project;
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
    for flag in ["--squash", "--isolation=hyperv", "--cgroup-parent"] {
        let (code, out, err) = build(&e, &[flag]);
        let name = flag.split('=').next().unwrap_or(flag);
        assert_eq!(code, 2, "{flag}: {out}{err}");
        assert_eq!(
            err,
            format!("error: estiba build does not support {name}\n"),
            "{flag}"
        );
    }
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
