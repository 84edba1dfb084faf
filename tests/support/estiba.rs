//! The estiba binary under test, on a store of the test's own: `--root`
//! given, and nothing from the caller's environment that would change
//! where the store is or what a build writes.

use std::path::Path;
use std::process::{Command, Output};

/// `estiba --root ROOT`, ready for a command and its arguments.
pub(crate) fn estiba(root: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_estiba"));
    cmd.env_remove("ESTIBA_ROOT")
        .env_remove("SOURCE_DATE_EPOCH")
        .arg("--root")
        .arg(root);
    cmd
}

/// Runs `cmd` to its end: its exit code (-1 if a signal ended it), stdout
/// and stderr.
// Not every test file that includes this module runs commands this way.
#[allow(dead_code)]
pub(crate) fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("estiba runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}
