//! Finding and opening the store for a command.

use anyhow::{Context, Result};
use estiba_cache::Store;
use std::path::{Path, PathBuf};

/// `--root`, else `$ESTIBA_ROOT` (clap reads both), else `/var/lib/estiba`
/// for root and `$XDG_DATA_HOME/estiba` (or `~/.local/share/estiba`) for
/// anyone else.
pub(crate) fn root(flag: Option<&Path>) -> PathBuf {
    match flag {
        Some(root) => root.to_path_buf(),
        None => default_root(),
    }
}

/// The store without `--root` or `$ESTIBA_ROOT`.
fn default_root() -> PathBuf {
    if estiba::rootless::for_host_root() {
        return PathBuf::from("/var/lib/estiba");
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("estiba"),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".local/share/estiba"),
    }
}

/// Opens the store, and first removes what killed commands left in its
/// temp dir (never a live command's: see `Store::remove_leftovers`).
pub(crate) fn open(flag: Option<&Path>) -> Result<Store> {
    let root = root(flag);
    check_owner(&root)?;
    let store = Store::open(&root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    // A prune holding the store removes them itself: no need to wait.
    let cleaned = store.try_lock_shared().and_then(|lock| match lock {
        Some(_lock) => store.remove_leftovers().map(drop),
        None => Ok(()),
    });
    if let Err(e) = cleaned {
        // The command can still do its work; say why the space is not freed.
        let e = anyhow::Error::new(e).context("cannot remove what earlier commands left");
        eprint!(
            "{}",
            super::report::render_chain(&e).replacen("error:", "warning:", 1)
        );
    }
    Ok(store)
}

/// Rootless, the store must be the user's own: another user's store is
/// private to them (0700) and would fail later with a bare "permission
/// denied" halfway through a command. Root of the host may use any store.
fn check_owner(root: &Path) -> Result<()> {
    let Some(entered) = estiba::rootless::entered() else {
        return Ok(());
    };
    use std::os::unix::fs::MetadataExt;
    // The user is uid 0 in its namespace; another user is unmapped or a
    // subordinate id there, or hides the store in a private directory.
    let theirs = match std::fs::metadata(root) {
        Ok(meta) => meta.uid() != 0,
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    };
    if !theirs {
        return Ok(());
    }
    anyhow::bail!(
        "the store {} belongs to another user, not to {}: use a store of your own with --root DIR \
         or ESTIBA_ROOT=DIR (without them, {}'s is {})",
        root.display(),
        entered.user,
        entered.user,
        default_root().display(),
    )
}
