//! The solver: a planned [`BuildGraph`] into images in the store.
//!
//! Stages run in dependency order (a stage comes after every stage it
//! reads). Each step gets a cache key ([`crate::cachekey`]); a hit reuses the
//! stored layer, a miss executes the step into a fresh upper directory,
//! which becomes the layer (a deterministic tar, stored uncompressed) and,
//! renamed, the layer's snapshot, so later steps and builds read it without
//! unpacking anything. Nothing is cached until its layer is safely stored.

use crate::cachekey::{KeyInputs, KEY_VERSION};
use crate::copy::{self, Chmod, CopyOptions, Writer};
use crate::executor::{HostSettings, Network, Security};
use crate::fetch;
use crate::image::{
    self, CacheEntry, History, ImageConfig, ImageError, Images, Layer, RemoteCache, HISTORY_COMMENT,
};
use crate::layer;
use crate::progress::Reporter;
use crate::registry::Reference;
use crate::rootfs::LayeredTree;
use crate::tree::{self, SourceTree};
use estiba_cache::{media_type, CacheRecord, Descriptor, Digest, Store, TempDir};
use estiba_frontend::dockerignore::Matcher;
use estiba_frontend::graph::{Base, BuildGraph, CopySource, CopyStep, Op, Stage, Step};
use estiba_frontend::Span;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

/// A failed build step or stage, with the Dockerfile lines it concerns.
#[derive(Debug)]
pub struct SolveError {
    /// The instruction, when the failure belongs to one.
    pub span: Option<Span>,
    /// What failed.
    pub kind: Box<SolveErrorKind>,
}

impl std::fmt::Display for SolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.kind, f)
    }
}

/// The kind is the message; its cause is the cause.
impl std::error::Error for SolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.kind)
    }
}

/// What failed while building.
#[derive(Debug, thiserror::Error)]
pub enum SolveErrorKind {
    /// FROM an image that is not in the store.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A reference that does not parse.
    #[error(transparent)]
    Reference(#[from] crate::registry::ReferenceError),
    /// A RUN command exited non-zero; `output` is its last lines.
    #[error("process {command:?} did not complete successfully: exit code: {code}{output}")]
    RunFailed {
        /// The argv, joined.
        command: String,
        /// Its exit code.
        code: i32,
        /// Its last output lines, indented, or empty.
        output: String,
    },
    /// The build container could not be set up or run.
    #[error("cannot run the step")]
    Exec(#[from] crate::executor::ExecError),
    /// A step asks for an entitlement the build did not allow.
    #[error("{0} is not allowed: the build must allow it with --allow {0}")]
    NotAllowed(Entitlement),
    /// A `RUN --mount` type this estiba cannot provide yet.
    #[error("RUN --mount=type={0} is not supported yet (bind, cache, secret and tmpfs are)")]
    MountUnsupported(&'static str),
    /// `RUN --mount=type=secret,required` of a secret the build was not given.
    #[error("secret {0} is required but was not provided: pass it with --secret id={0},src=PATH")]
    SecretNotFound(String),
    /// A `--secret` file that cannot be read.
    #[error("cannot read secret {id}")]
    SecretRead {
        /// The secret's id.
        id: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A cache mount's `from=` and `source=` name something other than a
    /// directory.
    #[error("the cache mounted at {target} cannot start from {source_path:?}: not a directory")]
    CacheSeedNotDir {
        /// The mount's target.
        target: String,
        /// The path in the stage or image.
        source_path: String,
    },
    /// A `RUN --mount=type=bind` source, or the `from=` a cache mount
    /// starts from, that cannot be used.
    #[error("cannot mount {source_path:?} from {from}")]
    BindSource {
        /// `source=` as written.
        source_path: String,
        /// The build context, a stage or an image.
        from: String,
        /// The cause.
        #[source]
        source: Box<copy::CopyError>,
    },
    /// `COPY --from=NAME` where NAME is no stage and no image that can be
    /// had; a stage with a near name is suggested (`bulder` → `builder`).
    #[error("COPY --from={reference}: no stage is named {reference}, and it cannot be used as an image{}", stage_hint(.stage))]
    CopyFromImage {
        /// The name as written.
        reference: String,
        /// A stage whose name is close.
        stage: Option<String>,
        /// Why the image could not be had.
        #[source]
        source: Box<ImageError>,
    },
    /// A stage this step reads failed.
    #[error("stage {0} failed")]
    StageFailed(String),
    /// Another stage failed: this one stopped before its next step.
    #[error("stopped: another stage failed")]
    Stopped,
    /// `COPY --from=NAME` of a named context the build was not given.
    #[error("no --build-context named {0}")]
    NoNamedContext(String),
    /// `ADD https://…` failed to download or to match `--checksum`.
    #[error("ADD failed")]
    Fetch(#[from] fetch::FetchError),
    /// `--chown` or USER names nobody in the image.
    #[error("unable to find {what} {name:?}: no matching entries in the image's {file}")]
    UnknownUser {
        /// "user" or "group".
        what: &'static str,
        /// The name.
        name: String,
        /// `/etc/passwd` or `/etc/group`.
        file: &'static str,
    },
    /// `--chmod` that did not parse.
    #[error("invalid --chmod {0:?}")]
    BadChmod(String),
    /// A COPY failed.
    #[error("COPY failed")]
    Copy(#[source] copy::CopyError),
    /// A step's cache key could not be computed.
    #[error(transparent)]
    Key(#[from] crate::cachekey::KeyError),
    /// A layer could not be written or read.
    #[error("layer failed")]
    Layer(#[source] layer::LayerError),
    /// The store failed.
    #[error("the store failed")]
    Store(#[source] estiba_cache::StoreError),
    /// A stored image is not what it should be.
    #[error("image {image} is corrupt: {reason}")]
    CorruptImage {
        /// Which.
        image: String,
        /// Why.
        reason: String,
    },
    /// I/O outside the store.
    #[error("cannot use {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn stage_hint(stage: &Option<String>) -> String {
    stage
        .as_ref()
        .map(|s| format!(" (did you mean the stage {s}?)"))
        .unwrap_or_default()
}

impl From<SolveErrorKind> for SolveError {
    fn from(kind: SolveErrorKind) -> Self {
        SolveError {
            span: None,
            kind: Box::new(kind),
        }
    }
}

impl From<estiba_cache::StoreError> for SolveErrorKind {
    fn from(e: estiba_cache::StoreError) -> Self {
        SolveErrorKind::Store(e)
    }
}

impl From<copy::CopyError> for SolveErrorKind {
    fn from(e: copy::CopyError) -> Self {
        SolveErrorKind::Copy(e)
    }
}

impl From<crate::tree::TreeError> for SolveErrorKind {
    fn from(e: crate::tree::TreeError) -> Self {
        SolveErrorKind::Copy(copy::CopyError::Tree(e))
    }
}

impl From<layer::LayerError> for SolveErrorKind {
    fn from(e: layer::LayerError) -> Self {
        SolveErrorKind::Layer(e)
    }
}

type Result<T, E = SolveErrorKind> = std::result::Result<T, E>;

/// A built image: its config and layers, not yet stored as a manifest.
#[derive(Debug, Clone)]
pub struct Built {
    /// The full config (rootfs and history filled in).
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// The key of the last step: what a stage built on this one chains from.
    pub key: String,
}

/// Stages' results as they finish. A step that reads a stage (its base,
/// `COPY --from`, `RUN --mount=from=`) waits here until that stage is
/// built, so every stage starts at once and each step runs as soon as what
/// it reads is ready.
#[derive(Debug, Default)]
struct Finished {
    /// By stage index: the result, or `None` when the stage failed.
    done: std::sync::Mutex<BTreeMap<usize, Option<Built>>>,
    changed: std::sync::Condvar,
}

impl Finished {
    /// Stage `index`'s result, once it is built; an error if it failed.
    fn get(&self, graph: &BuildGraph, index: usize) -> Result<Built> {
        let name = || {
            graph
                .stages
                .get(index)
                .map_or_else(|| format!("stage {index}"), Stage::display_name)
        };
        let poisoned = || SolveErrorKind::CorruptImage {
            image: name(),
            reason: "its builder thread panicked".to_string(),
        };
        let mut done = self.done.lock().map_err(|_| poisoned())?;
        loop {
            match done.get(&index) {
                Some(Some(built)) => return Ok(built.clone()),
                Some(None) => return Err(SolveErrorKind::StageFailed(name())),
                None => done = self.changed.wait(done).map_err(|_| poisoned())?,
            }
        }
    }

    fn put(&self, index: usize, built: Option<Built>) {
        if let Ok(mut done) = self.done.lock() {
            done.insert(index, built);
        }
        self.changed.notify_all();
    }
}

/// Steps being run now, by cache key: a second stage reaching the same
/// step waits for the first and takes its result from the cache, as
/// BuildKit's solver merges identical vertices.
#[derive(Debug, Default)]
struct InFlight {
    keys: std::sync::Mutex<BTreeSet<Digest>>,
    changed: std::sync::Condvar,
}

/// The right to run the step of a key; dropping it lets waiters look again.
struct Claim<'a> {
    inflight: &'a InFlight,
    key: Digest,
}

impl InFlight {
    /// `Some` when no one runs `key`'s step now (it is ours to run); `None`
    /// after waiting for whoever ran it.
    fn claim(&self, key: &Digest) -> Option<Claim<'_>> {
        let Ok(mut keys) = self.keys.lock() else {
            // A panicked holder: run it here rather than wait forever.
            return Some(Claim {
                inflight: self,
                key: *key,
            });
        };
        if keys.insert(*key) {
            return Some(Claim {
                inflight: self,
                key: *key,
            });
        }
        while keys.contains(key) {
            keys = match self.changed.wait(keys) {
                Ok(keys) => keys,
                Err(_) => return None,
            };
        }
        None
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut keys) = self.inflight.keys.lock() {
            keys.remove(&self.key);
        }
        self.inflight.changed.notify_all();
    }
}

/// A build's settings besides the graph.
#[derive(Debug, Clone, Default)]
pub struct SolveOptions {
    /// `--no-cache`: run every step.
    pub no_cache: bool,
    /// `SOURCE_DATE_EPOCH`: timestamps and layer mtimes for reproducible images.
    pub epoch: Option<i64>,
    /// `--secret`s by id, for `RUN --mount=type=secret`. Only where each
    /// value comes from is kept here; the value is read when a step mounts it.
    pub secrets: BTreeMap<String, SecretSource>,
    /// `build --network`: the network of RUN steps that do not choose one
    /// (no `--network`, or `--network=default`).
    pub network: Network,
    /// `build --allow`: what steps may ask for beyond the sandbox.
    pub allow: BTreeSet<Entitlement>,
    /// `build --add-host`, `--shm-size`, `--ulimit`: given to every RUN
    /// step, and part of its key (BuildKit keeps them in the exec op's
    /// `Meta`, which its cache key hashes).
    pub host: HostSettings,
    /// `build --no-cache-filter`: the stages (lower-case names) whose steps
    /// run without the cache.
    pub no_cache_stages: BTreeSet<String>,
}

/// BuildKit's entitlements: what a Dockerfile may ask for only when the
/// build allows it (`--allow`), checked before any step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entitlement {
    /// `RUN --security=insecure`: a step with every capability and no
    /// seccomp filter.
    SecurityInsecure,
    /// `RUN --network=host`: a step on the host's network, its loopback
    /// services included (`build --network host` is the user's own choice
    /// and needs nothing more).
    NetworkHost,
}

impl std::fmt::Display for Entitlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entitlement::SecurityInsecure => "security.insecure",
            Entitlement::NetworkHost => "network.host",
        })
    }
}

/// Where a build secret's value comes from (`--secret`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file on the host.
    File(PathBuf),
    /// An environment variable of estiba's (unset: the secret is missing).
    Env(String),
}

