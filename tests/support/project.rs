//! A build project for end-to-end tests: a temporary store and context,
//! the busybox base image imported, builds run with plain progress.
// Not every test file that includes this module uses every helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::busybox::{busybox_rootfs, tar_tree};
use super::support_estiba::{estiba, run};

/// Runs `cmd` and asserts it succeeds: its stdout and stderr.
pub(crate) fn ok(cmd: &mut Command) -> (String, String) {
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    (out, err)
}

/// Writes `files` (path, text) under `dir`, making parents.
pub(crate) fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
}

/// A store and a context in a temporary directory.
pub(crate) struct Env {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) ctx: PathBuf,
}

/// A project whose context holds `files`.
pub(crate) fn env(files: &[(&str, &str)]) -> Env {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("store");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).expect("ctx");
    write(&ctx, files);
    Env { tmp, root, ctx }
}

/// Imports a busybox image (`busybox:test`) into the store, with a user
/// `app` (1000) and a group `staff` (50) in its /etc files.
pub(crate) fn import_busybox(e: &Env) {
    let rootfs = e.tmp.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let tar = tar_tree(&rootfs);
    ok(estiba(&e.root).arg("import").arg(&tar).arg("busybox:test"));
}

/// `estiba build --progress plain EXTRA… CONTEXT`.
pub(crate) fn build(e: &Env, extra: &[&str]) -> (i32, String, String) {
    run(estiba(&e.root)
        .args(["build", "--progress", "plain"])
        .args(extra)
        .arg(&e.ctx))
}

/// Builds with `-o type=local` into a fresh directory named `name` and
/// returns it.
pub(crate) fn local_export(e: &Env, name: &str, extra: &[&str]) -> PathBuf {
    let out = e.tmp.path().join(name);
    let _ = std::fs::remove_dir_all(&out);
    let spec = format!("type=local,dest={}", out.display());
    let (code, o, err) = build(e, &[&["-o", &spec], extra].concat());
    assert_eq!(code, 0, "{o}\n{err}");
    out
}
