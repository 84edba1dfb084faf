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

/// A planning failure.
#[derive(Debug)]
pub struct PlanError {
    /// The instruction it concerns, when there is one.
    pub span: Option<Span>,
    /// What went wrong.
    pub kind: PlanErrorKind,
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
    #[error("invalid platform {0:?}: expected os/arch[/variant], like linux/amd64")]
    BadPlatform(String),
    /// `--target` names no stage.
    #[error("target stage {name:?} could not be found{}", hint(.suggestion))]
    NoSuchTarget {
        /// The name given.
        name: String,
        /// The nearest stage name.
        suggestion: Option<String>,
    },
    /// Two stages with one name.
    #[error("duplicate stage name {0:?}")]
    DuplicateStage(String),
    /// `COPY --from=$X`.
    #[error("variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround")]
    FromExpansion,
    /// `COPY --from=3` with fewer stages.
    #[error(
        "invalid stage index {index}: the Dockerfile defines stages 0 to {last} before this one"
    )]
    BadStageIndex {
        /// The index given.
        index: usize,
        /// The last valid one.
        last: isize,
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
    /// `STOPSIGNAL SIGFOO`.
    #[error("invalid signal: {0}")]
    BadSignal(String),
    /// A base image's ONBUILD trigger that does not parse.
    #[error("invalid ONBUILD trigger {trigger:?} of the base image")]
    BadTrigger {
        /// The trigger text.
        trigger: String,
        /// Why.
        #[source]
        source: Box<crate::Error>,
    },
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
    /// image truly does not exist).
    fn resolve(&self, reference: &str, platform: &Platform) -> Option<BaseImage>;
}

/// A resolver that knows no image: for `--dry-run` without a store, and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoImages;

impl BaseResolver for NoImages {
    fn resolve(&self, _: &str, _: &Platform) -> Option<BaseImage> {
        None
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
        }
    }
}

