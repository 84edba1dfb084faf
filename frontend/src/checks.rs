//! Build checks: the Dockerfile lint rules BuildKit runs on every build and
//! `docker build --check` runs alone.
//!
//! [`check`] walks a Dockerfile the way BuildKit's converter does and
//! reports what its linter would: the rules that look at the text as written
//! (keyword casing, stage names, MAINTAINER, descriptions) on every
//! instruction; the FROM-line rules on every stage; and the rules that need a
//! stage's state (which variables are set, whether a SHELL or a WORKDIR came
//! before, what `.dockerignore` excludes) on the stages a build needs, or on
//! all of them for `--check`. Messages and rule names are BuildKit's, word
//! for word, so a CI log reads the same with either builder.
//!
//! Which rules run is BuildKit's `# check=skip=…;error=…;experimental=…`
//! directive, replaced as a whole by the `BUILDKIT_DOCKERFILE_CHECK` build
//! arg when one is given; a `# check=` comment right above an instruction
//! adds to it for that instruction (moby/buildkit
//! frontend/dockerfile/linter/linter.go).

pub mod rules;

use crate::dockerignore::{clean_path, Matcher};
use crate::graph::Platform;
use crate::instructions::{self, Instruction, Kind};
use crate::parser::{self, Node};
use crate::plan::{predefined_args, BaseResolver, EnvList, PlanOptions};
use crate::shell::{Env, Lexer};
use crate::span::Span;
use crate::suggest;
pub use rules::Rule;
use std::collections::{BTreeMap, BTreeSet};

/// The build arg that sets the check options instead of the directive.
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// PATH when a base image sets none (BuildKit `system.DefaultPathEnv`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Stage names BuildKit reserves (`reservedStageNames`, validations.go).
const RESERVED_STAGE_NAMES: [&str; 2] = ["context", "scratch"];

/// A `check=` value that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum CheckOptionError {
    /// A part without `=`, or a key other than skip, error, experimental.
    #[error("invalid check option {0:?}")]
    Invalid(String),
    /// `error=` with something other than a Go boolean.
    #[error("failed to parse check option {0:?}: not a boolean")]
    NotABool(String),
}

/// Which rules run and what a finding does: BuildKit's `linter.Config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    /// `skip=all`.
    pub skip_all: bool,
    /// `skip=A,B`.
    pub skip: BTreeSet<String>,
    /// `experimental=all`.
    pub experimental_all: bool,
    /// `experimental=A,B`.
    pub experimental: BTreeSet<String>,
    /// `error=true`: any finding fails the build.
    pub error: bool,
}

impl CheckConfig {
    /// Parses `skip=…;error=…;experimental=…` as BuildKit's
    /// `ParseLintOptions` does (at most three parts; the last keeps any
    /// further `;`).
    pub fn parse(text: &str) -> Result<Self, CheckOptionError> {
        let mut config = CheckConfig::default();
        let text = text.trim();
        if text.is_empty() {
            return Ok(config);
        }
        let list = |v: &str| -> BTreeSet<String> {
            v.trim().split(',').map(|r| r.trim().to_string()).collect()
        };
        for part in text.splitn(3, ';') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(CheckOptionError::Invalid(part.to_string()));
            };
            match key.trim() {
                "skip" if value.trim() == "all" => config.skip_all = true,
                "skip" => config.skip = list(value),
                "experimental" if value.trim() == "all" => config.experimental_all = true,
                "experimental" => config.experimental = list(value),
                "error" => {
                    config.error = match value.trim() {
                        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                        _ => return Err(CheckOptionError::NotABool(part.to_string())),
                    }
                }
                other => return Err(CheckOptionError::Invalid(other.to_string())),
            }
        }
        Ok(config)
    }

    /// This config with the first `check=` comment of `comments` added
    /// (BuildKit's `WithMergedConfigFromComments`: skips and experiments
    /// add up; `error` stays the file's; a comment that does not parse
    /// changes nothing; text after a space is a remark).
    fn with_comments(&self, comments: &[String]) -> CheckConfig {
        for comment in comments {
            let Some((key, value)) = parser::split_directive(comment.trim_start()) else {
                continue;
            };
            if !key.eq_ignore_ascii_case("check") {
                continue;
            }
            let value = value.split(' ').next().unwrap_or_default();
            let Ok(other) = CheckConfig::parse(value) else {
                return self.clone();
            };
            let mut merged = self.clone();
            merged.skip_all |= other.skip_all;
            merged.skip.extend(other.skip);
            merged.experimental_all |= other.experimental_all;
            merged.experimental.extend(other.experimental);
            return merged;
        }
        self.clone()
    }

    /// Whether `rule` runs under this config.
    fn runs(&self, rule: &Rule) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.contains(rule.name)
        } else {
            !self.skip_all && !self.skip.contains(rule.name)
        }
    }
}

