//! Where a build's images come from: the store, else a registry. The
//! solver, the planner (through [`BaseResolver`]) and the CLI ask
//! [`Images`] for an image by reference and never look further.

use super::stored::{self, Image};
use super::ImageError;
use crate::progress::Reporter;
use crate::reference::Reference;
use estiba_cache::Store;
use estiba_frontend::{BaseImage, BaseResolver, Platform, ResolveError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// When a base image is asked of its registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Only when the store does not have it (docker's default).
    #[default]
    Missing,
    /// Every build asks the registry what a tag names now (`--pull`).
    Always,
    /// Never: the store alone (no registry configured).
    Never,
}

/// The image layer of one command: a store, and the registry behind it.
pub struct Images<'a> {
    store: &'a Store,
    policy: PullPolicy,
    reporter: &'a dyn Reporter,
    next_id: AtomicUsize,
    /// What each reference resolved to in this command: the planner and
    /// the solver see the same image, and `--pull` asks once per build.
    resolved: Mutex<HashMap<(String, Platform), Image>>,
}

impl std::fmt::Debug for Images<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("policy", &self.policy)
            .finish()
    }
}

impl<'a> Images<'a> {
    /// Images from `store` alone.
    pub fn local(store: &'a Store, reporter: &'a dyn Reporter) -> Self {
        Images {
            store,
            policy: PullPolicy::Never,
            reporter,
            next_id: AtomicUsize::new(1),
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// The store.
    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// A new progress vertex id, unique in this command (the solver's
    /// steps and the image layer's pulls share the numbering).
    pub fn vertex(&self) -> usize {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The image `reference` names for `platform`: from the store, else
    /// (by the pull policy) from its registry.
    pub fn get(&self, reference: &str, platform: &Platform) -> Result<Image, ImageError> {
        let key = (reference.to_string(), platform.clone());
        if let Some(image) = self.memo().get(&key) {
            return Ok(image.clone());
        }
        let image = self.lookup(reference, platform)?;
        self.memo().insert(key, image.clone());
        Ok(image)
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Platform), Image>> {
        // A panic elsewhere cannot leave a half-written entry: inserts are whole.
        self.resolved.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, reference: &str, _platform: &Platform) -> Result<Image, ImageError> {
        let r = Reference::parse(reference)?;
        if let Some(image) = stored::by_name(self.store, &r)? {
            return Ok(image);
        }
        let _ = self.reporter;
        Err(ImageError::NotFound(r.familiar()))
    }
}

impl BaseResolver for Images<'_> {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<BaseImage>, ResolveError> {
        let image = match self.get(reference, platform) {
            Ok(image) => image,
            // The solver names the missing image at its FROM line.
            Err(ImageError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(Box::new(e)),
        };
        let config = &image.config;
        Ok(Some(BaseImage {
            digest: Some(image.descriptor.digest.to_string()),
            platform: Platform::parse(&format!("{}/{}", config.os, config.architecture)),
            config: config.planned(),
        }))
    }
}
