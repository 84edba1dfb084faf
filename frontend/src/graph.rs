//! The build plan the frontend hands to the solver: stages, their steps with
//! every variable already expanded, what each step reads, and the image config
//! each stage ends with.
//!
//! Everything here is canonical and serializable (`BTreeMap`, no floats): the
//! solver hashes step definitions into cache keys.

use crate::instructions::{Healthcheck, Mount, SourceContent};
use crate::span::Span;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// An OS/architecture pair, as in `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Platform {
    /// The platform this binary was built for, in OCI names.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "aarch64" => ("arm64", ""),
            "x86" => ("386", ""),
            "arm" => ("arm", "v7"),
            "powerpc64" => ("ppc64le", ""),
            other => (other, ""),
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.to_string(),
        }
    }

    /// Parses a platform specifier as containerd's `platforms.Parse` does
    /// (what BuildKit and buildx use): `os/arch[/variant]`, or one word
    /// that is a known OS (the host's architecture) or a known architecture
    /// (linux). Each component is letters, digits, `_`, `.` or `-`, so a
    /// comma list (several platforms) is refused, as is an unknown word like
    /// `bogus`.
    pub fn parse(text: &str) -> Result<Self, PlatformError> {
        let lower = text.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        if let Some(part) = parts.iter().find(|p| !is_component(p)) {
            return Err(PlatformError::Component {
                text: text.to_string(),
                part: part.to_string(),
            });
        }
        let arch = |a: &str| match a {
            "x86_64" | "x86-64" => "amd64".to_string(),
            "aarch64" => "arm64".to_string(),
            "i386" => "386".to_string(),
            other => other.to_string(),
        };
        let (os, architecture, variant) = match parts[..] {
            [word] if KNOWN_OS.contains(&word) => (
                word.to_string(),
                Platform::host().architecture,
                String::new(),
            ),
            [word] if KNOWN_ARCH.contains(&arch(word).as_str()) => {
                ("linux".to_string(), arch(word), String::new())
            }
            [_] => return Err(PlatformError::Unknown(text.to_string())),
            [os, a] => (os.to_string(), arch(a), String::new()),
            [os, a, v] => (os.to_string(), arch(a), v.to_string()),
            _ => return Err(PlatformError::TooManyParts(text.to_string())),
        };
        Ok(Platform {
            os,
            architecture,
            variant,
        })
    }
}

/// containerd's known operating systems (`platforms/database.go`).
const KNOWN_OS: [&str; 17] = [
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
];

/// containerd's known architectures (`platforms/database.go`).
const KNOWN_ARCH: [&str; 24] = [
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// One component of a specifier: containerd's `^[A-Za-z0-9_.-]+$`.
fn is_component(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A platform specifier that does not parse (containerd's wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// A component with a character outside `[A-Za-z0-9_.-]`, or empty.
    #[error("{part:?} is an invalid component of {text:?}: platform specifier component must match \"^[A-Za-z0-9_.-]+$\"")]
    Component {
        /// The specifier.
        text: String,
        /// The component.
        part: String,
    },
    /// One word that is neither a known OS nor a known architecture.
    #[error("{0:?}: unknown operating system or architecture")]
    Unknown(String),
    /// More than `os/arch/variant`.
    #[error("{0:?}: cannot parse platform specifier")]
    TooManyParts(String),
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// The image config fields a Dockerfile sets, as docker writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `EXPOSE`, as `80/tcp`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub exposed_ports: BTreeSet<String>,
    /// `ENV`, as `KEY=value`, in first-definition order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub volumes: BTreeSet<String>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// `LABEL` and `--label`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `HEALTHCHECK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `SHELL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// `ONBUILD` triggers for images built from this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_build: Vec<String>,
    /// Set by CMD, as BuildKit sets it (a Windows relic docker still writes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
}

impl ImageConfig {
    /// The value of an environment variable.
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env.iter().find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }

    /// Sets an environment variable, in place if it exists.
    pub fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self
            .env
            .iter_mut()
            .find(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == key)
        {
            Some(slot) => *slot = entry,
            None => self.env.push(entry),
        }
    }
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Base {
    /// `FROM scratch`.
    Scratch,
    /// An image by reference (tag or digest), resolved by the builder.
    Image {
        /// The reference as expanded from the FROM line.
        reference: String,
        /// The manifest digest when the resolver knew it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
    /// An earlier stage.
    Stage {
        /// Its index.
        index: usize,
    },
}

/// Where COPY/ADD read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CopySource {
    /// The build context.
    Context,
    /// The result of another stage.
    Stage {
        /// Its index.
        index: usize,
    },
    /// An image by reference.
    Image {
        /// The reference.
        reference: String,
    },
    /// A local directory given as `--build-context NAME=DIR`.
    Named {
        /// NAME, as [`crate::plan::named_context_key`] spells it.
        name: String,
    },
}

/// One step of a stage, fully expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The Dockerfile lines it comes from (the FROM line for ONBUILD triggers).
    pub span: Span,
    /// The instruction as the user wrote it, for progress output.
    pub instruction: String,
    /// The image history line (`created_by`) docker writes for it.
    pub created_by: String,
    /// Whether the step adds a layer (history `empty_layer` is the negation).
    pub layer: bool,
    /// Whether it came from an ONBUILD trigger of the base.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_build: bool,
    /// Stages whose result this step reads (COPY --from, RUN --mount from=).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub needs: BTreeSet<usize>,
    /// What to do.
    pub op: Op,
}

