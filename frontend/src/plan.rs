//! Typed instructions into a [`BuildGraph`]: stages, ARG/ENV scoping,
//! variable expansion, ONBUILD triggers, pruning and the image config.
//!
//! The rules follow BuildKit's `dockerfile2llb` so that a Dockerfile means
//! here what it means to `docker build`:
//! - global ARGs (before the first FROM) are visible only in FROM lines, and
//!   inside a stage once re-declared by a bare `ARG name`;
//! - `--build-arg` overrides a declared ARG's default; undeclared build args
//!   are unused (a warning), except the predefined proxy and platform args;
//! - ENV and ARG values are expanded in ADD, COPY, ENV, EXPOSE, LABEL, USER,
//!   VOLUME, WORKDIR, STOPSIGNAL, ARG defaults, FROM (global args only) and
//!   RUN `--mount` values; never in RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK
//!   commands, which the shell in the container expands;
//! - only the stages the target reaches (through bases, `COPY --from`, mount
//!   `from=` and ONBUILD triggers) have their base image resolved and their
//!   instructions lowered; the others are kept, pruned, with no steps, and
//!   their errors do not fail the build. FROM lines, `--from` values and
//!   dependency cycles are checked in every stage, as BuildKit checks them;
//! - a stage built on a stage starts with everything that stage ends with:
//!   config, environment (ARG values included) and declared ARGs;
//! - one lower-level function per instruction (`lower_copy`, `lower_run`, ...).

use crate::graph::{
    Base, BuildGraph, CopySource, CopyStep, ImageConfig, Op, Platform, RunStep, Stage, Step,
    Warning,
};
use crate::instructions::{self, Instruction, InstructionErrorKind, Kind};
use crate::shell::{Env, Lexer, ShellError};
use crate::span::Span;
use crate::suggest;
use std::collections::{BTreeMap, BTreeSet};

/// The default `PATH` BuildKit gives a stage whose image has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Build arguments docker passes to RUN without an ARG declaring them, and
/// never records in the image.
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// ARGs that steer BuildKit itself and never reach a RUN's environment.
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// A planning failure.
#[derive(Debug)]
pub struct PlanError {
    /// The instruction it concerns, when there is one.
    pub span: Option<Span>,
    /// What went wrong (boxed: errors are rare, results are many).
    pub kind: Box<PlanErrorKind>,
}

/// What made a Dockerfile unplannable.
#[derive(Debug, thiserror::Error)]
pub enum PlanErrorKind {
    /// Only ARGs, no FROM.
    #[error("the Dockerfile has no FROM: there is no stage to build")]
    NoStages,
    /// An instruction before the first FROM that is not ARG.
    #[error("{0} before the first FROM: only ARG may come before FROM")]
    BeforeFrom(String),
    /// A variable could not be expanded.
    #[error("cannot expand {word:?}")]
    Expansion {
        /// The word.
        word: String,
        /// Why.
        #[source]
        source: ShellError,
    },
    /// FROM expanded to nothing.
    #[error("base name ({0}) should not be blank")]
    BlankBase(String),
    /// `--platform` not of the form os/arch.
    #[error("invalid platform: expected os/arch[/variant], like linux/amd64")]
    BadPlatform(#[source] crate::graph::PlatformError),
    /// `--target` names no stage.
    #[error("target stage {name:?} could not be found{}", hint(.suggestion))]
    NoSuchTarget {
        /// The name given.
        name: String,
        /// The nearest stage name.
        suggestion: Option<String>,
    },
    /// `RUN --mount=from=NAME` where NAME is a local `--build-context`.
    #[error("RUN --mount from={0}: a local --build-context cannot be mounted yet; use it with COPY --from={0}")]
    LocalContextMount(String),
    /// `COPY --from=$X`.
    #[error("variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround")]
    FromExpansion,
    /// `COPY --from=3` with fewer stages.
    #[error("invalid stage index {index}: the Dockerfile has stages 0 to {last}")]
    BadStageIndex {
        /// The index given.
        index: i64,
        /// The last stage's index.
        last: usize,
    },
    /// `COPY --from=later` or `FROM` a stage that is not defined yet.
    #[error(
        "cannot copy from stage {from:?}, it needs to be defined before current stage {current:?}"
    )]
    StageOrder {
        /// The stage named.
        from: String,
        /// The stage doing the copy.
        current: String,
    },
    /// `RUN --mount=from=later` with a stage defined after this one.
    #[error("cannot mount from stage {from:?} to {target:?}, stage needs to be defined before current command")]
    MountOrder {
        /// The stage named.
        from: String,
        /// The mount's target.
        target: String,
    },
    /// A stage that reads itself, directly or through other stages.
    #[error("circular dependency detected on stage: {0}")]
    CircularDependency(String),
    /// A problem in an instruction found once its arguments were expanded.
    #[error(transparent)]
    Instruction(#[from] InstructionErrorKind),
    /// `EXPOSE 80-` and the like.
    #[error("invalid port {port:?}: {reason}")]
    BadPort {
        /// The port spec.
        port: String,
        /// Why.
        reason: String,
    },
    /// `COPY --chmod=999`.
    #[error("invalid chmod parameter: '{0}'. it should be octal string and between 0 and 07777")]
    BadChmod(String),
    /// `STOPSIGNAL SIGFOO`.
    #[error("invalid signal: {0}")]
    BadSignal(String),
    /// A base image could not be looked up (its registry refused, say).
    #[error("cannot resolve {reference}")]
    BaseImage {
        /// The reference as the FROM line expands to.
        reference: String,
        /// Why.
        #[source]
        source: ResolveError,
    },
    /// A base image's ONBUILD trigger that does not parse.
    #[error("invalid ONBUILD trigger {trigger:?} of the base image")]
    BadTrigger {
        /// The trigger text.
        trigger: String,
        /// Why.
        #[source]
        source: Box<crate::Error>,
    },
    /// A base image's ONBUILD trigger that holds more than one instruction.
    #[error("onbuild trigger should be a single expression: {0:?}")]
    TriggerNotSingle(String),
    /// A heredoc RUN that did not lower to one command.
    #[error("parsing produced an invalid run command: {0:?}")]
    BadHeredocRun(Vec<String>),
}

fn hint(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default()
}

/// What the builder knows about a base image.
#[derive(Debug, Clone, Default)]
pub struct BaseImage {
    /// The manifest digest, which cache keys use instead of the tag.
    pub digest: Option<String>,
    /// Its config.
    pub config: ImageConfig,
    /// Its platform, when known.
    pub platform: Option<Platform>,
}

/// Looks up base images (the local store, a registry). The frontend does no
/// I/O: this is how it learns a base image's ENV, WORKDIR, USER and ONBUILD.
pub trait BaseResolver {
    /// The image for `reference` on `platform`, or `None` when unknown (the
    /// plan then starts from an empty config; the builder fails later if the
    /// image truly does not exist). An error (a registry that refuses, a
    /// corrupt image) fails the plan at the FROM line.
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<BaseImage>, ResolveError>;
}

/// Why a resolver could not look a base image up.
pub type ResolveError = Box<dyn std::error::Error + Send + Sync>;

/// A resolver that knows no image: for `--dry-run` without a store, and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoImages;

impl BaseResolver for NoImages {
    fn resolve(&self, _: &str, _: &Platform) -> Result<Option<BaseImage>, ResolveError> {
        Ok(None)
    }
}

