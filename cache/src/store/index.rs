//! Tags: the entries of `index.json` that carry an
//! `org.opencontainers.image.ref.name` annotation, exactly where
//! `skopeo inspect oci:ROOT:NAME` looks for `NAME`.
//!
//! Every change is a read-modify-write of the whole file under the exclusive
//! `estiba/index.lock`, written to a temp file and renamed over `index.json`,
//! so concurrent taggers never lose each other's tags and readers (who take
//! no lock) always see a complete index. Entries this store did not write,
//! and fields it does not model, are kept as they are.

use super::{fsutil, media_type, Descriptor, Digest, Store, StoreError, REF_NAME_ANNOTATION};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io;

/// `index.json`, keeping every manifest entry and unknown field verbatim.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexFile {
    #[serde(default = "schema_version_2")]
    pub(crate) schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    #[serde(default)]
    pub(crate) manifests: Vec<Value>,
    #[serde(flatten)]
    pub(crate) rest: BTreeMap<String, Value>,
}

fn schema_version_2() -> u32 {
    2
}

impl Default for IndexFile {
    fn default() -> Self {
        IndexFile {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            rest: BTreeMap::new(),
        }
    }
}

/// The annotation marking an entry as an image estiba holds without a
/// name (a build without `-t`, or one a tag moved away from). Entries
/// without a name that other tools wrote carry no such mark and are
/// neither listed nor pruned as images.
pub(crate) const UNNAMED_ANNOTATION: &str = "io.estiba.image.unnamed";

/// Whether an index entry is an image estiba holds without a name.
fn is_unnamed(entry: &Value) -> bool {
    ref_name(entry).is_none()
        && entry
            .get("annotations")
            .and_then(|a| a.get(UNNAMED_ANNOTATION))
            .is_some()
}

/// The tag name an index entry carries, if any.
pub(crate) fn ref_name(entry: &Value) -> Option<&str> {
    entry.get("annotations")?.get(REF_NAME_ANNOTATION)?.as_str()
}

/// The manifest digest an index entry points at, if it is a sha256 one.
fn entry_digest(entry: &Value) -> Option<Digest> {
    entry.get("digest")?.as_str()?.parse().ok()
}

/// An index entry with its ref-name annotation replaced by
/// [`UNNAMED_ANNOTATION`].
fn without_name(mut entry: Value) -> Value {
    if let Some(object) = entry.as_object_mut() {
        let annotations = object
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.remove(REF_NAME_ANNOTATION);
            annotations.insert(UNNAMED_ANNOTATION.to_string(), Value::from("true"));
        }
    }
    entry
}

/// The index entry of `manifest` with annotation `key` set to `value` and
/// no other name.
fn entry_with(manifest: &Descriptor, key: &str, value: &str) -> Result<Value, StoreError> {
    let mut entry = manifest.clone();
    entry.annotations.remove(REF_NAME_ANNOTATION);
    entry.annotations.remove(UNNAMED_ANNOTATION);
    entry.annotations.insert(key.to_string(), value.to_string());
    serde_json::to_value(&entry).map_err(|source| StoreError::Encode {
        what: "descriptor",
        source,
    })
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(StoreError::InvalidTagName(name.to_string()));
    }
    Ok(())
}

impl Store {
    /// Reads `index.json`; a missing one is an empty index.
    pub(crate) fn read_index(&self) -> Result<IndexFile, StoreError> {
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(IndexFile::default()),
            Err(e) => return Err(fsutil::io_err("read", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json { path, source })
    }

    /// Replaces `index.json` atomically and durably. Call under the index lock.
    pub(crate) fn write_index(&self, index: &IndexFile) -> Result<(), StoreError> {
        let mut index_out = IndexFile {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_string()),
            manifests: index.manifests.clone(),
            rest: index.rest.clone(),
        };
        // `mediaType` and `schemaVersion` are ours; never let a stray copy
        // in the flattened map shadow them.
        index_out.rest.remove("mediaType");
        index_out.rest.remove("schemaVersion");
        let mut bytes =
            serde_json::to_vec_pretty(&index_out).map_err(|source| StoreError::Encode {
                what: "index.json",
                source,
            })?;
        bytes.push(b'\n');
        fsutil::atomic_write(&self.tmp_dir(), &self.index_path(), &bytes, true)
    }

    /// Points tag `name` at `manifest`, replacing any entry for `name`. The
    /// stored entry is `manifest` with the ref-name annotation set to `name`.
    pub fn set_tag(&self, name: &str, manifest: &Descriptor) -> Result<(), StoreError> {
        check_name(name)?;
        let entry = entry_with(manifest, REF_NAME_ANNOTATION, name)?;
        self.with_index_lock(|| {
            let mut index = self.read_index()?;
            let mut slot = Some(entry);
            let mut replaced = Vec::new();
            let mut manifests = Vec::with_capacity(index.manifests.len() + 1);
            for old in index.manifests.drain(..) {
                if ref_name(&old) == Some(name) {
                    // The first entry for `name` is replaced in place; any
                    // duplicates are dropped.
                    if let Some(new) = slot.take() {
                        manifests.push(new);
                    }
                    replaced.push(old);
                } else if is_unnamed(&old) && entry_digest(&old).as_ref() == Some(&manifest.digest)
                {
                    // The image is named now: no longer dangling.
                } else {
                    manifests.push(old);
                }
            }
            if let Some(new) = slot.take() {
                manifests.push(new);
            }
            // The image the name leaves stays, without a name (docker's
            // dangling `<none>` image), unless another name still holds it.
            for old in replaced {
                let digest = entry_digest(&old);
                if digest.is_some()
                    && digest.as_ref() != Some(&manifest.digest)
                    && !manifests.iter().any(|e| entry_digest(e) == digest)
                {
                    manifests.push(without_name(old));
                }
            }
            index.manifests = manifests;
            self.write_index(&index)
        })
    }

