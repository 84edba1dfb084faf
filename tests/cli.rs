//! End-to-end tests of the `estiba` binary: real processes on temporary
//! contexts, checking output and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn estiba() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_estiba"));
    cmd.env_remove("ESTIBA_ROOT").env("NO_COLOR", "1");
    cmd
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("estiba runs");
    (
        status.code().expect("exit code"),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A temporary build context with the given files.
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    dir
}

#[test]
fn debug_parse_prints_buildkits_dump() {
    let case = repo().join("testdata/buildkit-parser/testfiles/brimstone-consuldock");
    let (code, out, err) = run(estiba()
        .arg("debug")
        .arg("parse")
        .arg(case.join("Dockerfile")));
    assert_eq!(code, 0, "{err}");
    let want = std::fs::read_to_string(case.join("result")).expect("result");
    assert_eq!(out, want);
}

#[test]
fn debug_parse_reads_standard_input() {
    let mut child = estiba()
        .args(["debug", "parse", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"from alpine\nrun echo hi\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "(from \"alpine\")\n(run \"echo hi\")\n"
    );
}

#[test]
fn a_misspelt_instruction_is_shown_in_place_with_a_suggestion() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nWORKDIR /app\nCOPPY . .\nCMD [\"sh\"]\n",
    )]);
    let (code, out, err) = run(estiba().args(["build", "--dry-run"]).arg(ctx.path()));
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains("unknown instruction: COPPY (did you mean COPY?)"),
        "{err}"
    );
    assert!(err.contains("Dockerfile:3:1"), "{err}");
    assert!(err.contains("> 3 | COPPY . ."), "{err}");
    assert!(err.contains("    | ^^^^^"), "{err}");
}

#[test]
fn an_unknown_flag_gets_the_nearest_flag() {
    let ctx = context(&[("Dockerfile", "FROM busybox\nCOPY --chwon=1:1 a /b\n")]);
    let (code, _, err) = run(estiba().args(["build", "--dry-run"]).arg(ctx.path()));
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown flag: --chwon for COPY (did you mean --chown?)"),
        "{err}"
    );
    assert!(err.contains("Dockerfile:2:1"), "{err}");
}

#[test]
fn an_expansion_error_names_its_line() {
    let ctx = context(&[("Dockerfile", "FROM scratch\nENV a=1\nENV name='a\\'b'\n")]);
    let (code, _, err) = run(estiba().args(["build", "--dry-run"]).arg(ctx.path()));
    assert_eq!(code, 1);
    assert!(err.contains("Dockerfile:3:1"), "{err}");
    assert!(err.contains("caused by:"), "{err}");
}

#[test]
fn an_unterminated_heredoc_points_at_its_opening_line() {
    let ctx = context(&[("Dockerfile", "FROM busybox\nRUN <<EOF\necho hi\n")]);
    let (code, _, err) = run(estiba().args(["build", "--dry-run"]).arg(ctx.path()));
    assert_eq!(code, 1);
    assert!(err.contains("unterminated heredoc"), "{err}");
    assert!(err.contains("Dockerfile:2:"), "{err}");
}

#[test]
fn dry_run_prints_stages_steps_and_what_is_pruned() {
    let example = repo().join("testdata/examples/node-app");
    let (code, out, err) = run(estiba()
        .args(["build", "--dry-run", "-t", "mi-aplicacion"])
        .arg(&example));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tag: mi-aplicacion"), "{out}");
    assert!(
        out.contains("target: runtime (2 of 3 stages needed)"),
        "{out}"
    );
    assert!(
        out.contains("stage 1 [test] from image node:20-alpine"),
        "{out}"
    );
    assert!(out.contains("pruned, the target does not need it"), "{out}");
    assert!(out.contains("needs: deps"), "{out}");
    assert!(
        out.contains("ENV NODE_ENV=production APP_VERSION=dev"),
        "{out}"
    );
    assert!(out.contains("ignore file:"), "{out}");
}

#[test]
fn target_and_build_args_change_the_plan() {
    let example = repo().join("testdata/examples/node-app");
    let (code, out, err) = run(estiba()
        .args([
            "build",
            "--dry-run",
            "--target",
            "test",
            "--build-arg",
            "NODE_BASE=node:22",
        ])
        .arg(&example));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("target: test (2 of 3 stages needed)"), "{out}");
    assert!(out.contains("from image node:22"), "{out}");
    assert!(
        out.contains("stage 2 [runtime] from image node:22 (linux/amd64, line 15): pruned")
            || out.contains("stage 2 [runtime] from image node:22"),
        "{out}"
    );
}

#[test]
fn an_unknown_target_suggests_a_stage() {
    let example = repo().join("testdata/examples/node-app");
    let (code, _, err) = run(estiba()
        .args(["build", "--dry-run", "--target", "runtme"])
        .arg(&example));
    assert_eq!(code, 1);
    assert!(
        err.contains("target stage \"runtme\" could not be found (did you mean runtime?)"),
        "{err}"
    );
}

#[test]
fn build_arg_without_value_comes_from_the_environment_and_unused_ones_warn() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM scratch\nARG GREETING\nLABEL greeting=$GREETING\n",
    )]);
    let (code, out, err) = run(estiba()
        .args([
            "build",
            "--dry-run",
            "--build-arg",
            "GREETING",
            "--build-arg",
            "NOBODY=1",
        ])
        .env("GREETING", "hola")
        .arg(ctx.path()));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("LABEL greeting=hola"), "{out}");
    assert!(
        err.contains("warning: one or more build args were not consumed: [NOBODY]"),
        "{err}"
    );
    assert!(!err.contains("GREETING"), "{err}");
}