/// Everything a build is planned with besides the Dockerfile.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The Dockerfile's name, for spans.
    pub file: String,
    /// `--build-arg`s, already resolved (`--build-arg K` takes K from the
    /// environment, which the CLI does).
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// The platform images are built for.
    pub platform: Platform,
    /// The platform the build runs on.
    pub build_platform: Platform,
    /// `--label`s, added to the target's config.
    pub labels: BTreeMap<String, String>,
    /// `--build-context NAME=…`, by [`named_context_key`]: what `FROM NAME`,
    /// `COPY --from=NAME` and `RUN --mount=from=NAME` read instead of an
    /// image of that name.
    pub named_contexts: BTreeMap<String, NamedContext>,
}

/// What a `--build-context` name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// `docker-image://REF`: that image, as if the Dockerfile named it.
    Image(String),
    /// A local directory, read as the build context is.
    Local,
}

/// The name a `--build-context` and a Dockerfile's image name are matched
/// by, as BuildKit's `dockerui` matches them: the familiar form without
/// `:latest` (`docker.io/library/alpine:latest` and `alpine` are one name).
pub fn named_context_key(name: &str) -> String {
    let name = name.trim();
    let name = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("index.docker.io/library/"))
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    name.strip_suffix(":latest").unwrap_or(name).to_string()
}

impl PlanOptions {
    /// Options for a plain build of `file` on this host.
    pub fn new(file: &str) -> Self {
        PlanOptions {
            file: file.to_string(),
            build_args: BTreeMap::new(),
            target: None,
            platform: Platform::host(),
            build_platform: Platform::host(),
            labels: BTreeMap::new(),
            named_contexts: BTreeMap::new(),
        }
    }

    /// The `--build-context` that `name` (an image name as the Dockerfile
    /// writes it) stands for.
    fn named_context(&self, name: &str) -> Option<&NamedContext> {
        if self.named_contexts.is_empty() {
            return None;
        }
        self.named_contexts.get(&named_context_key(name))
    }
}

/// An ordered environment as an LLB state's env list behaves: every write
/// appends, so a variable set again moves to the end (the image config's
/// `Env`, by contrast, replaces in place).
#[derive(Debug, Clone, Default)]
pub(crate) struct EnvList(Vec<(String, String)>);

impl EnvList {
    pub(crate) fn set(&mut self, key: &str, value: &str) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), value.to_string()));
    }
    /// The names set, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

impl Env for EnvList {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// A stage as read from the Dockerfile, before lowering.
struct RawStage {
    from: Instruction,
    base_word: String,
    name: Option<String>,
    platform: Option<String>,
    commands: Vec<Instruction>,
}

impl RawStage {
    /// `name` or `stage-N`, as BuildKit names a stage in its errors.
    fn display_name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"))
    }
}

/// What a stage starts with: its base image's config, or everything a base
/// stage ends with (BuildKit's `dispatchState.init` copies the whole LLB
/// state, so ARG values and declarations carry over too).
#[derive(Debug, Clone, Default)]
struct Start {
    config: ImageConfig,
    author: Option<String>,
    env: EnvList,
    args: Vec<(String, Option<String>)>,
}

/// A reachable stage's base once looked up, and the ONBUILD triggers that run
/// before its own instructions.
struct Resolved {
    config: ImageConfig,
    digest: Option<String>,
    triggers: Vec<Instruction>,
    /// The base image's platform, when it is not the stage's.
    mismatch: Option<Warning>,
}

/// Every stage's FROM line, lowered.
struct Froms {
    /// Stage names, each to the latest stage so named.
    names: BTreeMap<String, usize>,
    /// What each stage starts from.
    bases: Vec<Base>,
    /// Each stage's platform.
    platforms: Vec<Platform>,
}

/// A stage another one reads (base, `COPY --from`, `--mount from=`), with the
/// instruction that reads it.
type Edge = (usize, Span);

/// Plans a Dockerfile.
pub fn plan(
    text: &str,
    opts: &PlanOptions,
    resolver: &dyn BaseResolver,
) -> Result<BuildGraph, crate::Error> {
    let parsed = crate::parser::parse(&opts.file, text)?;
    let instructions = instructions::parse_all(&parsed)?;
    let mut planner = Planner::new(opts, resolver, Lexer::new(parsed.escape));
    for w in &parsed.warnings {
        planner.warnings.push(Warning {
            span: Some(w.span.clone()),
            message: w.message.clone(),
        });
    }
    let mut graph = planner.run(instructions)?;
    graph.directives = parsed.directives;
    Ok(graph)
}

struct Planner<'a> {
    opts: &'a PlanOptions,
    resolver: &'a dyn BaseResolver,
    lexer: Lexer,
    global: EnvList,
    declared: BTreeSet<String>,
    warnings: Vec<Warning>,
}

fn err(span: &Span, kind: PlanErrorKind) -> PlanError {
    PlanError {
        span: Some(span.clone()),
        kind: Box::new(kind),
    }
}

/// The state of a stage while its instructions are lowered.
struct StageState {
    config: ImageConfig,
    author: Option<String>,
    /// ENV and ARG values, for expansion and RUN.
    env: EnvList,
    /// ARGs declared in this stage, in order, with their values.
    args: Vec<(String, Option<String>)>,
    cmd_set: bool,
    steps: Vec<Step>,
    platform: Platform,
}

impl<'a> Planner<'a> {
    fn new(opts: &'a PlanOptions, resolver: &'a dyn BaseResolver, lexer: Lexer) -> Self {
        Planner {
            opts,
            resolver,
            lexer,
            global: EnvList::default(),
            declared: BTreeSet::new(),
            warnings: Vec::new(),
        }
    }

    fn expand(&self, word: &str, env: &dyn Env, span: &Span) -> Result<String, PlanError> {
        self.lexer.expand_word(word, env).map_err(|source| {
            err(
                span,
                PlanErrorKind::Expansion {
                    word: word.to_string(),
                    source,
                },
            )
        })
    }

    fn run(mut self, instructions: Vec<Instruction>) -> Result<BuildGraph, PlanError> {
        let (meta_args, raw) = split_stages(instructions)?;
        // A build arg is used when any ARG of the Dockerfile declares it,
        // in a stage the target needs or not.
        let all_commands = raw.iter().flat_map(|s| s.commands.iter());
        for ins in meta_args.iter().chain(all_commands) {
            if let Kind::Arg(decls) = &ins.kind {
                self.declared.extend(decls.iter().map(|d| d.key.clone()));
            }
        }

        let target_name = match &self.opts.target {
            Some(t) => t.clone(),
            None => raw.last().and_then(|s| s.name.clone()).unwrap_or_default(),
        };
        self.global = self.predefined_args(&target_name);
        for ins in &meta_args {
            self.lower_meta_arg(ins)?;
        }

        let count = raw.len();
        let Froms {
            names,
            bases,
            platforms,
        } = self.lower_froms(&raw)?;
        let target = match &self.opts.target {
            None => count - 1,
            Some(t) => *names
                .get(&t.to_ascii_lowercase())
                .ok_or_else(|| PlanError {
                    span: None,
                    kind: Box::new(PlanErrorKind::NoSuchTarget {
                        name: t.clone(),
                        suggestion: suggest::nearest(t, names.keys().map(String::as_str))
                            .map(str::to_string),
                    }),
                })?,
        };

        let mut edges = self.stage_edges(&raw, &bases, &names)?;
        check_cycles(&raw, &edges)?;

        let (reachable, resolved) =
            self.resolve_reachable(&raw, target, &bases, &platforms, &names, &mut edges)?;

        let mut stages: Vec<Stage> = Vec::with_capacity(count);
        let mut ends: Vec<Option<Start>> = Vec::with_capacity(count);
        for (i, (stage, found)) in raw.into_iter().zip(resolved).enumerate() {
            let base = bases[i].clone();
            let platform = platforms[i].clone();
            let Some(mut found) = found.filter(|_| reachable[i]) else {
                // Pruned: never resolved nor lowered, like BuildKit, so its
                // errors (and its base image) cost the build nothing.
                stages.push(Stage {
                    index: i,
                    name: stage.name,
                    span: stage.from.span,
                    base,
                    platform,
                    needed: false,
                    deps: edges[i].iter().map(|(d, _)| *d).collect(),
                    steps: Vec::new(),
                    config: ImageConfig::default(),
                    author: None,
                });
                ends.push(None);
                continue;
            };
            self.warnings.extend(found.mismatch.take());
            let (base, start) = match base {
                Base::Stage { index } => {
                    let start = ends.get(index).cloned().flatten().unwrap_or_default();
                    (Base::Stage { index }, start)
                }
                Base::Image { reference, .. } => (
                    Base::Image {
                        reference,
                        digest: found.digest,
                    },
                    Start {
                        config: found.config,
                        ..Start::default()
                    },
                ),
                Base::Scratch => (
                    Base::Scratch,
                    Start {
                        config: found.config,
                        ..Start::default()
                    },
                ),
            };
            let ctx = StepContext {
                names: &names,
                index: i,
                count,
                current: &stage.display_name(i),
            };
            let (mut lowered, end) =
                self.lower_stage(stage, base, platform, start, found.triggers, &ctx)?;
            lowered.needed = true;
            stages.push(lowered);
            ends.push(Some(end));
        }

        let target_stage = &mut stages[target];
        for (k, v) in &self.opts.labels {
            target_stage.config.labels.insert(k.clone(), v.clone());
        }

        self.warn_unused_build_args();

        Ok(BuildGraph {
            stages,
            target,
            directives: BTreeMap::new(),
            warnings: self.warnings,
        })
    }