/// An ordered environment where a later value replaces an earlier one in
/// place, as an LLB state's env list behaves.
#[derive(Debug, Clone, Default)]
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.0.push((key.to_string(), value.to_string())),
        }
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
        kind,
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

    fn run(mut self, instructions: Vec<Instruction>) -> Result<BuildGraph, crate::Error> {
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
                    return Err(err(&ins.span, PlanErrorKind::BeforeFrom(name)).into());
                }
                (_, Some(stage)) => stage.commands.push(ins),
            }
        }
        if raw.is_empty() {
            return Err(PlanError {
                span: None,
                kind: PlanErrorKind::NoStages,
            }
            .into());
        }

        let target_name = match &self.opts.target {
            Some(t) => t.to_ascii_lowercase(),
            None => raw.last().and_then(|s| s.name.clone()).unwrap_or_default(),
        };
        self.global = self.predefined_args(&target_name);
        for ins in &meta_args {
            self.lower_meta_arg(ins)?;
        }

        // Stage names, checked for duplicates.
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, stage) in raw.iter().enumerate() {
            if let Some(name) = &stage.name {
                if names.insert(name.clone(), i).is_some() {
                    return Err(err(
                        &stage.from.span,
                        PlanErrorKind::DuplicateStage(name.clone()),
                    )
                    .into());
                }
            }
        }
        let target = match &self.opts.target {
            None => raw.len() - 1,
            Some(t) => *names
                .get(&t.to_ascii_lowercase())
                .ok_or_else(|| PlanError {
                    span: None,
                    kind: PlanErrorKind::NoSuchTarget {
                        name: t.clone(),
                        suggestion: suggest::nearest(t, names.keys().map(String::as_str))
                            .map(str::to_string),
                    },
                })?,
        };

        // FROM lines: expanded with global args only; a base naming an
        // earlier stage builds on it.
        let mut bases = Vec::with_capacity(raw.len());
        let mut platforms = Vec::with_capacity(raw.len());
        for (i, stage) in raw.iter().enumerate() {
            let span = &stage.from.span;
            let base = self.expand(&stage.base_word, &self.global, span)?;
            if base.is_empty() {
                return Err(err(span, PlanErrorKind::BlankBase(stage.base_word.clone())).into());
            }
            let platform = match &stage.platform {
                Some(p) => {
                    let text = self.expand(p, &self.global, span)?;
                    Platform::parse(&text)
                        .ok_or_else(|| err(span, PlanErrorKind::BadPlatform(text)))?
                }
                None => self.opts.platform.clone(),
            };
            let lower = base.to_ascii_lowercase();
            let base = match names.get(&lower) {
                Some(&index) if index < i => Base::Stage { index },
                _ if lower == "scratch" => Base::Scratch,
                _ => Base::Image {
                    reference: base,
                    digest: None,
                },
            };
            bases.push(base);
            platforms.push(platform);
        }

        // Every stage is lowered (so errors anywhere are reported, as
        // BuildKit parses all stages); only the ones the target needs run.
        let mut stages: Vec<Stage> = Vec::with_capacity(raw.len());
        for (i, stage) in raw.into_iter().enumerate() {
            let lowered = self.lower_stage(
                i,
                stage,
                bases[i].clone(),
                platforms[i].clone(),
                &names,
                &stages,
            )?;
            stages.push(lowered);
        }

        // Reachability from the target.
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if stages[i].needed {
                continue;
            }
            stages[i].needed = true;
            todo.extend(stages[i].deps.iter().copied());
        }

        let target_stage = &mut stages[target];
        for (k, v) in &self.opts.labels {
            target_stage.config.labels.insert(k.clone(), v.clone());
        }

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

        Ok(BuildGraph {
            stages,
            target,
            directives: BTreeMap::new(),
            warnings: self.warnings,
        })
    }

    /// TARGETPLATFORM and friends, overridable by `--build-arg`.
    fn predefined_args(&self, target: &str) -> EnvList {
        let (b, t) = (&self.opts.build_platform, &self.opts.platform);
        let target = if target.is_empty() { "default" } else { target };
        let mut env = EnvList::default();
        for (k, v) in [
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
        ] {
            let v = self.opts.build_args.get(k).cloned().unwrap_or(v);
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

    fn lower_stage(
        &mut self,
        index: usize,
        raw: RawStage,
        base: Base,
        platform: Platform,
        names: &BTreeMap<String, usize>,
        done: &[Stage],
    ) -> Result<Stage, crate::Error> {
        let span = raw.from.span.clone();
        let (mut config, mut triggers, base) = match base {
            Base::Scratch => (ImageConfig::default(), Vec::new(), Base::Scratch),
            Base::Stage { index: b } => {
                let parent = &done[b];
                let mut config = parent.config.clone();
                // The parent's own ONBUILD instructions fire here, not in the parent.
                let triggers = std::mem::take(&mut config.on_build);
                (config, triggers, Base::Stage { index: b })
            }
            Base::Image { reference, .. } => {
                let found = self.resolver.resolve(&reference, &platform);
                let (mut config, digest) = match found {
                    Some(img) => (img.config, img.digest),
                    None => (ImageConfig::default(), None),
                };
                let triggers = std::mem::take(&mut config.on_build);
                (config, triggers, Base::Image { reference, digest })
            }
        };
        if config.env_value("PATH").is_none() {
            config.env.push(format!("PATH={DEFAULT_PATH}"));
        }
        let mut env = EnvList::default();
        for kv in &config.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            env.set(k, v);
        }
        let mut state = StageState {
            config,
            author: None,
            env,
            args: Vec::new(),
            cmd_set: false,
            steps: Vec::new(),
            platform: platform.clone(),
        };
        let mut deps = BTreeSet::new();
        if let Base::Stage { index } = &base {
            deps.insert(*index);
        }

        let mut commands: Vec<(Instruction, bool)> = Vec::new();
        for trigger in triggers.drain(..) {
            let parsed = instructions::parse_text(&self.opts.file, &trigger).map_err(|e| {
                err(
                    &span,
                    PlanErrorKind::BadTrigger {
                        trigger: trigger.clone(),
                        source: Box::new(e),
                    },
                )
            })?;
            for mut ins in parsed {
                ins.span = span.clone();
                commands.push((ins, true));
            }
        }
        commands.extend(raw.commands.into_iter().map(|c| (c, false)));

        let current = raw.name.clone().unwrap_or_else(|| format!("stage-{index}"));
        for (ins, on_build) in &commands {
            let ctx = StepContext {
                names,
                index,
                current: &current,
            };
            let step = self.lower(&mut state, ins, &ctx)?;
            if let Some(mut step) = step {
                step.on_build = *on_build;
                deps.extend(step.needs.iter().copied());
                state.steps.push(step);
            }
        }

        Ok(Stage {
            index,
            name: raw.name,
            span,
            base,
            platform: state.platform,
            needed: false,
            deps,
            steps: state.steps,
            config: state.config,
            author: state.author,
        })
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
            if let Some(v) = &value {
                st.env.set(&decl.key, v);
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
        let chmod = self.expand_opt(&c.chmod, st, span)?;
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
        let chmod = self.expand_opt(&a.chmod, st, span)?;
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

    /// `--from=` of COPY or of a mount: a stage by name or index (defined
    /// before the current stage), else an image.
    fn resolve_from(
        &self,
        from: &str,
        span: &Span,
        ctx: &StepContext<'_>,
    ) -> Result<CopySource, PlanError> {
        let unexpanded = self
            .lexer
            .expand_word(from, &EnvList::default())
            .unwrap_or_default();
        if unexpanded != from {
            return Err(err(span, PlanErrorKind::FromExpansion));
        }
        if let Ok(index) = from.parse::<usize>() {
            if index >= ctx.index {
                return Err(err(
                    span,
                    PlanErrorKind::BadStageIndex {
                        index,
                        last: ctx.index as isize - 1,
                    },
                ));
            }
            return Ok(CopySource::Stage { index });
        }
        match ctx.names.get(&from.to_ascii_lowercase()) {
            Some(&index) if index < ctx.index => Ok(CopySource::Stage { index }),
            Some(_) => Err(err(
                span,
                PlanErrorKind::StageOrder {
                    from: from.to_string(),
                    current: ctx.current.to_string(),
                },
            )),
            None => Ok(CopySource::Image {
                reference: from.to_string(),
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
            if let Some(from) = &mount.from {
                match self.resolve_from(from, span, ctx)? {
                    CopySource::Stage { index } => {
                        needs.insert(index);
                        mount.from = Some(format!("stage:{index}"));
                    }
                    CopySource::Image { reference } => mount.from = Some(reference),
                    CopySource::Context => {}
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

        let proxy_env = PROXY_ARGS
            .iter()
            .filter_map(|k| self.opts.build_args.get(*k).map(|v| format!("{k}={v}")))
            .collect();
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

struct StepContext<'a> {
    names: &'a BTreeMap<String, usize>,
    index: usize,
    current: &'a str,
}

fn is_predefined(key: &str) -> bool {
    PROXY_ARGS.contains(&key)
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
fn normalize_workdir(current: &str, requested: &str) -> String {
    if requested.starts_with('/') {
        clean_path(requested)
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
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.kind, f)
    }
}

/// The kind is the message; its cause, if any, is the cause.
impl std::error::Error for PlanError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}
