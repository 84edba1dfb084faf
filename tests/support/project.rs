//! Builds for end-to-end tests in a [`Env`]: the busybox base image
//! imported, builds run with plain progress, results exported.
// Not every test file that includes this module uses every helper.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use super::busybox::{busybox_rootfs, tar_tree};
pub(crate) use super::support_env::{env, Env};
use super::support_estiba::{estiba, run};

/// Runs `cmd` and asserts it succeeds: its stdout and stderr.
pub(crate) fn ok(cmd: &mut Command) -> (String, String) {
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    (out, err)
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
