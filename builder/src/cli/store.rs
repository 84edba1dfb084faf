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

pub(crate) fn open(flag: Option<&Path>) -> Result<Store> {
    let root = root(flag);
    Store::open(&root).with_context(|| format!("cannot open the store at {}", root.display()))
}
