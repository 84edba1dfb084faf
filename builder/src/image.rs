//! Image configs and manifests as docker and the OCI image spec write them.
//!
//! The config keeps fields estiba does not know (a base image's `Hostname`,
//! say) so an image built on another keeps what it inherited. Maps docker
//! writes as `{"80/tcp": {}}` are written that way; history entries carry
//! BuildKit's comment so `docker history` reads the same.

mod cache;
mod compressed;
mod pull;
mod push;
mod source;
mod stored;

pub use cache::{
    export_cache, inline_metadata, CacheDest, CacheEntry, CacheError, CacheExportOptions, CacheHit,
    CacheSource, RemoteCache, CACHE_ARTIFACT_TYPE, CACHE_CONFIG_MEDIA_TYPE, INLINE_CACHE_KEY,
};
pub use compressed::{
    compress_layer, compress_layer_with, compressed_layer, kept_layer, BlobWrites, CompressedError,
};
pub use push::{Format, PushOptions, Pushed};
pub use source::{Images, PullPolicy};
pub use stored::{
    find, read, snapshot, store_image, store_manifest, unpack_while_writing, Image, Layer,
};
pub(crate) use stored::{snapshot_unpack_options, snapshots_in_overlay_form};

use estiba_frontend::graph::ImageConfig as PlannedConfig;
use estiba_frontend::instructions::Healthcheck;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Where an image layer operation reports its progress: a vertex of the
/// command's display.
#[derive(Clone, Copy)]
pub(crate) struct Vertex<'a> {
    pub(crate) reporter: &'a dyn crate::progress::Reporter,
    pub(crate) id: usize,
}