    /// Every stage's FROM line, expanded with global args only, and the stage
    /// names. A base names a stage when it is, as written, the name of an
    /// earlier one; a repeated name is a warning, and lookups find the latest
    /// stage so named.
    fn lower_froms(&mut self, raw: &[RawStage]) -> Result<Froms, PlanError> {
        let count = raw.len();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut bases = Vec::with_capacity(count);
        let mut platforms: Vec<Platform> = Vec::with_capacity(count);
        for (i, stage) in raw.iter().enumerate() {
            let (base, platform) = self.lower_from(stage, &names, &platforms)?;
            bases.push(base);
            platforms.push(platform);
            if let Some(name) = &stage.name {
                if names.insert(name.clone(), i).is_some() {
                    self.warnings.push(Warning {
                        span: Some(stage.from.span.clone()),
                        message: format!(
                            "Duplicate stage name {name:?}, stage names should be unique"
                        ),
                    });
                }
            }
        }
        Ok(Froms {
            names,
            bases,
            platforms,
        })
    }

    /// What every stage reads (base stage, `COPY --from`, mounts), known
    /// before anything is lowered.
    fn stage_edges(
        &self,
        raw: &[RawStage],
        bases: &[Base],
        names: &BTreeMap<String, usize>,
    ) -> Result<Vec<Vec<Edge>>, PlanError> {
        let count = raw.len();
        let mut edges: Vec<Vec<Edge>> = Vec::with_capacity(count);
        for (i, stage) in raw.iter().enumerate() {
            let mut out = Vec::new();
            if let Base::Stage { index } = bases[i] {
                out.push((index, stage.from.span.clone()));
            }
            for ins in &stage.commands {
                out.extend(stages_read(&self.lexer, ins, names, count)?);
            }
            edges.push(out);
        }
        Ok(edges)
    }

    /// A FROM line: its base expanded with the global args, and the platform
    /// (a stage built on a stage has that stage's platform, whatever its own
    /// `--platform` says).
    fn lower_from(
        &self,
        stage: &RawStage,
        names: &BTreeMap<String, usize>,
        platforms: &[Platform],
    ) -> Result<(Base, Platform), PlanError> {
        let span = &stage.from.span;
        let base = self.expand(&stage.base_word, &self.global, span)?;
        if base.is_empty() {
            return Err(err(span, PlanErrorKind::BlankBase(stage.base_word.clone())));
        }
        let platform = match &stage.platform {
            Some(p) => {
                let text = self.expand(p, &self.global, span)?;
                Platform::parse(&text).map_err(|e| err(span, PlanErrorKind::BadPlatform(e)))?
            }
            None => self.opts.platform.clone(),
        };
        Ok(match names.get(&base) {
            Some(&index) => (
                Base::Stage { index },
                platforms.get(index).cloned().unwrap_or(platform),
            ),
            None if base == "scratch" => (Base::Scratch, platform),
            None => match self.opts.named_context(&base) {
                // Its files become the stage's first layer ([`Self::lower_stage`]).
                Some(NamedContext::Local) => (Base::Scratch, platform),
                Some(NamedContext::Image(reference)) => (
                    Base::Image {
                        reference: reference.clone(),
                        digest: None,
                    },
                    platform,
                ),
                None => (
                    Base::Image {
                        reference: base,
                        digest: None,
                    },
                    platform,
                ),
            },
        })
    }

    /// Resolves the bases of the stages the target reaches, and only those,
    /// as BuildKit dispatches only those. ONBUILD triggers, known once a base
    /// is resolved, can read more stages: repeat until no more are reached.
    fn resolve_reachable(
        &self,
        raw: &[RawStage],
        target: usize,
        bases: &[Base],
        platforms: &[Platform],
        names: &BTreeMap<String, usize>,
        edges: &mut [Vec<Edge>],
    ) -> Result<(Vec<bool>, Vec<Option<Resolved>>), PlanError> {
        let count = raw.len();
        let mut resolved: Vec<Option<Resolved>> = (0..count).map(|_| None).collect();
        loop {
            let reachable = reachable_from(target, edges);
            let mut grew = false;
            for i in (0..count).filter(|&i| reachable[i]) {
                if resolved[i].is_some() {
                    continue;
                }
                let found = self.resolve(raw, i, &bases[i], &platforms[i])?;
                for ins in &found.triggers {
                    let read = stages_read(&self.lexer, ins, names, count)?;
                    grew |= read.iter().any(|(d, _)| !reachable[*d]);
                    edges[i].extend(read);
                }
                resolved[i] = Some(found);
            }
            if !grew {
                return Ok((reachable, resolved));
            }
        }
    }

    /// Looks up a reachable stage's base image and parses the ONBUILD
    /// triggers it runs first: the image's, or the base stage's own ONBUILD
    /// instructions (a stage's inherited triggers never fire twice).
    fn resolve(
        &self,
        raw: &[RawStage],
        i: usize,
        base: &Base,
        platform: &Platform,
    ) -> Result<Resolved, PlanError> {
        let span = &raw[i].from.span;
        let mut mismatch = None;
        let (config, digest, texts) = match base {
            // BuildKit's empty image has WorkingDir "/".
            Base::Scratch => (
                ImageConfig {
                    working_dir: "/".to_string(),
                    ..ImageConfig::default()
                },
                None,
                Vec::new(),
            ),
            Base::Image { reference, .. } => match self
                .resolver
                .resolve(reference, platform)
                .map_err(|source| {
                    err(
                        span,
                        PlanErrorKind::BaseImage {
                            reference: reference.clone(),
                            source,
                        },
                    )
                })? {
                Some(image) => {
                    mismatch = image
                        .platform
                        .as_ref()
                        .and_then(|actual| platform_mismatch(reference, platform, actual))
                        .map(|message| Warning {
                            span: Some(span.clone()),
                            message,
                        });
                    let mut config = image.config;
                    let triggers = std::mem::take(&mut config.on_build);
                    (config, image.digest, triggers)
                }
                None => (ImageConfig::default(), None, Vec::new()),
            },
            Base::Stage { index } => {
                let triggers = raw[*index]
                    .commands
                    .iter()
                    .filter_map(|c| match &c.kind {
                        Kind::Onbuild(expression) => Some(expression.clone()),
                        _ => None,
                    })
                    .collect();
                (ImageConfig::default(), None, triggers)
            }
        };
        let mut triggers = Vec::with_capacity(texts.len());
        for trigger in texts {
            let parsed = instructions::parse_text(&self.opts.file, &trigger).map_err(|e| {
                err(
                    span,
                    PlanErrorKind::BadTrigger {
                        trigger: trigger.clone(),
                        source: Box::new(e),
                    },
                )
            })?;
            let [mut ins] = <[Instruction; 1]>::try_from(parsed)
                .map_err(|_| err(span, PlanErrorKind::TriggerNotSingle(trigger.clone())))?;
            ins.span = span.clone();
            triggers.push(ins);
        }
        Ok(Resolved {
            config,
            digest,
            triggers,
            mismatch,
        })
    }

