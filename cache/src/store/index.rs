//! Tags: the entries of `index.json` that carry an
//! `org.opencontainers.image.ref.name` annotation, exactly where
//! `skopeo inspect oci:ROOT:NAME` looks for `NAME`.
//!
//! Every change is a read-modify-write of the whole file under the exclusive
//! `estiba/index.lock`, written to a temp file and renamed over `index.json`,
//! so concurrent taggers never lose each other's tags and readers (who take
//! no lock) always see a complete index. Entries this store did not write,
//! and fields it does not model, are kept as they are.

use super::{fsutil, media_type, Descriptor, Store, StoreError, REF_NAME_ANNOTATION};
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

/// The tag name an index entry carries, if any.
pub(crate) fn ref_name(entry: &Value) -> Option<&str> {
    entry.get("annotations")?.get(REF_NAME_ANNOTATION)?.as_str()
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
        let mut entry = manifest.clone();
        entry
            .annotations
            .insert(REF_NAME_ANNOTATION.to_string(), name.to_string());
        let entry = serde_json::to_value(&entry).map_err(|source| StoreError::Encode {
            what: "descriptor",
            source,
        })?;
        self.with_index_lock(|| {
            let mut index = self.read_index()?;
            let mut slot = Some(entry);
            let mut manifests = Vec::with_capacity(index.manifests.len() + 1);
            for old in index.manifests.drain(..) {
                if ref_name(&old) == Some(name) {
                    // The first entry for `name` is replaced in place; any
                    // duplicates are dropped.
                    if let Some(new) = slot.take() {
                        manifests.push(new);
                    }
                } else {
                    manifests.push(old);
                }
            }
            if let Some(new) = slot.take() {
                manifests.push(new);
            }
            index.manifests = manifests;
            self.write_index(&index)
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
