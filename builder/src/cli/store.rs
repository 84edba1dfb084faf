//! Finding and opening the store for a command.

use anyhow::{Context, Result};
use estiba_cache::Store;
use std::path::{Path, PathBuf};

/// `--root`, else `$ESTIBA_ROOT` (clap reads both), else `/var/lib/estiba`
/// for root and `$XDG_DATA_HOME/estiba` (or `~/.local/share/estiba`) for
/// anyone else.
pub(crate) fn root(flag: Option<&Path>) -> PathBuf {
    if let Some(root) = flag {
        return root.to_path_buf();
    }
    if nix::unistd::geteuid().is_root() {
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