    /// Warns about `--build-arg`s no ARG of the Dockerfile declares (proxy
    /// and platform args are always consumed), as `docker build` does.
    fn warn_unused_build_args(&mut self) {
        let unused: Vec<&String> = self
            .opts
            .build_args
            .keys()
            .filter(|k| !self.declared.contains(*k) && !is_predefined(k))
            .collect();
        if !unused.is_empty() {
            let list: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            self.warnings.push(Warning {
                span: None,
                message: format!(
                    "one or more build args were not consumed: [{}]",
                    list.join(" ")
                ),
            });
        }
    }

    /// TARGETPLATFORM and friends, overridable by `--build-arg`.
    fn predefined_args(&self, target: &str) -> EnvList {
        let mut env = EnvList::default();
        for (k, v) in predefined_args(self.opts, target) {
            env.set(k, &v);
        }
        env
    }

    /// A global ARG: its value (build arg, else expanded default) is visible
    /// to FROM lines and to stages that re-declare it.
    fn lower_meta_arg(&mut self, ins: &Instruction) -> Result<(), PlanError> {
        let Kind::Arg(decls) = &ins.kind else {
            return Ok(());
        };
        for decl in decls {
            self.declared.insert(decl.key.clone());
            let value = match (self.opts.build_args.get(&decl.key), &decl.value) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => Some(self.expand(default, &self.global, &ins.span)?),
                (None, None) => None,
            };
            if let Some(v) = value {
                self.global.set(&decl.key, &v);
            }
        }
        Ok(())
    }

    /// Lowers a stage the target needs: its base's config and state, then
    /// the ONBUILD triggers, then its own instructions. Returns the stage and
    /// what a stage built on it starts with.
    fn lower_stage(
        &mut self,
        raw: RawStage,
        base: Base,
        platform: Platform,
        start: Start,
        triggers: Vec<Instruction>,
        ctx: &StepContext<'_>,
    ) -> Result<(Stage, Start), PlanError> {
        let span = raw.from.span.clone();
        let mut config = start.config;
        // A base stage's ONBUILD fired as `triggers`; it goes no further.
        config.on_build.clear();
        if !config.working_dir.is_empty() {
            config.working_dir = normalize_workdir("", &config.working_dir);
        }
        if config.env_value("PATH").is_none() {
            config.env.push(format!("PATH={DEFAULT_PATH}"));
        }
        // BuildKit adds the config's ENV to the state it starts from (empty
        // for an image, the base stage's state otherwise).
        let mut env = start.env;
        for kv in &config.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            env.set(k, v);
        }
        let mut state = StageState {
            config,
            author: start.author,
            env,
            args: start.args,
            cmd_set: false,
            steps: Vec::new(),
            platform,
        };
        let mut deps = BTreeSet::new();
        if let Base::Stage { index } = &base {
            deps.insert(*index);
        }
        // `FROM NAME` of a local `--build-context`: BuildKit's base is that
        // directory's tree (`llb.Local`) with an empty config; here, a
        // scratch stage whose first layer is a copy of it, owned by root as
        // every local source is.
        if base == Base::Scratch {
            let word = self.expand(&raw.base_word, &self.global, &span)?;
            if let Some(NamedContext::Local) = self.opts.named_context(&word) {
                let name = named_context_key(&word);
                state.steps.push(Step {
                    span: span.clone(),
                    instruction: format!("FROM {word}"),
                    created_by: format!("COPY --from={name} . / # buildkit"),
                    layer: true,
                    on_build: false,
                    needs: BTreeSet::new(),
                    op: Op::Copy(CopyStep {
                        add: false,
                        from: CopySource::Named { name },
                        sources: vec![".".to_string()],
                        contents: Vec::new(),
                        dest: "/".to_string(),
                        chown: None,
                        chmod: None,
                        link: false,
                        parents: false,
                        excludes: Vec::new(),
                        checksum: None,
                        keep_git_dir: None,
                        unpack: None,
                        user: String::new(),
                    }),
                });
            }
        }

        let commands = triggers
            .into_iter()
            .map(|c| (c, true))
            .chain(raw.commands.into_iter().map(|c| (c, false)));
        for (ins, on_build) in commands {
            if let Some(mut step) = self.lower(&mut state, &ins, ctx)? {
                step.on_build = on_build;
                deps.extend(step.needs.iter().copied());
                state.steps.push(step);
            }
        }

        let end = Start {
            config: state.config.clone(),
            author: state.author.clone(),
            env: state.env,
            args: state.args,
        };
        let stage = Stage {
            index: ctx.index,
            name: raw.name,
            span,
            base,
            platform: state.platform,
            needed: false,
            deps,
            steps: state.steps,
            config: state.config,
            author: state.author,
        };
        Ok((stage, end))
    }

    /// Lowers one instruction; `None` for those that leave no step (ONBUILD).
    fn lower(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        ctx: &StepContext<'_>,
    ) -> Result<Option<Step>, PlanError> {
        let step = |created_by: String, layer: bool, op: Op| Step {
            span: ins.span.clone(),
            instruction: ins.original.trim().to_string(),
            created_by,
            layer,
            on_build: false,
            needs: BTreeSet::new(),
            op,
        };
        let config_step = |created_by: String| Some(step(created_by, false, Op::Config));
        let span = &ins.span;
        Ok(match &ins.kind {
            Kind::From(_) => None,
            Kind::Arg(decls) => config_step(self.lower_arg(st, decls, span)?),
            Kind::Env(pairs) => {
                let mut expanded = Vec::with_capacity(pairs.len());
                for kv in pairs {
                    let key = self.expand(&kv.key, &st.env, span)?;
                    let value = self.expand(&kv.value, &st.env, span)?;
                    expanded.push((key, value));
                }
                let mut msg = String::from("ENV");
                for (k, v) in &expanded {
                    msg.push_str(&format!(" {k}={v}"));
                    st.env.set(k, v);
                    st.config.set_env(k, v);
                }
                config_step(msg)
            }
            Kind::Label(pairs) => {
                let mut msg = String::from("LABEL");
                for kv in pairs {
                    let key = self.expand(&kv.key, &st.env, span)?;
                    let value = self.expand(&kv.value, &st.env, span)?;
                    msg.push_str(&format!(" {key}={value}"));
                    st.config.labels.insert(key, value);
                }
                config_step(msg)
            }
            Kind::Maintainer(who) => {
                st.author = Some(who.clone());
                config_step(format!("MAINTAINER {who}"))
            }
            Kind::Cmd(cmd) => {
                let args = with_shell(&st.config, cmd);
                let msg = format!("CMD {}", go_quote_list(&args));
                st.config.cmd = Some(args);
                st.config.args_escaped = true;
                st.cmd_set = true;
                config_step(msg)
            }
            Kind::Entrypoint(cmd) => {
                let args = if cmd.args.is_empty() && !cmd.shell_form {
                    Vec::new()
                } else {
                    with_shell(&st.config, cmd)
                };
                let msg = format!("ENTRYPOINT {}", go_quote_list(&args));
                st.config.entrypoint = if args.is_empty() { None } else { Some(args) };
                if !st.cmd_set {
                    st.config.cmd = None;
                }
                config_step(msg)
            }
            Kind::Shell(shell) => {
                st.config.shell = Some(shell.clone());
                config_step(format!("SHELL [{}]", shell.join(" ")))
            }
            Kind::Healthcheck(h) => {
                let msg = format!(
                    "HEALTHCHECK {{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
                    h.test.join(" "),
                    go_duration(h.interval),
                    go_duration(h.timeout),
                    go_duration(h.start_period),
                    go_duration(h.start_interval),
                    h.retries
                );
                st.config.healthcheck = Some(h.clone());
                config_step(msg)
            }
            Kind::Expose(ports) => {
                let mut specs = Vec::new();
                for p in ports {
                    let words = self.lexer.expand_words(p, &st.env).map_err(|source| {
                        err(
                            span,
                            PlanErrorKind::Expansion {
                                word: p.clone(),
                                source,
                            },
                        )
                    })?;
                    for w in words {
                        specs.extend(parse_port(&w).map_err(|reason| {
                            err(
                                span,
                                PlanErrorKind::BadPort {
                                    port: w.clone(),
                                    reason,
                                },
                            )
                        })?);
                    }
                }
                let msg = format!("EXPOSE [{}]", specs.join(" "));
                st.config.exposed_ports.extend(specs);
                config_step(msg)
            }
            Kind::User(user) => {
                let user = self.expand(user, &st.env, span)?;
                st.config.user = user.clone();
                config_step(format!("USER {user}"))
            }
            Kind::Volume(volumes) => {
                let mut expanded = Vec::new();
                for v in volumes {
                    let v = self.expand(v, &st.env, span)?;
                    if v.is_empty() {
                        return Err(err(span, InstructionErrorKind::EmptyVolume.into()));
                    }
                    expanded.push(v);
                }
                let msg = format!("VOLUME [{}]", expanded.join(" "));
                st.config.volumes.extend(expanded);
                config_step(msg)
            }
            Kind::Stopsignal(sig) => {
                let sig = self.expand(sig, &st.env, span)?;
                if !is_signal(&sig) {
                    return Err(err(span, PlanErrorKind::BadSignal(sig)));
                }
                st.config.stop_signal = Some(sig.clone());
                config_step(format!("STOPSIGNAL {sig}"))
            }
            Kind::Onbuild(expr) => {
                st.config.on_build.push(expr.clone());
                None
            }
            Kind::Workdir(path) => {
                let path = self.expand(path, &st.env, span)?;
                let wd = normalize_workdir(&st.config.working_dir, &path);
                st.config.working_dir = wd.clone();
                let layer = wd != "/";
                Some(step(
                    format!("WORKDIR {wd}"),
                    layer,
                    Op::Workdir {
                        path: wd,
                        user: st.config.user.clone(),
                    },
                ))
            }
            Kind::Copy(c) => {
                let (copy, created_by, needs) = self.lower_copy(st, c, span, ctx)?;
                let mut s = step(created_by, true, Op::Copy(copy));
                s.needs = needs;
                Some(s)
            }
            Kind::Add(a) => {
                let (copy, created_by) = self.lower_add(st, a, span)?;
                Some(step(created_by, true, Op::Copy(copy)))
            }
            Kind::Run(r) => {
                let (run, created_by, needs) = self.lower_run(st, r, span, ctx)?;
                let mut s = step(created_by, true, Op::Run(run));
                s.needs = needs;
                Some(s)
            }
        })
    }

    /// ARG inside a stage: build arg, else its default expanded, else the
    /// global ARG of that name; the value joins the environment of later
    /// steps (not the image).
    fn lower_arg(
        &mut self,
        st: &mut StageState,
        decls: &[instructions::ArgDecl],
        span: &Span,
    ) -> Result<String, PlanError> {
        let mut parts = Vec::with_capacity(decls.len());
        for decl in decls {
            self.declared.insert(decl.key.clone());
            let value = if let Some(v) = self.opts.build_args.get(&decl.key) {
                Some(v.clone())
            } else if let Some(default) = &decl.value {
                Some(self.expand(default, &st.env, span)?)
            } else {
                self.global.get(&decl.key).map(str::to_string)
            };
            match &value {
                Some(v) if !NON_ENV_ARGS.contains(&decl.key.as_str()) => st.env.set(&decl.key, v),
                _ => {}
            }
            parts.push(match &value {
                Some(v) => format!("{}={v}", decl.key),
                None => decl.key.clone(),
            });
            st.args.push((decl.key.clone(), value));
        }
        Ok(format!("ARG {}", parts.join(" ")))
    }

    fn lower_files(
        &self,
        st: &StageState,
        files: &instructions::Files,
        span: &Span,
    ) -> Result<(Vec<String>, Vec<instructions::SourceContent>, String), PlanError> {
        let mut sources = Vec::with_capacity(files.sources.len());
        for s in &files.sources {
            sources.push(self.expand(s, &st.env, span)?);
        }
        let raw = Lexer::new('\\').skip_process_quotes(true);
        let mut contents = files.contents.clone();
        for c in &mut contents {
            if c.expand {
                c.data = raw.expand_word(&c.data, &st.env).map_err(|source| {
                    err(
                        span,
                        PlanErrorKind::Expansion {
                            word: c.path.clone(),
                            source,
                        },
                    )
                })?;
            }
        }
        let dest = self.expand(&files.dest, &st.env, span)?;
        Ok((sources, contents, dest))
    }

    fn copy_message(
        what: &str,
        parents: bool,
        chown: &Option<String>,
        chmod: &Option<String>,
        sources: &[String],
        contents: &[instructions::SourceContent],
        dest: &str,
    ) -> String {
        let mut msg = String::from(what);
        if parents {
            msg.push_str(" --parents");
        }
        if let Some(c) = chown {
            msg.push_str(&format!(" --chown={c}"));
        }
        if let Some(c) = chmod {
            msg.push_str(&format!(" --chmod={c}"));
        }
        for s in sources {
            msg.push(' ');
            msg.push_str(s);
        }
        for c in contents {
            msg.push_str(" <<");
            msg.push_str(&c.path);
        }
        msg.push(' ');
        msg.push_str(dest);
        msg.push_str(" # buildkit");
        msg
    }

    fn lower_copy(
        &self,
        st: &StageState,
        c: &instructions::Copy,
        span: &Span,
        ctx: &StepContext<'_>,
    ) -> Result<(CopyStep, String, BTreeSet<usize>), PlanError> {
        let chown = self.expand_opt(&c.chown, st, span)?;
        let chmod = self.expand_chmod(&c.chmod, st, span)?;
        let (sources, contents, dest) = self.lower_files(st, &c.files, span)?;
        let mut needs = BTreeSet::new();
        let from = match &c.from {
            None => CopySource::Context,
            Some(from) => {
                let source = self.resolve_from(from, span, ctx)?;
                if let CopySource::Stage { index } = source {
                    needs.insert(index);
                }
                source
            }
        };
        let msg = Self::copy_message(
            "COPY", c.parents, &chown, &chmod, &sources, &contents, &dest,
        );
        let copy = CopyStep {
            add: false,
            from,
            sources,
            contents,
            dest: normalize_dest(&st.config.working_dir, &dest),
            chown,
            chmod,
            link: c.link,
            parents: c.parents,
            excludes: c.excludes.clone(),
            checksum: None,
            keep_git_dir: None,
            unpack: None,
            user: st.config.user.clone(),
        };
        Ok((copy, msg, needs))
    }

    fn lower_add(
        &self,
        st: &StageState,
        a: &instructions::Add,
        span: &Span,
    ) -> Result<(CopyStep, String), PlanError> {
        let chown = self.expand_opt(&a.chown, st, span)?;
        let chmod = self.expand_chmod(&a.chmod, st, span)?;
        let checksum = self.expand_opt(&a.checksum, st, span)?;
        let (sources, contents, dest) = self.lower_files(st, &a.files, span)?;
        let msg = Self::copy_message("ADD", false, &chown, &chmod, &sources, &contents, &dest);
        let copy = CopyStep {
            add: true,
            from: CopySource::Context,
            sources,
            contents,
            dest: normalize_dest(&st.config.working_dir, &dest),
            chown,
            chmod,
            link: a.link,
            parents: false,
            excludes: a.excludes.clone(),
            checksum,
            keep_git_dir: a.keep_git_dir,
            unpack: a.unpack,
            user: st.config.user.clone(),
        };
        Ok((copy, msg))
    }

    /// `--chmod`, expanded and checked as BuildKit's `dispatchCopy` does: an
    /// octal mode up to 07777, or a symbolic one (`u+x,go-w`).
    fn expand_chmod(
        &self,
        value: &Option<String>,
        st: &StageState,
        span: &Span,
    ) -> Result<Option<String>, PlanError> {
        let mode = self.expand_opt(value, st, span)?;
        match &mode {
            Some(m) if !is_chmod(m) => Err(err(span, PlanErrorKind::BadChmod(m.clone()))),
            _ => Ok(mode),
        }
    }

    fn expand_opt(
        &self,
        value: &Option<String>,
        st: &StageState,
        span: &Span,
    ) -> Result<Option<String>, PlanError> {
        match value {
            None => Ok(None),
            Some(v) => {
                let v = self.expand(v, &st.env, span)?;
                Ok((!v.is_empty()).then_some(v))
            }
        }
    }

    /// `COPY --from=`: a stage by index or name (defined before the
    /// current stage), else an image.
    fn resolve_from(
        &self,
        from: &str,
        span: &Span,
        ctx: &StepContext<'_>,
    ) -> Result<CopySource, PlanError> {
        match copy_from_stage(&self.lexer, from, ctx.names, ctx.count, span)? {
            Some(index) => {
                let late = PlanErrorKind::StageOrder {
                    from: from.to_string(),
                    current: ctx.current.to_string(),
                };
                let index = ctx.earlier(index, span, late)?;
                Ok(CopySource::Stage { index })
            }
            None => Ok(match self.opts.named_context(from) {
                Some(NamedContext::Local) => CopySource::Named {
                    name: named_context_key(from),
                },
                Some(NamedContext::Image(reference)) => CopySource::Image {
                    reference: reference.clone(),
                },
                None => CopySource::Image {
                    reference: from.to_string(),
                },
            }),
        }
    }

    fn lower_run(
        &self,
        st: &StageState,
        r: &instructions::Run,
        span: &Span,
        ctx: &StepContext<'_>,
    ) -> Result<(RunStep, String, BTreeSet<usize>), PlanError> {
        let mut files = BTreeMap::new();
        let mut cmd = r.command.clone();
        if let Some(first) = cmd.files.first().cloned() {
            if cmd.args.len() != 1 || !cmd.shell_form {
                return Err(err(span, PlanErrorKind::BadHeredocRun(cmd.args.clone())));
            }
            let whole = crate::parser::parse_heredoc(&cmd.args[0]).ok().flatten();
            if whole.is_some() {
                let data = if first.chomp {
                    crate::parser::chomp_heredoc(&first.data)
                } else {
                    first.data.clone()
                };
                if data.starts_with("#!") {
                    let path = format!("/dev/pipes/{}", first.name);
                    files.insert(path.clone(), data);
                    cmd.args = vec![path];
                } else {
                    cmd.args = vec![data];
                }
            } else {
                let mut b = cmd.args[0].clone();
                for f in &cmd.files {
                    b.push('\n');
                    b.push_str(&f.data);
                    b.push_str(&f.name);
                }
                cmd.args = vec![b];
            }
        }
        let args = with_shell(&st.config, &cmd);

        let mut mounts = Vec::with_capacity(r.mounts.len());
        let mut needs = BTreeSet::new();
        for m in &r.mounts {
            let mut mount = instructions::parse_mount_with(m, &mut |v: &str| {
                self.lexer
                    .expand_word(v, &st.env)
                    .map_err(|e| e.to_string())
            })
            .map_err(|kind| err(span, kind.into()))?;
            // `from=` names a stage (by name only, never by index) or an image.
            let stage = mount
                .from
                .as_ref()
                .and_then(|f| ctx.names.get(&f.to_ascii_lowercase()));
            if let (Some(&index), Some(from)) = (stage, &mount.from) {
                let late = PlanErrorKind::MountOrder {
                    from: from.clone(),
                    target: mount.target.clone().unwrap_or_default(),
                };
                let index = ctx.earlier(index, span, late)?;
                needs.insert(index);
                mount.stage = Some(index);
            } else if let Some(from) = &mount.from {
                match self.opts.named_context(from) {
                    Some(NamedContext::Image(reference)) => mount.from = Some(reference.clone()),
                    Some(NamedContext::Local) => {
                        return Err(err(span, PlanErrorKind::LocalContextMount(from.clone())))
                    }
                    None => {}
                }
            }
            mounts.push(mount);
        }

        // History: `RUN |N K=V ... argv # buildkit`, with every ARG of the stage.
        let mut build_env: Vec<(String, String)> = Vec::new();
        for (k, v) in &st.args {
            let value = st
                .env
                .get(k)
                .map(str::to_string)
                .or_else(|| v.clone())
                .unwrap_or_default();
            match build_env.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = value,
                None => build_env.push((k.clone(), value)),
            }
        }
        let mut msg = String::from("RUN ");
        if !build_env.is_empty() {
            msg.push_str(&format!("|{} ", build_env.len()));
            for (k, v) in &build_env {
                msg.push_str(&format!("{k}={v} "));
            }
        }
        msg.push_str(&args.join(" "));
        msg.push_str(" # buildkit");

        let proxy_env = proxy_env(&self.opts.build_args);
        let run = RunStep {
            args,
            env: st.env.to_strings(),
            proxy_env,
            user: st.config.user.clone(),
            workdir: if st.config.working_dir.is_empty() {
                "/".to_string()
            } else {
                st.config.working_dir.clone()
            },
            mounts,
            network: r.network.clone(),
            security: r.security.clone(),
            files,
        };
        Ok((run, msg, needs))
    }
}