/// Solves graphs against one store and one context.
pub struct Solver<'a> {
    images: &'a Images<'a>,
    store: &'a Store,
    context: &'a (dyn SourceTree + Sync),
    reporter: &'a dyn Reporter,
    opts: SolveOptions,
    /// `--cache-from`: steps other machines built, looked up on a local miss.
    remote: Option<&'a RemoteCache<'a>>,
    /// Every cached step of this build (hit or made), for `--cache-to`.
    entries: std::sync::Mutex<Vec<CacheEntry>>,
    /// Whether the remote cache's small layers were fetched ahead.
    prefetched: std::sync::Once,
    /// `--build-context NAME=DIR`: directories `COPY --from=NAME` reads.
    named: BTreeMap<String, &'a (dyn SourceTree + Sync)>,
    /// Steps running now, so identical ones run once.
    inflight: InFlight,
    /// Set when a stage fails: the others stop at their next step.
    failed: std::sync::atomic::AtomicBool,
}

/// Layers up to this size are fetched ahead from a remote cache.
const PREFETCH_MAX_SIZE: u64 = 256 << 10;

impl std::fmt::Debug for Solver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Solver").field("opts", &self.opts).finish()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl<'a> Solver<'a> {
    /// A solver over `images` (the store, and the registry behind it),
    /// reading the build context `context`.
    pub fn new(
        images: &'a Images<'a>,
        context: &'a (dyn SourceTree + Sync),
        reporter: &'a dyn Reporter,
        opts: SolveOptions,
    ) -> Self {
        Solver {
            images,
            store: images.store(),
            context,
            reporter,
            opts,
            remote: None,
            entries: std::sync::Mutex::new(Vec::new()),
            prefetched: std::sync::Once::new(),
            named: BTreeMap::new(),
            inflight: InFlight::default(),
            failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Reads `COPY --from=NAME` of a local `--build-context NAME=DIR` from
    /// `named[NAME]`.
    pub fn with_named_contexts(
        mut self,
        named: BTreeMap<String, &'a (dyn SourceTree + Sync)>,
    ) -> Self {
        self.named = named;
        self
    }

    /// Looks steps up in `remote` (`--cache-from`) when the store misses.
    pub fn with_remote_cache(self, remote: &'a RemoteCache<'a>) -> Self {
        Solver {
            remote: (!remote.is_empty()).then_some(remote),
            ..self
        }
    }

    /// The cached steps of the last solve, hit or made, each once, sorted
    /// by key: what `--cache-to` exports.
    pub fn cache_entries(&self) -> Vec<CacheEntry> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        entries.sort_by_key(|e| e.key);
        entries.dedup_by_key(|e| e.key);
        entries
    }

    fn remember(&self, key: &Digest, layer: &Layer, created: i64) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(CacheEntry {
                key: *key,
                layer: Some(layer.clone()),
                created,
            });
    }

    /// The step `key` from `--cache-from`, its layer brought into the
    /// store. A layer the cache no longer has, or has damaged, is a miss
    /// with a warning: the step runs.
    fn remote_hit(&self, key: &Digest) -> Result<Option<(Layer, i64)>> {
        let Some(remote) = self.remote else {
            return Ok(None);
        };
        let Some(hit) = remote.get(key) else {
            return Ok(None);
        };
        // At the first hit, the small layers come all at once.
        self.prefetched
            .call_once(|| remote.prefetch_small(self.store, PREFETCH_MAX_SIZE));
        let Some(layer) = hit.layer else {
            return Ok(None);
        };
        if !self.store.has_blob(&layer.descriptor.digest) {
            match remote.fetch(self.store, &layer.descriptor) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(e) => {
                    self.reporter.warning(&format!(
                        "the cache's layer {} cannot be used, so its step runs: {}",
                        layer.descriptor.digest,
                        error_chain(&e)
                    ));
                    return Ok(None);
                }
            }
        }
        self.store.cache_put(
            key,
            &CacheRecord {
                layer: Some(layer.descriptor.clone()),
                diff_id: Some(layer.diff_id),
                created: hit.created,
            },
        )?;
        Ok(Some((layer, hit.created)))
    }

    /// A new progress vertex id (the CLI numbers its export steps with these too).
    pub fn vertex(&self) -> usize {
        self.images.vertex()
    }

    fn time(&self) -> i64 {
        self.opts.epoch.unwrap_or_else(now)
    }

    /// Builds every needed stage and returns the target's image.
    ///
    /// Every needed stage starts at once on a thread of its own; a step
    /// that reads another stage waits for it ([`Finished`]), so a step
    /// runs as soon as its inputs are ready, and a step two stages share
    /// runs once ([`InFlight`]). When a stage fails the others stop at
    /// their next step and the first failure is the build's error.
    pub fn solve(&self, graph: &BuildGraph) -> Result<Built, SolveError> {
        self.check_entitlements(graph)?;
        let multi = graph.needed_stages().count() > 1;
        let finished = Finished::default();
        let results: Vec<(usize, Result<Built, SolveError>)> = std::thread::scope(|scope| {
            let finished = &finished;
            let handles: Vec<_> = graph
                .needed_stages()
                .map(|stage| {
                    let handle = scope.spawn(move || {
                        let result = self.solve_stage(graph, stage, finished, multi);
                        if result.is_err() {
                            self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        finished.put(stage.index, result.as_ref().ok().cloned());
                        result
                    });
                    (stage.index, handle)
                })
                .collect();
            handles
                .into_iter()
                .map(|(i, h)| {
                    let result = h.join().unwrap_or_else(|_| {
                        finished.put(i, None);
                        Err(SolveErrorKind::CorruptImage {
                            image: format!("stage {i}"),
                            reason: "its builder thread panicked".to_string(),
                        }
                        .into())
                    });
                    (i, result)
                })
                .collect()
        });
        // The first real failure, not a stage that stopped because of it.
        let mut target = None;
        let mut knock_on = None;
        for (index, result) in results {
            match result {
                Ok(built) if index == graph.target => target = Some(built),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        *e.kind,
                        SolveErrorKind::StageFailed(_) | SolveErrorKind::Stopped
                    ) =>
                {
                    knock_on.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = knock_on {
            return Err(e);
        }
        target.ok_or_else(|| {
            SolveError::from(SolveErrorKind::CorruptImage {
                image: "(target)".to_string(),
                reason: "the target stage was not built".to_string(),
            })
        })
    }

    /// Refuses, at its line, the first step that needs an entitlement the
    /// build did not allow, before anything runs (as BuildKit does).
    fn check_entitlements(&self, graph: &BuildGraph) -> Result<(), SolveError> {
        for step in graph.needed_stages().flat_map(|stage| &stage.steps) {
            let needs = match &step.op {
                Op::Run(run) => [
                    (run.security.as_deref() == Some("insecure"))
                        .then_some(Entitlement::SecurityInsecure),
                    (run.network.as_deref() == Some("host")).then_some(Entitlement::NetworkHost),
                ],
                _ => continue,
            };
            if let Some(needs) = needs
                .into_iter()
                .flatten()
                .find(|needs| !self.opts.allow.contains(needs))
            {
                return Err(SolveError {
                    span: Some(step.span.clone()),
                    kind: Box::new(SolveErrorKind::NotAllowed(needs)),
                });
            }
        }
        Ok(())
    }

    /// The starting image of a stage.
    fn start(&self, graph: &BuildGraph, stage: &Stage, built: &Finished) -> Result<Built> {
        match &stage.base {
            Base::Scratch => {
                let mut config = ImageConfig {
                    architecture: stage.platform.architecture.clone(),
                    os: stage.platform.os.clone(),
                    variant: (!stage.platform.variant.is_empty())
                        .then(|| stage.platform.variant.clone()),
                    ..ImageConfig::default()
                };
                config.rootfs = image::RootFs::default();
                Ok(Built {
                    config,
                    layers: Vec::new(),
                    key: "scratch".to_string(),
                })
            }
            Base::Image { reference, .. } => {
                let image = self.images.get(reference, &stage.platform)?;
                Ok(Built {
                    key: image.descriptor.digest.to_string(),
                    config: image.config,
                    layers: image.layers,
                })
            }
            Base::Stage { index } => built.get(graph, *index),
        }
    }

    fn solve_stage(
        &self,
        graph: &BuildGraph,
        stage: &Stage,
        built: &Finished,
        multi: bool,
    ) -> Result<Built, SolveError> {
        let at = |span: &Span| {
            let span = span.clone();
            move |kind: SolveErrorKind| SolveError {
                span: Some(span),
                kind: Box::new(kind),
            }
        };
        let total = stage.steps.iter().filter(|s| s.layer).count()
            + usize::from(matches!(stage.base, Base::Image { .. }));
        let prefix = |i: usize| {
            let width = total.to_string().len();
            match (multi, &stage.name) {
                (true, _) => format!("[{} {i:>width$}/{total}]", stage.display_name()),
                (false, _) => format!("[{i:>width$}/{total}]"),
            }
        };
        let mut n = 0;
        let started = Instant::now();
        let mut current = match &stage.base {
            Base::Image { reference, .. } => {
                n += 1;
                let id = self.vertex();
                let name = Reference::parse(reference)
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| reference.clone());
                self.reporter
                    .started(id, &format!("{} FROM {name}", prefix(n)));
                let b = self.start(graph, stage, built).map_err(at(&stage.span))?;
                self.reporter.done(id, started.elapsed());
                b
            }
            _ => self.start(graph, stage, built).map_err(at(&stage.span))?,
        };
        let time = self.time();
        let mut history = std::mem::take(&mut current.config.history);
        for step in &stage.steps {
            // Only steps that make layers are shown, as BuildKit's vertices.
            let id = if step.layer { self.vertex() } else { 0 };
            let started = Instant::now();
            if step.layer {
                n += 1;
                let label = if step.on_build { "ONBUILD " } else { "" };
                self.reporter
                    .started(id, &format!("{} {label}{}", prefix(n), step.instruction));
            }
            let result = if self.failed.load(std::sync::atomic::Ordering::SeqCst) {
                Err(SolveErrorKind::Stopped)
            } else {
                self.solve_step(graph, stage, step, &current, built, id)
            };
            match result {
                Ok((layer, key, cached)) => {
                    if step.layer {
                        if cached {
                            self.reporter.cached(id);
                        } else {
                            self.reporter.done(id, started.elapsed());
                        }
                    }
                    current.key = key;
                    history.push(History {
                        created: Some(image::rfc3339(time)),
                        created_by: step.created_by.clone(),
                        comment: HISTORY_COMMENT.to_string(),
                        empty_layer: layer.is_none(),
                    });
                    if let Some(layer) = layer {
                        current
                            .config
                            .rootfs
                            .diff_ids
                            .push(layer.diff_id.to_string());
                        current.layers.push(layer);
                    }
                }
                Err(kind) => {
                    if step.layer {
                        self.reporter
                            .failed(id, started.elapsed(), &error_chain(&kind));
                    }
                    return Err(SolveError {
                        span: Some(step.span.clone()),
                        kind: Box::new(kind),
                    });
                }
            }
        }
        current.config.apply(&stage.config);
        if let Some(author) = &stage.author {
            current.config.author = Some(author.clone());
        }
        current.config.created = Some(image::rfc3339(time));
        current.config.architecture = stage.platform.architecture.clone();
        current.config.os = stage.platform.os.clone();
        current.config.history = history;
        Ok(current)
    }

    /// One step: its layer (if it makes one), its key, and whether it was cached.
    fn solve_step(
        &self,
        graph: &BuildGraph,
        stage: &Stage,
        step: &Step,
        current: &Built,
        built: &Finished,
        id: usize,
    ) -> Result<(Option<Layer>, String, bool)> {
        let platform = stage.platform.to_string();
        // COPY --link makes a layer that does not depend on what is below it:
        // its key leaves the parent out, so a new base keeps it cached.
        let link = matches!(&step.op, Op::Copy(c) if c.link);
        let key_of = |sources: Option<String>,
                      from: Option<String>,
                      network: Option<&str>,
                      host: Option<&HostSettings>| {
            KeyInputs {
                version: KEY_VERSION,
                parent: if link {
                    "link".to_string()
                } else {
                    current.key.clone()
                },
                platform: platform.clone(),
                step: &step.op,
                sources,
                from,
                epoch: self.opts.epoch,
                network,
                host,
            }
            .key()
            .map_err(SolveErrorKind::Key)
        };
        match &step.op {
            Op::Config => Ok((None, key_of(None, None, None, None)?.to_string(), false)),
            Op::Run(run) => {
                // What a bind mount shows, and what a cache mount starts
                // from, is part of what the step reads.
                let binds = self.mount_sources(graph, stage, run, built)?;
                let sources = (!binds.is_empty()).then(|| {
                    let digests: Vec<&str> = binds.values().map(|b| b.key.as_str()).collect();
                    format!("bind {}", digests.join(" "))
                });
                // The build's network is part of what the step does (a
                // step's own `--network` is in its definition already).
                let network = match (run.network.as_deref(), self.opts.network) {
                    (Some("none" | "host"), _) | (_, Network::Private) => None,
                    (_, Network::None) => Some("none"),
                    (_, Network::Host) => Some("host"),
                };
                let host = (!self.opts.host.is_default()).then_some(&self.opts.host);
                let key = key_of(sources, None, network, host)?;
                self.cached_or(&key, stage, || self.exec_run(current, run, &binds, id))
            }
            Op::Workdir { path, user } => {
                if !step.layer {
                    return Ok((None, key_of(None, None, None, None)?.to_string(), false));
                }
                let key = key_of(None, None, None, None)?;
                self.cached_or(&key, stage, || {
                    self.exec_diff(current, false, |writer, lower| {
                        let owner = if user.is_empty() {
                            (0, 0)
                        } else {
                            // BuildKit creates it as root when the user is
                            // unknown to the image, rather than failing.
                            match resolve_user(lower, user) {
                                Err(SolveErrorKind::UnknownUser { .. }) => (0, 0),
                                other => other?,
                            }
                        };
                        writer.mkdir_owned(path, owner)?;
                        Ok(())
                    })
                })
            }
            Op::Copy(copy) => {
                // ADD <url>: downloaded first, so the content is in the key.
                let urls: Vec<&String> = copy.sources.iter().filter(|s| fetch::is_url(s)).collect();
                let downloads = self.store.temp_dir("download")?;
                // With --checksum the checksum names the content: a cache hit
                // needs no download. Without it, the content decides the key.
                let fetch_all = || -> Result<Vec<(PathBuf, fetch::Downloaded)>> {
                    let mut fetched = Vec::new();
                    for url in &urls {
                        let dir = downloads.path().join(fetched.len().to_string());
                        std::fs::create_dir_all(&dir).map_err(|source| SolveErrorKind::Io {
                            path: dir.clone(),
                            source,
                        })?;
                        let d = fetch::download(url, &dir, copy.checksum.as_deref())?;
                        fetched.push((dir, d));
                    }
                    Ok(fetched)
                };
                let prefetched = match &copy.checksum {
                    Some(_) => None,
                    None => Some(fetch_all()?),
                };
                let local: Vec<String> = copy
                    .sources
                    .iter()
                    .filter(|s| !fetch::is_url(s))
                    .cloned()
                    .collect();
                let (tree, from_key, what): (Rc<dyn SourceTree + '_>, Option<String>, String) =
                    match &copy.from {
                        CopySource::Context => {
                            (Rc::new(self.context), None, copy::CONTEXT.to_string())
                        }
                        CopySource::Named { name } => {
                            let tree = self
                                .named
                                .get(name)
                                .copied()
                                .ok_or_else(|| SolveErrorKind::NoNamedContext(name.clone()))?;
                            (Rc::new(tree), None, format!("build context {name}"))
                        }
                        CopySource::Stage { index } => {
                            let b = built.get(graph, *index)?;
                            let tree = self.layered(&b.layers)?;
                            (
                                Rc::new(tree),
                                Some(b.key.clone()),
                                format!("stage {}", graph.stages[*index].display_name()),
                            )
                        }
                        CopySource::Image { reference } => {
                            let image =
                                self.images
                                    .get(reference, &stage.platform)
                                    .map_err(|source| {
                                        let names =
                                            graph.stages.iter().filter_map(|s| s.name.as_deref());
                                        SolveErrorKind::CopyFromImage {
                                            reference: reference.clone(),
                                            stage: estiba_frontend::suggest::nearest(
                                                reference, names,
                                            )
                                            .map(str::to_string),
                                            source: Box::new(source),
                                        }
                                    })?;
                            (
                                Rc::new(self.layered(&image.layers)?),
                                Some(image.descriptor.digest.to_string()),
                                format!("image {reference}"),
                            )
                        }
                    };
                // Local sources arrive owned by root, as BuildKit's file
                // sync gives them.
                let keep_owners =
                    !matches!(copy.from, CopySource::Context | CopySource::Named { .. });
                let excludes = if copy.excludes.is_empty() {
                    None
                } else {
                    Some(Matcher::new(&copy.excludes).map_err(|source| {
                        copy::CopyError::Pattern {
                            pattern: copy.excludes.join(" "),
                            source,
                        }
                    })?)
                };
                let matches = copy::match_sources(tree.as_ref(), &local, copy.parents, &what)?;
                let digest =
                    copy::hash_sources(tree.as_ref(), &matches, excludes.as_ref(), keep_owners)?;
                let contents: Vec<String> = copy
                    .contents
                    .iter()
                    .map(|c| Digest::of(c.data.as_bytes()).to_string())
                    .collect();
                let urls_digest: Vec<String> = match (&prefetched, &copy.checksum) {
                    (Some(fetched), _) => fetched
                        .iter()
                        .map(|(_, d)| format!("{}={}", d.name, d.digest))
                        .collect(),
                    (None, Some(sum)) => urls.iter().map(|u| format!("{u}={sum}")).collect(),
                    (None, None) => Vec::new(),
                };
                let sources = format!("{digest} {} {}", contents.join(" "), urls_digest.join(" "));
                let key = key_of(Some(sources), from_key, None, None)?;
                let chain = |(layer, k, cached): (Option<Layer>, String, bool)| {
                    // What comes after depends on the base and the layer.
                    let k = if link {
                        Digest::of(format!("{}+{k}", current.key).as_bytes()).to_string()
                    } else {
                        k
                    };
                    (layer, k, cached)
                };
                self.cached_or(&key, stage, || {
                    self.exec_diff(current, link, |writer, lower| {
                        self.exec_copy(
                            copy,
                            writer,
                            lower,
                            &tree,
                            &matches,
                            excludes.as_ref(),
                            keep_owners,
                        )?;
                        // Downloads belong to root (or --chown); keep their 0600.
                        let fetched = match prefetched {
                            Some(f) => f,
                            None => fetch_all()?,
                        };
                        for (dir, d) in &fetched {
                            let tree: Rc<dyn SourceTree> =
                                Rc::new(LayeredTree::new(vec![dir.clone()]));
                            let m = copy::SourceMatch {
                                name: d.name.clone(),
                                path: d.name.clone(),
                                parents_path: None,
                            };
                            let chmod = match &copy.chmod {
                                Some(c) => Some(
                                    Chmod::parse(c)
                                        .ok_or_else(|| SolveErrorKind::BadChmod(c.clone()))?,
                                ),
                                None => None,
                            };
                            writer.set_options(writer_chown(lower, copy)?, chmod, false);
                            writer.copy(&tree, &[m], &copy.dest, None)?;
                        }
                        Ok(())
                    })
                })
                .map(chain)
            }
        }
    }

    /// The network a RUN step gets: its own `--network`, else the build's.
    fn run_network(&self, run: &estiba_frontend::graph::RunStep) -> Network {
        match run.network.as_deref() {
            Some("none") => Network::None,
            Some("host") => Network::Host,
            _ => self.opts.network,
        }
    }

    /// The step's cached layer, or `run()` and cache what it makes.
    fn cached_or(
        &self,
        key: &Digest,
        stage: &Stage,
        run: impl FnOnce() -> Result<Layer>,
    ) -> Result<(Option<Layer>, String, bool)> {
        let filtered = stage
            .name
            .as_ref()
            .is_some_and(|n| self.opts.no_cache_stages.contains(n));
        let use_cache = !self.opts.no_cache && !filtered;
        let _claim = loop {
            if use_cache {
                if let Some(record) = self.store.cache_get(key)? {
                    if let (Some(descriptor), Some(diff_id)) = (record.layer, record.diff_id) {
                        let layer = Layer {
                            descriptor,
                            diff_id,
                        };
                        self.remember(key, &layer, record.created);
                        return Ok((Some(layer), key.to_string(), true));
                    }
                }
                if let Some((layer, created)) = self.remote_hit(key)? {
                    self.remember(key, &layer, created);
                    return Ok((Some(layer), key.to_string(), true));
                }
            } else {
                // Without the cache, every stage runs its own steps.
                break None;
            }
            // Another stage running this very step: wait, then look again.
            if let Some(claim) = self.inflight.claim(key) {
                break Some(claim);
            }
            if self.failed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(SolveErrorKind::Stopped);
            }
        };
        let layer = run()?;
        let created = now();
        self.store.cache_put(
            key,
            &CacheRecord {
                layer: Some(layer.descriptor.clone()),
                diff_id: Some(layer.diff_id),
                created,
            },
        )?;
        self.remember(key, &layer, created);
        Ok((Some(layer), key.to_string(), false))
    }

    /// Snapshots of `layers` as a tree, top first, unpacking any missing one.
    fn layered(&self, layers: &[Layer]) -> Result<LayeredTree> {
        let mut dirs = Vec::with_capacity(layers.len());
        for l in layers.iter().rev() {
            dirs.push(self.snapshot(l)?);
        }
        Ok(LayeredTree::new(dirs))
    }

    /// The unpacked snapshot of a layer, made from its blob the first time.
    fn snapshot(&self, l: &Layer) -> Result<PathBuf> {
        Ok(image::snapshot(self.store, l)?)
    }

    /// Runs `fill` on a diff above `current`'s layers, then writes the diff
    /// as a stored layer, streamed from the sources. Its snapshot is made
    /// from the layer only if a later step needs it.
    fn exec_diff<'t>(
        &self,
        current: &Built,
        independent: bool,
        fill: impl FnOnce(&mut Writer<'t>, &LayeredTree) -> Result<()>,
    ) -> Result<Layer> {
        let lower = self.layered(&current.layers)?;
        // An independent (--link) layer resolves its destination against
        // nothing below it; names for --chown still come from the image.
        let below = if independent {
            LayeredTree::new(Vec::new())
        } else {
            lower.clone()
        };
        let mut writer = Writer::new(
            below,
            CopyOptions {
                mtime: self.time(),
                ..CopyOptions::default()
            },
        );
        fill(&mut writer, &lower)?;
        let blob = writer.write_layer(
            self.store.blob_writer()?,
            &layer::LayerOptions {
                mtime_clamp: self.opts.epoch,
            },
        )?;
        let (digest, size) = blob.commit()?;
        Ok(Layer::uncompressed(digest, size))
    }

    /// The sources of a RUN's bind mounts and of the cache mounts that
    /// start from a stage or an image (`from=`), by mount index: matched in
    /// the context, a stage or an image. A bind source is hashed for the
    /// step's key; a cache seed is named by its stage's key or its image's
    /// digest and its path, as BuildKit keys the cache mount's input.
    fn mount_sources(
        &self,
        graph: &BuildGraph,
        stage: &Stage,
        run: &estiba_frontend::graph::RunStep,
        built: &Finished,
    ) -> Result<BTreeMap<usize, MountSource<'a>>> {
        use estiba_frontend::instructions::MountKind;
        let mut out = BTreeMap::new();
        for (i, m) in run.mounts.iter().enumerate() {
            let seeded = m.kind == MountKind::Cache && cache_is_seeded(m);
            if m.kind != MountKind::Bind && !seeded {
                continue;
            }
            let (tree, keep_owners, from, identity): (Rc<dyn SourceTree + 'a>, bool, String, _) =
                match (m.stage, &m.from) {
                    (Some(index), _) => {
                        let name = graph
                            .stages
                            .get(index)
                            .map_or_else(|| format!("stage {index}"), |s| s.display_name());
                        let b = built.get(graph, index)?;
                        (
                            Rc::new(self.layered(&b.layers)?),
                            true,
                            format!("stage {name}"),
                            Some(b.key.clone()),
                        )
                    }
                    (None, Some(reference)) => {
                        let image = self.images.get(reference, &stage.platform)?;
                        (
                            Rc::new(self.layered(&image.layers)?),
                            true,
                            format!("image {reference}"),
                            Some(image.descriptor.digest.to_string()),
                        )
                    }
                    (None, None) => (
                        Rc::new(self.context),
                        false,
                        copy::CONTEXT.to_string(),
                        None,
                    ),
                };
            let source_path = m.source.clone().unwrap_or_else(|| "/".to_string());
            let failed = |source: copy::CopyError| SolveErrorKind::BindSource {
                source_path: source_path.clone(),
                from: from.clone(),
                source: Box::new(source),
            };
            let matched = copy::match_sources(
                tree.as_ref(),
                std::slice::from_ref(&source_path),
                false,
                &from,
            )
            .map_err(failed)?;
            let [matched] = <[copy::SourceMatch; 1]>::try_from(matched).map_err(|_| {
                failed(copy::CopyError::NotFound {
                    source_path: source_path.clone(),
                    tree: from.clone(),
                })
            })?;
            let key = match identity {
                Some(identity) if seeded => {
                    format!("cache-from {identity}:{}", matched.path)
                }
                _ => copy::hash_sources(
                    tree.as_ref(),
                    std::slice::from_ref(&matched),
                    None,
                    keep_owners,
                )
                .map_err(failed)?
                .to_string(),
            };
            out.insert(
                i,
                MountSource {
                    tree,
                    matched,
                    keep_owners,
                    key,
                },
            );
        }
        Ok(out)
    }

    /// A private copy of a bind mount's source in the store's temp dir,
    /// removed with the returned dir; returns the path to bind. The copy
    /// keeps writes to a `rw` mount out of the context and the layer. A
    /// directory keeps its own mode and owner: the mount shows it itself.
    fn materialize(&self, bind: &MountSource<'_>) -> Result<(TempDir, PathBuf)> {
        let dir = self.store.temp_dir("bind")?;
        let mut writer = Writer::new(
            LayeredTree::new(Vec::new()),
            CopyOptions {
                mtime: self.time(),
                keep_owners: bind.keep_owners,
                dir_itself: true,
                ..CopyOptions::default()
            },
        );
        writer.copy(
            &bind.tree,
            std::slice::from_ref(&bind.matched),
            "/source",
            None,
        )?;
        writer.write_to_dir(dir.path())?;
        let path = dir.path().join("source");
        Ok((dir, path))
    }

    /// Makes the cache mount directory `dir` a copy of what `seed` names,
    /// as BuildKit makes a new cache from the mount's input
    /// (`getRefCacheDirNoCache`); another build that made it meanwhile wins.
    fn seed_cache(
        &self,
        seed: &MountSource<'_>,
        target: &str,
        dir: &std::path::Path,
    ) -> Result<()> {
        let io = |source| SolveErrorKind::Io {
            path: dir.to_path_buf(),
            source,
        };
        let (tmp, made) = self.materialize(seed)?;
        if !made.is_dir() {
            return Err(SolveErrorKind::CacheSeedNotDir {
                target: target.to_string(),
                source_path: format!("/{}", seed.matched.path),
            });
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        if let Err(error) = std::fs::rename(&made, dir) {
            if !dir.is_dir() {
                return Err(io(error));
            }
        }
        drop(tmp);
        Ok(())
    }

    /// A secret's value, or `None` when the build was not given it.
    fn secret_value(&self, id: &str) -> Result<Option<Vec<u8>>> {
        match self.opts.secrets.get(id) {
            None => Ok(None),
            Some(SecretSource::File(path)) => match std::fs::read(path) {
                Ok(value) => Ok(Some(value)),
                Err(source) => Err(SolveErrorKind::SecretRead {
                    id: id.to_string(),
                    source,
                }),
            },
            Some(SecretSource::Env(var)) => {
                use std::os::unix::ffi::OsStringExt;
                Ok(std::env::var_os(var).map(OsStringExt::into_vec))
            }
        }
    }

    /// A secret's value in a file in a temp dir of the store (mode 0400 or
    /// `mode=`, owned by `uid=`/`gid=`), removed when the returned dir is
    /// dropped; returns the dir and the file.
    fn secret_file(
        &self,
        value: &[u8],
        mount: &estiba_frontend::instructions::Mount,
    ) -> Result<(TempDir, PathBuf)> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = self.store.temp_dir("secret")?;
        let path = dir.path().join("secret");
        let io = |source| SolveErrorKind::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        file.write_all(value).map_err(io)?;
        file.sync_all().map_err(io)?;
        let mode = mount.mode.unwrap_or(0o400) & 0o7777;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        std::os::unix::fs::chown(
            &path,
            Some(mount.uid.unwrap_or(0)),
            Some(mount.gid.unwrap_or(0)),
        )
        .map_err(io)?;
        Ok((dir, path))
    }

    /// RUN: the command in a build container above `current`'s layers; its
    /// upper dir becomes the layer. A non-zero exit fails the step, and
    /// nothing of it is cached.
    ///
    /// Bind mounts see private copies and secrets temp files of the store,
    /// all removed when the step ends, so neither reaches the layer.
    fn exec_run(
        &self,
        current: &Built,
        run: &estiba_frontend::graph::RunStep,
        binds: &BTreeMap<usize, MountSource<'_>>,
        id: usize,
    ) -> Result<Layer> {
        use crate::executor::{self, ExtraMount, RunOptions, RunSpec};
        use estiba_frontend::instructions::MountKind;
        let lower = self.layered(&current.layers)?;
        let upper = self.store.temp_dir("upper")?;
        // The overlay's work dir and the executor's own scratch files.
        let scratch = self.store.temp_dir("run")?;
        let work = scratch.path().join("work");
        std::fs::create_dir(&work).map_err(|source| SolveErrorKind::Io {
            path: work.clone(),
            source,
        })?;
        let mut mounts = Vec::new();
        // Kept until the command has ended, then removed.
        let mut bind_dirs = Vec::new();
        let mut secret_files = Vec::new();
        let mut secret_env = Vec::new();
        for (i, m) in run.mounts.iter().enumerate() {
            let target = m
                .target
                .as_deref()
                .map(|t| absolute_target(t, &run.workdir))
                .unwrap_or_default();
            match m.kind {
                MountKind::Tmpfs => mounts.push(ExtraMount::Tmpfs {
                    target,
                    size: m.size,
                }),
                MountKind::Cache => {
                    // A directory of the store that outlives builds and
                    // never enters a layer; only what it starts from
                    // (`from=`) is in the step's key.
                    let id =
                        m.id.clone()
                            .unwrap_or_else(|| m.target.clone().unwrap_or_default());
                    // BuildKit's cache starts from a directory made with
                    // the mount's uid/gid/mode, or from a path of a stage or
                    // image (`from=`): they are part of its identity, as the
                    // mount's input ref is of BuildKit's cache key
                    // (solver/llbsolver/mounts/mount.go `getRefCacheDir`).
                    let seed = binds.get(&i);
                    let mut identity = format!("{id}\0{:?}\0{:?}\0{:?}", m.uid, m.gid, m.mode);
                    if let Some(seed) = seed {
                        identity.push('\0');
                        identity.push_str(&seed.key);
                    }
                    let dir = self.store.mount_cache_dir(&Digest::of(identity.as_bytes()));
                    if let (Some(seed), false) = (seed, dir.exists()) {
                        self.seed_cache(seed, &target, &dir)?;
                    }
                    if !dir.exists() {
                        // Made once, owned and moded as the mount asks
                        // (BuildKit: uid, gid default 0, mode 0755).
                        let io = |source| SolveErrorKind::Io {
                            path: dir.clone(),
                            source,
                        };
                        let parent = dir.parent().unwrap_or(&dir);
                        std::fs::create_dir_all(parent).map_err(io)?;
                        let fresh = self.store.temp_dir("cache")?;
                        nix::unistd::chown(
                            fresh.path(),
                            Some(m.uid.unwrap_or(0).into()),
                            Some(m.gid.unwrap_or(0).into()),
                        )
                        .map_err(|e| io(e.into()))?;
                        std::fs::set_permissions(
                            fresh.path(),
                            std::os::unix::fs::PermissionsExt::from_mode(m.mode.unwrap_or(0o755)),
                        )
                        .map_err(io)?;
                        // Another build may have made it meanwhile: keep theirs.
                        let made = fresh.keep();
                        if std::fs::rename(&made, &dir).is_err() {
                            let _ = std::fs::remove_dir(&made);
                        }
                    }
                    mounts.push(ExtraMount::Bind {
                        source: dir,
                        target,
                        readonly: false,
                    });
                }
                MountKind::Bind => {
                    let bind = binds.get(&i).ok_or_else(|| SolveErrorKind::CorruptImage {
                        image: "(plan)".to_string(),
                        reason: format!("bind mount at {target} has no source"),
                    })?;
                    let (dir, source) = self.materialize(bind)?;
                    bind_dirs.push(dir);
                    mounts.push(ExtraMount::Bind {
                        source,
                        target,
                        readonly: m.readonly,
                    });
                }
                MountKind::Secret => {
                    let id = secret_id(m);
                    let Some(value) = self.secret_value(&id)? else {
                        if m.required {
                            return Err(SolveErrorKind::SecretNotFound(id));
                        }
                        // Docker skips an optional secret it was not given.
                        continue;
                    };
                    // With only `env=`, BuildKit (0.14+) mounts no file.
                    let target = match (&m.target, &m.env) {
                        (Some(_), _) => Some(target),
                        (None, None) => Some(format!("/run/secrets/{id}")),
                        (None, Some(_)) => None,
                    };
                    if let Some(target) = target {
                        let (file, path) = self.secret_file(&value, m)?;
                        mounts.push(ExtraMount::Bind {
                            source: path,
                            target,
                            readonly: true,
                        });
                        secret_files.push(file);
                    }
                    if let Some(var) = &m.env {
                        secret_env.push(format!("{var}={}", String::from_utf8_lossy(&value)));
                    }
                }
                MountKind::Ssh => return Err(SolveErrorKind::MountUnsupported("ssh")),
            }
        }
        let mut env = run.env.clone();
        env.extend(run.proxy_env.iter().cloned());
        env.extend(secret_env);
        let spec = RunSpec {
            lower: lower.layers().to_vec(),
            upper: upper.path().to_path_buf(),
            work,
            args: run.args.clone(),
            env,
            user: run.user.clone(),
            workdir: run.workdir.clone(),
            network: self.run_network(run),
            hostname: String::new(),
            files: run.files.clone(),
            mounts,
            publish: Vec::new(),
            security: match run.security.as_deref() {
                Some("insecure") => Security::Insecure,
                _ => Security::Sandbox,
            },
            host: self.opts.host.clone(),
            tty: false,
        };
        // Stream whole lines to the reporter; keep the last ones for errors.
        let mut pending = Vec::new();
        let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let emit = |line: &[u8], tail: &mut std::collections::VecDeque<String>| {
            let text = String::from_utf8_lossy(line)
                .trim_end_matches('\r')
                .to_string();
            self.reporter.log(id, &text);
            tail.push_back(text);
            if tail.len() > 10 {
                tail.pop_front();
            }
        };
        let code = executor::run_with(
            &spec,
            &RunOptions {
                tmp_dir: scratch.path().to_path_buf(),
                ..RunOptions::default()
            },
            &mut |_, bytes| {
                pending.extend_from_slice(bytes);
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    emit(&line[..line.len() - 1], &mut tail);
                }
            },
        )?;
        if !pending.is_empty() {
            emit(&pending, &mut tail);
        }
        drop(secret_files);
        drop(bind_dirs);
        if code != 0 {
            let output = if tail.is_empty() {
                String::new()
            } else {
                let lines: Vec<String> = tail.iter().map(|l| format!("\n  | {l}")).collect();
                format!("\n  last output:{}", lines.concat())
            };
            return Err(SolveErrorKind::RunFailed {
                command: run.args.join(" "),
                code,
                output,
            });
        }
        drop(scratch);
        executor::upper_to_layer_dir(upper.path())?;
        self.commit_upper(upper)
    }

    /// Turns a filled upper directory (OCI whiteout form) into a stored
    /// layer, and keeps the directory itself as the layer's snapshot.
    fn commit_upper(&self, upper: TempDir) -> Result<Layer> {
        let mut blob = self.store.blob_writer()?;
        let info = layer::write_layer(
            upper.path(),
            &mut blob,
            &layer::LayerOptions {
                mtime_clamp: self.opts.epoch,
            },
        )?;
        let (digest, size) = blob.commit()?;
        if self.store.snapshot(&info.diff_id).is_none() {
            image::overlay_form(upper.path())?;
            let builder = self.store.snapshot_builder(&info.diff_id)?;
            let target = builder.path().to_path_buf();
            let _ = std::fs::remove_dir(&target);
            std::fs::rename(upper.path(), &target).map_err(|source| SolveErrorKind::Io {
                path: target.clone(),
                source,
            })?;
            // Renamed away: nothing left for the TempDir to remove.
            upper.keep();
            builder.commit()?;
        }
        Ok(Layer {
            descriptor: Descriptor::new(media_type::OCI_LAYER_TAR, digest, size),
            diff_id: info.diff_id,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn exec_copy<'t>(
        &self,
        step: &CopyStep,
        writer: &mut Writer<'t>,
        lower: &LayeredTree,
        tree: &Rc<dyn SourceTree + 't>,
        matches: &[copy::SourceMatch],
        excludes: Option<&Matcher>,
        keep_owners: bool,
    ) -> Result<()> {
        let chown = match &step.chown {
            Some(spec) => Some(resolve_user(lower, spec)?),
            None => None,
        };
        let chmod = match &step.chmod {
            Some(c) => Some(Chmod::parse(c).ok_or_else(|| SolveErrorKind::BadChmod(c.clone()))?),
            None => None,
        };
        writer.set_options(chown, chmod, keep_owners);
        if step.add {
            return self.exec_add(step, writer, tree, matches, excludes);
        }
        writer.copy(tree, matches, &step.dest, excludes)?;
        for c in &step.contents {
            writer.write_file(&step.dest, &c.path, c.data.as_bytes())?;
        }
        Ok(())
    }

    /// ADD: local archives are extracted at the destination, other files
    /// copied as COPY would.
    fn exec_add<'t>(
        &self,
        step: &CopyStep,
        writer: &mut Writer<'t>,
        tree: &Rc<dyn SourceTree + 't>,
        matches: &[copy::SourceMatch],
        excludes: Option<&Matcher>,
    ) -> Result<()> {
        let unpack = step.unpack.unwrap_or(true);
        let mut plain = Vec::new();
        for m in matches {
            let is_file = matches!(
                tree.stat(&m.path)?,
                Some(tree::Meta {
                    kind: tree::EntryKind::File,
                    ..
                })
            );
            if unpack && is_file && copy::is_archive(tree.open(&m.path)?) {
                let extracted = self.store.temp_dir("add")?;
                copy::extract_archive(tree.open(&m.path)?, extracted.path())?;
                writer.add_extracted(extracted, &step.dest)?;
            } else {
                plain.push(m.clone());
            }
        }
        writer.copy(tree, &plain, &step.dest, excludes)?;
        for c in &step.contents {
            writer.write_file(&step.dest, &c.path, c.data.as_bytes())?;
        }
        Ok(())
    }
}

/// The source of one `RUN --mount=type=bind`, or what a cache mount starts
/// from, matched and keyed before the step's key is known.
struct MountSource<'t> {
    /// The context, or a stage's or image's root filesystem.
    tree: Rc<dyn SourceTree + 't>,
    /// `source=` in it.
    matched: copy::SourceMatch,
    /// Files keep their owners (a stage or image) or belong to root (the context).
    keep_owners: bool,
    /// What the step's key takes from it: a bind source's content digest,
    /// a cache seed's stage key or image digest with its path.
    key: String,
}