/// The work of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Image config only (ENV, LABEL, CMD, ...): no filesystem change.
    Config,
    /// Create the working directory.
    Workdir {
        /// Absolute, cleaned.
        path: String,
        /// The user that owns it when created (the stage's USER).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        user: String,
    },
    /// COPY or ADD.
    Copy(CopyStep),
    /// RUN.
    Run(RunStep),
}

/// A COPY or ADD, expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStep {
    /// ADD (archives are extracted, URLs fetched) rather than COPY.
    pub add: bool,
    /// Where the sources are.
    pub from: CopySource,
    /// Source paths, patterns or URLs.
    pub sources: Vec<String>,
    /// Heredoc files to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contents: Vec<SourceContent>,
    /// The destination, absolute; a trailing `/` means a directory.
    pub dest: String,
    /// `--chown`, unresolved (names are looked up in the image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    /// `--chmod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    /// `--link`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    /// `--parents`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
    /// `--exclude`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// `ADD --checksum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// `ADD --keep-git-dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_git_dir: Option<bool>,
    /// `ADD --unpack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpack: Option<bool>,
    /// The stage's USER when the step runs (for `--chown` name lookup).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
}

/// A RUN, expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStep {
    /// The argv, shell already prepended for shell form.
    pub args: Vec<String>,
    /// The environment: image ENV and ARG values in scope, in order.
    pub env: Vec<String>,
    /// Proxy settings from `--build-arg` (never in history or the image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_env: Vec<String>,
    /// USER.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// WORKDIR (`/` when unset).
    pub workdir: String,
    /// `--mount`s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// `--network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `--security`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    /// Files the command needs mounted (a shebang heredoc becomes an
    /// executable under `/dev/pipes/`): path → content.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// One stage of the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Position in the Dockerfile, from 0.
    pub index: usize,
    /// `AS name`, lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The FROM line.
    pub span: Span,
    /// What it starts from.
    pub base: Base,
    /// Its platform.
    pub platform: Platform,
    /// Whether the target needs it; unneeded stages are pruned and never run.
    pub needed: bool,
    /// Stages it reads: its base stage and every `needs` of its steps.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub deps: BTreeSet<usize>,
    /// Steps in order, ONBUILD triggers of the base first; none when pruned.
    pub steps: Vec<Step>,
    /// The image config it ends with (empty when pruned).
    pub config: ImageConfig,
    /// The image's author (MAINTAINER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

impl Stage {
    /// `name` or `stage-N`, as progress output names stages.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", self.index))
    }
}

