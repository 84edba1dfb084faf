//! Step cache keys.
//!
//! A key is the sha256 of canonical JSON (sorted keys, no floats) of:
//!
//! | input | why |
//! |---|---|
//! | `version` | a new key format must never reuse old records |
//! | `parent` | the key of the step before, or the base: `sha256:` manifest digest of an image (never its tag, which moves), `scratch`, or the final key of the stage built on |
//! | `platform` | the same Dockerfile builds different bytes per platform |
//! | `step` | the expanded step definition (the frontend's `Op`, serialized): paths, `--chown`, `--chmod`, `--link`, `--parents`, `--exclude`, the RUN argv, env, user, workdir, mounts |
//! | `sources` | for COPY/ADD: the digest of every source entry's path, kind, mode, content (or link target), xattrs, and owner when the copy keeps owners; never mtimes, so a fresh checkout hits the cache |
//! | `from` | for `COPY --from`: the final key of that stage, or the image's manifest digest |
//! | `epoch` | `SOURCE_DATE_EPOCH`, which changes the bytes of every layer |
//! | `network` | for RUN: `none` when `build --network none` applies to the step (a step's own `--network` is in `step`) |
//! | `host` | for RUN: `build --add-host`, `--shm-size` and `--ulimit`, when given (BuildKit hashes them in the exec op's `Meta`) |
//!
//! Not in the key: the step's Dockerfile line, comments, the time, the
//! machine, the context path, and RUN's proxy settings (`HTTP_PROXY`,
//! `HTTPS_PROXY`, `FTP_PROXY`, `NO_PROXY`, `ALL_PROXY` given as build args,
//! either case): BuildKit clears `Meta.ProxyEnv` before it hashes an exec
//! op (moby/buildkit `solver/llbsolver/ops/exec.go`, `execOp.CacheMap`), so
//! a new proxy runs nothing again. Same inputs give the same key on any machine,
//! which is what lets a registry share the cache between CI runners.

use estiba_cache::Digest;
use estiba_frontend::graph::Op;
use serde::{Serialize, Serializer};

/// A key that cannot be computed: never replaced by a default, which would
/// give every step one key.
#[derive(Debug, thiserror::Error)]
#[error("cannot compute the cache key of the step")]
pub struct KeyError(#[source] serde_json::Error);

/// The key format; bump when any input changes meaning. 2: COPY makes a
/// missing destination directory itself (0755 or --chmod, not the
/// source's mode), and parents it makes take --chmod; directories made
/// through a symlink bring their parents into the layer. 3: hard links are
/// kept only between files one source match copied; parents an ADDed
/// archive does not list are 0755 whatever the umask; directories copied
/// from a stage or an image keep their mtimes.
pub const KEY_VERSION: u32 = 3;

/// The inputs of one step's key.
#[derive(Debug, Serialize)]
pub struct KeyInputs<'a> {
    /// [`KEY_VERSION`].
    pub version: u32,
    /// The parent step's key, or the base.
    pub parent: String,
    /// `linux/amd64`.
    pub platform: String,
    /// The expanded step, without RUN's proxy settings.
    #[serde(serialize_with = "without_proxy")]
    pub step: &'a Op,
    /// COPY/ADD source digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<String>,
    /// `COPY --from`: that stage's final key or image digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// SOURCE_DATE_EPOCH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// The build's network, when it is not the host's and the step uses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<&'a str>,
    /// For RUN: `build --add-host`, `--shm-size` and `--ulimit`, when any is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a crate::executor::HostSettings>,
}

impl KeyInputs<'_> {
    /// The key: sha256 of the canonical JSON of the inputs.
    pub fn key(&self) -> Result<Digest, KeyError> {
        // serde_json writes struct fields in declaration order and the
        // frontend's types use BTreeMaps: the JSON is canonical.
        let json = serde_json::to_vec(self).map_err(KeyError)?;
        Ok(Digest::of(&json))
    }
}

/// The step as hashed: a RUN's proxy settings are left out, as BuildKit
/// leaves out the exec op's `ProxyEnv`.
fn without_proxy<S: Serializer>(step: &&Op, serializer: S) -> Result<S::Ok, S::Error> {
    match step {
        Op::Run(run) if !run.proxy_env.is_empty() => {
            let mut run = run.clone();
            run.proxy_env.clear();
            Op::Run(run).serialize(serializer)
        }
        _ => step.serialize(serializer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(parent: &str, op: &Op, sources: Option<&str>) -> Digest {
        KeyInputs {
            version: KEY_VERSION,
            parent: parent.to_string(),
            platform: "linux/amd64".to_string(),
            step: op,
            sources: sources.map(str::to_string),
            from: None,
            epoch: None,
            network: None,
            host: None,
        }
        .key()
        .expect("a key")
    }

    #[test]
    fn every_input_changes_the_key() {
        let op = Op::Workdir {
            path: "/app".to_string(),
            user: String::new(),
        };
        let other = Op::Workdir {
            path: "/srv".to_string(),
            user: String::new(),
        };
        let base = key("scratch", &op, None);
        assert_eq!(base, key("scratch", &op, None), "deterministic");
        assert_ne!(base, key("sha256:00", &op, None));
        assert_ne!(base, key("scratch", &other, None));
        assert_ne!(base, key("scratch", &op, Some("sha256:11")));
    }

    #[test]
    fn a_runs_proxy_settings_leave_its_key_alone() {
        let run = |proxy_env: &[&str], env: &[&str]| {
            Op::Run(estiba_frontend::graph::RunStep {
                args: vec!["/bin/sh".to_string(), "-c".to_string(), "true".to_string()],
                env: env.iter().map(|s| s.to_string()).collect(),
                proxy_env: proxy_env.iter().map(|s| s.to_string()).collect(),
                user: String::new(),
                workdir: "/".to_string(),
                mounts: Vec::new(),
                network: None,
                security: None,
                files: Default::default(),
            })
        };
        let plain = key("scratch", &run(&[], &[]), None);
        let proxied = run(
            &["HTTP_PROXY=http://a:3128", "http_proxy=http://a:3128"],
            &[],
        );
        assert_eq!(plain, key("scratch", &proxied, None));
        // The rest of the step still counts.
        assert_ne!(plain, key("scratch", &run(&[], &["A=1"]), None));
    }
}
