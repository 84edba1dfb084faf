//! The OCI image spec's (and docker schema 2's) documents, defined once for
//! every part of estiba: media types, descriptors, manifests, indexes and
//! platforms. The store, the image layer, archives and the registry client
//! all read and write these.
//!
//! Manifests and indexes from outside (archives, registries) are parsed
//! with these types only to follow them; their bytes are kept as they came,
//! so their digests stay what their authors made.

use crate::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Media types of manifests, indexes, configs and layers.
pub mod media_type {
    /// An OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An OCI layer, gzip-compressed.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// An OCI layer, uncompressed.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// An OCI layer, zstd-compressed.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// An OCI layer that registries need not hold (deprecated by the spec,
    /// still met in Windows images).
    pub const OCI_LAYER_NONDISTRIBUTABLE_TAR: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar";
    /// The same, gzip-compressed.
    pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    /// The same, zstd-compressed.
    pub const OCI_LAYER_NONDISTRIBUTABLE_ZSTD: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
    /// A Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// A Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// A Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// A Docker layer, gzip-compressed.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// A Docker layer, uncompressed (rare, but docker reads it).
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// A Docker layer, zstd-compressed (docker ≥ 23 pushes it on request).
    pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
    /// A Docker foreign (Windows base) layer, fetched from its `urls`.
    pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

    /// Whether `media_type` names a single-image manifest (OCI or docker).
    pub fn is_manifest(media_type: &str) -> bool {
        matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
    }

    /// Whether `media_type` names an index or a docker manifest list.
    pub fn is_index(media_type: &str) -> bool {
        matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
    }
}

/// How a layer blob is compressed, as far as OCI (and docker) layer media
/// types can say. The store keys the compressed forms of a layer by it
/// ([`Store::compressed_blob`](crate::Store::compressed_blob)): docker's and
/// OCI's gzip types name the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (RFC 1952), the format every registry and runtime reads.
    Gzip,
    /// zstd (RFC 8878).
    Zstd,
}

impl Compression {
    /// The compression a layer media type says its blob has: OCI layer
    /// types (including the non-distributable ones) and Docker schema 2
    /// layer types. `None` for anything that is not a layer media type.
    pub fn from_media_type(layer_type: &str) -> Option<Compression> {
        use self::media_type as mt;
        match layer_type {
            mt::OCI_LAYER_TAR | mt::OCI_LAYER_NONDISTRIBUTABLE_TAR | mt::DOCKER_LAYER_TAR => {
                Some(Compression::None)
            }
            mt::OCI_LAYER_GZIP
            | mt::OCI_LAYER_NONDISTRIBUTABLE_GZIP
            | mt::DOCKER_LAYER_GZIP
            | mt::DOCKER_LAYER_FOREIGN_GZIP => Some(Compression::Gzip),
            mt::OCI_LAYER_ZSTD | mt::OCI_LAYER_NONDISTRIBUTABLE_ZSTD | mt::DOCKER_LAYER_ZSTD => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }

    /// The OCI media type of a layer compressed this way.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => media_type::OCI_LAYER_TAR,
            Compression::Gzip => media_type::OCI_LAYER_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_ZSTD,
        }
    }

    /// The docker schema 2 media type of a layer compressed this way (for
    /// manifests pushed in docker's format).
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => media_type::DOCKER_LAYER_TAR,
            Compression::Gzip => media_type::DOCKER_LAYER_GZIP,
            Compression::Zstd => media_type::DOCKER_LAYER_ZSTD,
        }
    }

    /// A short lowercase name: `uncompressed`, `gzip`, `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A layer compression and its level, as buildx's `compression=` and
/// `compression-level=` give them. The store keeps a compressed form of a
/// layer per codec ([`Store::compressed_blob`](crate::Store::compressed_blob)),
/// so a blob made at one level is never served for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Codec {
    /// The format.
    pub compression: Compression,
    /// The level, in the format's own scale (gzip 0–9, zstd 1–22; 0 for
    /// an uncompressed tar).
    pub level: u32,
}