/// The global ARGs (before the first FROM) and the stages with their
/// instructions; anything else before the first FROM is an error.
fn split_stages(
    instructions: Vec<Instruction>,
) -> Result<(Vec<Instruction>, Vec<RawStage>), PlanError> {
    let mut meta_args = Vec::new();
    let mut raw: Vec<RawStage> = Vec::new();
    for ins in instructions {
        match (&ins.kind, raw.last_mut()) {
            (Kind::From(from), _) => raw.push(RawStage {
                base_word: from.base.clone(),
                name: from.name.clone(),
                platform: from.platform.clone(),
                from: ins,
                commands: Vec::new(),
            }),
            (Kind::Arg(_), None) => meta_args.push(ins),
            (_, None) => {
                let name = ins
                    .original
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_uppercase();
                return Err(err(&ins.span, PlanErrorKind::BeforeFrom(name)));
            }
            (_, Some(stage)) => stage.commands.push(ins),
        }
    }
    if raw.is_empty() {
        return Err(PlanError {
            span: None,
            kind: Box::new(PlanErrorKind::NoStages),
        });
    }
    Ok((meta_args, raw))
}

/// Where the instruction being lowered is: which stage, among which.
struct StepContext<'a> {
    /// Stage names (the latest stage of a repeated name).
    names: &'a BTreeMap<String, usize>,
    /// The current stage's index.
    index: usize,
    /// How many stages the Dockerfile has.
    count: usize,
    /// The current stage's name, or `stage-N`.
    current: &'a str,
}