#[test]
fn dry_run_json_is_the_step_graph() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM scratch AS a\nCOPY x /x\nFROM a\nCMD [\"/x\"]\n",
        ),
        ("x", "x"),
    ]);
    let (code, out, err) = run(estiba()
        .args(["build", "--dry-run", "--format", "json"])
        .arg(ctx.path()));
    assert_eq!(code, 0, "{err}");
    let graph: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(graph["target"], 1);
    assert_eq!(graph["stages"][1]["base"]["type"], "stage");
    assert_eq!(graph["stages"][1]["deps"][0], 0);
    assert_eq!(graph["stages"][0]["steps"][0]["op"]["op"], "copy");
    assert_eq!(graph["stages"][1]["config"]["Cmd"][0], "/x");
}

#[test]
fn a_dockerfile_with_its_own_ignore_file_uses_it() {
    let ctx = context(&[
        ("api.Dockerfile", "FROM scratch\nCOPY . /\n"),
        ("api.Dockerfile.dockerignore", "*.log\n!keep.log\n"),
        (".dockerignore", "ignored\n"),
    ]);
    let (code, out, err) = run(estiba()
        .args(["build", "--dry-run", "-f"])
        .arg(ctx.path().join("api.Dockerfile"))
        .arg(ctx.path()));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ignore file: ") && out.contains("api.Dockerfile.dockerignore"),
        "{out}"
    );
}

/// With no `Dockerfile`, a lowercase `dockerfile` is used, by `-f` too
/// (BuildKit `frontend/dockerui/config.go`, moby/moby#10858); the ignore
/// file beside it still goes by the name asked for.
#[test]
fn a_lowercase_dockerfile_is_used_when_dockerfile_is_missing() {
    let ctx = context(&[
        ("dockerfile", "FROM scratch\nCOPY . /\n"),
        ("Dockerfile.dockerignore", "*.log\n"),
        ("sub/dockerfile", "FROM scratch\n"),
    ]);
    let (code, out, err) = run(estiba().args(["build", "--dry-run"]).arg(ctx.path()));
    assert_eq!(code, 0, "{err}");
    let read = format!("dockerfile: {}", ctx.path().join("dockerfile").display());
    assert!(out.contains(&read), "{out}");
    assert!(out.contains("Dockerfile.dockerignore"), "{out}");
    let (code, out, err) = run(estiba()
        .args(["build", "--dry-run", "-f"])
        .arg(ctx.path().join("sub/Dockerfile"))
        .arg(ctx.path()));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sub/dockerfile"), "{out}");
}

#[test]
fn an_invalid_ignore_pattern_fails_the_build() {
    let ctx = context(&[("Dockerfile", "FROM scratch\n"), (".dockerignore", "[\n")]);
    let (code, _, err) = run(estiba().args(["build", "--dry-run"]).arg(ctx.path()));
    assert_eq!(code, 1);
    assert!(err.contains(".dockerignore"), "{err}");
}

#[test]
fn a_missing_dockerfile_is_named() {
    let ctx = context(&[]);
    let (code, _, err) = run(estiba().args(["build", "--dry-run"]).arg(ctx.path()));
    assert_eq!(code, 1);
    assert!(err.contains("cannot read Dockerfile"), "{err}");
    assert!(err.contains("caused by:"), "{err}");
}

/// `--platform` as buildx reads it: `local` is this machine's platform,
/// anything containerd cannot parse is a usage error, and a comma list (a
/// multi-platform build, not supported yet) is refused rather than read as
/// one odd architecture.
#[test]
fn platform_flag_takes_one_platform_or_local() {
    let ctx = context(&[("Dockerfile", "FROM scratch\nENV A=1\n")]);
    let dry = |platform: &str| {
        run(estiba()
            .args(["build", "--dry-run", "--platform", platform])
            .arg(ctx.path()))
    };
    let host = estiba_frontend::Platform::host().to_string();
    let (code, out, err) = dry("local");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("from scratch ({host}, line 1)")),
        "{out}"
    );
    let (code, out, err) = dry("linux/arm64/v8");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("from scratch (linux/arm64/v8, line 1)"),
        "{out}"
    );

    for (platform, want) in [
        (
            "bogus",
            "invalid --platform: \"bogus\": unknown operating system or architecture",
        ),
        (
            "linux/amd64,linux/arm64",
            "multi-platform builds and pulls are not supported yet",
        ),
    ] {
        let (code, out, err) = dry(platform);
        assert_eq!(code, 2, "{platform}: {out}\n{err}");
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, _) = run(estiba().arg("build"));
    assert_eq!(code, 2, "no context is a usage error");
    let (code, _, _) = run(estiba().args(["frobnicate"]));
    assert_eq!(code, 2);
    let ctx = context(&[("Dockerfile", "FROM scratch\n")]);
    let (code, _, err) = run(estiba().args(["build", "-o", "type=nope"]).arg(ctx.path()));
    assert_eq!(code, 2, "an unknown output type is a usage error: {err}");
    assert!(err.contains("unknown --output type"), "{err}");
}
