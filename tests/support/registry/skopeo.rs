//! `skopeo` (Debian's, installed by scripts/test-deps) as the reference
//! client of the registry tests: what it pushes estiba must pull, and what
//! estiba pushes it must read. No policy file is needed
//! (`--insecure-policy`: the tests trust what they made), and no auth file
//! of the machine is read (`REGISTRY_AUTH_FILE` points into nowhere):
//! credentials come only from the arguments.

use std::process::Command;

/// Where no auth file is, so skopeo finds no credentials but those given.
const NO_AUTH_FILE: &str = "/nonexistent/estiba-test-auth.json";

/// `skopeo --insecure-policy ARGS` with no ambient credentials.
pub(crate) fn skopeo() -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.env("REGISTRY_AUTH_FILE", NO_AUTH_FILE)
        .env_remove("DOCKER_CONFIG")
        .arg("--insecure-policy");
    cmd
}

/// Runs `cmd`; its stdout, or an error with both outputs.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("running skopeo (scripts/test-deps installs it): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `skopeo copy EXTRA… SRC DEST` (e.g. `oci:DIR:NAME`,
/// `docker://127.0.0.1:PORT/repo:tag`); its output, or why it failed.
pub(crate) fn skopeo_copy(src: &str, dest: &str, extra_args: &[&str]) -> Result<String, String> {
    run(skopeo().arg("copy").args(extra_args).arg(src).arg(dest))
}

/// `skopeo inspect EXTRA… REF` as JSON (`--raw` among the arguments gives
/// the manifest or index itself).
pub(crate) fn skopeo_inspect(
    reference: &str,
    extra_args: &[&str],
) -> Result<serde_json::Value, String> {
    let out = run(skopeo().arg("inspect").args(extra_args).arg(reference))?;
    serde_json::from_str(&out)
        .map_err(|e| format!("skopeo inspect {reference}: not JSON: {e}\n{out}"))
}