/// A non-fatal finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// Where, when it has a place in the Dockerfile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<Span>,
    /// What.
    pub message: String,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildGraph {
    /// Every stage, pruned ones included (with `needed: false`, and neither
    /// steps nor config: a stage the target does not need is never lowered).
    pub stages: Vec<Stage>,
    /// The stage whose result is the build's result.
    pub target: usize,
    /// Parser directives (`syntax`, `escape`, `check`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub directives: BTreeMap<String, String>,
    /// Warnings: unused build args, empty continuation lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

impl BuildGraph {
    /// The stages that will run, in an order where every stage comes after
    /// the stages it reads.
    pub fn needed_stages(&self) -> impl Iterator<Item = &Stage> {
        self.stages.iter().filter(|s| s.needed)
    }

    /// A step as the plan shows it: its history line without BuildKit's
    /// marker, with where a COPY reads from and the mounts a RUN uses.
    fn describe(&self, step: &Step) -> String {
        // Heredoc bodies make history lines span lines; keep one step a line.
        let escaped = step
            .created_by
            .trim_end_matches(" # buildkit")
            .replace('\n', "\\n");
        let text = escaped.as_str();
        match &step.op {
            Op::Copy(copy) => {
                let from = match &copy.from {
                    CopySource::Context => return text.to_string(),
                    CopySource::Stage { index } => self.stages[*index].display_name(),
                    CopySource::Image { reference } => reference.clone(),
                    CopySource::Named { name } => format!("context {name}"),
                };
                let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
                format!("{word} --from={from} {rest}")
            }
            Op::Run(run) if !run.mounts.is_empty() => {
                let mounts: Vec<String> = run
                    .mounts
                    .iter()
                    .map(|m| {
                        let target = m.target.as_deref().unwrap_or("");
                        let kind = serde_json::to_value(m.kind)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default();
                        format!("{kind}:{target}")
                    })
                    .collect();
                format!("{text}  (mounts {})", mounts.join(", "))
            }
            _ => text.to_string(),
        }
    }

    /// A readable plan: stages, what each reads, steps, what is pruned.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let needed = self.needed_stages().count();
        let _ = writeln!(
            out,
            "target: {} ({} of {} stages needed)",
            self.stages[self.target].display_name(),
            needed,
            self.stages.len()
        );
        for stage in &self.stages {
            let base = match &stage.base {
                Base::Scratch => "scratch".to_string(),
                Base::Image { reference, digest } => match digest {
                    Some(d) => format!("image {reference}@{d}"),
                    None => format!("image {reference}"),
                },
                Base::Stage { index } => format!("stage {}", self.stages[*index].display_name()),
            };
            let _ = write!(
                out,
                "\nstage {} [{}] from {base} ({}, line {})",
                stage.index,
                stage.display_name(),
                stage.platform,
                stage.span.line
            );
            if !stage.needed {
                out.push_str(": pruned, the target does not need it\n");
                continue;
            }
            out.push('\n');
            if !stage.deps.is_empty() {
                let names: Vec<String> = stage
                    .deps
                    .iter()
                    .map(|d| self.stages[*d].display_name())
                    .collect();
                let _ = writeln!(out, "  needs: {}", names.join(", "));
            }
            let width = stage.steps.len().to_string().len();
            for (i, step) in stage.steps.iter().enumerate() {
                let kind = if step.layer { "layer " } else { "config" };
                let trigger = if step.on_build { "ONBUILD " } else { "" };
                let _ = writeln!(
                    out,
                    "  {:>width$}. [{kind}] line {:<4} {trigger}{}",
                    i + 1,
                    step.span.line,
                    self.describe(step)
                );
            }
        }
        let target = &self.stages[self.target];
        let _ = writeln!(
            out,
            "\nimage config:\n{}",
            serde_json::to_string_pretty(&target.config).unwrap_or_default()
        );
        for w in &self.warnings {
            match &w.span {
                Some(span) => {
                    let _ = writeln!(out, "warning: {span}: {}", w.message);
                }
                None => {
                    let _ = writeln!(out, "warning: {}", w.message);
                }
            }
        }
        out
    }
}