impl StepContext<'_> {
    /// `index` when it is a stage before the current one; the current one is
    /// a circular dependency, a later one the `late` error.
    fn earlier(&self, index: usize, span: &Span, late: PlanErrorKind) -> Result<usize, PlanError> {
        match index.cmp(&self.index) {
            std::cmp::Ordering::Less => Ok(index),
            std::cmp::Ordering::Equal => Err(err(
                span,
                PlanErrorKind::CircularDependency(self.current.to_string()),
            )),
            std::cmp::Ordering::Greater => Err(err(span, late)),
        }
    }
}

/// `--from` must be literal, as BuildKit insists: the stage it names has to
/// be known before any variable is.
fn check_literal_from(lexer: &Lexer, from: &str, span: &Span) -> Result<(), PlanError> {
    match lexer.expand_word(from, &EnvList::default()) {
        Ok(word) if word == from => Ok(()),
        _ => Err(err(span, PlanErrorKind::FromExpansion)),
    }
}

/// The stage a `COPY --from` value names: an index (Go's `Atoi` rules) that
/// must exist, or a stage name; `None` for an image.
fn copy_from_stage(
    lexer: &Lexer,
    from: &str,
    names: &BTreeMap<String, usize>,
    count: usize,
    span: &Span,
) -> Result<Option<usize>, PlanError> {
    check_literal_from(lexer, from, span)?;
    if let Ok(index) = from.parse::<i64>() {
        return match usize::try_from(index) {
            Ok(i) if i < count => Ok(Some(i)),
            _ => Err(err(
                span,
                PlanErrorKind::BadStageIndex {
                    index,
                    last: count - 1,
                },
            )),
        };
    }
    Ok(names.get(&from.to_ascii_lowercase()).copied())
}

