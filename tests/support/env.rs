//! A build's surroundings for a test: a temporary store and a temporary
//! context holding the given files, removed when the test ends.

use std::path::{Path, PathBuf};

/// A store (`root`, not created yet) and a context directory (`ctx`).
pub(crate) struct Env {
    /// The temporary directory holding both, for a test's other files
    /// (kept for its removal on drop where no test reads it).
    #[allow(dead_code)]
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) ctx: PathBuf,
}

/// A fresh store and a context with `files` (name, text) in it.
pub(crate) fn env(files: &[(&str, &str)]) -> Env {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("store");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).expect("ctx");
    write(&ctx, files);
    Env { tmp, root, ctx }
}

/// Writes `files` (name, text) under `dir`, making parent directories.
pub(crate) fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
}
