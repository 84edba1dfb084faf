//! What a test does when a real component it needs cannot run here: in CI
//! (`CI` set to anything but empty, `false` or `0`) it fails, since CI must
//! run every test; elsewhere it prints a `skipped:` line naming the test and
//! the reason, and passes.

/// Whether this run is CI's.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false" && v != "0")
        .unwrap_or(false)
}

/// Panics in CI, otherwise says on stderr that `test` is skipped because
/// `what` cannot be started (`why`).
// A test that cannot run outside CI says so on stderr rather than silently.
#[allow(clippy::print_stderr)]
pub(crate) fn skip_or_fail(test: &str, what: &str, why: &str) {
    assert!(
        !in_ci(),
        "{test}: CI must run this test, but {what} cannot be started: {why}"
    );
    eprintln!("skipped: {test}: {what} cannot be started here: {why}");
}