/// The stages an instruction reads (`COPY --from`, `RUN --mount from=`),
/// found before any stage is lowered, as BuildKit's `toCommand` finds them.
fn stages_read(
    lexer: &Lexer,
    ins: &Instruction,
    names: &BTreeMap<String, usize>,
    count: usize,
) -> Result<Vec<Edge>, PlanError> {
    let span = &ins.span;
    let mut out = Vec::new();
    match &ins.kind {
        Kind::Copy(c) => {
            if let Some(from) = &c.from {
                if let Some(index) = copy_from_stage(lexer, from, names, count, span)? {
                    out.push((index, span.clone()));
                }
            }
        }
        Kind::Run(r) => {
            for mount in &r.mounts {
                let from = instructions::mount_from(mount).map(|f| f.to_ascii_lowercase());
                if let Some(&index) = from.and_then(|f| names.get(&f)) {
                    out.push((index, span.clone()));
                }
            }
        }
        _ => {}
    }
    Ok(out)
}

/// BuildKit's `validateCircularDependency`, over every stage: no stage may
/// read itself through its base, `COPY --from` or mounts. The error names the
/// stage the search started from and points at its instruction leading there.
fn check_cycles(raw: &[RawStage], edges: &[Vec<Edge>]) -> Result<(), PlanError> {
    let mut visited = vec![false; raw.len()];
    let mut on_path = vec![false; raw.len()];
    for start in 0..raw.len() {
        if visited[start] {
            continue;
        }
        visited[start] = true;
        on_path[start] = true;
        // Depth-first, iteratively: (stage, next edge to follow).
        let mut stack = vec![(start, 0usize)];
        let mut first: Option<&Span> = None;
        while let Some((node, next)) = stack.last_mut() {
            let Some((dep, span)) = edges[*node].get(*next) else {
                on_path[*node] = false;
                stack.pop();
                continue;
            };
            *next += 1;
            if stack.len() == 1 {
                first = Some(span);
            }
            if on_path[*dep] {
                let kind = PlanErrorKind::CircularDependency(raw[start].display_name(start));
                return Err(err(first.unwrap_or(span), kind));
            }
            if !visited[*dep] {
                visited[*dep] = true;
                on_path[*dep] = true;
                stack.push((*dep, 0));
            }
        }
    }
    Ok(())
}

/// Which stages `target` reaches through `edges`.
fn reachable_from(target: usize, edges: &[Vec<Edge>]) -> Vec<bool> {
    let mut seen = vec![false; edges.len()];
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if !std::mem::replace(&mut seen[i], true) {
            todo.extend(edges[i].iter().map(|(d, _)| *d));
        }
    }
    seen
}

/// BuildKit's InvalidBaseImagePlatform build check, in its words, when a
/// base image's OS or architecture is not the stage's platform: such an
/// image's programs run only under emulation, if at all (moby/buildkit
/// `frontend/dockerfile/dockerfile2llb/convert.go`,
/// `validateBaseImagePlatform`; `frontend/dockerfile/linter/ruleset.go`).
fn platform_mismatch(reference: &str, expected: &Platform, actual: &Platform) -> Option<String> {
    (expected.os != actual.os || expected.architecture != actual.architecture).then(|| {
        format!(
            "InvalidBaseImagePlatform: Base image {reference} was pulled with platform \
             \"{actual}\", expected \"{expected}\" for current build"
        )
    })
}

/// Proxy settings from `--build-arg`s as BuildKit reads them (any case; of
/// two spellings the later in sorted order wins) and its executor sets them:
/// both spellings of each, empty values left out.
fn proxy_env(build_args: &BTreeMap<String, String>) -> Vec<String> {
    const KINDS: [(&str, &str); 5] = [
        ("HTTP_PROXY", "http_proxy"),
        ("HTTPS_PROXY", "https_proxy"),
        ("FTP_PROXY", "ftp_proxy"),
        ("NO_PROXY", "no_proxy"),
        ("ALL_PROXY", "all_proxy"),
    ];
    let mut out = Vec::new();
    for (upper, lower) in KINDS {
        let value = build_args
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(upper))
            .map(|(_, v)| v)
            .next_back();
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.push(format!("{upper}={v}"));
            out.push(format!("{lower}={v}"));
        }
    }
    out
}

/// The args every FROM line sees (TARGETPLATFORM and friends) for a build
/// of stage `target`, `--build-arg`s applied, in BuildKit's order.
pub(crate) fn predefined_args(opts: &PlanOptions, target: &str) -> Vec<(&'static str, String)> {
    let (b, t) = (&opts.build_platform, &opts.platform);
    let target = if target.is_empty() { "default" } else { target };
    [
        ("BUILDPLATFORM", b.to_string()),
        ("BUILDOS", b.os.clone()),
        ("BUILDOSVERSION", String::new()),
        ("BUILDARCH", b.architecture.clone()),
        ("BUILDVARIANT", b.variant.clone()),
        ("TARGETPLATFORM", t.to_string()),
        ("TARGETOS", t.os.clone()),
        ("TARGETOSVERSION", String::new()),
        ("TARGETARCH", t.architecture.clone()),
        ("TARGETVARIANT", t.variant.clone()),
        ("TARGETSTAGE", target.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k, opts.build_args.get(k).cloned().unwrap_or(v)))
    .collect()
}

