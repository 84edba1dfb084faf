//! End-to-end tests of build checks: `estiba build --check` (BuildKit's
//! report, exit codes, directives, the build arg) and the summary a normal
//! build prints after its result, on real stores and contexts.

use std::path::Path;

#[path = "support/busybox.rs"]
mod busybox;
#[path = "support/env.rs"]
mod support_env;
#[path = "support/estiba.rs"]
mod support_estiba;
use support_env::{env, Env};
use support_estiba::{estiba, run};

fn check(e: &Env, extra: &[&str]) -> (i32, String, String) {
    run(estiba(&e.root)
        .current_dir(&e.ctx)
        .args(["build", "--check"])
        .args(extra)
        .arg("."))
}

fn build(e: &Env, extra: &[&str]) -> (i32, String, String) {
    run(estiba(&e.root)
        .current_dir(&e.ctx)
        .args(["build", "--progress", "plain"])
        .args(extra)
        .arg("."))
}

#[test]
fn check_prints_buildkits_report_and_exits_1() {
    let e = env(&[
        (
            "Dockerfile",
            "FROM scratch as base\nCOPY a.txt /a\nCMD echo hi\n",
        ),
        ("a.txt", "a"),
    ]);
    let (code, out, err) = check(&e, &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(
        out,
        "Check complete, 2 warnings have been found!\n\
         \n\
         WARNING: FromAsCasing - https://docs.docker.com/go/dockerfile/rule/from-as-casing/\n\
         'as' and 'FROM' keywords' casing do not match\n\
         ./Dockerfile:1\n\
         --------------------\n\
         \x20  1 | >>> FROM scratch as base\n\
         \x20  2 |     COPY a.txt /a\n\
         \x20  3 |     CMD echo hi\n\
         --------------------\n\
         \n\
         WARNING: JSONArgsRecommended - https://docs.docker.com/go/dockerfile/rule/json-args-recommended/\n\
         JSON arguments recommended for CMD to prevent unintended behavior related to OS signals\n\
         ./Dockerfile:3\n\
         --------------------\n\
         \x20  1 |     FROM scratch as base\n\
         \x20  2 |     COPY a.txt /a\n\
         \x20  3 | >>> CMD echo hi\n\
         \x20  4 |     \n\
         --------------------\n"
    );
    assert_eq!(err, "");
    // Nothing was built: the store has no image.
    let (_, images, _) = run(estiba(&e.root).arg("images"));
    assert!(!images.contains("sha256:"), "{images}");
}

#[test]
fn check_without_warnings_exits_0() {
    let e = env(&[
        ("Dockerfile", "FROM scratch\nCOPY a /a\nCMD [\"/a\"]\n"),
        ("a", "a"),
    ]);
    let (code, out, err) = check(&e, &[]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Check complete, no warnings found.\n"),
        "{err}"
    );
}

#[test]
fn skip_directives_silence_rules() {
    let text = "FROM scratch as base\ncopy a /a\n";
    for (directive, want) in [
        ("# check=skip=all\n", 0),
        ("# check=skip=ConsistentInstructionCasing,FromAsCasing\n", 0),
        ("# check=skip=ConsistentInstructionCasing\n", 1),
    ] {
        let e = env(&[("Dockerfile", &format!("{directive}{text}")), ("a", "a")]);
        let (code, out, err) = check(&e, &[]);
        assert_eq!(code, want, "{directive}{out}\n{err}");
        if want == 1 {
            assert!(
                out.contains("Check complete, 1 warning has been found!"),
                "{out}"
            );
            assert!(out.contains("WARNING: FromAsCasing"), "{out}");
        }
    }
}

#[test]
fn error_directive_fails_check_and_build_before_anything_runs() {
    let e = env(&[
        (
            "Dockerfile",
            "# check=error=true\nFROM scratch\nCOPY a /a\nCMD echo hi\n",
        ),
        ("a", "a"),
    ]);
    let (code, out, err) = check(&e, &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("WARNING: JSONArgsRecommended"), "{out}");
    assert!(
        err.contains("error: lint violation found for rules: JSONArgsRecommended"),
        "{err}"
    );

    let (code, out, err) = build(&e, &["-t", "linted"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains(
            " 1 warning found (use estiba build --check to expand):\n \
             - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended \
             behavior related to OS signals (line 4)\n\
             error: lint violation found for rules: JSONArgsRecommended\n"
        ),
        "{err}"
    );
    assert!(!err.contains("COPY a /a"), "the build ran a step: {err}");
    let (_, images, _) = run(estiba(&e.root).arg("images"));
    assert!(!images.contains("linted"), "{images}");
}

#[test]
fn the_build_arg_replaces_the_directive() {
    let e = env(&[
        (
            "Dockerfile",
            "# check=error=true\nFROM scratch as base\nCOPY a /a\n",
        ),
        ("a", "a"),
    ]);
    let (code, out, err) = build(
        &e,
        &[
            "--build-arg",
            "BUILDKIT_DOCKERFILE_CHECK=skip=all",
            "-t",
            "ok",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("warning"), "{err}");
    let (code, out, _) = check(
        &e,
        &[
            "--build-arg",
            "BUILDKIT_DOCKERFILE_CHECK=skip=FromAsCasing;error=true",
        ],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "Check complete, no warnings found.\n")
    );
}

#[test]
fn a_build_prints_its_warnings_after_the_result() {
    let e = env(&[
        (
            "Dockerfile",
            "FROM scratch\nCOPY a /a\nENV greeting hola\nCMD echo hi\n",
        ),
        ("a", "a"),
    ]);
    let (code, out, err) = build(&e, &["-t", "warned"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let summary = "\n 2 warnings found (use estiba build --check to expand):\n \
         - LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format (line 3)\n \
         - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 4)\n";
    assert!(err.ends_with(summary), "{err}");
    let naming = err.find("naming to").expect("the result is named");
    assert!(
        naming < err.find("warnings found").expect("summary"),
        "{err}"
    );
}

#[test]
fn copy_of_an_ignored_file_is_reported_with_its_line() {
    let e = env(&[
        ("Dockerfile", "FROM scratch\nCOPY a /a\nADD secret.txt /s\n"),
        ("a", "a"),
        ("secret.txt", "s"),
        (".dockerignore", "secret.txt\n"),
    ]);
    let (code, out, err) = check(&e, &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains(
            "WARNING: CopyIgnoredFile - https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/\n\
             Attempting to Add file \"secret.txt\" that is excluded by .dockerignore\n\
             ./Dockerfile:3\n"
        ),
        "{out}"
    );
}

#[test]
fn check_reads_base_images_from_the_store() {
    let e = env(&[(
        "Dockerfile",
        "FROM busybox:test\nENV PATH=$PATH:/opt/bin\nWORKDIR /w\nCOPY $missing /x\n",
    )]);
    let rootfs = e.ctx.parent().expect("tmp").join("rootfs");
    busybox::busybox_rootfs(&rootfs);
    let tar = busybox::tar_tree(&rootfs);
    let (code, _, err) = run(estiba(&e.root).arg("import").arg(&tar).arg("busybox:test"));
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = check(&e, &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.starts_with("Check complete, 1 warning has been found!\n"),
        "{out}"
    );
    assert!(
        out.contains("WARNING: UndefinedVar - https://docs.docker.com/go/dockerfile/rule/undefined-var/\nUsage of undefined variable '$missing'\n"),
        "{out}"
    );
}

/// The Dockerfile's directory in messages is the one `-f` names.
#[test]
fn check_names_the_dockerfile_as_given() {
    let e = env(&[("sub/Build.Dockerfile", "FROM scratch\nMAINTAINER me\n")]);
    let file = Path::new("sub").join("Build.Dockerfile");
    let (code, out, _) = check(&e, &["-f", &file.display().to_string()]);
    assert_eq!(code, 1);
    assert!(out.contains("Maintainer instruction is deprecated in favor of using label\nsub/Build.Dockerfile:2\n"), "{out}");
}

/// With `--target`, only the stages the target needs get the stage rules,
/// as BuildKit's lint does; without it, every stage.
#[test]
fn check_with_a_target_skips_stages_it_does_not_need() {
    let e = env(&[(
        "Dockerfile",
        "FROM scratch AS a\nCOPY . /\nFROM scratch AS b\nENV greeting hola\n",
    )]);
    let (code, out, err) = check(&e, &["--target", "a"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Check complete, no warnings found.\n"),
        "{err}"
    );
    let (code, out, _) = check(&e, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("WARNING: LegacyKeyValueFormat"), "{out}");
}
