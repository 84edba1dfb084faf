//! Where a build's images come from: the store, else a registry. The
//! solver, the planner (through [`BaseResolver`]) and the CLI ask
//! [`Images`] for an image by reference and never look further.

use super::pull;
use super::push::{self, PushOptions, Pushed};
use super::stored::{self, Image};
use super::ImageError;
use super::Vertex;
use crate::progress::Reporter;
use crate::registry::{Reference, Registry};
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
    registry: Option<&'a Registry>,
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
            registry: None,
            policy: PullPolicy::Never,
            reporter,
            next_id: AtomicUsize::new(1),
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// Images from `store`, and from `registry` as `policy` says.
    pub fn with_registry(
        store: &'a Store,
        registry: &'a Registry,
        policy: PullPolicy,
        reporter: &'a dyn Reporter,
    ) -> Self {
        Images {
            registry: Some(registry),
            policy,
            ..Images::local(store, reporter)
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

    fn lookup(&self, reference: &str, platform: &Platform) -> Result<Image, ImageError> {
        let r = Reference::parse(reference)?;
        let stored = stored::by_name(self.store, &r)?;
        let registry = match (self.registry, self.policy, stored) {
            (_, PullPolicy::Never, Some(image)) | (None, _, Some(image)) => return Ok(image),
            (_, PullPolicy::Missing, Some(image)) => return Ok(image),
            // A digest names one image forever: nothing newer to ask for.
            (_, PullPolicy::Always, Some(image)) if r.digest.is_some() => return Ok(image),
            (Some(registry), PullPolicy::Always, Some(image)) => {
                // The tag still names what the store has: nothing to pull.
                match registry.head_manifest(&r)? {
                    Some(now) if now.digest == image.descriptor.digest => return Ok(image),
                    _ => registry,
                }
            }
            (Some(registry), PullPolicy::Missing | PullPolicy::Always, None) => registry,
            (_, PullPolicy::Never, None) | (None, _, None) => {
                return Err(ImageError::NotFound(r.familiar()))
            }
        };
        self.in_vertex(&format!("pull {r}"), |progress| {
            pull::pull(self.store, registry, &r, platform, progress)
        })
    }

    /// Runs `work` as a vertex of its own, named `name`: started, then done
    /// or failed with the error's chain.
    fn in_vertex<T>(
        &self,
        name: &str,
        work: impl FnOnce(&Vertex<'_>) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let id = self.vertex();
        let started = std::time::Instant::now();
        self.reporter.started(id, name);
        let outcome = work(&Vertex {
            reporter: self.reporter,
            id,
        });
        match &outcome {
            Ok(_) => self.reporter.done(id, started.elapsed()),
            Err(e) => self
                .reporter
                .failed(id, started.elapsed(), &crate::solve::error_chain(e)),
        }
        outcome
    }

    /// Pushes `image` (from the store) to `dest`.
    pub fn push(
        &self,
        image: &Image,
        dest: &Reference,
        opts: &PushOptions,
    ) -> Result<Pushed, ImageError> {
        let Some(registry) = self.registry else {
            return Err(ImageError::NoRegistry(dest.familiar()));
        };
        self.in_vertex(&format!("pushing {dest}"), |progress| {
            push::push(self.store, registry, image, dest, opts, progress)
        })
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
            // A config without os or architecture has no known platform.
            platform: Platform::parse(&format!("{}/{}", config.os, config.architecture)).ok(),
            config: config.planned(),
        }))
    }
}