    /// Records `manifest` as an image without a name (a build without
    /// `-t`), unless the index already holds it, named or not.
    pub fn add_unnamed(&self, manifest: &Descriptor) -> Result<(), StoreError> {
        let entry = entry_with(manifest, UNNAMED_ANNOTATION, "true")?;
        self.with_index_lock(|| {
            let mut index = self.read_index()?;
            if index
                .manifests
                .iter()
                .any(|e| entry_digest(e).as_ref() == Some(&manifest.digest))
            {
                return Ok(());
            }
            index.manifests.push(entry);
            self.write_index(&index)
        })
    }

    /// The images without a name (docker's dangling images), in index order.
    pub fn unnamed(&self) -> Result<Vec<Descriptor>, StoreError> {
        let index = self.read_index()?;
        Ok(index
            .manifests
            .iter()
            .filter(|e| is_unnamed(e))
            .filter_map(|e| serde_json::from_value::<Descriptor>(e.clone()).ok())
            .map(|mut d| {
                d.annotations.remove(UNNAMED_ANNOTATION);
                d
            })
            .collect())
    }

    /// Removes every entry, named or not, of the image whose manifest is
    /// `digest`; the number removed. Its blobs stay until [`Store::prune`].
    pub fn remove_image(&self, digest: &Digest) -> Result<usize, StoreError> {
        self.with_index_lock(|| {
            let mut index = self.read_index()?;
            let before = index.manifests.len();
            index
                .manifests
                .retain(|e| entry_digest(e).as_ref() != Some(digest));
            let removed = before - index.manifests.len();
            if removed > 0 {
                self.write_index(&index)?;
            }
            Ok(removed)
        })
    }

    /// Removes every image without a name; their manifests, one each.
    pub fn remove_unnamed(&self) -> Result<Vec<Descriptor>, StoreError> {
        self.with_index_lock(|| {
            let mut index = self.read_index()?;
            let (gone, kept): (Vec<Value>, Vec<Value>) = index
                .manifests
                .drain(..)
                .partition(|e| is_unnamed(e) && entry_digest(e).is_some());
            index.manifests = kept;
            if !gone.is_empty() {
                self.write_index(&index)?;
            }
            Ok(gone
                .into_iter()
                .filter_map(|e| serde_json::from_value::<Descriptor>(e).ok())
                .map(|mut d| {
                    d.annotations.remove(UNNAMED_ANNOTATION);
                    d
                })
                .collect())
        })
    }

    /// What tag `name` points at, without the ref-name annotation (so it is
    /// the descriptor given to [`Store::set_tag`]).
    pub fn tag(&self, name: &str) -> Result<Option<Descriptor>, StoreError> {
        let index = self.read_index()?;
        let Some(entry) = index.manifests.iter().find(|e| ref_name(e) == Some(name)) else {
            return Ok(None);
        };
        let mut desc: Descriptor = serde_json::from_value(entry.clone()).map_err(|source| {
            StoreError::InvalidTagEntry {
                name: name.to_string(),
                path: self.index_path(),
                source,
            }
        })?;
        desc.annotations.remove(REF_NAME_ANNOTATION);
        Ok(Some(desc))
    }

    /// Every tag, sorted by name, each as [`Store::tag`] returns it. Entries
    /// that are not sha256 descriptors (written by other tools) are skipped.
    pub fn tags(&self) -> Result<Vec<(String, Descriptor)>, StoreError> {
        let index = self.read_index()?;
        let mut tags = BTreeMap::new();
        for entry in &index.manifests {
            let Some(name) = ref_name(entry) else {
                continue;
            };
            let Ok(mut desc) = serde_json::from_value::<Descriptor>(entry.clone()) else {
                continue;
            };
            desc.annotations.remove(REF_NAME_ANNOTATION);
            tags.entry(name.to_string()).or_insert(desc);
        }
        Ok(tags.into_iter().collect())
    }

    /// Removes tag `name`; `false` if there was none. The manifest and its
    /// blobs stay until [`Store::prune`].
    pub fn remove_tag(&self, name: &str) -> Result<bool, StoreError> {
        self.with_index_lock(|| {
            let mut index = self.read_index()?;
            let before = index.manifests.len();
            index.manifests.retain(|e| ref_name(e) != Some(name));
            if index.manifests.len() == before {
                return Ok(false);
            }
            self.write_index(&index)?;
            Ok(true)
        })
    }
}