impl Codec {
    /// `compression` at its default level: gzip 2 (libdeflate's level 2,
    /// which gives the size zlib's level 6, docker's and BuildKit's
    /// default, gives, in about half the time; see `builder`'s
    /// `compress`), zstd 3 (zstd's default, containerd's and BuildKit's).
    pub const fn default_for(compression: Compression) -> Codec {
        let level = match compression {
            Compression::None => 0,
            Compression::Gzip => 2,
            Compression::Zstd => 3,
        };
        Codec { compression, level }
    }

    /// The levels `compression` takes.
    pub fn levels(compression: Compression) -> std::ops::RangeInclusive<u32> {
        match compression {
            Compression::None => 0..=0,
            Compression::Gzip => 0..=9,
            Compression::Zstd => 1..=22,
        }
    }

    /// Whether this is its format's default level.
    pub fn is_default(self) -> bool {
        self == Codec::default_for(self.compression)
    }
}

impl From<Compression> for Codec {
    fn from(compression: Compression) -> Codec {
        Codec::default_for(compression)
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The default level goes without saying, as on the command line.
        if self.is_default() {
            f.write_str(self.compression.name())
        } else {
            write!(f, "{} level {}", self.compression, self.level)
        }
    }
}

/// The annotation that names a tag in an image layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// An OCI content descriptor: what a manifest, an index or a tag points at.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content. Empty when a document
    /// leaves it out: archives written by older tools do in `index.json`,
    /// and their readers take such an entry for an image manifest.
    #[serde(default)]
    pub media_type: String,
    /// The digest of the referenced content.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Where else the content may be fetched (foreign layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform, for entries of an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A descriptor with no annotations, URLs or platform.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

/// The platform an image runs on, as an index entry states it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `amd64`, `arm64`, `arm`, ...
    pub architecture: String,
    /// `linux`, `windows`, ...
    pub os: String,
    /// Windows' build number, e.g. `10.0.17763.1040`.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    /// Required OS features (Windows).
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// `v7`, `v8`, or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

/// An image manifest (OCI or docker schema 2; the shapes are the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2; read as 0 when missing, as archives from older tools may
    /// leave it out: a reader that cares checks it.
    #[serde(default)]
    pub schema_version: u32,
    /// The manifest's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// What kind of artifact a manifest that is no image holds (OCI image
    /// spec 1.1), e.g. estiba's build cache; `None` for images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layer blobs, bottom first (none when missing, as in artifacts that
    /// are not images, which readers skip by their config's media type).
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or docker manifest list: one manifest per platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2; read as 0 when missing, as archives from older tools may
    /// leave it out: a reader that cares checks it.
    #[serde(default)]
    pub schema_version: u32,
    /// The index's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests (or nested indexes) it lists.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_json_shape() {
        let d = Descriptor::new(media_type::OCI_MANIFEST, Digest::of(b"x"), 1);
        let json = serde_json::to_value(&d).expect("encodes");
        assert_eq!(
            json,
            serde_json::json!({
                "mediaType": media_type::OCI_MANIFEST,
                "digest": Digest::of(b"x").to_string(),
                "size": 1,
            })
        );
    }

    #[test]
    fn compressions_and_their_media_types_map_both_ways() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(Compression::from_media_type(c.oci_media_type()), Some(c));
            assert_eq!(Compression::from_media_type(c.docker_media_type()), Some(c));
        }
        assert_eq!(
            Compression::from_media_type(media_type::DOCKER_LAYER_FOREIGN_GZIP),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::from_media_type(media_type::OCI_CONFIG), None);
    }

    #[test]
    fn platform_json_uses_the_specs_dotted_names() {
        let p: Platform = serde_json::from_str(
            r#"{"architecture":"amd64","os":"windows","os.version":"10.0.17763","os.features":["win32k"]}"#,
        )
        .expect("decodes");
        assert_eq!(p.os_version, "10.0.17763");
        assert_eq!(p.os_features, vec!["win32k".to_string()]);
        let arm = Platform {
            architecture: "arm".into(),
            os: "linux".into(),
            variant: "v7".into(),
            ..Platform::default()
        };
        assert_eq!(
            serde_json::to_string(&arm).expect("encodes"),
            r#"{"architecture":"arm","os":"linux","variant":"v7"}"#
        );
    }
}