/// Runs `work` on every item, `workers` at a time (layers downloaded or
/// uploaded concurrently); after an error no item is started, and the
/// first error is returned once all stopped.
/// `what` names the work in the error a panicking thread becomes.
pub(crate) fn each_concurrently<T: Sync>(
    items: &[T],
    workers: usize,
    what: &str,
    work: impl Fn(&T) -> Result<(), ImageError> + Sync,
) -> Result<(), ImageError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    // Once one item failed, the others take no new item.
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.min(items.len()))
            .map(|_| {
                scope.spawn(|| -> Result<(), ImageError> {
                    while !failed.load(Ordering::Relaxed) {
                        let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return Ok(());
                        };
                        if let Err(e) = work(item) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let mut first_error = None;
        for h in handles {
            let outcome = h.join().unwrap_or_else(|_| {
                Err(ImageError::Corrupt {
                    image: what.to_string(),
                    reason: "a worker thread panicked".to_string(),
                })
            });
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

/// What the image layer can fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// No image of that name or ID is in the store, and none could be pulled.
    #[error(
        "image {0} is not in the store: bring it in with `estiba pull`, `estiba load` or `estiba import` first"
    )]
    NotFound(String),
    /// An ID prefix that more than one image has.
    #[error("image ID prefix {prefix} is ambiguous: {count} images have it")]
    AmbiguousId {
        /// What was given.
        prefix: String,
        /// How many images matched.
        count: usize,
    },
    /// A name that is no image reference.
    #[error(transparent)]
    Reference(#[from] crate::registry::ReferenceError),
    /// A stored image is not what it should be.
    #[error("image {image} is corrupt: {reason}")]
    Corrupt {
        /// Which.
        image: String,
        /// Why.
        reason: String,
    },
    /// An index has no manifest for the platform.
    #[error("{image} has no image for {platform} (it has: {offered})")]
    NoPlatform {
        /// The image.
        image: String,
        /// What was asked for.
        platform: String,
        /// The index's platforms.
        offered: String,
    },
    /// A push with no registry client (an offline command).
    #[error("cannot push {0}: this command has no registry")]
    NoRegistry(String),
    /// A layer could not be compressed for a push.
    #[error(transparent)]
    Compressed(#[from] CompressedError),
    /// The registry failed or refused.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// A layer could not be unpacked.
    #[error("cannot unpack a layer")]
    Layer(#[from] crate::layer::LayerError),
    /// A config or manifest could not be encoded.
    #[error("cannot encode the image")]
    Encode(#[source] serde_json::Error),
    /// The store failed.
    #[error("the store failed")]
    Store(#[from] estiba_cache::StoreError),
    /// A cache could not be exported or imported.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A snapshot could not be brought to the overlay form.
    #[error("cannot prepare a snapshot")]
    Tree(#[from] crate::tree::TreeError),
}

/// The history comment BuildKit writes.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
/// `{}`: the value of docker's set-like maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The `config` object of an image config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `EXPOSE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Empty>>,
    /// `ENV`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Empty>>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// `LABEL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `HEALTHCHECK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `SHELL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// `ONBUILD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// Docker's Windows relic, set by CMD.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
    /// Fields estiba does not interpret, kept as the base image had them.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One `history` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    /// `buildkit.dockerfile.v0` for entries estiba writes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// True for steps that made no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// `rootfs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The uncompressed digests of the layers, bottom first.
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

/// An image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `amd64`, `arm64`, ...
    #[serde(default)]
    pub architecture: String,
    /// `linux`.
    #[serde(default)]
    pub os: String,
    /// `v8`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// When the image was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// MAINTAINER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The runtime config.
    #[serde(default)]
    pub config: ContainerConfig,
    /// Layers.
    #[serde(default)]
    pub rootfs: RootFs,
    /// One entry per instruction, layers or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Fields estiba does not interpret.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl ImageConfig {
    /// The config the planner starts a stage from, for this image.
    pub fn planned(&self) -> PlannedConfig {
        let c = &self.config;
        PlannedConfig {
            user: c.user.clone(),
            exposed_ports: c
                .exposed_ports
                .iter()
                .flat_map(|m| m.keys().cloned())
                .collect(),
            env: c.env.clone().unwrap_or_default(),
            entrypoint: c.entrypoint.clone(),
            cmd: c.cmd.clone(),
            volumes: c.volumes.iter().flat_map(|m| m.keys().cloned()).collect(),
            working_dir: c.working_dir.clone(),
            labels: c.labels.clone().unwrap_or_default(),
            stop_signal: c.stop_signal.clone(),
            healthcheck: c.healthcheck.clone(),
            shell: c.shell.clone(),
            on_build: c.on_build.clone().unwrap_or_default(),
            args_escaped: c.args_escaped,
        }
    }

    /// Replaces the runtime config with what a build planned, keeping the
    /// fields estiba does not know.
    pub fn apply(&mut self, planned: &PlannedConfig) {
        let c = &mut self.config;
        c.user = planned.user.clone();
        c.exposed_ports = set_map(planned.exposed_ports.iter());
        c.env = (!planned.env.is_empty()).then(|| planned.env.clone());
        c.entrypoint = planned.entrypoint.clone();
        c.cmd = planned.cmd.clone();
        c.volumes = set_map(planned.volumes.iter());
        c.working_dir = planned.working_dir.clone();
        c.labels = (!planned.labels.is_empty()).then(|| planned.labels.clone());
        c.stop_signal = planned.stop_signal.clone();
        c.healthcheck = planned.healthcheck.clone();
        c.shell = planned.shell.clone();
        c.on_build = (!planned.on_build.is_empty()).then(|| planned.on_build.clone());
        c.args_escaped = planned.args_escaped;
    }
}

fn set_map<'a>(keys: impl Iterator<Item = &'a String>) -> Option<BTreeMap<String, Empty>> {
    let map: BTreeMap<String, Empty> = keys.map(|k| (k.clone(), Empty {})).collect();
    (!map.is_empty()).then_some(map)
}

pub use estiba_cache::oci::Manifest;

/// Seconds since the epoch as RFC 3339 UTC (`2026-11-23T11:05:00Z`).
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Parses the RFC 3339 times images carry (fractions and offsets allowed)
/// into seconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (clock, offset) = match time.find(['Z', 'z', '+', '-']) {
        Some(i) => time.split_at(i),
        None => (time, "Z"),
    };
    let mut c = clock.split(':');
    let (h, min): (i64, i64) = (c.next()?.parse().ok()?, c.next()?.parse().ok()?);
    let s: i64 = c.next()?.split('.').next()?.parse().ok()?;
    // RFC 3339's ranges (a config's `created` is untrusted: out-of-range
    // fields are refused, and nothing below can overflow).
    let fields_in_range = (0..=9999).contains(&y)
        && (1..=12).contains(&m)
        && (1..=31).contains(&day)
        && (0..=23).contains(&h)
        && (0..=59).contains(&min)
        && (0..=60).contains(&s);
    if !fields_in_range {
        return None;
    }
    let offset_secs = match offset.chars().next() {
        Some('+') | Some('-') => {
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (oh, om) = offset[1..].split_once(':')?;
            let (oh, om) = (oh.parse::<i64>().ok()?, om.parse::<i64>().ok()?);
            if !(0..=23).contains(&oh) || !(0..=59).contains(&om) {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
        _ => 0,
    };
    // Days from civil (Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + min * 60 + s - offset_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing the image JSON (`created` of an untrusted config):
    /// a huge hour overflowed the sum.
    #[test]
    fn out_of_range_fields_are_refused_not_overflowed() {
        let fuzzed = "01-8-0T2222222:0000000000001792569754112222222:000000000000179256975411";
        assert_eq!(parse_rfc3339(fuzzed), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2024-01-01T24:00:00Z"), None);
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00+99:00"), None);
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(parse_rfc3339("2026-11-18T11:06:40Z"), Some(1_795_000_000));
        assert_eq!(
            parse_rfc3339("2026-11-18T12:06:40.123456789+01:00"),
            Some(1_795_000_000)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z")
                .map(rfc3339)
                .as_deref(),
            Some("2000-02-29T00:00:00Z")
        );
    }

    #[test]
    fn numbers_in_unknown_fields_survive_being_written_again() {
        // Found by the image_json fuzz target: parsed at best-effort
        // precision, this number changed each time a config was written.
        let json = r#"{"k": 840000000000000000000000000001, "f": 2.2250738585072011e-308}"#;
        let config: ImageConfig = serde_json::from_str(json).expect("parses");
        let once = serde_json::to_string(&config).expect("serializes");
        let again: ImageConfig = serde_json::from_str(&once).expect("parses again");
        assert_eq!(serde_json::to_string(&again).expect("serializes"), once);
    }

    #[test]
    fn config_keeps_unknown_fields_and_writes_docker_maps() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Hostname":"abc","ExposedPorts":{"80/tcp":{}},"Env":["A=1"]},"rootfs":{"type":"layers","diff_ids":[]},"moby.buildkit.buildinfo.v1":"x"}"#;
        let mut config: ImageConfig = serde_json::from_str(json).expect("parses");
        let mut planned = config.planned();
        assert_eq!(planned.exposed_ports.len(), 1);
        planned.exposed_ports.insert("53/udp".to_string());
        config.apply(&planned);
        let out = serde_json::to_value(&config).expect("serializes");
        assert_eq!(out["config"]["Hostname"], "abc");
        assert_eq!(
            out["config"]["ExposedPorts"]["53/udp"],
            serde_json::json!({})
        );
        assert_eq!(out["moby.buildkit.buildinfo.v1"], "x");
    }
}
