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
//!
//! Not in the key: the step's Dockerfile line, comments, the time, the
//! machine, the context path. Same inputs give the same key on any machine,
//! which is what lets a registry share the cache between CI runners.

use estiba_cache::Digest;
use serde::Serialize;

/// The key format; bump when any input changes meaning. 2: COPY makes a
/// missing destination directory itself (0755 or --chmod, not the
/// source's mode), and parents it makes take --chmod; directories made
/// through a symlink bring their parents into the layer.
pub const KEY_VERSION: u32 = 2;

/// The inputs of one step's key.
#[derive(Debug, Serialize)]
pub struct KeyInputs<'a> {
    /// [`KEY_VERSION`].
    pub version: u32,
    /// The parent step's key, or the base.
    pub parent: String,
    /// `linux/amd64`.
    pub platform: String,
    /// The expanded step.
    pub step: &'a estiba_frontend::graph::Op,
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
}

impl KeyInputs<'_> {
    /// The key: sha256 of the canonical JSON of the inputs.
    pub fn key(&self) -> Digest {
        // serde_json writes struct fields in declaration order and the
        // frontend's types use BTreeMaps: the JSON is canonical.
        let json = serde_json::to_vec(self).unwrap_or_default();
        Digest::of(&json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use estiba_frontend::graph::Op;

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
        }
        .key()
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
}