fn is_predefined(key: &str) -> bool {
    PROXY_ARGS.iter().any(|p| p.eq_ignore_ascii_case(key))
        || key.starts_with("BUILDKIT_")
        || matches!(
            key,
            "BUILDPLATFORM"
                | "BUILDOS"
                | "BUILDARCH"
                | "BUILDVARIANT"
                | "TARGETPLATFORM"
                | "TARGETOS"
                | "TARGETARCH"
                | "TARGETVARIANT"
                | "SOURCE_DATE_EPOCH"
        )
}

/// Shell form runs through the stage's SHELL (default `/bin/sh -c`).
fn with_shell(config: &ImageConfig, cmd: &instructions::CommandLine) -> Vec<String> {
    if !cmd.shell_form {
        return cmd.args.clone();
    }
    let mut args = config
        .shell
        .clone()
        .unwrap_or_else(|| vec!["/bin/sh".to_string(), "-c".to_string()]);
    args.push(cmd.args.join(" "));
    args
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quote_list(args: &[String]) -> String {
    let node = crate::parser::Node {
        cmd: String::new(),
        flags: args.to_vec(),
        args: Vec::new(),
        child: None,
        json: false,
        heredocs: Vec::new(),
        original: String::new(),
        span: Span::lines("", 0, 0),
        comments: Vec::new(),
    };
    if args.is_empty() {
        return "[]".to_string();
    }
    node.dump().trim_start().to_string()
}

/// Go's `time.Duration.String()`.
pub fn go_duration(ns: u64) -> String {
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", trim_fraction(ns as f64 / 1e3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim_fraction(ns as f64 / 1e6));
    }
    let total_s = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    let (h, m, s) = (total_s / 3600, (total_s / 60) % 60, total_s % 60);
    let secs = if frac == 0 {
        format!("{s}")
    } else {
        let f = format!("{frac:09}");
        format!("{s}.{}", f.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

fn trim_fraction(v: f64) -> String {
    let s = format!("{v:.9}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `path.Clean` for absolute slash paths.
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// WORKDIR: relative paths are relative to the current working directory.
/// An absolute path is kept exactly as written (`/tmp/` stays `/tmp/`), as
/// BuildKit's `NormalizeWorkdir` does on Linux; a relative one is joined to
/// the current directory and cleaned.
fn normalize_workdir(current: &str, requested: &str) -> String {
    if requested.starts_with('/') {
        requested.to_string()
    } else {
        let current = if current.is_empty() { "/" } else { current };
        clean_path(&format!("{current}/{requested}"))
    }
}

/// A COPY/ADD destination made absolute against WORKDIR, keeping a trailing
/// slash (which means "into this directory").
fn normalize_dest(workdir: &str, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let keep_slash = dest.ends_with('/') || dest.ends_with("/.");
    let joined = if dest.starts_with('/') {
        clean_path(dest)
    } else {
        let wd = if workdir.is_empty() { "/" } else { workdir };
        clean_path(&format!("{wd}/{dest}"))
    };
    if keep_slash && joined != "/" {
        format!("{joined}/")
    } else {
        joined
    }
}

/// An EXPOSE spec (`80`, `80/udp`, `8000-8002/tcp`) into `port/proto` entries.
fn parse_port(raw: &str) -> Result<Vec<String>, String> {
    // `ip:hostPort:containerPort` is accepted by docker; only the container
    // port counts for the image.
    let container = raw.rsplit(':').next().unwrap_or(raw);
    let (port, proto) = container.split_once('/').unwrap_or((container, "tcp"));
    let proto = if proto.is_empty() { "tcp" } else { proto }.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    if port.is_empty() {
        return Err("no port specified".to_string());
    }
    let number = |s: &str| -> Result<u32, String> {
        s.parse::<u32>()
            .ok()
            .filter(|p| *p <= 65535)
            .ok_or_else(|| format!("invalid port number {s:?} (0–65535)"))
    };
    let (start, end) = match port.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let p = number(port)?;
            (p, p)
        }
    };
    if end < start {
        return Err(format!("invalid port range: {port}"));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// Whether `mode` is a `--chmod` value: octal up to 07777 when it starts
/// with a digit, else chmod(1)'s symbolic clauses, `[ugoa]*([-+=]perms)+`
/// separated by commas, where perms are `[rwxXst]*` or one of `ugo`.
fn is_chmod(mode: &str) -> bool {
    if mode.starts_with(|c: char| c.is_ascii_digit()) {
        return mode.bytes().all(|b| (b'0'..=b'7').contains(&b))
            && u32::from_str_radix(mode, 8).is_ok_and(|m| m <= 0o7777);
    }
    mode.split(',').all(|clause| {
        let actions = clause.trim_start_matches(['u', 'g', 'o', 'a']);
        if !actions.starts_with(['-', '+', '=']) {
            return false;
        }
        actions.split(['-', '+', '=']).skip(1).all(|perms| {
            perms.chars().all(|c| "rwxXst".contains(c)) || matches!(perms, "u" | "g" | "o")
        })
    })
}

const SIGNALS: [&str; 31] = [
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM",
];

/// Whether docker accepts `sig` as a STOPSIGNAL (name with or without SIG,
/// RTMIN+n / RTMAX-n, or a number).
fn is_signal(sig: &str) -> bool {
    if let Ok(n) = sig.parse::<u32>() {
        return n > 0 && n <= 64;
    }
    let upper = sig.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&name) || name == "WINCH" || name == "XCPU" || name == "XFSZ" {
        return true;
    }
    let rt = |prefix: &str, sep: char| {
        name.strip_prefix(prefix).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix(sep)
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n <= 15)
        })
    };
    rt("RTMIN", '+') || rt("RTMAX", '-')
}

crate::span::spanned_error!(PlanError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_duration_strings() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(5_000_000_000), "5s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(300_000_000), "300ms");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
    }

    #[test]
    fn destinations() {
        assert_eq!(normalize_dest("", "."), "/");
        assert_eq!(normalize_dest("/app", "."), "/app/");
        assert_eq!(normalize_dest("/app", "x"), "/app/x");
        assert_eq!(normalize_dest("/app", "x/"), "/app/x/");
        assert_eq!(normalize_dest("/app", "/etc/../opt/"), "/opt/");
        assert_eq!(normalize_workdir("/a", "b/../c"), "/a/c");
        assert_eq!(normalize_workdir("", "rel"), "/rel");
    }

    #[test]
    fn ports_and_signals() {
        assert_eq!(parse_port("80").expect("ok"), ["80/tcp"]);
        assert_eq!(parse_port("53/UDP").expect("ok"), ["53/udp"]);
        assert_eq!(parse_port("8000-8002").expect("ok").len(), 3);
        assert!(parse_port("80-70").is_err());
        assert!(parse_port("99999").is_err());
        assert!(is_signal("SIGTERM") && is_signal("kill") && is_signal("9"));
        assert!(is_signal("SIGRTMIN+3"));
        assert!(!is_signal("SIGFOO"));
    }

    #[test]
    fn chmod_modes() {
        for ok in [
            "755", "0644", "7777", "u+x", "go-w", "a=rX,u+w", "g=u", "+x",
        ] {
            assert!(is_chmod(ok), "{ok}");
        }
        for bad in ["64a", "10000", "999", "u", "u+y", "", "x+r", "u+x,"] {
            assert!(!is_chmod(bad), "{bad}");
        }
    }
}
