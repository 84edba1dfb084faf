//! The estiba binary under test, on a store of the test's own: `--root`
//! given, and nothing from the caller's environment that would change
//! where the store is or what a build writes.

use std::path::Path;
use std::process::Command;

/// `estiba --root ROOT`, ready for a command and its arguments.
pub(crate) fn estiba(root: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_estiba"));
    cmd.env_remove("ESTIBA_ROOT")
        .env_remove("SOURCE_DATE_EPOCH")
        .arg("--root")
        .arg(root);
    cmd
}
