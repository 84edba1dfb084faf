//! The solver: a planned [`BuildGraph`] into images in the store.
//!
//! Every stage starts at once and a step waits only for the stages it reads
//! ([`schedule`]). Each step gets a cache key ([`crate::cachekey`]); a hit reuses the
//! stored layer, a miss executes the step into a fresh upper directory,
//! which becomes the layer (a deterministic tar, stored uncompressed) and,
//! renamed, the layer's snapshot, so later steps and builds read it without
//! unpacking anything. Nothing is cached until its layer is safely stored.

use crate::cachekey::{KeyInputs, KEY_VERSION};
use crate::copy::{self, Chmod, CopyOptions, Writer};
use crate::executor::{HostSettings, Isolation, Network, Security};
use crate::fetch;
use crate::image::{
    self, CacheEntry, History, ImageConfig, ImageError, Images, Layer, RemoteCache, HISTORY_COMMENT,
};
use crate::layer;
use crate::progress::Reporter;
use crate::registry::Reference;
use crate::rootfs::LayeredTree;
use crate::tree::{self, SourceTree};
use estiba_cache::{CacheRecord, Digest, Store, TempDir};
use estiba_frontend::dockerignore::Matcher;
use estiba_frontend::graph::{Base, BuildGraph, CopySource, CopyStep, Op, Stage, Step};
use estiba_frontend::Span;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

mod copy_step;
mod run;
mod schedule;
mod step;

use schedule::{Finished, InFlight};

/// Writes everything to both: a layer's blob and its snapshot's unpacker.
struct Tee<A, B> {
    first: A,
    second: B,
}

impl<A: std::io::Write, B: std::io::Write> std::io::Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.first.write_all(buf)?;
        self.second.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.first.flush()?;
        self.second.flush()
    }
}

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
    /// The thread building a stage panicked (a bug in estiba).
    #[error("building stage {0} panicked")]
    Panicked(String),
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
    /// `build --isolation`: how RUN steps are kept from the host. Not part
    /// of a step's key, as the layer a command writes does not depend on it.
    pub isolation: Isolation,
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
                        Err(SolveErrorKind::Panicked(
                            graph
                                .stages
                                .get(i)
                                .map_or_else(|| format!("stage {i}"), Stage::display_name),
                        )
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
        // A layer a later step or another stage reads is unpacked as it is
        // written (see `exec_diff`); the target's last layers are not.
        let read_by_others = graph
            .needed_stages()
            .any(|s| s.index != stage.index && s.deps.contains(&stage.index));
        for (i, step) in stage.steps.iter().enumerate() {
            let read_later = read_by_others || stage.steps[i + 1..].iter().any(|s| s.layer);
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
                let place = step::Place { id, read_later };
                self.solve_step(graph, stage, step, &current, built, place)
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
        snapshot: bool,
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
        let opts = layer::LayerOptions {
            mtime_clamp: self.opts.epoch,
        };
        if !snapshot {
            let blob = writer.write_layer(self.store.blob_writer()?.in_background(), &opts)?;
            let (digest, size) = blob.commit()?;
            return Ok(Layer::uncompressed(digest, size));
        }
        // A later step reads this layer: its snapshot is unpacked from the
        // tar as the tar is written, from the same reads of the sources and
        // on another core, rather than from the stored blob afterwards.
        let unpacked = self.store.temp_dir("snapshot")?;
        let (blob, tree) = image::unpack_while_writing(unpacked.path(), |out| {
            let mut tee = Tee {
                first: self.store.blob_writer()?.in_background(),
                second: out,
            };
            tee = writer.write_layer(tee, &opts)?;
            Ok::<_, SolveErrorKind>(tee.first)
        })?;
        let (digest, size) = blob.commit()?;
        let layer = Layer::uncompressed(digest, size);
        // Should unpacking have failed, the stored blob is unpacked again
        // when a step needs it, and fails there with its own error.
        if tree.is_ok() && self.store.snapshot(&layer.diff_id).is_none() {
            self.adopt_snapshot(unpacked, &layer.diff_id)?;
        }
        Ok(layer)
    }

    /// Makes the filled directory `dir` the snapshot of `diff_id`.
    fn adopt_snapshot(&self, dir: TempDir, diff_id: &Digest) -> Result<()> {
        let builder = self.store.snapshot_builder(diff_id)?;
        let target = builder.path().to_path_buf();
        let _ = std::fs::remove_dir(&target);
        std::fs::rename(dir.path(), &target).map_err(|source| SolveErrorKind::Io {
            path: target.clone(),
            source,
        })?;
        // Renamed away: nothing left for the TempDir to remove.
        dir.keep();
        builder.commit()?;
        Ok(())
    }

    /// Turns a filled upper directory (as overlayfs left it) into a stored
    /// layer, and keeps the directory itself as the layer's snapshot.
    fn commit_upper(&self, upper: TempDir) -> Result<Layer> {
        let opts = layer::LayerOptions {
            mtime_clamp: self.opts.epoch,
        };
        // Written and hashed on another core while the walk goes on.
        let blob = self.store.blob_writer()?.in_background();
        let blob = if image::snapshots_in_overlay_form() {
            layer::write_upper_layer(upper.path(), blob, &opts)?
        } else {
            crate::executor::upper_to_layer_dir(upper.path())?;
            layer::write_layer(upper.path(), blob, &opts)?
        };
        let (digest, size) = blob.commit()?;
        let layer = Layer::uncompressed(digest, size);
        if self.store.snapshot(&layer.diff_id).is_none() {
            self.adopt_snapshot(upper, &layer.diff_id)?;
        }
        Ok(layer)
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
