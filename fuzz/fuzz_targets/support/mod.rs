//! What the fuzz targets that write files share: one scratch directory per
//! process, holding the `root` a reader may write into and an `outside`
//! directory beside it that nothing may touch.
//!
//! The security property checked is the readers' promise: untrusted bytes
//! never write outside their root. `outside` is reachable from `root` by
//! `../outside` (a symlink target the fuzzer can spell), and after every run
//! its entries, modes, owners, contents, mtimes and ctimes must be what they
//! were; ctime catches even a chmod or chown to the same value. The root
//! itself must keep its mode, and nothing else may appear beside the two.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The process's scratch directory.
pub struct Scratch {
    _base: tempfile::TempDir,
    base: PathBuf,
    /// Where the reader under test may write; empty at the start of a run.
    pub root: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

/// One line per path under `base` (not below `root`): what a change to it,
/// or to its metadata, would show.
fn snapshot(base: &Path, root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            out.insert(dir, "unreadable".to_string());
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(m) = fs::symlink_metadata(&path) else {
                continue;
            };
            if path == root {
                out.insert(path, format!("root mode {:o} uid {}", m.mode(), m.uid()));
                continue;
            }
            let content = if m.is_file() {
                fs::read(&path)
                    .map(|b| format!("{b:?}"))
                    .unwrap_or_default()
            } else if m.file_type().is_symlink() {
                fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            out.insert(
                path.clone(),
                format!(
                    "mode {:o} uid {} gid {} size {} mtime {}.{} ctime {}.{} nlink {} {content}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                    m.nlink(),
                ),
            );
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

/// Removes everything below `dir` (not `dir` itself), whatever modes the
/// reader left: directories are made searchable first. Never follows a
/// symlink.
pub fn empty_dir(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o700));
                empty_dir(&path);
                fs::remove_dir(&path).expect("remove a directory the target made");
            }
            Ok(_) => fs::remove_file(&path).expect("remove a file the target made"),
            Err(_) => {}
        }
    }
}

impl Scratch {
    /// The process's scratch, made once, with `root` emptied for this run.
    pub fn get() -> &'static Scratch {
        static SCRATCH: OnceLock<Scratch> = OnceLock::new();
        let s = SCRATCH.get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("estiba-fuzz-")
                .tempdir()
                .expect("make the scratch directory");
            let base = dir.path().to_path_buf();
            let root = base.join("root");
            let outside = base.join("outside");
            fs::create_dir(&root).expect("make root");
            fs::create_dir_all(outside.join("d")).expect("make outside/d");
            fs::write(outside.join("f"), b"sentinel").expect("write outside/f");
            fs::write(outside.join("d/g"), b"sentinel").expect("write outside/d/g");
            // Names layer seeds use, so that an escape lands on something.
            for name in ["etc", "bin", "a", "b"] {
                fs::create_dir_all(outside.join(name)).expect("make an outside dir");
                fs::write(outside.join(name).join("f"), b"sentinel").expect("write");
            }
            let before = snapshot(&base, &root);
            Scratch {
                _base: dir,
                base,
                root,
                before,
            }
        });
        empty_dir(&s.root);
        s
    }

    /// Panics if anything outside `root` changed, or root's own mode did.
    pub fn check(&self) {
        let after = snapshot(&self.base, &self.root);
        if after != self.before {
            for (path, line) in &self.before {
                match after.get(path) {
                    Some(now) if now == line => {}
                    now => eprintln!("{}: was {line}, now {now:?}", path.display()),
                }
            }
            for path in after.keys().filter(|p| !self.before.contains_key(*p)) {
                eprintln!("{}: new", path.display());
            }
            panic!("the reader changed something outside its root");
        }
    }
}