/// One rule broken at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule.
    pub rule: &'static Rule,
    /// BuildKit's message for this case.
    pub message: String,
    /// The instruction it is about.
    pub span: Span,
}

impl Finding {
    /// The one-line form a build prints: `Rule: message (line N)`
    /// (BuildKit's `LintFormatShort`).
    pub fn short(&self) -> String {
        format!(
            "{}: {} (line {})",
            self.rule.name, self.message, self.span.line
        )
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Findings by line.
    pub findings: Vec<Finding>,
    /// The config in force (directive or build arg).
    pub config: CheckConfig,
}

impl Report {
    /// With `check=error=true` and findings, the build's error message
    /// (BuildKit's `Linter.Error`, rules sorted).
    pub fn violation(&self) -> Option<String> {
        if !self.config.error || self.findings.is_empty() {
            return None;
        }
        let rules: BTreeSet<&str> = self.findings.iter().map(|f| f.rule.name).collect();
        Some(format!(
            "lint violation found for rules: {}",
            rules.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

/// What [`check`] runs with besides the Dockerfile.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions<'a> {
    /// The plan options of the build (file name, build args, target, platform).
    pub plan: &'a PlanOptions,
    /// The build context's `.dockerignore`, for `CopyIgnoredFile`.
    pub ignore: Option<&'a Matcher>,
    /// The stages a build needs (the plan's `needed`), whose instructions
    /// get the state rules; `None` for all, as `--check` does.
    pub stages: Option<&'a [bool]>,
}

/// Runs the checks on a Dockerfile. A Dockerfile that does not parse is an
/// error (the build reports it); base images are looked up with `resolver`
/// for their ENV and SHELL, and a stage whose base cannot be looked up skips
/// `UndefinedVar` rather than guess.
pub fn check(
    text: &str,
    opts: &CheckOptions<'_>,
    resolver: &dyn BaseResolver,
) -> Result<Report, crate::Error> {
    let parsed = parser::parse(&opts.plan.file, text)?;
    let instructions = instructions::parse_all(&parsed)?;
    let setting = match opts.plan.build_args.get(CHECK_BUILD_ARG) {
        Some(v) => Some((v.as_str(), None)),
        None => parsed
            .directives
            .get("check")
            .map(|v| (v.as_str(), Some(1))),
    };
    let config = match setting {
        Some((text, line)) => CheckConfig::parse(text).map_err(|e| crate::Error::Check {
            span: line.map(|l| Span::lines(&opts.plan.file, l, l)),
            source: e,
        })?,
        None => CheckConfig::default(),
    };
    let mut linter = Linter {
        config,
        findings: Vec::new(),
        lexer: Lexer::new(parsed.escape),
    };
    let nodes: Vec<(&Node, &Instruction)> = parsed.nodes.iter().zip(&instructions).collect();
    let first_from = nodes
        .iter()
        .position(|(_, i)| matches!(i.kind, Kind::From(_)))
        .unwrap_or(nodes.len());
    let (meta, staged) = nodes.split_at(first_from);
    let mut stages: Vec<StageText<'_>> = Vec::new();
    for &(node, ins) in staged {
        match &ins.kind {
            Kind::From(from) => stages.push(StageText {
                node,
                from,
                commands: Vec::new(),
            }),
            _ => {
                if let Some(stage) = stages.last_mut() {
                    stage.commands.push((node, ins));
                }
            }
        }
    }

    for &(node, ins) in &nodes {
        linter.text_rules(node, ins);
    }
    linter.stage_names(&stages);
    linter.casing(&stages);
    let globals = linter.lint_from_lines(meta, &stages, opts.plan);
    let mut ends: Vec<Option<State>> = Vec::with_capacity(stages.len());
    for (i, stage) in stages.iter().enumerate() {
        let wanted = opts
            .stages
            .is_none_or(|s| s.get(i).copied().unwrap_or(false));
        if !wanted {
            ends.push(None);
            continue;
        }
        let start = linter.start(stage, &stages[..i], &ends, &globals, opts.plan, resolver);
        ends.push(Some(linter.dispatch(stage, start, &globals, opts)));
    }
    let mut findings = linter.findings;
    findings.sort_by_key(|f| f.span.line);
    Ok(Report {
        findings,
        config: linter.config,
    })
}

/// A stage as written: its FROM and the instructions after it.
struct StageText<'a> {
    node: &'a Node,
    from: &'a instructions::From,
    commands: Vec<(&'a Node, &'a Instruction)>,
}

/// The global ARGs: values FROM lines see, and every name declared.
struct Globals {
    vars: EnvList,
    declared: BTreeSet<String>,
}

/// What the state rules track through a stage (BuildKit's `dispatchState`).
#[derive(Debug, Clone, Default)]
struct State {
    vars: EnvList,
    /// ARG names declared in the stage (never "undefined", set or not).
    args: BTreeSet<String>,
    /// The variables are known (the base image could be looked up).
    known: bool,
    shell: bool,
    workdir_set: bool,
}

struct Linter {
    config: CheckConfig,
    findings: Vec<Finding>,
    lexer: Lexer,
}

impl Linter {
    fn report(&mut self, config: &CheckConfig, rule: &'static Rule, span: &Span, message: String) {
        if config.runs(rule) {
            self.findings.push(Finding {
                rule,
                message,
                span: span.clone(),
            });
        }
    }

    /// Rules on the text of one instruction (moby/buildkit
    /// frontend/dockerfile/instructions/parse.go, `ParseInstructionWithLinter`).
    fn text_rules(&mut self, node: &Node, ins: &Instruction) {
        let config = self.config.with_comments(&node.comments);
        let span = &node.span;
        match &ins.kind {
            Kind::Maintainer(_) => self.report(
                &config,
                &rules::MAINTAINER_DEPRECATED,
                span,
                "Maintainer instruction is deprecated in favor of using label".to_string(),
            ),
            Kind::From(from) => {
                if let [_, as_word, name] = node.args.as_slice() {
                    if *name != name.to_lowercase() {
                        self.report(
                            &config,
                            &rules::STAGE_NAME_CASING,
                            span,
                            format!("Stage name '{name}' should be lowercase"),
                        );
                    }
                    let cmd = &node.cmd;
                    let matches = if *cmd == cmd.to_lowercase() {
                        *as_word == as_word.to_lowercase()
                    } else if *cmd == cmd.to_uppercase() {
                        *as_word == as_word.to_uppercase()
                    } else {
                        true
                    };
                    if !matches {
                        self.report(
                            &config,
                            &rules::FROM_AS_CASING,
                            span,
                            format!("'{as_word}' and '{cmd}' keywords' casing do not match"),
                        );
                    }
                }
                if let Some(name) = &from.name {
                    self.description(&config, "FROM", &[name.as_str()], node);
                }
            }
            Kind::Arg(decls) => {
                let keys: Vec<&str> = decls.iter().map(|d| d.key.as_str()).collect();
                self.description(&config, "ARG", &keys, node);
            }
            _ => {}
        }
    }

    /// InvalidDefinitionDescription: the comment right above a FROM or ARG
    /// starts with the name it describes (`validateDefinitionDescription`).
    fn description(&mut self, config: &CheckConfig, what: &str, keys: &[&str], node: &Node) {
        let (Some(last), Some(first_key)) = (node.comments.last(), keys.first()) else {
            return;
        };
        let word = last.split(' ').next().unwrap_or_default();
        if keys.contains(&word) {
            return;
        }
        let example = if keys.len() > 1 {
            "<arg_key>"
        } else {
            first_key
        };
        self.report(
            config,
            &rules::INVALID_DEFINITION_DESCRIPTION,
            &node.span,
            format!("Comment for {what} should follow the format: `# {example} <description>`"),
        );
    }

    /// ReservedStageName and DuplicateStageName (`validateStageNames`).
    fn stage_names(&mut self, stages: &[StageText<'_>]) {
        let config = self.config.clone();
        let mut seen = BTreeSet::new();
        for stage in stages {
            let Some(name) = &stage.from.name else {
                continue;
            };
            if RESERVED_STAGE_NAMES.contains(&name.as_str()) {
                self.report(
                    &config,
                    &rules::RESERVED_STAGE_NAME,
                    &stage.node.span,
                    format!("Stage name should not use the same name as reserved stage {name:?}"),
                );
            }
            if !seen.insert(name.clone()) {
                self.report(
                    &config,
                    &rules::DUPLICATE_STAGE_NAME,
                    &stage.node.span,
                    format!("Duplicate stage name {name:?}, stage names should be unique"),
                );
            }
        }
    }

    /// ConsistentInstructionCasing over the instructions of every stage
    /// (`validateCommandCasing`): a keyword in mixed case, or in the case
    /// fewer keywords use (a tie counts as uppercase).
    fn casing(&mut self, stages: &[StageText<'_>]) {
        let words: Vec<(&str, &Span)> = stages
            .iter()
            .flat_map(|s| {
                std::iter::once(s.node)
                    .chain(s.commands.iter().map(|(n, _)| *n))
                    .map(|n| (n.cmd.as_str(), &n.span))
            })
            .collect();
        let (mut lower, mut upper) = (0, 0);
        for (word, _) in &words {
            if *word == word.to_lowercase() {
                lower += 1;
            } else if *word == word.to_uppercase() {
                upper += 1;
            }
        }
        let majority_lower = lower > upper;
        let config = self.config.clone();
        for (word, span) in words {
            let wrong = if majority_lower {
                (word != word.to_lowercase()).then_some("lowercase")
            } else {
                (word != word.to_uppercase()).then_some("uppercase")
            };
            if let Some(casing) = wrong {
                self.report(
                    &config,
                    &rules::CONSISTENT_INSTRUCTION_CASING,
                    span,
                    format!(
                        "Command '{word}' should match the case of the command majority ({casing})"
                    ),
                );
            }
        }
    }

    /// The rules of FROM lines (convert.go `buildDispatchStates`,
    /// `validateBaseImagesWithDefaultArgs`): InvalidDefaultArgInFrom with
    /// ARG defaults only, then UndefinedArgInFrom and
    /// FromPlatformFlagConstDisallowed with the build's values. Returns the
    /// global ARGs.
    fn lint_from_lines(
        &mut self,
        meta: &[(&Node, &Instruction)],
        stages: &[StageText<'_>],
        plan: &PlanOptions,
    ) -> Globals {
        let target = match &plan.target {
            Some(t) => t.clone(),
            None => stages
                .last()
                .and_then(|s| s.from.name.clone())
                .unwrap_or_default(),
        };
        let mut predefined = EnvList::default();
        for (k, v) in predefined_args(plan, &target) {
            predefined.set(k, &v);
        }
        let no_build_args = BTreeMap::new();
        let config = self.config.clone();
        if let Some(defaults) = self.meta_args(meta, &predefined, &no_build_args) {
            for stage in stages {
                let Ok(base) = self.lexer.expand_word(&stage.from.base, &defaults) else {
                    break;
                };
                if !rules::is_image_reference(&base) {
                    self.report(
                        &config,
                        &rules::INVALID_DEFAULT_ARG_IN_FROM,
                        &stage.node.span,
                        format!(
                            "Default value for ARG {} results in empty or invalid base image name",
                            stage.from.base
                        ),
                    );
                }
            }
        }
        let vars = self
            .meta_args(meta, &predefined, &plan.build_args)
            .unwrap_or(predefined);
        let mut declared: BTreeSet<String> = vars.keys().map(str::to_string).collect();
        for (_, ins) in meta {
            if let Kind::Arg(decls) = &ins.kind {
                declared.extend(decls.iter().map(|d| d.key.clone()));
            }
        }
        let globals = Globals { vars, declared };
        for stage in stages {
            let config = self.config.with_comments(&stage.node.comments);
            self.undeclared_in_from(&config, &stage.from.base, stage, &globals);
            let Some(platform) = &stage.from.platform else {
                continue;
            };
            let used = self.undeclared_in_from(&config, platform, stage, &globals);
            if used {
                continue;
            }
            let Ok(p) = Platform::parse(platform) else {
                continue;
            };
            let name = stage.from.name.as_deref().unwrap_or_default();
            if !name.contains(p.os.as_str()) && !name.contains(p.architecture.as_str()) {
                self.report(
                    &config,
                    &rules::FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                    &stage.node.span,
                    format!("FROM --platform flag should not use constant value {platform:?}"),
                );
            }
        }
        globals
    }

    /// The global ARGs' values (`buildMetaArgs`); `None` when a default does
    /// not expand.
    fn meta_args(
        &self,
        meta: &[(&Node, &Instruction)],
        predefined: &EnvList,
        build_args: &BTreeMap<String, String>,
    ) -> Option<EnvList> {
        let mut vars = predefined.clone();
        for (_, ins) in meta {
            let Kind::Arg(decls) = &ins.kind else {
                continue;
            };
            for decl in decls {
                let value = match (build_args.get(&decl.key), &decl.value) {
                    (Some(v), _) => Some(v.clone()),
                    (None, Some(default)) => Some(self.lexer.expand_word(default, &vars).ok()?),
                    (None, None) => None,
                };
                if let Some(v) = value {
                    vars.set(&decl.key, &v);
                }
            }
        }
        Some(vars)
    }

    /// UndefinedArgInFrom for one word of a FROM line; returns whether the
    /// word referenced any variable.
    fn undeclared_in_from(
        &mut self,
        config: &CheckConfig,
        word: &str,
        stage: &StageText<'_>,
        globals: &Globals,
    ) -> bool {
        let Ok(expansion) = self.lexer.expand_word_detailed(word, &globals.vars) else {
            return true;
        };
        for name in &expansion.unmatched {
            if globals.declared.contains(name) {
                continue;
            }
            let hint = suggest::nearest(name, globals.declared.iter().map(String::as_str))
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            self.report(
                config,
                &rules::UNDEFINED_ARG_IN_FROM,
                &stage.node.span,
                format!("FROM argument '{name}' is not declared{hint}"),
            );
        }
        !expansion.matched.is_empty() || !expansion.unmatched.is_empty()
    }

    /// What a stage starts with: an earlier stage's end, or its base image's
    /// ENV and SHELL (PATH added when unset, as BuildKit adds it).
    fn start(
        &self,
        stage: &StageText<'_>,
        earlier: &[StageText<'_>],
        ends: &[Option<State>],
        globals: &Globals,
        plan: &PlanOptions,
        resolver: &dyn BaseResolver,
    ) -> State {
        let base = self
            .lexer
            .expand_word(&stage.from.base, &globals.vars)
            .unwrap_or_default();
        let lower = base.to_lowercase();
        if let Some(index) = earlier
            .iter()
            .rposition(|s| s.from.name.as_deref() == Some(lower.as_str()))
        {
            let mut state = ends.get(index).cloned().flatten().unwrap_or_default();
            state.args.clear();
            return state;
        }
        let mut state = State {
            known: true,
            ..State::default()
        };
        if !base.eq_ignore_ascii_case("scratch") {
            let platform = stage
                .from
                .platform
                .as_deref()
                .and_then(|p| self.lexer.expand_word(p, &globals.vars).ok())
                .and_then(|p| Platform::parse(&p).ok())
                .unwrap_or_else(|| plan.platform.clone());
            match resolver.resolve(&base, &platform) {
                Ok(Some(image)) => {
                    for entry in &image.config.env {
                        let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
                        state.vars.set(k, v);
                    }
                    state.shell = image.config.shell.as_ref().is_some_and(|s| !s.is_empty());
                }
                _ => state.known = false,
            }
        }
        if state.vars.lookup("PATH").is_none() {
            state.vars.set("PATH", DEFAULT_PATH);
        }
        state
    }

    /// Expands one word of an instruction with the stage's variables,
    /// reporting UndefinedVar for names neither set nor declared by an ARG
    /// (`reportUnmatchedVariables`). Returns the word expanded (or as written
    /// when it does not expand; the build reports that).
    fn expand(
        &mut self,
        config: &CheckConfig,
        lexer: &Lexer,
        word: &str,
        state: &State,
        span: &Span,
    ) -> String {
        let Ok(expansion) = lexer.expand_word_detailed(word, &state.vars) else {
            return word.to_string();
        };
        if state.known {
            for name in &expansion.unmatched {
                if state.args.contains(name) {
                    continue;
                }
                let hint = suggest::nearest(name, state.vars.keys())
                    .map(|s| format!(" (did you mean ${s}?)"))
                    .unwrap_or_default();
                self.report(
                    config,
                    &rules::UNDEFINED_VAR,
                    span,
                    format!("Usage of undefined variable '${name}'{hint}"),
                );
            }
        }
        expansion.value
    }

    /// The state rules over one stage's instructions (convert.go `dispatch`
    /// and the `dispatch*` functions it calls); returns the stage's end.
    fn dispatch(
        &mut self,
        stage: &StageText<'_>,
        mut state: State,
        globals: &Globals,
        opts: &CheckOptions<'_>,
    ) -> State {
        let lexer = self.lexer.clone();
        // Where CMD, ENTRYPOINT and HEALTHCHECK were last set in this stage.
        let mut last: BTreeMap<&str, Span> = BTreeMap::new();
        for &(node, ins) in &stage.commands {
            let config = self.config.with_comments(&node.comments);
            let span = &node.span;
            match &ins.kind {
                Kind::Env(pairs) => {
                    let expanded: Vec<(String, String)> = pairs
                        .iter()
                        .map(|kv| {
                            (
                                self.expand(&config, &lexer, &kv.key, &state, span),
                                self.expand(&config, &lexer, &kv.value, &state, span),
                            )
                        })
                        .collect();
                    self.legacy_key_value(&config, node);
                    for (key, value) in expanded {
                        self.secret(&config, "ENV", &key, span);
                        state.vars.set(&key, &value);
                    }
                }
                Kind::Label(pairs) => {
                    for kv in pairs {
                        self.expand(&config, &lexer, &kv.key, &state, span);
                        self.expand(&config, &lexer, &kv.value, &state, span);
                    }
                    self.legacy_key_value(&config, node);
                }
                Kind::Arg(decls) => {
                    for decl in decls {
                        self.secret(&config, "ARG", &decl.key, span);
                        let value = match (opts.plan.build_args.get(&decl.key), &decl.value) {
                            (Some(v), _) => Some(v.clone()),
                            (None, Some(default)) => {
                                Some(self.expand(&config, &lexer, default, &state, span))
                            }
                            (None, None) => globals.vars.lookup(&decl.key).map(str::to_string),
                        };
                        state.args.insert(decl.key.clone());
                        if let Some(v) = value {
                            state.vars.set(&decl.key, &v);
                        }
                    }
                }
                Kind::Workdir(path) => {
                    let path = self.expand(&config, &lexer, path, &state, span);
                    if !state.workdir_set && !path.starts_with('/') {
                        self.report(
                            &config,
                            &rules::WORKDIR_RELATIVE_PATH,
                            span,
                            format!("Relative workdir {path:?} can have unexpected results if the base image changes"),
                        );
                    }
                    state.workdir_set = true;
                }
                Kind::Cmd(line) | Kind::Entrypoint(line) => {
                    self.used_once(&config, node, &mut last);
                    if line.shell_form && !state.shell {
                        self.report(
                            &config,
                            &rules::JSON_ARGS_RECOMMENDED,
                            span,
                            format!(
                                "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                                node.cmd
                            ),
                        );
                    }
                }
                Kind::Healthcheck(_) => self.used_once(&config, node, &mut last),
                Kind::Shell(_) => state.shell = true,
                Kind::Expose(ports) => self.expose(&config, &lexer, ports, &state, span),
                Kind::Copy(copy) => {
                    let flags = [&copy.chown, &copy.chmod];
                    let sources = self.files(&config, &lexer, &copy.files, &flags, &state, span);
                    if copy.from.is_none() {
                        self.ignored(&config, "Copy", &sources, opts.ignore, span);
                    }
                }
                Kind::Add(add) => {
                    let flags = [&add.chown, &add.chmod, &add.checksum];
                    let sources = self.files(&config, &lexer, &add.files, &flags, &state, span);
                    let local: Vec<String> =
                        sources.into_iter().filter(|s| !is_remote(s)).collect();
                    self.ignored(&config, "Add", &local, opts.ignore, span);
                }
                Kind::Run(run) => {
                    for mount in &run.mounts {
                        self.expand(&config, &lexer, mount, &state, span);
                    }
                }
                Kind::User(word) | Kind::Stopsignal(word) => {
                    self.expand(&config, &lexer, word, &state, span);
                }
                Kind::Volume(paths) => {
                    for p in paths {
                        self.expand(&config, &lexer, p, &state, span);
                    }
                }
                Kind::From(_) | Kind::Maintainer(_) | Kind::Onbuild(_) => {}
            }
        }
        state
    }

    /// MultipleInstructionsDisallowed: reported at the earlier instruction,
    /// the one that has no effect (`validateUsedOnce`).
    fn used_once(
        &mut self,
        config: &CheckConfig,
        node: &Node,
        last: &mut BTreeMap<&'static str, Span>,
    ) {
        let key = match node.name().as_str() {
            "cmd" => "cmd",
            "entrypoint" => "entrypoint",
            _ => "healthcheck",
        };
        if let Some(previous) = last.insert(key, node.span.clone()) {
            self.report(
                config,
                &rules::MULTIPLE_INSTRUCTIONS_DISALLOWED,
                &previous,
                format!(
                    "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                    node.cmd
                ),
            );
        }
    }

    /// LegacyKeyValueFormat: `ENV key value` (`dispatchEnv`, `dispatchLabel`).
    fn legacy_key_value(&mut self, config: &CheckConfig, node: &Node) {
        for triple in node.args.chunks(3) {
            if let [_, _, sep] = triple {
                if sep.is_empty() {
                    let cmd = &node.cmd;
                    self.report(
                        config,
                        &rules::LEGACY_KEY_VALUE_FORMAT,
                        &node.span,
                        format!("\"{cmd} key=value\" should be used instead of legacy \"{cmd} key value\" format"),
                    );
                }
            }
        }
    }

    /// SecretsUsedInArgOrEnv (`validateNoSecretKey`).
    fn secret(&mut self, config: &CheckConfig, what: &str, key: &str, span: &Span) {
        if rules::looks_secret(key) {
            self.report(
                config,
                &rules::SECRETS_USED_IN_ARG_OR_ENV,
                span,
                format!("Do not use ARG or ENV instructions for sensitive data ({what} {key:?})"),
            );
        }
    }

    /// ExposeProtoCasing and ExposeInvalidFormat (convert_expose.go).
    fn expose(
        &mut self,
        config: &CheckConfig,
        lexer: &Lexer,
        ports: &[String],
        state: &State,
        span: &Span,
    ) {
        for word in ports {
            let Ok(words) = lexer.expand_words(word, &state.vars) else {
                continue;
            };
            for raw in words {
                let Some(spec) = rules::split_port(&raw) else {
                    continue;
                };
                if spec.proto != spec.proto.to_lowercase() {
                    self.report(
                        config,
                        &rules::EXPOSE_PROTO_CASING,
                        span,
                        format!(
                            "Defined protocol '{raw}' in EXPOSE instruction should be lowercase"
                        ),
                    );
                }
                if spec.mapped {
                    self.report(
                        config,
                        &rules::EXPOSE_INVALID_FORMAT,
                        span,
                        format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"),
                    );
                }
            }
        }
    }

    /// Expands what COPY and ADD expand (flags, sources, destination, heredoc
    /// bodies marked for expansion); returns the sources.
    fn files(
        &mut self,
        config: &CheckConfig,
        lexer: &Lexer,
        files: &instructions::Files,
        flags: &[&Option<String>],
        state: &State,
        span: &Span,
    ) -> Vec<String> {
        for flag in flags.iter().copied().flatten() {
            self.expand(config, lexer, flag, state, span);
        }
        let sources = files
            .sources
            .iter()
            .map(|s| self.expand(config, lexer, s, state, span))
            .collect();
        self.expand(config, lexer, &files.dest, state, span);
        let raw = Lexer::new('\\').skip_process_quotes(true);
        for content in files.contents.iter().filter(|c| c.expand) {
            self.expand(config, &raw, &content.data, state, span);
        }
        sources
    }

    /// CopyIgnoredFile: a context source `.dockerignore` excludes
    /// (`validateCopySourcePath`; never with `!` exceptions in the file,
    /// which make the answer depend on what is inside directories).
    fn ignored(
        &mut self,
        config: &CheckConfig,
        what: &str,
        sources: &[String],
        ignore: Option<&Matcher>,
        span: &Span,
    ) {
        let Some(matcher) = ignore.filter(|m| !m.has_exclusions()) else {
            return;
        };
        for source in sources {
            let src = clean_path(source);
            if (src == "." || src == "/")
                && !matcher
                    .patterns()
                    .any(|(p, exception)| !exception && matches!(p, "*" | "**" | "**/*"))
            {
                continue;
            }
            if matcher.matches_or_parent_matches(&src).unwrap_or(false) {
                self.report(
                    config,
                    &rules::COPY_IGNORED_FILE,
                    span,
                    format!("Attempting to {what} file {src:?} that is excluded by .dockerignore"),
                );
            }
        }
    }
}

/// An ADD source fetched from elsewhere (URL or git), not the context.
fn is_remote(source: &str) -> bool {
    ["http://", "https://", "git@", "git://"]
        .iter()
        .any(|p| source.starts_with(p))
}

#[cfg(test)]
mod tests;
