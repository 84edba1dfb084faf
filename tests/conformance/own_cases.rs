//! The harness's own cases, beside the buildah corpus: one per rule of
//! issue 12 that docker 20.10 (the docker here) shares with current
//! BuildKit, built by both builders and compared like every other case.
//!
//! The rules where docker 20.10 is older than current BuildKit are tested
//! against BuildKit's own expectation instead, each test citing it:
//! parents a COPY creates take its `--chmod` (tests/build.rs
//! `parents_a_copy_creates_take_its_chmod`, BuildKit `testCopyChmod`), the
//! `.dockerignore` walk of current fsutil (builder/tests/context.rs
//! `a_wildcard_exception_reaches_into_an_excluded_directory_as_current_fsutil_does`),
//! and `RUN --security=insecure` (tests/build.rs
//! `run_steps_are_confined_by_seccomp_unless_insecure_is_allowed`, a labs
//! flag docker 20.10's frontend does not parse).

use super::{mkdir, write_file, Case};
use std::path::Path;

/// The base every case here starts from (imported into both builders).
const BASE: &str = "mirror.gcr.io/busybox";

fn case(slug: &str, name: &str, text: &str, flags: &[&str]) -> Case {
    Case {
        name: name.to_owned(),
        slug: slug.to_owned(),
        dockerfile: None,
        context_dir: None,
        inline: true,
        dockerfile_text: text.replace("BASE", BASE),
        should_fail_at: 0,
        fs_skip: Vec::new(),
        bases: vec![BASE.to_owned()],
        needs_network: false,
        tweak_context_dir: true,
        without_docker: false,
        flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        no_file_flag: false,
    }
}

/// A case whose Dockerfile reads nothing from the context: it runs with
/// the checkout layout only (`Layout::of`).
fn no_context(mut c: Case) -> Case {
    c.tweak_context_dir = false;
    c
}

/// Every case of this file, in the order the report shows them.
pub(super) fn cases() -> Vec<Case> {
    let mut lowercase = case(
        "i12-5-lowercase-dockerfile",
        "issue 12 item 5: a context with only `dockerfile` and no -f",
        "FROM BASE\nCOPY . /ctx/\n",
        &[],
    );
    lowercase.dockerfile = Some("dockerfile".to_owned());
    lowercase.no_file_flag = true;
    vec![
        // Item 1: fsutil `copy/copy.go` `prepareTargetDir` makes the
        // destination of a directory's contents (0755, --chown or 0:0); the
        // source directory's own mode and owner are not copied.
        case(
            "i12-1-copy-dir-to-new-destination",
            "issue 12 item 1: a directory's contents into a destination the copy makes",
            "FROM BASE AS base\n\
             RUN mkdir -p /x/sub && echo x > /x/sub/f && chmod 0700 /x /x/sub \
                 && chown -R 1000:1000 /x\n\
             FROM BASE\n\
             COPY src /newdir\n\
             COPY --chown=65534:65534 src /owned\n\
             COPY src/ /slash/\n\
             COPY --from=base /x /fromstage\n\
             COPY --from=base /x/ /deep/er/\n\
             COPY --from=base / /whole\n",
            &[],
        ),
        // Item 4: a cache mount with from= starts as a copy of that stage
        // or image (BuildKit solver/llbsolver/mounts/mount.go
        // `getRefCacheDir`); what the RUN saw is written into the image.
        no_context(case(
            "i12-4-cache-mount-from",
            "issue 12 item 4: cache mounts seeded from a stage and from an image",
            "FROM BASE AS seed\n\
             RUN mkdir -p /seed/sub && echo seeded > /seed/sub/f && chmod 0750 /seed \
                 && chown 1000:65534 /seed/sub\n\
             FROM BASE\n\
             RUN --mount=type=cache,target=/c1,from=seed \
                 --mount=type=cache,target=/c2,from=BASE,id=img \
                 sh -c 'find /c1/seed /c2/etc | sort > /list; \
                 stat -c \"%a %u:%g %n\" /c1/seed /c1/seed/sub /c1/seed/sub/f > /stat'\n\
             RUN --mount=type=cache,target=/c3,from=seed,source=/seed \
                 sh -c 'find /c3 | sort > /list-source; stat -c \"%a %u:%g\" /c3 > /stat-source'\n",
            &[],
        )),
        lowercase,
        // Item 6: --platform is one os/arch[/variant]; anything else is
        // refused (containerd's platforms.Parse, which BuildKit uses). A
        // list is not compared: docker 20.10 waits for a registry to give it
        // the base for the second platform (tests/cli.rs
        // `platform_flag_takes_one_platform_or_local` tests estiba's error).
        no_context(case(
            "i12-6-platform",
            "issue 12 item 6: --platform linux/amd64",
            "FROM BASE\nARG TARGETPLATFORM\nRUN echo \"$TARGETPLATFORM\" > /platform\n",
            &["--platform", "linux/amd64"],
        )),
        no_context(case(
            "i12-6-platform-bogus",
            "issue 12 item 6: --platform bogus is refused",
            "FROM BASE\nRUN true\n",
            &["--platform", "bogus"],
        )),
        // Item 8: the parents a step creates through a symlink are in its
        // layer (the base has no /opt).
        case(
            "i12-8-dirs-through-symlink",
            "issue 12 item 8: WORKDIR and COPY through a symlink to a missing path",
            "FROM BASE\n\
             RUN ln -sf /opt/lib/tempest /tempest\n\
             WORKDIR /tempest\n\
             RUN ln -s /srv/a/b /link\n\
             COPY f /link/\n\
             COPY f /tempest/sub/\n",
            &[],
        ),
        // Item 9: proxy build args reach RUN's environment but not the
        // history or the config (BuildKit dockerfile2llb: they are not
        // part of the ARG prefix of RUN's history line).
        no_context(case(
            "i12-9-proxy-args",
            "issue 12 item 9: proxy build args stay out of the image",
            "FROM BASE\n\
             ARG OTHER=1\n\
             RUN echo \"$HTTP_PROXY $no_proxy $OTHER\" > /seen\n",
            &[
                "--build-arg",
                "HTTP_PROXY=http://127.0.0.1:9",
                "--build-arg",
                "no_proxy=example.test",
                "--build-arg",
                "OTHER=2",
            ],
        )),
    ]
}

/// The files of an own case's context, or `None` for a slug not from here.
pub(super) fn context(slug: &str, ctx: &Path) -> Option<Result<(), String>> {
    let chown = |p: &Path, id: u32| {
        std::os::unix::fs::lchown(p, Some(id), Some(id))
            .map_err(|e| format!("chown {}: {e}", p.display()))
    };
    let made = match slug {
        "i12-1-copy-dir-to-new-destination" => (|| {
            let src = ctx.join("src");
            write_file(&src.join("sub/f"), b"f", 0o640)?;
            write_file(&src.join("g"), b"g", 0o600)?;
            chown(&src.join("sub/f"), 65534)?;
            chown(&src.join("sub"), 65534)?;
            chown(&src, 1000)?;
            mkdir(&src.join("sub"), 0o750)?;
            mkdir(&src, 0o700)
        })(),
        "i12-8-dirs-through-symlink" => write_file(&ctx.join("f"), b"f", 0o644),
        s if s.starts_with("i12-") => Ok(()),
        _ => return None,
    };
    Some(made)
}