/// Whether a cache mount starts from a path of a stage or an image
/// (`from=`, at `source=` or the root). With no `source=`, a `uid`, `gid`
/// or `mode` makes BuildKit start from a fresh `/cache` directory instead
/// (dockerfile2llb `convert_runmount.go`, `dispatchRunMounts` and
/// `setCacheUIDGID`); an empty `from=` is scratch there, as no `from=`.
fn cache_is_seeded(m: &estiba_frontend::instructions::Mount) -> bool {
    if m.from.as_deref().is_none_or(str::is_empty) {
        return false;
    }
    let at_root = m
        .source
        .as_deref()
        .is_none_or(|s| tree::clean(s).is_empty());
    !(at_root && (m.uid.is_some() || m.gid.is_some() || m.mode.is_some()))
}

/// A secret mount's id: `id=`, else `source=`, else the target's file name,
/// as BuildKit's Dockerfile frontend picks it.
fn secret_id(m: &estiba_frontend::instructions::Mount) -> String {
    m.id.clone()
        .or_else(|| m.source.clone())
        .or_else(|| {
            m.target
                .as_deref()
                .and_then(|t| t.trim_end_matches('/').rsplit('/').next())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// A mount target: relative ones are relative to the step's WORKDIR.
fn absolute_target(target: &str, workdir: &str) -> String {
    if target.starts_with('/') {
        target.to_string()
    } else {
        let dir = if workdir.is_empty() { "/" } else { workdir };
        format!("{}/{target}", dir.trim_end_matches('/'))
    }
}

/// `--chown` of a step, resolved against the image.
fn writer_chown(lower: &LayeredTree, copy: &CopyStep) -> Result<Option<(u32, u32)>> {
    match &copy.chown {
        Some(spec) => Ok(Some(resolve_user(lower, spec)?)),
        None => Ok(None),
    }
}

/// `user[:group]` into numbers, names looked up in the image's own
/// `/etc/passwd` and `/etc/group` as BuildKit does: a numeric user alone
/// gets the same number as group; a named one its primary group.
pub fn resolve_user(image: &dyn SourceTree, spec: &str) -> Result<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let read = |file: &str| -> Result<String> {
        let path = tree::resolve(image, file, true)?;
        if image.stat(&path)?.is_none() {
            return Ok(String::new());
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut image.open(&path)?, &mut text).map_err(|source| {
            SolveErrorKind::Io {
                path: PathBuf::from(format!("/{file}")),
                source,
            }
        })?;
        Ok(text)
    };
    let (uid, mut gid) = match user.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => {
            let passwd = read("etc/passwd")?;
            passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.first() == Some(&user) && f.len() >= 4)
                .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .ok_or_else(|| SolveErrorKind::UnknownUser {
                    what: "user",
                    name: user.to_string(),
                    file: "/etc/passwd",
                })?
        }
    };
    if let Some(group) = group {
        gid = match group.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let groups = read("etc/group")?;
                groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.first() == Some(&group) && f.len() >= 3)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| SolveErrorKind::UnknownUser {
                        what: "group",
                        name: group.to_string(),
                        file: "/etc/group",
                    })?
            }
        };
    }
    Ok((uid, gid))
}

/// An error and its causes on one line, for progress output.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
